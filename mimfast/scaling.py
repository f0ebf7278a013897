"""`python -m mimfast scale`: wall time of the whole pipeline against the O~(d^2) bound.

Sweeps d with n1 = n2 = C d ln d samples, a fixed width and T1 (or the
automatic T1), several seeds, and writes one tidy row per run into
``--out DIR``:

* ``runs.jsonl``   append-only log, one JSON object per finished run: the
                   source of truth.  A row is written with one ``write`` and
                   fsync'ed; a torn last line (a kill mid-write) is ignored.
* ``scaling.csv``, ``scaling.json``   the same rows as a table, rewritten
                   atomically (temp file + rename) after every run, plus
                   ``summary.json`` (fitted exponent, cost per unit of work).
* ``scaling.png``  log-log time vs d with the fitted exponent and its 95%
                   confidence interval, reference slopes 2 and 3 (the explicit
                   spectral method costs n d^2 = d^3 ln d), the cost per unit
                   of work, and test error / sin theta vs d.

Re-running the same command resumes: rows whose key (every setting that
changes the run) is already in ``runs.jsonl`` are kept and not recomputed.

Peak memory.  By default every point runs in a fresh interpreter
(``python -m mimfast.scaling --point``), which reports its own
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end: the process's RSS
high-water mark, read by the kernel, so nothing is missed between polls.  It
includes the interpreter, numpy/numba and the JIT warm-up (``rss_baseline_bytes``
is the RSS just before the measured run, so ``peak_rss_bytes -
rss_baseline_bytes`` is what the run itself added).  With ``--in-process``
(used by the tests) peak memory is not measured per run and is recorded as
empty.  Each point first trains a tiny network with the same settings so
Numba's JIT compilation is not charged to the smallest d, and a point whose run
takes under three seconds is repeated (up to 5 runs, at least three seconds in
all) and its lower-median run kept (``repeats`` says how many): the first run of
a fresh process pays one-off costs (new pages -- huge-page compaction can make
them slow and erratic -- and thread wake-up) that would otherwise inflate the
cost per unit of work of the small d alone (seen: d = 1024 data time 0.11 s in
one sweep, 0.31-0.39 s in another, single runs).

Data mode.  ``--data auto`` (default) decides once for the whole sweep, from
the largest point and the memory budget (60% of the memory free at the start,
or ``--memory-budget``): which of the stage-1 / stage-2 / test sets are held
and which are streamed (``schedule.plan_memory``: stage 1, read 1 +
power_iters + T1 times, is held first; the others are read twice).  Every
point then uses that same mode, so the exponent compares like with like (a
materialised d = 4096 next to a streamed d = 8192 would mix two cost models).
``--data auto-point`` lets each point choose; ``stream``, ``materialise`` or
``stream:<sources>`` force it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys
import time

from .errors import MimfastInputError

COLUMNS = ("d", "n1", "n2", "n_test", "seed", "c", "width", "t1", "backend", "dtype",
           "target", "r", "loss", "data_mode", "threads", "time_data", "time_step_size",
           "time_stage1", "time_stage2", "time_test", "time_total", "work",
           "cost_per_work_ns", "repeats", "peak_rss_bytes", "rss_baseline_bytes", "test_rel_mse",
           "sin_theta_max", "sin_theta", "energy_in_u", "eta", "wall_s", "invocation", "key")
DEFAULT_D = (512, 1024, 2048, 4096, 8192)
MIN_POINT_SECONDS = 3.0  # a point shorter than this is repeated; the median run is kept
MAX_REPEATS = 5


# ---------------------------------------------------------------------- points
def n_for(d, c):
    """n = C d ln d (at least 64)."""
    return max(64, int(round(c * d * math.log(max(d, 2)))))


def point_config(d, seed, args_like):
    """The settings of one run (everything that changes its result or its time)."""
    a = args_like
    n = n_for(d, a["c"])
    n_test = a.get("n_test") or min(max(n // 4, 4096), 65536)
    return {"d": int(d), "seed": int(seed), "c": float(a["c"]), "n1": n, "n2": n,
            "n_test": int(n_test), "width": int(a["width"]), "t1": a["t1"],
            "target": a["target"], "r": int(a["r"]), "noise": float(a["noise"]),
            "loss": a["loss"], "activation": a["activation"], "backend": a["backend"],
            "dtype": a["dtype"], "threads": a.get("threads"), "data": a["data"],
            "memory_budget": a.get("memory_budget"),
            "power_iters": int(a.get("power_iters", 12))}


def point_key(cfg):
    keys = sorted(k for k in cfg if k != "memory_budget")
    return "|".join(f"{k}={cfg[k]}" for k in keys)


def _rss_now():
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss():
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def run_point(cfg, warm=True):
    """Train one point and return its row (a flat dict)."""
    from .schedule import train
    from .tasks import MultiIndexTask

    common = dict(width=cfg["width"], t1=cfg["t1"], loss=cfg["loss"],
                  activation=cfg["activation"], backend=cfg["backend"], dtype=cfg["dtype"],
                  threads=cfg["threads"], progress=False, power_iters=cfg["power_iters"])
    if warm:
        # compile the kernels outside the timing: Numba kernels pick serial or
        # parallel variants by problem size, so the warm-up must be big enough
        # (>= 2^25 multiply-adds) for the parallel ones, and small (d <= 256)
        dw = min(cfg["d"], 256)
        nw = int(min(65536, max(4096, 4 * cfg["width"], 2 ** 25 // (dw * cfg["width"]))))
        wt = MultiIndexTask(d=dw, r=min(cfg["r"], dw), link=cfg["target"], seed=cfg["seed"])
        train(wt, nw, nw, 512, **{**common, "t1": 1}, data="materialise")
    task = MultiIndexTask(d=cfg["d"], r=cfg["r"], link=cfg["target"], noise=cfg["noise"],
                          seed=cfg["seed"])
    base = _rss_now()
    # Small points last a second or less, and their first run pays one-off
    # costs (fresh pages for every array, the allocator's thresholds, thread-pool
    # wake-up) that are a large and erratic share of it: repeat them until MIN_POINT_SECONDS
    # have passed (at most MAX_REPEATS runs) and keep the run with the median total
    # time, as timeit does.  Same seed, same data: every repeat gives the same result.
    runs = []
    spent = 0.0
    while not runs or (spent < MIN_POINT_SECONDS and len(runs) < MAX_REPEATS):
        t0 = time.perf_counter()
        rec = train(task, cfg["n1"], cfg["n2"], cfg["n_test"], seed=cfg["seed"],
                    data=cfg["data"], memory_budget=cfg["memory_budget"], **common)
        wall = time.perf_counter() - t0
        spent += wall
        runs.append((rec["timings"]["total"], wall, rec))
    runs.sort(key=lambda r: r[0])
    _, wall, rec = runs[(len(runs) - 1) // 2]
    t = rec["timings"]
    work = cfg["n1"] * cfg["d"] * cfg["width"] * (rec["t1"] + 1)
    row = {"d": cfg["d"], "n1": cfg["n1"], "n2": cfg["n2"], "n_test": cfg["n_test"],
           "seed": cfg["seed"], "c": cfg["c"], "width": cfg["width"], "t1": rec["t1"],
           "backend": rec["backend"], "dtype": rec["dtype"], "target": rec["target"],
           "r": rec["r"], "loss": rec["loss"], "data_mode": rec["data_mode"],
           "threads": cfg["threads"],
           "time_data": t["data"], "time_step_size": t["step_size"],
           "time_stage1": t["stage1"], "time_stage2": t["stage2"], "time_test": t["test"],
           "time_total": t["total"], "work": work,
           "cost_per_work_ns": 1e9 * t["total"] / work, "repeats": len(runs),
           "peak_rss_bytes": None, "rss_baseline_bytes": base,
           "test_rel_mse": rec["test_rel_mse"], "sin_theta_max": rec["sin_theta_max"],
           "sin_theta": json.dumps([round(v, 6) for v in rec["sin_theta"]]),
           "energy_in_u": rec["energy_in_u"], "eta": rec["eta"], "wall_s": wall}
    return row


def _point_main(argv):
    """Child process: read a config (JSON) from argv, print one JSON row on the last line."""
    cfg = json.loads(argv[0])
    row = run_point(cfg)
    row["peak_rss_bytes"] = _peak_rss()
    sys.stdout.write("\nMIMFAST_ROW " + json.dumps(row) + "\n")
    sys.stdout.flush()
    return 0


def _die_with_parent():
    """Child side (Linux): get SIGTERM when the sweep process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's cleanup must do
        pass


def run_point_isolated(cfg, timeout=None):
    """Run one point in a fresh interpreter (honest per-run peak RSS)."""
    try:
        p = subprocess.run([sys.executable, "-m", "mimfast.scaling", "--point",
                            json.dumps(cfg)], capture_output=True, text=True, timeout=timeout,
                           preexec_fn=(_die_with_parent if sys.platform.startswith("linux")
                                       else None))
    except subprocess.TimeoutExpired:
        # TimeoutExpired's own text is the child's whole command line, JSON and all
        raise RuntimeError(f"point d={cfg['d']} seed={cfg['seed']} timed out after "
                           f"{timeout:g} s (--timeout)") from None
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("MIMFAST_ROW "):
            return json.loads(line[len("MIMFAST_ROW "):])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"point d={cfg['d']} seed={cfg['seed']} failed "
                       f"(exit {p.returncode}): {tail}")


# ---------------------------------------------------------------------- store
class Store:
    """Append-only JSONL of finished rows + atomically rewritten CSV/JSON views."""

    def __init__(self, out):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.log = os.path.join(out, "runs.jsonl")
        self.rows = []
        self.keys = set()
        if os.path.exists(self.log):
            with open(self.log) as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:  # torn line from an interrupted write
                        continue
                    if isinstance(row, dict) and "key" in row and row["key"] not in self.keys:
                        self.rows.append(row)  # first finished copy wins
                        self.keys.add(row["key"])
        self._lock = None

    def lock(self):
        """Hold out/.lock for this process: two sweeps must not write one folder."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return self
        fh = open(os.path.join(self.out, ".lock"), "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise MimfastInputError(
                f"another sweep is writing to {self.out} (it holds {self.out}/.lock); wait "
                "for it or pass another --out")
        self._lock = fh
        return self

    def unlock(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __contains__(self, key):
        return key in self.keys

    def add(self, row):
        line = _dumps(row) + "\n"
        with open(self.log, "ab") as fh:
            # a torn line left by an earlier kill must not swallow this one
            if fh.tell() > 0:
                with open(self.log, "rb") as rf:
                    rf.seek(-1, os.SEEK_END)
                    if rf.read(1) != b"\n":
                        line = "\n" + line
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)
        self.keys.add(row["key"])

    def write_views(self, rows=None, summary=None):
        rows = self.rows if rows is None else rows
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["d"], r["seed"])):
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        _atomic_write(os.path.join(self.out, "scaling.csv"), buf.getvalue())
        _atomic_write(os.path.join(self.out, "scaling.json"), _dumps(rows, indent=1))
        if summary is not None:
            _atomic_write(os.path.join(self.out, "summary.json"), _dumps(summary, indent=1))


def _plain(o):
    try:
        return o.item()
    except AttributeError:
        return str(o)


def _finite_or_none(o):
    """JSON has no NaN/inf: undefined numbers are written as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_or_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_none(v) for v in o]
    return o


def _dumps(obj, indent=None):
    """Strict JSON (no NaN/inf anywhere: they become null)."""
    plain = json.loads(json.dumps(obj, default=_plain))
    return json.dumps(_finite_or_none(plain), indent=indent, allow_nan=False)


def _atomic_write(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- analysis
CI_NA = "CI n/a (needs >= 3 d values)"
CI_NOTE = ("CI from the fit residuals of these runs; it does not cover run-to-run drift of a "
           "shared machine")


def _has_ci(fit):
    return all(isinstance(fit.get(k), (int, float)) and math.isfinite(fit[k])
               for k in ("ci_low", "ci_high"))


def fit_exponent(ds, ts, level=0.95):
    """OLS slope of log t on log d with a t-distribution confidence interval.

    The interval needs at least 3 distinct d values; otherwise ci_low/ci_high are
    NaN in memory and null in the JSON files.
    """
    import numpy as np
    x = np.log(np.asarray(ds, dtype=float))
    y = np.log(np.asarray(ts, dtype=float))
    if len(set(x.tolist())) < 2:
        return {"exponent": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "intercept": float("nan"), "points": int(x.size)}
    A = np.stack([x, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    slope, icpt = float(coef[0]), float(coef[1])
    dof = x.size - 2
    if dof > 0 and len(set(x.tolist())) >= 3:  # two d values: a line, no honest CI
        from scipy import stats
        resid = y - A @ coef
        s2 = float(resid @ resid) / dof
        se = math.sqrt(s2 / float(np.sum((x - x.mean()) ** 2)))
        half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    else:
        half = float("nan")
    return {"exponent": slope, "ci_low": slope - half, "ci_high": slope + half,
            "intercept": icpt, "points": int(x.size), "level": level}


def summarise(rows):
    """Fitted exponents and the spread of the cost per unit of work over d."""
    import numpy as np
    if not rows:
        return {}
    ds = [r["d"] for r in rows]
    out = {"runs": len(rows), "d": sorted(set(ds)),
           "total": fit_exponent(ds, [r["time_total"] for r in rows])}
    for stage in ("stage1", "stage2", "data"):
        vals = [r[f"time_{stage}"] for r in rows]
        if all(v > 0 for v in vals):
            out[stage] = fit_exponent(ds, vals)
    per_d = {}
    for r in rows:
        per_d.setdefault(r["d"], []).append(r)
    table = []
    for d in sorted(per_d):
        rs = per_d[d]
        table.append({
            "d": d, "n1": rs[0]["n1"], "t1": rs[0]["t1"], "data_mode": rs[0]["data_mode"],
            "runs": len(rs),
            "time_total": float(np.median([r["time_total"] for r in rs])),
            "time_stage1": float(np.median([r["time_stage1"] for r in rs])),
            "time_stage2": float(np.median([r["time_stage2"] for r in rs])),
            "time_data": float(np.median([r["time_data"] for r in rs])),
            "cost_per_work_ns": float(np.median([r["cost_per_work_ns"] for r in rs])),
            "test_rel_mse": float(np.mean([r["test_rel_mse"] for r in rs])),
            "sin_theta_max": float(np.mean([r["sin_theta_max"] for r in rs])),
            "peak_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in rs) or None,
        })
    costs = [t["cost_per_work_ns"] for t in table]
    out["ci_note"] = CI_NOTE
    # rows written before invocations were tagged count as one earlier invocation
    out["invocations"] = len({r.get("invocation") for r in rows})
    out["resumed"] = out["invocations"] > 1
    out["per_d"] = table
    out["cost_per_work_spread"] = max(costs) / min(costs) if min(costs) > 0 else float("inf")
    errs = [t["test_rel_mse"] for t in table]
    out["test_rel_mse_first_last"] = [errs[0], errs[-1]]
    return out


def plot(rows, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    per_d = summary["per_d"]
    ds = np.array([t["d"] for t in per_d], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    ax = axes[0]
    for stage, mk in (("time_total", "o"), ("time_stage1", "s"), ("time_stage2", "^"),
                      ("time_data", "v")):
        # streamed runs draw their rows inside the stages: no separate data time
        pts = [(r["d"], r[stage]) for r in rows if r[stage] > 0
               and not (stage == "time_data" and r["data_mode"] == "stream")]
        if pts:
            x, y = zip(*pts)
            ax.loglog(x, y, mk, alpha=0.6 if stage != "time_total" else 0.9,
                      label=stage.replace("time_", ""))
    fit = summary["total"]
    if math.isfinite(fit["exponent"]):
        xx = np.geomspace(ds.min(), ds.max(), 50)
        ci = (f"[{fit['ci_low']:.2f}, {fit['ci_high']:.2f}] 95% CI" if _has_ci(fit)
              else CI_NA)
        ax.loglog(xx, np.exp(fit["intercept"]) * xx ** fit["exponent"], "k-",
                  label=f"fit: d^{fit['exponent']:.2f} {ci}")
        t0 = np.exp(fit["intercept"]) * ds.min() ** fit["exponent"]
        for k, ls in ((2, "--"), (3, ":")):
            ax.loglog(xx, t0 * (xx / ds.min()) ** k, "0.5", ls=ls, label=f"slope {k}")
    ax.set_xlabel("d")
    ax.set_ylabel("wall time (s)")
    resumed = (f"\nrows from {summary['invocations']} invocations (resumed)"
               if summary.get("resumed") else "")
    ci_note = ("\n95% CI from the fit residuals of these runs;\nit does not cover run-to-run "
               "drift of a shared machine" if _has_ci(fit) else "")
    ax.set_title("time vs d (n = C d ln d)" + ci_note + resumed, fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[1]
    cost = np.array([t["cost_per_work_ns"] for t in per_d])
    ax.semilogx(ds, cost / cost[0], "o-")
    ax.axhline(1.5, color="0.6", ls="--", lw=0.8, label="±1.5x band")
    ax.axhline(1 / 1.5, color="0.6", ls="--", lw=0.8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("d")
    ax.set_ylabel("cost per unit of work (rel. to smallest d)")
    ax.set_title(f"total / (n d m (T1+1)); spread {summary['cost_per_work_spread']:.2f}x\n"
                 "point labels = data mode: held = rows held in memory,\n"
                 "streamed = redrawn each pass", fontsize=9)
    ax.set_ylim(0, max(2.0, float(np.max(cost / cost[0])) * 1.1))
    for t in per_d:
        ax.annotate(_mode_label(t["data_mode"]), (t["d"], t["cost_per_work_ns"] / cost[0]),
                    fontsize=7, textcoords="offset points", xytext=(0, 5))

    ax = axes[2]
    ax.semilogx(ds, [t["test_rel_mse"] for t in per_d], "o-", label="test rel. MSE")
    ax.semilogx(ds, [t["sin_theta_max"] for t in per_d], "s-", label="max sin theta")
    ax.set_xlabel("d")
    ax.set_ylabel("test rel. MSE / max sin θ (mean over seeds)")
    ax.set_ylim(bottom=0)
    ax.set_title("quality vs d")
    ax.legend(fontsize=8)
    from matplotlib.ticker import NullFormatter
    for ax in axes:  # label the grid's own d values, no crowded minor labels
        ax.set_xticks(ds)
        ax.set_xticklabels([str(int(v)) for v in ds], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


FIGURE_SKIPPED = "figure skipped: matplotlib is not installed; pip install -e '.[bench]'"


def matplotlib_missing():
    import importlib.util
    return importlib.util.find_spec("matplotlib") is None


def _mode_label(mode):
    return {"materialise": "held", "stream": "streamed"}.get(mode, mode.replace("stream:", "str:"))


def format_summary(summary):
    lines = [f"{'d':>6} {'n1':>9} {'T1':>3} {'data':>20} {'total s':>9} {'stage1 s':>9} "
             f"{'stage2 s':>9} {'data s':>7} {'ns/work':>8} {'test MSE':>9} {'sin max':>8} "
             f"{'peak RSS':>9}"]
    for t in summary.get("per_d", []):
        rss = f"{t['peak_rss_bytes'] / 2**30:.2f}G" if t["peak_rss_bytes"] else "-"
        lines.append(f"{t['d']:>6} {t['n1']:>9} {t['t1']:>3} {t['data_mode']:>20} "
                     f"{t['time_total']:>9.2f} {t['time_stage1']:>9.2f} "
                     f"{t['time_stage2']:>9.2f} {t['time_data']:>7.2f} "
                     f"{t['cost_per_work_ns']:>8.3f} {t['test_rel_mse']:>9.4f} "
                     f"{t['sin_theta_max']:>8.4f} {rss:>9}")
    f = summary.get("total")
    if f:
        ci = (f"95% CI {f['ci_low']:.3f} .. {f['ci_high']:.3f}" if _has_ci(f) else CI_NA)
        lines.append(f"fitted exponent of total time vs d: {f['exponent']:.3f} "
                     f"({ci}, {f['points']} runs)")
        if _has_ci(f):
            lines.append(f"  ({CI_NOTE})")
        lines.append(f"cost per unit of work (total / (n1 d width (T1+1))): max/min over d = "
                     f"{summary['cost_per_work_spread']:.2f}x")
    if summary.get("resumed"):
        lines.append(f"resumed: the rows come from {summary['invocations']} invocations with "
                     "this --out, timed under whatever load the machine had each time")
    return "\n".join(lines)


# ---------------------------------------------------------------------- sweep
def decide_data_mode(data, ds, settings):
    """Sweep-level data mode: 'auto' streams every point if the largest must stream."""
    if data != "auto":
        return "auto" if data == "auto-point" else data
    from .errors import check_dtype
    from .schedule import plan_memory
    d = max(ds)
    cfg = point_config(d, 0, settings)
    return plan_memory(d, cfg["n1"], cfg["n2"], cfg["n_test"], check_dtype(cfg["dtype"]),
                       cfg["width"], "auto", settings.get("memory_budget"))


def sweep(ds, seeds, out, settings, *, isolate=True, progress=None, runner=None,
          plot_path="scaling.png", log=print):
    """Run (or resume) the sweep; returns (rows, summary).  Rows already in out are kept."""
    from .data import default_memory_budget
    store = Store(out).lock()
    # one budget for the whole sweep, so every point plans its memory alike
    settings = {**settings, "memory_budget": default_memory_budget(settings.get("memory_budget"))}
    try:
        return _sweep(store, ds, seeds, out, settings, isolate, progress, runner, plot_path,
                      log)
    finally:
        store.unlock()


def _key_without_data(key):
    return "|".join(p for p in key.split("|") if not p.startswith("data="))


def _sweep(store, ds, seeds, out, settings, isolate, progress, runner, plot_path, log):
    data = None
    if settings["data"] == "auto":
        # resuming: keep the mode the finished rows were planned with, even if the
        # memory free now would plan another (the mode changes timings, not results)
        probe = {_key_without_data(point_key(point_config(d, s, {**settings, "data": "-"})))
                 for d in ds for s in seeds}
        for row in store.rows:
            if _key_without_data(row["key"]) in probe:
                data = dict(p.split("=", 1) for p in row["key"].split("|"))["data"]
                break
    if data is None:
        data = decide_data_mode(settings["data"], ds, settings)
    settings = {**settings, "data": data}
    points = [point_config(d, s, settings) for d in ds for s in seeds]
    todo = [p for p in points if point_key(p) not in store]
    if log and len(todo) < len(points):
        log(f"resuming: {len(points) - len(todo)} of {len(points)} runs already in {out}")
    # rows from several invocations were timed under different machine loads: tag each
    invocation = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    run = runner or (run_point_isolated if isolate else run_point)
    from tqdm.auto import tqdm
    disable = None if progress is None else not progress
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="run",
               desc="scale", disable=disable)
    failures = []
    try:
        for cfg in todo:
            bar.set_postfix_str(f"d={cfg['d']} seed={cfg['seed']}")
            try:
                row = run(cfg)
            except (RuntimeError, MimfastInputError, subprocess.TimeoutExpired) as exc:
                text = str(exc)
                failures.append(text if text.startswith(f"point d={cfg['d']} ") else
                                f"d={cfg['d']} seed={cfg['seed']}: {text}")
                bar.update(1)
                continue
            row["key"] = point_key(cfg)
            row["invocation"] = invocation
            store.add(row)
            mine = [r for r in store.rows if r["key"] in {point_key(p) for p in points}]
            store.write_views(mine, summarise(mine))
            bar.update(1)
    finally:
        bar.close()
    keys = {point_key(p) for p in points}
    rows = [r for r in store.rows if r["key"] in keys]
    summary = summarise(rows)
    summary["data_setting"] = data
    summary["failures"] = failures
    store.write_views(rows, summary)
    if plot_path and rows:
        if matplotlib_missing():
            if log:
                log(FIGURE_SKIPPED)
        else:
            plot(rows, summary, os.path.join(out, plot_path))
    return rows, summary


# ---------------------------------------------------------------------- CLI
def register(subparsers):
    from .cli import int_list, positive_int, t1_value
    from .cli import DefaultsHelp
    p = subparsers.add_parser(
        "scale", help="time the pipeline over d (n = C d ln d) against the O~(d^2) bound",
        formatter_class=DefaultsHelp,
        description="Sweep d with n1 = n2 = C d ln d, fixed width and T1, several seeds; "
                    "write a tidy CSV/JSON and a log-log figure into --out.  Re-running the "
                    "same command resumes: finished runs are kept.")
    p.add_argument("--d", type=int_list, default=list(DEFAULT_D), help="comma-separated d grid")
    p.add_argument("--c", type=float, default=4.0, help="n1 = n2 = C d ln d")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds per d (0..seeds-1)")
    p.add_argument("--width", type=positive_int, default=32, help="neurons m (even)")
    p.add_argument("--t1", type=t1_value, default="auto", help="stage-1 steps or 'auto'")
    p.add_argument("--target", default="he2")
    p.add_argument("--r", type=positive_int, default=2)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--loss", default="square")
    p.add_argument("--activation", default="logcosh")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="test rows (default min(max(n/4, 4096), 65536))")
    p.add_argument("--power-iters", type=positive_int, default=12,
                   help="power iterations for the automatic step size")
    p.add_argument("--backend", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--data", default="auto",
                   help="auto: one mode for the whole sweep, planned for the largest d; "
                        "auto-point: each point decides; materialise; stream; "
                        "stream:<sources> (e.g. stream:stage2,test)")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="bytes (or GiB if < 1024) the data may use (default 60%% of free)")
    p.add_argument("--out", default="scaling-out", help="output folder (resumable)")
    p.add_argument("--in-process", action="store_true",
                   help="run points in this process (faster start; no per-run peak memory)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per point")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_scale)


def threading_main():
    import threading
    return threading.current_thread() is threading.main_thread()


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # unwinds subprocess.run, which kills the point process


def check_scale_args(args):
    """Validate every setting in this process before any point starts.

    Returns (sorted distinct d values, memory budget in bytes or None, notes);
    raises MimfastInputError (one line naming the argument and the fix).
    """
    notes = []
    if not args.d or any(d < 2 for d in args.d):
        raise MimfastInputError("--d needs a comma-separated list of dimensions >= 2; "
                                "pass e.g. --d 512,1024,2048")
    ds = sorted(set(args.d))
    if len(ds) < len(args.d):
        dup = sorted({d for d in args.d if args.d.count(d) > 1})
        notes.append(f"note: --d lists {','.join(map(str, dup))} more than once; "
                     f"each d is run once (d = {','.join(map(str, ds))})")
    if not (args.c > 0 and math.isfinite(args.c)):
        raise MimfastInputError(f"--c={args.c} must be a positive number; pass e.g. --c 4")
    for name, v in (("seeds", args.seeds), ("width", args.width), ("r", args.r),
                    ("n-test", args.n_test), ("power-iters", args.power_iters),
                    ("threads", args.threads)):
        if v is not None and v < 1:
            raise MimfastInputError(f"--{name}={v} must be >= 1; pass --{name} 1 or more")
    if args.t1 != "auto" and args.t1 < 1:
        raise MimfastInputError(f"--t1={args.t1} must be >= 1 or 'auto'")
    if args.timeout is not None and not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise MimfastInputError(f"--timeout={args.timeout} must be a positive number of "
                                "seconds per point; pass e.g. --timeout 600, or leave it out "
                                "for no limit")
    from .errors import memory_budget_bytes
    budget = memory_budget_bytes(args.memory_budget)
    if not (math.isfinite(args.noise) and args.noise >= 0):
        raise MimfastInputError(f"--noise={args.noise} must be a finite number >= 0")
    from .activations import check_activation
    from .backends import get_backend
    from .errors import check_dtype
    from .losses import get_loss
    from .tasks import MultiIndexTask
    check_dtype(args.dtype, "--dtype")
    check_activation(args.activation, argname="--activation")
    get_loss(args.loss)
    # the target, r and noise exactly as a point builds them (smallest d)
    MultiIndexTask(d=ds[0], r=args.r, link=args.target, noise=args.noise, seed=0)
    from .backends import check_threads
    check_threads(args.threads, "--threads", args.backend)
    get_backend(args.backend, args.threads)  # unknown or unavailable (cupy without GPU)
    from .studies import check_out_dir
    check_out_dir(args.out)  # an existing file would stop the sweep with "File exists"
    if args.data not in ("auto", "auto-point"):
        from .data import streamed_sources
        streamed_sources(args.data)  # validates
    from .schedule import LayerwiseRegressor
    LayerwiseRegressor(width=args.width, t1=args.t1, loss=args.loss,
                       activation=args.activation, dtype=args.dtype)._validate(
        ds[0], n_for(ds[0], args.c))
    return ds, budget, notes


def cmd_scale(args):
    import signal
    ds, budget, notes = check_scale_args(args)
    for note in notes:
        print(note, file=sys.stderr)
    from .backends import resolve_name
    plot_path = None if args.no_plot else "scaling.png"
    if plot_path and matplotlib_missing():
        print(FIGURE_SKIPPED, file=sys.stderr)
        plot_path = None
    settings = {"c": args.c, "width": args.width, "t1": args.t1, "target": args.target,
                "r": args.r, "noise": args.noise, "loss": args.loss,
                "activation": args.activation, "backend": resolve_name(args.backend),
                "dtype": args.dtype, "threads": args.threads, "data": args.data,
                "memory_budget": budget, "n_test": args.n_test,
                "power_iters": args.power_iters}
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    rows, summary = sweep(ds, list(range(args.seeds)), args.out, settings,
                          isolate=not args.in_process,
                          progress=False if args.no_progress else None,
                          runner=None if args.timeout is None else
                          (lambda cfg: run_point_isolated(cfg, args.timeout)),
                          plot_path=plot_path)
    print(format_summary(summary))
    print(f"data mode for the sweep: {summary.get('data_setting')}")
    print(f"wrote {os.path.join(args.out, 'scaling.csv')}, scaling.json, summary.json"
          + ("" if plot_path is None or not rows else ", scaling.png"))
    if summary.get("failures"):
        for f in summary["failures"]:
            print(f"failed: {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--point":
        sys.exit(_point_main(sys.argv[2:]))
    sys.exit(argparse.ArgumentParser().parse_args())
