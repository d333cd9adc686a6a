"""The transformer block shared by `TransformerSequenceEncoder` and
`DifferentiableFoundationModel`, and the scanned stack of such blocks.

A block is multi-head self-attention followed by a position-wise MLP, each wrapped in a
residual connection with dropout (Vaswani et al., 2017). With ``norm="pre"`` the layer norm
is applied to each branch's input (Xiong et al., 2020); with ``norm="post"`` it is applied
after each residual sum, as in BERT (Devlin et al., 2019). Options for imported
architectures: rotary position embeddings on the queries and keys (`zoo.common.rotary`, as
ESM-2 and Nucleotide Transformer v2), a SwiGLU feed-forward (Shazeer, 2020; NT v2) and MLP
layers without biases.

The stack builds ``n_layers`` identical blocks with `eqx.filter_vmap`, so every parameter
has a leading layer axis, and runs them with `jax.lax.scan`: compile time does not grow with
depth.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from zoo.common.attention import attention
from zoo.common.config import Config, require, require_choice, require_positive, require_probability
from zoo.common.rotary import rotate

# Each is rematerialised in the backward pass (`jax.checkpoint`): only its input is kept,
# instead of the several intermediates of the erf or tanh derivative per hidden unit.
ACTIVATIONS = {
    "gelu": jax.checkpoint(lambda x: jax.nn.gelu(x, approximate=False)),
    "gelu_tanh": jax.checkpoint(lambda x: jax.nn.gelu(x, approximate=True)),
    "relu": jax.nn.relu,
}
FEED_FORWARDS = ("dense", "swiglu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig(Config):
    """Shape and regularisation of a transformer stack.

    Attributes:
        dim: width of the residual stream.
        n_layers: number of blocks.
        n_heads: attention heads; must divide ``dim``.
        mlp_dim: hidden width of each block's MLP.
        dropout: probability of dropping a unit on each residual branch and on the input
            embeddings while training.
        norm: ``"pre"`` (layer norm before each branch, a final norm after the stack) or
            ``"post"`` (BERT: layer norm after each residual sum and after the embeddings).
        activation: the nonlinearity of the dense MLP (and of a masked-LM head built on
            the stack): ``"gelu"`` (exact, erf-based, as BERT), ``"gelu_tanh"`` or ``"relu"``.
        layer_norm_eps: epsilon of every layer norm.
        rotary: whether queries and keys are rotated by their positions
            (`zoo.common.rotary`) after the query is scaled by ``1 / sqrt(head_dim)``.
        feed_forward: ``"dense"`` (``W2 act(W1 x)``) or ``"swiglu"`` (``W1`` maps to
            ``2 * mlp_dim`` units, split into halves ``a, b``; ``W2 (silu(a) * b)``).
        mlp_bias: whether the two MLP layers have biases.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.1
    norm: str = "pre"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    rotary: bool = False
    feed_forward: str = "dense"
    mlp_bias: bool = True

    def validate(self) -> None:
        require_positive(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            mlp_dim=self.mlp_dim,
            layer_norm_eps=self.layer_norm_eps,
        )
        require(
            self.dim % self.n_heads == 0,
            f"n_heads ({self.n_heads}) must divide dim ({self.dim})",
        )
        require_probability(dropout=self.dropout)
        require_choice("norm", self.norm, ("pre", "post"))
        require_choice("activation", self.activation, tuple(ACTIVATIONS))
        require_choice("feed_forward", self.feed_forward, FEED_FORWARDS)
        require(
            not self.rotary or (self.dim // self.n_heads) % 2 == 0,
            f"rotary embeddings need an even head dimension, got {self.dim // self.n_heads}",
        )


def dense(layer: eqx.Module, x: Float[Array, "n d_in"]) -> Float[Array, "n d_out"]:
    """Apply a linear layer (anything with ``weight`` and ``bias``, such as
    `eqx.nn.Linear` or `zoo.common.lora.LoRALinear`) to every row of `x`."""
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def _lowbias32(h: Array) -> Array:
    """A 32-bit integer hash with good avalanche (C. Wellons's "lowbias32" finaliser)."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def dropout(layer: eqx.nn.Dropout, x: Array, key: PRNGKeyArray | None) -> Array:
    """`layer` (an `eqx.nn.Dropout`) applied to `x`, with a cheaper random stream.

    Same semantics as calling `layer`: the identity in inference mode or at ``p = 0``;
    otherwise a key is required, each element is kept with probability ``1 - p`` and the
    kept ones are scaled by ``1 / (1 - p)``. The keep decisions come from a counter-based
    hash of (the key's two data words, the element's index) instead of threefry
    bernoulli draws: about 20x faster on CPU, and deterministic given the key.
    """
    if layer.inference or (isinstance(layer.p, int | float) and layer.p == 0):
        return x
    if key is None:
        raise RuntimeError("dropout needs a key while training (or use eqx.nn.inference_mode)")
    words = jax.random.key_data(key).ravel().astype(jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    bits = _lowbias32(_lowbias32(counter ^ words[0]) + words[1])
    keep_probability = 1.0 - jax.lax.stop_gradient(layer.p)
    threshold = jnp.uint32(min(int(layer.p * 2**32), 2**32 - 1))
    return jnp.where(bits >= threshold, x / keep_probability, 0)


def normalise(norm: eqx.nn.LayerNorm, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
    """Apply a layer norm to every row of `x`."""
    return jax.vmap(norm)(x)


class TransformerBlock(eqx.Module):
    """One residual self-attention + MLP block (see the module docstring)."""

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    attention_output: eqx.nn.Linear
    attention_norm: eqx.nn.LayerNorm
    mlp_input: eqx.nn.Linear
    mlp_output: eqx.nn.Linear
    mlp_norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    n_heads: int = eqx.field(static=True)
    norm: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    rotary: bool = eqx.field(static=True)
    feed_forward: str = eqx.field(static=True)

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        q, k, v, o, m1, m2 = jax.random.split(key, 6)
        dim = config.dim
        self.query = eqx.nn.Linear(dim, dim, key=q)
        self.key = eqx.nn.Linear(dim, dim, key=k)
        self.value = eqx.nn.Linear(dim, dim, key=v)
        self.attention_output = eqx.nn.Linear(dim, dim, key=o)
        self.attention_norm = eqx.nn.LayerNorm(dim, eps=config.layer_norm_eps)
        gates = 2 if config.feed_forward == "swiglu" else 1
        self.mlp_input = eqx.nn.Linear(
            dim, gates * config.mlp_dim, use_bias=config.mlp_bias, key=m1
        )
        self.mlp_output = eqx.nn.Linear(config.mlp_dim, dim, use_bias=config.mlp_bias, key=m2)
        self.mlp_norm = eqx.nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.dropout = eqx.nn.Dropout(config.dropout)
        self.n_heads = config.n_heads
        self.norm = config.norm
        self.activation = config.activation
        self.rotary = config.rotary
        self.feed_forward = config.feed_forward

    def attention(
        self, x: Float[Array, "seq_len dim"], mask: Bool[Array, " seq_len"]
    ) -> Float[Array, "seq_len dim"]:
        """Multi-head scaled dot-product attention (`zoo.common.attention.attention`); positions
        where `mask` is False are never attended to. The query, key and value projections
        run as one matrix product over their weights stacked on a new leading axis, with
        ``1 / sqrt(head_dim)`` folded into the query's. Stacking, not concatenating, keeps
        each projection's output (head) axis whole, so a tensor-parallel shard of the heads
        holds the same heads of all three and the product needs no gathered weight. With
        `rotary`, the scaled queries and the keys are then rotated by their positions."""
        seq_len, dim = x.shape
        head_dim = dim // self.n_heads
        projections = (self.query, self.key, self.value)
        weight = jnp.stack([p.weight for p in projections])
        scale = jnp.array([1.0 / math.sqrt(head_dim), 1.0, 1.0], weight.dtype)  # keep bf16 bf16
        weight = weight * scale[:, None, None]
        bias = jnp.stack([p.bias for p in projections]) * scale[:, None]
        qkv = jnp.einsum("sd,ped->pse", x, weight) + bias[:, None, :]
        q, k, v = qkv.reshape(3, seq_len, self.n_heads, head_dim).transpose(0, 2, 1, 3)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        attended = attention(q, k, v, mask).transpose(1, 0, 2).reshape(seq_len, dim)
        return dense(self.attention_output, attended)

    def mlp(self, x: Float[Array, "seq_len dim"]) -> Float[Array, "seq_len dim"]:
        """Position-wise two-layer MLP: dense or SwiGLU (see `TransformerConfig`)."""
        hidden = dense(self.mlp_input, x)
        if self.feed_forward == "swiglu":
            gate, value = jnp.split(hidden, 2, axis=-1)
            return dense(self.mlp_output, jax.nn.silu(gate) * value)
        return dense(self.mlp_output, ACTIVATIONS[self.activation](hidden))

    def __call__(
        self,
        x: Float[Array, "seq_len dim"],
        mask: Bool[Array, " seq_len"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "seq_len dim"]:
        """Transform one sequence. `key` drives dropout and is needed only while training
        with ``dropout > 0``."""
        attention_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        if self.norm == "pre":
            attended = self.attention(normalise(self.attention_norm, x), mask)
            x = x + dropout(self.dropout, attended, attention_key)
            return x + dropout(self.dropout, self.mlp(normalise(self.mlp_norm, x)), mlp_key)
        x = x + dropout(self.dropout, self.attention(x, mask), attention_key)
        x = normalise(self.attention_norm, x)
        return normalise(self.mlp_norm, x + dropout(self.dropout, self.mlp(x), mlp_key))


class TransformerStack(eqx.Module):
    """``n_layers`` `TransformerBlock`s, stored stacked and run with `jax.lax.scan`.

    Every array leaf of `layers` has a leading axis of length ``n_layers``.
    """

    layers: TransformerBlock

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        make = eqx.filter_vmap(lambda k: TransformerBlock(config, key=k))
        self.layers = make(jax.random.split(key, config.n_layers))

    @property
    def n_layers(self) -> int:
        """Number of stacked blocks."""
        return self.layers.query.weight.shape[0]

    def __call__(
        self,
        x: Float[Array, "seq_len dim"],
        mask: Bool[Array, " seq_len"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "seq_len dim"]:
        """Run every block in order over one sequence; `mask` marks the real positions."""
        return self._scan(x, mask, key, keep_layers=False)[0]

    def layer_outputs(
        self, x: Float[Array, "seq_len dim"], mask: Bool[Array, " seq_len"]
    ) -> Float[Array, "n_layers seq_len dim"]:
        """The output of every block (without dropout): row ``i`` is what block ``i`` passes
        on; the last row is what `__call__` returns."""
        return self._scan(x, mask, None, keep_layers=True)[1]

    def _scan(self, x, mask, key, *, keep_layers: bool):
        params, static = eqx.partition(self.layers, eqx.is_array)
        keys = None if key is None else jax.random.split(key, self.n_layers)

        def step(h, layer_and_key):
            layer_params, layer_key = layer_and_key
            out = eqx.combine(layer_params, static)(h, mask, key=layer_key)
            return out, out if keep_layers else None

        return jax.lax.scan(step, x, (params, keys))


class SplitTransformerStack(eqx.Module):
    """A `TransformerStack` cut in two after its first layers, so the two parts can be
    treated differently (for example, the first ones frozen while fine-tuning). Computes
    exactly what the uncut stack computes; `merge` puts it back together."""

    first: TransformerStack
    rest: TransformerStack

    def __call__(
        self,
        x: Float[Array, "seq_len dim"],
        mask: Bool[Array, " seq_len"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "seq_len dim"]:
        """Run the first layers, then the rest."""
        first_key, rest_key = (None, None) if key is None else jax.random.split(key)
        return self.rest(self.first(x, mask, key=first_key), mask, key=rest_key)

    def merge(self) -> TransformerStack:
        """The uncut stack."""
        layers = jax.tree.map(
            lambda a, b: jnp.concatenate([a, b]) if eqx.is_array(a) else a,
            self.first.layers,
            self.rest.layers,
        )
        return eqx.tree_at(lambda s: s.layers, self.first, layers)


def split_stack(stack: TransformerStack, n_first: int) -> SplitTransformerStack:
    """Cut `stack` after its first `n_first` layers (0 < n_first < n_layers)."""
    if not 0 < n_first < stack.n_layers:
        raise ValueError(f"can only split {stack.n_layers} layers after 1 to {stack.n_layers - 1}")

    def part(index: slice) -> TransformerStack:
        layers = jax.tree.map(lambda a: a[index] if eqx.is_array(a) else a, stack.layers)
        return eqx.tree_at(lambda s: s.layers, stack, layers)

    return SplitTransformerStack(first=part(slice(None, n_first)), rest=part(slice(n_first, None)))


def sinusoidal_positions(seq_len: int, dim: int) -> Float[Array, "seq_len dim"]:
    """The fixed sine/cosine position encoding of Vaswani et al. (2017):
    ``P[p, 2i] = sin(p / 10000^(2i/dim))`` and ``P[p, 2i+1] = cos(...)``."""
    position = jnp.arange(seq_len, dtype=jnp.float32)[:, None]
    frequency = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles = position * frequency
    encoding = jnp.zeros((seq_len, dim), jnp.float32)
    encoding = encoding.at[:, 0::2].set(jnp.sin(angles))
    return encoding.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


def masked_mean(x: Float[Array, "n d"], mask: Bool[Array, " n"]) -> Float[Array, " d"]:
    """Mean of the rows of `x` where `mask` is True (zero if none is)."""
    weights = mask.astype(x.dtype)
    return (x * weights[:, None]).sum(0) / jnp.maximum(weights.sum(), 1.0)
