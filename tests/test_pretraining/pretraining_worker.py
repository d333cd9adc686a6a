"""Checks of sharded pretraining that need several JAX devices, run in a subprocess of the
tests (``XLA_FLAGS`` must be set before JAX starts). Prints one JSON object.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python pretraining_worker.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from gradient_comparison import worst_leaf

from pretraining.mesh import make_mesh
from pretraining.run_config import RunConfig
from pretraining.state import TrainingCheckpoints
from pretraining.steps import BatchSizeError, CompiledSteps, check_batch_size
from pretraining.tasks import build_task

MESH = "data=2,fsdp=2,model=2"  # all three kinds of parallelism at once


def compiled(task, run, mesh_spec, devices=None):
    mesh = make_mesh(mesh_spec, devices)
    return CompiledSteps(
        task.model,
        task.objective,
        run.optimizer,
        run.steps,
        mesh,
        seed=run.seed,
        batch_size=run.batch_size,
    )


def agreement(run: RunConfig) -> dict:
    """Loss and gradients (dropout on) on `MESH` against one device; the gradients by the
    leaf that differs most relative to its own scale."""
    task = build_task(run)
    single = compiled(task, run, "data=1", jax.devices()[:1])
    params, _ = single.place(task.model)
    grads, sums = single.gradients(params, single.batch(task.make_batch, 3), np.int32(3))
    sharded = compiled(task, run, MESH)
    params, _ = sharded.place(task.model)
    g, s = sharded.gradients(params, sharded.batch(task.make_batch, 3), np.int32(3))
    worst_path, worst_difference = worst_leaf(g, grads)
    return {
        "loss": float(s["loss_sum"] / s["count"]),
        "single_loss": float(sums["loss_sum"] / sums["count"]),
        "grads": worst_difference,
        "worst_leaf": worst_path,
        "grad_sharding": str(g.stack.layers.query.weight.sharding.spec),
    }


def shard_shapes(run: RunConfig) -> dict:
    """Local shard shapes of a few parameters and their Adam moments under FSDP + TP."""
    task = build_task(run)
    steps = compiled(task, run, "fsdp=4,model=2")
    params, opt_state = steps.place(task.model)
    layers = params.stack.layers
    adam = opt_state.inner_states["train"].inner_state[1][0]
    shapes = {
        "query.weight": layers.query.weight,
        "attention_output.weight": layers.attention_output.weight,
        "mlp_input.bias": layers.mlp_input.bias,
        "token_embedding.weight": params.token_embedding.weight,
        "mu.query.weight": adam.mu.stack.layers.query.weight,
        "nu.mlp_output.weight": adam.nu.stack.layers.mlp_output.weight,
    }
    return {
        name: {"global": list(x.shape), "local": list(x.addressable_shards[0].data.shape)}
        for name, x in shapes.items()
    }


def restore_elsewhere(run: RunConfig, folder: Path) -> dict:
    """Save the state placed on data=8 and restore it onto data=2,fsdp=2,model=2."""
    task = build_task(run)
    params, opt_state = compiled(task, run, "data=8").place(task.model)
    saved = jax.device_get({"params": params, "opt_state": opt_state})
    checkpoints = TrainingCheckpoints(folder, save_every=1, keep=1)
    checkpoints.save(2, {"params": params, "opt_state": opt_state}, {"note": "test"})
    checkpoints.close()
    other = compiled(task, run, "data=2,fsdp=2,model=2")
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        saved,
        {"params": other.param_shardings, "opt_state": other.opt_shardings},
    )
    restored, metadata = TrainingCheckpoints(folder, save_every=1, keep=1).restore(2, abstract)
    query = restored["params"].stack.layers.query.weight
    pairs = zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(saved), strict=True)
    return {
        "bit_equal": all(np.array_equal(a, b) for a, b in pairs),
        "leaves": len(jax.tree.leaves(saved)),
        "step": metadata["step"],
        "query_sharding": str(query.sharding.spec),
        "query_local_shape": list(query.addressable_shards[0].data.shape),
    }


def batch_size_error() -> str:
    try:
        check_batch_size(12, make_mesh("data=4,fsdp=2"), 1)
    except BatchSizeError as error:
        return str(error)
    return "no error"


def main(folder: str) -> None:
    dna = RunConfig(
        task="dna",
        data=("bacteria-NC_008253",),
        seq_len=32,
        batch_size=16,
        dropout=0.1,
        steps=10,
    )
    expression = RunConfig(
        task="expression", data=("pbmc3k",), max_tokens=32, batch_size=16, dropout=0.1, steps=10
    )
    result = {
        "devices": jax.device_count(),
        "dna": agreement(dna),
        "expression": agreement(expression),
        "shards": shard_shapes(dna),
        "restore": restore_elsewhere(dna, Path(folder) / "checkpoints"),
        "batch_size_error": batch_size_error(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
