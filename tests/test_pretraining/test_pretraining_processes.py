"""Runs of the command line in subprocesses on a multi-file cell corpus (three files with
different genes): two JAX processes (gloo collectives, two CPU devices each) follow the
single-process loss trajectory, each reads only the cells of its own half of every batch
(a counting reader, `counting_worker`), and they resume their own checkpoint bit-equal; a
run killed with SIGKILL and restarted with ``--resume`` continues with bit-equal losses."""

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
from count_corpus import write_corpus

from pretraining.train import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["--eval-every", "0", "--eval-batches", "1", "--no-progress"]
CELLS = ["--max-tokens", "16", "--batch-size", "8", "--warmup", "2", "--val-fraction", "0.2"]
COUNTING = str(Path(__file__).with_name("counting_worker.py"))


@pytest.fixture(scope="module")
def cell_corpus(tmp_path_factory) -> list[str]:
    """The expression arguments of a three-file corpus with different genes."""
    folder = tmp_path_factory.mktemp("cells")
    write_corpus(folder)
    return ["expression", str(folder), *CELLS]


def command(task: list[str], out: Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pretraining", *task, "--steps", str(steps), *QUIET,
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


def worker(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, env=environment(JAX_NUM_CPU_DEVICES="2", **env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_two_processes_follow_the_single_process_losses_read_their_rows_and_resume(
    tmp_path, cell_corpus
):
    cache = str(tmp_path / "cache")
    run(command(cell_corpus, tmp_path / "single", 4, "--save-every", "0"), BIOZOO_CACHE=cache)
    multi = tmp_path / "multi"

    def two_processes(log: str, *extra: str) -> list[str]:
        """Run both processes through the counting reader; their stderr."""
        coordinator = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
        mesh = ["--mesh", "data=2,fsdp=2"]
        argv = command(cell_corpus, multi, 4, "--save-every", "2", *mesh, *extra)
        argv = [sys.executable, COUNTING, *argv[3:], *coordinator]
        workers = [
            worker(
                [*argv, "--process-id", str(index)],
                COUNT_LOG=f"{log}{index}.jsonl",
                BIOZOO_CACHE=cache,
            )
            for index in range(2)
        ]
        errors = [process.communicate(timeout=600)[1] for process in workers]
        for process, err in zip(workers, errors, strict=True):
            assert process.returncode == 0, err[-4000:]
        return errors

    errors = two_processes(str(tmp_path / "reads"))
    summary = "expression corpus: 3 file(s), 162 cells (130 training, 32 held out), 60 genes"
    assert summary in errors[0] and summary not in errors[1]  # the first process reports it
    single, first = losses(tmp_path / "single"), losses(multi)
    assert sorted(first) == [1, 2, 3, 4]
    # float32 sums over 4 devices in another order: equal to rounding
    assert [first[s] for s in first] == pytest.approx([single[s] for s in first], rel=1e-5)
    assert (multi / "model" / "model.safetensors").is_file()

    # each process asked for half of every batch, the two halves make all of it, and it
    # read from the cell files the cells of its own rows and no others
    asked, read = [], []
    for index in range(2):
        log = (tmp_path / f"reads{index}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in log]
        asked.append({(r["part"], r["step"]): r["rows"] for r in records if "rows" in r})
        read.append(sum(r["read"] for r in records if "read" in r))
    assert sorted(asked[0]) == sorted(asked[1]) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    for key in asked[0]:
        assert len(asked[0][key]) == len(asked[1][key]) == 4
        assert sorted(asked[0][key] + asked[1][key]) == list(range(8))
    assert read == [20, 20]

    # as if killed after the step-2 checkpoint: both processes restore their shards of it
    shutil.rmtree(multi / "checkpoints" / "4")
    two_processes(str(tmp_path / "resumed"), "--resume")
    logged = [json.loads(line) for line in (multi / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4, 3, 4]
    assert losses(multi) == first  # steps 3 and 4 again, bit-equal


def test_killed_run_resumes_bit_equal(tmp_path, cell_corpus):
    cache = {"BIOZOO_CACHE": str(tmp_path / "cache")}
    steps = 40
    run(command(cell_corpus, tmp_path / "whole", steps, "--save-every", "10"), **cache)

    killed = subprocess.Popen(
        command(cell_corpus, tmp_path / "killed", steps, "--save-every", "10"),
        cwd=ROOT, env=environment(**cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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

    resume = command(cell_corpus, tmp_path / "killed", steps, "--save-every", "10", "--resume")
    run(resume, **cache)
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, steps + 1))
    assert resumed == whole  # bit-equal, step for step
