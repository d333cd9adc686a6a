"""The compiled train step on one device: gradient accumulation gives the update of the
whole batch, and bfloat16 compute runs the forward pass in bfloat16 while the parameters,
gradients and fitted statistics stay float32.

Tolerances: accumulation sums the same per-example gradients in another order, so every
gradient leaf agrees within 1e-5 of its own largest entry (float32 rounding) and the loss
within 1e-6. bfloat16 keeps 8 significant bits, so its loss is within 2e-2 of float32's.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradient_comparison import worst_leaf

from pretraining.mesh import make_mesh
from pretraining.optimizer import OptimizerConfig, cast_for_compute
from pretraining.run_config import RunConfig
from pretraining.steps import CompiledSteps
from pretraining.tasks import build_task

RUN = RunConfig(
    task="dna",
    data=("bacteria-NC_008253",),
    seq_len=16,
    batch_size=8,
    dropout=0.1,  # on: each micro-batch must draw its rows' own dropout masks
    steps=10,
    optimizer=OptimizerConfig(warmup_steps=0),
)


@pytest.fixture(scope="module")
def task():
    return build_task(RUN)


def steps_for(task, **optimizer) -> CompiledSteps:
    config = dataclasses.replace(RUN.optimizer, **optimizer)
    mesh = make_mesh("data=1", jax.devices()[:1])
    return CompiledSteps(
        task.model, task.objective, config, RUN.steps, mesh, seed=0, batch_size=RUN.batch_size
    )


def one_step(steps: CompiledSteps, task):
    """Gradients, statistics and updated parameters of step 2 from the initial model."""
    params, opt_state = steps.place(task.model)
    batch = steps.batch(task.make_batch, 2)
    grads, sums = steps.gradients(params, batch, np.int32(2))
    params, _, metrics = steps.train_step(params, opt_state, batch, np.int32(2))
    return jax.device_get((grads, sums, params, metrics))


def test_accumulated_micro_batches_match_the_whole_batch(task):
    grads, sums, _, metrics = one_step(steps_for(task), task)
    grads4, sums4, _, metrics4 = one_step(steps_for(task, accumulate_steps=4), task)
    assert float(sums4["count"]) == float(sums["count"]) > 0
    assert float(sums4["loss_sum"]) == pytest.approx(float(sums["loss_sum"]), rel=1e-6)
    path, difference = worst_leaf(grads4, grads)
    assert difference < 1e-5, path
    # the train step divides the accumulated sum by the whole batch's target count
    assert float(metrics4["grad_norm"]) == pytest.approx(float(metrics["grad_norm"]), rel=1e-5)


def test_bfloat16_compute_keeps_float32_weights(task):
    _, sums, _, _ = one_step(steps_for(task), task)
    grads16, sums16, params16, _ = one_step(steps_for(task, compute_dtype="bfloat16"), task)
    loss, loss16 = (float(s["loss_sum"] / s["count"]) for s in (sums, sums16))
    assert loss16 != loss  # the forward pass did run in bfloat16
    assert loss16 == pytest.approx(loss, rel=2e-2)
    for tree in (grads16, params16):
        assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype(np.float32)}
    initial = eqx.filter(task.model, eqx.is_array)
    pairs = zip(jax.tree.leaves(params16), jax.tree.leaves(initial), strict=True)
    assert all(not np.array_equal(a, b) for a, b in pairs)  # every leaf was updated


class Tokenizer(eqx.Module):
    gene_medians: jax.Array


class Model(eqx.Module):
    tokenizer: Tokenizer
    weight: jax.Array
    ids: jax.Array


def test_cast_for_compute_leaves_fitted_statistics_and_integers():
    model = Model(Tokenizer(jnp.ones(3)), jnp.ones((2, 2)), jnp.arange(3))
    cast = cast_for_compute(model, "bfloat16")
    assert cast.weight.dtype == jnp.bfloat16
    assert cast.tokenizer.gene_medians.dtype == jnp.float32
    assert cast.ids.dtype == model.ids.dtype
    assert cast_for_compute(model, "float32") is model
