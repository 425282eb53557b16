"""mpc/secagg.py: the secure-aggregation maths, played out without a network. Clients
mask, Shamir-share their seeds among their graph neighbours, drop out at every stage,
and the server's unmasked sum equals the plain sum of the survivors' quantized inputs,
bit for bit, in 200 seeded cases. The server's view of one masked input is uniform,
and the mask depends on every bit of its seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mpc import secagg, shamir

STAGES = ("none", "before keys", "after shares", "after masking", "during unmasking")


def simulate(n: int, dim: int, degree: int, t: int, k: int, drops: dict[str, str],
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One round; returns (the server's unmasked sum, the plain sum of what it should hold)."""
    names = [f"c{i:03d}" for i in range(n)]
    graph = secagg.neighbours(names, degree, rng.bytes(32))
    context = rng.bytes(8)
    x = {u: rng.integers(0, 1 << (k - 6), dim, dtype=np.uint64) for u in names}
    keyed = [u for u in names if drops.get(u) != "before keys"]
    keys = {u: secagg.new_key() for u in keyed}
    b = {u: rng.bytes(32) for u in keyed}
    shares: dict[str, dict[str, tuple]] = {u: {} for u in names}   # holder -> owner -> (b, s)
    for u in keyed:
        bs = shamir.share(b[u], len(graph[u]), t)
        ss = shamir.share(secagg.private_bytes(keys[u]), len(graph[u]), t)
        for i, v in enumerate(graph[u]):
            shares[v][u] = (bs[i], ss[i])
    masked = {}
    for u in keyed:
        if drops.get(u) == "after shares":
            continue
        partners = [v for v in graph[u] if v in keys]
        pairs = {v: (secagg.pair_seed(keys[u], secagg.public_bytes(keys[v]), context, u, v),
                     secagg.pair_sign(u, v)) for v in partners}
        masked[u] = (secagg.masked_input(x[u], k, b[u], pairs), partners)
    survivors = sorted(masked)
    dropped = [u for u in names if u not in masked]
    answering = [v for v in survivors if drops.get(v) != "during unmasking"]
    total = np.zeros(dim, dtype=np.uint64)
    for u in survivors:
        total = (total + masked[u][0]) & secagg.modulus_mask(k)
    self_seeds, dropped_pairs = [], []
    for v in survivors:
        got = [shares[h][v][0] for h in answering if v in shares[h]]
        self_seeds.append(shamir.reconstruct(got[:t]))
    for v in dropped:
        toward = [u for u in survivors if v in masked[u][1]]
        if toward:
            got = [shares[h][v][1] for h in answering if v in shares[h]]
            sk = shamir.reconstruct(got[:t])
            for u in toward:
                seed = secagg.pair_seed(sk, secagg.public_bytes(keys[u]), context, u, v)
                dropped_pairs.append((seed, secagg.pair_sign(u, v)))
    got = secagg.unmask(total, k, self_seeds, dropped_pairs)
    plain = np.zeros(dim, dtype=np.uint64)
    for u in survivors:
        plain = (plain + x[u]) & secagg.modulus_mask(k)
    return got, plain


@pytest.mark.parametrize("case", range(200))
def test_unmasked_sum_is_exact_with_dropouts_at_every_stage(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(3, 13))
    degree = int(rng.choice([2, 4, n - 1])) if n > 5 else n - 1
    degree = min(degree, n - 1)
    t = max(1, degree // 2)
    k = int(rng.choice([16, 33, 64]))
    names = [f"c{i:03d}" for i in range(n)]
    # at most degree - t of any client's neighbours may be missing when it is unmasked;
    # drop at most one client per stage, and not in case 0 mod 5 (no dropout at all)
    drops = {}
    if case % 5:
        for stage, who in zip(STAGES[1:], rng.permutation(names)[: min(4, degree - t)], strict=False):
            drops[str(who)] = stage
    got, plain = simulate(n, int(rng.integers(1, 40)), degree, t, k, drops, rng)
    assert np.array_equal(got, plain)


def test_the_servers_view_of_one_masked_input_is_uniform():
    """Whatever the input (here all zeros), a masked vector is uniform in Z_2^16."""
    key_a, key_b = secagg.new_key(), secagg.new_key()
    seed = secagg.pair_seed(key_a, secagg.public_bytes(key_b), b"ctx", "a", "b")
    y = secagg.masked_input(np.zeros(200_000, np.uint64), 16, bytes(range(32)), {"b": (seed, 1)})
    counts = np.bincount((y >> np.uint64(8)).astype(np.int64), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    # and without the masks it is the input itself: the test can fail
    bare = secagg.masked_input(np.zeros(1000, np.uint64), 16, bytes(32), {})
    assert not np.array_equal(bare, np.zeros(1000, np.uint64))   # the self mask alone hides it


def test_the_mask_depends_on_every_seed_bit():
    seed = bytes(range(32))
    base = secagg.expand(seed, 64, 64)
    for bit in range(256):
        flipped = bytearray(seed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not np.array_equal(secagg.expand(bytes(flipped), 64, 64), base), bit


def test_pair_seeds_agree_at_both_ends_and_differ_by_context():
    a, b = secagg.new_key(), secagg.new_key()
    ab = secagg.pair_seed(a, secagg.public_bytes(b), b"r1", "a", "b")
    assert ab == secagg.pair_seed(b, secagg.public_bytes(a), b"r1", "b", "a")
    assert ab != secagg.pair_seed(a, secagg.public_bytes(b), b"r2", "a", "b")
    assert secagg.pair_sign("a", "b") == -secagg.pair_sign("b", "a")


def test_quantized_weighted_sums_decode_to_the_weighted_mean_and_cannot_wrap():
    q = secagg.Quantizer(clip=0.5, bits=16, max_weight=1000)
    k = q.modulus_bits(50)
    assert 50 * 1000 * q.levels < 2 ** k <= 2 * 50 * 1000 * q.levels
    rng = np.random.default_rng(1)
    ups = [rng.uniform(-0.4, 0.4, 300) for _ in range(50)]
    weights = rng.integers(1, 1001, 50)
    total = np.zeros(301, dtype=np.uint64)
    for u, w in zip(ups, weights, strict=True):
        total = (total + q.encode(u, int(w), rng)) & secagg.modulus_mask(k)
    mean, weight = q.decode_sum(total)
    want = np.average(np.stack(ups), axis=0, weights=weights)
    assert weight == weights.sum() and np.max(np.abs(mean - want)) < 1e-4
    worst = np.zeros(301, dtype=np.uint64)   # every client at the top of the range
    for _ in range(50):
        worst = worst + q.encode(np.full(300, 9.0), 1000, rng)
    assert int(worst.max()) < 2 ** k
    with pytest.raises(secagg.SecAggError, match="at most 64"):
        secagg.Quantizer(1.0, 32, 2 ** 31).modulus_bits(10)


def test_graph_and_threshold_meet_their_bounds():
    for n in (10, 100, 1000):
        g = secagg.choose_graph(n, 0.1, 0.1)
        assert 1 <= g.threshold <= g.degree <= n - 1
        if g.degree < n - 1:   # sparse: both union bounds hold
            assert stats.binom.sf(g.degree - g.threshold, g.degree, 0.1) * n <= 2 ** -20
            assert stats.binom.sf(g.threshold - 1, g.degree, 0.1) * n <= 2 ** -40
        else:                  # complete: worst case counts
            assert g.threshold > int(0.1 * n) and g.threshold <= g.degree - int(np.ceil(0.1 * n))
    assert secagg.choose_graph(1000, 0.1, 0.1).degree < 100
    graph = secagg.neighbours([f"c{i}" for i in range(50)], 8, b"s")
    assert all(len(v) == 8 for v in graph.values())
    assert all(u in graph[v] for u in graph for v in graph[u])    # symmetric
    assert secagg.consistency_quorum(10, 0.1) == 6
    with pytest.raises(secagg.SecAggError, match="cannot tolerate"):
        secagg.choose_graph(4, 0.45, 0.45)


@pytest.mark.parametrize("k", [1, 7, 8, 33, 63, 64])
def test_packed_uploads_take_k_bits_per_element_and_round_trip(k):
    rng = np.random.default_rng(k)
    for d in (1, 3, 1001):
        y = rng.integers(0, 1 << 63, d, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        y &= secagg.modulus_mask(k)
        packed = secagg.pack(y, k)
        assert len(packed) == (d * k + 7) // 8
        assert np.array_equal(secagg.unpack(packed, k, d), y)
    with pytest.raises(secagg.SecAggError, match="bytes, got"):
        secagg.unpack(packed[:-1], k, 1001)
