"""The joint foundation-model + UMAP + classifier model trains end to end on real cells."""

import dataclasses

import equinox as eqx
import jax
import numpy as np

import zoo
from finetuning.joint import held_out_knn_accuracy, train_cell_map
from finetuning.tasks import cell_types


def test_gradient_reaches_the_backbone_and_the_map_is_measured():
    task = cell_types("pbmc68k")
    task = dataclasses.replace(task, train=task.train.take(300))
    config = zoo.DifferentiableFoundationModelConfig(
        tokenizer=zoo.GeneTokenizerConfig(n_genes=765, max_tokens=64),
        transformer=zoo.TransformerConfig(dim=32, n_layers=2, n_heads=4, mlp_dim=64),
    )
    backbone = zoo.DifferentiableFoundationModel(config, key=jax.random.key(0))
    backbone = backbone.with_tokenizer(backbone.tokenizer.fit(task.train.inputs))
    result = train_cell_map(backbone, task, steps=20, umap_steps=50, progress=False)
    assert result.backbone_gradient_norm > 0
    before = eqx.filter(eqx.nn.inference_mode(backbone).stack, eqx.is_array)
    after = eqx.filter(result.model.backbone.stack, eqx.is_array)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    np.testing.assert_array_equal(
        result.model.backbone.tokenizer.gene_medians, backbone.tokenizer.gene_medians
    )
    chance = np.bincount(task.test.labels).max() / len(task.test.labels)
    assert 0 <= result.knn_accuracy_before <= 1 and result.knn_accuracy_after > chance * 0.5


def test_knn_accuracy_counts_majority_votes():
    train = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    labels = np.array([0, 0, 1, 1])
    test = np.array([[0.05, 0.0], [5.05, 5.0]])
    assert held_out_knn_accuracy(train, labels, test, np.array([0, 1]), k=2) == 1.0
    assert held_out_knn_accuracy(train, labels, test, np.array([1, 0]), k=2) == 0.0
