"""Compute kernels of mimfast (installed as ``mimfast.kernels``).

``reference`` (plain numpy) defines every kernel; ``cpu`` (Numba) and ``gpu``
(CuPy) implement the same functions.  Nothing here imports mimfast's
orchestration; ``gpu`` imports cupy lazily so this package always imports.
"""
