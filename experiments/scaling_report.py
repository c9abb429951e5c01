"""The scaling study's summary (experiments/scaling.py report): every point's runs gathered into one
results.json, a report.md table and three plots.

For each point and run: its `seconds` (the run's training and per-epoch evaluation, from metrics.json),
`compile_seconds` (the part JAX spent compiling), `steps`, and its distance to the retrained model of the same
seed: the absolute gaps in forget-train, retain-train, test and validation accuracy, the loss attack's AUC and
the forget accuracy after the BatchNorm statistics are recomputed on retain data (`distance` is the mean of
the accuracy gaps, in points).
"""

import json
import math
from pathlib import Path
from typing import Any

from jaxunlearn.files import write_json, write_text
from jaxunlearn.report import new_figure, save_figure

GAPS = ("forget_train_acc", "retain_train_acc", "test_acc", "validation_acc")
"""The accuracies whose mean gap to the retrained model is a run's `distance`."""
SHOWN = ("mia_loss_auc", "bn_recomputed_forget_train_acc")
RUNS = ("retrain", "contrastive", "contrastive-tuned", "neggrad_plus", "random_label", "salun")


def point_rows(name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (seed, run) of a point's results.json that has its retrained reference."""
    protocol = results["protocol"]
    size = protocol["train"]["train_size"] or 59000
    rows = []
    for seed, runs in results["runs"].items():
        reference = runs.get("retrain")
        if reference is None:
            continue
        for run in RUNS:
            metrics = runs.get(run)
            if metrics is None:
                continue
            gaps = [abs(metrics[part] - reference[part]) for part in GAPS if part in metrics and part in reference]
            rows.append({"point": name, "train_size": size, "forget": protocol["forget"], "seed": int(seed),
                         "run": run, "seconds": metrics["seconds"],
                         "compile_seconds": metrics.get("compile_seconds"), "steps": metrics["steps"],
                         "distance": 100 * sum(gaps) / len(gaps) if run != "retrain" else 0.0,
                         **{f"gap_{part}": 100 * abs(metrics[part] - reference[part]) for part in GAPS
                            if part in metrics and part in reference},
                         **{part: metrics.get(part) for part in (*GAPS, *SHOWN)}})
    return rows


def write_scaling_report(out: Path, protocols: list[Any]) -> list[Path]:
    """results.json, report.md and the plots under `out` from every point's results that exist so far."""
    rows, missing = [], []
    for protocol in protocols:
        path = out / protocol.name / "results.json"
        if path.is_file():
            rows += point_rows(protocol.name, json.loads(path.read_text()))
        else:
            missing.append(protocol.name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"rows": rows, "missing": missing})
    write_text(out / "report.md", _table(rows, missing))
    return [out / "results.json", out / "report.md", *_plots(rows, out)]


def _table(rows: list[dict[str, Any]], missing: list[str]) -> str:
    lines = ["# Scaling study (Fashion-MNIST, ResNet-18 width 1/4)", "",
             "Seconds are each run's own training time with its per-epoch evaluation (compilation in brackets); "
             "distance is the mean gap, in points, to the retrained model of the same seed on forget-train, "
             "retain-train, test and validation accuracy. machine.jsonl records the load beside each point.", "",
             "| train | forget | seed | run | seconds (compile) | steps | distance | forget acc | test acc | "
             "loss-attack AUC | BN-recomputed forget acc |",
             "|---:|:---|---:|:---|---:|---:|---:|---:|---:|---:|---:|"]
    percent = lambda value: "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"
    for row in rows:
        compile_seconds = row["compile_seconds"]
        lines.append(f"| {row['train_size']} | {row['forget']} | {row['seed']} | {row['run']} | {row['seconds']:.0f}"
                     f" ({'–' if compile_seconds is None else f'{compile_seconds:.0f}'}) | {row['steps']} | "
                     f"{row['distance']:.2f} | {percent(row['forget_train_acc'])} | {percent(row['test_acc'])} | "
                     f"{percent(row['mia_loss_auc'])} | {percent(row['bn_recomputed_forget_train_acc'])} |")
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def _plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    seed0 = [row for row in rows if row["seed"] == 0]
    paths = []
    for name, x, subset, log in (
            ("seconds_by_size", "train_size", [r for r in seed0 if r["forget"] == "class:5"], True),
            ("seconds_by_forget", "forget_count", [r for r in seed0 if r["forget"].startswith("random")], True)):
        figure = new_figure(6.5, 4.2)
        axes = figure.add_subplot()
        for run in RUNS:
            points = sorted((_x(row, x), row["seconds"]) for row in subset if row["run"] == run)
            if points:
                axes.plot(*zip(*points), marker="o", label=run)
        axes.set_xscale("log" if log else "linear")
        axes.set_yscale("log")
        axes.set_xlabel("training images" if x == "train_size" else "forgotten random images")
        axes.set_ylabel("seconds (one run)")
        axes.set_title("class 5" if x == "train_size" else "random forgetting, all sizes")
        axes.legend(fontsize=8, frameon=False)
        save_figure(figure, out / f"{name}.png")
        paths.append(out / f"{name}.png")
    figure = new_figure(6.5, 4.2)
    axes = figure.add_subplot()
    for run in RUNS[1:]:
        points = [(row["seconds"], row["distance"]) for row in seed0 if row["run"] == run]
        if points:
            axes.scatter(*zip(*points), label=run, s=18)
    retrain = [row["seconds"] for row in seed0 if row["run"] == "retrain"]
    if retrain:
        axes.scatter(retrain, [0.0] * len(retrain), label="retrain", marker="x", color="black")
    axes.set_xscale("log")
    axes.set_xlabel("seconds (one run)")
    axes.set_ylabel("distance to retraining (points)")
    axes.legend(fontsize=8, frameon=False)
    save_figure(figure, out / "distance_by_seconds.png")
    return [*paths, out / "distance_by_seconds.png"]


def _x(row: dict[str, Any], x: str) -> float:
    return row["train_size"] if x == "train_size" else int(row["forget"].split(":")[1])
