"""The report's markdown tables: one run per row, every metric with its gap to the reference."""

from collections.abc import Sequence

import numpy as np

from jaxunlearn.evaluation.metrics import AVERAGE_GAP_METRICS, TABLE_METRICS
from jaxunlearn.report.values import (
    _DASH, RunSummary, _avg_gap, _by_name, _display, _format,
    _format_shown, _gap, _md_escape, _require, _unit, _value,
)


def _markdown_table(columns: Sequence[str], rows: list[tuple[str, list[str], str]]) -> str:
    """A markdown table with a "run" column, one column per metric (its unit in the header) and "avg gap";
    rows: (run label, one cell per metric, avg gap cell)."""
    header = ["run", *(f"{m}{_unit(m)}" for m in columns), "avg gap (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    lines += ["| " + " | ".join([label, *cells, avg]) + " |" for label, cells, avg in rows]
    return "\n".join(lines) + "\n"


def _label(name: str, reference: str) -> str:
    return _md_escape(name) + (" (reference)" if name == reference else "")


def gap_table(summaries: list[RunSummary], reference: str = "retrain",
              metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A markdown table of every run's metrics with their absolute gap to the reference run.

    One row per run (in the given order), one column per metric of `metrics` that some run has. A cell is
    "value (gap)" with gap = |value − reference's value|; the reference's own row shows the value alone; a value
    whose gap cannot be computed (the reference lacks the metric) shows "value (–)"; a missing or NaN value is "–".
    Accuracies and MIA values (fractions) are shown in percent with 2 decimals, seconds with 1 decimal, counts
    (steps) as integers, anything else with 4 decimals. The last column, "avg gap", is the mean gap in percentage
    points over the AVERAGE_GAP_METRICS that both the run and the reference have ("–" when none; 0.00 for the
    reference itself). Raises ValueError when `reference` names no run (or two runs share a name).
    """
    runs = _by_name(summaries)
    ref = _require(runs, reference, "reference")
    columns = [m for m in dict.fromkeys(metrics) if any(_value(s, m) is not None for s in summaries)]

    rows = []
    for summary in summaries:
        is_ref = summary.name == ref.name
        cells = []
        for metric in columns:
            value = _value(summary, metric)
            if value is None:
                cells.append(_DASH)
            elif is_ref:
                cells.append(_format(metric, value))
            else:
                gap = _gap(metric, value, _value(ref, metric))
                cells.append(f"{_format(metric, value)} ({_DASH if gap is None else _format_shown(metric, gap)})")
        avg = _avg_gap(summary, ref)
        rows.append((_label(summary.name, ref.name), cells, _DASH if avg is None else f"{avg:.2f}"))
    return _markdown_table(columns, rows)


def seed_table(per_seed: dict[str, list[dict[str, float]]], reference: str = "retrain",
               metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A markdown table of mean ± std over seeds, with the mean per-seed gap to the reference.

    per_seed: run name → one metrics dict per seed, the i-th of every run from the same seed (same original
    model and split). A cell is "mean ± std (gap)" with gap = mean over seeds of |value − reference's value
    of that seed| in display units; the reference's row shows "mean ± std". std is the sample standard
    deviation (ddof 1; 0 for one seed). "avg gap" averages the gaps of AVERAGE_GAP_METRICS. Raises ValueError
    when `reference` names no run or runs have different numbers of seeds.
    """
    ref_runs = _require(per_seed, reference, "reference")
    if any(len(runs) != len(ref_runs) for runs in per_seed.values()):
        raise ValueError("every run needs one metrics dict per seed, in the same seed order")
    summaries = {name: [RunSummary(name, m, [], []) for m in runs] for name, runs in per_seed.items()}
    references = summaries[reference]
    columns = [m for m in dict.fromkeys(metrics)
               if any(_value(s, m) is not None for runs in summaries.values() for s in runs)]
    rows = []
    for name, runs in summaries.items():
        cells, gaps_by_metric = [], {}
        for metric in columns:
            values = [_value(s, metric) for s in runs]
            if any(v is None for v in values):
                cells.append(_DASH)
                continue
            shown = np.array([_display(metric, v) for v in values])
            std = float(shown.std(ddof=1)) if len(shown) > 1 else 0.0
            cell = f"{_format_shown(metric, float(shown.mean()))} ± {_format_shown(metric, std)}"
            gaps = [_gap(metric, v, _value(r, metric)) for v, r in zip(values, references)]
            if name != reference:
                gap = None if any(g is None for g in gaps) else float(np.mean(gaps))
                gaps_by_metric[metric] = gap
                cell += f" ({_DASH if gap is None else _format_shown(metric, gap)})"
            cells.append(cell)
        avg = [g for m in AVERAGE_GAP_METRICS if (g := gaps_by_metric.get(m)) is not None]
        rows.append((_label(name, reference), cells,
                     "0.00" if name == reference else (f"{np.mean(avg):.2f}" if avg else _DASH)))
    return _markdown_table(columns, rows)


def mean_std_summaries(per_seed: dict[str, list[dict[str, float]]]) -> list[RunSummary]:
    """One RunSummary per run holding the mean over seeds of every metric, with `<metric>_low`/`_high` at
    mean ∓ std so the bar figures draw the spread over seeds as whiskers."""
    summaries = []
    for name, runs in per_seed.items():
        metrics: dict[str, float] = {}
        for metric in {m for run in runs for m in run if not m.endswith(("_low", "_high"))}:
            values = [v for run in runs if (v := _value(RunSummary(name, run, [], []), metric)) is not None]
            if len(values) == len(runs):
                mean = float(np.mean(values))
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                metrics.update({metric: mean, f"{metric}_low": mean - std, f"{metric}_high": mean + std})
        summaries.append(RunSummary(name, metrics, [], []))
    return summaries
