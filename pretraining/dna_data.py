"""DNA corpora for masked language modelling: FASTA files in, masked token windows out.

`DnaCorpus` reads FASTA / FASTA.gz / FASTA.xz files, given as paths or as names of the
catalogued registry datasets (`pretraining.sources.DATASETS`), into one byte per base
(A, C, G, T, or N for any IUPAC ambiguity code), or maps a packed corpus that
`prepare_packed` (``biozoo prepare dna``) built once from them (`pretraining.packed_dna`),
so that a corpus larger than memory is paged in as windows are read. The last
``val_fraction`` of every record is held out for validation.

`MaskedWindows` draws training examples: a window of the training region, from either
strand, tokenized by the model's own tokenizer (the zoo's `NucleotideTokenizer`, or the
`VocabularyTokenizer` of an imported Nucleotide Transformer or DNABERT checkpoint; see
`TokenScheme`), with BERT's masking (Devlin et al., 2019): 15 % of the maskable tokens (not
special, not unknown) are prediction targets, of which 80 % are replaced by the mask token,
10 % by a random maskable token and 10 % left unchanged. Example ``row`` of step ``step``
depends only on ``(seed, step, row)``, so the data order is the same whatever the number of
processes or devices, each process draws only its own rows, and a resumed run continues
exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pretraining.packed_dna import N_CODE, PackedDnaError, is_packed, read_packed, write_packed
from pretraining.provenance import Source
from pretraining.sources import dataset_names, local_source, sha256_of
from zoo.sequence import vocabulary_tokenizer
from zoo.sequence.fasta import read_fasta
from zoo.sequence.nucleotides import MASK, SPECIAL_TOKENS, UNK, NucleotideTokenizer
from zoo.sequence.vocabulary_tokenizer import VocabularyTokenizer

LETTERS = np.frombuffer(b"ACGTN", np.uint8)
_CODES = np.full(256, -1, np.int8)
for _code, _letters in enumerate(("Aa", "Cc", "Gg", "Tt", "NnRrYyKkMmSsWwBbDdHhVv")):
    for _letter in _letters:
        _CODES[ord(_letter)] = _code
TRAIN, VALIDATION = 0, 1
FASTA_SUFFIXES = tuple(
    base + packed for base in (".fa", ".fasta", ".fna") for packed in ("", ".gz", ".xz")
)


class CorpusError(ValueError):
    """A corpus is missing, empty, or not DNA."""


def resolve(source: str) -> tuple[Path, str | None]:
    """The local path of `source` (an existing path or a catalogued FASTA dataset) and its
    licence when it is catalogued."""
    found = local_source(source, FASTA_SUFFIXES)
    if found is None:
        raise CorpusError(
            f"{source!r} is neither an existing file nor a known dataset; "
            f"known datasets: {', '.join(dataset_names(FASTA_SUFFIXES))}"
        )
    return found


def encode_dna(sequence: str, where: str) -> np.ndarray:
    """Bytes 0-3 for A, C, G, T and 4 for N or an ambiguity code (case-insensitive).

    Raises:
        CorpusError: naming `where`, the letter and its position, for any other letter.
    """
    codes = _CODES[np.frombuffer(sequence.encode("latin-1", errors="replace"), np.uint8)]
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        position = int(bad[0])
        raise CorpusError(
            f"{where}: letter {sequence[position]!r} at position {position} is not a "
            "nucleotide (A, C, G, T, N or an IUPAC ambiguity code); is this a DNA FASTA?"
        )
    return codes.astype(np.uint8)


def fasta_records(
    sources: Sequence[str], provenance: list[Source]
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, codes)`` of every non-empty record of the FASTA `sources`, one record in
    memory at a time; appends each file's `Source` to `provenance` once it is read.

    Raises:
        CorpusError: naming the file, when it is missing, unreadable, empty or not DNA.
    """
    for source in sources:
        path, licence = resolve(source)
        count, letters = 0, 0
        try:
            for name, sequence in read_fasta(path):
                codes = encode_dna(sequence, f"{path} record {name!r}")
                if codes.size:
                    yield name, codes
                    count, letters = count + 1, letters + codes.size
        except (UnicodeDecodeError, EOFError, OSError, ValueError) as error:
            if isinstance(error, CorpusError):
                raise
            raise CorpusError(f"{path} is not a readable FASTA file: {error}") from None
        if letters == 0:
            raise CorpusError(f"{path} holds no sequence; is it an empty FASTA file?")
        summary = f"{count:,} record{'s' * (count != 1)}, {letters:,} bases"
        provenance.append(Source(source, str(path), sha256_of(path), summary, licence))


def prepare_packed(sources: Sequence[str], out: str) -> Path:
    """Build the packed corpus `out` (`pretraining.packed_dna`) from FASTA `sources`."""
    provenance: list[Source] = []
    try:
        return write_packed(out, fasta_records(sources, provenance), provenance)
    except PackedDnaError as error:
        raise CorpusError(str(error)) from None


class DnaCorpus:
    """The records of FASTA files and packed corpora (folders made by `prepare_packed`,
    memory-mapped, not loaded), split into training and validation regions.

    Attributes:
        records: one uint8 code array per record (see `encode_dna`).
        split: per record, the first held-out position (the end of its training region).
        ambiguous_bases: bases that are N (or an ambiguity code), from the packed
            corpora's N-run indexes and the FASTA records' codes.
        sources: provenance of every file (for a packed corpus, the FASTA files it was
            built from).
    """

    def __init__(self, sources: Sequence[str], *, val_fraction: float = 0.01):
        if not sources:
            raise CorpusError("no DNA corpus given")
        if not 0.0 < val_fraction < 1.0:
            raise CorpusError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.records: list[np.ndarray] = []
        self.sources: list[Source] = []
        self.ambiguous_bases = 0
        for source in sources:
            if is_packed(source):
                try:
                    packed = read_packed(source)
                except PackedDnaError as error:
                    raise CorpusError(str(error)) from None
                self.records += packed.records
                self.sources += packed.sources
                self.ambiguous_bases += int(packed.n_runs[:, 2].sum())
            else:
                for _, codes in fasta_records([source], self.sources):
                    self.records.append(codes)
                    self.ambiguous_bases += int(np.count_nonzero(codes == N_CODE))
        self.split = [len(r) - max(1, round(val_fraction * len(r))) for r in self.records]

    @property
    def letters(self) -> int:
        """Bases in the corpus."""
        return sum(len(r) for r in self.records)

    def describe(self) -> str:
        """The corpus summary: files, records and bases."""
        lines = [
            f"DNA corpus: {len(self.sources)} file(s), {len(self.records):,} records, "
            f"{self.letters:,} bases ({self.ambiguous_bases:,} N)"
        ]
        lines += [f"  {s.path}: {s.summary}" for s in self.sources]
        return "\n".join(lines)


class MlmBatch(NamedTuple):
    """Masked-language-model examples: ``tokens`` (batch, seq_len) int32 with the masking
    applied, ``positions`` (batch, n_targets) the masked positions, ``targets`` the original
    token ids there."""

    tokens: np.ndarray
    positions: np.ndarray
    targets: np.ndarray


@dataclasses.dataclass(frozen=True)
class TokenScheme:
    """How `MaskedWindows` cuts and masks windows for one tokenizer.

    Attributes:
        window: letters per window; they tokenize to exactly ``seq_len`` tokens.
        mask_id: the mask token.
        maskable: per token id, whether it may be a prediction target (special tokens and
            the unknown / N token may not).
        replacements: the ids a random replacement is drawn from (the maskable ids).
        allow_n: whether a window may hold N (False where N would change the token count).
    """

    window: int
    mask_id: int
    maskable: np.ndarray
    replacements: np.ndarray
    allow_n: bool


def token_scheme(tokenizer: NucleotideTokenizer | VocabularyTokenizer, seq_len: int) -> TokenScheme:
    """The `TokenScheme` of `tokenizer` for windows of `seq_len` tokens, the first token
    (``[CLS]`` / ``<cls>``) included:

    * `NucleotideTokenizer`: ``[CLS]`` and ``seq_len - 1`` k-mers at the tokenizer's
      stride, so ``(seq_len - 2) * stride + kmer`` letters; every k-mer but ``[UNK]`` is
      maskable.
    * ``nt-v1-K`` / ``nt-v2-K``: ``<cls>`` and ``seq_len - 1`` non-overlapping K-mers, so
      ``(seq_len - 1) * K`` letters without N (an N would split the K-mers); the K-mers and
      single letters are maskable, the special tokens and ``N`` are not.
    * ``dnabert-K``: ``[CLS]``, ``seq_len - 2`` overlapping K-mers, ``[SEP]``, so
      ``seq_len + K - 3`` letters; a K-mer holding N is ``[UNK]``, never a target.

    Raises:
        CorpusError: for a tokenizer that does not read DNA (``esm2``, an alphabet other
            than ACGT) or a `seq_len` too short for one token after the first.
    """
    if isinstance(tokenizer, NucleotideTokenizer):
        if tokenizer.alphabet != "ACGT":
            raise CorpusError(f"a DNA corpus needs the alphabet ACGT, not {tokenizer.alphabet}")
        if seq_len < 2:
            raise CorpusError(f"seq_len must be at least 2 ([CLS] and one token), got {seq_len}")
        ids = np.arange(tokenizer.vocab_size)
        return TokenScheme(
            window=(seq_len - 2) * tokenizer.stride + tokenizer.kmer,
            mask_id=MASK,
            maskable=ids != UNK,
            replacements=ids[len(SPECIAL_TOKENS) :],
            allow_n=tokenizer.allow_n,
        )
    if tokenizer.scheme == "esm2":
        raise CorpusError("the esm2 tokenizer reads proteins; a DNA corpus needs a DNA model")
    vocab = np.array(tokenizer.vocab)
    special = np.isin(vocab, vocabulary_tokenizer.SPECIAL_TOKENS[tokenizer.scheme] + ("N",))
    ids = np.arange(len(vocab))
    dnabert = tokenizer.scheme == "dnabert"
    least = 3 if dnabert else 2
    if seq_len < least:
        raise CorpusError(
            f"seq_len must be at least {least} for the {tokenizer.name} tokenizer, got {seq_len}"
        )
    return TokenScheme(
        window=seq_len + tokenizer.kmer - 3 if dnabert else (seq_len - 1) * tokenizer.kmer,
        mask_id=tokenizer.mask_id,
        maskable=~special,
        replacements=ids[~special],
        allow_n=dnabert,
    )


class MaskedWindows:
    """Masked token windows of a `DnaCorpus` (see the module docstring).

    Args:
        corpus: the DNA.
        tokenizer: the model's tokenizer (see `token_scheme`).
        seq_len: tokens per example, the first (``[CLS]``) included.
        seed: the run's seed.
        mask_rate: fraction of the tokens after ``[CLS]`` that are prediction targets.
        max_n_fraction: windows with more N than this are redrawn (with ``allow_n=False``
            no N at all is accepted).
    """

    def __init__(
        self,
        corpus: DnaCorpus,
        tokenizer: NucleotideTokenizer | VocabularyTokenizer,
        seq_len: int,
        *,
        seed: int,
        mask_rate: float = 0.15,
        max_n_fraction: float = 0.1,
    ):
        self.scheme = token_scheme(tokenizer, seq_len)
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        self.window = self.scheme.window
        self.n_targets = max(1, round(mask_rate * (seq_len - 1)))
        self.max_n = int(max_n_fraction * self.window) if self.scheme.allow_n else 0
        # per part: (record, first window start, number of window starts) of each region
        # long enough for a window, and the probability of drawing from each region
        self.regions: dict[int, list[tuple[int, int, int]]] = {}
        self.weights: dict[int, np.ndarray] = {}
        for part, label in ((TRAIN, "training"), (VALIDATION, "validation")):
            bounds = [
                (r, 0, end) if part == TRAIN else (r, end, len(corpus.records[r]))
                for r, end in enumerate(corpus.split)
            ]
            regions = [(r, a, b - a - self.window + 1) for r, a, b in bounds]
            regions = [region for region in regions if region[2] > 0]
            if not regions:
                raise CorpusError(
                    f"no {label} region of the corpus is {self.window} bases long, the window "
                    f"that {seq_len} tokens need; use more sequence or a smaller seq_len"
                )
            starts = np.array([n for _, _, n in regions], np.float64)
            self.regions[part], self.weights[part] = regions, starts / starts.sum()

    def _window(self, rng: np.random.Generator, part: int) -> np.ndarray:
        regions = self.regions[part]
        for _ in range(1000):
            record, first, n_starts = regions[rng.choice(len(regions), p=self.weights[part])]
            start = first + int(rng.integers(n_starts))
            codes = self.corpus.records[record][start : start + self.window]
            if rng.random() < 0.5:  # the reverse strand: complement (A<->T, C<->G), reversed
                codes = np.where(codes == N_CODE, N_CODE, 3 - codes)[::-1]
            if np.count_nonzero(codes == N_CODE) <= self.max_n:
                return codes
        raise CorpusError("1000 windows in a row had too many N; the corpus is mostly gaps")

    def example(self, step: int, row: int, part: int = TRAIN) -> tuple[np.ndarray, ...]:
        """Tokens, masked positions and targets of example `row` of `step`."""
        rng = np.random.default_rng((self.seed, part, step, row))
        scheme = self.scheme
        while True:
            tokens = self.tokenizer.encode(LETTERS[self._window(rng, part)].tobytes().decode())
            if len(tokens) != self.seq_len:
                raise CorpusError(
                    f"a window of {self.window} letters gave {len(tokens)} tokens, not "
                    f"{self.seq_len}"
                )
            candidates = np.flatnonzero(scheme.maskable[tokens[1:]]) + 1
            if candidates.size >= self.n_targets:
                break
        positions = np.sort(rng.choice(candidates, self.n_targets, replace=False))
        targets = tokens[positions]
        action = rng.random(self.n_targets)
        # drawn as an index into the replacements: the same stream as integers(low, high)
        random_ids = scheme.replacements[rng.integers(0, len(scheme.replacements), self.n_targets)]
        tokens = tokens.copy()
        tokens[positions] = np.where(
            action < 0.8, scheme.mask_id, np.where(action < 0.9, random_ids, targets)
        )
        return tokens, positions.astype(np.int32), targets.astype(np.int32)

    def batch(self, step: int, rows: Sequence[int], part: int = TRAIN) -> MlmBatch:
        """Examples `rows` of `step` (training) or of validation batch `step`."""
        examples = [self.example(step, row, part) for row in rows]
        return MlmBatch(*(np.stack(column) for column in zip(*examples, strict=True)))
