"""The interface of an unlearning method: only what is specific to it.

The harness (`jaxunlearn.runs`) owns data, the model, compilation, the loop, checkpoints and evaluation; a
method supplies its hyperparameters, optimizer, batch plan, loss and termination rule.
"""

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import numpy as np
import optax

from jaxunlearn.config import Protocol, TrainConfig
from jaxunlearn.data.splits import Split
from jaxunlearn.engine.loop import Block, LossFn
from jaxunlearn.errors import UserError

Schedule = Callable[[jax.Array], jax.Array]
"""optimizer step(s) → learning rate(s); works on int arrays."""


@dataclass(frozen=True)
class Context:
    """What a method may know about the experiment it runs in."""

    split: Split
    num_classes: int
    protocol: Protocol
    seed: int

    @property
    def mode(self) -> str:
        return self.split.spec.mode


class Method(abc.ABC):
    """An unlearning method. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]] = ("class", "sample")
    from_scratch: ClassVar[bool] = False
    """True: start from a fresh initialisation (retrain) instead of the original model."""

    @abc.abstractmethod
    def default_hparams(self, mode: str, original: TrainConfig) -> Any:
        """The method's hyperparameter dataclass with its reference defaults; it has an `epochs` field."""

    @abc.abstractmethod
    def optimizer(self, hparams: Any, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Schedule]:
        """The optimizer and its learning-rate schedule (also used for the log)."""

    @abc.abstractmethod
    def plan(self, hparams: Any, context: Context, epoch: int) -> list[Block]:
        """The index blocks of one epoch; deterministic in (context.seed, epoch)."""

    @abc.abstractmethod
    def loss_fn(self, hparams: Any, context: Context) -> LossFn:
        """The loss of one step on the batches named by `plan`."""

    def should_stop(self, evaluation: dict[str, float], context: Context) -> bool:
        """Termination rule, checked after each epoch on the harness's evaluation."""
        return False

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise UserError(f"method {self.name} supports only {' and '.join(self.modes)} forgetting, not {mode}")


def batch_blocks(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `indices` as int32 blocks: [n // B, B], then [1, n % B] if there is a rest."""
    n_full = len(indices) // batch_size
    blocks = []
    if n_full:
        blocks.append(indices[: n_full * batch_size].reshape(n_full, batch_size).astype(np.int32))
    if len(indices) % batch_size:
        blocks.append(indices[n_full * batch_size:][None].astype(np.int32))
    return blocks
