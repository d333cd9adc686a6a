"""Matching a user's genes to a model's vocabulary: by ID or symbol, case and version blind,
zero-filled where missing, refused where too little matches or a gene appears twice."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from zoo.expression.gene_vocabulary import GeneMatchError, GeneVocabulary, normalise_gene_name

VOCABULARY = GeneVocabulary(
    gene_ids=("ENSG00000163736", "ENSG00000090382", "ENSG00000163220", "", "ENSG00000115523"),
    symbols=("PPBP", "LYZ", "S100A9", "RP11-34P13.7", "GNLY"),
)


@pytest.fixture(scope="module")
def pbmc3k(shared_data):
    return anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad")


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("ENSG00000141510.17", "ENSG00000141510"),
        ("ensmusg00000059552.3", "ENSMUSG00000059552"),
        ("RP11-34P13.7", "RP11-34P13.7"),  # a symbol keeps its dot
        (" cd3e ", "CD3E"),
    ],
)
def test_names_are_compared_case_and_version_blind(name, normalised):
    assert normalise_gene_name(name) == normalised


def test_real_pbmc3k_symbols_in_another_order_and_case_line_up_column_by_column(pbmc3k):
    vocabulary = GeneVocabulary.from_names(list(pbmc3k.var_names[:300]))
    rng = np.random.default_rng(0)
    keep = rng.permutation(2000)[:1800]  # shuffled, and some vocabulary genes dropped
    user = anndata.AnnData(
        X=pbmc3k.X[:50][:, keep],
        var=pd.DataFrame(index=[n.lower() for n in pbmc3k.var_names[keep]]),
    )
    match = vocabulary.match(user.var)
    assert match.matched_by == ("var_names", "symbol")
    present = np.isin(np.arange(300), keep)
    assert match.n_matched == present.sum()
    counts = match.counts(user.X)
    dense = pbmc3k.X[:50].toarray()
    np.testing.assert_array_equal(counts[:, present], dense[:, :300][:, present])
    np.testing.assert_array_equal(counts[:, ~present], 0)
    assert set(match.missing) == set(pbmc3k.var_names[:300][~present])
    assert f"{present.sum():,} of 300" in match.report()


def test_versioned_ensembl_ids_in_a_var_column_win_over_symbols():
    var = pd.DataFrame(
        {"gene_ids": ["ENSG00000090382.7", "ENSG00000163736.4", "ENSG00000999999.1"]},
        index=["lyz", "something-else", "XIST"],
    )
    match = VOCABULARY.match(var, min_fraction=0.4)
    assert match.matched_by == ("var['gene_ids']", "gene_id")
    np.testing.assert_array_equal(match.columns, [1, 0, -1, -1, -1])


def test_missing_genes_are_listed_most_expressed_first():
    match = VOCABULARY.match(["PPBP", "LYZ", "GNLY"], expression=np.array([5, 1, 3, 9, 2]))
    assert match.missing == ("RP11-34P13.7", "S100A9")


def test_too_few_genes_is_an_error_not_a_quiet_embedding():
    with pytest.raises(GeneMatchError, match=r"only 2 of 5 model genes \(40.0%\).*below the 50%"):
        VOCABULARY.match(["PPBP", "lyz", "CD3E", "MS4A1"])


def test_a_gene_claimed_by_two_columns_is_named():
    with pytest.raises(GeneMatchError, match=r"'LYZ' appears twice.*'lyz' \(column 1\).*'LYZ'"):
        VOCABULARY.match(["PPBP", "lyz", "GNLY", "LYZ", "S100A9"])


def test_sparse_counts_are_read_column_by_column():
    counts = scipy.sparse.csr_matrix(np.arange(12, dtype=np.float32).reshape(3, 4))
    match = VOCABULARY.match(["GNLY", "PPBP", "S100A9", "unknown"], min_fraction=0.5)
    np.testing.assert_array_equal(
        match.counts(counts), [[1, 0, 2, 0, 0], [5, 0, 6, 0, 4], [9, 0, 10, 0, 8]]
    )


def test_genes_tsv_round_trips_and_bad_files_name_the_line(tmp_path):
    path = VOCABULARY.write(tmp_path / "genes.tsv")
    assert GeneVocabulary.read(path) == VOCABULARY
    path.write_text("gene_id\tsymbol\nENSG1\tA\nENSG2\n")
    with pytest.raises(GeneMatchError, match=r"genes.tsv:3: expected 2 fields"):
        GeneVocabulary.read(path)
    path.write_text("symbol\nA\n")
    with pytest.raises(GeneMatchError, match="first line must be"):
        GeneVocabulary.read(path)
    with pytest.raises(GeneMatchError, match="symbols repeats LYZ"):
        GeneVocabulary(("", ""), ("LYZ", "lyz"))
