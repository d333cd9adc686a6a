"""How weights are stored and moved: the checkpoint folder format (config.json +
safetensors + model card), references to local folders, the catalog and the Hugging Face
Hub, pushing to the Hub, the field's published models loaded in their upstream layout
(`checkpoints.upstream`), export to PyTorch ``transformers``, and the local conversion of a
PyTorch pickle to safetensors."""

from checkpoints.bert_import import import_bert
from checkpoints.card import CardDetails, DataSource, EvaluationResult, TrainingRecord
from checkpoints.convert_bin import convert_bin
from checkpoints.errors import CheckpointError
from checkpoints.esm_import import import_esm
from checkpoints.geneformer_import import find_geneformer_dictionaries, import_geneformer
from checkpoints.pretrained import from_pretrained, load_folder, read_genes, save_pretrained
from checkpoints.references import Provenance, UnpinnedRevisionWarning
from checkpoints.safetensors_format import CorruptWeightsError
from checkpoints.scgpt_import import import_scgpt
from checkpoints.transformers_export import export_transformers
from checkpoints.upload import push_to_hub

__all__ = [
    "CardDetails",
    "CheckpointError",
    "CorruptWeightsError",
    "DataSource",
    "EvaluationResult",
    "Provenance",
    "TrainingRecord",
    "UnpinnedRevisionWarning",
    "convert_bin",
    "export_transformers",
    "find_geneformer_dictionaries",
    "from_pretrained",
    "import_bert",
    "import_esm",
    "import_geneformer",
    "import_scgpt",
    "load_folder",
    "push_to_hub",
    "read_genes",
    "save_pretrained",
]
