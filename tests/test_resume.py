"""Runs that end badly resume to the same result: kills at every phase of an epoch boundary, a diverged
update, a leftover temporary file, a stale lock, another spelling of the same configuration.

A kill is injected in-process (the exception `Killed` raised from inside the loop's writers, after leaving
what a kill at that moment leaves on disk); the real `kill -9` at random moments is tests/test_cli.py's. Comparisons are exact: runs are bitwise deterministic
on CPU.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import runs
from jaxunlearn.cli import main
from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.engine import checkpoint, loop
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.errors import TrainingDiverged
from jaxunlearn.files import LOCK_FILE
from jaxunlearn.methods.supervised import supervised_loss


CONFIG = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=3, batch_size=256))
"""1438 digits in batches of 256: 5 steps per epoch, 15 in all."""
ONE_DEVICE = Execution(devices=1)


class Killed(BaseException):
    """What a kill -9 does to the loop: it stops wherever it is, with no handler running."""


def train(workdir):
    return runs.train(CONFIG, workdir, execution=ONE_DEVICE, save_every_seconds=0)


def logs(workdir) -> tuple[str, str]:
    return (workdir / "metrics.jsonl").read_text(), (workdir / "evaluations.jsonl").read_text()


def without_seconds(metrics: dict) -> dict:
    """The metrics without the run's timings (its seconds and the share of them spent compiling)."""
    return {name: value for name, value in metrics.items() if name not in ("seconds", "compile_seconds")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole") / "run"
    return workdir, train(workdir)


def kill_in_epoch_2_log(real):
    def append(path, step_metrics, first_step, learning_rate):
        if first_step == 5:  # epoch 2: its lines, then half a line, then the kill
            real(path, step_metrics, first_step, learning_rate)
            with path.open("a") as log:
                log.write('{"step": 11, "lea')
            raise Killed
        real(path, step_metrics, first_step, learning_rate)
    return append


def kill_at_save(after: bool):
    real = checkpoint.save

    def save(manager, epoch, state, meta):
        if epoch == 2 and not after:
            raise Killed
        real(manager, epoch, state, meta)
        if epoch == 2:
            raise Killed
    return save


def kill_inside_orbax_save(real):
    """What a kill -9 while Orbax writes epoch 2 leaves: a half-written step under Orbax's temporary name
    (it renames the directory to `2` only once every item is written)."""
    def save(manager, epoch, state, meta):
        real(manager, epoch, state, meta)
        if epoch == 2:
            final = manager.directory / "2"
            partial = manager.directory / "2.orbax-checkpoint-tmp-1"
            final.rename(partial)
            shutil.rmtree(partial / "opt_state")
            (partial / "params" / "manifest.ocdbt").unlink(missing_ok=True)
            raise Killed
    return save


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["while writing the log", "after the log, before the checkpoint",
                                   "inside Orbax's save", "after the checkpoint"])
def test_a_kill_at_any_phase_of_an_epoch_boundary_resumes_to_the_same_run(phase, uninterrupted, tmp_path,
                                                                           monkeypatch):
    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        if phase == "while writing the log":
            patch.setattr(loop, "_append_log", kill_in_epoch_2_log(loop._append_log))
        elif phase == "inside Orbax's save":
            patch.setattr(checkpoint, "save", kill_inside_orbax_save(checkpoint.save))
        else:
            patch.setattr(checkpoint, "save", kill_at_save(after=phase == "after the checkpoint"))
        with pytest.raises(Killed):
            train(workdir)
    assert not (workdir / LOCK_FILE).exists()  # released on the way out (a kill -9 leaves it stale: see below)
    metrics = train(workdir)
    whole, whole_metrics = uninterrupted
    assert logs(workdir) == logs(whole)
    assert without_seconds(metrics) == without_seconds(whole_metrics)


@pytest.mark.slow
def test_a_leftover_temporary_file_does_not_block_a_first_start(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".config.json.123.abcd.tmp").write_text('{"kind": "tr')  # killed while writing config.json
    metrics = train(workdir)
    assert without_seconds(metrics) == without_seconds(uninterrupted[1])
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.json", "evaluations.jsonl",
                                                         "metrics.json", "metrics.jsonl"]


def refuse_to_build(*args, **kwargs):
    raise AssertionError("a finished run built a model")


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_returns_its_metrics_without_building_anything(uninterrupted, tmp_path,
                                                                                 monkeypatch):
    whole, whole_metrics = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(whole, workdir)
    with monkeypatch.context() as patch:
        patch.setattr(runs, "model_state", refuse_to_build)
        assert train(workdir) == json.loads(json.dumps(whole_metrics))
    assert logs(workdir) == logs(whole)
    # metrics.json of an earlier checkpoint (an `evaluate` before the run went on) is no finished run
    stale = {**whole_metrics, "steps": 10}
    (workdir / "metrics.json").write_text(json.dumps(stale))
    assert without_seconds(train(workdir)) == without_seconds(whole_metrics)
    assert json.loads((workdir / "metrics.json").read_text())["steps"] == 15


@pytest.mark.slow
def test_a_rerun_of_a_finished_unlearning_builds_nothing(digits_run, tmp_path, monkeypatch):
    source, _ = digits_run
    command = ["unlearn", "--method", "finetune", "--forget", "class:5", "--workdir", str(tmp_path / "ft"),
               "--epochs", "1", "--from", str(source)]
    assert main(command) == 0
    finished = (tmp_path / "ft" / "metrics.json").read_text()
    monkeypatch.setattr(runs, "_starting_models", refuse_to_build)
    monkeypatch.setattr(runs, "model_state", refuse_to_build)
    assert main(command) == 0
    assert (tmp_path / "ft" / "metrics.json").read_text() == finished


def poisoned_at(step_index: int):
    """The supervised loss, whose gradient at optimizer step `step_index` (0-based) is NaN while the loss
    itself stays finite: only the parameters after that update are non-finite."""
    def loss(model, batch, step):
        value, parts = supervised_loss(model, batch, step)
        poison = jax.lax.cond(step.step == step_index, lambda v: 0.0 * jnp.sqrt(jnp.abs(v - v)),
                              lambda v: 0.0 * v, value)
        return value + poison, parts
    return loss


@pytest.mark.slow
def test_a_non_finite_last_update_is_never_checkpointed(tmp_path, monkeypatch):
    """The last update of epoch 2 (step 10) is NaN and every loss of epoch 2 finite: the state check stops
    the run, and the latest checkpoint stays epoch 1's, finite."""
    workdir = tmp_path / "run"
    monkeypatch.setattr(runs, "supervised_objective", lambda recipe: poisoned_at(9))
    with pytest.raises(TrainingDiverged, match=r"non-finite parameters or optimizer state after step 10 "
                                               r"\(epoch 2\); the last finite checkpoint, epoch 1, is kept"):
        train(workdir)
    assert checkpoint.latest_epoch(workdir) == 1
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5 and np.all(np.isfinite(losses))  # epoch 2's lines were never written


@pytest.mark.slow
def test_a_first_update_that_diverges_exits_1_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "supervised_objective", lambda recipe: poisoned_at(0))
    workdir = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--width", "0.0625", "--epochs", "2", "--batch-size", "256",
                 "--devices", "1", "--save-every", "0", "--workdir", str(workdir)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "jaxunlearn: train: non-finite loss at step 2 (epoch 1); no checkpoint had been saved yet"
    assert checkpoint.latest_epoch(workdir) is None and not (workdir / LOCK_FILE).exists()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "token": "t"}))
    assert without_seconds(train(workdir)) == without_seconds(uninterrupted[1])
    assert not (workdir / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_lock_file_no_process_holds_is_taken_whoever_wrote_it(tmp_path, uninterrupted):
    """The lock is the OS lock on the file (which a file system that locks across hosts, NFS, holds for the
    holder wherever it runs), not the file's content: a file left by a process of another host that holds no
    lock is a stale lock. A held lock is refused: tests/test_refusals.py, "workdir in use"."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "t"}))
    assert without_seconds(train(workdir)) == without_seconds(uninterrupted[1])
    assert not (workdir / LOCK_FILE).exists()


@pytest.mark.slow
def test_equivalent_spellings_of_a_configuration_resume_the_same_run(digits_run, tmp_path, capsys):
    source, _ = digits_run
    spelled = tmp_path / "x" / ".." / "source-link"
    (tmp_path / "x").mkdir()
    os.symlink(source, tmp_path / "source-link")
    workdir = str(tmp_path / "ft")
    first = ["unlearn", "--method", "finetune", "--forget", "class:5", "--workdir", workdir, "--epochs", "1"]
    assert main([*first, "--from", str(source), "--lr", "0.001"]) == 0
    assert main([*first, "--from", str(spelled), "--hp", "learning_rate=1e-3"]) == 0  # the same run: resumed
    assert main([*first, "--from", str(source), "--lr", "0.002"]) == 2
    assert "holds a run with another configuration" in capsys.readouterr().err


def test_a_log_with_a_torn_last_line_reads_without_it_and_a_damaged_middle_is_refused(tmp_path):
    from jaxunlearn.errors import UserError
    from jaxunlearn.files import read_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [record["step"] for _, record in read_log(log)] == [1, 2]
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2 is not a log line"):
        read_log(log)


def test_hooks_run_in_their_period_after_the_runs_own_logs_and_checkpoint(tmp_path, uninterrupted):
    from jaxunlearn import EpochInfo, Hook, UserError

    workdir = tmp_path / "run"
    seen = []

    def record(info: EpochInfo) -> None:
        evaluations = (workdir / "evaluations.jsonl").read_text().splitlines()
        params = info.model().params
        seen.append({"epoch": info.epoch, "steps": info.steps, "finished": info.finished,
                     "logged_epochs": len(evaluations), "logged": json.loads(evaluations[-1]),
                     "evaluation": info.evaluation, "checkpoint": checkpoint.latest_epoch(workdir),
                     "step_losses": info.step_metrics["loss"].shape,
                     "finite": all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(params))})

    metrics = runs.train(CONFIG, workdir, execution=ONE_DEVICE, save_every_seconds=0, hooks=[Hook(record, every=2)])
    assert [s["epoch"] for s in seen] == [2, 3]  # every 2nd epoch, and the last
    assert [s["steps"] for s in seen] == [10, 15] and [s["step_losses"] for s in seen] == [(5,), (5,)]
    assert [s["finished"] for s in seen] == [False, True]
    assert [s["logged_epochs"] for s in seen] == [2, 3]  # the run's own logs are written first
    assert [s["checkpoint"] for s in seen] == [2, 3]  # and its checkpoint (saved every epoch here)
    for s in seen:
        assert s["logged"] == {"epoch": s["epoch"], "step": s["steps"], **s["evaluation"]} and s["finite"]
    assert without_seconds(metrics) == without_seconds(uninterrupted[1])  # a hook changes nothing of the run
    with pytest.raises(UserError, match="every"):
        Hook(record, every=0)
