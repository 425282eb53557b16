"""Private inference on scikit-learn's digits with CKKS (he/).

Trains a small HE-friendly MLP (square activation), then plays both roles:
the querying party encrypts the whole test set as ONE batch-packed query
(feature-major, up to N/2 queries per ciphertext) and one query in
single-query packing; the answering party evaluates its model on the
ciphertexts with only the public context and returns masked logits
f(x) - r; the querying party decrypts. Adding r back (in CaPC it stays
secret-shared) must give the plaintext model's predictions.

    python examples/he_digits.py
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import he


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def train(Xtr: torch.Tensor, ytr: torch.Tensor, epochs: int = 300) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), he.Square(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xtr), ytr).backward()
        opt.step()
    return model.eval()


def main() -> None:
    Xtr, ytr, Xte, yte = digits()
    model = train(Xtr, ytr)
    with torch.no_grad():
        logits = model(Xte).double()
    plain_acc = (logits.argmax(1) == yte).double().mean().item()

    # Answering party: compile its own model.
    plan = he.compile(model, (64,))
    # Querying party: keys for this plan; only the public context leaves.
    t = time.perf_counter()
    keys = he.keygen(plan)
    t_keygen = time.perf_counter() - t
    public_bytes = keys.public().serialize()

    # Batch packing: the whole test set is one query message.
    t = time.perf_counter()
    query = he.encrypt(keys, Xte).serialize()
    t_enc = time.perf_counter() - t
    ap_ctx = he.PublicContext.load(public_bytes)
    t = time.perf_counter()
    out, r = plan.evaluate(he.EncryptedBatch.load(ap_ctx, query), mask=True)
    t_eval = time.perf_counter() - t
    answer = out.serialize()
    mine = he.decrypt_share(keys, he.EncryptedOutput.load(keys, answer))  # uniform on its own
    enc_logits = torch.from_numpy(he.open_shares(mine, r))  # both shares: only for this demo
    enc_acc = (enc_logits.argmax(1) == yte).double().mean().item()
    agree = (enc_logits.argmax(1) == logits.argmax(1)).double().mean().item()

    # Single-query packing: latency of one query.
    t = time.perf_counter()
    one = he.encrypt(keys, Xte[:1])
    out1, r1 = plan.evaluate(he.EncryptedBatch.load(ap_ctx, one.serialize()))
    y1 = he.reveal(keys, out1, r1)
    t_single = time.perf_counter() - t

    n = len(Xte)
    table = Table(title=f"he/ on sklearn digits ({n} test images, {plan})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in [
        ("CKKS preset", f"N={keys.params.poly_degree}, scale 2^{keys.params.scale_bits}, "
                        f"{sum(keys.params.coeff_bits)} modulus bits"),
        ("plaintext accuracy", f"{plain_acc:.4f}"),
        ("encrypted accuracy", f"{enc_acc:.4f}"),
        ("argmax agreement", f"{agree:.4f}"),
        ("max |enc - plain| logit", f"{(enc_logits - logits).abs().max():.2e}"),
        ("keygen", f"{t_keygen:.2f} s"),
        ("public context", f"{len(public_bytes) / 1e6:.1f} MB"),
        ("batch: encrypt / evaluate", f"{t_enc:.2f} s / {t_eval:.2f} s ({n / t_eval:.0f} queries/s)"),
        ("batch: bytes per query up / down", f"{len(query) / n:.0f} / {len(answer) / n:.0f}"),
        ("single query end to end", f"{t_single:.2f} s (agrees: "
                                    f"{bool(y1.argmax(1) == logits[:1].argmax(1))})"),
    ]:
        table.add_row(k, v)
    Console().print(table)
    assert agree >= 0.999, "encrypted and plaintext predictions disagree"


if __name__ == "__main__":
    main()
