"""Gaussian multi-index tasks y = g(Ux) + noise with a reproducible block sampler.

Rows are generated in fixed chunks of ``CHUNK_ROWS`` rows, each from its own
counter-based seed (seed, stream, chunk index).  The same (seed, stream, row
range) therefore gives the same rows whatever the block size asked for and
however many threads generate them.  Data is drawn in float64 and rounded, so
a float32 sample is the float64 sample rounded to float32.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from .errors import (MimfastInputError, available_memory_bytes, check_dtype, check_int,
                     human_bytes)

CHUNK_ROWS = 1024
STREAMS = {"stage1": 1, "stage2": 2, "test": 3, "init": 4}
DATA_STREAMS = ("stage1", "stage2", "test")


def stream_id(stream):
    """The integer id of a stream name (or a raw id >= 0), else a clear error."""
    if isinstance(stream, str):
        if stream not in DATA_STREAMS:
            raise MimfastInputError(
                f"stream={stream!r} is unknown; choose one of: {', '.join(DATA_STREAMS)}")
        return STREAMS[stream]
    return check_int(stream, "stream", 0, " (or a name: " + ", ".join(DATA_STREAMS) + ")")


def check_sample_memory(n, d, dtype):
    """Refuse a sample that cannot fit, before np.empty (which may overcommit and
    leave the fill to be OOM-killed) or a bare MemoryError."""
    need = int(n) * (int(d) + 1) * np.dtype(dtype).itemsize
    avail = available_memory_bytes()
    if avail is not None and need > avail:
        raise MimfastInputError(
            f"n={n} rows at d={d} ({np.dtype(dtype).name}) need {human_bytes(need)} for X "
            f"and y but only {human_bytes(avail)} is free; draw fewer rows, or draw them in "
            "parts with start=")


# --------------------------------------------------------------------------
# links g: R^r -> R on z = Ux, each normalised to mean 0 and variance 1
# --------------------------------------------------------------------------
def he2(x):
    return x * x - 1.0


def he3(x):
    return x ** 3 - 3.0 * x


def he4(x):
    return x ** 4 - 6.0 * x ** 2 + 3.0


def graded(r):
    """Distinct coefficients so the r directions have distinct eigenvalues."""
    return np.array([1.0 / math.sqrt(1.0 + k) for k in range(r)])


@dataclass(frozen=True)
class Link:
    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    min_r: int
    exact_r: bool
    mean: float
    std: float
    description: str

    def __call__(self, z):
        return (self.fn(z) - self.mean) / self.std


def _sum_link(h, var_h, name, desc):
    def make(r):
        c = graded(r)
        return Link(name, lambda z: he_sum(z, h, c), 1, False, 0.0,
                    math.sqrt(var_h * float(np.sum(c ** 2))), desc)
    return make


def he_sum(z, h, c):
    return h(z) @ c


def _fixed(name, fn, r, mean, var, desc):
    return lambda _r: Link(name, fn, r, True, mean, math.sqrt(var), desc)


_SIGN3 = lambda z: np.sign(z[:, 0] * z[:, 1] * z[:, 2])  # noqa: E731

_LINK_FACTORIES = {
    "he2": _sum_link(he2, 2.0, "he2", "sum_k c_k He2(z_k), graded c_k = 1/sqrt(k)"),
    "he3": _sum_link(he3, 6.0, "he3", "sum_k c_k He3(z_k) (square loss is blind to it)"),
    "he4": _sum_link(he4, 24.0, "he4", "sum_k c_k He4(z_k) (square loss is blind to it)"),
    "z1z2": _fixed("z1z2", lambda z: z[:, 0] * z[:, 1], 2, 0.0, 1.0, "z1*z2"),
    "z1z2+z3z4": _fixed("z1z2+z3z4", lambda z: z[:, 0] * z[:, 1] + z[:, 2] * z[:, 3],
                        4, 0.0, 2.0, "z1*z2 + z3*z4"),
    "he2+z1z2+z2z3": _fixed(
        "he2+z1z2+z2z3",
        lambda z: he2(z[:, 0]) + z[:, 0] * z[:, 1] + z[:, 1] * z[:, 2],
        3, 0.0, 4.0, "He2(z1) + z1*z2 + z2*z3"),
    "z1z2z3": _fixed("z1z2z3", lambda z: z[:, 0] * z[:, 1] * z[:, 2], 3, 0.0, 1.0,
                     "z1*z2*z3 (no second-order Hermite part)"),
    "staircase": _fixed("staircase", lambda z: z[:, 0] ** 2 + _SIGN3(z), 3, 1.0, 3.0,
                        "z1^2 + sign(z1 z2 z3) (negative control)"),
    "sign3": _fixed("sign3", _SIGN3, 3, 0.0, 1.0, "sign(z1 z2 z3) (negative control)"),
}
LINKS = tuple(_LINK_FACTORIES)
NATURAL_R = {"he2": 2, "he3": 2, "he4": 2, "z1z2": 2, "z1z2+z3z4": 4,
             "he2+z1z2+z2z3": 3, "z1z2z3": 3, "staircase": 3, "sign3": 3}


def make_link(link, r):
    """A Link for a registered name, or a user callable g(z) with z of shape (n, r)."""
    if isinstance(link, Link):
        return link
    if callable(link):
        return Link(getattr(link, "__name__", "custom"), link, 1, False, 0.0, 1.0,
                    "user-supplied link")
    if link not in _LINK_FACTORIES:
        raise MimfastInputError(
            f"target={link!r} is unknown; choose one of: {', '.join(LINKS)}, "
            "or pass a callable g(z)")
    lk = _LINK_FACTORIES[link](r)
    if lk.exact_r and r != lk.min_r:
        raise MimfastInputError(
            f"target {link!r} depends on exactly {lk.min_r} directions but r={r}; "
            f"pass r={lk.min_r}")
    return lk


def chunk_seed(seed, stream, chunk):
    return np.random.SeedSequence([int(seed), int(stream), int(chunk)])


@dataclass
class MultiIndexTask:
    """y = g(Ux) + noise * eps, x ~ N(0, I_d), U with r orthonormal rows.

    ``sample(n, stream, start)`` returns rows ``start .. start+n`` of the
    given stream ("stage1", "stage2", "test"); streams are independent, so
    stage 1, stage 2 and the test set never share samples.
    """

    d: int
    r: int = 2
    link: Union[str, Callable] = "he2"
    noise: float = 0.0
    seed: int = 0
    U: np.ndarray = field(init=False, repr=False)
    g: Link = field(init=False, repr=False)

    def __post_init__(self):
        self.d = check_int(self.d, "d", 1, " (the input dimension)")
        self.r = check_int(self.r, "r", 1, " (the number of hidden directions)")
        if self.r > self.d:
            raise MimfastInputError(f"r={self.r} exceeds d={self.d}; the hidden subspace "
                                    "needs r <= d")
        if not isinstance(self.noise, (int, float)) or not math.isfinite(self.noise) \
                or self.noise < 0:
            raise MimfastInputError(f"noise={self.noise!r} must be a finite number >= 0")
        self.seed = check_int(self.seed, "seed", 0)
        avail = available_memory_bytes()
        if avail is not None and 3 * 8 * self.d * self.r > avail:
            raise MimfastInputError(
                f"d={self.d} is too large: the subspace U alone needs "
                f"{human_bytes(8 * self.d * self.r)} (three times that to build); "
                "pass a smaller d")
        self.g = make_link(self.link, self.r)
        rng = np.random.default_rng([self.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((self.d, self.r)))
        self.U = np.ascontiguousarray(q.T)

    @property
    def name(self):
        return self.g.name

    def labels(self, X, rng=None):
        """g(UX) (+ noise when rng is given), float64."""
        y = np.asarray(self.g(np.asarray(X, dtype=np.float64) @ self.U.T))
        if y.dtype.kind not in "biuf":
            what = "complex" if y.dtype.kind == "c" else f"{y.dtype}"
            raise MimfastInputError(
                f"target link {self.g.name!r} returned {what} values; it must return real "
                "numbers (take .real or abs() inside the link if that is what you mean)")
        y = y.astype(np.float64, copy=False)
        if y.shape != (X.shape[0],):
            raise MimfastInputError(
                f"target link {self.g.name!r} returned shape {y.shape} for z of shape "
                f"({X.shape[0]}, {self.r}); it must return one label per row, shape "
                f"({X.shape[0]},)")
        if rng is not None and self.noise > 0:
            # an overflowing noise term becomes inf here; the caller that checks the
            # labels says so (schedule.train), numpy need not warn as well
            with np.errstate(over="ignore", invalid="ignore"):
                y = y + self.noise * rng.standard_normal(y.shape[0])
        return y

    def _chunk(self, stream, chunk):
        rng = np.random.default_rng(chunk_seed(self.seed, stream, chunk))
        X = rng.standard_normal((CHUNK_ROWS, self.d))
        y = self.labels(X, rng)
        return X, y

    def sample(self, n, stream="stage1", start=0, dtype="float64", threads=None):
        """Rows start..start+n of a stream as (X (n, d), y (n,)) in dtype."""
        n = check_int(n, "n", 1)
        start = check_int(start, "start", 0)
        dt = check_dtype(dtype)
        sid = stream_id(stream)
        check_sample_memory(n, self.d, dt)
        X = np.empty((n, self.d), dtype=dt)
        y = np.empty(n, dtype=dt)
        first, last = start // CHUNK_ROWS, (start + n - 1) // CHUNK_ROWS

        def fill(chunk):
            Xc, yc = self._chunk(sid, chunk)
            lo = max(start, chunk * CHUNK_ROWS)
            hi = min(start + n, (chunk + 1) * CHUNK_ROWS)
            src = slice(lo - chunk * CHUNK_ROWS, hi - chunk * CHUNK_ROWS)
            X[lo - start:hi - start] = Xc[src]
            with np.errstate(over="ignore", invalid="ignore"):  # float32 cast of huge labels
                y[lo - start:hi - start] = yc[src]

        workers = threads or min(os.cpu_count() or 1, 8)
        chunks = range(first, last + 1)
        if workers <= 1 or len(chunks) == 1:
            for c in chunks:
                fill(c)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(fill, chunks))
        return X, y

    def info(self):
        return {"target": self.g.name, "d": self.d, "r": self.r, "noise": self.noise,
                "seed": self.seed, "link": self.g.description}
