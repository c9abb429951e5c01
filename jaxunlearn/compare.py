"""`jaxunlearn report`: evaluate several runs of one experiment against the retrained one and report them."""

import json
from pathlib import Path

import numpy as np

from jaxunlearn.engine import checkpoint
from jaxunlearn.config import train_config_from_json
from jaxunlearn.data.splits import Split, load_split
from jaxunlearn.errors import UserError
from jaxunlearn.report import RunSummary, write_report
from jaxunlearn.runs import evaluate_run, run_embeddings, training_data

EMBEDDED_RETAIN = 2000
"""Retain samples embedded per model for the projection plot (the first ones in dataset order)."""


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _run_name(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    return "original" if config["kind"] == "train" else config["config"]["method"]


def collect_runs(runs: list[Path]) -> tuple[dict[str, Path], Split]:
    """name → run directory (the original added from the unlearning runs' source), and their shared split."""
    unlearning = [run for run in runs if (run / "split.npz").exists()]
    if not unlearning:
        raise UserError("report needs at least one unlearning run (a run directory with split.npz)")
    split = load_split(unlearning[0] / "split.npz")
    for run in unlearning[1:]:
        if load_split(run / "split.npz").content_hash() != split.content_hash():
            raise UserError(f"{run} forgot another split than {unlearning[0]}; report compares one experiment")
    named: dict[str, Path] = {"original": Path(checkpoint.read_meta(unlearning[0])["source"])}
    for run in runs:
        name = _run_name(run)
        if name in named and named[name].resolve() != run.resolve():
            raise UserError(f"two runs named {name!r} ({named[name]} and {run}); report one run per method")
        named[name] = run
    return named, split


def report_runs(runs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Evaluate every run (with the retrained one as reference when present) and write the report."""
    for run in map(Path, runs):
        if not (run / "config.json").exists():
            raise UserError(f"{run} is not a run directory (no config.json)")
    named, split = collect_runs([Path(run) for run in runs])
    reference = named.get("retrain")
    meta = checkpoint.read_meta(named["original"])
    original = train_config_from_json(meta["train_config"])
    dataset = training_data(original)
    retain_shown = split.retain[:EMBEDDED_RETAIN]
    summaries = []
    for name, run in named.items():
        metrics = evaluate_run(run, split, reference=reference if name != "retrain" else None)
        forget_feat, retain_feat = run_embeddings(run, dataset, [split.forget, retain_shown])
        summaries.append(RunSummary(
            name=name, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            step_log=_read_jsonl(run / "metrics.jsonl") if name != "original" else [],
            epoch_log=_read_jsonl(run / "evaluations.jsonl") if name != "original" else [],
            embeddings={"forget": np.asarray(forget_feat), "retain": np.asarray(retain_feat)},
        ))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror or error}") from None
    return write_report(summaries, out, reference="retrain" if reference else "original")
