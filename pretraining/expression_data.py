"""Single-cell corpora for masked expression pretraining: AnnData raw counts in, batches of
cells out, read out of core.

`ExpressionCorpus` takes any number of ``.h5ad`` files or ``.zarr`` stores, given as paths,
directories, glob patterns or names (``pbmc68k_reduced`` from the scanpy wheel, whose raw
counts are recovered as ``rint(expm1(raw.X) * n_counts / 1e4)``; the project's shared files
``pbmc3k``, ``pbmc-3chem`` and ``mouse-10k`` where ``$BIOZOO_SHARED_DATA``, by default
``../shared/data`` beside the checkout, holds them). The files may hold different genes:
they are aligned to one `GeneVocabulary` (`pretraining.corpus_genes`), the union of their
genes or a given one, and a file sharing no gene with it is refused. Nothing is loaded:
each file keeps its ``var`` table and row pointers, and a batch reads only its cells
(`pretraining.count_files`). The counts must be non-negative integers: normalised or log
data is refused, because the model's tokenizer normalises itself.

Cells without any stored count are dropped, and a fixed random ``val_fraction`` of the rest
is held out. `ExpressionCorpus.gene_medians` gives the tokenizer's per-gene non-zero
medians over the training cells from one streaming pass (`pretraining.gene_medians`), which
also checks every count; the result is cached under ``$BIOZOO_CACHE/corpora`` keyed by the
files' paths, sizes and modification times, the vocabulary and the split.

`CellBatches` draws cells: cell ``row`` of step ``step`` depends only on
``(seed, step, row)``, as for DNA (`pretraining.dna_data`), and a process reads only the
cells of its own rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from pretraining.corpus_genes import aligned, corpus_vocabulary, match_files
from pretraining.count_files import CountFile, ExpressionDataError, expand_paths
from pretraining.dna_data import TRAIN, VALIDATION
from pretraining.gene_medians import BINS, MedianHistogram
from pretraining.provenance import Source
from pretraining.sources import cache_root, dataset_names, local_source, sha256_of
from zoo.expression.gene_tokenizer import GeneTokenizer
from zoo.expression.gene_vocabulary import GeneVocabulary

__all__ = ["CellBatches", "ExpressionCorpus", "ExpressionDataError", "read_counts", "resolve"]

SHARED_FILES = {
    "pbmc3k": "pbmc3k_2000hvg_counts.h5ad",
    "pbmc-3chem": "pbmc_3chem_counts.h5ad",
    "mouse-10k": "mouse_10k_1000genes_counts.h5ad",
}
RECOVERED_FROM_LOG = {"pbmc68k_reduced"}
SPLIT_SEED = 20240601  # the held-out cells do not change with the training seed
BLOCK_CELLS = 4096  # cells per contiguous read of the streaming pass
CACHE_VERSION = 1


def shared_data_dir() -> Path:
    """``$BIOZOO_SHARED_DATA``, or ``../shared/data`` beside the checkout."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("BIOZOO_SHARED_DATA", default))


def resolve(source: str) -> tuple[Path, str | None]:
    """The local path of `source` (an existing path, a file of ``SHARED_FILES`` or a
    catalogued .h5ad dataset) and its licence when it is catalogued."""
    if source in SHARED_FILES and not os.path.exists(source):
        path = shared_data_dir() / SHARED_FILES[source]
        if not path.is_file():
            raise ExpressionDataError(f"{source!r} is not present at {path}")
        return path, None
    found = local_source(source, (".h5ad",))
    if found is None:
        known = sorted([*SHARED_FILES, *dataset_names((".h5ad",))])
        raise ExpressionDataError(
            f"{source!r} is neither an existing .h5ad file, a directory or pattern of "
            f".h5ad/.zarr files, nor a known dataset; known: {known}"
        )
    return found


def read_counts(source: str, path: Path) -> tuple[sp.csr_matrix, list[str]]:
    """The whole (cells, genes) raw count matrix of a small .h5ad and its gene names, in
    memory (for fine-tuning sets; pretraining reads out of core).

    Raises:
        ExpressionDataError: when ``X`` holds negative, non-finite or non-integer values.
    """
    counts_file = CountFile(path, recover_from_log=source in RECOVERED_FROM_LOG)
    if counts_file.n_cells == 0 or counts_file.n_genes == 0:
        raise ExpressionDataError(
            f"{path} holds no cells or no genes (shape {counts_file.n_cells, counts_file.n_genes})"
        )
    counts = counts_file.read_block(0, counts_file.n_cells)
    return counts, [str(name) for name in counts_file.var.index]


def file_stamp(path: Path) -> list:
    """``[absolute path, bytes, newest modification time in ns]`` of a file or store."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return [
        str(path.resolve()),
        sum(s.st_size for s in stats),
        max((s.st_mtime_ns for s in stats), default=0),
    ]


def digest_of(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a store's relative paths and bytes in path order."""
    if path.is_file():
        return sha256_of(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(member.relative_to(path)).encode() + b"\0")
        digest.update(sha256_of(member).encode())
    return digest.hexdigest()


class ExpressionCorpus:
    """Cells of one or more count files aligned to one gene vocabulary (see the module
    docstring).

    Args:
        sources: paths, directories, glob patterns or dataset names.
        val_fraction: share of the cells held out.
        vocabulary: the genes to align to; None for the union of the files' genes.

    Attributes:
        vocabulary: the genes, in column order.
        files: the opened `CountFile` of every file.
        matches: per file, how its genes line up with the vocabulary.
        cells: per part (``TRAIN``, ``VALIDATION``), the cells as indices into
            ``file_of`` / ``row_of``, which give each kept cell's file and row.
        sources: provenance of every file (``sha256`` filled by `gene_medians`).

    Raises:
        ExpressionDataError: naming the file, for a missing or unreadable file, repeated
            gene names, or a file with no gene of the vocabulary.
    """

    def __init__(
        self,
        sources: Sequence[str],
        *,
        val_fraction: float = 0.1,
        vocabulary: GeneVocabulary | None = None,
    ):
        if not sources:
            raise ExpressionDataError("no expression corpus given")
        if not 0.0 < val_fraction < 1.0:
            raise ExpressionDataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        named: list[tuple[str, Path, str | None]] = []
        for source in sources:
            expanded = expand_paths(source)
            if expanded is None:
                named.append((source, *resolve(source)))
            else:
                named.extend((str(path), path, None) for path in expanded)
        self.files = [
            CountFile(path, recover_from_log=name in RECOVERED_FROM_LOG) for name, path, _ in named
        ]
        for counts_file in self.files:
            if counts_file.n_cells == 0 or counts_file.n_genes == 0:
                raise ExpressionDataError(
                    f"{counts_file.path} holds no cells or no genes "
                    f"(shape {counts_file.n_cells, counts_file.n_genes})"
                )
        self.vocabulary = vocabulary or corpus_vocabulary(self.files)
        self.matches = match_files(self.vocabulary, self.files)
        self.file_of = np.concatenate(
            [np.full(f.nonempty.sum(), i, np.int32) for i, f in enumerate(self.files)]
        )
        self.row_of = np.concatenate([np.flatnonzero(f.nonempty) for f in self.files])
        n_cells = len(self.row_of)
        order = np.random.default_rng(SPLIT_SEED).permutation(n_cells)
        n_val = max(1, round(val_fraction * n_cells))
        if n_cells - n_val < 1:
            raise ExpressionDataError(f"{n_cells} cells are too few to hold any out")
        self.cells = {TRAIN: np.sort(order[n_val:]), VALIDATION: np.sort(order[:n_val])}
        self.sources = [
            Source(name, str(path), "", self._file_summary(i), licence)
            for i, (name, path, licence) in enumerate(named)
        ]

    def _file_summary(self, index: int) -> str:
        counts_file, match = self.files[index], self.matches[index]
        return (
            f"{int(counts_file.nonempty.sum()):,} cells x {counts_file.n_genes:,} genes, raw "
            f"counts; {match.n_matched:,} of {len(self.vocabulary):,} vocabulary genes matched"
        )

    @property
    def n_genes(self) -> int:
        """Genes per cell (the vocabulary's size)."""
        return len(self.vocabulary)

    def describe(self) -> str:
        """The corpus summary: files, cells and genes matched per file."""
        lines = [
            f"expression corpus: {len(self.files)} file(s), {len(self.row_of):,} cells "
            f"({len(self.cells[TRAIN]):,} training, {len(self.cells[VALIDATION]):,} held out), "
            f"{self.n_genes:,} genes"
        ]
        lines += [f"  {s.path}: {s.summary}" for s in self.sources]
        return "\n".join(lines)

    def read(self, part: int, picks: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dense (len(picks), n_genes) float32 counts of cells `picks` of `part` (indices
        into ``cells[part]``), reading only those rows."""
        cells = self.cells[part][np.asarray(picks, np.int64)]
        out = np.zeros((len(cells), self.n_genes), np.float32)
        files = self.file_of[cells]
        for index in np.unique(files):
            where = np.flatnonzero(files == index)
            rows = self.files[index].read_rows(self.row_of[cells[where]])
            out[where] = self.matches[index].counts(rows)
        return out

    def gene_medians(self, target_sum: float) -> np.ndarray:
        """(n_genes,) per-gene non-zero medians of the training cells scaled to
        `target_sum` (module docstring), cached; fills the sources' digests."""
        folder = cache_root() / "corpora" / self._cache_key(target_sum)
        medians_path, record_path = folder / "medians.npy", folder / "corpus.json"
        if medians_path.is_file() and record_path.is_file():
            medians = np.load(medians_path, allow_pickle=False)
            digests = json.loads(record_path.read_text())["sha256"]
        else:
            medians = self._stream_medians(target_sum)
            digests = [digest_of(Path(s.path)) for s in self.sources]
            folder.mkdir(parents=True, exist_ok=True)
            for path, write in (
                (medians_path, lambda f: np.save(f, medians, allow_pickle=False)),
                (record_path, lambda f: f.write(json.dumps({"sha256": digests}).encode())),
            ):
                partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
                with open(partial, "wb") as f:
                    write(f)
                os.replace(partial, path)
        self.sources = [
            Source(s.name, s.path, digest, s.summary, s.licence)
            for s, digest in zip(self.sources, digests, strict=True)
        ]
        return medians

    def _cache_key(self, target_sum: float) -> str:
        key = {
            "version": CACHE_VERSION,
            "files": [file_stamp(f.path) for f in self.files],
            "recovered": [f.recover_from_log for f in self.files],
            "genes": [self.vocabulary.gene_ids, self.vocabulary.symbols],
            "target_sum": target_sum,
            "val_fraction": self.val_fraction,
            "split_seed": SPLIT_SEED,
            "bins": BINS,
        }
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]

    def _stream_medians(self, target_sum: float) -> np.ndarray:
        histogram = MedianHistogram(self.n_genes, target_sum)
        is_train = np.zeros(len(self.row_of), bool)
        is_train[self.cells[TRAIN]] = True
        offsets = np.cumsum([0, *(int(f.nonempty.sum()) for f in self.files)])
        total = sum(f.n_cells for f in self.files)
        with tqdm(total=total, unit="cell", desc="gene medians", disable=None) as bar:
            for index, counts_file in enumerate(self.files):
                train_rows = np.zeros(counts_file.n_cells, bool)
                kept = np.flatnonzero(counts_file.nonempty)
                train_rows[kept] = is_train[offsets[index] : offsets[index + 1]]
                for start in range(0, counts_file.n_cells, BLOCK_CELLS):
                    stop = min(start + BLOCK_CELLS, counts_file.n_cells)
                    block = counts_file.read_block(start, stop)  # checks the counts
                    histogram.add(aligned(block[train_rows[start:stop]], self.matches[index]))
                    bar.update(stop - start)
        return histogram.medians()

    def fit_tokenizer(self, tokenizer: GeneTokenizer) -> GeneTokenizer:
        """`tokenizer` with its per-gene medians from the training cells."""
        return GeneTokenizer.from_medians(
            tokenizer.config, self.gene_medians(tokenizer.config.target_sum)
        )


class CellBatches:
    """Batches of cells of an `ExpressionCorpus` (see the module docstring)."""

    def __init__(self, corpus: ExpressionCorpus, *, seed: int):
        self.corpus = corpus
        self.seed = seed

    def batch(self, step: int, rows: Sequence[int], part: int = TRAIN) -> np.ndarray:
        """Dense (len(rows), n_genes) float32 counts of cells `rows` of `step` (training) or
        of validation batch `step`."""
        n_cells = len(self.corpus.cells[part])
        picks = [
            int(np.random.default_rng((self.seed, part, step, row)).integers(n_cells))
            for row in rows
        ]
        return self.corpus.read(part, picks)
