"""Machine learning the protocols call: data sets and splits, model architectures,
the one training loop, PRECODE, gradient-inversion attacks, data valuation.

No messages, files or process-wide state here; seeds only make public choices
(splits, initialisation) reproducible.
"""
