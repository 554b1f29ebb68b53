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
    """Seconds that JAX spends tracing, lowering and XLA-compiling, from its `jax.monitoring`
    duration events (one listener per process; take a `snapshot()` before a phase and call
    `since(snapshot, wall)` after it).

    The three parts can overlap: operations that JAX runs eagerly while tracing (diffrax and
    equinox evaluate some under `jax.ensure_compile_time_eval`) report their own lowering and
    compile inside the enclosing trace. So `since` also reports the union of the event
    intervals, and "other" is the phase's wall time outside that union: the run, dispatch,
    and whatever the events do not time. The event names are JAX's (`jax._src.dispatch`), not
    a public contract; a phase without events says so (everything cached, or renamed events).
    """

    _EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def __init__(self):
        import jax

        self.intervals = []  # (kind, start, end) in time.perf_counter() seconds
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        kind = self._EVENTS.get(event)
        if kind is not None:
            end = time.perf_counter()  # the event is reported when it ends
            self.intervals.append((kind, end - duration, end))

    def snapshot(self):
        return len(self.intervals)

    def since(self, snapshot, wall):
        """'trace a s, lower b s, XLA compile c s (together d s), other e s' for the events
        recorded since `snapshot`, in a phase of `wall` seconds."""
        events = self.intervals[snapshot:]
        if not events:
            return f"no JAX trace/compile events (all cached, or JAX renamed them); {wall:.2f} s"
        parts = dict.fromkeys(self._EVENTS.values(), 0.0)
        for kind, start, end in events:
            parts[kind] += end - start
        union, reach = 0.0, -float("inf")
        for _, start, end in sorted(events, key=lambda e: e[1]):
            union += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        return (
            f"trace {parts['trace']:.2f} s, lower {parts['lower']:.2f} s, "
            f"XLA compile {parts['compile']:.2f} s (together {union:.2f} s), "
            f"other (run, dispatch, untimed) {wall - union:.2f} s"
        )
