"""The one-shot client's policy, shared by the Twisted and the blocking client.  Pure.

What to do after an attempt is decided here, so the two clients cannot drift apart:

- ``classify(request, outcome)`` says DONE (hand the reply over), RETRY (nothing was
  done, or it was a read: try the next server) or FAIL (a write may have been applied:
  never send it again).
- ``RetryPlan`` walks the servers (known coordinator first), backs off 50-100 ms between
  passes and gives up at the deadline with NoServerAvailable.

A write is never retried once it may have reached a server: resending a PUT after its
first copy was applied could reorder it after a later write of the same session.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from replicad.session import ClientSession
from replicad.wire import Code, Reply, Request

BACKOFF_MIN_S = 0.05     # pause between passes over the servers: long enough for an
BACKOFF_MAX_S = 0.1      # election to progress, short next to a < 1 s failover

# ERR codes after which nothing was done, so the request may go to another server.
# BUSY is sent instead of serving (too many connections), so it qualifies too.
RETRYABLE_CODES = frozenset({Code.UNAVAILABLE, Code.STALE, Code.BUSY})
# ERR codes saying a write may or may not have been applied.
IN_DOUBT_CODES = frozenset({Code.INDOUBT, Code.QUORUM})


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

    def __init__(self, message: str, tried: list[str], last_reply: Reply | None = None):
        super().__init__(message)
        self.tried = tried
        self.last_reply = last_reply


class OutcomeUnknown(ClientError):
    """A write reached a server but no answer came back: it may or may not be applied."""


class ServerError(ClientError):
    """The server answered ``ERR <code> <message>``; retrying would not help."""

    def __init__(self, code: str, message: str, address: str | None = None):
        where = f" (from {address})" if address else ""
        super().__init__(f"ERR {code} {message}{where}")
        self.code = code
        self.message = message
        self.address = address


class WriteInDoubt(ServerError, OutcomeUnknown):
    """ERR INDOUBT or ERR QUORUM: the server itself does not know if the write survives."""


class UnexpectedReply(ClientError):
    """A reply that does not fit the request (a server bug or not a replicad server)."""


# The retry policy (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt produced: a reply, or why there was none."""

    address: str
    reply: Reply | None = None
    failure: str | None = None   # set when reply is None
    sent: bool = False           # the whole request line may have reached the server

    def describe(self) -> str:
        if self.reply is not None:
            return f"{self.address} answered {self.reply.status} {self.reply.text}".rstrip()
        return f"{self.address}: {self.failure}"


class Verdict(enum.Enum):
    DONE = "done"    # give the reply to the caller (success, NOTFOUND or a final ERR)
    RETRY = "retry"  # nothing was done, or it was a read: try the next server
    FAIL = "fail"    # a write may have been applied: stop with OutcomeUnknown


def classify(request: Request, outcome: Outcome) -> Verdict:
    """The whole retry policy, shared by both clients."""
    if outcome.reply is not None:
        if outcome.reply.error_code in RETRYABLE_CODES:
            return Verdict.RETRY
        return Verdict.DONE
    if outcome.sent and request.is_write:
        return Verdict.FAIL
    return Verdict.RETRY


@dataclass(frozen=True)
class Attempt:
    address: str
    budget_s: float   # time left before the overall deadline


@dataclass(frozen=True)
class Backoff:
    delay_s: float


class RetryPlan:
    """Which server next, when to pause, when to give up.  Pure: time is passed in.

    Both clients run the same loop: ``next_step(now)`` gives an Attempt or a Backoff
    (or raises NoServerAvailable at the deadline), ``record(outcome)`` folds a reply
    into the session and returns the final reply, None to go on, or raises
    OutcomeUnknown.
    """

    def __init__(
        self,
        request: Request,
        servers: list[str],
        session: ClientSession,
        timeout_s: float,
        now: float,
        rng: Callable[[], float] = random.random,
    ):
        self.request = request
        self.deadline = now + timeout_s
        self.timeout_s = timeout_s
        self.tried: list[str] = []
        self.last_reason: str | None = None
        self.last_reply: Reply | None = None   # the last retryable ERR seen
        self._servers = servers
        self._session = session
        self._rng = rng
        self._pending = session.order(servers)

    def next_step(self, now: float) -> Attempt | Backoff:
        remaining = self.deadline - now
        if remaining <= 0:
            raise self._give_up()
        if not self._pending:
            # The order is recomputed each pass: a reply may have named a new coordinator.
            self._pending = self._session.order(self._servers)
            pause = BACKOFF_MIN_S + (BACKOFF_MAX_S - BACKOFF_MIN_S) * self._rng()
            return Backoff(min(pause, remaining))
        address = self._pending.pop(0)
        if address not in self.tried:
            self.tried.append(address)
        return Attempt(address, remaining)

    def record(self, outcome: Outcome) -> Reply | None:
        if outcome.reply is not None:
            self._session.observe(self.request, outcome.reply, outcome.address)
        verdict = classify(self.request, outcome)
        if verdict is Verdict.DONE:
            return outcome.reply
        if verdict is Verdict.FAIL:
            raise OutcomeUnknown(
                f"{_describe_request(self.request)}: the request reached {outcome.address} "
                f"but {outcome.failure}; the write may or may not have been applied"
            )
        self.last_reason = outcome.describe()
        if outcome.reply is not None:
            self.last_reply = outcome.reply
            self.last_reason += " (retryable)"
        return None

    def _give_up(self) -> NoServerAvailable:
        tried = ", ".join(self.tried) or "none"
        message = (
            f"no server could serve {_describe_request(self.request)} within "
            f"{self.timeout_s:g} s (tried {tried})"
        )
        if self.last_reason:
            message += f"; last: {self.last_reason}"
        if self.last_reply is not None and not self.last_reason.endswith("(retryable)"):
            message += f"; last answer: ERR {self.last_reply.text}"
        return NoServerAvailable(message, list(self.tried), self.last_reply)


def _describe_request(request: Request) -> str:
    return f"{request.command} {request.key}" if request.key is not None else request.command
