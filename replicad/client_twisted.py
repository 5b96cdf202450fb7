"""The Twisted one-shot client (``ReplicadClient``): every call returns a Deferred.

The retry policy, the request and reply helpers and the settings are replicad.client's,
shared with the blocking client; this module adds what needs a reactor: the attempt's
protocol (``_OneShot``), connecting through Twisted's endpoints (TLS through
``wrapClientTLS``), and reading Twisted's failures.  A module of its own so that the
blocking client and the CLI do not import Twisted (``replicad.client.ReplicadClient``
still works: it is imported from here on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver

from replicad import wire
from replicad.client import (
    ANSWERED_IN_TLS,
    CLOSED_SILENTLY,
    MAX_REPLY_LINE_BYTES,
    PING_LINE,
    Attempt,
    Backoff,
    ClientError,
    FailureKind,
    KeysListing,
    Outcome,
    TLSSetupError,
    _ClientSettings,
    _kind,
    _no_reply,
    _read_cacert,
    _Replies,
    _stalled,
    _tls_record,
    build_request,
    delete_result,
    describe_tls_error,
    encode_attempt,
    get_result,
    keys_result,
    put_result,
    status_result,
)
from replicad.config import Address
from replicad.wire import Reply, Request, WireError

T = TypeVar("T")


class _OneShot(LineOnlyReceiver):
    """Write one attempt's lines, read PONG and one reply.

    ``alive`` turns True with the PONG; ``result`` becomes the Reply, or a reason
    string when the connection ends without one.  ``wait(seconds)`` fires on either
    change or after seconds, whichever is first."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE_BYTES

    def __init__(self, line: bytes, replies: _Replies, clock: Any, probe: bool = False,
                 tls: bool = False):
        self._line = line
        self._probe = probe    # only PING was sent: PONG ends the exchange
        self._replies = replies
        self._clock = clock
        self._tls = tls
        self._received = False
        self.sent = False
        self.result: Reply | str | None = None
        self.tls_failure: str | None = None   # the TLS handshake failed: nothing was sent
        self._waiter: tuple[defer.Deferred[None], Any] | None = None

    @property
    def alive(self) -> bool:
        return self._replies.alive

    def connectionMade(self) -> None:
        self.transport.write(self._line)
        self.sent = True

    def dataReceived(self, data: bytes) -> None:
        if not self._received and not self._tls and _tls_record(data):
            self._received = True
            self._finish(ANSWERED_IN_TLS)
            return
        self._received = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.result is not None:
            return
        was_alive = self.alive
        try:
            reply = self._replies.feed(wire.decode_line(line))
        except WireError as e:
            self._finish(f"sent a garbled reply ({e.message})")
            return
        if reply is not None:
            self._finish(reply)
        elif self.alive and not was_alive:
            self._wake()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(f"sent a reply line over {self.MAX_LENGTH} bytes")

    def connectionLost(self, reason: object = None) -> None:
        if self.result is None:
            self.tls_failure = _twisted_tls_failure(reason)
            if self.tls_failure is not None:
                self.result = self.tls_failure
            elif (not self._tls and not self._received
                  and getattr(reason, "check", lambda *_: False)(error.ConnectionDone)):
                self.result = CLOSED_SILENTLY
            else:
                self.result = "closed the connection before a complete reply"
        self._wake()

    def wait(self, seconds: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred(self._cancel)
        self._waiter = (d, self._clock.callLater(max(0.0, seconds), self._wake))
        return d

    def close(self) -> None:
        """Hang up: gracefully once the exchange is over, else abort (the server may
        be hung; nothing more is wanted from it)."""
        if self.transport is None:
            return
        if isinstance(self.result, Reply) or (self._probe and self.alive):
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _finish(self, result: Reply | str) -> None:
        if self.result is None:
            self.result = result
        self.transport.loseConnection()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is None:
            return
        d, timer = self._waiter
        self._waiter = None
        if timer.active():
            timer.cancel()
        d.callback(None)

    def _cancel(self, _: defer.Deferred) -> None:
        if self._waiter is not None:
            _, timer = self._waiter
            self._waiter = None
            if timer.active():
                timer.cancel()
        self.close()




class ReplicadClient(_ClientSettings):
    """The Twisted client: every method returns a Deferred.

    timeout_s bounds a whole call, retries included; attempt_timeout_s is how long a
    server may take to show it is alive (PONG, see replicad.retry.ATTEMPT_TIMEOUT_S);
    connect_timeout_s caps connecting; reply_timeout_s (default: until the deadline) caps
    one attempt.  A write whose outcome is unknown is sent again with the same request
    id.  The session is updated in place by every reply, so share one client (or
    session) per session; on_session_reset(SessionReset) is called when a reply from
    another cluster resets it.  Arguments: the reactor, then those of
    replicad.client._ClientSettings (servers, timeout_s, session, ...), which both
    clients share.
    """

    def __init__(self, reactor: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._reactor = reactor
        self._trust_root = _twisted_trust_root(self.cacert) if self.tls else None
        self._tls_options: dict[str, Any] = {}

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
        """Every live key with the prefix, sorted; in pages when the server says the
        listing is too big for one reply (as BlockingClient.keys)."""
        return defer.ensureDeferred(self._keys(prefix))

    async def _keys(self, prefix: str) -> list[str]:
        listing = KeysListing(prefix)
        try:
            return await self._call(listing.first, keys_result)
        except ClientError as e:
            if not listing.too_many(e):
                raise
        while not listing.add(await self._call(listing.page, keys_result)):
            pass
        return listing.keys

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
        plan = self._plan(request, self._reactor.seconds())
        while True:
            step = plan.next_step(self._reactor.seconds())
            if isinstance(step, Backoff):
                await deferLater(self._reactor, step.delay_s)
                continue
            line = encode_attempt(plan.attempt_request(), self.password)
            outcome = await self._attempt(step, line)
            reply = plan.record(outcome)
            if reply is not None:
                return reply, outcome.address

    async def _connect(self, address: Address, protocol: _OneShot, connect_s: float) -> None:
        endpoint_type = TCP6ClientEndpoint if isIPv6Address(address.host) else TCP4ClientEndpoint
        endpoint = endpoint_type(self._reactor, address.host, address.port, timeout=connect_s)
        if self.tls:
            endpoint = wrapClientTLS(self._client_tls(address.host), endpoint)
        try:
            await connectProtocol(endpoint, protocol)
        except (defer.CancelledError, error.ConnectingCancelledError):
            raise defer.CancelledError() from None   # our caller cancelled the request

    async def _attempt(self, step: Attempt, line: bytes) -> Outcome:
        clock = self._reactor
        address = self._addresses[step.address]
        started = clock.seconds()
        connect_s = min(self.connect_timeout_s, step.stall_s)
        protocol = _OneShot(line, _Replies(auth_sent=self.password is not None), clock,
                            tls=self.tls)
        try:
            await self._connect(address, protocol, connect_s)
        except defer.CancelledError:
            raise
        except Exception as e:
            return _connect_failure(step.address, e, connect_s)
        try:
            return await self._await_reply(step, protocol, started)
        finally:
            protocol.close()

    async def _await_reply(self, step: Attempt, protocol: _OneShot, started: float) -> Outcome:
        clock = self._reactor
        deadline = self._reply_deadline(step, started)
        alive_by = min(started + step.stall_s, deadline)
        while protocol.result is None and not protocol.alive and clock.seconds() < alive_by:
            await protocol.wait(alive_by - clock.seconds())
        if protocol.result is None and not protocol.alive:
            return _stalled(step, after_pong=False, tls=self.tls)
        while protocol.result is None:
            now = clock.seconds()
            if now >= deadline:
                return _no_reply(step, started, now)
            await protocol.wait(min(step.probe_after_s, deadline - now))
            if protocol.result is None and clock.seconds() < deadline:
                if not await self._ping(step):
                    if protocol.result is None:
                        return _stalled(step, after_pong=True)
        result = protocol.result
        if isinstance(result, Reply):
            return Outcome(step.address, reply=result, sent=True)
        if protocol.tls_failure is not None:
            return Outcome(step.address, failure=protocol.tls_failure, kind=FailureKind.TLS)
        kind = _kind(result)
        return Outcome(step.address, failure=result, kind=kind,
                       sent=protocol.sent and kind is not FailureKind.SILENT)

    def _client_tls(self, host: str) -> Any:
        """TLS options verifying the CA and that the certificate names host."""
        if host not in self._tls_options:
            from twisted.internet.ssl import optionsForClientTLS

            self._tls_options[host] = optionsForClientTLS(host, trustRoot=self._trust_root)
        return self._tls_options[host]

    async def _ping(self, step: Attempt) -> bool:
        """A fresh connection's PING answered within stall_s: the server still lives."""
        clock = self._reactor
        started = clock.seconds()
        probe = _OneShot(PING_LINE, _Replies(auth_sent=False), clock, probe=True, tls=self.tls)
        try:
            await self._connect(self._addresses[step.address], probe,
                                min(self.connect_timeout_s, step.stall_s))
        except defer.CancelledError:
            raise
        except Exception:
            return False
        try:
            while probe.result is None and not probe.alive:
                left = started + step.stall_s - clock.seconds()
                if left <= 0:
                    break
                await probe.wait(left)
            return probe.alive
        finally:
            probe.close()




def _connect_failure(address: str, e: BaseException, connect_s: float) -> Outcome:
    if isinstance(e, (error.ConnectionRefusedError, ConnectionRefusedError)):
        return Outcome(address, failure="connection refused", kind=FailureKind.REFUSED)
    if isinstance(e, (error.TimeoutError, TimeoutError)):
        why = f"no connection within {connect_s:.2g} s"
    elif isinstance(e, error.DNSLookupError):
        why = "cannot resolve the host name"
    elif isinstance(e, error.ConnectError) and e.osError is not None:
        why = str(e.osError)
    else:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Outcome(address, failure=why, kind=FailureKind.UNREACHABLE)




def _twisted_trust_root(cacert: str | None) -> Any:
    """Twisted's trust root: every certificate in cacert (PEM), else the platform's."""
    try:
        from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
    except ImportError as e:   # pragma: no cover - pyOpenSSL is a dependency
        raise TLSSetupError(f"TLS needs pyOpenSSL and service-identity ({e}): "
                            "pip install 'twisted[tls]'") from None
    if cacert is None:
        return platformTrust()
    data = _read_cacert(cacert)
    blocks = [b"-----BEGIN CERTIFICATE-----" + part for part in
              data.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    try:
        return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    except Exception as e:
        raise TLSSetupError(f"the CA file {cacert} cannot be used: {e}") from None




def _twisted_tls_failure(reason: Any) -> str | None:
    """A one-line description when a connection ended with a TLS error."""
    check = getattr(reason, "check", None)
    if check is None:
        return None
    try:
        from OpenSSL.SSL import Error as OpenSSLError
        from service_identity import VerificationError
    except ImportError:
        return None
    if check(VerificationError):
        return "TLS: the server's certificate does not name the host dialled"
    if check(OpenSSLError):
        args = getattr(reason.value, "args", ())
        last = ""
        if args and isinstance(args[0], list) and args[0] and isinstance(args[0][-1], tuple):
            last = str(args[0][-1][-1])
        return describe_tls_error(last or str(reason.value) or "handshake failed")
    return None


