"""The whole two-stage pipeline over d, against the O~(d^2) bound.

n1 = n2 = C d ln d (``common.PIPE_C``), width and T1 fixed (``PIPE_WIDTH``,
``PIPE_T1``), backend "auto", one data mode for the whole grid
(``PIPE_DATA``: materialised in the quick profile, streamed in the full one,
whose d = 8192 does not fit in memory).  Work
is n d m (T1 + 1) = O(d^2 log d), so a flat ``track_time_per_d2logd`` and a
``track_fitted_exponent`` near 2 are what "Õ(d^2)" looks like; quality is
tracked next to speed so a faster-but-wrong change shows up.

``Pipeline.time_train`` is asv's own timing of one training per d.  The
``track_`` benchmarks read one sweep over the whole d grid, run once per
environment in ``setup_cache`` (one run per d, seed 0, timings from the
record).
"""

import math

from . import common

_VERSION = "pipeline-1"  # bump when the workload (C, width, T1, target) changes


def _task(d, seed=0):
    from mimfast.tasks import MultiIndexTask
    return MultiIndexTask(d=d, r=2, link="he2", seed=seed)


def _n(d):
    return int(common.PIPE_C * d * math.log(d))


def _train(d, seed=0):
    from mimfast.schedule import train
    n = _n(d)
    return train(_task(d, seed), n, n, min(max(n // 4, 4096), 65536),
                 width=common.PIPE_WIDTH, t1=common.PIPE_T1, backend="auto",
                 seed=seed, threads=common.threads(), progress=False, data=common.PIPE_DATA)


def _warm():
    """Compile the kernels on a tiny problem (Numba JIT is not what we time)."""
    from mimfast.schedule import train
    train(_task(16), 512, 512, 256, width=common.PIPE_WIDTH, t1=1, backend="auto",
          threads=common.threads(), progress=False)


def _sweep(_self=None):
    """One training per d (seed 0); shared by the track classes (same asv cache key)."""
    _warm()
    out = {}
    for d in common.PIPE_D:
        rec = _train(d)
        out[d] = {"total": rec["timings"]["total"], "test_rel_mse": rec["test_rel_mse"],
                  "sin_theta_max": rec["sin_theta_max"], "data_mode": rec["data_mode"],
                  "n": rec["n1"], "t1": rec["t1"]}
    return out


_sweep.timeout = 900 if common.QUICK else 7200


def _fit(cache):
    ds = sorted(cache)
    xs = [math.log(d) for d in ds]
    ys = [math.log(cache[d]["total"]) for d in ds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


class Pipeline:
    """asv's timing of one whole training per d."""
    params = [common.PIPE_D]
    param_names = ["d"]
    timeout = 600 if common.QUICK else 3600
    version = _VERSION
    number = 1
    repeat = (1, 3, 60.0)
    rounds = 1
    warmup_time = 0

    def setup(self, d):
        _warm()

    def time_train(self, d):
        _train(d)


class PipelineTracks:
    """Scaling and quality, from one sweep over the d grid (setup_cache)."""
    params = [common.PIPE_D]
    param_names = ["d"]
    timeout = 900 if common.QUICK else 7200
    version = _VERSION

    setup_cache = _sweep

    def track_time_per_d2logd(self, cache, d):
        d0 = min(cache)
        per = cache[d]["total"] / (d * d * math.log(d))
        return per / (cache[d0]["total"] / (d0 * d0 * math.log(d0)))
    track_time_per_d2logd.unit = "time/(d^2 ln d), relative to smallest d"

    def track_test_rel_mse(self, cache, d):
        return cache[d]["test_rel_mse"]
    track_test_rel_mse.unit = "relative test MSE"

    def track_sin_theta_max(self, cache, d):
        return cache[d]["sin_theta_max"]
    track_sin_theta_max.unit = "max sin theta"


class PipelineExponent:
    """Fitted log-log exponent of total time vs d over the whole grid."""
    timeout = PipelineTracks.timeout
    version = _VERSION
    setup_cache = _sweep

    def track_fitted_exponent(self, cache):
        return _fit(cache)
    track_fitted_exponent.unit = "exponent of d"
