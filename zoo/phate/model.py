"""`DifferentiablePHATE`: Potential of Heat-diffusion for Affinity-based Trajectory
Embedding (Moon et al., 2019, "Visualizing structure and transitions in high-dimensional
biological data", Nature Biotechnology 37:1482), in JAX.

For features ``X`` (cells by features):

1. ``n_pca`` principal component scores of ``X`` (`zoo.common.pca`), when ``X`` is wider;
2. the symmetric alpha-decay kernel ``K`` on the ``knn``-nearest-neighbour bandwidths
   (`zoo.phate.alpha_decay`), and the diffusion operator ``P = D^-1 K`` (row-normalised), or,
   above ``n_landmark`` cells, the landmark operator (`zoo.phate.landmarks`);
3. the diffusion time ``t``: given, or the knee of the von Neumann entropy of ``P``
   (`zoo.phate.von_neumann`);
4. ``P^t`` by repeated squaring, and the potential ``U = -log(P^t + 1e-7)``
   (``gamma = 1``), ``U = (P^t)^c / c`` with ``c = (1 - gamma) / 2``, or ``U = P^t``
   (``gamma = -1``);
5. Euclidean distances between the rows of ``U``, embedded by classical MDS, refined by
   metric MDS (SMACOF) when ``mds="metric"`` (`zoo.phate.mds`); landmark coordinates are carried
   back to every cell through the point-to-landmark transitions.

Discrete decisions, made once on concrete data by `DifferentiablePHATE.graph`, are kept in
a `PHATEGraph`: which pairs of cells can have a non-zero affinity, which neighbour sets each
bandwidth, the landmark clusters and ``t``. Given a graph, the call
``phate(features, graph)`` is a pure JAX function of the features, differentiable end to
end, so PHATE can sit inside a model trained by gradient. The graph records the features it
was built on (`zoo.phate.fingerprint`), and the call refuses a graph of other cells.

PHATE has no learned parameters: a checkpoint is its config (``config.json``) with an
empty weights file, which is what `zoo.save_pretrained` writes.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from zoo.common.config import Config, require, require_choice, require_positive
from zoo.common.features import is_anndata, select_features
from zoo.common.pca import pca_scores
from zoo.phate.alpha_decay import KernelPattern, dense_kernel, kernel_pattern, kernel_values
from zoo.phate.fingerprint import feature_fingerprint, same_features
from zoo.phate.landmarks import interpolate, landmark_operator, spectral_landmarks
from zoo.phate.mds import classical_mds, pairwise_distances, smacof
from zoo.phate.von_neumann import optimal_t

AFFINITY_THRESHOLD = 1e-4  # kernel entries below it are zero (phate's setting)
POTENTIAL_OFFSET = 1e-7  # keeps log(P^t) finite (phate's setting)


@dataclasses.dataclass(frozen=True)
class DifferentiablePHATEConfig(Config):
    """Settings of `DifferentiablePHATE`; the defaults are the phate package's.

    Attributes:
        n_components: embedding dimensions.
        knn: the neighbour (self not counted) whose distance is each cell's bandwidth.
        decay: the kernel's exponent ``alpha``.
        t: the diffusion time; None chooses it at the von Neumann entropy knee.
        t_max: the largest time considered when choosing ``t``.
        gamma: the potential's transform, in [-1, 1]: 1 is the log potential, 0 the
            square root, -1 the diffusion probabilities themselves.
        n_pca: principal components the kernel is built on; None uses the features as
            given (as does any value not below both dimensions of the features).
        n_landmark: above this many cells, diffuse between this many landmarks; None
            never uses landmarks.
        mds: ``"classic"`` (classical MDS) or ``"metric"`` (classical, then SMACOF).
        mds_steps: SMACOF steps when ``mds="metric"``.
    """

    n_components: int = 2
    knn: int = 5
    decay: float = 40.0
    t: int | None = None
    t_max: int = 100
    gamma: float = 1.0
    n_pca: int | None = 100
    n_landmark: int | None = 2000
    mds: str = "metric"
    mds_steps: int = 100

    def validate(self) -> None:
        require_positive(
            n_components=self.n_components, knn=self.knn, decay=self.decay, mds_steps=self.mds_steps
        )
        require(self.t is None or self.t >= 1, f"t must be None or at least 1, got {self.t}")
        require(self.t_max >= 3, f"t_max must be at least 3, got {self.t_max}")
        require(-1.0 <= self.gamma <= 1.0, f"gamma must be in [-1, 1], got {self.gamma}")
        require(
            not 0.99 < self.gamma < 1.0,
            f"gamma={self.gamma} is numerically unstable; use 1 for the log potential",
        )
        require(
            self.n_pca is None or self.n_pca >= 1, f"n_pca must be None or >= 1, got {self.n_pca}"
        )
        require(
            self.n_landmark is None or self.n_landmark >= 2,
            f"n_landmark must be None or at least 2, got {self.n_landmark}",
        )
        require_choice("mds", self.mds, ("classic", "metric"))


class PHATEGraph(eqx.Module):
    """The discrete decisions of one PHATE run (see the module docstring).

    Attributes:
        pattern: where the kernel may be non-zero, and each cell's bandwidth neighbour.
        clusters: each cell's landmark, or None without landmarks.
        n_landmarks: the number of landmarks, or None.
        t: the diffusion time.
        shape: ``(n_cells, n_features)`` of the features the graph was built on.
        fingerprint: `zoo.phate.fingerprint.feature_fingerprint` of those features.
    """

    pattern: KernelPattern
    clusters: Int[Array, " n_cells"] | None
    n_landmarks: int | None = eqx.field(static=True)
    t: int = eqx.field(static=True)
    shape: tuple[int, int] = eqx.field(static=True)
    fingerprint: Float[Array | np.ndarray, " sketch"]

    def check_features(self, features: Float[Array | np.ndarray, "n_cells n_features"]) -> None:
        """Raise a ValueError naming `graph` unless `features` are those the graph was built
        on: same shape (checked also under jit), and, when the features and the graph are
        concrete (outside jit and grad), the same fingerprint."""
        if tuple(features.shape) != self.shape:
            raise ValueError(
                f"graph was built on {self.shape[0]} cells x {self.shape[1]} features, got "
                f"{features.shape[0]} x {features.shape[1]}; build it on these features "
                "with DifferentiablePHATE.graph"
            )
        if isinstance(features, jax.core.Tracer) or isinstance(self.fingerprint, jax.core.Tracer):
            return
        values = np.asarray(features)
        if not np.all(np.isfinite(values)):
            raise ValueError("features contain NaN or infinite values")
        if not same_features(feature_fingerprint(values), np.asarray(self.fingerprint)):
            raise ValueError(
                "graph was built on other features (other cells, or another order); build it "
                "on these features with DifferentiablePHATE.graph"
            )


class DifferentiablePHATE(eqx.Module):
    """PHATE as a differentiable operator (see the module docstring)."""

    config: DifferentiablePHATEConfig = eqx.field(static=True)

    def __init__(self, config: DifferentiablePHATEConfig, *, key: PRNGKeyArray | None = None):
        """`key` is unused (PHATE has no parameters); it is accepted so every architecture
        builds the same way. Randomness enters through `graph` and `fit_transform`."""
        del key
        self.config = config

    def graph(
        self, features: Float[Array | np.ndarray, "n_cells n_features"], *, key: PRNGKeyArray
    ) -> PHATEGraph:
        """Make the discrete decisions of PHATE on concrete `features` (eager, not
        differentiable).

        Raises:
            ValueError: for features that are not a 2-D real matrix with at least one
                column, NaN/inf features, or ``knn`` not below the number of cells.
        """
        return self._fit(features, key)[0]

    def __call__(
        self, features: Float[Array, "n_cells n_features"], graph: PHATEGraph
    ) -> Float[Array, "n_cells n_components"]:
        """The PHATE embedding of all cells of `features` (one data set is one example),
        differentiable with respect to `features`.

        Args:
            features: ``(n_cells, n_features)``, finite.
            graph: from `graph` on these features (`PHATEGraph.check_features`).

        Raises:
            ValueError: naming `graph` when it was built on other features, or for
                NaN/inf features outside jit.
        """
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (cells x features), got {features.shape}")
        graph.check_features(features)
        points = _points(self.config, features)
        values, operator = _operator(self.config, points, graph)
        return _embed(self.config, values, operator, graph)

    def fit_transform(
        self,
        data,
        *,
        key: PRNGKeyArray,
        layer: str | None = None,
        use_rep: str | None = None,
        key_added: str = "X_phate",
    ) -> np.ndarray:
        """Embed a data set: `graph`, then the embedding, without computing anything twice.

        Args:
            data: a cells x features array (dense or scipy sparse), or an AnnData whose
                ``X`` (default), ``layers[layer]`` or ``obsm[use_rep]`` holds the
                features (normalised and transformed as you want them compared).
            key: randomness of the landmark clustering.
            layer, use_rep: where an AnnData's features are; at most one.
            key_added: the ``obsm`` key the embedding is written to for an AnnData, which
                also receives ``uns["phate"] = {"t": t}``.

        Returns:
            The ``(n_cells, n_components)`` embedding as a NumPy array.
        """
        features = select_features(data, layer=layer, use_rep=use_rep)
        graph, values, operator = self._fit(features, key)
        embedding = np.asarray(_embed_jit(self.config, values, operator, graph))
        if is_anndata(data):
            data.obsm[key_added] = embedding
            data.uns["phate"] = {"t": graph.t}
        return embedding

    def _fit(self, features, key) -> tuple[PHATEGraph, Array, Array]:
        config = self.config
        features = _check_features(features, config.knn)
        points = _points_jit(config, features)
        pattern = kernel_pattern(points, config.knn, float(config.decay), AFFINITY_THRESHOLD)
        clusters = n_landmarks = None
        if config.n_landmark is not None and features.shape[0] > config.n_landmark:
            values = _values_jit(points, pattern, float(config.decay), AFFINITY_THRESHOLD)
            clusters = spectral_landmarks(values, pattern, config.n_landmark, key=key)
            clusters, n_landmarks = jnp.asarray(clusters), int(clusters.max()) + 1
        shape, fingerprint = tuple(features.shape), feature_fingerprint(features)
        draft = PHATEGraph(pattern, clusters, n_landmarks, 1, shape, fingerprint)
        values, operator = _operator_jit(config, points, draft)
        t = config.t or optimal_t(np.asarray(operator), config.t_max)
        graph = PHATEGraph(pattern, clusters, n_landmarks, t, shape, fingerprint)
        return graph, values, operator


def _points(config: DifferentiablePHATEConfig, features) -> Float[Array, "n_cells dim"]:
    """The principal component scores of the features, or the features themselves when
    ``n_pca`` is None or not below both of their dimensions (as phate decides)."""
    if config.n_pca is None or config.n_pca >= min(features.shape):
        return features
    return pca_scores(features, config.n_pca)


def _operator(config: DifferentiablePHATEConfig, points, graph: PHATEGraph):
    """Kernel values and the diffusion operator (the landmark one when there are
    landmarks)."""
    values = kernel_values(points, graph.pattern, float(config.decay), AFFINITY_THRESHOLD)
    if graph.clusters is None:
        kernel = dense_kernel(values, graph.pattern)
        return values, kernel / kernel.sum(axis=1, keepdims=True)
    return values, landmark_operator(values, graph.pattern, graph.clusters, graph.n_landmarks)


def _embed(
    config: DifferentiablePHATEConfig, values, operator, graph: PHATEGraph
) -> Float[Array, "n_cells n_components"]:
    """Potential, its row distances, MDS, and interpolation back from the landmarks."""
    potential = diffusion_potential(operator, graph.t, float(config.gamma))
    distances = pairwise_distances(potential)
    coordinates = classical_mds(distances, config.n_components)
    if config.mds == "metric":
        coordinates = smacof(distances, coordinates, config.mds_steps)
    if graph.clusters is None:
        return coordinates
    return interpolate(values, graph.pattern, graph.clusters, coordinates)


_points_jit = eqx.filter_jit(_points)
_operator_jit = eqx.filter_jit(_operator)
_embed_jit = eqx.filter_jit(_embed)
_values_jit = jax.jit(kernel_values, static_argnames=("decay", "threshold"))


def diffusion_potential(operator: Float[Array, "n n"], t: int, gamma: float) -> Float[Array, "n n"]:
    """The potential of ``P^t`` (module docstring, step 4); ``P^t`` by repeated squaring."""
    powered = jnp.linalg.matrix_power(operator, t)
    if gamma == 1.0:
        return -jnp.log(powered + POTENTIAL_OFFSET)
    if gamma == -1.0:
        return powered
    exponent = (1.0 - gamma) / 2.0
    tiny = jnp.finfo(powered.dtype).tiny
    return jnp.exp(exponent * jnp.log(jnp.maximum(powered, tiny))) / exponent


def _check_features(features, knn: int) -> Float[Array, "n_cells n_features"]:
    """Dense float32 features, with a clear error for the problems PHATE cannot handle."""
    if hasattr(features, "toarray"):
        features = features.toarray()
    features = np.asarray(features)
    if features.dtype.kind not in "biuf":
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    features = features.astype(np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (cells x features), got shape {features.shape}")
    if features.shape[1] == 0:
        raise ValueError("features must have at least one column")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values")
    n_cells = features.shape[0]
    if knn >= n_cells:
        raise ValueError(f"knn={knn} needs more than {knn} cells, but there are {n_cells}")
    return jnp.asarray(features)
