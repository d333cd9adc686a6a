"""kallisto/Salmon-style quantification: equivalence classes (``equivalence_classes``), reading
kallisto's output (``kallisto_io``) and the `DifferentiableEMQuantifier` (``model``).
"""
