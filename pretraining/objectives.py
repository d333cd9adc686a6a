"""The two pretraining objectives, as sums over a batch so that micro-batches and devices
can be added up before dividing.

* Masked language modelling (`masked_token_sums`) for `TransformerSequenceEncoder`: the
  cross-entropy of the original token at each masked position (BERT, Devlin et al., 2019),
  with the MLM head applied to the masked positions only.
* Masked expression prediction (`masked_expression_sums`) for
  `DifferentiableFoundationModel`: the squared error of the normalised log expression of
  the genes the model masked in each cell (`zoo.masked_expression_loss`).

Each returns ``{"loss_sum", "count", ...}``; the mean loss is ``loss_sum / count``.
`summarise` turns summed statistics into the reported metrics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Key

from pretraining.dna_data import MlmBatch
from zoo.expression.foundation_model import DifferentiableFoundationModel, masked_expression_loss
from zoo.sequence.encoder import TransformerSequenceEncoder


def masked_token_sums(
    model: TransformerSequenceEncoder, batch: MlmBatch, keys: Key[Array, " batch"]
) -> dict[str, Array]:
    """Summed cross-entropy (nats) and correct predictions at the masked positions.

    Args:
        model: the encoder.
        batch: ``tokens`` (batch, seq_len), ``positions`` and ``targets`` (batch, n_targets).
        keys: one dropout key per example (evaluate with `eqx.nn.inference_mode`).
    """
    hidden = jax.vmap(lambda t, k: model(t, key=k).hidden)(batch.tokens, keys)
    picked = jnp.take_along_axis(hidden, batch.positions[..., None], axis=1)
    logits = model.mlm_logits(picked.reshape(-1, picked.shape[-1])).astype(jnp.float32)
    targets = batch.targets.reshape(-1)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[:, None], axis=-1
    ).squeeze(-1)
    correct = jnp.argmax(logits, axis=-1) == targets
    return {
        "loss_sum": nll.sum(),
        "count": jnp.asarray(targets.size, jnp.float32),
        "correct": correct.sum().astype(jnp.float32),
    }


def masked_expression_sums(
    model: DifferentiableFoundationModel,
    counts: Float[Array, "batch n_genes"],
    keys: Key[Array, " batch"],
) -> dict[str, Array]:
    """Summed squared error over the genes masked in each cell.

    Args:
        model: the foundation model.
        counts: raw counts of the batch's cells.
        keys: one key per cell: it draws the cell's expression mask (and, in training,
            drives dropout; evaluate with `eqx.nn.inference_mode`).
    """
    output = jax.vmap(lambda c, k: model(c, key=k))(counts, keys)
    count = output.expression_mask.sum().astype(jnp.float32)
    return {"loss_sum": masked_expression_loss(output) * count, "count": count}


def summarise(sums: dict[str, ArrayLike]) -> dict[str, float]:
    """``loss`` (mean over targets), plus ``accuracy`` and ``perplexity`` (exp of the mean
    cross-entropy) for masked language modelling."""
    count = max(float(sums["count"]), 1.0)
    loss = float(sums["loss_sum"]) / count
    metrics = {"loss": loss}
    if "correct" in sums:
        metrics["accuracy"] = float(sums["correct"]) / count
        metrics["perplexity"] = math.exp(min(loss, 700.0))
    return metrics
