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
    """

    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    extra: Any
    step: jax.Array


def create_state(params: nnx.State, batch_stats: nnx.State, tx: optax.GradientTransformation,
                 extra: Any = None) -> TrainState:
    """A state at step 0 with a fresh optimizer state for (params, extra)."""
    extra = {} if extra is None else extra
    return TrainState(
        params=params, batch_stats=batch_stats, opt_state=tx.init((params, extra)), extra=extra,
        step=jax.numpy.zeros((), jax.numpy.int32),
    )
