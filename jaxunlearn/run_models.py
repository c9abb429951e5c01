"""A run of one model or of several (an ensemble, one per seed): checking the seeds and training subsets, the
layout, the entries config.json records of the models, their plans and stacked states, and metrics.json's
final metrics. One model is the case `seeds=None`."""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxunlearn.data.splits import Split, index_hash
from jaxunlearn.engine.ensemble import Ensemble, make_ensemble, stack, take
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.engine.state import TrainState
from jaxunlearn.errors import UserError


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise UserError("a run of several models needs at least one seed")
    if min(seeds) < 0:
        raise UserError(f"seeds must be >= 0, got {min(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise UserError("the models of one run need distinct seeds")
    return seeds


def check_subsets(subsets: np.ndarray, models: int, train_size: int) -> list[np.ndarray]:
    """The rows of an int [K, n] array of train indices, each of distinct indices in [0, train_size)."""
    subsets = np.asarray(subsets)
    if subsets.ndim != 2 or subsets.shape[0] != models or not np.issubdtype(subsets.dtype, np.integer):
        raise UserError(f"subsets must be an int array [{models} models, n], got shape {subsets.shape}")
    if subsets.size and (subsets.min() < 0 or subsets.max() >= train_size):
        raise UserError(f"subsets hold indices outside the {train_size} training images")
    if any(len(np.unique(row)) != len(row) for row in subsets):
        raise UserError("each training subset must hold distinct indices")
    return list(subsets.astype(np.int64))


def layout_of_models(seeds: Sequence[int] | None, execution: Execution) -> Ensemble | None:
    """The layout of a run of several models, or None for one model. Either way a device count the
    machine does not have is refused here, before anything is written. Any batch runs on any device count
    (`pad_to_devices`)."""
    if seeds is None:
        execution.mesh()
        return None
    return make_ensemble(len(seeds), execution)


def models_config(seeds: Sequence[int] | None, *, subsets: np.ndarray | None = None,
                   splits: Sequence[Split] | None = None) -> dict[str, Any]:
    """The entries that describe a run's models in config.json and the checkpoint metadata ({} for one)."""
    if seeds is None:
        return {}
    entries: dict[str, Any] = {"seeds": [int(seed) for seed in seeds]}
    if subsets is not None:
        entries["subsets_hash"] = index_hash(np.asarray(subsets))
    if splits is not None:
        entries["split_hashes"] = [split.content_hash() for split in splits]
    return entries


def plan_of_models(plans: Sequence[Callable[[int], list]], ensemble: Ensemble | None) -> Callable[[int], list]:
    """The procedure's plan: the one model's, or every model's (a list per model)."""
    if ensemble is None:
        return plans[0]
    return lambda epoch: [plan(epoch) for plan in plans]


def stacked(states: Sequence[TrainState], ensemble: Ensemble | None) -> TrainState:
    return states[0] if ensemble is None else stack(states)


def final_metrics(state: TrainState, ensemble: Ensemble | None, seeds: Sequence[int] | None,
                   last: dict[str, Any], evaluate: Callable[[int, TrainState, dict[str, float]], dict[str, float]],
                   eval_sample: int | None) -> dict[str, Any]:
    """metrics.json of a run: the model's metrics, or one dict per model under "models"; with the run's
    seconds, steps and epochs. evaluate(k, model k's state, what the run's last evaluation measured of that
    state) → its metrics: the loop's evaluation of the final state is passed on, so nothing is measured twice."""
    totals = {"seconds": last["seconds"], "compile_seconds": last.get("compile_seconds", 0.0), "steps": last["steps"],
              "epochs": last["epoch"], **({} if eval_sample is None else {"eval_sample": eval_sample})}
    if ensemble is None:
        return {**evaluate(0, state, last["evaluation"]), **totals}
    models = [evaluate(k, take(state, k), last["evaluation"][k]) for k in range(ensemble.count)]
    return {"seeds": [int(seed) for seed in seeds], "models": models, **totals}
