"""Many models in one run: K models trained or unlearned side by side through the one harness.

A run of K models keeps every piece of state with a leading model axis: parameters, BatchNorm statistics,
optimizer state, a method's constants (`aux`) and its extra parameters. Every model has its own seed (its
initialisation when trained from scratch, its data order and random draws) and may have its own split.

The model axis is laid out on a 2-D mesh (`MODEL_AXIS` × `DATA_AXIS`) of D devices × 1: device d holds every
D-th block of models and steps each of them on whole batches, so the batch axis the losses and BatchNorm
reduce over has size 1. The K models run in groups of D·m: one compiled program steps a group, each device
its m models at once (`jax.vmap`; with m = 1 the model axis is squeezed away and the program is the
single-model one), and the groups run one after another. m = K/D puts every model in one program.
Which is faster depends on the backend: XLA:CPU runs the batched (grouped) convolutions of a vmapped
ResNet about 3× slower per model than one model's, so on CPU m defaults to 1 (BENCHMARKS.md).

A model that has met its method's termination rule is frozen: its state stops changing (its steps still run
inside a group that has active models, and their results are dropped), and a group whose models are all
frozen is skipped.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.engine.parallel import DATA_AXIS, MODEL_AXIS, Execution
from jaxunlearn.engine.state import TrainState
from jaxunlearn.errors import UserError


@dataclass(frozen=True)
class Ensemble:
    """The layout of a run's K models: `mesh` (`MODEL_AXIS` × `DATA_AXIS`, D × 1) and m = `per_device` models
    stepped at once by each device; groups of D·m models run one after another."""

    count: int
    mesh: jax.sharding.Mesh
    per_device: int

    @property
    def devices(self) -> int:
        return self.mesh.devices.size

    @property
    def group_size(self) -> int:
        return self.devices * self.per_device

    def groups(self) -> list[slice]:
        """The models of each group, as slices of the model axis."""
        return [slice(start, start + self.group_size) for start in range(0, self.count, self.group_size)]


def make_ensemble(count: int, execution: Execution) -> Ensemble:
    """The layout of `count` models over `execution`'s devices; UserError for one that cannot be run.

    The devices are this process's (several processes are not supported for many-model runs):
    `execution.devices` of them, which must divide `count`, or by default the most that do.
    `execution.models_per_device` (None: 1 on CPU, count/devices elsewhere) must divide count/devices. Only
    the shard_map backend runs a model axis.
    """
    if count < 1:
        raise UserError(f"a run needs at least one model, got {count}")
    if execution.backend != "shard_map":
        raise UserError(f"runs of several models use the shard_map backend, not {execution.backend}")
    if jax.process_count() > 1:
        raise UserError("runs of several models run in one process; start them without a `coordinator`")
    available = jax.local_device_count()
    if execution.devices is None:  # the most devices that split the models evenly
        devices = max(d for d in range(1, min(available, count) + 1) if count % d == 0)
    elif not 1 <= execution.devices <= available:
        raise UserError(f"devices must be between 1 and the {available} available, got {execution.devices}")
    elif count % execution.devices:
        raise UserError(f"{count} models do not split evenly over {execution.devices} devices")
    else:
        devices = execution.devices
    per_device = execution.models_per_device
    if per_device is None:
        per_device = 1 if jax.local_devices()[0].platform == "cpu" else count // devices
    if per_device < 1 or (count // devices) % per_device:
        raise UserError(f"models per device must divide the {count // devices} models of each of the "
                        f"{devices} devices, got {per_device}")
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:devices]).reshape(devices, 1), (MODEL_AXIS, DATA_AXIS),
                             axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    return Ensemble(count=count, mesh=mesh, per_device=per_device)


def stack(trees: Sequence[Any]) -> Any:
    """K pytrees of one structure → one pytree with a leading model axis [K, ...] (host numpy)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


def take(tree: Any, index: int) -> Any:
    """Model `index` of a stacked pytree (host or device arrays), on this process's first device."""
    device = jax.local_devices()[0]
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x[index] if isinstance(x, np.ndarray) else
                                                            jax.device_get(x)[index]), device), tree)


def place_group(tree: Any, ensemble: Ensemble) -> Any:
    """A group's pytree [D·m, ...] on the mesh, the model axis split over the devices."""
    return jax.device_put(tree, NamedSharding(ensemble.mesh, P(MODEL_AXIS)))


def stack_plans(plans: Sequence[Sequence[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    """One epoch's plans of K models → blocks with a leading model axis, {column: int32 [K, steps, B]}.

    UserError when the models' plans differ in their blocks, columns or shapes: every model of a run takes the
    same number of steps of the same batch widths (true for one method on splits of one size).
    """
    first = plans[0]
    for k, plan in enumerate(plans[1:], start=1):
        shapes = [{name: columns.shape for name, columns in block.items()} for block in plan]
        if shapes != [{name: columns.shape for name, columns in block.items()} for block in first]:
            raise UserError(f"model {k}'s epoch plan differs in shape from model 0's; the models of one run "
                            "must take the same steps (equal forget and retain set sizes)")
    return [{name: np.stack([plan[b][name] for plan in plans]) for name in block}
            for b, block in enumerate(first)]


def place_group_blocks(blocks: Sequence[dict[str, np.ndarray]], ensemble: Ensemble, loop: str) -> tuple:
    """A group's blocks {column: [D·m, steps, B]} on the mesh: [steps, D·m, B] for a scanned epoch,
    the model axis split over the devices (the batch axis has one device)."""
    sharding = NamedSharding(ensemble.mesh, P(None, MODEL_AXIS, DATA_AXIS) if loop == "scan" else P(MODEL_AXIS, DATA_AXIS))
    if loop == "scan":
        return tuple({name: jax.device_put(np.swapaxes(c, 0, 1), sharding) for name, c in block.items()}
                     for block in blocks)
    return tuple({name: np.asarray(c) for name, c in block.items()} for block in blocks)


def make_models_epoch_fn(train_step, ensemble: Ensemble, loop: str) -> "ModelsEpochFn":
    """Compile a group's epoch: (state, images, labels, aux, blocks, epoch, active) → (state, metrics [steps, D·m]).

    `train_step` is one model's step (`loop.make_train_step`, shard_map flavour, no progress callback).
    Each device steps its m models: the step itself when m = 1, `jax.vmap` of it otherwise. Models whose
    `active` entry is False keep their state. The state is donated.
    """
    per_device = ensemble.per_device

    def step_models(images, labels, aux, epoch, active, state: TrainState, columns):
        if per_device == 1:
            squeeze = lambda tree: jax.tree.map(lambda x: x[0], tree)
            new, metrics = train_step((images, labels), squeeze(aux), epoch, squeeze(state), squeeze(columns))
            new, metrics = jax.tree.map(lambda x: x[None], (new, metrics))
        else:
            new, metrics = jax.vmap(lambda s, a, c: train_step((images, labels), a, epoch, s, c))(state, aux, columns)
        keep = lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
        return jax.tree.map(keep, new, state), metrics

    def scanned_epoch(state, images, labels, aux, blocks, epoch, active):
        metrics = []
        for block in blocks:
            state, block_metrics = jax.lax.scan(
                lambda s, c: step_models(images, labels, aux, epoch, active, s, c), state, block)
            metrics.append(block_metrics)
        return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)

    def one_step(state, images, labels, aux, columns, epoch, active):
        return step_models(images, labels, aux, epoch, active, state, columns)

    models = P(MODEL_AXIS)
    if loop == "scan":
        per_device_fn, columns_spec, metrics_spec = scanned_epoch, P(None, MODEL_AXIS, DATA_AXIS), P(None, MODEL_AXIS)
    else:
        per_device_fn, columns_spec, metrics_spec = one_step, P(MODEL_AXIS, DATA_AXIS), models
    compiled = jax.jit(jax.shard_map(per_device_fn, mesh=ensemble.mesh,
                                     in_specs=(models, P(), P(), models, columns_spec, P(), models),
                                     out_specs=(models, metrics_spec)), donate_argnums=0)
    return ModelsEpochFn(loop, compiled, ensemble)


@dataclass(frozen=True)
class ModelsEpochFn:
    """A group's epoch from `make_models_epoch_fn`, called like a function on placed inputs."""

    loop: str
    compiled: Any
    ensemble: Ensemble

    def __call__(self, state, images, labels, aux, blocks, epoch: int, active) -> tuple[Any, dict[str, jax.Array]]:
        if self.loop == "scan":
            return self.compiled(state, images, labels, aux, blocks, epoch, active)
        sharding = NamedSharding(self.ensemble.mesh, P(MODEL_AXIS, DATA_AXIS))
        metrics = []
        for block in blocks:
            for row in range(next(iter(block.values())).shape[1]):
                columns = {name: jax.device_put(c[:, row], sharding) for name, c in block.items()}
                state, step_metrics = self.compiled(state, images, labels, aux, columns, epoch, active)
                metrics.append(step_metrics)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

