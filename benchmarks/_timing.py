"""Timing helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

import statistics
import time


def median_time(fn, *args, repeats):
    """Median wall time of `fn(*args)` over `repeats` calls, after the caller has compiled it."""
    import jax

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def first_call(fn, *args):
    """Wall time of the first call of `fn(*args)` (compile + one run)."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t
