"""GeneTokenizer: Geneformer rank-value encoding and its soft-rank relaxation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.expression.gene_tokenizer import GENE_PAD, N_SPECIAL


@pytest.fixture(scope="module")
def fitted(real_cells):
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=2000, max_tokens=64))
    return tokenizer.fit(real_cells)


def test_medians_are_nonzero_medians_of_scaled_counts(fitted, real_cells):
    scaled = real_cells / real_cells.sum(1, keepdims=True) * 10_000
    gene = int(np.argmax((real_cells > 0).sum(0)))
    expected = np.median(scaled[real_cells[:, gene] > 0, gene])
    np.testing.assert_allclose(fitted.gene_medians[gene], expected, rtol=1e-6)
    never = np.flatnonzero((real_cells > 0).sum(0) == 0)
    assert never.size and np.all(np.asarray(fitted.gene_medians)[never] == 1.0)


def test_tokens_follow_the_geneformer_recipe(fitted, real_cells):
    cell = real_cells[3]
    tokens = fitted(jnp.asarray(cell))
    scaled = cell / cell.sum() * 10_000
    score = np.where(cell > 0, scaled / np.asarray(fitted.gene_medians), -np.inf)
    order = np.argsort(-score, kind="stable")
    n_expressed = int((cell > 0).sum())
    n = min(64, n_expressed)
    np.testing.assert_array_equal(np.asarray(tokens.ids[:n]) - N_SPECIAL, order[:n])
    np.testing.assert_allclose(tokens.values[:n], np.log1p(scaled[order[:n]]), rtol=1e-5)
    assert int(tokens.mask.sum()) == n
    assert np.all(np.asarray(tokens.ids[n:]) == GENE_PAD)


def test_soft_ranks_converge_to_hard_ranks(fitted, real_cells):
    cell = jnp.asarray(real_cells[5])
    scores = fitted.rank_scores(cell)
    expressed = np.asarray(cell > 0)
    hard = np.asarray(zoo.hard_rank(scores))
    # exact ties converge to the averaged rank; near-ties (closer than 20 x the smallest
    # temperature) would need a smaller temperature still, so they are left out
    gaps = np.abs(np.asarray(scores)[:, None] - np.asarray(scores)[None, :])
    near_tie = ((gaps > 0) & (gaps < 2e-4)).any(axis=1)
    checked = expressed & ~near_tie
    assert checked.sum() > 0.7 * expressed.sum()
    errors = [
        float(np.abs(np.asarray(fitted.soft_ranks(cell, t)) - hard)[checked].max())
        for t in (1.0, 0.1, 0.01, 1e-3, 1e-5)
    ]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3


def test_hard_rank_is_descending_with_ties_averaged():
    np.testing.assert_array_equal(
        zoo.hard_rank(jnp.array([3.0, 1.0, 2.0, 2.0])), [1.0, 4.0, 2.5, 2.5]
    )
    np.testing.assert_allclose(
        zoo.soft_rank(jnp.array([3.0, 1.0, 2.0, 2.0]), 1e-3), [1.0, 4.0, 2.5, 2.5]
    )


def test_soft_rank_gradient_matches_finite_differences():
    x = np.random.default_rng(0).normal(size=40)
    weights = np.random.default_rng(1).normal(size=40)

    def objective(v):
        return jnp.dot(zoo.soft_rank(v, 0.3, block_size=16), weights)

    grad = np.asarray(jax.grad(objective)(jnp.asarray(x, jnp.float32)))
    eps = 1e-2
    for i in range(0, 40, 7):
        step = np.zeros(40)
        step[i] = eps
        numeric = (
            objective(jnp.asarray(x + step, jnp.float32))
            - objective(jnp.asarray(x - step, jnp.float32))
        ) / (2 * eps)
        np.testing.assert_allclose(grad[i], numeric, rtol=2e-2, atol=2e-3)


def test_soft_ranks_of_20000_genes_for_8_cells_fit_in_4_gb():
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=20_000, max_tokens=2048))
    counts = jax.ShapeDtypeStruct((8, 20_000), jnp.float32)

    def loss(c):
        return jax.vmap(lambda x: tokenizer.soft_ranks(x, 0.1))(c).sum()

    compiled = jax.jit(jax.grad(loss)).lower(counts).compile()
    memory = compiled.memory_analysis()
    total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    assert total < 4 * 2**30, f"{total / 2**30:.2f} GiB"
    # the pairwise matrix of one cell alone would take 20000^2 * 4 bytes = 1.5 GiB; 8 cells 12 GiB
    assert total < 20_000**2 * 4


def test_bad_counts_are_refused():
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=3, max_tokens=2))
    with pytest.raises(ValueError, match="negative"):
        tokenizer.fit(np.array([[1.0, -1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.fit(np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(ValueError, match="4 genes in its last axis, expected 3"):
        tokenizer.fit(np.ones((2, 4)))
