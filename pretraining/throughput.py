"""Model FLOPs and model FLOPs utilisation (MFU, Chowdhery et al., 2022, appendix B).

MFU is the rate of the FLOPs the model needs (matrix multiplications only, one
multiply-add = 2 FLOPs, training = 3 x forward) divided by the hardware's peak: for a
CPU, a float32 matrix-multiply rate measured at start-up; for GPUs and TPUs, the published
dense peak of the chip (`PUBLISHED_PEAKS`) times the number of chips.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from zoo.common.transformer import TransformerConfig

# Published dense (no sparsity) peaks per chip, FLOP/s, from the vendors' data sheets.
# float32 matmuls on NVIDIA run as TF32 under JAX's default precision.
PUBLISHED_PEAKS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989.4e12, "float32": 494.7e12},  # SXM
    "H200": {"bfloat16": 989.4e12, "float32": 494.7e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
}


def block_forward_flops(config: TransformerConfig, seq_len: int) -> int:
    """Forward FLOPs of one transformer block per token: the Q, K, V and output
    projections (``8 d^2``), the MLP (``4 d m``) and attention scores and mixing
    (``4 S d``)."""
    d, m = config.dim, config.mlp_dim
    return 8 * d * d + 4 * d * m + 4 * seq_len * d


def encoder_train_flops(
    config: TransformerConfig, seq_len: int, vocab: int, predicted_per_sequence: int
) -> float:
    """Training FLOPs of one sequence of a BERT-style encoder whose MLM head (dense
    ``2 d^2`` + decoder ``2 d V``) runs on `predicted_per_sequence` positions."""
    d = config.dim
    stack = seq_len * config.n_layers * block_forward_flops(config, seq_len)
    head = predicted_per_sequence * (2 * d * d + 2 * d * vocab)
    return 3.0 * (stack + head)


def foundation_train_flops(config: TransformerConfig, n_tokens: int) -> float:
    """Training FLOPs of one cell of `DifferentiableFoundationModel` with `n_tokens`
    tokens: value encoder (``2 d + 2 d^2``), the stack, and the value head
    (``2 d^2 + 2 d``) at every token."""
    d = config.dim
    per_token = config.n_layers * block_forward_flops(config, n_tokens) + 4 * d * d + 4 * d
    return 3.0 * n_tokens * per_token


def measure_matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    """The best float32 FLOP/s of a ``size x size`` matrix product on the default device."""
    a = jnp.ones((size, size), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def published_peak(device: jax.Device, dtype: str) -> float | None:
    """The published peak of `device`'s chip for `dtype`, or None if it is not listed."""
    kind = device.device_kind
    for name in sorted(PUBLISHED_PEAKS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if name.lower() in kind.lower():
            return PUBLISHED_PEAKS[name][dtype]
    return None


def peak_flops(dtype: str) -> tuple[float, str]:
    """The peak FLOP/s of every device of the run and how it was obtained.

    On CPU the devices of one process share the host's cores, so the peak is the measured
    matmul rate of this host times the number of processes.
    """
    device = jax.devices()[0]
    if device.platform == "cpu":
        peak = measure_matmul_peak() * jax.process_count()
        return peak, f"measured float32 matmul peak of the CPU host x {jax.process_count()}"
    per_chip = published_peak(device, dtype)
    if per_chip is None:
        return float("nan"), f"no published peak known for {device.device_kind}"
    return per_chip * jax.device_count(), (
        f"published {dtype} dense peak of {device.device_kind} x {jax.device_count()}"
    )
