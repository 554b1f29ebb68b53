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


class CompileClock:
    """Seconds that JAX spends tracing, lowering and XLA-compiling, summed from its
    `jax.monitoring` duration events (one listener per process; take `snapshot()`s around a
    phase and `since(snapshot)` after it)."""

    _EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def __init__(self):
        import jax

        self.totals = dict.fromkeys(self._EVENTS.values(), 0.0)
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        key = self._EVENTS.get(event)
        if key is not None:
            self.totals[key] += duration

    def snapshot(self):
        return dict(self.totals)

    def since(self, snapshot, wall):
        """'trace a s, lower b s, XLA compile c s, rest d s' for a phase of `wall` seconds."""
        parts = {k: self.totals[k] - snapshot[k] for k in self.totals}
        rest = wall - sum(parts.values())
        return (
            f"trace {parts['trace']:.2f} s, lower {parts['lower']:.2f} s, "
            f"XLA compile {parts['compile']:.2f} s, run and the rest {rest:.2f} s"
        )
