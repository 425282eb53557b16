"""he/: every user mistake raises a specific error with a useful message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import he


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), he.Square(), nn.Linear(5, 3))
    plan = he.compile(model, (6,))
    return model, plan, he.keygen(plan)


@pytest.mark.parametrize("layer, hint", [
    (nn.ReLU(), "PolyReLU"), (nn.MaxPool2d(2), "AvgPool2d"), (nn.SiLU(), "PolySiLU"),
    (nn.Softmax(dim=1), "argmax"), (nn.LSTM(2, 2), "not supported"),
])
def test_unsupported_layers_named_with_replacement(layer, hint) -> None:
    with pytest.raises(he.UnsupportedLayerError) as e:
        he.compile(nn.Sequential(nn.Linear(4, 4), layer), (4,))
    assert type(layer).__name__ in str(e.value) and hint in str(e.value)


def test_non_sequential_model_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) * 2

    with pytest.raises(he.UnsupportedLayerError, match="nn.Sequential"):
        he.compile(Net(), (3,))


def test_high_degree_poly_refused() -> None:
    with pytest.raises(ValueError, match="degree <= 2"):
        he.Poly((0, 1, 0, 1))


def test_depth_caught_at_compile_time(setup) -> None:
    deep = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(2, 2), he.Square())])
    with pytest.raises(he.DepthError, match="levels"):
        he.compile(deep, (2,))
    _, _, keys = setup
    five = nn.Sequential(nn.Linear(2, 2), he.Square(), nn.Linear(2, 2), he.Square(), nn.Linear(2, 2))
    with pytest.raises(he.DepthError, match="at most 3"):
        he.compile(five, (2,), context=keys.public())
    with pytest.raises(he.DepthError, match="at most 4"):
        he.compile(five, (2,), max_depth=4)


def test_key_too_shallow_for_plan_at_evaluate(setup) -> None:
    five = nn.Sequential(nn.Linear(6, 2), he.Square(), nn.Linear(2, 2), he.Square(), nn.Linear(2, 2))
    plan5 = he.compile(five, (6,))
    _, _, keys = setup
    with pytest.raises(he.DepthError, match="keygen"):
        plan5.evaluate(he.encrypt(keys, torch.randn(2, 6)))


def test_wrong_shapes(setup) -> None:
    _, plan, keys = setup
    with pytest.raises(he.ShapeError, match="shape"):
        plan.evaluate(he.encrypt(keys, torch.randn(2, 7)))
    with pytest.raises(he.ShapeError, match="batch"):
        he.encrypt(keys, torch.randn(6))
    with pytest.raises(he.ShapeError, match="at most 4096"):
        he.encrypt(keys, torch.zeros(4097, 6), packing="batch")
    with pytest.raises(he.ShapeError, match="one query"):
        he.encrypt(keys, torch.zeros(2, 6), packing="single")
    with pytest.raises(he.ShapeError, match="NaN"):
        he.encrypt(keys, torch.full((1, 6), float("nan")))


def test_other_context(setup) -> None:
    _, plan, keys = setup
    other = he.keygen(plan)
    enc = he.encrypt(keys, torch.randn(2, 6))
    with pytest.raises(he.ContextMismatchError, match="another key"):
        he.EncryptedBatch.load(other.public(), enc.serialize())
    with pytest.raises(he.ContextMismatchError):
        plan.evaluate(enc, context=other.public())
    out, _ = plan.evaluate(enc)
    with pytest.raises(he.ContextMismatchError, match="another key"):
        he.decrypt(other, out)
    with pytest.raises(he.ContextMismatchError):
        he.EncryptedOutput.load(other, out.serialize())


def test_public_context_lacking_keys(setup) -> None:
    _, plan, keys = setup
    x = torch.randn(1, 6)
    no_rot = he.PublicContext.load(keys.public(galois=False).serialize())
    enc = he.EncryptedBatch.load(no_rot, he.encrypt(keys, x, packing="single").serialize())
    with pytest.raises(he.MissingKeyError, match="Galois"):
        plan.evaluate(enc)
    no_relin = keys.public(relin=False)
    with pytest.raises(he.MissingKeyError, match="relinearization"):
        plan.evaluate(he.EncryptedBatch.load(no_relin, he.encrypt(keys, x).serialize()))
    # A key made for another plan lacks this plan's rotations.
    other = he.keygen(he.compile(nn.Sequential(he.Square(), he.Square(), nn.Linear(6, 3)), (6,)))
    wide = he.compile(nn.Sequential(nn.Linear(6, 64), he.Square(), nn.Linear(64, 2)), (6,))
    assert not wide.rotation_steps <= other.galois_steps
    with pytest.raises(he.MissingKeyError, match="rotation steps"):
        wide.evaluate(he.encrypt(other, x, packing="single"))


def test_model_plan_mismatch(setup) -> None:
    model, plan, _ = setup
    plan.verify(model)
    changed = nn.Sequential(nn.Linear(6, 5), he.Square(), nn.Linear(5, 3))
    with pytest.raises(he.PlanMismatchError, match="compile it again"):
        plan.verify(changed)


def test_garbage_bytes(setup) -> None:
    _, _, keys = setup
    for bad in (b"", b"\x00garbage", he.keygen(depth=1, single_query=False).public().serialize()):
        with pytest.raises(he.SerializationError):
            he.EncryptedBatch.load(keys.public(), bad)
    with pytest.raises(he.SerializationError):
        he.PublicContext.load(b"nope")


def test_decrypt_needs_secret(setup) -> None:
    _, plan, keys = setup
    out, _ = plan.evaluate(he.encrypt(keys, torch.randn(2, 6)))
    with pytest.raises(he.HEError, match="secret"):
        he.decrypt(keys.public(), out)
