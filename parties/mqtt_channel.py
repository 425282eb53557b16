"""A :class:`mpc.channel.Channel` over MQTT (aiomqtt), with sealed envelopes and a transcript.

* One inbox topic per party (``confidant/<deployment>/inbox/<party>``), QoS 1.
  Every envelope is sealed (:mod:`parties.envelope`): signed, end-to-end
  encrypted for its recipient. What the broker relays is headers and ciphertext.
* Bad input never stops the party: garbage, forgeries, replays, messages for
  someone else are rejected, logged and written to the transcript as rejected.
  Duplicates (same sender, session, seq: QoS 1 redeliveries, re-sends, replays)
  are dropped too, and recorded as rejected with reason ``duplicate``.
* Presence: a retained, signed ``online``/``offline`` message per party, with a
  pre-signed ``offline`` as the MQTT last will. A peer whose ``offline`` arrives
  while we wait for it makes ``recv`` fail at once with :class:`PeerGone`
  naming it. A graceful ``offline`` carries how many messages the party sent to
  each peer, so a peer is declared gone only after its last message arrived.
* Broker restarts: the client reconnects with exponential backoff, resubscribes
  and republishes its presence. Envelopes are kept in a bounded outbox: those
  the broker never acknowledged are re-sent when we reconnect, and when a peer
  announces it is (back) online, with how many of our envelopes it holds, we
  re-send it the rest (the broker may have lost them when it died). Receivers
  drop the duplicates by sequence number.
* Order: each sender's messages reach the protocol in sequence order. One that
  arrives after a gap is held; if the gap stays open for ``GAP_SECONDS`` (the
  broker acknowledged a message but lost it), we republish our ``online``
  presence, whose counts make every peer re-send what we miss. A protocol thus
  never reads a later message in place of a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from typing import Any

import aiomqtt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mpc import randomness, wire
from mpc.channel import Channel, ChannelError, Mailbox, split_kind

from .envelope import DuplicateEnvelope, EnvelopeError, Sealer
from .identity import Deployment, DeploymentError, PrivateKeys
from .transcript import Transcript

log = logging.getLogger("confidant.mqtt")

_PRESENCE_DOMAIN = b"confidant/presence/v1\x00"
OUTBOX_PER_PEER = 256          # envelopes kept per peer for re-sending after a broker restart
OUTBOX_BYTES_PER_PEER = 64 * 2**20   # ... and at most this many bytes of them (the newest is always kept)
GONE_GRACE_SECONDS = 5.0        # how long a graceful 'offline' may wait for in-flight messages
KEEPALIVE_SECONDS = 60
GAP_SECONDS = 1.0               # how long a gap in a peer's sequence may stay open before we ask again


def _counts(counts: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _presence_message(party: str, session: str, status: str, sent: dict[str, int],
                      have: dict[str, int], ephemeral: bytes) -> bytes:
    text = f"{party}\x00{session}\x00{status}\x00{_counts(sent)}\x00{_counts(have)}\x00"
    return _PRESENCE_DOMAIN + text.encode() + ephemeral


class _Outgoing:
    """An envelope kept for re-sending; ``acked`` once the broker took it (PUBACK)."""

    __slots__ = ("seq", "data", "acked")

    def __init__(self, seq: int, data: bytes):
        self.seq, self.data, self.acked = seq, data, False


class MqttChannel(Channel):
    """Channel for one party in one session. ``async with`` it, or call start()/close()."""

    def __init__(self, deployment: Deployment, keys: PrivateKeys, session: str,
                 transcript: Transcript, *, connect_timeout: float = 30.0,
                 client_cert: tuple[str, str] | None = None, bind_address: str = ""):
        self.deployment, self.keys, self.session = deployment, keys, session
        self.bind_address = bind_address   # the local address to connect from ("" = any)
        self.client_cert = client_cert  # (certificate, key) files, when the broker asks for one
        self._last_error: str | None = None
        self._ssl = self._tls_context()
        self.me = keys.name
        # Unguessable: a client that knows another's id could take over its session.
        self.client_id = f"{self.me[:39]}-{randomness.token_bytes(12).hex()}"
        self.peers = tuple(n for n in deployment.parties if n != self.me)
        self.transcript = transcript
        self.sealer = Sealer(deployment, keys, session)
        self.mailbox = Mailbox()
        self.connect_timeout = connect_timeout
        self._verify = {n: Ed25519PublicKey.from_public_bytes(p.sign_pub)
                        for n, p in deployment.parties.items()}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task | None = None
        self._outbox: dict[str, deque[_Outgoing]] = {p: deque() for p in self.peers}
        self._outbox_bytes: dict[str, int] = dict.fromkeys(self.peers, 0)
        self._sent: dict[str, int] = dict.fromkeys(self.peers, 0)
        self._received: dict[str, int] = dict.fromkeys(self.peers, 0)
        # per peer: every seq below have[peer] arrived and went to the protocol; held[peer]:
        # seqs above that which arrived, each with its mailbox item (None: nothing to deliver)
        self._have: dict[str, int] = dict.fromkeys(self.peers, 0)
        self._held: dict[str, dict[int, tuple[str, bytes] | None]] = {p: {} for p in self.peers}
        self._gap_timers: dict[str, asyncio.TimerHandle] = {}
        self._asking: asyncio.Task | None = None
        self._pending_gone: dict[str, int] = {}
        self._online: set[str] = set()
        self._seen: set[str] = set()   # peers that announced themselves in this session
        self.died: list[str] = []      # peers gone without a goodbye (their last will)
        # signed envelopes that came before their sender's announcement (other topic)
        self._early_envelopes: dict[str, list[bytes]] = {p: [] for p in self.peers}
        self.rejected = 0
        self.sent_bytes = 0
        self.sent_messages = 0

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> MqttChannel:
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-{self.me}")
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
        except TimeoutError:
            self._runner.cancel()
            why = (f"the last attempt failed with: {self._last_error}" if self._last_error
                   else "is it running?")
            raise ChannelError(f"party '{self.me}' could not connect to the broker at "
                               f"{self.deployment.broker_url} within {self.connect_timeout:g} s; "
                               f"{why}") from None
        return self

    async def close(self) -> None:
        """Say goodbye to every peer, publish 'offline', seal the transcript."""
        if self._closing:
            return
        for peer in self.peers:
            with contextlib.suppress(ChannelError):
                await self._send_envelope(peer, "session", "end", b"", kind="bye")
        self._closing = True
        for timer in self._gap_timers.values():
            timer.cancel()
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.deployment.presence_topic(self.me),
                                     self._presence("offline"), qos=1, retain=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        self.transcript.seal(self.session)

    async def __aenter__(self) -> MqttChannel:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- Channel API -------------------------------------------------------------
    async def send(self, to: str, kind: str, payload: Any) -> None:
        self._check_send(to, kind)
        protocol, step = split_kind(kind)
        await self._send_envelope(to, protocol, step, wire.encode(payload))

    async def recv(self, frm: str, kind: str, timeout: float | None = None, *,
                   watch: tuple[str, ...] = ()) -> Any:
        self._check_peer(frm)
        split_kind(kind)
        data = await self.mailbox.get(frm, kind, timeout, watch)
        try:
            return wire.decode(data)
        except wire.WireError as e:
            raise ChannelError(f"party '{frm}' sent a '{kind}' message that does not decode: {e}") from None

    # -- internals -----------------------------------------------------------------
    async def _send_envelope(self, to: str, protocol: str, step: str, payload: bytes,
                             kind: str = "msg") -> None:
        if self._closing:
            raise ChannelError(f"party '{self.me}' has closed its channel")
        if not self.sealer.knows(to):
            error = ChannelError(f"party '{to}' has not announced itself in session "
                                 f"{self.session!r} (no session key yet)")
            error.peer = to
            raise error
        sealed = self.sealer.seal(to, protocol, step, payload, kind=kind)
        self.transcript.record("sent", sealed.header, size=sealed.size, digest=sealed.digest,
                               signature=sealed.signature)
        out = _Outgoing(sealed.header.seq, sealed.data)
        box = self._outbox[to]
        box.append(out)
        self._outbox_bytes[to] += len(out.data)
        while len(box) > 1 and (len(box) > OUTBOX_PER_PEER
                                or self._outbox_bytes[to] > OUTBOX_BYTES_PER_PEER):
            self._outbox_bytes[to] -= len(box.popleft().data)
        self._sent[to] += 1
        self.sent_bytes += sealed.size
        self.sent_messages += 1
        await self._publish(to, out)

    async def _publish(self, to: str, out: _Outgoing) -> None:
        # If the broker is down the message stays in the outbox and is re-sent
        # on reconnect; we do not block the protocol on it here.
        client = self._client
        if client is None or not self._connected.is_set():
            return
        try:
            await client.publish(self.deployment.inbox_topic(to), out.data, qos=1)
            out.acked = True
        except aiomqtt.MqttError as e:
            log.warning("%s: publish failed (%s); will re-send after reconnect", self.me, e)

    def _presence(self, status: str) -> bytes:
        # 'online' tells peers how much of their traffic we hold (so they re-send
        # only the rest); a graceful 'offline' how much we sent to each of them.
        sent = dict(self._sent) if status == "offline" and self._closing else {}
        have = dict(self._have) if status == "online" else {}
        eph = self.sealer.ephemeral_pub
        sig = self.keys.sign_key.sign(_presence_message(self.me, self.session, status, sent, have,
                                                        eph))
        return wire.encode({"party": self.me, "session": self.session, "status": status,
                            "sent": sent, "have": have, "eph": eph, "sig": sig})

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.deployment.uses_tls:
            return None
        tls = self.deployment.tls
        ctx = ssl.create_default_context(cafile=tls.ca if tls else None)
        if self.client_cert is not None:
            try:
                ctx.load_cert_chain(*self.client_cert)
            except (OSError, ssl.SSLError) as e:
                raise DeploymentError(f"cannot use TLS client certificate {self.client_cert[0]} "
                                      f"with key {self.client_cert[1]}: {e}") from None
        return ctx

    async def _run(self) -> None:
        backoff = 0.1
        will = aiomqtt.Will(self.deployment.presence_topic(self.me), self._presence("offline"),
                            qos=1, retain=True)
        while not self._closing:
            try:
                async with aiomqtt.Client(
                        self.deployment.broker_host, self.deployment.broker_port,
                        identifier=self.client_id, bind_address=self.bind_address,
                        username=self.me, password=self.keys.mqtt_password, will=will,
                        # A crashed process's socket closes at once, so the broker sends
                        # its last will immediately; keepalive only covers silent network
                        # loss. Long enough that CPU-heavy steps (training, HE) never trip it.
                        clean_session=True, keepalive=KEEPALIVE_SECONDS,
                        tls_context=self._ssl,
                        max_queued_incoming_messages=0,
                        # Nagle + delayed ACKs would add ~40 ms to every small message
                        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)) as client:
                    await client.subscribe(self.deployment.inbox_topic(self.me), qos=1)
                    for peer in self.peers:
                        await client.subscribe(self.deployment.presence_topic(peer), qos=1)
                    await client.publish(self.deployment.presence_topic(self.me),
                                         self._presence("online"), qos=1, retain=True)
                    self._client = client
                    self._connected.set()
                    if backoff > 0.1:
                        log.warning("%s: reconnected to the broker", self.me)
                        await self._resend(unacked_only=True)
                    backoff = 0.1
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as e:
                self._last_error = str(e)
                self._connected.clear()
                self._client = None
                if self._closing:
                    return
                log.warning("%s: broker connection lost (%s); retrying in %.1f s", self.me, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _resend(self, only: str | None = None, from_seq: int = 0,
                      unacked_only: bool = False) -> None:
        """Re-send kept envelopes: those the broker never took, or, for a peer that
        (re)subscribed, every one from the first seq it does not hold."""
        for peer, box in self._outbox.items():
            if only is not None and peer != only:
                continue
            for out in list(box):
                if out.seq >= from_seq and not (unacked_only and out.acked):
                    await self._publish(peer, out)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic == self.deployment.inbox_topic(self.me):
            self._on_envelope(payload)
        elif topic.startswith(self.deployment.presence_topic("")):
            await self._on_presence(topic.rsplit("/", 1)[-1], payload)

    def _on_envelope(self, data: bytes) -> None:
        try:
            opened = self.sealer.open(data)
        except EnvelopeError as e:
            if e.reason == "unannounced":  # authentic, its sender's key is still on its way
                early = self._early_envelopes[Sealer.peek_header(data).sender]
                if len(early) < OUTBOX_PER_PEER:
                    early.append(data)
                    return
            # A duplicate is a QoS 1 redelivery, a peer's re-send after a broker
            # restart, or a replay: routine, so only logged at debug level, but
            # recorded like every refusal so the transcript shows what arrived.
            self.rejected += 1
            level = logging.DEBUG if isinstance(e, DuplicateEnvelope) else logging.WARNING
            log.log(level, "%s: rejected a message (%s)", self.me, e)
            self.transcript.record("rejected", Sealer.peek_header(data), size=len(data),
                                   digest=None, signature=None, reason=e.reason)
            return
        h = opened.header
        why = (self.conformance.violation(h.sender, self.me, f"{h.protocol}.{h.step}")
               if self.conformance and h.kind == "msg" else None)
        if why:  # authentic, but the protocol does not allow it: never delivered
            self.rejected += 1
            log.warning("%s: rejected a message from %s (%s)", self.me, h.sender, why)
            self.transcript.record("rejected", h, size=opened.size, digest=opened.digest,
                                   signature=opened.signature, reason="conformance")
        else:
            self.transcript.record("received", h, size=opened.size, digest=opened.digest,
                                   signature=opened.signature)
        self._received[h.sender] = self._received.get(h.sender, 0) + 1
        self._held[h.sender][h.seq] = ((f"{h.protocol}.{h.step}", opened.payload)
                                       if h.kind == "msg" and not why else None)
        self._deliver_in_order(h.sender)
        pending = self._pending_gone.get(h.sender)
        if pending is not None and self._received[h.sender] >= pending:
            del self._pending_gone[h.sender]
            self.mailbox.mark_gone(h.sender)

    def _deliver_in_order(self, peer: str) -> None:
        held = self._held[peer]
        while self._have[peer] in held:
            item = held.pop(self._have[peer])
            self._have[peer] += 1
            if item is not None:
                self.mailbox.put(peer, *item)
        if held and peer not in self._gap_timers:
            self._gap_timers[peer] = asyncio.get_running_loop().call_later(
                GAP_SECONDS, self._on_gap, peer, self._have[peer])

    def _on_gap(self, peer: str, missing: int) -> None:
        """A gap in ``peer``'s sequence outlived GAP_SECONDS: ask for the rest again."""
        del self._gap_timers[peer]
        if not self._held[peer] or self._closing:
            return
        if self._have[peer] == missing:
            log.warning("%s: message %d from '%s' is missing (later ones arrived); asking for it "
                        "again", self.me, missing, peer)
            client = self._client
            if client is not None and self._connected.is_set():
                self._asking = asyncio.get_running_loop().create_task(self._announce(client))
        self._gap_timers[peer] = asyncio.get_running_loop().call_later(
            GAP_SECONDS, self._on_gap, peer, self._have[peer])

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Publish 'online' with what we hold: each peer re-sends us the rest."""
        try:
            await client.publish(self.deployment.presence_topic(self.me), self._presence("online"),
                                 qos=1, retain=True)
        except aiomqtt.MqttError as e:
            log.warning("%s: could not ask for missing messages (%s)", self.me, e)

    async def _on_presence(self, peer: str, data: bytes) -> None:
        if peer not in self.peers or not data:
            return
        try:
            p = wire.decode(data)
            sent = {str(k): int(v) for k, v in p["sent"].items()}
            have = {str(k): int(v) for k, v in p["have"].items()}
            eph = bytes(p["eph"])
            self._verify[peer].verify(bytes(p["sig"]), _presence_message(
                peer, str(p["session"]), str(p["status"]), sent, have, eph))
        except (wire.WireError, KeyError, TypeError, ValueError, AttributeError, InvalidSignature):
            log.warning("%s: ignored a malformed or forged presence message for '%s'", self.me, peer)
            return
        if p["session"] != self.session:
            return  # a retained message from an earlier session
        try:
            if self.sealer.meet(peer, eph):
                for data in self._early_envelopes[peer]:
                    self._on_envelope(data)
                self._early_envelopes[peer] = []
        except DeploymentError as e:
            log.warning("%s: ignored an announcement of '%s' (%s)", self.me, peer, e)
            return
        self._seen.add(peer)
        if p["status"] == "online":
            # It (re)subscribed: what it does not hold yet may have gone nowhere.
            await self._resend(only=peer, from_seq=have.get(self.me, 0))
            self._online.add(peer)
            self.mailbox.mark_back(peer)
            self._pending_gone.pop(peer, None)
        elif p["status"] == "offline":
            if not sent and peer not in self.died:  # the broker sent its last will: it died
                self.died.append(peer)
            expected = sent.get(self.me)
            if expected is not None and self._received.get(peer, 0) < expected:
                self._pending_gone[peer] = expected
                asyncio.get_running_loop().call_later(GONE_GRACE_SECONDS, self._expire_gone, peer)
            else:
                log.info("%s: party '%s' went offline", self.me, peer)
                self.mailbox.mark_gone(peer)

    async def wait_for_peers(self, timeout: float = 60.0) -> None:
        """Wait until every peer has announced itself in this session (messages sent to
        a party that has not subscribed yet would be lost by the broker)."""
        deadline = time.monotonic() + timeout
        while missing := sorted(set(self.peers) - self._seen):
            if time.monotonic() > deadline:
                raise ChannelError(f"part{'ies' if len(missing) > 1 else 'y'} "
                                   f"{', '.join(missing)} did not come online within {timeout:g} s")
            await asyncio.sleep(0.05)

    def _expire_gone(self, peer: str) -> None:
        if self._pending_gone.pop(peer, None) is not None:
            self.mailbox.mark_gone(peer)
