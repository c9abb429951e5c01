"""What the report tables and figures share: a run's summary, its metric values and their formatting.

Every number is shown with its absolute gap to the reference run ("match retrain"); units, descriptions and
SalUn's average gap come from the metric registry (`jaxunlearn.evaluation.metrics`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxunlearn.evaluation.metrics import AVERAGE_GAP_METRICS, REGISTRY, metric as registered


@dataclass(frozen=True)
class RunSummary:
    """What the report needs from one run."""

    name: str
    """Row label: "original", "retrain", "contrastive", ..."""
    metrics: dict[str, float]
    """Final metrics (any subset; NaN or missing = not available). Accuracies and MIA values are fractions in [0, 1]."""
    step_log: list[dict[str, float]]
    """One dict per optimizer step: {"step", "loss", ...}; may be empty."""
    epoch_log: list[dict[str, float]]
    """One dict per epoch: {"epoch", "step", "forget_train_acc", "test_acc", ...}; may be empty."""
    embeddings: dict[str, np.ndarray] | None = None
    """{"forget": [n, D], "retain": [m, D]} embeddings of this run's model, or None."""


METRIC_DESCRIPTIONS: dict[str, str] = {m.name: m.description for m in REGISTRY}
"""What each known metric means; the legend of report.md."""

_DASH = "–"


def _kind(name: str) -> str:
    """"percent" (fractions shown ×100), "seconds", "count" or "plain", from the metric registry."""
    entry = registered(name)
    unit = entry.unit if entry else None
    return {"fraction": "percent", "seconds": "seconds", "count": "count"}.get(unit, "plain")


def _unit(metric: str) -> str:
    return {"percent": " (%)", "seconds": " (s)"}.get(_kind(metric), "")


def _value(summary: "RunSummary", metric: str) -> float | None:
    """The metric as a finite float, or None when missing, NaN or not a number."""
    raw = summary.metrics.get(metric)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _display(metric: str, value: float) -> float:
    """The value in the unit the table shows (percent for accuracies and MIA)."""
    return value * 100.0 if _kind(metric) == "percent" else value


def _format(metric: str, value: float) -> str:
    """A metric value (fraction for accuracies and MIA) as the table shows it."""
    return _format_shown(metric, _display(metric, value))


def _format_shown(metric: str, shown: float) -> str:
    """A number already in display units (a value or a gap) with the metric's precision."""
    kind = _kind(metric)
    if kind == "percent":
        return f"{shown:.2f}"
    if kind == "seconds":
        return f"{shown:.1f}"
    if kind == "count":
        return f"{shown:.0f}"
    return f"{shown:.4f}"


def _by_name(summaries: Sequence["RunSummary"]) -> dict[str, "RunSummary"]:
    runs: dict[str, RunSummary] = {}
    for summary in summaries:
        if summary.name in runs:
            raise ValueError(f"two runs are named {summary.name!r}; run names must be unique in a report")
        runs[summary.name] = summary
    return runs


def _require(runs: dict[str, "RunSummary"], name: str, role: str) -> "RunSummary":
    if name not in runs:
        known = ", ".join(repr(n) for n in runs) or "none"
        raise ValueError(f"unknown {role} run {name!r}; the runs are: {known}")
    return runs[name]


def _gap(metric: str, value: float | None, reference: float | None) -> float | None:
    """|value − reference| in display units (percentage points for accuracies and MIA), or None."""
    if value is None or reference is None:
        return None
    return abs(_display(metric, value) - _display(metric, reference))


def _avg_gap(summary: "RunSummary", reference: "RunSummary") -> float | None:
    """Mean gap in percentage points over the AVERAGE_GAP_METRICS both runs have, or None when they share none."""
    gaps = [g for m in AVERAGE_GAP_METRICS if (g := _gap(m, _value(summary, m), _value(reference, m))) is not None]
    return sum(gaps) / len(gaps) if gaps else None


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
