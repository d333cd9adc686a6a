"""The pretraining objectives, as sums over a batch so that micro-batches and devices
can be added up before dividing.

* Masked language modelling (`masked_token_sums`) for `TransformerSequenceEncoder`: the
  cross-entropy of the original token at each masked position (BERT, Devlin et al., 2019),
  with the MLM head applied to the masked positions only.
* Masked expression prediction (`masked_expression_sums`) for
  `DifferentiableFoundationModel`: the squared error of the normalised log expression of
  the genes the model masked in each cell (`zoo.masked_expression_loss`).
* Masked gene-id prediction (`masked_gene_id_sums`) for a `DifferentiableFoundationModel`
  with the ``"gene_logits"`` head (Geneformer, Theodoris et al., 2023: a BERT masked LM
  over rank-ordered gene ids): the cross-entropy of the original gene id at each gene
  token the model masked (replaced by ``<mask>``), never at ``<pad>``, ``<cls>`` or
  ``<eos>``.

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


def gene_id_targets(model: DifferentiableFoundationModel) -> int:
    """Positions per cell that `masked_gene_id_sums` runs the gene-logits head on: an upper
    bound of the ``max(1, round(mask_ratio * n_real))`` genes masked in a cell (one more
    than ``ceil(mask_ratio * max_tokens)``, so float rounding cannot drop a masked gene),
    at most ``max_tokens``."""
    max_tokens = model.config.tokenizer.max_tokens
    return min(max_tokens, math.ceil(model.config.mask_ratio * max_tokens) + 1)


def masked_gene_id_sums(
    model: DifferentiableFoundationModel,
    counts: Float[Array, "batch n_genes"],
    keys: Key[Array, " batch"],
) -> dict[str, Array]:
    """Summed cross-entropy (nats) of the original gene ids at the masked gene tokens, and
    the correct argmax predictions there (Geneformer's BERT masked-LM objective).

    For each cell, the model's tokenizer gives the tokens ``t`` and the framed original ids
    ``y = frame(t).ids``; ``model.encode(t, key=k)`` masks a random ``mask_ratio`` of the
    real gene tokens (their ids become ``mask_id``) and runs the stack. With ``M`` the masked
    positions and ``z_i`` the gene logits at position ``i``, the sums are
    ``loss_sum = sum_{i in M} (logsumexp(z_i) - z_i[y_i])``, ``count = |M|`` and
    ``correct = #{i in M: argmax z_i = y_i}``, added over the batch. The head runs only at
    `gene_id_targets` positions per cell (the masked ones first, the rest weighted 0), not
    over the whole vocabulary at every token.

    Args:
        model: a foundation model with the ``"gene_logits"`` head.
        counts: raw counts of the batch's cells.
        keys: one key per cell: it draws the cell's mask (and, in training, drives
            dropout; evaluate with `eqx.nn.inference_mode`).

    Raises:
        ValueError: for a model whose head predicts expression values, not gene ids.
    """
    if model.config.head != "gene_logits":
        raise ValueError(
            f"masked_gene_id_sums needs a model with the 'gene_logits' head, not "
            f"{model.config.head!r}; use masked_expression_sums"
        )
    n_targets = gene_id_targets(model)

    def one(cell, key):
        tokens = model.tokenizer(cell)
        original = model.tokenizer.frame(tokens).ids
        output = model.encode(tokens, key=key)
        # masked positions first (a stable sort keeps them in sequence order)
        positions = jnp.argsort(~output.expression_mask, stable=True)[:n_targets]
        _, logits = model.head(output.hidden[positions])
        return logits, original[positions], output.expression_mask[positions]

    logits, targets, weights = jax.vmap(one)(counts, keys)
    logits = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[..., None], axis=-1
    ).squeeze(-1)
    correct = (jnp.argmax(logits, axis=-1) == targets) & weights
    return {
        "loss_sum": jnp.where(weights, nll, 0.0).sum(),
        "count": weights.sum().astype(jnp.float32),
        "correct": correct.sum().astype(jnp.float32),
    }


def summarise(sums: dict[str, ArrayLike]) -> dict[str, float]:
    """``loss`` (mean over targets), plus ``accuracy`` and ``perplexity`` (exp of the mean
    cross-entropy) for masked language modelling and masked gene ids."""
    count = max(float(sums["count"]), 1.0)
    loss = float(sums["loss_sum"]) / count
    metrics = {"loss": loss}
    if "correct" in sums:
        metrics["accuracy"] = float(sums["correct"]) / count
        metrics["perplexity"] = math.exp(min(loss, 700.0))
    return metrics
