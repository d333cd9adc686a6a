"""`zoo.common.transformer.dropout`: the hash-based dropout of the transformer blocks keeps the
semantics of `eqx.nn.Dropout` (checked against it: same keep rate and scaling, identity in
inference mode, a key required in training)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.common.transformer import dropout


def test_keep_rate_scaling_and_determinism():
    layer = eqx.nn.Dropout(0.1)
    x = jnp.ones((512, 256))
    ours = np.asarray(dropout(layer, x, jax.random.key(3)))
    reference = np.asarray(layer(x, key=jax.random.key(3)))
    kept, kept_reference = np.mean(ours != 0), np.mean(reference != 0)
    # 131,072 Bernoulli(0.9) draws: standard error 0.0008
    assert abs(kept - 0.9) < 0.004 and abs(kept_reference - 0.9) < 0.004
    assert np.allclose(ours[ours != 0], 1 / 0.9) and np.allclose(reference[reference != 0], 1 / 0.9)
    np.testing.assert_array_equal(ours, dropout(layer, x, jax.random.key(3)))
    other = np.asarray(dropout(layer, x, jax.random.key(4)))
    assert 0.15 < np.mean((other != 0) != (ours != 0)) < 0.21  # independent: 2 * 0.9 * 0.1
    rows, columns = (ours != 0).mean(1), (ours != 0).mean(0)
    assert rows.std() < 0.03 and columns.std() < 0.04  # no striping along either axis


def test_inference_mode_and_missing_key():
    layer = eqx.nn.Dropout(0.5)
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(dropout(eqx.nn.inference_mode(layer), x, None), x)
    np.testing.assert_array_equal(dropout(eqx.nn.Dropout(0.0), x, None), x)
    with pytest.raises(RuntimeError, match="needs a key"):
        dropout(layer, x, None)
    grad = jax.grad(lambda v: dropout(layer, v, jax.random.key(0)).sum())(x)
    assert set(np.unique(np.asarray(grad))) <= {0.0, 2.0}
