"""Resuming a run: settings that shape the trajectory (``--steps`` among them, since it fixes
the learning-rate schedule) must match the saved run, and a mismatch is refused with the
setting and both values; bookkeeping settings may change.

A checkpoint at step 0 is written straight after placing the model, so no step is compiled.
"""

from __future__ import annotations

import dataclasses

import pytest

from pretraining.optimizer import OptimizerConfig
from pretraining.run_config import RunConfig
from pretraining.train import Run, RunError

SAVED = RunConfig(
    task="dna",
    data=("bacteria-NC_008253",),
    seq_len=16,
    batch_size=4,
    steps=20,
    eval_every=0,
    eval_batches=1,
    save_every=10,
    optimizer=OptimizerConfig(warmup_steps=2),
)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    run = Run(SAVED, out)
    run._save(force=True)
    run.checkpoints.wait()
    return out


def replace_optimizer(**changes) -> RunConfig:
    return dataclasses.replace(SAVED, optimizer=dataclasses.replace(SAVED.optimizer, **changes))


@pytest.mark.parametrize(
    "config, message",
    [
        (dataclasses.replace(SAVED, steps=40), "steps: saved 20, now 40"),
        (dataclasses.replace(SAVED, seed=1), "seed: saved 0, now 1"),
        (replace_optimizer(learning_rate=0.002), "optimizer.learning_rate: saved 0.001, now 0.002"),
        (replace_optimizer(accumulate_steps=2), "optimizer.accumulate_steps: saved 1, now 2"),
        (replace_optimizer(compute_dtype="bfloat16"), "compute_dtype: saved 'float32', now 'bf"),
    ],
    ids=["steps", "seed", "learning_rate", "accumulate_steps", "compute_dtype"],
)
def test_resume_refuses_changed_training_settings(saved_run, config, message):
    with pytest.raises(RunError, match="other settings") as error:
        Run(config, saved_run, resume=True)
    assert message in str(error.value)
    assert "resume with the same command" in str(error.value)


def test_resume_accepts_changed_bookkeeping(saved_run):
    config = dataclasses.replace(SAVED, eval_every=5, eval_batches=2, save_every=4, keep=1)
    run = Run(config, saved_run, resume=True)
    assert run.step == 0


def test_existing_run_needs_resume(saved_run):
    with pytest.raises(RunError, match="pass --resume"):
        Run(SAVED, saved_run)
