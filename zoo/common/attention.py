"""Multi-head scaled dot-product attention (Vaswani et al., 2017), computed a block of
queries at a time, with a hand-written backward pass.

For one sequence, with queries already scaled by ``1 / sqrt(head_dim)``::

    S = Q K^T + b          b = 0 at real keys, -1e30 at masked ones
    m = max_k S            l = sum_k exp(S - m)       P = exp(S - m) / l       O = P V

As in FlashAttention (Dao et al., 2022), the weights ``P`` are never stored: the forward
pass keeps only the row statistics ``m`` and ``l``, and the backward pass recomputes ``P``
from them, one block of `QUERY_BLOCK` query rows at a time, and applies, with
``D = rowsum(dO * O)`` (which equals ``rowsum(dP * P)``)::

    dV = sum over blocks of P^T dO      dP = dO V^T      dS = P * (dP - D)
    dQ = dS K                           dK = sum over blocks of dS^T Q

This costs one more ``Q K^T`` product, and saves storing ``P`` for every layer of a stack
until the backward pass: in the BERT-small benchmark (`benchmarks.pretrain`), 16 sequences
x 4 heads x 512 x 512 floats per layer, which the layer scan would zero-fill, write, and
read back, all in freshly mapped memory. The forward pass takes the queries in the same
blocks, so only one block's scores exist at a time.

Every large product has the ``[M, K] x [K, N]`` layout that XLA's CPU matmul library runs
fastest (``dV^T`` and ``dK^T`` are accumulated, from small transposes kept apart from the
product by an optimisation barrier so the compiler does not fold them back in). Scores and
softmax statistics are float32 whatever the input dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

MASKED = -1e30  # added to the scores of masked keys (finite, so an all-masked row is uniform)
# Query rows per block. On the 2-core CPU benchmark (sequence 512), 256 gave the fastest
# training step of 128, 256 and 512.
QUERY_BLOCK = 256


def _blocks(x: Array, n_blocks: int) -> Array:
    """``[heads, seq, ...]`` -> ``[n_blocks, heads, seq / n_blocks, ...]``."""
    heads, seq_len = x.shape[:2]
    return x.reshape(heads, n_blocks, seq_len // n_blocks, *x.shape[2:]).swapaxes(0, 1)


def _unblocks(x: Array) -> Array:
    """The inverse of `_blocks`."""
    n_blocks, heads, block = x.shape[:3]
    return x.swapaxes(0, 1).reshape(heads, n_blocks * block, *x.shape[3:])


def _padded_blocks(seq_len: int, query_block: int) -> tuple[int, int]:
    """The number of query blocks and the query length padded to a multiple of it."""
    n_blocks = max(1, math.ceil(seq_len / query_block))
    return n_blocks, n_blocks * math.ceil(seq_len / n_blocks)


def _pad_queries(x: Array, padded: int) -> Array:
    return jnp.pad(x, [(0, 0), (0, padded - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _scores(q, k, mask):
    scores = jnp.einsum("hqd,hkd->hqk", q, k, preferred_element_type=jnp.float32)
    return scores + jnp.where(mask, 0.0, MASKED).astype(jnp.float32)


def _forward(q, k, v, mask, query_block):
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    seq_len = q.shape[1]
    n_blocks, padded = _padded_blocks(seq_len, query_block)

    def block(q_block):
        scores = _scores(q_block, k, mask)
        peak = scores.max(-1)
        weights = jnp.exp(scores - peak[..., None])
        total = weights.sum(-1)
        mixed = jnp.einsum(
            "hqk,hkd->hqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        return (mixed / total[..., None]).astype(v.dtype), peak, total

    out, peak, total = (
        _unblocks(x)[:, :seq_len]
        for x in jax.lax.map(block, _blocks(_pad_queries(q, padded), n_blocks))
    )
    return out, (q, k, v, mask, out, peak, total)


def _backward(query_block, saved, d_out):
    q, k, v, mask, out, peak, total = saved
    seq_len, head_dim = q.shape[1:]
    n_blocks, padded = _padded_blocks(seq_len, query_block)
    barrier = jax.lax.optimization_barrier
    d_out32 = d_out.astype(jnp.float32)
    row_dot = jnp.sum(d_out32 * out.astype(jnp.float32), -1)
    # padded query rows get d_out = 0, so they add nothing to dK and dV
    inverse_total = 1.0 / total

    def block(carry, inputs):
        d_key_t, d_value_t = carry
        q_block, d_out_block, peak_block, inverse_total_block, row_dot_block = inputs
        weights = jnp.exp(_scores(q_block, k, mask) - peak_block[..., None])
        weights = weights * inverse_total_block[..., None]
        d_value_t = d_value_t + barrier(
            jnp.einsum(
                "hdq,hqk->hdk",
                barrier(d_out_block.swapaxes(1, 2)),
                weights.astype(v.dtype),
                preferred_element_type=jnp.float32,
            )
        )
        d_weights = jnp.einsum("hqd,hkd->hqk", d_out_block, v, preferred_element_type=jnp.float32)
        d_scores = (weights * (d_weights - row_dot_block[..., None])).astype(q.dtype)
        d_query = jnp.einsum("hqk,hkd->hqd", d_scores, k, preferred_element_type=jnp.float32)
        d_key_t = d_key_t + barrier(
            jnp.einsum(
                "hdq,hqk->hdk",
                barrier(q_block.swapaxes(1, 2)),
                d_scores,
                preferred_element_type=jnp.float32,
            )
        )
        return (d_key_t, d_value_t), d_query.astype(q.dtype)

    zeros = jnp.zeros((q.shape[0], head_dim, k.shape[1]), jnp.float32)
    inputs = tuple(
        _blocks(_pad_queries(x, padded), n_blocks) for x in (q, d_out, peak, inverse_total, row_dot)
    )
    (d_key_t, d_value_t), d_query = jax.lax.scan(block, (zeros, zeros), inputs)
    return (
        _unblocks(d_query)[:, :seq_len],
        d_key_t.swapaxes(1, 2).astype(k.dtype),
        d_value_t.swapaxes(1, 2).astype(v.dtype),
        None,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(
    q: Float[Array, "heads seq_len head_dim"],
    k: Float[Array, "heads seq_len head_dim"],
    v: Float[Array, "heads seq_len head_dim"],
    mask: Bool[Array, " seq_len"],
    query_block: int = QUERY_BLOCK,
) -> Float[Array, "heads seq_len head_dim"]:
    """Softmax attention of one sequence (see the module docstring); `q` must already be
    scaled, and keys where `mask` is False get no weight. `query_block` is the number of
    query rows whose scores are computed at once; it changes speed and memory, not the
    result."""
    return _forward(q, k, v, mask, query_block)[0]


attention.defvjp(_forward, _backward)
