"""GeneTokenizer: Geneformer rank-value encoding and its soft-rank relaxation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

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


def test_soft_ranks_rank_the_expressed_genes_only(fitted, real_cells):
    # Geneformer ranks expressed genes only: against scipy's average rank of the expressed
    # scores, at the default temperature tau = 0.1. Tolerance: each pair of genes is off by at
    # most 1/2 when their scores are closer than 5 tau and by at most sigmoid(-5) = 0.0067
    # otherwise, so a gene may be off by half its expressed neighbours within 5 tau plus
    # 0.0067 per farther expressed gene (+ 1e-3 for float32 sums). Unexpressed genes must add
    # nothing: with ~1,800 zeros, one weakly expressed gene used to move by hundreds of ranks.
    soft_ranks = jax.jit(jax.vmap(fitted.soft_ranks))(jnp.asarray(real_cells))
    scores = jax.vmap(fitted.rank_scores)(jnp.asarray(real_cells))
    for cell, soft, score in zip(
        real_cells, np.asarray(soft_ranks), np.asarray(scores), strict=True
    ):
        expressed = cell > 0
        n = int(expressed.sum())
        soft, score = soft[expressed], score[expressed]
        hard = scipy.stats.rankdata(-score, method="average")
        gaps = np.abs(score[:, None] - score[None, :])
        near = (gaps < 0.5).sum(axis=1) - 1
        bound = 0.5 * near + float(jax.nn.sigmoid(-5.0)) * (n - 1 - near) + 1e-3
        assert np.all(np.abs(soft - hard) <= bound), np.abs(soft - hard).max()
        assert soft.min() >= 1.0 and soft.max() <= n
        np.testing.assert_allclose(soft.sum(), n * (n + 1) / 2, rtol=1e-5)
    # genes not expressed are tied last, as in the hard rank of the whole cell
    cell = real_cells[0]
    unexpressed = np.asarray(soft_ranks[0])[cell == 0]
    n = int((cell > 0).sum())
    np.testing.assert_allclose(unexpressed, n + (cell.size - n + 1) / 2)


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param([0.0, 3.0, 0.0, 0.0, 0.0, 0.0], id="one-expressed-gene"),
        pytest.param([2.0, 2.0, 0.0, 2.0, 5.0, 5.0], id="ties"),
        pytest.param([0.0] * 6, id="empty-cell"),
    ],
)
def test_soft_rank_gradients_are_finite(counts):
    tokenizer = zoo.GeneTokenizer.from_medians(
        zoo.GeneTokenizerConfig(n_genes=6, max_tokens=4), np.ones(6)
    )
    weights = jnp.arange(1.0, 7.0)
    grad = jax.grad(lambda c: jnp.dot(tokenizer.soft_ranks(c), weights))(jnp.asarray(counts))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_soft_rank_gradients_on_a_real_cell_are_finite_and_nonzero(fitted, real_cells):
    cell = jnp.asarray(real_cells[7])
    weights = jnp.asarray(np.random.default_rng(0).normal(size=cell.size), jnp.float32)
    grad = np.asarray(jax.grad(lambda c: jnp.dot(fitted.soft_ranks(c), weights))(cell))
    assert np.all(np.isfinite(grad)) and np.abs(grad[real_cells[7] > 0]).sum() > 0


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
    tokenizer = zoo.GeneTokenizer.from_medians(
        zoo.GeneTokenizerConfig(n_genes=20_000, max_tokens=2048), np.ones(20_000)
    )
    counts = jax.ShapeDtypeStruct((8, 20_000), jnp.float32)

    def loss(c):
        return jax.vmap(lambda x: tokenizer.soft_ranks(x, 0.1))(c).sum()

    compiled = jax.jit(jax.grad(loss)).lower(counts).compile()
    memory = compiled.memory_analysis()
    total = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    assert total < 4 * 2**30, f"{total / 2**30:.2f} GiB"
    # the pairwise matrix of one cell alone would take 20000^2 * 4 bytes = 1.5 GiB; 8 cells 12 GiB
    assert total < 20_000**2 * 4


def test_bad_counts_are_refused_by_fit():
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=3, max_tokens=2))
    with pytest.raises(ValueError, match="negative"):
        tokenizer.fit(np.array([[1.0, -1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.fit(np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(2, 4\); its last axis must hold 3 genes"):
        tokenizer.fit(np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-integer values; expected raw counts"):
        tokenizer.fit(np.log1p(np.array([[1.0, 5.0, 2.0]])))
    with pytest.raises(ValueError, match=r"\(cells, genes\) matrix"):
        tokenizer.fit(np.ones(3))


def test_bad_counts_are_refused_by_the_tokenizer(fitted, real_cells):
    cell = real_cells[0].copy()
    for call in (fitted, fitted.soft_ranks, fitted.rank_scores):
        with pytest.raises(ValueError, match="counts contains negative values"):
            call(jnp.asarray(cell).at[3].set(-1.0))
        with pytest.raises(ValueError, match="counts contains NaN"):
            call(jnp.asarray(cell).at[3].set(jnp.nan))
        with pytest.raises(ValueError, match=r"counts must be one cell of shape \(2000,\)"):
            call(jnp.asarray(cell[:1999]))
    with pytest.raises(ValueError, match="temperature must be positive"):
        fitted.soft_ranks(jnp.asarray(cell), 0.0)
    # not integers: accepted, since gradients reach the counts (a relaxation of the counts)
    np.testing.assert_array_equal(
        fitted(jnp.asarray(cell * 0.5)).ids, fitted(jnp.asarray(cell)).ids
    )


def test_an_unfitted_tokenizer_refuses_to_run(real_cells):
    config = zoo.GeneTokenizerConfig(n_genes=2000, max_tokens=64)
    unfitted = zoo.GeneTokenizer(config)
    cell = jnp.asarray(real_cells[0])
    for call in (unfitted, unfitted.soft_ranks, unfitted.rank_scores):
        with pytest.raises(ValueError, match="GeneTokenizer is not fitted"):
            call(cell)
    # under jit the medians are traced: eqx.error_if stops it at run time
    with pytest.raises(RuntimeError, match="GeneTokenizer is not fitted"):
        jax.jit(jax.vmap(lambda t, c: t(c).ids, in_axes=(None, 0)))(unfitted, cell[None])


def test_unit_medians_are_an_explicit_choice(real_cells):
    config = zoo.GeneTokenizerConfig(n_genes=2000, max_tokens=64)
    unit = zoo.GeneTokenizer.from_medians(config, np.ones(2000))
    cell = real_cells[9]
    order = np.argsort(-np.where(cell > 0, cell, -np.inf), kind="stable")[:64]
    np.testing.assert_array_equal(np.asarray(unit(jnp.asarray(cell)).ids) - N_SPECIAL, order)
    with pytest.raises(ValueError, match=r"medians has shape \(1999,\), expected \(2000,\)"):
        zoo.GeneTokenizer.from_medians(config, np.ones(1999))
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="medians must be finite and positive"):
            zoo.GeneTokenizer.from_medians(config, np.full(2000, 1.0).clip(bad, bad))
