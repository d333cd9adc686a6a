"""Tensor parallelism on simulated CPU devices (a subprocess: ``XLA_FLAGS`` must be set
before JAX starts): a model axis that would split a head is refused before any work, the
parameters and Adam moments per device fall to about 1/model, and the compiled train step
reduces activations over the model axis instead of gathering whole weights.

The tiny preset (dim 64, 4 heads, MLP 256, 2 layers), batch 8 x 32 tokens, on ``model=4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = 4
ACTIVATIONS = [8, 32, 64]  # batch x tokens x dim: what one block's partial sums hold


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(ROOT),
    }
    folder = tmp_path_factory.mktemp("tensor_parallel")
    worker = Path(__file__).with_name("tensor_parallel_worker.py")
    result = subprocess.run(
        [sys.executable, str(worker), str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_model_axis_must_divide_the_heads(report):
    error = report["heads_error"]
    assert "n_heads (4) is not divisible by the mesh's model axis (model=8)" in error["message"]
    assert not error["folder_created"]  # refused before the run touched its folder


@pytest.mark.parametrize("tree", ["stack_bytes", "params_bytes", "opt_state_bytes"])
def test_memory_per_device_falls_to_about_one_over_model(report, tree):
    local, total = report["step"][tree]
    # the stack is split but for its layer norms and two output biases (1.5% of it); the
    # embeddings and the MLM head (7% of the parameters) are replicated
    bound = 1.03 if tree == "stack_bytes" else 1.3
    assert 1.0 <= local * MODEL / total < bound, (local, total)


def test_activations_are_reduced_over_the_model_axis(report):
    step = report["step"]
    reductions = [
        c for c in step["collectives"]
        if c["op"] in ("all-reduce", "reduce-scatter") and c["shape"] == ACTIVATIONS
    ]  # fmt: skip
    # per block: after attention and after the MLP, forward and backward
    assert len(reductions) >= 4, step["collectives"]


def test_no_full_weight_is_gathered(report):
    """The q, k and v weights are stacked on a new axis (`TransformerBlock.attention`), so a
    model shard holds whole heads of all three; concatenated, a shard mixed heads and XLA
    gathered the whole fused weight."""
    step = report["step"]
    dim = step["weights"]["query"][1]
    full = {tuple(shape) for shape in step["weights"].values()} | {(3 * dim, dim), (3, dim, dim)}
    full |= {(2, *shape) for shape in full}  # with the stacked layer axis
    gathered = [c["shape"] for c in step["collectives"] if c["op"] == "all-gather"]
    assert not [shape for shape in gathered if tuple(shape) in full], gathered
