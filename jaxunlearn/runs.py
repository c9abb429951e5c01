"""The shared harness: `train`, `unlearn` and `evaluate` as library functions over a run directory
(`jaxunlearn.run.Run` owns its layout).

Every method goes through `unlearn`, which builds the data, the model and the split, validates everything
before it writes anything, and hands a `Procedure` to the one loop (`jaxunlearn.engine.loop.Trainer`).
"""

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxunlearn.config import TrainConfig, UnlearnConfig, override, to_json
from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData, choose_placement, place_data
from jaxunlearn.data.splits import ForgetSpec, Pairing, Split, load_split, make_split, save_indices, save_split
from jaxunlearn.engine.ensemble import Ensemble, stack, stack_plans, take
from jaxunlearn.engine.epoch import steps_in
from jaxunlearn.engine.loop import Hook, Trainer
from jaxunlearn.engine.procedure import Procedure
from jaxunlearn.engine.step import eval_forward
from jaxunlearn.engine.parallel import Execution, is_main_process
from jaxunlearn.engine.state import create_state, model_key
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation.accuracy import (evaluate_parts, host_labels, make_predictor, part_outputs, sampled,
                                           split_parts, whole_sets)
from jaxunlearn.evaluation.evaluators import EvaluatedModel, run_protocol
from jaxunlearn.evaluation.relearn import RelearnSettings
from jaxunlearn.methods import Context, get_method
from jaxunlearn.methods.base import StartingModel
from jaxunlearn.methods.supervised import supervised_objective, supervised_optimizer, supervised_plan
from jaxunlearn.run import (MODEL_SPLITS_DIR, SUBSETS_FILE, Run, as_run, model_state, split_name,
                            training_data)
from jaxunlearn.run_config import config_hash
from jaxunlearn.run_models import (check_seeds, check_subsets, final_metrics, layout_of_models, models_config,
                                   plan_of_models, stacked)


def train(config: TrainConfig, workdir: str | Path, *, execution: Execution = Execution(),
          save_every_seconds: float = 60.0, seeds: Sequence[int] | None = None,
          subsets: np.ndarray | None = None, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train the original model on the whole train set; returns (and writes) train/test accuracy.

    Runs data-parallel over `execution`'s devices. A checkpoint is saved at the end of an epoch once
    `save_every_seconds` have passed, and at the end. hooks: called after epochs (`jaxunlearn.engine.loop.Hook`).

    seeds: train len(seeds) models side by side in one run (`jaxunlearn.engine.ensemble`), model k from seed
      seeds[k] (its initialisation and data order), each on all training images or, with `subsets` (int
      [K, n] train indices, saved as subsets.npz), on its row. The result (metrics.json) is then
      {"seeds", "models": one metrics dict per model, "seconds", "compile_seconds", "steps", "epochs"}.
    """
    config.validate()
    _check_save_every(save_every_seconds)
    dataset = training_data(config)
    everything = np.arange(len(dataset.train_labels))
    if seeds is None and subsets is not None:
        raise UserError("training subsets need seeds: one subset per model")
    members = [config.seed] if seeds is None else check_seeds(seeds)
    pools = [everything] * len(members) if subsets is None else check_subsets(subsets, len(members), len(everything))
    plans = [lambda epoch, seed=seed, pool=pool: supervised_plan(pool, config.recipe.batch_size,
                                                                 np.random.default_rng([seed, epoch]),
                                                                 keep_partial=config.recipe.keep_partial_batch)
             for seed, pool in zip(members, pools)]
    ensemble = layout_of_models(seeds, execution)
    first = [plan(0) for plan in plans]  # a batch larger than the train set is refused before anything is written
    if ensemble is not None:
        stack_plans(first)
    run_config = {"kind": "train", "config": to_json(config), "dataset_fingerprint": dataset.fingerprint,
                  **models_config(seeds, subsets=subsets)}
    if (finished := Run(workdir).finished_metrics(run_config)) is not None:
        return finished
    check_memory(config, dataset, len(members))
    initial = [model_state(config, dataset, initialise=True, seed=seed) for seed in members]
    graphdef = initial[0][0]  # float32: evaluation
    step_graphdef = model_state(config, dataset, initialise=False, precision=config.precision,
                                 conv=execution.conv)[0]
    with Run.claim(workdir, run_config) as run:
        meta = {"config_hash": config_hash(run.config)}
        if subsets is not None and is_main_process() and not (run.path / SUBSETS_FILE).exists():
            save_indices(run.path / SUBSETS_FILE, np.asarray(subsets))

        data = _placed(dataset, execution, ensemble)
        tx, schedule = supervised_optimizer(config.recipe, steps_in(first[0]))
        predict = make_predictor(graphdef, data.mean, data.std)
        held_out_sets = whole_sets(dataset, config.eval_sample)
        procedure = Procedure(
            loss_fn=supervised_objective(config.recipe), tx=tx, plan=plan_of_models(plans, ensemble), epochs=config.recipe.epochs,
            evaluate=lambda s, model: evaluate_parts(predict, s.params, s.batch_stats, data, host_labels(dataset),
                                                     held_out_sets),
            should_stop=lambda evaluation: False, learning_rate=schedule, evaluate_every_epoch=False,
        )
        states = [create_state(params, batch_stats, tx, key=model_key(seed))
                  for seed, (_, params, batch_stats) in zip(members, initial)]
        state, last = Trainer(procedure, step_graphdef, data, run.path, (run.step_log_path, run.epoch_log_path),
                              meta, "train", execution=execution, save_every_seconds=save_every_seconds,
                              ensemble=ensemble, hooks=hooks).fit(stacked(states, ensemble))
        metrics = final_metrics(state, ensemble, seeds, last, lambda k, model, known: evaluate_parts(
            predict, model.params, model.batch_stats, data, host_labels(dataset),
            {**sampled({"train": ("train", pools[k])}, config.eval_sample), **held_out_sets}, known),
            config.eval_sample)
        run.write_metrics(metrics)
        return metrics


def _check_save_every(seconds: float) -> None:
    if not (isinstance(seconds, (int, float)) and seconds >= 0):  # NaN fails; inf: only at the end
        raise UserError(f"`save_every` must be a number of seconds >= 0, got {seconds}")


def check_memory(config: TrainConfig, dataset: Dataset, models: int = 1) -> None:
    """UserError when `models` of the configuration's model cannot fit: their parameters, gradients,
    optimizer state and BatchNorm statistics (4 copies of the shapes `eval_shape` gives, activations not
    counted, so a lower bound) against the first device's free memory (the host's for CPU)."""
    _, params, batch_stats = model_state(config, dataset, initialise=False)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves((params, batch_stats)))
    needed = 4 * size * models
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        available, where = stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.platform} device"
    else:
        available, where = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host"
    if needed > available:
        raise UserError(f"{models} × {config.model} at width {config.width} need at least {needed / 2**30:.1f} GiB "
                        f"(parameters, gradients, optimizer state), more than the {available / 2**30:.1f} GiB "
                        f"free on the {where}")


def _placed(dataset: Dataset, execution: Execution, ensemble: Ensemble | None) -> "DeviceData | StreamedData":
    """The run's data in the placement `execution` asks for ("auto" resolved), said on stderr. A run of several
    models keeps its data on the devices."""
    placement, why = choose_placement(dataset, execution.data_placement)
    if ensemble is not None and placement == "stream":
        if execution.data_placement == "stream":
            raise UserError("runs of several models keep their data on the devices; `data_placement` stream is "
                            "for runs of one model")
        placement, why = "device", f"device (runs of several models keep their data on the devices; {why})"
    if is_main_process():
        print(f"data: {dataset.name}, {why}", file=sys.stderr, flush=True)
    return place_data(dataset, placement)


def source_config(source: str | Path) -> TrainConfig:
    """The TrainConfig of a training run directory; UserError when it is no readable training run."""
    run = as_run(source)
    if run.kind != "train":
        raise UserError(f"{source} is not a training run (it is an {run.kind!r} run)")
    return run.train_config


def obtain_split(source: str | Path, dataset: Dataset, spec: ForgetSpec, pairing: Pairing, seed: int, *,
                 save: bool = True) -> Split:
    """The split of `forget` for the training run `source`, shared by every method unlearning from it.

    The split is a function of the request (spec, pairing, seed) and the dataset's labels. The first call
    saves it under `source/splits/` (with save=False the caller does, with `keep_split`, once it has
    validated everything else); a file found there must hold exactly that split (its hash, its recorded
    request and its indices), so all methods of one experiment forget exactly the same samples and a file
    that does not fit, edited with its hash recomputed included, is refused, not used.
    """
    split = make_split(spec, dataset.train_labels, dataset.num_classes, pairing=pairing, seed=seed)
    path = _split_path(source, spec, pairing, seed)
    if path.exists():
        stored = load_split(path)
        if (str(stored.spec), stored.pairing, stored.seed) != (str(spec), pairing, seed):
            raise UserError(f"split file {path} holds {stored.spec} ({stored.pairing}, seed {stored.seed}), not "
                            f"the requested {spec} ({pairing}, seed {seed})")
        if stored.content_hash() != split.content_hash():
            raise UserError(f"split file {path} holds other indices than {spec} ({pairing}, seed {seed}) gives "
                            f"on the training images of {source}; it was edited or belongs to other data")
    elif save:
        keep_split(source, split)
    return split


def _split_path(source: str | Path, spec: ForgetSpec, pairing: Pairing, seed: int) -> Path:
    return Path(source) / MODEL_SPLITS_DIR / f"{split_name(spec, pairing, seed)}.npz"


def keep_split(source: str | Path, split: Split) -> None:
    """Save `split` under `source/splits/` unless it is there (process 0). A read-only source run is left as
    it is: the split is also saved in the unlearning run's own directory."""
    path = _split_path(source, split.spec, split.pairing, split.seed)
    if not is_main_process() or path.exists():
        return
    try:
        path.parent.mkdir(exist_ok=True)
        save_split(split, path)
    except OSError:
        pass


def resolve_hparams(config: UnlearnConfig, original: TrainConfig) -> Any:
    """The method's hyperparameters: its reference defaults for this forgetting mode with the config's
    `--hp` overrides applied, or the config's own hyperparameter dataclass; validated."""
    method = get_method(config.method)
    method.check_mode(config.forget.mode)
    defaults = method.default_hparams(config.forget.mode, original)
    if not dataclasses.is_dataclass(config.hparams):
        return override(defaults, config.hparams)
    if type(config.hparams) is not type(defaults):
        raise UserError(f"{config.method} takes {type(defaults).__name__}, not {type(config.hparams).__name__}")
    config.hparams.validate()
    return config.hparams


def unlearn_run_config(config: UnlearnConfig, source: str | Path, splits: Sequence[Split],
                       seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """What an unlearning run of `config` from training run `source` records as its config.json (and what
    makes a finished run the same run): `splits` one per model, or one shared by all, and the identity of
    the original it starts from (`Run.identity`: its checkpoint and the hash of its parameters)."""
    original = source_config(source)
    per_model_splits = seeds is not None and len({split.content_hash() for split in splits}) > 1
    return {"kind": "unlearn", "source": str(Path(source).absolute()), "config": to_json(config),
            "train_config": to_json(original), "hparams": dataclasses.asdict(resolve_hparams(config, original)),
            "source_identity": as_run(source).identity(),
            **{key: value for key, value in as_run(source).config.items() if key == "dataset_fingerprint"},
            **({} if per_model_splits else {"split_hash": splits[0].content_hash()}),
            **models_config(seeds, splits=splits if per_model_splits else None)}


def unlearn(config: UnlearnConfig, source: str | Path, workdir: str | Path, *,
            execution: Execution = Execution(), save_every_seconds: float = 60.0,
            seeds: Sequence[int] | None = None, splits: Sequence[Split] | None = None,
            allow_unfinished: bool = False, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Apply `config.method` to the model of training run `source`, data-parallel over `execution`'s
    devices; returns (and writes) its evaluation.

    seeds: run the method on len(seeds) models side by side (`jaxunlearn.engine.ensemble`), model k with
      seed seeds[k] (its data order and random draws; its initialisation when the method starts from
      scratch). Every model forgets the split of `config` (drawn with `config.seed`), or with `splits` its
      own split (one per model, all of one mode; saved under splits/). A source run of K models gives model
      k its model k; a source of one model gives it to all. metrics.json then holds one dict per model
      under "models".
    hooks: called after epochs (`jaxunlearn.engine.loop.Hook`), after the run's own logs, checkpoint and progress.
    allow_unfinished: unlearn an original whose training has not reached its last epoch (refused otherwise).
      Either way the run records the original's checkpoint and parameters, and every later command refuses
      the run once the original has changed (resumed, retrained).
    """
    method = get_method(config.method)
    _check_save_every(save_every_seconds)
    original = source_config(source)
    _check_finished(as_run(source), allow_unfinished)
    hparams = resolve_hparams(config, original)
    dataset = Run(source, data_dir=config.data_dir).dataset  # checked against its recorded fingerprint
    members = [config.seed] if seeds is None else check_seeds(seeds)
    source_seeds = as_run(source).seeds
    if seeds is None and (splits is not None or source_seeds is not None):
        raise UserError("per-model splits and a source of several models need seeds: one per model")
    if source_seeds is not None and len(source_seeds) != len(members):
        raise UserError(f"{source} holds {len(source_seeds)} models; unlearn them with as many seeds, "
                        f"not {len(members)}")
    obtained = splits is None  # then the source run keeps it too, once everything is validated
    if splits is None:
        splits = [obtain_split(source, dataset, config.forget, config.pairing, config.seed, save=False)
                  ] * len(members)
    elif len(splits) != len(members) or len({split.spec.mode for split in splits}) != 1:
        raise UserError(f"per-model splits must be one per model ({len(members)}) and of one forgetting mode")
    method.check_mode(splits[0].spec.mode)
    contexts = [Context(split=split, num_classes=dataset.num_classes, pairing=config.pairing, seed=seed,
                        train_labels=dataset.train_labels, image_shape=dataset.image_shape,
                        mean=tuple(dataset.mean), std=tuple(dataset.std))
                for seed, split in zip(members, splits)]
    plans = [lambda epoch, context=context: method.plan(hparams, context, epoch) for context in contexts]
    ensemble = layout_of_models(seeds, execution)
    first = [plan(0) for plan in plans]  # the method's own checks of its plan, before anything is written
    if ensemble is not None:
        stack_plans(first)
    per_model_splits = seeds is not None and len({split.content_hash() for split in splits}) > 1
    run_config = unlearn_run_config(config, source, splits, seeds)
    if (finished := Run(workdir).finished_metrics(run_config)) is not None:
        return finished
    starts = _starting_models(method, original, dataset, source, members, source_seeds)
    graphdef = starts[0][0]  # float32: evaluation
    step_graphdef = model_state(original, dataset, initialise=False, precision=config.precision,
                                 conv=execution.conv)[0]
    with Run.claim(workdir, run_config) as run:
        run.save_splits(splits if per_model_splits else splits[:1])
        if obtained:
            keep_split(source, splits[0])

        data = _placed(dataset, execution, ensemble)
        fresh = lambda: model_state(original, dataset, initialise=True, seed=original.seed + 1)[1:]
        steps_per_epoch = [steps_in(plans[0](epoch)) for epoch in range(hparams.epochs)]
        states, auxes, tx, schedule = [], [], None, None
        for model, (context, (_, params, batch_stats)) in enumerate(zip(contexts, starts)):
            start = StartingModel(graphdef=graphdef, params=params, batch_stats=batch_stats,
                                  forward=eval_forward(graphdef), data=data, fresh=fresh)
            aux = method.prepare(hparams, context, start)
            extra = method.init_extra(hparams, context, start)
            model_tx, model_schedule = method.optimizer(hparams, steps_per_epoch, aux)
            tx, schedule = tx or model_tx, schedule or model_schedule  # one update for all: see Method.optimizer
            states.append(create_state(params, batch_stats, model_tx, extra, key=model_key(context.seed, model)))
            auxes.append(aux)
        predict = make_predictor(graphdef, data.mean, data.std)
        parts = [split_parts(split, dataset.test_labels, dataset.validation_labels, original.eval_sample)
                 for split in splits]
        monitored = [{name: part for name, part in model_parts.items() if name != "retain_train"}
                     for model_parts in parts]
        labels = host_labels(dataset)
        procedure = Procedure(
            loss_fn=method.loss_fn(hparams, contexts[0]), tx=tx, plan=plan_of_models(plans, ensemble),
            epochs=hparams.epochs,
            evaluate=lambda s, model: evaluate_parts(predict, s.params, s.batch_stats, data, labels, monitored[model]),
            should_stop=lambda evaluation: method.should_stop(evaluation, contexts[0]), learning_rate=schedule,
            aux=auxes[0] if ensemble is None else stack(auxes), evaluate_every_epoch=method.stops_early,
        )
        meta = {"config_hash": config_hash(run.config)}
        state, last = Trainer(procedure, step_graphdef, data, run.path, (run.step_log_path, run.epoch_log_path),
                              meta, config.method, execution=execution, save_every_seconds=save_every_seconds,
                              ensemble=ensemble, hooks=hooks).fit(stacked(states, ensemble))
        metrics = final_metrics(state, ensemble, seeds, last, lambda k, model, known: evaluate_parts(
            predict, model.params, model.batch_stats, data, labels, parts[k], known), original.eval_sample)
        run.write_metrics(metrics)
        return metrics


def _starting_models(method: Any, original: TrainConfig, dataset: Dataset, source: str | Path,
                     seeds: Sequence[int], source_seeds: Sequence[int] | None) -> list[tuple]:
    """(graphdef, params, batch_stats) each model starts from: a fresh initialisation from its own seed for
    a method that starts from scratch; otherwise the source run's model (model k of a source of several)."""
    if method.from_scratch:
        return [model_state(original, dataset, initialise=True, seed=seed) for seed in seeds]
    graphdef, params, batch_stats = as_run(source).model()
    if source_seeds is None:
        return [(graphdef, params, batch_stats)] * len(seeds)
    return [(graphdef, *take((params, batch_stats), k)) for k in range(len(seeds))]


def _check_finished(source: Run, allow_unfinished: bool) -> None:
    """UserError for an original whose training has not reached its end, unless it is allowed."""
    meta = source.meta
    if not meta["finished"] and not allow_unfinished:
        raise UserError(f"the original {source.path} is unfinished (epoch {meta['epoch']} of "
                        f"{source.train_config.recipe.epochs}): run its train command again to finish it, or pass "
                        f"`allow_unfinished` to unlearn it as it is")


def _reference_run(reference: Run, run: Run, split: Split) -> None:
    """UserError unless `reference` holds the same model and split as the evaluated run."""
    if reference.train_config != run.train_config:
        raise UserError(f"reference {reference.path} holds another model or dataset than the evaluated run")
    if reference.config.get("split_hash") != split.content_hash():
        raise UserError(f"reference {reference.path} forgot another split than the evaluated run ({split.spec})")
    if run.kind == "unlearn" and os.path.realpath(reference.config["source"]) != \
            os.path.realpath(run.config["source"]):
        raise UserError(f"reference {reference.path} unlearned another original than the evaluated run")


def evaluate(run: str | Path | Run, split: Split | None = None, *, reference: str | Path | Run | None = None,
                 original: Run | None = None, relearn: RelearnSettings = RelearnSettings()) -> dict[str, float]:
    """Evaluate the latest checkpoint of any run; writes `run/metrics.json`.

    The split is the run's own `split.npz` unless one is given; without either, train and test accuracy
    only. With a split: accuracies, membership-inference attacks, the shallow-forgetting checks, weight
    distance to and relearn time from the original model (the run's source, or the run itself for a
    training run); with a `reference` run (the retrained model on the same split) also the divergences from
    its predictions and the weight distance to it. `original` may pass the run's source already loaded (a
    report of many runs restores it once).
    """
    run = as_run(run)
    with run.writing():  # read, computed and written under the run's lock: never beside its writer
        return _evaluate(run, split, reference, original, relearn)


def _evaluate(run: Run, split: Split | None, reference: str | Path | Run | None, original: Run | None,
              relearn: RelearnSettings) -> dict[str, float]:
    split = run.split if split is None else split
    source = run.source  # UserError when the original changed since the run started from it
    if original is not None and source is not None and original.path.resolve() != source.path.resolve():
        raise UserError(f"{original.path} is not the original of {run.path}")
    if reference is not None:
        reference = as_run(reference)
        if split is None:
            raise UserError("a `reference` needs a split: evaluate an unlearning run, or give a `split`")
        _reference_run(reference, run, split)
    graphdef, params, batch_stats = run.model()
    model = EvaluatedModel(graphdef, params, batch_stats, run.dataset, run.data, run.predict, split,
                           run.train_config.eval_sample, relearn=relearn)
    if split is not None:
        model.original = (original or source or run).model()[1:]  # a training run is its own original
        model.reference = None if reference is None else reference.model()[1:]
    metrics = run_protocol(model)
    if split is not None:
        metrics.update(forget=str(split.spec), split_hash=split.content_hash())
    meta = run.meta
    metrics.update(seconds=meta.get("seconds", 0.0), compile_seconds=meta.get("compile_seconds", 0.0),
                   steps=meta.get("steps", 0), epochs=meta["epoch"])
    run.write_metrics(metrics, split)
    return metrics


def run_embeddings(run: str | Path | Run, index_sets: list[np.ndarray]) -> list[np.ndarray]:
    """Eval-mode embeddings [n, D] of the run's latest model for each set of train indices."""
    run = as_run(run)
    _, params, batch_stats = run.model()
    outputs = part_outputs(run.predict, params, batch_stats, run.data,
                           {str(k): ("train", indices) for k, indices in enumerate(index_sets)})
    return [outputs[str(k)][1] for k in range(len(index_sets))]
