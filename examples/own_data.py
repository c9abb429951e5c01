"""Your own data through the whole harness: numpy arrays become a `ju.Dataset`, trained, unlearned with CU,
evaluated and reported from Python; the same dataset from the command line by its import path.

    .venv/bin/python examples/own_data.py [WORKDIR]          # Python: train, unlearn, evaluate, report
    cd examples && ../.venv/bin/jaxunlearn train --dataset own_data:make_dataset --workdir /tmp/shapes-cli \\
        --width 0.125 --epochs 6 --batch-size 64                 # the command line, the same data

The data: 600 training and 150 test images, 16×16 RGB, of three classes (a horizontal bar, a vertical bar,
a square, each at a random place and colour over noise), as uint8 arrays [N, H, W, C] with integer labels.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import jaxunlearn as ju


def make_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [count, 16, 16, 3] and int labels [count] in {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (count, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(count) % 3
    for image, label in zip(images, labels):
        top, left = rng.integers(2, 10, 2)
        colour = rng.integers(150, 256, 3)
        if label == 0:
            image[top:top + 2, 2:14] = colour
        elif label == 1:
            image[2:14, left:left + 2] = colour
        else:
            image[top:top + 5, left:left + 5] = colour
    return images, labels


def make_dataset(data_dir: str | None = None) -> ju.Dataset:
    """The dataset, built the same way every time (its import path is own_data:make_dataset)."""
    train_images, train_labels = make_arrays(600, seed=0)
    test_images, test_labels = make_arrays(150, seed=1)
    return ju.Dataset.from_arrays(train_images, train_labels, test_images, test_labels, name="shapes")


def main(workdir: Path) -> dict[str, dict[str, float]]:
    ju.register_dataset("shapes", make_dataset, replace=True)  # TrainConfig names it; every command finds it
    config = ju.TrainConfig(dataset="shapes", width=0.125, recipe=ju.SupervisedHparams(epochs=6, batch_size=64))
    original = ju.train(config, workdir / "original")
    ju.unlearn(ju.UnlearnConfig(method="contrastive", forget="class:1", hparams={}), workdir / "original",
               workdir / "contrastive")
    ju.unlearn(ju.UnlearnConfig(method="retrain", forget="class:1", hparams={}), workdir / "original",
               workdir / "retrain")
    unlearned = ju.evaluate(workdir / "contrastive", reference=workdir / "retrain")
    from jaxunlearn.compare import report_runs

    report_runs([workdir / "contrastive", workdir / "retrain"], workdir / "report")
    rows = {"original": original, "contrastive": unlearned}
    for name, metrics in rows.items():
        shown = {key: round(value, 3) for key, value in metrics.items()
                 if key in ("train_acc", "test_acc", "forget_test_acc", "forget_train_acc")}
        print(f"{name:12s} {shown}")
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(Path(directory))
