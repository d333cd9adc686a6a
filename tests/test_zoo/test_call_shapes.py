"""Every model's ``__call__`` refuses an input of the wrong shape with an error that names
the argument, eagerly and under `jax.jit` alike, instead of broadcasting it into a wrong
answer or failing deep inside with a bare shape message."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo

KEY = jax.random.key(0)
TINY = zoo.TransformerConfig(dim=16, n_layers=1, n_heads=2, mlp_dim=32)


@dataclasses.dataclass(frozen=True)
class WrongShape:
    """A model, a call with one input of the wrong shape, and the argument to be named."""

    build: Callable[[], eqx.Module]
    call: Callable[[eqx.Module], object]
    argument: str


def _encoder():
    config = zoo.TransformerSequenceEncoderConfig(transformer=TINY, kmer=1, max_len=16)
    return zoo.TransformerSequenceEncoder(config, key=KEY)


def _foundation():
    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=zoo.GeneTokenizerConfig(n_genes=20, max_tokens=8), transformer=TINY
    )
    model = zoo.DifferentiableFoundationModel(config, key=KEY)
    return eqx.tree_at(lambda m: m.tokenizer.gene_medians, model, jnp.ones(20))


def _tokenizer():
    tokenizer = zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=20, max_tokens=8))
    return eqx.tree_at(lambda t: t.gene_medians, tokenizer, jnp.ones(20))


def _cnn():
    return zoo.SequenceEmbedding(zoo.SequenceEmbeddingConfig(hidden_channels=8), key=KEY)


def _vae():
    return zoo.VAENormalizer(zoo.VAENormalizerConfig(n_genes=20, n_hidden=8), key=KEY)


def _umap():
    return zoo.DifferentiableUMAP(zoo.DifferentiableUMAPConfig(n_features=6, width=8), key=KEY)


def _hmm():
    return zoo.DifferentiableHMM(zoo.DifferentiableHMMConfig(n_states=2, n_symbols=4), key=KEY)


def _nbglm():
    return zoo.DifferentiableNBGLM(zoo.DifferentiableNBGLMConfig(n_genes=5, n_coefficients=2))


CASES = {
    "encoder ids of rank 2": WrongShape(_encoder, lambda m: m(jnp.zeros((2, 8), int)), "tokens"),
    "encoder ids longer than max_len": WrongShape(
        _encoder, lambda m: m(jnp.zeros(17, int)), "tokens"
    ),
    "encoder mask of another length": WrongShape(
        _encoder, lambda m: m(jnp.zeros(8, int), jnp.ones(7, bool)), "mask"
    ),
    "CNN one-hot over 3 letters": WrongShape(_cnn, lambda m: m(jnp.zeros((10, 3))), "x"),
    "CNN mask of another length": WrongShape(
        _cnn, lambda m: m(jnp.zeros((10, 4)), jnp.ones(9, bool)), "mask"
    ),
    "foundation model with 19 genes": WrongShape(_foundation, lambda m: m(jnp.ones(19)), "counts"),
    "foundation model with a batch": WrongShape(
        _foundation, lambda m: m(jnp.ones((2, 20))), "counts"
    ),
    "tokenizer with 21 genes": WrongShape(_tokenizer, lambda t: t(jnp.ones(21)), "counts"),
    "VAE with 19 genes": WrongShape(_vae, lambda m: m(jnp.ones(19)), "counts"),
    "VAE with a batch": WrongShape(_vae, lambda m: m(jnp.ones((3, 20))), "counts"),
    "UMAP with 5 features": WrongShape(_umap, lambda m: m(jnp.ones(5)), "features"),
    "HMM observations of rank 2": WrongShape(_hmm, lambda m: m(jnp.zeros((3, 4), int)), "obs"),
    "HMM mask of another length": WrongShape(
        _hmm, lambda m: m(jnp.zeros(4, int), jnp.ones(3, bool)), "mask"
    ),
    "NB-GLM design row of 3 coefficients": WrongShape(
        _nbglm, lambda m: m(jnp.ones(3)), "design_row"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_wrong_shape_names_the_argument(case):
    model = case.build()
    with pytest.raises(Exception, match=rf"\b{case.argument}\b") as eager:
        case.call(model)
    assert "Traceback" not in str(eager.value)
    with pytest.raises(Exception, match=rf"\b{case.argument}\b"):
        eqx.filter_jit(case.call)(model)


def test_the_em_refuses_classes_over_other_transcripts():
    quantifier = zoo.DifferentiableEMQuantifier(
        zoo.DifferentiableEMQuantifierConfig(n_transcripts=3)
    ).with_effective_lengths(np.array([100.0, 200.0, 300.0]))
    classes = zoo.EquivalenceClasses.from_lists([[0], [1, 3]], [5.0, 2.0], n_transcripts=4)
    with pytest.raises(ValueError, match=r"classes.*4 transcripts.*3"):
        quantifier(classes)
