"""How the loop lays out the models it trains: one model data-parallel over a mesh (`OneModel`), or K models
side by side (`ManyModels`, `jaxunlearn.engine.ensemble`). Both are `Runner`s: the loop
(`jaxunlearn.engine.loop.Trainer`) calls only the methods of that interface.
"""

import functools
import math
import sys
from abc import ABC, abstractmethod
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData
from jaxunlearn.data.stream import BatchStream
from jaxunlearn.engine.ensemble import (
    Ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack_plans, take,
)
from jaxunlearn.engine.epoch import StepProgress, make_epoch_fn, place_blocks, resolve_loop, steps_in
from jaxunlearn.engine.parallel import DATA_AXIS, Execution, is_main_process, local_replica, pad_to_devices, replicate
from jaxunlearn.engine.procedure import Procedure
from jaxunlearn.engine.state import TrainState
from jaxunlearn.engine.step import make_train_step


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


class Runner(ABC):
    """One layout of the models a run trains. `state` below is the runner's own placed form of it (replicated on
    the mesh, or a list of model groups); `saved` turns it into the one tree a checkpoint holds.

    Per-epoch `step_metrics` are {name: [steps]} for one model and {name: [steps, K]} (NaN for a stopped model)
    for K; an `evaluation` is one dict, or one dict per model."""

    @abstractmethod
    def place(self, state: TrainState) -> Any:
        """The given state (one model, or K stacked) placed for the epochs."""

    @abstractmethod
    def saved(self, state: Any) -> TrainState:
        """The placed state as a checkpoint holds it."""

    @abstractmethod
    def restored(self, state: TrainState, meta: dict[str, Any]) -> Any:
        """A checkpoint's state (and its metadata) placed again."""

    @abstractmethod
    def compile(self, start_epoch: int) -> None:
        """Build the compiled epoch (compilation itself happens on its first call)."""

    @abstractmethod
    def epoch(self, state: Any, epoch: int, first_step: int) -> tuple[Any, dict[str, np.ndarray]]:
        """Run epoch `epoch` (0-based) of the plan: the new state and the per-step metrics on the host."""

    @abstractmethod
    def first_non_finite(self, step_metrics: dict[str, np.ndarray]) -> tuple[int, str] | None:
        """(step within the epoch, " of model k" or "") of the first non-finite loss, or None."""

    @abstractmethod
    def non_finite_state(self, state: Any) -> str | None:
        """" of model k" or "" when parameters or optimizer state are not finite, else None."""

    @abstractmethod
    def evaluate(self, state: Any, final: bool, previous: Any) -> tuple[Any, bool]:
        """(evaluation, whether the run stops now); `previous` is the last evaluation, `final` the last epoch's."""

    def meta(self) -> dict[str, Any]:
        """What a checkpoint must also record to resume this layout."""
        return {}

    @abstractmethod
    def report(self, epoch: int, step_metrics: dict[str, np.ndarray], evaluation: Any, seconds: float) -> None:
        """The progress line of a finished epoch (main process)."""

    @abstractmethod
    def result(self, state: Any) -> TrainState:
        """The final state as the caller receives it: this process's copy, on one device."""

    def finish(self) -> None:
        """Anything to say once the run is done."""


class OneModel(Runner):
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

    def report(self, epoch: int, step_metrics: dict[str, np.ndarray], evaluation: Any, seconds: float) -> None:
        _progress(self.label, epoch, self.procedure.epochs, step_metrics, evaluation, seconds)

    def finish(self) -> None:
        if self.streamed:  # every process says what it read
            print(f"data: process {jax.process_index()} read {self.stream.rows_read} training rows for its share "
                  f"of the batches", file=sys.stderr, flush=True)

    def result(self, state: TrainState) -> TrainState:
        return local_replica(state)


class ManyModels(Runner):
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


def _progress(label: str, epoch: int, epochs: int, step_metrics: dict[str, np.ndarray],
              evaluation: dict[str, float], seconds: float) -> None:
    width = 20
    done = math.floor(width * epoch / epochs)
    shown = " ".join(f"{k} {v:.3f}" for k, v in evaluation.items())
    print(f"\r{label} [{'#' * done}{'.' * (width - done)}] epoch {epoch}/{epochs} "
          f"loss {float(np.mean(step_metrics['loss'])):.4f} {shown} {seconds:.1f}s",
          file=sys.stderr, flush=True)

