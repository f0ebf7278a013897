"""The layer-wise training schedule: stage 1, stage 2, baselines -> a result record.

``LayerwiseRegressor`` follows scikit-learn's conventions: hyper-parameters in
``__init__``, learned state in ``name_`` attributes, ``fit`` returns self.
``train`` runs the whole experiment on a ``MultiIndexTask`` (sampling,
fitting, test error, metrics) and returns a plain dict record; it is what the
CLI, the studies and the benchmarks call.

Stage 1 (DESIGN.md section 1): symmetric init (pairs with equal w, opposite
a, so f = 0), then T1 full-batch steps W <- W - eta (grad + beta W) with
eta*beta = 1 by default and eta = 1/|lambda_max(Sigma_l)| estimated by
matrix-free power iteration, so each step is close to one power-iteration
step on Sigma_l.  Stage 2: unit-norm neurons, fresh N(0, bias_scale^2)
biases, ridge fit of a from the fused feature Gram, lambda picked on a
held-out part of the stage-2 data.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager

import numpy as np

from . import metrics
from .activations import check_activation
from .backends import get_backend
from .data import (ArraySource, TaskSource, bytes_needed, mode_name, plan_sources,
                   streamed_block_bytes, streamed_sources)
from .errors import (MimfastInputError, MimfastWarning, available_memory_bytes,
                     check_choice, check_dtype, check_finite, check_int, human_bytes)
from .losses import get_loss
from .tasks import STREAMS, MultiIndexTask

METHODS = ("layerwise", "spectral")
DEFAULT_RIDGE = tuple(float(v) for v in np.logspace(-8, 1, 19))


def auto_t1(d):
    """Default number of stage-1 steps: grows like sqrt(log d) (DESIGN.md; ours)."""
    return max(2, int(math.ceil(2.0 * math.sqrt(math.log(max(int(d), 2))))))


def width_warning(width, r):
    return (f"width={width} gives {width // 2} +/- neuron pairs for r={r} hidden directions: "
            f"width/2 < r pairs cannot span all r directions; use width >= {2 * r}")


@contextmanager
def _timer(timings, key):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


class LayerwiseRegressor:
    """Two-layer network f(x) = sum_j a_j sigma(w_j . x + b_j) trained layer-wise.

    Parameters
    ----------
    width : even int >= 2, neurons (they come in +/- pairs).
    t1 : int >= 0 or "auto", stage-1 steps (auto grows like sqrt(log d)).
    eta : float or "auto", stage-1 step size (auto: 1 / |lambda_max(Sigma_l)|).
    weight_decay : float or "auto" (auto: 1 / eta, so eta * beta = 1).
    init_scale : norm of each initial neuron (epsilon_0).
    loss : "square", "huber", "pseudo_huber", "even", a Loss, or a callable label transform.
    delta : Huber / pseudo-Huber scale.
    center : centre the stage-1 label transform over the batch.
    activation : stage-1 sigma, "logcosh" or "quadratic".
    stage2_activation : stage-2 features, default: same as ``activation``; "relu" allowed.
    bias_scale : std of the re-drawn stage-2 biases.
    ridge : grid of ridge penalties (relative to trace(F^T F / n) / m).
    val_fraction : share of stage-2 rows held out to choose the ridge penalty.
    ridge_checks : how many of the best penalties (by the Gram identity) are confirmed
        by direct residuals on the held-out rows.
    method : "layerwise" (stage 1 by GD) or "spectral" (top-r eigenvectors of Sigma_l;
        it takes no steps, so t1 must stay "auto").
    spectral_rank : int in [1, d], r for the spectral method (default: the subspace's r).
    power_iters : matrix-free power iterations for the auto step size.
    backend : "auto", "numpy", "numba", "cupy" or a Backend.
    dtype : "float32" or "float64".
    seed : int >= 0, seeds the initialisation and the stage-2 biases.
    threads : CPU threads for the kernels (None: all).
    progress : show a progress bar over stage-1 steps (None: only on a terminal).
    """

    def __init__(self, width=256, t1="auto", eta="auto", weight_decay="auto",
                 init_scale=1e-3, loss="square", delta=1.0, center=True,
                 activation="logcosh", stage2_activation=None, bias_scale=1.0,
                 ridge=DEFAULT_RIDGE, val_fraction=0.25, method="layerwise",
                 spectral_rank=None, power_iters=12, ridge_checks=4, backend="auto",
                 dtype="float32",
                 seed=0, threads=None, progress=None):
        self.width = width
        self.t1 = t1
        self.eta = eta
        self.weight_decay = weight_decay
        self.init_scale = init_scale
        self.loss = loss
        self.delta = delta
        self.center = center
        self.activation = activation
        self.stage2_activation = stage2_activation
        self.bias_scale = bias_scale
        self.ridge = ridge
        self.val_fraction = val_fraction
        self.method = method
        self.spectral_rank = spectral_rank
        self.power_iters = power_iters
        self.ridge_checks = ridge_checks
        self.backend = backend
        self.dtype = dtype
        self.seed = seed
        self.threads = threads
        self.progress = progress

    # scikit-learn's estimator protocol (clone, grid search, pipelines)
    @classmethod
    def _param_names(cls):
        import inspect
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep=True):
        """The hyper-parameters given to ``__init__``, as a dict."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        """Set hyper-parameters by name; returns self.  Unknown names are an error."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise MimfastInputError(f"{k!r} is not a parameter of LayerwiseRegressor; "
                                        f"choose from: {', '.join(names)}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        import inspect
        sig = inspect.signature(type(self).__init__).parameters
        changed = [f"{k}={getattr(self, k)!r}" for k in self._param_names()
                   if getattr(self, k) is not sig[k].default]
        return f"{type(self).__name__}({', '.join(changed)})"

    # ------------------------------------------------------------------ checks
    def _validate(self, d, n1, n2=None):
        width = check_int(self.width, "width", 2, " (neurons come in +/- pairs)")
        if width % 2:
            raise MimfastInputError(
                f"width={width} must be even: neurons come in +/- pairs; pass {width + 1}")
        if n1 < width:
            raise MimfastInputError(
                f"stage-1 sample size n1={n1} is smaller than width={width}; "
                "pass more samples or a smaller width")
        if n2 is not None and n2 < width:
            raise MimfastInputError(
                f"stage-2 sample size n2={n2} is smaller than width={width}: stage 2 fits "
                "width coefficients; pass more samples or a smaller width")
        if self.t1 != "auto":
            check_int(self.t1, "t1", 0, " (or 'auto')")
            if self.method == "spectral":
                raise MimfastInputError(
                    f"t1={self.t1!r} has no meaning for method='spectral' (it takes no "
                    "gradient steps, it computes eigenvectors); leave t1='auto'")
        if self.spectral_rank is not None:
            rank = check_int(self.spectral_rank, "spectral_rank", 1,
                             " (the number of eigenvectors the spectral method keeps)")
            if rank > d:
                raise MimfastInputError(
                    f"spectral_rank={rank} exceeds d={d}: Sigma_l has only d eigenvectors; "
                    f"pass spectral_rank <= {d}")
        check_int(self.seed, "seed", 0, " (seeds are non-negative integers)")
        for name in ("eta", "weight_decay"):
            v = getattr(self, name)
            if v != "auto" and (not isinstance(v, (int, float)) or not math.isfinite(v)
                                or v < 0 or (name == "eta" and v == 0)):
                raise MimfastInputError(f"{name}={v!r} must be a positive number or 'auto'")
        if not (isinstance(self.init_scale, (int, float)) and self.init_scale > 0
                and math.isfinite(self.init_scale)):
            raise MimfastInputError(f"init_scale={self.init_scale!r} must be positive")
        if not (isinstance(self.bias_scale, (int, float)) and self.bias_scale >= 0
                and math.isfinite(self.bias_scale)):
            raise MimfastInputError(f"bias_scale={self.bias_scale!r} must be >= 0")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise MimfastInputError(f"val_fraction={self.val_fraction!r} must be in (0, 1)")
        ridge = np.atleast_1d(np.asarray(self.ridge, dtype=np.float64))
        if ridge.size == 0 or not np.all(np.isfinite(ridge)) or np.any(ridge < 0):
            raise MimfastInputError("ridge must be a non-empty grid of finite values >= 0")
        check_choice(self.method, METHODS, "method")
        check_activation(self.activation, 1, "activation")
        check_activation(self.stage2_activation or self.activation, 2, "stage2_activation")
        check_int(self.power_iters, "power_iters", 1)
        check_int(self.ridge_checks, "ridge_checks", 1)
        check_dtype(self.dtype)
        return width

    # ------------------------------------------------------------------ sources
    def _as_source(self, X, y, backend, name):
        if hasattr(X, "blocks"):
            return X
        if y is None:
            raise MimfastInputError(
                f"{name} y is required: pass the labels as well, e.g. fit(X, y) or "
                "stage2=(X2, y2) (or a data source instead of X)")
        dt = check_dtype(self.dtype)
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim != 2:
            raise MimfastInputError(f"{name} X must be 2-D (n, d); got shape {X.shape}")
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise MimfastInputError(
                f"{name} y must have shape ({X.shape[0]},) to match X {X.shape}; got {y.shape}")
        if X.dtype.kind not in "fiu" or y.dtype.kind not in "fiu":
            raise MimfastInputError(f"{name} X and y must be numeric; got {X.dtype}, {y.dtype}")
        check_finite(X, f"{name} X")
        check_finite(y, f"{name} y")
        return ArraySource(np.ascontiguousarray(X, dtype=dt), y.astype(dt), backend)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, stage2=None, subspace=None):
        """Train on (X, y); stage 2 uses ``stage2=(X2, y2)`` or, if None, the second half.

        ``X`` may also be a data source (see ``mimfast.data``); ``subspace`` (r x d
        orthonormal rows) turns on per-step recovery metrics.
        """
        self.backend_ = get_backend(self.backend, self.threads)
        be = self.backend_
        src = self._as_source(X, y, be, "stage-1")
        if stage2 is None:
            if src.n < 4:
                raise MimfastInputError(f"need at least 4 rows to split into stages; got {src.n}")
            src, src2 = src.split(src.n // 2)
        elif hasattr(stage2, "blocks"):
            src2 = stage2
        elif isinstance(stage2, (tuple, list)) and len(stage2) == 2:
            src2 = self._as_source(stage2[0], stage2[1], be, "stage-2")
        else:
            got = (f"an array of shape {np.shape(stage2)}" if hasattr(stage2, "shape")
                   else type(stage2).__name__)
            raise MimfastInputError(
                f"stage2 must be a tuple (X2, y2) or a data source; got {got}")
        if src2.d != src.d:
            raise MimfastInputError(f"stage-2 X has d={src2.d} but stage-1 X has d={src.d}")
        width = self._validate(src.d, src.n, src2.n)
        n_val = max(1, int(round(src2.n * float(self.val_fraction))))
        if src2.n - n_val < 1:
            raise MimfastInputError(f"stage-2 sample size {src2.n} is too small to hold out "
                                    "a validation part; pass more stage-2 samples")
        self.n_features_in_ = src.d
        self.timings_ = {}
        self.history_ = []
        U = None if subspace is None else np.asarray(subspace, dtype=np.float64)
        if U is not None and (U.ndim != 2 or U.shape[1] != src.d):
            raise MimfastInputError(f"subspace must have shape (r, {src.d}); got {U.shape}")
        self.subspace_ = U
        rank = self.spectral_rank if self.spectral_rank is not None else (
            U.shape[0] if U is not None else None)
        if self.method == "spectral" and rank is None:
            raise MimfastInputError("method='spectral' needs spectral_rank (or a subspace)")
        r = U.shape[0] if U is not None else self.spectral_rank
        if self.method == "layerwise" and r is not None and width // 2 < r:
            warnings.warn(width_warning(width, r), MimfastWarning, stacklevel=2)

        with _timer(self.timings_, "stage1"):
            W = self._stage1(src, width, rank)
        self.stage1_weights_ = be.to_numpy(W)
        with _timer(self.timings_, "stage2"):
            self._stage2(src2, n_val, W, width)
        self.data_mode_ = src.kind
        return self

    # ------------------------------------------------------------------ stage 1
    def _stage1_labels(self, src):
        dt = check_dtype(self.dtype)
        loss = get_loss(self.loss, self.delta, dt)
        yk = loss.kernel_labels(np.asarray(src.labels()))
        c0 = loss.grad(np.zeros_like(yk), yk)
        if not np.all(np.isfinite(c0)):
            bad = int(np.size(c0) - np.count_nonzero(np.isfinite(c0)))
            raise MimfastInputError(
                f"loss={self.loss!r}: the label transform l'(0, y) is NaN/inf for {bad} of "
                f"{np.size(c0)} labels (in {np.asarray(yk).dtype}); check the loss and the "
                "labels" + (" (huge --noise overflows float32: use --dtype float64)"
                            if dt != np.float64 else ""))
        offset = 0.0
        if self.center:
            offset = float(np.mean(c0, dtype=np.float64))
        return loss, yk, offset

    def _pass_sigma(self, be, src, c_dev, V):
        """Sigma_l V over all blocks of a source."""
        acc = None
        for lo, Xb in src.blocks():
            nb = Xb.shape[0]
            part = be.sigma_matvec(Xb, c_dev[lo:lo + nb], V) * (nb / src.n)
            acc = part if acc is None else acc + part
        return acc

    def _stage1(self, src, width, rank):
        be = self.backend_
        xp = be.xp
        dt = check_dtype(self.dtype)
        d = src.d
        rng = np.random.default_rng([int(self.seed), STREAMS["init"]])
        loss, yk, offset = self._stage1_labels(src)
        self.label_offset_ = offset
        y_dev = be.asarray(yk, dtype=dt)
        c0 = be.asarray(loss.grad(np.zeros_like(yk), yk, offset), dtype=dt)

        if self.method == "spectral":
            self.t1_ = 0
            S = None
            for lo, Xb in src.blocks():
                nb = Xb.shape[0]
                part = be.to_numpy(be.sigma_matrix(Xb, c0[lo:lo + nb])).astype(np.float64)
                S = part * (nb / src.n) if S is None else S + part * (nb / src.n)
            evals, evecs = np.linalg.eigh(S)
            top = np.argsort(np.abs(evals))[::-1][:rank]
            self.sigma_eigenvalues_ = evals[top]
            V = evecs[:, top]
            W = V @ rng.standard_normal((rank, width))
            self.eta_, self.weight_decay_ = float("nan"), float("nan")
            self._record(W)
            return be.asarray(W, dtype=dt)

        # symmetric init: pairs share w, opposite a, so f = 0 at the start
        half = rng.standard_normal((d, width // 2))
        half *= self.init_scale / np.linalg.norm(half, axis=0, keepdims=True)
        W = np.repeat(half, 2, axis=1)
        self.initial_weights_ = W
        a = np.tile(np.array([1.0, -1.0]), width // 2)
        b = np.zeros(width)

        with _timer(self.timings_, "step_size"):
            if self.eta == "auto":
                v = rng.standard_normal(d)
                v = be.asarray(v / np.linalg.norm(v), dtype=dt)
                lam = 0.0
                for _ in range(int(self.power_iters)):
                    v = self._pass_sigma(be, src, c0, v)
                    with np.errstate(over="ignore", invalid="ignore"):
                        lam = float(xp.linalg.norm(v))
                    if not math.isfinite(lam):
                        raise MimfastInputError(
                            f"the label-weighted matrix Sigma_l overflows {dt.name} (its "
                            "power iteration gave NaN/inf): the labels are too large for "
                            "this dtype; use "
                            + ("dtype='float64', " if dt != np.float64 else "")
                            + "less noise or a bounded loss (huber)")
                    if lam == 0.0:
                        raise MimfastInputError(
                            "the label-weighted matrix Sigma_l is zero for this loss and "
                            "data (all labels transform to the same value, or the transform "
                            "underflows, e.g. a tiny huber delta); choose another loss or "
                            "delta, or check the labels")
                    v = v / lam
                self.lambda_max_ = lam
                eta = 1.0 / lam
            else:
                eta = float(self.eta)
                self.lambda_max_ = float("nan")
        beta = 1.0 / eta if self.weight_decay == "auto" else float(self.weight_decay)
        self.eta_, self.weight_decay_ = eta, beta
        self.t1_ = auto_t1(d) if self.t1 == "auto" else int(self.t1)

        Wd = be.asarray(W, dtype=dt)
        a_d = be.asarray(a, dtype=dt)
        b_d = be.asarray(b, dtype=dt)
        self._record(W, loss=None)
        steps = range(self.t1_)
        if self.t1_ > 0:
            from tqdm.auto import tqdm
            disable = None if self.progress is None else not self.progress
            steps = tqdm(steps, desc="stage 1", unit="step", disable=disable, leave=False)
        for _ in steps:
            G = None
            total = 0.0
            for lo, Xb in src.blocks():
                nb = Xb.shape[0]
                g, lval = be.stage1_grad(Xb, y_dev[lo:lo + nb], Wd, a_d, b_d, loss.kind,
                                         loss.delta, offset, self.activation)
                w = nb / src.n
                G = g * w if G is None else G + g * w
                total += lval * w
            Wd = Wd - eta * (G + beta * Wd)
            Wh = be.to_numpy(Wd)
            if not np.all(np.isfinite(Wh)):
                raise MimfastInputError(
                    "stage 1 diverged (non-finite weights); pass a smaller eta or init_scale")
            self._record(Wh, loss=total)
        self.a_stage1_ = a
        return Wd

    def _record(self, W, loss=None):
        entry = {"step": len(self.history_), "loss": loss,
                 "weight_norm": float(np.linalg.norm(W) / math.sqrt(W.shape[1]))}
        if self.subspace_ is not None:
            entry["sin_theta"] = metrics.subspace_sines(self.subspace_, W).tolist()
            entry["energy_in_u"] = metrics.energy_in_subspace(self.subspace_, W)
            entry["energy_per_direction"] = metrics.energy_per_direction(
                self.subspace_, W).tolist()
        self.history_.append(entry)

    # ------------------------------------------------------------------ stage 2
    def _gram(self, src, y_dev, W, b, act):
        be = self.backend_
        A = v = None
        for lo, Xb in src.blocks():
            nb = Xb.shape[0]
            Ab, vb = be.stage2_gram(Xb, y_dev[lo:lo + nb], W, b, act)
            w = nb / src.n
            Ab = be.to_numpy(Ab).astype(np.float64) * w
            vb = be.to_numpy(vb).astype(np.float64) * w
            A = Ab if A is None else A + Ab
            v = vb if v is None else v + vb
        return A, v

    def _stage2(self, src2, n_val, W, width):
        be = self.backend_
        dt = check_dtype(self.dtype)
        act = self.stage2_activation or self.activation
        rng = np.random.default_rng([int(self.seed), STREAMS["init"], 2])
        Wh = np.asarray(be.to_numpy(W), dtype=np.float64)
        norms = np.linalg.norm(Wh, axis=0)
        dead = norms == 0
        if np.any(dead):  # cannot happen in exact arithmetic; keep the fit defined
            Wh[:, dead] = rng.standard_normal((Wh.shape[0], int(dead.sum())))
            norms = np.linalg.norm(Wh, axis=0)
        W2 = Wh / norms
        b2 = self.bias_scale * rng.standard_normal(width)
        y_all = np.asarray(src2.labels(), dtype=np.float64)
        fit_src, val_src = src2.split(src2.n - n_val)
        self.y_mean_ = float(y_all.mean())
        yc = (y_all - self.y_mean_).astype(dt)
        W2d, b2d = be.asarray(W2, dtype=dt), be.asarray(b2, dtype=dt)
        n_fit = src2.n - n_val
        A_fit, v_fit = self._gram(fit_src, be.asarray(yc[:n_fit]), W2d, b2d, act)
        A_val, v_val = self._gram(val_src, be.asarray(yc[n_fit:]), W2d, b2d, act)
        yy_val = float(np.mean(yc[n_fit:].astype(np.float64) ** 2))
        scale = max(np.trace(A_fit) / width, np.finfo(np.float64).tiny)
        grid = np.atleast_1d(np.asarray(self.ridge, dtype=np.float64))
        # below ~10 eps the penalty is under the round-off of a Gram accumulated in dtype
        grid = np.unique(np.maximum(grid, 10 * np.finfo(dt).eps))
        s, V = metrics.serial_blas(np.linalg.eigh)(A_fit)
        proj = V.T @ v_fit

        def coef(lam):
            return V @ (proj / (s + lam * scale + 1e-300))

        # Rank the penalties by the Gram identity (cheap: no pass over the data) ...
        gram_mse = [float(a @ A_val @ a - 2.0 * a @ v_val + yy_val)
                    for a in (coef(lam) for lam in grid)]
        # ... then confirm the best few on the validation rows themselves: when neurons
        # collapse, F^T F is near-singular and in float32 the identity cancels
        # catastrophically (it can even go negative) for small penalties.
        y_val_dev = yc[n_fit:].astype(np.float64)
        checks = [int(i) for i in np.argsort(gram_mse)[:self.ridge_checks]]
        a_devs = [be.asarray(coef(grid[i]), dtype=dt) for i in checks]
        preds = np.empty((len(checks), n_val))
        # one pass over the validation rows for all candidates (a streamed source
        # regenerates its rows on every pass)
        for lo, Xb in val_src.blocks():
            for c, a_dev in enumerate(a_devs):
                preds[c, lo:lo + Xb.shape[0]] = be.to_numpy(be.predict(Xb, W2d, a_dev, b2d, act))
        direct = {i: float(np.mean((preds[c] - y_val_dev) ** 2)) for c, i in enumerate(checks)}
        best = min(direct, key=direct.get)
        lam = float(grid[best])
        self.ridge_path_ = [(float(l), g, direct.get(i)) for i, (l, g) in
                            enumerate(zip(grid, gram_mse))]
        # keep the coefficients that were validated: refitting on fit+val with the same
        # penalty can blow up along near-null directions of a collapsed feature Gram
        a = coef(lam)
        self.ridge_ = lam
        self.val_rel_mse_ = direct[best] / yy_val if yy_val > 0 else float("nan")
        self.coef_ = a
        self.weights_ = W2
        self.biases_ = b2
        self._dev = (W2d, be.asarray(a, dtype=dt), b2d, act)

    # ------------------------------------------------------------------ predict
    def predict(self, X):
        """f(X) for an array (n, d) or a data source; returns a numpy array."""
        if not hasattr(self, "coef_"):
            raise MimfastInputError("this LayerwiseRegressor is not fitted yet; call fit first")
        be = self.backend_
        W2d, a_d, b2d, act = self._dev
        if hasattr(X, "blocks"):
            out = np.empty(X.n)
            for lo, Xb in X.blocks():
                out[lo:lo + Xb.shape[0]] = be.to_numpy(be.predict(Xb, W2d, a_d, b2d, act))
            return out + self.y_mean_
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise MimfastInputError(
                f"X must have shape (n, {self.n_features_in_}); got {X.shape}")
        check_finite(X, "X", "remove or impute them before predicting")
        Xd = be.asarray(X, dtype=check_dtype(self.dtype))
        return be.to_numpy(be.predict(Xd, W2d, a_d, b2d, act)).astype(np.float64) + self.y_mean_

    def score(self, X, y):
        """Coefficient of determination R^2 = 1 - MSE / Var(y) (higher is better, as in
        scikit-learn); ``1 - score`` is the relative MSE that mimfast reports.

        ``y`` is checked as in ``fit`` (one finite number per row of X).  For a
        constant ``y`` (Var y = 0) R^2 is undefined; as scikit-learn's ``r2_score``
        (force_finite=True) the score is then 1.0 if the predictions equal y
        exactly and 0.0 otherwise.
        """
        pred = self.predict(X)
        y = np.asarray(y)
        if y.shape != pred.shape:
            raise MimfastInputError(f"y has shape {y.shape} but X has {pred.shape[0]} rows; "
                                    "pass one label per row of X")
        if y.dtype.kind not in "fiu":
            raise MimfastInputError(f"y must be numeric; got {y.dtype}")
        check_finite(y, "y", "remove or impute them before scoring")
        y = y.astype(np.float64)
        if np.var(y) == 0:
            return 1.0 if np.array_equal(pred, y) else 0.0
        return 1.0 - metrics.relative_mse(pred, y)


# ---------------------------------------------------------------------- train
def default_n_test(n1):
    """Test rows: n1 // 4, clipped to [4096, 65536]."""
    return min(max(int(n1) // 4, 4096), 65536)


def default_sizes(d, r=2):
    """Stage-1/2 sample sizes n = C d ln d (C = 16, ours) and a test size."""
    n = int(16 * d * math.log(max(d, 2)))
    return n, n, default_n_test(n)


def plan_memory(d, n1, n2, n_test, dtype, width, data="auto", memory_budget=None,
                method="layerwise", baselines=False):
    """Decide materialised vs streamed data; raise if even streaming cannot fit.

    Returns "materialise", "stream", or "stream:<sources>" (see
    ``data.streamed_sources``): with data="auto" and too little memory for
    everything, the sources read most often (stage 1 first) stay held while
    they fit and the rest stream.
    """
    if data != "auto":
        data = mode_name(streamed_sources(data))  # validates; canonical name
    itemsize = np.dtype(dtype).itemsize
    avail = available_memory_bytes()
    budget = memory_budget if memory_budget is not None else (
        int(0.6 * avail) if avail else None)
    # weights and their temporaries, the labels (held whole on the host, float64 plus
    # the working copy) and, for the spectral method (main or baseline), the d x d
    # matrix and its eigh
    spectral = d * d * 8 * 2 if method == "spectral" or baselines else 0
    fixed = 8 * d * width * itemsize + (n1 + n2 + n_test) * (8 + itemsize) * 2 + spectral
    # one streamed X block (sized by data.streamed_block_rows for this d and budget),
    # the sampler's float64 chunk buffers and the kernels' (rows x width) temporaries
    stream_block = streamed_block_bytes(d, dtype, budget, width=width)
    data_bytes = bytes_needed(n1 + n2 + n_test, d, dtype)
    need = fixed + min(stream_block, data_bytes)
    if budget is not None and need > budget:
        if 2 * spectral > need:  # the d x d matrix dominates: smaller n would not help
            raise MimfastInputError(
                f"d={d} needs at least {human_bytes(need)}, of which the "
                f"explicit spectral method's d x d matrix and its eigh take "
                f"{human_bytes(spectral)}, but the memory budget is {human_bytes(budget)}; "
                "use a smaller d or "
                + ("the layerwise method (--method layerwise)" if method == "spectral"
                   else "drop the baselines (--baselines)"))
        raise MimfastInputError(
            f"d={d}, width={width}, n1+n2+n_test={n1 + n2 + n_test} need at least "
            f"{human_bytes(fixed + stream_block)} even with streamed data (weights, labels, "
            f"one block) but the memory budget is {human_bytes(budget)}; pass smaller sizes")
    if data == "auto":
        data = "materialise" if budget is None or data_bytes + fixed <= budget else \
            plan_sources({"stage1": n1, "stage2": n2, "test": n_test}, d, dtype, budget,
                         fixed, stream_block)
    elif data.startswith("stream:") and budget is not None:
        held = {"stage1": n1, "stage2": n2, "test": n_test}
        held_bytes = sum(bytes_needed(n, d, dtype) for k, n in held.items()
                         if k not in streamed_sources(data))
        if fixed + stream_block + held_bytes > budget:
            raise MimfastInputError(
                f"data={data!r} holds {human_bytes(held_bytes)} of data but the memory budget "
                f"is {human_bytes(budget)}; stream more sources or pass data='stream'")
    if data == "materialise" and budget is not None and data_bytes + fixed > budget:
        raise MimfastInputError(
            f"holding the data (n1+n2+n_test = {n1 + n2 + n_test} rows x d={d}, {dtype}) needs "
            f"{human_bytes(data_bytes + fixed)} but only {human_bytes(budget)} is available; "
            "pass data='stream' (--data stream) or smaller sizes")
    return data


def streaming_note(data, mode, d, sizes, dtype, est, baselines=False, memory_budget=None):
    """One line saying what a streamed plan costs (the CLI prints it before the run)."""
    from .data import SOURCES, default_memory_budget
    streamed = [s for s in SOURCES if s in streamed_sources(mode)]
    held = sum(bytes_needed(n, d, dtype) for s, n in zip(SOURCES, sizes) if s in streamed)
    budget = default_memory_budget(memory_budget)
    line = (f"note: data={data} streams {', '.join(streamed)} ({human_bytes(held)} if held"
            + (f", memory budget {human_bytes(budget)}" if budget else "")
            + "): rows are regenerated on every pass")
    if "stage1" in streamed:
        # stage 1 reads its rows once for the labels, once per power iteration (auto
        # step size) and once per step; the one-step and spectral baselines add theirs
        power = int(est.power_iters) if est.eta == "auto" else 0
        if est.method == "spectral":
            passes, how = 2, "labels + Sigma_l"
        else:
            t1 = auto_t1(d) if est.t1 == "auto" else int(est.t1)
            passes, how = 1 + power + t1, f"1 + power_iters {power} + T1 {t1}"
        if baselines:
            passes, how = passes + power + 2, how + " + baselines"
        line += f", about {passes} passes over the stage-1 rows ({how}): expect a long run"
    return line


def train(task, n1=None, n2=None, n_test=None, *, width=256, t1="auto", loss="square",
          activation="logcosh", stage2_activation=None, method="layerwise",
          backend="auto", dtype="float32", seed=0, threads=None, baselines=False,
          data="auto", memory_budget=None, progress=None, notify=None, **params):
    """Run one experiment on a task and return a flat record (dict).

    Keys include test_rel_mse, sin_theta (per direction, descending),
    energy_in_u, t1, n1, n2, width, backend, dtype, timings (seconds per stage)
    and, with ``baselines=True``, a ``baselines`` dict for the one-step (t1=1)
    and spectral methods on the same data and seed.  ``notify`` (a callable
    taking one line of text) is told before any work starts when the plan
    streams data, which makes the run much slower (the CLI prints it).
    """
    if not isinstance(task, MultiIndexTask):
        raise MimfastInputError(
            f"task={task!r} is not a task: pass a MultiIndexTask, e.g. "
            "train(MultiIndexTask(d=512, r=2, link='he2'), ...)")
    d = task.d
    dn1, dn2, _ = default_sizes(d, task.r)
    n1 = dn1 if n1 is None else check_int(n1, "n1", 1)
    n2 = dn2 if n2 is None else check_int(n2, "n2", 2)
    n_test = default_n_test(n1) if n_test is None else check_int(
        n_test, "n_test", 2, " (the test error needs at least 2 samples)")
    dt = check_dtype(dtype)
    mode = plan_memory(d, n1, n2, n_test, dt, width if isinstance(width, int) else 2,
                       data, memory_budget, method, baselines)
    be = get_backend(backend, threads)
    # validate every hyper-parameter before spending time on data
    probe = LayerwiseRegressor(width=width, t1=t1, loss=loss, activation=activation,
                               stage2_activation=stage2_activation, method=method,
                               dtype=dt, seed=seed, **params)
    probe._validate(d, n1, n2)
    kind = get_loss(loss, params.get("delta", 1.0), dt).kind
    if n2 < 4:
        raise MimfastInputError(f"n2={n2} is too small: stage 2 needs at least 4 rows")
    streamed = streamed_sources(mode)
    if streamed and notify is not None:
        notify(streaming_note(data, mode, d, (n1, n2, n_test), dt, probe, baselines,
                              memory_budget))
    timings = {}
    with _timer(timings, "compile"):
        be.warmup(d, int(width), dt, kind, activation, stage2_activation)
    with _timer(timings, "data"):
        s1, s2, st = (TaskSource(task, name, n, dt, be, streamed=name in streamed,
                                 memory_budget=memory_budget)
                      for name, n in (("stage1", n1), ("stage2", n2), ("test", n_test)))
        for s in (s1, s2, st):  # generate held data now: its time is not charged to the stages
            if not s.streamed:
                next(s.blocks())
    y_test = np.asarray(st.labels(), dtype=np.float64)
    big = float(np.finfo(dt).max)
    for name, src in (("stage-1", s1), ("stage-2", s2), ("test", st)):
        # noise * N(0, 1) reaches |eps| ~ 5 in every large sample: from max / 8 on,
        # non-finite labels are the noise term's doing, not the link's
        if task.noise * 8 > big and not np.all(np.isfinite(src.labels())):
            wider = dt != np.float64 and task.noise * 8 <= float(np.finfo(np.float64).max)
            raise MimfastInputError(
                f"noise={task.noise:g} overflows {dt.name}: noise x N(0, 1) draws exceed "
                f"its largest value {big:.3g}; use "
                + ("dtype='float64' (--dtype float64) or " if wider else "") + "less noise")
        check_finite(src.labels(), f"{name} labels of target {task.name!r}",
                     f"the link g returned NaN/inf or values beyond {dt.name}: check it is "
                     "finite and moderate on all of R^r")

    def one(method_, t1_, prog):
        est = LayerwiseRegressor(width=width, t1=t1_, loss=loss, activation=activation,
                                 stage2_activation=stage2_activation, method=method_,
                                 spectral_rank=task.r, backend=be, dtype=dt, seed=seed,
                                 threads=threads, progress=prog, **params)
        est.fit(s1, stage2=s2, subspace=task.U)
        t0 = time.perf_counter()
        pred = est.predict(st)
        be.synchronize()
        t_test = time.perf_counter() - t0
        W = est.stage1_weights_
        sines = metrics.subspace_sines(task.U, W)
        rec = {
            "method": method_,
            "test_rel_mse": metrics.relative_mse(pred, y_test),
            "val_rel_mse": est.val_rel_mse_,
            "sin_theta": sines.tolist(),
            "sin_theta_max": float(sines.max()),
            "energy_in_u": metrics.energy_in_subspace(task.U, W),
            "energy_per_direction": metrics.energy_per_direction(task.U, W).tolist(),
            "t1": est.t1_,
            "eta": est.eta_,
            "ridge": est.ridge_,
            "timings": {"stage1": est.timings_.get("stage1", 0.0),
                        "step_size": est.timings_.get("step_size", 0.0),
                        "stage2": est.timings_.get("stage2", 0.0),
                        "test": t_test},
            "history": est.history_,
        }
        return rec

    main = one(method, t1, progress)
    main["timings"]["data"] = timings["data"]
    main["timings"]["compile"] = timings["compile"]
    # step_size is part of stage1; compile is one-off JIT work, reported on its own
    main["timings"]["total"] = sum(v for k, v in main["timings"].items()
                                   if k not in ("step_size", "compile"))
    record = {
        **task.info(),
        "n1": n1, "n2": n2, "n_test": n_test, "width": int(width),
        "loss": loss if isinstance(loss, str) else getattr(loss, "name", "custom"),
        "activation": activation,
        "stage2_activation": stage2_activation or activation,
        "backend": be.name, "dtype": dt.name, "threads": be.describe().get("threads", threads),
        "data_mode": mode,
        **main,
    }
    if baselines:
        record["baselines"] = {}
        if not (method == "layerwise" and t1 == 1):
            b1 = one("layerwise", 1, False)
            record["baselines"]["one_step"] = {**{k: v for k, v in b1.items()
                                                  if k != "history"}, "method": "one_step"}
        if method != "spectral":
            bs = one("spectral", "auto", False)
            record["baselines"]["spectral"] = {k: v for k, v in bs.items() if k != "history"}
    return record
