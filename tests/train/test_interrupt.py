"""``kill -9`` at random moments: checkpoints are complete or absent, and resuming reaches the
uninterrupted run's metrics exactly (CPU)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import MINI_FLAGS, comparable, env, read_metrics, run_cli

import winq
from winq.train.state import last_checkpoint, load_trainer_state


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(fp_checkpoint, tmp_path):
    args = ["--init", str(fp_checkpoint), "--bits", "2", *MINI_FLAGS, "--steps", "40",
            "--save-every", "1", "--eval-every", "3"]  # fmt: skip
    whole = run_cli([*args, "--out", str(tmp_path / "whole")], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "run"
    rng = random.Random(0)
    command = [sys.executable, "-m", "winq.train.cli", *args, "--out", str(run)]
    kills = 0
    while kills < 3:
        process = subprocess.Popen(command, cwd=tmp_path, env=env(), stderr=subprocess.DEVNULL)
        # kill at a random moment once this process has trained a random number of steps (the
        # trigger counts steps, not seconds, so a fast machine cannot finish the run first)
        start = len(metric_lines(run))
        target = start + rng.randint(1, 4)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if len(metric_lines(run)) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if process.poll() is not None:
            break  # finished before the kill: the remaining checks still apply
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        for folder in (run / "checkpoints").glob("step_*"):  # complete or absent
            assert load_trainer_state(folder)["step"] == int(folder.name[5:])
            winq.load(folder)
        command = [sys.executable, "-m", "winq.train.cli", "--resume", str(run), "--no-progress"]
    final = run_cli(["--resume", str(run), "--no-progress"], cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert kills == 3
    assert last_checkpoint(run)[0] == 40
    assert comparable(read_metrics(run)) == comparable(read_metrics(tmp_path / "whole"))
    leftovers = list(run.glob(".*.tmp")) + list((run / "checkpoints").glob(".*"))
    assert not leftovers  # temporary files of killed writes are cleaned up on resume


def metric_lines(run):
    path = run / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []
