"""Out-of-core corpora: cell files with different genes aligned to one vocabulary and read a
batch's rows at a time, streamed tokenizer medians with their cache, and packed DNA corpora
that map to the same windows as the FASTA they came from."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
from count_corpus import SYMBOLS, dense_in_vocabulary, write_corpus

from pretraining import cli
from pretraining.count_files import CountFile
from pretraining.dna_data import TRAIN, VALIDATION, CorpusError, DnaCorpus, MaskedWindows
from pretraining.expression_data import CellBatches, ExpressionCorpus, ExpressionDataError
from pretraining.packed_dna import BASES_FILE
from zoo.expression.gene_tokenizer import GeneTokenizer, GeneTokenizerConfig
from zoo.expression.gene_vocabulary import GeneVocabulary
from zoo.sequence.nucleotides import NucleotideTokenizer


@pytest.fixture(scope="module")
def cell_files(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("cells"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOZOO_CACHE", str(tmp_path / "cache"))


def reference_cells(corpus: ExpressionCorpus, paths) -> np.ndarray:
    """Every kept cell of `corpus` over its vocabulary, from whole in-memory files (zeros
    for a vocabulary gene no file holds)."""
    whole = [dense_in_vocabulary(path, index) for index, path in enumerate(paths)]
    whole = [np.concatenate([w, np.zeros((len(w), 1), np.float32)], axis=1) for w in whole]
    names = corpus.vocabulary.names()
    columns = [SYMBOLS.index(n) if n in SYMBOLS else len(SYMBOLS) for n in names]
    return np.stack(
        [whole[f][r][columns] for f, r in zip(corpus.file_of, corpus.row_of, strict=True)]
    )


def test_files_with_different_genes_align_to_their_union(cell_files):
    corpus = ExpressionCorpus([str(cell_files[0].parent)], val_fraction=0.2)
    assert corpus.vocabulary.names() == tuple(SYMBOLS[:40] + SYMBOLS[59:39:-1])
    assert [m.n_matched for m in corpus.matches] == [40, 40, 40]
    assert len(corpus.row_of) == 3 * 54  # every tenth cell is empty and dropped
    reference = reference_cells(corpus, cell_files)
    for part in (TRAIN, VALIDATION):
        cells = corpus.cells[part]
        np.testing.assert_array_equal(corpus.read(part, range(len(cells))), reference[cells])
    summary = corpus.describe()
    assert "3 file(s), 162 cells" in summary and "part2.h5ad: 54 cells x 40 genes" in summary
    # a glob names the same files; the file named by ID matched through its symbols
    same = ExpressionCorpus([str(cell_files[0].parent / "part*.h5ad")], val_fraction=0.2)
    assert same.vocabulary == corpus.vocabulary
    assert corpus.matches[2].matched_by == ("var['gene_symbols']", "symbol")


def test_a_file_sharing_no_gene_is_refused_by_name(cell_files, tmp_path):
    other = tmp_path / "mouse.h5ad"
    anndata.AnnData(np.ones((4, 3), np.float32), var={"x": [0, 1, 2]}).write_h5ad(other)
    vocabulary = GeneVocabulary.from_names(SYMBOLS[:5])
    with pytest.raises(ExpressionDataError, match=r"mouse\.h5ad shares no gene"):
        ExpressionCorpus([str(cell_files[0]), str(other)], vocabulary=vocabulary)
    with pytest.raises(ExpressionDataError, match=r"matches no \.h5ad"):
        ExpressionCorpus([str(tmp_path / "none*.h5ad")])


def test_a_given_vocabulary_from_a_genes_file(cell_files, tmp_path, capsys):
    genes = GeneVocabulary.from_names(["GENE05", "GENE45", "NOT_THERE"]).write(tmp_path / "g.tsv")
    corpus = ExpressionCorpus([str(p) for p in cell_files], vocabulary=GeneVocabulary.read(genes))
    assert [m.n_matched for m in corpus.matches] == [1, 1, 1]
    reference = reference_cells(corpus, cell_files)  # NOT_THERE is a column of zeros
    cells = corpus.cells[TRAIN]
    np.testing.assert_array_equal(corpus.read(TRAIN, range(len(cells))), reference[cells])
    missing = ["--genes", str(tmp_path / "no.tsv"), "--out", str(tmp_path / "run")]
    status = cli.main(["expression", str(cell_files[0]), *missing])
    assert status == 2 and "no no.tsv there" in capsys.readouterr().err


def test_streamed_medians_match_the_in_memory_fit_and_are_cached(cell_files, monkeypatch):
    corpus = ExpressionCorpus([str(p) for p in cell_files], val_fraction=0.2)
    config = GeneTokenizerConfig(n_genes=corpus.n_genes, max_tokens=16)
    training = corpus.read(TRAIN, range(len(corpus.cells[TRAIN])))
    exact = np.asarray(GeneTokenizer(config).fit(training).gene_medians)
    streamed = corpus.gene_medians(config.target_sum)
    np.testing.assert_allclose(streamed, exact, rtol=0.016)  # one bin of 1,024 over 7 decades
    assert all(len(s.sha256) == 64 for s in corpus.sources)

    def no_reading(*args):
        raise AssertionError("cached medians should not read the files")

    monkeypatch.setattr(CountFile, "read_block", no_reading)
    again = ExpressionCorpus([str(p) for p in cell_files], val_fraction=0.2)
    np.testing.assert_array_equal(again.gene_medians(config.target_sum), streamed)
    with pytest.raises(AssertionError, match="should not read"):  # another split: no cache
        ExpressionCorpus([str(p) for p in cell_files], val_fraction=0.3).gene_medians(1e4)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_a_batch_reads_only_its_rows_and_zarr_reads_alike(cell_files, tmp_path, monkeypatch):
    zarr_path = tmp_path / "part0.zarr"
    anndata.read_h5ad(cell_files[0]).write_zarr(zarr_path)
    h5ad, zarr = (ExpressionCorpus([str(p)], val_fraction=0.2) for p in (cell_files[0], zarr_path))
    read = []
    original = CountFile.read_rows
    monkeypatch.setattr(
        CountFile, "read_rows", lambda self, rows: read.append(len(rows)) or original(self, rows)
    )
    from_zarr = CellBatches(zarr, seed=3).batch(5, [1, 6])
    np.testing.assert_array_equal(from_zarr, CellBatches(h5ad, seed=3).batch(5, [1, 6]))
    assert read == [2, 2]


def test_dense_counts_read_like_csr(cell_files, tmp_path):
    adata = anndata.read_h5ad(cell_files[1])
    adata.X = adata.X.toarray()
    adata.write_h5ad(tmp_path / "dense.h5ad")
    dense, csr = CountFile(tmp_path / "dense.h5ad"), CountFile(cell_files[1])
    rows = [7, 3, 3, 4, 5, 59]
    np.testing.assert_array_equal(dense.read_rows(rows).toarray(), csr.read_rows(rows).toarray())
    np.testing.assert_array_equal(dense.read_block(0, 60).toarray(), adata.X)


def test_h5ad_with_csc_counts_is_refused(cell_files, tmp_path):
    adata = anndata.read_h5ad(cell_files[0])
    adata.X = adata.X.tocsc()
    adata.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ExpressionDataError, match=r"csc\.h5ad: X is stored as CSC"):
        ExpressionCorpus([str(tmp_path / "csc.h5ad")])


def test_packed_dna_maps_to_the_same_windows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    first = "".join(rng.choice(list("ACGT"), 3000)) + "N" * 40 + "ACGTRY" * 50
    second = "".join(rng.choice(list("ACGTacgt"), 2000))
    fasta = tmp_path / "two.fa"
    fasta.write_text(f">one\n{first}\n>two\n{second}\n")
    packed = tmp_path / "packed"
    assert cli.main(["prepare", "dna", str(fasta), "--out", str(packed)]) == 0
    assert "2 records, 5,340 bases (140 N)" in capsys.readouterr().err
    mapped, read = (DnaCorpus([str(c)], val_fraction=0.1) for c in (packed, fasta))
    for a, b in zip(mapped.records, read.records, strict=True):
        assert isinstance(a, np.memmap)
        np.testing.assert_array_equal(a, b)
    assert mapped.sources == read.sources and mapped.ambiguous_bases == read.ambiguous_bases
    tokenizer = NucleotideTokenizer()
    windows = [MaskedWindows(c, tokenizer, 64, seed=1) for c in (mapped, read)]
    for part in (TRAIN, VALIDATION):
        a, b = (w.batch(2, range(6), part) for w in windows)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)

    assert cli.main(["prepare", "dna", str(fasta), "--out", str(packed)]) == 2
    assert "exists already" in capsys.readouterr().err
    with open(packed / BASES_FILE, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CorpusError, match="should hold 5,340 bytes"):
        DnaCorpus([str(packed)])
