"""Nothing lost, nothing stale: a run is tied to the exact original and split it came from, its logs agree
with its checkpoints after any kill, faults end in one line, and the library raises instead of returning a
wrong number. (Racing writers: tests/test_races.py.)

The runs are small (digits, a width-1/16 ResNet-18, batches of 256: 5 steps an epoch); kills are injected
in-process as in tests/test_resume.py (`Killed` raised where a kill would stop the process).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxunlearn as ju
from jaxunlearn import runs
from jaxunlearn.cli import main
from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.data.splits import Split, make_split, parse_forget, save_split
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.errors import UserError
from jaxunlearn.run import Run

TINY = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=2, batch_size=256))
ONE_DEVICE = Execution(devices=1)


class Killed(BaseException):
    """What a kill -9 does to the loop: it stops wherever it is, with no handler running."""


def cli(*args) -> int:
    return main([str(arg) for arg in args])


def unlearn_args(source, workdir, *extra):
    return ["unlearn", "--method", "contrastive", "--forget", "class:5", "--epochs", 1, "--from", source,
            "--workdir", workdir, "--devices", 1, *extra]


@pytest.fixture(scope="module")
def original(shared):
    """A finished tiny original and a CU run from it, shared read-only; tests that write copy them."""
    def build(directory):
        runs.train(TINY, directory / "original", execution=ONE_DEVICE)
        assert cli(*unlearn_args(directory / "original", directory / "cu")) == 0
        return directory
    return shared("integrity", build)


def copy_of(original, tmp_path):
    shutil.copytree(original, tmp_path / "copy", ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "copy"


def test_a_replaced_split_file_is_refused(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    labels = Run(runs_dir / "original").dataset.train_labels
    save_split(make_split(parse_forget("class:3"), labels, 10), runs_dir / "cu" / "split.npz")  # a valid split
    assert cli("evaluate", "--from", runs_dir / "cu") == 2
    assert "not the split this run forgot" in capsys.readouterr().err


def test_an_edited_split_file_with_its_hash_recomputed_is_refused(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    stored = next((runs_dir / "original" / "splits").glob("class-5-*.npz"))
    split = ju.data.load_split(stored)
    edited = Split(forget=split.forget[1:], retain=np.sort(np.append(split.retain, split.forget[0])),
                   spec=split.spec, pairing=split.pairing, seed=split.seed)
    save_split(edited, stored)  # a consistent file: its own hash matches
    assert cli(*unlearn_args(runs_dir / "original", tmp_path / "again")) == 2
    assert "holds other indices" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_a_workdir_inside_another_run_is_refused_and_the_run_stays_readable(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    inside = runs_dir / "original" / "checkpoints" / "cu"
    assert cli(*unlearn_args(runs_dir / "original", inside)) == 2
    assert "inside the run" in capsys.readouterr().err
    assert not inside.exists()
    Run(runs_dir / "original").model()  # still readable


def test_evaluating_the_original_on_a_split_keeps_its_training_metrics(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    trained = json.loads((runs_dir / "original" / "metrics.json").read_text())
    assert cli("evaluate", "--from", runs_dir / "original", "--forget", "class:5") == 0
    assert json.loads((runs_dir / "original" / "metrics.json").read_text()) == trained
    assert "forget_test_acc" in json.loads((runs_dir / "original" / "metrics-class-5-default-seed0.json").read_text())
    capsys.readouterr()
    # the same train command again: its finished metrics (an internal KeyError 'train_acc' before)
    assert cli("train", "--dataset", "digits", "--width", 0.0625, "--epochs", 2, "--batch-size", 256,
               "--workdir", runs_dir / "original") == 0
    assert f"train accuracy {trained['train_acc']:.4f}" in capsys.readouterr().out


def test_evaluate_refuses_a_run_another_process_is_writing(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from jaxunlearn.files import RunLock
        RunLock({str(runs_dir / "cu")!r}); print("held", flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (runs_dir / "cu" / "metrics.json").read_text()
        assert cli("evaluate", "--from", runs_dir / "cu") == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert (runs_dir / "cu" / "metrics.json").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    assert cli("evaluate", "--from", runs_dir / "cu") == 0  # the kernel freed the killed holder's lock



def test_deleting_the_lock_record_lets_no_second_writer_in(tmp_path):
    """The lock is on the run directory itself: `.lock` only names the holder, so deleting it (or writing
    another) while a run goes on cannot let a second writer in (it did when the lock was on that file)."""
    from jaxunlearn.files import LOCK_FILE, RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from jaxunlearn.files import RunLock
        RunLock({str(run)!r}); print("held", flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid
        (run / LOCK_FILE).unlink()
        with pytest.raises(UserError, match="in use by process"):
            RunLock(run)
        (run / LOCK_FILE).write_text("{}")
        with pytest.raises(UserError, match="in use by process"):
            RunLock(run)
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # the kernel freed the killed holder's lock
        assert (run / LOCK_FILE).exists()
    assert not (run / LOCK_FILE).exists()


def test_a_missing_split_file_is_refused(original, tmp_path, capsys):
    runs_dir = copy_of(original, tmp_path)
    before = (runs_dir / "cu" / "metrics.json").read_text()
    (runs_dir / "cu" / "split.npz").unlink()
    assert cli("evaluate", "--from", runs_dir / "cu") == 2
    assert "split.npz is missing" in capsys.readouterr().err  # not training-run metrics under the same names
    assert (runs_dir / "cu" / "metrics.json").read_text() == before


DIRECTORY_DATASET = """
import numpy as np
import jaxunlearn as ju

def make(data_dir):
    arrays = np.load(f"{data_dir}/data.npz")
    return ju.Dataset.from_arrays(arrays["x"], arrays["y"], arrays["tx"], arrays["ty"], name="from_a_directory")
"""


def test_unlearning_from_other_data_than_the_original_saw_is_refused(tmp_path, monkeypatch):
    """`--data-dir` says where the data is now; data whose content differs from what the original was
    trained on (here every training label shifted by one) is refused before anything is written."""
    (tmp_path / "directory_dataset.py").write_text(DIRECTORY_DATASET)
    monkeypatch.syspath_prepend(str(tmp_path))
    digits = ju.load_dataset("digits")
    arrays = dict(x=digits.train_images, y=digits.train_labels, tx=digits.test_images, ty=digits.test_labels)
    for name, labels in (("same", arrays["y"]), ("other", (arrays["y"] + 1) % 10)):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "data.npz", **{**arrays, "y": labels})
    config = TrainConfig(dataset="directory_dataset:make", data_dir=str(tmp_path / "same"), width=0.0625,
                         recipe=SupervisedHparams(epochs=1, batch_size=256))
    runs.train(config, tmp_path / "original", execution=ONE_DEVICE)
    forget = ju.UnlearnConfig(method="finetune", forget="class:5", hparams={"epochs": "1"},
                              data_dir=str(tmp_path / "other"))
    with pytest.raises(UserError, match="is not the data this run's model was trained on"):
        runs.unlearn(forget, tmp_path / "original", tmp_path / "unlearned", execution=ONE_DEVICE)
    assert not (tmp_path / "unlearned").exists() and not (tmp_path / "original" / "splits").exists()


def test_a_platform_jax_cannot_start_is_one_line(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "jaxunlearn.cli", "train", "--workdir", str(tmp_path / "w")],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "tpu"})
    assert finished.returncode == 2
    [line] = finished.stderr.strip().splitlines()
    assert line.startswith("jaxunlearn: error: JAX cannot start a backend for JAX_PLATFORMS=tpu: ")
    assert not (tmp_path / "w").exists()

def kill_after_first_save(monkeypatch):
    real = checkpoint.save

    def save(manager, epoch, state, meta):
        real(manager, epoch, state, meta)
        raise Killed

    monkeypatch.setattr(checkpoint, "save", save)
    return real


def test_an_unfinished_original_is_refused_and_a_changed_one_makes_its_runs_stale(tmp_path, monkeypatch, capsys):
    source = tmp_path / "original"
    config = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=3, batch_size=256))
    real = kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):  # killed after epoch 1 of 3
        runs.train(config, source, execution=ONE_DEVICE, save_every_seconds=0)
    monkeypatch.setattr(checkpoint, "save", real)
    assert Run(source).meta["epoch"] == 1 and not Run(source).meta["finished"]

    assert cli(*unlearn_args(source, tmp_path / "cu")) == 2
    assert "is unfinished (epoch 1 of 3)" in capsys.readouterr().err and not (tmp_path / "cu").exists()
    assert cli(*unlearn_args(source, tmp_path / "cu", "--allow-unfinished")) == 0
    recorded = Run(tmp_path / "cu").config["source_identity"]
    assert (recorded["epoch"], recorded["finished"]) == (1, False)

    runs.train(config, source, execution=ONE_DEVICE, save_every_seconds=0)  # the original resumed to its end
    capsys.readouterr()
    assert cli(*unlearn_args(source, tmp_path / "cu", "--allow-unfinished")) == 2  # not the old results
    assert "changed since" in capsys.readouterr().err
    assert cli("evaluate", "--from", tmp_path / "cu") == 2
    assert "changed since" in capsys.readouterr().err
    assert cli(*unlearn_args(source, tmp_path / "cu-again")) == 0  # a new workdir unlearns the finished one


def test_a_replaced_original_with_the_same_progress_is_told_by_its_parameters(tmp_path, capsys):
    runs.train(TINY, tmp_path / "original", execution=ONE_DEVICE)
    assert cli(*unlearn_args(tmp_path / "original", tmp_path / "cu")) == 0
    epoch = Run(tmp_path / "original").meta["epoch"]
    meta_path = tmp_path / "original" / "checkpoints" / str(epoch) / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "params_hash": "0" * 64}))  # other parameters, same epoch and steps
    capsys.readouterr()
    assert cli("evaluate", "--from", tmp_path / "cu") == 2
    error = capsys.readouterr().err
    assert "changed since" in error and "its parameters" in error
    assert cli("evaluate", "--from", tmp_path / "original") == 2  # its own parameters no longer match the record
    assert "the checkpoint was altered" in capsys.readouterr().err


def run_killed_before_its_first_checkpoint(workdir, monkeypatch, **train_options):
    real = checkpoint.save

    def save(manager, epoch, state, meta):  # the epoch's log lines are written; the kill comes before its save
        raise Killed

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(Killed):
        runs.train(TINY, workdir, execution=ONE_DEVICE, save_every_seconds=0, **train_options)
    monkeypatch.setattr(checkpoint, "save", real)
    assert (workdir / "metrics.jsonl").read_text() and checkpoint.latest_epoch(workdir) is None


@pytest.mark.parametrize("models", [None, [0, 1]], ids=["one model", "an audit arm of two"])
def test_logs_agree_with_the_checkpoints_after_a_kill_before_the_first_save(tmp_path, monkeypatch, models):
    run_killed_before_its_first_checkpoint(tmp_path / "killed", monkeypatch, seeds=models)
    runs.train(TINY, tmp_path / "killed", execution=ONE_DEVICE, save_every_seconds=0, seeds=models)
    runs.train(TINY, tmp_path / "whole", execution=ONE_DEVICE, save_every_seconds=0, seeds=models)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, Run(tmp_path / "killed").meta["steps"] + 1)) == list(range(1, 11))
    for log in ("metrics.jsonl", "evaluations.jsonl"):
        assert (tmp_path / "killed" / log).read_text() == (tmp_path / "whole" / log).read_text()


def test_a_reader_never_sees_log_lines_past_the_checkpoint(original, tmp_path):
    runs_dir = copy_of(original, tmp_path)
    run = Run(runs_dir / "cu")
    steps = run.meta["steps"]
    with (runs_dir / "cu" / "metrics.jsonl").open("a") as log:  # what a run killed before its next save leaves
        log.write(json.dumps({"step": steps + 1, "loss": 1.0}) + "\n")
    assert [line["step"] for line in run.step_log()] == list(range(1, steps + 1))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2200k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "jaxunlearn.cli", "train", "--dataset", "digits", "--width", "0.125", "--epochs",
             "6", "--batch-size", "256", "--save-every", "0", "--devices", "1", "--workdir", str(disk / "run")],
            capture_output=True, text=True, timeout=600)
        progress = re.compile(r"data: |train \[[#.]+\] epoch \d+/6 ")  # the run's own log, as on a good day
        lines = [line for line in finished.stderr.splitlines() if line.strip() and not progress.match(line)]
        assert finished.returncode == 2, finished.stderr[-2000:]
        assert len(lines) == 1, lines
        assert lines[0].startswith("jaxunlearn: error: no space left") and "is kept" in lines[0]
        kept = Run(disk / "run")
        assert 1 <= kept.meta["epoch"] < 6
        kept.model()  # the last complete checkpoint loads
        steps = [json.loads(line)["step"] for line in (disk / "run" / "metrics.jsonl").read_text().splitlines()
                 if line.strip()]
        assert max(steps) >= kept.meta["steps"]
    finally:
        subprocess.run(["umount", str(disk)])


def test_bad_xla_flags_are_one_line_before_jax_starts(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "jaxunlearn.cli", "train", "--workdir", str(tmp_path / "w")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "XLA_FLAGS": "--xla_no_such_flag=1"})
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "jaxunlearn: error: XLA_FLAGS is not valid: Unknown flag in XLA_FLAGS: --xla_no_such_flag=1"]
    assert not (tmp_path / "w").exists()


# --- the library raises instead of returning a wrong number ---------------------------------------------------

def digits_parts():
    data = ju.load_dataset("digits")
    return dict(name="mine", train_images=data.train_images, train_labels=data.train_labels,
                test_images=data.test_images, test_labels=data.test_labels, num_classes=10, mean=data.mean,
                std=data.std)


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "train_images": d["train_images"].astype(np.float32) / 255}, "uint8"),
    (lambda d: {**d, "test_labels": np.where(np.arange(len(d["test_labels"])) == 0, 7 + 10, d["test_labels"])},
     r"labels must be in \[0, 10\)"),
    (lambda d: {**d, "test_labels": d["test_labels"][:-50]}, "images but"),
    (lambda d: {**d, "train_labels": d["train_labels"].astype(np.float32)}, "integers"),
    (lambda d: {**d, "train_images": d["train_images"][:0], "train_labels": d["train_labels"][:0]}, "empty"),
    (lambda d: {**d, "test_images": d["test_images"][:, :4]}, "one shape"),
    (lambda d: {**d, "std": (0.0,)}, "std must be positive"),
    (lambda d: {**d, "mean": (0.1, 0.2)}, "mean must be 1"),
])
def test_a_dataset_the_runs_would_misread_is_refused(change, message):
    ju.Dataset(**digits_parts())  # as it is: accepted
    with pytest.raises(UserError, match=message):
        ju.Dataset(**change(digits_parts()))


def test_the_public_step_refuses_a_batch_it_would_misread():
    class Tiny(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))

        def __call__(self, x, *, train):
            feat = x.reshape(x.shape[0], -1)
            return self.linear(feat), feat

    graphdef, params, batch_stats = nnx.split(Tiny(), nnx.Param, nnx.BatchStat)
    tx = optax.sgd(0.1)
    step = jax.jit(ju.make_step(graphdef, tx, ju.supervised_loss))
    state = ju.create_state(params, batch_stats, tx)
    images, labels = jnp.ones((6, 2, 2, 1)), jnp.array([0, 1, 2, 0, 1, 2])
    assert np.isfinite(step(state, {"train": (images, labels)})[1]["loss"])
    for batch, error, message in [
        ({"train": (images.astype(jnp.uint8), labels)}, TypeError, "normalised floats"),
        ({"train": (images, labels.astype(jnp.float32))}, TypeError, "integers"),
        ({"train": (images, labels[:4])}, TypeError, "6 images but 4 labels"),
        ({"train": images}, TypeError, "a pair"),
        ({"train": (images, labels.at[3].set(3))}, Exception, r"labels must be in \[0, 3\), got 0..3"),
    ]:
        with pytest.raises(error, match=message):
            jax.block_until_ready(step(state, batch))


def test_the_challenge_score_refuses_empty_inputs():
    with pytest.raises(ValueError, match="at least one forget example"):
        ju.forget_quality(np.zeros((4, 0)), np.zeros((4, 0)))
    with pytest.raises(ValueError, match="at least one forget example"):
        ju.challenge_epsilons(np.zeros((4, 0)), np.zeros((4, 0)))
