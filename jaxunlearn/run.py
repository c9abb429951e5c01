"""A run directory, loaded once: its configuration, checkpoint metadata, split, dataset and model.

The harness writes a run directory (`jaxunlearn.runs`); `Run(path)` reads it back lazily and keeps what it
read: config.json (the one record of the run's configuration: its kind, seeds, source and the training
configuration of its model), the latest checkpoint's metadata (progress only, with the hash of the
config.json it belongs to), the split, the dataset and its device copy, and the latest model, restored once. The dataset and its device copy are
shared by every Run of one dataset in the process (`training_data`, `device_data`), so evaluating a run
against its original and its reference, or reporting many runs, loads the data once.
"""

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from jaxunlearn.config import TrainConfig, train_config_from_json
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import Dataset, load_dataset, stratified_subset
from jaxunlearn.data.splits import Split, load_split
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.parallel import AXIS
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation.accuracy import Predictor, make_predictor
from jaxunlearn.models import create_model


def training_data(config: TrainConfig, data_dir: str | None = None) -> Dataset:
    """The dataset a training configuration defines (its subset, if any); `data_dir` overrides its place.
    Loaded once per process for each dataset, place and subset."""
    return _training_data(config.dataset, data_dir or config.data_dir, config.train_size, config.test_size,
                          config.validation_size)


@functools.lru_cache(maxsize=4)
def _training_data(name: str, data_dir: str | None, train_size: int | None, test_size: int | None,
                   validation_size: int | None) -> Dataset:
    dataset = load_dataset(name, data_dir)
    if train_size is None and test_size is None and validation_size is None:
        return dataset
    return stratified_subset(dataset, train_size, test_size, validation_size)


@functools.lru_cache(maxsize=4)
def device_data(dataset: Dataset) -> DeviceData:
    """`dataset` on the default device, placed once per process."""
    return DeviceData.from_dataset(dataset)


def model_state(config: TrainConfig, dataset: Dataset, *, initialise: bool, seed: int | None = None,
                precision: str = "f32", conv: str = "xla"):
    """(graphdef, params, batch_stats) of the configuration's model, from `seed` (default: its own), computing
    in `precision` (the parameters are float32 in every precision) with the ResNets' convolutions `conv`.

    initialise=False gives shape-only trees (`jax.ShapeDtypeStruct` leaves) to restore a checkpoint into,
    which skips the initialisers (seconds of compilation on CPU the first time in a process).
    """
    build = lambda: create_model(config.model, dataset.num_classes, in_channels=dataset.image_shape[-1],
                                 image_size=dataset.image_shape[:2], width=config.width, depth=config.depth,
                                 seed=config.seed if seed is None else seed, bn_axis_name=AXIS, precision=precision,
                                 conv=conv)
    return nnx.split(build() if initialise else nnx.eval_shape(build), nnx.Param, nnx.BatchStat)


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of a run configuration's canonical JSON: what each checkpoint's metadata records."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


class Run:
    """A run directory. Every property reads its part of the directory on first use and keeps it."""

    def __init__(self, path: str | Path, *, data_dir: str | None = None):
        self.path = Path(path)
        self.data_dir = data_dir

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.json: the run's resolved configuration."""
        path = self.path / "config.json"
        if not self.path.is_dir():
            raise UserError(f"no run directory {self.path}")
        if not path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json)")
        try:
            config = json.loads(path.read_text())
        except ValueError as error:
            raise UserError(f"corrupt {path}: {error}") from None
        if not isinstance(config, dict) or config.get("kind") not in ("train", "unlearn") \
                or not isinstance(config.get("config"), dict):
            raise UserError(f"corrupt {path}: not a run configuration")
        return config

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """The metadata of the latest checkpoint: epoch, evaluation, seconds, steps; UserError when the
        checkpoint was written for another configuration than config.json."""
        meta = checkpoint.check_run_meta(checkpoint.read_meta(self.path), self.path)
        if meta.get("config_hash") != config_hash(self.config):
            raise UserError(f"{self.path}: its latest checkpoint was written for another configuration than "
                            f"its config.json")
        return meta

    @property
    def kind(self) -> str:
        """"train" or "unlearn"."""
        return self.config["kind"]

    @functools.cached_property
    def train_config(self) -> TrainConfig:
        """The training configuration of the run's model (an unlearning run's: its original's)."""
        fields = self.config["config"] if self.kind == "train" else self.config.get("train_config")
        if not isinstance(fields, dict):
            raise UserError(f"corrupt {self.path / 'config.json'}: no training configuration")
        try:
            return train_config_from_json(fields)
        except UserError as error:
            raise UserError(f"corrupt {self.path / 'config.json'}: {error}") from None

    @property
    def seeds(self) -> list[int] | None:
        """The seeds of a run of several models; None for one model."""
        return self.config.get("seeds")

    @functools.cached_property
    def source(self) -> "Run | None":
        """The training run an unlearning run started from (None for a training run)."""
        return Run(self.config["source"], data_dir=self.data_dir) if "source" in self.config else None

    @functools.cached_property
    def split(self) -> Split | None:
        """The split an unlearning run forgot (its split.npz), or None."""
        path = self.path / "split.npz"
        return load_split(path) if path.exists() else None

    @property
    def dataset(self) -> Dataset:
        return training_data(self.train_config, self.data_dir)

    @property
    def data(self) -> DeviceData:
        return device_data(self.dataset)

    @functools.cached_property
    def _model(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        self.meta  # read first: UserError unless the latest checkpoint was written for this config.json
        graphdef, params, batch_stats = model_state(self.train_config, self.dataset, initialise=False)
        if self.seeds is not None:
            params, batch_stats = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct((len(self.seeds), *x.shape), x.dtype), (params, batch_stats))
        return graphdef, *checkpoint.restore_model(self.path, params, batch_stats)

    def model(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        """(graphdef, params, batch_stats) of the latest checkpoint, restored once; for a run of K models
        the trees are stacked [K, ...]."""
        return self._model

    @functools.cached_property
    def predict(self) -> Predictor:
        """Eval-mode (logits, embeddings) of the run's architecture on the run's normalisation."""
        return make_predictor(self.model()[0], self.data.mean, self.data.std)


def as_run(run: "str | Path | Run") -> Run:
    """`run` itself, or the Run of a run directory's path."""
    return run if isinstance(run, Run) else Run(run)
