"""One optimizer step as a pure function, and what a loss sees while it runs.

`make_step` builds the public step (state, batch) → (state, metrics) on batches the caller supplies: jit
it, vmap it over models, or run it per device under `jax.shard_map` / `jax.pmap` over the axis `DATA_AXIS`.
The harness's step (`make_train_step`) is the same update on batches gathered from the device-resident
dataset by index, or read ahead by the host when the data is streamed.
"""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxunlearn.data.device import gather_batch, normalise
from jaxunlearn.data.stream import DATA_ROLES
from jaxunlearn.engine.parallel import DATA_AXIS, PADDING_MASK, Backend
from jaxunlearn.engine.state import TrainState
from jaxunlearn.losses import sample_cross_entropy

"""The name of the data-parallel axis every step's collectives run over: name the axis so under
`jax.shard_map` or `jax.pmap`, and pass it to a BatchNorm's `axis_name` to average its statistics."""

Batch = dict[str, tuple[jax.Array, jax.Array]]
"""role ("train", "forget", "retain") → (images float [B, H, W, C], normalised; labels int32 [B]), this
device's shard."""


Metrics = dict[str, jax.Array]
"""name → scalar: the loss, its named parts and the gradient norm."""


@dataclass(frozen=True)
class StepContext:
    """What a loss may read besides the model and the batch, on this device.

    columns: every column of the step's plan, int32 [B_local] each (this device's shard).
    aux: the method's constants (`Method.prepare`): a frozen teacher, learned noise; replicated.
    extra: the method's extra trainable parameters (`Method.init_extra`), differentiated with the model's.
    epoch: int32 [] 0-based epoch; step: int32 [] optimizer steps taken before this one.
    forward: (params, batch_stats, images) → (logits, feat) of the run's architecture in eval mode, for
      frozen copies (a teacher, the original model).
    mask: float [B_local], 1 for a real sample and 0 for a padding slot of a batch widened to the device
      count (`pad_to_devices`); None when the step's batch has no padding. A loss runs the model with
      `apply` (which hands the mask to the BatchNorm statistics) and averages per-sample values with `mean`.
    key: this step's PRNG key, fold_in(state.key, step), the same on every device. Draw per example with
      `example_keys`, which gives the same numbers on any device count.
    """

    columns: dict[str, jax.Array]
    aux: Any
    extra: Any
    epoch: jax.Array
    step: jax.Array
    forward: Callable[[nnx.State, nnx.State, jax.Array], tuple[jax.Array, jax.Array]]
    mask: jax.Array | None = None
    key: jax.Array | None = None

    def apply(self, model: nnx.Module, images: jax.Array, *, train: bool = True, repeat: int = 1) -> Any:
        """model(images, train=train), given the mask (tiled `repeat` times, for batches concatenated along
        their first axis) only when the batch is padded: a model without a `mask` argument runs wherever no
        batch needs padding. A model with dropout (a `dropout` attribute above 0, as `create_model(...,
        dropout=p)` gives) also gets `keys=example_keys(len(images), repeat)` in training mode."""
        options = {} if self.mask is None else {"mask": jnp.tile(self.mask, repeat)}
        if train and getattr(model, "dropout", 0.0) > 0:
            options["keys"] = self.example_keys(images.shape[0], repeat)
        return model(images, train=train, **options)

    def cross_entropy(self, model: nnx.Module, images: jax.Array, labels: jax.Array) -> jax.Array:
        """This device's share of the mean cross-entropy of `model` in train mode on (images [B_local, ...],
        labels [B_local]) over the global batch's real samples: `apply`, then `mean`."""
        logits, _ = self.apply(model, images)
        return self.mean(sample_cross_entropy(logits, labels))

    def example_keys(self, rows: int, repeat: int = 1) -> jax.Array:
        """Keys [rows] for this device's rows of `repeat` batches concatenated along their first axis (rows =
        repeat·B_local): row i of part j gets fold_in(key, j·B + d·B_local + i), its position in the global
        batch B of part j (d: this device's index on `DATA_AXIS`). The same example draws the same numbers
        on any device count, padding slots (at the end of the global batch) aside."""
        if self.key is None:
            raise ValueError("this step has no key: build the state with `create_state` (it holds one)")
        local = rows // repeat
        devices, device = jax.lax.psum(1, DATA_AXIS), jax.lax.axis_index(DATA_AXIS)
        positions = jnp.arange(repeat)[:, None] * (local * devices) + device * local + jnp.arange(local)[None]
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(self.key, positions.reshape(-1))

    def mean(self, values: jax.Array) -> jax.Array:
        """This device's share of the mean of `values` [B_local, ...] (per sample, any trailing axes) over
        the real samples of the global batch (the engine averages the devices' shares): `values.mean()`
        when there is no padding."""
        if self.mask is None:
            return values.mean()
        return global_weighted_mean(values, self.mask)


def global_weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """This device's share of Σ w·v / Σ w over the batch of all devices on `DATA_AXIS`.

    values: [B_local, ...], weights: [B_local] (trailing axes of `values` are averaged with equal weight).
    Returns D·Σ_local w·v / Σ_global w, whose average over the D devices (what the engine takes) is the
    weighted mean of the global batch; a device whose weights are all 0 contributes 0.
    """
    devices = jax.lax.psum(1, DATA_AXIS)
    per_sample = values.size // values.shape[0]
    total_weight = jax.lax.psum(jnp.sum(weights), DATA_AXIS) * per_sample
    weights = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    return devices * jnp.sum(weights * values) / total_weight


LossFn = Callable[[nnx.Module, Batch, StepContext], tuple[jax.Array, dict[str, jax.Array]]]
"""(model in train mode, batch, context) → (scalar loss, named scalar parts), each this device's share of
the mean over the global batch's real samples (`StepContext.mean`). The engine averages them over the
devices; a loss that needs other devices' samples gathers them over `DATA_AXIS`."""


def eval_forward(graphdef: nnx.GraphDef):
    """(params, batch_stats, images) → (logits, feat) in eval mode (running BatchNorm statistics)."""
    def forward(params, batch_stats, images):
        return nnx.merge(graphdef, params, batch_stats, copy=True)(images, train=False)
    return forward



def _update(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, backend: Backend):
    """(state, batch, columns, aux, epoch) → (state, metrics): one update on this device's shard."""
    forward = eval_forward(graphdef)

    def update(state: TrainState, batch: Batch, columns: dict[str, jax.Array], aux: Any, epoch: jax.Array
               ) -> tuple[TrainState, Metrics]:
        mask = columns[PADDING_MASK].astype(jnp.result_type(float)) if PADDING_MASK in columns else None
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

        def objective(params, extra):
            model = nnx.merge(graphdef, params, state.batch_stats, copy=True)
            context = StepContext(columns=columns, aux=aux, extra=extra, epoch=epoch, step=state.step,
                                  forward=forward, mask=mask, key=key)
            loss, parts = loss_fn(model, batch, context)
            if backend == "shard_map":  # differentiate the global loss; its gradient is already reduced
                loss = jax.lax.pmean(loss, DATA_AXIS)
            return loss, (nnx.state(model, nnx.BatchStat), parts)

        (loss, (batch_stats, parts)), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
            state.params, state.extra)
        if backend == "pmap":  # pmap differentiates the local loss: average the gradients instead
            grads, loss = jax.lax.pmean((grads, loss), DATA_AXIS)
        parts = jax.lax.pmean(parts, DATA_AXIS)
        trainable = (state.params, state.extra)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params, extra = optax.apply_updates(trainable, updates)
        new_state = TrainState(params=params, batch_stats=batch_stats, opt_state=opt_state,
                               extra=extra, step=state.step + 1, key=state.key)
        return new_state, {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)}

    return update


def check_batch(batch: Any) -> None:
    """TypeError unless `batch` is a `Batch`: role → (float images [B, H, W, C], integer labels [B]) with one
    B per role. Shapes and dtypes are static, so under jit this runs once, at trace time."""
    if not isinstance(batch, dict) or not batch:
        raise TypeError(f"a batch is a dict role → (images, labels), got {type(batch).__name__}")
    for role, pair in batch.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"batch[{role!r}] must be a pair (images, labels), got {type(pair).__name__}")
        images, labels = (jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in pair)
        if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"batch[{role!r}] images must be normalised floats [B, H, W, C], got "
                            f"{images.dtype}{list(images.shape)} (uint8 images: normalise them first)")
        if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"batch[{role!r}] labels must be integers [B], got {labels.dtype}{list(labels.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise TypeError(f"batch[{role!r}] holds {images.shape[0]} images but {labels.shape[0]} labels")


def _check_label_range(role: str, classes: int, low: Any, high: Any) -> None:
    if int(np.min(low)) < 0 or int(np.max(high)) >= classes:
        raise ValueError(f"batch[{role!r}] labels must be in [0, {classes}), got {int(np.min(low))}.."
                         f"{int(np.max(high))}")


def check_label_values(batch: Batch, num_classes: int) -> None:
    """Inside a compiled step: raise (from a host callback that receives each role's smallest and largest
    label) when a role's labels fall outside [0, num_classes), where the cross-entropy would silently be NaN."""
    for role, (_, labels) in batch.items():
        jax.debug.callback(functools.partial(_check_label_range, role, num_classes), jnp.min(labels),
                           jnp.max(labels))


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn, *,
              axis: Backend | None = None, check_labels: bool = True) -> Callable[..., tuple[TrainState, Metrics]]:
    """The pure step `step(state, batch, aux=None, columns=None, epoch=0) → (state, metrics)`.

    graphdef: from `nnx.split(model, nnx.Param, nnx.BatchStat)`; state: `create_state(params, batch_stats,
    tx)`; loss_fn: a `LossFn` (`supervised_loss`, `Method.loss_fn`, or the user's own). batch: role →
    (images, labels) as the loss reads them ("train" for training; "forget" and "retain" for Contrastive
    Unlearning). aux, columns, epoch: what `StepContext` hands the loss (a method's constants, its per-sample
    int32 [B] columns, the 0-based epoch); a `columns["real"]` mask marks padding slots.

    axis=None: the step is self-contained; jit it, `jax.vmap` it over a leading model axis of state and batch,
    or call it in any loop. The loss's collectives run over a `DATA_AXIS` of size one that the step adds
    itself. axis="shard_map" or "pmap": call it per device inside the caller's `jax.shard_map` or `jax.pmap`
    over `DATA_AXIS`, each device holding its shard of the batch and a replica of the state; the update is
    that of the loss averaged over the global batch, identical on every device.

    The batch's structure, shapes and dtypes are checked when the step is traced (`check_batch`: a TypeError
    naming the problem). check_labels: also check the label values against the model's number of classes
    inside the step, raising from a host callback that receives the smallest and largest label of each role
    (two scalars copied to the host per step; pass False to skip it).
    """
    if axis not in (None, "shard_map", "pmap"):
        raise ValueError(f"axis must be None, 'shard_map' or 'pmap', got {axis!r}")
    update = _update(graphdef, tx, loss_fn, axis or "shard_map")

    def step(state: TrainState, batch: Batch, aux: Any = None, columns: dict[str, jax.Array] | None = None,
             epoch: int | jax.Array = 0) -> tuple[TrainState, Metrics]:
        check_batch(batch)
        if check_labels:
            check_label_values(batch, _num_classes(graphdef, state, batch))
        columns = {} if columns is None else columns
        epoch = jnp.asarray(epoch, jnp.int32)
        if axis is not None:
            return update(state, batch, columns, aux, epoch)
        one_device = lambda tree: jax.tree.map(lambda x: x[None], tree)
        per_device = jax.vmap(update, in_axes=(None, 0, 0, None, None), axis_name=DATA_AXIS)
        return jax.tree.map(lambda x: x[0], per_device(state, one_device(batch), one_device(columns), aux, epoch))

    return step


def _num_classes(graphdef: nnx.GraphDef, state: TrainState, batch: Batch) -> int:
    """The number of classes the model predicts: the width of its logits on one image (shapes only)."""
    images = next(iter(batch.values()))[0]
    logits, _ = jax.eval_shape(lambda p, b, x: nnx.merge(graphdef, p, b, copy=True)(x, train=False),
                               state.params, state.batch_stats, images[:1])
    return logits.shape[-1]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                    mean: Sequence[float], std: Sequence[float], backend: Backend = "shard_map",
                    on_step: Callable[[jax.Array], None] | None = None, *, streamed: bool = False):
    """The harness's step on this device: (data, aux, epoch, state, columns) → (state, metrics).

    data: resident, the device's replica of the uint8 train set and its labels, (images [N, H, W, C], labels
    [N]), from which the step gathers its shard of the batch (the `DATA_ROLES` columns: train-set indices);
    streamed (streamed=True), the shard itself, role → (uint8 images [B_local, H, W, C], labels [B_local]),
    read by the host ahead of the step (`jaxunlearn.data.stream`). Either way the images are normalised here
    and `make_step`'s update applied: BatchNorm statistics are averaged over `DATA_AXIS`, and the gradients are
    those of the loss averaged over the devices, so every device applies the same update. Under
    backend="shard_map" the global loss is differentiated (its gradient is already reduced); under "pmap" the
    local one, and the gradients are averaged. `on_step` (a `StepProgress`), if given, is called on the host
    with the step number every `on_step.every` steps.
    """
    mean, std = tuple(mean), tuple(std)
    update = _update(graphdef, tx, loss_fn, backend)

    def train_step(data, aux, epoch, state: TrainState, columns: dict[str, jax.Array]):
        if streamed:
            batch = {role: (normalise(images, mean, std), labels) for role, (images, labels) in data.items()}
        else:
            batch = {role: gather_batch(*data, columns[role], mean, std) for role in DATA_ROLES if role in columns}
        new_state, metrics = update(state, batch, columns, aux, epoch)
        if on_step is not None:
            report = (new_state.step % on_step.every == 0) & (jax.lax.axis_index(DATA_AXIS) == 0)
            jax.lax.cond(report, lambda step: jax.debug.callback(on_step, step), lambda step: None,
                         new_state.step)
        return new_state, metrics

    return train_step
