"""Bad input at every public entry point: one table, each case a clear error naming the
argument or setting at fault, none a hang, a silent NaN or a bare shape message.

The VAE, PHATE, tokenizer and checkpoint-file cases that go deeper live beside their
families (tests/test_zoo/vae, tests/test_zoo/phate, tests/test_zoo/expression,
tests/test_checkpoints/test_checkpoint_fuzz.py); this table is the one place that shows
every entry point side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import zoo
from pretraining.mesh import parse_mesh

KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
TINY = zoo.TransformerConfig(dim=16, n_layers=1, n_heads=2, mlp_dim=32)


@dataclasses.dataclass(frozen=True)
class Bad:
    """A call that must fail, and a pattern its message must contain."""

    call: Callable[[], object]
    message: str


def hmm():
    return zoo.DifferentiableHMM(zoo.DifferentiableHMMConfig(n_states=2, n_symbols=4), key=KEY)


def counts_table(values) -> tuple[pd.DataFrame, pd.DataFrame]:
    values = np.asarray(values)
    samples = [f"s{i}" for i in range(values.shape[0])]
    counts = pd.DataFrame(values, index=samples, columns=[f"g{j}" for j in range(values.shape[1])])
    metadata = pd.DataFrame({"condition": ["a", "b"] * (len(samples) // 2)}, index=samples)
    return counts, metadata


GOOD_COUNTS = RNG.poisson(20, (6, 8)) + 1


def de(values=GOOD_COUNTS, design="~ condition", contrast=("condition", "b", "a"), meta=None):
    counts, metadata = counts_table(values)
    return lambda: zoo.differential_expression(
        counts, metadata if meta is None else meta(metadata), design, contrast
    )


def em_classes(transcripts=((0,), (0, 1)), counts=(3.0, 4.0), n=2):
    return lambda: zoo.EquivalenceClasses.from_lists(
        [list(t) for t in transcripts], np.asarray(counts), n_transcripts=n
    )


def em_lengths(lengths):
    config = zoo.DifferentiableEMQuantifierConfig(n_transcripts=2)
    return lambda: zoo.DifferentiableEMQuantifier(config).with_effective_lengths(
        np.asarray(lengths, float)
    )


def tokenizer():
    return zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=6, max_tokens=4))


def foundation():
    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=zoo.GeneTokenizerConfig(n_genes=6, max_tokens=4), transformer=TINY
    )
    model = zoo.DifferentiableFoundationModel(config, key=KEY)
    return model.with_tokenizer(zoo.GeneTokenizer.from_medians(config.tokenizer, np.ones(6)))


def encoder():
    config = zoo.TransformerSequenceEncoderConfig(transformer=TINY, kmer=1, max_len=16)
    return zoo.TransformerSequenceEncoder(config, key=KEY)


def umap_fit(features, **settings):
    config = zoo.DifferentiableUMAPConfig(n_features=3, width=8, n_steps=2, **settings)
    return lambda: zoo.DifferentiableUMAP(config, key=KEY).fit(features, key=KEY, progress=False)


def phate_graph(features):
    return lambda: zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(knn=3)).graph(
        features, key=KEY
    )


def phate_on_other_cells():
    model = zoo.DifferentiablePHATE(zoo.DifferentiablePHATEConfig(knn=3, n_pca=None))
    graph = model.graph(RNG.normal(size=(20, 3)), key=KEY)
    return lambda: model(jnp.asarray(RNG.normal(size=(25, 3))), graph)


def vae_train(counts, batches=None):
    config = zoo.VAENormalizerConfig(n_genes=4, n_hidden=8, batch_labels=("x", "y"))
    model = zoo.VAENormalizer(config, key=KEY)
    counts = np.asarray(counts, float)
    batches = np.zeros(len(counts), int) if batches is None else np.asarray(batches)
    training = zoo.VAETrainingConfig(epochs=1, kl_warmup_epochs=1)
    return lambda: zoo.train_vae(model, counts, batches, training, key=KEY, progress=False)


CELLS = RNG.poisson(3, (10, 4)).astype(float) + 1
POINTS = RNG.normal(size=(30, 3))

CASES: dict[str, Bad] = {
    # hidden Markov model
    "HMM symbol at n_symbols": Bad(lambda: hmm()(jnp.array([0, 4, 1])), r"obs"),
    "HMM negative symbol": Bad(lambda: hmm()(jnp.array([0, -1])), r"obs"),
    "HMM float observations": Bad(lambda: hmm()(jnp.array([0.5, 1.0])), r"obs"),
    "HMM fit on a symbol past the alphabet": Bad(
        lambda: zoo.fit_hmm_baum_welch(hmm(), np.array([[0, 7, 1]])), r"obs"
    ),
    "HMM fit on no sequences": Bad(
        lambda: zoo.fit_hmm_baum_welch(hmm(), np.zeros((0, 5), int)), r"obs"
    ),
    "HMM NaN transition": Bad(
        lambda: zoo.DifferentiableHMM.from_probabilities(
            np.array([0.5, 0.5]), np.array([[np.nan, 0.5], [0.5, 0.5]]), np.full((2, 4), 0.25)
        ),
        r"transition",
    ),
    # DESeq2
    "DE negative count": Bad(de(GOOD_COUNTS - 30), r"counts"),
    "DE fractional count": Bad(de(GOOD_COUNTS + 0.5), r"counts"),
    "DE NaN count": Bad(de(np.where(GOOD_COUNTS > 25, np.nan, GOOD_COUNTS)), r"counts"),
    "DE no gene counted in every sample": Bad(
        de(GOOD_COUNTS * (np.arange(8) % 2 == 0) * (np.arange(6)[:, None] != 0)),
        r"zero in some sample",
    ),
    "DE unknown contrast level": Bad(de(contrast=("condition", "c", "a")), r"\bc\b"),
    "DE unknown design column": Bad(de(design="~ batch"), r"batch"),
    "DE metadata without a sample": Bad(de(meta=lambda m: m.iloc[1:]), r"s0"),
    "NB-GLM rank-deficient design": Bad(
        lambda: zoo.fit_nbglm(
            GOOD_COUNTS.astype(float),
            np.ones((6, 2)),
            zoo.DifferentiableNBGLMConfig(n_genes=8, n_coefficients=2),
        ),
        r"design",
    ),
    # EM quantifier
    "EM transcript id past n_transcripts": Bad(em_classes(((0,), (0, 2))), r"transcript"),
    "EM negative transcript id": Bad(em_classes(((0,), (-1, 1))), r"transcript"),
    "EM negative class count": Bad(em_classes(counts=(3.0, -1.0)), r"counts"),
    "EM NaN class count": Bad(em_classes(counts=(3.0, np.nan)), r"counts"),
    "EM counts for other classes": Bad(em_classes(counts=(3.0, 1.0, 2.0)), r"counts"),
    "EM zero effective length": Bad(em_lengths([100.0, 0.0]), r"length"),
    "EM NaN effective length": Bad(em_lengths([100.0, np.nan]), r"length"),
    "EM effective lengths of other transcripts": Bad(em_lengths([100.0]), r"length"),
    # sequences
    "N where N is not allowed": Bad(
        lambda: zoo.NucleotideTokenizer(allow_n=False)(["ACGN"]), r"\bN\b"
    ),
    "a letter outside the alphabet": Bad(lambda: zoo.NucleotideTokenizer()(["ACGX"]), r"X"),
    "RNA letter in DNA one-hot": Bad(lambda: zoo.one_hot(["ACGU"]), r"U"),
    "k-mer of 0": Bad(lambda: zoo.NucleotideTokenizer(kmer=0), r"kmer"),
    "repeated alphabet letter": Bad(lambda: zoo.NucleotideTokenizer(alphabet="AACG"), r"alphabet"),
    "token id past the vocabulary": Bad(
        lambda: eqx.nn.inference_mode(encoder())(jnp.array([1, 2, 99])), r"vocab|token"
    ),
    "float mask": Bad(lambda: encoder()(jnp.array([1, 2, 3]), jnp.ones(3)), r"mask"),
    # expression
    "tokenizer fit on negative counts": Bad(
        lambda: tokenizer().fit(-np.ones((3, 6))), r"counts|negative"
    ),
    "tokenizer fit on NaN": Bad(lambda: tokenizer().fit(np.full((3, 6), np.nan)), r"counts|NaN"),
    "tokenizer fit on fractions": Bad(lambda: tokenizer().fit(np.full((3, 6), 0.5)), r"integer"),
    "tokenizer fit on other genes": Bad(lambda: tokenizer().fit(np.ones((3, 5))), r"genes|6"),
    "unfitted tokenizer": Bad(lambda: tokenizer()(jnp.ones(6)), r"fitted|median"),
    "foundation model NaN counts": Bad(
        lambda: foundation()(jnp.array([1.0, np.nan, 0, 0, 2, 1])), r"counts"
    ),
    # UMAP, PHATE, VAE
    "UMAP NaN features": Bad(umap_fit(np.where(POINTS > 2, np.nan, POINTS)), r"NaN|finite"),
    "UMAP no cells": Bad(umap_fit(np.zeros((0, 3))), r"cells|empty"),
    "UMAP more neighbours than cells": Bad(umap_fit(POINTS[:10], n_neighbors=15), r"n_neighbors"),
    "PHATE graph of other cells": Bad(phate_on_other_cells(), r"graph"),
    "PHATE NaN features": Bad(phate_graph(np.where(POINTS > 2, np.nan, POINTS)), r"NaN|finite"),
    "PHATE knn not below the cells": Bad(phate_graph(POINTS[:3]), r"knn"),
    "VAE negative counts": Bad(vae_train(-CELLS), r"counts"),
    "VAE zero-count cell": Bad(vae_train(np.vstack([CELLS, np.zeros((1, 4))])), r"counts|zero"),
    "VAE batch index out of range": Bad(vae_train(CELLS, np.full(10, 2)), r"batch"),
    # meshes and configs
    "mesh that does not divide the devices": Bad(lambda: parse_mesh("data=3", 8), r"data"),
    "unknown mesh axis": Bad(lambda: parse_mesh("foo=2", 8), r"foo"),
    "zero-sized mesh axis": Bad(lambda: parse_mesh("data=0", 8), r"data"),
    "two axes of -1": Bad(lambda: parse_mesh("data=-1,fsdp=-1", 8), r"-1"),
    "heads that do not divide the width": Bad(
        lambda: zoo.TransformerConfig(dim=64, n_heads=5), r"n_heads"
    ),
    "a string where an int belongs": Bad(
        lambda: zoo.TransformerConfig.from_dict({"dim": "64"}), r"dim"
    ),
    "a boolean where an int belongs": Bad(
        lambda: zoo.TransformerConfig.from_dict({"n_layers": True}), r"n_layers"
    ),
}


def test_the_table_covers_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_a_clear_error(case):
    with pytest.raises(Exception, match=case.message) as caught:
        result = case.call()
        # a lazily checked result must not slip through as NaN either
        for leaf in jax.tree.leaves(eqx.filter(result, eqx.is_array)):
            jax.block_until_ready(leaf)
    assert not isinstance(caught.value, (IndexError, ZeroDivisionError, AssertionError))
