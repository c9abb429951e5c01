"""The experiment runner end to end on the smallest protocol (digits, 1 seed, 2 methods), and resuming."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from jaxunlearn.cli import main
from jaxunlearn.experiment import ExperimentProtocol, load_protocol
from jaxunlearn.errors import UserError


SMOKE = Path(__file__).parents[1] / "experiments" / "protocols" / "digits_smoke.py"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    assert main(["experiment", str(SMOKE), "--runs-dir", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root


@pytest.mark.slow
def test_every_run_is_evaluated_against_the_reference(experiment):
    results = json.loads((experiment / "out" / "results.json").read_text())
    runs = results["runs"]["0"]
    assert list(runs) == ["original", "retrain", "contrastive", "gradient_ascent"]
    assert runs["retrain"]["forget_test_acc"] == 0.0  # never saw class 5
    assert runs["original"]["forget_test_acc"] > 0.5
    assert runs["contrastive"]["forget_test_acc"] < runs["original"]["forget_test_acc"]
    for name in ("original", "contrastive", "gradient_ascent"):
        assert {"js_forget", "l2_to_reference", "mia_efficacy", "wall_seconds"} <= set(runs[name])
        assert runs[name]["split_hash"] == runs["retrain"]["split_hash"]  # one split for every method
    report = (experiment / "out" / "report.md").read_text()
    assert "| contrastive |" in report and "± 0.00 (" in report  # one seed: std 0, then the gap
    assert {"accuracy.png", "mia.png"} <= {p.name for p in (experiment / "out").iterdir()}

    # The record beside the results: every run's resolved configuration and the split, as the runs hold them.
    record = experiment / "out" / "runs" / "seed0"
    assert sorted(p.name for p in record.glob("*.json")) == sorted(f"{name}.json" for name in runs)
    contrastive = json.loads((record / "contrastive.json").read_text())
    assert contrastive["hparams"]["temperature"] > 0 and contrastive["split_hash"] == runs["retrain"]["split_hash"]
    assert contrastive["source"] == "digits_smoke/seed0/original"
    (split,) = record.glob("*.npz")
    original_splits = experiment / "runs" / "digits_smoke" / "seed0" / "original" / "splits"
    assert split.read_bytes() == (original_splits / split.name).read_bytes()


@pytest.mark.slow
def test_a_rerun_resumes_and_runs_only_what_is_missing(experiment):
    out, runs = experiment / "out", experiment / "runs" / "digits_smoke" / "seed0"
    results = json.loads((out / "results.json").read_text())
    del results["runs"]["0"]["gradient_ascent"]
    (out / "results.json").write_text(json.dumps(results))
    shutil.rmtree(runs / "gradient_ascent")
    contrastive_checkpoints = sorted(p.name for p in (runs / "contrastive" / "checkpoints").iterdir())
    assert main(["experiment", str(SMOKE), "--runs-dir", str(experiment / "runs"), "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())["runs"]["0"]
    assert again["contrastive"] == results["runs"]["0"]["contrastive"]  # not re-run
    assert "gradient_ascent" in again and (runs / "gradient_ascent" / "metrics.json").exists()
    assert sorted(p.name for p in (runs / "contrastive" / "checkpoints").iterdir()) == contrastive_checkpoints


@pytest.mark.slow
def test_results_outlive_the_runs_directory(experiment, tmp_path, capsys):
    """OUT is the record: with the runs gone, the original and the reference are trained again, found equal
    to what results.json measured, and nothing else runs; a reference that measures otherwise is refused."""
    out = tmp_path / "out"
    shutil.copytree(experiment / "out", out)
    results = json.loads((out / "results.json").read_text())
    assert main(["experiment", str(SMOKE), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results  # every result kept, none measured again
    runs = tmp_path / "runs" / "digits_smoke" / "seed0"
    assert sorted(p.name for p in runs.iterdir()) == ["original", "retrain"]
    assert "original (its run directory is gone: trained again)" in capsys.readouterr().err

    shutil.rmtree(runs / "retrain")
    results["runs"]["0"]["retrain"]["retain_train_acc"] -= 0.01
    (out / "results.json").write_text(json.dumps(results))
    assert main(["experiment", str(SMOKE), "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 2
    assert "retrain was trained again but differs from the run the results were measured on (retain_train_acc" \
        in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(SMOKE.parent.glob("*.py")), ids=lambda p: p.stem)
def test_every_committed_protocol_loads(path):
    protocol = load_protocol(path)
    assert protocol.name == path.stem
    assert len(protocol.seeds) >= 3 or protocol.name == "digits_smoke"


def test_bad_protocols_are_refused(tmp_path, capsys):
    protocol = load_protocol(SMOKE)
    with pytest.raises(UserError, match="retrain always runs as the reference"):
        ExperimentProtocol(**{**protocol.__dict__, "methods": ("retrain",)}).check()
    with pytest.raises(UserError, match="unsir supports only class forgetting"):
        ExperimentProtocol(**{**protocol.__dict__, "forget": "random:10", "methods": ("unsir",),
                              "hparams": {}}).check()
    (tmp_path / "empty.py").write_text("X = 1\n")
    assert main(["experiment", str(tmp_path / "empty.py"), "--out", str(tmp_path / "o")]) == 2
    assert "defines no PROTOCOL" in capsys.readouterr().err
    assert main(["experiment", str(SMOKE), "--seeds", "7", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def load_cu_sensitivity():
    script = Path(__file__).parents[1] / "experiments" / "cu_sensitivity.py"
    spec = importlib.util.spec_from_file_location("cu_sensitivity", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cu_sensitivity_variants_cover_the_grid_one_setting_at_a_time():
    variants = load_cu_sensitivity().VARIANTS
    assert next(iter(variants.values())) == {}  # the reference defaults come first
    assert all(len(overrides) == 1 for overrides in list(variants.values())[1:])
    values: dict[str, set[str]] = {}
    for overrides in variants.values():
        for key, value in overrides.items():
            values.setdefault(key, set()).add(value)
    # With each default (λ_UL 3, τ 0.7, ω 4, lr 1e-3): λ_UL ∈ {0.5, 1, 3}, τ ∈ {0.3, 0.7, 1.0}, ω ∈ {1, 4},
    # lr ∈ {1e-4, 1e-3}.
    assert values == {"lambda_ul": {"0.5", "1"}, "temperature": {"0.3", "1.0"}, "retain_per_forget": {"1"},
                      "learning_rate": {"0.0001"}}


@pytest.mark.slow
def test_the_cu_sensitivity_script_varies_one_setting_at_a_time(experiment, monkeypatch):
    module = load_cu_sensitivity()
    # Three of the variants keep the test short; the grid itself is checked above.
    monkeypatch.setattr(module, "VARIANTS", {name: module.VARIANTS[name] for name in (
        "defaults (λ_UL 3, τ 0.7, ω 4, lr 1e-3)", "λ_UL 0.5", "ω 1")})
    out = experiment / "sensitivity"
    assert module.main(["--protocol", str(SMOKE), "--runs-dir", str(experiment / "runs"), "--out", str(out)]) == 0
    variants = json.loads((out / "results.json").read_text())["variants"]
    assert list(variants) == list(module.VARIANTS)
    assert all(len(row["hparams"]) <= 1 for row in variants.values())
    defaults = json.loads((experiment / "out" / "results.json").read_text())["runs"]["0"]["contrastive"]
    first = variants["defaults (λ_UL 3, τ 0.7, ω 4, lr 1e-3)"]
    assert first["steps"] == defaults["steps"] and first["test_acc"] == defaults["test_acc"]  # the experiment's run
    assert len({row["steps"] for row in variants.values()}) > 1  # the settings change the run
    config = json.loads((experiment / "runs" / "digits_smoke" / "seed0" / "cu-sensitivity" / "lambda_ul=0.5"
                         / "config.json").read_text())
    assert config["hparams"]["lambda_ul"] == 0.5 and config["hparams"]["epochs"] == 3  # over the protocol's overrides
    report = (out / "report.md").read_text()
    assert report.count("\n| ") == 2 + len(variants)  # header, retrain, one row per variant
