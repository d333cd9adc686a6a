"""Each published checkpoint loads by its catalog name, offline, and reproduces the
embedding of the fixed real input stored next to it."""

import hashlib
import json
import re

import numpy as np
import pytest

import zoo
from checkpoints.catalog import CATALOG
from finetuning.publish import REFERENCE_FILE, reference_embedding


def test_the_catalog_publishes_both_pretrained_models():
    architectures = {
        json.loads((CATALOG[n].shipped_folder() / "config.json").read_text())["architecture"]
        for n in CATALOG
    }
    assert {"TransformerSequenceEncoder", "DifferentiableFoundationModel"} <= architectures


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_loads_offline_by_name_and_reproduces_its_reference(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, provenance = zoo.from_pretrained(name, with_provenance=True)
    assert provenance.source == "catalog"
    reference = json.loads((provenance.folder / REFERENCE_FILE).read_text())
    embedding = reference_embedding(model, reference["inputs"])
    assert embedding.shape == (len(reference["inputs"]), len(reference["embedding"][0]))
    np.testing.assert_allclose(embedding, np.array(reference["embedding"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_card_states_provenance_and_downstream_results(name):
    card = (CATALOG[name].shipped_folder() / "README.md").read_text()
    assert "## Training data" in card and re.search("sha-?256", card, re.IGNORECASE)
    assert "## Downstream results" in card and "from scratch" in card


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_a_shipped_checkpoint_reports_its_folder_and_digest_not_a_hub_commit(name, capsys):
    from checkpoints.cli import main as hub_main

    _, provenance = zoo.from_pretrained(name, with_provenance=True)
    weights = hashlib.sha256((provenance.folder / "model.safetensors").read_bytes()).hexdigest()
    assert CATALOG[name].commit is None  # shipped only: no Hub repository to name
    assert provenance.repo_id is None and provenance.commit is None
    assert "None" not in str(provenance)
    assert str(provenance.folder) in str(provenance) and weights in str(provenance)
    assert hub_main(["pull", name]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 model.safetensors: {weights}" in printed and "None" not in printed


def test_the_cell_checkpoint_carries_the_genes_it_was_trained_on(shared_data):
    import anndata

    from checkpoints import read_genes

    folder = CATALOG["fm-pbmc3k-tiny"].shipped_folder()
    genes = read_genes(folder)
    trained_on = anndata.read_h5ad(shared_data / "pbmc3k_2000hvg_counts.h5ad", backed="r")
    assert genes.symbols == tuple(trained_on.var_names)
    assert len(genes) == zoo.from_pretrained("fm-pbmc3k-tiny").config.tokenizer.n_genes
    assert read_genes(CATALOG["dna-encoder-tiny"].shipped_folder()) is None
