"""Differential privacy and the Hash-Comb codec: PATE mechanisms and accounting
(:mod:`.pate`), the guardian's budget policy (:mod:`.budget`, pure: the file-backed
ledger in ``parties/`` persists it), and Hash-Comb (:mod:`.hashcomb_codec`).
Noise and keys come from :mod:`mpc.randomness`.
"""
