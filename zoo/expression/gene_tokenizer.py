"""`GeneTokenizer`: Geneformer's rank-value encoding of a cell (Theodoris et al., 2023).

For the counts ``c`` of one cell over ``n_genes`` genes:

1. scale to ``target_sum`` counts: ``x = c / sum(c) * target_sum``;
2. divide by each gene's median of ``x`` over the corpus cells that express it
   (``gene_medians``, fitted with `GeneTokenizer.fit` and saved with the tokenizer), which
   lifts lowly but specifically expressed genes above ubiquitous ones;
3. rank the expressed genes by ``x / median``, descending;
4. keep the top ``max_tokens`` genes as tokens.

Token ids are ``N_SPECIAL + gene index`` after the special ids ``[PAD] [CLS] [MASK]``.
Alongside each token the tokenizer returns ``log1p(x)``, the normalised log expression, for
a value embedding. The hard ranks select tokens; `GeneTokenizer.soft_ranks` gives their
differentiable relaxation (`zoo.soft_rank`) in linear memory.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

from zoo.common.config import Config, require, require_positive
from zoo.expression.soft_rank import soft_rank

GENE_SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[MASK]")
GENE_PAD, GENE_CLS, GENE_MASK = range(len(GENE_SPECIAL_TOKENS))
N_SPECIAL = len(GENE_SPECIAL_TOKENS)


class GeneTokens(NamedTuple):
    """The tokenisation of one cell: ids, their normalised log values, and the real-token mask."""

    ids: Int[Array, " max_tokens"]
    values: Float[Array, " max_tokens"]
    mask: Bool[Array, " max_tokens"]


@dataclasses.dataclass(frozen=True)
class GeneTokenizerConfig(Config):
    """Shape of a `GeneTokenizer`.

    Attributes:
        n_genes: genes per cell (columns of the count matrix, in a fixed order).
        max_tokens: most gene tokens per cell.
        target_sum: total counts each cell is scaled to before ranking.
    """

    n_genes: int = 2000
    max_tokens: int = 256
    target_sum: float = 10_000.0

    def validate(self) -> None:
        require_positive(
            n_genes=self.n_genes, max_tokens=self.max_tokens, target_sum=self.target_sum
        )
        require(
            self.max_tokens <= self.n_genes,
            f"max_tokens ({self.max_tokens}) must not exceed n_genes ({self.n_genes})",
        )


def check_counts(counts: np.ndarray, n_genes: int, name: str = "counts") -> np.ndarray:
    """Return `counts` as float32 after checking shape, finiteness and non-negativity.

    Raises:
        ValueError: naming the problem (wrong gene count, NaN/inf, negative entries).
    """
    counts = np.asarray(counts)
    if counts.shape[-1] != n_genes:
        raise ValueError(
            f"{name} has {counts.shape[-1]} genes in its last axis, expected {n_genes}"
        )
    if not np.all(np.isfinite(counts)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(counts < 0):
        raise ValueError(f"{name} contains negative values; expected raw counts")
    return counts.astype(np.float32)


class GeneTokenizer(eqx.Module):
    """Rank-value tokenizer of single-cell expression (see the module docstring)."""

    gene_medians: Float[Array, " n_genes"]
    config: GeneTokenizerConfig = eqx.field(static=True)

    def __init__(self, config: GeneTokenizerConfig, *, key: PRNGKeyArray | None = None):
        """Build an unfitted tokenizer (every median 1). `key` is unused: the tokenizer has
        no random parameters; it is accepted so every architecture builds the same way."""
        del key
        self.gene_medians = jnp.ones(config.n_genes)
        self.config = config

    def fit(self, counts: np.ndarray) -> GeneTokenizer:
        """A copy whose medians are fitted on a (cells, n_genes) count matrix (dense or
        scipy sparse). A gene expressed in no cell keeps the median 1."""
        if hasattr(counts, "toarray"):
            counts = counts.toarray()
        counts = check_counts(counts, self.config.n_genes)
        totals = counts.sum(axis=1, keepdims=True)
        scaled = counts / np.maximum(totals, 1e-12) * self.config.target_sum
        expressed = np.where(counts > 0, scaled, np.nan)
        all_nan = np.all(np.isnan(expressed), axis=0)
        expressed[:, all_nan] = 1.0
        medians = np.nanmedian(expressed, axis=0).astype(np.float32)
        return eqx.tree_at(lambda t: t.gene_medians, self, jnp.asarray(medians))

    def normalise(self, counts: Real[Array, " n_genes"]) -> Float[Array, " n_genes"]:
        """Counts scaled to ``target_sum`` (step 1 of the module docstring)."""
        counts = counts.astype(jnp.float32)
        return counts / jnp.maximum(counts.sum(), 1e-12) * self.config.target_sum

    def rank_scores(self, counts: Real[Array, " n_genes"]) -> Float[Array, " n_genes"]:
        """``log1p(x / median)``: the order-preserving score that genes are ranked by."""
        return jnp.log1p(self.normalise(counts) / self.gene_medians)

    def __call__(self, counts: Real[Array, " n_genes"]) -> GeneTokens:
        """Tokenize one cell: the top ``max_tokens`` expressed genes by descending score
        (ties broken by gene index), padded with ``[PAD]``."""
        scores = self.rank_scores(counts)
        expressed = counts > 0
        _, order = jax.lax.top_k(jnp.where(expressed, scores, -jnp.inf), self.config.max_tokens)
        mask = expressed[order]
        ids = jnp.where(mask, order + N_SPECIAL, GENE_PAD)
        values = jnp.where(mask, jnp.log1p(self.normalise(counts))[order], 0.0)
        return GeneTokens(ids=ids.astype(jnp.int32), values=values, mask=mask)

    def soft_ranks(
        self, counts: Real[Array, " n_genes"], temperature: float | Float[Array, ""] = 0.1
    ) -> Float[Array, " n_genes"]:
        """Differentiable descending ranks of every gene's score (1 = top gene). Tends to
        the hard rank as ``temperature -> 0``; memory linear in ``n_genes``."""
        return soft_rank(self.rank_scores(counts), temperature)
