"""An epoch as compiled code: the step over an epoch's plan, as one `lax.scan` or a host loop over one step.

A step is a pure function (state, indices) → (state, metrics) that gathers its batches from the
device-resident dataset, or takes them as streamed by the host. An epoch runs that step over the epoch's
index plan with the state buffers donated, either as one compiled `lax.scan` (on accelerators) or as a host
loop over the one compiled step (on CPU: XLA:CPU runs convolution gradients inside a while loop 15-45x slower
than the same step compiled alone, BENCHMARKS.md).
"""

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxunlearn.engine.parallel import DATA_AXIS, BACKENDS, EPOCH_LOOPS, Backend, EpochLoop, pad_to_devices, shard_columns
from jaxunlearn.engine.state import TrainState
from jaxunlearn.engine.step import LossFn, make_train_step
from jaxunlearn.errors import UserError

Block = dict[str, np.ndarray]
"""column name → int32 [steps, B]: one `lax.scan` runs over the leading axis. Columns named in `DATA_ROLES`
index the train set; any other column is per-sample data of the method (random labels, noise indices)."""


def make_epoch_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                  mean: Sequence[float], std: Sequence[float], mesh: jax.sharding.Mesh,
                  backend: Backend = "shard_map", on_step: "StepProgress | None" = None,
                  loop: EpochLoop = "auto", *, streamed: bool = False) -> "EpochFn":
    """Compile an epoch: (state, train_images, train_labels, aux, blocks, epoch) → (state, per-step metrics),
    or with streamed=True (state, batches, aux, blocks, epoch) where each step's batch comes from `batches`
    (`jaxunlearn.data.stream.BatchStream`) instead of the device-resident set.

    The step (`make_train_step`) runs per device over `mesh` (`jax.shard_map`, or `jax.pmap` with
    backend="pmap"). The blocks run in turn, as one compiled `lax.scan` each (loop="scan") or as a host loop
    over one compiled step (loop="steps"); "auto" picks "steps" on CPU and "scan" elsewhere (`resolve_loop`).
    A streamed epoch is always a host loop: its batches arrive step by step. The state is donated. Blocks are
    placed by `place_blocks`. `on_step`, if given, is called on the host with the step number every
    `on_step.every` steps.
    """
    loop = "steps" if streamed else resolve_loop(loop, mesh)
    train_step = make_train_step(graphdef, tx, loss_fn, mean, std, backend, on_step, streamed=streamed)

    def scanned_epoch(state: TrainState, images, labels, aux, blocks: tuple[dict[str, jax.Array], ...], epoch):
        metrics = []
        for block in blocks:
            state, block_metrics = jax.lax.scan(
                lambda s, c: train_step((images, labels), aux, epoch, s, c), state, block)
            metrics.append(block_metrics)
        return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)

    def one_step(state: TrainState, images, labels, aux, columns: dict[str, jax.Array], epoch):
        return train_step((images, labels), aux, epoch, state, columns)

    def one_streamed_step(state: TrainState, batch, aux, columns: dict[str, jax.Array], epoch):
        return train_step(batch, aux, epoch, state, columns)

    per_device = scanned_epoch if loop == "scan" else one_streamed_step if streamed else one_step
    if backend == "pmap":
        # A scanned block is [steps, devices, B/devices] (devices on axis 1); one step's columns [devices, B/devices].
        columns_axis = 1 if loop == "scan" else 0
        data_axes = (0,) if streamed else (None, None)
        compiled = jax.pmap(per_device, axis_name=DATA_AXIS, in_axes=(None, *data_axes, None, columns_axis, None),
                            out_axes=None, devices=list(mesh.devices.flat), donate_argnums=0)
    elif backend == "shard_map":
        columns_spec = P(None, DATA_AXIS) if loop == "scan" else P(DATA_AXIS)
        data_specs = (P(DATA_AXIS),) if streamed else (P(), P())
        compiled = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), *data_specs, P(), columns_spec, P()),
                                         out_specs=(P(), P())), donate_argnums=0)
    else:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    return EpochFn(loop, compiled, streamed)


def resolve_loop(loop: EpochLoop, mesh: jax.sharding.Mesh) -> EpochLoop:
    """"auto" → "steps" on CPU devices, "scan" on accelerators; "scan" and "steps" stay as they are."""
    if loop == "auto":
        return "steps" if mesh.devices.flat[0].platform == "cpu" else "scan"
    if loop not in EPOCH_LOOPS:
        raise UserError(f"unknown epoch loop {loop!r}; choose from {', '.join(EPOCH_LOOPS)}")
    return loop


@dataclass(frozen=True)
class EpochFn:
    """An epoch from `make_epoch_fn`, called like a function. `compiled` is the jitted (or pmapped) unit:
    the whole epoch for loop="scan", one step for loop="steps"."""

    loop: EpochLoop
    compiled: Any
    streamed: bool = False

    def __call__(self, state: TrainState, images: jax.Array, labels: jax.Array, aux: Any,
                 blocks: tuple[dict[str, jax.Array], ...], epoch: int) -> tuple[TrainState, dict[str, jax.Array]]:
        """A resident epoch: every step gathers its batch from (images, labels)."""
        if self.loop == "scan":
            return self.compiled(state, images, labels, aux, blocks, epoch)
        return self._steps(state, blocks, lambda s, columns: self.compiled(s, images, labels, aux, columns, epoch))

    def streamed_epoch(self, state: TrainState, batches: Iterator[Any], aux: Any,
                       blocks: tuple[dict[str, jax.Array], ...], epoch: int) -> tuple[TrainState, dict[str, jax.Array]]:
        """A streamed epoch: step i takes the i-th of `batches`, beside its columns of `blocks`."""
        return self._steps(state, blocks, lambda s, columns: self.compiled(s, next(batches), aux, columns, epoch))

    @staticmethod
    def _steps(state: TrainState, blocks: tuple[dict[str, Any], ...], step: Callable[[TrainState, Any], Any]
               ) -> tuple[TrainState, dict[str, jax.Array]]:
        metrics = []
        for block in blocks:
            for row in range(steps_in([block])):
                state, step_metrics = step(state, _row(block, row))
                metrics.append(step_metrics)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

    def lower(self, state: TrainState, images: jax.Array, labels: jax.Array, aux: Any,
              blocks: tuple[dict[str, jax.Array], ...], epoch: int):
        """Lower the compiled unit for these arguments: the whole epoch, or one step on the first row."""
        if self.loop == "scan":
            return self.compiled.lower(state, images, labels, aux, blocks, epoch)
        return self.compiled.lower(state, images, labels, aux, _row(blocks[0], 0), epoch)


def _row(block: dict[str, Any], row: int) -> dict[str, Any]:
    """One step's columns of a placed block: a slice on the devices, or of the host array under pmap."""
    return {name: columns[row] for name, columns in block.items()}


def place_blocks(blocks: Sequence[Block], mesh: jax.sharding.Mesh, backend: Backend) -> tuple:
    """Put an epoch plan on the mesh for `make_epoch_fn`: batch columns split over the devices.

    A block whose batch width does not divide by the device count is padded (`pad_to_devices`).
    """
    devices = mesh.devices.size
    placed = []
    for block in blocks:
        block = pad_to_devices(block, devices)
        if backend == "pmap":  # [steps, B] → [steps, this process's devices, B / devices]
            local = mesh.devices.size // jax.process_count()
            first = jax.process_index() * local
            placed.append({name: columns.reshape(columns.shape[0], devices, -1)[:, first:first + local]
                           for name, columns in block.items()})
        else:
            placed.append(shard_columns(block, mesh))
    return tuple(placed)


class StepProgress:
    """A progress bar within an epoch on a terminal, fed by the compiled loop about 50 times an epoch."""

    def __init__(self, label: str, steps_per_epoch: int):
        self.label, self.steps_per_epoch = label, steps_per_epoch
        self.every = max(1, steps_per_epoch // 50)
        self.first_step, self.epoch = 0, 0

    def start(self, epoch: int, first_step: int) -> None:
        self.epoch, self.first_step = epoch, first_step

    def __call__(self, step: jax.Array) -> None:
        done = int(step) - self.first_step
        print(f"\r{self.label} epoch {self.epoch + 1}: step {done}/{self.steps_per_epoch}", end="",
              file=sys.stderr, flush=True)


def steps_in(plan: Sequence[Block]) -> int:
    """Number of optimizer steps in an epoch plan."""
    return sum(next(iter(block.values())).shape[0] for block in plan)
