"""Runs of the command line in subprocesses: two JAX processes (gloo collectives, two CPU
devices each) follow the single-process loss trajectory and resume their own checkpoint
bit-equal, and a run killed with SIGKILL and restarted with ``--resume`` continues with
bit-equal losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretraining.train import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[2]
DNA = ["dna", "bacteria-NC_008253", "--seq-len", "32", "--batch-size", "8", "--warmup", "2"]
QUIET = ["--eval-every", "0", "--eval-batches", "1", "--no-progress"]


def command(out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pretraining", *DNA, "--steps", str(steps), *QUIET,
        "--out", str(out), *extra,
    ]  # fmt: skip


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / METRICS_FILE) if r["kind"] == "train"}


def run(argv: list[str], **env: str) -> None:
    result = subprocess.run(
        argv, cwd=ROOT, env=environment(**env), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, env=environment(JAX_NUM_CPU_DEVICES="2"), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_two_processes_follow_the_single_process_losses_and_resume(tmp_path):
    run(command(tmp_path / "single", 4, "--save-every", "0"))
    multi = tmp_path / "multi"

    def two_processes(*extra: str) -> None:
        coordinator = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
        argv = command(multi, 4, "--save-every", "2", "--mesh", "data=2,fsdp=2", *extra)
        workers = [worker([*argv, *coordinator, "--process-id", str(index)]) for index in range(2)]
        for process in workers:
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-4000:]

    two_processes()
    single, first = losses(tmp_path / "single"), losses(multi)
    assert sorted(first) == [1, 2, 3, 4]
    # float32 sums over 4 devices in another order: equal to rounding
    assert [first[s] for s in first] == pytest.approx([single[s] for s in first], rel=1e-5)
    assert (multi / "model" / "model.safetensors").is_file()

    # as if killed after the step-2 checkpoint: both processes restore their shards of it
    shutil.rmtree(multi / "checkpoints" / "4")
    two_processes("--resume")
    logged = [json.loads(line) for line in (multi / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4, 3, 4]
    assert losses(multi) == first  # steps 3 and 4 again, bit-equal


def test_killed_run_resumes_bit_equal(tmp_path):
    steps = 40
    run(command(tmp_path / "whole", steps, "--save-every", "10"))

    killed = subprocess.Popen(
        command(tmp_path / "killed", steps, "--save-every", "10"),
        cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    checkpoint = tmp_path / "killed" / "checkpoints" / "10"
    deadline = time.monotonic() + 600
    while not checkpoint.is_dir() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    interrupted_at = max(losses(tmp_path / "killed"), default=0)
    assert interrupted_at < steps, "the run finished before it could be killed"

    run(command(tmp_path / "killed", steps, "--save-every", "10", "--resume"))
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, steps + 1))
    assert resumed == whole  # bit-equal, step for step
