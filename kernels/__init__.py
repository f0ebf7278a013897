"""Compute kernels of mimfast (installed as ``mimfast.kernels``).

``reference`` (plain numpy) defines every kernel; ``cpu`` (Numba) and ``gpu``
(CuPy) implement the same functions.  Nothing here imports mimfast's
orchestration; ``gpu`` imports cupy lazily so this package always imports.
"""

import functools as _functools
import os as _os


@_functools.lru_cache(maxsize=None)
def cache_bytes(level):
    """Size in bytes of the level-``level`` cache one core sees (Linux sysfs, else
    sysconf), or None if unknown.  The CPU kernels size their row blocks by it."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(_os.listdir(base)):
            with open(_os.path.join(base, idx, "level")) as fh:
                if fh.read().strip() != str(level):
                    continue
            with open(_os.path.join(base, idx, "type")) as fh:
                if fh.read().strip() == "Instruction":
                    continue
            with open(_os.path.join(base, idx, "size")) as fh:
                text = fh.read().strip().upper()
            scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(text[-1:], 1)
            return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    name = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE",
            3: "SC_LEVEL3_CACHE_SIZE"}.get(level)
    try:
        size = _os.sysconf(name) if name else 0
    except (ValueError, OSError, AttributeError):
        return None
    return size if size and size > 0 else None
