"""Multi-head scaled dot-product attention (Vaswani et al., 2017) with a hand-written
backward pass.

For one sequence, with queries already scaled by ``1 / sqrt(head_dim)``::

    S = Q K^T + b          b = 0 at real keys, -1e30 at masked ones
    E = exp(S - max_k S)   l = sum_k E           O = (E V) / l

The backward pass is the one of FlashAttention (Dao et al., 2022), from the saved
unnormalised weights ``E`` and ``l``, with ``P = E / l`` and ``D = rowsum(dO * O)``
(which equals ``rowsum(dP * P)``)::

    dV = P^T dO = E^T (dO / l)      dP = dO V^T      dS = P * (dP - D)
    dQ = dS K                       dK = dS^T Q

Written this way, rather than differentiated through `jax.nn.softmax`, no normalised
``P`` and no broadcast of ``1 / l`` is ever stored, the softmax derivative is one pass
over the scores, and every large product has the ``[M, K] x [K, N]`` layout that XLA's
CPU matmul library runs fastest (the two transposed products are formed as ``dV^T`` and
``dK^T`` from small transposes, kept apart from the product by an optimisation barrier so
the compiler does not fold them back in). Scores and softmax are computed in float32
whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

MASKED = -1e30  # added to the scores of masked keys (finite, so an all-masked row is uniform)


def _scores(q, k, mask):
    scores = jnp.einsum("hqd,hkd->hqk", q, k, preferred_element_type=jnp.float32)
    return scores + jnp.where(mask, 0.0, MASKED).astype(jnp.float32)


def _forward(q, k, v, mask):
    scores = _scores(q, k, mask)
    weights = jnp.exp(scores - scores.max(-1, keepdims=True))
    total = weights.sum(-1)
    mixed = jnp.einsum(
        "hqk,hkd->hqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    out = (mixed / total[..., None]).astype(v.dtype)
    return out, (q, k, v, weights, total, out)


def _backward(saved, d_out):
    q, k, v, weights, total, out = saved
    barrier = jax.lax.optimization_barrier
    d_out32 = d_out.astype(jnp.float32)
    d_out_scaled = (d_out32 / total[..., None]).astype(v.dtype)
    d_value_t = barrier(
        jnp.einsum("hdq,hqk->hdk", barrier(d_out_scaled.swapaxes(1, 2)), weights.astype(v.dtype))
    )
    row_dot = jnp.sum(d_out32 * out.astype(jnp.float32), -1)
    d_weights = jnp.einsum("hqd,hkd->hqk", d_out, v, preferred_element_type=jnp.float32)
    d_scores = (weights * (d_weights - row_dot[..., None]) / total[..., None]).astype(q.dtype)
    d_query = jnp.einsum("hqk,hkd->hqd", d_scores, k)
    d_key_t = barrier(jnp.einsum("hdq,hqk->hdk", barrier(q.swapaxes(1, 2)), d_scores))
    return d_query, d_key_t.swapaxes(1, 2), d_value_t.swapaxes(1, 2), None


@jax.custom_vjp
def attention(
    q: Float[Array, "heads seq_len head_dim"],
    k: Float[Array, "heads seq_len head_dim"],
    v: Float[Array, "heads seq_len head_dim"],
    mask: Bool[Array, " seq_len"],
) -> Float[Array, "heads seq_len head_dim"]:
    """Softmax attention of one sequence (see the module docstring); `q` must already be
    scaled, and keys where `mask` is False get no weight."""
    return _forward(q, k, v, mask)[0]


attention.defvjp(_forward, _backward)
