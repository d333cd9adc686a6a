"""What several families share: configs, feature reading, likelihoods, small linear algebra,
implicit gradients, kNN, PCA, the transformer block with its attention, and LoRA.

Nothing here imports a family; the import-linter contracts in ``pyproject.toml`` check it.
"""
