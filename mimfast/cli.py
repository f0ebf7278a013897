"""`python -m mimfast ...`: a thin argparse layer over the library.

Subcommands live next to what they drive: ``run`` and ``info`` here,
``bench`` in ``mimfast.bench``, ``scale`` in ``mimfast.scaling`` and
``reproduce`` in ``mimfast.studies``; each of those modules exposes
``register(subparsers)`` which adds its parser and sets ``func``.
Bad input exits with status 2 and one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import tempfile
import warnings

from .errors import MimfastInputError, MimfastWarning

SUBCOMMAND_MODULES = ("mimfast.bench", "mimfast.scaling", "mimfast.studies")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return v


def t1_value(text):
    if text == "auto":
        return text
    return positive_int(text)


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something (not None, not already in the help)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default is None or action.default is False or "default" in h:
            return h
        return super()._get_help_string(action)


def add_common_training_args(p):
    """Options shared by every command that trains networks."""
    p.add_argument("--width", type=positive_int, default=256,
                   help="neurons m (even: they come in +/- pairs)")
    p.add_argument("--t1", type=t1_value, default="auto",
                   help="stage-1 steps, or 'auto' (grows like sqrt(log d))")
    p.add_argument("--loss", default="square",
                   help="stage-1 loss: square, huber, pseudo_huber, even, even_clip")
    p.add_argument("--delta", type=float, default=1.0, help="Huber / pseudo-Huber scale")
    p.add_argument("--activation", default="logcosh", help="stage-1 sigma: logcosh, quadratic")
    p.add_argument("--stage2-activation", default=None,
                   help="stage-2 features (default: same as --activation; relu allowed)")
    p.add_argument("--backend", default="auto", help="auto, numpy, numba, cupy")
    p.add_argument("--dtype", default="float32", help="float32 or float64")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: all; at most NUMBA_NUM_THREADS with the numba backend)")
    p.add_argument("--data", default="auto",
                   help="auto, materialise or stream (regenerate rows each pass)")


def _add_run(sub):
    p = sub.add_parser("run", help="train one network on one task and report",
                       formatter_class=DefaultsHelp,
                       description="Train a two-layer network layer-wise on a Gaussian "
                                   "multi-index task and print recovery and test error.")
    p.add_argument("--d", type=positive_int, default=512, help="input dimension")
    p.add_argument("--r", type=positive_int, default=None,
                   help="hidden directions (default: the target's natural r, 2 for he2)")
    p.add_argument("--target", default="he2", help="link g (see `python -m mimfast info`)")
    p.add_argument("--noise", type=float, default=0.0, help="label noise std")
    p.add_argument("--n1", type=positive_int, default=None,
                   help="stage-1 samples (default 16 d ln d)")
    p.add_argument("--n2", type=positive_int, default=None,
                   help="stage-2 samples (default 16 d ln d)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="test samples (default: n1 // 4 of the n1 in use, clipped to "
                        "[4096, 65536])")
    p.add_argument("--method", default="layerwise", help="layerwise or spectral")
    add_common_training_args(p)
    p.add_argument("--seed", type=positive_int, default=0,
                   help="seed of the task (U, data) and of the network's initialisation")
    p.add_argument("--baselines", action="store_true",
                   help="also run the one-step (T1=1) and spectral baselines")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write the record as JSON (missing parent folders are created "
                        "before the run)")
    p.add_argument("--quiet", action="store_true", help="no table")
    p.set_defaults(func=cmd_run)


def cmd_run(args):
    from .schedule import train
    if args.json is not None:
        check_output_path(args.json)
    from .backends import check_threads
    check_threads(args.threads, "--threads", args.backend)
    from .tasks import NATURAL_R, MultiIndexTask
    r = args.r if args.r is not None else NATURAL_R.get(args.target, 2)
    task = MultiIndexTask(d=args.d, r=r, link=args.target, noise=args.noise, seed=args.seed)
    with one_line_warnings():
        rec = train(task, args.n1, args.n2, args.n_test, width=args.width, t1=args.t1,
                    loss=args.loss, delta=args.delta, activation=args.activation,
                    stage2_activation=args.stage2_activation, method=args.method,
                    backend=args.backend, dtype=args.dtype, seed=args.seed,
                    threads=args.threads, baselines=args.baselines, data=args.data,
                    notify=None if args.quiet else (lambda line: print(line, file=sys.stderr)))
    if not args.quiet:
        print(format_record(rec))
    if args.json is not None:
        write_json(args.json, rec)
        if not args.quiet:
            print(f"wrote {args.json}")
    return 0


class one_line_warnings(warnings.catch_warnings):
    """mimfast's warnings as one "warning: ..." line on stderr each, once per text."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("always", MimfastWarning)
        shown = set()
        default = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if not issubclass(category, MimfastWarning):
                return default(message, category, *args, **kwargs)
            if str(message) not in shown:
                shown.add(str(message))
                print(f"warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        return out


def check_output_path(path, what="--json"):
    """Fail before any work if the output file cannot be written.

    Missing parent folders are created here, before the run; a real probe file
    tests the folder (os.access says yes to root everywhere, even on /proc).
    """
    if not path:
        raise MimfastInputError(f"{what} is empty; give a file path, e.g. {what} run.json")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise MimfastInputError(f"{what} {path!r} is a directory; give a file path")
    parent = os.path.dirname(full)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MimfastInputError(f"{what} {path!r}: {probe!r} is a file, not a folder")
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".mimfast-probe-")
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise MimfastInputError(
            f"{what} {path!r}: cannot write into folder {parent!r} "
            f"({exc.strerror or exc}); give a path in a writable folder") from None


def _finite_or_none(o):
    """JSON has no NaN/inf: undefined numbers are written as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_or_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_none(v) for v in o]
    return o


def write_json(path, obj, what="--json"):
    """Atomic, strict JSON write (temp file + rename; NaN/inf become null)."""
    check_output_path(path, what)
    tmp = f"{os.path.abspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(_finite_or_none(json.loads(json.dumps(obj, default=_json_default))),
                      fh, indent=2, allow_nan=False)
        os.replace(tmp, path)
    except OSError as exc:
        # name the option and the user's path, not the temp file the error carries
        raise MimfastInputError(
            f"{what} {path!r}: writing the file failed ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _fmt_sines(s):
    return "[" + ", ".join(f"{v:.3f}" for v in s) + "]"


def format_record(rec):
    t = rec["timings"]
    lines = [
        f"task      {rec['target']}  d={rec['d']}  r={rec['r']}  noise={rec['noise']}  "
        f"seed={rec['seed']}",
        f"sizes     n1={rec['n1']}  n2={rec['n2']}  n_test={rec['n_test']}  "
        f"width={rec['width']}  T1={rec['t1']}",
        f"engine    backend={rec['backend']}  dtype={rec['dtype']}  data={rec['data_mode']}  "
        f"loss={rec['loss']}",
        f"time      data {t['data']:.2f}s  stage1 {t['stage1']:.2f}s  "
        f"stage2 {t['stage2']:.2f}s  test {t['test']:.2f}s  total {t['total']:.2f}s"
        + (f"  (+ {t['compile']:.2f}s one-off JIT warm-up)" if t.get("compile", 0) > 0.5 else ""),
        "",
        f"{'method':<12}{'T1':>4}  {'test rel MSE':>12}  {'energy in U':>11}  "
        f"{'stage1 s':>8}  {'sin principal angles':<24}  energy per direction u_k",
    ]

    def row(name, r):
        return (f"{name:<12}{r['t1']:>4}  {r['test_rel_mse']:>12.4f}  "
                f"{r['energy_in_u']:>11.3f}  {r['timings']['stage1']:>8.2f}  "
                f"{_fmt_sines(r['sin_theta']):<24}  {_fmt_sines(r['energy_per_direction'])}")

    lines.append(row(rec["method"], rec))
    for name, b in rec.get("baselines", {}).items():
        lines.append(row(name.replace("_", "-"), b))
    if "baselines" in rec and "one_step" in rec["baselines"]:
        ob = rec["baselines"]["one_step"]["test_rel_mse"]
        ratio = ob / rec["test_rel_mse"] if rec["test_rel_mse"] > 0 else math.inf
        lines.append(f"\none-step error / {rec['method']} error = {ratio:.2f}x")
    return "\n".join(lines)


def _add_info(sub):
    p = sub.add_parser("info", help="versions, threads, BLAS, Numba layer, GPU")
    p.add_argument("--json", metavar="PATH", default=None)
    p.set_defaults(func=cmd_info)


def collect_info():
    import platform

    import numpy as np
    import scipy
    from threadpoolctl import threadpool_info

    from . import __version__
    from .backends import gpu_status
    from .tasks import LINKS
    info = {"mimfast": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "scipy": scipy.__version__}
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
        try:
            from .kernels import cpu  # noqa: F401  (forces a parallel region below)
            info["numba_threading_layer"] = _probe_threading_layer()
        except Exception as exc:  # report, do not fail
            info["numba_threading_layer"] = f"unavailable: {exc}"
    except ImportError:
        info["numba"] = "not installed"
    info["blas"] = [{k: v for k, v in d.items() if k in
                     ("internal_api", "version", "num_threads", "architecture",
                      "threading_layer")} for d in threadpool_info()]
    ok, reason = gpu_status()
    info["gpu"] = "available" if ok else f"unavailable: {reason}"
    try:
        import cupy
        info["cupy"] = cupy.__version__
    except Exception:
        info["cupy"] = "not installed"
    info["targets"] = list(LINKS)
    info["env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                              "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY",
                                              "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")
                   if k in os.environ}
    return info


def _probe_threading_layer():
    import numba
    import numpy as np

    @numba.njit(parallel=True)
    def _touch(x):
        s = 0.0
        for i in numba.prange(x.shape[0]):
            s += x[i]
        return s

    _touch(np.ones(4))
    return numba.threading_layer()


def cmd_info(args):
    info = collect_info()
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for i, d in enumerate(v):
                print(f"{k if i == 0 else '':<{width}}  " +
                      ", ".join(f"{kk}={vv}" for kk, vv in d.items()))
        else:
            print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")
    if args.json is not None:
        write_json(args.json, info)
    return 0


def build_parser():
    parser = _Parser(prog="python -m mimfast",
                     description="Layer-wise training of two-layer networks on Gaussian "
                                 "multi-index models: runs, benchmarks, scaling, studies.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"mimfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    _add_run(sub)
    _add_info(sub)
    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ImportError as exc:
            if exc.name != mod:
                raise
            continue
        m.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except MimfastInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"error: out of memory ({exc}); pass smaller sizes or --data stream",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
