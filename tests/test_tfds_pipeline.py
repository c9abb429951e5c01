"""The TFDS path end to end (CIFAR-10 code path) on `tfds.testing.mock_data`: no data or network needed."""

import json

import pytest
import tensorflow_datasets as tfds

from jaxunlearn.cli import main
from jaxunlearn.data.splits import load_split

pytestmark = pytest.mark.slow


def test_train_and_official_contrastive_unlearning_on_mock_cifar10(tmp_path):
    original, unlearned = tmp_path / "original", tmp_path / "cu"
    with tfds.testing.mock_data(num_examples=96):
        assert main(["train", "--dataset", "cifar10", "--width", "0.125", "--epochs", "1",
                     "--batch-size", "32", "--workdir", str(original)]) == 0
        assert main(["unlearn", "--method", "contrastive", "--forget", "class:5", "--pairing", "official",
                     "--from", str(original), "--workdir", str(unlearned), "--epochs", "1",
                     "--batch-size", "8"]) == 0
    metrics = json.loads((unlearned / "metrics.json").read_text())
    split = load_split(unlearned / "split.npz")
    assert split.pairing == "official"
    # The official split keeps the last class-5 image in the retain set.
    assert len(split.forget) + len(split.retain) == 96
    assert metrics["epochs"] == 1
    assert metrics["steps"] == 4 * -(-len(split.forget) // 8)
    config = json.loads((original / "config.json").read_text())
    assert config["config"]["dataset"] == "cifar10"
