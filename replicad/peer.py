"""Replica-to-replica links: authenticated LineReceivers and a small RPC on top.

Each replica dials every other one (a ``ClientService`` per peer, reconnecting with
back-off) and uses that connection for its own requests; it answers the requests of
others on its listening side.  So a connection carries requests one way only, and
either side dying fails every call on it at once.  Line format: replicad.peerwire.

The handshake also compares cluster ids: each factory asks a ``cluster_id`` callable
(the store's id, None while unbound) when a handshake starts.  Two bound replicas of
different clusters refuse each other, with one log line per peer and change (a refused
dialer redials every quarter second), and the dialer's calls fail with PeerUnavailable.

The listening port is bounded like the client port (docs/operations.md, "The peer
port"), because anyone who can reach it can connect before proving anything:

- at most ``max_connections`` open connections; at the limit the oldest connection
  that has not authenticated yet makes room (an attacker cannot hold the slots a
  redialling replica needs), and a replica that authenticates again replaces its own
  older connection (it dials one at a time, so the older one is dead);
- before the handshake a line may be PRE_AUTH_MAX_LINE_BYTES long, and the handshake
  must end within HANDSHAKE_TIMEOUT_S;
- a streamed answer (DELTA, FULL) that makes no progress for ``stream_stall_timeout_s``
  is aborted with its connection: its body holds an SQLite read snapshot, and a frozen
  receiver would otherwise pin it (and grow the WAL) forever;
- refusals of unauthenticated connections are logged at most once per
  REFUSAL_LOG_INTERVAL_S, with a count of the rest: a flood must not flood the log.

Both sides turn TCP keepalive on, so a peer that vanished without a close (power loss,
a partition) is eventually noticed even on a link that carries nothing.
"""

from __future__ import annotations

import collections
import math
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from replicad import peerwire
from replicad.config import PEER_CONNECTIONS_PER_MEMBER, Timers
from replicad.identity import encode_cluster_id
from replicad.peerwire import Frame, PeerWireError
from replicad.turnsend import TurnSendConnecting, TurnSender

HANDSHAKE_TIMEOUT_S = 5.0
# Before the handshake the longest legitimate line is an AUTH or an ERR AUTH (under 300
# bytes): an unauthenticated sender must not make us buffer a whole data line.
PRE_AUTH_MAX_LINE_BYTES = 1024
# A streamed answer is written in batches of at most this many lines and bytes, each
# when the transport has drained the previous one.  The byte bound keeps memory per
# stream small with large values, and gives the stall deadline a fixed amount of data
# to time: a live receiver drains 1 MiB far faster than STREAM_STALL_TIMEOUT_S.
STREAM_BATCH_LINES = 512
STREAM_BATCH_BYTES = 1 << 20
# A stream whose transport has not drained a batch for this long is aborted: the
# default of the stream_stall_timeout setting (config.py says why it is no shorter).
STREAM_STALL_TIMEOUT_S = Timers.stream_stall_timeout
REFUSAL_LOG_INTERVAL_S = 10.0
# A call sweep this late was held up (a paused process, a blocked event loop): it is put
# off one turn so that what arrived meanwhile is read first (PeerClientProtocol._expire).
LATE_SWEEP_S = 0.05
# A link backing off is redialled at once when its peer talks to us (PeerLink.alive_hint),
# at most this often: the back-off's first delay, so a peer whose requests reach us while
# ours are refused (a handshake it refuses) is not redialled at the rate it sends.
EARLY_REDIAL_INTERVAL_S = 0.05
# TCP keepalive on peer links: the kernel's default waits 2 h before the first probe.
KEEPALIVE_IDLE_S = 30
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 3

CLUSTER_REFUSAL = (
    "refusing replica {peer}: it belongs to cluster {theirs}, this replica to cluster "
    "{ours} (a replica of another cluster with the same secret?)"
)

ClusterIdSource = Callable[[], str | None]
CLUSTER_MISMATCH = "cluster mismatch:"     # how an ERR AUTH for this reason begins


def unbound() -> None:
    """The cluster_id source of a replica that has no store (yet): unbound."""
    return None


class _ReportedRefusals:
    """The last cluster refusal logged per peer, so each is logged once until it changes."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str | None, str | None]] = {}

    def first(self, peer_id: int, theirs: str | None, ours: str | None) -> bool:
        """True (and remembered) unless this very refusal was the last one logged."""
        if self._last.get(peer_id) == (theirs, ours):
            return False
        self._last[peer_id] = (theirs, ours)
        return True

    def forget(self, peer_id: int) -> None:
        """The peer authenticated: a later refusal is news again."""
        self._last.pop(peer_id, None)


class PeerUnavailable(Exception):
    """The call did not get an answer: not connected, connection lost, or timed out.

    ``sent`` says whether the request may have reached the peer: a forwarded write
    that was sent and got no answer is in doubt, one that was never sent is not.
    """

    def __init__(self, message: str, sent: bool = False):
        super().__init__(message)
        self.sent = sent


@dataclass
class PeerAnswer:
    """What a request handler returns: a final frame, optionally after a stream of lines."""

    kind: str = "OK"
    payload: str = ""
    body: Iterator[tuple[str, str]] | None = None   # (LINE|REC, text) pairs
    trailer: Callable[[], str] | None = None        # END payload, computed after the body
    # A short body already in memory (a forwarded request's reply): written at once with
    # the final frame, not streamed by a producer.
    lines: tuple[tuple[str, str], ...] = ()


class StreamRefused(Exception):
    """Raised by a streamed answer's body that cannot go on for a reason the sender
    states (a replica stopping on a failed disk): the stream ends with ``ERR
    <payload>`` and one log line, not a traceback."""

    def __init__(self, payload: str):
        super().__init__(payload)
        self.payload = payload


@dataclass
class PeerResponse:
    kind: str
    payload: str
    lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kind in ("OK", "END", "REPLY")


class PeerRequestHandler(Protocol):
    def peer_request(
        self, peer_id: int, verb: str, payload: str
    ) -> PeerAnswer | defer.Deferred[PeerAnswer]: ...


def no_delay(transport) -> None:
    """Turn Nagle off: our messages are small request/answer lines, and Nagle plus the
    peer's delayed ACK stalled a forwarded reply's second frame by about 40 ms."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


#: A peer connection sends as soon as this many messages wait, not only at the end of
#: the reactor turn (turnsend.py): measured best of 4, 8, 16 and 32 for forwarded
#: requests under 50 connections (docs/benchmarks.md).
PEER_SEND_EVERY = 16


def send_mid_turn(transport) -> None:
    """Let a peer connection's messages leave every PEER_SEND_EVERY, so that a peer
    works on the first of a big turn's forwards (or answers) while the rest are made.
    A transport without end-of-turn sends (TLS, a test's) is left as it is."""
    if hasattr(transport, "send_every"):
        transport.send_every = PEER_SEND_EVERY


_KEEPALIVE_OPTIONS = (
    ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
    ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
    ("TCP_KEEPCNT", KEEPALIVE_PROBES),
)


def keep_alive(transport) -> None:
    """TCP keepalive where the transport has it, probing after KEEPALIVE_IDLE_S rather
    than the kernel's 2 h where the platform lets us say so: the listening side of a
    link only answers, so without probes it never notices a dialer that vanished
    without a close, and that dead connection would hold a slot of the peer port."""
    set_keep_alive = getattr(transport, "setTcpKeepAlive", None)
    if set_keep_alive is None:
        return
    set_keep_alive(True)
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, socket.socket):
        return
    for name, value in _KEEPALIVE_OPTIONS:
        option = getattr(socket, name, None)
        if option is None:
            continue
        try:
            handle.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:
            pass    # the platform refuses the tuning: keepalive is still on


class _RateLimitedWarning:
    """At most one warning per ``interval_s`` for one kind of event.  The events in
    between are counted and told in one summary line when the interval ends, so a flood
    of bad connections costs a few log lines, not one per connection."""

    def __init__(self, log: Logger, clock: IReactorTime, interval_s: float, summary: str):
        self.log, self.clock, self.interval_s, self.summary = log, clock, interval_s, summary
        self._quiet_until = -math.inf
        self._held = 0
        self._summary_call = None

    def warn(self, fmt: str, **fields: object) -> None:
        now = self.clock.seconds()
        if now >= self._quiet_until and self._summary_call is None:
            self._quiet_until = now + self.interval_s
            self.log.warn(fmt, **fields)
            return
        self._held += 1
        if self._summary_call is None:
            delay = max(self._quiet_until - now, 0.0)
            self._summary_call = self.clock.callLater(delay, self._summarise)

    def _summarise(self) -> None:
        self._summary_call = None
        held, self._held = self._held, 0
        self._quiet_until = self.clock.seconds() + self.interval_s
        self.log.warn(self.summary, count=held, seconds=self.interval_s)


class _LineProtocol(LineReceiver):
    delimiter = b"\n"

    def send_line(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def decoded(self, raw: bytes) -> str | None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.refuse("line is not valid UTF-8")
            return None

    def dataReceived(self, data: bytes) -> None:
        # Once this side has decided to close, what the peer still sends is moot: it
        # must not draw a second ERR (a real transport stops reading anyway).
        if getattr(self.transport, "disconnecting", False):
            return
        super().dataReceived(data)

    def refuse(self, message: str, code: str = "PROTOCOL") -> None:
        self.report_refusal(message)
        self.send_line(f"ERR {code} {message}")
        self.transport.loseConnection()

    def report_refusal(self, message: str) -> None:
        self.log.warn("closing peer connection from {peer}: {message}",
                      peer=self.transport.getPeer(), message=message)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse("line too long", "LINETOOLONG")


# Listening side ---------------------------------------------------------------------


@implementer(IPullProducer)
class _StreamProducer:
    """Writes one answer's body in batches as the transport drains: bounded memory.

    Every resumeProducing is progress (the transport drained the previous batch); the
    protocol's stall deadline restarts on it."""

    def __init__(self, proto: PeerServerProtocol, rid: int, verb: str, answer: PeerAnswer):
        self.proto, self.rid, self.verb, self.answer = proto, rid, verb, answer
        self.stopped = False

    def resumeProducing(self) -> None:
        assert self.answer.body is not None
        if self.stopped:
            return
        self.proto.stream_progressed()
        # One write per batch: fewer calls, and a peer connection's send_every (which
        # counts writes) never cuts a batch into small sends.
        batch: list[bytes] = []
        written = 0
        delimiter = self.proto.delimiter
        try:
            for _ in range(STREAM_BATCH_LINES):
                kind, text = next(self.answer.body)
                line = Frame(self.rid, kind, text).encode().encode("utf-8") + delimiter
                batch.append(line)
                written += len(line)
                if written >= STREAM_BATCH_BYTES:
                    break
        except StopIteration:
            self._write(batch)
            trailer = self.answer.trailer() if self.answer.trailer else self.answer.payload
            self.proto.send_line(Frame(self.rid, "END", trailer).encode())
            self.proto.stream_finished()
            return
        except Exception as e:
            if isinstance(e, StreamRefused):
                payload = e.payload
                self.proto.log.info("stream {rid} ended: {why}", rid=self.rid, why=payload)
            else:
                payload = "INTERNAL stream failed"
                self.proto.log.failure("stream {rid} failed", rid=self.rid)
            self._write(batch)
            self.proto.send_line(Frame(self.rid, "ERR", payload).encode())
            self.proto.stream_finished()
            return
        self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        if batch:
            self.proto.transport.write(b"".join(batch))

    def stopProducing(self) -> None:
        """Close the body (and with it the read snapshot it holds).  Idempotent: the
        transport calls it too when a connection with a producer is lost."""
        self.stopped = True
        close = getattr(self.answer.body, "close", None)
        if close is not None:
            close()


class PeerServerProtocol(_LineProtocol):
    """The listening side: handshake as server, then answer requests from one peer."""

    log = Logger()

    def __init__(self, factory: PeerServerFactory):
        self.factory = factory
        self.peer_id: int | None = None
        self.nonce = peerwire.new_nonce()
        self.cluster_id: str | None = None        # ours, as sent in HELLO (the MACs cover it)
        self.peer_cluster_id: str | None = None   # the peer's, once authenticated
        # Until the handshake succeeds a line may be PRE_AUTH_MAX_LINE_BYTES long.
        self.MAX_LENGTH = min(PRE_AUTH_MAX_LINE_BYTES, factory.max_line_bytes)
        self._streams: collections.deque[_StreamProducer] = collections.deque()
        self._active: _StreamProducer | None = None
        self._handshake_timer = None
        self._stall_timer = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        keep_alive(self.transport)
        send_mid_turn(self.transport)
        if not self.factory.admit(self):
            self.send_line("ERR BUSY too many peer connections, try later")
            self.transport.loseConnection()
            return
        self.cluster_id = self.factory.cluster_id()
        self.send_line(
            f"HELLO {self.factory.my_id} {self.nonce} {encode_cluster_id(self.cluster_id)}"
        )
        self._handshake_timer = self.factory.clock.callLater(
            HANDSHAKE_TIMEOUT_S, self.refuse, "handshake timed out", "AUTH"
        )

    def evict(self, message: str, code: str = "BUSY") -> None:
        """Close this connection to make room (the factory has already forgotten it).

        A connection in its handshake has written a line or two: closing lets the ERR
        line out.  An authenticated one may hold a stream its dead peer will never read:
        aborting does not wait for that buffer to drain."""
        self._cancel_handshake_timer()
        self.send_line(f"ERR {code} {message}")
        if self.peer_id is None:
            self.transport.loseConnection()
        else:
            self._close_streams()
            self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.connected = False   # Twisted leaves it set; late answers check it
        self.factory.forget(self)
        self._cancel_handshake_timer()
        self._close_streams()

    def _close_streams(self) -> None:
        self._cancel_stall_timer()
        if self._active is not None:
            self._active.stopProducing()
        for stream in self._streams:
            stream.stopProducing()
        self._streams.clear()
        self._active = None

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.cancel()
        self._stall_timer = None

    def refuse(self, message: str, code: str = "PROTOCOL") -> None:
        self._cancel_handshake_timer()      # or it would say "timed out" on the way out
        super().refuse(message, code)

    def report_refusal(self, message: str) -> None:
        if self.peer_id is None:    # anyone can connect: rate-limited
            self.factory.handshake_refusals.warn(
                "closing peer connection from {peer}: {message}",
                peer=self.transport.getPeer(), message=message,
            )
        else:
            super().report_refusal(message)

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def lineReceived(self, raw: bytes) -> None:
        line = self.decoded(raw)
        if line is None:
            return
        if self.peer_id is None:
            self._authenticate(line)
            return
        try:
            frame = peerwire.parse_frame(line)
        except PeerWireError as e:
            self.refuse(str(e))
            return
        if frame.kind not in peerwire.VERBS:
            reason = f"BADVERB unknown verb {frame.kind[:20]}"
            self.send_line(Frame(frame.rid, "ERR", reason).encode())
            return
        self._dispatch(frame)

    def _authenticate(self, line: str) -> None:
        parts = line.split(" ")
        if len(parts) != 5 or parts[0] != "AUTH":
            self.refuse("not authenticated: send AUTH first", "AUTH")
            return
        _, id_text, client_nonce, proof, cluster_text = parts
        try:
            client_id = peerwire.parse_int(id_text, "replica id")
            client_cluster = peerwire.parse_cluster_id(cluster_text)
        except PeerWireError as e:
            self.refuse(str(e), "AUTH")
            return
        if client_id not in self.factory.member_ids or client_id == self.factory.my_id:
            self.refuse(f"replica {client_id} is not a member of this cluster", "AUTH")
            return
        args = (client_id, self.factory.my_id, self.nonce, client_nonce, self.cluster_id,
                client_cluster)
        expected = peerwire.client_proof(self.factory.secret, *args)
        if not peerwire.proofs_match(expected, proof):
            self.refuse("bad proof: is the cluster secret the same on every replica?", "AUTH")
            return
        self._cancel_handshake_timer()
        if peerwire.clusters_conflict(self.cluster_id, client_cluster):
            self._refuse_cluster(client_id, client_cluster)
            return
        self.peer_id = client_id
        self.peer_cluster_id = client_cluster
        self.MAX_LENGTH = self.factory.max_line_bytes
        self.factory.cluster_refusals.forget(client_id)
        self.factory.authenticated(self)
        self.send_line(f"WELCOME {peerwire.server_proof(self.factory.secret, *args)}")

    def _refuse_cluster(self, client_id: int, client_cluster: str | None) -> None:
        """An authenticated replica of another cluster: ERR AUTH, logged once per change."""
        if self.factory.cluster_refusals.first(client_id, client_cluster, self.cluster_id):
            self.log.warn(CLUSTER_REFUSAL, peer=client_id, theirs=client_cluster,
                          ours=self.cluster_id)
        self.send_line(
            f"ERR AUTH {CLUSTER_MISMATCH} replica {client_id} belongs to cluster "
            f"{client_cluster}, replica {self.factory.my_id} to cluster {self.cluster_id}"
        )
        self.transport.loseConnection()

    def _dispatch(self, frame: Frame) -> None:
        assert self.peer_id is not None
        try:
            answer = self.factory.handler.peer_request(self.peer_id, frame.kind,
                                                       frame.payload)
        except Exception:
            self._failed(Failure(), frame)
            return
        if isinstance(answer, defer.Deferred):
            answer.addCallback(self._answer, frame).addErrback(self._failed, frame)
            return
        try:                       # answered at once (most): no Deferred
            self._answer(answer, frame)
        except Exception:
            self._failed(Failure(), frame)

    def _answer(self, answer: PeerAnswer, frame: Frame) -> None:
        if not self.connected:
            if answer.body is not None and hasattr(answer.body, "close"):
                answer.body.close()
            return
        if answer.body is None:
            frames = [Frame(frame.rid, kind, text).encode() for kind, text in answer.lines]
            frames.append(Frame(frame.rid, answer.kind, answer.payload).encode())
            self.transport.write("".join(f + "\n" for f in frames).encode("utf-8"))
            return
        self._streams.append(_StreamProducer(self, frame.rid, frame.kind, answer))
        self._next_stream()

    def _failed(self, failure, frame: Frame) -> None:
        if failure.check(PeerWireError):
            message = f"BADARGS {failure.value}"
        else:
            self.log.failure("peer request {verb} failed", failure, verb=frame.kind)
            message = "INTERNAL request failed"
        if self.connected:
            self.send_line(Frame(frame.rid, "ERR", message).encode())

    def _next_stream(self) -> None:
        if self._active is None and self._streams:
            self._active = self._streams.popleft()
            # Armed before registering: a real transport asks for the first batch at once.
            self._stall_timer = self.factory.clock.callLater(
                self.factory.stream_stall_timeout_s, self._stream_stalled
            )
            self.transport.registerProducer(self._active, False)

    def stream_progressed(self) -> None:
        if self._stall_timer is not None and self._stall_timer.active():
            self._stall_timer.reset(self.factory.stream_stall_timeout_s)

    def stream_finished(self) -> None:
        self._cancel_stall_timer()
        self.transport.unregisterProducer()
        self._active = None
        self._next_stream()

    def _stream_stalled(self) -> None:
        """The transport has not drained for stream_stall_timeout_s: the receiver stopped
        reading (frozen, overloaded, or gone without a close).  Close the body first, so
        its read snapshot is released whatever the transport does, then drop the
        connection without waiting for a buffer that will not drain."""
        self._stall_timer = None
        active = self._active
        if active is None:
            return
        self.log.warn(
            "aborting {verb} stream {rid} to replica {peer} and its connection: no progress "
            "for {seconds:g} s (the receiver stopped reading); its read snapshot is released",
            verb=active.verb, rid=active.rid, peer=self.peer_id,
            seconds=self.factory.stream_stall_timeout_s,
        )
        self._close_streams()
        self.transport.unregisterProducer()
        self.transport.abortConnection()


class PeerServerFactory(Factory):
    """The listening side's shared state: the handler, and the open connections (oldest
    first) that ``max_connections`` bounds (None: PEER_CONNECTIONS_PER_MEMBER per
    member)."""

    noisy = False
    log = Logger()

    def __init__(self, my_id: int, member_ids: set[int], secret: str,
                 handler: PeerRequestHandler, clock: IReactorTime, max_line_bytes: int,
                 cluster_id: ClusterIdSource = unbound, max_connections: int | None = None,
                 stream_stall_timeout_s: float = STREAM_STALL_TIMEOUT_S):
        self.my_id, self.member_ids, self.secret = my_id, member_ids, secret
        self.handler, self.clock, self.max_line_bytes = handler, clock, max_line_bytes
        self.cluster_id = cluster_id     # asked at each handshake: a replica binds later
        self.cluster_refusals = _ReportedRefusals()
        self.max_connections = (max_connections if max_connections is not None
                                else PEER_CONNECTIONS_PER_MEMBER * len(member_ids))
        self.stream_stall_timeout_s = stream_stall_timeout_s
        # Open connections in the order they came (a dict keeps it): the oldest
        # unauthenticated one is the first to go when the port is full.
        self.connections: dict[PeerServerProtocol, None] = {}
        self.handshake_refusals = _RateLimitedWarning(
            self.log, clock, REFUSAL_LOG_INTERVAL_S,
            "closed {count} more unauthenticated peer connections in the last {seconds:g} s",
        )
        self.full_port = _RateLimitedWarning(
            self.log, clock, REFUSAL_LOG_INTERVAL_S,
            "closed {count} more peer connections at the connection limit in the last "
            "{seconds:g} s",
        )

    def buildProtocol(self, addr) -> PeerServerProtocol:
        return PeerServerProtocol(self)

    def admit(self, proto: PeerServerProtocol) -> bool:
        """Count a new connection in; False if it must be closed at once.

        At the limit the oldest connection still in its handshake is closed instead:
        refusing the newest would let anyone hold every slot with idle connections
        (renewed each HANDSHAKE_TIMEOUT_S) and keep a redialling replica out for good.
        Authenticated connections are at most one per other member (``authenticated``),
        so with max_connections >= N there is always a handshake to close."""
        if len(self.connections) >= self.max_connections:
            oldest = next((p for p in self.connections if p.peer_id is None), None)
            if oldest is None:
                self.full_port.warn(
                    "peer port full ({limit} connections, all authenticated): closing the "
                    "new connection from {peer}",
                    limit=self.max_connections, peer=proto.transport.getPeer(),
                )
                return False
            self.full_port.warn(
                "peer port full ({limit} connections): closing the oldest unauthenticated "
                "one, from {peer}",
                limit=self.max_connections, peer=oldest.transport.getPeer(),
            )
            del self.connections[oldest]
            oldest.evict("too many peer connections, try later")
        self.connections[proto] = None
        return True

    def authenticated(self, proto: PeerServerProtocol) -> None:
        """A replica dials one connection at a time, so an older connection of the same
        replica is dead (it went without a close): drop it, with any stream on it."""
        for other in list(self.connections):
            if other is not proto and other.peer_id == proto.peer_id:
                self.log.info("replica {peer} connected again: dropping its previous "
                              "connection", peer=proto.peer_id)
                del self.connections[other]
                other.evict("replaced by a newer connection from the same replica",
                            "PROTOCOL")

    def forget(self, proto: PeerServerProtocol) -> None:
        self.connections.pop(proto, None)


# Dialing side -----------------------------------------------------------------------


@dataclass
class _PendingCall:
    deferred: defer.Deferred | None     # call(): fired with the answer
    timeout_s: float
    on_line: Callable[[str, str], None] | None
    done: Callable[[PeerResponse | None, Exception | None], None] | None = None   # send()
    deadline: float = 0.0     # the next frame of the answer is due by then
    lines: list[tuple[str, str]] = field(default_factory=list)


@implementer(IPushProducer)
class _Congestion:
    """Registered as the producer of a dialing connection: the transport pauses it when
    its write buffer is full, i.e. the peer stopped reading (frozen, overloaded)."""

    congested = False

    def pauseProducing(self) -> None:
        self.congested = True

    def resumeProducing(self) -> None:
        self.congested = False

    def stopProducing(self) -> None:
        self.congested = True


class PeerClientProtocol(_LineProtocol):
    """The dialing side: handshake as client, then ``call()`` with per-call timeouts.

    A peer that stops reading makes calls fail at once (not sent) instead of queueing
    more bytes for it: pushes to a frozen follower must not grow the coordinator's
    memory; anti-entropy fills the gap once it reads again."""

    log = Logger()

    def __init__(self, factory: PeerClientFactory):
        self.factory = factory
        # Until the handshake succeeds a line may be PRE_AUTH_MAX_LINE_BYTES long.
        self.MAX_LENGTH = min(PRE_AUTH_MAX_LINE_BYTES, factory.max_line_bytes)
        self._nonce = peerwire.new_nonce()
        self._server_nonce: str | None = None
        self.cluster_id: str | None = None        # ours, as sent in AUTH (the MACs cover it)
        self.peer_cluster_id: str | None = None   # the peer's, from HELLO; proven by WELCOME
        self._ready = False
        self._next_rid = 1
        self._calls: dict[int, _PendingCall] = {}
        # One timer for all calls, due at or before the earliest deadline (_arm): a
        # timer per call was a tenth of a forwarding follower's time.
        self._sweep = None
        self._sweep_at = 0.0
        self._graced = False        # the last sweep was put off a turn (_expire)
        # When the last frame of a streamed answer came: an answer sent after the
        # stream's frames arrives after them (_expire).
        self._streamed_at = -math.inf
        self._handshake_timer = None
        self._ready_waiters: list[defer.Deferred[PeerClientProtocol]] = []
        self._failure: PeerUnavailable | None = None

    @property
    def authenticated(self) -> defer.Deferred[PeerClientProtocol]:
        """Same as when_ready(): a fresh Deferred per use, so none is left unhandled."""
        return self.when_ready()

    def when_ready(self) -> defer.Deferred[PeerClientProtocol]:
        """A fresh Deferred that fires with this protocol once the handshake is done."""
        if self._ready:
            return defer.succeed(self)
        if self._failure is not None:
            return defer.fail(self._failure)
        waiter: defer.Deferred[PeerClientProtocol] = defer.Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def _settle_waiters(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if waiter.called:     # cancelled by a caller's timeout
                continue
            if self._ready:
                waiter.callback(self)
            else:
                waiter.errback(self._failure or PeerUnavailable("handshake failed"))

    def connectionMade(self) -> None:
        no_delay(self.transport)
        keep_alive(self.transport)
        send_mid_turn(self.transport)
        self.congestion = _Congestion()
        self.transport.registerProducer(self.congestion, True)
        # A peer that accepts but never answers (frozen, overloaded) must not wedge the
        # link: give up, and let ClientService dial again.
        self._handshake_timer = self.factory.clock.callLater(
            HANDSHAKE_TIMEOUT_S, self._abort, "handshake timed out"
        )

    def lineReceived(self, raw: bytes) -> None:
        line = self.decoded(raw)
        if line is None:
            return
        if not self._ready:
            self._handshake(line)
            return
        try:
            frame = peerwire.parse_frame(line)
        except PeerWireError as e:
            self.refuse(str(e))
            return
        call = self._calls.get(frame.rid)
        if call is None:
            return  # the call timed out already; its late frames are dropped
        if frame.kind in peerwire.STREAM_KINDS:
            # a final frame ends the call instead
            self._streamed_at = self._restart_timer(frame.rid, call)
            if call.on_line is not None:
                try:
                    call.on_line(frame.kind, frame.payload)
                except Exception as e:  # a bad record fails this call, not the link
                    self._finish(frame.rid, error=e)
            else:
                call.lines.append((frame.kind, frame.payload))
            return
        if frame.kind not in peerwire.FINAL_KINDS:
            # Not an answer this protocol knows: fail this call (as a bad record does),
            # rather than hand the caller a response it has no branch for.
            self._finish(frame.rid, error=PeerWireError(
                f"unexpected answer {frame.kind[:20]!r} from replica "
                f"{self.factory.expected_peer_id}"
            ))
            return
        self._finish(frame.rid, PeerResponse(frame.kind, frame.payload, call.lines))

    def _handshake(self, line: str) -> None:
        f = self.factory
        parts = line.split(" ")
        if self._server_nonce is None and len(parts) == 4 and parts[0] == "HELLO":
            if parts[1] != str(f.expected_peer_id):
                self._abort(f"expected replica {f.expected_peer_id}, found replica {parts[1][:10]}")
                return
            try:
                self.peer_cluster_id = peerwire.parse_cluster_id(parts[3])
            except PeerWireError as e:
                self._abort(f"handshake failed: {e}")
                return
            self._server_nonce = parts[2]
            self.cluster_id = f.cluster_id()
            proof = peerwire.client_proof(f.secret, f.my_id, f.expected_peer_id,
                                          self._server_nonce, self._nonce,
                                          self.peer_cluster_id, self.cluster_id)
            self.send_line(
                f"AUTH {f.my_id} {self._nonce} {proof} {encode_cluster_id(self.cluster_id)}"
            )
            return
        conflict = peerwire.clusters_conflict(self.cluster_id, self.peer_cluster_id)
        if self._server_nonce is not None and len(parts) == 2 and parts[0] == "WELCOME":
            expected = peerwire.server_proof(f.secret, f.my_id, f.expected_peer_id,
                                             self._server_nonce, self._nonce,
                                             self.peer_cluster_id, self.cluster_id)
            if peerwire.proofs_match(expected, parts[1]):
                if conflict:   # a listener that should have refused: we refuse instead
                    self._refuse_cluster()
                    return
                f.cluster_refusals.forget(f.expected_peer_id)
                self._ready = True
                self.MAX_LENGTH = f.max_line_bytes
                self._cancel_handshake_timer()
                self._settle_waiters()
                if self.factory.on_ready is not None:
                    self.factory.on_ready(self)
                return
            self._abort("peer failed to prove it knows the cluster secret")
            return
        if conflict and line.startswith(f"ERR AUTH {CLUSTER_MISMATCH} "):
            self._refuse_cluster()   # the listener saw the conflict first and said so
            return
        self._abort(f"handshake failed: {line[:120]}")

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._ready:
            self._abort(f"handshake line over {self.MAX_LENGTH} bytes")
            return
        super().lineLengthExceeded(line)

    def _refuse_cluster(self) -> None:
        f = self.factory
        theirs, ours = self.peer_cluster_id, self.cluster_id
        if f.cluster_refusals.first(f.expected_peer_id, theirs, ours):
            self.log.warn(CLUSTER_REFUSAL, peer=f.expected_peer_id, theirs=theirs, ours=ours)
        self._abort(
            f"replica {f.expected_peer_id} belongs to cluster {theirs}, "
            f"this replica to cluster {ours}",
            quiet=True,
        )

    def _abort(self, message: str, quiet: bool = False) -> None:
        if not quiet:
            self.log.warn("peer {peer}: {message}", peer=self.factory.expected_peer_id,
                          message=message)
        self.transport.loseConnection()
        self._failure = PeerUnavailable(message)
        self._settle_waiters()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def connectionLost(self, reason: object = None) -> None:
        self._cancel_handshake_timer()
        if not self._ready and self._failure is None:
            self._failure = PeerUnavailable("connection lost during handshake")
        self._settle_waiters()
        for rid in list(self._calls):
            self._finish(rid, error=PeerUnavailable("connection lost", sent=True))
        if self._ready and self.factory.on_lost is not None:
            self.factory.on_lost(self)

    def call(self, verb: str, payload: str = "", timeout_s: float = 1.0,
             on_line: Callable[[str, str], None] | None = None,
             first_timeout_s: float | None = None) -> defer.Deferred[PeerResponse]:
        """Send one request; the Deferred fires with the final frame or PeerUnavailable.

        The first frame must come within ``first_timeout_s`` (default timeout_s); the
        timeout then restarts on every frame of the answer, so a long stream that keeps
        flowing is not cut, but a silent peer is.
        """
        if self.congestion.congested:
            return defer.fail(self._not_reading())
        call = _PendingCall(defer.Deferred(), timeout_s, on_line)
        self._start(call, verb, payload, first_timeout_s)
        return call.deferred

    def send(self, verb: str, payload: str, timeout_s: float,
             done: Callable[[PeerResponse | None, Exception | None], None]) -> int:
        """call() without a Deferred, for a follower's forwards (its hot path): ``done``
        gets (the final frame, None) or (None, the error) later, never from in here;
        PeerUnavailable (not sent) is raised at once if the peer is not reading.  The
        call's id is returned for forget()."""
        if self.congestion.congested:
            raise self._not_reading()
        return self._start(_PendingCall(None, timeout_s, None, done), verb, payload, None)

    def forget(self, rid: int) -> None:
        """Stop waiting for a call sent with send(): its answer, if one comes, is
        dropped, and ``done`` is not called."""
        if self._calls.pop(rid, None) is not None and not self._calls:
            self._cancel_sweep()

    def _not_reading(self) -> PeerUnavailable:
        return PeerUnavailable(
            f"replica {self.factory.expected_peer_id} is not reading (its link is congested)")

    def _start(self, call: _PendingCall, verb: str, payload: str,
               first_timeout_s: float | None) -> int:
        rid = self._next_rid
        self._next_rid += 1
        self._calls[rid] = call
        self._restart_timer(rid, call, first_timeout_s)
        self.send_line(Frame(rid, verb, payload).encode())
        return rid

    def _restart_timer(self, rid: int, call: _PendingCall,
                       timeout_s: float | None = None) -> float:
        """The call's next frame is due ``timeout_s`` (default its timeout) from now;
        returns now (the clock's reading)."""
        now = self.factory.clock.seconds()
        call.deadline = now + (call.timeout_s if timeout_s is None else timeout_s)
        # A deadline only moves later for a call already armed for: the sweep, due at
        # or before the old one, still comes in time and re-arms for the new one.
        self._arm(call.deadline)
        return now

    def _arm(self, deadline: float) -> None:
        """Make sure the sweep runs at or before ``deadline``."""
        sweep = self._sweep
        if sweep is not None and sweep.active():
            if deadline >= self._sweep_at:
                return
            sweep.cancel()
        clock = self.factory.clock
        self._sweep_at = deadline
        self._sweep = clock.callLater(max(deadline - clock.seconds(), 0.0), self._expire)

    def _expire(self) -> None:
        """Time out every call whose deadline has passed; re-arm for the others.

        Two deadlines that passed say nothing of the peer.  A sweep that runs late (this
        process was paused, SIGSTOP, or its event loop blocked) is put off one turn, so
        that answers which came meanwhile are read first: the reactor runs due timers
        before it polls, so a follower woken from a pause could time out its
        coordinator's answer to the heartbeat, waiting in the socket, and elect.  And a
        call whose answer is behind a streamed answer's frames (a FULL or DELTA on the
        same connection) waits while they keep coming: it cannot arrive before them,
        and a follower pulling 100,000 records from its coordinator timed out the
        heartbeat's answer behind them and held an election, twice."""
        self._sweep = None
        clock = self.factory.clock
        if clock.seconds() - self._sweep_at > LATE_SWEEP_S and not self._graced:
            self._graced = True
            self._sweep_at = clock.seconds()
            self._sweep = clock.callLater(0, self._expire)
            return
        self._graced = False
        now = max(clock.seconds(), self._sweep_at)   # float rounding
        for rid in [rid for rid, call in self._calls.items() if call.deadline <= now]:
            call = self._calls.get(rid)
            if call is None:
                continue        # finished by an earlier timeout's callbacks
            behind_stream = self._streamed_at + call.timeout_s
            if behind_stream > now:
                call.deadline = behind_stream
                continue
            self._timed_out(rid)
        if self._calls:
            self._arm(min(call.deadline for call in self._calls.values()))

    def _timed_out(self, rid: int) -> None:
        # The exception is made here, not with the timer: most calls never time out,
        # and making one per call was 3 % of a forwarding follower's time.
        self._finish(rid, None, PeerUnavailable("timed out", sent=True))

    def _finish(self, rid: int, response: PeerResponse | None = None,
                error: Exception | None = None) -> None:
        call = self._calls.pop(rid, None)
        if call is None:
            return
        if not self._calls:
            self._cancel_sweep()      # nothing left to time out: leave no timer behind
        if call.done is not None:
            call.done(response, error)
        elif error is not None:
            call.deferred.errback(error)
        else:
            call.deferred.callback(response)

    def _cancel_sweep(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None


class PeerClientFactory(Factory):
    noisy = False

    def __init__(self, my_id: int, expected_peer_id: int, secret: str, clock: IReactorTime,
                 max_line_bytes: int, cluster_id: ClusterIdSource = unbound):
        self.my_id, self.expected_peer_id, self.secret = my_id, expected_peer_id, secret
        self.clock, self.max_line_bytes = clock, max_line_bytes
        self.cluster_id = cluster_id     # asked at each handshake: a replica binds later
        self.cluster_refusals = _ReportedRefusals()
        self.on_lost: Callable[[PeerClientProtocol], None] | None = None
        self.on_ready: Callable[[PeerClientProtocol], None] | None = None

    def buildProtocol(self, addr) -> PeerClientProtocol:
        return PeerClientProtocol(self)


class _RedialClock:
    """The clock a link's ClientService schedules its reconnection with (its ``clock``
    argument), keeping the scheduled attempt so that it can be brought forward
    (``redial_now``): ClientService has no call for that, and its back-off, up to
    max_retry_delay_s plus jitter, is longer than a ping's timeout.  ClientService
    schedules nothing else with its clock (Twisted 26: its Waiting state's retry only)."""

    def __init__(self, reactor):
        self._reactor = reactor
        self._retry: IDelayedCall | None = None
        self._redialled_at = -math.inf

    def seconds(self) -> float:
        return self._reactor.seconds()

    def getDelayedCalls(self):
        return self._reactor.getDelayedCalls()

    def callLater(self, delay: float, f, *args, **kwargs) -> IDelayedCall:
        self._retry = self._reactor.callLater(delay, f, *args, **kwargs)
        return self._retry

    def redial_now(self) -> None:
        """Make a waiting reconnection attempt now (at most every
        EARLY_REDIAL_INTERVAL_S); nothing while connected or connecting."""
        retry, now = self._retry, self._reactor.seconds()
        if (retry is None or not retry.active()
                or now - self._redialled_at < EARLY_REDIAL_INTERVAL_S):
            return
        self._redialled_at = now
        self._retry = None
        retry.reset(0)


class _QuietClientService(ClientService):
    """A ClientService that keeps only warnings: it logs every reconnect attempt at
    info, a line every half second for a peer that is down for a day.  The replica
    logs peers going down and coming back instead."""

    _log = Logger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )


class PeerLink:
    """The link to one peer: a reconnecting ClientService plus ``call()``."""

    log = Logger()

    def __init__(self, reactor, my_id: int, peer_id: int, endpoint_spec: str, secret: str,
                 max_line_bytes: int, max_retry_delay_s: float = 0.25,
                 cluster_id: ClusterIdSource = unbound,
                 turn_sender: TurnSender | None = None):
        self.peer_id = peer_id
        # The peer's cluster id as of the last authenticated connection (None: unbound
        # then, or never connected).
        self.peer_cluster_id: str | None = None
        # True from losing an authenticated connection until the next one: calls then
        # fail at once instead of waiting for ClientService's next attempt (a SIGKILLed
        # peer closes its connections, so this is how a crash is noticed in milliseconds).
        self.down = False
        self._ready_proto: PeerClientProtocol | None = None   # authenticated, connected
        self.on_down: Callable[[], None] | None = None
        self.on_up: Callable[[], None] | None = None
        factory = PeerClientFactory(my_id, peer_id, secret, reactor, max_line_bytes,
                                    cluster_id=cluster_id)
        factory.on_lost = self._lost
        factory.on_ready = self._up
        self.factory = factory
        # No prepareConnection: when it fails, ClientService later meets the failed
        # connection's close in a state with no transition for it and logs an
        # "Unhandled Error" (Twisted 26).  Calls wait for the handshake themselves.
        dialler = reactor
        if turn_sender is not None and endpoint_spec.startswith("tcp:"):
            # Plain TCP: calls leave at the end of the turn, unregistered (turnsend.py).
            dialler = TurnSendConnecting(reactor, turn_sender)
        self._redial = _RedialClock(reactor)
        self.service = _QuietClientService(
            clientFromString(dialler, endpoint_spec),
            factory,
            # backoffPolicy's default jitter adds up to a whole second; a returning
            # replica must be redialled within about max_retry_delay_s (or at once once
            # it talks to us: alive_hint).
            retryPolicy=backoffPolicy(
                initialDelay=0.05, maxDelay=max_retry_delay_s,
                jitter=lambda: random.uniform(0, 0.05),
            ),
            clock=self._redial,
        )
        self._clock = reactor

    def _up(self, proto: PeerClientProtocol) -> None:
        self.peer_cluster_id = proto.peer_cluster_id
        self.down = False
        self._ready_proto = proto
        if self.on_up is not None:
            self.on_up()

    def _lost(self, proto: PeerClientProtocol) -> None:
        self.down = True
        if self._ready_proto is proto:
            self._ready_proto = None
        if self.on_down is not None:
            self.on_down()

    def abort(self) -> None:
        """Drop the connection at once (service stop): a graceful close of a TLS
        connection waits for the peer's close_notify, which a peer that is stopping
        too may never send, and SIGTERM would then take seconds."""
        proto = self._ready_proto
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def alive_hint(self) -> None:
        """The peer just talked to us, so it is up: calls wait for the reconnection
        instead of failing fast, and a reconnection waiting out its back-off is made
        now.  A replica that came back was pinged by a follower whose link to it still
        backed off (up to 0.3 s, longer than ping_timeout): the ping timed out, the
        follower held an election and clients waited (bench/failover.py's bully-back)."""
        self.down = False
        if self._ready_proto is None:
            self._redial.redial_now()

    def call(self, verb: str, payload: str = "", timeout_s: float = 1.0,
             on_line: Callable[[str, str], None] | None = None) -> defer.Deferred[PeerResponse]:
        """Call the peer, connecting first if needed; errbacks PeerUnavailable only.

        On an authenticated connection the request is written at once (the hot path:
        pushes, forwards, pings).  Otherwise the call starts on the next reactor turn:
        callers often react to one call's failure by making another, from inside
        ClientService's own callbacks, and ClientService.whenConnected must not be
        entered re-entrantly.
        """
        proto = self._ready_proto
        if proto is not None and not self.down:
            d = proto.call(verb, payload, timeout_s, on_line)
            return d.addErrback(self._unavailable, verb, timeout_s)
        result: defer.Deferred[PeerResponse] = defer.Deferred()
        self._clock.callLater(0, self._start_call, result, verb, payload, timeout_s, on_line)
        return result

    def send(self, verb: str, payload: str, timeout_s: float,
             done: Callable[[PeerResponse | None, Exception | None], None],
             ) -> tuple[PeerClientProtocol, int] | None:
        """PeerClientProtocol.send on the authenticated connection, returning it and the
        call's id (for its forget()); None when there is none (use call(), which
        connects first).  Raises PeerUnavailable (not sent) if the peer is not reading."""
        proto = self._ready_proto
        if proto is None or self.down:
            return None
        return proto, proto.send(verb, payload, timeout_s, done)

    def _start_call(self, result: defer.Deferred, verb: str, payload: str, timeout_s: float,
                    on_line: Callable[[str, str], None] | None) -> None:
        if self.down:
            result.errback(PeerUnavailable(f"replica {self.peer_id}: connection lost"))
            return
        # One deadline for connecting and the first answer together: a caller that
        # assumes timeout_s (an ELECTION round, a forward) is never outlived.
        deadline = self._clock.seconds() + timeout_s
        connected = self.service.whenConnected(failAfterFailures=1)
        connected.addCallback(lambda proto: proto.when_ready())
        connected.addTimeout(timeout_s, self._clock)

        def send(proto: PeerClientProtocol):
            remaining = max(deadline - self._clock.seconds(), 0.0)
            return proto.call(verb, payload, timeout_s, on_line, first_timeout_s=remaining)

        connected.addCallback(send).addErrback(self._unavailable, verb, timeout_s)
        connected.chainDeferred(result)

    def _unavailable(self, failure, verb: str, timeout_s: float):
        """Every way a call can fail, as PeerUnavailable (sent or not)."""
        if failure.check(PeerUnavailable):
            return failure
        if failure.check(PeerWireError):   # a bad record in a stream: fail the call
            raise PeerUnavailable(f"replica {self.peer_id}: {failure.value}", sent=True)
        if failure.check(defer.TimeoutError, defer.CancelledError):
            raise PeerUnavailable(f"replica {self.peer_id}: no connection within {timeout_s:g} s")
        if failure.check(error.ConnectError, error.ConnectionLost):
            raise PeerUnavailable(f"replica {self.peer_id}: {failure.getErrorMessage()}")
        self.log.failure("call {verb} to replica {peer} failed", failure, verb=verb,
                         peer=self.peer_id)
        raise PeerUnavailable(f"replica {self.peer_id}: {failure.getErrorMessage()}")
