"""Envelopes: round trips and every reason to refuse one."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc import wire
from parties.envelope import (
    VERSION,
    DuplicateEnvelope,
    EnvelopeError,
    Header,
    Sealer,
    body_digest,
    signed_message,
    verify_signature,
)
from parties.identity import Deployment, DeploymentError, PrivateKeys, new_local_deployment


@functools.cache
def world() -> tuple[Deployment, dict[str, PrivateKeys]]:
    run_dir = Path(tempfile.mkdtemp(prefix="confidant-env-"))
    dep = new_local_deployment(run_dir, [("alice", "owner"), ("bob", "owner"),
                                         ("carol", "aggregator")],
                               "mqtt://127.0.0.1:1883", name="envtest", max_message_bytes=4096)
    keys = {n: PrivateKeys.load(run_dir / "keys" / f"{n}.key") for n in dep.parties}
    return dep, keys


_LATEST: dict[tuple[int, str], dict[str, Sealer]] = {}


def sealer(name: str, session: str = "s1", window: int = 4096,
           dep: Deployment | None = None) -> Sealer:
    """A party's sealer, introduced (ephemeral keys exchanged, as presence messages do)
    to the latest sealer of every other party of the same deployment and session."""
    d, keys = world()
    s = Sealer(dep or d, keys[name], session, window=window)
    roster = _LATEST.setdefault((id(s.deployment), session), {})
    roster[name] = s
    for other_name in s.deployment.parties:  # everyone has announced itself
        if other_name not in roster and other_name in keys:
            roster[other_name] = Sealer(s.deployment, keys[other_name], session)
    for other in roster.values():
        if other is not s:
            s.meet(other.me, other.ephemeral_pub)
            other.meet(s.me, s.ephemeral_pub)
    return s


def reason_of(data: bytes, opener: Sealer) -> str:
    with pytest.raises(EnvelopeError) as e:
        opener.open(data)
    return e.value.reason


def repack(data: bytes, index: int, value: bytes) -> bytes:
    items = wire.decode(data)
    items[index] = value
    return wire.encode(items)


def test_round_trip_and_sequence_numbers():
    a, b = sealer("alice"), sealer("bob")
    payload = wire.encode({"x": list(range(10))})
    sealed = [a.seal("bob", "hcsetup", "commit", payload) for _ in range(3)]
    assert [s.header.seq for s in sealed] == [0, 1, 2]
    assert a.seal("carol", "hcsetup", "commit", b"").header.seq == 0  # per recipient
    for s in sealed:
        opened = b.open(s.data)
        assert opened.payload == payload
        assert opened.header == s.header
        assert (opened.digest, opened.signature, opened.size) == (s.digest, s.signature, s.size)
        assert s.size == len(s.data)
    bye = a.seal("bob", "hcsetup", "done", b"", kind="bye")
    assert b.open(bye.data).header.kind == "bye"
    # Both directions work and use different keys.
    back = b.seal("alice", "hcsetup", "reveal", b"secret")
    assert a.open(back.data).payload == b"secret"
    assert a._send_keys["bob"] is not a._recv_keys["bob"]


def test_broker_sees_no_plaintext_and_digest_is_verifiable():
    a = sealer("alice")
    secret = os.urandom(32)
    s = a.seal("bob", "p", "step", secret)
    assert secret not in s.data
    dep, _ = world()
    assert verify_signature(s.header, s.digest, s.signature, dep.parties["alice"].sign_pub)
    assert not verify_signature(s.header, s.digest, s.signature, dep.parties["bob"].sign_pub)
    other = dataclasses.replace(s.header, step="other")
    assert not verify_signature(other, s.digest, s.signature, dep.parties["alice"].sign_pub)
    assert not verify_signature(s.header, "00" * 32, s.signature, dep.parties["alice"].sign_pub)
    assert not verify_signature(s.header, "zz", b"short", b"bad key")


def test_header_dict_round_trip():
    h = Header(VERSION, "d", "s", "p", "st", "msg", "alice", "bob", 7, 1.5)
    assert Header.from_dict(h.as_dict()) == h
    assert Header.from_bytes(h.to_bytes()) == h
    with pytest.raises(ValueError):
        Header.from_dict({**h.as_dict(), "seq": -1})
    with pytest.raises(ValueError):
        Header.from_dict({**h.as_dict(), "seq": True})


def test_garbage_and_truncated():
    b = sealer("bob")
    good = sealer("alice").seal("bob", "p", "s", b"hello").data
    assert reason_of(b"\x00garbage\xff", b) == "malformed"
    assert reason_of(b"", b) == "malformed"
    assert reason_of(good[: len(good) // 2], b) == "malformed"
    assert reason_of(good[:-1], b) == "malformed"
    assert reason_of(wire.encode([1, 2, 3, 4]), b) == "malformed"
    assert reason_of("not bytes", b) == "malformed"  # type: ignore[arg-type]
    assert reason_of(repack(good, 1, b"short nonce"), b) == "malformed"
    assert b.open(good).payload == b"hello"  # nothing above disturbed the session


def test_bad_signature_and_tampering():
    a, b = sealer("alice"), sealer("bob")
    s = a.seal("bob", "p", "s", b"hello")
    sig = bytearray(s.signature)
    sig[0] ^= 1
    assert reason_of(repack(s.data, 3, bytes(sig)), b) == "signature"
    ct = bytearray(wire.decode(s.data)[2])
    ct[0] ^= 1
    assert reason_of(repack(s.data, 2, bytes(ct)), b) == "signature"
    # A header changed by the broker (e.g. the step) breaks the signature.
    h = dataclasses.replace(s.header, step="other").to_bytes()
    assert reason_of(repack(s.data, 0, h), b) == "signature"
    # Non-canonical header encoding is refused before anything else.
    # (time as float32 decodes to the same header but is not the canonical bytes).
    items = list(dataclasses.astuple(dataclasses.replace(s.header, time=1.5)))
    loose = msgpack.packb(items, use_bin_type=True, use_single_float=True)
    assert Header.from_bytes(loose).to_bytes() != loose
    assert reason_of(repack(s.data, 0, loose), b) == "malformed"
    assert b.open(s.data).payload == b"hello"


def test_validly_signed_but_wrongly_encrypted_fails_decrypt():
    dep, keys = world()
    b = sealer("bob")
    header = Header(VERSION, dep.name, "s1", "p", "s", "msg", "alice", "bob", 0, 1.0)
    hb, nonce = header.to_bytes(), os.urandom(12)
    ct = ChaCha20Poly1305(os.urandom(32)).encrypt(nonce, b"x", hb)
    sig = keys["alice"].sign_key.sign(signed_message(hb, body_digest(nonce, ct)))
    assert reason_of(wire.encode([hb, nonce, ct, sig]), b) == "decrypt"


def test_unknown_sender_wrong_recipient_session_deployment_version():
    dep, keys = world()
    b = sealer("bob")
    mallory = PrivateKeys.generate("mallory")
    bigger = dataclasses.replace(dep, parties={**dep.parties, "mallory": mallory.card("owner")})
    m = Sealer(bigger, mallory, "s1")
    m.meet("bob", b.ephemeral_pub)  # bob's announcement is public
    assert reason_of(m.seal("bob", "p", "s", b"x").data, b) == "unknown-sender"
    assert reason_of(sealer("alice").seal("carol", "p", "s", b"x").data, b) == "recipient"
    assert reason_of(sealer("alice", session="s2").seal("bob", "p", "s", b"x").data, b) == "session"
    renamed = dataclasses.replace(dep, name="elsewhere")
    assert reason_of(sealer("alice", dep=renamed).seal("bob", "p", "s", b"x").data, b) == "deployment"
    h = Header(VERSION + 1, dep.name, "s1", "p", "s", "msg", "alice", "bob", 0, 1.0)
    s = sealer("alice").seal("bob", "p", "s", b"x")
    assert reason_of(repack(s.data, 0, h.to_bytes()), b) == "version"
    h = dataclasses.replace(h, version=VERSION, kind="weird")
    assert reason_of(repack(s.data, 0, h.to_bytes()), b) == "malformed"


def test_replay_and_window():
    a, b = sealer("alice"), sealer("bob", window=4)
    sealed = [a.seal("bob", "p", "s", bytes([i])) for i in range(10)]
    b.open(sealed[5].data)
    b.open(sealed[3].data)  # out of order but inside the window: fine
    with pytest.raises(DuplicateEnvelope):
        b.open(sealed[5].data)
    for s in sealed[6:]:
        b.open(s.data)
    assert reason_of(sealed[4].data, b) == "out-of-window"  # 4 + 4 <= 9
    assert reason_of(sealed[9].data, b) == "duplicate"
    # A failed open does not consume the sequence number.
    c = sealer("bob", window=4)  # a new run of bob: alice's old envelopes do not open
    assert reason_of(sealed[0].data, c) == "decrypt"
    fresh = a.seal("bob", "p", "s", b"\x00")
    bad = bytearray(wire.decode(fresh.data)[3])
    bad[5] ^= 0xFF
    assert reason_of(repack(fresh.data, 3, bytes(bad)), c) == "signature"
    assert c.open(fresh.data).payload == b"\x00"


def test_window_memory_stays_bounded():
    a, b = sealer("alice"), sealer("bob", window=8)
    for _ in range(100):
        b.open(a.seal("bob", "p", "s", b"").data)
    assert len(b._seen["alice"]) <= 16


def test_oversize():
    a, b = sealer("alice"), sealer("bob")
    with pytest.raises(EnvelopeError) as e:
        a.seal("bob", "p", "s", b"x" * 5000)
    assert e.value.reason == "oversize" and "max_message_bytes" in str(e.value)
    assert a.seal("bob", "p", "s", b"ok").header.seq == 0  # the refused seal used no seq
    assert reason_of(b"\x00" * 5000, b) == "oversize"


def test_seal_argument_errors():
    a = sealer("alice")
    with pytest.raises(DeploymentError, match="not a party"):
        a.seal("zed", "p", "s", b"")
    with pytest.raises(ValueError, match="kind"):
        a.seal("bob", "p", "s", b"", kind="other")
    with pytest.raises(TypeError, match="bytes"):
        a.seal("bob", "p", "s", {"x": 1})  # type: ignore[arg-type]


def test_peek_header():
    s = sealer("alice").seal("bob", "p", "s", b"x")
    assert Sealer.peek_header(s.data) == s.header
    assert Sealer.peek_header(b"garbage") is None
    assert Sealer.peek_header(None) is None  # type: ignore[arg-type]


# -- fuzzing ---------------------------------------------------------------

@functools.cache
def _valid() -> bytes:
    return sealer("alice").seal("bob", "p", "s", b"payload").data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    with pytest.raises(EnvelopeError):
        sealer("bob").open(data)
    Sealer.peek_header(data)  # never raises


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_envelopes(data):
    raw = bytearray(_valid())
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del raw[i:]
    elif op == "insert":
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif op == "delete":
        del raw[i:i + data.draw(st.integers(1, 8))]
    else:
        raw[i:] = data.draw(st.binary(max_size=64))
    mutated = bytes(raw)
    try:
        opened = sealer("bob").open(mutated)
    except EnvelopeError:
        return
    # The only way a mutation may pass is by meaning exactly the same thing.
    original = sealer("bob").open(_valid())
    assert (opened.header, opened.payload) == (original.header, original.payload)
