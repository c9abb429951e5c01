"""The interface of an unlearning method: only what is specific to it.

The harness (`jaxunlearn.runs`) owns data, the model, compilation, device placement, the loop, checkpoints
and evaluation; a method supplies its hyperparameters, optimizer, batch plan, loss and termination rule,
and, if it has any, its constants (a frozen teacher, a saliency mask, learned noise: `prepare`) and its
extra trainable parameters (`init_extra`).
"""

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import numpy as np
import optax
from flax import nnx

from jaxunlearn.config import Hparams, Pairing, TrainConfig
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.splits import Split
from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import LossFn
from jaxunlearn.errors import UserError

Schedule = Callable[[jax.Array], jax.Array]
"""optimizer step(s) → learning rate(s); works on int arrays."""


@dataclass(frozen=True)
class Context:
    """What a method may know about the experiment it runs in.

    train_labels: int [N] labels of the whole train set (host copy); image_shape: (H, W, C);
    mean, std: per-channel normalisation, batches arrive as (x/255 − mean)/std.
    """

    split: Split
    num_classes: int
    pairing: Pairing
    seed: int
    train_labels: np.ndarray
    image_shape: tuple[int, ...]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def mode(self) -> str:
        return self.split.spec.mode

    def rng(self, epoch: int) -> np.random.Generator:
        """The generator of the plan of `epoch`, from (seed, epoch): a resumed run replays the same plan."""
        return np.random.default_rng([self.seed, epoch])


@dataclass(frozen=True)
class StartingModel:
    """The model a method starts from, on one device, for `Method.prepare` and `Method.init_extra`.

    forward: (params, batch_stats, images) → (logits, feat) in eval mode.
    data: the dataset on the same device (uint8 images; `gather_batch` normalises them).
    fresh: () → (params, batch_stats) of a new random initialisation of the same architecture.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    batch_stats: nnx.State
    forward: Callable[[nnx.State, nnx.State, jax.Array], tuple[jax.Array, jax.Array]]
    data: DeviceData
    fresh: Callable[[], tuple[nnx.State, nnx.State]]


@dataclass(frozen=True)
class SGDHparams(Hparams):
    """What every method trained with PyTorch's SGD shares: epochs, batch size, a constant learning rate,
    momentum and coupled weight decay (`sgd_optimizer`). A method's hyperparameters subclass it, setting its
    reference defaults and adding fields of its own."""

    epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0


class Method(abc.ABC):
    """An unlearning method: a small record of what is its own. A subclass sets `name` and `hparams_type`
    (its hyperparameter dataclass, defaults those of its reference code) and implements `plan` and `loss_fn`;
    everything else has a default it may override.

    Public contract (checked for any method by `jaxunlearn.testing.check_method`): `default_hparams` validates;
    `plan` is deterministic in (context.seed, epoch) and names train-set indices in the columns "train",
    "forget", "retain" (others carry per-sample data, such as random labels); `loss_fn` gives a finite loss on
    one step; the state survives a checkpoint; the vmapped step of two models equals each one's.
    """

    name: ClassVar[str]
    hparams_type: ClassVar[type] = SGDHparams
    """The hyperparameter dataclass (a subclass of `jaxunlearn.config.Hparams`); `--hp NAME=VALUE` sets its
    fields."""
    modes: ClassVar[tuple[str, ...]] = ("class", "sample")
    from_scratch: ClassVar[bool] = False
    """True: start from a fresh initialisation (retrain) instead of the original model."""
    stops_early: ClassVar[bool] = False
    """True when `should_stop` can end the run before its epochs are done (then every epoch is evaluated)."""
    in_paper_comparison: ClassVar[bool] = True
    """True for the methods an experiment compares (every method but the retrained reference)."""

    def default_hparams(self, mode: str, original: TrainConfig) -> Any:
        """The method's hyperparameters with its reference defaults for forgetting mode `mode` ("class" or
        "sample") from an original trained with `original`: `hparams_type()` unless the method overrides it."""
        return self.hparams_type()

    def optimizer(self, hparams: Any, steps_per_epoch: Sequence[int], aux: Any
                  ) -> tuple[optax.GradientTransformation, Schedule]:
        """The optimizer of the pair (params, extra) and its learning-rate schedule (for the log): PyTorch's
        SGD at a constant rate for `SGDHparams` (`sgd_optimizer`); a method with another overrides it.

        steps_per_epoch: the optimizer steps of each epoch of the plan; aux: what `prepare` returned.
        A value that differs between the models of one run (a mask computed from their data) must live in
        the optimizer state that `init` builds, not in `update`'s closure: the K models of a run share the
        first model's `update` and each keep their own state.
        """
        if not isinstance(hparams, SGDHparams):
            raise TypeError(f"{self.name}'s hyperparameters are no SGDHparams: the method must define `optimizer`")
        return sgd_optimizer(hparams)

    @abc.abstractmethod
    def plan(self, hparams: Any, context: Context, epoch: int) -> list[Block]:
        """The index blocks of one epoch; deterministic in (context.seed, epoch)."""

    @abc.abstractmethod
    def loss_fn(self, hparams: Any, context: Context) -> LossFn:
        """The loss of one step on the batches named by `plan`.

        It may depend on the context only through what the models of one run share (mode, num_classes,
        image_shape, mean, std): per-model data reaches the step through the plan's columns and `aux`.
        """

    def prepare(self, hparams: Any, context: Context, start: StartingModel) -> Any:
        """Constants every step reads (`StepContext.aux`), computed once before the first epoch (and again,
        identically, when a run resumes). None by default."""
        return None

    def init_extra(self, hparams: Any, context: Context, start: StartingModel) -> Any:
        """Extra trainable parameters beside the model's (`StepContext.extra`); {} by default."""
        return {}

    def should_stop(self, evaluation: dict[str, float], context: Context) -> bool:
        """Termination rule, checked after each epoch on the harness's evaluation."""
        return False

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise UserError(f"method {self.name} supports only {' and '.join(self.modes)} forgetting, not {mode}")


BUILT_IN = ("contrastive", "retrain", "finetune", "gradient_ascent", "neggrad_plus", "random_label", "l1_sparse",
            "salun", "boundary_shrink", "boundary_expand", "scrub", "unsir", "bad_teacher")
"""The methods of this package, in the order the reports list them."""

METHODS: dict[str, Method] = {}
"""Every registered method by name, in registration order: the order the reports list them."""


def register(cls: type[Method] | None = None, *, replace: bool = False) -> Any:
    """Class decorator, `@register` or `@register(replace=True)`: registers an instance of the method under
    its `name`. A name registered already is refused unless `replace` (a notebook cell run again; a built-in
    method is never replaced)."""
    def add(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register takes a Method subclass, got {cls!r}")
        if cls.name in METHODS and not (replace and cls.name not in BUILT_IN):
            raise UserError(f"a method named {cls.name!r} is registered already"
                            + ("" if cls.name in BUILT_IN else "; register(replace=True) replaces it"))
        METHODS[cls.name] = cls()
        return cls
    return add if cls is None else add(cls)


def get_method(name: str) -> Method:
    """The registered method `name`; UserError listing the known ones otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def torch_sgd(learning_rate: float | Schedule, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """PyTorch's SGD(lr, momentum, weight_decay): coupled L2 (g + λθ), then momentum b = μb + g, then −lr·b."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum or None))


def sgd_optimizer(hparams: SGDHparams) -> tuple[optax.GradientTransformation, Schedule]:
    """(PyTorch SGD at the hyperparameters' constant learning rate, momentum and weight decay, that rate as the
    schedule): what `Method.optimizer` returns for `SGDHparams`."""
    return torch_sgd(hparams.learning_rate, hparams.momentum, hparams.weight_decay), \
        optax.constant_schedule(hparams.learning_rate)


def shuffled_blocks(indices: np.ndarray, batch_size: int, rng: np.random.Generator, column: str) -> list[Block]:
    """One pass over `indices` in a random order as blocks of `column`: full batches, then the remainder."""
    return [{column: block} for block in batch_blocks(rng.permutation(indices), batch_size)]


def mixed_blocks(columns: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator) -> list[Block]:
    """Shuffle the rows of equally long columns together and cut them into blocks of `batch_size`
    (full batches, then the remainder)."""
    order = rng.permutation(len(next(iter(columns.values()))))
    batched = {name: batch_blocks(values[order], batch_size) for name, values in columns.items()}
    return [dict(zip(batched, parts)) for parts in zip(*batched.values())]


def batch_blocks(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `indices` as int32 blocks: [n // B, B], then [1, n % B] if there is a rest."""
    n_full = len(indices) // batch_size
    blocks = []
    if n_full:
        blocks.append(indices[: n_full * batch_size].reshape(n_full, batch_size).astype(np.int32))
    if len(indices) % batch_size:
        blocks.append(indices[n_full * batch_size:][None].astype(np.int32))
    return blocks
