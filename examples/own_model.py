"""Your own Flax model in your own loop: train a small CNN on scikit-learn's digits, forget digit 5 with
Contrastive Unlearning, and evaluate both models with jaxunlearn's metrics (2 CPU cores: about 10 s).

    python examples/own_model.py [--json results.json]

The model only has to return (logits, embedding); the steps are jaxunlearn's pure functions, jitted here.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxunlearn as ju


class SmallCNN(nnx.Module):
    """Two convolutions with BatchNorm, a projection to a unit-norm embedding, a linear classifier."""

    def __init__(self, num_classes: int, *, in_channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, 32, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, axis_name=ju.DATA_AXIS, rngs=rngs)  # statistics over the whole batch
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
        self.bn2 = nnx.BatchNorm(64, axis_name=ju.DATA_AXIS, rngs=rngs)
        self.project = nnx.Linear(64, 64, rngs=rngs)
        self.classify = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=not train))
        feat = ju.models.relu_l2_normalise(self.project(x.mean(axis=(1, 2))))
        return self.classify(feat), feat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the metrics of both models to this file")
    args = parser.parse_args()

    data = ju.load_dataset("digits")
    split = ju.make_split(ju.parse_forget("class:5"), data.train_labels, data.num_classes, seed=0)
    images = (data.train_images / 255.0 - np.asarray(data.mean)) / np.asarray(data.std)
    labels = data.train_labels
    batch = lambda indices: (jnp.asarray(images[indices], jnp.float32), jnp.asarray(labels[indices]))
    rng = np.random.default_rng(0)

    model = SmallCNN(data.num_classes, in_channels=data.image_shape[-1], rngs=nnx.Rngs(0))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    # Train: the library's supervised loss, the user's optimizer and loop.
    tx = optax.sgd(0.05, momentum=0.9)
    state = ju.create_state(params, batch_stats, tx)
    train_step = jax.jit(ju.make_step(graphdef, tx, ju.supervised_loss), donate_argnums=0)
    for _ in range(15):
        for indices in rng.permutation(len(labels))[: len(labels) // 64 * 64].reshape(-1, 64):
            state, _ = train_step(state, {"train": batch(indices)})
    original = ju.evaluate_model(graphdef, state.params, state.batch_stats, data, split)

    # Forget class 5: CU's objective at its official defaults, each forget batch beside ω retain batches.
    hparams = ju.ContrastiveHparams(batch_size=64)
    tx = optax.sgd(hparams.learning_rate, momentum=hparams.momentum)
    state = ju.create_state(state.params, state.batch_stats, tx)
    unlearn_step = jax.jit(ju.make_step(graphdef, tx, ju.contrastive_objective(hparams, "class")),
                           donate_argnums=0)
    forget_test = np.flatnonzero(split.forget_test_mask(data.test_labels))
    test_images = (data.test_images[forget_test] / 255.0 - np.asarray(data.mean)) / np.asarray(data.std)
    predict = jax.jit(lambda params, stats, x: nnx.merge(graphdef, params, stats)(x, train=False)[0])
    epochs = 0
    for epochs in range(1, hparams.epochs + 1):
        for start in range(0, len(split.forget), hparams.batch_size):
            forget = split.forget[start:start + hparams.batch_size]
            for _ in range(hparams.retain_per_forget):
                retain = rng.choice(split.retain, size=len(forget))
                state, metrics = unlearn_step(state, {"forget": batch(forget), "retain": batch(retain)})
        logits = predict(state.params, state.batch_stats, jnp.asarray(test_images, jnp.float32))
        if np.mean(np.asarray(logits).argmax(axis=1) == data.test_labels[forget_test]) <= 1 / data.num_classes:
            break  # CU's termination rule: the forgotten class's test accuracy at chance or below
    unlearned = ju.evaluate_model(graphdef, state.params, state.batch_stats, data, split)

    keys = ("forget_train_acc", "forget_test_acc", "test_acc", "bn_recomputed_forget_test_acc")
    print(f"{'model':12s}" + "".join(f"{key:>{len(key) + 2}s}" for key in keys))
    for name, metrics in (("original", original), ("contrastive", unlearned)):
        print(f"{name:12s}" + "".join(f"{metrics[key]:{len(key) + 2}.3f}" for key in keys))
    print(f"CU stopped after {epochs} epochs")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"original": original, "contrastive": unlearned, "unlearn_epochs": epochs}, file, indent=1)


if __name__ == "__main__":
    main()
