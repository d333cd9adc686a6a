"""Parametric UMAP: umap-learn's fuzzy graph (``graph``), its optimisation (``training``) and the
`DifferentiableUMAP` model (``model``).
"""
