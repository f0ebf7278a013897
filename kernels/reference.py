"""Plain-numpy definition of every mimfast kernel.

This module is the specification: the Numba (``cpu.py``) and CuPy (``gpu.py``)
kernels are tested against it.  It favours clarity over speed, but is still
vectorised so it can serve as the "numpy" backend.

Conventions shared by all backends
----------------------------------
* ``X`` is (n, d), ``W`` is (d, m), ``a`` and ``b`` are (m,), ``y`` is (n,).
  All arrays of one call share a floating dtype (float32 or float64); results
  come back in that dtype.
* Activations are named: ``"logcosh"`` (sigma' = tanh), ``"quadratic"``
  (t^2/2), ``"relu"`` (stage 2 only: sigma''(0) does not exist).
* Losses are a triple ``(kind, delta, offset)`` with kind in ``LOSS_KINDS``.
  The kernel loss is ``l(t, y) - offset * t``; the offset is how the schedule
  centres the label transform over the stage-1 batch (DESIGN.md: the off-U part
  of Sigma_l is E[l'(0, y)] I).  Label-transforming losses (``even`` and user
  transforms) are square losses on transformed labels and reach the kernels as
  ``"square"`` with ``y`` already transformed.
* Every kernel returns *means over rows*, so a streamed source can combine
  row blocks by weighting each block mean with its row count.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("logcosh", "quadratic", "relu")
LOSS_KINDS = ("square", "huber", "pseudo_huber")

_LOG2 = float(np.log(2.0))


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
def activation(h, name):
    """sigma(h) elementwise."""
    if name == "logcosh":
        ah = np.abs(h)
        # log cosh t = |t| + log1p(exp(-2|t|)) - log 2, stable for large |t|
        return ah + np.log1p(np.exp(-2.0 * ah)) - h.dtype.type(_LOG2)
    if name == "quadratic":
        return 0.5 * h * h
    if name == "relu":
        return np.maximum(h, 0)
    raise ValueError(f"activation: unknown name {name!r}; choose one of {ACTIVATIONS}")


def activation_grad(h, name):
    """sigma'(h) elementwise."""
    if name == "logcosh":
        return np.tanh(h)
    if name == "quadratic":
        return h.copy()
    if name == "relu":
        return (h > 0).astype(h.dtype)
    raise ValueError(f"activation: unknown name {name!r}; choose one of {ACTIVATIONS}")


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------
def loss_value(t, y, kind="square", delta=1.0, offset=0.0):
    """l(t, y) - offset * t elementwise."""
    r = t - y
    if kind == "square":
        v = 0.5 * r * r
    elif kind == "huber":
        ar = np.abs(r)
        v = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))
    elif kind == "pseudo_huber":
        v = delta * delta * (np.sqrt(1.0 + (r / delta) ** 2) - 1.0)
    else:
        raise ValueError(f"loss: unknown kind {kind!r}; choose one of {LOSS_KINDS}")
    return (v - offset * t).astype(t.dtype, copy=False)


def loss_grad(t, y, kind="square", delta=1.0, offset=0.0):
    """d/dt [l(t, y) - offset * t] elementwise (the per-sample label transform c_i)."""
    r = t - y
    if kind == "square":
        g = r
    elif kind == "huber":
        g = np.clip(r, -delta, delta)
    elif kind == "pseudo_huber":
        g = r / np.sqrt(1.0 + (r / delta) ** 2)
    else:
        raise ValueError(f"loss: unknown kind {kind!r}; choose one of {LOSS_KINDS}")
    return (g - offset).astype(t.dtype, copy=False)


# --------------------------------------------------------------------------
# the three network kernels
# --------------------------------------------------------------------------
def predict(X, W, a, b, activation_name="logcosh"):
    """f(X) = sigma(XW + b) a, shape (n,)."""
    H = X @ W + b
    return activation(H, activation_name) @ a


def stage1_grad(X, y, W, a, b, loss="square", delta=1.0, offset=0.0,
                activation_name="logcosh"):
    """First-layer gradient of the mean training loss and the mean loss.

    H = XW + b;  f = sigma(H) a;  c = l'(f, y);  P = (c outer a) * sigma'(H);
    G = X^T P / n.   Returns ``(G, mean_loss)``; G has W's shape.
    """
    n = X.shape[0]
    H = X @ W + b
    f = activation(H, activation_name) @ a
    c = loss_grad(f, y, loss, delta, offset)
    P = (c[:, None] * a[None, :]) * activation_grad(H, activation_name)
    G = (X.T @ P) / X.dtype.type(n)
    mean_loss = float(np.mean(loss_value(f, y, loss, delta, offset), dtype=np.float64))
    return G.astype(X.dtype, copy=False), mean_loss


def stage2_gram(X, y, W, b, activation_name="logcosh"):
    """Feature Gram and moment: (F^T F / n, F^T y / n) for F = sigma(XW + b)."""
    n = X.shape[0]
    F = activation(X @ W + b, activation_name)
    scale = X.dtype.type(n)
    return (F.T @ F) / scale, (F.T @ y) / scale


# --------------------------------------------------------------------------
# the empirical label-weighted second moment Sigma_l = X^T diag(c) X / n
# --------------------------------------------------------------------------
def sigma_matvec(X, c, V):
    """Sigma_l V = X^T (c * (X V)) / n without forming Sigma_l; V is (d,) or (d, k)."""
    n = X.shape[0]
    XV = X @ V
    if XV.ndim == 1:
        return (X.T @ (c * XV)) / X.dtype.type(n)
    return (X.T @ (c[:, None] * XV)) / X.dtype.type(n)


def sigma_matrix(X, c):
    """Sigma_l = X^T diag(c) X / n, the (d, d) matrix of the spectral baseline."""
    n = X.shape[0]
    return (X.T @ (c[:, None] * X)) / X.dtype.type(n)
