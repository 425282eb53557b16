"""he/ on real data: a square-activation MLP trained on sklearn digits keeps its
predictions under encryption (full test set, one batch-packed query)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import he

_spec = importlib.util.spec_from_file_location(
    "he_digits_example", Path(__file__).resolve().parent.parent / "examples" / "he_digits.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def test_digits_argmax_agreement_full_test_set() -> None:
    Xtr, ytr, Xte, yte = example.digits()
    model = example.train(Xtr, ytr, epochs=200)
    with torch.no_grad():
        logits = model(Xte).double()
    assert (logits.argmax(1) == yte).double().mean() > 0.9
    plan = he.compile(model, (64,))
    keys = he.keygen(plan, single_query=False)
    ctx = he.PublicContext.load(keys.public().serialize())
    enc = he.EncryptedBatch.load(ctx, he.encrypt(keys, Xte).serialize())
    assert enc.batch == len(Xte) == 450
    out, r = plan.evaluate(enc, mask=True)
    got = he.reveal(keys, he.EncryptedOutput.load(keys, out.serialize()), r)
    agree = (got.argmax(1) == logits.argmax(1)).double().mean().item()
    assert agree >= 0.999
