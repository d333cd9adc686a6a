"""`GeneTokenizer`: Geneformer's rank-value encoding of a cell (Theodoris et al., 2023).

For the counts ``c`` of one cell over ``n_genes`` genes:

1. scale to ``target_sum`` counts: ``x = c / sum(c) * target_sum``;
2. divide by each gene's median of ``x`` over the corpus cells that express it
   (``gene_medians``, fitted with `GeneTokenizer.fit` and saved with the tokenizer), which
   lifts lowly but specifically expressed genes above ubiquitous ones;
3. rank the expressed genes by ``x / median``, descending;
4. keep the top ``max_tokens`` genes as tokens.

By default token ids are ``N_SPECIAL + gene index`` after the special ids
``[PAD] [CLS] [MASK]``, and `GeneTokenizer.frame` puts ``[CLS]`` first.
Alongside each token the tokenizer returns ``log1p(x)``, the normalised log expression, for
a value embedding. The hard ranks select tokens; `GeneTokenizer.soft_ranks` gives their
differentiable relaxation among the expressed genes (`zoo.soft_rank`) in linear memory.

The medians are data, not an architecture choice, so a tokenizer is usable only with
medians: fitted (`GeneTokenizer.fit`) or given (`GeneTokenizer.from_medians`, where unit
medians are the explicit choice of ranking by scaled counts alone). The constructor, which
the registry calls to build the skeleton a checkpoint is loaded into, leaves every median 0,
which no fitted median can be; a tokenizer with a median that is not positive and finite
refuses to run (eagerly, or by `eqx.error_if` under `jax.jit`). Silently ranking with unit
medians, as an unfitted tokenizer once did, changes which genes become tokens.

The id layout and the token order are config fields, so the tokenizers of published models
are settings of this one:

- Geneformer V1: ``pad_id=0, mask_id=1, cls_id=None, first_gene_id=2``; V2 adds
  ``cls_id=2, eos_id=3`` and genes from 4 (`GeneTokenizer.frame` puts ``<cls>`` first and
  ``<eos>`` after the last gene, as Geneformer's ``TranscriptomeTokenizer`` with
  ``special_token=True``). Geneformer sorts with an unstable argsort, so its order of tied
  genes is unspecified; ours breaks ties by gene index.
- scGPT: ``ordering="column"`` (the expressed genes in column order, not ranked: the
  medians play no part), ``values="bins"`` (per-cell quantile bins,
  `zoo.expression.value_binning`), genes from 0 and ``<pad> <cls> <eoc>`` after them.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Real

from zoo.common.config import Config, require, require_choice, require_positive
from zoo.expression.soft_rank import soft_rank
from zoo.expression.value_binning import quantile_bins

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
        first_gene_id: token id of gene column 0; column ``j`` has id ``first_gene_id + j``.
        pad_id: id of the padding token.
        cls_id: id of the token `frame` puts before the genes, or None for none.
        mask_id: id a masked gene is replaced by in models without a value input, or None.
        eos_id: id of the token `frame` puts after the last gene, or None for none.
        ordering: ``"rank"`` (the expressed genes by descending ``x / median``) or
            ``"column"`` (the expressed genes in column order).
        values: the value returned with each token: ``"log1p"`` (``log1p(x)``) or
            ``"bins"`` (the cell's quantile bin, 1 to ``n_bins - 1``, of its count).
        n_bins: number of bins with ``values="bins"`` (bin 0 is left for zero counts).
        unused_ids: further ids of the vocabulary that the tokenizer never emits (scGPT's
            ``<eoc>``); they count in `vocab_size`.
    """

    n_genes: int = 2000
    max_tokens: int = 256
    target_sum: float = 10_000.0
    first_gene_id: int = N_SPECIAL
    pad_id: int = GENE_PAD
    cls_id: int | None = GENE_CLS
    mask_id: int | None = GENE_MASK
    eos_id: int | None = None
    ordering: str = "rank"
    values: str = "log1p"
    n_bins: int = 51
    unused_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        require_positive(
            n_genes=self.n_genes, max_tokens=self.max_tokens, target_sum=self.target_sum
        )
        require(
            self.max_tokens <= self.n_genes,
            f"max_tokens ({self.max_tokens}) must not exceed n_genes ({self.n_genes})",
        )
        require_choice("ordering", self.ordering, ("rank", "column"))
        require_choice("values", self.values, ("log1p", "bins"))
        require(self.n_bins >= 3, f"n_bins must be at least 3, got {self.n_bins}")
        require(self.first_gene_id >= 0, f"first_gene_id must be >= 0, got {self.first_gene_id}")
        special = self.special_ids | {f"unused_ids[{i}]": v for i, v in enumerate(self.unused_ids)}
        require(
            len(set(special.values())) == len(special),
            f"special token ids must differ, got {special}",
        )
        genes = range(self.first_gene_id, self.first_gene_id + self.n_genes)
        for name, value in special.items():
            require(
                value >= 0 and value not in genes,
                f"{name} ({value}) must be >= 0 and outside the gene ids "
                f"[{genes.start}, {genes.stop})",
            )

    @property
    def special_ids(self) -> dict[str, int]:
        """The special token ids that are set, by field name."""
        ids = {"pad_id": self.pad_id, "cls_id": self.cls_id, "mask_id": self.mask_id}
        ids["eos_id"] = self.eos_id
        return {name: value for name, value in ids.items() if value is not None}

    @property
    def vocab_size(self) -> int:
        """Number of token ids: one past the largest gene, special or unused id."""
        largest = max(*self.special_ids.values(), *self.unused_ids, -1)
        return max(self.first_gene_id + self.n_genes, largest + 1)

    @property
    def sequence_length(self) -> int:
        """Length of a framed sequence: ``max_tokens`` plus ``<cls>`` and ``<eos>`` if set."""
        return self.max_tokens + (self.cls_id is not None) + (self.eos_id is not None)


def check_counts(
    counts: np.ndarray, n_genes: int, name: str = "counts", *, integer: bool = False
) -> np.ndarray:
    """Return `counts` as float32 after checking shape, finiteness and non-negativity (and,
    with `integer`, that every entry is a whole number).

    Raises:
        ValueError: naming `name` and the problem (wrong gene count, NaN/inf, negative or
            non-integer entries).
    """
    counts = np.asarray(counts)
    if counts.ndim == 0 or counts.shape[-1] != n_genes:
        raise ValueError(
            f"{name} has shape {counts.shape}; its last axis must hold {n_genes} genes"
        )
    if not np.issubdtype(counts.dtype, np.number) or np.issubdtype(
        counts.dtype, np.complexfloating
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {counts.dtype}")
    if not np.all(np.isfinite(counts)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(counts < 0):
        raise ValueError(f"{name} contains negative values; expected raw counts")
    if integer and np.any(counts != np.round(counts)):
        raise ValueError(
            f"{name} contains non-integer values; expected raw counts, not normalised or log "
            "expression (the tokenizer normalises itself)"
        )
    return counts.astype(np.float32)


def is_traced(*values: object) -> bool:
    """Whether any of `values` is a JAX tracer (inside `jax.jit`, `jax.vmap` or `jax.grad`),
    so that its entries can only be checked with `eqx.error_if`."""
    return any(isinstance(v, jax.core.Tracer) for v in values)


class GeneTokenizer(eqx.Module):
    """Rank-value tokenizer of single-cell expression (see the module docstring)."""

    gene_medians: Float[Array, " n_genes"]
    config: GeneTokenizerConfig = eqx.field(static=True)

    def __init__(self, config: GeneTokenizerConfig, *, key: PRNGKeyArray | None = None):
        """Build an unfitted tokenizer, every median 0: it refuses to tokenize until
        `fit` or `from_medians` gives it medians (or a checkpoint is loaded into it).
        `key` is unused: the tokenizer has no random parameters; it is accepted so every
        architecture builds the same way."""
        del key
        self.gene_medians = jnp.zeros(config.n_genes)
        self.config = config

    @classmethod
    def from_medians(cls, config: GeneTokenizerConfig, medians: np.ndarray) -> GeneTokenizer:
        """A tokenizer with the given per-gene medians, for example those a published
        Geneformer ships, or ``np.ones(n_genes)`` to rank by scaled counts alone.

        Raises:
            ValueError: when `medians` is not ``(n_genes,)`` or not all finite and positive.
        """
        medians = np.asarray(medians)
        if medians.shape != (config.n_genes,):
            raise ValueError(f"medians has shape {medians.shape}, expected ({config.n_genes},)")
        if not np.all(np.isfinite(medians) & (medians > 0)):
            raise ValueError("medians must be finite and positive")
        tokenizer = cls(config)
        return eqx.tree_at(lambda t: t.gene_medians, tokenizer, jnp.asarray(medians, jnp.float32))

    def fit(self, counts: np.ndarray) -> GeneTokenizer:
        """A copy whose medians are fitted on a (cells, n_genes) matrix of raw integer
        counts (dense or scipy sparse). A gene expressed in no cell gets the median 1.

        Raises:
            ValueError: naming the problem when `counts` is not a 2-D matrix of
                non-negative integer counts over ``n_genes`` genes.
        """
        if hasattr(counts, "toarray"):
            counts = counts.toarray()
        counts = check_counts(counts, self.config.n_genes, integer=True)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise ValueError(f"counts must be a (cells, genes) matrix, got shape {counts.shape}")
        totals = counts.sum(axis=1, keepdims=True)
        scaled = counts / np.maximum(totals, 1e-12) * self.config.target_sum
        expressed = np.where(counts > 0, scaled, np.nan)
        all_nan = np.all(np.isnan(expressed), axis=0)
        expressed[:, all_nan] = 1.0
        medians = np.nanmedian(expressed, axis=0).astype(np.float32)
        return eqx.tree_at(lambda t: t.gene_medians, self, jnp.asarray(medians))

    def checked_medians(self) -> Float[Array, " n_genes"]:
        """The medians, after checking that they are all finite and positive (that the
        tokenizer was fitted): eagerly, or with `eqx.error_if` when traced.

        Raises:
            ValueError: naming `fit` and `from_medians` when they are not.
        """
        medians = self.gene_medians
        message = (
            "GeneTokenizer is not fitted (gene_medians must be finite and positive): use "
            "tokenizer.fit(counts) or GeneTokenizer.from_medians(config, medians)"
        )
        if is_traced(medians):
            return eqx.error_if(medians, ~jnp.all(jnp.isfinite(medians) & (medians > 0)), message)
        if not np.all(np.isfinite(medians) & (np.asarray(medians) > 0)):
            raise ValueError(message)
        return medians

    def checked_counts(self, counts: Real[Array, " n_genes"]) -> Real[Array, " n_genes"]:
        """One cell's counts after checking their length and, when they are concrete, that
        they are finite and non-negative. Under `jax.jit` or `jax.vmap` only the length is
        checked. They need not be integers: normalised or denoised expression is accepted,
        and gradients flow through it.

        Raises:
            ValueError: naming `counts` and the problem.
        """
        if jnp.shape(counts) != (self.config.n_genes,):
            raise ValueError(
                f"counts must be one cell of shape ({self.config.n_genes},), got shape "
                f"{jnp.shape(counts)}; batch with jax.vmap"
            )
        if not is_traced(counts):
            check_counts(np.asarray(counts), self.config.n_genes)
        return counts

    def normalise(self, counts: Real[Array, " n_genes"]) -> Float[Array, " n_genes"]:
        """Counts scaled to ``target_sum`` (step 1 of the module docstring)."""
        counts = self.checked_counts(counts).astype(jnp.float32)
        return counts / jnp.maximum(counts.sum(), 1e-12) * self.config.target_sum

    def rank_scores(self, counts: Real[Array, " n_genes"]) -> Float[Array, " n_genes"]:
        """``log1p(x / median)``: the order-preserving score that genes are ranked by."""
        return jnp.log1p(self.normalise(counts) / self.checked_medians())

    def __call__(
        self, counts: Real[Array, " n_genes"], *, key: PRNGKeyArray | None = None
    ) -> GeneTokens:
        """Tokenize one cell: its first ``max_tokens`` expressed genes in the configured
        order (``"rank"``: descending ``x / median``, ties broken by gene index;
        ``"column"``: column order), as ids ``first_gene_id + column``, padded with
        ``pad_id``.

        Args:
            counts: the cell's counts over the tokenizer's genes.
            key: draws the bin of values tied on several quantile edges with
                ``values="bins"`` (`zoo.expression.value_binning.quantile_bins`); None
                takes the middle of their bins. Unused with ``values="log1p"``.

        Raises:
            ValueError: when the tokenizer is not fitted or the counts are bad (see
                `checked_medians` and `checked_counts`).
        """
        counts = self.checked_counts(counts)
        expressed = counts > 0
        if self.config.ordering == "rank":
            # c / median orders as log1p(x / median) does (x is c times a per-cell constant).
            # One correctly rounded division gives the same bits eagerly and under jit, so
            # genes tied in exact arithmetic stay tied and go by index either way.
            priority = counts.astype(jnp.float32) / self.checked_medians()
        else:
            priority = -jnp.arange(self.config.n_genes, dtype=jnp.float32)
        _, order = jax.lax.top_k(jnp.where(expressed, priority, -jnp.inf), self.config.max_tokens)
        mask = expressed[order]
        ids = jnp.where(mask, order + self.config.first_gene_id, self.config.pad_id)
        if self.config.values == "log1p":
            per_gene = jnp.log1p(self.normalise(counts))
        else:
            per_gene = quantile_bins(counts, self.config.n_bins, key=key)
        values = jnp.where(mask, per_gene[order], 0.0)
        return GeneTokens(ids=ids.astype(jnp.int32), values=values, mask=mask)

    def frame(self, tokens: GeneTokens) -> GeneTokens:
        """The model's input sequence of ``sequence_length`` tokens: ``cls_id`` first and
        ``eos_id`` right after the last gene, where those are set (value 0 and real, for
        both); Geneformer V2's ``<cls> genes <eos>``."""
        config = self.config
        after_genes = tokens.mask.sum() + (config.cls_id is not None)

        def framed(x: Array, pad: object, cls: object, eos: object) -> Array:
            if config.cls_id is not None:
                x = jnp.concatenate([jnp.asarray([cls], x.dtype), x])
            if config.eos_id is not None:
                x = jnp.concatenate([x, jnp.asarray([pad], x.dtype)])
                x = x.at[after_genes].set(jnp.asarray(eos, x.dtype))
            return x

        return GeneTokens(
            ids=framed(tokens.ids, config.pad_id, config.cls_id, config.eos_id),
            values=framed(tokens.values, 0.0, 0.0, 0.0),
            mask=framed(tokens.mask, False, True, True),
        )

    def soft_ranks(
        self, counts: Real[Array, " n_genes"], temperature: float | Float[Array, ""] = 0.1
    ) -> Float[Array, " n_genes"]:
        """Differentiable descending ranks of the expressed genes' scores among themselves
        (1 = top gene; `zoo.soft_rank` with the expressed genes as its mask); genes not
        expressed take no part and are ranked tied last. Tends to the hard rank as
        ``temperature -> 0``; memory linear in ``n_genes``.

        Raises:
            ValueError: as `__call__`, or when `temperature` is a number that is not positive.
        """
        if not is_traced(temperature) and not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return soft_rank(self.rank_scores(counts), temperature, mask=counts > 0)
