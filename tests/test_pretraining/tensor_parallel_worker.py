"""Checks of tensor parallelism that need several JAX devices, run in a subprocess of the
tests (``XLA_FLAGS`` must be set before JAX starts). Prints one JSON object.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tensor_parallel_worker.py DIR
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np
from pretraining_worker import compiled

from pretraining.run_config import RunConfig
from pretraining.sharding import ShardingError
from pretraining.tasks import build_task
from pretraining.train import Run

MODEL = 4  # the tiny preset's 4 heads: one per device
COLLECTIVE = re.compile(
    r"= (\w+)\[([\d,]*)\]\S* (all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\("
)


def heads_error(run: RunConfig, folder: Path) -> dict:
    """A run on ``model=8`` (8 does not divide the 4 heads): the error, how long it took,
    and whether the run folder was touched."""
    start = time.perf_counter()
    try:
        Run(run, folder, mesh="model=8")
    except ShardingError as error:
        message = str(error)
    else:
        message = "no error"
    return {
        "message": message,
        "seconds": time.perf_counter() - start,
        "folder_created": folder.exists(),
    }


def device_bytes(tree) -> tuple[int, int]:
    """Bytes of every array leaf of `tree`: on the first device, and in all."""
    leaves = jax.tree.leaves(tree)
    local = sum(x.addressable_shards[0].data.nbytes for x in leaves)
    return local, sum(x.nbytes for x in leaves)


def collectives(hlo: str) -> list[dict]:
    """Every collective of a compiled module's text: its op, dtype and result shape."""
    return [
        {"op": op, "dtype": dtype, "shape": [int(d) for d in dims.split(",") if d]}
        for dtype, dims, op in COLLECTIVE.findall(hlo)
    ]


def tensor_parallel_step(run: RunConfig) -> dict:
    """Memory and collectives of the train step on ``model=4`` (no data or FSDP split)."""
    task = build_task(run)
    steps = compiled(task, run, f"model={MODEL}", jax.devices()[:MODEL])
    params, opt_state = steps.place(task.model)
    batch = steps.batch(task.make_batch, 0)
    hlo = steps.train_step.lower(params, opt_state, batch, np.int32(0)).compile().as_text()
    layers = params.stack.layers
    weights = {
        name: list(getattr(layers, name).weight.shape[1:])
        for name in ("query", "key", "value", "attention_output", "mlp_input", "mlp_output")
    }
    return {
        "params_bytes": device_bytes(params),
        "opt_state_bytes": device_bytes(opt_state),
        "stack_bytes": device_bytes(layers),
        "weights": weights,
        "collectives": collectives(hlo),
    }


def main(folder: str) -> None:
    run = RunConfig(
        task="dna", data=("bacteria-NC_008253",), seq_len=32, batch_size=8, dropout=0.1, steps=10
    )
    result = {
        "devices": jax.device_count(),
        "heads_error": heads_error(run, Path(folder) / "heads"),
        "step": tensor_parallel_step(run),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
