"""What the loop runs: a method folded into the loss, optimizer, plan, evaluation and stop rule of one run."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optax

from jaxunlearn.engine.state import TrainState
from jaxunlearn.engine.step import LossFn


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
