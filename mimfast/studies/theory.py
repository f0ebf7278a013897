"""Sigma_l restricted to span(U): exact (Gauss-Hermite quadrature) and estimated from data.

Stage 1 power-iterates Sigma_l = E[c(y) x x^T] with the centred label
transform c(y) = l'(0, y) - E[l'(0, y)] (the schedule subtracts the batch
mean, ``LayerwiseRegressor._stage1_labels``).  Writing x = U^T z + x_perp,
the off-U block is E[c] I = 0 and the U block is

    M = U Sigma_l U^T = E[c(y) z z^T] = E[c(y) (z z^T - I)],   z ~ N(0, I_r).

Stage 1 can only find the directions on which M is non-zero: that is the
paper's non-degeneracy assumption.  ``exact_sigma_u`` computes M by a
deterministic tensor Gauss-Hermite rule over z (and over the label noise when
there is any), ``estimate_sigma_u`` computes the same matrix from the stage-1
rows exactly as the schedule sees them, with a standard error for the
comparison.  For a label-transforming loss (``even``: T(y) = y^2 - mean y^2)
the population version of the batch statistic is used.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..losses import get_loss
from ..tasks import MultiIndexTask

# points per dimension of the tensor rule, by number of dimensions
_POINTS = {1: 400, 2: 240, 3: 96, 4: 40, 5: 22}


def gauss_hermite_grid(dims, points=None):
    """Nodes (N, dims) and weights (N,) of a tensor Gauss-Hermite rule for N(0, I_dims)."""
    k = int(points or _POINTS.get(dims, 16))
    x, w = np.polynomial.hermite_e.hermegauss(k)
    w = w / math.sqrt(2.0 * math.pi)
    grids = np.meshgrid(*([x] * dims), indexing="ij")
    wgrids = np.meshgrid(*([w] * dims), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)
    weights = np.prod(np.stack([g.ravel() for g in wgrids], axis=1), axis=1)
    return nodes, weights


def _transform_weights(loss, y, weights):
    """Centred population label transform c(y) at the nodes."""
    if loss.name == "even":
        m2 = float(np.sum(weights * y * y))
        yk = y * y - m2
        c0 = loss.grad(np.zeros_like(yk), yk)
    elif loss.transform is not None:  # a user transform: apply it to the node values
        yk = np.asarray(loss.transform(y), dtype=np.float64)
        c0 = loss.grad(np.zeros_like(yk), yk)
    else:
        c0 = loss.grad(np.zeros_like(y), y)
    return c0 - float(np.sum(weights * c0))


@functools.lru_cache(maxsize=256)
def _exact(target, r, noise, loss_name, delta, points):
    from ..sweep import resolve_loss
    task = MultiIndexTask(d=r, r=r, link=target, noise=0.0, seed=0)
    loss = get_loss(resolve_loss(loss_name), delta)
    dims = r + (1 if noise > 0 else 0)
    nodes, weights = gauss_hermite_grid(dims, points)
    z = nodes[:, :r]
    y = task.g(z)
    if noise > 0:
        y = y + noise * nodes[:, r]
    c = _transform_weights(loss, y, weights)
    cw = c * weights
    M = (z * cw[:, None]).T @ z
    return 0.5 * (M + M.T), math.sqrt(float(np.sum(weights * c * c)))


def exact_sigma_u(target, r, loss="square", delta=1.0, noise=0.0, points=None):
    """E[c(y) z z^T] for a registered target, by tensor Gauss-Hermite quadrature (r x r).

    ``loss`` is a name or 'module:attr' (a Loss or a label transform); a
    transform may subtract its batch mean: constants cancel in the centring.
    """
    return _exact(str(target), int(r), float(noise), str(loss), float(delta), points)[0].copy()


def exact_label_sd(target, r, loss="square", delta=1.0, noise=0.0, points=None):
    """sd of the centred label transform c(y), by the same quadrature.

    The off-U part of Sigma_l_hat is noise of size ~ sd(c) sqrt(d/n), so
    min |eigenvalue| / sd(c) is a signal-to-noise ratio for stage 1 (heavy
    tails of c make things worse still).
    """
    return _exact(str(target), int(r), float(noise), str(loss), float(delta), points)[1]


def estimate_sigma_u(X, y, U, loss="square", delta=1.0):
    """(M_hat, se_frobenius): (1/n) sum c_i z_i z_i^T from data, c centred over the batch.

    ``se_frobenius`` estimates the Frobenius norm of M_hat - M from the per-entry
    sample variances; by Weyl's inequality it bounds the eigenvalue errors too.
    """
    from ..sweep import resolve_loss
    lo = get_loss(resolve_loss(loss), delta)
    y = np.asarray(y)
    yk = np.asarray(lo.kernel_labels(y), dtype=np.float64)
    c0 = lo.grad(np.zeros_like(yk), yk)
    c = c0 - float(np.mean(c0))
    z = np.asarray(X, dtype=np.float64) @ np.asarray(U, dtype=np.float64).T
    n = z.shape[0]
    M = (z * c[:, None]).T @ z / n
    r = z.shape[1]
    var = np.empty((r, r))
    for k in range(r):
        prod = c[:, None] * z[:, k:k + 1] * z          # (n, r): c z_k z_l
        var[k] = prod.var(axis=0)
    se = math.sqrt(float(np.sum(var)) / n)
    return 0.5 * (M + M.T), se


def sorted_eigs(M):
    """Eigenvalues sorted by value, descending (the order Weyl's inequality pairs)."""
    return np.sort(np.linalg.eigvalsh(M))[::-1]


def sigma_u_extra(task, cfg, record, backend, threads=1):
    """Sweep extra: eigenvalues of Sigma_l on span(U), estimated from the stage-1 rows and exact."""
    n1 = int(record["n1"])
    X, y = backend.sample(task, n1, "stage1", 0, cfg["dtype"])
    X = backend.to_numpy(X)
    M_hat, se = estimate_sigma_u(X, np.asarray(y), task.U, cfg["loss"], cfg["delta"])
    out = {"sigma_u": {"est": sorted_eigs(M_hat).tolist(), "se": se}}
    if isinstance(task.link, str):
        M = exact_sigma_u(task.link, task.r, cfg["loss"], cfg["delta"], task.noise)
        ev = sorted_eigs(M)
        sd = exact_label_sd(task.link, task.r, cfg["loss"], cfg["delta"], task.noise)
        out["sigma_u"]["exact"] = ev.tolist()
        out["sigma_u"]["err_fro"] = float(np.linalg.norm(M_hat - M))
        out["sigma_u"]["c_sd"] = sd
        out["sigma_u"]["snr"] = float(np.abs(ev).min() / sd) if sd > 0 else 0.0
    return out
