"""`jaxunlearn demo`: the whole pipeline on scikit-learn's digits in under a minute on two CPU cores.

Trains a narrow ResNet-18 (width 1/8) on digits, forgets class 5 with Contrastive Unlearning, retrains the
reference on the retain set, and prints one row per model.
"""

import tempfile
from pathlib import Path

from jaxunlearn.config import SupervisedHparams, TrainConfig, UnlearnConfig
from jaxunlearn.data.splits import ForgetSpec
from jaxunlearn.files import check_writable, write_json
from jaxunlearn.run import training_data
from jaxunlearn.runs import evaluate, obtain_split, train, unlearn

FORGET = ForgetSpec("class", classes=(5,))
TRAIN = TrainConfig(dataset="digits", model="resnet18", width=0.125,
                    recipe=SupervisedHparams(epochs=15, batch_size=64))
COLUMNS = ("forget_train_acc", "forget_test_acc", "retain_train_acc", "test_acc", "seconds")


def run_demo(workdir: str | None = None, json_path: str | None = None) -> dict[str, dict[str, float]]:
    """Run the three models; print the table; write `json_path` if given. Returns the table's rows."""
    if json_path:
        check_writable(json_path, "`json`")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="jaxunlearn-demo-") as tmp:
            return _run(Path(tmp), json_path)
    return _run(Path(workdir), json_path)


def _run(root: Path, json_path: str | None) -> dict[str, dict[str, float]]:
    original = root / "original"
    train(TRAIN, original)
    split = obtain_split(original, training_data(TRAIN), FORGET, "default", 0)
    rows = {"original": evaluate(original, split)}
    rows["retrain"] = unlearn(UnlearnConfig(method="retrain", forget=FORGET, hparams={}), original, root / "retrain")
    rows["contrastive"] = unlearn(UnlearnConfig(method="contrastive", forget=FORGET, hparams={}), original,
                                  root / "contrastive")
    table = {name: {column: row[column] for column in COLUMNS} for name, row in rows.items()}
    print(format_table(table))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(json_path), table)
    return table


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table, one row per model."""
    lines = [f"{'model':12s}" + "".join(f"{column:>18s}" for column in COLUMNS)]
    for name, row in rows.items():
        lines.append(f"{name:12s}" + "".join(f"{row[column]:>18.3f}" for column in COLUMNS))
    return "\n".join(lines)
