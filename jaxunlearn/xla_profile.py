"""Where a compiled program's time goes: XLA's own trace of its ops, summed by kind of work.

`profile_program` runs a jitted call under `jax.profiler.trace`, reads the trace back with
`jax.profiler.ProfileData`, and matches every traced op (XLA:CPU traces each thunk under its HLO instruction's
name) to that instruction in the compiled program's HLO. Each instruction falls in one category, from what it
computes (a fusion by the ops inside it):

- "conv forward", "conv input grad", "conv filter grad": convolutions. The filter gradient is the one
  convolution whose window spans more positions than it outputs (it slides the activations over the output
  gradient); the input gradient is a convolution that JAX's transpose rule emitted (its op_name holds
  "transpose("), the forward one any other.
- "matmul": dot products (the classifier, the MLP head, the loss's similarity matrix, GEMM convolutions).
- "reduction": reductions (BatchNorm statistics, losses, gradient sums) not fused into the above.
- "layout": copies, transposes, slices, pads, concatenations and their fusions: moving data, no arithmetic.
- "collective": cross-device communication (all-reduce and friends).
- "elementwise": the rest of the fused arithmetic (BatchNorm's normalisation, ReLU, the optimizer update).

Times are sums of op durations over every thread, so with ops running side by side they can add up to more
than the wall time; the shares are what a profile is for.
"""

import collections
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

CATEGORIES = ("conv forward", "conv input grad", "conv filter grad", "matmul", "reduction", "elementwise",
              "layout", "collective")
_COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "all-reduce-start", "all-reduce-done", "all-gather-start", "all-gather-done",
                "collective-permute-start", "collective-permute-done"}
_LAYOUT = {"copy", "transpose", "slice", "dynamic-slice", "dynamic-update-slice", "pad", "concatenate",
           "reshape", "bitcast", "broadcast", "parameter", "constant", "tuple", "get-tuple-element", "iota",
           "reverse", "gather", "scatter", "copy-start", "copy-done", "bitcast-convert"}
_CONTROL = {"while", "conditional", "call"}
TOP_OPS = 12
"""How many of the longest ops `profile_program` lists by name."""
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?\[[^\]]*\](?:\{[^}]*\})?|\([^=]*\)|\S+) ([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=([\dx]+)")
_DIM_LABELS = re.compile(r"dim_labels=\w+_\w+->(\w+)")
_SHAPE = re.compile(r"\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _conv_category(line: str, shape: str) -> str:
    """Forward, input or filter gradient of one HLO convolution instruction (see the module docstring)."""
    window, labels, dims = _WINDOW.search(line), _DIM_LABELS.search(line), _SHAPE.search(shape)
    if window and labels and dims and dims.group(1):
        sizes = [int(d) for d in dims.group(1).split(",")]
        output_positions = 1
        for axis, label in enumerate(labels.group(1)):
            if label.isdigit():
                output_positions *= sizes[axis]
        window_positions = 1
        for size in window.group(1).split("x"):
            window_positions *= int(size)
        if window_positions > output_positions:
            return "conv filter grad"
    op_name = _OP_NAME.search(line)
    return "conv input grad" if op_name and "transpose(" in op_name.group(1) else "conv forward"


def _category(opcodes: list[tuple[str, str, str]]) -> str:
    """The category of the work in (opcode, shape, HLO line) triples, by the heaviest kind present."""
    kinds = {opcode for opcode, _, _ in opcodes}
    convolutions = [(shape, line) for opcode, shape, line in opcodes if opcode == "convolution"]
    if convolutions:
        return _conv_category(convolutions[0][1], convolutions[0][0])
    if "dot" in kinds:
        return "matmul"
    if kinds & _COLLECTIVES:
        return "collective"
    if "reduce" in kinds or "reduce-window" in kinds:
        return "reduction"
    if kinds <= _LAYOUT:
        return "layout"
    return "elementwise"


def instruction_categories(hlo_text: str) -> dict[str, str]:
    """Category of every instruction of a compiled HLO module that runs as a traced op: name → category.

    A fusion is categorised by the ops of the computation it calls; control flow (while, conditional, call)
    is left out, since the ops of its bodies are traced on their own.
    """
    computations: dict[str, list[tuple[str, str, str, str | None]]] = collections.defaultdict(list)
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction and current is not None:
            name, shape, opcode = instruction.groups()
            calls = _CALLS.search(line)
            computations[current].append((name, shape, opcode, line, calls.group(1) if calls else None))

    def ops(computation: str, depth: int = 0) -> list[tuple[str, str, str]]:
        found = []
        for _, shape, opcode, line, calls in computations.get(computation, []):
            found.append((opcode, shape, line))
            if calls and opcode == "fusion" and depth < 8:
                found += ops(calls, depth + 1)
        return found

    categories = {}
    for instructions in computations.values():
        for name, shape, opcode, line, calls in instructions:
            if opcode in _CONTROL:
                continue
            inner = ops(calls) if opcode == "fusion" and calls else [(opcode, shape, line)]
            categories[name] = _category(inner)
    return categories


def profile_program(call: Callable[[], Any], compiled: jax.stages.Compiled, repeats: int,
                    steps_per_call: int = 1) -> dict[str, Any]:
    """Trace `repeats` runs of `call` (which runs `steps_per_call` steps of the program `compiled`, already
    warm) and sum the time of its ops by category, per step.

    Returns {"ms_per_step": wall ms per step while traced, "op_ms_per_step": {category: ms per step summed
    over threads}, "untraced_share": share of the op time in ops the HLO did not name (0 when every op
    matched), "top_ops": the `TOP_OPS` longest ops, [{"op": HLO name, "category", "ms_per_step"}]}.
    """
    categories = instruction_categories(compiled.as_text())
    with tempfile.TemporaryDirectory(prefix="jaxunlearn-profile-") as directory:
        with jax.profiler.trace(directory):
            start = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(call())
            wall = time.perf_counter() - start
        trace = sorted(Path(directory).rglob("*.xplane.pb"))[-1]
        data = jax.profiler.ProfileData.from_file(str(trace))
        per_op: dict[str, float] = collections.defaultdict(float)
        unmatched = 0.0
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in categories:
                        per_op[event.name] += event.duration_ns
                    elif not event.name.startswith("end: ") and (  # "end: NAME" marks an op's completion
                            "fusion" in event.name or event.name.startswith(("convolution", "dot", "copy"))):
                        unmatched += event.duration_ns
    steps = repeats * steps_per_call
    ms_per_step = lambda ns: ns / 1e6 / steps
    totals = {category: 0.0 for category in CATEGORIES}
    for name, ns in per_op.items():
        totals[categories[name]] += ns
    matched = sum(totals.values())
    return {
        "ms_per_step": 1e3 * wall / steps,
        "op_ms_per_step": {category: ms_per_step(ns) for category, ns in totals.items()},
        "untraced_share": unmatched / (matched + unmatched) if matched + unmatched else 0.0,
        "top_ops": [{"op": name, "category": categories[name], "ms_per_step": ms_per_step(ns)}
                    for name, ns in sorted(per_op.items(), key=lambda item: -item[1])[:TOP_OPS]],
    }
