"""Every kind of bad input is refused the same way: exit status 2, one line `jaxunlearn: error: ...`, and the
file tree exactly as it was (the source run, the workdir, the outputs: nothing created, nothing rewritten).

Each case names the command line, what it sets up before (a copy of the original run to damage, a lock, a
bad dataset or protocol file) and a piece of the message. Cases run in-process through `main`.
"""

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jaxunlearn.cli import main
from jaxunlearn.engine import checkpoint



@dataclasses.dataclass(frozen=True)
class Case:
    """args: the command line, with {source}, {copy} (a damaged copy of the original), {tmp} filled in.
    setup(tmp, copy): damages the copy or writes files under tmp before the tree is recorded."""

    args: str
    message: str
    setup: Callable[[Path, Path], None] | None = None


def a_file(name: str):
    """A plain file where a directory would go (as root, a write-protected directory would not refuse)."""
    return lambda tmp, copy: (tmp / name).write_text("x")


def corrupt_config(text: str):
    return lambda tmp, copy: (copy / "config.json").write_text(text)


def corrupt_meta(text: str):
    def setup(tmp, copy):
        (copy / "checkpoints" / str(checkpoint.latest_epoch(copy)) / "meta" / "metadata").write_text(text)
    return setup


def dataset_a_number(tmp, copy):
    config = json.loads((copy / "config.json").read_text())
    config["config"]["dataset"] = 5
    (copy / "config.json").write_text(json.dumps(config))


def tampered_split(tmp, copy):
    """The file the class-5 split would be loaded from holds the split of class 3."""
    assert main(["evaluate", "--from", str(copy), "--forget", "class:3", "--relearn-steps", "0"]) == 0
    (copy / "splits" / "class-3-default-seed0.npz").rename(copy / "splits" / "class-5-default-seed0.npz")


HOLDERS: list[subprocess.Popen] = []
"""Processes holding a lock for a case; ended after each test."""


@pytest.fixture(autouse=True)
def end_holders():
    yield
    while HOLDERS:
        holder = HOLDERS.pop()
        holder.kill()
        holder.wait()


def held_lock(tmp, copy):
    """A run directory whose lock another live process holds."""
    (tmp / "w").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"import time; from jaxunlearn.files import RunLock; "
                               f"RunLock({str(tmp / 'w')!r}); print('held', flush=True); time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == "held"


def protocol_file(text: str):
    return lambda tmp, copy: (tmp / "p.py").write_text(text)


PROTOCOL = """
from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.experiment import ExperimentProtocol
PROTOCOL = ExperimentProtocol(name="p", description="", forget="class:5", methods={methods}, seeds=(0,),
    train=TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=1, batch_size=64)),
    hparams={hparams})
"""


def idx_gz(path: Path, array: np.ndarray, body: bytes | None = None) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + (array.astype(np.uint8).tobytes() if body is None else body)))


def fashion_mnist(train_shape=(4, 3, 3), test_shape=(2, 3, 3), damage: str | None = None):
    """A tiny Fashion-MNIST directory under tmp/fm, optionally damaged."""
    def setup(tmp, copy):
        directory = tmp / "fm"
        directory.mkdir()
        idx_gz(directory / "train-images-idx3-ubyte.gz", np.zeros(train_shape))
        idx_gz(directory / "train-labels-idx1-ubyte.gz", np.arange(train_shape[0]) % 10)
        idx_gz(directory / "t10k-images-idx3-ubyte.gz", np.zeros(test_shape))
        idx_gz(directory / "t10k-labels-idx1-ubyte.gz", np.arange(test_shape[0]) % 10)
        images = directory / "train-images-idx3-ubyte.gz"
        if damage == "truncated gzip":
            images.write_bytes(images.read_bytes()[:20])
        elif damage == "short body":
            idx_gz(images, np.zeros(train_shape), body=b"\0" * 5)
    return setup


TRAIN = "train --dataset digits --width 0.0625 --epochs 1 --batch-size 64 --workdir {tmp}/w"
UNLEARN = "unlearn --method contrastive --forget class:5 --from {source} --workdir {tmp}/w"
FROM_COPY = "unlearn --method finetune --forget class:5 --from {copy} --workdir {tmp}/w"
EXPERIMENT = "experiment {tmp}/p.py --runs-dir {tmp}/runs --out {tmp}/out"
UNREACHABLE = "--coordinator 127.0.0.1:{port} --num-processes 2 --process-id 1 --coordinator-timeout 1"

CASES = {
    # values out of range
    "width inf": Case(TRAIN + " --width inf", "width"),
    "width nan": Case(TRAIN + " --width nan", "width"),
    "width 0": Case(TRAIN + " --width 0", "width"),
    "width too large for memory": Case(TRAIN + " --width 16", "GiB"),
    "seed -1": Case(TRAIN + " --seed -1", "seed"),
    "lr nan": Case(TRAIN + " --lr nan", "--lr"),
    "lr negative": Case(TRAIN + " --lr -0.1", "learning_rate"),
    "momentum nan": Case(TRAIN + " --momentum nan", "momentum"),
    "epochs -1": Case(TRAIN + " --epochs -1", "epochs"),
    "save-every -1": Case(TRAIN + " --save-every -1", "--save-every"),
    "save-every nan": Case(UNLEARN + " --save-every nan", "--save-every"),
    "train-size 0": Case(TRAIN + " --train-size 0", "train_size"),
    "batch larger than the train set": Case(TRAIN + " --batch-size 5000", "batch"),
    "temperature 0": Case(UNLEARN + " --hp temperature=0", "temperature"),
    "temperature nan": Case(UNLEARN + " --hp temperature=nan", "temperature"),
    "lambda inf": Case(UNLEARN + " --hp lambda_ul=inf", "lambda_ul"),
    "retain_per_forget 0": Case(UNLEARN + " --hp retain_per_forget=0", "retain_per_forget"),
    "unlearning epochs -3": Case(UNLEARN + " --epochs -3", "epochs"),
    "relearn steps -1": Case("evaluate --from {source} --relearn-steps -1", "--relearn-steps"),
    "empty workdir": Case("train --dataset digits --workdir ", "--workdir"),
    "seed beyond 2^32": Case(TRAIN + " --seed 1000000000000000000000000000000", "--seed"),
    "epochs 10^30": Case(UNLEARN + " --epochs 1000000000000000000000000000000", "--epochs"),
    "batch size 10^30 as --hp": Case(UNLEARN + " --hp batch_size=1000000000000000000000000000000", "batch_size"),
    "a negative weight": Case(UNLEARN + " --hp lambda_ce=-1", "lambda_ce"),
    "negative decay epochs": Case(UNLEARN.replace("contrastive", "scrub") + " --hp lr_decay_epochs=-1",
                                  "lr_decay_epochs"),
    "bench width inf": Case("bench --width inf", "--width"),
    "bench image size 10^30": Case("bench --image-size 1000000000000000000000000000000", "--image-size"),
    "distributed without a cluster": Case(TRAIN + " --distributed", "--distributed"),
    # names and paths
    "empty dataset": Case(TRAIN + " --dataset ", "dataset"),
    "dataset is a path": Case(TRAIN + " --dataset /etc", "dataset"),
    "dataset is a relative path": Case(TRAIN + " --dataset ../x", "dataset"),
    "workdir is a file": Case(UNLEARN, "not a directory", a_file("w")),
    "workdir under a file": Case(UNLEARN.replace("{tmp}/w", "{tmp}/f/w"), "cannot write to workdir", a_file("f")),
    "workdir in use": Case(UNLEARN, "in use by process", held_lock),
    "demo json unwritable": Case("demo --json {tmp}/f/demo.json", "--json", a_file("f")),
    "bench json unwritable": Case("bench --width 0.0625 --json {tmp}/f/bench.json", "--json", a_file("f")),
    "report into a file": Case("report {copy} --out {tmp}/f/report", "--out", a_file("f")),
    "report into ''": Case("report {copy} --out ", "--out"),
    "report into /proc": Case("report {copy} --out /proc/jaxunlearn-report", "--out"),
    "audit into /proc": Case("audit --from {copy} --forget class:5 --method finetune --models 2 "
                             "--workdir /proc/jaxunlearn-audit", "--workdir"),
    "audit into the original": Case("audit --from {copy} --forget class:5 --method finetune --models 2 "
                                    "--workdir {copy}/audit", "inside the original's run"),
    "audit into a file": Case("audit --from {copy} --forget class:5 --method finetune --models 2 "
                              "--workdir {tmp}/f", "--workdir", a_file("f")),
    # damaged runs
    "config.json dataset a number": Case(FROM_COPY, "config.json", dataset_a_number),
    "checkpoint meta without an epoch": Case(FROM_COPY, "lacks the epoch", corrupt_meta('{"steps": 1}')),
    "config.json empty": Case(FROM_COPY, "config.json", corrupt_config("")),
    "config.json not JSON": Case(FROM_COPY, "config.json", corrupt_config("{")),
    "config.json a list": Case(FROM_COPY, "config.json", corrupt_config("[1, 2]")),
    "checkpoint meta a list": Case(FROM_COPY, "mapping", corrupt_meta("[1, 2]")),
    "checkpoint meta not JSON": Case(FROM_COPY, "corrupt checkpoint metadata", corrupt_meta("{")),
    "saved split of another spec": Case(FROM_COPY, "not the requested class:5", tampered_split),
    # data
    "truncated gzip": Case(TRAIN.replace("digits", "fashion_mnist") + " --data-dir {tmp}/fm", "gzip",
                           fashion_mnist(damage="truncated gzip")),
    "IDX body too short": Case(TRAIN.replace("digits", "fashion_mnist") + " --data-dir {tmp}/fm", "holds 5 bytes",
                               fashion_mnist(damage="short body")),
    "train and test shapes differ": Case(TRAIN.replace("digits", "fashion_mnist") + " --data-dir {tmp}/fm",
                                         "one shape", fashion_mnist(test_shape=(2, 4, 4))),
    # protocols
    "protocol missing": Case("experiment {tmp}/none.py --runs-dir {tmp}/runs --out {tmp}/out", "no protocol file"),
    "protocol syntax error": Case(EXPERIMENT, "SyntaxError",
                                  protocol_file("PROTOCOL = (")),
    "protocol raises": Case(EXPERIMENT, "ZeroDivisionError",
                            protocol_file("1 / 0")),
    "protocol without PROTOCOL": Case(EXPERIMENT,
                                      "no PROTOCOL", protocol_file("x = 1")),
    "protocol of an unknown method": Case(
        EXPERIMENT, "unknown method",
        protocol_file(PROTOCOL.format(methods=("nope",), hparams={}))),
    "protocol hparams out of range": Case(
        EXPERIMENT, "temperature",
        protocol_file(PROTOCOL.format(methods=("contrastive",), hparams={"contrastive": {"temperature": "-1"}}))),
    "protocol exits": Case(EXPERIMENT, "SystemExit",
                           protocol_file("import sys\nsys.exit(3)")),
    "protocol of an impossible class": Case(
        EXPERIMENT, "class",
        protocol_file(PROTOCOL.format(methods=("finetune",), hparams={}).replace("class:5", "class:99"))),
    "experiment on 0 devices": Case(
        EXPERIMENT + " --devices 0", "--devices",
        protocol_file(PROTOCOL.format(methods=("finetune",), hparams={}))),
    "experiment out a file": Case(
        "experiment {tmp}/p.py --runs-dir {tmp}/runs --out {tmp}/f/out", "--out",
        lambda tmp, copy: (a_file("f")(tmp, copy),
                           protocol_file(PROTOCOL.format(methods=("finetune",), hparams={}))(tmp, copy))),
    # hosts
    "coordinator port 0": Case(TRAIN + " --coordinator 127.0.0.1:0 --num-processes 2 --process-id 0", "port"),
    "coordinator port too large": Case(TRAIN + " --coordinator 127.0.0.1:99999 --num-processes 2 --process-id 0",
                                       "port"),
    "coordinator unreachable": Case(TRAIN + " " + UNREACHABLE, "cannot reach the --coordinator"),
    "peers never join": Case(TRAIN + " --coordinator 127.0.0.1:{port} --num-processes 3 --process-id 0 "
                                     "--coordinator-timeout 1", "processes 1, 2 did not reach the --coordinator"),
    "coordinator timeout 0": Case(TRAIN + " --coordinator 127.0.0.1:1 --num-processes 2 --process-id 1 "
                                          "--coordinator-timeout 0", "--coordinator-timeout"),
}


def tree(*roots: Path) -> dict[str, str]:
    """Every path under the roots → the SHA-1 of its content ("dir" for a directory)."""
    listing = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            listing[str(path)] = "dir" if path.is_dir() else hashlib.sha1(path.read_bytes()).hexdigest()
    return listing


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_in_one_line_with_nothing_written(name, digits_run, tmp_path, capsys):
    case = CASES[name]
    source, _ = digits_run
    copy = tmp_path / "copy"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("splits"))
    if case.setup is not None:
        case.setup(tmp_path, copy)
    capsys.readouterr()
    before = tree(tmp_path, source)
    text = case.args.format(source=source, copy=copy, tmp=tmp_path, port=free_port())
    args = text.split(" ")
    if text.endswith(" "):  # an empty last value (--workdir '', --dataset '')
        args = [*text.split(" ")[:-1], ""]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxunlearn: error: "), lines
    assert case.message in lines[0], lines[0]
    assert tree(tmp_path, source) == before


def test_no_traceback_reaches_a_user_from_a_subprocess(tmp_path):
    """The console entry point, not only `main`: a refusal prints one line and exits 2."""
    finished = subprocess.run([sys.executable, "-m", "jaxunlearn.cli", "train", "--width", "inf", "--workdir",
                               str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and finished.stderr.count("\n") == 1, finished.stderr
    assert not (tmp_path / "w").exists()


def test_processes_waiting_for_each_other_say_so_once(tmp_path, capsys):
    """A multi-host start is not a silent wait: each side says, once, what it waits for and how long."""
    joiner = (TRAIN + " " + UNREACHABLE).format(tmp=tmp_path, port=free_port()).split(" ")
    assert main(joiner) == 2
    assert capsys.readouterr().out.count("process 1: waiting up to 1 s for process 0 at 127.0.0.1:") == 1
    gatherer = (TRAIN + " --coordinator 127.0.0.1:{port} --num-processes 3 --process-id 0 --coordinator-timeout 1"
                ).format(tmp=tmp_path, port=free_port()).split(" ")
    assert main(gatherer) == 2
    assert capsys.readouterr().out.count("process 0: waiting up to 1 s for processes 1 to 2 on port ") == 1
