"""What one run of a program gives back (``RunResult``), shared by every executor."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RunResult:
    """Outcome of one run: r0, the data window after the run, instructions executed, and what
    the program's helpers recorded (declared output length, printed text) and its run time."""

    return_value: int
    memory: bytearray | memoryview
    instructions: int
    #: Length declared with ``hermes_set_output``; None when the program declared none.
    output_length: int | None = None
    #: Text printed with ``bpf_trace_printk``, at most ``helpers.TRACE_LIMIT`` bytes.
    trace: bytes = b""
    #: Printed bytes dropped past ``TRACE_LIMIT``.
    trace_dropped: int = 0
    #: Nanoseconds the run itself took (``time.perf_counter_ns``), without loading.
    elapsed_ns: int = 0
