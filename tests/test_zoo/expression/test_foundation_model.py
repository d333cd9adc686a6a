"""DifferentiableFoundationModel: tokenizer use, per-cell masking, masked-expression loss."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.expression.foundation_model import random_expression_mask

CONFIG = zoo.DifferentiableFoundationModelConfig(
    tokenizer=zoo.GeneTokenizerConfig(n_genes=2000, max_tokens=64),
    transformer=zoo.TransformerConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=64, dropout=0.0),
    mask_ratio=0.25,
)


def build(real_cells):
    model = zoo.DifferentiableFoundationModel(CONFIG, key=jax.random.key(0))
    return model.with_tokenizer(model.tokenizer.fit(real_cells))


def test_tokens_come_from_the_gene_tokenizer(real_cells):
    model = build(real_cells)
    cell = jnp.asarray(real_cells[0])
    out = model(cell)
    tokens = model.tokenizer(cell)
    np.testing.assert_array_equal(out.ids[1:], tokens.ids)
    np.testing.assert_array_equal(out.values[1:], tokens.values)
    assert out.ids[0] == 1 and out.token_mask[0]


def test_masks_are_drawn_per_cell_at_the_configured_ratio(real_cells):
    model = build(real_cells)
    cells = jnp.asarray(np.repeat(real_cells[:1], 6, axis=0))  # six copies of the same cell
    out = jax.vmap(lambda c, k: model(c, key=k))(cells, jax.random.split(jax.random.key(1), 6))
    masks = np.asarray(out.expression_mask)
    n_real = int(out.token_mask[0, 1:].sum())
    assert np.all(masks.sum(1) == max(1, round(0.25 * n_real)))
    assert len({m.tobytes() for m in masks}) == 6, "identical cells got identical masks"
    assert not masks[:, 0].any() and not (masks & ~np.asarray(out.token_mask)).any()


def test_masked_values_are_hidden_from_the_model(real_cells):
    model = build(real_cells)
    tokens = model.tokenizer(jnp.asarray(real_cells[2]))
    mask = random_expression_mask(tokens.mask, 0.25, key=jax.random.key(3))
    reference = model.encode(tokens, expression_mask=mask)
    scrambled = tokens._replace(values=jnp.where(mask, 7.0, tokens.values))
    again = model.encode(scrambled, expression_mask=mask)
    np.testing.assert_array_equal(again.hidden, reference.hidden)
    visible = tokens._replace(values=jnp.where(~mask & tokens.mask, 7.0, tokens.values))
    assert not np.allclose(model.encode(visible, expression_mask=mask).hidden, reference.hidden)


def test_values_are_normalised_logs_not_raw_counts(real_cells):
    model = build(real_cells)
    cell = jnp.asarray(real_cells[4])
    np.testing.assert_allclose(
        model(cell).cell_embedding, model(cell * 3).cell_embedding, rtol=1e-4, atol=1e-5
    )
    assert float(model(cell).values.max()) < 10


def test_loss_counts_only_masked_tokens_and_reaches_the_counts(real_cells):
    model = build(real_cells)
    cells = jnp.asarray(real_cells[:4])
    keys = jax.random.split(jax.random.key(5), 4)

    def loss(c):
        return zoo.masked_expression_loss(jax.vmap(lambda x, k: model(x, key=k))(c, keys))

    out = jax.vmap(lambda x, k: model(x, key=k))(cells, keys)
    m = np.asarray(out.expression_mask)
    expected = ((np.asarray(out.predicted_values) - np.asarray(out.values)) ** 2)[m].mean()
    np.testing.assert_allclose(loss(cells), expected, rtol=1e-5)
    grad = jax.grad(loss)(cells)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


def test_mean_pooling_ignores_masked_and_padding_tokens(real_cells):
    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=CONFIG.tokenizer, transformer=CONFIG.transformer, pooling="mean"
    )
    model = zoo.DifferentiableFoundationModel(config, key=jax.random.key(0))
    model = eqx.nn.inference_mode(model.with_tokenizer(model.tokenizer.fit(real_cells)))
    out = model(jnp.asarray(real_cells[6]), key=jax.random.key(7))
    keep = np.array(out.token_mask & ~out.expression_mask)
    keep[0] = False
    np.testing.assert_allclose(
        out.cell_embedding, np.asarray(out.hidden)[keep].mean(0), rtol=1e-5, atol=1e-6
    )


def test_an_unfitted_tokenizer_is_refused(real_cells):
    model = zoo.DifferentiableFoundationModel(CONFIG, key=jax.random.key(0))
    cell = jnp.asarray(real_cells[0])
    with pytest.raises(ValueError, match="GeneTokenizer is not fitted"):
        model(cell)
    with pytest.raises(RuntimeError, match="GeneTokenizer is not fitted"):
        eqx.filter_jit(jax.vmap(lambda m, c: m(c).cell_embedding, in_axes=(None, 0)))(
            model, cell[None]
        )
    with pytest.raises(ValueError, match="GeneTokenizer is not fitted"):
        model.with_tokenizer(model.tokenizer)


def test_bad_tokens_are_refused(real_cells):
    model = build(real_cells)
    tokens = model.tokenizer(jnp.asarray(real_cells[1]))
    vocab = 2000 + 3
    for bad_id in (vocab, -1):
        bad = tokens._replace(ids=tokens.ids.at[5].set(bad_id))
        with pytest.raises(ValueError, match=rf"vocabulary \[0, {vocab}\); got \[{bad_id}\]"):
            model.encode(bad)
        # under jit an embedding lookup would clamp the id silently; eqx.error_if stops it
        with pytest.raises(RuntimeError, match=rf"vocabulary \[0, {vocab}\)"):
            eqx.filter_jit(lambda m, t: m.encode(t).hidden)(model, bad)
    with pytest.raises(ValueError, match=r"tokens\.ids must be integers"):
        model.encode(tokens._replace(ids=tokens.ids.astype(jnp.float32)))
    with pytest.raises(ValueError, match=r"tokens\.values must have shape \(64,\)"):
        model.encode(tokens._replace(values=tokens.values[:63]))
    with pytest.raises(ValueError, match=r"expression_mask must have shape \(64,\)"):
        model(jnp.asarray(real_cells[1]), expression_mask=jnp.ones(65, bool))


def test_bad_counts_are_refused(real_cells):
    model = build(real_cells)
    with pytest.raises(ValueError, match="counts contains negative values"):
        model(jnp.asarray(real_cells[0]).at[0].set(-2.0))
    with pytest.raises(ValueError, match="counts contains NaN"):
        model(jnp.asarray(real_cells[0]).at[0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"counts must be one cell of shape \(2000,\)"):
        model(jnp.asarray(real_cells[0, :100]))
