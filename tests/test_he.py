"""he/: encrypted evaluation matches the plaintext model, in both packings.

Tolerance (stated in docs/he.md): |open(shares of evaluate(encrypt(x))) - model(x)|
<= 1e-2 * (1 + max |model(x)|) for the depth <= 5 presets (scale 2^25..2^26).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import he


def tol(ref: torch.Tensor) -> float:
    return 1e-2 * (1.0 + float(ref.abs().max()))


def _bn(bn: nn.Module, g: torch.Generator) -> nn.Module:
    # Non-trivial running statistics so folding BatchNorm is really exercised.
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    bn.weight.data.copy_(torch.randn(bn.num_features, generator=g) * 0.5 + 1)
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
    return bn


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    g = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)
    return {
        "linear": (nn.Sequential(nn.Linear(12, 5)), (12,)),
        "mlp_square": (nn.Sequential(nn.Linear(10, 16), he.Square(), nn.Linear(16, 4)), (10,)),
        "conv_avgpool_bn": (nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), _bn(nn.BatchNorm2d(3), g), he.Square(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(27, 5)), (2, 6, 6)),
        "conv_stride_polyrelu": (nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2), he.PolyReLU(), nn.Flatten(), nn.Linear(36, 6),
            _bn(nn.BatchNorm1d(6), g), he.PolySiLU(), nn.Linear(6, 3)), (1, 7, 7)),
        "conv1d_avgpool1d": (nn.Sequential(
            nn.Conv1d(2, 3, 3), nn.AvgPool1d(2), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(9, 4)), (2, 8)),
        "act_first_and_last": (nn.Sequential(
            he.Square(), nn.Linear(8, 6), he.Poly((0.1, 0.5, 0.25))),
            (8,)),
        "bn_after_activation": (nn.Sequential(
            nn.Linear(6, 5), he.Square(), _bn(nn.BatchNorm1d(5), g), nn.Identity(),
            nn.Linear(5, 3)), (6,)),
    }


MODELS = _models()


@pytest.fixture(scope="module")
def plans() -> dict[str, he.Plan]:
    return {k: he.compile(m, s) for k, (m, s) in MODELS.items()}


@pytest.fixture(scope="module")
def keys(plans: dict[str, he.Plan]) -> he.Keys:
    # One querying-party key shared by answering parties with different models.
    return he.keygen(list(plans.values()))


@pytest.fixture(scope="module")
def wire_ctx(keys: he.Keys) -> he.PublicContext:
    # What an answering party holds: the public context after crossing the wire.
    return he.PublicContext.load(keys.public().serialize())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("packing", ["batch", "single"])
def test_encrypted_matches_plaintext(name: str, packing: str, plans, keys, wire_ctx) -> None:
    model, shape = MODELS[name]
    model.eval()
    plan = plans[name]
    batch = 7 if packing == "batch" else 1
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
    enc = he.encrypt(keys, x, packing=packing)
    assert enc.packing == packing
    # The query and the answer cross the wire as bytes.
    enc2 = he.EncryptedBatch.load(wire_ctx, enc.serialize())
    out, r = plan.evaluate(enc2, mask=True)
    out2 = he.EncryptedOutput.load(keys, out.serialize())
    y = he.decrypt_share(keys, out2)
    with torch.no_grad():
        ref = model(x).double().reshape(batch, -1)
    assert y.shape == r.shape == ref.shape
    assert y.dtype == r.dtype == np.uint64  # ring shares, as the 2PC takes them
    assert (torch.from_numpy(he.open_shares(y, r)) - ref).abs().max() <= tol(ref), name


def test_auto_packing_choice(keys) -> None:
    x = torch.randn(1, 12)
    assert he.encrypt(keys, x).packing == "single"
    assert he.encrypt(keys, torch.randn(3, 12)).packing == "batch"
    assert he.encrypt(keys.public(galois=False), x).packing == "batch"


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 40), scale=st.floats(0.01, 3.0))
def test_random_inputs_property(plans, keys, seed: int, batch: int, scale: float) -> None:
    model, shape = MODELS["conv_avgpool_bn"]
    model.eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)) * scale
    out, r = plans["conv_avgpool_bn"].evaluate(he.encrypt(keys.public(), x, packing="batch"))
    with torch.no_grad():
        ref = model(x).double()
    assert (he.reveal(keys, out, r) - ref).abs().max() <= tol(ref)


def test_mask_hides_and_is_fresh(plans, keys) -> None:
    model, shape = MODELS["mlp_square"]
    x = torch.randn(5, *shape)
    enc = he.encrypt(keys, x)
    out1, r1 = plans["mlp_square"].evaluate(enc)
    out2, r2 = plans["mlp_square"].evaluate(enc)
    with torch.no_grad():
        ref = model(x).double()
    # A masked output refuses plain decryption; the shares are fresh ring elements.
    with pytest.raises(he.HEError, match="masked"):
        he.decrypt(keys, out1)
    y1 = he.decrypt_share(keys, out1)
    assert not np.array_equal(r1, r2) and not np.array_equal(y1, he.decrypt_share(keys, out2))
    assert (he.reveal(keys, out2, r2) - ref).abs().max() <= tol(ref)
    # Without a mask there is no share, and the output decrypts to the logits.
    out0, r0 = plans["mlp_square"].evaluate(enc, mask=False)
    assert r0 is None and not out0.masked
    assert (he.decrypt(keys, out0) - ref).abs().max() <= tol(ref)


def test_unused_slots_are_masked(plans, keys) -> None:
    # Slots beyond the batch would hold f(0) (the model's bias) if left unmasked.
    model, shape = MODELS["linear"]
    enc = he.encrypt(keys, torch.randn(2, *shape))
    out, _ = plans["linear"].evaluate(enc)
    from tenseal import sealapi as seal
    pt = seal.Plaintext()
    keys.decryptor.decrypt(out.ciphertexts[0], pt)
    tail = np.asarray(keys.encoder.decode_double(pt))[2:]
    bias = float(model[0].bias[0].detach())
    assert np.abs(tail - bias).min() > 1.0


def test_shares_decode_like_seal(keys) -> None:
    """he/share.py's exact decoding agrees with SEAL's float decoder on unmasked values."""
    from tenseal import sealapi as seal

    from he import share
    values = np.random.default_rng(3).normal(0, 50, keys.params.slots)
    pt = seal.Plaintext()
    keys.encoder.encode(values.tolist(), keys.params.scale, pt)
    moduli = share.primes(keys.seal, pt.parms_id())
    q = math.prod(moduli)
    coeffs = share.to_integers(share.plaintext_residues(keys, pt)[:, None, :], moduli)
    negative = coeffs > q // 2  # centred coefficients, as shares of +c and -c
    plus, minus = np.where(negative, 0, coeffs), np.where(negative, q - coeffs, 0)
    slots = np.array([0, 1, 2, 77, keys.params.slots - 1])
    got = share.open_shares(share.slot_shares(plus, q, pt.scale, slots),
                            np.uint64(0) - share.slot_shares(minus, q, pt.scale, slots))[0]
    assert np.abs(got - np.asarray(keys.encoder.decode_double(pt))[slots]).max() < 1e-4


def test_keys_serialize_and_public_has_no_secret(keys) -> None:
    pub_bytes = keys.public().serialize()
    sec_bytes = keys.serialize()
    assert len(sec_bytes) > len(pub_bytes)
    with pytest.raises(he.SerializationError):
        he.Keys.load(pub_bytes)
    keys2 = he.Keys.load(sec_bytes)
    assert keys2.key_id == keys.key_id
    enc = he.encrypt(keys2, torch.randn(3, 12))
    plan = he.compile(MODELS["linear"][0], (12,))
    out, r = plan.evaluate(he.EncryptedBatch.load(he.PublicContext.load(pub_bytes), enc.serialize()))
    assert (he.reveal(keys, out, r)).shape == (3, 5)
    assert he.decrypt_share(keys, out).shape == (3, 5)
    sizes = keys.public().sizes()
    assert sizes["gk"] > 0 and sizes["rk"] > 0 and sizes["pk"] > 0


def test_galois_keys_are_exactly_what_the_plan_needs(plans) -> None:
    plan = plans["conv_avgpool_bn"]
    k = he.keygen(plan)
    assert k.galois_steps == plan.rotation_steps
    assert he.keygen(plan, single_query=False).galois_keys is None
    k_any = he.keygen(depth=2)
    assert k_any.galois_steps == {1 << j for j in range(12)}  # all powers of two < N/2


def test_keygen_preset_grows_with_depth() -> None:
    small, big = he.keygen(depth=3, single_query=False), he.keygen(depth=7, single_query=False)
    assert small.params.poly_degree == 8192 and big.params.poly_degree == 16384
    assert small.params.depth >= 3 and big.params.depth >= 7
    from tenseal import sealapi as seal
    for k in (small, big):
        bits = sum(k.params.coeff_bits)
        assert bits <= seal.CoeffModulus.MaxBitCount(k.params.poly_degree, seal.SEC_LEVEL_TYPE.TC128)


def test_deeper_model_on_16384() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(6, 6), he.Square())],
                          nn.Linear(6, 2))
    for p in model.parameters():
        p.data *= 0.6
    plan = he.compile(model, (6,))
    assert plan.depth == 7
    keys = he.keygen(plan)
    assert keys.params.poly_degree == 16384
    x = torch.randn(1, 6)
    out, r = plan.evaluate(he.encrypt(keys, x))
    with torch.no_grad():
        ref = model(x).double()
    assert (he.reveal(keys, out, r) - ref).abs().max() <= tol(ref)
