"""Hash-Comb encoder: round trips, aggregation, randomized levels, reference compatibility, errors."""

from __future__ import annotations

import secrets
from fractions import Fraction

import hashcomb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc import wire
from privacy.hashcomb_codec import (
    AmbiguousTokenError,
    HashComb,
    HashCombParams,
    HistogramFormatError,
    HyperParameterMismatchError,
    InconsistentPathError,
    OutOfRangeError,
    ParameterError,
    TableTooLargeError,
    TokenHistogram,
    UnknownTokenError,
    aggregate_histograms,
    expected_level,
    level_pmf,
    paper_expected_level,
    sample_levels,
    solve_selection_probability,
)

KEY = bytes(range(32))
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def hc8() -> HashComb:
    return HashComb(levels=8, lo=-0.35, hi=0.35, delta=0.0, key=KEY)


@st.composite
def configs(draw, max_levels: int = 12):
    L = draw(st.integers(1, max_levels))
    lo = draw(st.floats(-1e3, 1e3, allow_nan=False))
    width = draw(st.floats(1e-3, 1e3))
    delta = draw(st.sampled_from([0.0, 0.01, 0.5]))
    return L, lo, lo + width, delta


def _values(draw, a: float, b: float, n: int) -> np.ndarray:
    u = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=n)))
    x = a + u * (b - a)
    return np.clip(x, a, b)


# ----------------------------------------------------------------------------- round trips

@FAST
@given(cfg=configs(), data=st.data())
def test_round_trip_error_at_most_half_a_bin(cfg, data):
    L, lo, hi, delta = cfg
    hc = HashComb(L, lo, hi, delta, key=KEY)
    a, b = hc.interval
    x = _values(data.draw, a, b, 50)
    tol = 1e-9 * (b - a)
    assert np.all(np.abs(hc.decode(hc.encode(x)) - x) <= hc.bin_width() / 2 + tol)
    k = data.draw(st.integers(1, L))
    assert np.all(np.abs(hc.decode(hc.encode_level(x, k)) - x) <= hc.bin_width(k) / 2 + tol)
    # leaf-only decoding accepts leaves, rejects a coarser level (unless that is the leaf level)
    assert np.array_equal(hc.decode(hc.encode(x), level=L), hc.decode(hc.encode(x)))


@FAST
@given(cfg=configs(max_levels=10), data=st.data())
def test_paths_and_prefixes_are_consistent(cfg, data):
    L, lo, hi, delta = cfg
    hc = HashComb(L, lo, hi, delta, key=KEY)
    x = _values(data.draw, *hc.interval, 30)
    path = hc.encode_path(x)
    assert path.shape == x.shape + (L,)
    assert np.array_equal(path[:, -1], hc.encode(x))
    assert np.array_equal(hc.decode_path(path), hc.decode(hc.encode(x)))
    k = data.draw(st.integers(1, L))
    pre = hc.encode_prefix(x, k)
    assert np.array_equal(pre, path[:, :k])
    assert np.array_equal(pre[:, -1], hc.encode_level(x, k))
    assert np.array_equal(hc.levels_of(pre), np.broadcast_to(np.arange(1, k + 1), pre.shape))


def test_encode_keeps_shape_and_accepts_float32(hc8):
    x = np.linspace(-0.35, 0.35, 12, dtype=np.float32).reshape(3, 4)
    t = hc8.encode(x)
    assert t.dtype == np.uint64 and t.shape == (3, 4)
    assert hc8.decode(t).shape == (3, 4)
    # the range ends are encodable: lo -> first leaf, hi -> last leaf
    assert hc8.bin_index([-0.35, 0.35]).tolist() == [0, 255]


# ----------------------------------------------------------------------------- aggregation

def _quantized_numerators(hc: HashComb, x: np.ndarray, levels: np.ndarray | None = None):
    """m with quantized value a + m u, straight from bin arithmetic (no tokens involved)."""
    leaf = hc.bin_index(x)
    L = hc.levels
    k = np.full(leaf.shape, L) if levels is None else levels.astype(np.int64)
    return (2 * (leaf >> (L - k)) + 1) << (L - k)


def _via_wire(h: TokenHistogram) -> TokenHistogram:
    return TokenHistogram.from_wire(wire.decode(wire.encode(h.to_wire())))


@FAST
@given(cfg=configs(max_levels=10), owners=st.integers(1, 6), dim=st.integers(1, 40),
       randomized=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_aggregate_mean_equals_mean_of_quantized_values(cfg, owners, dim, randomized, seed):
    L, lo, hi, delta = cfg
    hc = HashComb(L, lo, hi, delta, key=KEY, p=0.3)
    a, b = hc.interval
    rng = np.random.default_rng(seed)
    xs = np.clip(a + rng.random((owners, dim)) * (b - a), a, b)
    # the aggregator only ever sees wire dicts and sums them without the key
    hists, expect_m = [], np.zeros(dim, dtype=np.int64)
    for x in xs:
        if randomized:
            toks, lv = hc.encode_randomized(x, rng=rng, return_levels=True)
            expect_m += _quantized_numerators(hc, x, lv)
        else:
            toks = hc.encode(x)
            expect_m += _quantized_numerators(hc, x)
        hists.append(_via_wire(hc.histogram(toks)))
    agg = _via_wire(aggregate_histograms(hists))
    s, n = hc.histogram_sums(agg)
    assert np.array_equal(s, expect_m)  # exact integer identity
    assert np.all(n == owners)
    mean = hc.decode_histogram(agg)
    u = Fraction(b - a) / 2 ** (L + 1)
    for c in range(dim):
        exact = Fraction(a) + u * Fraction(int(expect_m[c]), owners)
        assert abs(Fraction(float(mean[c])) - exact) <= 4 * np.spacing(max(abs(a), abs(b)))


def test_single_owner_histogram_decodes_exactly_like_decode(hc8):
    x = np.random.default_rng(3).uniform(-0.35, 0.35, 1000)
    t = hc8.encode(x)
    assert np.array_equal(hc8.decode_histogram(hc8.histogram(t)), hc8.decode(t))


def test_histogram_addition_is_associative_and_counts_add(hc8):
    rng = np.random.default_rng(4)
    hs = [hc8.encode_update(rng.uniform(-0.4, 0.4, 100), clip=True) for _ in range(3)]
    left, right = (hs[0] + hs[1]) + hs[2], hs[0] + (hs[1] + hs[2])
    for f in ("offsets", "tokens", "counts"):
        assert np.array_equal(getattr(left, f), getattr(right, f))
    assert np.all(left.coordinate_totals() == 3)
    rows = TokenHistogram.from_tokens(np.stack([h.tokens for h in hs]), hc8.fingerprint)
    assert np.array_equal(rows.tokens, left.tokens) and np.array_equal(rows.counts, left.counts)


@settings(max_examples=80, deadline=None)
@given(d=st.sampled_from([1, 2, 7, 2**20]), data=st.data())
def test_histogram_reduction_matches_a_dictionary(d, data):
    # tokens that share their top bits exercise the exact fallback of the fast sort key
    n = data.draw(st.integers(0, 60))
    coords = np.array(data.draw(st.lists(st.integers(0, d - 1), min_size=n, max_size=n)),
                      dtype=np.int64)
    high = data.draw(st.sampled_from([0, 2**63, 2**40, 0xABCDEF << 36]))
    toks = np.array([high + data.draw(st.integers(0, 2**22)) for _ in range(n)], dtype=np.uint64)
    counts = np.array(data.draw(st.lists(st.integers(1, 9), min_size=n, max_size=n)), dtype=np.int64)
    h = TokenHistogram._reduce(d, coords, toks, counts, "fp")
    expect: dict[tuple[int, int], int] = {}
    for c, t, k in zip(coords.tolist(), toks.tolist(), counts.tolist(), strict=True):
        expect[(c, t)] = expect.get((c, t), 0) + k
    got = {}
    for c in range(d) if d < 100 else sorted(set(coords.tolist())):
        sl = slice(h.offsets[c], h.offsets[c + 1])
        ts = h.tokens[sl].tolist()
        assert ts == sorted(set(ts))
        got.update({(c, t): k for t, k in zip(ts, h.counts[sl].tolist(), strict=True)})
    assert got == expect
    assert h.offsets[-1] == len(expect)


def test_histogram_reduction_with_tied_sort_keys():
    # d = 2^20 leaves 44 key bits for 64-bit tokens: these three tie on the fast key
    toks = np.array([2**63 + 5, 2**63 + 1, 2**63 + 5, 7], dtype=np.uint64)
    h = TokenHistogram._reduce(2**20, np.array([3, 3, 3, 3]), toks, np.ones(4, np.int64), "fp")
    assert h.tokens.tolist() == [7, 2**63 + 1, 2**63 + 5]
    assert h.counts.tolist() == [1, 1, 2]
    assert h.offsets[3:5].tolist() == [0, 3]


def test_update_helpers_and_compact_wire_form(hc8):
    rng = np.random.default_rng(5)
    ups = [rng.normal(0, 0.2, 10_000).astype(np.float32) for _ in range(5)]
    with pytest.raises(OutOfRangeError, match="clip=True"):
        hc8.encode_update(ups[0], clip=False)
    owner_msgs = [hc8.encode_update(u, clip=True).to_wire() for u in ups]
    assert set(owner_msgs[0]) == {"v", "fingerprint", "dim", "tokens"}  # dense: tokens only
    assert len(wire.encode(owner_msgs[0])) < 8 * 10_000 + 200
    agg = aggregate_histograms([TokenHistogram.from_wire(wire.decode(wire.encode(m)))
                                for m in owner_msgs])
    agg_msg = wire.decode(wire.encode(agg.to_wire()))
    assert agg_msg["lengths"].dtype == np.uint8 and agg_msg["counts"].dtype == np.uint8
    mean = hc8.decode_update(agg_msg)
    assert mean.dtype == np.float32 and mean.shape == (10_000,)
    # FedAvg of the clipped updates, up to half a leaf bin
    clipped_mean = np.mean([np.clip(u, -0.35, 0.35) for u in ups], axis=0)
    assert np.max(np.abs(mean - clipped_mean)) <= hc8.bin_width() / 2 + 1e-6


# ----------------------------------------------------------------------------- randomized levels

def test_expected_level_is_the_conditional_mean():
    # PAPERS.md: L = 8, p = 0.2: the paper formula gives 4.67, the true mean is 5.62
    assert paper_expected_level(8, 0.2) == pytest.approx(4.67, abs=0.01)
    assert expected_level(8, 0.2) == pytest.approx(paper_expected_level(8, 0.2) / (1 - 0.8**8))
    assert expected_level(8, 0.2) == pytest.approx(5.61, abs=0.01)
    # brute force over all 2^L coin sequences
    L, p = 6, 0.35
    num = den = 0.0
    for seq in range(1, 2**L):
        heads = [(seq >> i) & 1 for i in range(L)]
        pr = np.prod([p if h else 1 - p for h in heads])
        num += pr * (max(i for i in range(L) if heads[i]) + 1)
        den += pr
    assert expected_level(L, p) == pytest.approx(num / den, rel=1e-12)
    assert level_pmf(L, 1.0).tolist() == [0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("L,p", [(8, 0.2), (8, 0.7), (3, 0.05), (16, 0.1)])
def test_sampler_mean_level_matches_formula(L, p):
    n = 200_000
    pmf = level_pmf(L, p)
    k = np.arange(1, L + 1)
    sd = np.sqrt(np.dot(pmf, k**2) - np.dot(pmf, k) ** 2)
    for rng in (None, np.random.default_rng(11)):  # OS randomness and the opt-in generator
        lv = sample_levels(n, L, p, rng)
        assert lv.min() >= 1 and lv.max() <= L
        assert abs(lv.mean() - expected_level(L, p)) < 5 * sd / np.sqrt(n)
        freq = np.bincount(lv, minlength=L + 1)[1:] / n
        assert np.all(np.abs(freq - pmf) < 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-12)


def test_randomized_tokens_decode_to_their_levels_centre(hc8):
    x = np.random.default_rng(7).uniform(-0.35, 0.35, 50_000)
    toks, lv = hc8.encode_randomized(x, p=0.3, rng=np.random.default_rng(8), return_levels=True)
    assert np.array_equal(hc8.levels_of(toks), lv)
    a, _ = hc8.interval
    w = np.array([hc8.bin_width(int(k)) for k in range(1, 9)])[lv.astype(int) - 1]
    centre = a + (np.floor((x - a) / w) + 0.5) * w
    assert np.allclose(hc8.decode(toks), centre, rtol=0, atol=1e-12)
    assert abs(lv.mean() - hc8.expected_level(0.3)) < 0.03
    # explicit generators reproduce; the default (OS) source does not repeat
    again = hc8.encode_randomized(x, p=0.3, rng=np.random.default_rng(8))
    assert np.array_equal(again, toks)
    assert not np.array_equal(hc8.encode_randomized(x, p=0.3), hc8.encode_randomized(x, p=0.3))


@given(L=st.integers(1, 30), frac=st.floats(0.001, 1.0))
@settings(max_examples=60, deadline=None)
def test_solver_inverts_expected_level(L, frac):
    lo_t = (L + 1) / 2
    target = lo_t + frac * (L - lo_t)
    if target <= lo_t:
        return
    p = solve_selection_probability(L, target)
    assert 0 < p <= 1
    assert expected_level(L, p) == pytest.approx(target, abs=1e-6)


def test_solver_and_sampler_reject_bad_input():
    with pytest.raises(ParameterError, match=r"lies in \(4.5, 8\]"):
        solve_selection_probability(8, 4.0)
    with pytest.raises(ParameterError, match="p must be in"):
        level_pmf(8, 0.0)
    with pytest.raises(ParameterError, match="numpy Generator"):
        sample_levels(3, 8, 0.5, rng=42)
    hc = HashComb(4, 0, 1, key=KEY)
    with pytest.raises(ParameterError, match="no selection probability"):
        hc.encode_randomized([0.5])
    prm = HashCombParams.with_target_level(8, -1, 1, 0.0, target_level=6.0)
    assert expected_level(8, prm.p) == pytest.approx(6.0, abs=1e-9)


# ----------------------------------------------------------------------------- keys

def test_tokens_under_two_keys_are_unrelated():
    hc_a = HashComb(10, -1, 1, key=secrets.token_bytes(32))
    hc_b = HashComb(10, -1, 1, key=secrets.token_bytes(32))
    ta, tb = hc_a._tokens[2:], hc_b._tokens[2:]
    assert np.intersect1d(ta, tb).size == 0
    # bitwise: each of the 64 bits agrees about half the time, as for independent strings
    same = np.unpackbits(np.bitwise_not(ta ^ tb).view(np.uint8)).reshape(-1, 64).mean()
    assert abs(same - 0.5) < 0.01
    x = np.linspace(-1, 1, 100)
    with pytest.raises(UnknownTokenError):
        hc_b.decode(hc_a.encode(x))
    # same key, same parameters: same tokens (owners agree); another context: unrelated
    assert np.array_equal(HashComb(10, -1, 1, key=KEY).encode(x), HashComb(10, -1, 1, key=KEY).encode(x))
    other = HashComb(10, -1, 1, key=KEY, context=b"round-2")
    assert np.intersect1d(other._tokens[2:], HashComb(10, -1, 1, key=KEY)._tokens[2:]).size == 0


def test_different_hyper_parameters_give_different_tokens_and_fingerprints():
    base = HashComb(8, -0.35, 0.35, key=KEY)
    for kw in ({"lo": -0.36}, {"hi": 0.34}, {"delta": 0.01}):
        args = {"levels": 8, "lo": -0.35, "hi": 0.35, "delta": 0.0} | kw
        other = HashComb(**args, key=KEY)
        assert other.fingerprint != base.fingerprint
        assert np.intersect1d(other._tokens[2:], base._tokens[2:]).size == 0


# ----------------------------------------------------------------------------- compatibility

COMPAT_CASES = [(8, -0.35, 0.35, 0.01, "s"), (5, 0.0, 1.0, 0.0, None), (11, -3.3, 7.1, 0.5, "abc"),
                (3, -1e-3, 2e-3, None, "ünï|code"), (1, 2.0, 3.0, 0.25, "")]


@pytest.mark.parametrize("L,lo,hi,delta,salt", COMPAT_CASES)
def test_compatible_tokens_equal_reference(L, lo, hi, delta, salt, tmp_path):
    cfg = str(tmp_path / "cfg.pkl")  # the reference writes a pickle on every construction
    ref = hashcomb.Encoder(L, hi, lo, configPath=cfg, delta=delta, salt=salt, includeInternal=True)
    ours = HashComb.compatible(levels=L, lo=lo, hi=hi, delta=delta, salt=salt)
    a, b = ours.interval
    assert (a, b) == (ref.min, ref.max)
    rng = np.random.default_rng(L)
    x = np.concatenate([[a, b, (a + b) / 2], rng.uniform(a, b, 500),
                        # values on and next to the reference tree's own edges
                        [float(n.min) for n in _some_nodes(ref.tree.root, 40)],
                        [np.nextafter(float(n.max), -np.inf) for n in _some_nodes(ref.tree.root, 40)]])
    x = x[(x >= a) & (x <= b)]
    toks = ours.encode(x)
    assert toks.dtype == np.uint64
    assert toks.tolist() == [int(s) for s in ref.encodeArray(x)]
    assert ours.encode_path(x[:100]).tolist() == [[int(s) for s in p] for p in ref.encodePathArray(x[:100])]
    k = max(1, L // 2)
    assert ours.encode_prefix(x[:100], k).tolist() == \
        [[int(s) for s in p] for p in ref.encodePrefixArray(x[:100], k)]
    # either side decodes the other's tokens to the same centres
    dec = hashcomb.Decoder(cfg)
    ref_tokens = ref.encodeArray(x)
    assert np.array_equal(ours.decode(ref_tokens, level=L), dec.decodeArray([str(t) for t in toks]))


def _some_nodes(root, n):
    out, frontier = [], [root]
    while frontier and len(out) < n:
        node = frontier.pop(0)
        out.append(node)
        frontier += [c for c in (node.left, node.right) if c is not None]
    return out


def test_reference_randomized_tokens_decode_in_compatible_mode(tmp_path):
    ref = hashcomb.RandomizedEncoder(8, 0.35, -0.35, delta=0.01, selectionProbability=0.3, seed=1,
                                     configPath=str(tmp_path / "r.pkl"), salt="s")
    ours = HashComb.compatible(8, -0.35, 0.35, 0.01, "s")
    x = np.random.default_rng(9).uniform(-0.35, 0.35, 300)
    toks = ref.encodeArray(x)
    dec = hashcomb.Decoder(str(tmp_path / "r.pkl"))
    assert np.array_equal(ours.decode(toks), dec.decodeArray(toks))
    lv = ours.levels_of(toks)
    assert np.all(np.abs(ours.decode(toks) - x) <= 0.72 / 2 ** lv.astype(float) / 2 + 1e-12)


def test_compatible_mode_reports_28_bit_collisions():
    for i in range(30):
        hc = HashComb.compatible(14, 0.0, 1.0, 0.0, f"salt{i}")
        st_, sp, dup = hc._lookup(None)
        if dup.any():
            break
    else:
        pytest.fail("no 28-bit collision found among 30 salts at L = 14 (expected about 2 per salt)")
    tok = st_[np.flatnonzero(dup)[0]]
    with pytest.raises(AmbiguousTokenError, match="more than one node"):
        hc.decode(np.array([tok], dtype=np.uint64))


def test_compatible_mode_limits():
    with pytest.raises(ParameterError, match="at most 30"):
        HashComb.compatible(31, 0, 1, 0, "s")
    with pytest.raises(ParameterError, match="salt must be"):
        HashComb.compatible(4, 0, 1, 0, salt=b"bytes")


# ----------------------------------------------------------------------------- errors

def test_out_of_range_and_nan(hc8):
    with pytest.raises(OutOfRangeError, match=r"2 of 4 value\(s\).*clip=True") as e:
        hc8.encode([0.0, 0.5, -0.36, 0.1])
    assert e.value.indices.tolist() == [1, 2]
    assert hc8.encode([0.5], clip=True)[0] == hc8.encode([0.35])[0]
    with pytest.raises(OutOfRangeError, match="NaN"):
        hc8.encode([0.0, np.nan], clip=True)


def test_table_too_large():
    with pytest.raises(TableTooLargeError, match=r"levels=30 .* at most 22 levels"):
        HashComb(30, 0, 1, key=KEY)
    with pytest.raises(TableTooLargeError, match="at most 4 levels"):
        HashComb(8, 0, 1, key=KEY, max_table_bytes=1024)
    with pytest.raises(TableTooLargeError):
        HashComb.compatible(25, 0, 1, 0, "s")


def test_unknown_tokens_are_reported_not_decoded(hc8):
    t = hc8.encode(np.linspace(-0.3, 0.3, 10))
    t[[2, 7]] = np.array([12345, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(UnknownTokenError, match=r"2 of 10 token\(s\)") as e:
        hc8.decode(t)
    assert e.value.count == 2 and e.value.indices.tolist() == [2, 7]
    assert e.value.tokens.tolist() == [12345, 2**64 - 1]
    # a valid internal-node token is unknown when leaves are demanded
    with pytest.raises(UnknownTokenError, match="level 8"):
        hc8.decode(hc8.encode_level([0.1], 3), level=8)
    h = hc8.histogram(t)
    with pytest.raises(UnknownTokenError):
        hc8.decode_histogram(h)


def test_inconsistent_paths(hc8):
    p = hc8.encode_path(np.array([0.1, -0.2]))
    with pytest.raises(InconsistentPathError):
        hc8.decode_path(p[:, ::-1])
    swapped = p.copy()
    swapped[0, 4:] = p[1, 4:]
    with pytest.raises(InconsistentPathError, match="row 0"):
        hc8.decode_path(swapped)


def test_mismatched_hyper_parameters(hc8):
    other = HashComb(8, -0.35, 0.36, key=KEY)
    x = np.zeros(5)
    h1, h2 = hc8.histogram(hc8.encode(x)), other.histogram(other.encode(x))
    with pytest.raises(HyperParameterMismatchError, match="2 different Hash-Comb configurations"):
        aggregate_histograms([h1, h2])
    with pytest.raises(HyperParameterMismatchError, match="another key"):
        hc8.decode_histogram(h2)
    p1, p2 = HashCombParams(8, -0.35, 0.35), HashCombParams(8, -0.35, 0.36, p=0.2)
    with pytest.raises(HyperParameterMismatchError, match=r"hi: 0.35 vs 0.36; p: None vs 0.2"):
        p1.check_matches(p2)
    with pytest.raises(HyperParameterMismatchError, match="fingerprint"):
        p1.check_matches(p2.fingerprint())
    p1.check_matches(HashCombParams(8, -0.35, 0.35).fingerprint())
    # same hyper-parameters but another key: the aggregator sees different fingerprints too
    with pytest.raises(HyperParameterMismatchError):
        aggregate_histograms([h1, HashComb(8, -0.35, 0.35, key=b"k" * 32).histogram(hc8.encode(x))])


def test_params_fingerprint_is_stable_and_sensitive():
    p = HashCombParams(8, -0.35, 0.35, 0.0, None)
    # golden value: changing it breaks agreement with deployed owners
    assert p.fingerprint() == HashCombParams(levels=8, lo=-0.35, hi=0.35).fingerprint()
    assert p.fingerprint() == "ca772edb9da43291675c5b5651fd6ee0"
    variants = [HashCombParams(9, -0.35, 0.35), HashCombParams(8, -0.34, 0.35),
                HashCombParams(8, -0.35, 0.35, 1e-9), HashCombParams(8, -0.35, 0.35, p=0.5)]
    assert len({v.fingerprint() for v in variants} | {p.fingerprint()}) == 5
    assert HashComb.from_params(p, key=KEY).fingerprint == HashComb(8, -0.35, 0.35, key=KEY).fingerprint
    assert wire.decode(wire.encode(p.as_dict())) == p.as_dict()


@pytest.mark.parametrize("kwargs,match", [
    ({"levels": 0}, "levels must be in"), ({"levels": 8.0}, "levels must be an integer"),
    ({"lo": 1.0, "hi": 1.0}, "hi must be greater"), ({"hi": float("inf")}, "finite"),
    ({"delta": -0.1}, "delta must be >= 0"), ({"p": 1.5}, "p must be in"),
    ({"key": b"short"}, "16..64 bytes"), ({"key": "str-key-of-enough-length"}, "key must be bytes"),
])
def test_bad_parameters(kwargs, match):
    args = {"levels": 8, "lo": -1.0, "hi": 1.0, "delta": 0.0, "key": KEY} | kwargs
    with pytest.raises(ParameterError, match=match):
        HashComb(**args)


@pytest.mark.parametrize("msg,match", [
    ({"v": 2}, "version-1"),
    ({"v": 1, "fingerprint": "f", "dim": 3, "tokens": np.zeros(2, np.uint64)}, "one token per"),
    ({"v": 1, "fingerprint": "f", "dim": 2, "tokens": np.zeros(2, np.float64)}, "uint64"),
    ({"v": 1, "fingerprint": "f", "dim": 2, "tokens": np.array([1, 2, 3], np.uint64),
      "lengths": np.array([1, 1], np.uint8), "counts": np.ones(3, np.uint8)}, "add up"),
    ({"v": 1, "fingerprint": "f", "dim": 1, "tokens": np.array([2, 1], np.uint64),
      "lengths": np.array([2], np.uint8), "counts": np.ones(2, np.uint8)}, "sorted"),
    ({"v": 1, "fingerprint": "f", "dim": 1, "tokens": np.array([1, 2], np.uint64),
      "lengths": np.array([2], np.uint8), "counts": np.array([1, 0], np.uint8)}, "zero counts"),
])
def test_malformed_wire_histograms(msg, match):
    with pytest.raises(HistogramFormatError, match=match):
        TokenHistogram.from_wire(msg)
