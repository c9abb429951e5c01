"""The reporting layer: exact table cells, the avg gap, and the files write_report produces."""

import math
import os
import re

import numpy as np
import pytest
from matplotlib.image import imread

from jaxunlearn.report import (AVERAGE_GAP_METRICS, TABLE_METRICS, FIGURES, RunSummary, gap_table,
                               write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _embeddings(rng, forget_centre, n=60, m=3000, d=16):
    return {"forget": rng.normal(forget_centre, 1.0, (n, d)).astype(np.float32),
            "retain": rng.normal(0.0, 1.0, (m, d)).astype(np.float32)}


def _runs(with_embeddings=True):
    rng = np.random.default_rng(0)
    original = RunSummary(
        "original",
        {"forget_train_acc": 1.0, "forget_test_acc": 0.95, "retain_train_acc": 1.0, "test_acc": 0.931,
         "mia_efficacy": 0.02, "mia_loss_auc": 0.51, "mia_loss_auc_low": 0.48, "mia_loss_auc_high": 0.54},
        [], [], _embeddings(rng, 0.0) if with_embeddings else None)
    retrain = RunSummary(
        "retrain",
        {"forget_train_acc": 0.0, "forget_test_acc": 0.0, "retain_train_acc": 1.0, "test_acc": 0.925,
         "mia_efficacy": 1.0, "mia_loss_auc": 0.97, "seconds": 1234.5, "steps": 700},
        [{"step": s, "loss": 2.3 * math.exp(-s / 100)} for s in range(700)],
        [{"epoch": e, "step": 70 * e, "forget_train_acc": 0.0, "forget_test_acc": 0.0, "test_acc": 0.9}
         for e in range(1, 11)],
        _embeddings(rng, 3.0) if with_embeddings else None)
    contrastive = RunSummary(
        "contrastive",
        {"forget_train_acc": 0.021, "forget_test_acc": float("nan"), "retain_train_acc": 0.99, "test_acc": 0.90,
         "mia_efficacy": 0.97, "seconds": 45.23, "steps": 120, "js_forget": 0.0123},
        [{"step": s, "loss": 3.0 - s / 100} for s in range(120)],
        [{"epoch": e, "step": 30 * e, "forget_train_acc": 1.0 - 0.245 * e, "test_acc": 0.9} for e in range(1, 5)],
        _embeddings(rng, 2.0) if with_embeddings else None)
    return [original, retrain, contrastive]


def _rows(table):
    """The markdown table as {run label: {column header: cell}}."""
    lines = [line for line in table.strip().splitlines()]
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    header = split(lines[0])
    assert set(lines[1]) <= set("|:- ")
    return {cells[0]: dict(zip(header, cells)) for cells in map(split, lines[2:])}


def test_gap_table_cells():
    rows = _rows(gap_table(_runs()))
    assert list(rows) == ["original", "retrain (reference)", "contrastive"]
    header = list(rows["contrastive"])
    # Columns: the TABLE_METRICS some run has, in order (mia_confidence_auc and friends: none has them).
    assert header == ["run", "forget_train_acc (%)", "forget_test_acc (%)", "retain_train_acc (%)", "test_acc (%)",
                      "mia_efficacy (%)", "mia_loss_auc (%)", "js_forget", "seconds (s)", "steps", "avg gap (%)"]

    c = rows["contrastive"]
    assert c["forget_train_acc (%)"] == "2.10 (2.10)"
    assert c["forget_test_acc (%)"] == "–"  # NaN
    assert c["retain_train_acc (%)"] == "99.00 (1.00)"
    assert c["test_acc (%)"] == "90.00 (2.50)"
    assert c["mia_efficacy (%)"] == "97.00 (3.00)"
    assert c["mia_loss_auc (%)"] == "–"  # missing
    assert c["js_forget"] == "0.0123 (–)"  # the reference lacks it: no gap
    assert c["seconds (s)"] == "45.2 (1189.3)"
    assert c["steps"] == "120 (580)"
    # SalUn's avg gap by hand: (2.10 + 1.00 + 2.50 + 3.00) / 4 = 2.15
    assert c["avg gap (%)"] == "2.15"

    r = rows["retrain (reference)"]
    assert r["forget_train_acc (%)"] == "0.00"
    assert r["test_acc (%)"] == "92.50"
    assert r["mia_loss_auc (%)"] == "97.00"
    assert r["js_forget"] == "–"
    assert r["seconds (s)"] == "1234.5"
    assert r["avg gap (%)"] == "0.00"

    o = rows["original"]
    assert o["forget_train_acc (%)"] == "100.00 (100.00)"
    assert o["mia_loss_auc (%)"] == "51.00 (46.00)"
    assert o["seconds (s)"] == "–"
    assert o["test_acc (%)"] == "93.10 (0.60)"
    assert o["avg gap (%)"] == "49.65"  # (100 + 0 + 0.6 + 98) / 4


def test_gap_table_avg_gap_uses_only_shared_metrics_and_custom_columns():
    runs = [RunSummary("retrain", {"forget_train_acc": 0.10, "test_acc": 0.80}, [], [], None),
            RunSummary("a", {"forget_train_acc": 0.13, "test_acc": 0.75, "mia_efficacy": 0.5}, [], [], None),
            RunSummary("b", {"seconds": 3.0}, [], [], None)]
    rows = _rows(gap_table(runs, metrics=("test_acc", "forget_train_acc")))
    assert list(rows["a"]) == ["run", "test_acc (%)", "forget_train_acc (%)", "avg gap (%)"]
    assert rows["a"]["avg gap (%)"] == "4.00"  # (|13 − 10| + |75 − 80|) / 2; mia_efficacy has no reference
    assert rows["b"]["test_acc (%)"] == "–"
    assert rows["b"]["avg gap (%)"] == "–"
    assert set(AVERAGE_GAP_METRICS) <= set(TABLE_METRICS)


def test_gap_table_other_reference_and_unknown_names():
    runs = _runs(with_embeddings=False)
    rows = _rows(gap_table(runs, reference="original"))
    assert rows["retrain"]["forget_train_acc (%)"] == "0.00 (100.00)"
    assert "original (reference)" in rows
    with pytest.raises(ValueError, match="unknown reference run 'nope'"):
        gap_table(runs, reference="nope")
    with pytest.raises(ValueError, match="unique"):
        gap_table([*runs, runs[0]])


def _png_size(path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = imread(path)
    height, width = image.shape[:2]
    return width, height


def _links(report_md):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_md)


def test_write_report_all_figures(tmp_path):
    out = tmp_path / "report"
    written = write_report(_runs(), out, title="Digits, class 5")
    assert [p.name for p in written] == [*FIGURES, "report.md"]
    assert all(p.parent == out and p.is_file() for p in written)
    for name in FIGURES:
        width, height = _png_size(out / name)
        assert 800 <= width <= 2000 and 300 <= height <= 1600, (name, width, height)
    text = (out / "report.md").read_text()
    assert text.startswith("# Digits, class 5\n")
    assert gap_table(_runs()) in text
    assert "match retrain" in text
    assert _links(text) == list(FIGURES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "report.md"])  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in written)  # like any file, not mkstemp's 0600


def test_write_report_skips_figures_without_data(tmp_path):
    out = tmp_path / "report"
    write_report(_runs(), out)  # an earlier report with every figure
    runs = [RunSummary(r.name, {k: v for k, v in r.metrics.items() if not k.startswith("mia_")}, [], [], None)
            for r in _runs(with_embeddings=False)]
    written = write_report(runs, out)
    assert [p.name for p in written] == ["accuracy.png", "report.md"]
    text = (out / "report.md").read_text()
    assert _links(text) == ["accuracy.png"]
    # report.md links exactly the PNGs in the folder: stale figures of the earlier report are gone.
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy.png"]


def test_write_report_only_embeddings_and_curves(tmp_path):
    runs = [RunSummary(r.name, {}, r.step_log, r.epoch_log, r.embeddings) for r in _runs()]
    written = write_report(runs, tmp_path)
    assert [p.name for p in written] == ["embeddings.png", "curves.png", "report.md"]
    assert _links((tmp_path / "report.md").read_text()) == ["embeddings.png", "curves.png"]


def test_write_report_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown reference run 'scratch'.*'original', 'retrain', 'contrastive'"):
        write_report(_runs(with_embeddings=False), tmp_path / "a", reference="scratch")
    with pytest.raises(ValueError, match="unknown original run 'before'"):
        write_report(_runs(with_embeddings=False), tmp_path / "b", original="before")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_write_report_rejects_mismatched_embedding_widths(tmp_path):
    runs = _runs()
    bad = RunSummary("bad", {}, [], [], {"forget": np.zeros((3, 5)), "retain": np.zeros((4, 5))})
    with pytest.raises(ValueError, match="5-dimensional"):
        write_report([*runs, bad], tmp_path)
    assert list(tmp_path.iterdir()) == []  # validated before anything is written


def test_every_metric_names_the_function_that_computes_it():
    # Metric.computed_by is the docs' pointer from a metrics.json key to its code: a renamed or moved function
    # must fail here rather than leave the registry pointing nowhere.
    import importlib

    from jaxunlearn.evaluation.metrics import REGISTRY

    for entry in REGISTRY:
        module, _, function = entry.computed_by.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function, None)), (entry.name, entry.computed_by)
