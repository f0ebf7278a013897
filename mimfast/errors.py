"""The one error type users see for bad input, and small checks that raise it."""

from __future__ import annotations

import numpy as np


class MimfastInputError(ValueError):
    """Bad input: the message names the argument and says how to fix it."""


class MimfastWarning(UserWarning):
    """A run that works but probably not as meant (the CLI shows these as one line)."""


SUPPORTED_DTYPES = ("float32", "float64")


def check_dtype(dtype, name="dtype"):
    """Return the numpy dtype for a supported name, else raise a clear error."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in SUPPORTED_DTYPES:
        raise MimfastInputError(
            f"{name}={dtype!r} is not supported; use 'float32' or 'float64'")
    return dt


def check_finite(arr, name, fix="remove or impute them before fitting"):
    """Reject NaN/inf before it reaches a kernel (fastmath kernels would not notice)."""
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise MimfastInputError(f"{name} contains {bad} NaN/inf value(s); {fix}")


def check_int(value, name, minimum=None, fix=""):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MimfastInputError(f"{name}={value!r} must be an integer{fix}")
    if minimum is not None and value < minimum:
        raise MimfastInputError(f"{name}={value} must be >= {minimum}{fix}")
    return int(value)


def check_choice(value, choices, name):
    if value not in choices:
        raise MimfastInputError(
            f"{name}={value!r} is unknown; choose one of: {', '.join(map(str, choices))}")
    return value


def available_memory_bytes():
    """Physical memory that is free right now (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0


def memory_budget_bytes(value, name="--memory-budget"):
    """A --memory-budget value (bytes, or GiB if < 1024) in bytes; None stays None."""
    import math
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)):
        raise MimfastInputError(f"{name}={value} must be positive (bytes, or GiB if < 1024); "
                                f"pass e.g. {name} 8, or leave it out for 60% of the free "
                                "memory")
    return int(value * 2 ** 30) if value < 1024 else int(value)
