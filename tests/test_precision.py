"""Mixed precision ("bf16"): bfloat16 forward and backward passes, float32 parameters, optimizer state,
BatchNorm statistics, embedding, loss and reductions.

Tolerance policy. bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation). Through a
width-1/16 ResNet-18 (about 20 layers) the forward pass stays close: measured relative error of a CU step's loss
2e-3 and of its small contrastive part (0.18 here) 1.5e-2. The backward pass does not: its cotangents are bfloat16
through about 20 BatchNorm layers, whose backward subtracts their means, and the convolution kernels' gradients
carry the error, so one step's parameter update differs from float32 by 39% in norm (cosine 0.93; with products
accumulated in float32 as the models do; 44% and 0.91 without; 28% and 0.96 at width 1/4). That is the noise of
bfloat16 training, which still reaches the float32 accuracy (tests/test_models_cli.py). So: embeddings (rows of
norm ≤ 1) within 1e-2 in eval mode (measured 2.2e-3 ResNet, 2.4e-3 ViT) and 1e-1 in train mode, where the batch
statistics of the untrained ResNet's 4-channel layers amplify it (measured 4.4e-2); a step's loss within 1e-2
relative and its contrastive part within 5e-2; its update within 50% in norm and pointing the same way (cosine >
0.9, where a wrong gradient gives about 0); and the parts that must not lose precision are tested exactly: the
state stays float32, the running statistics are not rounded to bfloat16, and the loss is computed in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxunlearn as ju
from jaxunlearn.data.device import normalise


@pytest.fixture(scope="module")
def digits():
    dataset = ju.load_dataset("digits")
    return dataset, ju.make_split(ju.parse_forget("class:5"), dataset.train_labels, 10, seed=0)


def split_model(name, precision, **options):
    model = ju.create_model(name, 10, in_channels=1, image_size=(8, 8), width=0.0625 if name != "vit_small" else 0.125,
                            bn_axis_name=ju.DATA_AXIS, precision=precision, **options)
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def cu_batch(dataset, split, seed=0):
    rng = np.random.default_rng(seed)
    rows = {"forget": rng.choice(split.forget, 32, replace=False), "retain": rng.choice(split.retain, 32)}
    return {role: (normalise(jnp.asarray(dataset.train_images[r]), dataset.mean, dataset.std),
                   jnp.asarray(dataset.train_labels[r])) for role, r in rows.items()}


@pytest.mark.parametrize("name, options", [("resnet18", {}), ("vit_small", {"depth": 2})])
def test_bf16_model_keeps_float32_state_and_outputs(digits, name, options):
    dataset, split = digits
    graphdef32, params, batch_stats = split_model(name, "f32", **options)
    graphdef16, params16, stats16 = split_model(name, "bf16", **options)
    for tree in (params16, stats16):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} <= {jnp.dtype(jnp.float32)}
    images = cu_batch(dataset, split)["forget"][0]
    for train in (False, True):
        def run(graphdef):  # under a one-element DATA_AXIS, which the BatchNorm statistics average over
            forward = lambda x: nnx.merge(graphdef, params, batch_stats, copy=True)(x, train=train)
            return jax.tree.map(lambda y: y[0], jax.vmap(forward, axis_name=ju.DATA_AXIS)(images[None]))
        (_, feat32), (logits16, feat16) = run(graphdef32), run(graphdef16)
        assert logits16.dtype == feat16.dtype == jnp.float32
        assert float(jnp.abs(feat16 - feat32).max()) < (1e-1 if train else 1e-2)  # rows of norm ≤ 1
        assert float(jnp.abs(feat16 - feat32).max()) > 0  # it did compute in bfloat16


def test_bf16_cu_step_tracks_the_float32_step(digits):
    dataset, split = digits
    batch = cu_batch(dataset, split)
    tx = optax.sgd(0.05, momentum=0.9)
    objective = ju.contrastive_objective(ju.ContrastiveHparams(batch_size=32), "class")
    results = {}
    for precision in ("f32", "bf16"):
        graphdef, params, batch_stats = split_model("resnet18", precision)
        step = jax.jit(ju.make_step(graphdef, tx, objective))
        start = ju.create_state(params, batch_stats, tx)
        results[precision] = (start, *step(start, batch))
    start, state32, metrics32 = results["f32"]
    _, state16, metrics16 = results["bf16"]
    assert abs(float(metrics16["loss"]) / float(metrics32["loss"]) - 1) < 1e-2
    assert abs(float(metrics16["contrastive"]) / float(metrics32["contrastive"]) - 1) < 5e-2
    flat = lambda state: np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]).astype(np.float64)
    update32, update16 = flat(state32) - flat(start), flat(state16) - flat(start)
    assert np.linalg.norm(update16 - update32) < 0.5 * np.linalg.norm(update32)
    assert update16 @ update32 / (np.linalg.norm(update16) * np.linalg.norm(update32)) > 0.9
    for tree in (state16.params, state16.batch_stats, state16.opt_state):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    # The running statistics are updated in float32, not rounded to bfloat16 (which keeps 8 significant bits).
    means = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state16.batch_stats)])
    assert np.mean(means != means.astype(jnp.bfloat16).astype(np.float32)) > 0.5


def test_contrastive_loss_in_float32_from_bf16_embeddings():
    """L_CT divides similarities in [0, 1] by τ and takes logs of sums of exponentials: computed in bfloat16
    it loses the small differences the gradient lives on; the model hands the loss float32 embeddings."""
    rng = np.random.default_rng(0)
    feat = np.abs(rng.normal(size=(64, 128)))
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    forget, retain = jnp.asarray(feat[:16], jnp.float32), jnp.asarray(feat[16:], jnp.float32)
    labels_f, labels_r = jnp.zeros(16, jnp.int32), jnp.asarray(rng.integers(0, 10, 48), jnp.int32)
    loss = lambda f, r: ju.contrastive_unlearning_loss(f, r, labels_f, labels_r, temperature=0.7, mode="class")
    exact = float(loss(forget, retain))
    rounded_input = float(loss(*(x.astype(jnp.bfloat16).astype(jnp.float32) for x in (forget, retain))))
    in_bf16 = float(loss(forget.astype(jnp.bfloat16), retain.astype(jnp.bfloat16)))
    assert abs(rounded_input - exact) < 1e-3 * abs(exact)  # bf16 embeddings, float32 arithmetic: fine
    assert abs(in_bf16 - exact) > abs(rounded_input - exact)  # bf16 arithmetic: worse
