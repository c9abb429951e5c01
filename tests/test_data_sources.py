"""Dataset sources: sklearn digits, Fashion-MNIST IDX files and TFDS array_record sources."""

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxunlearn.data import load_dataset
from jaxunlearn.data.dataset import read_images, stratified_subset
from jaxunlearn.data.sources import DEFAULT_FASHION_MNIST_DIR
from jaxunlearn.errors import UserError

OFFICIAL_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def pixel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = images.reshape(-1, images.shape[-1]) / 255.0
    return pixels.mean(axis=0), pixels.std(axis=0)


# --- digits ---------------------------------------------------------------------------


def test_digits_shapes_split_and_statistics():
    dataset = load_dataset("digits")
    assert dataset.name == "digits" and dataset.num_classes == 10
    assert dataset.image_shape == (8, 8, 1)
    assert (len(dataset.train_images), len(dataset.test_images)) == (1438, 359)
    assert len(dataset.train_labels) == 1438 and len(dataset.test_labels) == 359
    assert dataset.train_images.dtype == dataset.test_images.dtype == np.uint8
    assert dataset.train_labels.dtype == dataset.test_labels.dtype == np.int32
    assert dataset.train_images.max() == 255  # sklearn's 16 maps to 255
    train_counts = np.bincount(dataset.train_labels, minlength=10)
    test_counts = np.bincount(dataset.test_labels, minlength=10)
    np.testing.assert_array_equal(test_counts, np.round((train_counts + test_counts) * 0.2))
    assert test_counts.min() > 0 and train_counts.min() > 0
    mean, std = pixel_mean_std(dataset.train_images)
    np.testing.assert_allclose(dataset.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(dataset.std, std, rtol=1e-12)


def test_digits_is_deterministic_and_covers_all_images():
    from sklearn.datasets import load_digits

    first, second = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(first.test_images, second.test_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    original = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    together = np.concatenate([first.train_images, first.test_images])[..., 0]
    # Every original image lands in exactly one split.
    assert sorted(map(bytes, together)) == sorted(map(bytes, original))


# --- fashion_mnist ----------------------------------------------------------------------


@pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason=f"{DEFAULT_FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)",
)
def test_stratified_subset_is_fixed_balanced_and_ordered():
    digits = load_dataset("digits")
    subset = stratified_subset(digits, 719, None)  # half of the 1,438 train images
    assert abs(len(subset.train_labels) - 719) <= 10  # round() per class: at most 1 off per class
    full_counts, counts = np.bincount(digits.train_labels), np.bincount(subset.train_labels)
    np.testing.assert_array_equal(counts, np.round(full_counts / 2))
    np.testing.assert_array_equal(subset.test_labels, digits.test_labels)  # test untouched
    again = stratified_subset(digits, 719, None)
    np.testing.assert_array_equal(again.train_images, subset.train_images)
    # Original order kept: each kept image appears in the full set, in increasing positions.
    flat = digits.train_images.reshape(len(digits.train_labels), -1)
    positions = [np.flatnonzero((flat == image.ravel()).all(axis=1))[0] for image in subset.train_images[:50]]
    assert positions == sorted(positions)
    assert subset.mean == digits.mean
    with pytest.raises(UserError, match="test size must be between 1 and 359"):
        stratified_subset(digits, None, 360)


def rows(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


def test_a_validation_set_is_held_out_of_the_train_set_before_its_subset():
    digits = load_dataset("digits")
    held = stratified_subset(digits, None, None, 200)
    assert abs(len(held.validation_labels) - 200) <= 10
    np.testing.assert_array_equal(np.bincount(held.validation_labels) + np.bincount(held.train_labels),
                                  np.bincount(digits.train_labels))
    assert rows(np.concatenate([held.train_images, held.validation_images])) == rows(digits.train_images)
    both = stratified_subset(digits, 719, None, 200)  # drawn from the images the subset leaves out
    np.testing.assert_array_equal(both.train_images, stratified_subset(digits, 719, None).train_images)
    assert abs(len(both.validation_labels) - 200) <= 10
    used = Counter(rows(np.concatenate([both.train_images, both.validation_images])))
    assert not used - Counter(rows(digits.train_images))  # disjoint: no image is in both more often than it exists
    assert stratified_subset(digits, 719, None).validation_images is None
    with pytest.raises(UserError, match="validation size must be between 1 and 1437"):
        stratified_subset(digits, None, None, 1438)
    with pytest.raises(UserError, match="validation size must be between 1 and 719"):  # 1,438 − 719 left
        stratified_subset(digits, 719, None, 720)


def test_fashion_mnist_real_files():
    dataset = load_dataset("fashion_mnist")
    assert (len(dataset.train_images), len(dataset.test_images)) == (60000, 10000)
    assert dataset.image_shape == (28, 28, 1) and dataset.num_classes == 10
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert dataset.train_labels[0] == 9  # the file's first image is an ankle boot
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)
    assert (dataset.mean, dataset.std) == ((0.2860,), (0.3530,))


def write_idx_gz(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    """Write uint8 ``array`` as a gzip'd IDX file (optionally with a forged magic number)."""
    header = magic or bytes([0, 0, 0x08, array.ndim])
    header += np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_tiny_fashion_mnist(directory: Path) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte.gz": np.arange(3 * 2 * 3).reshape(3, 2, 3) * 10,
        "train-labels-idx1-ubyte.gz": np.array([9, 0, 4]),
        "t10k-images-idx3-ubyte.gz": 255 - np.arange(2 * 2 * 3).reshape(2, 2, 3),
        "t10k-labels-idx1-ubyte.gz": np.array([7, 1]),
    }
    for filename, array in arrays.items():
        write_idx_gz(directory / filename, array)
    return arrays


def test_idx_parser_reads_tiny_files_in_order(tmp_path):
    arrays = write_tiny_fashion_mnist(tmp_path)
    dataset = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert dataset.image_shape == (2, 3, 1)
    train_images = arrays["train-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(dataset.train_images[..., 0], train_images)
    np.testing.assert_array_equal(dataset.test_images[..., 0], arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(dataset.train_labels, [9, 0, 4])
    np.testing.assert_array_equal(dataset.test_labels, [7, 1])
    assert dataset.test_labels.dtype == np.int32 and dataset.test_images.dtype == np.uint8


def test_idx_bad_magic_is_rejected(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    labels_path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx_gz(labels_path, np.array([9, 0, 4]), magic=b"\x00\x00\x0d\x01")  # 0x0d: float
    with pytest.raises(UserError, match="bad IDX magic number.*train-labels-idx1-ubyte.gz"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_idx_size_mismatch_is_rejected(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1]))
    with pytest.raises(UserError, match="holds 11 bytes"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_idx_image_label_count_mismatch_is_rejected(tmp_path):
    write_tiny_fashion_mnist(tmp_path)
    write_idx_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 1, 2]))
    with pytest.raises(UserError, match="test files"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_fashion_mnist_missing_directory_or_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"{missing}.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=str(missing))
    write_tiny_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*`data_dir`"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


# --- TFDS ---------------------------------------------------------------------------------


def whole(source) -> np.ndarray:
    """Every image of a set read by index (a TFDS split stays in its files until read)."""
    return read_images(source, np.arange(len(source)))


def test_tfds_cifar10_uses_official_constants():
    with tfds.testing.mock_data(num_examples=12):
        dataset = load_dataset("cifar10")
        train_images, test_images = whole(dataset.train_images), whole(dataset.test_images)
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert train_images.shape == test_images.shape == (12, 32, 32, 3)
    assert train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert dataset.train_labels.shape == (12,)
    assert 0 <= dataset.train_labels.min() <= dataset.train_labels.max() < 10
    assert dataset.mean == OFFICIAL_CIFAR_MEAN and dataset.std == OFFICIAL_CIFAR_STD


def test_tfds_mnist_computes_statistics_from_training_images():
    with tfds.testing.mock_data(num_examples=9):
        dataset = load_dataset("mnist")
        train_images = whole(dataset.train_images)
    assert dataset.image_shape == (28, 28, 1) and dataset.num_classes == 10
    assert len(dataset.train_images) == len(dataset.test_images) == 9
    mean, std = pixel_mean_std(train_images)
    np.testing.assert_allclose(dataset.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(dataset.std, std, rtol=1e-12)


def fake_records(ids: list, labels: list[int]) -> list[dict]:
    """Records whose image pixels all equal their label, to track order."""
    return [
        {"id": id_, "image": np.full((32, 32, 3), label, np.uint8), "label": np.int64(label)}
        for id_, label in zip(ids, labels)
    ]


def test_tfds_records_are_sorted_by_numeric_id():
    splits = {
        "train": fake_records([b"train_00010", b"train_00002", b"train_00007"], [3, 1, 2]),
        "test": fake_records(["test_1", "test_0"], [5, 4]),
    }
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: splits[split]):
        dataset = load_dataset("cifar10")
        train_images = whole(dataset.train_images)
    np.testing.assert_array_equal(dataset.train_labels, [1, 2, 3])
    np.testing.assert_array_equal(train_images[:, 0, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(dataset.test_labels, [4, 5])


def test_tfds_records_without_numeric_ids_keep_their_order():
    records = fake_records([b"train_9", b"other_1", b"train_3"], [3, 1, 2])
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: records):
        dataset = load_dataset("cifar10")
    np.testing.assert_array_equal(dataset.train_labels, [3, 1, 2])


def test_tfds_dataset_not_prepared(tmp_path):
    expected = f"'mnist'.*not prepared in array_record format under {tmp_path}"
    with pytest.raises(UserError, match=expected):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_tfds_non_image_dataset_is_rejected(tmp_path):
    with pytest.raises(UserError, match="'imdb_reviews' is not a fixed-size image classification"):
        load_dataset("imdb_reviews", data_dir=str(tmp_path))


def test_unknown_dataset_name():
    expected = "unknown dataset 'no_such_set'.*digits, fashion_mnist.*TFDS"
    with pytest.raises(UserError, match=expected):
        load_dataset("no_such_set")
