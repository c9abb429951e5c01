"""The one dataset interface every run reads: images by index from any random-access source, labels in memory.

A set's images are an `ImageSource`: a uint8 numpy array [N, H, W, C] (in memory, or a `np.memmap` read row
by row), or any object with `__len__` and `__getitem__(i)` returning one uint8 image [H, W, C] or a record with
an "image" (a TFDS data source over ArrayRecord is one). Labels are int [N] arrays in memory: splits, plans and
evaluations read them whole. `Dataset.from_arrays` and `Dataset.from_source` build one from the user's data and
fill in what is not given (the number of classes, the per-channel mean and std, computed in one streamed pass);
every Dataset is checked when it is made (`check_dataset`), so a run never misreads its data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from jaxunlearn.errors import UserError


class ImageSource(Protocol):
    """Random access to a set's images: len(source) and source[i] → uint8 [H, W, C] (or {"image": ...})."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


FINGERPRINT_IMAGES = 1024
"""Images per set a fingerprint hashes when a set is larger (evenly spaced); smaller sets are hashed whole."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train, test and (optionally) validation images with their labels, the number of classes and the
    per-channel normalisation: batches are (x / 255 − mean) / std.

    train_images, test_images, validation_images: `ImageSource`s (uint8 [N, H, W, C] arrays, or objects read
    by index); train_labels, test_labels, validation_labels: int arrays [N]; validation_*: training images
    held out of the train set (`stratified_subset`), None when none are.
    """

    name: str
    train_images: Any
    train_labels: np.ndarray
    test_images: Any
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation_images: Any = None
    validation_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        for field in ("train_labels", "test_labels", "validation_labels"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, np.asarray(getattr(self, field)))
        object.__setattr__(self, "mean", tuple(float(v) for v in np.atleast_1d(self.mean)))
        object.__setattr__(self, "std", tuple(float(v) for v in np.atleast_1d(self.std)))
        check_dataset(self)

    @classmethod
    def from_arrays(cls, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                    test_labels: np.ndarray, *, num_classes: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    name: str = "arrays") -> Dataset:
        """A dataset of the user's arrays: uint8 images [N, H, W, C] and integer labels [N] in [0, C).

        num_classes: C (default: the largest label + 1). mean, std: per channel in [0, 1] units (default:
        computed from the training images). Arrays are used as they are, not copied: a `np.memmap` stays on
        disk and is read by the rows each batch needs.
        """
        return cls.from_source(train_images, test_images, train_labels=train_labels, test_labels=test_labels,
                               num_classes=num_classes, mean=mean, std=std, name=name)

    @classmethod
    def from_source(cls, train: ImageSource, test: ImageSource, *, train_labels: np.ndarray | None = None,
                    test_labels: np.ndarray | None = None, num_classes: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    name: str = "source") -> Dataset:
        """A dataset over random-access sources (`ImageSource`): arrays, memmaps, a TFDS data source, or the
        user's own object. Labels not given are read from the records' "label" in one pass; the mean and std
        not given are computed from the training images in one streamed pass (bounded memory)."""
        labels = [np.asarray(given) if given is not None else read_labels(source)
                  for given, source in ((train_labels, train), (test_labels, test))]
        for part, values in zip(("train", "test"), labels):
            if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
                raise UserError(f"dataset {name}: {part} labels must be integers [N], got {values.dtype} "
                                f"{values.shape}")
        if num_classes is None:
            num_classes = int(max(values.max(initial=-1) for values in labels)) + 1
        if mean is None or std is None:
            check_source(train, f"dataset {name}: train images")
            computed_mean, computed_std = channel_mean_std(train)
            mean = computed_mean if mean is None else mean
            std = computed_std if std is None else std
        return cls(name=name, train_images=train, train_labels=labels[0], test_images=test, test_labels=labels[1],
                   num_classes=num_classes, mean=tuple(mean), std=tuple(std))

    @functools.cached_property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return source_shape(self.train_images)[1:]

    @property
    def in_memory(self) -> bool:
        """Whether every set's images are numpy arrays held in memory (not memmaps, not read by index)."""
        return all(isinstance(images, np.ndarray) and not isinstance(images, np.memmap)
                   for images in (self.train_images, self.test_images, self.validation_images) if images is not None)

    @property
    def nbytes(self) -> int:
        """The bytes of every set's uint8 images: what a device holding the whole dataset needs."""
        return sum(len(images) for images in (self.train_images, self.test_images, self.validation_images)
                   if images is not None) * int(np.prod(self.image_shape))

    def images(self, where: str) -> Any:
        """The `ImageSource` of "train", "test" or "validation"."""
        return {"train": self.train_images, "test": self.test_images, "validation": self.validation_images}[where]

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 identifying the dataset's content: every label, the shapes, the normalisation and the bytes of
        each set's images (of `FINGERPRINT_IMAGES` evenly spaced ones in a larger set). A run records it, so a
        dataset rebuilt later (the user's own, by its import path) is checked to be the same data."""
        digest = hashlib.sha256(f"{self.num_classes}|{self.mean}|{self.std}".encode())
        for where in ("train", "test", "validation"):
            images = self.images(where)
            if images is None:
                continue
            count = len(images)
            chosen = np.unique(np.linspace(0, count - 1, min(count, FINGERPRINT_IMAGES)).astype(np.int64))
            digest.update(f"{where}|{source_shape(images)}|".encode())
            digest.update(np.asarray(getattr(self, f"{where}_labels"), "<i8").tobytes())
            digest.update(np.ascontiguousarray(read_images(images, chosen)).tobytes())
        return digest.hexdigest()


def read_images(source: Any, indices: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, C]: the images `indices` of `source`, read by index (a memmap reads only those rows)."""
    indices = np.asarray(indices, np.int64)
    if isinstance(source, np.ndarray):
        return np.asarray(source[indices])
    return np.stack([_image(source[int(index)]) for index in indices]) if len(indices) else \
        np.zeros((0, *source_shape(source)[1:]), np.uint8)


def read_labels(source: Any) -> np.ndarray:
    """int64 [N]: the "label" of every record of a source whose records carry one, in one pass."""
    try:
        return np.array([int(np.asarray(source[i]["label"])) for i in range(len(source))], np.int64)
    except (TypeError, KeyError, IndexError):
        raise UserError("labels are needed: give them, or a source whose records hold a \"label\"") from None


def _image(record: Any) -> np.ndarray:
    return np.asarray(record["image"] if isinstance(record, dict) else record)


def source_shape(source: Any) -> tuple[int, ...]:
    """(N, H, W, C) of an `ImageSource` (its first record's shape for a source read by index)."""
    if isinstance(source, np.ndarray):
        return tuple(source.shape)
    return (len(source), *_image(source[0]).shape) if len(source) else (0,)


def source_dtype(source: Any) -> Any:
    return source.dtype if isinstance(source, np.ndarray) else (_image(source[0]).dtype if len(source) else None)


def check_source(source: Any, what: str) -> None:
    """UserError unless `source` is random access to uint8 images [H, W, C] of one shape, as far as its first
    and last records tell (a source read by index is checked again record by record as batches read it)."""
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise UserError(f"{what} must be a uint8 array [N, H, W, C] or an object with __len__ and __getitem__, "
                        f"got {type(source).__name__}")
    shape, dtype = source_shape(source), source_dtype(source)
    if dtype != np.uint8:
        raise UserError(f"{what} must be uint8 in [0, 255], got {dtype}"
                        + ("; scale float images with np.round(images * 255).astype(np.uint8)"
                           if dtype is not None and np.issubdtype(dtype, np.floating) else ""))
    if len(shape) != 4:
        raise UserError(f"{what} must be [N, H, W, C], got shape {shape}")
    if not isinstance(source, np.ndarray):
        last = _image(source[len(source) - 1])
        if last.shape != shape[1:] or last.dtype != np.uint8:
            raise UserError(f"{what}: record {len(source) - 1} is {last.dtype}{list(last.shape)}, record 0 "
                            f"uint8{list(shape[1:])}; every record must have one shape")


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
        if hasattr(images, "__len__") and len(images) == 0:
            raise UserError(f"dataset {name}: the {part} set is empty")
        check_source(images, f"dataset {name}: {part} images")
        image_shape = source_shape(images)
        if shape is not None and image_shape[1:] != shape:
            raise UserError(f"dataset {name}: {part} images are {image_shape[1:]}, train images {shape}; a model "
                            f"needs one shape")
        shape = shape or image_shape[1:]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"dataset {name}: {part} labels must be integers [N], got {labels.dtype} "
                            f"{labels.shape}")
        if len(labels) != image_shape[0]:
            raise UserError(f"dataset {name}: {image_shape[0]} {part} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            raise UserError(f"dataset {name}: {part} labels must be in [0, {dataset.num_classes}), got "
                            f"{labels.min()}..{labels.max()}")
    for what, values in (("mean", dataset.mean), ("std", dataset.std)):
        if len(values) != shape[-1] or not np.all(np.isfinite(values)):
            raise UserError(f"dataset {name}: {what} must be {shape[-1]} finite numbers (one per channel), got "
                            f"{values}")
    if min(dataset.std) <= 0:
        raise UserError(f"dataset {name}: std must be positive, got {dataset.std}")


def check_classes_present(dataset: Dataset, classes: Sequence[int]) -> None:
    """UserError unless every class to forget has training images (class forgetting needs them)."""
    missing = [c for c in classes if not np.any(dataset.train_labels == c)]
    if missing:
        raise UserError(f"dataset {dataset.name}: class {', '.join(map(str, missing))} has no training images to "
                        f"forget")


def channel_mean_std(images: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 [N, H, W, C] images in [0, 1] units, in one pass over blocks of
    1,024 images (pixel values counted in 256 bins), so memory stays small for a source of any size."""
    num_channels = source_shape(images)[-1]
    counts = np.zeros((num_channels, 256), np.int64)
    for start in range(0, len(images), 1024):
        block = read_images(images, np.arange(start, min(start + 1024, len(images))))
        pixels = block.reshape(-1, num_channels)
        for channel in range(num_channels):
            counts[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256) / 255.0
    totals = counts.sum(axis=1)
    mean = counts @ values / totals
    variance = counts @ values**2 / totals - mean**2
    return tuple(mean.tolist()), tuple(np.sqrt(np.maximum(variance, 0.0)).tolist())


class NpyFile:
    """The images of a .npy file (uint8 [N, H, W, C]) read row by row with `os.pread`: nothing is mapped into
    the process, so reading a file larger than memory keeps the resident memory at what the batches hold (a
    `np.memmap` would count every page it touched). Safe to read from several threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            with open(self.path, "rb") as file:
                version = np.lib.format.read_magic(file)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(file)
                self.offset = file.tell()
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read the .npy file {path}: {error}") from None
        if fortran or dtype != np.uint8 or len(shape) != 4:
            raise UserError(f"{path} must hold uint8 images [N, H, W, C] in C order, got {dtype} {shape}")
        self.shape, self.dtype = tuple(shape), np.dtype(np.uint8)
        self.row_bytes = int(np.prod(shape[1:]))
        self.descriptor = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(index)
        data = os.pread(self.descriptor, self.row_bytes, self.offset + index * self.row_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.shape[1:])

    def __del__(self) -> None:
        if hasattr(self, "descriptor"):
            os.close(self.descriptor)


class Rows:
    """The rows `indices` of a source, read by index when read (a subset that copies nothing)."""

    def __init__(self, source: Any, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]


def take(source: Any, indices: np.ndarray) -> Any:
    """The rows `indices` of a source: copied when it is an array in memory, a `Rows` view otherwise."""
    if isinstance(source, np.ndarray) and not isinstance(source, np.memmap):
        return source[indices]
    return Rows(source, indices)


def stratified_subset(dataset: Dataset, train_size: int | None, test_size: int | None,
                      validation_size: int | None = None) -> Dataset:
    """The dataset reduced to about `train_size` train and `test_size` test images (None: all), with about
    `validation_size` training images held out as the validation set (None: none).

    Every class keeps round(size/N · its count) images, chosen by a fixed permutation (seed 0) and kept in
    their original order, so a subset is part of the dataset's definition: the same for every run and seed.
    The validation set is drawn the same way (seed 1) from the training images the train subset leaves out,
    or from all of them without a subset (the train set is then the rest): a train subset is the same with
    or without it. The normalisation stays the full dataset's. A subset of a source read by index reads
    through it (`take`). UserError for sizes outside [1, N] and a validation set larger than the images left.
    """
    labels = dataset.train_labels
    keep = np.ones(len(labels), bool)
    if train_size is not None:
        if not 1 <= train_size <= len(labels):
            raise UserError(f"train size must be between 1 and {len(labels)}, got {train_size}")
        keep = stratified_mask(labels, train_size / len(labels), seed=0)
    sets = {}
    if validation_size is not None:
        pool = np.flatnonzero(~keep) if train_size is not None else np.arange(len(labels))
        most = len(pool) - (train_size is None)  # without a subset, at least one image stays to train on
        if not 1 <= validation_size <= most:
            raise UserError(f"validation size must be between 1 and {most}, got {validation_size}")
        held = pool[stratified_mask(labels[pool], validation_size / len(pool), seed=1)]
        keep[held] = False
        sets.update(validation_images=take(dataset.train_images, held), validation_labels=labels[held])
    kept = np.flatnonzero(keep)
    sets.update(train_images=take(dataset.train_images, kept), train_labels=labels[kept])
    if test_size is not None:
        if not 1 <= test_size <= len(dataset.test_labels):
            raise UserError(f"test size must be between 1 and {len(dataset.test_labels)}, got {test_size}")
        chosen = np.flatnonzero(stratified_mask(dataset.test_labels, test_size / len(dataset.test_labels), seed=0))
        sets.update(test_images=take(dataset.test_images, chosen), test_labels=dataset.test_labels[chosen])
    return dataclasses.replace(dataset, **sets)


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool [N]: round(fraction * count) randomly chosen images of every class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        mask[members[: round(fraction * len(members))]] = True
    return mask
