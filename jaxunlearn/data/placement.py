"""Where a run's images live while it trains: on every device (resident) or where they are, read by index as
each batch needs them (streamed).

Resident (`DeviceData`, `jaxunlearn.data.device`): the uint8 sets on every device, each step gathering its
batch inside the compiled program: the fastest layout where the data fits. Streamed (`StreamedData`): nothing
is placed; each process reads only its own rows of every global batch from the dataset's sources, in
background threads, ahead of the step (`jaxunlearn.data.stream`), and evaluation reads the rows it evaluates.
The plans stay the one record of what each step reads, so either placement takes the same steps.
"""

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import numpy as np

from jaxunlearn.data.dataset import Dataset, read_images
from jaxunlearn.data.device import DeviceData
from jaxunlearn.errors import UserError

Placement = Literal["auto", "device", "stream"]
PLACEMENTS: tuple[str, ...] = ("auto", "device", "stream")
DEVICE_SHARE = 0.5
"""The share of a device's free memory (the host's for CPU devices) a resident dataset may take under "auto":
the rest is for the model, its optimizer state, activations and the programs."""


@dataclass(frozen=True, eq=False)
class StreamedData:
    """A dataset left where it is: its images are read by index when a batch or an evaluation needs them."""

    dataset: Dataset
    _views: dict = field(default_factory=dict, repr=False)
    """The last few resident views (`resident`), by the rows they hold: a run evaluates the same rows each epoch."""

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.dataset.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.dataset.std)

    def resident(self, rows: dict[str, np.ndarray]) -> DeviceData:
        """A `DeviceData` holding only the images `rows[where]` of each set ("train", "test", "validation"), in
        that order, on the default device: what an evaluation of those rows reads."""
        key = tuple((where, hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest())
                    for where, indices in sorted(rows.items()))
        if key not in self._views:
            if len(self._views) >= VIEWS_KEPT:
                self._views.pop(next(iter(self._views)))
            self._views[key] = self._place(rows)
        return self._views[key]

    def _place(self, rows: dict[str, np.ndarray]) -> DeviceData:
        placed = {where: jax.device_put(read_images(self.dataset.images(where), indices))
                  for where, indices in rows.items()}
        labels = {where: getattr(self.dataset, f"{where}_labels")[indices] for where, indices in rows.items()}
        empty = np.zeros((0, *self.dataset.image_shape), np.uint8)
        return DeviceData(train_images=placed.get("train", empty), test_images=placed.get("test", empty),
                          train_labels=jax.device_put(labels.get("train", np.zeros(0, np.int32)).astype(np.int32)),
                          test_labels=jax.device_put(labels.get("test", np.zeros(0, np.int32)).astype(np.int32)),
                          mean=self.mean, std=self.std, validation_images=placed.get("validation"))


VIEWS_KEPT = 4
"""Resident views a `StreamedData` keeps (each holds only the rows one evaluation reads)."""


def free_device_memory() -> tuple[int, str]:
    """(bytes free on the first local device, where): its allocator's limit less what is in use, or the host's
    available memory for a CPU device."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.platform} device"
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host"


def choose_placement(dataset: Dataset, placement: Placement) -> tuple[str, str]:
    """("device" or "stream", why): "auto" keeps the data resident when its images take at most `DEVICE_SHARE`
    of the free memory of a device, and streams them otherwise."""
    if placement not in PLACEMENTS:
        raise UserError(f"`data_placement` must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    size = dataset.nbytes
    if placement != "auto":
        return placement, f"{placement} (asked for; the images take {_bytes(size)})"
    free, where = free_device_memory()
    chosen = "device" if size <= DEVICE_SHARE * free else "stream"
    return chosen, (f"{chosen} (auto: the images take {_bytes(size)}, {100 * size / max(free, 1):.1f}% of the "
                    f"{_bytes(free)} free on the {where})")


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def place_data(dataset: Dataset, placement: str) -> "DeviceData | StreamedData":
    """The data of a run in its placement ("device" or "stream", as `choose_placement` resolved it)."""
    return resident_data(dataset) if placement == "device" else StreamedData(dataset)


@functools.lru_cache(maxsize=4)
def resident_data(dataset: Dataset) -> DeviceData:
    """`dataset` on the default device, placed once per process."""
    return DeviceData.from_dataset(dataset)


def resident_parts(data: "DeviceData | StreamedData", parts: dict[str, tuple[str, np.ndarray]],
                   labels: dict[str, np.ndarray]) -> tuple[DeviceData, dict[str, tuple[str, np.ndarray]],
                                                           dict[str, np.ndarray]]:
    """(data, parts, labels) as an evaluation reads them: resident data as it is; streamed data as a `DeviceData`
    of just the rows the parts (name → (set, indices)) hold, with the parts' indices renumbered into it and each
    set's labels (`labels`: set → labels [N]) taken to match."""
    if isinstance(data, DeviceData):
        return data, parts, labels
    rows: dict[str, np.ndarray] = {}
    for where, indices in parts.values():
        rows[where] = np.union1d(rows.get(where, np.zeros(0, np.int64)), np.asarray(indices, np.int64))
    renumbered = {name: (where, np.searchsorted(rows[where], indices).astype(np.int64))
                  for name, (where, indices) in parts.items()}
    return data.resident(rows), renumbered, {where: labels[where][indices] for where, indices in rows.items()
                                             if where in labels}


def resident_rows(data: "DeviceData | StreamedData", where: str, indices: np.ndarray
                  ) -> tuple[DeviceData, np.ndarray]:
    """(data, indices) for a computation that gathers rows of one set on the device (BatchNorm recomputation,
    relearning, a method's saliency): resident data as it is; streamed data as a `DeviceData` of those rows,
    with the indices renumbered into it."""
    view, parts, _ = resident_parts(data, {"rows": (where, np.asarray(indices))}, {})
    return view, parts["rows"][1]


def sample_rows(indices: np.ndarray, at_most: int | None, seed: int = 0) -> np.ndarray:
    """At most `at_most` of `indices` (None: all), a fixed random choice kept in order: an evaluation sample."""
    indices = np.asarray(indices)
    if at_most is None or len(indices) <= at_most:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, at_most, replace=False))


def describe(data: Any) -> str:
    return "streamed" if isinstance(data, StreamedData) else "device-resident"
