"""Properties every representation model must have: jit, vmap, finite gradients,
determinism under a fixed key, and dropout that runs in training only. Inputs are real
DNA (Oct4 peaks) and real cells (pbmc3k)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

SMALL_TRANSFORMER = zoo.TransformerConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=64, dropout=0.2)


@dataclasses.dataclass
class Case:
    """How to build one model, feed it a batch and reduce its output to a scalar."""

    build: Callable[[np.ndarray], eqx.Module]  # given real cells to fit a tokenizer on
    batch: Callable[[eqx.Module, list[str], np.ndarray], tuple]
    scalar: Callable[[object], jax.Array]


def fitted(model: zoo.DifferentiableFoundationModel, cells: np.ndarray):
    """`model` with its tokenizer's medians fitted on `cells`."""
    return model.with_tokenizer(model.tokenizer.fit(cells))


def dna_onehot(model, dna, cells):
    return model.one_hot(dna[:4])


def dna_tokens(model, dna, cells):
    ids, mask = model.tokenizer(dna[:4])
    return jnp.asarray(ids), jnp.asarray(mask)


def cell_counts(model, dna, cells):
    return (jnp.asarray(cells[:4]),)


CASES = {
    "SequenceEmbedding": Case(
        lambda cells: zoo.SequenceEmbedding(
            zoo.SequenceEmbeddingConfig(hidden_channels=16, embedding_dim=8, dropout=0.2),
            key=jax.random.key(0),
        ),
        dna_onehot,
        lambda out: (out.pooled**2).sum(),
    ),
    "TransformerSequenceEncoder": Case(
        lambda cells: zoo.TransformerSequenceEncoder(
            zoo.TransformerSequenceEncoderConfig(
                transformer=SMALL_TRANSFORMER, kmer=3, max_len=256
            ),
            key=jax.random.key(0),
        ),
        dna_tokens,
        lambda out: (out.pooled**2).sum() + out.hidden.mean(),
    ),
    "DifferentiableFoundationModel": Case(
        lambda cells: fitted(
            zoo.DifferentiableFoundationModel(
                zoo.DifferentiableFoundationModelConfig(
                    tokenizer=zoo.GeneTokenizerConfig(n_genes=2000, max_tokens=64),
                    transformer=SMALL_TRANSFORMER,
                ),
                key=jax.random.key(0),
            ),
            cells,
        ),
        cell_counts,
        lambda out: zoo.masked_expression_loss(out) + (out.cell_embedding**2).sum(),
    ),
}


def run_batch(model, batch, key):
    keys = jax.random.split(key, batch[0].shape[0])
    return jax.vmap(lambda *args: model(*args[:-1], key=args[-1]))(*batch, keys)


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def test_jit_matches_eager_and_vmap_matches_a_loop(case, real_dna, real_cells):
    model = case.build(real_cells)
    batch = case.batch(model, real_dna, real_cells)
    key = jax.random.key(1)
    eager = run_batch(model, batch, key)
    jitted = eqx.filter_jit(run_batch)(model, batch, key)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    keys = jax.random.split(key, batch[0].shape[0])
    for i in range(batch[0].shape[0]):
        single = model(*(x[i] for x in batch), key=keys[i])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(eager), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-5)


def test_gradients_are_finite_and_nonzero(case, real_dna, real_cells):
    model = case.build(real_cells)
    batch = case.batch(model, real_dna, real_cells)

    def loss(m):
        return case.scalar(run_batch(m, batch, jax.random.key(2)))

    grads = eqx.filter_grad(loss)(model)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_determinism_and_dropout_only_in_training(case, real_dna, real_cells):
    model = case.build(real_cells)
    batch = case.batch(model, real_dna, real_cells)
    first = run_batch(model, batch, jax.random.key(3))
    again = run_batch(model, batch, jax.random.key(3))
    other = run_batch(model, batch, jax.random.key(4))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(case.scalar(first), case.scalar(other))
    inference = eqx.nn.inference_mode(model)
    if isinstance(model, zoo.DifferentiableFoundationModel):  # fix the mask, vary only dropout
        mask = first.expression_mask[:, 1:]
        outputs = [
            jax.vmap(lambda c, m, k, net=net: net(c, expression_mask=m, key=k))(
                batch[0], mask, jax.random.split(jax.random.key(seed), 4)
            ).hidden
            for net in (inference, model)
            for seed in (5, 6)
        ]
    else:
        outputs = [
            run_batch(net, batch, jax.random.key(seed)).hidden
            for net in (inference, model)
            for seed in (5, 6)
        ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.allclose(outputs[2], outputs[3])


def test_default_configs_build_and_run(real_dna, real_cells):
    key = jax.random.key(0)
    embedding = eqx.nn.inference_mode(zoo.SequenceEmbedding(zoo.SequenceEmbeddingConfig(), key=key))
    x, mask = embedding.one_hot(real_dna[:2])
    assert jax.vmap(embedding)(x, mask).pooled.shape == (2, 128)
    encoder = eqx.nn.inference_mode(
        zoo.TransformerSequenceEncoder(zoo.TransformerSequenceEncoderConfig(), key=key)
    )
    ids, mask = encoder.tokenizer(real_dna[:2])
    out = jax.vmap(encoder)(jnp.asarray(ids), jnp.asarray(mask))
    assert out.hidden.shape == (2, 201, 64) and out.pooled.shape == (2, 64)
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(), key=key).fit(real_cells)
    assert tokenizer(jnp.asarray(real_cells[0])).ids.shape == (256,)
    model = eqx.nn.inference_mode(
        fitted(
            zoo.DifferentiableFoundationModel(zoo.DifferentiableFoundationModelConfig(), key=key),
            real_cells,
        )
    )
    assert model(jnp.asarray(real_cells[0])).cell_embedding.shape == (64,)


def test_wrongly_shaped_input_names_the_argument():
    model = zoo.SequenceEmbedding(zoo.SequenceEmbeddingConfig(), key=jax.random.key(0))
    x = jnp.zeros((50, 4))
    with pytest.raises(Exception, match=r"mask"):
        model(x, jnp.ones(49, bool))
    with pytest.raises(Exception, match=r"\bx\b"):
        model(jnp.zeros((50, 5)), jnp.ones(50, bool))
