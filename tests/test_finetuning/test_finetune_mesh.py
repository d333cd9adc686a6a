"""Fine-tuning on a device mesh, with training checkpoints, on 8 simulated CPU devices
(subprocesses running ``finetune_worker.py`` beside this file: ``XLA_FLAGS`` must be set
before JAX starts).

A tiny encoder is fine-tuned on a slice of the real Oct4-versus-MafK peaks (256 training,
64 validation, 64 test sequences).

Tolerance: on a mesh the loss and gradients are float32 sums in another order than on one
device, so over the first 12 steps the training and validation losses agree to 1e-5
relative (1e-7 is typical). A fine-tune killed with SIGKILL and resumed ends bit-equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from finetuning.train import fine_tune
from pretraining.state import TrainingCheckpoints
from pretraining.train import RunError

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("finetune_worker.py"))


def environment(cache: Path) -> dict[str, str]:
    # the three runs of the resume test share their compilations through JAX's cache
    return {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def start(env: dict[str, str], *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, *argv], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The checks, an uninterrupted fine-tune, and one killed then resumed."""
    folder = tmp_path_factory.mktemp("finetune_mesh")
    env = environment(folder / "jax-cache")
    checks = start({**env, "JAX_COMPILATION_CACHE_DIR": ""}, "checks")
    finish(start(env, "run", str(folder / "whole")))

    killed = start(env, "run", str(folder / "killed"))
    checkpoint = folder / "killed" / "state" / "6"
    deadline = time.monotonic() + 600
    while not checkpoint.is_dir() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    finished_before_kill = (folder / "killed" / "result").exists()
    finish(start(env, "run", str(folder / "killed")))
    return {
        "checks": json.loads(finish(checks).strip().splitlines()[-1]),
        "folder": folder,
        "killed_status": killed.returncode,
        "finished_before_kill": finished_before_kill,
    }


def test_sharded_fine_tunes_follow_the_single_device_losses(runs):
    checks = runs["checks"]
    assert checks["devices"] == 8
    # LoRA on data=2,fsdp=2,model=2: evaluations at steps 2, 4, 6
    single, sharded = checks["lora"]["single"], checks["lora"]["sharded"]
    assert len(single) == len(sharded) == 3
    for a, b in zip(sharded, single, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    # partial (first layer frozen) on data=2,fsdp=4: evaluations at steps 4, 8, 12
    whole = json.loads((runs["folder"] / "whole" / "result" / "history.json").read_text())
    sharded = [[r["train_loss"], r["validation_loss"]] for r in whole["history"]]
    for a, b in zip(sharded[:3], checks["partial"][:3], strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_parameters_frozen_arrays_and_adam_moments_are_split(runs):
    shards = runs["checks"]["shards"]  # mesh fsdp=4, model=2; partial strategy, 3 layers
    # heads over model (32 -> 16), the input side over fsdp (32 -> 8), layers never split
    assert shards["trained query"] == {"global": [2, 32, 32], "local": [2, 16, 8]}
    assert shards["frozen query"] == {"global": [1, 32, 32], "local": [1, 16, 8]}
    assert shards["adam mu query"] == shards["trained query"]
    # MLP output: its input (hidden units) over model, its output over fsdp
    assert shards["trained mlp_output"] == {"global": [2, 32, 64], "local": [2, 8, 32]}
    assert shards["head"]["local"] == [2, 8]
    assert shards["frozen embedding"] == {"global": [68, 32], "local": [17, 32]}


def test_command_line_refuses_bad_meshes_and_batch_sizes(runs):
    checks = runs["checks"]
    status, message = checks["mesh_error"]
    assert status == 1 and "mesh 'data=3' has 3 devices in all, but 8 are available" in message
    status, message = checks["batch_error"]
    assert status == 1 and "batch size 12 is not divisible" in message
    assert "multiple of 8" in message
    status, message = checks["resume_error"]
    assert status == 1 and "--resume needs the --checkpoint-dir" in message


def test_killed_fine_tune_resumes_bit_equal(runs):
    folder = runs["folder"]
    assert runs["killed_status"] == -signal.SIGKILL
    assert not runs["finished_before_kill"], "the fine-tune ended before it could be killed"
    whole = json.loads((folder / "whole" / "result" / "history.json").read_text())
    resumed = json.loads((folder / "killed" / "result" / "history.json").read_text())
    assert whole["resumed_from"] is None
    assert 6 <= resumed["resumed_from"] < resumed["steps"]
    # early stopping ends both before max_steps (60), so its state crossed the resume
    assert whole["steps"] < 60 and len(whole["history"]) == whole["steps"] // 4
    assert resumed["history"] == whole["history"]
    assert resumed["test"] == whole["test"]
    weights = [
        (folder / run / "result" / "model.safetensors").read_bytes() for run in ("whole", "killed")
    ]
    assert weights[0] == weights[1]


def test_checkpoints_of_another_fine_tune_are_refused(runs, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from finetune_worker import RUN_CONFIG, new_model, small_task

    task = small_task()
    state = TrainingCheckpoints(runs["folder"] / "whole" / "state", save_every=3, keep=2)
    with pytest.raises(RunError, match="pass --resume"):
        fine_tune(new_model(task.classes), task, RUN_CONFIG, checkpoints=state, progress=False)
    # restored onto this process's single device, then refused
    assert jax.device_count() == 1
    other = dataclasses.replace(RUN_CONFIG, learning_rate=1e-3)
    with pytest.raises(RunError, match="another config"):
        fine_tune(new_model(task.classes), task, other, checkpoints=state, resume=True)
