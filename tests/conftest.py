import os

# Keep the suite polite on 2-core CI machines; leave OPENBLAS_* settings alone.
os.environ.setdefault("NUMBA_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
