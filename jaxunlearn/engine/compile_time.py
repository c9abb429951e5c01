"""How long JAX spends compiling while a run trains: tracing, lowering and XLA's compilation (or the reading of
a compiled program from the persistent cache), summed from JAX's own monitoring events.

A run's `seconds` includes this; `compile_seconds` says how much of it was compilation, so that the cost of a
run can be read apart from the one-time cost of building its programs (a second run of the same shapes, in the
same process or from the persistent cache, pays less of it).
"""

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from jax import monitoring

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
"""JAX's durations of tracing, lowering to MLIR and compiling (XLA, or a persistent-cache read)."""


class CompileClock:
    """The seconds of `COMPILE_EVENTS` recorded in this process while the clock runs (`compile_clock`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def _record(self, event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            with self._lock:
                self.seconds += duration


@contextlib.contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """A `CompileClock` summing the compilation JAX does in this process during the block."""
    clock = CompileClock()
    monitoring.register_event_duration_secs_listener(clock._record)
    try:
        yield clock
    finally:
        monitoring.unregister_event_duration_listener(clock._record)
