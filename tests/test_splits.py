"""Forget/retain splits: pairings, parsing, errors and tamper-evident files."""

import numpy as np
import pytest

from jaxunlearn.data import ForgetSpec, Split, load_split, make_split, parse_forget, save_split
from jaxunlearn.errors import UserError

# 30 images, 3 classes: 11 of class 0, 11 of class 1 (last at 29), 8 of class 2 (last at 23).
LABELS = np.array([0, 1, 2] * 8 + [0, 1, 0, 1, 0, 1], np.int32)
NUM_CLASSES = 3


def assert_partition(split: Split, num_train: int) -> None:
    assert split.forget.dtype == split.retain.dtype == np.int64
    assert np.all(np.diff(split.forget) > 0) and np.all(np.diff(split.retain) > 0)
    assert np.intersect1d(split.forget, split.retain).size == 0
    np.testing.assert_array_equal(np.union1d(split.forget, split.retain), np.arange(num_train))


@pytest.mark.parametrize("pairing", ["default", "official"])
@pytest.mark.parametrize("text", ["class:2", "class:0,2", "random:7"])
def test_split_is_disjoint_and_complete(text, pairing):
    split = make_split(parse_forget(text), LABELS, NUM_CLASSES, pairing=pairing)
    assert_partition(split, len(LABELS))


def test_default_class_forgets_every_image_of_the_classes():
    split = make_split(parse_forget("class:0,2"), LABELS, NUM_CLASSES)
    np.testing.assert_array_equal(split.forget, np.flatnonzero(LABELS != 1))
    assert split.spec.mode == "class"


def test_default_random_is_deterministic_per_seed_and_differs_across_seeds():
    labels = np.zeros(1000, np.int32)
    spec = ForgetSpec("random", count=100)
    first, again, other = (make_split(spec, labels, 2, seed=seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first.forget, again.forget)
    assert first.content_hash() == again.content_hash()
    assert not np.array_equal(first.forget, other.forget)
    assert first.content_hash() != other.content_hash()
    assert first.forget.size == 100 and np.unique(first.forget).size == 100
    assert first.spec.mode == "sample"


def test_official_random_takes_the_first_n_and_ignores_the_seed():
    for seed in (0, 9):
        spec = parse_forget("random:7")
        split = make_split(spec, LABELS, NUM_CLASSES, pairing="official", seed=seed)
        np.testing.assert_array_equal(split.forget, np.arange(7))
        np.testing.assert_array_equal(split.retain, np.arange(7, 30))


def test_official_class_keeps_each_forgotten_class_last_image():
    split = make_split(parse_forget("class:1,2"), LABELS, NUM_CLASSES, pairing="official")
    class_1, class_2 = np.flatnonzero(LABELS == 1), np.flatnonzero(LABELS == 2)
    assert class_1[-1] == 29 and class_2[-1] == 23
    assert {29, 23} <= set(split.retain.tolist())
    assert split.forget.size == (class_1.size - 1) + (class_2.size - 1) == 10 + 7
    expected = np.sort(np.concatenate([class_1[:-1], class_2[:-1]]))
    np.testing.assert_array_equal(split.forget, expected)


def test_forget_test_mask():
    test_labels = np.array([2, 0, 1, 2, 1])
    class_split = make_split(parse_forget("class:1,2"), LABELS, NUM_CLASSES)
    expected = [True, False, True, True, True]
    np.testing.assert_array_equal(class_split.forget_test_mask(test_labels), expected)
    sample_split = make_split(parse_forget("random:3"), LABELS, NUM_CLASSES)
    np.testing.assert_array_equal(sample_split.forget_test_mask(test_labels), [False] * 5)


@pytest.mark.parametrize(
    "text", ["class:5", "class:3,5", "class:0,1,2,9", "random:1", "random:500"]
)
def test_parse_round_trip(text):
    spec = parse_forget(text)
    assert str(spec) == text
    assert parse_forget(str(spec)) == spec


def test_parse_values_and_canonical_class_order():
    assert parse_forget("class:3,5") == ForgetSpec("class", classes=(3, 5))
    assert parse_forget("random:500") == ForgetSpec("random", count=500)
    assert str(parse_forget("class:5,3")) == "class:3,5"


@pytest.mark.parametrize(
    "text",
    [
        "class:", "class:a", "class:1,", "class:1,1", "class:-1",
        "random:-3", "random:0", "random:", "random:1.5", "foo:1", "",
    ],
)
def test_malformed_forget_strings_are_user_errors(text):
    with pytest.raises(UserError):
        parse_forget(text)


@pytest.mark.parametrize(
    ("text", "pairing", "message"),
    [
        ("class:3", "default", "out of range"),
        ("class:0,1,2", "default", "all 3 classes"),
        ("random:30", "default", "smaller than the 30"),
        ("random:31", "official", "smaller than the 30"),
        ("random:5", "sloppy", "unknown pairing"),
    ],
)
def test_split_errors(text, pairing, message):
    with pytest.raises(UserError, match=message):
        make_split(parse_forget(text), LABELS, NUM_CLASSES, pairing=pairing)


def test_class_without_training_images_is_an_error():
    with pytest.raises(UserError, match="class 3 has no training images"):
        make_split(parse_forget("class:3"), LABELS, 4)
    singleton = np.array([0, 0, 1], np.int32)  # official keeps class 1's only image
    with pytest.raises(UserError, match="class 1 has no training images"):
        make_split(parse_forget("class:1"), singleton, 2, pairing="official")


def test_negative_class_and_seed_are_errors():
    with pytest.raises(UserError, match="out of range"):
        make_split(ForgetSpec("class", classes=(-1,)), LABELS, NUM_CLASSES)
    with pytest.raises(UserError, match="seed"):
        make_split(parse_forget("random:3"), LABELS, NUM_CLASSES, seed=-1)


def test_save_load_round_trip_preserves_everything(tmp_path):
    split = make_split(parse_forget("random:9"), LABELS, NUM_CLASSES, pairing="default", seed=5)
    path = tmp_path / "split.npz"
    save_split(split, path)
    loaded = load_split(path)
    assert loaded.content_hash() == split.content_hash()
    np.testing.assert_array_equal(loaded.forget, split.forget)
    np.testing.assert_array_equal(loaded.retain, split.retain)
    assert (loaded.spec, loaded.pairing, loaded.seed) == (split.spec, "default", 5)
    assert [p.name for p in tmp_path.iterdir()] == ["split.npz"]  # no temp file left behind


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "split.npz"
    save_split(make_split(parse_forget("class:0"), LABELS, NUM_CLASSES), path)
    save_split(make_split(parse_forget("class:1"), LABELS, NUM_CLASSES), path)
    assert str(load_split(path).spec) == "class:1"


def test_tampered_split_file_is_rejected(tmp_path):
    path = tmp_path / "split.npz"
    save_split(make_split(parse_forget("random:9"), LABELS, NUM_CLASSES, seed=1), path)
    with np.load(path) as contents:
        fields = dict(contents)
    fields["forget"] = fields["forget"].copy()
    fields["forget"][0] = 29 if fields["forget"][0] != 29 else 28
    np.savez(path, **fields)  # same stored hash, edited indices
    with pytest.raises(UserError, match="hash check"):
        load_split(path)


def test_truncated_or_corrupt_split_file_is_rejected(tmp_path):
    path = tmp_path / "split.npz"
    save_split(make_split(parse_forget("class:2"), LABELS, NUM_CLASSES), path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(UserError, match="corrupt split file"):
        load_split(path)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(UserError, match="corrupt split file"):
        load_split(path)


def test_missing_split_file_is_rejected(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_split(tmp_path / "absent.npz")
