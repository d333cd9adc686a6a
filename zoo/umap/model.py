"""`DifferentiableUMAP`: parametric UMAP (Sainburg, McInnes & Gentner, 2021, "Parametric UMAP
Embeddings for Representation and Semisupervised Learning", Neural Computation 33(11)) on
UMAP's fuzzy graph (McInnes, Healy & Melville, 2018, arXiv:1802.03426).

An MLP ``f`` maps a cell's features ``x`` to ``y = f((x - mean) / scale)`` in
``n_components`` dimensions, ``scale`` being the root mean squared distance of the training
cells to their mean (one number, stored per feature). `DifferentiableUMAP.fit`:

1. finds the ``n_neighbors`` nearest neighbours of every cell (`zoo.common.knn`: exact, or
   approximate by pynndescent above ``zoo.common.knn.APPROXIMATE_ABOVE`` cells, as umap-learn
   switches for large data) and builds the symmetric fuzzy graph with weights ``w_ij``
   (`zoo.umap.graph`);
2. trains ``f`` on UMAP's cross-entropy with negative sampling, by Adam on minibatches of
   edges drawn in proportion to ``w_ij`` (`zoo.umap.training`), with the similarity
   ``q(d) = 1 / (1 + a d^(2b))`` whose ``a, b`` are fitted to ``min_dist`` and ``spread``.
   Memory is linear in the number of edges: the N x N similarity matrix never exists;
3. unless ``free_coordinate_steps = 0``, refines the training cells' coordinates as free
   parameters, starting from ``f(x)``, on the same loss, as non-parametric UMAP optimises
   them. The MLP has less freedom than free coordinates; this step brings the training
   embedding to umap-learn's local quality while new cells are still embedded by ``f``.

The saved model is the encoder with its input centring; ``a, b`` are derived from the
config. `DifferentiableUMAP.transform` embeds new cells with the encoder alone, and
``jax.vmap(model)`` is differentiable with respect to the features.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from zoo.common.config import Config, require, require_positive
from zoo.common.features import is_anndata, read_features
from zoo.common.knn import knn
from zoo.common.shapes import check_shape
from zoo.umap.graph import UMAPGraph, curve_parameters, fuzzy_graph
from zoo.umap.training import Sampling, minimise_umap_loss, pad_rows, padded_size


@dataclasses.dataclass(frozen=True)
class DifferentiableUMAPConfig(Config):
    """Architecture and fitting schedule of a `DifferentiableUMAP`.

    Attributes:
        n_features: input features per cell (e.g. 50 principal components).
        n_components: embedding dimensions.
        width: hidden units per encoder layer.
        depth: hidden layers of the encoder.
        n_neighbors: neighbours per cell in the graph, counting the cell itself (as
            umap-learn's ``n_neighbors``).
        min_dist: embedding distance below which neighbours are fully similar.
        spread: scale of the decay of similarity beyond ``min_dist``.
        local_connectivity: nearest neighbours each cell is fully connected to.
        set_op_mix_ratio: 1 for the fuzzy union of the directed graphs, 0 for their
            intersection, in between for a mix.
        negative_sample_rate: repelled cells per sampled edge.
        n_steps: Adam steps for the encoder.
        batch_size: edges per step.
        learning_rate: Adam's initial step size (decays linearly to 0).
        free_coordinate_steps: Adam steps refining the training cells' coordinates after
            the encoder is trained (0: the fitted embedding is the encoder's output).
        free_coordinate_learning_rate: initial step size of that refinement.
        free_coordinate_batch_size: edges per refinement step.
    """

    n_features: int = 50
    n_components: int = 2
    width: int = 64
    depth: int = 3
    n_neighbors: int = 15
    min_dist: float = 0.1
    spread: float = 1.0
    local_connectivity: float = 1.0
    set_op_mix_ratio: float = 1.0
    negative_sample_rate: int = 5
    n_steps: int = 500
    batch_size: int = 512
    learning_rate: float = 1e-2
    free_coordinate_steps: int = 500
    free_coordinate_learning_rate: float = 0.1
    free_coordinate_batch_size: int = 4096

    def validate(self) -> None:
        require_positive(
            n_features=self.n_features,
            n_components=self.n_components,
            width=self.width,
            depth=self.depth,
            spread=self.spread,
            local_connectivity=self.local_connectivity,
            negative_sample_rate=self.negative_sample_rate,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            free_coordinate_learning_rate=self.free_coordinate_learning_rate,
            free_coordinate_batch_size=self.free_coordinate_batch_size,
        )
        require(self.n_neighbors >= 2, f"n_neighbors must be at least 2, got {self.n_neighbors}")
        require(
            0.0 <= self.min_dist <= self.spread,
            f"min_dist must be in [0, spread={self.spread}], got {self.min_dist}",
        )
        require(
            0.0 <= self.set_op_mix_ratio <= 1.0,
            f"set_op_mix_ratio must be in [0, 1], got {self.set_op_mix_ratio}",
        )
        require(
            self.free_coordinate_steps >= 0,
            f"free_coordinate_steps must be >= 0, got {self.free_coordinate_steps}",
        )


class DifferentiableUMAP(eqx.Module):
    """Parametric UMAP: an MLP from features to the embedding (see the module docstring)."""

    encoder: eqx.nn.MLP
    feature_mean: Float[Array, " n_features"]
    feature_scale: Float[Array, " n_features"]
    config: DifferentiableUMAPConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiableUMAPConfig, *, key: PRNGKeyArray):
        self.encoder = eqx.nn.MLP(
            config.n_features,
            config.n_components,
            config.width,
            config.depth,
            activation=jax.nn.relu,
            key=key,
        )
        self.feature_mean = jnp.zeros(config.n_features)
        self.feature_scale = jnp.ones(config.n_features)
        self.config = config

    @property
    def curve(self) -> tuple[float, float]:
        """``(a, b)`` of the embedding similarity ``1 / (1 + a d^(2b))``."""
        return curve_parameters(float(self.config.min_dist), float(self.config.spread))

    def __call__(self, features: Float[Array, " n_features"]) -> Float[Array, " n_components"]:
        """The embedding of one cell."""
        check_shape("features", features, (self.config.n_features,), "(n_features,) for one cell")
        return self.encoder((features - self.feature_mean) / self.feature_scale)

    def fit(
        self,
        data,
        *,
        key: PRNGKeyArray,
        layer: str | None = None,
        use_rep: str | None = None,
        key_added: str = "X_umap",
        progress: bool = True,
        knn_method: str = "auto",
    ) -> tuple[DifferentiableUMAP, np.ndarray]:
        """Fit the encoder to `data` and embed its cells (steps 1-3 of the module docstring).

        Args:
            data: an AnnData (features from ``X``, ``layers[layer]`` or ``obsm[use_rep]``) or a
                (cells, n_features) array. For an AnnData the embedding is also written to
                ``adata.obsm[key_added]``.
            key: randomness of the minibatches, the negative samples and, if used, the
                approximate neighbour search.
            progress: show a progress bar.
            knn_method: ``"auto"``, ``"exact"`` or ``"approximate"`` neighbour search (see
                `zoo.common.knn.knn`).

        Returns:
            ``(fitted model, embedding of shape (cells, n_components))``; the embedding is
            the encoder's output, refined as free coordinates if ``free_coordinate_steps``.

        Raises:
            ValueError: for NaN features, a wrong feature count, fewer cells than
                ``n_neighbors``, or an unknown `knn_method`.
        """
        x = self._features(data, layer, use_rep)
        if x.shape[0] < self.config.n_neighbors:
            raise ValueError(
                f"n_neighbors={self.config.n_neighbors} is larger than the number of cells "
                f"({x.shape[0]})"
            )
        graph = self.graph(x, knn_method=knn_method, seed=_search_seed(key))
        encoder_key, free_key = jax.random.split(key)
        model = self._centred_on(x)._train_encoder(x, graph, key=encoder_key, progress=progress)
        embedding = model.embed(x)
        if self.config.free_coordinate_steps:
            embedding = model._refine(embedding, graph, key=free_key, progress=progress)
        embedding = np.asarray(embedding)
        if is_anndata(data):
            data.obsm[key_added] = embedding
        return model, embedding

    def _centred_on(self, x: np.ndarray) -> DifferentiableUMAP:
        """A copy whose input centring is the mean and RMS distance to the mean of `x`."""
        mean = x.mean(axis=0)
        scale = float(np.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)))) or 1.0
        return eqx.tree_at(
            lambda m: (m.feature_mean, m.feature_scale),
            self,
            (jnp.asarray(mean), jnp.full(x.shape[1], scale, dtype=jnp.float32)),
        )

    def _train_encoder(
        self, x: np.ndarray, graph: UMAPGraph, *, key: PRNGKeyArray, progress: bool
    ) -> DifferentiableUMAP:
        """Step 2 of the module docstring."""
        return minimise_umap_loss(
            self,
            _encode,
            pad_rows(x, padded_size(x.shape[0])),
            graph,
            curve=self.curve,
            sampling=Sampling(self.config.batch_size, self.config.negative_sample_rate),
            n_steps=self.config.n_steps,
            learning_rate=self.config.learning_rate,
            key=key,
            description="parametric UMAP",
            progress=progress,
        )

    def _refine(
        self, embedding: Array, graph: UMAPGraph, *, key: PRNGKeyArray, progress: bool
    ) -> Array:
        """Step 3 of the module docstring: free coordinates starting from `embedding`."""
        rows = padded_size(embedding.shape[0])
        refined = minimise_umap_loss(
            pad_rows(embedding, rows),
            _coordinates,
            jnp.zeros((rows, 0)),
            graph,
            curve=self.curve,
            sampling=Sampling(
                self.config.free_coordinate_batch_size, self.config.negative_sample_rate
            ),
            n_steps=self.config.free_coordinate_steps,
            learning_rate=self.config.free_coordinate_learning_rate,
            key=key,
            description="free coordinates",
            progress=progress,
        )
        return refined[: embedding.shape[0]]

    def graph(
        self,
        x: Float[np.ndarray, "cells n_features"],
        *,
        knn_method: str = "auto",
        seed: int = 0,
    ) -> UMAPGraph:
        """UMAP's fuzzy graph of the rows of `x` on their nearest neighbours, found by
        `zoo.common.knn.knn` with `knn_method` (``"auto"``, ``"exact"`` or ``"approximate"``)
        and, for the approximate search, `seed`."""
        distances, indices = knn(
            x, self.config.n_neighbors, include_self=True, method=knn_method, seed=seed
        )
        return fuzzy_graph(
            indices,
            distances,
            local_connectivity=float(self.config.local_connectivity),
            set_op_mix_ratio=float(self.config.set_op_mix_ratio),
        )

    def embed(self, x: Float[np.ndarray, "cells n_features"]) -> Float[Array, "cells n_components"]:
        """The encoder's embedding of every row of `x` (no checks; see `transform`)."""
        return _embed_all(self, jnp.asarray(x))

    def transform(
        self,
        data,
        *,
        layer: str | None = None,
        use_rep: str | None = None,
        key_added: str = "X_umap",
    ) -> np.ndarray:
        """Embed new cells with the fitted encoder; for an AnnData also write
        ``adata.obsm[key_added]``. Raises ValueError for NaN or a wrong feature count."""
        embedding = np.asarray(self.embed(self._features(data, layer, use_rep)))
        if is_anndata(data):
            data.obsm[key_added] = embedding
        return embedding

    def _features(self, data, layer, use_rep) -> np.ndarray:
        x = read_features(data, layer=layer, use_rep=use_rep)
        if x.shape[1] != self.config.n_features:
            raise ValueError(
                f"the model takes {self.config.n_features} features, the data has {x.shape[1]}"
            )
        return x


def _search_seed(key: PRNGKeyArray) -> int:
    """An integer seed for the approximate neighbour search, derived from `key` by
    ``fold_in`` so the keys that `fit` splits for training are unchanged."""
    return int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 2**31 - 1))


def _encode(model: DifferentiableUMAP, x: Array, cells: Array) -> Array:
    return jax.vmap(model)(x[cells])


def _coordinates(coordinates: Array, x: Array, cells: Array) -> Array:
    return coordinates[cells]


@eqx.filter_jit
def _embed_all(model: DifferentiableUMAP, x: Array) -> Array:
    return jax.vmap(model)(x)
