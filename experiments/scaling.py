"""Where unlearning pays: the cost of each method and its distance to retraining as the training set and the
forget set grow, on Fashion-MNIST up to all of it.

Every point is one experiment (`jaxunlearn experiment`, resumable): the tuned protocols' model and recipe (a
ResNet-18 of width 1/4, the official recipe for 12 epochs at batch 128, 1,000 training images held out as the
validation set, the fixed 2,000-image test subset) on a training set of 4,000 or 15,000 images (fixed
stratified subsets) or all of them (59,000 once the validation images are held out), forgetting class 5 or
100, 1,000 or 5,000 random images (5,000 only where the training set is larger than 4,000). Methods:
retraining (the reference), CU at its defaults and at the setting tuning chose on both tuned protocols
(λ_UL 1, lr 1e-3: `contrastive-tuned`), and NegGrad+, random labels and SalUn at the settings tuning chose on
the tuned protocol of the same forgetting mode. Seed 0 everywhere; at all 60,000 images also seeds 1 and 2 for
retraining and CU on class 5. Each run's `seconds` (with `compile_seconds`, the part spent compiling) and
`steps` are in the points' results.json; `report` gathers them:

    .venv/bin/python experiments/scaling.py run [--runs-dir runs] [--sizes 4000,15000,60000]
    .venv/bin/python experiments/scaling.py report

Points run smallest first, so a stopped study has its cheapest curves complete; rerunning resumes (every run
and every point). Results: experiments/results/scaling/<point>/ (each experiment's results.json and report.md)
and experiments/results/scaling/{results.json, report.md, seconds_by_size.png, seconds_by_forget.png,
distance_by_seconds.png}.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.experiment import ExperimentProtocol, run_experiment
from jaxunlearn.tuning import Tuning

OUT = Path(__file__).parent / "results" / "scaling"
SIZES = (4000, 15000, 60000)
FULL = 60000
"""The whole training set: `train_size` None (59,000 images once the validation images are held out)."""
FORGETS = ("class:5", "random:100", "random:1000", "random:5000")
METHODS = ("contrastive", "neggrad_plus", "random_label", "salun")
TUNED = {
    "class": {"neggrad_plus": {"learning_rate": "0.003", "beta": "0.95"},
              "random_label": {"learning_rate": "0.013", "epochs": "10"},
              "salun": {"learning_rate": "0.013", "mask_ratio": "0.8"}},
    "sample": {"neggrad_plus": {"learning_rate": "0.01", "beta": "0.95"},
               "random_label": {"learning_rate": "0.013", "epochs": "10"},
               "salun": {"learning_rate": "0.013", "mask_ratio": "0.8"}},
}
"""What tuning chose on fashion_mnist_class5_tuned (class) and fashion_mnist_random500_tuned (sample)."""
CU_TUNED = Tuning(("0.001",), "lambda_ul", ("1",))
"""CU's setting chosen on both tuned protocols, as a grid of one: it runs as `contrastive-tuned`."""
EXTRA_SEEDS = (1, 2)
"""At all 60,000 images, class 5: the seeds on which retraining and CU run too."""


def point_name(size: int, forget: str) -> str:
    return f"scaling_{'all' if size == FULL else size}_{forget.replace(':', '')}"


def protocol(size: int, forget: str) -> ExperimentProtocol:
    """The experiment of one point: `size` training images, forgetting `forget`."""
    mode = "class" if forget.startswith("class") else "sample"
    return ExperimentProtocol(
        name=point_name(size, forget),
        description=f"Fashion-MNIST scaling study: {'all' if size == FULL else size} training images, forget "
                    f"{forget}; retraining, CU at its defaults and tuned, NegGrad+, random labels and SalUn at "
                    f"their tuned settings (experiments/scaling.py).",
        train=TrainConfig(dataset="fashion_mnist", model="resnet18", width=0.25,
                          train_size=None if size == FULL else size, test_size=2000, validation_size=1000,
                          recipe=SupervisedHparams(epochs=12, batch_size=128)),
        forget=forget, methods=METHODS, seeds=(0, *EXTRA_SEEDS) if (size, forget) == (FULL, "class:5") else (0,),
        hparams=TUNED[mode], tuning={"contrastive": CU_TUNED},
    )


def points(sizes: tuple[int, ...]) -> list[tuple[int, str]]:
    """Every (size, forget) of the study, smallest first; a forget set must leave a retain set."""
    return [(size, forget) for size in sorted(sizes) for forget in FORGETS
            if not (forget.startswith("random") and int(forget.split(":")[1]) >= size)]


def run(sizes: tuple[int, ...], runs_dir: str) -> None:
    for size, forget in points(sizes):
        study = protocol(size, forget)
        started, load = time.time(), os.getloadavg()
        run_experiment(study, runs_dir, OUT / study.name, seeds=(0,))
        if size == FULL and forget == "class:5":
            run_experiment(study, runs_dir, OUT / study.name, seeds=EXTRA_SEEDS, methods=("contrastive",))
        log = OUT / "machine.jsonl"  # what else ran: the load average over each point, for its timings
        with log.open("a") as file:
            file.write(json.dumps({"point": study.name, "started": started, "ended": time.time(),
                                   "load_before": load, "load_after": os.getloadavg()}) + "\n")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args(argv)
    sizes = tuple(int(size) for size in args.sizes.split(","))
    if args.command == "run":
        run(sizes, args.runs_dir)
    from scaling_report import write_scaling_report  # noqa: E402 (beside this file)
    write_scaling_report(OUT, [protocol(size, forget) for size, forget in points(SIZES)])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1:])
