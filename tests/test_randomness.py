"""mpc/randomness.py: the one source of secrets and DP noise."""

import numpy as np
import pytest
from scipy import stats

from mpc import randomness


def test_normal_has_the_asked_moments_and_never_repeats():
    z = randomness.normal((200_000,), std=2.0)
    assert z.shape == (200_000,) and z.dtype == np.float64
    assert abs(z.mean()) < 0.03 and abs(z.std() - 2.0) < 0.03
    assert stats.kstest(z / 2.0, "norm").pvalue > 1e-4
    assert not np.array_equal(randomness.normal(8), randomness.normal(8))
    assert randomness.normal((3, 5)).shape == (3, 5)


def test_uniform_is_uniform_on_unit_interval():
    u = randomness.uniform(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_ring_elements_fill_every_bit():
    r = randomness.ring((1000, 8))
    assert r.dtype == np.uint64 and r.shape == (1000, 8)
    bits = np.unpackbits(r.view(np.uint8)).mean()
    assert abs(bits - 0.5) < 0.01


def test_generators_are_independent():
    a, b = randomness.generator().integers(0, 2**63, 4), randomness.generator().integers(0, 2**63, 4)
    assert not np.array_equal(a, b)
    assert randomness.token_bytes(32) != randomness.token_bytes(32)


def test_below_is_uniform_without_modulo_bias():
    # 3 * 2^61 + 1: a plain "draw 64 bits mod p" would make the low third twice as likely.
    p = 3 * 2**61 + 1
    x = randomness.below(p, 60_000)
    assert x.dtype == np.uint64 and x.size == 60_000 and int(x.max()) < p
    assert stats.kstest(x.astype(np.float64) / p, "uniform").pvalue > 1e-4
    assert randomness.below(7, 10_000).max() == 6
    with pytest.raises(ValueError, match="modulus"):
        randomness.below(1, 3)


def test_dp_noise_and_he_masks_come_from_the_os_source(monkeypatch):
    """Replaying os.urandom replays PATE noise and HE mask residues: no generator state
    of numpy or torch sits between the OS and them."""
    from he.mask import randomness as mask_randomness
    from privacy import pate

    def replay():
        stream = np.random.default_rng(0)  # a test stand-in for the OS, replayable
        monkeypatch.setattr(randomness.os, "urandom", lambda n: stream.bytes(n))
        return (pate.NoiseSource.secure().normal(1.0, 5), mask_randomness.below(2**40 - 87, 8))

    (noise_a, mask_a), (noise_b, mask_b) = replay(), replay()
    assert np.array_equal(noise_a, noise_b) and np.array_equal(mask_a, mask_b)
