"""`jaxunlearn report`: evaluate several runs of one experiment against the retrained one and report them."""

import os
from pathlib import Path

import numpy as np

from jaxunlearn.data.splits import Split
from jaxunlearn.errors import UserError
from jaxunlearn.files import check_writable, owned_directory
from jaxunlearn.report import RunSummary, write_report
from jaxunlearn.run import Run
from jaxunlearn.runs import evaluate, run_embeddings

EMBEDDED_RETAIN = 2000
"""Retain samples embedded per model for the projection plot (the first ones in dataset order)."""


def _run_name(run: Run) -> str:
    return "original" if run.kind == "train" else run.config["config"]["method"]


def collect_runs(runs: list[Run]) -> tuple[dict[str, Run], Split]:
    """name → run (the original added from the unlearning runs' source), and their shared split."""
    unlearning = [run for run in runs if run.split is not None]
    if not unlearning:
        raise UserError("report needs at least one unlearning run (a run directory with split.npz)")
    split = unlearning[0].split
    for run in unlearning[1:]:
        if run.split.content_hash() != split.content_hash():
            raise UserError(f"{run.path} forgot another split than {unlearning[0].path}; report compares one experiment")
    sources = {os.path.realpath(run.config.get("source", "")) for run in unlearning}
    if len(sources) > 1:
        raise UserError(f"the runs unlearn different originals ({', '.join(sorted(sources))}); report compares "
                        f"one experiment")
    named: dict[str, Run] = {"original": unlearning[0].source}
    for run in runs:
        name = _run_name(run)
        if name in named and named[name].path.resolve() != run.path.resolve():
            raise UserError(f"two runs named {name!r} ({named[name].path} and {run.path}); report one run per method")
        named[name] = run
    return named, split


def report_runs(runs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Evaluate every run (with the retrained one as reference when present) and write the report.

    Every run is loaded once (`jaxunlearn.run.Run`) and the dataset once for all of them."""
    if not str(out_dir).strip():
        raise UserError("`out_dir` is empty")
    check_writable(Path(out_dir) / "report.md", "`out_dir`")
    loaded = [Run(run) for run in runs]
    for run in loaded:
        run.config  # UserError for a directory that is no run
    named, split = collect_runs(loaded)
    reference, original = named.get("retrain"), named["original"]
    retain_shown = split.retain[:EMBEDDED_RETAIN]
    summaries = []
    for name, run in named.items():
        metrics = evaluate(run, split, reference=reference if name != "retrain" else None, original=original)
        forget_feat, retain_feat = run_embeddings(run, [split.forget, retain_shown])
        summaries.append(RunSummary(
            name=name, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            step_log=run.step_log() if name != "original" else [],
            epoch_log=run.epoch_log() if name != "original" else [],
            embeddings={"forget": np.asarray(forget_feat), "retain": np.asarray(retain_feat)},
        ))
    with owned_directory(out_dir, "`out_dir`") as out:  # one report at a time writes into it
        return write_report(summaries, out, reference="retrain" if reference else "original")
