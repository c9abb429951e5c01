"""The one training loop every method runs through: `Trainer` runs epochs (`jaxunlearn.engine.epoch`) over a
`Runner` (one model or many, `jaxunlearn.engine.runners`) until the method's rule stops the run or its epochs
are done, resuming from the latest checkpoint. After each epoch it checks the losses and state are finite,
evaluates, and calls its hooks in order: the step and epoch logs, the checkpoint, the progress line, then the
caller's own (`Hook`, each with its period, levanter style).
"""

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.compile_time import compile_clock
from jaxunlearn.engine.ensemble import Ensemble
from jaxunlearn.engine.parallel import Execution, is_main_process
from jaxunlearn.engine.procedure import Procedure
from jaxunlearn.engine.runners import ManyModels, OneModel, Runner
from jaxunlearn.engine.state import TrainState
from jaxunlearn.errors import TrainingDiverged, UserError
from jaxunlearn.files import read_log, write_text


@dataclass(frozen=True)
class EpochInfo:
    """What a hook sees after an epoch. epoch: epochs done (1-based); steps: optimizer steps done; seconds: the
    run's wall time so far; step_metrics: {name: [steps of this epoch]} ([steps, K] for K models);
    evaluation: the epoch's evaluation (a dict, or one per model); finished: the run ends with this epoch.
    `model()` is the state as the run returns it (this process's copy on one device; K stacked models): call it
    inside the hook, as the next epoch reuses the state's buffers."""

    epoch: int
    epochs: int
    steps: int
    seconds: float
    step_metrics: dict[str, np.ndarray]
    evaluation: Any
    finished: bool
    model: Callable[[], TrainState]


@dataclass(frozen=True)
class Hook:
    """`fn(info)` after every `every`-th epoch and after the run's last (`EpochInfo`); on every process (test
    `jax.process_index()` for work that one process should do)."""

    fn: Callable[[EpochInfo], None]
    every: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int) and self.every >= 1):
            raise UserError(f"a hook's `every` must be a whole number of epochs ≥ 1, got {self.every!r}")

    def due(self, info: EpochInfo) -> bool:
        return info.finished or info.epoch % self.every == 0


class Trainer:
    """The loop of one run: `fit(state)` places `state` (one model, or K stacked with an `ensemble`), resumes
    from the latest checkpoint of `workdir` if there is one, and runs epochs until the method's rule stops it
    (each model on its own) or `procedure.epochs` are done, data-parallel over `execution`'s devices (`data` may
    live anywhere: it is replicated onto them).

    Its own hooks, in this order after every epoch: append one JSON line per step to `logs[0]` and one per epoch
    (its evaluation) to `logs[1]` (process 0), then save a checkpoint once `save_every_seconds` have passed since
    the last one, and at the end (every process joins), then print the progress line (process 0); the caller's
    `hooks` follow. The logs go first and are cut back to the checkpoint a run resumes from (to nothing when there
    is none), so logs and checkpoints agree after any kill.
    """

    def __init__(self, procedure: Procedure, graphdef: nnx.GraphDef, data: "DeviceData | StreamedData",
                 workdir: Path, logs: tuple[Path, Path], meta: dict[str, Any], label: str, *,
                 execution: Execution = Execution(), save_every_seconds: float = 60.0,
                 ensemble: Ensemble | None = None, hooks: Sequence[Hook] = ()):
        self.procedure, self.workdir, self.logs, self.meta, self.label = procedure, Path(workdir), logs, meta, label
        self.save_every_seconds = save_every_seconds
        self.runner: Runner = OneModel(procedure, graphdef, data, execution, label) if ensemble is None else \
            ManyModels(procedure, graphdef, data, execution, label, ensemble)
        self.main = is_main_process()
        self.hooks = [Hook(self._log), Hook(self._checkpoint), Hook(self._progress), *hooks]

    def fit(self, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The final state (this process's copy on one device) and the metadata of its checkpoint (`epoch`,
        `finished`, `evaluation`, `seconds`, `compile_seconds`, `steps`, plus `meta`)."""
        self.manager = checkpoint.open_manager(self.workdir)
        try:
            state, last = self.initial_state(state)
            if not last["finished"]:
                state, last = self._epochs(state, last)
        except BaseException as error:
            try:
                self.manager.close()
            except Exception:  # after a failed save it may fail to close too: the error raised here is the one to see
                pass
            if isinstance(error, Exception) and checkpoint.no_space(error):
                kept = self.manager.latest_step()
                raise UserError(f"no space left on device to write {self.workdir}; " + (
                    f"its last complete checkpoint, epoch {kept}, is kept: free space and run the same command "
                    f"again to resume" if kept is not None else "no checkpoint had been saved yet")) from None
            raise
        self.manager.close()
        self.runner.finish()
        return self.runner.result(state), last

    def initial_state(self, state: TrainState) -> tuple[Any, dict[str, Any]]:
        """The placed state and checkpoint metadata to continue from: the latest checkpoint's, or the given
        state before epoch 1; the logs are cut back to its step."""
        placed = self.runner.place(state)
        latest = self.manager.latest_step()
        if latest is None:
            if self.main:
                for path in self.logs:
                    _truncate_log(path, 0)
            return placed, {**self.meta, "epoch": 0, "finished": False, "evaluation": {}, "seconds": 0.0, "steps": 0}
        restored, last = checkpoint.restore_state(self.manager, latest, self.runner.saved(placed))
        checkpoint.check_run_meta(last, f"{self.manager.directory} step {latest}")
        placed = self.runner.restored(restored, last)
        if self.main:
            for path in self.logs:
                _truncate_log(path, last["steps"])
            if not last["finished"]:
                print(f"{self.label}: resuming after epoch {last['epoch']}", file=sys.stderr)
        return placed, last

    def _epochs(self, state: Any, last: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Epochs from `last["epoch"]` until the method's rule stops the run or the last epoch: each epoch's
        steps, the non-finite checks and the evaluation, then the hooks."""
        runner, epochs = self.runner, self.procedure.epochs
        seconds, steps, compiled = last["seconds"], last["steps"], last.get("compile_seconds", 0.0)
        runner.compile(last["epoch"])
        self.last_save = time.perf_counter()
        for epoch in range(last["epoch"], epochs):
            started = time.perf_counter()
            first_step = steps
            with compile_clock() as clock:
                state, step_metrics = runner.epoch(state, epoch, first_step)
                steps = first_step + len(step_metrics["loss"])
                bad = runner.first_non_finite(step_metrics)
                if bad is not None:
                    self._diverged(f"non-finite loss{bad[1]} at step {first_step + 1 + bad[0]} (epoch {epoch + 1})")
                bad_model = runner.non_finite_state(state)
                if bad_model is not None:  # finite losses, but the epoch's last update was not
                    self._diverged(f"non-finite parameters or optimizer state{bad_model} after step {steps} "
                                   f"(epoch {epoch + 1})")
                evaluation, stop = runner.evaluate(state, epoch + 1 == epochs, last["evaluation"])
            seconds += time.perf_counter() - started
            compiled += clock.seconds
            finished = stop or epoch + 1 == epochs
            last = {**self.meta, "epoch": epoch + 1, "finished": finished, "evaluation": evaluation,
                    "seconds": seconds, "compile_seconds": compiled, "steps": steps, **runner.meta()}
            self.state, self.last = state, last  # what the checkpoint hook saves
            info = EpochInfo(epoch=epoch + 1, epochs=epochs, steps=steps, seconds=seconds, step_metrics=step_metrics,
                             evaluation=evaluation, finished=finished, model=lambda state=state: runner.result(state))
            for hook in self.hooks:
                if hook.due(info):
                    hook.fn(info)
            if stop:
                break
        return state, last

    def _log(self, info: EpochInfo) -> None:
        if self.main:
            step_log, epoch_log = self.logs
            _append_log(step_log, info.step_metrics, info.steps - len(info.step_metrics["loss"]),
                        self.procedure.learning_rate)
            with epoch_log.open("a") as log:
                log.write(json.dumps({"epoch": info.epoch, "step": info.steps, **_by_name(info.evaluation)}) + "\n")

    def _checkpoint(self, info: EpochInfo) -> None:
        if info.finished or time.perf_counter() - self.last_save >= self.save_every_seconds:
            checkpoint.save(self.manager, info.epoch, self.runner.saved(self.state), self.last)
            self.last_save = time.perf_counter()

    def _progress(self, info: EpochInfo) -> None:
        if self.main:
            self.runner.report(info.epoch, info.step_metrics, info.evaluation, info.seconds)

    def _diverged(self, problem: str) -> None:
        """Raise TrainingDiverged naming the checkpoint the run keeps (every saved one passed this check)."""
        kept = self.manager.latest_step()
        where = self.workdir / checkpoint.CHECKPOINT_DIR
        problem = f"{self.label}: {problem}"
        raise TrainingDiverged(f"{problem}; the last finite checkpoint, epoch {kept}, is kept in {where}"
                               if kept is not None else f"{problem}; no checkpoint had been saved yet")


def _by_name(evaluation: dict[str, float] | list[dict[str, float]]) -> dict[str, Any]:
    """An epoch's evaluation as one JSON object: as it is for one model; for K models, each metric as a
    list over the models (None for a model not evaluated)."""
    if isinstance(evaluation, dict):
        return evaluation
    names = dict.fromkeys(name for model in evaluation for name in model)
    return {name: [model.get(name) for model in evaluation] for name in names}


def _append_log(path: Path, step_metrics: dict[str, np.ndarray], first_step: int,
                learning_rate: Callable[[np.ndarray], Any]) -> None:
    steps = np.arange(first_step, first_step + len(step_metrics["loss"]))
    rates = np.broadcast_to(np.asarray(learning_rate(steps)), steps.shape)
    with path.open("a") as log:
        for i, step in enumerate(steps):
            line = {"step": int(step) + 1, "learning_rate": float(rates[i])}
            line.update({name: values[i].tolist() for name, values in step_metrics.items()})
            log.write(json.dumps(line) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Cut a log back to the restored checkpoint's step, atomically: the lines past it were written by a run
    killed before its next checkpoint was complete (a last line torn by the kill goes with them)."""
    if path.exists():
        kept = [line for line, record in read_log(path) if record.get("step", last_step + 1) <= last_step]
        write_text(path, "".join(line + "\n" for line in kept))
