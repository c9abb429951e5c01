"""Where datasets come from: the built-in loaders, the user's registered datasets, and import paths.

`load_dataset(name)` resolves, in this order: a dataset registered with `register_dataset` (or by a plugin),
the built-ins ``digits`` (scikit-learn's bundled copy, always available offline) and ``fashion_mnist``
(gzip'd IDX files, e.g. from Debian's ``dataset-fashion-mnist``), an import path ``module:function`` (the
function returns a `Dataset`; the module must be importable from the working directory or the Python path),
and any other name as a TFDS dataset prepared in array_record format.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxunlearn.data.dataset import Dataset, channel_mean_std, stratified_mask
from jaxunlearn.errors import UserError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "fashion_mnist")
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Normalisation constants used by the official Contrastive Unlearning code.
_FASHION_MNIST_MEAN, _FASHION_MNIST_STD = (0.2860,), (0.3530,)
_OFFICIAL_CIFAR_MEAN, _OFFICIAL_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_OFFICIAL_CIFAR_STATS_DATASETS = ("cifar10", "svhn_cropped")

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0

_IDX_UBYTE = 0x08
_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_FASHION_MNIST_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass a `data_dir`"


DatasetFactory = Callable[[str | None], Dataset]
"""(data_dir or None) → Dataset: how a registered dataset is built."""

DATASETS: dict[str, DatasetFactory] = {}
"""The datasets registered by name (`register_dataset`), besides the built-ins."""

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
"""A dataset given as an import path: "my_module:make_dataset" or "package.module:function"."""


def register_dataset(name: str, factory: DatasetFactory, *, replace: bool = False) -> DatasetFactory:
    """Make `factory(data_dir)` the dataset `name` for every command and library call (`TrainConfig(dataset=
    name)`, `--dataset name` once the module that registers it is loaded with `--plugin`). A name already
    registered, or a built-in, is refused unless `replace` (a notebook cell run again)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise UserError(f"a dataset's name is letters, digits and _, got {name!r}")
    if name in BUILTIN_DATASETS:
        raise UserError(f"{name} is a built-in dataset; give yours a name of its own")
    if name in DATASETS and not replace:
        raise UserError(f"a dataset named {name!r} is registered already; pass replace=True to replace it")
    DATASETS[name] = factory
    return factory


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """The dataset `name` (see the module docstring for how a name resolves), checked (`check_dataset`).

    ``data_dir`` is ignored for ``digits``, is the IDX directory for ``fashion_mnist`` (default
    ``/usr/share/datasets/fashion-mnist``), the TFDS data directory for a TFDS name, and handed to a registered
    or imported factory.
    """
    if name in DATASETS:
        dataset = DATASETS[name](data_dir)
    elif name == "digits":
        dataset = _load_digits()
    elif name == "fashion_mnist":
        dataset = _load_fashion_mnist(Path(data_dir or DEFAULT_FASHION_MNIST_DIR))
    elif IMPORT_PATH.fullmatch(name):
        dataset = _import_dataset(name, data_dir)
    else:
        dataset = _load_tfds(name, data_dir)
    if not isinstance(dataset, Dataset):
        raise UserError(f"dataset {name} gave a {type(dataset).__name__}, not a jaxunlearn Dataset")
    return dataset


def _import_dataset(path: str, data_dir: str | None) -> Dataset:
    """The Dataset the function at import path "module:function" returns (called with `data_dir` if it
    takes an argument)."""
    module_name, function_name = path.split(":")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's code: any error is its own, in one line
        raise UserError(f"dataset {path}: cannot import {module_name} ({type(error).__name__}: {error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"dataset {path}: {module_name} has no function {function_name}")
    try:
        takes_data_dir = bool(inspect.signature(function).parameters)
        return function(data_dir) if takes_data_dir else function()
    except UserError:
        raise
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"dataset {path} failed: {type(error).__name__}: {detail}") from None


# --- digits ---------------------------------------------------------------------------


def _load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits; stratified 1,438 train / 359 test split.

    Per class (seed-0 permutation), round(20%) of its images go to test; both splits
    keep the original order. Pixel values 0..16 map to uint8 via round(v * 255 / 16).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    test_mask = stratified_mask(labels, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    train_images = images[~test_mask]
    mean, std = channel_mean_std(train_images)
    return Dataset(
        name="digits",
        train_images=train_images,
        train_labels=labels[~test_mask],
        test_images=images[test_mask],
        test_labels=labels[test_mask],
        num_classes=10,
        mean=mean,
        std=std,
    )


# --- fashion_mnist (IDX files) ----------------------------------------------------------


def _load_fashion_mnist(directory: Path) -> Dataset:
    """60,000 train / 10,000 test 28x28x1 images from gzip'd IDX files, in file order."""
    if not directory.is_dir():
        raise UserError(f"Fashion-MNIST directory not found: {directory}; {_FASHION_MNIST_HINT}")
    arrays = {
        key: _read_idx_gz(directory / filename) for key, filename in _FASHION_MNIST_FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, "
                f"labels {labels.shape}"
            )
        if labels.max(initial=0) >= 10:
            raise UserError(f"Fashion-MNIST {split} labels in {directory} exceed 9")
    return Dataset(
        name="fashion_mnist",
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        num_classes=10,
        mean=_FASHION_MNIST_MEAN,
        std=_FASHION_MNIST_STD,
    )


def _read_idx_gz(path: Path) -> np.ndarray:
    """Parse a gzip'd unsigned-byte IDX file into a uint8 array of its declared shape.

    Header: two zero bytes, type code 0x08 (ubyte), number of dims D, then D big-endian
    uint32 sizes; the payload must hold exactly prod(sizes) bytes.
    """
    try:
        with gzip.open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        raise UserError(f"IDX file not found: {path}; {_FASHION_MNIST_HINT}") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot read gzip'd IDX file {path}: {error}") from None
    if len(content) < 4 or content[:2] != b"\0\0" or content[2] != _IDX_UBYTE or content[3] == 0:
        raise UserError(
            f"bad IDX magic number {content[:4].hex()!r} in {path} (expected 000008<dims>); "
            f"{_FASHION_MNIST_HINT}"
        )
    num_dims = content[3]
    header_size = 4 + 4 * num_dims
    if len(content) < header_size:
        raise UserError(f"truncated IDX header in {path}")
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", num_dims, offset=4))
    payload = np.frombuffer(content, np.uint8, offset=header_size)
    if payload.size != np.prod(shape):
        raise UserError(
            f"IDX file {path} declares shape {shape} ({np.prod(shape)} bytes) "
            f"but holds {payload.size} bytes"
        )
    return payload.reshape(shape).copy()  # writable, independent of `content`


# --- TFDS (array_record data sources) ---------------------------------------------------


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    """Read the "train" and "test" splits of a prepared TFDS image-classification dataset."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"unknown dataset {name!r}: not built in ({', '.join(BUILTIN_DATASETS)}), not registered in this "
            "process (load the module that registers it with `plugin`), not an import path module:function, and "
            "no TFDS dataset prepared under `data_dir`"
        ) from None
    features = builder.info.features
    image_feature = features["image"] if "image" in features else None
    label_feature = features["label"] if "label" in features else None
    if not (
        isinstance(image_feature, tfds.features.Image)
        and isinstance(label_feature, tfds.features.ClassLabel)
        and None not in image_feature.shape
    ):
        raise UserError(
            f"TFDS dataset {name!r} is not a fixed-size image classification dataset "
            "(needs an 'image' feature of fixed shape and a 'label' class feature)"
        )
    train_images, train_labels = _read_tfds_split(name, "train", data_dir, builder.data_dir)
    test_images, test_labels = _read_tfds_split(name, "test", data_dir, builder.data_dir)
    if name in _OFFICIAL_CIFAR_STATS_DATASETS:
        mean, std = _OFFICIAL_CIFAR_MEAN, _OFFICIAL_CIFAR_STD
    else:
        mean, std = channel_mean_std(train_images)
    return Dataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=label_feature.num_classes,
        mean=mean,
        std=std,
    )


def _read_tfds_split(name: str, split: str, data_dir: str | None, prepared_dir: str) -> tuple["TfdsImages", np.ndarray]:
    """(the split's images read by index, int32 [N] labels), in source-file order. One pass reads every
    record's label and id; the images stay in the ArrayRecord files, decoded when a batch reads them."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, ValueError, KeyError, OSError) as error:
        raise UserError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in array_record format "
            f"under {prepared_dir}; prepare it with "
            f"download_and_prepare(file_format='array_record') ({type(error).__name__})"
        ) from None
    if len(source) == 0:
        raise UserError(f"TFDS dataset {name!r} has an empty {split!r} split under {prepared_dir}")
    labels, ids = [], []
    for index in range(len(source)):  # keeping only the label and the id of each record
        record = source[index]
        labels.append(record["label"])
        ids.append({"id": record.get("id", "")})
    order = _source_order(ids, split)
    return TfdsImages(source, order), np.asarray(labels, np.int32)[order]


class TfdsImages:
    """A TFDS split's images in source-file order (`order`: file position → record), decoded when read."""

    def __init__(self, source: Any, order: np.ndarray):
        self.source, self.order = source, np.asarray(order, np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.source[int(self.order[index])]["image"], np.uint8)


def _source_order(records: Sequence[dict[str, Any]], split: str) -> np.ndarray:
    """Permutation putting records in original source-file order.

    When every record has an ``id`` of the form ``<split>_<int>`` (cifar10:
    b"train_00017"), sort by that integer; otherwise keep the record order.
    """
    pattern = re.compile(rf"{re.escape(split)}_(\d+)")
    matches = [pattern.fullmatch(_as_text(record.get("id", ""))) for record in records]
    if not all(matches):
        return np.arange(len(records))
    return np.argsort([int(match.group(1)) for match in matches], kind="stable")


def _as_text(value: Any) -> str:
    """A TFDS text feature (bytes, str or 0-d array) as str."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)
