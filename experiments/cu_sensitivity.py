"""Contrastive unlearning's sensitivity to its settings, one at a time from its reference defaults, on seed 0
of a protocol (by default the stronger Fashion-MNIST class-5 protocol, after its experiment has run seed 0).

Each variant unlearns the protocol's seed-0 original into RUNS/<protocol>/seed0/cu-sensitivity/<variant> and
is evaluated against the seed's retrained model; the defaults are the experiment's own `contrastive` run
(run again if its directory is gone).
Writes OUT/results.json and OUT/report.md (forget and test accuracy, steps, and the forget accuracy after
the BatchNorm statistics are recomputed on retain data). Resumable like the experiment.

    .venv/bin/python experiments/cu_sensitivity.py [--protocol experiments/protocols/fashion_mnist_class5_tuned.py] \
        [--runs-dir runs] [--out experiments/results/cu_sensitivity]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from jaxunlearn.config import UnlearnConfig
from jaxunlearn.errors import UserError
from jaxunlearn.experiment import load_protocol
from jaxunlearn.files import write_json
from jaxunlearn.runs import evaluate, unlearn

VARIANTS: dict[str, dict[str, str]] = {
    "defaults (λ_UL 3, τ 0.7, ω 4, lr 1e-3)": {},
    "λ_UL 0.5": {"lambda_ul": "0.5"},
    "λ_UL 1": {"lambda_ul": "1"},
    "τ 0.3": {"temperature": "0.3"},
    "τ 1.0": {"temperature": "1.0"},
    "ω 1": {"retain_per_forget": "1"},
    "lr 1e-4": {"learning_rate": "0.0001"},
}
"""Each variant changes one setting of CU's reference defaults: λ_UL ∈ {0.5, 1, 3}, τ ∈ {0.3, 0.7, 1.0},
ω (retain batches per forget batch) ∈ {1, 4}, lr ∈ {1e-4, 1e-3}."""

COLUMNS = ("forget_train_acc", "forget_test_acc", "test_acc", "bn_recomputed_forget_test_acc", "steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="experiments/protocols/fashion_mnist_class5_tuned.py")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default="experiments/results/cu_sensitivity")
    args = parser.parse_args(argv)
    try:
        protocol = load_protocol(args.protocol)
        seed = protocol.seeds[0]
        root = Path(args.runs_dir) / protocol.name / f"seed{seed}"
        if not (root / "retrain" / "metrics.json").is_file():
            raise UserError(f"{root} has no finished retrain run: run the experiment's seed {seed}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {
        "protocol": protocol.name, "seed": seed, "variants": {}}
    for name, overrides in VARIANTS.items():
        if name in results["variants"]:
            continue
        print(f"== CU sensitivity: {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        run = root / "contrastive" if not overrides else root / "cu-sensitivity" / "-".join(
            f"{key}={value}" for key, value in overrides.items())
        unlearn(UnlearnConfig(method="contrastive", forget=protocol.forget,
                              hparams={**protocol.hparams.get("contrastive", {}), **overrides},
                              pairing=protocol.pairing, seed=seed), root / "original", run)  # a finished run is only read
        metrics = evaluate(run, reference=root / "retrain")
        results["variants"][name] = {"hparams": overrides, **{key: metrics[key] for key in COLUMNS},
                                     "wall_seconds": time.perf_counter() - started}
        out.mkdir(parents=True, exist_ok=True)
        write_json(results_path, results)
    reference = json.loads((root / "retrain" / "metrics.json").read_text())
    lines = [f"# Contrastive unlearning, one setting at a time ({protocol.name}, seed {seed})", "",
             "Accuracies in percent; `bn-recomputed forget_test`: the forgotten class's test accuracy after the "
             "BatchNorm statistics are recomputed on retain data, no weight changed. `steps`: optimizer steps "
             "until CU's stopping rule ended the run.", "",
             "| variant | " + " | ".join(c.replace("bn_recomputed_", "bn-recomputed ").removesuffix("_acc")
                                      for c in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS),
             "| *retrain* | " + " | ".join(f"{100 * reference[c]:.2f}" if c != "steps" else "–" for c in COLUMNS)
             + " |"]
    for name, row in results["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.2f}" if c != "steps" else str(row[c])
                                                for c in COLUMNS) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
