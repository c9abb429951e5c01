"""The report's figures, through matplotlib's object-oriented API (`matplotlib.figure.Figure`, never
pyplot): the caller's backend is not changed and no figure is kept alive. Matplotlib is imported only when
a figure is drawn."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxunlearn.files import atomic_write
from jaxunlearn.evaluation.metrics import figure_metrics
from jaxunlearn.report.values import RunSummary, _value

_ACCURACY_METRICS = figure_metrics("accuracy")
_MIA_METRICS = figure_metrics("mia")
_CURVE_METRICS = figure_metrics("curves")
_MAX_RETAIN_POINTS = 2000
_MAX_FORGET_POINTS = 2000
_DPI = 120


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_DPI), "wb")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (object-oriented API, constrained layout) of `width` × `height` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _bar_figure(summaries: list[RunSummary], ref: RunSummary, metrics: Sequence[str], title: str,
                ylabel: str, errors: bool) -> Any:
    """Grouped bars: one group per run, one bar per metric some run has; dashed lines at the reference's values."""
    present = [m for m in metrics if any(_value(s, m) is not None for s in summaries)]
    if not present:
        return None
    n_runs, n_bars = len(summaries), len(present)
    fig = new_figure(max(8.0, min(22.0, 1.2 + 1.1 * n_runs * (0.6 + 0.25 * n_bars))), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / n_bars
    x = np.arange(n_runs)
    colours = _palette(n_bars)
    for j, metric in enumerate(present):
        offsets = x - 0.4 + width * (j + 0.5)
        xs, heights, tops = [], [], []
        ci_x, ci_y, ci_lo, ci_hi = [], [], [], []
        for i, summary in enumerate(summaries):
            value = _value(summary, metric)
            if value is None:
                ax.text(offsets[i], 1.0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
                continue
            xs.append(offsets[i])
            heights.append(100.0 * value)
            lo, hi = _value(summary, f"{metric}_low"), _value(summary, f"{metric}_high")
            top = 100.0 * value
            if errors and (lo is not None or hi is not None):
                ci_x.append(offsets[i])
                ci_y.append(100.0 * value)
                ci_lo.append(max(0.0, 100.0 * (value - lo)) if lo is not None else 0.0)
                ci_hi.append(max(0.0, 100.0 * (hi - value)) if hi is not None else 0.0)
                top += ci_hi[-1]
            tops.append(top)
        ax.bar(xs, heights, width * 0.92, color=colours[j], label=metric)
        if ci_x:
            ax.errorbar(ci_x, ci_y, yerr=[ci_lo, ci_hi], fmt="none", elinewidth=1.0, capsize=3, ecolor="0.15")
        for xi, height, top in zip(xs, heights, tops):
            ax.annotate(f"{height:.1f}", (xi, top), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7,
                        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.6})
        ref_value = _value(ref, metric)
        if ref_value is not None:
            ax.axhline(100.0 * ref_value, color=colours[j], linestyle="--", linewidth=1.0, alpha=0.8, zorder=0)
    ax.set_xticks(x, [s.name + (" (ref)" if s.name == ref.name else "") for s in summaries],
                  **({"rotation": 25, "ha": "right", "rotation_mode": "anchor"} if n_runs > 6 else {}))
    ax.set_xlim(-0.6, n_runs - 0.4)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if any(_value(ref, m) is not None for m in present):
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.0))
        labels.append(f"{ref.name} (reference) value")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def _accuracy_figure(summaries: list[RunSummary], ref: RunSummary) -> Any:
    return _bar_figure(summaries, ref, _ACCURACY_METRICS, "Accuracy per run (dashed: reference)",
                       "accuracy (%)", errors=True)


def _mia_figure(summaries: list[RunSummary], ref: RunSummary) -> Any:
    return _bar_figure(summaries, ref, _MIA_METRICS, "Membership inference per run (dashed: reference)",
                       "MIA-efficacy / AUC (%)", errors=True)


def _embedding_parts(summary: RunSummary) -> tuple[np.ndarray, np.ndarray] | None:
    """(forget [n, D], retain [m, D]) as float64, or None when the run has no usable embeddings."""
    if not summary.embeddings:
        return None
    parts = []
    for key in ("forget", "retain"):
        array = summary.embeddings.get(key)
        if array is None:
            array = np.zeros((0, 0))
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2:
            array = array.reshape(len(array), -1) if array.size else np.zeros((0, 0))
        parts.append(array)
    forget, retain = parts
    if len(forget) == 0 and len(retain) == 0:
        return None
    dims = {a.shape[1] for a in (forget, retain) if len(a)}
    if len(dims) != 1:
        raise ValueError(f"run {summary.name!r}: forget and retain embeddings have different widths {sorted(dims)}")
    return forget, retain


def _subsample(array: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(array) <= limit:
        return array
    index = np.sort(np.random.default_rng(seed).choice(len(array), limit, replace=False))
    return array[index]


def _embedding_figure(summaries: list[RunSummary], orig: RunSummary) -> Any:
    panels = [(s, parts) for s in summaries if (parts := _embedding_parts(s)) is not None]
    if not panels:
        return None
    # The original ("before") first, then the others in the given order.
    panels.sort(key=lambda p: p[0].name != orig.name)
    basis_run, (basis_forget, basis_retain) = panels[0]
    fitted_on_original = basis_run.name == orig.name
    data = np.concatenate([a for a in (basis_forget, basis_retain) if len(a)])
    width = data.shape[1]
    for summary, (forget, retain) in panels:
        got = (forget if len(forget) else retain).shape[1]
        if got != width:
            raise ValueError(f"run {summary.name!r} has {got}-dimensional embeddings, "
                             f"but {basis_run.name!r} has {width}-dimensional ones; they cannot share a projection")
    mean = data.mean(axis=0)
    centred = data - mean
    # PCA through the D×D covariance: cheap for tens of thousands of points of a few hundred dimensions.
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    components = eigenvectors[:, order[:2]].T
    if len(components) < 2:  # one-dimensional embeddings: pad the projection with a zero axis
        components = np.vstack([components, np.zeros((2 - len(components), width))])
    # Sign convention (largest loading positive) so the picture does not flip between library versions.
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    variance = eigenvalues / max(float(eigenvalues.sum()), 1e-30)
    explained = [float(variance[i]) if i < len(variance) else 0.0 for i in range(2)]

    def project(a: np.ndarray) -> np.ndarray:
        return (a - mean) @ components.T if len(a) else np.zeros((0, 2))

    projected = [(s, project(f), project(r)) for s, (f, r) in panels]
    orig_centroid = projected[0][1].mean(axis=0) if len(projected[0][1]) else None

    n = len(projected)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = new_figure(max(8.0, 3.6 * cols), 3.4 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    everything = np.concatenate([np.concatenate([f, r]) for _, f, r in projected])
    lo, hi = np.percentile(everything, 0.5, axis=0), np.percentile(everything, 99.5, axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-9)
    basis_name = basis_run.name
    before_forget = _subsample(projected[0][1], _MAX_FORGET_POINTS, seed=1)
    handles: dict[str, Any] = {}
    for k, (summary, forget, retain) in enumerate(projected):
        ax = axes[k // cols][k % cols]
        is_basis = summary is basis_run
        shown_retain = _subsample(retain, _MAX_RETAIN_POINTS, seed=0)
        shown_forget = _subsample(forget, _MAX_FORGET_POINTS, seed=1)
        handles["retain"] = ax.scatter(shown_retain[:, 0], shown_retain[:, 1], s=4, color="0.72", alpha=0.35,
                                       linewidths=0, rasterized=True)
        if not is_basis and len(before_forget):
            handles[f"forget, {basis_name} (where they were)"] = ax.scatter(
                before_forget[:, 0], before_forget[:, 1], s=9, facecolors="none", edgecolors="lightcoral",
                linewidths=0.5, alpha=0.35, rasterized=True)
        handles["forget"] = ax.scatter(shown_forget[:, 0], shown_forget[:, 1], s=9, color="crimson", alpha=0.75,
                                       linewidths=0, rasterized=True)
        if orig_centroid is not None:
            handles[f"forget centroid, {basis_name}"] = ax.scatter(
                *orig_centroid, marker="X", s=90, color="black", edgecolors="white", linewidths=0.8, zorder=5)
            if len(forget) and not is_basis:
                centroid = forget.mean(axis=0)
                ax.annotate("", xy=centroid, xytext=orig_centroid, zorder=6,
                            arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.6})
                handles["forget centroid, this run"] = ax.scatter(
                    *centroid, marker="*", s=160, color="gold", edgecolors="black", linewidths=0.8, zorder=7)
        role = "before" if summary.name == orig.name else "after"
        ax.set_title(f"{summary.name} ({role}): {len(forget)} forget, {len(retain)} retain", fontsize=9)
        ax.grid(alpha=0.2)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    for r in range(rows):
        axes[r][0].set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% var.)")
    for c in range(cols):
        axes[rows - 1][c].set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% var.)")
        axes[rows - 1][c].xaxis.set_tick_params(labelbottom=True)
    order = ["retain", "forget", f"forget, {basis_name} (where they were)", f"forget centroid, {basis_name}",
             "forget centroid, this run"]
    labels = [label for label in order if label in handles]
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", ncols=len(labels),
               fontsize=8, markerscale=1.5, frameon=False)
    basis = f"the {orig.name} model" if fitted_on_original else f"{basis_name} (no {orig.name} embeddings)"
    fig.suptitle(f"Embeddings, PCA fitted on forget+retain of {basis}", fontsize=11)
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumulative[idx] - cumulative[start]) / (idx - start)


def _series(log: list[dict[str, float]], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in log:
        x, y = row.get(x_key), row.get(y_key)
        try:
            x, y = float(x), float(y)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    order = np.argsort(xs, kind="stable")
    return np.asarray(xs)[order], np.asarray(ys)[order]


def _curves_figure(summaries: list[RunSummary]) -> Any:
    from matplotlib.lines import Line2D

    losses = [(i, s, *_series(s.step_log, "step", "loss")) for i, s in enumerate(summaries)]
    losses = [item for item in losses if len(item[2])]
    accuracies = []
    for i, s in enumerate(summaries):
        for metric in _CURVE_METRICS:
            xs, ys = _series(s.epoch_log, "step", metric)
            if len(xs):
                accuracies.append((i, s, metric, xs, ys))
    if not losses and not accuracies:
        return None
    panels = int(bool(losses)) + int(bool(accuracies))
    fig = new_figure(9.0, 3.6 * panels + 0.4)
    axes = list(fig.subplots(panels, 1, squeeze=False, sharex=True)[:, 0])
    colours = _palette(len(summaries))
    # Runs of very different lengths (retraining vs. a few hundred unlearning steps) share a symlog step axis.
    spans = [float(xs.max()) for _, _, xs, _ in losses] + [float(xs.max()) for *_, xs, _ in accuracies]
    positive = [s for s in spans if s > 0]
    log_x = len(positive) > 1 and max(positive) / min(positive) > 20
    x_label = "optimizer step" + (" (symlog scale: runs differ in length)" if log_x else "")
    x_min = min([float(xs.min()) for _, _, xs, _ in losses] + [float(xs.min()) for *_, xs, _ in accuracies])
    x_max = max(spans)
    if losses:
        ax = axes[0]
        for i, s, xs, ys in losses:
            if len(xs) > 60:
                ax.plot(xs, ys, color=colours[i], alpha=0.25, linewidth=0.8)
                window = max(5, len(xs) // 50)
                ax.plot(xs, _smooth(ys, window), color=colours[i], linewidth=1.6,
                        label=f"{s.name} (moving avg. of {window})")
            else:
                ax.plot(xs, ys, color=colours[i], linewidth=1.6, marker="." if len(xs) < 20 else None,
                        label=s.name)
        ax.set_title("Training loss per optimizer step (faint: raw)")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if accuracies:
        ax = axes[-1]
        styles = {"forget_train_acc": "-", "forget_test_acc": ":", "test_acc": "--"}
        markers = {"forget_train_acc": "o", "forget_test_acc": "s", "test_acc": "^"}
        for i, s, metric, xs, ys in accuracies:
            ax.plot(xs, 100.0 * ys, color=colours[i], linestyle=styles[metric], marker=markers[metric],
                    markersize=3.5, linewidth=1.4)
        ax.set_title("Accuracy at the end of each epoch")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        runs = dict.fromkeys((i, s.name) for i, s, *_ in accuracies)
        run_handles = [Line2D([], [], color=colours[i], linewidth=2.0) for i, _ in runs]
        metrics = [m for m in _CURVE_METRICS if any(m == item[2] for item in accuracies)]
        metric_handles = [Line2D([], [], color="0.2", linestyle=styles[m], marker=markers[m], markersize=3.5)
                          for m in metrics]
        spacer = Line2D([], [], linestyle="none")
        ax.legend([*run_handles, spacer, *metric_handles], [*(name for _, name in runs), "", *metrics],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for ax in axes:
        if log_x:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel(x_label)
    axes[0].set_xlim(min(0.0, x_min), x_max * (1.15 if log_x else 1.02) if x_max > 0 else 1.0)
    return fig
