"""Typed run configurations (frozen dataclasses) and `name=value` overrides of their fields."""

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.sources import IMPORT_PATH, register_dataset
from jaxunlearn.data.splits import ForgetSpec, Pairing, parse_forget
from jaxunlearn.errors import UserError
from jaxunlearn.models.registry import MODELS, PRECISIONS


MAX_COUNT = 10**7
"""The largest integer setting accepted (epochs, batch sizes, steps, seeds of numpy draws aside)."""


class Hparams:
    """The base of every method's hyperparameters, a frozen dataclass with at least `epochs` and `batch_size`.

    `validate()` refuses values out of range before a run writes anything. The base checks what methods share,
    by field name: every number non-negative, every float finite, every integer at most `MAX_COUNT`; epochs, batch_size and retain_per_forget at least 1; learning rates
    and temperatures positive; momentum in [0, 1); weight decay non-negative. A method with more to check
    overrides `validate`, calling this one first.
    """

    epochs: int
    batch_size: int

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{name} must be finite, got {value}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise UserError(f"{name} must be >= 0, got {value}")
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_COUNT:
                raise UserError(f"{name} must be at most {MAX_COUNT}, got {value}")
            if name in ("epochs", "batch_size", "retain_per_forget") and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
            if name.endswith(("learning_rate", "temperature")) and not value > 0:
                raise UserError(f"{name} must be positive, got {value}")
            if name == "momentum" and not 0 <= value < 1:
                raise UserError(f"momentum must be in [0, 1), got {value}")
            if name == "weight_decay" and value < 0:
                raise UserError(f"weight_decay must be non-negative, got {value}")


@dataclasses.dataclass(frozen=True)
class SupervisedHparams(Hparams):
    """The official pretraining recipe: SGD with momentum, coupled weight decay, per-epoch cosine.

    The learning rate of epoch e is ½·lr·(1 + cos(π·e/(epochs + 1))) (PyTorch CosineAnnealingLR with
    T_max = epochs + 1, stepped per epoch), constant within the epoch. Batches are full unless
    keep_partial_batch: each epoch drops the N mod batch_size samples left over after its shuffle.

    augment: random crop (4 pixels of padding) and horizontal flip of every training image, each image's
    draw from its own key (`jaxunlearn.data.augment`); off in the official recipe.
    keep_partial_batch: end each epoch with the partial batch of the samples left over, as the official
    code does (its 4,000-image protocols: 64 steps in 2 epochs instead of 62); off by default, the setting
    every committed result was made with.
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: bool = False
    keep_partial_batch: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`jaxunlearn train`: the original model.

    dataset: "digits", "fashion_mnist", a dataset registered with `register_dataset`, an import path
      "module:function" returning a `Dataset`, or a TFDS name prepared under data_dir; or a `Dataset` itself,
      which is then registered under its name in this process (register it, or use an import path, for
      commands run in other processes).
    train_size, test_size: use a fixed stratified subset of about this many images (None: all), for
      CPU-scale experiments; see `jaxunlearn.data.sources.stratified_subset`.
    validation_size: hold out a fixed stratified set of about this many training images (None: none), on
      which no run of this configuration trains (the original, the retrained reference, every method);
      evaluations report `validation_acc` on it, and an experiment's tuning scores on it, not on test images.
    model: a registered model (`jaxunlearn.models.MODELS`): "resnet18" | "resnet34" | "resnet50" |
      "resnet101" | "vit_small" or one of the user's; width multiplies every channel count (ViT: its dim),
      depth sets a ViT's number of blocks (None: 12).
    precision: "f32", or "bf16" for bfloat16 forward and backward passes (parameters, optimizer state,
      BatchNorm statistics and the loss stay float32).
    dropout: the rate of the model's dropout in training mode (`create_model`), 0 (none) by default.
    eval_sample: evaluate every run of this original on at most this many images of each part (the forget
      set, the retain set, the test and validation sets): a fixed random sample, the same for every run,
      recorded as `eval_sample` in the metrics; None evaluates every image. For data too large to evaluate
      whole at every epoch.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "resnet18"
    width: float = 1.0
    seed: int = 0
    recipe: SupervisedHparams = SupervisedHparams()
    train_size: int | None = None
    test_size: int | None = None
    depth: int | None = None
    precision: str = "f32"
    validation_size: int | None = None
    eval_sample: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.dataset, Dataset):
            register_dataset(self.dataset.name, lambda data_dir, dataset=self.dataset: dataset, replace=True)
            object.__setattr__(self, "dataset", self.dataset.name)

    def validate(self) -> None:
        """UserError for a value out of range (the dataset's own sizes are checked when it is loaded)."""
        if not (DATASET_NAME.fullmatch(self.dataset) or IMPORT_PATH.fullmatch(self.dataset)):
            raise UserError(f"dataset must be a name (digits, fashion_mnist, a registered dataset or a TFDS name "
                            f"such as cifar10) or an import path module:function, got {self.dataset!r}; a "
                            f"directory goes in `data_dir`")
        if not (math.isfinite(self.width) and 0 < self.width <= MAX_WIDTH):
            raise UserError(f"width must be in (0, {MAX_WIDTH}], got {self.width}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be in [0, 2^32), got {self.seed}")
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        check_precision(self.precision)
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("train_size", "test_size", "depth", "validation_size", "eval_sample"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.recipe.validate()


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.]+)?")
"""A dataset name: digits, fashion_mnist, or a TFDS name with an optional config and version."""
MAX_WIDTH = 16.0
"""The widest channel multiplier accepted: ResNet-18 at width 16 has 2.9 billion parameters."""


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
    """`jaxunlearn unlearn`: one method applied to the model of a training run.

    forget: what to forget, given as a `ForgetSpec` or its text ("class:5", "class:3,5", "random:500"),
      which is parsed here, once. pairing "official" reproduces the official code's splits and batch
      pairing. hparams: the method's `--hp NAME=VALUE` overrides of its reference defaults. precision: as
      in TrainConfig, for the unlearning steps (evaluation runs in float32).
    """

    method: str
    forget: ForgetSpec
    hparams: Any
    pairing: Pairing = "default"
    seed: int = 0
    data_dir: str | None = None
    precision: str = "f32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "forget", as_forget_spec(self.forget))
        check_precision(self.precision)


def as_forget_spec(forget: ForgetSpec | str) -> ForgetSpec:
    """`forget` as a ForgetSpec: the config edge where a forget spec's text is parsed (UserError if invalid)."""
    return forget if isinstance(forget, ForgetSpec) else parse_forget(forget)


def train_config_from_json(fields: dict[str, Any]) -> TrainConfig:
    """Inverse of `to_json` for a TrainConfig, validated; UserError for fields that do not make one."""
    try:
        config = TrainConfig(**{**fields, "recipe": SupervisedHparams(**fields["recipe"])})
        config.validate()
    except (TypeError, KeyError, ValueError) as error:
        raise UserError(f"not a valid training configuration ({type(error).__name__}: {error})") from None
    return config


def to_json(config: Any) -> Any:
    """A dataclass (nested) as a JSON-ready dict; a ForgetSpec as its text."""
    if isinstance(config, ForgetSpec):
        return str(config)
    if dataclasses.is_dataclass(config):
        return {field.name: to_json(getattr(config, field.name)) for field in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {key: to_json(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_json(value) for value in config]
    return config


def _parse_value(name: str, annotation: Any, text: str) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        annotation = options[0]
    if typing.get_origin(annotation) is Literal:
        if text not in typing.get_args(annotation):
            raise UserError(f"{name} must be one of {', '.join(typing.get_args(annotation))}, got {text!r}")
        return text
    if annotation is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"{name} must be true or false, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        return annotation(text)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be of type {annotation.__name__}, got {text!r}") from None


def override(config: Any, overrides: dict[str, str]) -> Any:
    """A copy of dataclass `config` with fields set from strings, converted to each field's type.

    An unknown field name raises UserError listing the known ones; hyperparameters (`Hparams`) are then
    validated.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for name, text in overrides.items():
        if name not in fields:
            raise UserError(
                f"unknown hyperparameter {name!r} for {type(config).__name__}; "
                f"known: {', '.join(fields)}"
            )
        changes[name] = _parse_value(name, hints[name], text)
    result = dataclasses.replace(config, **changes)
    if isinstance(result, Hparams):
        result.validate()
    return result


def parse_assignments(items: list[str]) -> dict[str, str]:
    """["a=1", "b=x"] → {"a": "1", "b": "x"}; an item without "=" raises UserError."""
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"expected NAME=VALUE, got {item!r}")
        result[name.strip().replace("-", "_")] = value.strip()
    return result
