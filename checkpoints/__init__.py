"""How weights are stored and moved: the checkpoint folder format (config.json +
safetensors + model card)."""

from checkpoints.pretrained import CheckpointError, from_pretrained, save_pretrained
from checkpoints.safetensors_format import CorruptWeightsError

__all__ = ["CheckpointError", "CorruptWeightsError", "from_pretrained", "save_pretrained"]
