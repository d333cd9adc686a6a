"""Layer-wise learning-rate decay: one optimiser step with decay ``d`` moves each parameter
by the step with decay 1 times the factor the convention of `finetuning.train` states.

The convention, for an encoder of ``n`` layers counted ``i = 0, ..., n - 1`` from the
embeddings: layer ``i`` gets ``d ** (n - i)`` (the top layer ``d``), the final norm ``d``, the
embeddings ``d ** (n + 1)`` and the head 1. The expected factors below are written out from
that statement, not computed with the code under test.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from checkpoints.tree_keys import named_leaves
from finetuning.strategies import prepare
from finetuning.train import FineTuneConfig, fine_tune_optimizer

N_LAYERS = 3
DECAY = 0.5
ENCODER = zoo.TransformerSequenceEncoderConfig(
    transformer=zoo.TransformerConfig(
        dim=32, n_layers=N_LAYERS, n_heads=4, mlp_dim=64, dropout=0.0
    ),
    kmer=3,
)
# Factor of each trained leaf (a float) or of each row of a stacked layer leaf (a list,
# row ``r`` being layer ``first + r``), with d = 0.5 and n = 3.
FULL = {
    "backbone.token_embedding.weight": 0.0625,  # d ** (n + 1)
    "backbone.position_embedding.weight": 0.0625,
    "layers": [0.125, 0.25, 0.5],  # layers 0, 1, 2: d ** 3, d ** 2, d ** 1
    "backbone.final_norm.weight": 0.5,
    "backbone.final_norm.bias": 0.5,
    "head.weight": 1.0,
    "head.bias": 1.0,
}
PARTIAL = {  # layer 0 frozen: the trained rows are layers 1 and 2
    "layers": [0.25, 0.5],
    "backbone.final_norm.weight": 0.5,
    "backbone.final_norm.bias": 0.5,
    "head.weight": 1.0,
    "head.bias": 1.0,
}
LORA = {"layers": [0.125, 0.25, 0.5], "head.weight": 1.0, "head.bias": 1.0}


@pytest.fixture(scope="module")
def model():
    return zoo.TaskModel(
        zoo.TaskModelConfig(backbone=ENCODER, labels=("a", "b")), key=jax.random.key(0)
    )


def one_step(model, spec, gradients):
    """The updates of one optimiser step from `gradients`, by leaf key, of `fine_tune_optimizer`
    with decay 1 and with decay ``DECAY``, and of the same chain without layer-wise decay (all
    three in one compilation)."""

    def config(decay):
        return FineTuneConfig(
            learning_rate=1e-2, layer_decay=decay, weight_decay=0.0, warmup_steps=0, max_steps=10
        )

    optimisers = {
        "plain": fine_tune_optimizer(config(1.0), model, spec),
        "decayed": fine_tune_optimizer(config(DECAY), model, spec),
        "reference": optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.0)
        ),
    }

    @eqx.filter_jit
    def update(params, gradients):
        return {
            name: optimiser.update(gradients, optimiser.init(params), params)[0]
            for name, optimiser in optimisers.items()
        }

    updates = update(eqx.filter(model, spec), gradients)
    return {
        name: {k: np.asarray(v) for k, v in named_leaves(tree, eqx.is_array).items()}
        for name, tree in updates.items()
    }


@pytest.mark.parametrize(
    ("strategy", "expected"), [("full", FULL), ("partial", PARTIAL), ("lora", LORA)]
)
def test_each_layer_steps_by_decay_to_the_power_of_its_depth(model, strategy, expected):
    model, spec = prepare(model, strategy, freeze_layers=1, lora_rank=2, key=jax.random.key(1))
    rng = np.random.default_rng(0)
    gradients = jax.tree.map(
        lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype),
        eqx.filter(model, spec),
    )
    updates = one_step(model, spec, gradients)
    plain, decayed = updates["plain"], updates["decayed"]

    layer_keys = [k for k in plain if ".layers." in k]
    assert layer_keys, "the strategy trains no transformer layer"
    assert sorted(set(plain) - set(layer_keys)) == sorted(k for k in expected if k != "layers")
    for key, step in plain.items():
        # Decay 1 is the plain optimiser, whose first step is about -lr * sign(gradient).
        np.testing.assert_allclose(step, updates["reference"][key], rtol=1e-6, err_msg=key)
        assert np.all(np.abs(step) > 1e-3), key
        factors = np.asarray(expected["layers"] if key in layer_keys else expected[key])
        factors = factors.reshape(factors.shape + (1,) * (step.ndim - factors.ndim))
        np.testing.assert_allclose(decayed[key], factors * step, rtol=1e-5, err_msg=key)
