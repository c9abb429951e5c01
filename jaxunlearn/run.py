"""A run directory: its layout, its one writer, and everything in it, written and read through `Run`.

Layout (every file name is here):
  .lock              held by the one process writing the run (`RunLock`)
  config.json        the resolved configuration: its kind, seeds, the training configuration of its model, and
                     for an unlearning run its original's identity (`Run.identity`) and split hash
  split.npz          the forget / retain indices with their content hash (splits/model<k>.npz per model)
  subsets.npz        the training subsets of a run of several models trained on subsets
  splits/            a training run's splits, one per forget request, shared by every method unlearning from it
  checkpoints/       Orbax steps: params, batch_stats, opt_state, meta (epoch, steps, evaluation, seconds, the
                     config.json hash and the parameters' hash)
  metrics.jsonl      one line per optimizer step, never read past the latest checkpoint
  evaluations.jsonl  one line per evaluated epoch, likewise
  metrics.json       the final evaluation

`Run.claim(workdir, config)` creates or resumes a run directory and holds its lock; `Run(path)` reads one
back lazily and keeps what it read: its configuration, the latest checkpoint's metadata, the split (checked
against the hash config.json records), the dataset and its device copy, and the latest model, restored once.
The dataset and its device copy are shared by every Run of one dataset in the process (`training_data`,
`jaxunlearn.data.placement.resident_data`), so evaluating a run against its original and its reference, or reporting many runs, loads
the data once.
"""

import contextlib
import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.experimental import multihost_utils

from jaxunlearn.config import TrainConfig, train_config_from_json
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData, choose_placement, place_data
from jaxunlearn.data.dataset import Dataset, stratified_subset
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import Split, load_split, save_split
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.parallel import DATA_AXIS, is_main_process
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation.accuracy import Predictor, make_predictor
from jaxunlearn.files import LOCK_FILE, RunLock, is_leftover, read_log, write_json
from jaxunlearn.models import create_model
from jaxunlearn.models.conv import resolve_conv
from jaxunlearn.run_config import config_hash, is_run_config, same_run

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.npz"
MODEL_SPLITS_DIR = "splits"
"""An unlearning run's per-model splits (model<k>.npz); a training run's shared splits (`source_split_path`)."""
SUBSETS_FILE = "subsets.npz"
STEP_LOG = "metrics.jsonl"
EPOCH_LOG = "evaluations.jsonl"
METRICS_FILE = "metrics.json"


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




def model_state(config: TrainConfig, dataset: Dataset, *, initialise: bool, seed: int | None = None,
                precision: str = "f32", conv: str = "xla"):
    """(graphdef, params, batch_stats) of the configuration's model, from `seed` (default: its own), computing
    in `precision` (the parameters are float32 in every precision) with the ResNets' convolutions `conv`.

    initialise=False gives shape-only trees (`jax.ShapeDtypeStruct` leaves) to restore a checkpoint into,
    which skips the initialisers (seconds of compilation on CPU the first time in a process).
    """
    seed = config.seed if seed is None else seed
    if not initialise:  # the same shapes for the checkpoint and the step: built once, handed out in new containers
        graphdef, params, batch_stats = _model_shapes(config, dataset.num_classes, dataset.image_shape, seed,
                                                      precision, resolve_conv(conv))
        return graphdef, *jax.tree.map(lambda leaf: leaf, (params, batch_stats))
    return nnx.split(_build_model(config, dataset.num_classes, dataset.image_shape, seed, precision, conv),
                     nnx.Param, nnx.BatchStat)


def _build_model(config: TrainConfig, num_classes: int, image_shape: tuple, seed: int, precision: str, conv: str):
    return create_model(config.model, num_classes, in_channels=image_shape[-1], image_size=image_shape[:2],
                        width=config.width, depth=config.depth, seed=seed, bn_axis_name=DATA_AXIS,
                        precision=precision, conv=conv, dropout=config.dropout)


@functools.lru_cache(maxsize=8)
def _model_shapes(config: TrainConfig, num_classes: int, image_shape: tuple[int, int, int], seed: int, precision: str,
                  conv: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`model_state(..., initialise=False)`: a graph and trees of `jax.ShapeDtypeStruct`, all immutable."""
    return nnx.split(nnx.eval_shape(lambda: _build_model(config, num_classes, image_shape, seed, precision, conv)),
                     nnx.Param, nnx.BatchStat)


class Run:
    """A run directory. Every property reads its part of the directory on first use and keeps it."""

    def __init__(self, path: str | Path, *, data_dir: str | None = None):
        self.given = path  # as given: "" is no directory, although Path("") is "."
        self.path = Path(path)
        self.data_dir = data_dir

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # --- what the run is ---------------------------------------------------------------------------------

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """config.json: the run's resolved configuration."""
        path = self.path / CONFIG_FILE
        if not self.path.is_dir():
            raise UserError(f"no run directory {self.path}")
        if not path.is_file():
            raise UserError(f"{self.path} is not a run directory (no {CONFIG_FILE})")
        try:
            config = json.loads(path.read_text())
        except ValueError as error:
            raise UserError(f"corrupt {path}: {error}") from None
        if not is_run_config(config):
            raise UserError(f"corrupt {path}: not a run configuration")
        return config

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        """The metadata of the latest checkpoint: epoch, evaluation, seconds, steps, finished, params_hash;
        UserError when the checkpoint was written for another configuration than config.json."""
        meta = checkpoint.check_run_meta(checkpoint.read_meta(self.path), self.path)
        if meta.get("config_hash") != config_hash(self.config):
            raise UserError(f"{self.path}: its latest checkpoint was written for another configuration than "
                            f"its {CONFIG_FILE}")
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
            raise UserError(f"corrupt {self.path / CONFIG_FILE}: no training configuration")
        try:
            return train_config_from_json(fields)
        except UserError as error:
            raise UserError(f"corrupt {self.path / CONFIG_FILE}: {error}") from None

    @property
    def seeds(self) -> list[int] | None:
        """The seeds of a run of several models; None for one model."""
        return self.config.get("seeds")

    def identity(self) -> dict[str, Any]:
        """What pins the model this run holds now: the hash of its config.json and its latest checkpoint's
        epoch, steps, whether the run is finished, and the hash of its parameters. An unlearning run records
        its original's (`source_identity`) and every later command checks it."""
        meta = self.meta
        params_hash = meta.get("params_hash") or checkpoint.tree_hash(self.model()[1])  # older checkpoints
        return {"config_hash": config_hash(self.config), "epoch": meta["epoch"], "steps": meta["steps"],
                "finished": bool(meta["finished"]), "params_hash": params_hash}

    @functools.cached_property
    def source(self) -> "Run | None":
        """The training run an unlearning run started from (None for a training run). UserError when it is no
        longer the model the run started from (it was resumed, retrained or replaced since)."""
        if "source" not in self.config:
            return None
        source = Run(self.config["source"], data_dir=self.data_dir)
        recorded = self.config.get("source_identity")
        if recorded is not None:
            check_same_source(source, recorded, f"{self.path} started from it")
        return source

    @functools.cached_property
    def split(self) -> Split | None:
        """The split an unlearning run forgot (its split.npz), or None; UserError unless it is the split its
        config.json records (by content hash)."""
        path = self.path / SPLIT_FILE
        expected = self.config.get("split_hash")
        if not path.exists():
            if expected is not None:
                raise UserError(f"{path} is missing: this run forgot the split of hash {expected[:12]} (its "
                                f"{CONFIG_FILE}); without it its forget metrics cannot be computed")
            return None
        split = load_split(path)
        if expected is not None and split.content_hash() != expected:
            raise UserError(f"{path} holds {split.spec} (hash {split.content_hash()[:12]}), not the split this run "
                            f"forgot (hash {expected[:12]} in its {CONFIG_FILE}); the file was replaced")
        return split

    def model_splits(self) -> list[Split]:
        """The split of each model of a run whose models forget splits of their own (splits/model<k>.npz),
        each checked against the hash config.json records for it."""
        expected = self.config.get("split_hashes", [])
        splits = [load_split(self.path / MODEL_SPLITS_DIR / f"model{k}.npz") for k in range(len(expected))]
        for k, (split, hash_) in enumerate(zip(splits, expected)):
            if split.content_hash() != hash_:
                raise UserError(f"{self.path / MODEL_SPLITS_DIR / f'model{k}.npz'} is not model {k}'s split "
                                f"recorded in {CONFIG_FILE}; the file was replaced")
        return splits

    @property
    def dataset(self) -> Dataset:
        """The data the run's model was trained on, checked against the fingerprint its config.json records
        (a dataset rebuilt from its name or import path must be the same data)."""
        dataset = training_data(self.train_config, self.data_dir)
        recorded = self.config.get("dataset_fingerprint")
        if recorded is not None and recorded != dataset.fingerprint:
            raise UserError(f"{self.path}: dataset {self.train_config.dataset} is not the data this run's model was "
                            f"trained on (its fingerprint differs from the one in {CONFIG_FILE})")
        return dataset

    @property
    def data(self) -> "DeviceData | StreamedData":
        """The dataset on the devices when it fits (`choose_placement` "auto"), streamed otherwise."""
        return place_data(self.dataset, choose_placement(self.dataset, "auto")[0])

    @functools.cached_property
    def _model(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        meta = self.meta  # read first: UserError unless the latest checkpoint was written for this config.json
        graphdef, params, batch_stats = model_state(self.train_config, self.dataset, initialise=False)
        if self.seeds is not None:
            params, batch_stats = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct((len(self.seeds), *x.shape), x.dtype), (params, batch_stats))
        params, batch_stats = checkpoint.restore_model(self.path, params, batch_stats)
        if "params_hash" in meta and checkpoint.tree_hash(params) != meta["params_hash"]:
            raise UserError(f"{self.path}: the parameters in its latest checkpoint are not the ones it saved "
                            f"(their hash differs from the checkpoint's record); the checkpoint was altered")
        return graphdef, params, batch_stats

    def model(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        """(graphdef, params, batch_stats) of the latest checkpoint, restored once; for a run of K models
        the trees are stacked [K, ...]."""
        return self._model

    @functools.cached_property
    def predict(self) -> Predictor:
        """Eval-mode (logits, embeddings) of the run's architecture on the run's normalisation."""
        return make_predictor(self.model()[0], self.data.mean, self.data.std)

    # --- logs and results ----------------------------------------------------------------------------------

    @property
    def step_log_path(self) -> Path:
        return self.path / STEP_LOG

    @property
    def epoch_log_path(self) -> Path:
        return self.path / EPOCH_LOG

    def step_log(self) -> list[dict[str, Any]]:
        """metrics.jsonl up to the latest checkpoint: lines a killed run wrote past it are not part of the run
        (its resume cuts them away)."""
        return self._log(self.step_log_path)

    def epoch_log(self) -> list[dict[str, Any]]:
        """evaluations.jsonl up to the latest checkpoint."""
        return self._log(self.epoch_log_path)

    def _log(self, path: Path) -> list[dict[str, Any]]:
        steps = self.meta["steps"] if checkpoint.latest_epoch(self.path) is not None else 0
        return [record for _, record in read_log(path) if record.get("step", steps + 1) <= steps]

    def finished_metrics(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """metrics.json when this directory holds a run of `config` that went to its end (its latest checkpoint
        is its last and metrics.json evaluates it), else None: then it starts or resumes as usual, and a rerun
        of a finished run builds no model and compiles nothing."""
        if not str(self.given).strip() or not (self.path / METRICS_FILE).is_file() \
                or checkpoint.latest_epoch(self.path) is None:
            return None
        try:
            stored, metrics = self.config, json.loads((self.path / METRICS_FILE).read_text())
            meta = checkpoint.read_meta(self.path)
        except (UserError, OSError, ValueError):
            return None  # the ordinary path reports what is wrong
        same = same_run(stored, json.loads(json.dumps(config)))
        return metrics if same and meta.get("finished") and metrics.get("steps") == meta.get("steps") else None

    def write_metrics(self, metrics: dict[str, Any], split: Split | None = None) -> Path:
        """Write metrics.json, atomically (process 0), and return its path. The caller holds the run's lock
        (`Run.claim` or `writing`). The metrics of a training run evaluated on a forget `split` go beside it
        as metrics-<split>.json (`split_name`): its metrics.json stays its training's, which a rerun of its
        train command returns."""
        own = split is None or self.kind == "unlearn"
        path = self.path / (METRICS_FILE if own else f"metrics-{split_name(split.spec, split.pairing, split.seed)}.json")
        if is_main_process():
            write_json(path, metrics)
        return path

    def save_splits(self, splits: list[Split]) -> None:
        """split.npz for the split every model forgets; splits/model<k>.npz when each has its own (process 0,
        once)."""
        if not is_main_process():
            return
        if len(splits) == 1:
            if not (self.path / SPLIT_FILE).exists():
                save_split(splits[0], self.path / SPLIT_FILE)
            return
        (self.path / MODEL_SPLITS_DIR).mkdir(exist_ok=True)
        for k, split in enumerate(splits):
            if not (self.path / MODEL_SPLITS_DIR / f"model{k}.npz").exists():
                save_split(split, self.path / MODEL_SPLITS_DIR / f"model{k}.npz")

    # --- ownership -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator["Run"]:
        """Hold this existing run's lock while reading it to write into it (evaluate, report): UserError when
        another process holds it for more than `BRIEF_WRITE` seconds (a run still going, another evaluation)."""
        lock = RunLock(self.path, wait=BRIEF_WRITE) if is_main_process() else None
        try:
            yield self
        finally:
            if lock is not None:
                lock.release()

    @classmethod
    @contextlib.contextmanager
    def claim(cls, workdir: str | Path, config: dict[str, Any]) -> Iterator["Run"]:
        """Hold `workdir` for a run of `config`: created with config.json, or accepted when it holds an
        equivalent configuration (a resume). Yields the Run, its configuration as recorded there.

        The lock is taken before anything is written and released on exit, so one process writes a run
        directory at a time. A refusal removes only what this call created, and only while it holds the lock:
        never a directory another process created or holds. In a multi-process run process 0 does this and the
        others wait for it.
        """
        if not str(workdir).strip():
            raise UserError("`workdir` is empty")
        path = Path(workdir)
        lock = _claim(path, json.loads(json.dumps(config))) if is_main_process() else None
        try:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"prepare {path}")
            yield cls(path)
        finally:
            if lock is not None:
                lock.release()


BRIEF_WRITE = 10.0
"""Seconds an evaluation of an existing run waits for another process that holds the run's lock before it
refuses: a short evaluation of another process may end meanwhile; a run still going will not."""


def split_name(spec: Any, pairing: str, seed: int) -> str:
    """A forget request as a file name: class:3,5 (default pairing, seed 0) → class-3-5-default-seed0."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(spec)) + f"-{pairing}-seed{seed}"


def check_same_source(source: Run, recorded: dict[str, Any], who: str) -> None:
    """UserError unless the training run `source` still holds the model `recorded` (its `Run.identity` when
    `who`: "<run> started from it")."""
    current = source.identity()
    if current == recorded:
        return
    changed = [f"{name} {recorded.get(name)} → {current.get(name)}" for name in ("epoch", "steps", "finished")
               if recorded.get(name) != current.get(name)]
    if not changed:
        changed = ["its configuration" if recorded.get("config_hash") != current["config_hash"] else "its parameters"]
    raise UserError(f"the original {source.path} changed since {who} ({', '.join(changed)}): its results would "
                    f"not be this original's; choose a new `workdir` to unlearn it again")


def _claim(path: Path, config: dict[str, Any]) -> RunLock:
    """Create or resume the run directory `path` for `config` and take its lock (process 0)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"workdir {path} exists and is not a directory")
    _refuse_inside_a_run(path)
    try:
        created = _make_directories(path)
        lock = RunLock(path)  # when another process holds it, nothing is removed: the directory is its
    except OSError as error:
        raise UserError(f"cannot write to workdir {path}: {error.strerror or error}") from None
    try:
        config_file = path / CONFIG_FILE
        if config_file.exists():
            stored = Run(path).config
            if "source_identity" in stored and stored["source_identity"] != config.get("source_identity"):
                check_same_source(Run(config["source"]), stored["source_identity"], f"{path} started from it")
            if not same_run(stored, config):
                raise UserError(f"{path} holds a run with another configuration; choose a new `workdir`")
            return lock
        if any(p.name != LOCK_FILE and not is_leftover(p) for p in path.iterdir()):
            raise UserError(f"workdir {path} exists and is not an empty directory")
        for leftover in path.iterdir():
            if is_leftover(leftover):
                leftover.unlink()
        write_json(config_file, config)
        return lock
    except BaseException as error:
        lock.release()
        for directory in reversed(created):  # only what this call created, and only if empty: rmdir, not rmtree
            try:
                directory.rmdir()
            except OSError:
                break
        if isinstance(error, OSError):
            raise UserError(f"cannot write to workdir {path}: {error.strerror or error}") from None
        raise


def _make_directories(path: Path) -> list[Path]:
    """Create `path` and its missing parents; returns those this call created itself, outermost first (a
    directory another process creates meanwhile is not this call's)."""
    created = []
    for directory in reversed([path, *path.parents]):
        if directory.exists():
            continue
        try:
            directory.mkdir()
            created.append(directory)
        except FileExistsError:
            pass
    return created


def _refuse_inside_a_run(path: Path) -> None:
    """UserError when `path` lies inside another run's directory (its checkpoints, its splits, ...): writing
    there would damage that run."""
    for parent in Path(os.path.realpath(path)).parents:
        try:
            config = json.loads((parent / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            continue
        if is_run_config(config):
            raise UserError(f"workdir {path} is inside the run {parent}; choose a directory of its own")


def as_run(run: "str | Path | Run") -> Run:
    """`run` itself, or the Run of a run directory's path."""
    return run if isinstance(run, Run) else Run(run)
