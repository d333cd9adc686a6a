"""Continued pretraining of Geneformer-style (``head="gene_logits"``) models: the masked
gene-id objective equals torch's cross-entropy over a ``transformers.BertForMaskedLM``'s
logits on pbmc3k cells, and ``pretrain expression --init`` (its `build_task` and the
compiled train step) trains such a model.

The tiny BERT (2 layers, 32 wide, 64 positions, ReLU, weights perturbed away from BERT's
initialisation) is imported as Geneformer V2 with dictionaries of synthetic Ensembl IDs for
pbmc3k's 2,000 genes (as in ``tests/test_checkpoints/test_geneformer_import.py``). The torch
reference masks the same gene tokens (their ids replaced by ``<mask>``) and takes the
cross-entropy against the ids the cell's tokens had before masking, with ``-100`` labels
everywhere else.
"""

from __future__ import annotations

import anndata as ad
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from upstream_models import GENEFORMER_SPECIALS, tiny_bert, write_geneformer_dictionaries

import zoo
from checkpoints.geneformer_import import import_geneformer, read_token_dictionary
from pretraining.initial_model import init_digest
from pretraining.mesh import make_mesh
from pretraining.objectives import gene_id_targets, masked_gene_id_sums
from pretraining.optimizer import OptimizerConfig
from pretraining.run_config import RunConfig
from pretraining.steps import CompiledSteps
from pretraining.tasks import build_task
from zoo.common.transformer import TransformerConfig
from zoo.expression.foundation_model import (
    DifferentiableFoundationModel,
    DifferentiableFoundationModelConfig,
)
from zoo.expression.gene_tokenizer import GeneTokenizerConfig
from zoo.expression.gene_vocabulary import GENES_FILE, GeneVocabulary

DATA = "/work/shared/data/pbmc3k_2000hvg_counts.h5ad"
N_CELLS = 6
VERSION = "V2"  # <cls> and <eos> framing: neither may be a target


@pytest.fixture(scope="module")
def geneformer(tmp_path_factory):
    """``(zoo model, torch reference, the model's genes, pbmc3k counts in pbmc3k's column
    order, each column's synthetic Ensembl ID, scratch folder)``."""
    data = ad.read_h5ad(DATA)
    rng = np.random.default_rng(0)
    ensembl = [f"ENSG{i:011d}" for i in rng.permutation(data.n_vars) + 100]
    counts = np.asarray(data.X[:64].toarray(), np.float32)
    folder = tmp_path_factory.mktemp("geneformer")
    dictionaries = write_geneformer_dictionaries(folder / "repo", ensembl, VERSION)
    reference = tiny_bert(len(GENEFORMER_SPECIALS[VERSION]) + len(ensembl), 0, "relu")
    torch.manual_seed(1)
    with torch.no_grad():  # weights far from BERT's 0.02 init, so the logits are not flat
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    reference.save_pretrained(folder / "model", safe_serialization=True)
    model = import_geneformer(
        folder / "model",
        token_dictionary=dictionaries.token_dictionary,
        gene_medians=dictionaries.gene_medians,
        version=VERSION,
    )
    genes = read_token_dictionary(dictionaries.token_dictionary).genes
    return model, reference, genes, counts, ensembl, folder


def aligned(counts, ensembl, genes):
    """The count columns in the model's gene order."""
    column = {g: j for j, g in enumerate(ensembl)}
    return counts[:, [column[g] for g in genes]]


def test_loss_equals_torch_cross_entropy(geneformer):
    model, reference, genes, counts, ensembl, _ = geneformer
    model = eqx.nn.inference_mode(model)  # no dropout, as the reference in eval mode
    cells = jnp.asarray(aligned(counts, ensembl, genes)[:N_CELLS])
    keys = jax.random.split(jax.random.key(3), N_CELLS)
    sums = eqx.filter_jit(masked_gene_id_sums)(model, cells, keys)

    config = model.config.tokenizer
    # the same masks, from the model run on the same keys; the original ids from the
    # tokenizer, the masked ids by hand
    framed = jax.vmap(lambda c: model.tokenizer.frame(model.tokenizer(c)))(cells)
    masked = np.asarray(
        eqx.filter_jit(jax.vmap(lambda c, k: model(c, key=k).expression_mask))(cells, keys)
    )
    ids, real = np.asarray(framed.ids), np.asarray(framed.mask)
    n_real_genes = real.sum(1) - 2  # <cls> and <eos>
    # the ratio of real gene tokens, at least one
    np.testing.assert_array_equal(masked.sum(1), np.maximum(1, np.round(0.15 * n_real_genes)))
    assert (ids[masked] >= config.first_gene_id).all()  # never <pad>, <cls>, <eos>
    assert masked.sum(1).max() <= gene_id_targets(model)
    inputs = np.where(masked, config.mask_id, ids)
    labels = np.where(masked, ids, -100)
    with torch.no_grad():
        logits = reference(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(real, dtype=torch.long),
        ).logits
    flat = logits.reshape(-1, logits.shape[-1])
    targets = torch.tensor(labels, dtype=torch.long).reshape(-1)
    expected = torch.nn.CrossEntropyLoss(reduction="sum")(flat, targets).item()
    correct = (flat.argmax(-1) == targets)[targets != -100].sum().item()

    assert float(sums["count"]) == masked.sum()
    np.testing.assert_allclose(float(sums["loss_sum"]), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        float(sums["loss_sum"]) / float(sums["count"]),
        torch.nn.CrossEntropyLoss()(flat, targets).item(),
        atol=1e-4,
    )
    assert float(sums["correct"]) == correct
    # the targets are the original ids, not the <mask> the model saw
    mask_targets = torch.tensor(np.where(masked, inputs, -100), dtype=torch.long).reshape(-1)
    wrong = torch.nn.CrossEntropyLoss(reduction="sum")(flat, mask_targets).item()
    assert abs(wrong - expected) > 1.0


def test_an_expression_model_is_refused():
    config = DifferentiableFoundationModelConfig(
        tokenizer=GeneTokenizerConfig(n_genes=8, max_tokens=4),
        transformer=TransformerConfig(dim=8, n_layers=1, n_heads=2, mlp_dim=16),
    )
    model = eqx.filter_eval_shape(DifferentiableFoundationModel, config, key=jax.random.key(0))
    with pytest.raises(ValueError, match="'gene_logits' head"):
        masked_gene_id_sums(model, jnp.ones((2, 8)), jax.random.split(jax.random.key(0), 2))


def test_continued_pretraining_steps_lower_the_loss(geneformer):
    model, _, genes, counts, ensembl, scratch = geneformer
    folder = scratch / "checkpoint"
    zoo.save_pretrained(model, folder)
    GeneVocabulary.from_names(genes).write(folder / GENES_FILE)
    cells = scratch / "cells.h5ad"
    ad.AnnData(X=counts, var={"gene_ids": ensembl}).write_h5ad(cells)  # in pbmc3k's order
    optimizer = OptimizerConfig(learning_rate=3e-3, warmup_steps=0)
    run = RunConfig(
        task="expression", data=(str(cells),), preset="", init=str(folder), init_digest=init_digest(
            str(folder)), batch_size=4, steps=5, optimizer=optimizer,
    )  # fmt: skip
    task = build_task(run)  # `pretrain expression --init` no longer refuses it
    assert task.objective is masked_gene_id_sums
    assert task.model.config == model.config
    steps = CompiledSteps(
        task.model, task.objective, optimizer, run.steps,
        make_mesh("data=1", jax.devices()[:1]), seed=0, batch_size=run.batch_size,
    )  # fmt: skip
    params, opt_state = steps.place(task.model)
    fixed = steps.batch(task.make_batch, 0)

    def loss(params):
        sums = jax.device_get(steps.eval_step(params, fixed, np.int32(0)))
        return float(sums["loss_sum"]) / float(sums["count"])

    before = loss(params)
    for step in range(run.steps):
        params, opt_state, metrics = steps.train_step(
            params, opt_state, steps.batch(task.make_batch, step), np.int32(step)
        )
        assert np.isfinite(float(metrics["loss_sum"])) and float(metrics["count"]) > 0
    assert np.isfinite(before) and loss(params) < before - 0.1
