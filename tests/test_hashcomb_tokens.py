"""Compact Hash-Comb tokens (privacy/hashcomb_tokens.py): round trips, the aggregator's view,
the aggregate's coding and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpc import wire
from privacy import hashcomb_tokens as ht
from privacy.hashcomb_tokens import TokenCounts, TokenFormatError, TokenPermutation

KEY = bytes(range(32))


@pytest.mark.parametrize("bits", [2, 5, 8, 9, 12, 16])
def test_permutation_round_trips_and_is_a_bijection_per_coordinate(bits):
    dim = 50
    perm = TokenPermutation(KEY, dim, bits)
    everything = np.arange(1 << bits)
    for c in (0, 17, 49):
        # every label of coordinate c, through the network: a bijection of [0, 2^bits)
        images = np.array([perm.forward(np.full(dim, v))[c] for v in everything[:64]])
        assert np.unique(images).size == images.size
    labels = np.random.default_rng(bits).integers(0, 1 << bits, dim)
    tokens = perm.forward(labels)
    assert int(tokens.max()) < 1 << bits
    assert np.array_equal(perm.inverse(tokens, np.arange(dim)), labels)


def test_full_bijection_on_one_coordinate():
    perm = TokenPermutation(KEY, 1, 8)
    images = [int(perm.forward(np.array([v]))[0]) for v in range(256)]
    assert sorted(images) == list(range(256))


def test_upload_packs_to_bits_per_coordinate():
    tokens = np.random.default_rng(0).integers(0, 512, 1000)
    data = ht.pack_upload(tokens, 9)
    assert len(data) == math.ceil(9 * 1000 / 8)
    assert np.array_equal(ht.unpack_upload(data, 9, 1000), tokens)
    with pytest.raises(TokenFormatError, match="1000 9-bit tokens"):
        ht.unpack_upload(data[:-1], 9, 1000)
    with pytest.raises(TokenFormatError, match="packed bytes"):
        ht.unpack_upload("text", 9, 1000)


@pytest.mark.parametrize("bits,owners,dim", [(8, 5, 3000), (9, 5, 500), (8, 2, 300), (8, 12, 200),
                                             (3, 20, 100), (16, 6, 300), (16, 1, 10)])
def test_aggregate_round_trips_through_the_wire(bits, owners, dim):
    rng = np.random.default_rng(bits * owners)
    centre = rng.integers(0, 1 << bits, dim)
    uploads = (centre + rng.integers(-2, 3, (owners, dim))) % (1 << bits)
    agg = TokenCounts.of(uploads, bits)
    back = TokenCounts.from_wire(wire.decode(wire.encode(agg.to_wire())), dim=dim, owners=owners,
                                 bits=bits)
    for a, b in ((agg.lengths, back.lengths), (agg.tokens, back.tokens), (agg.counts, back.counts)):
        assert np.array_equal(a, b)
    # the counts are the uploads' multisets, coordinate by coordinate
    for c in (0, dim // 2, dim - 1):
        sel = back.coordinates() == c
        assert sorted(np.repeat(back.tokens[sel], back.counts[sel]).tolist()) == sorted(uploads[:, c].tolist())


def test_aggregate_size_is_the_coded_size():
    """lengths and counts are small; the sets cost log2 C(2^bits, d) bits each."""
    rng = np.random.default_rng(1)
    owners, dim, bits = 5, 20_000, 8
    uploads = np.stack([TokenPermutation(KEY, dim, bits).forward(labels)
                        for labels in np.clip(rng.normal(128, 1.0, (owners, dim)), 0, 255).astype(int)])
    agg = TokenCounts.of(uploads, bits)
    w = agg.to_wire()
    set_bits = sum((math.comb(256, d) - 1).bit_length() * int((agg.lengths == d).sum())
                   for d in range(1, owners + 1))
    assert len(w["sets"]) == math.ceil(set_bits / 8)
    total = len(wire.encode(w))
    assert total < 4 * dim, f"{total / dim:.2f} bytes per coordinate at {agg.lengths.mean():.2f} distinct"


def _counts_wire(**change):
    agg = TokenCounts.of(np.array([[1, 2, 3], [1, 5, 3], [4, 2, 3]]), 8)
    return {**agg.to_wire(), **change}


@pytest.mark.parametrize("change,match", [
    ({"dim": 4}, "not for 3 coordinates"),
    ({"sets": b"\x00"}, "does not unpack"),
    ({"sets": "x"}, "sets stream is malformed"),
    ({"counts": {"z": True, "data": b"not zlib"}}, "does not decompress"),
    ({"lengths": {"z": False}}, "lengths stream is malformed"),
])
def test_malformed_aggregates_are_refused(change, match):
    with pytest.raises(TokenFormatError, match=match):
        TokenCounts.from_wire(_counts_wire(**change), dim=3, owners=3, bits=8)


def test_counts_that_do_not_add_up_are_refused():
    agg = TokenCounts.of(np.array([[1, 2], [1, 5], [4, 2], [7, 2], [7, 2]]), 8)
    assert agg.lengths.tolist() == [3, 2]
    w = agg.to_wire()
    # claim 4 + 4 of 5 owners sent the first two tokens of coordinate 0
    forged = TokenCounts(2, 5, 8, agg.lengths, agg.tokens, np.array([4, 4, 1, 4, 1])).to_wire()
    w["counts"] = forged["counts"]
    with pytest.raises(TokenFormatError, match="do not add up"):
        TokenCounts.from_wire(w, dim=2, owners=5, bits=8)


# --------------------------------------------------------------------------- the aggregator's view

def _xor_mask_design(labels: np.ndarray, seed: int) -> np.ndarray:
    """The 64-bit design before issue 17, shrunk to 8 bits: one table per round XOR a
    per-coordinate mask (the defence switched off, for the test to catch)."""
    rng = np.random.default_rng(seed)
    table = rng.permutation(256)
    mask = rng.integers(0, 256, labels.shape[-1])
    return table[labels] ^ mask


def _cross_coordinate_leak(tokens_a: np.ndarray, tokens_b: np.ndarray) -> float:
    """Chi-square (per degree of freedom) of the XOR of two owners' tokens over the
    coordinates where they hold the same pair of different nodes. Close to 1 when the
    view only shows per-coordinate equality; huge when it relates coordinates."""
    d = (tokens_a ^ tokens_b).astype(np.int64)
    counts = np.bincount(d, minlength=256)[1:]
    expected = d.size / 255
    return float(((counts - expected) ** 2 / expected).sum() / 254)


def test_aggregator_view_is_only_per_coordinate_equality():
    dim = 200_000
    # owner A holds node 100 and owner B node 101 at every coordinate: all that the
    # aggregator may learn is that they differ, coordinate by coordinate
    a, b = np.full(dim, 100), np.full(dim, 101)
    perm = TokenPermutation(KEY, dim, 8)
    ta, tb = perm.forward(a), perm.forward(b)
    assert np.all(ta != tb)                                   # equality within a coordinate kept
    assert _cross_coordinate_leak(ta, tb) < 1.3               # nothing across coordinates
    # tokens of one node across coordinates are uniform too (no frequency analysis)
    hist = np.bincount(ta, minlength=256)
    assert ((hist - dim / 256) ** 2 / (dim / 256)).sum() / 255 < 1.3
    # the defence off: the old table XOR mask design relates every coordinate
    assert _cross_coordinate_leak(_xor_mask_design(a, 1), _xor_mask_design(b, 1)) > 1000


def test_token_pairs_are_uniform_over_distinct_pairs():
    """The joint law of two nodes' tokens at a coordinate: uniform over the 256 x 255 pairs."""
    dim = 600_000
    perm = TokenPermutation(KEY, dim, 8)
    ta, tb = perm.forward(np.zeros(dim, int)), perm.forward(np.full(dim, 255))
    cells = np.bincount(ta.astype(np.int64) * 256 + tb, minlength=65536)
    cells = np.delete(cells, np.arange(256) * 257)   # the diagonal is impossible
    assert cells.sum() == dim
    e = dim / cells.size
    chi = ((cells - e) ** 2 / e).sum()
    dof = cells.size - 1
    assert abs(chi - dof) < 6 * math.sqrt(2 * dof), chi


def test_permutations_of_different_keys_are_unrelated():
    dim = 10_000
    labels = np.random.default_rng(3).integers(0, 256, dim)
    t1 = TokenPermutation(KEY, dim, 8).forward(labels)
    t2 = TokenPermutation(ht.permutation_key(KEY, b"round 2"), dim, 8).forward(labels)
    assert np.mean(t1 == t2) < 0.01
