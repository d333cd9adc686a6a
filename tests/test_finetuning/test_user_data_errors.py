"""Bad user files: each gets a one-line error naming the file and the row or column, exit
status 1, and no output file."""

import anndata
import numpy as np
import pandas as pd
import pytest

from checkpoints import read_genes
from checkpoints.catalog import CATALOG
from finetuning.cli import main

# the published fm-pbmc3k-tiny's genes (symbols), which user cells are matched to
GENES = list(read_genes(CATALOG["fm-pbmc3k-tiny"].shipped_folder()).symbols)
N_GENES = len(GENES)


def write_table(path, frame):
    frame.to_csv(path, sep="\t", index=False)
    return path


def write_cells(path, counts, genes=None):
    adata = anndata.AnnData(np.asarray(counts, np.float32))
    adata.var_names = genes if genes is not None else GENES[: counts.shape[1]]
    adata.obs["cell_type"] = ["a", "b"] * (counts.shape[0] // 2)
    adata.write_h5ad(path)
    return path


def good_counts():
    return np.random.default_rng(0).poisson(1.0, (4, N_GENES)).astype(np.float32)


def with_cell(counts, row, gene, value):
    counts = counts.copy()
    counts[row, gene] = value
    return counts


def missing_column(tmp):
    return [
        "embed",
        "dna-encoder-tiny",
        str(write_table(tmp / "x.tsv", pd.DataFrame({"seq": ["ACGT"]}))),
    ]


def empty_file(tmp):
    (tmp / "x.tsv").write_text("")
    return ["embed", "dna-encoder-tiny", str(tmp / "x.tsv")]


def one_class(tmp):
    table = pd.DataFrame({"sequence": ["ACGT", "AACC", "GGTT"], "label": ["a", "a", "a"]})
    path = write_table(tmp / "x.tsv", table)
    return [
        "finetune",
        "--train",
        str(path),
        "--base",
        "dna-encoder-tiny",
        "--out",
        str(tmp / "x.out"),
    ]


def bad_letter(tmp):
    table = pd.DataFrame({"sequence": ["ACGT", "ACXT"]})
    return ["embed", "dna-encoder-tiny", str(write_table(tmp / "x.tsv", table))]


def too_long(tmp):
    table = pd.DataFrame({"sequence": ["ACGT", "A" * 300]})
    return ["embed", "dna-encoder-tiny", str(write_table(tmp / "x.tsv", table))]


def cells_command(tmp, counts, genes=None):
    return ["embed", "fm-pbmc3k-tiny", str(write_cells(tmp / "x.h5ad", counts, genes))]


CASES = {
    "missing column": (missing_column, "x.tsv: no sequence column 'sequence'"),
    "empty file": (empty_file, "x.tsv: the file is empty"),
    "one class": (one_class, "x.tsv: column 'label': every label is 'a'"),
    "letter outside the alphabet": (bad_letter, "x.tsv: row 2: letter 'X' at position 2"),
    "sequence too long": (
        too_long,
        "x.tsv: row 2: the sequence has 300 letters, more than the 255",
    ),
    "non-integer counts": (
        lambda tmp: cells_command(tmp, with_cell(good_counts(), 2, 7, 0.5)),
        "x.h5ad: X row 3 (cell '2'), column 8: a non-integer count",
    ),
    "negative counts": (
        lambda tmp: cells_command(tmp, with_cell(good_counts(), 1, 0, -2)),
        "x.h5ad: X row 2 (cell '1'), column 1: a negative count, -2",
    ),
    "duplicated genes": (
        lambda tmp: cells_command(tmp, good_counts(), [GENES[0], *GENES[: N_GENES - 1]]),
        f"x.h5ad: gene {GENES[0]!r} appears twice in the data's var_names",
    ),
    "cell with zero counts": (
        lambda tmp: cells_command(tmp, np.vstack([good_counts()[:3], np.zeros((1, N_GENES))])),
        "x.h5ad: X row 4 (cell '3') has no counts at all",
    ),
    "other genes than the model's": (
        lambda tmp: cells_command(tmp, good_counts()[:, :100]),
        "x.h5ad: only 100 of 2,000 model genes (5.0%) are in the data",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_naming_the_place_and_writes_nothing(tmp_path, capsys, case):
    make_command, expected = CASES[case]
    command = make_command(tmp_path)
    out = tmp_path / ("out.h5ad" if command[-1].endswith(".h5ad") else "out.npy")
    if command[0] == "embed":
        command += ["--out", str(out)]
    assert main(command) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("error: ") and str(tmp_path) in error
    assert expected in error, error
    assert not out.exists() and not (tmp_path / "x.out").exists()
    assert not list(tmp_path.glob(".*partial"))
