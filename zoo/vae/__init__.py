"""scVI as an Equinox model: `VAENormalizer` (``model``), its training loop (``training``) and the
AnnData entry points `fit_vae` / `annotate_vae` (``fit``).
"""
