"""One-shot replicad clients: a Twisted one and a blocking one, sharing one retry policy.

Every attempt opens a new connection, sends one request carrying the session context,
reads one reply and closes (DESIGN.md: clients are one-shot).  What to do after an
attempt (retry elsewhere, give up, hand the reply over) is decided by the pure policy in
replicad.retry, whose names are re-exported here for callers of the client.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver

from replicad import wire
from replicad.config import Address, parse_address
from replicad.retry import (  # noqa: F401  (re-exported: the client's public API)
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    IN_DOUBT_CODES,
    RETRYABLE_CODES,
    Attempt,
    Backoff,
    ClientError,
    InvalidRequest,
    NoServerAvailable,
    Outcome,
    OutcomeUnknown,
    RetryPlan,
    ServerError,
    UnexpectedReply,
    Verdict,
    WriteInDoubt,
    classify,
)
from replicad.session import ClientSession
from replicad.vclock import ClockError, VectorClock
from replicad.wire import Code, Reply, Request, WireError

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
# A reply line holds at most one value; servers may allow large values, so be generous
# but bounded so a broken peer cannot make us buffer forever.
MAX_REPLY_LINE_BYTES = 64 * 1024 * 1024

# Shape-only checks: the client does not know the server's size limits, the server does.
SHAPE_ONLY = wire.Limits(max_key_bytes=2**62, max_value_bytes=2**62)


# Requests and replies (pure) ----------------------------------------------------------


def build_request(
    command: str, key: str | None = None, value: str | None = None,
    limits: wire.Limits = SHAPE_ONLY,
) -> Request:
    """A Request whose key and value the line protocol can carry, else InvalidRequest."""
    try:
        if key is not None:
            wire.check_key(key, limits)
        if value is not None:
            wire.check_value(value, limits)
    except WireError as e:
        raise InvalidRequest(e.code, e.message) from None
    return Request(command, key, value)


def encode_line(request: Request, session: ClientSession, password: str | None = None) -> bytes:
    """What one attempt sends: AUTH first when the cluster needs a password (pipelined
    on the same connection), then the request with the session's context."""
    line = request.with_context(session.context()).encode() + wire.EOL
    if password is not None:
        line = Request("AUTH", None, password).encode() + wire.EOL + line
    return line.encode("utf-8")


class _Replies:
    """Parses the replies to one attempt: the AUTH answer (skipped when OK, final when
    an error), then the request's reply."""

    def __init__(self, auth_sent: bool):
        self._parser = wire.ReplyParser()
        self._auth_pending = auth_sent

    def feed(self, line: str) -> Reply | None:
        reply = self._parser.feed(line)
        if reply is not None and self._auth_pending:
            self._auth_pending = False
            if not reply.is_error:
                return None
        return reply


def raise_for_error(reply: Reply, address: str) -> None:
    if not reply.is_error:
        return
    code = reply.error_code or Code.INTERNAL
    kind = WriteInDoubt if code in IN_DOUBT_CODES else ServerError
    raise kind(code, reply.error_message, address)


def _expect(reply: Reply, address: str, *statuses: str) -> None:
    raise_for_error(reply, address)
    if reply.status not in statuses:
        raise UnexpectedReply(
            f"{address} answered {reply.status} {reply.text}".rstrip()
            + f", expected {' or '.join(statuses)}"
        )


def get_result(reply: Reply, address: str) -> str | None:
    _expect(reply, address, "VALUE", "NOTFOUND")
    return reply.text if reply.status == "VALUE" else None


def put_result(reply: Reply, address: str) -> None:
    _expect(reply, address, "OK")


def delete_result(reply: Reply, address: str) -> bool:
    _expect(reply, address, "OK", "NOTFOUND")
    return reply.status == "OK"


def keys_result(reply: Reply, address: str) -> list[str]:
    _expect(reply, address, "KEYS")
    return list(reply.lines)


def status_result(reply: Reply, address: str) -> dict[str, Any]:
    _expect(reply, address, "STATUS")
    return parse_status(reply.lines, address)


STATUS_FIELDS = ("id", "role", "coordinator", "epoch", "clock", "keys", "peers", "conflicts")
_INT_FIELDS = frozenset({"id", "epoch", "keys", "conflicts", "write_quorum"})


def parse_status(lines: tuple[str, ...], server: str) -> dict[str, Any]:
    """STATUS body -> typed dict; a field the server words unexpectedly stays a string."""
    status: dict[str, Any] = {name: None for name in STATUS_FIELDS}
    for name, text in wire.parse_status_lines(lines).items():
        status[name] = _typed_field(name, text.strip())
    status["server"] = server
    return status


def _typed_field(name: str, text: str) -> Any:
    if name in _INT_FIELDS:
        return int(text) if text.isascii() and text.isdigit() else text
    if name == "coordinator":
        return int(text) if text.isascii() and text.isdigit() else None
    if name == "clock":
        try:
            return {str(k): v for k, v in VectorClock.decode(text).items()}
        except ClockError:
            return text
    if name == "peers":
        if text in ("", "-"):
            return {}
        peers = {}
        for part in text.split(","):
            replica, sep, state = part.partition(":")
            if not sep:
                return text
            peers[replica.strip()] = state.strip()
        return peers
    return text


def normalise_servers(servers: list[str]) -> dict[str, Address]:
    """``host:port`` strings -> canonical string -> Address (ConfigError if malformed)."""
    if not servers:
        raise ValueError("at least one server address is needed")
    parsed: dict[str, Address] = {}
    for text in servers:
        address = parse_address(text, "server address")
        parsed.setdefault(str(address), address)
    return parsed


# The Twisted client -------------------------------------------------------------------

T = TypeVar("T")


class _OneShot(LineOnlyReceiver):
    """Write one request line, read one reply; ``done`` fires with a Reply or a reason."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE_BYTES

    def __init__(self, line: bytes, auth_sent: bool = False):
        self._line = line
        self._parser = _Replies(auth_sent)
        self.sent = False
        self.done: defer.Deferred[Reply | str] = defer.Deferred(self._cancel)

    def connectionMade(self) -> None:
        self.transport.write(self._line)
        self.sent = True

    def lineReceived(self, line: bytes) -> None:
        if self.done.called:
            return
        try:
            reply = self._parser.feed(wire.decode_line(line))
        except WireError as e:
            self._finish(f"sent a garbled reply ({e.message})")
            return
        if reply is not None:
            self._finish(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(f"sent a reply line over {self.MAX_LENGTH} bytes")

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback("closed the connection before a complete reply")

    def _finish(self, result: Reply | str) -> None:
        if not self.done.called:
            self.done.callback(result)
        self.transport.loseConnection()

    def _cancel(self, _: defer.Deferred) -> None:
        self.transport.abortConnection()


class _ClientSettings:
    """What both clients are configured with; the session is updated in place."""

    def __init__(
        self,
        servers: list[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: ClientSession | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        reply_timeout_s: float | None = None,
        password: str | None = None,
    ):
        self.password = password   # sent as AUTH when the cluster sets client_password
        self._addresses = normalise_servers(servers)
        self.servers = list(self._addresses)
        self.timeout_s = timeout_s
        self.session = session if session is not None else ClientSession()
        self.connect_timeout_s = connect_timeout_s
        # None: wait for a reply until the overall deadline (a server may legitimately
        # spend seconds waiting for an election before it answers).
        self.reply_timeout_s = reply_timeout_s


class ReplicadClient(_ClientSettings):
    """The Twisted client: every method returns a Deferred.

    timeout_s bounds a whole call, retries included; connect_timeout_s one connection
    attempt; reply_timeout_s (default: until the deadline) the wait for a reply after
    sending, which only matters for reads: a write is never sent twice.  The session is
    updated in place by every reply, so share one client (or session) per session.
    """

    def __init__(
        self,
        reactor: Any,
        servers: list[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        session: ClientSession | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        reply_timeout_s: float | None = None,
        password: str | None = None,
    ):
        super().__init__(servers, timeout_s, session, connect_timeout_s, reply_timeout_s,
                         password)
        self._reactor = reactor

    def request(self, request: Request) -> defer.Deferred[Reply]:
        d = self._exchange(request)
        d.addCallback(lambda pair: pair[0])
        return d

    def get(self, key: str) -> defer.Deferred[str | None]:
        return self._call(lambda: build_request("GET", key), get_result)

    def put(self, key: str, value: str) -> defer.Deferred[None]:
        return self._call(lambda: build_request("PUT", key, value), put_result)

    def delete(self, key: str) -> defer.Deferred[bool]:
        return self._call(lambda: build_request("DEL", key), delete_result)

    def keys(self, prefix: str = "") -> defer.Deferred[list[str]]:
        return self._call(lambda: build_request("KEYS", prefix or None), keys_result)

    def status(self) -> defer.Deferred[dict[str, Any]]:
        return self._call(lambda: build_request("STATUS"), status_result)

    def _call(
        self, build: Callable[[], Request], interpret: Callable[[Reply, str], T]
    ) -> defer.Deferred[T]:
        try:
            request = build()
        except ClientError:
            return defer.fail()
        d = self._exchange(request)
        d.addCallback(lambda pair: interpret(*pair))
        return d

    def _exchange(self, request: Request) -> defer.Deferred[tuple[Reply, str]]:
        return defer.Deferred.fromCoroutine(self._run(request))

    async def _run(self, request: Request) -> tuple[Reply, str]:
        plan = RetryPlan(request, self.servers, self.session, self.timeout_s,
                         self._reactor.seconds())
        while True:
            step = plan.next_step(self._reactor.seconds())
            if isinstance(step, Backoff):
                await deferLater(self._reactor, step.delay_s)
                continue
            outcome = await self._attempt(step, encode_line(request, self.session, self.password))
            reply = plan.record(outcome)
            if reply is not None:
                return reply, outcome.address

    async def _attempt(self, step: Attempt, line: bytes) -> Outcome:
        address = self._addresses[step.address]
        started = self._reactor.seconds()
        connect_s = min(self.connect_timeout_s, step.budget_s)
        endpoint_type = TCP6ClientEndpoint if isIPv6Address(address.host) else TCP4ClientEndpoint
        endpoint = endpoint_type(self._reactor, address.host, address.port, timeout=connect_s)
        protocol = _OneShot(line, auth_sent=self.password is not None)
        try:
            await connectProtocol(endpoint, protocol)
        except (defer.CancelledError, error.ConnectingCancelledError):
            raise defer.CancelledError() from None   # our caller cancelled the request
        except Exception as e:
            return Outcome(step.address, failure=_connect_failure(e, connect_s))
        reply_s = max(0.0, step.budget_s - (self._reactor.seconds() - started))
        if self.reply_timeout_s is not None:
            reply_s = min(reply_s, self.reply_timeout_s)
        protocol.done.addTimeout(reply_s, self._reactor)
        try:
            result = await protocol.done
        except defer.TimeoutError:
            return Outcome(step.address, failure=f"no reply came within {reply_s:.2g} s",
                           sent=protocol.sent)
        if isinstance(result, Reply):
            return Outcome(step.address, reply=result, sent=True)
        return Outcome(step.address, failure=result, sent=protocol.sent)


def _connect_failure(e: BaseException, connect_s: float) -> str:
    if isinstance(e, (error.TimeoutError, TimeoutError)):
        return f"no connection within {connect_s:.2g} s"
    if isinstance(e, (error.ConnectionRefusedError, ConnectionRefusedError)):
        return "connection refused"
    if isinstance(e, error.DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(e, error.ConnectError) and e.osError is not None:
        return str(e.osError)
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# The blocking client ------------------------------------------------------------------


class BlockingClient(_ClientSettings):
    """The same client on plain sockets, for scripts, the CLI and benchmarks.

    Same arguments and semantics as ReplicadClient, without a reactor; not thread-safe
    (one session, updated in place): use one BlockingClient per thread.
    """

    # Injected for tests (per instance); the plan only ever sees these two.
    _now: Callable[[], float] = staticmethod(time.monotonic)
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def request(self, request: Request) -> Reply:
        return self.exchange(request)[0]

    def exchange(self, request: Request) -> tuple[Reply, str]:
        """Like request(), also naming the address that answered."""
        plan = RetryPlan(request, self.servers, self.session, self.timeout_s, self._now())
        while True:
            step = plan.next_step(self._now())
            if isinstance(step, Backoff):
                self._sleep(step.delay_s)
                continue
            outcome = self._attempt(step, encode_line(request, self.session, self.password))
            reply = plan.record(outcome)
            if reply is not None:
                return reply, outcome.address

    def get(self, key: str) -> str | None:
        return get_result(*self.exchange(build_request("GET", key)))

    def put(self, key: str, value: str) -> None:
        put_result(*self.exchange(build_request("PUT", key, value)))

    def delete(self, key: str) -> bool:
        return delete_result(*self.exchange(build_request("DEL", key)))

    def keys(self, prefix: str = "") -> list[str]:
        return keys_result(*self.exchange(build_request("KEYS", prefix or None)))

    def status(self) -> dict[str, Any]:
        return status_result(*self.exchange(build_request("STATUS")))

    def _attempt(self, step: Attempt, line: bytes) -> Outcome:
        address = self._addresses[step.address]
        started = self._now()
        connect_s = min(self.connect_timeout_s, step.budget_s)
        try:
            sock = socket.create_connection((address.host, address.port), timeout=connect_s)
        except TimeoutError:
            return Outcome(step.address, failure=f"no connection within {connect_s:.2g} s")
        except ConnectionRefusedError:
            return Outcome(step.address, failure="connection refused")
        except OSError as e:
            return Outcome(step.address, failure=e.strerror or str(e))
        with sock:
            try:
                sock.sendall(line)
            except OSError as e:
                # sendall failed before handing over the last byte, the newline, so the
                # server never saw a complete request line: nothing can have been done.
                return Outcome(step.address, failure=f"sending failed: {e.strerror or e}")
            reply_s = max(0.0, step.budget_s - (self._now() - started))
            if self.reply_timeout_s is not None:
                reply_s = min(reply_s, self.reply_timeout_s)
            result = _read_reply(sock, self._now() + reply_s, self._now,
                                 auth_sent=self.password is not None)
        if isinstance(result, Reply):
            return Outcome(step.address, reply=result, sent=True)
        return Outcome(step.address, failure=result or f"no reply came within {reply_s:.2g} s",
                       sent=True)


def _read_reply(sock: socket.socket, deadline: float, now: Callable[[], float],
                auth_sent: bool = False) -> Reply | str:
    """Read one reply; a reason string on failure ("" means the deadline passed)."""
    parser = _Replies(auth_sent)
    buffer = bytearray()
    scanned = 0   # bytes of buffer known to hold no newline
    while True:
        end = buffer.find(b"\n", scanned)
        if end >= 0:
            raw = bytes(buffer[:end])
            del buffer[: end + 1]
            scanned = 0
            try:
                reply = parser.feed(wire.decode_line(raw))
            except WireError as e:
                return f"sent a garbled reply ({e.message})"
            if reply is not None:
                return reply
            continue
        scanned = len(buffer)
        if scanned > MAX_REPLY_LINE_BYTES:
            return f"sent a reply line over {MAX_REPLY_LINE_BYTES} bytes"
        remaining = deadline - now()
        if remaining <= 0:
            return ""
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return ""
        except OSError as e:
            return f"broke the connection ({e.strerror or e})"
        if not chunk:
            return "closed the connection before a complete reply"
        buffer += chunk
