"""Group B baselines: Boundary Shrink, Boundary Expanding, SCRUB, UNSIR and Bad Teacher.

Unit tests check each method's distinctive piece against float64 numpy or its reference's rule
(docs/baselines.md §2.8–2.12, §4); the slow tests run each method end to end through the CLI on
digits, forgetting class 5, on the session's 8 fake CPU devices.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn.engine import checkpoint
from jaxunlearn.cli import main
from jaxunlearn.config import TrainConfig, override
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import ForgetSpec, Split
from jaxunlearn.engine.step import StepContext, eval_forward
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation.accuracy import evaluate_parts, make_predictor, split_parts
from jaxunlearn.losses import cross_entropy
from jaxunlearn.methods import Context, get_method
from jaxunlearn.methods.bad_teacher import bad_teacher_terms
from jaxunlearn.methods.boundary import linf_neighbours, shadow_init, widened_logits
from jaxunlearn.methods.scrub import epoch_learning_rate, sample_distill_kl, scrub_schedule
from jaxunlearn.methods.unsir import impair_columns, learn_noise, unsir_optimizer
from jaxunlearn.models import create_model
from jaxunlearn.runs import obtain_split, source_config

DIGITS_MEAN, DIGITS_STD = (0.3055329007472251,), (0.37594735534019086,)
IMAGE_SHAPE = (8, 8, 1)


# ---------------------------------------------------------------------------------------------- helpers


def small_model(seed=0):
    """A digits-sized narrow ResNet-18 (10 classes, 8×8×1): (model, graphdef, params, batch_stats)."""
    model = create_model("resnet18", 10, in_channels=1, width=0.125, seed=seed)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return model, graphdef, params, batch_stats


def eval_logits(graphdef, params, batch_stats):
    """Compiled eval-mode logits of a model: images [B, 8, 8, 1] → [B, 10]."""
    return jax.jit(lambda x: eval_forward(graphdef)(params, batch_stats, x)[0])


def digit_like_images(n, seed=0):
    """Normalised float32 [n, 8, 8, 1] images whose pixels are k/255 (like uint8 data)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, *IMAGE_SHAPE)).astype(np.float32) / 255
    return jnp.asarray((pixels - DIGITS_MEAN[0]) / DIGITS_STD[0])


def step_context(graphdef, aux, columns=None, extra=None):
    return StepContext(columns=columns or {}, aux=aux, extra=extra or {}, epoch=jnp.int32(0), step=jnp.int32(0),
                       forward=eval_forward(graphdef))


def class_context(num_per_class=30, num_classes=10, forget_class=5, seed=0):
    """Labels i mod num_classes over num_per_class·num_classes samples; class `forget_class` forgotten."""
    labels = np.arange(num_per_class * num_classes) % num_classes
    split = Split(forget=np.flatnonzero(labels == forget_class), retain=np.flatnonzero(labels != forget_class),
                  spec=ForgetSpec("class", classes=(forget_class,)), pairing="default", seed=0)
    return Context(split=split, num_classes=num_classes, pairing="default", seed=seed, train_labels=labels,
                   image_shape=IMAGE_SHAPE, mean=DIGITS_MEAN, std=DIGITS_STD)


def hparams_of(name, **changes):
    method = get_method(name)
    return method, override(method.default_hparams("class", TrainConfig()), {k: str(v) for k, v in changes.items()})


def log_softmax64(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def unlearn_cli(source, workdir, method, *args) -> dict:
    """Run `jaxunlearn unlearn` on class 5; returns the written metrics."""
    assert main(["unlearn", "--method", method, "--forget", "class:5", "--from", str(source),
                 "--workdir", str(workdir), *map(str, args)]) == 0
    return json.loads((workdir / "metrics.json").read_text())


# ------------------------------------------------------------------------------------- boundary shrink


def test_fgsm_neighbours_are_sign_steps_on_the_pixel_grid_within_the_bound():
    _, graphdef, params, batch_stats = small_model()
    frozen = eval_logits(graphdef, params, batch_stats)
    images, labels = digit_like_images(16), jnp.arange(16) % 10
    neighbours = jax.jit(lambda x, y: linf_neighbours(frozen, x, y, DIGITS_MEAN, DIGITS_STD, bound=0.1, step=0.1,
                                                      iterations=1))(images, labels)

    pixels = np.asarray(neighbours, np.float64) * DIGITS_STD[0] + DIGITS_MEAN[0]
    natural = np.asarray(images, np.float64) * DIGITS_STD[0] + DIGITS_MEAN[0]
    # float32 normalisation round trip: ≤ 1e-6 off the exact k/255 values.
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    np.testing.assert_allclose(pixels * 255, np.round(pixels * 255), atol=1e-4)
    assert np.abs(pixels - natural).max() <= 0.1 + 0.5 / 255 + 1e-6  # ε plus half a quantisation step

    # The official FGSM in float64: x + ε·sign ∇_x CE, clipped to [0, 1], rounded to the 1/255 grid.
    def summed_ce(pixel_images):
        logits = frozen((pixel_images - DIGITS_MEAN[0]) / DIGITS_STD[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    gradient_sign = np.sign(np.asarray(jax.jit(jax.grad(summed_ce))(jnp.asarray(natural, jnp.float32)), np.float64))
    unrounded = np.clip(natural + 0.1 * gradient_sign, 0, 1) * 255  # ε = 25.5 grey levels: ties are common
    tie = np.abs(unrounded - np.floor(unrounded) - 0.5) < 1e-3  # float32 error decides their rounding
    np.testing.assert_allclose(pixels[~tie] * 255, np.round(unrounded[~tie]), atol=1e-4)
    np.testing.assert_allclose(pixels[tie] * 255, unrounded[tie], atol=0.5 + 1e-3)
    assert np.mean(np.abs(pixels - natural) > 0.09) > 0.5  # most pixels did move by ε (not clipped away)


def test_boundary_shrink_targets_the_frozen_models_neighbour_labels():
    """The loss is CE(current model(x), argmax f_o(x′)) with x′ attacked on the FROZEN original."""
    method, hparams = hparams_of("boundary_shrink")
    context = class_context()
    _, graphdef, frozen_params, frozen_stats = small_model(seed=0)
    _, current_graphdef, current_params, current_stats = small_model(seed=1)  # another network
    images = digit_like_images(32, seed=3)
    frozen = eval_logits(graphdef, frozen_params, frozen_stats)
    labels = jnp.argmax(frozen(images), axis=1)  # correctly classified by the original

    loss = method.loss_fn(hparams, context)
    value, parts = jax.jit(lambda params: loss(
        nnx.merge(current_graphdef, params, current_stats, copy=True), {"forget": (images, labels)},
        step_context(graphdef, (frozen_params, frozen_stats))))(current_params)

    @jax.jit
    def neighbour_labels(params, batch_stats):
        logits_of = lambda x: eval_forward(graphdef)(params, batch_stats, x)[0]
        neighbours = linf_neighbours(logits_of, images, labels, DIGITS_MEAN, DIGITS_STD,
                                     bound=0.1, step=0.1, iterations=1)
        return jnp.argmax(logits_of(neighbours), axis=1)

    from_frozen = neighbour_labels(frozen_params, frozen_stats)
    from_current = neighbour_labels(current_params, current_stats)
    assert not np.array_equal(from_frozen, from_current)  # so the check below can tell them apart
    train_logits, _ = jax.jit(lambda p: nnx.merge(current_graphdef, p, current_stats, copy=True)(images, train=True))(
        current_params)
    np.testing.assert_allclose(value, cross_entropy(train_logits, from_frozen), rtol=1e-5)
    assert float(parts["attack_success"]) == pytest.approx(float(np.mean(from_frozen != labels)))


# ------------------------------------------------------------------------------------ boundary expanding


def test_widened_head_has_a_shadow_class_after_the_models_unchanged_logits():
    model, graphdef, params, batch_stats = small_model()
    images = digit_like_images(8)
    logits, feat = model(images, train=False)
    shadow = shadow_init(jax.random.key(0), feat.shape[1], 10)
    wide = widened_logits(logits, feat, shadow)
    assert wide.shape == (8, 11)
    np.testing.assert_array_equal(wide[:, :10], logits)  # rows 0…C−1 are the original classifier's
    expected = np.asarray(feat, np.float64) @ np.asarray(shadow["weight"], np.float64)
    np.testing.assert_allclose(wide[:, 10], expected, rtol=1e-5, atol=1e-6)
    assert float(shadow["bias"]) == 0.0


def test_shadow_row_is_xavier_normal_of_the_widened_layer():
    """Xavier-normal of Linear(D, C+1): std √(2/(D+C+1)); 100,000 draws give the std to ±1 % (3σ ≈ 0.7 %)."""
    weight = np.asarray(shadow_init(jax.random.key(1), 100_000, 10)["weight"], np.float64)
    assert weight.std() == pytest.approx((2 / 100_011) ** 0.5, rel=0.01)
    assert abs(weight.mean()) < 4 * weight.std() / 100_000**0.5


# ------------------------------------------------------------------------------------------------ scrub


def kl_t64(teacher, student, temperature):
    """Float64 RepDistiller DistillKL: (T²/B)·Σ p_t (log p_t − log p_s), and its gradient w.r.t. student."""
    log_t, log_s = log_softmax64(np.asarray(teacher) / temperature), log_softmax64(np.asarray(student) / temperature)
    batch = teacher.shape[0]
    value = temperature**2 / batch * np.sum(np.exp(log_t) * (log_t - log_s))
    gradient = temperature / batch * (np.exp(log_s) - np.exp(log_t))
    return value, gradient


def distill_kl(teacher_logits, student_logits, temperature):
    """DistillKL as SCRUB's loss computes it on an unpadded batch: T² times the mean of the per-sample KL."""
    return temperature**2 * sample_distill_kl(teacher_logits, student_logits, temperature).mean()


def test_distill_kl_matches_float64_numpy_in_value_and_gradient():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 16, 10)) * 3
    value, gradient = kl_t64(teacher, student, 4.0)
    teacher32, student32 = jnp.asarray(teacher, jnp.float32), jnp.asarray(student, jnp.float32)
    assert float(distill_kl(teacher32, student32, 4.0)) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(jax.grad(distill_kl, argnums=1)(teacher32, student32, 4.0), gradient,
                               rtol=1e-4, atol=1e-7)


def test_scrub_max_passes_run_only_in_the_first_msteps_epochs():
    method, hparams = hparams_of("scrub", msteps=2, forget_batch_size=8, batch_size=64)
    context = class_context()
    for epoch in range(4):
        plan = method.plan(hparams, context, epoch)
        roles = [next(iter(block)) for block in plan]
        retain = np.concatenate([b["retain"].ravel() for b in plan if "retain" in b])
        if epoch + 1 <= 2:  # max pass first (30 forget samples: 3 batches of 8, then 6), then the min pass
            assert roles == ["forget", "forget", "retain", "retain"]
            forget = np.concatenate([b["forget"].ravel() for b in plan if "forget" in b])
            np.testing.assert_array_equal(np.sort(forget), context.split.forget)
        else:
            assert roles == ["retain", "retain"]
        np.testing.assert_array_equal(np.sort(retain), context.split.retain)  # 270 = 4 × 64 + 14


def test_scrub_learning_rate_decays_after_strictly_later_epochs():
    """adjust_learning_rate: lr₀·r^{#{d : e > d}}; at e = d the rate is still the old one."""
    _, hparams = hparams_of("scrub", learning_rate=1.0, lr_decay_epochs="1,3", lr_decay_rate=0.1)
    assert [epoch_learning_rate(hparams, e) for e in range(1, 6)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    _, defaults = hparams_of("scrub")  # the notebook's [3, 5, 9] never fires in 3 epochs
    assert [epoch_learning_rate(defaults, e) for e in (1, 2, 3)] == [5e-4] * 3
    schedule = scrub_schedule(hparams, [3, 2, 4, 1])  # epochs of different lengths
    np.testing.assert_allclose(schedule(jnp.arange(10)), [1] * 3 + [0.1] * 6 + [0.01], rtol=1e-6)
    with pytest.raises(UserError, match="lr_decay_epochs"):
        hparams_of("scrub", lr_decay_epochs="3;5")


def test_scrub_steps_ascend_the_forget_kl_and_descend_the_retain_objective():
    method, hparams = hparams_of("scrub", gamma=0.7, alpha=0.2)
    model, graphdef, _, _ = small_model(seed=1)
    _, _, teacher_params, teacher_stats = small_model(seed=0)
    images, labels = digit_like_images(8), jnp.arange(8) % 10
    context = step_context(graphdef, (teacher_params, teacher_stats))
    loss = method.loss_fn(hparams, class_context())
    max_value, max_parts = loss(model, {"forget": (images, labels)}, context)
    min_value, min_parts = loss(model, {"retain": (images, labels)}, context)
    assert float(max_parts["max_step"]) == 1.0 and float(min_parts["max_step"]) == 0.0
    assert float(max_value) == pytest.approx(-float(max_parts["kl"]))
    assert float(min_value) == pytest.approx(0.7 * float(min_parts["cross_entropy"]) + 0.2 * float(min_parts["kl"]),
                                             rel=1e-6)


# ------------------------------------------------------------------------------------------------ unsir


def test_unsir_impair_plan_mixes_k_copies_of_the_noise_with_the_retain_subset():
    method, hparams = hparams_of("unsir", noise_batch=8, noise_copies=3, retain_per_class=20, batch_size=16)
    context = class_context(num_per_class=30)
    plan = method.plan(hparams, context, 0)
    noise = np.concatenate([b["noise"].ravel() for b in plan])
    retain = np.concatenate([b["retain"].ravel() for b in plan])
    assert [b["noise"].shape for b in plan] == [(12, 16), (1, 12)]  # 3·8 noise + 9·20 retain = 204 rows
    # Every noise image K = 3 times; the first 20 training images of each of the 9 retained classes once.
    np.testing.assert_array_equal(np.bincount(noise[noise >= 0]), [3] * 8)
    subset = np.sort(retain[noise < 0])
    expected = np.sort(np.concatenate([np.flatnonzero(context.train_labels == c)[:20] for c in range(10) if c != 5]))
    np.testing.assert_array_equal(subset, expected)
    assert 0 < np.flatnonzero(noise >= 0).mean() < len(noise) - 24  # shuffled in, not appended
    assert impair_columns(hparams, context)["noise"].size == 204

    repair = method.plan(hparams, context, 1)  # the retain subset alone
    assert all(set(block) == {"retain"} for block in repair)
    np.testing.assert_array_equal(np.sort(np.concatenate([b["retain"].ravel() for b in repair])), expected)


def test_unsir_repair_starts_from_a_fresh_adam_state():
    _, hparams = hparams_of("unsir")
    tx, schedule = unsir_optimizer(hparams, [2, 3])  # 2 impair steps, then repair
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    gradients = [{"w": jnp.array(g)} for g in ([1.0, 2.0, -3.0], [0.5, -1.0, 2.0], [-0.2, 0.1, 4.0])]
    state = tx.init(params)
    updates = []
    for g in gradients:
        update, state = tx.update(g, state, params)
        updates.append(update["w"])
    fresh = lambda lr, g: optax.adam(lr).update(g, optax.adam(lr).init(params), params)[0]["w"]
    np.testing.assert_allclose(updates[0], fresh(0.02, gradients[0]), rtol=1e-6)  # impair: Adam lr 0.02
    np.testing.assert_allclose(updates[2], fresh(0.01, gradients[2]), rtol=1e-6)  # repair: new Adam, lr 0.01
    continued = optax.adam(0.01)
    continued_state = continued.init(params)
    for g in gradients:
        continued_update, continued_state = continued.update(g, continued_state, params)
    assert not np.allclose(updates[2], continued_update["w"], rtol=1e-3)  # the moments really were reset
    np.testing.assert_allclose(schedule(jnp.arange(5)), [0.02, 0.02, 0.01, 0.01, 0.01])


# ------------------------------------------------------------------------------------------ bad teacher


def test_bad_teacher_loss_is_the_mixed_kl_divided_by_batch_and_classes():
    rng = np.random.default_rng(1)
    student, competent, incompetent = rng.normal(size=(3, 12, 10)) * 2
    flag = np.array([1, 0] * 6)
    tau = 2.0
    log_c, log_i, log_s = (log_softmax64(z / tau) for z in (competent, incompetent, student))
    target = np.where(flag[:, None] == 1, np.exp(log_i), np.exp(log_c))  # per-sample mixing
    log_target = np.where(flag[:, None] == 1, log_i, log_c)
    expected = np.sum(target * (log_target - log_s)) / (12 * 10)
    expected_gradient = (np.exp(log_s) - target) / (12 * 10 * tau)

    args = [jnp.asarray(z, jnp.float32) for z in (student, competent, incompetent)]
    loss = lambda *a: bad_teacher_terms(*a).mean()  # the official reduction="mean": over B and C
    value = loss(*args, jnp.asarray(flag), tau)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(jax.grad(loss)(*args, jnp.asarray(flag), tau), expected_gradient,
                               rtol=1e-4, atol=1e-8)


def test_bad_teacher_plan_flags_the_forget_set_and_a_fixed_retain_fraction():
    method, hparams = hparams_of("bad_teacher", batch_size=32)
    context = class_context()
    epochs = [method.plan(hparams, context, epoch) for epoch in (0, 1)]
    rows = [np.concatenate([b["train"].ravel() for b in plan]) for plan in epochs]
    flags = [np.concatenate([b["forget_flag"].ravel() for b in plan]) for plan in epochs]
    np.testing.assert_array_equal(np.sort(rows[0][flags[0] == 1]), context.split.forget)
    retain = rows[0][flags[0] == 0]
    assert len(retain) == int(0.3 * 270) and len(np.unique(retain)) == len(retain)
    assert np.isin(retain, context.split.retain).all()
    np.testing.assert_array_equal(np.sort(retain), np.sort(rows[1][flags[1] == 0]))  # drawn once per run
    assert not np.array_equal(rows[0], rows[1])  # reshuffled each epoch


# --------------------------------------------------------------------------- end to end through the CLI


@pytest.fixture(scope="session")
def original_model(digits_run):
    """The original digits model: (graphdef, params, batch_stats), restored from `digits_run`."""
    source, _ = digits_run
    config = source_config(source)
    shapes = nnx.eval_shape(lambda: create_model(config.model, 10, in_channels=1, width=config.width))
    graphdef, params, batch_stats = nnx.split(shapes, nnx.Param, nnx.BatchStat)
    return graphdef, *checkpoint.restore_model(source, params, batch_stats)


@pytest.fixture(scope="session")
def original(digits_run, original_model):
    """Eval-mode accuracies of the original digits model on the class-5 split (forget_train_acc,
    forget_test_acc, retain_train_acc, test_acc = remaining-class test accuracy)."""
    source, _ = digits_run
    dataset = load_dataset(source_config(source).dataset)
    split = obtain_split(source, dataset, ForgetSpec("class", classes=(5,)), "default", 0)
    graphdef, params, batch_stats = original_model
    data = DeviceData.from_dataset(dataset)
    labels = {"train": dataset.train_labels, "test": dataset.test_labels}
    metrics = evaluate_parts(make_predictor(graphdef, data.mean, data.std), params, batch_stats, data, labels,
                             split_parts(split, dataset.test_labels))
    assert metrics["forget_test_acc"] > 0.85 and metrics["test_acc"] > 0.95  # something to forget, and to keep
    return metrics


@pytest.mark.slow
def test_unsir_noise_maximises_the_originals_error_on_its_class(original_model):
    """40 Adam steps (lr 0.1, λ 0.1) on the trained original, eval mode: the CE of class 5 on the noise rises
    (measured 3.14 → 4.59) while the λ-penalty shrinks the noise (mean ‖N_i‖² 65 → 2.9)."""
    graphdef, params, batch_stats = original_model
    logits_of = lambda x: eval_forward(graphdef)(params, batch_stats, x)[0]
    noise = {steps: learn_noise(logits_of, jax.random.key(0), (32, *IMAGE_SHAPE), jnp.int32(5), steps=steps,
                                learning_rate=0.1, l2=0.1) for steps in (0, 40)}
    error = {steps: float(cross_entropy(logits_of(n), jnp.full(32, 5))) for steps, n in noise.items()}
    squared_norm = {steps: float(jnp.mean(jnp.sum(n**2, axis=(1, 2, 3)))) for steps, n in noise.items()}
    assert error[40] > error[0] + 1.0
    assert squared_norm[0] > 40 and squared_norm[40] < 10  # N(0, 1) on 64 pixels: ≈ 64 at the start


def step_log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# Learning rates and epochs for digits. The references' values are tuned for CIFAR-10 with thousands of
# forget images (BS/BE: SGD lr 1e-5 for 10 × 70 steps); digits forgets 146 images of class 5, a few steps
# per epoch, so at those rates the weights barely move. Each run below uses the smallest budget (measured on
# this model) that forgets clearly, to keep the test file short.


@pytest.fixture(scope="session")
def boundary_shrink_run(digits_run, tmp_path_factory):
    # FGSM at ε = 0.1 flips only 18 % of the forget images of this confident 8×8 model (17 grey levels), so
    # most neighbour labels stay 5 and nothing is forgotten; the official PGD option (10 steps of 0.05 in a
    # 0.2 ball) flips 85 %. SGD lr 0.02 for 3 epochs × 3 steps.
    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("bs") / "boundary_shrink"
    return workdir, unlearn_cli(source, workdir, "boundary_shrink", "--lr", 0.02, "--epochs", 3,
                                "--hp", "attack=pgd", "--hp", "bound=0.2", "--hp", "pgd_step=0.05",
                                "--hp", "pgd_iterations=10")


@pytest.mark.slow
def test_boundary_shrink_forgets_the_class(boundary_shrink_run, original):
    workdir, metrics = boundary_shrink_run
    # measured: forget test 0.97 → 0.33, forget train 1.00 → 0.39, remaining test 0.978 → 0.923
    assert metrics["forget_test_acc"] <= original["forget_test_acc"] - 0.3
    assert metrics["forget_train_acc"] <= original["forget_train_acc"] - 0.3
    assert metrics["test_acc"] >= 0.85
    success = [line["attack_success"] for line in step_log(workdir)]
    assert len(success) == 9 and min(success) > 0.6  # the PGD neighbours mostly leave class 5


@pytest.fixture(scope="session")
def boundary_expand_run(digits_run, tmp_path_factory):
    # SGD lr 0.01 for 6 epochs × 3 steps; lr 0.03 forgets no faster and costs 20 points of test accuracy.
    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("be") / "boundary_expand"
    return workdir, unlearn_cli(source, workdir, "boundary_expand", "--lr", 0.01, "--epochs", 6)


@pytest.mark.slow
def test_boundary_expand_forgets_and_prunes_the_shadow_class(boundary_expand_run, original, original_model):
    workdir, metrics = boundary_expand_run
    # measured from two originals that differ only in float rounding (trained by a scanned and by a stepped
    # epoch loop, same test accuracy 0.978): forget test 0.97 → 0.25 / 0.28, forget train 1.00 → 0.43 / 0.32,
    # remaining test 0.978 → 0.929 / 0.774. Training on forget-only batches moves the BatchNorm statistics,
    # and how much utility that costs by epoch 6 varies this much; the bound is below the lower measurement.
    assert metrics["forget_test_acc"] <= original["forget_test_acc"] - 0.3
    assert metrics["forget_train_acc"] <= original["forget_train_acc"] - 0.3
    assert metrics["test_acc"] >= 0.7
    assert step_log(workdir)[-1]["shadow_rate"] > 0.5  # the widened head did pick the shadow class
    # The saved model is the C-way one: it restores into the original architecture.
    _, params, batch_stats = original_model
    params, _ = checkpoint.restore_model(workdir, params, batch_stats)
    assert params["classifier"]["kernel"].shape == (128, 10)


@pytest.fixture(scope="session")
def scrub_run(digits_run, tmp_path_factory):
    # One epoch with its max pass (msteps 1): 3 max steps on forget batches of 64, then 6 min steps on
    # retain batches of 256, at SGD lr 0.05 (the notebook's 5e-4 leaves this model unchanged in 9 steps).
    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("scrub") / "scrub"
    return workdir, unlearn_cli(source, workdir, "scrub", "--lr", 0.05, "--epochs", 1,
                                "--hp", "msteps=1", "--hp", "forget_batch_size=64")


@pytest.mark.slow
def test_scrub_forgets_the_class(scrub_run, original):
    workdir, metrics = scrub_run
    # measured from the two originals of test_boundary_expand_forgets_and_prunes_the_shadow_class (equal but
    # for float rounding): forget test 0.97 → 0.00, forget train 1.00 → 0.00 from both, remaining test
    # 0.978 → 0.920 / 0.796; the bound is below the lower measurement.
    assert metrics["forget_test_acc"] <= 0.1
    assert metrics["forget_train_acc"] <= 0.1
    assert metrics["test_acc"] >= 0.75
    steps = step_log(workdir)
    assert [line["max_step"] for line in steps] == [1.0] * 3 + [0.0] * 6  # 146 = 64 + 64 + 18; 1292 → 6
    assert steps[2]["kl"] > steps[0]["kl"]  # the max steps drive the student away from the teacher


@pytest.fixture(scope="session")
def unsir_run(digits_run, tmp_path_factory):
    # Notebook defaults except a noise batch of 32 (for 8×8 digits): K = 20 copies → 640 noise images
    # beside the 1,292 retain images (all of them: fewer than 1,000 per class).
    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("unsir") / "unsir"
    return workdir, unlearn_cli(source, workdir, "unsir", "--hp", "noise_batch=32")


@pytest.mark.slow
def test_unsir_impairs_then_repairs(unsir_run, original):
    workdir, metrics = unsir_run
    # measured: forget test 0.97 → 0.00, forget train 1.00 → 0.00, remaining test 0.978 → 0.910
    assert metrics["forget_test_acc"] <= 0.1
    assert metrics["forget_train_acc"] <= 0.1
    assert metrics["test_acc"] >= 0.85
    steps = step_log(workdir)
    impair, repair = steps[:8], steps[8:]  # ⌈1932/256⌉ = 8 impair steps, ⌈1292/256⌉ = 6 repair steps
    assert len(repair) == 6
    assert [line["learning_rate"] for line in steps] == pytest.approx([0.02] * 8 + [0.01] * 6)
    # 7 full batches of 256, then 140 rows widened to 144 for 8 devices (the first 4 repeated).
    noise_rows = sum(line["noise_fraction"] * width for line, width in zip(impair, [256] * 7 + [144]))
    assert 640 - 0.01 <= noise_rows <= 644 + 0.01
    assert all(line["noise_fraction"] == 0 for line in repair)


def test_unsir_refuses_sample_forgetting(digits_run, tmp_path, capsys):
    source, _ = digits_run
    workdir = tmp_path / "unsir_random"
    assert main(["unlearn", "--method", "unsir", "--forget", "random:50", "--from", str(source),
                 "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxunlearn: error: method unsir supports only class forgetting, not sample"]
    assert not workdir.exists()


@pytest.fixture(scope="session")
def bad_teacher_run(digits_run, tmp_path_factory):
    # One epoch as the notebook, but Adam lr 1e-3 and batch 64 (9 steps): at lr 1e-4 with batch 256 the
    # 3 steps of digits barely move the student.
    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("badt") / "bad_teacher"
    return workdir, unlearn_cli(source, workdir, "bad_teacher", "--lr", 0.001, "--batch-size", 64)


@pytest.mark.slow
def test_bad_teacher_forgets_the_class(bad_teacher_run, original):
    workdir, metrics = bad_teacher_run
    # measured: forget test 0.97 → 0.31, forget train 1.00 → 0.39, remaining test 0.978 → 0.975
    assert metrics["forget_test_acc"] <= original["forget_test_acc"] - 0.3
    assert metrics["forget_train_acc"] <= original["forget_train_acc"] - 0.3
    assert metrics["forget_test_conf"] < 0.6  # pulled towards the random teacher's flat output
    assert metrics["test_acc"] >= original["test_acc"] - 0.03  # the competent teacher keeps the rest
    steps = step_log(workdir)
    assert len(steps) == 9  # 146 forget + 387 retain (30 % of 1,292): 8 batches of 64, then 21 widened to 24
    forget_rows = sum(line["forget_fraction"] * width for line, width in zip(steps, [64] * 8 + [24]))
    assert 146 - 0.01 <= forget_rows <= 149 + 0.01  # up to 3 repeated rows may be forget rows
