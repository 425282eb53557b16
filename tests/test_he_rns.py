"""he/rns.py and he/batch.py: the numpy modular-matmul path equals SEAL's own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tenseal import sealapi as seal
from torch import nn

import he
from he import batch, rns
from he.evaluate import _affine_batch, _Ops

P30 = (1 << 30) - 35  # exactness does not need a prime


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 300), wbits=st.integers(1, 44),
       density=st.sampled_from([0.02, 0.3, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_modmatrix_is_exact(m: int, k: int, wbits: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.integers(-(1 << wbits), 1 << wbits, size=(m, k))
    w[rng.random((m, k)) > density] = 0
    x = rng.integers(0, P30, size=(k, 7), dtype=np.int64)
    x[0] = P30 - 1  # extremes
    got = rns.ModMatrix(w).apply(x.astype(np.uint64), P30)
    ref = [[sum(int(w[i, j]) * int(x[j, c]) for j in range(k)) % P30 for c in range(7)] for i in range(m)]
    assert got.dtype == np.uint64
    assert got.tolist() == ref


def test_modmatrix_splits_wide_weights_into_digits() -> None:
    w = np.full((2, 500), (1 << 40) - 3, dtype=np.int64)
    mm = rns.ModMatrix(w)
    bits, mats = mm._plan(P30 // 2)
    assert bits > 0 and mats[0].shape[0] > 2  # digit matrices stacked
    x = np.full((500, 3), P30 - 2, dtype=np.uint64)
    assert mm.apply(x, P30)[0, 0] == (500 * ((1 << 40) - 3) * (P30 - 2)) % P30


def test_seal_round_is_half_away_from_zero() -> None:
    assert rns.seal_round(np.array([0.5, -0.5, 1.5, 2.5, -2.5])).tolist() == [1, -1, 2, 3, -3]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(20, 9), he.Square(), nn.Linear(9, 4)).eval()
    plan = he.compile(model, (20,))
    keys = he.keygen(plan, single_query=False)
    x = torch.rand(33, 20) * 2 - 1
    enc = he.encrypt(keys, x, packing="batch")
    return model, plan, keys, x, enc


def test_view_reads_and_writes_seal_memory(setup) -> None:
    *_, enc = setup
    ct = enc.ciphertexts[0]
    v = rns.view(ct)
    assert v.shape == (ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())
    dyn = ct.dyn_array()
    for i in (0, 1, 5000, v.size - 1):
        assert int(v.reshape(-1)[i]) == dyn[i]
    old = int(v[1, 0, 0])
    v[1, 0, 0] = 12345
    assert ct.data(1) == 12345
    v[1, 0, 0] = old
    assert batch.available(ct)  # the fast path is what the other he tests exercise


def test_fast_affine_equals_seal_path_bit_for_bit(setup) -> None:
    _, plan, keys, _, enc = setup
    o = _Ops(keys.public())
    cts = [o.copy_at(c, plan.depth) for c in enc.ciphertexts]
    step = plan.steps[0]
    fast = batch.affine(o, cts, step)
    ref = _affine_batch(o, cts, step)
    assert len(fast) == len(ref) == step.W.shape[0]
    for a, b in zip(fast, ref, strict=True):
        assert a.parms_id() == b.parms_id() and a.scale == b.scale
        assert np.array_equal(rns.view(a), rns.view(b))


def test_deferred_relinearization_matches_plaintext(setup) -> None:
    model, plan, keys, x, enc = setup
    o = _Ops(keys.public())
    cts = [o.copy_at(c, plan.depth) for c in enc.ciphertexts]
    h = batch.affine(o, cts, plan.steps[0])
    raw = [o.activation_raw(c, plan.steps[1].beta) for c in h]
    assert raw[0].size() == 3
    out = batch.affine(o, raw, plan.steps[2])
    assert all(c.size() == 2 for c in out)
    # same level and scale as the relinearize-and-rescale-first SEAL path
    seal_path = _affine_batch(o, [o.activation(c, plan.steps[1].beta) for c in h], plan.steps[2])
    assert out[0].parms_id() == seal_path[0].parms_id() and out[0].scale == seal_path[0].scale
    got = []
    for ct in out:
        pt = seal.Plaintext()
        keys.decryptor.decrypt(ct, pt)
        got.append(np.asarray(keys.encoder.decode_double(pt))[: len(x)])
    with torch.no_grad():
        want = model(x).double().numpy()
    assert np.abs(np.stack(got, axis=1) - want).max() < 1e-3


def test_zero_row_gets_fresh_bias_encryption() -> None:
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight[1].zero_()
    model = nn.Sequential(lin, he.Square(), nn.Linear(3, 2)).eval()
    plan = he.compile(model, (6,))
    keys = he.keygen(plan, single_query=False)
    x = torch.rand(5, 6)
    out, r = plan.evaluate(he.encrypt(keys, x, packing="batch"))
    with torch.no_grad():
        assert torch.allclose(he.reveal(keys, out, r), model(x).double(), atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 70), log_slots=st.integers(7, 12), seed=st.integers(0, 2**32 - 1))
def test_first_layer_assigns_every_weight_once(m: int, n: int, log_slots: int, seed: int) -> None:
    """Single-query first layer: simulating out[s] = sum_k p_k[s] x[s+k] and the
    rotate-and-add reduction on the shifted-copies layout gives exactly W v."""
    from he.layers import Affine, pow2
    from he.single import first_layer, layout
    slots = 1 << log_slots
    if max(pow2(m), pow2(n)) > slots:
        return
    rng = np.random.default_rng(seed)
    w, v = rng.normal(size=(m, n)), rng.normal(size=n)
    fl = first_layer(Affine(w, np.zeros(m), "test"), slots)
    assert fl.count <= max(pow2(m), pow2(n))
    x = layout(v, slots)
    out = sum(fl.diagonals[k] * np.roll(x, -k) for k in range(fl.count))
    s = fl.m_p
    while s < slots:
        out = out + np.roll(out, -s)
        s *= 2
    assert np.allclose(out[:m], w @ v) and np.allclose(out, np.tile(out[: fl.m_p], slots // fl.m_p))


def test_single_query_layout_serves_different_models() -> None:
    torch.manual_seed(3)
    a = nn.Sequential(nn.Linear(30, 16), he.Square(), nn.Linear(16, 3)).eval()
    b = nn.Sequential(nn.Linear(30, 5), he.PolyReLU(), nn.Linear(5, 7), he.Square(), nn.Linear(7, 2)).eval()
    pa, pb = he.compile(a, (30,)), he.compile(b, (30,))
    keys = he.keygen([pa, pb])
    x = torch.rand(1, 30)
    enc = he.encrypt(keys, x, packing="single")
    for model, plan in ((a, pa), (b, pb)):
        for _ in range(2):  # the second run uses the cached encoded diagonals
            out, r = plan.evaluate(enc)
            with torch.no_grad():
                assert torch.allclose(he.reveal(keys, out, r), model(x).double(), atol=2e-3)
