"""Pretraining inputs: the mesh string, the DNA and cell batches, and the clear errors that
bad settings or data give before any compute."""

from __future__ import annotations

import gzip

import anndata
import numpy as np
import pytest

from pretraining import cli, train
from pretraining.dna_data import CorpusError, DnaCorpus, MaskedWindows, resolve
from pretraining.mesh import MeshError, parse_mesh
from zoo.sequence.nucleotides import CLS, MASK, SPECIAL_TOKENS, NucleotideTokenizer


def test_mesh_string_fills_in_the_rest_and_missing_axes():
    assert parse_mesh("data=2,fsdp=-1", 8) == {"data": 2, "fsdp": 4, "model": 1}
    assert parse_mesh("", 8) == {"data": 8, "fsdp": 1, "model": 1}
    assert parse_mesh("data=2, fsdp=2, model=2", 8) == {"data": 2, "fsdp": 2, "model": 2}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("data=2,pipeline=4", "unknown mesh axis 'pipeline'"),
        ("data=3", "3 devices in all, but 8 are available"),
        ("data=-1,model=3", "does not divide the 8 devices"),
        ("data=-1,fsdp=-1", "only one mesh axis may be -1"),
        ("data=two", "not an integer"),
        ("data=2,data=4", "given twice"),
    ],
)
def test_bad_mesh_strings_are_named(spec, message):
    with pytest.raises(MeshError, match=message):
        parse_mesh(spec, 8)


@pytest.fixture(scope="module")
def bacterial_fasta(tmp_path_factory):
    """The NC_008253 genome decompressed (zoo.sequence.fasta.open_text's return annotation trips the
    runtime type checker on gzip files; the subprocess tests read the .gz directly)."""
    from pretraining.sources import dataset

    path = tmp_path_factory.mktemp("dna") / "NC_008253.fa"
    with gzip.open(dataset("bacteria-NC_008253", quiet=True), "rt") as f:
        path.write_text(f.read())
    return str(path)


@pytest.fixture(scope="module")
def bacterial_windows(bacterial_fasta):
    corpus = DnaCorpus([bacterial_fasta], val_fraction=0.05)
    return corpus, MaskedWindows(corpus, NucleotideTokenizer(), 101, seed=7)


def test_masking_follows_bert_proportions(bacterial_windows):
    corpus, windows = bacterial_windows
    batch = windows.batch(0, range(400))
    assert batch.tokens.shape == (400, 101) and batch.positions.shape == (400, 15)
    assert np.all(batch.tokens[:, 0] == CLS)
    shown = np.take_along_axis(batch.tokens, batch.positions, axis=1)
    as_mask = np.mean(shown == MASK)
    unchanged = np.mean(shown == batch.targets)
    # 80 % [MASK]; 10 % kept + 10 % random of which a quarter equals the original
    assert abs(as_mask - 0.8) < 0.02, as_mask
    assert abs(unchanged - (0.1 + 0.1 / 4)) < 0.015, unchanged
    assert np.all(batch.targets >= len(SPECIAL_TOKENS))
    # windows come from both strands: the reverse complement of a window is in the genome
    genome = "".join("ACGTN"[c] for c in corpus.records[0][: corpus.split[0]])
    complement = str.maketrans("ACGT", "TGCA")
    strands = {"forward": 0, "reverse": 0}
    for row in range(40):
        tokens, positions, targets = windows.example(0, row)
        tokens[positions] = targets
        text = "".join(NucleotideTokenizer().decode(tokens[1:]))
        strands["forward"] += text in genome
        strands["reverse"] += text.translate(complement)[::-1] in genome
    assert strands["forward"] + strands["reverse"] == 40
    assert min(strands.values()) >= 8, strands


def test_example_rows_do_not_depend_on_the_batch_split(bacterial_windows):
    _, windows = bacterial_windows
    whole = windows.batch(5, range(8))
    part = windows.batch(5, [2, 3])
    for a, b in zip(whole, part, strict=True):
        np.testing.assert_array_equal(a[2:4], b)
    assert not np.array_equal(windows.batch(6, range(8)).tokens, whole.tokens)


@pytest.fixture
def no_compilation(monkeypatch):
    """Fail loudly if a run gets as far as compiling."""

    def refuse(*args, **kwargs):
        raise AssertionError("the error should have come before compilation")

    monkeypatch.setattr(train, "CompiledSteps", refuse)


def run_cli(argv, capsys) -> str:
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    return err


def test_bad_mesh_on_the_command_line(tmp_path, capsys, no_compilation, bacterial_fasta):
    base = ["dna", bacterial_fasta, "--out", str(tmp_path)]
    assert "unknown mesh axis 'tensor'" in run_cli([*base, "--mesh", "tensor=1"], capsys)
    assert "2 devices in all, but 1 are available" in run_cli([*base, "--mesh", "data=2"], capsys)


def test_every_catalogued_genome_is_a_dna_corpus():
    """The genomes of the published DNA checkpoint's corpus resolve by name (no download:
    the error for an unknown name lists the known ones)."""
    genomes = {"human-chrX-70Mb", "bacteria-NC_008253", "klebsiella-HS11286"}
    with pytest.raises(CorpusError) as error:
        resolve("no-such-genome")
    known = set(str(error.value).split("known datasets: ")[1].split(", "))
    assert genomes <= known, genomes - known
    assert "pasilla-counts" not in known


def test_empty_and_non_dna_fasta(tmp_path, capsys, no_compilation):
    empty = tmp_path / "empty.fa"
    empty.write_text(">nothing here\n\n")
    protein = tmp_path / "protein.fa"
    protein.write_text(">p53\nMEEPQSDPSVEPPLSQETFSDLWKLL\n")
    out = str(tmp_path / "run")
    assert "holds no sequence" in run_cli(["dna", str(empty), "--out", out], capsys)
    err = run_cli(["dna", str(protein), "--out", out], capsys)
    assert "letter 'E' at position 1 is not a nucleotide" in err and "p53" in err
    err = run_cli(["dna", "no-such-genome", "--out", out], capsys)
    assert "neither an existing file nor a known dataset" in err


def test_h5ad_without_integer_counts(tmp_path, capsys, shared_data, no_compilation):
    adata = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")[:50].copy()
    counts = adata.X.toarray()
    adata.X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    err = run_cli(["expression", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "non-integer values" in err and "raw integer counts" in err


@pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")
def test_h5ad_with_repeated_gene_names(tmp_path, capsys, shared_data, no_compilation):
    """An exported model carries its genes (``genes.tsv``), which must be unique: a corpus
    whose var_names repeat is refused when it is read, not after training."""
    adata = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")[:50].copy()
    adata.var_names = ["LYZ" if name == "PPBP" else name for name in adata.var_names]
    path = tmp_path / "repeated.h5ad"
    adata.write_h5ad(path)
    err = run_cli(["expression", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "repeated.h5ad" in err and "the gene 'LYZ' is repeated" in err
    assert "var_names_make_unique" in err


def test_bad_settings_are_refused_before_jax_work(tmp_path, capsys, no_compilation):
    base = ["dna", "bacteria-NC_008253", "--out", str(tmp_path)]  # never read
    err = run_cli([*base, "--batch-size", "30", "--accumulate", "4"], capsys)
    assert "multiple of accumulate_steps" in err
    assert "dropout must be in [0, 1)" in run_cli([*base, "--dropout", "1.5"], capsys)
