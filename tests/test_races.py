"""Writers racing for one run directory: one holder at a time, and nobody removes what another created.

Each test releases several processes at once (tests/race_writers.py), many times: 300 trials of 2 processes
creating the same new run directory and 200 trials of 4 processes taking over the lock a dead process left.
Before the lock was an OS lock, the refused creator removed the winner's new directory (config.json and lock
gone in 41 of 150 trials) and two processes could both take over a stale lock (6 of 120 trials).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("race_writers.py")


def race(mode: str, trials: int, processes: int, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"{mode}.json"
    subprocess.run([sys.executable, str(SCRIPT), mode, str(trials), str(processes), str(out)], check=True,
                   timeout=600)
    return json.loads(out.read_text())


@pytest.mark.parametrize("mode, trials, processes", [("create", 300, 2), ("stale", 200, 4)])
def test_one_holder_at_a_time_and_no_directory_of_another_is_removed(tmp_path, mode, trials, processes):
    results = race(mode, trials, processes, tmp_path)
    assert len(results) == trials
    assert all(result["exit_codes"] == [0] * processes for result in results)
    assert [result["problems"] for result in results] == [[]] * trials
    assert max(result["most_holders"] for result in results) == 1
    assert all(result["holders"] >= 1 and result["holders"] + result["refused"] == processes for result in results)
    assert sum(result["refused"] for result in results) > 0  # they did race
