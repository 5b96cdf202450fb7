"""One-shot replicad clients: a Twisted one and a blocking one, sharing one retry policy.

The Twisted client (``ReplicadClient``) lives in replicad.client_twisted and is imported
from here on first use, so that the blocking client and the CLI, a new process per
command, do not import Twisted: that was about half of a ``replicad-cli`` command's
start-up (docs/operations.md, "Decisions and departures").

Every attempt opens a new connection, sends ``PING`` and one request carrying the session
context (and the write's request id), reads PONG and one reply, and closes (DESIGN.md:
clients are one-shot).  PONG says the server is alive: one that does not send it within
the attempt deadline, or that falls silent for half of it after the PONG and does not
answer a fresh PING on a second connection within the deadline either, is skipped (a
frozen process whose kernel still accepts connections).  What to do after an attempt
(retry elsewhere, give up, hand the reply over) is decided by the pure policy in
replicad.retry, whose names are re-exported here for callers of the client.

TLS (``tls=True``, or ``cacert=FILE``, which implies it): the servers' certificates are
verified against the CA certificates in FILE (PEM; several may follow each other), else
against the system's trusted CAs, and must name the host dialled (a DNS name, or an IP
address in the certificate's subjectAltName).  The handshake is part of the attempt:
one that does not complete within the attempt deadline is a stalled server like any
other; one that fails (an untrusted certificate, a name mismatch, a server without
TLS) is a FailureKind.TLS outcome, and a pass in which every server failed so ends the
request at once (NoServerAvailable with ``tls_failed``).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from replicad import wire
from replicad.config import Address, parse_address
from replicad.retry import (  # noqa: F401  (re-exported: the client's public API)
    ATTEMPT_TIMEOUT_S,
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    IN_DOUBT_CODES,
    PROBE_AFTER_FRACTION,
    RETRYABLE_CODES,
    Attempt,
    Backoff,
    ClientError,
    FailureKind,
    InvalidRequest,
    MixedClusters,
    NoServerAvailable,
    Outcome,
    OutcomeUnknown,
    RetryPlan,
    ServerError,
    SessionReset,
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
PING_LINE = b"PING" + wire.EOL.encode()
# A replicad answers PING at once; a TLS listener closes a plain-text connection
# without a word.
CLOSED_SILENTLY = "closed the connection without answering (a TLS port? then use TLS)"
# Other TLS servers send an alert record instead.
ANSWERED_IN_TLS = "answered with a TLS record (a TLS port? then use TLS)"


def _tls_record(data: bytes) -> bool:
    """Whether data begins like a TLS record (an alert or a handshake, TLS 1.x): what a
    TLS listener sends to a client speaking plain text, if anything."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03

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
    """One request as a smart client words it: AUTH first when the cluster needs a
    password (pipelined on the same connection), then the request with the session's
    context.  (What the clients send adds a PING in front: encode_attempt.)"""
    line = request.with_context(session.context()).encode() + wire.EOL
    if password is not None:
        line = Request("AUTH", None, password).encode() + wire.EOL + line
    return line.encode("utf-8")


def encode_attempt(request: Request, password: str | None = None) -> bytes:
    """What one attempt sends: PING (its PONG proves the server alive), AUTH when the
    cluster needs a password, then the request, context included, in one write."""
    line = request.encode() + wire.EOL
    if password is not None:
        line = Request("AUTH", None, password).encode() + wire.EOL + line
    return PING_LINE + line.encode("utf-8")


class _Replies:
    """Parses the replies to one attempt: PONG (sets ``alive``), the AUTH answer
    (skipped when OK, final when an error), then the request's reply.

    Anything but PONG first is final: ``ERR BUSY`` is sent on connecting instead of
    serving, and anything else is not a replicad server."""

    def __init__(self, auth_sent: bool, ping_sent: bool = True):
        self._parser = wire.ReplyParser()
        self._auth_pending = auth_sent
        self._pong_pending = ping_sent
        self.alive = False

    def feed(self, line: str) -> Reply | None:
        reply = self._parser.feed(line)
        if reply is None:
            return None
        if self._pong_pending:
            self._pong_pending = False
            if reply.status == "PONG":
                self.alive = True
                return None
            return reply
        if self._auth_pending:
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


# Keys asked for per page once a listing is too big for one reply (ERR TOOMANY).
KEYS_PAGE = 10_000


class KeysListing:
    """The requests a listing takes: one ``KEYS [prefix]``; if the server answers ERR
    TOOMANY, pages (``AFTER`` the last key listed, ``LIMIT`` the page size) until one is
    short.  Pure: both clients drive it (``first``, ``too_many``, then ``page`` and
    ``add`` until ``add`` says done; ``keys``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.keys: list[str] = []
        self.size = KEYS_PAGE

    def first(self) -> Request:
        return build_request("KEYS", self.prefix or None)

    def too_many(self, error: BaseException) -> bool:
        """Whether ``error`` asks for pages; their size is then KEYS_PAGE, or less if
        the server holds fewer in a reply (the number its message starts with)."""
        if not isinstance(error, ServerError) or error.code != Code.TOOMANY:
            return False
        most = error.message.split(" ", 1)[0]
        if wire.is_number(most) and int(most):
            self.size = min(KEYS_PAGE, int(most))
        return True

    def page(self) -> Request:
        """``KEYS [prefix] [AFTER <last key listed>] LIMIT <size>``."""
        return dataclasses.replace(
            self.first(), page=wire.KeyPage(self.keys[-1] if self.keys else None, self.size))

    def add(self, page: list[str]) -> bool:
        """A page's keys; True once the listing is whole (the page was short)."""
        self.keys += page
        return len(page) < self.size


def status_result(reply: Reply, address: str) -> dict[str, Any]:
    _expect(reply, address, "STATUS")
    return parse_status(reply.lines, address)


STATUS_FIELDS = ("id", "role", "coordinator", "epoch", "clock", "keys", "peers", "conflicts")
_INT_FIELDS = frozenset({"id", "epoch", "keys", "conflicts", "write_quorum", "origin"})


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


# What both clients share (the Twisted one: replicad.client_twisted) -------------------


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
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        on_session_reset: Callable[[SessionReset], None] | None = None,
        tls: bool = False,
        cacert: str | None = None,
    ):
        self.password = password   # sent as AUTH when the cluster sets client_password
        self.tls = tls or cacert is not None
        self.cacert = cacert       # CA certificates (PEM file); None: the system's
        self._addresses = normalise_servers(servers)
        self.servers = list(self._addresses)
        self.timeout_s = timeout_s
        self.session = session if session is not None else ClientSession()
        self.connect_timeout_s = connect_timeout_s
        # None: a server that keeps answering PING may take until the overall deadline
        # (it may legitimately wait seconds for an election before it answers).
        self.reply_timeout_s = reply_timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.on_session_reset = on_session_reset

    def _plan(self, request: Request, now: float) -> RetryPlan:
        return RetryPlan(request, self.servers, self.session, self.timeout_s, now,
                         attempt_timeout_s=self.attempt_timeout_s,
                         on_reset=self.on_session_reset)

    def _reply_deadline(self, step: Attempt, started: float) -> float:
        deadline = started + step.budget_s
        if self.reply_timeout_s is not None:
            deadline = min(deadline, started + self.reply_timeout_s)
        return deadline


def _kind(failure: str) -> FailureKind:
    """SILENT for a connection closed without a byte, or answered in TLS: not even the
    PONG that a replicad writes as soon as it reads the attempt's first line, so it did
    not read the request (not sent); BROKEN otherwise."""
    silent = failure in (CLOSED_SILENTLY, ANSWERED_IN_TLS)
    return FailureKind.SILENT if silent else FailureKind.BROKEN


def _stalled(step: Attempt, after_pong: bool, tls: bool = False) -> Outcome:
    if after_pong:
        why = (f"fell silent and did not answer a fresh PING within {step.stall_s:.2g} s "
               "(a hung server?)")
    elif tls:
        why = (f"accepted the connection but did not answer (nor, maybe, complete the TLS "
               f"handshake) within {step.stall_s:.2g} s (a hung server, or one without TLS?)")
    else:
        why = f"accepted the connection but did not answer within {step.stall_s:.2g} s " \
              "(a hung server?)"
    # A stall window that was the rest of the call's budget was cut by the deadline: it
    # says nothing about the server (it may have had a millisecond), and must not
    # replace what an earlier attempt learned (ERR QUORUM).
    kind = FailureKind.DEADLINE if step.stall_s >= step.budget_s else FailureKind.STALLED
    return Outcome(step.address, failure=why, sent=True, kind=kind)


def _no_reply(step: Attempt, started: float, now: float) -> Outcome:
    """No reply by the attempt's deadline: the call's own (DEADLINE) or reply_timeout_s."""
    cut = now - started >= step.budget_s
    return Outcome(step.address, failure=f"no reply came within {now - started:.2g} s",
                   sent=True, kind=FailureKind.DEADLINE if cut else FailureKind.BROKEN)


# TLS ----------------------------------------------------------------------------------


class TLSSetupError(ClientError, ValueError):
    """The client's own TLS settings cannot be used (an unreadable CA file, no TLS
    support installed); detected before any network use."""


def _read_cacert(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as e:
        raise TLSSetupError(f"cannot read the CA file {path}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSSetupError(f"the CA file {path} holds no PEM certificate "
                            "(-----BEGIN CERTIFICATE-----)")
    return data


def ssl_context(cacert: str | None) -> ssl.SSLContext:
    """The blocking client's context: the CA certificates in cacert (PEM), else the
    system's; certificate and host name verification on (ssl.create_default_context)."""
    if cacert is None:
        return ssl.create_default_context()
    data = _read_cacert(cacert)
    try:
        return ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise TLSSetupError(f"the CA file {cacert} cannot be used: "
                            f"{e.reason or e}") from None


def describe_tls_error(reason: str) -> str:
    """``TLS: <what OpenSSL said>``, with what it usually means."""
    text = reason.strip().rstrip(".")
    lower = text.lower()
    if "wrong version number" in lower or "packet length too long" in lower or \
            "record layer failure" in lower:
        return f"TLS: the server does not speak TLS ({text})"
    if "certificate verify failed" in lower and "mismatch" not in lower and \
            "expired" not in lower:
        return (f"TLS: {text} (the server's certificate is not signed by a CA this "
                "client trusts)")
    return f"TLS: {text}"


# The blocking client ------------------------------------------------------------------


class BlockingClient(_ClientSettings):
    """The same client on plain sockets, for scripts, the CLI and benchmarks.

    Same arguments and semantics as ReplicadClient, without a reactor; not thread-safe
    (one session, updated in place): use one BlockingClient per thread.
    """

    # Injected for tests (per instance); the plan only ever sees these two.
    _now: Callable[[], float] = staticmethod(time.monotonic)
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Made once (the CA file is read here: TLSSetupError before any network use).
        self._context = ssl_context(self.cacert) if self.tls else None

    def request(self, request: Request) -> Reply:
        return self.exchange(request)[0]

    def exchange(self, request: Request) -> tuple[Reply, str]:
        """Like request(), also naming the address that answered."""
        plan = self._plan(request, self._now())
        while True:
            step = plan.next_step(self._now())
            if isinstance(step, Backoff):
                self._sleep(step.delay_s)
                continue
            outcome = self._attempt(step, encode_attempt(plan.attempt_request(), self.password))
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
        """Every live key with the prefix, sorted.  A listing too big for one reply is
        read in pages (each a read of its own: not one snapshot of the whole)."""
        listing = KeysListing(prefix)
        try:
            return keys_result(*self.exchange(listing.first()))
        except ServerError as e:
            if not listing.too_many(e):
                raise
        while not listing.add(keys_result(*self.exchange(listing.page()))):
            pass
        return listing.keys

    def status(self) -> dict[str, Any]:
        return status_result(*self.exchange(build_request("STATUS")))

    def _connect(self, step: Attempt, started: float) -> socket.socket | Outcome:
        address = self._addresses[step.address]
        connect_s = min(self.connect_timeout_s, step.stall_s)
        try:
            sock = socket.create_connection((address.host, address.port), timeout=connect_s)
            if self._context is None:
                return sock
        except ConnectionRefusedError:
            return Outcome(step.address, failure="connection refused", kind=FailureKind.REFUSED)
        except TimeoutError:
            why = f"no connection within {connect_s:.2g} s"
        except socket.gaierror:
            why = "cannot resolve the host name"
        except OSError as e:
            why = e.strerror or str(e)
        else:
            return self._handshake(sock, step, address, started)
        return Outcome(step.address, failure=why, kind=FailureKind.UNREACHABLE)

    def _handshake(self, sock: socket.socket, step: Attempt, address: Address,
                   started: float) -> socket.socket | Outcome:
        """TLS over a connected socket, within the attempt's deadline (a server that
        accepts but does not complete the handshake is a stalled one)."""
        try:
            tls = self._context.wrap_socket(sock, server_hostname=address.host,
                                            do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            sock.close()
            return Outcome(step.address, failure=describe_tls_error(str(e)),
                           kind=FailureKind.TLS)
        try:
            tls.settimeout(max(0.001, started + step.stall_s - self._now()))
            tls.do_handshake()
        except ssl.SSLCertVerificationError as e:
            failure = describe_tls_error(f"certificate verify failed: {e.verify_message}")
            kind = FailureKind.TLS
        except TimeoutError:
            failure = (f"accepted the connection but did not complete the TLS handshake "
                       f"within {step.stall_s:.2g} s (a hung server, or one without TLS?)")
            kind = FailureKind.STALLED
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            failure, kind = "closed the connection during the TLS handshake", FailureKind.BROKEN
        except ssl.SSLError as e:
            failure, kind = describe_tls_error(e.reason or str(e)), FailureKind.TLS
        except OSError as e:
            failure = f"broke the connection during the TLS handshake ({e.strerror or e})"
            kind = FailureKind.BROKEN
        else:
            return tls
        tls.close()
        return Outcome(step.address, failure=failure, kind=kind)

    def _attempt(self, step: Attempt, line: bytes) -> Outcome:
        started = self._now()
        sock = self._connect(step, started)
        if isinstance(sock, Outcome):
            return sock
        with sock:
            try:
                sock.sendall(line)
            except OSError as e:
                # sendall failed before handing over the last byte, the newline, so the
                # server never saw a complete request line: nothing can have been done.
                return Outcome(step.address, failure=f"sending failed: {e.strerror or e}")
            reader = _Reader(sock, _Replies(auth_sent=self.password is not None), self._now)
            deadline = self._reply_deadline(step, started)
            reader.read(min(started + step.stall_s, deadline), lambda: reader.replies.alive)
            if reader.result is None and not reader.replies.alive:
                return _stalled(step, after_pong=False)
            while reader.result is None:
                now = self._now()
                if now >= deadline:
                    return _no_reply(step, started, now)
                reader.read(min(now + step.probe_after_s, deadline))
                if reader.result is None and self._now() < deadline and not self._ping(step):
                    return _stalled(step, after_pong=True)
        if isinstance(reader.result, Reply):
            return Outcome(step.address, reply=reader.result, sent=True)
        kind = _kind(reader.result)
        return Outcome(step.address, failure=reader.result, kind=kind,
                       sent=kind is not FailureKind.SILENT)

    def _ping(self, step: Attempt) -> bool:
        """A fresh connection's PING answered within stall_s: the server still lives."""
        started = self._now()
        sock = self._connect(step, started)
        if isinstance(sock, Outcome):
            return False
        with sock:
            try:
                sock.sendall(PING_LINE)
            except OSError:
                return False
            reader = _Reader(sock, _Replies(auth_sent=False), self._now)
            reader.read(started + step.stall_s, lambda: reader.replies.alive)
            return reader.replies.alive


class _Reader:
    """Reads one attempt's replies from a blocking socket; ``result`` becomes the Reply
    or a reason string, like _OneShot's."""

    def __init__(self, sock: socket.socket, replies: _Replies, now: Callable[[], float]):
        self._sock = sock
        self.replies = replies
        self._now = now
        self._buffer = bytearray()
        self._scanned = 0   # bytes of the buffer known to hold no newline
        self._received = False
        self.result: Reply | str | None = None

    def read(self, deadline: float, enough: Callable[[], bool] = lambda: False) -> None:
        """Read until a result, enough() or the deadline."""
        while self.result is None and not enough():
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                try:
                    reply = self.replies.feed(wire.decode_line(raw))
                except WireError as e:
                    self.result = f"sent a garbled reply ({e.message})"
                    return
                if reply is not None:
                    self.result = reply
                continue
            self._scanned = len(self._buffer)
            if self._scanned > MAX_REPLY_LINE_BYTES:
                self.result = f"sent a reply line over {MAX_REPLY_LINE_BYTES} bytes"
                return
            remaining = deadline - self._now()
            if remaining <= 0:
                return
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return
            except OSError as e:
                self.result = f"broke the connection ({e.strerror or e})"
                return
            if not chunk:
                silent = not self._received and not isinstance(self._sock, ssl.SSLSocket)
                self.result = (CLOSED_SILENTLY if silent
                               else "closed the connection before a complete reply")
                return
            if not self._received and not isinstance(self._sock, ssl.SSLSocket) and \
                    _tls_record(chunk):
                self.result = ANSWERED_IN_TLS
                return
            self._received = True
            self._buffer += chunk


def __getattr__(name: str) -> Any:
    """``replicad.client.ReplicadClient``, imported with Twisted when first asked for."""
    if name == "ReplicadClient":
        from replicad.client_twisted import ReplicadClient

        return ReplicadClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
