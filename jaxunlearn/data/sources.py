"""Image-classification datasets loaded whole into host memory as uint8 arrays.

Built-in sources: ``digits`` (scikit-learn's bundled copy, always available offline)
and ``fashion_mnist`` (gzip'd IDX files, e.g. from Debian's ``dataset-fashion-mnist``).
Any other name is read from a TFDS dataset prepared in array_record format.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


@dataclass(frozen=True, eq=False)
class Dataset:
    """Whole dataset held in host memory.

    Images are uint8 [N, H, W, C]; labels int32 [N]. ``mean``/``std`` are per-channel,
    in [0, 1] pixel units (applied after dividing by 255). ``validation_images``/``validation_labels``
    [V, ...]: training images held out of the train set (`stratified_subset`), None when none are.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_dataset(self)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.train_images.shape[1:])


def check_dataset(dataset: Dataset) -> None:
    """UserError unless `dataset` is what every run reads: uint8 images [N, H, W, C] of one shape in every set,
    integer labels [N] in [0, num_classes) as many as the images, non-empty train and test sets, and a finite
    mean and a positive std per channel. Float images are refused, not guessed at: scale them to uint8 first
    (`np.round(images * 255).astype(np.uint8)` for values in [0, 1])."""
    name = dataset.name
    if not (isinstance(dataset.num_classes, (int, np.integer)) and dataset.num_classes >= 2):
        raise UserError(f"dataset {name}: num_classes must be an integer >= 2, got {dataset.num_classes!r}")
    sets = [("train", dataset.train_images, dataset.train_labels), ("test", dataset.test_images, dataset.test_labels)]
    if (dataset.validation_images is None) != (dataset.validation_labels is None):
        raise UserError(f"dataset {name}: validation images and labels go together")
    if dataset.validation_images is not None:
        sets.append(("validation", dataset.validation_images, dataset.validation_labels))
    shape = None
    for part, images, labels in sets:
        dtype, image_shape = getattr(images, "dtype", None), tuple(getattr(images, "shape", ()))
        if dtype != np.uint8:
            raise UserError(f"dataset {name}: {part} images must be uint8 in [0, 255], got {dtype}"
                            + ("; scale float images with np.round(images * 255).astype(np.uint8)"
                               if dtype is not None and np.issubdtype(dtype, np.floating) else ""))
        if len(image_shape) != 4:
            raise UserError(f"dataset {name}: {part} images must be [N, H, W, C], got shape {image_shape}")
        if shape is not None and image_shape[1:] != shape:
            raise UserError(f"dataset {name}: {part} images are {image_shape[1:]}, train images {shape}; a model "
                            f"needs one shape")
        shape = shape or image_shape[1:]
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"dataset {name}: {part} labels must be integers [N], got {labels.dtype} "
                            f"{labels.shape}")
        if len(labels) != image_shape[0]:
            raise UserError(f"dataset {name}: {image_shape[0]} {part} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= dataset.num_classes):
            raise UserError(f"dataset {name}: {part} labels must be in [0, {dataset.num_classes}), got "
                            f"{labels.min()}..{labels.max()}")
    if len(dataset.train_labels) == 0 or len(dataset.test_labels) == 0:
        raise UserError(f"dataset {name}: the train or the test set is empty")
    channels = shape[-1]
    for what, values in (("mean", dataset.mean), ("std", dataset.std)):
        values = np.asarray(values, np.float64)
        if values.shape != (channels,) or not np.all(np.isfinite(values)):
            raise UserError(f"dataset {name}: {what} must be {channels} finite numbers (one per channel), got "
                            f"{tuple(np.atleast_1d(values).tolist())}")
    if np.any(np.asarray(dataset.std, np.float64) <= 0):
        raise UserError(f"dataset {name}: std must be positive, got {tuple(dataset.std)}")


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load ``name`` whole into memory.

    ``data_dir`` is ignored for ``digits``, is the IDX directory for ``fashion_mnist``
    (default ``/usr/share/datasets/fashion-mnist``) and the TFDS data directory otherwise.
    """
    if name == "digits":
        dataset = _load_digits()
    elif name == "fashion_mnist":
        dataset = _load_fashion_mnist(Path(data_dir or DEFAULT_FASHION_MNIST_DIR))
    else:
        dataset = _load_tfds(name, data_dir)
    return dataset


def stratified_subset(dataset: Dataset, train_size: int | None, test_size: int | None,
                      validation_size: int | None = None) -> Dataset:
    """The dataset reduced to about `train_size` train and `test_size` test images (None: all), with about
    `validation_size` training images held out as the validation set (None: none).

    Every class keeps round(size/N · its count) images, chosen by a fixed permutation (seed 0) and kept in
    their original order, so a subset is part of the dataset's definition: the same for every run and seed.
    The validation set is drawn the same way (seed 1) from the training images the train subset leaves out,
    or from all of them without a subset (the train set is then the rest): a train subset is the same with
    or without it. The normalisation stays the full dataset's. UserError for sizes outside [1, N] and a
    validation set larger than the images left to it.
    """
    labels = dataset.train_labels
    keep = np.ones(len(labels), bool)
    if train_size is not None:
        if not 1 <= train_size <= len(labels):
            raise UserError(f"train size must be between 1 and {len(labels)}, got {train_size}")
        keep = _stratified_test_mask(labels, train_size / len(labels), seed=0)
    sets = {}
    if validation_size is not None:
        pool = np.flatnonzero(~keep) if train_size is not None else np.arange(len(labels))
        most = len(pool) - (train_size is None)  # without a subset, at least one image stays to train on
        if not 1 <= validation_size <= most:
            raise UserError(f"validation size must be between 1 and {most}, got {validation_size}")
        held = pool[_stratified_test_mask(labels[pool], validation_size / len(pool), seed=1)]
        keep[held] = False
        sets.update(validation_images=dataset.train_images[held], validation_labels=labels[held])
    sets.update(train_images=dataset.train_images[keep], train_labels=labels[keep])
    if test_size is not None:
        if not 1 <= test_size <= len(dataset.test_labels):
            raise UserError(f"test size must be between 1 and {len(dataset.test_labels)}, got {test_size}")
        kept = _stratified_test_mask(dataset.test_labels, test_size / len(dataset.test_labels), seed=0)
        sets.update(test_images=dataset.test_images[kept], test_labels=dataset.test_labels[kept])
    return dataclasses.replace(dataset, **sets)


def _channel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 [N, H, W, C] images in [0, 1] units.

    Counts pixel values per channel (256 bins) in blocks, so memory stays small.
    """
    num_channels = images.shape[-1]
    counts = np.zeros((num_channels, 256), np.int64)
    for start in range(0, len(images), 1024):
        pixels = images[start : start + 1024].reshape(-1, num_channels)
        for channel in range(num_channels):
            counts[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256) / 255.0
    totals = counts.sum(axis=1)
    mean = counts @ values / totals
    variance = counts @ values**2 / totals - mean**2
    return tuple(mean.tolist()), tuple(np.sqrt(np.maximum(variance, 0.0)).tolist())


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
    test_mask = _stratified_test_mask(labels, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    train_images = images[~test_mask]
    mean, std = _channel_mean_std(train_images)
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


def _stratified_test_mask(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Bool [N]: round(test_fraction * count) randomly chosen images of every class."""
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_mask[members[: round(test_fraction * len(members))]] = True
    return test_mask


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
            f"unknown dataset {name!r}; choose {', '.join(BUILTIN_DATASETS)} "
            "or any TFDS image dataset prepared under `data_dir`"
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
        mean, std = _channel_mean_std(train_images)
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


def _read_tfds_split(
    name: str, split: str, data_dir: str | None, prepared_dir: str
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, H, W, C] images, int32 [N] labels) of one split, in source-file order."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, ValueError, KeyError, OSError) as error:
        raise UserError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in array_record format "
            f"under {prepared_dir}; prepare it with "
            f"download_and_prepare(file_format='array_record') ({type(error).__name__})"
        ) from None
    records = [source[index] for index in range(len(source))]
    if not records:
        raise UserError(f"TFDS dataset {name!r} has an empty {split!r} split under {prepared_dir}")
    records = [records[index] for index in _source_order(records, split)]
    images = np.stack([np.asarray(record["image"], np.uint8) for record in records])
    labels = np.array([record["label"] for record in records], np.int32)
    return images, labels


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
