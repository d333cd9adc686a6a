"""The categorical hidden Markov model: `DifferentiableHMM` (``model``), the forward-backward and
Viterbi recursions (``inference``) and Baum-Welch / gradient fitting (``fit``).
"""
