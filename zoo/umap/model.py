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
3. returns ``f(x)`` of the training cells: by default the fitted embedding and
   `DifferentiableUMAP.transform` are one map, as in parametric UMAP.

Optionally (``free_coordinate_steps > 0``) step 3 instead refines the training cells'
coordinates as free parameters, starting from ``f(x)``, on the same loss, as non-parametric
UMAP optimises them. Free coordinates have more freedom than the MLP, but the refined
embedding is then no longer ``f``: new cells, and gradients, still go through ``f``. `fit`
reports how far the refined coordinates drifted from ``f(x)`` (`DifferentiableUMAP.drift`),
as a `UMAPDriftWarning` and, for an AnnData, in ``adata.uns[key_added + "_drift"]``.

The saved model is the encoder with its input centring; ``a, b`` are derived from the
config. `DifferentiableUMAP.transform` embeds new cells with the encoder alone, and
``jax.vmap(model)`` is differentiable with respect to the features.
"""

from __future__ import annotations

import dataclasses
import warnings

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
        free_coordinate_steps: Adam steps refining the training cells' coordinates as free
            parameters after the encoder is trained. 0 (the default): the fitted embedding
            is the encoder's output, the same map as `DifferentiableUMAP.transform`; above
            0, `fit` reports the refined coordinates' drift from it (`UMAPDriftWarning`).
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
    n_steps: int = 2000
    batch_size: int = 512
    learning_rate: float = 1e-2
    free_coordinate_steps: int = 0
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


class UMAPDriftWarning(UserWarning):
    """`DifferentiableUMAP.fit` refined free coordinates (``free_coordinate_steps > 0``), so
    its embedding of the training cells is not the encoder's map that `transform` applies.

    Attributes:
        mean: mean distance of a refined cell from its encoder embedding, relative to the
            encoder embedding's spread (see `DifferentiableUMAP.drift`).
        max: the largest such distance, on the same scale.
    """

    def __init__(self, mean: float, max: float):
        self.mean = mean
        self.max = max
        super().__init__(
            f"the refined UMAP coordinates drift from the encoder's map (used by transform) "
            f"by {mean:.3g} on average and {max:.3g} at most, relative to the embedding's "
            f"spread; free_coordinate_steps=0 keeps fit and transform one map"
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
            the fitted model's encoder output, equal to ``transform(data)``, or, if
            ``free_coordinate_steps > 0``, that output refined as free coordinates. A
            refinement warns `UMAPDriftWarning` with its `drift` and, for an AnnData, writes
            the drift to ``adata.uns[key_added + "_drift"]`` (``{"mean": .., "max": ..}``);
            an unrefined fit removes that entry.

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
        embedding = np.asarray(model.embed(x))
        drift = None
        if self.config.free_coordinate_steps:
            refined = model._refine(jnp.asarray(embedding), graph, key=free_key, progress=progress)
            embedding = np.asarray(refined)
            drift = model.drift(x, embedding)
            warnings.warn(UMAPDriftWarning(**drift), stacklevel=2)
        if is_anndata(data):
            data.obsm[key_added] = embedding
            data.uns.pop(f"{key_added}_drift", None)
            if drift is not None:
                data.uns[f"{key_added}_drift"] = drift
        return model, embedding

    def drift(
        self,
        x: Float[np.ndarray, "cells n_features"],
        embedding: Float[np.ndarray, "cells n_components"],
    ) -> dict[str, float]:
        """How far `embedding` of the cells `x` is from the encoder's map ``y = f(x)``.

        With ``d_i = ||embedding_i - y_i||`` and the spread
        ``s = sqrt(mean_i ||y_i - mean(y)||^2)`` (the root mean squared distance of the
        encoder embedding to its centroid), returns ``{"mean": mean_i d_i / s,
        "max": max_i d_i / s}``: 0 when `embedding` is the encoder's map.
        """
        x = self._features(x, None, None)
        check_shape(
            "embedding", embedding, (x.shape[0], self.config.n_components),
            "(cells, n_components) for the cells of x",
        )  # fmt: skip
        encoded = np.asarray(self.embed(x), dtype=np.float64)
        distances = np.linalg.norm(np.asarray(embedding, dtype=np.float64) - encoded, axis=1)
        spread = float(np.sqrt(np.mean(np.sum((encoded - encoded.mean(axis=0)) ** 2, axis=1))))
        spread = spread or 1.0
        return {"mean": float(distances.mean() / spread), "max": float(distances.max() / spread)}

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
