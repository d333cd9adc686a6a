"""Minimising UMAP's cross-entropy by Adam on minibatches of graph edges with negative sampling
(McInnes, Healy & Melville, 2018, arXiv:1802.03426, section 3.2; Sainburg, McInnes & Gentner,
2021, Neural Computation 33(11), for the parametric form).

Each step draws ``batch_size`` edges ``(i, j)`` of the fuzzy graph with probability
proportional to their weight ``w_ij`` (as umap-learn samples edges in proportion to their
weight over an epoch; first a block of 256 edges by its total weight, then an edge within
it, so that float32 cumulative sums stay exact enough for millions of edges) and a pool of
``batch_size`` cells uniformly at random; each edge repels
``m`` members of the pool. The loss is

    mean_edges [ -log q(y_i, y_j) - sum_m log(1 - q(y_i, y_k)) ],   q = 1 / (1 + a s^b),

with ``s = |y_i - y_j|^2 + 1e-3`` (the offset umap-learn puts in its repulsive gradient, which
keeps the loss finite when two points meet). Only the sampled edges and cells are touched, so
memory is linear in the number of edges. The embedding ``y`` of cells is any differentiable
``lookup(params, x, cells)``: an encoder of the features, or free coordinates.

Edge and cell arrays are padded to a power of two (padding edges have weight 0 and are never
drawn), so datasets of similar size share one compiled step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from zoo.umap.graph import UMAPGraph

DISTANCE_OFFSET = 1e-3
STEPS_PER_CALL = 50
EDGE_BLOCK = 256
ADAM = optax.scale_by_adam()

Lookup = Callable[[PyTree, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What one step draws: ``batch_size`` edges, each repelling ``negatives`` pool cells."""

    batch_size: int
    negatives: int


def umap_cross_entropy(
    heads: Float[Array, "batch dim"],
    tails: Float[Array, "batch dim"],
    negatives: Float[Array, "batch m dim"],
    a: float,
    b: float,
) -> Float[Array, ""]:
    """Mean over edges of ``-log q(head, tail) - sum_m log(1 - q(head, negative_m))``, with
    ``q = 1 / (1 + a s^b)`` and ``s`` the squared distance plus ``1e-3``."""

    def powered(u, v):
        return a * (jnp.sum((u - v) ** 2, axis=-1) + DISTANCE_OFFSET) ** b

    attraction = jnp.log1p(powered(heads, tails))
    pushed = powered(heads[:, None, :], negatives)
    repulsion = jnp.sum(jnp.log1p(pushed) - jnp.log(pushed), axis=1)
    return jnp.mean(attraction + repulsion)


def padded_size(n: int) -> int:
    """The power of two at or above `n`: the padded length of cell and edge arrays."""
    return 1 << max(0, int(n) - 1).bit_length()


def pad_rows(array: np.ndarray | Array, rows: int) -> Array:
    """`array` with zero rows appended up to `rows` rows."""
    array = jnp.asarray(array)
    return jnp.pad(array, [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1))


def minimise_umap_loss(
    params: PyTree,
    lookup: Lookup,
    x: Float[Array, "padded_cells features"],
    graph: UMAPGraph,
    *,
    curve: tuple[float, float],
    sampling: Sampling,
    n_steps: int,
    learning_rate: float,
    key: PRNGKeyArray,
    description: str = "UMAP",
    progress: bool = True,
) -> PyTree:
    """Adam on the loss of the module docstring, its step size decaying linearly from
    `learning_rate` to 0 over `n_steps`; returns the optimised `params`.

    Args:
        params: the differentiable parameters (inexact arrays are trained, the rest kept).
        lookup: ``lookup(params, x, cells)`` is the embedding of the cells with those indices.
        x: per-cell inputs of `lookup`, padded to ``padded_size(graph.n_points)`` rows.
        graph: the fuzzy graph whose edges are sampled.
        curve: ``(a, b)`` of the similarity ``q``.
    """
    opt_state = ADAM.init(eqx.filter(params, eqx.is_inexact_array))
    edges, cumulative = _edge_table(graph)
    constants = jnp.asarray([learning_rate, n_steps, graph.n_points], dtype=jnp.float32)
    with tqdm(total=n_steps, desc=description, disable=not progress, leave=False) as bar:
        for start in range(0, n_steps, STEPS_PER_CALL):
            key, chunk_key = jax.random.split(key)
            steps = (
                start + jnp.arange(STEPS_PER_CALL),
                jax.random.split(chunk_key, STEPS_PER_CALL),
            )
            params, opt_state, loss = _steps(
                params, opt_state, lookup, x, edges, cumulative, curve, sampling, constants, steps
            )
            bar.update(min(STEPS_PER_CALL, n_steps - start))
            bar.set_postfix(loss=float(loss))
    return params


@eqx.filter_jit
def _steps(params, opt_state, lookup, x, edges, cumulative, curve, sampling, constants, steps):
    """Adam steps over the ``(step index, key)`` pairs `steps` in one compiled loop (steps
    past ``n_steps`` have step size 0); returns params, optimiser state and the last loss."""
    trainable, static = eqx.partition(params, eqx.is_inexact_array)
    learning_rate, n_steps, n_points = constants
    n = sampling.batch_size

    def loss_fn(trainable, batch):
        heads, tails, pool, choice = batch
        cells = jnp.concatenate([heads, tails, pool])
        y = lookup(eqx.combine(trainable, static), x, cells)
        return umap_cross_entropy(y[:n], y[n : 2 * n], y[2 * n :][choice], *curve)

    def step(carry, step_and_key):
        trainable, opt_state = carry
        index, key = step_and_key
        batch = _draw(key, edges, cumulative, n_points.astype(jnp.int32), sampling)
        loss, grads = jax.value_and_grad(loss_fn)(trainable, batch)
        updates, opt_state = ADAM.update(grads, opt_state)
        size = learning_rate * jnp.maximum(0.0, 1.0 - index / n_steps)
        updates = jax.tree.map(lambda u: -size * u, updates)
        return (eqx.apply_updates(trainable, updates), opt_state), loss

    (trainable, opt_state), losses = jax.lax.scan(step, (trainable, opt_state), steps)
    return eqx.combine(trainable, static), opt_state, losses[-1]


def _edge_table(graph: UMAPGraph):
    """Edges padded to a power of two (at least one block), and the float32 cumulative
    weights of the blocks and of the edges within each block, for `_draw`."""
    n_edges = max(EDGE_BLOCK, padded_size(len(graph.weights)))
    edges = (pad_rows(graph.heads, n_edges), pad_rows(graph.tails, n_edges))
    weights = np.zeros(n_edges)
    weights[: len(graph.weights)] = graph.weights
    within = np.cumsum(weights.reshape(-1, EDGE_BLOCK), axis=1)
    blocks = np.cumsum(within[:, -1])
    return edges, (jnp.asarray(blocks, jnp.float32), jnp.asarray(within, jnp.float32))


def _draw(
    key: PRNGKeyArray,
    edges: tuple[Int[Array, " edges"], Int[Array, " edges"]],
    cumulative: tuple[Float[Array, " blocks"], Float[Array, "blocks block"]],
    n_points: Int[Array, ""],
    sampling: Sampling,
):
    """Edges drawn with probability proportional to weight, a uniform pool of cells, and
    which pool members each edge repels."""
    block_key, edge_key, pool_key, choice_key = jax.random.split(key, 4)
    n = sampling.batch_size
    blocks, within = cumulative
    u = jax.random.uniform(block_key, (n,), maxval=blocks[-1])
    block = jnp.minimum(jnp.searchsorted(blocks, u, side="right"), blocks.shape[0] - 1)
    rows = within[block]
    v = jax.random.uniform(edge_key, (n,)) * rows[:, -1]
    position = jax.vmap(lambda row, t: jnp.searchsorted(row, t, side="right"))(rows, v)
    picked = block * EDGE_BLOCK + jnp.minimum(position, EDGE_BLOCK - 1)
    pool = jax.random.randint(pool_key, (n,), 0, n_points)
    choice = jax.random.randint(choice_key, (n, sampling.negatives), 0, n)
    return edges[0][picked], edges[1][picked], pool, choice
