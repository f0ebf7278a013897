"""mimfast: layer-wise training of two-layer networks on Gaussian multi-index models.

Import the pieces you need: ``mimfast.tasks.MultiIndexTask``,
``mimfast.schedule.LayerwiseRegressor`` / ``train``, ``mimfast.backends``,
``mimfast.kernels`` (reference, cpu, gpu).
"""

import os as _os

__version__ = "0.1.0"

# Numba's OpenMP layer busy-waits between parallel regions by default, which
# starves OpenBLAS threads (a 256x256 eigh went from 20 ms to 2 s after a kernel
# call).  Passive waiting costs nothing measurable in the kernels.  Set before
# libgomp loads; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The other way round: OpenBLAS's own threads spin for ~2^28 cycles after each
# call, and a Numba kernel started in that window shares the cores with them
# (stage 1 at d = 2048, m = 32 measured 61 ms alone, 114 ms right after a numpy
# sgemm).  2^4 cycles makes them sleep at once; waking them costs microseconds
# per BLAS call.  Read when OpenBLAS loads, so import mimfast before numpy for
# it to apply; an explicit user setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# In an installed wheel the top-level ``kernels/`` folder lives at
# ``mimfast/kernels``.  When mimfast is imported straight from a source checkout
# (e.g. `python -m mimfast` run from the repository root after a non-editable
# install), let the sibling ``kernels/`` folder serve as ``mimfast.kernels``.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "kernels", "reference.py")):
        __path__.append(_root)  # noqa: F821  (package __path__)

# after the environment defaults above: errors imports numpy, which loads OpenBLAS
from .errors import MimfastInputError, MimfastWarning  # noqa: E402,F401
