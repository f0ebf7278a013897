"""Recovery and prediction metrics (host-side numpy, small inputs)."""

from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import ThreadpoolController

_CONTROLLER = None


def blas_limit(threads):
    """Context limiting BLAS to ``threads``; one cached controller, because scanning the
    loaded libraries on every call costs ~1.6 ms (a tenth of a small run)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=threads, user_api="blas")


def serial_blas(fn):
    """Run small host-side linear algebra on one BLAS thread.

    Matrices here are at most m x m or d x r: threads do not help them, and right
    after a Numba parallel region they contend with its worker threads.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with blas_limit(1):
            return fn(*args, **kwargs)
    return wrapper


@serial_blas
def top_left_singular(W, k):
    """Top-k left singular vectors of W (d, m) via the m x m Gram (cheap for m << d)."""
    W = np.asarray(W, dtype=np.float64)
    k = min(k, W.shape[1], W.shape[0])
    if W.shape[1] <= W.shape[0]:
        evals, evecs = np.linalg.eigh(W.T @ W)
        order = np.argsort(evals)[::-1][:k]
        s = np.sqrt(np.maximum(evals[order], 0.0))
        s[s == 0] = 1.0
        Q = W @ evecs[:, order] / s
        Q, _ = np.linalg.qr(Q)  # re-orthonormalise against round-off
        return Q
    u, _, _ = np.linalg.svd(W, full_matrices=False)
    return u[:, :k]


@serial_blas
def principal_sines(U, Q):
    """Sines of the principal angles between span(U^T) (U is r x d) and span(Q) (d x k).

    Sorted descending, one per direction of U: sin = 1 for a direction Q misses.
    """
    U = np.asarray(U, dtype=np.float64)
    r = U.shape[0]
    Qu, _ = np.linalg.qr(U.T)
    cos = np.linalg.svd(Qu.T @ np.asarray(Q, dtype=np.float64), compute_uv=False)
    cos = np.concatenate([cos, np.zeros(max(0, r - cos.size))])[:r]
    return np.sort(np.sqrt(np.clip(1.0 - cos ** 2, 0.0, 1.0)))[::-1]


def subspace_sines(U, W):
    """sin theta between span(U) and the top-r left singular space of W."""
    return principal_sines(U, top_left_singular(W, np.asarray(U).shape[0]))


@serial_blas
def energy_in_subspace(U, W):
    """Mean over neurons of ||P_U w_j||^2 / ||w_j||^2."""
    W = np.asarray(W, dtype=np.float64)
    proj = np.asarray(U, dtype=np.float64) @ W
    norms = np.sum(W * W, axis=0)
    norms[norms == 0] = 1.0
    return float(np.mean(np.sum(proj * proj, axis=0) / norms))


@serial_blas
def energy_per_direction(U, W):
    """For each row u_k of U: mean over neurons of (u_k . w_j)^2 / ||w_j||^2.

    Shows collapse onto the top direction, which the singular-space angles hide:
    a tiny but non-zero component along u_k keeps sin theta small.
    """
    W = np.asarray(W, dtype=np.float64)
    proj = np.asarray(U, dtype=np.float64) @ W
    norms = np.sum(W * W, axis=0)
    norms[norms == 0] = 1.0
    return np.mean(proj * proj / norms, axis=1)


def relative_mse(pred, y):
    """MSE / Var(y)."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    var = float(np.var(y))
    return float(np.mean((pred - y) ** 2) / var) if var > 0 else float("nan")
