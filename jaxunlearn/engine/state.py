"""The explicit train state threaded through every step."""

import jax
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays.

    params, batch_stats: `nnx.State` trees from `nnx.split(model, nnx.Param, nnx.BatchStat)`.
    opt_state: the optax state of `params`.
    step: int32 [] number of optimizer steps taken.
    """

    params: nnx.State
    batch_stats: nnx.State
    opt_state: optax.OptState
    step: jax.Array


def create_state(params: nnx.State, batch_stats: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    """A state at step 0 with a fresh optimizer state for `params`."""
    return TrainState(
        params=params, batch_stats=batch_stats, opt_state=tx.init(params),
        step=jax.numpy.zeros((), jax.numpy.int32),
    )
