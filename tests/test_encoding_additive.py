import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import mpc.twopc  # noqa: F401  (import shim so crypten imports on this torch)
from mpc import additive, encoding

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=6), elements=floats))
def test_encode_decode_within_one_ulp(x):
    y = encoding.decode(encoding.encode(x))
    assert y.shape == x.shape
    assert np.all(np.abs(y - x) < 2.0 ** -16)


def test_encoding_matches_crypten_bit_for_bit():
    from crypten.encoder import FixedPointEncoder
    x = np.random.default_rng(0).normal(scale=100, size=1000)
    ours = encoding.encode(x).view(np.int64)
    theirs = FixedPointEncoder(16).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # Decoding is plain signed division by 2^16. (CrypTen 0.4.1's decode divides
    # negative values by 2^16 - 1 and is off by one for e.g. -92.999; we do not
    # replicate that.)
    np.testing.assert_array_equal(encoding.decode(ours), ours.astype(np.float64) / 65536)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0 ** 47, -(2.0 ** 48)])
def test_encode_refuses_unrepresentable_values(bad):
    with pytest.raises(encoding.EncodingError):
        encoding.encode(np.array([1.0, bad]))


def test_decode_refuses_float_input():
    with pytest.raises(encoding.EncodingError, match="uint64 or int64"):
        encoding.decode(np.array([1.5]))


@settings(max_examples=50)
@given(hnp.arrays(np.uint64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
       st.integers(min_value=2, max_value=7))
def test_additive_round_trip(x, n):
    parts = additive.share(x, n)
    assert len(parts) == n and all(p.dtype == np.uint64 and p.shape == x.shape for p in parts)
    np.testing.assert_array_equal(additive.reconstruct(parts), x)


def test_additive_int64_and_float_round_trip():
    x = np.array([-5, 0, 7, -(2 ** 63)], dtype=np.int64)
    np.testing.assert_array_equal(additive.reconstruct(additive.share(x, 3)).view(np.int64), x)
    f = np.array([[-1.25, 3.5], [0.0, 1e4]])
    np.testing.assert_allclose(encoding.decode(additive.reconstruct(additive.share(encoding.encode(f), 4))), f)


def test_additive_shares_are_uniform():
    # Share a constant many times: each single share must be uniform on Z_2^64.
    # Chi-square on the top 4 bits and on the low 4 bits (16 buckets each).
    parts = additive.share(np.zeros(20000, dtype=np.uint64), 2)
    for p in parts:
        for bits in (p >> np.uint64(60), p & np.uint64(15)):
            counts = np.bincount(bits.astype(np.int64), minlength=16)
            assert stats.chisquare(counts).pvalue > 1e-4
    # and a share is uncorrelated with the secret
    secret = np.arange(20000, dtype=np.uint64) % np.uint64(2)
    s0 = additive.share(secret, 2)[0]
    top = (s0 >> np.uint64(63)).astype(float)
    assert abs(top[secret == 0].mean() - top[secret == 1].mean()) < 0.05


def test_additive_bad_input():
    with pytest.raises(additive.SharingError, match="at least 2"):
        additive.share(np.zeros(3, dtype=np.uint64), 1)
    with pytest.raises(additive.SharingError, match="encode floats first"):
        additive.share(np.zeros(3), 2)
    with pytest.raises(additive.SharingError, match="different shapes"):
        additive.reconstruct([np.zeros(3, np.uint64), np.zeros(4, np.uint64)])
    with pytest.raises(additive.SharingError, match="no shares"):
        additive.reconstruct([])
