"""The two hot kernels: stage-1 gradient and stage-2 feature Gram.

``time_``: one kernel call on X (n, d) (n from ``common.kernel_rows``), synced;
``peakmem_``: the process's peak RSS while running it (X included, as in the
real pipeline's materialised mode).  Numba is JIT-compiled in ``setup`` by a
warm-up call, so no timing includes compilation.  Backends that cannot run
here (no Numba kernels, no GPU) are skipped, not failed.
"""

from . import common


class _Kernel:
    params = (common.KERNEL_D, common.KERNEL_WIDTH, common.KERNEL_DTYPE, common.BACKENDS)
    param_names = ["d", "width", "dtype", "backend"]
    timeout = 900  # full profile: 512 MiB of X, width 512 in float64, plus JIT
    number = 1
    warmup_time = 0

    def setup(self, d, width, dtype, backend):
        be = common.backend_or_skip(backend)
        n = common.kernel_rows(d, dtype)
        X, y = common.data(n, d, dtype)
        self.be = be
        self.X, self.y = be.asarray(X), be.asarray(y)
        self.prepare(d, width, dtype)
        self.call()  # JIT / CUDA module load, outside the timing
        common.sync(be)


class Stage1Grad(_Kernel):
    version = "stage1-grad-1"

    def prepare(self, d, width, dtype):
        W, a, b = common.stage1_params(d, width, dtype)
        be = self.be
        self.args = (be.asarray(W), be.asarray(a), be.asarray(b))

    def call(self):
        return self.be.stage1_grad(self.X, self.y, *self.args, "square", 1.0, 0.0, "logcosh")

    def time_stage1_grad(self, d, width, dtype, backend):
        self.call()
        common.sync(self.be)

    def peakmem_stage1_grad(self, d, width, dtype, backend):
        self.call()
        common.sync(self.be)


class Stage2Gram(_Kernel):
    version = "stage2-gram-1"

    def prepare(self, d, width, dtype):
        W, b = common.stage2_params(d, width, dtype)
        self.args = (self.be.asarray(W), self.be.asarray(b))

    def call(self):
        return self.be.stage2_gram(self.X, self.y, *self.args, "logcosh")

    def time_stage2_gram(self, d, width, dtype, backend):
        self.call()
        common.sync(self.be)

    def peakmem_stage2_gram(self, d, width, dtype, backend):
        self.call()
        common.sync(self.be)
