"""Sharded pretraining on 8 simulated CPU devices (a subprocess: ``XLA_FLAGS`` must be set
before JAX starts, and this test process has started it already).

Tolerances: the sharded loss and gradients are sums in a different order than on one
device, so they agree to float32 rounding: loss within 1e-6 relative, every gradient leaf
within 1e-5 of its own largest entry (leaf by leaf, so that a wrong layer-norm or bias
gradient is not hidden by the largest weight gradient). Restoring onto another mesh is
bit-exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_data):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(ROOT),
        "BIOZOO_SHARED_DATA": str(shared_data),
    }
    folder = tmp_path_factory.mktemp("sharded")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("pretraining_worker.py")), str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("task", ["dna", "expression"])
def test_sharded_step_matches_one_device(report, task):
    assert report["devices"] == 8
    check = report[task]
    assert check["loss"] == pytest.approx(check["single_loss"], rel=1e-6)
    assert check["grads"] < 1e-5, check["worst_leaf"]
    assert check["grad_sharding"] == "P(None, 'model', 'fsdp')"


def test_parameters_and_adam_moments_are_split(report):
    shards = report["shards"]  # mesh fsdp=4, model=2; stacked leaves lead with 2 layers
    # heads over model (64 -> 32), the input side over fsdp (64 -> 16)
    assert shards["query.weight"] == {"global": [2, 64, 64], "local": [2, 32, 16]}
    assert shards["mu.query.weight"] == shards["query.weight"]
    # output projection: input (heads) over model, output over fsdp
    assert shards["attention_output.weight"]["local"] == [2, 16, 32]
    assert shards["mlp_input.bias"]["local"] == [2, 128]
    assert shards["nu.mlp_output.weight"] == {"global": [2, 64, 256], "local": [2, 16, 128]}
    assert shards["token_embedding.weight"]["local"] == [8, 16]


def test_restore_onto_a_different_mesh(report):
    restore = report["restore"]
    assert restore["bit_equal"] and restore["leaves"] > 50 and restore["step"] == 2
    assert restore["query_sharding"] == "P(None, 'model', 'fsdp')"
    assert restore["query_local_shape"] == [2, 32, 32]


def test_batch_not_divisible_by_the_data_axes(report):
    assert "batch size 12 is not divisible" in report["batch_size_error"]
    assert "multiple of 8" in report["batch_size_error"]
