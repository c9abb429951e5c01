"""Forget/retain splits of the training set, and their tamper-evident .npz files."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from jaxunlearn.errors import UserError
from jaxunlearn.files import atomic_write

Pairing = Literal["default", "official"]
PAIRINGS: tuple[str, ...] = get_args(Pairing)
_FORGET_SYNTAX = "expected 'class:<c>[,<c>...]' or 'random:<N>'"


@dataclass(frozen=True)
class ForgetSpec:
    """What to forget: whole classes (kind "class") or ``count`` random samples (kind "random").

    ``classes`` is stored sorted, so equal forget sets compare (and hash) equal.
    """

    kind: Literal["class", "random"]
    classes: tuple[int, ...] = ()
    count: int = 0

    def __post_init__(self) -> None:
        if self.kind == "class":
            if not self.classes or self.count:
                raise UserError(f"a class forget spec needs classes and no count, got {self!r}")
            if len(set(self.classes)) != len(self.classes):
                raise UserError(f"duplicate classes in forget spec: {self.classes}")
            object.__setattr__(self, "classes", tuple(sorted(self.classes)))
        elif self.kind == "random":
            if self.classes:
                raise UserError(f"a random forget spec takes no classes, got {self.classes}")
            if self.count <= 0:
                raise UserError(f"random:N needs N > 0, got {self.count}")
        else:
            raise UserError(f"unknown forget kind {self.kind!r}; choose 'class' or 'random'")

    @property
    def mode(self) -> Literal["class", "sample"]:
        """Unlearning mode: "class" for class forgetting, "sample" for random samples."""
        return "class" if self.kind == "class" else "sample"

    def __str__(self) -> str:
        if self.kind == "class":
            return "class:" + ",".join(str(c) for c in self.classes)
        return f"random:{self.count}"


def parse_forget(text: str) -> ForgetSpec:
    """Parse "class:5", "class:3,5" or "random:500" (inverse of ``str(ForgetSpec)``)."""
    class_match = re.fullmatch(r"class:(\d+(?:,\d+)*)", text)
    if class_match:
        return ForgetSpec("class", classes=tuple(int(c) for c in class_match.group(1).split(",")))
    random_match = re.fullmatch(r"random:(\d+)", text)
    if random_match:
        return ForgetSpec("random", count=int(random_match.group(1)))
    raise UserError(f"invalid forget spec {text!r}; {_FORGET_SYNTAX}")


@dataclass(frozen=True, eq=False)
class Split:
    """Indices into the TRAIN set (sorted ascending, int64), plus what produced them.

    ``forget`` [F] and ``retain`` [N - F] are disjoint and together cover 0..N-1.
    """

    forget: np.ndarray
    retain: np.ndarray
    spec: ForgetSpec
    pairing: Pairing
    seed: int

    def content_hash(self) -> str:
        """SHA-256 hex digest over spec, pairing, seed and both index arrays."""
        digest = hashlib.sha256()
        header = f"{self.spec}|{self.pairing}|{self.seed}|{self.forget.size}|{self.retain.size}"
        digest.update(header.encode())
        digest.update(self.forget.astype("<i8").tobytes())
        digest.update(self.retain.astype("<i8").tobytes())
        return digest.hexdigest()

    def forget_test_mask(self, test_labels: np.ndarray) -> np.ndarray:
        """Bool [M]: test images of forgotten classes (all False in sample mode)."""
        if self.spec.mode == "sample":
            return np.zeros(len(test_labels), bool)
        return np.isin(test_labels, self.spec.classes)


def make_split(
    spec: ForgetSpec,
    train_labels: np.ndarray,
    num_classes: int,
    *,
    pairing: Pairing = "default",
    seed: int = 0,
) -> Split:
    """Split train indices 0..N-1 (``train_labels`` int [N]) into forget and retain sets.

    default:  class:c,... → every train image of those classes;
              random:N → N distinct indices drawn with ``np.random.default_rng(seed)``.
    official: class:c,... → every image of each class except its last (highest index);
              random:N → indices 0..N-1 (seed ignored). Matches the official code.
    """
    if pairing not in PAIRINGS:
        raise UserError(f"unknown pairing {pairing!r}; choose {', '.join(PAIRINGS)}")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    if spec.kind == "class":
        forget = _class_forget_indices(spec.classes, train_labels, num_classes, pairing)
    else:
        forget = _random_forget_indices(spec.count, len(train_labels), pairing, seed)
    retain = np.setdiff1d(np.arange(len(train_labels), dtype=np.int64), forget, assume_unique=True)
    return Split(forget=forget, retain=retain, spec=spec, pairing=pairing, seed=seed)


def _class_forget_indices(
    classes: tuple[int, ...], train_labels: np.ndarray, num_classes: int, pairing: Pairing
) -> np.ndarray:
    """Sorted int64 indices of the forgotten classes' train images (official: minus each last)."""
    out_of_range = [c for c in classes if not 0 <= c < num_classes]
    if out_of_range:
        raise UserError(f"forget classes {out_of_range} out of range [0, {num_classes})")
    if len(classes) == num_classes:
        raise UserError(f"cannot forget all {num_classes} classes: nothing would be retained")
    per_class = []
    for c in classes:
        members = np.flatnonzero(train_labels == c)
        if pairing == "official":
            members = members[:-1]  # the official code keeps each class's last image
        if members.size == 0:
            raise UserError(f"class {c} has no training images to forget (pairing {pairing})")
        per_class.append(members)
    return np.sort(np.concatenate(per_class)).astype(np.int64)


def _random_forget_indices(count: int, num_train: int, pairing: Pairing, seed: int) -> np.ndarray:
    """Sorted int64 indices: the first ``count`` (official) or a seeded random choice."""
    if count >= num_train:
        raise UserError(f"random:{count} must be smaller than the {num_train} training images")
    if pairing == "official":
        return np.arange(count, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(num_train, size=count, replace=False)
    return np.sort(chosen).astype(np.int64)


def _save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to an .npz at ``path`` atomically."""
    atomic_write(path, lambda file: np.savez(file, **arrays), "wb")


def save_split(split: Split, path: str | os.PathLike) -> None:
    """Write ``split`` to an .npz at ``path`` atomically (temp file + os.replace)."""
    _save_npz(
        path,
        forget=split.forget,
        retain=split.retain,
        spec=np.array(str(split.spec)),
        pairing=np.array(split.pairing),
        seed=np.array(split.seed, np.int64),
        hash=np.array(split.content_hash()),
    )


def index_hash(indices: np.ndarray) -> str:
    """SHA-256 hex digest of an int index array, over its shape and its values as little-endian int64."""
    indices = np.asarray(indices)
    digest = hashlib.sha256(str(indices.shape).encode())
    digest.update(indices.astype("<i8").tobytes())
    return digest.hexdigest()


def save_indices(path: str | os.PathLike, indices: np.ndarray) -> None:
    """Write an int index array (e.g. per-model training subsets [K, n]) with its `index_hash`, atomically."""
    _save_npz(path, indices=np.asarray(indices, np.int64), hash=np.array(index_hash(indices)))


def load_split(path: str | os.PathLike) -> Split:
    """Read a split written by ``save_split``; UserError if missing, corrupt or tampered with."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file not found: {path}")
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as contents:
            pairing = str(contents["pairing"])
            split = Split(
                forget=contents["forget"].astype(np.int64),
                retain=contents["retain"].astype(np.int64),
                spec=parse_forget(str(contents["spec"])),
                pairing=pairing,
                seed=int(contents["seed"]),
            )
            stored_hash = str(contents["hash"])
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"corrupt split file {path}: {error}") from None
    if pairing not in PAIRINGS:
        raise UserError(f"split file {path} has unknown pairing {pairing!r}")
    if split.content_hash() != stored_hash:
        raise UserError(f"split file {path} fails its hash check (edited or corrupted)")
    return split
