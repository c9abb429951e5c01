"""Batch plans of the methods: which samples each step sees."""

import numpy as np
import pytest

from jaxunlearn.config import TrainConfig, override
from jaxunlearn.data.splits import ForgetSpec, Split
from jaxunlearn.engine.epoch import steps_in
from jaxunlearn.errors import UserError
from jaxunlearn.methods import Context, get_method


def cifar_like_class_split(num_forget=4999, num_retain=45001):
    """Forget indices 0..num_forget-1, retain the rest (label-free: plans only look at indices)."""
    forget = np.arange(num_forget)
    retain = np.arange(num_forget, num_forget + num_retain)
    return Split(forget=forget, retain=retain, spec=ForgetSpec("class", classes=(5,)), pairing="official", seed=0)


def context_of(split, pairing="default", seed=0):
    """A CIFAR-shaped context; the labels are index mod 10 (plans do not read them)."""
    num_train = len(split.forget) + len(split.retain)
    return Context(split=split, num_classes=10, pairing=pairing, seed=seed,
                   train_labels=np.arange(num_train) % 10, image_shape=(32, 32, 3))


def contrastive_plan(pairing, epoch=0, seed=0, split=None):
    method = get_method("contrastive")
    hparams = method.default_hparams("class", TrainConfig())
    context = context_of(split or cifar_like_class_split(), pairing, seed)
    return method.plan(hparams, context, epoch)


def test_contrastive_official_steps_per_epoch_match_the_official_code():
    """CIFAR-10 class 5, B=64: ⌈4999/64⌉ = 79 forget batches × ω=4 = 316 steps; the last batch has 7."""
    plan = contrastive_plan("official")
    assert steps_in(plan) == 316
    assert [block["forget"].shape for block in plan] == [(312, 64), (4, 7)]
    assert [block["retain"].shape for block in plan] == [(312, 64), (4, 7)]


def test_contrastive_official_pairs_every_forget_batch_with_the_first_retain_samples():
    split = cifar_like_class_split()
    full, rest = contrastive_plan("official", split=split)
    forget = split.forget
    # Each forget batch in index order, used for 4 consecutive steps.
    np.testing.assert_array_equal(full["forget"][:4], np.tile(forget[:64], (4, 1)))
    np.testing.assert_array_equal(full["forget"][4], forget[64:128])
    # ... each time beside the same 4 retain batches: the first 256 retain samples, in order.
    first = split.retain[:256].reshape(4, 64)
    np.testing.assert_array_equal(full["retain"][:4], first)
    np.testing.assert_array_equal(full["retain"][-4:], first)
    np.testing.assert_array_equal(rest["forget"], np.tile(forget[-7:], (4, 1)))
    np.testing.assert_array_equal(rest["retain"], first[:, :7])


def test_contrastive_default_draws_retain_samples_at_random_from_the_retain_set():
    split = cifar_like_class_split(num_forget=500, num_retain=2000)
    plan = contrastive_plan("default", split=split)
    retain = np.concatenate([block["retain"].ravel() for block in plan])
    assert np.isin(retain, split.retain).all()
    assert len(np.unique(retain)) > 0.5 * len(retain)  # fresh draws, not one fixed prefix
    again = contrastive_plan("default", split=split)
    np.testing.assert_array_equal(plan[0]["retain"], again[0]["retain"])  # deterministic per (seed, epoch)
    other_epoch = contrastive_plan("default", epoch=1, split=split)
    assert not np.array_equal(plan[0]["retain"], other_epoch[0]["retain"])


@pytest.mark.parametrize("mode", ["class", "sample"])
def test_contrastive_stops_on_validation_images_when_there_are_any(mode):
    split = cifar_like_class_split() if mode == "class" else Split(
        forget=np.arange(500), retain=np.arange(500, 5000), spec=ForgetSpec("random", count=500),
        pairing="default", seed=0)
    context, stop = context_of(split), get_method("contrastive").should_stop
    forgotten = "forget_test_acc" if mode == "class" else "test_acc"  # what the official rule reads
    low, high = (0.05, 0.5) if mode == "class" else (0.9, 0.5)  # (stop, go on) against forget_train_acc 0.6
    evaluation = {"forget_train_acc": 0.6, forgotten: low}
    assert stop(evaluation, context)
    assert not stop({**evaluation, forgotten: high}, context)
    held_out = forgotten.replace("test", "validation")
    assert not stop({**evaluation, held_out: high}, context)  # the validation set decides, not the test set
    assert stop({**evaluation, forgotten: high, held_out: low, held_out.replace("forget_", ""): 0.8}, context)


def test_retrain_plan_covers_only_retain_samples_in_full_shuffled_batches():
    split = cifar_like_class_split(num_forget=100, num_retain=1000)
    method = get_method("retrain")
    hparams = override(method.default_hparams("class", TrainConfig()), {"batch_size": "64"})
    context = context_of(split)
    (block,) = method.plan(hparams, context, 0)
    assert block["train"].shape == (15, 64)  # 1000 // 64 full batches; the 40 left over change each epoch
    assert len(np.unique(block["train"])) == 960
    assert np.isin(block["train"], split.retain).all()
    assert not np.array_equal(block["train"].ravel(), np.sort(block["train"].ravel()))


def test_hyperparameter_overrides_are_typed_and_checked():
    method = get_method("contrastive")
    hparams = override(method.default_hparams("sample", TrainConfig()), {"temperature": "0.5", "epochs": "3"})
    assert (hparams.temperature, hparams.epochs, hparams.batch_size) == (0.5, 3, 128)
    with pytest.raises(UserError, match="unknown hyperparameter 'temprature'"):
        override(hparams, {"temprature": "0.5"})
    with pytest.raises(UserError, match="epochs must be of type int, got 'many'"):
        override(hparams, {"epochs": "many"})


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown method 'bogus'; choose from contrastive, retrain"):
        get_method("bogus")


def test_the_supervised_plan_keeps_the_partial_batch_only_when_asked():
    from jaxunlearn.methods.supervised import supervised_plan

    indices = np.arange(100, 1538)  # 1,438 samples, batch 256: 5 full batches and 158 left over
    dropped = supervised_plan(indices, 256, np.random.default_rng(3))
    kept = supervised_plan(indices, 256, np.random.default_rng(3), keep_partial=True)
    assert [block["train"].shape for block in dropped] == [(5, 256)]
    assert [block["train"].shape for block in kept] == [(5, 256), (1, 158)]
    np.testing.assert_array_equal(kept[0]["train"], dropped[0]["train"])  # the same shuffle, then the rest
    assert sorted(np.concatenate([block["train"].ravel() for block in kept]).tolist()) == indices.tolist()


@pytest.mark.slow
def test_training_with_the_partial_batch_takes_one_more_step_per_epoch(tmp_path):
    import json

    from jaxunlearn import runs
    from jaxunlearn.config import SupervisedHparams, TrainConfig
    from jaxunlearn.engine.parallel import Execution

    config = TrainConfig(dataset="digits", width=0.0625,
                         recipe=SupervisedHparams(epochs=2, batch_size=256, keep_partial_batch=True))
    metrics = runs.train(config, tmp_path / "run", execution=Execution(devices=8))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in steps] == list(range(1, 13)) and metrics["steps"] == 12  # 5 full + 1 of 158
    assert all(np.isfinite(line["loss"]) for line in steps)
    # The per-epoch cosine counts the partial batch in its epoch: lr 0.1 for steps 1-6, ½·0.1·(1 + cos(π/3))
    # = 0.075 for steps 7-12 (with 5 steps an epoch, step 6 would already take the second epoch's rate).
    np.testing.assert_allclose([line["learning_rate"] for line in steps], [0.1] * 6 + [0.075] * 6, rtol=1e-6)
