"""The one training loop every method runs through: epochs (`jaxunlearn.engine.epoch`) until the method's
rule stops the run or its epochs are done; between epochs the loop evaluates, checkpoints, logs and checks
the method's termination rule; it resumes from the latest checkpoint.
"""

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.compile_time import compile_clock
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData
from jaxunlearn.data.stream import BatchStream
from jaxunlearn.engine.ensemble import (
    Ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack_plans, take,
)
from jaxunlearn.engine.parallel import DATA_AXIS, Execution, is_main_process, local_replica, pad_to_devices, replicate
from jaxunlearn.engine.state import TrainState
from jaxunlearn.engine.epoch import StepProgress, make_epoch_fn, place_blocks, resolve_loop, steps_in
from jaxunlearn.engine.step import LossFn, make_train_step
from jaxunlearn.errors import TrainingDiverged, UserError
from jaxunlearn.files import read_log, write_text

@dataclass(frozen=True)
class Procedure:
    """What the loop runs; everything method-specific is already folded in.

    plan: epoch number → index blocks (deterministic in the epoch, so a resumed run replays the same plan);
      in a run of several models, one list of blocks per model.
    aux: the method's constants handed to every step (`StepContext.aux`); stacked per model in a run of
      several models.
    evaluate: (one model's state on one device, the model's index: 0 for a single model) → metrics logged
      after each epoch and handed to `should_stop`.
    learning_rate: optimizer steps (int array) → learning rates, for the log.
    evaluate_every_epoch: False evaluates a run of several models only once its epochs are done (when
      nothing is to be stopped early, K evaluations per epoch buy nothing); a single model is always
      evaluated after every epoch.
    """

    loss_fn: LossFn
    tx: optax.GradientTransformation
    plan: Callable[[int], Sequence[Any]]
    epochs: int
    evaluate: Callable[[TrainState, int], dict[str, float]]
    should_stop: Callable[[dict[str, float]], bool]
    learning_rate: Callable[[np.ndarray], Any]
    aux: Any = None
    evaluate_every_epoch: bool = True


@jax.jit
def copy_tree(tree: Any) -> Any:
    """A copy of every array of `tree` in new buffers, as one program (not one per leaf)."""
    return jax.tree.map(jnp.copy, tree)


@functools.partial(jax.jit, static_argnums=1)
def finite_models(tree: Any, models_axis: bool) -> jax.Array:
    """Whether every floating leaf of `tree` is finite: bool [] or, with `models_axis`, bool [K] per model
    along each leaf's leading axis. Integer leaves (step counters) cannot be non-finite and are skipped."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if models_axis:
        return jnp.stack([jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1) for x in leaves]).all(axis=0)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


class _OneModel:
    """The data-parallel layout of one model: state replicated over `execution`'s mesh, batches split."""

    def __init__(self, procedure: Procedure, graphdef: nnx.GraphDef, data: "DeviceData | StreamedData",
                 execution: Execution, label: str):
        self.procedure, self.graphdef, self.data, self.execution, self.label = \
            procedure, graphdef, data, execution, label
        self.mesh = execution.mesh()
        self.streamed = isinstance(data, StreamedData)

    def place(self, state: TrainState) -> TrainState:
        # Every input replicated on the mesh, as the epoch's outputs are, so epoch 2 reuses epoch 1's executable.
        if self.streamed:
            state, self.aux = replicate((local_replica(state), self.procedure.aux), self.mesh)
            self.stream = BatchStream(self.data.dataset, self._place_rows)
        else:
            state, self.images, self.labels, self.aux = replicate(
                (local_replica(state), self.data.train_images, self.data.train_labels, self.procedure.aux), self.mesh)
        # The epoch donates the state: give it buffers of its own, not shared with the caller's arrays or with
        # the method's constants (a frozen teacher is the starting model itself).
        return copy_tree(state)

    def _place_rows(self, local: np.ndarray) -> Any:
        """This process's rows of a streamed batch [B_local, ...] as the step takes them: one global array split
        over the mesh (shard_map), or [this process's devices, B/D, ...] (pmap)."""
        if self.execution.backend == "pmap":
            devices = len(self.mesh.local_devices)
            return local.reshape(devices, local.shape[0] // devices, *local.shape[1:])
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(DATA_AXIS)), local,
                                                      (local.shape[0] * jax.process_count(), *local.shape[1:]))

    def saved(self, state: TrainState) -> TrainState:
        return state

    def restored(self, state: TrainState, meta: dict[str, Any]) -> TrainState:
        return state

    def compile(self, start_epoch: int) -> None:
        main = is_main_process()
        self.progress = StepProgress(self.label, steps_in(self.procedure.plan(start_epoch))) \
            if main and sys.stderr.isatty() else None
        self.epoch_fn = make_epoch_fn(self.graphdef, self.procedure.tx, self.procedure.loss_fn, self.data.mean,
                                      self.data.std, self.mesh, self.execution.backend, self.progress,
                                      self.execution.epoch_loop, streamed=self.streamed)

    def epoch(self, state: TrainState, epoch: int, first_step: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        if self.progress is not None:
            self.progress.start(epoch, first_step)
        padded = [pad_to_devices(block, self.mesh.devices.size) for block in self.procedure.plan(epoch)]
        blocks = place_blocks(padded, self.mesh, self.execution.backend)
        if self.streamed:
            batches = self.stream.epoch(padded)
            state, step_metrics = self.epoch_fn.streamed_epoch(state, batches, self.aux, blocks, epoch)
        else:
            state, step_metrics = self.epoch_fn(state, self.images, self.labels, self.aux, blocks, epoch)
        return state, jax.device_get(local_replica(step_metrics))

    def first_non_finite(self, step_metrics: dict[str, np.ndarray]) -> tuple[int, str] | None:
        finite = np.isfinite(step_metrics["loss"])
        return None if np.all(finite) else (int(np.argmin(finite)), "")

    def non_finite_state(self, state: TrainState) -> str | None:
        return None if bool(jax.device_get(finite_models(local_replica(state), False))) else ""

    def evaluate(self, state: TrainState, final: bool, previous: Any) -> tuple[dict[str, float], bool]:
        evaluation = self.procedure.evaluate(local_replica(state), 0)
        return evaluation, self.procedure.should_stop(evaluation)

    def meta(self) -> dict[str, Any]:
        return {}

    def report(self, epoch: int, step_metrics: dict[str, np.ndarray], evaluation: Any, seconds: float) -> None:
        _progress(self.label, epoch, self.procedure.epochs, step_metrics, evaluation, seconds)

    def result(self, state: TrainState) -> TrainState:
        return local_replica(state)


class _ManyModels:
    """K models side by side (`jaxunlearn.engine.ensemble`): groups of D·m models stepped one after another,
    frozen one by one as they meet their termination rule. Step metrics are [steps, K] (NaN for frozen
    models), the evaluation one dict per model ({} until it is evaluated)."""

    def __init__(self, procedure: Procedure, graphdef: nnx.GraphDef, data: DeviceData, execution: Execution,
                 label: str, ensemble: Ensemble):
        self.procedure, self.graphdef, self.data, self.execution, self.label, self.ensemble = \
            procedure, graphdef, data, execution, label, ensemble
        self.active = np.ones(ensemble.count, bool)

    def _groups(self, tree: Any) -> list[Any]:
        return [place_group(jax.tree.map(lambda x: np.asarray(x)[models], tree), self.ensemble)
                for models in self.ensemble.groups()]

    def place(self, state: TrainState) -> list[TrainState]:
        mesh = self.ensemble.mesh
        self.images, self.labels = jax.device_put((self.data.train_images, self.data.train_labels),
                                                  NamedSharding(mesh, P()))
        self.aux = self._groups(self.procedure.aux)
        return self._groups(state)

    def saved(self, groups: list[TrainState]) -> TrainState:
        device = jax.local_devices()[0]
        return jax.tree.map(lambda *parts: jax.device_put(np.concatenate([np.asarray(p) for p in parts]), device),
                            *groups)

    def restored(self, state: TrainState, meta: dict[str, Any]) -> list[TrainState]:
        self.active = np.asarray(meta["active"], bool)
        return self._groups(state)

    def compile(self, start_epoch: int) -> None:
        train_step = make_train_step(self.graphdef, self.procedure.tx, self.procedure.loss_fn, self.data.mean,
                                     self.data.std)
        self.loop = resolve_loop(self.execution.epoch_loop, self.ensemble.mesh)
        self.epoch_fn = make_models_epoch_fn(train_step, self.ensemble, self.loop)
        self.show_progress = is_main_process() and sys.stderr.isatty()

    def epoch(self, groups: list[TrainState], epoch: int, first_step: int) -> tuple[list[TrainState], dict]:
        blocks = stack_plans(self.procedure.plan(epoch))
        steps = steps_in([{name: columns[0] for name, columns in block.items()} for block in blocks])
        collected = {}
        for g, models in enumerate(self.ensemble.groups()):
            if self.show_progress:
                print(f"\r{self.label} epoch {epoch + 1}: models {models.start + 1}-{models.stop} of "
                      f"{self.ensemble.count}", end="", file=sys.stderr, flush=True)
            active = self.active[models]
            if not active.any():
                continue
            group_blocks = place_group_blocks([{n: c[models] for n, c in b.items()} for b in blocks],
                                              self.ensemble, self.loop)
            groups[g], metrics = self.epoch_fn(groups[g], self.images, self.labels, self.aux[g], group_blocks,
                                               epoch, place_group(active, self.ensemble))
            for name, values in jax.device_get(metrics).items():
                column = collected.setdefault(name, np.full((steps, self.ensemble.count), np.nan, np.float32))
                column[:, models] = np.where(active, values, np.nan)
        return groups, collected

    def first_non_finite(self, step_metrics: dict[str, np.ndarray]) -> tuple[int, str] | None:
        losses = step_metrics["loss"][:, self.active]
        if np.all(np.isfinite(losses)):
            return None
        step, column = np.argwhere(~np.isfinite(losses))[0]
        return int(step), f" of model {int(np.flatnonzero(self.active)[column])}"

    def non_finite_state(self, groups: list[TrainState]) -> str | None:
        for g, models in enumerate(self.ensemble.groups()):
            finite = np.asarray(jax.device_get(finite_models(groups[g], True))).reshape(-1)
            if not finite.all():
                return f" of model {models.start + int(np.argmin(finite))}"
        return None

    def evaluate(self, groups: list[TrainState], final: bool, previous: Any) -> tuple[list[dict], bool]:
        evaluations = list(previous) if previous else [{} for _ in range(self.ensemble.count)]
        if not (final or self.procedure.evaluate_every_epoch):
            return evaluations, False
        for g, models in enumerate(self.ensemble.groups()):
            if not self.active[models].any():
                continue
            group = jax.device_get(groups[g])
            for k in range(models.start, models.stop):
                if self.active[k]:
                    evaluations[k] = self.procedure.evaluate(take(group, k - models.start), k)
                    if self.procedure.should_stop(evaluations[k]):
                        self.active[k] = False
        return evaluations, not self.active.any()

    def meta(self) -> dict[str, Any]:
        return {"active": self.active.tolist()}

    def report(self, epoch: int, step_metrics: dict, evaluation: Any, seconds: float) -> None:
        loss = step_metrics["loss"]
        mean = float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan")
        print(f"\r{self.label} epoch {epoch}/{self.procedure.epochs}: {self.ensemble.count} models, "
              f"{int(self.active.sum())} still running, mean loss {mean:.4f}, {seconds:.1f}s",
              file=sys.stderr, flush=True)

    def result(self, groups: list[TrainState]) -> TrainState:
        return self.saved(groups)


def fit(procedure: Procedure, graphdef: nnx.GraphDef, state: TrainState, data: DeviceData,
        workdir: Path, logs: tuple[Path, Path], meta: dict[str, Any], label: str, *,
        execution: Execution = Execution(), save_every_seconds: float = 60.0,
        ensemble: Ensemble | None = None) -> tuple[TrainState, dict[str, Any]]:
    """Run epochs until the method's rule stops it or `procedure.epochs` are done, data-parallel over
    `execution`'s devices (`data` may live anywhere: it is replicated onto them).

    With an `ensemble`, `state` holds K models stacked on a leading axis and they run side by side
    (`jaxunlearn.engine.ensemble`); each stops on its own, and the run ends when all have stopped.

    Resumes from the latest checkpoint of `workdir` if there is one. Saves a checkpoint at the end of an
    epoch once `save_every_seconds` have passed since the last one, and at the end of the run; appends one
    JSON line per step to `logs[0]` and one per epoch (its evaluation) to `logs[1]`, and cuts both back to
    the checkpoint it resumes from (to nothing when there is none). Returns the final state and the metadata of
    its checkpoint (`epoch`, `finished`, `evaluation`, `seconds`, `steps`, plus `meta`); the state is
    this process's copy on one device. Only process 0 writes the logs; every process joins the saves.
    """
    runner = _OneModel(procedure, graphdef, data, execution, label) if ensemble is None else \
        _ManyModels(procedure, graphdef, data, execution, label, ensemble)
    manager = checkpoint.open_manager(workdir)
    try:
        state, last = _resume(manager, runner, runner.place(state), meta, logs, label)
        if not last["finished"]:
            state, last = _run_epochs(procedure, runner, manager, state, last, meta, logs, workdir, label,
                                      save_every_seconds)
    except BaseException as error:
        try:
            manager.close()
        except Exception:  # after a failed save it may fail to close too: the error raised here is the one to see
            pass
        if isinstance(error, Exception) and checkpoint.no_space(error):
            kept = manager.latest_step()
            raise UserError(f"no space left on device to write {workdir}; " + (
                f"its last complete checkpoint, epoch {kept}, is kept: free space and run the same command again "
                f"to resume" if kept is not None else "no checkpoint had been saved yet")) from None
        raise
    manager.close()
    if isinstance(runner, _OneModel) and runner.streamed:  # every process says what it read
        print(f"data: process {jax.process_index()} read {runner.stream.rows_read} training rows for its share of "
              f"the batches", file=sys.stderr, flush=True)
    return runner.result(state), last


def _resume(manager, runner, state, meta: dict[str, Any], logs: tuple[Path, Path],
            label: str) -> tuple[Any, dict[str, Any]]:
    """The placed state and checkpoint metadata to continue from: the latest checkpoint's, or the given state
    before epoch 1; the logs are cut back to its step (a run killed before its first checkpoint leaves lines
    that no checkpoint holds)."""
    latest = manager.latest_step()
    if latest is None:
        if is_main_process():
            for path in logs:
                _truncate_log(path, 0)
        return state, {**meta, "epoch": 0, "finished": False, "evaluation": {}, "seconds": 0.0, "steps": 0}
    restored, last = checkpoint.restore_state(manager, latest, runner.saved(state))
    checkpoint.check_run_meta(last, f"{manager.directory} step {latest}")
    state = runner.restored(restored, last)
    if is_main_process():
        for path in logs:
            _truncate_log(path, last["steps"])
        if not last["finished"]:
            print(f"{label}: resuming after epoch {last['epoch']}", file=sys.stderr)
    return state, last


def _run_epochs(procedure: Procedure, runner, manager, state, last: dict[str, Any], meta: dict[str, Any],
                logs: tuple[Path, Path], workdir: Path, label: str,
                save_every_seconds: float) -> tuple[Any, dict[str, Any]]:
    """Epochs from `last["epoch"]` until the method's rule stops the run or the last epoch: each epoch's
    steps, the non-finite check, the evaluation, a checkpoint when due, then its log lines."""
    main = is_main_process()
    log_path, evaluation_path = logs
    seconds, steps = last["seconds"], last["steps"]
    compiled = last.get("compile_seconds", 0.0)
    runner.compile(last["epoch"])
    last_save = time.perf_counter()
    for epoch in range(last["epoch"], procedure.epochs):
        started = time.perf_counter()
        first_step = steps
        with compile_clock() as clock:
            state, step_metrics = runner.epoch(state, epoch, first_step)
            steps = first_step + len(step_metrics["loss"])
            bad = runner.first_non_finite(step_metrics)
            if bad is not None:
                _diverged(f"{label}: non-finite loss{bad[1]} at step {first_step + 1 + bad[0]} (epoch {epoch + 1})",
                          manager, workdir)
            bad_model = runner.non_finite_state(state)
            if bad_model is not None:  # finite losses, but the epoch's last update was not
                _diverged(f"{label}: non-finite parameters or optimizer state{bad_model} after step {steps} "
                          f"(epoch {epoch + 1})", manager, workdir)
            evaluation, stop = runner.evaluate(state, epoch + 1 == procedure.epochs, last["evaluation"])
        seconds += time.perf_counter() - started
        compiled += clock.seconds
        finished = stop or epoch + 1 == procedure.epochs
        last = {**meta, "epoch": epoch + 1, "finished": finished, "evaluation": evaluation,
                "seconds": seconds, "compile_seconds": compiled, "steps": steps, **runner.meta()}
        # The epoch's log lines go first: a run killed before its checkpoint is complete resumes from the
        # previous one and cuts them back (`_resume`), so logs and checkpoints agree after any kill.
        if main:
            _append_log(log_path, step_metrics, first_step, procedure.learning_rate)
            with evaluation_path.open("a") as log:
                log.write(json.dumps({"epoch": epoch + 1, "step": steps, **_by_name(evaluation)}) + "\n")
        if finished or time.perf_counter() - last_save >= save_every_seconds:
            checkpoint.save(manager, epoch + 1, runner.saved(state), last)
            last_save = time.perf_counter()
        if main:
            runner.report(epoch + 1, step_metrics, evaluation, seconds)
        if stop:
            break
    return state, last


def _diverged(problem: str, manager, workdir: Path) -> None:
    """Raise TrainingDiverged naming the checkpoint the run keeps (every saved one passed this check)."""
    kept = manager.latest_step()
    where = Path(workdir) / checkpoint.CHECKPOINT_DIR
    raise TrainingDiverged(f"{problem}; the last finite checkpoint, epoch {kept}, is kept in {where}"
                           if kept is not None else f"{problem}; no checkpoint had been saved yet")


def _by_name(evaluation: dict[str, float] | list[dict[str, float]]) -> dict[str, Any]:
    """An epoch's evaluation as one JSON object: as it is for one model; for K models, each metric as a
    list over the models (None for a model not evaluated)."""
    if isinstance(evaluation, dict):
        return evaluation
    names = dict.fromkeys(name for model in evaluation for name in model)
    return {name: [model.get(name) for model in evaluation] for name in names}


def _append_log(path: Path, step_metrics: dict[str, np.ndarray], first_step: int,
                learning_rate: Callable[[np.ndarray], Any]) -> None:
    steps = np.arange(first_step, first_step + len(step_metrics["loss"]))
    rates = np.broadcast_to(np.asarray(learning_rate(steps)), steps.shape)
    with path.open("a") as log:
        for i, step in enumerate(steps):
            line = {"step": int(step) + 1, "learning_rate": float(rates[i])}
            line.update({name: values[i].tolist() for name, values in step_metrics.items()})
            log.write(json.dumps(line) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Cut a log back to the restored checkpoint's step, atomically: the lines past it were written by a run
    killed before its next checkpoint was complete (a last line torn by the kill goes with them)."""
    if path.exists():
        kept = [line for line, record in read_log(path) if record.get("step", last_step + 1) <= last_step]
        write_text(path, "".join(line + "\n" for line in kept))


def _progress(label: str, epoch: int, epochs: int, step_metrics: dict[str, np.ndarray],
              evaluation: dict[str, float], seconds: float) -> None:
    width = 20
    done = math.floor(width * epoch / epochs)
    shown = " ".join(f"{k} {v:.3f}" for k, v in evaluation.items())
    print(f"\r{label} [{'#' * done}{'.' * (width - done)}] epoch {epoch}/{epochs} "
          f"loss {float(np.mean(step_metrics['loss'])):.4f} {shown} {seconds:.1f}s",
          file=sys.stderr, flush=True)
