"""Fine-tunes on several simulated CPU devices, run in subprocesses of
tests/test_finetuning/test_finetune_mesh.py (``XLA_FLAGS`` must be set before JAX starts).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python finetune_worker.py checks
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python finetune_worker.py run DIR

``checks`` prints one JSON object: loss histories on one device and on a mesh, shard
shapes, and the command line's errors. ``run`` fine-tunes (partial strategy, early
stopping) on ``data=2,fsdp=4`` with training checkpoints in ``DIR/state``, resuming from
them when present (so the same command continues a killed run), and saves the result in
``DIR/result`` with its history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from pathlib import Path

import jax
import numpy as np

import zoo
from finetuning.tasks import tf_binding
from finetuning.train import FineTuneConfig, fine_tune
from pretraining.mesh import make_mesh
from pretraining.state import TrainingCheckpoints

ENCODER = zoo.TransformerSequenceEncoderConfig(
    transformer=zoo.TransformerConfig(dim=32, n_layers=3, n_heads=4, mlp_dim=64, dropout=0.1),
    kmer=3,
)

RUN_CONFIG = FineTuneConfig(
    strategy="partial",
    max_steps=60,
    warmup_steps=2,
    eval_every=4,
    patience=2,
    batch_size=16,
    learning_rate=3e-3,
)


def small_task(n_train: int = 256):
    """The first examples of each split of the real Oct4-versus-MafK task."""
    task = tf_binding()
    return dataclasses.replace(
        task,
        train=task.train.take(n_train),
        validation=task.validation.take(64),
        test=task.test.take(64),
    )


def new_model(classes):
    return zoo.TaskModel(
        zoo.TaskModelConfig(backbone=ENCODER, labels=classes), key=jax.random.key(0)
    )


def one_device():
    return make_mesh("data=1", jax.devices()[:1])


def losses(result) -> list[list[float]]:
    return [[r["train_loss"], r["validation_loss"]] for r in result.history]


def agreement(task, strategy: str, mesh: str) -> dict:
    """Loss histories of the same fine-tune on one device and on `mesh`."""
    config = FineTuneConfig(
        strategy=strategy, max_steps=6, warmup_steps=1, eval_every=2, batch_size=16
    )
    model = new_model(task.classes)
    one = fine_tune(model, task, config, mesh=one_device(), progress=False)
    many = fine_tune(model, task, config, mesh=make_mesh(mesh), progress=False)
    return {"single": losses(one), "sharded": losses(many)}


def shard_shapes(task) -> dict:
    """Global and local shapes of trained, frozen and optimiser-state leaves under
    ``fsdp=4,model=2`` with the partial strategy (first layer frozen)."""
    from finetuning.steps import FineTuneSteps
    from finetuning.strategies import prepare
    from finetuning.train import fine_tune_optimizer

    config = FineTuneConfig(strategy="partial", freeze_layers=1, batch_size=16)
    model, spec = prepare(new_model(task.classes), "partial", key=jax.random.key(0))
    steps = FineTuneSteps(
        model,
        spec,
        fine_tune_optimizer(config, model, spec),
        make_mesh("fsdp=4,model=2"),
        class_weights=np.ones(2, np.float32),
        batch_size=16,
        seed=0,
    )
    params, frozen = steps.place(model)
    adam = steps.init_optimizer(params)[1][0]
    leaves = {
        "trained query": params.backbone.stack.rest.layers.query.weight,
        "frozen query": frozen.backbone.stack.first.layers.query.weight,
        "trained mlp_output": params.backbone.stack.rest.layers.mlp_output.weight,
        "adam mu query": adam.mu.backbone.stack.rest.layers.query.weight,
        "head": params.head.weight,
        "frozen embedding": frozen.backbone.token_embedding.weight,
    }
    return {
        name: {"global": list(x.shape), "local": list(x.addressable_shards[0].data.shape)}
        for name, x in leaves.items()
    }


def cli_error(*argv: str) -> tuple[int, str]:
    """Exit status and the error line of ``biozoo finetune tf-binding ARGV``."""
    from finetuning.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(["finetune", "tf-binding", *argv])
        except SystemExit as exit:
            status, message = 1, str(exit.code)
            return status, message
    return status, stderr.getvalue().strip()


def checks() -> None:
    task = small_task()
    result = {
        "devices": jax.device_count(),
        "lora": agreement(task, "lora", "data=2,fsdp=2,model=2"),
        # `run` gives the same fine-tune on data=2,fsdp=4
        "partial": losses(
            fine_tune(new_model(task.classes), task, RUN_CONFIG, mesh=one_device(), progress=False)
        ),
        "shards": shard_shapes(task),
        "mesh_error": cli_error("--mesh", "data=3"),
        "batch_error": cli_error("--mesh", "data=8", "--batch-size", "12"),
        "resume_error": cli_error("--resume"),
    }
    print(json.dumps(result))


def run(folder: Path) -> None:
    task = small_task()
    state = TrainingCheckpoints(folder / "state", save_every=3, keep=2)
    result = fine_tune(
        new_model(task.classes),
        task,
        RUN_CONFIG,
        mesh=make_mesh("data=2,fsdp=4"),
        checkpoints=state,
        resume=True,
        progress=False,
    )
    zoo.save_pretrained(result.model, folder / "result")
    summary = {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "history": result.history,
        "test": result.test,
    }
    (folder / "result" / "history.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks()
    else:
        run(Path(sys.argv[2]))
