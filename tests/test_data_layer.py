"""The data layer: one dataset interface, two placements that take the same steps, and the user's own data.

Streamed and device-resident runs feed the same compiled update with the same images in the same order (the
plan decides; only where the rows come from differs), so their per-step losses and final parameters are
compared bitwise, on 1 device and on 8 (batches of 100 pad to 104 there, under shard_map and pmap). The
2-process layout and the rows each process reads: tests/test_multihost.py.
"""

import json

import jax
import numpy as np
import pytest

import jaxunlearn as ju
from jaxunlearn import runs
from jaxunlearn.config import SupervisedHparams, TrainConfig, UnlearnConfig
from jaxunlearn.data import placement
from jaxunlearn.data.dataset import Rows, read_images
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.errors import UserError
from jaxunlearn.run import Run, training_data

TINY = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=1, batch_size=100))


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a, b):
    assert losses(a) == losses(b) and len(losses(a)) > 0
    for x, y in zip(jax.tree.leaves(Run(a).model()[1:]), jax.tree.leaves(Run(b).model()[1:])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def original(shared):
    return shared("data-layer", lambda directory: runs.train(TINY, directory, execution=Execution(devices=1))
                  and directory)


@pytest.mark.slow  # whole runs, twice each: `make test-long`
@pytest.mark.parametrize("devices, backend", [(1, "shard_map"), (8, "shard_map"), (8, "pmap")])
def test_streamed_and_resident_training_take_the_same_steps(tmp_path, devices, backend):
    for placed in ("device", "stream"):
        runs.train(TINY, tmp_path / placed, execution=Execution(devices=devices, backend=backend,
                                                                data_placement=placed))
    assert_same_run(tmp_path / "device", tmp_path / "stream")
    assert len(losses(tmp_path / "stream")) == 1438 // 100


@pytest.mark.parametrize("method, forget, overrides", [
    ("contrastive", "class:5", {"epochs": "1"}),  # 146 forget images: a partial batch, padded on 8 devices
    ("random_label", "random:100", {"epochs": "1", "batch_size": "100"}),
])
@pytest.mark.slow  # whole runs, twice each: `make test-long`
@pytest.mark.parametrize("devices", [1, 8])
def test_streamed_and_resident_unlearning_take_the_same_steps(original, tmp_path, method, forget, overrides,
                                                              devices):
    config = UnlearnConfig(method=method, forget=forget, hparams=overrides)
    for placed in ("device", "stream"):
        runs.unlearn(config, original, tmp_path / placed, execution=Execution(devices=devices, data_placement=placed))
    assert_same_run(tmp_path / "device", tmp_path / "stream")
    device, stream = (json.loads((tmp_path / placed / "metrics.json").read_text()) for placed in ("device", "stream"))
    assert device == {**stream, "seconds": device["seconds"], "compile_seconds": device["compile_seconds"]}


class CountingSource:
    """A user's random-access source over an array, counting the rows read."""

    def __init__(self, images: np.ndarray):
        self.images, self.read = images, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        self.read.append(index)
        return self.images[index]


def test_a_source_read_by_index_streams_only_the_rows_the_plan_and_the_evaluation_need(tmp_path):
    digits = ju.load_dataset("digits")
    source = CountingSource(digits.train_images)
    dataset = ju.Dataset.from_source(source, digits.test_images, train_labels=digits.train_labels,
                                     test_labels=digits.test_labels, mean=digits.mean, std=digits.std,
                                     name="counted")
    ju.register_dataset("counted", lambda data_dir: dataset, replace=True)
    config = TrainConfig(dataset="counted", width=0.0625, train_size=600, eval_sample=50,
                         recipe=SupervisedHparams(epochs=1, batch_size=100))
    subset = training_data(config)  # its fingerprint, which the run records (every row of a set this small)
    subset.fingerprint, subset.image_shape  # and its shape (its first row), read before the run
    source.read.clear()
    runs.train(config, tmp_path / "run", execution=Execution(devices=1, data_placement="stream"))
    read = np.array(source.read)
    assert Run(tmp_path / "run").dataset is subset
    assert isinstance(subset.train_images, Rows) and subset.train_images.source is source  # reads through
    # 6 batches of 100 of the subset's 601 images (stratified: about 600), then the final evaluation's
    # sample of 50 training images
    assert len(subset.train_labels) == 601 and len(read) == 600 + 50
    assert set(read) <= set(subset.train_images.indices.tolist())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_sample"] == 50


def test_auto_places_the_data_on_the_devices_when_it_fits_and_streams_it_otherwise(monkeypatch):
    digits = ju.load_dataset("digits")
    monkeypatch.setattr(placement, "free_device_memory", lambda: (10 * digits.nbytes, "host"))
    assert placement.choose_placement(digits, "auto")[0] == "device"
    monkeypatch.setattr(placement, "free_device_memory", lambda: (digits.nbytes, "host"))
    chosen, why = placement.choose_placement(digits, "auto")
    assert chosen == "stream" and "of the" in why and "free on the host" in why
    assert placement.choose_placement(digits, "device")[0] == "device"
    with pytest.raises(UserError, match="data_placement"):
        placement.choose_placement(digits, "disk")


def test_a_dataset_from_arrays_fills_in_classes_and_normalisation():
    digits = ju.load_dataset("digits")
    mine = ju.Dataset.from_arrays(digits.train_images, digits.train_labels, digits.test_images, digits.test_labels)
    assert mine.num_classes == 10 and mine.image_shape == (8, 8, 1)
    np.testing.assert_allclose(mine.mean, digits.mean, rtol=1e-12)
    np.testing.assert_allclose(mine.std, digits.std, rtol=1e-12)
    assert mine.fingerprint == ju.Dataset.from_arrays(digits.train_images, digits.train_labels, digits.test_images,
                                                      digits.test_labels).fingerprint
    changed = digits.train_images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert mine.fingerprint != ju.Dataset.from_arrays(changed, digits.train_labels, digits.test_images,
                                                      digits.test_labels).fingerprint


def test_a_memmap_is_read_row_by_row(tmp_path):
    digits = ju.load_dataset("digits")
    path = tmp_path / "train.npy"
    np.save(path, digits.train_images)
    mapped = np.load(path, mmap_mode="r")
    dataset = ju.Dataset.from_arrays(mapped, digits.train_labels, digits.test_images, digits.test_labels)
    assert not dataset.in_memory and isinstance(dataset.train_images, np.memmap)
    np.testing.assert_array_equal(read_images(dataset.train_images, np.array([5, 0, 7])),
                                  digits.train_images[[5, 0, 7]])


def test_a_registered_dataset_and_an_import_path_are_found_and_bad_ones_refused(tmp_path, monkeypatch):
    digits = ju.load_dataset("digits")
    (tmp_path / "my_data.py").write_text(
        "import jaxunlearn as ju\n"
        "def make(data_dir=None):\n"
        "    d = ju.load_dataset('digits')\n"
        "    return ju.Dataset.from_arrays(d.train_images, d.train_labels, d.test_images, d.test_labels, name='mine')\n"
        "def broken():\n"
        "    return 'not a dataset'\n")
    monkeypatch.chdir(tmp_path)
    assert ju.load_dataset("my_data:make").fingerprint == ju.Dataset.from_arrays(
        digits.train_images, digits.train_labels, digits.test_images, digits.test_labels).fingerprint
    with pytest.raises(UserError, match="gave a str"):
        ju.load_dataset("my_data:broken")
    with pytest.raises(UserError, match="has no function missing"):
        ju.load_dataset("my_data:missing")
    with pytest.raises(UserError, match="cannot import no_such_module"):
        ju.load_dataset("no_such_module:make")
    with pytest.raises(UserError, match="built-in"):
        ju.register_dataset("digits", lambda data_dir: digits)
    ju.register_dataset("twice", lambda data_dir: digits, replace=True)
    with pytest.raises(UserError, match="registered already"):
        ju.register_dataset("twice", lambda data_dir: digits)
    config = TrainConfig(dataset=ju.Dataset.from_arrays(digits.train_images, digits.train_labels,
                                                        digits.test_images, digits.test_labels, name="inline"))
    assert config.dataset == "inline" and ju.load_dataset("inline").name == "inline"
    with pytest.raises(UserError, match="not registered in this process"):
        ju.load_dataset("nobody_registered_this")
