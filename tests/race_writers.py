"""Processes racing for one run directory, released together; run by tests/test_races.py as its own process.

    python tests/race_writers.py create TRIALS PROCESSES OUT.json   # all create the same new run directory
    python tests/race_writers.py stale TRIALS PROCESSES OUT.json    # all take over a lock a dead process left

Each trial forks PROCESSES children that wait at a barrier, then claim the directory as the harness does
(`jaxunlearn.run._claim`: create, lock, write config.json) or take its lock (`RunLock`). A child that gets it
counts itself into a shared counter of holders, checks for a while that its directory, config.json and lock
are still there, and releases. OUT.json: per trial the most holders at once, the holders and refusals, and
every problem a holder saw (its files gone). JAX is imported but never started, so forking is safe.
"""

import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from jaxunlearn.errors import UserError
from jaxunlearn.files import LOCK_FILE, RunLock
from jaxunlearn.run import CONFIG_FILE, _claim

CONFIG = {"kind": "train", "config": {"dataset": "digits"}}
HOLD_SECONDS = 0.004


def child(mode: str, workdir: Path, barrier, holders, most, counts, problems) -> None:
    barrier.wait()
    try:
        lock = _claim(workdir, CONFIG) if mode == "create" else RunLock(workdir)
    except UserError:
        with counts.get_lock():
            counts[1] += 1
        return
    with holders.get_lock():
        holders.value += 1
        most.value = max(most.value, holders.value)
    with counts.get_lock():
        counts[0] += 1
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        missing = [name for name in (CONFIG_FILE, LOCK_FILE) if not (workdir / name).exists()]
        if missing:
            problems.put(f"pid {os.getpid()} holds the lock but {', '.join(missing)} is gone")
            break
    with holders.get_lock():
        holders.value -= 1
    lock.release()


def trial(mode: str, root: Path, processes: int) -> dict:
    workdir = root / "runs" / "run"  # its parent is created by the racers too
    if mode == "stale":  # a run directory whose lock file a dead process left behind
        workdir.mkdir(parents=True)
        (workdir / CONFIG_FILE).write_text(json.dumps(CONFIG))
        (workdir / LOCK_FILE).write_text(json.dumps({"pid": 2 ** 22 + 1, "host": os.uname().nodename}))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    holders, most = context.Value("i", 0), context.Value("i", 0)
    counts, problems = context.Array("i", 2), context.Queue()
    children = [context.Process(target=child, args=(mode, workdir, barrier, holders, most, counts, problems))
                for _ in range(processes)]
    for process in children:
        process.start()
    for process in children:
        process.join()
    seen = []
    while not problems.empty():
        seen.append(problems.get())
    if not (workdir / CONFIG_FILE).is_file():
        seen.append("the run directory's config.json is gone after the trial")
    return {"most_holders": most.value, "holders": counts[0], "refused": counts[1], "problems": seen,
            "exit_codes": [process.exitcode for process in children]}


def main() -> None:
    mode, trials, processes, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    results = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as root:
            results.append(trial(mode, Path(root), processes))
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
