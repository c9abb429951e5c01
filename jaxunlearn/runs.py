"""The shared harness: `train`, `unlearn` and `evaluate_run` as library functions over a run directory.

Every method goes through `unlearn`, which builds the data, the model and the split, validates everything
before it writes anything, and hands a `Procedure` to the one loop (`jaxunlearn.engine.loop.fit`).

Run directory:
  config.json    the resolved configuration (a rerun with the same one resumes; another one is refused)
  split.npz      forget/retain indices with their content hash (unlearning runs)
  checkpoints/   Orbax steps, one per epoch: params, batch_stats, opt_state, meta
  metrics.jsonl  one line per optimizer step
  evaluations.jsonl  one line per epoch
  metrics.json   the final evaluation
"""

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxunlearn import checkpoint
from jaxunlearn.config import TrainConfig, UnlearnConfig, override, to_json, train_config_from_json
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import Dataset, load_dataset, stratified_subset
from jaxunlearn.data.splits import Split, load_split, make_split, parse_forget, save_split
from jaxunlearn.engine.loop import Procedure, eval_forward, fit, steps_in
from jaxunlearn.engine.parallel import AXIS, Execution, is_main_process
from jaxunlearn.engine.state import create_state
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation.accuracy import evaluate_parts, make_predictor, part_outputs, split_parts
from jaxunlearn.evaluation.divergence import tree_l2_distance
from jaxunlearn.evaluation.relearn import RelearnSettings, relearn_steps
from jaxunlearn.evaluation.suite import forgetting_metrics, part_labels, reference_metrics
from jaxunlearn.methods import Context, get_method
from jaxunlearn.methods.base import StartingModel
from jaxunlearn.methods.supervised import supervised_loss, supervised_optimizer, supervised_plan
from jaxunlearn.models import create_model


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a killed process leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def prepare_workdir(workdir: str | Path, config: dict[str, Any]) -> Path:
    """Create `workdir` holding config.json, or accept it when it holds the same configuration (resume).

    In a multi-process run process 0 does this and the others wait for it.
    """
    path = Path(workdir)
    if is_main_process():
        _prepare_workdir(path, json.loads(json.dumps(config)))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"prepare {path}")
    return path


def _prepare_workdir(path: Path, config: dict[str, Any]) -> None:
    config_file = path / "config.json"
    if config_file.exists():
        if json.loads(config_file.read_text()) != config:
            raise UserError(f"{path} holds a run with another configuration; choose a new --workdir")
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"workdir {path} exists and is not an empty directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json(config_file, config)
    except OSError as error:
        raise UserError(f"cannot write to workdir {path}: {error.strerror or error}") from None


def _check_positive(hparams: Any) -> None:
    for name in ("epochs", "batch_size"):
        value = getattr(hparams, name)
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")


def _model_state(config: TrainConfig, dataset: Dataset, *, initialise: bool):
    """(graphdef, params, batch_stats) of the run's model.

    initialise=False gives shape-only trees (`jax.ShapeDtypeStruct` leaves) to restore a checkpoint into,
    which skips the initialisers (seconds of compilation on CPU the first time in a process).
    """
    build = lambda: create_model(config.model, dataset.num_classes, in_channels=dataset.image_shape[-1],
                                 width=config.width, seed=config.seed, bn_axis_name=AXIS)
    return nnx.split(build() if initialise else nnx.eval_shape(build), nnx.Param, nnx.BatchStat)


def training_data(config: TrainConfig, data_dir: str | None = None) -> Dataset:
    """The dataset a training configuration defines (its subset, if any); `data_dir` overrides its place."""
    dataset = load_dataset(config.dataset, data_dir or config.data_dir)
    if config.train_size is None and config.test_size is None:
        return dataset
    return stratified_subset(dataset, config.train_size, config.test_size)


def _host_labels(dataset: Dataset) -> dict[str, np.ndarray]:
    return {"train": dataset.train_labels, "test": dataset.test_labels}


def _run_meta(kind: str, config: TrainConfig, dataset: Dataset) -> dict[str, Any]:
    return {"kind": kind, "dataset": dataset.name, "model": config.model, "width": config.width,
            "num_classes": dataset.num_classes, "train_config": to_json(config)}


def train(config: TrainConfig, workdir: str | Path, *, execution: Execution = Execution(),
          save_every_seconds: float = 60.0) -> dict[str, float]:
    """Train the original model on the whole train set; returns (and writes) train/test accuracy.

    Runs data-parallel over `execution`'s devices. A checkpoint is saved at the end of an epoch once
    `save_every_seconds` have passed, and at the end.
    """
    mesh = execution.mesh()
    _check_positive(config.recipe)
    dataset = training_data(config)
    everything = np.arange(len(dataset.train_labels))
    plan = lambda epoch: supervised_plan(everything, config.recipe.batch_size,
                                         np.random.default_rng([config.seed, epoch]))
    _check_batch_size(config.recipe.batch_size, mesh)
    plan(0)  # a batch larger than the train set is refused before anything is written
    graphdef, params, batch_stats = _model_state(config, dataset, initialise=True)
    workdir = prepare_workdir(workdir, {"kind": "train", "config": to_json(config)})

    data = DeviceData.from_dataset(dataset)
    tx, schedule = supervised_optimizer(config.recipe, steps_in(plan(0)))
    predict = make_predictor(graphdef, data.mean, data.std)
    test_part = {"test": ("test", np.arange(len(dataset.test_labels)))}
    procedure = Procedure(
        loss_fn=supervised_loss, tx=tx, plan=plan, epochs=config.recipe.epochs,
        evaluate=lambda s: evaluate_parts(predict, s.params, s.batch_stats, data, _host_labels(dataset), test_part),
        should_stop=lambda evaluation: False, learning_rate=schedule,
    )
    state = create_state(params, batch_stats, tx)
    state, last = fit(procedure, graphdef, state, data, workdir, _run_meta("train", config, dataset), "train",
                      execution=execution, save_every_seconds=save_every_seconds)
    parts = {"train": ("train", everything), **test_part}
    metrics = evaluate_parts(predict, state.params, state.batch_stats, data, _host_labels(dataset), parts)
    metrics.update(seconds=last["seconds"], steps=last["steps"], epochs=last["epoch"])
    if is_main_process():
        write_json(workdir / "metrics.json", metrics)
    return metrics


def _check_batch_size(batch_size: int, mesh) -> None:
    """UserError when the configured batch does not split evenly over the mesh's devices.

    Smaller batches of a plan (a remainder, a forget set smaller than the batch) are widened by the engine.
    """
    devices = mesh.devices.size
    if batch_size % devices:
        raise UserError(f"batch size {batch_size} is not a multiple of the {devices} devices; "
                        f"choose a multiple or --devices that divides it")


def source_config(source: str | Path) -> TrainConfig:
    """The TrainConfig of a training run directory; UserError when it is no readable training run."""
    meta = checkpoint.read_meta(Path(source))
    if meta.get("kind") != "train":
        raise UserError(f"{source} is not a training run (its checkpoint is a {meta.get('kind')!r} run)")
    return train_config_from_json(meta["train_config"])


def obtain_split(source: str | Path, dataset: Dataset, forget: str, protocol: str, seed: int) -> Split:
    """The split of `forget` for the training run `source`, shared by every method unlearning from it.

    The first call saves it under `source/splits/`; later calls load that file (its hash is checked), so all
    methods of one experiment forget exactly the same samples.
    """
    spec = parse_forget(forget)
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(spec)) + f"-{protocol}-seed{seed}.npz"
    path = Path(source) / "splits" / name
    if path.exists():
        return load_split(path)
    split = make_split(spec, dataset.train_labels, dataset.num_classes, protocol=protocol, seed=seed)
    if not is_main_process():
        return split
    try:
        path.parent.mkdir(exist_ok=True)
        save_split(split, path)
    except OSError:
        pass  # a read-only source run: the split is still saved in the unlearning run's own directory
    return split


def resolve_hparams(config: UnlearnConfig, original: TrainConfig) -> Any:
    """The method's reference defaults for this forgetting mode, with the config's overrides applied."""
    method = get_method(config.method)
    mode = parse_forget(config.forget).mode
    method.check_mode(mode)
    hparams = override(method.default_hparams(mode, original), config.hparams)
    _check_positive(hparams)
    return hparams


def unlearn(config: UnlearnConfig, source: str | Path, workdir: str | Path, *,
            execution: Execution = Execution(), save_every_seconds: float = 60.0) -> dict[str, float]:
    """Apply `config.method` to the model of training run `source`, data-parallel over `execution`'s
    devices; returns (and writes) its evaluation."""
    mesh = execution.mesh()
    method = get_method(config.method)
    original = source_config(source)
    hparams = resolve_hparams(config, original)
    dataset = training_data(original, config.data_dir)
    split = obtain_split(source, dataset, config.forget, config.protocol, config.seed)
    graphdef, params, batch_stats = _model_state(original, dataset, initialise=method.from_scratch)
    if not method.from_scratch:
        params, batch_stats = checkpoint.restore_model(Path(source), params, batch_stats)
    context = Context(split=split, num_classes=dataset.num_classes, protocol=config.protocol, seed=config.seed,
                      train_labels=dataset.train_labels, image_shape=dataset.image_shape,
                      mean=tuple(dataset.mean), std=tuple(dataset.std))
    plan = lambda epoch: method.plan(hparams, context, epoch)
    _check_batch_size(hparams.batch_size, mesh)
    plan(0)  # the method's own checks of its plan, before anything is written

    run_config = {"kind": "unlearn", "source": str(Path(source).absolute()), "config": to_json(config),
                  "hparams": dataclasses.asdict(hparams), "split_hash": split.content_hash()}
    workdir = prepare_workdir(workdir, run_config)
    if is_main_process() and not (workdir / "split.npz").exists():
        save_split(split, workdir / "split.npz")

    data = DeviceData.from_dataset(dataset)
    start = StartingModel(
        graphdef=graphdef, params=params, batch_stats=batch_stats, forward=eval_forward(graphdef), data=data,
        fresh=lambda: _model_state(dataclasses.replace(original, seed=original.seed + 1), dataset,
                                   initialise=True)[1:],
    )
    aux = method.prepare(hparams, context, start)
    extra = method.init_extra(hparams, context, start)
    tx, schedule = method.optimizer(hparams, [steps_in(plan(epoch)) for epoch in range(hparams.epochs)], aux)
    predict = make_predictor(graphdef, data.mean, data.std)
    parts = split_parts(split, dataset.test_labels)
    monitored = {name: part for name, part in parts.items() if name != "retain_train"}
    labels = _host_labels(dataset)
    procedure = Procedure(
        loss_fn=method.loss_fn(hparams, context), tx=tx, plan=plan, epochs=hparams.epochs,
        evaluate=lambda s: evaluate_parts(predict, s.params, s.batch_stats, data, labels, monitored),
        should_stop=lambda evaluation: method.should_stop(evaluation, context), learning_rate=schedule,
        aux=aux,
    )
    meta = {**_run_meta("unlearn", original, dataset), **run_config}
    state = create_state(params, batch_stats, tx, extra)
    state, last = fit(procedure, graphdef, state, data, workdir, meta, config.method,
                      execution=execution, save_every_seconds=save_every_seconds)
    metrics = evaluate_parts(predict, state.params, state.batch_stats, data, labels, parts)
    metrics.update(seconds=last["seconds"], steps=last["steps"], epochs=last["epoch"])
    if is_main_process():
        write_json(workdir / "metrics.json", metrics)
    return metrics


def _restored_model(run: Path, dataset: Dataset, config: TrainConfig):
    graphdef, params, batch_stats = _model_state(config, dataset, initialise=False)
    return graphdef, *checkpoint.restore_model(run, params, batch_stats)


def _reference_run(reference: Path, meta: dict[str, Any], split: Split) -> None:
    """UserError unless `reference` holds the same model and split as the evaluated run."""
    reference_meta = checkpoint.read_meta(reference)
    if reference_meta["train_config"] != meta["train_config"]:
        raise UserError(f"reference {reference} holds another model or dataset than the evaluated run")
    if reference_meta.get("split_hash") != split.content_hash():
        raise UserError(f"reference {reference} forgot another split than the evaluated run ({split.spec})")


def evaluate_run(run: str | Path, split: Split | None = None, *, reference: str | Path | None = None,
                 relearn: RelearnSettings = RelearnSettings()) -> dict[str, float]:
    """Evaluate the latest checkpoint of any run; writes `run/metrics.json`.

    The split is the run's own `split.npz` unless one is given; without either, train and test accuracy
    only. With a split: accuracies, membership-inference attacks, weight distance to and relearn time from
    the original model (the run's source, or the run itself for a training run); with a `reference` run
    (the retrained model on the same split) also the divergences from its predictions and the weight
    distance to it.
    """
    run = Path(run)
    meta = checkpoint.read_meta(run)
    original = train_config_from_json(meta["train_config"])
    dataset = training_data(original)
    if split is None and (run / "split.npz").exists():
        split = load_split(run / "split.npz")
    if reference is not None:
        if split is None:
            raise UserError("--reference needs a split: evaluate an unlearning run, or pass --forget")
        _reference_run(Path(reference), meta, split)
    graphdef, params, batch_stats = _restored_model(run, dataset, original)
    data = DeviceData.from_dataset(dataset)
    predict = make_predictor(graphdef, data.mean, data.std)
    labels = _host_labels(dataset)
    if split is None:
        parts = {"train": ("train", np.arange(len(dataset.train_labels))),
                 "test": ("test", np.arange(len(dataset.test_labels)))}
        metrics = evaluate_parts(predict, params, batch_stats, data, labels, parts)
    else:
        parts = split_parts(split, dataset.test_labels)
        outputs = part_outputs(predict, params, batch_stats, data, parts)
        metrics = forgetting_metrics(outputs, part_labels(parts, labels), split)
        if "source" in meta:
            _, original_params, original_stats = _restored_model(Path(meta["source"]), dataset, original)
        else:  # a training run is its own original
            original_params, original_stats = params, batch_stats
        metrics["l2_to_original"] = tree_l2_distance(params, original_params)
        original_logits, _ = predict(original_params, original_stats, data.train_images, split.forget)
        target = float(np.mean(original_logits.argmax(axis=1) == dataset.train_labels[split.forget]))
        steps, capped = relearn_steps(graphdef, params, batch_stats, data, split.forget, target, relearn)
        metrics.update(relearn_steps=steps, relearn_capped=capped, relearn_target_acc=target)
        if reference is not None:
            _, reference_params, reference_stats = _restored_model(Path(reference), dataset, original)
            reference_parts = {name: parts[name] for name in ("forget_train", "test")}
            reference_outputs = part_outputs(predict, reference_params, reference_stats, data, reference_parts)
            metrics.update(reference_metrics(outputs, reference_outputs))
            metrics["l2_to_reference"] = tree_l2_distance(params, reference_params)
        metrics.update(forget=str(split.spec), split_hash=split.content_hash())
    metrics.update(seconds=meta.get("seconds", 0.0), steps=meta.get("steps", 0), epochs=meta["epoch"])
    write_json(run / "metrics.json", metrics)
    return metrics


def run_embeddings(run: str | Path, dataset: Dataset, index_sets: list[np.ndarray]) -> list[np.ndarray]:
    """Eval-mode embeddings [n, D] of the run's latest model for each set of train indices."""
    meta = checkpoint.read_meta(Path(run))
    graphdef, params, batch_stats = _restored_model(Path(run), dataset, train_config_from_json(meta["train_config"]))
    data = DeviceData.from_dataset(dataset)
    predict = make_predictor(graphdef, data.mean, data.std)
    return [predict(params, batch_stats, data.train_images, indices)[1] for indices in index_sets]
