"""Shared plumbing of the studies: the Study base, aggregation, figures, Markdown, versions."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..sweep import ResultStore, run_sweep

MISSING = float("nan")


# ---------------------------------------------------------------------------
# aggregation over seeds (no pandas needed)
# ---------------------------------------------------------------------------
def ok_records(records):
    return [r for r in records if r.get("status") == "ok"]


def value(rec, key):
    v = rec.get(key, MISSING)
    try:
        return float(v)
    except (TypeError, ValueError):
        return MISSING


def group(records, keys):
    """{tuple of key values: [records]} in first-seen order."""
    out = {}
    for r in records:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def mean_std(records, key):
    """(mean, std, count) of a numeric field over records (NaN-free values only)."""
    vals = np.array([value(r, key) for r in records], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return MISSING, MISSING, 0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0, int(vals.size)


def vector(rec, key):
    """Indexed fields key.0, key.1, ... as a list of floats."""
    out = []
    i = 0
    while f"{key}.{i}" in rec:
        out.append(value(rec, f"{key}.{i}"))
        i += 1
    return out


def mean_vector(records, key):
    vs = [vector(r, key) for r in records]
    vs = [v for v in vs if v]
    if not vs:
        return [], []
    k = min(len(v) for v in vs)
    a = np.array([v[:k] for v in vs])
    return a.mean(axis=0).tolist(), (a.std(axis=0, ddof=1) if len(a) > 1
                                     else np.zeros(k)).tolist()


def crossing(xs, ys, level, below=True):
    """First x where ys crosses ``level`` (log-x interpolation); None if it never does.

    ``below=True``: the first x with y <= level, interpolated between the last
    point above and the first point below.  Returns (x, exact) where exact is
    False when the first point is already past the level (x is then an upper bound).
    """
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    pts.sort()
    prev = None
    for x, y in pts:
        hit = y <= level if below else y >= level
        if hit:
            if prev is None:
                return x, False
            x0, y0 = prev
            if y0 == y:
                return x, True
            t = (level - y0) / (y - y0)
            lx = math.log(x0) + t * (math.log(x) - math.log(x0))
            return math.exp(lx), True
        prev = (x, y)
    return None, True


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -(digits) or abs(v) >= 10 ** 5):
            return f"{v:.{digits - 1}e}"
        return f"{v:#.{digits}g}".rstrip(".") if abs(v) >= 1 else f"{v:.{digits}f}"
    return str(v)


def seeds_note(records, spread="mean ± sd over seeds"):
    """``spread`` when some configuration has more than one seed, else 'single seed (no error bars)'."""
    per = {}
    for r in records:
        if r.get("status") == "ok":
            key = tuple((k, str(v)) for k, v in sorted(r.items())
                        if k in ("d", "t1", "n1", "target", "loss", "variant", "method", "width"))
            per.setdefault(key, set()).add(r.get("seed"))
    if per and max(len(v) for v in per.values()) > 1:
        return spread
    return "single seed (no error bars)"


def fmt_pm(m, s, digits=3):
    if not math.isfinite(m):
        return "n/a"
    return f"{fmt(m, digits)} ± {fmt(s, 2)}" if s and math.isfinite(s) and s > 0 else fmt(m, digits)


def duration(seconds):
    """Seconds for the report: sub-10 s with one decimal, so a quick run does not read '0 s'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def root_links(text, name, figures):
    """A section's figure links (relative to its own folder) made relative to the report root."""
    for fname, _ in figures:
        text = text.replace(f"]({fname})", f"]({name}/{fname})")
    return text


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def verdict(ok):
    return "reproduced" if ok else "NOT reproduced"


# ---------------------------------------------------------------------------
# figures (Agg canvas directly: no global backend switch)
# ---------------------------------------------------------------------------
FIGURES_SKIPPED = "figures skipped: matplotlib is not installed; pip install -e '.[bench]'"


def have_matplotlib():
    """True when figures can be drawn (matplotlib importable)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(ncols=1, nrows=1, width=5.2, height=3.8):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None, None
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, path):
    fig.savefig(path, dpi=110)
    return os.path.basename(path)


def errorbar(ax, xs, records_by_x, key, label=None, **kw):
    """Plot mean ± std over seeds of ``key`` at each x."""
    m, s = [], []
    for x in xs:
        mm, ss, _ = mean_std(records_by_x.get(x, []), key)
        m.append(mm)
        s.append(ss)
    ax.errorbar(xs, m, yerr=s, label=label, capsize=3, marker=kw.pop("marker", "o"),
                markersize=kw.pop("markersize", 4), **kw)
    return m, s


# ---------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------
def command_line(args=None, parser=None):
    """The command that produced this run.

    From ``sys.argv`` when the process is ``python -m mimfast`` / ``mimfast``;
    otherwise (called from Python) rebuilt from the parsed ``args``: the
    subcommand plus every flag whose value differs from ``parser``'s default.
    """
    prog = os.path.basename(sys.argv[0]) if sys.argv else ""
    parent = os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0]))) if sys.argv else ""
    if (prog == "__main__.py" and parent == "mimfast") or prog == "mimfast" or args is None:
        return shlex.join(["python", "-m", "mimfast", *sys.argv[1:]])
    words = ["python", "-m", "mimfast", "reproduce", getattr(args, "study", None) or "all"]
    if parser is not None:
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            v = getattr(args, action.dest, action.default)
            if v == action.default:
                continue
            opt = action.option_strings[-1]
            if action.nargs == 0:
                words.append(opt)
            else:
                words += [opt, ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return shlex.join(words)


def versions(records=()):
    import numpy
    from .. import __version__
    info = {"mimfast": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    for mod in ("scipy", "numba", "dask", "distributed", "matplotlib"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "not installed"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                              capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode == 0:
            info["git"] = head.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except Exception:
        pass
    backends = sorted({str(r.get("backend")) for r in records if r.get("status") == "ok"})
    if backends:
        info["backends used"] = ", ".join(backends)
    return info


# ---------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------
@dataclass
class Section:
    """What a study's analysis produces."""
    title: str
    markdown: str
    headline: list = field(default_factory=list)   # one-line findings (computed)
    summary: dict = field(default_factory=dict)     # machine-readable numbers
    figures: list = field(default_factory=list)
    summary_md: str = ""                             # compact Markdown for REPORT's summary


class Study:
    name = "study"
    title = "Study"
    claim = ""

    def add_arguments(self, p):
        """Study-specific flags."""

    def expected_failure(self, rec):
        """True for an error row that is a finding, not a fault (e.g. Sigma_l = 0)."""
        return False

    def configs(self, args):
        raise NotImplementedError

    def analyse(self, records, args, outdir):
        raise NotImplementedError

    # -- the common driver --------------------------------------------------
    def run(self, args, client=None):
        outdir = os.path.join(args.out, self.name)
        os.makedirs(outdir, exist_ok=True)
        cfgs = self.configs(args)
        t0 = time.perf_counter()
        store = ResultStore(os.path.join(outdir, "records"))
        prior = {k for k in store.records if store.finished(k)}
        records = run_sweep(cfgs, store, client=client,
                            workers=None if client is not None else args.workers,
                            scheduler=None if client is not None else args.scheduler,
                            threads=args.threads, progress=args.progress, desc=self.name)
        sweep_s = time.perf_counter() - t0
        section = self.analyse(records, args, outdir)
        analysis_s = time.perf_counter() - t0 - sweep_s
        failed = [r for r in records if r.get("status") != "ok"
                  and not self.expected_failure(r)]
        notes = []
        bad = [r for r in records if r.get("status") == "ok" and any(
            value(r, k) < 0 for k in r if k == "val_rel_mse" or k.endswith(".val_rel_mse"))]
        if bad:
            worst = max(bad, key=lambda r: value(r, "test_rel_mse"))
            notes.append(
                f"**Stage-2 numerics:** {len(bad)} of {len(records)} runs have a negative "
                "validation MSE (the ridge penalty is chosen from a Gram quadratic form that "
                "lost its precision, typically when the neurons have collapsed onto one "
                "direction); their test errors are unreliable. Worst: d="
                f"{worst.get('d')}, T₁={worst.get('t1')}, seed={worst.get('seed')}, "
                f"target={worst.get('target')}, loss={worst.get('loss')}: validation MSE "
                f"{fmt(value(worst, 'val_rel_mse'))}, test error "
                f"{fmt(value(worst, 'test_rel_mse'))}.")
        if failed:
            errs = sorted({str(r.get("error", ""))[:200] for r in failed})
            notes.append(f"**{len(failed)} of {len(records)} runs failed** and are left out of "
                         "the analysis; errors: " + "; ".join(f"`{e}`" for e in errs[:5]))
        cmd = getattr(args, "command_line", None) or command_line()
        body = [f"## {section.title}", "",
                f"*Claim tested:* {self.claim}", ""]
        if section.headline:
            body += ["**Headline.**", ""] + [f"- {h}" for h in section.headline] + [""]
        body += [section.markdown, ""]
        for fname, sentence in section.figures:
            # relative to this section's folder, so section.md renders on its own;
            # REPORT.md rewrites them relative to the root (root_links)
            body += [f"![{self.name}: {fname}]({fname})", "",
                     f"*Figure `{self.name}/{fname}`.* {sentence}", ""]
        if notes:
            body += notes + [""]
        n_ok = sum(r.get("status") == "ok" for r in records)
        compute_s = sum(float(r.get("wall_s") or 0.0) for r in records)
        n_exp = sum(r.get("status") != "ok" and self.expected_failure(r) for r in records)
        body += [f"*Data:* `{self.name}/records.csv` ({len(records)} runs, {n_ok} ok"
                 + (f", {n_exp} stopped by the schedule as expected" if n_exp else "")
                 + f"). *Time:* {duration(sweep_s + analysis_s)} this invocation (sweep "
                 f"{duration(sweep_s)}, analysis and figures {duration(analysis_s)}); "
                 f"{duration(compute_s)} of training recorded in the rows (finished rows are "
                 f"reused on a re-run). *Command:* `{cmd}`", ""]
        text = "\n".join(body)
        with open(os.path.join(outdir, "section.md"), "w") as fh:
            fh.write(text)
        summary = {"study": self.name, "title": section.title, "headline": section.headline,
                   "summary": section.summary, "figures": section.figures,
                   "runs": len(records), "failed": len(failed), "sweep_s": sweep_s,
                   "wall_s": sweep_s + analysis_s,
                   "errors": sorted({str(r.get("error", ""))[:200] for r in failed}),
                   "compute_s": sum(float(r.get("wall_s") or 0.0) for r in records),
                   "reused": sum(r.get("run_key") in prior for r in records),
                   "command": cmd, "quick": bool(getattr(args, "quick", False)),
                   "finished_at": time.strftime("%Y-%m-%d %H:%M %Z"),
                   "summary_md": section.summary_md}
        with open(os.path.join(outdir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
        return summary


def seeds_of(args, default, quick=1):
    n = args.seeds if args.seeds is not None else (quick if args.quick else default)
    if int(n) < 1:
        from ..errors import MimfastInputError
        raise MimfastInputError(f"--seeds={n} must be >= 1")
    return list(range(int(n)))


def pick(args, name, default, quick):
    """A list/value flag: the user's value, else the quick or full default."""
    v = getattr(args, name, None)
    if isinstance(v, (list, tuple)) and not v:
        from ..errors import MimfastInputError
        raise MimfastInputError(f"--{name.replace('_', '-')} is empty; give at least one value")
    if v is not None:
        return v
    return quick if args.quick else default


def base_config(args, width=64, **extra):
    """Engine fields from the common flags, the width (flag or study default), extras."""
    return {"backend": args.backend, "dtype": args.dtype,
            "width": args.width if args.width is not None else width, **extra}
