"""Sequence-specific behaviour of SequenceEmbedding and TransformerSequenceEncoder."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.sequence.nucleotides import PAD

TRANSFORMER = zoo.TransformerConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=64, dropout=0.0)


def test_sequence_embedding_padding_invariance(real_dna):
    model = zoo.SequenceEmbedding(
        zoo.SequenceEmbeddingConfig(hidden_channels=16, embedding_dim=8, dropout=0.0),
        key=jax.random.key(0),
    )
    sequence = real_dna[0][:150]
    x, mask = model.one_hot([sequence])
    padded_x, padded_mask = model.one_hot([sequence], length=200)
    short = model(x[0], mask[0])
    long = model(padded_x[0], padded_mask[0])
    np.testing.assert_allclose(long.pooled, short.pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(long.hidden[:150], short.hidden, rtol=1e-5, atol=1e-6)
    assert not jnp.any(long.hidden[150:])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_encoder_padding_invariance(real_dna, pooling, norm, positions):
    config = zoo.TransformerSequenceEncoderConfig(
        transformer=dataclasses.replace(TRANSFORMER, norm=norm),
        kmer=3,
        pooling=pooling,
        positions=positions,
        max_len=256,
    )
    model = zoo.TransformerSequenceEncoder(config, key=jax.random.key(0))
    ids, _ = model.tokenizer([real_dna[1]])
    padded, padded_mask = model.tokenizer([real_dna[1]], length=240)
    short = model(jnp.asarray(ids[0]))
    long = model(jnp.asarray(padded[0]), jnp.asarray(padded_mask[0]))
    n = ids.shape[1]
    np.testing.assert_allclose(long.pooled, short.pooled, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(long.hidden[:n], short.hidden, rtol=1e-4, atol=1e-5)


def test_one_hot_input_equals_token_input(real_dna):
    model = zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(transformer=TRANSFORMER), key=jax.random.key(0)
    )
    ids, mask = model.tokenizer(real_dna[:2])
    one_hot = jax.nn.one_hot(ids, model.tokenizer.vocab_size) * mask[..., None]
    from_ids = jax.vmap(model)(jnp.asarray(ids), jnp.asarray(mask))
    from_one_hot = jax.vmap(model)(one_hot)
    np.testing.assert_allclose(from_one_hot.pooled, from_ids.pooled, rtol=1e-5, atol=1e-6)


def test_gradient_with_respect_to_one_hot_sequence(real_dna):
    model = zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(transformer=TRANSFORMER), key=jax.random.key(0)
    )
    ids, _ = model.tokenizer(real_dna[:1])
    x = jax.nn.one_hot(ids[0], model.tokenizer.vocab_size)
    saliency = jax.grad(lambda x: model(x).pooled.sum())(x)
    assert saliency.shape == x.shape and bool(jnp.all(jnp.isfinite(saliency)))
    assert float(jnp.abs(saliency).sum()) > 0


def test_mlm_logits_cover_the_vocabulary_and_tie_the_embedding(real_dna):
    model = zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(transformer=TRANSFORMER, kmer=2), key=jax.random.key(0)
    )
    ids, _ = model.tokenizer(real_dna[:1])
    hidden = model(jnp.asarray(ids[0])).hidden
    logits = model.mlm_logits(hidden[:5])
    assert logits.shape == (5, model.tokenizer.vocab_size)
    grads = eqx.filter_grad(lambda m: m.mlm_logits(hidden[:5]).sum())(model)
    assert float(jnp.abs(grads.token_embedding.weight).sum()) > 0


def test_too_long_sequence_is_refused(real_dna):
    model = zoo.TransformerSequenceEncoder(
        zoo.TransformerSequenceEncoderConfig(transformer=TRANSFORMER, max_len=64),
        key=jax.random.key(0),
    )
    ids, _ = model.tokenizer(real_dna[:1])
    with pytest.raises(ValueError, match="max_len=64"):
        model(jnp.asarray(ids[0]))
    assert ids[0, -1] != PAD
