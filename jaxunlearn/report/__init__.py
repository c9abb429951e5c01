"""The reporting layer: a gap-to-retrain table and figures from in-memory run summaries.

Pure: it gets `RunSummary` objects and writes markdown and PNG files; it knows nothing about models or JAX.
Researchers judge an unlearning method by how close it lands to the model retrained without the forget set,
so every number is shown with its absolute gap to the reference run ("match retrain"). The tables are in
`tables.py`, the figures in `figures.py`, what both read (values, units, formatting) in `values.py`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxunlearn.files import atomic_write
from jaxunlearn.report.figures import (
    _accuracy_figure, _curves_figure, _embedding_figure, _mia_figure, new_figure, save_figure,
)
from jaxunlearn.report.tables import gap_table, mean_std_summaries, seed_table
from jaxunlearn.evaluation.metrics import AVERAGE_GAP_METRICS, TABLE_METRICS
from jaxunlearn.report.values import (
    METRIC_DESCRIPTIONS, RunSummary, _by_name, _md_escape, _require,
    _value, registered,
)

__all__ = [
    "AVERAGE_GAP_METRICS",
    "TABLE_METRICS",
    "FIGURES",
    "METRIC_DESCRIPTIONS",
    "RunSummary",
    "gap_table",
    "mean_std_summaries",
    "new_figure",
    "save_figure",
    "seed_table",
    "write_report",
    "write_seed_report",
]

FIGURES: tuple[str, ...] = ("accuracy.png", "mia.png", "embeddings.png", "curves.png")
"""The figure files `write_report` may write, in the order report.md shows them."""


def write_report(summaries: list[RunSummary], out_dir: str | Path, *, reference: str = "retrain",
                 original: str = "original", title: str = "Unlearning report") -> list[Path]:
    """Write out_dir/report.md and the figures that some run has data for; return the written paths.

    Figures (each skipped, with its link, when no run has its data; a stale copy of a skipped figure left by an
    earlier report in out_dir is removed so that report.md links exactly the figures there):
      accuracy.png    grouped bars per run of forget_train_acc, forget_test_acc, retain_train_acc, test_acc
      mia.png         bars per run of mia_efficacy and the MIA AUCs, error bars from *_low/*_high, dashed lines at
                      the reference's values
      embeddings.png  PCA (fitted on the original run's forget+retain embeddings) of forget and retain embeddings,
                      one panel per run with embeddings; arrows from the forget centroid of the original to the
                      run's own show how far the forget embeddings moved
      curves.png      loss over steps (step_log) and the epoch_log accuracies over step, one line per run
    Every file is written to a temporary name in out_dir and renamed; report.md is written last, so it never
    links a figure that is not there. Raises ValueError when `reference` or `original` names no run.
    """
    runs = _by_name(summaries)
    ref = _require(runs, reference, "reference")
    orig = _require(runs, original, "original")
    out = Path(out_dir)

    makers: dict[str, Callable[[], Any]] = {
        "accuracy.png": lambda: _accuracy_figure(summaries, ref),
        "mia.png": lambda: _mia_figure(summaries, ref),
        "embeddings.png": lambda: _embedding_figure(summaries, orig),
        "curves.png": lambda: _curves_figure(summaries),
    }
    figures = {name: makers[name]() for name in FIGURES}  # all drawn (and validated) before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, fig in figures.items():
        path = out / name
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        save_figure(fig, path)
        written.append(path)

    text = _markdown(summaries, ref, orig, title, [p.name for p in written])
    report = out / "report.md"
    atomic_write(report, lambda f: f.write(text), "w")
    return [*written, report]


_CAPTIONS = {
    "accuracy.png": "Accuracy on the forget, retain and test sets; a good method's bars match the reference's.",
    "mia.png": "Membership-inference attack: MIA-efficacy and AUCs (bars; whiskers: confidence interval where "
               "available); dashed lines: the reference's values.",
    "embeddings.png": "Embeddings projected on the first two principal components of the forget+retain "
                      "embeddings of `{original}` (the model before unlearning). Grey: retain; red: forget; faint "
                      "red circles: where the forget embeddings were before; the arrow runs from the forget "
                      "centroid before (×) to this model's (★).",
    "curves.png": "Training curves: loss per optimizer step, and accuracies at the end of each epoch.",
}


def _markdown(summaries: list[RunSummary], ref: RunSummary, orig: RunSummary, title: str,
              figures: list[str]) -> str:
    present = [m for m in TABLE_METRICS if any(_value(s, m) is not None for s in summaries)]
    lines = [f"# {title}", "",
             f"Runs: {', '.join(f'`{s.name}`' for s in summaries)}. Reference: `{ref.name}`; "
             f"before unlearning: `{orig.name}`.", "",
             "## Gap to the reference", "",
             f"Each cell is *value (|value − {ref.name}'s value|)*; accuracies and MIA in percent. "
             f"*avg gap* is the mean gap in percentage points over "
             f"{', '.join(AVERAGE_GAP_METRICS)} (SalUn's Avg. Gap); lower is better. – = not available.", "",
             gap_table(summaries, ref.name)]
    if present:
        lines += ["### Metrics", "", "| metric | meaning | direction |", "|:---|:---|:---|"]
        lines += [f"| {m} | {METRIC_DESCRIPTIONS[m]} | "
                  f"{'lower is better' if registered(m).direction == 'lower_better' else 'match ' + _md_escape(ref.name)} |"
                  for m in present]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for name in figures:
            lines += [f"![{name[:-4]}]({name})", "", _CAPTIONS[name].format(original=orig.name), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


_SEED_CAPTIONS = {
    "accuracy.png": "Accuracy on the forget, retain and test sets: mean over seeds (bars), ± one standard "
                    "deviation (whiskers); dashed lines: the reference's mean. A good method matches the reference.",
    "mia.png": "Membership-inference attack, MIA-efficacy and AUCs: mean over seeds (bars), ± one standard "
               "deviation (whiskers); dashed lines: the reference's mean.",
}


def write_seed_report(per_seed: dict[str, list[dict[str, float]]], out_dir: str | Path, *, title: str,
                      notes: str = "", reference: str = "retrain", appendix: str = "") -> list[Path]:
    """Write out_dir/report.md (`notes`, the `seed_table`, the figures, then `appendix`) and accuracy.png /
    mia.png of the means with ±std whiskers over seeds; return the written paths (figures first, report.md
    last)."""
    summaries = mean_std_summaries(per_seed)
    ref = _require(_by_name(summaries), reference, "reference")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (("accuracy.png", _accuracy_figure(summaries, ref)), ("mia.png", _mia_figure(summaries, ref))):
        if fig is not None:
            save_figure(fig, out / name)
            written.append(out / name)
    seeds = len(next(iter(per_seed.values())))
    lines = [f"# {title}", "", notes.strip(), "",
             f"## Mean ± std over {seeds} seed{'s' if seeds > 1 else ''}, gap to `{reference}`", "",
             f"Each cell is *mean ± std (mean over seeds of |value − {reference}'s value of the same seed|)*; "
             f"accuracies and MIA in percent. *avg gap*: the mean of the gaps of {', '.join(AVERAGE_GAP_METRICS)} "
             "(SalUn's Avg. Gap); lower is better. – = not available.", "",
             seed_table(per_seed, reference), "## Figures", ""]
    for path in written:
        lines += [f"![{path.stem}]({path.name})", "", _SEED_CAPTIONS[path.name], ""]
    if appendix:
        lines += [appendix.strip(), ""]
    report = out / "report.md"
    text = "\n".join(lines).rstrip("\n") + "\n"
    atomic_write(report, lambda f: f.write(text), "w")
    return [*written, report]
