"""PHATE as published: the alpha-decay kernel (``alpha_decay``), landmarks (``landmarks``), the
von Neumann entropy that picks t (``von_neumann``), metric MDS (``mds``) and the
`DifferentiablePHATE` model (``model``).
"""
