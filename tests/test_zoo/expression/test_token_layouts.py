"""The id layouts, framing, orderings and model options that published single-cell models
(Geneformer, scGPT) need, on tiny configs; the parity with the upstream code is tested in
tests/test_checkpoints/test_geneformer_import.py and test_scgpt_import.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.common.config import ConfigError

V2_LAYOUT = dict(first_gene_id=4, pad_id=0, mask_id=1, cls_id=2, eos_id=3)
COUNTS = jnp.asarray([0, 5, 0, 1, 9, 0, 2, 7, 0, 3], jnp.float32)
TRANSFORMER = zoo.TransformerConfig(dim=16, n_layers=1, n_heads=2, mlp_dim=32, dropout=0.0)


def tokenizer(**fields):
    config = zoo.GeneTokenizerConfig(n_genes=10, **fields)
    return zoo.GeneTokenizer.from_medians(config, np.ones(10))


@pytest.mark.parametrize("max_tokens", [4, 8])
def test_v2_framing_puts_cls_first_and_eos_after_the_last_gene(max_tokens):
    t = tokenizer(max_tokens=max_tokens, **V2_LAYOUT)
    framed = t.frame(t(COUNTS))
    ranked = [4, 7, 1, 9, 6, 3][:max_tokens]  # expressed columns by descending count
    expected = [2] + [4 + g for g in ranked] + [3]
    n = len(expected)
    assert t.config.sequence_length == max_tokens + 2
    np.testing.assert_array_equal(np.asarray(framed.ids)[:n], expected)
    np.testing.assert_array_equal(np.asarray(framed.ids)[n:], 0)
    np.testing.assert_array_equal(np.asarray(framed.mask), np.arange(max_tokens + 2) < n)


def test_column_ordering_keeps_the_first_expressed_genes_in_column_order():
    t = tokenizer(
        max_tokens=4, first_gene_id=0, pad_id=10, cls_id=11, mask_id=None, ordering="column"
    )
    np.testing.assert_array_equal(np.asarray(t(COUNTS).ids), [1, 3, 4, 6])


def test_vocab_size_counts_genes_specials_and_unused_ids():
    assert zoo.GeneTokenizerConfig(n_genes=10, max_tokens=4).vocab_size == 13
    scgpt = zoo.GeneTokenizerConfig(
        n_genes=10,
        max_tokens=4,
        first_gene_id=0,
        pad_id=10,
        cls_id=11,
        mask_id=None,
        unused_ids=(12,),
    )
    assert scgpt.vocab_size == 13


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(pad_id=1), "must differ"),
        (dict(first_gene_id=0), "outside the gene ids"),
        (dict(ordering="random"), "ordering"),
        (dict(values="bins", n_bins=2), "n_bins"),
    ],
)
def test_bad_tokenizer_layouts_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        zoo.GeneTokenizerConfig(n_genes=10, max_tokens=4, **fields)


@pytest.mark.parametrize(
    "tokens, fields, message",
    [
        (dict(cls_id=None), dict(), "pooling 'cls' needs"),
        (dict(mask_id=None), dict(value_input=False), "needs a mask_id"),
        (dict(cls_id=None), dict(pooling="mean", cls_value=-2.0), "cls_value needs"),
        (dict(), dict(positions=4), "at least the sequence length"),
        (dict(), dict(value_input=False, max_value=512.0), "need value_input"),
    ],
)
def test_bad_model_options_are_refused(tokens, fields, message):
    with pytest.raises(ConfigError, match=message):
        zoo.DifferentiableFoundationModelConfig(
            tokenizer=zoo.GeneTokenizerConfig(n_genes=10, max_tokens=4, **tokens),
            transformer=TRANSFORMER,
            **fields,
        )


def test_a_model_without_values_masks_by_id_and_has_no_expression_loss():
    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=zoo.GeneTokenizerConfig(n_genes=10, max_tokens=4, **V2_LAYOUT),
        transformer=TRANSFORMER,
        pooling="mean",
        value_input=False,
        positions=6,
        embedding_norm=True,
        head="gene_logits",
    )
    model = zoo.DifferentiableFoundationModel(config, key=jax.random.key(0))
    model = model.with_tokenizer(tokenizer(max_tokens=4, **V2_LAYOUT))
    out = model(COUNTS, expression_mask=jnp.asarray([False, True, False, False]))
    np.testing.assert_array_equal(np.asarray(out.ids), [2, 8, 1, 5, 13, 3])
    assert out.gene_logits.shape == (6, config.tokenizer.vocab_size)
    assert out.predicted_values is None
    with pytest.raises(ValueError, match="expression head"):
        zoo.masked_expression_loss(out)
    with pytest.raises(ValueError, match="no value input"):
        model.encode_values(jnp.ones(3))
