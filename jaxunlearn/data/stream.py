"""Streamed batches: each process reads only its own rows of every global batch from the dataset's sources,
in background threads ahead of the step, and hands them to its devices as one global array.

The rows come from the epoch's plan (blocks of train-set indices per role, widened to the device count by
`pad_to_devices`), so streaming changes where the images come from, not which: a streamed epoch takes the
steps of a resident one, and a resumed run needs no iterator state. Reading and prefetching run in grain's
threads (`grain.MapDataset` over the epoch's steps, `ReadOptions(num_threads, prefetch_buffer_size)`); each
element is one step's local rows, uint8 images [B_local, H, W, C] and int32 labels [B_local] per role.
"""

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxunlearn.data.dataset import Dataset, read_images

DATA_ROLES = ("train", "forget", "retain")
"""The plan columns that index the train set (those a step reads images for)."""
READ_THREADS = 2
"""Threads reading rows (reading releases the GIL in numpy copies and file reads)."""
PREFETCH_STEPS = 4
"""Steps read ahead of the one the devices run."""

LocalBatch = dict[str, tuple[np.ndarray, np.ndarray]]
"""role → (uint8 images [B_local, H, W, C], int32 labels [B_local]): one process's rows of one step."""


class BatchStream:
    """Streamed batches of one run: `epoch(blocks)` yields each step's batch, each array placed by `place`
    (this process's rows [B_local, ...] → what the compiled step takes: a global array over the mesh, or the
    rows of each local device). rows_read counts the rows this process has read: its own rows of every batch.
    """

    def __init__(self, dataset: Dataset, place: Callable[[np.ndarray], Any], *, threads: int = READ_THREADS,
                 prefetch: int = PREFETCH_STEPS):
        self.images, self.labels = dataset.train_images, np.asarray(dataset.train_labels, np.int32)
        self.place, self.threads, self.prefetch = place, threads, prefetch
        self.rows_read = 0
        self._count = threading.Lock()

    def _read(self, step: tuple[int, int], blocks: Sequence[dict[str, np.ndarray]]) -> LocalBatch:
        block, row = blocks[step[0]], step[1]
        batch = {}
        for role in DATA_ROLES:
            if role in block:
                indices = local_columns(block[role][row])
                batch[role] = (read_images(self.images, indices), self.labels[indices])
                with self._count:
                    self.rows_read += len(indices)
        return batch

    def epoch(self, blocks: Sequence[dict[str, np.ndarray]]) -> Iterator[dict[str, tuple[Any, Any]]]:
        """Each step's batch of an epoch of padded blocks ({column: int [steps, B]}), read ahead in threads,
        then placed."""
        import grain  # only a streamed run pays its import

        steps = [(b, row) for b, block in enumerate(blocks) for row in range(next(iter(block.values())).shape[0])]
        dataset = grain.MapDataset.source(steps).map(lambda step: self._read(step, blocks))
        reader = dataset.to_iter_dataset(grain.ReadOptions(num_threads=self.threads,
                                                           prefetch_buffer_size=self.prefetch))
        for batch in reader:
            yield {role: (self.place(images), self.place(labels)) for role, (images, labels) in batch.items()}


def local_columns(columns: np.ndarray) -> np.ndarray:
    """This process's share of a step's global batch columns [B] (padded to the device count): the rows of its
    devices, which the mesh orders process by process (`jaxunlearn.engine.parallel.data_mesh`)."""
    share = len(columns) // jax.process_count()
    return columns[jax.process_index() * share:(jax.process_index() + 1) * share]
