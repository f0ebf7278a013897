"""Data sources: where stage-1/stage-2/test rows come from.

Kernels return means over the rows they are given, so the orchestrator runs a
pass over any source as a row-weighted sum of block results.  Two kinds:

* ``ArraySource``: rows held in memory (user arrays, or a task materialised
  once on the backend's device).  One block: the whole array.
* ``StreamedSource``: rows regenerated from the task's counter-based seeds on
  every pass, ``block_rows`` at a time, so X is never held whole.  It yields
  exactly the rows a materialised source of the same task/stream would hold.

Labels are small (n values) and are always held whole on the host, so label
transforms that need batch statistics (centring, the ``even`` loss) see the
full batch in both kinds.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BLOCK_ROWS = 32768


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
    """Rows ``start .. start+n`` of a task stream, materialised or streamed."""

    def __init__(self, task, stream, n, dtype, backend, start=0, streamed=False,
                 block_rows=DEFAULT_BLOCK_ROWS):
        self.task, self.stream, self.n, self.d = task, stream, int(n), task.d
        self.dtype = np.dtype(dtype)
        self.start = int(start)
        self.streamed = bool(streamed)
        self.block_rows = int(block_rows)
        self._backend = backend
        self._X = None
        self._y = None
        self.kind = "streamed" if streamed else "materialised"

    def _materialise(self):
        X, y = self._backend.sample(self.task, self.n, self.stream, self.start, self.dtype)
        self._y = self._backend.to_numpy(y)
        if not self.streamed:
            self._X = X
        return X

    def labels(self):
        if self._y is None:
            if self.streamed:
                parts = []
                for lo in range(0, self.n, self.block_rows):
                    rows = min(self.block_rows, self.n - lo)
                    _, y = self.task.sample(rows, self.stream, self.start + lo, self.dtype,
                                            threads=self._backend.threads)
                    parts.append(y)
                self._y = np.concatenate(parts)
            else:
                self._materialise()
        return self._y

    def blocks(self):
        if not self.streamed:
            if self._X is None:
                self._materialise()
            yield 0, self._X
            return
        for lo in range(0, self.n, self.block_rows):
            rows = min(self.block_rows, self.n - lo)
            X, _ = self._backend.sample(self.task, rows, self.stream, self.start + lo,
                                        self.dtype)
            yield lo, X

    def split(self, n_first):
        kw = dict(streamed=self.streamed, block_rows=self.block_rows)
        return (TaskSource(self.task, self.stream, n_first, self.dtype, self._backend,
                           self.start, **kw),
                TaskSource(self.task, self.stream, self.n - n_first, self.dtype,
                           self._backend, self.start + n_first, **kw))


def bytes_needed(n, d, dtype):
    return int(n) * int(d) * np.dtype(dtype).itemsize
