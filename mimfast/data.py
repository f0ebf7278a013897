"""Data sources: where stage-1/stage-2/test rows come from.

Kernels return means over the rows they are given, so the orchestrator runs a
pass over any source as a row-weighted sum of block results.  Two kinds:

* ``ArraySource``: rows held in memory (user arrays, or a task materialised
  once on the backend's device).  One block: the whole array.
* ``TaskSource(streamed=True)``: rows regenerated from the task's
  counter-based seeds on every pass, ``block_rows`` at a time, so X is never
  held whole.  It yields exactly the rows a materialised source of the same
  task/stream would hold (tests/test_streaming.py checks this bit for bit).

Which sources stream is a data mode (``streamed_sources`` / ``mode_name``):
"materialise", "stream", or "stream:<sources>", e.g. "stream:stage2,test"
holds the stage-1 rows (read 1 + power_iters + T1 times) and regenerates the
stage-2 and test rows (read twice each).  ``plan_sources`` is what
``schedule.plan_memory`` uses for data="auto" when not everything fits.

Labels are small (n values) and are always held whole on the host, so label
transforms that need batch statistics (centring, the ``even`` loss) see the
full batch in both kinds.

Block size.  A streamed block costs ``block_rows * d * itemsize`` bytes for X
plus one float64 generation chunk (``CHUNK_ROWS * d * 8`` bytes) per sampler
thread; ``streamed_block_rows`` picks the largest multiple of ``CHUNK_ROWS``
whose block stays under ``STREAM_BLOCK_TARGET`` bytes (256 MiB: large enough
that a kernel call amortises its overhead, small enough to stay far below the
memory budget) and under an eighth of the memory budget, and never below one
chunk.  Blocks are aligned to absolute chunk boundaries, so no generation
chunk is drawn twice in one pass.  ``streamed_block_bytes`` is the same
figure for ``schedule.plan_memory``.

Fast sampler.  Drawing the rows is a real cost at large d: numpy's
``Generator.standard_normal`` runs at tens of ns per element on a loaded
2-core machine, and a streamed run redraws X on every pass.  ``sample_rows``
produces exactly the rows of ``MultiIndexTask.sample`` (same chunk seeds,
same PCG64 stream, same ziggurat, same float64 labels through
``task.labels``, then the same rounding) but draws each chunk with Numba's
port of numpy's ziggurat (``Generator.standard_normal`` inside an ``njit``
function: identical numbers, about 2-3x faster), writes the rounded rows
straight into the output (no extra float64 array per chunk: each thread
reuses one chunk buffer) and releases the GIL so chunks are drawn on all
sampler threads.  At import-of-first-use it checks itself against numpy on a
small chunk and falls back to numpy's own generator if anything differs, so
the output never changes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import available_memory_bytes
from .tasks import CHUNK_ROWS, check_sample_memory, chunk_seed, stream_id

DEFAULT_BLOCK_ROWS = None  # None: streamed_block_rows(d, dtype, budget)
STREAM_BLOCK_TARGET = 256 * 2 ** 20


# --------------------------------------------------------------------------
# block sizing
# --------------------------------------------------------------------------
def sampler_threads(threads=None):
    return max(1, int(threads or min(os.cpu_count() or 1, 8)))


def streamed_block_rows(d, dtype="float32", memory_budget=None,
                        target_bytes=STREAM_BLOCK_TARGET):
    """Rows per streamed block: a multiple of CHUNK_ROWS, adapted to d and the budget."""
    row_bytes = int(d) * np.dtype(dtype).itemsize
    cap = int(target_bytes)
    if memory_budget is not None:
        cap = min(cap, int(memory_budget) // 8)
    chunks = max(1, cap // (CHUNK_ROWS * row_bytes))
    return chunks * CHUNK_ROWS


def default_memory_budget(memory_budget=None):
    """The budget in bytes: as given, else 60% of the memory free now (None if unknown)."""
    if memory_budget is not None:
        return int(memory_budget)
    avail = available_memory_bytes()
    return int(0.6 * avail) if avail else None


def streamed_block_bytes(d, dtype="float32", memory_budget=None, threads=None,
                         block_rows=None, width=0):
    """Bytes a streamed pass holds at once.

    One X block, the sampler's float64 chunk buffer per thread, and the
    kernels' (rows x width) temporaries (about four such arrays).
    """
    item = np.dtype(dtype).itemsize
    rows = int(block_rows or streamed_block_rows(d, dtype, memory_budget))
    return (rows * int(d) * item
            + sampler_threads(threads) * CHUNK_ROWS * int(d) * 8
            + 4 * rows * int(width) * item)


# --------------------------------------------------------------------------
# which sources stream
# --------------------------------------------------------------------------
SOURCES = ("stage1", "stage2", "test")
# what to hold first when not everything fits: stage 1 is read 1 + power_iters + T1
# times, the test and stage-2 sets twice each (labels, then one pass)
HOLD_PRIORITY = ("stage1", "test", "stage2")


def streamed_sources(mode):
    """The set of streamed sources for a data mode.

    "materialise" (none), "stream" (all), or "stream:<sources>" naming the
    streamed ones (comma-separated), e.g. "stream:stage2,test": stage 1 held.
    """
    if mode == "materialise":
        return frozenset()
    if mode == "stream":
        return frozenset(SOURCES)
    if isinstance(mode, str) and mode.startswith("stream:"):
        names = frozenset(v.strip() for v in mode[len("stream:"):].split(",") if v.strip())
        if names and names <= set(SOURCES):
            return names
    from .errors import MimfastInputError
    raise MimfastInputError(
        f"data={mode!r} is unknown; choose one of: auto, materialise, stream, or "
        "stream:<sources> with sources from stage1, stage2, test (e.g. stream:stage2,test)")


def mode_name(streamed):
    """Inverse of ``streamed_sources``: the canonical name of a set of streamed sources."""
    streamed = frozenset(streamed)
    if not streamed:
        return "materialise"
    if streamed == frozenset(SOURCES):
        return "stream"
    return "stream:" + ",".join(s for s in SOURCES if s in streamed)


def plan_sources(sizes, d, dtype, budget, fixed, stream_block):
    """Streamed sources for data="auto" when not everything fits the budget.

    Holds whole sources in ``HOLD_PRIORITY`` order while they fit next to the
    fixed arrays and one streamed block; streams the rest.  ``sizes`` maps
    source name -> rows.
    """
    room = budget - fixed - stream_block
    streamed = set()
    for name in HOLD_PRIORITY:
        need = bytes_needed(sizes[name], d, dtype)
        if need <= room:
            room -= need
        else:
            streamed.add(name)
    return mode_name(streamed)


# --------------------------------------------------------------------------
# the fast, output-identical sampler
# --------------------------------------------------------------------------
_FILL = None          # numba kernel, False when unusable
_FILL_LOCK = threading.Lock()


def _build_fill():
    import numba

    @numba.njit(nogil=True, cache=True)
    def fill(gen, buf, out, lo, hi, full):
        """Draw a chunk's N(0,1) rows in numpy's order; rows lo..hi go to out (rounded).

        full: draw all rows of buf into buf (the labels need them and the rng
        state after them); else draw only rows 0..hi and write out alone.
        """
        rows, d = buf.shape
        last = rows if full else hi
        for i in range(last):
            keep = lo <= i < hi
            for j in range(d):
                v = gen.standard_normal()
                if full:
                    buf[i, j] = v
                if keep:
                    out[i - lo, j] = v
    return fill


def _numpy_fill(gen, buf, out, lo, hi, full):
    gen.standard_normal(out=buf)
    out[...] = buf[lo:hi]


def _get_fill():
    """The Numba chunk filler if it reproduces numpy exactly, else numpy's own."""
    global _FILL
    if _FILL is None:
        with _FILL_LOCK:
            if _FILL is None:
                try:
                    fill = _build_fill()
                    seed = chunk_seed(12345, 1, 7)
                    buf = np.empty((3, 257))
                    out = np.empty((2, 257), dtype=np.float32)
                    g = np.random.default_rng(seed)
                    fill(g, buf, out, 1, 3, True)
                    tail = g.standard_normal(5)
                    g0 = np.random.default_rng(seed)
                    ref = g0.standard_normal((3, 257))
                    ok = (np.array_equal(buf, ref) and np.array_equal(tail, g0.standard_normal(5))
                          and np.array_equal(out, ref[1:3].astype(np.float32)))
                    part = np.empty((1, 257), dtype=np.float32)
                    fill(np.random.default_rng(seed), buf, part, 1, 2, False)
                    ok = ok and np.array_equal(part, ref[1:2].astype(np.float32))
                    _FILL = fill if ok else False
                except Exception:  # numba missing, or no Generator support
                    _FILL = False
    return _FILL or _numpy_fill


def sampler_kind():
    """'numba' when the fast chunk filler is in use, else 'numpy'."""
    _get_fill()
    return "numba" if _FILL else "numpy"




def sample_rows(task, n, stream="stage1", start=0, dtype="float64", threads=None,
                out=None, labels=True):
    """Rows start..start+n of a task stream: exactly ``task.sample(...)``, faster.

    ``out`` (n, d) of ``dtype`` may be given to fill in place.  Returns (X, y);
    with ``labels=False`` y is None and only X is drawn (a streamed pass whose
    labels are already known skips the labels' GEMM and the chunk rows after
    the last one asked for).
    """
    from .errors import check_dtype, check_int
    n = check_int(n, "n", 1)
    start = check_int(start, "start", 0)
    dt = check_dtype(dtype)
    d = task.d
    sid = stream_id(stream)
    if out is None:
        check_sample_memory(n, d, dt)
    X = np.empty((n, d), dtype=dt) if out is None else out
    if X.shape != (n, d) or X.dtype != dt or not X.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous ({n}, {d}) {dt}")
    y = np.empty(n, dtype=dt) if labels else None
    fill = _get_fill()
    first, last = start // CHUNK_ROWS, (start + n - 1) // CHUNK_ROWS
    local = threading.local()  # one float64 chunk buffer per thread, for this call only

    def one(chunk):
        base = chunk * CHUNK_ROWS
        lo, hi = max(start, base), min(start + n, base + CHUNK_ROWS)
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((CHUNK_ROWS, d))
        rng = np.random.default_rng(chunk_seed(task.seed, sid, chunk))
        fill(rng, buf, X[lo - start:hi - start], lo - base, hi - base, labels)
        if labels:
            yc = task.labels(buf, rng)  # same float64 rows, same rng state: same labels
            # labels beyond the dtype's range become inf; schedule.train names the cause
            with np.errstate(over="ignore", invalid="ignore"):
                y[lo - start:hi - start] = yc[lo - base:hi - base]

    chunks = range(first, last + 1)
    workers = min(sampler_threads(threads), len(chunks))
    # the labels' small GEMM (chunk @ U^T) runs on one BLAS thread per sampler
    # thread: BLAS's own pool on top of the sampler threads oversubscribes the
    # cores (measured: 2x slower on 2 cores).  Results are the same rows.
    with _blas_one_thread():
        if workers <= 1:
            for c in chunks:
                one(c)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, chunks))
    return X, y


_CONTROLLER = None


def _blas_one_thread():
    """Hold BLAS to one thread; the library scan is done once (threadpool_limits
    rescans the loaded libraries on every call, ~1.5 ms each)."""
    global _CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        import contextlib
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _uses_plain_sampler(backend):
    """True when the backend samples on the host with task.sample (numpy, numba)."""
    from .backends import Backend
    return type(backend).sample is Backend.sample


# --------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------
class ArraySource:
    kind = "materialised"

    def __init__(self, X, y, backend, start=0):
        self.X_host = X
        self.y_host = np.asarray(y)
        self.n, self.d = X.shape
        self.dtype = X.dtype
        self._backend = backend
        self._X_dev = None
        self.start = start

    def labels(self):
        return self.y_host

    def _device_X(self):
        if self._X_dev is None:
            self._X_dev = self._backend.asarray(self.X_host)
        return self._X_dev

    def blocks(self):
        """Yield (row offset, X block on the backend device)."""
        yield 0, self._device_X()

    def split(self, n_first):
        """Two sources over rows [0, n_first) and [n_first, n)."""
        first = ArraySource(self.X_host[:n_first], self.y_host[:n_first], self._backend)
        second = ArraySource(self.X_host[n_first:], self.y_host[n_first:], self._backend)
        return first, second


class TaskSource:
    """Rows ``start .. start+n`` of a task stream, materialised or streamed.

    ``block_rows`` (streamed only): rows per block; None adapts it to d, the
    dtype and ``memory_budget`` (see ``streamed_block_rows``).
    """

    def __init__(self, task, stream, n, dtype, backend, start=0, streamed=False,
                 block_rows=DEFAULT_BLOCK_ROWS, memory_budget=None):
        self.task, self.stream, self.n, self.d = task, stream, int(n), task.d
        self.dtype = np.dtype(dtype)
        self.start = int(start)
        self.streamed = bool(streamed)
        self.memory_budget = memory_budget
        if block_rows is None:
            block_rows = streamed_block_rows(self.d, self.dtype,
                                             default_memory_budget(memory_budget))
        self.block_rows = max(1, int(block_rows))
        self._backend = backend
        self._X = None
        self._y = None
        self.kind = "streamed" if streamed else "materialised"
        self.passes = 0  # full passes drawn (streamed: regenerations of X)

    # -- drawing rows ------------------------------------------------------
    def _sample(self, rows, start, out=None, labels=True):
        be = self._backend
        if _uses_plain_sampler(be):
            X, y = sample_rows(self.task, rows, self.stream, start, self.dtype,
                               threads=be.threads, out=out, labels=labels)
            return be.asarray(X), y
        X, y = be.sample(self.task, rows, self.stream, start, self.dtype)
        return X, be.to_numpy(y)

    def _materialise(self):
        X, y = self._sample(self.n, self.start)
        self._y = np.asarray(y)
        if not self.streamed:
            self._X = X
        return X

    def _ranges(self):
        """Block row ranges [lo, hi) relative to start, aligned to absolute chunks."""
        step = self.block_rows
        if step % CHUNK_ROWS == 0:
            lo = 0
            while lo < self.n:
                edge = ((self.start + lo) // CHUNK_ROWS) * CHUNK_ROWS + step
                hi = min(self.n, edge - self.start)
                yield lo, hi
                lo = hi
        else:
            for lo in range(0, self.n, step):
                yield lo, min(self.n, lo + step)

    def labels(self):
        if self._y is None:
            if self.streamed:
                y = np.empty(self.n, dtype=self.dtype)
                buf = None
                for lo, hi in self._ranges():
                    buf = self._block_buffer(hi - lo, buf)
                    _, yb = self._sample(hi - lo, self.start + lo, out=buf)
                    y[lo:hi] = yb
                self.passes += 1
                self._y = y
            else:
                self._materialise()
        return self._y

    def _block_buffer(self, rows, buf):
        """Reuse one host block across a pass (no fresh allocation per block)."""
        if not _uses_plain_sampler(self._backend):
            return None
        if buf is None or buf.shape[0] < rows:
            buf = np.empty((max(rows, min(self.block_rows, self.n)), self.d), self.dtype)
        return buf[:rows]

    def blocks(self):
        if not self.streamed:
            if self._X is None:
                self._materialise()
            yield 0, self._X
            return
        buf = None
        ys = [] if self._y is None else None
        for lo, hi in self._ranges():
            buf = self._block_buffer(hi - lo, buf)
            X, yb = self._sample(hi - lo, self.start + lo, out=buf, labels=ys is not None)
            if ys is not None:
                ys.append(yb)
            yield lo, X
        self.passes += 1
        if ys is not None and self._y is None:  # a full pass gives the labels for free
            self._y = np.concatenate(ys)

    def split(self, n_first):
        if not self.streamed:  # slice the rows already drawn instead of drawing them again
            if self._X is None:
                self._materialise()
            return (ArraySource(self._X[:n_first], self._y[:n_first], self._backend),
                    ArraySource(self._X[n_first:], self._y[n_first:], self._backend))
        kw = dict(streamed=self.streamed, block_rows=self.block_rows,
                  memory_budget=self.memory_budget)
        return (TaskSource(self.task, self.stream, n_first, self.dtype, self._backend,
                           self.start, **kw),
                TaskSource(self.task, self.stream, self.n - n_first, self.dtype,
                           self._backend, self.start + n_first, **kw))


def bytes_needed(n, d, dtype):
    return int(n) * int(d) * np.dtype(dtype).itemsize
