"""kallisto/Salmon-style quantification: equivalence classes (``equivalence_classes``),
effective lengths from a fragment-length distribution (``effective_lengths``), reading
kallisto's output (``kallisto_io``) and the `DifferentiableEMQuantifier` (``model``).
"""
