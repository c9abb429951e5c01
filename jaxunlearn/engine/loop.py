"""The one training loop every method runs through.

A step is a pure function (state, indices) → (state, metrics) that gathers its batches from the
device-resident dataset. An epoch is a `lax.scan` of that step over the epoch's index plan, compiled once and
run with the state buffers donated. Between epochs the loop evaluates, checkpoints, logs and checks the
method's termination rule.
"""

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxunlearn import checkpoint
from jaxunlearn.data.device import DeviceData, gather_batch
from jaxunlearn.engine.state import TrainState
from jaxunlearn.errors import TrainingDiverged

Batch = dict[str, tuple[jax.Array, jax.Array]]
"""role ("train", "forget", "retain", ...) → (images float32 [B, H, W, C], labels int32 [B])."""

LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, dict[str, jax.Array]]]
"""(model in train mode, batch) → (scalar loss, named scalar parts)."""

Block = dict[str, np.ndarray]
"""role → int32 [steps, B] indices into the train set; one `lax.scan` runs over the leading axis."""


def make_epoch_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                  mean: Sequence[float], std: Sequence[float], on_step: "StepProgress | None" = None):
    """Compile an epoch: (state, train_images, train_labels, blocks) → (state, per-step metrics).

    Each block is scanned in turn (a plan has one block of full batches and at most one of smaller
    remainder batches, so an epoch keeps every sample without padding). The state is donated.
    `on_step`, if given, is called on the host with the step number every `on_step.every` steps.
    """
    mean, std = tuple(mean), tuple(std)

    def train_step(images, labels, state: TrainState, indices: dict[str, jax.Array]):
        batch = {role: gather_batch(images, labels, idx, mean, std) for role, idx in indices.items()}

        def objective(params):
            model = nnx.merge(graphdef, params, state.batch_stats, copy=True)
            loss, parts = loss_fn(model, batch)
            return loss, (nnx.state(model, nnx.BatchStat), parts)

        (loss, (batch_stats, parts)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            params=optax.apply_updates(state.params, updates), batch_stats=batch_stats,
            opt_state=opt_state, step=state.step + 1,
        )
        if on_step is not None:
            jax.lax.cond(new_state.step % on_step.every == 0,
                         lambda step: jax.debug.callback(on_step, step), lambda step: None, new_state.step)
        return new_state, {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads)}

    def epoch(state: TrainState, images, labels, blocks: tuple[dict[str, jax.Array], ...]):
        metrics = []
        for block in blocks:
            state, block_metrics = jax.lax.scan(lambda s, i: train_step(images, labels, s, i), state, block)
            metrics.append(block_metrics)
        return state, jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)

    return jax.jit(epoch, donate_argnums=0)


class StepProgress:
    """A progress bar within an epoch on a terminal, fed by the compiled loop about 50 times an epoch."""

    def __init__(self, label: str, steps_per_epoch: int):
        self.label, self.steps_per_epoch = label, steps_per_epoch
        self.every = max(1, steps_per_epoch // 50)
        self.first_step, self.epoch = 0, 0

    def start(self, epoch: int, first_step: int) -> None:
        self.epoch, self.first_step = epoch, first_step

    def __call__(self, step: jax.Array) -> None:
        done = int(step) - self.first_step
        print(f"\r{self.label} epoch {self.epoch + 1}: step {done}/{self.steps_per_epoch}", end="",
              file=sys.stderr, flush=True)


def steps_in(plan: Sequence[Block]) -> int:
    """Number of optimizer steps in an epoch plan."""
    return sum(next(iter(block.values())).shape[0] for block in plan)


@dataclass(frozen=True)
class Procedure:
    """What the loop runs; everything method-specific is already folded in.

    plan: epoch number → index blocks (deterministic in the epoch, so a resumed run replays the same plan).
    evaluate: state → metrics logged after each epoch and handed to `should_stop`.
    learning_rate: optimizer steps (int array) → learning rates, for the log.
    """

    loss_fn: LossFn
    tx: optax.GradientTransformation
    plan: Callable[[int], Sequence[Block]]
    epochs: int
    evaluate: Callable[[TrainState], dict[str, float]]
    should_stop: Callable[[dict[str, float]], bool]
    learning_rate: Callable[[np.ndarray], Any]


def fit(procedure: Procedure, graphdef: nnx.GraphDef, state: TrainState, data: DeviceData,
        workdir: Path, meta: dict[str, Any], label: str, *,
        save_every_seconds: float = 60.0) -> tuple[TrainState, dict[str, Any]]:
    """Run epochs until the method's rule stops it or `procedure.epochs` are done.

    Resumes from the latest checkpoint of `workdir` if there is one. Saves a checkpoint at the end of an
    epoch once `save_every_seconds` have passed since the last one, and at the end of the run; appends one
    JSON line per step to `workdir/metrics.jsonl` and one per epoch (its evaluation) to
    `workdir/evaluations.jsonl`. Returns the final state and the metadata of
    its checkpoint (`epoch`, `finished`, `evaluation`, `seconds`, `steps`, plus `meta`).
    """
    manager = checkpoint.open_manager(workdir)
    log_path, evaluation_path = Path(workdir) / "metrics.jsonl", Path(workdir) / "evaluations.jsonl"
    start_epoch, seconds, last = 0, 0.0, {**meta, "epoch": 0, "finished": False, "evaluation": {}}
    latest = manager.latest_step()
    if latest is not None:
        state, last = checkpoint.restore_state(manager, latest, state)
        start_epoch, seconds = last["epoch"], last["seconds"]
        for path in (log_path, evaluation_path):
            _truncate_log(path, int(state.step))
        if last["finished"]:
            manager.close()
            return state, last
        print(f"{label}: resuming after epoch {start_epoch}", file=sys.stderr)

    progress = StepProgress(label, steps_in(procedure.plan(start_epoch))) if sys.stderr.isatty() else None
    epoch_fn = make_epoch_fn(graphdef, procedure.tx, procedure.loss_fn, data.mean, data.std, progress)
    # Commit every leaf to one placement, as the epoch's outputs are, so epoch 2 reuses epoch 1's executable.
    state = jax.device_put(state, data.train_labels.sharding)
    last_save = time.perf_counter()
    try:
        for epoch in range(start_epoch, procedure.epochs):
            started = time.perf_counter()
            first_step = int(state.step)
            if progress is not None:
                progress.start(epoch, first_step)
            blocks = tuple({role: jnp.asarray(idx) for role, idx in block.items()}
                           for block in procedure.plan(epoch))
            state, step_metrics = epoch_fn(state, data.train_images, data.train_labels, blocks)
            step_metrics = jax.device_get(step_metrics)
            if not np.all(np.isfinite(step_metrics["loss"])):
                bad = first_step + 1 + int(np.argmin(np.isfinite(step_metrics["loss"])))
                raise TrainingDiverged(
                    f"{label}: non-finite loss at step {bad} (epoch {epoch + 1}); "
                    f"the last good checkpoint is kept in {Path(workdir) / checkpoint.CHECKPOINT_DIR}"
                )
            evaluation = procedure.evaluate(state)
            seconds += time.perf_counter() - started
            stop = procedure.should_stop(evaluation)
            finished = stop or epoch + 1 == procedure.epochs
            last = {**meta, "epoch": epoch + 1, "finished": finished, "evaluation": evaluation,
                    "seconds": seconds, "steps": int(state.step)}
            if finished or time.perf_counter() - last_save >= save_every_seconds:
                checkpoint.save(manager, epoch + 1, state, last)
                last_save = time.perf_counter()
            _append_log(log_path, step_metrics, first_step, procedure.learning_rate)
            with evaluation_path.open("a") as log:
                log.write(json.dumps({"epoch": epoch + 1, "step": int(state.step), **evaluation}) + "\n")
            _progress(label, epoch + 1, procedure.epochs, step_metrics, evaluation, seconds)
            if stop:
                break
    finally:
        manager.close()
    return state, last


def _append_log(path: Path, step_metrics: dict[str, np.ndarray], first_step: int,
                learning_rate: Callable[[np.ndarray], Any]) -> None:
    steps = np.arange(first_step, first_step + len(step_metrics["loss"]))
    rates = np.broadcast_to(np.asarray(learning_rate(steps)), steps.shape)
    with path.open("a") as log:
        for i, step in enumerate(steps):
            line = {"step": int(step) + 1, "learning_rate": float(rates[i])}
            line.update({name: float(values[i]) for name, values in step_metrics.items()})
            log.write(json.dumps(line) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines past the restored checkpoint (written by a run killed after them)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if line.strip() and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in lines))


def _progress(label: str, epoch: int, epochs: int, step_metrics: dict[str, np.ndarray],
              evaluation: dict[str, float], seconds: float) -> None:
    width = 20
    done = math.floor(width * epoch / epochs)
    shown = " ".join(f"{k} {v:.3f}" for k, v in evaluation.items())
    print(f"\r{label} [{'#' * done}{'.' * (width - done)}] epoch {epoch}/{epochs} "
          f"loss {float(np.mean(step_metrics['loss'])):.4f} {shown} {seconds:.1f}s",
          file=sys.stderr, flush=True)
