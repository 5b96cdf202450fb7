"""The client-facing LineReceiver: parse a line, hand it to the replica, write the reply.

Telnet-friendly: many commands per connection until QUIT or close; CRLF or LF.
Requests on one connection are answered in order.  Pipelining: a request whose place in
the order is fixed as soon as it is handed over (a write the coordinator has applied to
its open commit group, a read it has answered) does not stop reading, so the writes of
one pipelining client share a COMMIT and a push; any other request (forwarded, waiting
for an election or a catch-up) holds the lines after it until every reply before it and
its own are written, so a pipelining client is never reordered; once HELD_INPUT_BYTES
are held the transport stops reading (back-pressure).  At most MAX_PIPELINE requests
are in flight per connection.  Replies a client does not read are bounded too: the
protocol is a streaming producer of its transport, which pauses it while more than its
bufferSize of replies wait, and then no more of that client's lines are served
(``_RepliesBackedUp``; measured before: 5,000 pipelined GETs of a 60 kB value from a
client that read nothing raised the replica's peak memory by 564 MB, so one client
could exhaust it).

Half-close (IHalfCloseableProtocol): a client may send its requests and shut down its
write side (``printf 'PUT k v\n' | nc -N host 7001``).  The requests already received
are still served and answered, a last line without a newline included, and only then
is the connection closed.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from replicad import wire
from replicad.config import ClusterConfig
from replicad.peer import no_delay
from replicad.wire import Code, Reply, Request, WireError

# A connection that guesses wrong this often is closed (guessing then costs a connect).
MAX_FAILED_AUTHS = 3
# After a final reply and a half-close, how long a client may keep its side open.
CLOSE_LINGER_S = 2.0
# Requests in flight on one connection before reading pauses (a pipelining client).
MAX_PIPELINE = 64
# Bytes a client may send while its lines are held (a request before them is being
# served) before the transport stops reading altogether.
HELD_INPUT_BYTES = 64 * 1024


class RequestHandler(Protocol):
    """What the protocol needs from the replica."""

    def client_connected(self) -> None: ...
    def status(self, request: Request) -> Reply: ...
    def answer_now(self, request: Request) -> Reply | None: ...
    def answer_confirmed(self, request: Request,
                         deliver: Callable[[Reply | Failure], None]) -> bool:
        """Take a read to answer later by ``deliver(reply)`` (or a Failure, answered ERR
        INTERNAL), called exactly once and never before this returns (a follower's
        confirmed read); False: not taken."""
    def stopping_reply(self, request: Request) -> Reply | None:
        """The answer to a request that failed because the replica stops (its disk
        failed); None: answer the failure ERR INTERNAL."""
    def handle(self, request: Request,
               placed: Callable[[], None] | None = None) -> defer.Deferred[Reply]:
        """Serve a request.  ``placed()``, called before ``handle`` returns, says the
        request's place in the order is fixed (applied, or answered): the next request
        of the connection may start before this one's reply."""


@implementer(IPushProducer)
class _RepliesBackedUp:
    """Registered on a client's transport (streaming): the transport pauses it while
    more than its bufferSize of replies wait for a client that does not read them, and
    resumes it once they are sent."""

    def __init__(self, protocol: ClientProtocol):
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.replies_backed_up(True)

    def resumeProducing(self) -> None:
        self._protocol.replies_backed_up(False)

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class ClientProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger()

    def __init__(self, factory: ClientFactory):
        self.factory = factory
        self.MAX_LENGTH = factory.limits.max_line_bytes
        self.callLater = factory.clock.callLater   # TimeoutMixin uses this: injected time
        self._seconds = factory.clock.seconds
        self._active_at = 0.0   # the last request or reply: the idle timer counts from it
        self._counted = False
        self._authenticated = factory.password is None
        self._failed_auths = 0
        self._closing = False
        self._linger = None
        self._read_closed = False   # the client shut down its write side
        # Replies in request order: [Reply] when ready, [None] while being served.
        self._queue: deque[list] = deque()
        self._close_when_drained = False
        self._reading_paused = False   # the transport itself, not only the line handling
        self._backed_up = False        # replies wait that the client has not read

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.transport.registerProducer(_RepliesBackedUp(self), True)
        if self.factory.open_connections >= self.factory.max_connections:
            self.write_reply(wire.error_reply(Code.BUSY, "too many connections, try later"))
            self.close_after_reply()
            return
        self._counted = True
        self.factory.open_connections += 1
        self._active_at = self._seconds()
        self.setTimeout(self.factory.idle_timeout_s)
        self.factory.handler.client_connected()

    def connectionLost(self, reason: object = None) -> None:
        # Twisted leaves `connected` set after a close; a reply that arrives later must
        # see the truth, or it would write, re-arm the idle timer and resume reading.
        self.connected = False
        self.setTimeout(None)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self._counted:
            self.factory.open_connections -= 1
            self._counted = False
        if self._backed_up:
            self._backed_up = False
            self.factory.backed_up_connections -= 1

    def readConnectionLost(self) -> None:
        """The client half-closed: serve what it sent, then close (not before)."""
        if self._read_closed:
            return
        self._read_closed = True
        self.setTimeout(None)      # nothing more can come: idleness is over
        if self._closing:
            self.transport.loseConnection()   # our final reply went out already
            return
        if self._buffer and not self._buffer.endswith(self.delimiter):
            self._buffer += self.delimiter   # a last line without its newline
        self._finish_input()

    def writeConnectionLost(self) -> None:
        """Our side was shut down after a final reply; the linger timer covers it."""

    def _finish_input(self) -> None:
        """After the client's EOF: serve the lines left in the buffer, then close."""
        if self.paused or not self.connected:
            return                     # a request is being served; _drain calls again
        self.dataReceived(b"")
        if not self.paused and not self._queue and not self._closing and self.connected:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """The idle timer is armed once and not moved per request (a DelayedCall.reset
        per request and per reply); a request or reply only notes the time, and the
        timer, when it fires early, is armed again for what is left."""
        seconds = self.factory.idle_timeout_s
        if self._queue:
            # A request is being served (a slow election, a catch-up): that is not
            # idleness.  The timer is re-armed here rather than stopped and started
            # around every request (a callLater and a cancel per request).
            self.setTimeout(seconds)
            return
        left = self._active_at + seconds - self._seconds()
        if left > 0:
            self.setTimeout(left)
            return
        self.write_reply(wire.error_reply(Code.IDLE, f"no request for {seconds:g} s, closing"))
        self.close_after_reply()

    def lineLengthExceeded(self, line: bytes) -> None:
        limit = self.MAX_LENGTH
        self._respond(
            wire.error_reply(Code.LINETOOLONG, f"line over {limit} bytes, closing")
        )
        self.close_after_reply()

    def close_after_reply(self) -> None:
        """Close so that the client reads our last reply.  Closing a socket that still
        holds unread input makes the kernel send RST, and the client may then lose the
        reply (an over-long line is exactly that case).  So: half-close after the reply,
        discard whatever else arrives, and abort only if the client lingers.  With
        replies still being served, all that once they are written."""
        self._closing = True
        self.setTimeout(None)
        if self._queue:
            self._close_when_drained = True
            return
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None or self._read_closed:
            self.transport.loseConnection()
            return
        half_close()
        self._linger = self.factory.clock.callLater(
            CLOSE_LINGER_S, self.transport.abortConnection
        )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return      # the client's leftovers after our final reply
        super().dataReceived(data)
        if self.paused and not self._reading_paused and len(self._buffer) >= HELD_INPUT_BYTES:
            self._stop_reading()

    def pauseProducing(self) -> None:
        """Hold the lines that arrive (LineReceiver keeps them in its buffer while
        ``paused``) rather than pause the transport: pausing and resuming it cost two
        epoll_ctl calls per forwarded request, and a request/reply client sends nothing
        while it waits.  The transport is paused once HELD_INPUT_BYTES are held, so a
        client that keeps sending still gets back-pressure and bounded memory."""
        self.paused = True
        if not self._reading_paused and len(self._buffer) >= HELD_INPUT_BYTES:
            self._stop_reading()

    def _stop_reading(self) -> None:
        self._reading_paused = True
        self.transport.pauseProducing()

    def replies_backed_up(self, backed_up: bool) -> None:
        """The transport's word (``_RepliesBackedUp``): while replies wait unread, the
        lines that arrive are held, not served (LineReceiver's ``paused``; the input
        held is bounded by HELD_INPUT_BYTES as for a request being served); once they
        are sent, serving goes on where it stopped."""
        if backed_up != self._backed_up:
            self.factory.backed_up_connections += 1 if backed_up else -1
        self._backed_up = backed_up
        if backed_up:
            self.paused = True
        else:
            self._drain()

    def resumeProducing(self) -> None:
        if self._backed_up:
            return          # replies_backed_up(False) resumes
        self.paused = False
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        if self._buffer:
            self.dataReceived(b"")      # the lines held while paused

    def write_reply(self, reply: Reply) -> None:
        self.transport.write(reply.encode())

    def _respond(self, reply: Reply) -> None:
        """A reply ready now: written at once, or after the replies still being served."""
        if self._queue:
            self._queue.append([reply])
        else:
            self.write_reply(reply)

    def lineReceived(self, raw: bytes) -> None:
        if self._closing:
            return      # lines pipelined after QUIT (or another final reply) are dropped
        self._active_at = self._seconds()     # not idle (timeoutConnection reads it)
        try:
            request = wire.parse_request(wire.decode_line(raw), self.factory.limits)
        except WireError as e:
            self._respond(e.reply())
            return
        if request is None:
            return
        if request.command == "AUTH":
            self._auth(request.value or "")
        elif not self._authenticated and request.command not in wire.UNAUTHENTICATED_COMMANDS:
            self._respond(wire.error_reply(
                Code.AUTH, "this cluster needs a password: send AUTH <password> first"
            ))
        elif request.command == "PING":
            self._respond(Reply("PONG"))
        elif request.command == "HELP":
            self._respond(Reply("HELP", lines=wire.HELP_LINES))
        elif request.command == "QUIT":
            self._respond(Reply("BYE"))
            self.close_after_reply()
        elif request.command == "STATUS":
            try:
                self._respond(self.factory.handler.status(request))
            except Exception:       # the store's count, say, on a disk that fails reads
                self._respond(self._internal_error(Failure(), request))
        else:
            # The fast path: a read the coordinator can answer at once is answered here,
            # with no Deferred and no pause of reading (most GETs).  Its error (a page
            # the disk cannot read) is ERR INTERNAL in its place, as on the full path:
            # raised into the reactor, it dropped the connection.
            try:
                reply = self.factory.handler.answer_now(request)
            except Exception:
                self._respond(self._internal_error(Failure(), request))
                return
            if reply is not None:
                self._respond(reply)
            elif not self._answer_confirmed(request):
                self._serve(request)

    def _answer_confirmed(self, request: Request) -> bool:
        """A read a follower answers once its coordinator confirms (confirmedreads.py):
        its reply by callback, with no Deferred.  Nothing after it is read until it is
        answered (a write pipelined after it must not be applied before it is read)."""
        slot: list = [None]

        def deliver(result: Reply | Failure) -> None:
            if isinstance(result, Failure):
                self._failed(result, request, slot)
            else:
                self._served(result, slot)

        if not self.factory.handler.answer_confirmed(request, deliver):
            return False
        self._queue.append(slot)       # in time: deliver is never called before this
        self.pauseProducing()
        return True

    def _auth(self, password: str) -> None:
        expected = self.factory.password
        if expected is None or hmac.compare_digest(password.encode(), expected.encode()):
            self._authenticated = True
            self._respond(Reply("OK"))
            return
        self._failed_auths += 1
        self.log.warn("wrong client password from {peer}", peer=self.transport.getPeer())
        if self._failed_auths >= MAX_FAILED_AUTHS:
            self._respond(wire.error_reply(Code.AUTH, "wrong password; closing"))
            self.close_after_reply()
        else:
            self._respond(wire.error_reply(Code.AUTH, "wrong password"))

    def _serve(self, request: Request) -> None:
        slot: list = [None]
        self._queue.append(slot)
        placed: list[bool] = []
        try:
            reply = self.factory.handler.handle(request, lambda: placed.append(True))
        except Exception:
            reply = defer.fail()
        if isinstance(reply, defer.Deferred):
            reply.addCallbacks(self._served, self._failed, (slot,), None, (request, slot))
        else:
            self._served(reply, slot)
        if slot[0] is None and (not placed or len(self._queue) >= MAX_PIPELINE):
            # Its place is not fixed yet (or the pipeline is full): read nothing more
            # until it is answered, so nothing after it can overtake it.
            self.pauseProducing()

    def _failed(self, failure, request: Request, slot: list) -> None:
        self._served(self._internal_error(failure, request), slot)

    def _internal_error(self, failure: Failure, request: Request) -> Reply:
        """A failure of ours, logged with its traceback; the client sees only that, or,
        when the replica stops on a failed disk, where to go (``stopping_reply``), and
        the log has a line, not a traceback per request (the stop is logged once)."""
        stopping = self.factory.handler.stopping_reply(request)
        if stopping is not None:
            self.log.info("serving {command} failed as this replica stops: {error}",
                          command=request.command, error=failure.getErrorMessage())
            return stopping
        self.log.failure("serving {command} failed", failure, command=request.command)
        return wire.error_reply(Code.INTERNAL, "internal error; nothing was half-applied")

    def _served(self, reply: Reply, slot: list) -> None:
        slot[0] = reply
        self._drain()

    def _drain(self) -> None:
        """Write the replies that are ready, in order; once none is left, read again."""
        if not self.connected:
            return
        queue = self._queue
        while queue and queue[0][0] is not None:
            self.write_reply(queue.popleft()[0])
        if queue:
            return
        if self._close_when_drained:
            self._close_when_drained = False
            self.close_after_reply()
            return
        if self._backed_up:
            return          # the client reads its replies first (replies_backed_up)
        if self._read_closed:
            # Do not resume the transport: its read side is over.
            self.paused = False
            self._finish_input()
            return
        if self._closing:
            return
        self._active_at = self._seconds()     # idle from the last reply on
        if self.paused:
            self.resumeProducing()


class ClientFactory(Factory):
    protocol = ClientProtocol
    noisy = False

    def __init__(self, handler: RequestHandler, config: ClusterConfig, clock: IReactorTime):
        self.handler = handler
        self.clock = clock
        self.limits = config.limits
        self.idle_timeout_s = config.timers.idle_timeout
        self.max_connections = config.max_connections
        self.password = config.client_password
        self.open_connections = 0
        self.backed_up_connections = 0   # their replies wait unread (replies_backed_up)

    def buildProtocol(self, addr) -> ClientProtocol:
        return ClientProtocol(self)
