"""`evaluate --reference` and `report` end to end on the digits runs: files and the ranges of the numbers."""

import json
import math

import numpy as np
import pytest

from jaxunlearn.cli import main

pytestmark = pytest.mark.slow


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_evaluate_against_the_retrained_reference(contrastive_run, retrain_run):
    assert run_cli("evaluate", "--from", retrain_run) == 0
    reference = json.loads((retrain_run / "metrics.json").read_text())
    assert run_cli("evaluate", "--from", contrastive_run, "--reference", retrain_run) == 0
    metrics = json.loads((contrastive_run / "metrics.json").read_text())
    assert 0.0 <= metrics["mia_efficacy"] <= 1.0
    for score in ("loss", "confidence", "logit_confidence"):
        auc = metrics[f"mia_{score}_auc"]
        assert metrics[f"mia_{score}_auc_low"] <= auc <= metrics[f"mia_{score}_auc_high"]
        assert 0.0 <= auc <= 1.0
        assert 0.0 <= metrics[f"mia_{score}_tpr_at_01pct_fpr"] <= metrics[f"mia_{score}_tpr_at_1pct_fpr"] <= 1.0
    for part in ("forget", "test"):
        assert 0.0 <= metrics[f"js_{part}"] <= math.log(2)
        assert metrics[f"kl_{part}"] >= 0.0
        assert 0.0 <= metrics[f"agreement_{part}"] <= 1.0
    # Wherever both models are right they agree, so agreement ≥ acc_unlearned + acc_reference − 1.
    assert metrics["agreement_test"] >= metrics["test_acc"] + reference["test_acc"] - 1
    assert metrics["agreement_forget"] >= metrics["forget_train_acc"] + reference["forget_train_acc"] - 1
    assert metrics["l2_to_original"] > 0.0 and metrics["l2_to_reference"] > metrics["l2_to_original"]
    assert metrics["relearn_steps"] % 5 == 0 and isinstance(metrics["relearn_capped"], bool)
    assert metrics["relearn_target_acc"] >= 0.99  # the original model knew its forget set


def test_a_model_against_itself_is_at_distance_zero(retrain_run):
    assert run_cli("evaluate", "--from", retrain_run, "--reference", retrain_run) == 0
    metrics = json.loads((retrain_run / "metrics.json").read_text())
    assert metrics["js_forget"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["kl_test"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["agreement_forget"] == 1.0 and metrics["agreement_test"] == 1.0
    assert metrics["l2_to_reference"] == 0.0
    # It never saw class 5 (accuracy 0 there), so it takes fine-tuning to reach the original's level.
    assert metrics["forget_train_acc"] == 0.0 and metrics["relearn_steps"] > 0


def test_the_original_needs_no_relearning(digits_run):
    source, _ = digits_run
    assert run_cli("evaluate", "--from", source, "--forget", "class:5") == 0
    metrics = json.loads((source / "metrics-class-5-default-seed0.json").read_text())  # its metrics.json is its training's
    assert metrics["l2_to_original"] == 0.0
    assert metrics["relearn_steps"] == 0 and metrics["relearn_capped"] is False


def test_a_reference_of_another_split_is_refused(contrastive_run, digits_run, capsys):
    source, _ = digits_run
    assert run_cli("evaluate", "--from", contrastive_run, "--reference", source) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "forgot another split" in err[0]


def test_report_writes_the_table_and_the_plots(contrastive_run, retrain_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli("report", contrastive_run, retrain_run, "--out", out) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["accuracy.png", "curves.png", "embeddings.png", "mia.png", "report.md"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "(" in line]
    assert {row.split("|")[1].strip().split()[0] for row in rows} >= {"original", "contrastive", "retrain"}
    for name in ("accuracy", "mia", "embeddings", "curves"):
        assert f"({name}.png)" in report
    metrics = json.loads((contrastive_run / "metrics.json").read_text())
    assert f"{100 * metrics['forget_train_acc']:.2f}" in report
    assert np.isfinite(metrics["js_forget"])
