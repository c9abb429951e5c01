"""Sweep XLA:CPU flags for the compiled CU and train steps, and say which (if any) should become default.

Each candidate flag set runs `python -m jaxunlearn.cli bench ... --json` in its own process with
XLA_FLAGS set to it (XLA reads XLA_FLAGS once, when JAX starts its backend) and JAX_PLATFORMS=cpu. The
reference is the run with no XLA_FLAGS: what `jaxunlearn` does by default. Every other argument is passed
to the bench unchanged, so all candidates time the same steps from the same seed.

Numerical equality, the written tolerance: a candidate equals the reference when every per-step loss of
both step kinds (the warm-up and the timed calls, from the same seed) is within a relative LOSS_RTOL of the
reference's, and the parameter checksum (Σ|p| after the last step) within CHECKSUM_RTOL. Float32 results
legitimately differ in the order of their sums (another convolution algorithm, another vector width); these
tolerances admit that and nothing larger (BENCHMARKS.md gives the differences measured). Fast math is a
contrast row: it licenses XLA to change results beyond reordering, so it is never recommended, whatever its
differences here.

Speed is paired by round: with --rounds N every flag set runs once per round, in a shuffled order. The
control sets a flag XLA ignores (deprecated: its setter discards the value), so the reference and the
control are two runs of one configuration: their mean is the round's baseline and their gap the noise. A
candidate's speedup in a round is the baseline's CU + train time per step over its own; the row shows the
median over rounds. A candidate wins when it equals the reference, beats the baseline in every round, and
its median speedup is at least 1 + max(MIN_GAIN, noise); the fastest winner is the recommendation (to set
in XLA_FLAGS; jaxunlearn sets no XLA flag of its own). --summarise-only recomputes the table from the
JSON files of an earlier sweep in --out.

  python scripts/xla_cpu_flags.py --out DIR [--only NAME,...] [--try "FLAGS"]... [--rounds N] BENCH-ARGS
  smoke:  python scripts/xla_cpu_flags.py --out /tmp/sweep --model resnet18 --width 0.125 --batch 8 \\
              --image-size 16 --devices 1 --steps 2 --repeats 2
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOSS_RTOL = 1e-4
CHECKSUM_RTOL = 1e-5
MIN_GAIN = 0.03
STEP_KINDS = ("cu", "train")


@dataclass(frozen=True)
class Candidate:
    """A named XLA_FLAGS setting. role: "candidate"; "reference" (no flags, the baseline); "control" (a flag
    XLA ignores, to measure noise); "contrast" (timed for comparison, never recommended)."""

    name: str
    flags: tuple[str, ...]
    role: str = "candidate"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("reference", (), role="reference"),
    Candidate("control", ("--xla_cpu_use_thunk_runtime=false",), role="control"),
    Candidate("onednn", ("--xla_cpu_use_onednn=true",)),
    Candidate("onednn-fusions", ("--xla_cpu_use_onednn=true",
                                 "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce")),
    Candidate("onednn-custom-call", ("--xla_cpu_experimental_onednn_custom_call=true",)),
    Candidate("no-xnnpack", ("--xla_cpu_use_xnnpack=false",)),
    Candidate("xnn-fusions", ("--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",)),
    Candidate("xnn-graph-greedy", ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",)),
    Candidate("xnn-graph-slinky",
              ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY",)),
    Candidate("ynn-conv", ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",)),
    Candidate("ynn-more", ("--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise",)),
    Candidate("ynn-off", ("--xla_cpu_experimental_ynn_fusion_type=",)),
    Candidate("eigen-1-thread", ("--xla_cpu_multi_thread_eigen=false",)),
    Candidate("vector-512", ("--xla_cpu_prefer_vector_width=512",)),
    Candidate("vector-128", ("--xla_cpu_prefer_vector_width=128",)),
    Candidate("sched-concurrency", ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",)),
    Candidate("sched-memory", ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",)),
    Candidate("concurrency-flag", ("--xla_cpu_enable_concurrency_optimized_scheduler=true",)),
    Candidate("fast-runtime", ("--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",)),
    Candidate("fast-math", ("--xla_cpu_enable_fast_math=true",), role="contrast"),
)


def run_bench(candidate: Candidate, bench_args: list[str], json_path: Path, timeout: float) -> dict[str, Any]:
    """Run the bench under `candidate`'s flags in a fresh process; its JSON result, or {"error": line}."""
    env = {**os.environ, "XLA_FLAGS": " ".join(candidate.flags), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "jaxunlearn.cli", "bench", *bench_args, "--json", str(json_path)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit status {done.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(json_path.read_text())


def max_relative_difference(values: list[float], reference: list[float]) -> float:
    """max_i |values_i − reference_i| / |reference_i| (inf if the lengths differ)."""
    if len(values) != len(reference):
        return float("inf")
    return max((abs(v - r) / max(abs(r), 1e-30) for v, r in zip(values, reference)), default=0.0)


def differences(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Largest relative loss and checksum differences from the reference over both step kinds."""
    steps, reference_steps = result["steps"], reference["steps"]
    return {
        "loss": max(max_relative_difference(steps[k]["losses"], reference_steps[k]["losses"]) for k in STEP_KINDS),
        "checksum": max(max_relative_difference([steps[k]["param_checksum"]], [reference_steps[k]["param_checksum"]])
                        for k in STEP_KINDS),
    }


def step_time(result: dict[str, Any]) -> float:
    """ms of one CU step + one train step."""
    return sum(result["steps"][kind]["ms_per_step"] for kind in STEP_KINDS)


def baseline(reference_rounds: list[dict[str, Any]], control_rounds: list[dict[str, Any]]) -> list[float]:
    """Per round, the mean step time of the reference and the control: two runs of one configuration."""
    return [(step_time(ref) + step_time(ctl)) / 2 for ref, ctl in zip(reference_rounds, control_rounds)]


def noise(reference_rounds: list[dict[str, Any]], control_rounds: list[dict[str, Any]]) -> float:
    """The largest relative gap between the reference and the control within a round."""
    return max(abs(step_time(ctl) / step_time(ref) - 1) for ref, ctl in zip(reference_rounds, control_rounds))


def summarise(candidate: Candidate, rounds: list[dict[str, Any]], reference_rounds: list[dict[str, Any]],
              baseline_ms: list[float]) -> dict[str, Any]:
    """One table row: median ms/step per step kind, per-round speedups over the baseline, compile seconds,
    and the differences from the reference's first round."""
    row: dict[str, Any] = {"name": candidate.name, "flags": " ".join(candidate.flags) or "(none)",
                           "role": candidate.role, "error": next((r["error"] for r in rounds if "error" in r), None)}
    if row["error"]:
        return row
    for kind in STEP_KINDS:
        row[f"{kind}_ms"] = statistics.median(r["steps"][kind]["ms_per_step"] for r in rounds)
        row[f"{kind}_compile_s"] = statistics.median(r["steps"][kind]["compile_seconds"] for r in rounds)
    row["speedups"] = [base / step_time(own) for own, base in zip(rounds, baseline_ms)]
    row["speedup"] = statistics.median(row["speedups"])
    row["xla_flags_in_effect"] = rounds[0]["environment"]["xla_flags"]
    row["difference"] = differences(rounds[0], reference_rounds[0])
    row["equal"] = row["difference"]["loss"] <= LOSS_RTOL and row["difference"]["checksum"] <= CHECKSUM_RTOL
    return row


def recommendation(rows: list[dict[str, Any]], noise_level: float) -> dict[str, Any] | None:
    """The fastest candidate that equals the reference, is faster than the baseline in every round and by
    max(MIN_GAIN, noise) in the median; None if there is none."""
    needed = 1 + max(MIN_GAIN, noise_level)
    winners = [row for row in rows if row["role"] == "candidate" and not row["error"] and row["equal"]
               and min(row["speedups"]) > 1 and row["speedup"] >= needed]
    return max(winners, key=lambda row: row["speedup"], default=None)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'candidate':20s} {'CU ms':>8s} {'train ms':>8s} {'speedup':>7s} {'min':>6s} {'compile s':>9s} "
              f"{'loss rdiff':>10s} {'sum rdiff':>9s} {'equal':>5s}  flags")
    lines = [header]
    for row in rows:
        if row["error"]:
            lines.append(f"{row['name']:20s} failed: {row['error']}  ({row['flags']})")
            continue
        equal = "yes" if row["equal"] else "NO"
        role = "" if row["role"] == "candidate" else f"  [{row['role']}]"
        lines.append(
            f"{row['name']:20s} {row['cu_ms']:8.1f} {row['train_ms']:8.1f} {row['speedup']:7.3f} "
            f"{min(row['speedups']):6.3f} {row['cu_compile_s'] + row['train_compile_s']:9.1f} "
            f"{row['difference']['loss']:10.1e} {row['difference']['checksum']:9.1e} {equal:>5s}  "
            f"{row['flags']}{role}"
        )
    return "\n".join(lines)


def select(only: str | None, tries: list[str]) -> list[Candidate]:
    """The reference and the control first, then the named candidates (all by default), then --try sets."""
    chosen = list(CANDIDATES)
    if only:
        names = set(only.split(","))
        unknown = names - {c.name for c in CANDIDATES}
        if unknown:
            raise SystemExit(f"unknown candidate(s): {', '.join(sorted(unknown))}")
        chosen = [c for c in CANDIDATES if c.role in ("reference", "control") or c.name in names]
    return chosen + [Candidate(f"try-{i + 1}", tuple(flags.split())) for i, flags in enumerate(tries)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Other arguments go to `jaxunlearn bench`.")
    parser.add_argument("--out", required=True, help="directory for each run's JSON and summary.json")
    parser.add_argument("--only", help="comma-separated candidate names (the reference and control always run)")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="FLAGS",
                        help='an extra candidate, e.g. --try "--xla_cpu_use_onednn=true --xla_cpu_prefer_vector_width=512"')
    parser.add_argument("--rounds", type=int, default=2, help="runs per candidate, interleaved (default 2)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per bench run")
    parser.add_argument("--summarise-only", action="store_true", help="read the runs' JSON in --out, run nothing")
    args, bench_args = parser.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = select(args.only, args.tries)
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in candidates}
    for round_index in range(args.rounds):
        order = list(candidates)
        random.Random(round_index).shuffle(order)  # no candidate always runs early or late on a drifting machine
        for candidate in order:
            if not args.summarise_only:
                print(f"round {round_index + 1}/{args.rounds}: {candidate.name} {' '.join(candidate.flags)}",
                      file=sys.stderr, flush=True)
            path = out / f"{candidate.name}.{round_index + 1}.json"
            if args.summarise_only:
                results[candidate.name].append(json.loads(path.read_text()) if path.exists() else {"error": "no JSON"})
            else:
                results[candidate.name].append(run_bench(candidate, bench_args, path, args.timeout))
    failed = [name for name in ("reference", "control") if any("error" in r for r in results[name])]
    if failed:
        print(f"the {' and the '.join(failed)} run failed: {results[failed[0]][0].get('error')}", file=sys.stderr)
        return 1
    baseline_ms = baseline(results["reference"], results["control"])
    noise_level = noise(results["reference"], results["control"])
    rows = [summarise(c, results[c.name], results["reference"], baseline_ms) for c in candidates]
    best = recommendation(rows, noise_level)
    summary = {"bench_args": bench_args, "rounds": args.rounds, "loss_rtol": LOSS_RTOL,
               "checksum_rtol": CHECKSUM_RTOL, "min_gain": MIN_GAIN, "noise": noise_level,
               "baseline_ms": baseline_ms, "rows": rows, "recommendation": best}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"bench {' '.join(bench_args)}; {args.rounds} round(s); equal: losses within rtol {LOSS_RTOL:g} and "
          f"checksum within rtol {CHECKSUM_RTOL:g} of the reference; speedup: over the mean of the reference "
          f"and the control in the same round; noise (reference vs control) {noise_level:.1%}")
    print(format_table(rows))
    if best is None:
        print(f"no candidate was numerically equal and faster in every round, by >= "
              f"{max(MIN_GAIN, noise_level):.1%} in the median: keep XLA's defaults")
    else:
        print(f"recommendation: {best['name']} ({best['flags']}), {best['speedup']:.3f}x: "
              "set it in XLA_FLAGS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
