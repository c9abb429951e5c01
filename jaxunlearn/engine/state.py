"""The explicit train state threaded through every step."""

from typing import Any

import jax
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays.

    params, batch_stats: `nnx.State` trees from `nnx.split(model, nnx.Param, nnx.BatchStat)`.
    opt_state: the optax state of the trainable pair (params, extra).
    extra: a method's own trainable parameters besides the model's (Boundary Expanding's shadow class);
      an empty dict for most methods. They are dropped when the run ends.
    step: int32 [] number of optimizer steps taken.
    key: uint32 [2], the data of this model's PRNG key (`jax.random.key_data`); the step draws from
      fold_in(key, step) (`StepContext.key`), so its randomness is fixed by the key and the step alone.
    """

    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    extra: Any
    step: jax.Array
    key: jax.Array


def model_key(seed: int, model: int = 0) -> jax.Array:
    """The key data (uint32 [2]) of model `model` of a run with seed `seed`."""
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), model))


def create_state(params: nnx.State, batch_stats: nnx.State, tx: optax.GradientTransformation,
                 extra: Any = None, key: jax.Array | None = None) -> TrainState:
    """A state at step 0 with a fresh optimizer state for (params, extra); key: its PRNG key data
    (default `model_key(0)`)."""
    extra = {} if extra is None else extra
    return TrainState(
        # one compiled program, not one small program per leaf (each a compilation or a cache read)
        params=params, batch_stats=batch_stats, opt_state=jax.jit(tx.init)((params, extra)), extra=extra,
        step=jax.numpy.zeros((), jax.numpy.int32), key=model_key(0) if key is None else jax.numpy.asarray(key),
    )
