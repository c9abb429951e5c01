"""ViT-small and bf16 precision through the command line on digits: train, unlearn, evaluate, bench."""

import json

import pytest

from jaxunlearn.cli import main
from jaxunlearn.demo import TRAIN



def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.slow
def test_vit_small_trains_forgets_evaluates_and_benches(tmp_path, capsys):
    """ViT width 1/8 (dim 48), depth 2, patches of 4 on 8×8 digits (4 tokens and a class token)."""
    original, unlearned = tmp_path / "vit", tmp_path / "vit-cu"
    assert run_cli("train", "--dataset", "digits", "--model", "vit_small", "--width", 0.125, "--depth", 2,
                   "--epochs", 15, "--batch-size", 64, "--lr", 0.05, "--workdir", original) == 0
    trained = json.loads((original / "metrics.json").read_text())
    assert trained["test_acc"] > 0.93  # measured 0.972
    assert run_cli("unlearn", "--method", "contrastive", "--forget", "class:5", "--from", original,
                   "--workdir", unlearned) == 0
    assert run_cli("evaluate", "--from", unlearned) == 0
    metrics = json.loads((unlearned / "metrics.json").read_text())
    assert metrics["forget_test_acc"] <= 0.1 and metrics["test_acc"] > 0.9  # measured 0.083 and 0.960
    assert not (unlearned / "checkpoints" / str(metrics["epochs"]) / "batch_stats").exists()  # it has none
    assert metrics["bn_recomputed_forget_test_acc"] == metrics["forget_test_acc"]  # nothing to recompute
    capsys.readouterr()
    assert run_cli("bench", "--model", "vit_small", "--width", 0.125, "--depth", 2, "--image-size", 8,
                   "--channels", 1, "--batch", 16, "--steps", 1, "--repeats", 1, "--devices", 1,
                   "--precision", "both") == 0
    report = capsys.readouterr().out
    assert "vit_small width 0.125, depth 2" in report
    assert all(row in report for row in ("\ncu ", "\ntrain ", "\ncu bf16 ", "\ntrain bf16 "))


@pytest.mark.slow
def test_bf16_training_and_unlearning_match_float32(digits_run, tmp_path):
    """The demo's original trained again with bf16 compute reaches the float32 accuracy (±3 points), and CU
    in bf16 from the float32 original forgets as CU in float32 does."""
    source, float32 = digits_run
    workdir = tmp_path / "bf16"
    assert run_cli("train", "--dataset", "digits", "--width", TRAIN.width, "--epochs", TRAIN.recipe.epochs,
                   "--batch-size", TRAIN.recipe.batch_size, "--precision", "bf16", "--workdir", workdir) == 0
    bf16 = json.loads((workdir / "metrics.json").read_text())
    assert abs(bf16["test_acc"] - float32["test_acc"]) <= 0.03
    assert json.loads((workdir / "config.json").read_text())["config"]["precision"] == "bf16"
    unlearned = tmp_path / "bf16-cu"
    assert run_cli("unlearn", "--method", "contrastive", "--forget", "class:5", "--from", source,
                   "--precision", "bf16", "--workdir", unlearned) == 0
    metrics = json.loads((unlearned / "metrics.json").read_text())
    assert metrics["forget_test_acc"] <= 0.1 and metrics["test_acc"] > 0.93


def test_unknown_precision_or_a_depth_for_a_resnet_is_refused(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert run_cli("train", "--precision", "fp8", "--workdir", workdir) == 2
    assert "fp8" in capsys.readouterr().err
    assert run_cli("train", "--model", "resnet18", "--depth", 3, "--workdir", workdir) == 2
    assert "depth" in capsys.readouterr().err
    assert not workdir.exists()
