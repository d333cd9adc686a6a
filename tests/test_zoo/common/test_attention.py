"""`zoo.common.attention.attention` and its hand-written backward pass against PyTorch's
`scaled_dot_product_attention` (forward and autograd gradients), with padded keys, in one
query block and in several (the last one padded)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zoo.common.attention import QUERY_BLOCK, attention


@pytest.mark.parametrize("query_block", [QUERY_BLOCK, 8])  # one block; 5 blocks of 8 for 37
def test_attention_matches_torch_forward_and_gradients(query_block):
    rng = np.random.default_rng(0)
    heads, seq_len, head_dim = 4, 37, 16
    q, k, v, d_out = (
        rng.standard_normal((heads, seq_len, head_dim)).astype(np.float32) for _ in range(4)
    )
    q *= 3.0  # peaked weights: the max subtraction matters
    mask = np.ones(seq_len, bool)
    mask[-9:] = False  # padding

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, jnp.asarray(mask), query_block) * d_out)

    ours = jax.jit(attention, static_argnums=4)(q, k, v, mask, query_block)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    theirs = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=torch.tensor(mask)[None, None, :], scale=1.0
    )
    theirs.backward(torch.tensor(d_out))

    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name, ours_grad, their_grad in zip("qkv", grads, (tq.grad, tk.grad, tv.grad), strict=True):
        np.testing.assert_allclose(
            ours_grad, their_grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"d{name}"
        )
    # masked keys get no weight, hence no key or value gradient
    assert np.all(np.asarray(grads[1])[:, ~mask] == 0)
    assert np.all(np.asarray(grads[2])[:, ~mask] == 0)


def test_attention_batches_under_vmap_and_bfloat16():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 2, 8, 4)), jnp.float32) for _ in range(3))
    mask = jnp.ones((3, 8), bool)
    batched = jax.vmap(attention)(q, k, v, mask)
    one_by_one = np.stack([attention(q[i], k[i], v[i], mask[i]) for i in range(3)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-6)
    low = jax.vmap(attention)(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), batched, atol=0.05)


def test_attention_with_every_key_masked_is_uniform_and_finite():
    """A sequence of padding only: every query weighs all keys equally, in each block, the
    value gradient is that of the uniform average, and no gradient is NaN or infinite."""
    rng = np.random.default_rng(2)
    q, k, v, d_out = (jnp.asarray(rng.standard_normal((2, 11, 4)), jnp.float32) for _ in range(4))
    mask = jnp.zeros(11, bool)
    out, pullback = jax.vjp(lambda q, k, v: attention(q, k, v, mask, 4), q, k, v)
    np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(1, keepdims=True), v.shape), atol=1e-6)
    d_q, d_k, d_v = pullback(d_out)
    assert np.all(np.isfinite(d_q)) and np.all(np.isfinite(d_k))
    np.testing.assert_allclose(
        d_v, jnp.broadcast_to(d_out.mean(1, keepdims=True), v.shape), atol=1e-6
    )
