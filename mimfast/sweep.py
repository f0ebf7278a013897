"""Sweeps: a grid of run configurations -> one tidy record per run.

A *run configuration* is a plain dict (JSON-serialisable, so it travels to a
Dask worker as is) naming one training: the task (``d``, ``r``, ``target``,
``noise``, ``seed``), the sample sizes (``n1`` or ``n_over_d`` or
``n_over_dlogd``; ``n2`` defaults to ``n1``; ``n_test``), the network and schedule (``width``,
``t1``, ``loss``, ``delta``, ``method``, ``activation``), the engine
(``backend``, ``dtype``) and optional ``extras`` (extra measurements, see
below).  ``method`` is ``"layerwise"``, ``"one_step"`` (layerwise with T1 = 1,
Damian et al. 2022) or ``"spectral"`` (top-r eigenvectors of Sigma_l).

``run_one(config)`` trains it with ``schedule.train`` and returns the record
``train`` returns (what ``run --json`` writes), flattened for CSV: nested
dicts become dotted keys (``timings.stage1``, ``baselines.one_step.test_rel_mse``),
lists of numbers become indexed keys (``sin_theta.0``, ``sin_theta.1``); the
per-step ``history`` is dropped.  Sweep fields are added: ``run_key`` (a hash
of the configuration), ``status`` (``ok`` or ``error``), ``error``,
``variant`` (the configured method), ``n_over_d``, ``n_over_dlogd``,
``wall_s`` and ``worker``.

Each configuration carries its own seeds (the task seed and the training
seed) and every task runs with a fixed number of threads (``threads``, 1 by
default), so a record does not depend on where or in which order it ran: the
in-process engine and a Dask cluster give identical records except for the
timing fields (``TIMING_FIELDS``).  Results with *different* thread counts
agree only to rounding (parallel reductions add in another order).

Engines: in-process (default); ``workers=N`` starts a
``dask.distributed.LocalCluster`` of N single-threaded worker processes;
``scheduler=ADDRESS`` uses an existing cluster.  Dask is an optional extra
(``pip install 'mimfast[dask]'``).

Results go to ``<prefix>.json`` and ``<prefix>.csv`` as each run finishes
(each file rewritten atomically: temp file + rename).  A re-run with the same
prefix skips the configurations already finished (``status == ok``) and
retries failed ones; a failure is recorded on its row with the error and does
not stop the sweep.

Within a process, the rows of a task stream are cached (``DataCache``): runs
that differ only in T1, loss or method reuse the same stage-1/stage-2/test
rows instead of drawing them again.  The cached rows are exactly the rows the
sampler draws (counter-based seeds), so caching changes timing, never results.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import itertools
import json
import math
import os
import socket
import threading
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from .errors import MimfastInputError

DASK_HINT = "pip install 'mimfast[dask]'"

METHOD_VARIANTS = ("layerwise", "one_step", "spectral")

# configuration keys and their defaults (None: derived, see normalise_config)
CONFIG_DEFAULTS = {
    "d": 256, "r": None, "target": "he2", "noise": 0.0, "seed": 0, "task_seed": None,
    "n1": None, "n_over_d": None, "n_over_dlogd": None, "n2": None, "n_test": None,
    "width": 64, "t1": "auto", "loss": "square", "delta": 1.0, "method": "layerwise",
    "activation": "logcosh", "stage2_activation": None, "backend": "auto",
    "dtype": "float32", "baselines": False, "data": "auto", "extras": (),
}
# free-form labels a study may attach; they are copied to the record and hashed
LABEL_PREFIX = "tag_"

TIMING_FIELDS = ("wall_s", "worker", "threads")


def is_timing_field(key):
    """Fields that legitimately differ between two executions of the same run."""
    return (key in TIMING_FIELDS or key.startswith("timings.") or ".timings." in key
            or key.endswith("_time_s"))


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------
def grid(base=None, **axes):
    """Cartesian product of ``axes`` (name -> list of values) over ``base``.

    The first axis varies slowest.  Returns a list of configuration dicts.
    """
    base = dict(base or {})
    names = list(axes)
    values = [list(v) if isinstance(v, (list, tuple, range)) else [v] for v in axes.values()]
    return [{**base, **dict(zip(names, combo))} for combo in itertools.product(*values)]


def normalise_config(cfg):
    """Fill defaults, resolve the sample sizes and check the keys; returns a new dict."""
    unknown = [k for k in cfg if k not in CONFIG_DEFAULTS and not k.startswith(LABEL_PREFIX)]
    if unknown:
        raise MimfastInputError(
            f"unknown sweep configuration key(s) {unknown}; known: "
            f"{', '.join(CONFIG_DEFAULTS)} (and free labels starting with {LABEL_PREFIX!r})")
    c = {**CONFIG_DEFAULTS, **cfg}
    from .tasks import NATURAL_R
    d = int(c["d"])
    c["d"] = d
    if c["r"] is None:
        c["r"] = NATURAL_R.get(c["target"], 2) if isinstance(c["target"], str) else 2
    if c["task_seed"] is None:
        c["task_seed"] = c["seed"]
    sizes = [k for k in ("n1", "n_over_d", "n_over_dlogd") if c[k] is not None]
    if len(sizes) > 1:
        raise MimfastInputError(f"give at most one of n1, n_over_d, n_over_dlogd; got {sizes}")
    if c["n_over_d"] is not None:
        c["n1"] = int(round(float(c["n_over_d"]) * d))
    elif c["n_over_dlogd"] is not None:
        c["n1"] = int(round(float(c["n_over_dlogd"]) * d * math.log(max(d, 2))))
    c["n_over_d"] = c["n_over_dlogd"] = None  # resolved into n1 (idempotent, one key per run)
    if c["n1"] is not None:
        c["n1"] = int(c["n1"])
        if c["n2"] is None:  # a sweep over n scales both stages (train's default is C d ln d)
            c["n2"] = c["n1"]
    if c["method"] not in METHOD_VARIANTS:
        raise MimfastInputError(
            f"method={c['method']!r} is unknown; choose one of: {', '.join(METHOD_VARIANTS)}")
    c["extras"] = tuple(sorted(set(c["extras"] or ())))
    return c


def check_configs(configs, workers=None):
    """Reject nonsense before any work (in the parent, before a worker starts).

    An empty list, ``workers < 1`` and an unknown target, loss, backend or
    dtype raise ``MimfastInputError`` naming the value and the choices.  Other
    per-configuration problems (say n1 < width) stay per-row failures.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise MimfastInputError(f"--workers={workers!r} must be a positive integer")
    if not configs:
        raise MimfastInputError("the sweep grid is empty: every axis needs at least one value "
                                "(check the list flags, e.g. --d, --ratios, --seeds)")
    from .backends import BACKENDS
    from .errors import check_choice, check_dtype
    from .losses import LOSSES
    from .tasks import LINKS
    for cfg in configs:
        if not isinstance(cfg, dict):
            raise MimfastInputError(f"a sweep configuration must be a dict, got {cfg!r}")
        target = cfg.get("target", CONFIG_DEFAULTS["target"])
        if isinstance(target, str):
            check_choice(target, LINKS, "target")
        loss = cfg.get("loss", CONFIG_DEFAULTS["loss"])
        if isinstance(loss, str) and ":" not in loss:
            check_choice(loss, LOSSES, "loss")
        backend = cfg.get("backend", CONFIG_DEFAULTS["backend"])
        if isinstance(backend, str):
            check_choice(backend, BACKENDS, "backend")
        check_dtype(cfg.get("dtype", CONFIG_DEFAULTS["dtype"]))
        _check_sizes(cfg)


def _check_sizes(cfg):
    """The structural limits every run shares (d, r, width, T1), so that a bad
    flag fails once, up front, instead of as every row of the sweep."""
    from .errors import check_int
    d = check_int(cfg.get("d", CONFIG_DEFAULTS["d"]), "d", 1)
    r = cfg.get("r", CONFIG_DEFAULTS["r"])
    if r is not None:
        r = check_int(r, "r", 1)
        if r > d:
            raise MimfastInputError(f"r={r} is larger than d={d}; use r <= d")
    width = check_int(cfg.get("width", CONFIG_DEFAULTS["width"]), "width", 2,
                      " (neurons come in +/- pairs: use an even width >= 2)")
    if width % 2:
        raise MimfastInputError(f"width={width} must be even (neurons come in +/- pairs); "
                                f"use {width + 1}")
    t1 = cfg.get("t1", CONFIG_DEFAULTS["t1"])
    if t1 != "auto":
        check_int(t1, "t1", 0, " (or 'auto')")


def run_key(cfg):
    """Stable short hash of a configuration (what a re-run uses to skip finished rows)."""
    c = normalise_config(cfg)
    canon = json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()},
                       sort_keys=True, default=str)
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# the data cache (per process)
# ---------------------------------------------------------------------------
class DataCache:
    """LRU cache of task-stream rows, bounded in bytes.

    Keyed by everything that determines the rows (task d, r, target, noise,
    seed, stream, dtype) and the row range, so a hit returns the very rows a
    fresh draw would give.  A request for rows inside a cached range is served
    from it (stage 2 splits its rows into fit / validation parts after drawing
    them whole).  Callers get copies: the cache is never aliased.
    """

    def __init__(self, max_bytes=None):
        if max_bytes is None:
            max_bytes = int(os.environ.get("MIMFAST_SWEEP_CACHE_MB", "2048")) * 2 ** 20
            from .errors import available_memory_bytes
            avail = available_memory_bytes()
            if avail:
                max_bytes = min(max_bytes, avail // 4)
        self.max_bytes = int(max_bytes)
        self._items = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(task, n, stream, start, dtype):
        link = task.link if isinstance(task.link, str) else None
        if link is None:
            return None  # user callables: do not cache (no stable identity)
        return (task.d, task.r, link, float(task.noise), int(task.seed), str(stream),
                np.dtype(dtype).name, int(start), int(n))

    def get(self, key):
        """(X, y) for the key's rows, or None; slices of a cached superset count."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item
            head, start, n = key[:-2], key[-2], key[-1]
            for k, (X, y) in reversed(self._items.items()):
                s0, n0 = k[-2], k[-1]
                if k[:-2] == head and s0 <= start and start + n <= s0 + n0:
                    self._items.move_to_end(k)
                    self.hits += 1
                    lo = start - s0
                    return X[lo:lo + n], y[lo:lo + n]
            self.misses += 1
            return None

    def put(self, key, X, y):
        size = X.nbytes + y.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (X, y)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (Xo, yo) = self._items.popitem(last=False)
                self._bytes -= Xo.nbytes + yo.nbytes

    def clear(self):
        with self._lock:
            self._items.clear()
            self._bytes = 0


_CACHE = None


def data_cache():
    global _CACHE
    if _CACHE is None:
        _CACHE = DataCache()
    return _CACHE


def _draw_rows(task, n, stream, start, dtype, threads):
    try:
        from .data import sample_rows
    except ImportError:  # older data module: the task's own sampler (same rows)
        return task.sample(n, stream=stream, start=start, dtype=dtype, threads=threads)
    return sample_rows(task, n, stream, start, dtype, threads=threads)


def caching_backend(name="auto", threads=None, cache=None):
    """A host backend (numpy/numba) whose ``sample`` goes through the data cache.

    Device backends (cupy) are returned unchanged: their rows live on the device.
    """
    from .backends import Backend, get_backend
    be = get_backend(name, threads)
    if be.name not in ("numpy", "numba") or type(be).sample is not Backend.sample:
        return be
    cache = cache or data_cache()
    base = type(be)

    class CachedRows(base):
        def sample(self, task, n, stream, start, dtype):
            key = DataCache.key(task, n, stream, start, dtype)
            hit = cache.get(key) if key is not None else None
            if hit is None:
                X, y = _draw_rows(task, n, stream, start, dtype, self.threads)
                X = np.ascontiguousarray(X)
                y = np.asarray(y)
                if key is not None:
                    cache.put(key, X.copy(), y.copy())
                return self.asarray(X), y
            return self.asarray(hit[0].copy()), hit[1].copy()

    CachedRows.name = base.name
    CachedRows.__name__ = CachedRows.__qualname__ = f"Cached{base.__name__}"
    wrapped = CachedRows.__new__(CachedRows)
    wrapped.__dict__.update(be.__dict__)
    return wrapped


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------
def flatten(obj, prefix="", out=None, skip=("history",)):
    """Nested dicts -> dotted keys, lists of scalars -> indexed keys."""
    out = {} if out is None else out
    for k, v in obj.items():
        if k in skip:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flatten(v, key + ".", out, skip)
        elif isinstance(v, (list, tuple)):
            if all(not isinstance(x, (dict, list, tuple)) for x in v):
                for i, x in enumerate(v):
                    out[f"{key}.{i}"] = _plain(x)
            else:
                out[key] = json.dumps(v, default=_plain)
        else:
            out[key] = _plain(v)
    return out


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _resolve(spec):
    """'module:function' -> the function (extras travel to workers by name)."""
    if callable(spec):
        return spec
    mod, _, fn = str(spec).partition(":")
    if not fn:
        raise MimfastInputError(f"extra {spec!r} must be written 'module:function'")
    return getattr(importlib.import_module(mod), fn)


def resolve_loss(spec):
    """A loss name as is; 'module:attr' imported (a Loss, or a label transform T(y))."""
    if isinstance(spec, str) and ":" in spec:
        from .losses import Loss
        obj = _resolve(spec)
        if isinstance(obj, Loss):
            return obj
        if callable(obj):
            return Loss(name=spec.rpartition(":")[2], kind="square", transform=obj)
        raise MimfastInputError(f"loss {spec!r} is neither a Loss nor a label transform")
    return spec


def make_task(cfg):
    from .tasks import MultiIndexTask
    return MultiIndexTask(d=cfg["d"], r=cfg["r"], link=cfg["target"], noise=cfg["noise"],
                          seed=cfg["task_seed"])


def train_config(cfg, threads=1, backend=None):
    """Train one normalised configuration; returns (task, backend, train's nested record)."""
    from .schedule import train
    task = make_task(cfg)
    be = backend or caching_backend(cfg["backend"], threads)
    method = cfg["method"]
    # a sweep may cross T1 with the methods; the spectral method takes no steps
    t1 = 1 if method == "one_step" else "auto" if method == "spectral" else cfg["t1"]
    rec = train(task, cfg["n1"], cfg["n2"], cfg["n_test"], width=cfg["width"], t1=t1,
                loss=resolve_loss(cfg["loss"]), delta=cfg["delta"],
                activation=cfg["activation"],
                stage2_activation=cfg["stage2_activation"],
                method="spectral" if method == "spectral" else "layerwise",
                backend=be, dtype=cfg["dtype"], seed=cfg["seed"], threads=threads,
                baselines=bool(cfg["baselines"]), data=cfg["data"], progress=False)
    return task, be, rec


def _config_fields(cfg):
    out = {"run_key": run_key(cfg), "variant": cfg["method"]}
    for k in ("d", "r", "target", "noise", "seed", "width", "loss", "delta", "activation",
              "dtype"):
        out[k] = cfg[k]
    out["t1_requested"] = cfg["t1"] if cfg["method"] != "one_step" else 1
    out["backend_requested"] = cfg["backend"]
    out["task_seed"] = cfg["task_seed"]
    out["extras"] = ",".join(cfg["extras"])
    for k, v in cfg.items():
        if k.startswith(LABEL_PREFIX):
            out[k] = v
    return out


def run_one(cfg, threads=1):
    """Run one configuration; never raises: a failure becomes a row with status 'error'."""
    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        c = normalise_config(cfg)
    except Exception as exc:  # bad configuration: record it and move on
        return {"run_key": _safe_key(cfg), "status": "error",
                "error": f"{type(exc).__name__}: {exc}", "wall_s": 0.0, "worker": worker,
                **{k: v for k, v in cfg.items() if not isinstance(v, (list, tuple, dict))}}
    head = _config_fields(c)
    try:
        task, be, rec = train_config(c, threads)
        flat = {**head, **flatten(rec)}
        flat["variant"] = c["method"]
        n1 = flat["n1"]
        flat["n_over_d"] = n1 / c["d"]
        flat["n_over_dlogd"] = n1 / (c["d"] * math.log(max(c["d"], 2)))
        for spec in c["extras"]:
            extra = _resolve(spec)(task=task, cfg=c, record=rec, backend=be, threads=threads)
            flat.update({k: _plain(v) for k, v in flatten(extra).items()})
        flat["status"] = "ok"
        flat["error"] = ""
    except Exception as exc:  # recorded per row, the sweep goes on
        flat = {**head, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6)}
    flat["wall_s"] = time.perf_counter() - t0
    flat["worker"] = worker
    return flat


def _safe_key(cfg):
    try:
        return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    except Exception:
        return "unhashable"


# ---------------------------------------------------------------------------
# results on disk
# ---------------------------------------------------------------------------
FIRST_COLUMNS = ("run_key", "status", "variant", "target", "d", "r", "n1", "n_over_d",
                 "n_over_dlogd", "width", "t1", "loss", "method", "seed", "test_rel_mse",
                 "sin_theta_max", "energy_in_u")


class ResultStore:
    """Records keyed by run_key, mirrored to ``<prefix>.json`` and ``<prefix>.csv``."""

    def __init__(self, prefix):
        self.prefix = str(prefix)
        self.json_path = self.prefix + ".json"
        self.csv_path = self.prefix + ".csv"
        self.records = OrderedDict()
        if os.path.exists(self.json_path):
            try:
                with open(self.json_path) as fh:
                    for rec in json.load(fh):
                        self.records[rec["run_key"]] = rec
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise MimfastInputError(
                    f"cannot read previous results {self.json_path} ({exc}); "
                    "move it away to start afresh") from exc

    def finished(self, key):
        rec = self.records.get(key)
        return rec is not None and rec.get("status") == "ok"

    def add(self, rec, write=True):
        self.records[rec["run_key"]] = rec
        if write:
            self.write()

    def write(self):
        recs = list(self.records.values())
        _atomic_write(self.json_path, json.dumps(recs, indent=1, default=_plain))
        _atomic_write(self.csv_path, to_csv(recs))


def to_csv(records):
    cols = []
    seen = set()
    for k in FIRST_COLUMNS:
        if any(k in r for r in records):
            cols.append(k)
            seen.add(k)
    for r in records:
        for k in r:
            if k not in seen and k != "traceback":
                seen.add(k)
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue()


def _atomic_write(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------
def _import_distributed(flag):
    try:
        import distributed
    except ImportError as exc:
        raise MimfastInputError(
            f"{flag} needs Dask's distributed scheduler, which is not installed; "
            f"{DASK_HINT} (or run without {flag}: the in-process engine needs nothing)") from exc
    return distributed


@contextmanager
def dask_client(workers=None, scheduler=None):
    """A Dask client for ``workers=N`` (LocalCluster) or ``scheduler=ADDRESS``; else None.

    The LocalCluster uses N worker *processes* with one thread each (each task
    is itself limited to ``threads`` threads), so N tasks run side by side
    without oversubscribing the cores.
    """
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise MimfastInputError("give --workers or --scheduler, not both")
    distributed = _import_distributed("--scheduler" if scheduler else "--workers")
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise MimfastInputError(f"cannot reach the Dask scheduler at {scheduler!r}: "
                                    f"{exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MimfastInputError(f"workers={workers!r} must be a positive integer")
    import logging
    import signal
    # Ctrl-C goes to every process of the terminal's group, and each worker process
    # would print its own KeyboardInterrupt traceback (~30 lines each).  The workers
    # inherit an ignored SIGINT through spawn; this process still gets the
    # KeyboardInterrupt and closing the cluster below stops them.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None,
                                           silence_logs=logging.ERROR)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        # shutting down mid-task makes the scheduler and nannies log errors about
        # lost workers and cancelled tasks: noise once the user has pressed Ctrl-C
        quiet = logging.getLogger("distributed")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            client.close()
            cluster.close()
        finally:
            quiet.setLevel(level)


def run_sweep(configs, store=None, *, client=None, workers=None, scheduler=None,
              threads=1, progress=None, desc="sweep", on_record=None):
    """Run every configuration; return their records in the order of ``configs``.

    ``store``: a ResultStore or a path prefix (``.json``/``.csv`` are added);
    finished rows found there are skipped.  ``client`` (a dask Client) or
    ``workers``/``scheduler`` choose the engine; none of them: in-process.
    ``threads``: threads per task (1 by default; the same value everywhere
    gives identical records).  ``on_record(rec)`` is called as each finishes.
    Nonsense (an empty grid, ``workers < 1``, an unknown target, loss, backend
    or dtype) raises ``MimfastInputError`` before anything runs (``check_configs``).
    """
    configs = list(configs)
    check_configs(configs, workers)
    if store is not None and not isinstance(store, ResultStore):
        store = ResultStore(store)
    keyed = []
    for cfg in configs:
        try:
            keyed.append((run_key(cfg), cfg))
        except MimfastInputError:
            keyed.append((_safe_key(cfg), cfg))  # run_one records the error
    todo, seen = [], set()
    for key, cfg in keyed:
        if key in seen or (store is not None and store.finished(key)):
            continue
        seen.add(key)
        todo.append((key, cfg))
    results = {}
    if store is not None:
        results.update(store.records)

    from tqdm.auto import tqdm
    disable = None if progress is None else not progress
    n_total = len({k for k, _ in keyed})
    bar = tqdm(total=n_total, initial=n_total - len(todo), desc=desc, unit="run",
               disable=disable, dynamic_ncols=True)
    n_err = 0

    def finish(key, rec):
        nonlocal n_err
        rec["run_key"] = key
        results[key] = rec
        if store is not None:
            store.add(rec)
        if rec.get("status") != "ok":
            n_err += 1
            bar.set_postfix(errors=n_err)
        bar.update(1)
        if on_record is not None:
            on_record(rec)

    try:
        if todo:
            with dask_client(workers, scheduler) if client is None else _given(client) as cl:
                if cl is None:
                    for key, cfg in todo:
                        finish(key, run_one(cfg, threads))
                else:
                    _run_dask(cl, todo, threads, finish)
    finally:
        bar.close()
    return [results[k] for k, _ in keyed]


@contextmanager
def _given(client):
    yield client


def _run_dask(client, todo, threads, finish):
    distributed = _import_distributed("--workers")
    futures = {}
    for key, cfg in todo:
        fut = client.submit(run_one, cfg, threads, key=f"mimfast-run-{key}", pure=False)
        futures[fut] = (key, cfg)
    for fut in distributed.as_completed(list(futures)):
        key, cfg = futures[fut]
        try:
            rec = fut.result()
        except Exception as exc:  # the worker died (memory, killed): record and go on
            rec = {**{k: v for k, v in cfg.items() if not isinstance(v, (list, tuple))},
                   "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        finish(key, rec)
        fut.release()


def compare_records(a, b, ignore=is_timing_field):
    """Differences between two record lists (ignoring timing fields): list of strings."""
    diffs = []
    if len(a) != len(b):
        return [f"{len(a)} records vs {len(b)}"]
    for i, (ra, rb) in enumerate(zip(a, b)):
        keys = (set(ra) | set(rb))
        for k in sorted(keys):
            if ignore(k):
                continue
            va, vb = ra.get(k), rb.get(k)
            if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) \
                    and math.isnan(vb):
                continue
            if va != vb:
                diffs.append(f"record {i} ({ra.get('run_key')}): {k}: {va!r} != {vb!r}")
    return diffs
