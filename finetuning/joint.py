"""A joint model trained end to end by gradient: foundation-model cell embeddings feed a
parametric UMAP, whose 2-D coordinates feed a linear cell-type classifier.

1. Embed the training cells with the (pretrained or fresh) `DifferentiableFoundationModel`
   and fit a `DifferentiableUMAP` to those embeddings.
2. Measure the 2-D embedding: k-nearest-neighbour (k=15) cell-type accuracy of held-out
   cells against the training cells' coordinates.
3. Train foundation model + UMAP encoder + classifier together on class-weighted
   cross-entropy; the gradient runs from the classifier through the UMAP encoder into the
   transformer.
4. Measure the 2-D embedding again.

The UMAP encoder's feature standardisation and the tokenizer's gene medians are fitted
statistics and stay fixed; everything else a cell passes through is trained.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, Real
from tqdm import tqdm

from finetuning.tasks import Task
from finetuning.train import class_weights
from zoo.common.knn import knn_query
from zoo.expression.foundation_model import DifferentiableFoundationModel
from zoo.umap.model import DifferentiableUMAP, DifferentiableUMAPConfig


class CellMap(eqx.Module):
    """Foundation model -> parametric UMAP -> linear classifier, for one cell."""

    backbone: DifferentiableFoundationModel
    umap: DifferentiableUMAP
    classifier: eqx.nn.Linear

    def coordinates(
        self, counts: Real[Array, " n_genes"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " 2"]:
        """The cell's UMAP coordinates (no expression masking)."""
        no_mask = jnp.zeros(self.backbone.config.tokenizer.max_tokens, bool)
        embedding = self.backbone(counts, key=key, expression_mask=no_mask).cell_embedding
        return self.umap(embedding)

    def __call__(
        self, counts: Real[Array, " n_genes"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " classes"]:
        """Cell-type logits of one cell."""
        return self.classifier(self.coordinates(counts, key=key))


@dataclasses.dataclass
class JointResult:
    """Before/after figures of the joint training and the trained model."""

    model: CellMap
    knn_accuracy_before: float
    knn_accuracy_after: float
    backbone_gradient_norm: float
    steps: int


def held_out_knn_accuracy(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    k: int = 15,
) -> float:
    """Accuracy of a majority vote of the `k` nearest training points."""
    _, neighbours = knn_query(test, train, k)
    votes = train_labels[np.asarray(neighbours)]
    predicted = np.array([np.bincount(v, minlength=train_labels.max() + 1).argmax() for v in votes])
    return float((predicted == test_labels).mean())


def embed_cells(function, cells: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Apply a per-cell function to every row of `cells`, in jitted batches."""
    batched = eqx.filter_jit(jax.vmap(function))
    return np.concatenate(
        [
            np.asarray(batched(jnp.asarray(cells[i : i + batch_size])))
            for i in range(0, len(cells), batch_size)
        ]
    )


def train_cell_map(
    backbone: DifferentiableFoundationModel,
    task: Task,
    *,
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    umap_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
) -> JointResult:
    """Fit the UMAP, measure, train everything jointly, measure again (module docstring)."""
    key = jax.random.key(seed)
    umap_key, head_key = jax.random.split(key)
    backbone = eqx.nn.inference_mode(backbone)  # dropout off: the maps are compared as functions
    train_cells, test_cells = task.train.inputs, task.test.inputs
    no_mask = jnp.zeros(backbone.config.tokenizer.max_tokens, bool)
    features = embed_cells(
        lambda c: backbone(c, expression_mask=no_mask).cell_embedding, train_cells
    )
    umap_config = DifferentiableUMAPConfig(n_features=features.shape[1], n_steps=umap_steps)
    umap, _ = DifferentiableUMAP(umap_config, key=umap_key).fit(
        features, key=umap_key, progress=progress
    )
    model = CellMap(backbone, umap, eqx.nn.Linear(2, len(task.classes), key=head_key))

    def measure(m: CellMap) -> float:
        return held_out_knn_accuracy(
            embed_cells(m.coordinates, train_cells),
            task.train.labels,
            embed_cells(m.coordinates, test_cells),
            task.test.labels,
        )

    before = measure(model)
    spec = jax.tree.map(eqx.is_array, model)
    fixed = lambda m: (m.umap.feature_mean, m.umap.feature_scale, m.backbone.tokenizer.gene_medians)  # noqa: E731
    spec = eqx.tree_at(fixed, spec, (False, False, False))
    params, static = eqx.partition(model, spec)
    optimizer = optax.adamw(learning_rate)
    opt_state = optimizer.init(params)
    weights = jnp.asarray(class_weights(task.train.labels, len(task.classes), True))

    def loss_fn(params, cells, labels):
        logits = jax.vmap(eqx.combine(params, static))(cells)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (losses * weights[labels]).sum() / weights[labels].sum()

    @eqx.filter_jit
    def step(params, opt_state, cells, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, cells, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        backbone_norm = optax.global_norm(grads.backbone)
        return optax.apply_updates(params, updates), opt_state, loss, backbone_norm

    rng = np.random.default_rng(seed)
    first_norm = None
    for _ in tqdm(range(steps), desc="joint FM + UMAP training", disable=not progress):
        rows = rng.choice(len(train_cells), batch_size, replace=False)
        params, opt_state, _, norm = step(
            params, opt_state, jnp.asarray(train_cells[rows]), jnp.asarray(task.train.labels[rows])
        )
        first_norm = float(norm) if first_norm is None else first_norm
    trained = eqx.combine(params, static)
    return JointResult(trained, before, measure(trained), first_norm or 0.0, steps)
