"""`python -m mimfast reproduce ...`: the paper's claims as runnable studies.

Each study is a sweep (``mimfast.sweep``) of independent trainings plus an
analysis that writes tidy data, PNG figures and a Markdown section whose text
is computed from the data:

* ``t1``        error and per-direction recovery vs the number of stage-1 steps
* ``samples``   recovery and error vs n/d at several d; one-step baseline
* ``loss``      which (target, loss) pairs learn; Sigma_l on span(U), estimated vs exact
* ``baselines`` layerwise vs one-step vs spectral (eigh): error and time vs d
* ``negative``  staircase and sign3 must not be learned
* ``all``       every study, then ``OUT/REPORT.md``

With the defaults ``all`` takes about 8-10 minutes on 2 cores (8.4 min measured,
one thread per training) and ``t1`` alone about 2.5 minutes; ``--quick`` is a CI
smoke test (a few seconds per study, about 10 s for ``all``); ``--d``, ``--seeds``
and the per-study flags scale up.  A re-run with the same ``--out`` reuses finished
runs and only redoes the analysis.  ``--workers N`` runs the sweep on a Dask LocalCluster,
``--scheduler ADDRESS`` on an existing cluster; the records are identical to
the in-process run (``--threads``, the threads per task, must match).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

from .baselines import BaselinesStudy
from .common import (FIGURES_SKIPPED, command_line, duration, have_matplotlib, root_links,
                     versions)
from .loss import LossStudy
from .negative import NegativeStudy
from .samples import SamplesStudy
from .t1 import T1Study

STUDIES = {s.name: s for s in (T1Study(), SamplesStudy(), LossStudy(), BaselinesStudy(),
                               NegativeStudy())}
ORDER = tuple(STUDIES)

__all__ = ["STUDIES", "ORDER", "register", "reproduce", "write_report"]


def _add_common(p):
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for CI (a few seconds per study, ~10 s for all); not evidence")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per configuration (error bars; default per study)")
    p.add_argument("--width", type=int, default=None, help="neurons (default per study)")
    p.add_argument("--backend", default="auto", help="auto, numpy, numba, cupy")
    p.add_argument("--dtype", default="float32", help="float32 or float64")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per training (default 1; keep it equal across engines "
                        "for identical records)")
    eng = p.add_mutually_exclusive_group()
    eng.add_argument("--workers", type=int, default=None,
                     help="run the sweep on a Dask LocalCluster of N worker processes "
                          "(pip install 'mimfast[dask]')")
    eng.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="run the sweep on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   default=None, help="no progress bar")


def register(subparsers):
    rp = subparsers.add_parser(
        "reproduce", help="reproduce the paper's claims: sweeps, figures, REPORT.md",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = rp.add_subparsers(dest="study", metavar="STUDY", parser_class=type(rp))
    for name, study in STUDIES.items():
        sp = rsub.add_parser(name, help=study.title, description=study.claim)
        _add_common(sp)
        study.add_arguments(sp)
        sp.set_defaults(func=cmd_reproduce, studies=[name])
    sp = rsub.add_parser("all", help="every study, then OUT/REPORT.md")
    _add_common(sp)
    sp.set_defaults(func=cmd_reproduce, studies=list(ORDER))
    rp.set_defaults(func=lambda args: (rp.print_help(), 2)[1])


def _study_args(name, args):
    """The study's own defaults, overlaid with the flags the user gave."""
    p = argparse.ArgumentParser(add_help=False)
    _add_common(p)
    STUDIES[name].add_arguments(p)
    ns = p.parse_args([])
    for k, v in vars(args).items():
        if k not in ("func", "studies", "study") and (hasattr(ns, k) or k == "command_line"):
            setattr(ns, k, v)
    return ns


def check_out_dir(path):
    """Fail before any work if ``--out`` cannot be (or become) a writable folder."""
    from ..errors import MimfastInputError
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise MimfastInputError(f"--out {path!r} is a file, not a folder; give a folder path "
                                "(it is created if missing)")
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MimfastInputError(f"--out {path!r}: {probe!r} is a file, not a folder; give a "
                                "folder path (it is created if missing)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MimfastInputError(f"--out {path!r}: {probe!r} is not writable; give a folder "
                                "you can write to")


def _check(args):
    from ..errors import MimfastInputError
    for name in ("seeds", "width", "threads", "workers"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise MimfastInputError(f"--{name}={v} must be >= 1")
    check_out_dir(args.out)
    from ..backends import BACKENDS
    from ..errors import check_choice, check_dtype
    check_choice(args.backend, BACKENDS, "--backend")
    check_dtype(args.dtype, "--dtype")
    from ..backends import check_threads
    check_threads(args.threads, "--threads", args.backend)


def _positive(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# numeric study flags: (test, what the value must be, an example)
NUMERIC_FLAGS = {
    "c": (_positive, "a positive number (n1 = n2 = C d ln d)", "--c 16"),
    "delta": (_positive, "a positive number (the Huber scale)", "--delta 1"),
    "threshold": (lambda v: _positive(v) and v <= 1, "in (0, 1] (a sine)", "--threshold 0.3"),
    "learn_threshold": (lambda v: _positive(v) and v <= 1, "in (0, 1] (a sine)",
                        "--learn-threshold 0.5"),
    "err_threshold": (_positive, "a positive number", "--err-threshold 0.2"),
    "n_test": (lambda v: v >= 2, "an integer >= 2 (a test error needs 2 samples)",
               "--n-test 8192, or leave it out for the default"),
    "ratios": (lambda vs: all(_positive(v) for v in vs), "positive numbers",
               "--ratios 1,4,16"),
}


def _check_numbers(args):
    """Every numeric study flag, up front: a bad one would otherwise fail every run."""
    from ..errors import MimfastInputError
    for name, (ok, what, example) in NUMERIC_FLAGS.items():
        v = getattr(args, name, None)
        if v is not None and not ok(v):
            shown = ",".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}"
            raise MimfastInputError(f"--{name.replace('_', '-')}={shown} must be {what}; "
                                    f"pass e.g. {example}")


def reproduce(studies, args):
    """Run the named studies with one engine, then (re)write OUT/REPORT.md."""
    from ..sweep import check_configs, dask_client
    _check(args)
    for name in studies:  # every grid checked here, before a worker or a run starts
        _check_numbers(_study_args(name, args))
        check_configs(STUDIES[name].configs(_study_args(name, args)), args.workers)
    if not have_matplotlib():
        print(FIGURES_SKIPPED, file=sys.stderr, flush=True)
    os.makedirs(args.out, exist_ok=True)
    if not getattr(args, "command_line", None):
        p = argparse.ArgumentParser(add_help=False)
        _add_common(p)
        if len(studies) == 1 and getattr(args, "study", None) in STUDIES:
            STUDIES[studies[0]].add_arguments(p)
        args.command_line = command_line(args, p)
    summaries = []
    t0 = time.perf_counter()
    with dask_client(args.workers, args.scheduler) as client:
        for name in studies:
            sargs = _study_args(name, args)
            # wall_s (sweep + analysis) is the time the section itself states
            summary = STUDIES[name].run(sargs, client=client)
            summaries.append(summary)
            if args.progress is not False:
                print(f"[{name}] {duration(summary['wall_s'])}: "
                      + " | ".join(summary["headline"][:2]))
    path = write_report(args.out, args.command_line, time.perf_counter() - t0, studies)
    return summaries, path


def cmd_reproduce(args):
    summaries, path = reproduce(args.studies, args)
    print(f"wrote {path}")
    dead = [s for s in summaries if s.get("runs") and s.get("failed") == s.get("runs")]
    if dead:
        # every run of a study failed: say why on one line and exit non-zero
        s = dead[0]
        why = (s.get("errors") or ["see the report"])[0]
        print(f"error: all {s['runs']} runs of study {s.get('study', '?')!r} failed: {why}",
              file=sys.stderr)
        return 1
    return 0


def _timing_line(now, command, total_s, found, current=None):
    """How long the training took (from the records), how long this invocation took and
    how that splits, and whether runs were resumed."""
    train_s = sum(s.get("compute_s", 0) for _, s, _ in found)
    line = (f"Generated {now} by `{command}`. Training took {duration(train_s)} in total "
            "(summed over the records of the sections below).")
    if total_s is None:
        return line + " Finished runs are reused when the command is repeated."
    mine = [s for name, s, _ in found if current is None or name in current]
    runs = sum(s.get("runs", 0) for s in mine)
    reused = sum(s.get("reused", 0) for s in mine)
    studies_s = sum(s.get("wall_s", 0) for s in mine)
    line += (f" This invocation took {duration(total_s)}: {duration(studies_s)} in the sweeps "
             "and analyses of the studies it ran (the times given per study below)")
    if total_s - studies_s >= 0.1:
        line += f", {duration(total_s - studies_s)} starting the engine and writing the report"
    if reused:
        line += (f"; {reused} of their {runs} runs were resumed from an earlier invocation "
                 "with the same --out")
    line += "."
    older = [name for name, _, _ in found if current is not None and name not in current]
    if older:
        line += f" The sections {', '.join(older)} come from earlier invocations."
    return line


def write_report(out, command, total_s=None, current=None):
    """OUT/REPORT.md from every study section found under OUT (canonical order).

    ``current``: the studies this invocation ran (the others are older sections)."""
    found = []
    for name in ORDER:
        sec = os.path.join(out, name, "section.md")
        summ = os.path.join(out, name, "summary.json")
        if os.path.exists(sec) and os.path.exists(summ):
            with open(summ) as fh:
                s = json.load(fh)
            with open(sec) as fh:
                found.append((name, s, root_links(fh.read(), name, s.get("figures", []))))
    records = []
    for name, _, _ in found:
        try:
            with open(os.path.join(out, name, "records.json")) as fh:
                records += json.load(fh)
        except (OSError, ValueError):
            pass
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = ["# mimfast: reproducing *Neural Networks Learn Generic Multi-Index Models Near "
             "Information-Theoretic Limit*", "",
             "Zhang, Wang, Fu, Lee (arXiv 2511.15120). Two-layer networks trained layer-wise on "
             "Gaussian multi-index models y = g(Ux); every number below is computed from the "
             "runs stored next to this file.", "",
             _timing_line(now, command, total_s, found, current), ""]
    if not have_matplotlib():
        lines += [f"> **Figures skipped:** matplotlib is not installed; "
                  "`pip install -e '.[bench]'` and repeat the command (finished runs are "
                  "reused) to draw them.", ""]
    if any(s.get("quick") for _, s, _ in found):
        lines += ["> **Quick mode** (`--quick`): tiny sizes for a smoke test. The numbers "
                  "below are not evidence for or against the paper.", ""]
    lines += ["## Summary", ""]
    for name, s, _ in found:
        if current is None or name in current:
            when = f"{duration(s.get('wall_s', s.get('sweep_s', 0)))} this invocation"
        else:
            when = "from an earlier invocation" + (f" at {s['finished_at']}"
                                                   if "finished_at" in s else "")
        lines.append(f"**{name}** ({s['runs']} runs"
                     f"{', ' + str(s['failed']) + ' failed' if s['failed'] else ''}; "
                     f"{when}, {duration(s.get('compute_s', 0))} of training in the records):")
        lines += [f"- {h}" for h in s["headline"]] + [""]
        if s.get("summary_md"):
            lines += [s["summary_md"], ""]
    if not found:
        lines += ["No study results found.", ""]
    lines += ["## Versions", ""]
    v = versions(records)
    lines += [f"- {k}: {val}" for k, val in v.items()] + [""]
    lines += ["Per-section commands are given under each section; `--workers N` / "
              "`--scheduler ADDRESS` give the same records (same `--threads`).", ""]
    for name, _, text in found:
        lines += [text, ""]
    path = os.path.join(out, "REPORT.md")
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, path)
    return path
