"""The one-shot client's policy, shared by the Twisted and the blocking client.  Pure.

What to do after an attempt is decided here, so the two clients cannot drift apart:

- ``classify(request, outcome)`` says DONE (hand the reply over), RETRY (nothing was
  done, it was a read, or it was a write whose outcome is unknown and which carries a
  request id: try the next server) or FAIL (a write without a request id may have been
  applied: never send it again).
- ``RetryPlan`` walks the servers (known coordinator first, failed or stalled servers
  last), backs off 50-100 ms between passes, and gives up at the deadline, or early when
  every server refused the connection in two passes running (nobody is listening), or
  at once when every server of a pass failed the TLS handshake (the client does not
  trust their certificates: waiting does not change that).

Why a write may be sent again: each write carries a request id (``<client>.<seq>``, in
the session context) and the coordinator remembers the ids of the newest 100,000 writes
of the cluster, stored with each write and replicated with it, so a new coordinator
knows them too.  A write sent again with the same id is answered without being applied
a second time.  The window is far longer than one call's timeout unless the cluster
takes 100,000 writes within it.

Why a stalled server costs little: every attempt sends ``PING`` before its request on
the same connection (``encode_attempt``).  A live replica answers PONG at once, even
while the request itself legitimately waits (for an election, a quorum, a catch-up); a
frozen process (SIGSTOP, a wedged host) whose kernel still accepts connections does not.
No PONG within the attempt deadline, or silence for half of it after the PONG and no
PONG to a fresh PING within the deadline either: the server is skipped and demoted in
the session.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from replicad.session import ClientSession
from replicad.wire import Code, Reply, Request, SessionContext

# A server must answer PING within this (connecting included), and a server silent this
# long after its PONG must answer a fresh PING within this too.  A live replica answers
# PING at once, whatever its request waits for, so this only has to cover a round trip
# and a busy event loop: 0.5 s is hundreds of LAN round trips, and short enough that
# skipping one hung server still leaves a failover well under 1 s.  A pass in which no
# server answered in time doubles it for the next pass (a slow network, not a hung server).
ATTEMPT_TIMEOUT_S = 0.5
MAX_ATTEMPT_TIMEOUT_S = 8.0
BACKOFF_MIN_S = 0.05     # pause between passes over the servers: long enough for an
BACKOFF_MAX_S = 0.1      # election to progress, short next to a < 1 s failover
# A server silent for this fraction of the attempt deadline after its PONG is sent a
# fresh PING (answered within the deadline, or it is skipped).  A process frozen just
# after its PONG then costs at most 1.5 deadlines (0.75 s), not 2: the write in flight
# at a coordinator's SIGSTOP is the case (issue #8).  Requests that legitimately wait
# this long (an election, a quorum, a catch-up) cost one PING per half-deadline.
PROBE_AFTER_FRACTION = 0.5
# Give up early when every server refused the connection in this many passes running
# (with a back-off between): nobody is listening, waiting out the timeout helps no one.
REFUSED_PASSES = 2

# ERR codes after which nothing was done, so the request may go to another server.
# BUSY is sent instead of serving (too many connections), so it qualifies too.
RETRYABLE_CODES = frozenset({Code.UNAVAILABLE, Code.STALE, Code.BUSY})
# ERR codes saying a write may or may not have been applied.
IN_DOUBT_CODES = frozenset({Code.INDOUBT, Code.QUORUM, Code.SUPERSEDED})
# Of those, the ones a write with an id is sent again after: INDOUBT's coordinator may
# be gone; QUORUM's write is on the coordinator, and sending its id again pushes it
# again, so the answer may now be OK.  SUPERSEDED is settled: the write was applied and
# is not the key's value any more, and every later answer would say so again.
RESENT_CODES = frozenset({Code.INDOUBT, Code.QUORUM})


# Exceptions ---------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the clients raise."""


class InvalidRequest(ClientError, ValueError):
    """A key or value the protocol cannot carry; detected before any network use."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NoServerAvailable(ClientError):
    """No server served the request before the deadline; nothing was done."""

    def __init__(self, message: str, tried: list[str], last_reply: Reply | None = None,
                 all_refused: bool = False, tls_failed: bool = False,
                 last_reason: str | None = None, silent: bool = False):
        super().__init__(message)
        self.tried = tried
        self.last_reason = last_reason   # "<address>: <why>" of the last failed attempt
        # every server failed the TLS handshake (an untrusted certificate, one that
        # does not name the host, or a server without TLS): not worth waiting for
        self.tls_failed = tls_failed
        # every server closed plain-text connections without a word (TLS ports?)
        self.silent = silent
        self.last_reply = last_reply
        self.all_refused = all_refused   # every server refused: is the cluster running?


class OutcomeUnknown(ClientError):
    """A write reached a server but no answer confirmed it before the deadline: it may
    or may not be applied."""


class ServerError(ClientError):
    """The server answered ``ERR <code> <message>``; retrying would not help."""

    def __init__(self, code: str, message: str, address: str | None = None):
        where = f" (from {address})" if address else ""
        super().__init__(f"ERR {code} {message}{where}")
        self.code = code
        self.message = message
        self.address = address


class WriteInDoubt(ServerError, OutcomeUnknown):
    """ERR INDOUBT or ERR QUORUM until the deadline: the write may or may not survive.

    ``summary``, when given, is the whole message (what was tried, until when)."""

    def __init__(self, code: str, message: str, address: str | None = None,
                 summary: str | None = None):
        super().__init__(code, message, address)
        if summary is not None:
            self.args = (summary,)


class UnexpectedReply(ClientError):
    """A reply that does not fit the request (a server bug or not a replicad server)."""


class MixedClusters(UnexpectedReply):
    """The servers given answer for two different clusters within one request."""


# The retry policy (pure) --------------------------------------------------------------


class FailureKind(enum.Enum):
    """Why an attempt got no reply."""

    REFUSED = "refused"          # connection refused: nobody listens there
    UNREACHABLE = "unreachable"  # no connection (timeout, no route, unknown host)
    STALLED = "stalled"          # connected, but no PONG in time: a hung process
    BROKEN = "broken"            # closed, reset or garbled before a complete reply
    TLS = "tls"                  # the TLS handshake failed: nothing was sent
    SILENT = "silent"            # closed without a byte: what a TLS port does to plain text
    DEADLINE = "deadline"        # the call's own deadline ended the attempt: says nothing
                                 # of the server


# Passes made only of these outcomes count towards REFUSED_PASSES: nobody serves, and
# waiting will not change it (a pass of TLS failures alone ends the request at once).
_NOBODY_SERVES = frozenset({FailureKind.REFUSED, FailureKind.TLS, FailureKind.SILENT})


@dataclass(frozen=True)
class Outcome:
    """What one attempt produced: a reply, or why there was none."""

    address: str
    reply: Reply | None = None
    failure: str | None = None   # set when reply is None
    sent: bool = False           # the whole request line may have reached the server
    kind: FailureKind = FailureKind.BROKEN   # meaningful when reply is None

    def describe(self) -> str:
        if self.reply is not None:
            return f"{self.address} answered {self.reply.status} {self.reply.text}".rstrip()
        return f"{self.address}: {self.failure}"


class Verdict(enum.Enum):
    DONE = "done"    # give the reply to the caller (success, NOTFOUND or a final ERR)
    RETRY = "retry"  # nothing was done, a read, or a write with an id: try the next server
    FAIL = "fail"    # a write without a request id may have been applied: stop


def has_request_id(request: Request) -> bool:
    return request.context is not None and request.context.rid is not None


def classify(request: Request, outcome: Outcome) -> Verdict:
    """The whole retry policy, shared by both clients."""
    if outcome.reply is not None:
        code = outcome.reply.error_code
        if code in RETRYABLE_CODES:
            return Verdict.RETRY
        if code in RESENT_CODES and request.is_write and has_request_id(request):
            return Verdict.RETRY
        return Verdict.DONE
    if outcome.sent and request.is_write and not has_request_id(request):
        return Verdict.FAIL
    return Verdict.RETRY


def in_doubt(request: Request, outcome: Outcome) -> bool:
    """After this outcome, may the write have been applied without our knowing?"""
    if not request.is_write:
        return False
    if outcome.reply is not None:
        return outcome.reply.error_code in IN_DOUBT_CODES
    return outcome.sent


@dataclass(frozen=True)
class Attempt:
    address: str
    budget_s: float   # time left before the overall deadline
    stall_s: float    # the server must answer PING within this (see ATTEMPT_TIMEOUT_S)

    @property
    def probe_after_s(self) -> float:
        """Silence after the PONG this long and a fresh PING is sent (see
        PROBE_AFTER_FRACTION)."""
        return self.stall_s * PROBE_AFTER_FRACTION


@dataclass(frozen=True)
class Backoff:
    delay_s: float


@dataclass(frozen=True)
class SessionReset:
    """A reply came from another cluster than the session's: the session was reset."""

    old_cluster: str
    new_cluster: str
    address: str


class RetryPlan:
    """Which server next, when to pause, when to give up.  Pure: time is passed in.

    Both clients run the same loop: ``next_step(now)`` gives an Attempt or a Backoff
    (or raises NoServerAvailable / OutcomeUnknown when it gives up), ``attempt_request()``
    is what to send, and ``record(outcome)`` folds a reply into the session and returns
    the final reply, or None to go on.

    A write gets its request id here, once (``rid``); every attempt sends the same id
    with the session's current context.  A reply from another cluster resets the
    session (``on_reset`` is told) and the request goes on with the fresh session; a
    second change within one request means the servers belong to two clusters.
    """

    def __init__(
        self,
        request: Request,
        servers: list[str],
        session: ClientSession,
        timeout_s: float,
        now: float,
        rng: Callable[[], float] = random.random,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        on_reset: Callable[[SessionReset], None] | None = None,
    ):
        rid = request.context.rid if request.context is not None else None
        if request.is_write and rid is None:
            rid = session.next_request_id()
        self.rid = rid
        self.request = request.with_context(SessionContext(rid=rid))
        self.deadline = now + timeout_s
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.tried: list[str] = []
        self.last_reason: str | None = None
        self.last_reply: Reply | None = None   # the last retryable ERR seen
        self.doubt: Outcome | None = None      # the last attempt that left a write in doubt
        self.reset: SessionReset | None = None
        self._servers = servers
        self._session = session
        self._rng = rng
        self._on_reset = on_reset
        self._pending = session.order(servers)
        self._pass: list[Outcome] = []         # outcomes of the current pass
        self._refused_passes = 0
        self._slow_passes = 0                  # passes running in which nobody answered

    def attempt_request(self) -> Request:
        """The request to send now: the session's current context, the write's id."""
        return self.request.with_context(self._session.context(self.rid))

    def next_step(self, now: float) -> Attempt | Backoff:
        remaining = self.deadline - now
        if remaining <= 0:
            raise self._give_up()
        if not self._pending:
            self._end_pass()
            # The order is recomputed each pass: a reply may have named a new coordinator.
            self._pending = self._session.order(self._servers)
            pause = BACKOFF_MIN_S + (BACKOFF_MAX_S - BACKOFF_MIN_S) * self._rng()
            return Backoff(min(pause, remaining))
        address = self._pending.pop(0)
        if address not in self.tried:
            self.tried.append(address)
        stall_s = min(self.attempt_timeout_s * 2 ** self._slow_passes, MAX_ATTEMPT_TIMEOUT_S)
        return Attempt(address, remaining, min(stall_s, remaining))

    def record(self, outcome: Outcome) -> Reply | None:
        self._pass.append(outcome)
        if outcome.reply is not None:
            self._check_cluster(outcome)
            self._session.observe(self.request, outcome.reply, outcome.address)
        else:
            self._session.demote(outcome.address)
        verdict = classify(self.request, outcome)
        if verdict is Verdict.DONE:
            if in_doubt(self.request, outcome):
                # A final answer that leaves the write in doubt (SUPERSEDED: nothing a
                # later attempt says would differ), worded as every unknown outcome.
                reply = outcome.reply
                raise WriteInDoubt(
                    reply.error_code, reply.error_message, outcome.address,
                    f"{_describe_request(self.request)}: the outcome is unknown: "
                    f"{outcome.describe()}")
            if self.doubt is not None and outcome.reply.error_code is not None:
                # An earlier attempt may have applied the write; this server's refusal
                # (its disk full, say, lacking that copy) says nothing of it.
                raise WriteInDoubt(
                    Code.INDOUBT, outcome.reply.error_message, outcome.address,
                    f"{_describe_request(self.request)}: the outcome is unknown: "
                    f"{self.doubt.describe()}, then {outcome.describe()}; the write may "
                    "or may not have been applied")
            return outcome.reply
        if verdict is Verdict.FAIL:
            raise OutcomeUnknown(
                f"{_describe_request(self.request)}: the request reached {outcome.address} "
                f"but {outcome.failure}; the write may or may not have been applied"
            )
        cut = outcome.kind is FailureKind.DEADLINE
        if in_doubt(self.request, outcome) and not (cut and self.doubt is not None):
            # An attempt cut by the deadline (it may have had a millisecond) does not
            # replace what an earlier one learned (ERR QUORUM from the coordinator).
            self.doubt = outcome
        if cut and self.last_reason is not None:
            return None     # nor the reason given up with (an earlier server's answer)
        self.last_reason = outcome.describe()
        if outcome.reply is not None:
            self.last_reply = outcome.reply
            self.last_reason += " (retryable)"
        return None

    def _check_cluster(self, outcome: Outcome) -> None:
        meta = outcome.reply.meta
        cluster = meta.cluster if meta is not None else None
        ours = self._session.cluster
        if cluster is None or ours is None or cluster == ours:
            self._session.adopt_cluster(cluster)
            return
        if self.reset is not None:
            raise MixedClusters(
                f"the servers answer for two clusters: {self.reset.address} for "
                f"{self.reset.new_cluster}, {outcome.address} for {cluster}; check the "
                "server list"
            )
        self._session.reset(cluster)
        self.reset = SessionReset(ours, cluster, outcome.address)
        if self._on_reset is not None:
            self._on_reset(self.reset)

    def _end_pass(self) -> None:
        outcomes, self._pass = self._pass, []
        tls = [o for o in outcomes if o.reply is None and o.kind is FailureKind.TLS]
        if tls and len(tls) == len(outcomes):
            raise self._give_up(tls_failures=tls)
        silent = [o for o in outcomes if o.reply is None and o.kind is FailureKind.SILENT]
        if outcomes and all(o.reply is None and o.kind in _NOBODY_SERVES for o in outcomes):
            self._refused_passes += 1
            if self._refused_passes >= REFUSED_PASSES:
                raise self._give_up(all_refused=not tls and not silent, tls_failures=tls,
                                    silent=silent)
        else:
            self._refused_passes = 0
        if outcomes and all(o.reply is None and o.kind in (FailureKind.STALLED,
                                                           FailureKind.UNREACHABLE)
                            for o in outcomes):
            self._slow_passes += 1
        else:
            self._slow_passes = 0

    def _give_up(self, all_refused: bool = False,
                 tls_failures: list[Outcome] | None = None,
                 silent: list[Outcome] | None = None) -> ClientError:
        what = _describe_request(self.request)
        tried = ", ".join(self.tried) or "none"
        if self.doubt is not None:
            doubt = self.doubt
            message = (
                f"{what}: the outcome is unknown: {doubt.describe()}, and no server "
                f"confirmed the write within {self.timeout_s:g} s (sent with the same "
                f"request id {self.rid} to {tried}); it may or may not have been applied"
            )
            if doubt.reply is not None:
                return WriteInDoubt(doubt.reply.error_code or Code.INDOUBT,
                                    doubt.reply.error_message, doubt.address, message)
            return OutcomeUnknown(message)
        if tls_failures:
            reasons = {o.failure for o in tls_failures}
            if len(reasons) == 1:
                failed = (f"({', '.join(o.address for o in tls_failures)}): "
                          f"{reasons.pop()}")
            else:
                failed = "(" + "; ".join(o.describe() for o in tls_failures) + ")"
            refused = "" if len(tls_failures) == len(self.tried) else \
                "; the others refused the connection"
            message = f"the TLS handshake failed with every server {failed}{refused}"
            return NoServerAvailable(message, list(self.tried), tls_failed=True,
                                     last_reason=tls_failures[-1].describe())
        if silent:
            others = "" if len(silent) == len(self.tried) else \
                " (the others refused it)"
            message = (f"every server closed the connection without answering "
                       f"({', '.join(o.address for o in silent)}){others}: "
                       "a TLS listener does that to plain text; use TLS?")
            return NoServerAvailable(message, list(self.tried), silent=True,
                                     last_reason=silent[-1].describe())
        if all_refused:
            message = (f"every server refused the connection ({tried}); "
                       "is the cluster running?")
            return NoServerAvailable(message, list(self.tried), all_refused=True,
                                     last_reason=self.last_reason)
        message = f"no server could serve {what} within {self.timeout_s:g} s (tried {tried})"
        if self.last_reason:
            message += f"; last: {self.last_reason}"
        if self.last_reply is not None and not self.last_reason.endswith("(retryable)"):
            message += f"; last answer: ERR {self.last_reply.text}"
        return NoServerAvailable(message, list(self.tried), self.last_reply,
                                 last_reason=self.last_reason)


def _describe_request(request: Request) -> str:
    return f"{request.command} {request.key}" if request.key is not None else request.command
