import dataclasses
import math
import secrets

import pytest
from Crypto.Protocol.SecretSharing import _Element
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import shamir


@st.composite
def n_t(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    return n, draw(st.integers(min_value=1, max_value=n))


secrets_st = st.one_of(st.integers(min_value=0, max_value=2 ** 300),
                       st.binary(min_size=1, max_size=70),
                       st.lists(st.integers(min_value=0, max_value=2 ** 128 - 1), min_size=1, max_size=5))


@settings(max_examples=60, deadline=None)
@given(secrets_st, n_t(), st.randoms(use_true_random=False))
def test_any_t_shares_reconstruct(secret, nt, rnd):
    n, t = nt
    shares = shamir.share(secret, n, t)
    subset = rnd.sample(shares, t)
    assert shamir.reconstruct(subset) == secret
    assert shamir.reconstruct(shares) == secret  # more than t: cross-checked


def _interpolate(points, x):
    """Value at x of the polynomial through points, in pycryptodome's GF(2^128)."""
    total = _Element(0)
    for j, (xj, yj) in enumerate(points):
        term = _Element(yj)
        for m, (xm, _) in enumerate(points):
            if m != j:
                term = term * (_Element(x) + _Element(xm)) * (_Element(xj) + _Element(xm)).inverse()
        total = total + term
    return total.encode()


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=6), st.binary(min_size=16, max_size=16),
       st.binary(min_size=16, max_size=16))
def test_t_minus_1_shares_fit_every_candidate_secret(t, secret, candidate):
    n = t + 1
    shares = shamir.share(secret, n, t)
    known = shares[: t - 1]
    # For ANY candidate secret there is a polynomial of degree t-1 through the
    # t-1 known shares and (0, candidate): its value at index n completes a set
    # of t shares that reconstructs the candidate. So t-1 shares reveal nothing.
    points = [(0, int.from_bytes(candidate, "big"))] + [
        (s.index, int.from_bytes(s.blocks[0], "big")) for s in known]
    forged = shamir.Share(n, t, n, "bytes", 16, shares[0].tag, (_interpolate(points, n),))
    assert shamir.reconstruct(known + [forged]) == candidate
    # and the genuine last share still gives the real secret
    assert shamir.reconstruct(known + [shares[n - 1]]) == secret


def test_linearity_is_xor_of_secrets():
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    sa, sb = shamir.share(a, 5, 3), shamir.share(b, 5, 3)
    summed = [x + y for x, y in zip(sa, sb, strict=False)]
    assert shamir.reconstruct([summed[4], summed[1], summed[2]]) == bytes(x ^ y for x, y in zip(a, b, strict=False))


def test_share_serialization_round_trip():
    shares = shamir.share(b"seed", 4, 2)
    again = [shamir.Share.from_dict(s.to_dict()) for s in shares]
    assert shamir.reconstruct(again[2:]) == b"seed"
    with pytest.raises(shamir.ShamirError, match="malformed"):
        shamir.Share.from_dict({"index": 1})


@pytest.mark.parametrize("n,t,msg", [(3, 4, "cannot exceed"), (3, 0, "at least 1"),
                                     (300, 2, "at most"), (3, 1.5, "integers")])
def test_bad_parameters(n, t, msg):
    with pytest.raises(shamir.ShamirError, match=msg):
        shamir.share(b"x", n, t)


def test_bad_secrets():
    for bad, msg in [(-1, "non-negative"), (b"", "empty"), (True, "bool"), (3.5, "cannot share"),
                     ([2 ** 128], "entries")]:
        with pytest.raises(shamir.ShamirError, match=msg):
            shamir.share(bad, 3, 2)


def test_bad_share_sets():
    shares = shamir.share(b"top secret", 5, 3)
    other = shamir.share(b"other thing", 5, 3)
    with pytest.raises(shamir.ShamirError, match="at least t=3"):
        shamir.reconstruct(shares[:2])
    with pytest.raises(shamir.ShamirError, match="duplicate"):
        shamir.reconstruct([shares[0], shares[0], shares[1]])
    with pytest.raises(shamir.ShamirError, match="different sharings"):
        shamir.reconstruct([shares[0], shares[1], other[2]])
    with pytest.raises(shamir.ShamirError, match="no shares"):
        shamir.reconstruct([])
    longer = shamir.share(b"x" * 40, 5, 3)
    with pytest.raises(shamir.ShamirError, match="add shares"):
        shares[0] + longer[0]
    # a corrupted extra share is caught when more than t shares are given
    bad = shamir.Share(4, 3, 5, "bytes", 10, shares[0].tag, (bytes(16),))
    with pytest.raises(shamir.ShamirError, match="inconsistent"):
        shamir.reconstruct(shares[:3] + [bad])
    relabeled = shamir.Share(9, 3, 5, "bytes", 10, shares[0].tag, shares[0].blocks)
    with pytest.raises(shamir.ShamirError, match="1..5"):
        shamir.reconstruct([relabeled, shares[1], shares[2]])


def test_sum_tags_do_not_depend_on_summation_order():
    parts = [shamir.share(secrets.token_bytes(48), 4, 3) for _ in range(3)]
    # party 0 sums a+b+c, party 1 sums c+a+b, party 2 sums b+c+a
    s0 = parts[0][0] + parts[1][0] + parts[2][0]
    s1 = parts[2][1] + parts[0][1] + parts[1][1]
    s2 = parts[1][2] + parts[2][2] + parts[0][2]
    expected = bytes(a ^ b ^ c for a, b, c in zip(*(shamir.reconstruct(p) for p in parts), strict=True))
    assert shamir.reconstruct([s0, s1, s2]) == expected


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, n))), st.randoms(use_true_random=False))
def test_share_key_any_t_reconstruct_and_extras_are_checked(secret, nt, rnd):
    n, t = nt
    shares = shamir.share_key(secret, n, t)
    assert shamir.reconstruct(rnd.sample(shares, t)) == secret
    assert shamir.reconstruct(shares) == secret          # all n: the extras are cross-checked
    back = [shamir.Share.from_dict(s.to_dict()) for s in shares]
    assert shamir.reconstruct(back[::-1][:t]) == secret
    if t < n:
        bad = shares[-1]
        forged = dataclasses.replace(bad, blocks=(bytes(a ^ (i == 65) for i, a in enumerate(bad.blocks[0])),))
        with pytest.raises(shamir.ShamirError):
            shamir.reconstruct(shares[:t] + [forged])


def test_share_key_t_minus_1_shares_fit_every_secret():
    """Over a prime field, t - 1 shares and any candidate secret determine one polynomial."""
    shares = shamir.share_key(b"\x01" * 32, 5, 3)[:2]
    for candidate in (b"\x00" * 32, b"\xff" * 32):
        # the polynomial through (0, candidate) and the two shares: its value at x = 3 exists
        # and reconstructs the candidate together with them
        pts = [(0, int.from_bytes(candidate, "big"))] + [(s.index, int.from_bytes(s.blocks[0], "big"))
                                                          for s in shares]
        y3 = sum(yi * math.prod([(3 - xj) * pow(xi - xj, -1, shamir.PRIME) for xj, _ in pts if xj != xi])
                 for xi, yi in pts) % shamir.PRIME
        third = dataclasses.replace(shares[0], index=3, blocks=(int(y3).to_bytes(66, "big"),))
        assert shamir.reconstruct(shares + [third]) == candidate
    with pytest.raises(shamir.ShamirError, match="not linear"):
        _ = shares[0] + shares[0]
