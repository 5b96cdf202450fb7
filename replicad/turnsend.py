"""Replies sent at the end of the reactor turn, without registering for writability.

Twisted's ``transport.write()`` buffers the bytes and registers the socket for
writability (one ``epoll_ctl``); the next poll reports it writable, ``doWrite`` sends,
and ``stopWriting`` unregisters it (a second ``epoll_ctl``).  A replica's replies are
small and nearly always fit the socket's send buffer, so those two registrations and the
poll that reports them cost more than the send itself (the reactor's ``_add`` alone was a
fifth of a GET's time on the coordinator: docs/benchmarks.md, "Where a request's time
goes").

A connection accepted by a port that ``TurnSendEndpoint`` listens with, or dialled through
``TurnSendConnecting`` (a replica's links to its peers), buffers a write as Twisted does
but does not register; one call at the end of the turn sends every such
connection's bytes, one ``send`` each, so the replies of one turn (a pipelining client's,
or those of one commit group) still leave together.  Whatever that send leaves over, or
an error it meets, is handed to Twisted's own path (``startWriting``), which finishes it
or closes the connection exactly as it would have.  A connection that is closing
(``loseConnection``, ``loseWriteConnection``, ``abortConnection``) and one that started
TLS on itself (``startTLS``) are Twisted's alone: their close or TLS layer registered them.
One exception: ``loseConnection`` with nothing left over and no producer closes at the
end of the turn (after a send of that turn's bytes) without registering: Twisted registers even
then, to make an empty ``send`` (a one-shot client's request paid an ``epoll_ctl`` in,
a poll, that ``send`` and an ``epoll_ctl`` out after its end of stream).

One turn can hold a great many writes to one connection: a forwarding follower reads
fifty clients' requests in a turn and forwards them all to its coordinator, and the
coordinator answers them all in one of its own turns.  Sent only at the turn's end, the
two processes would take turns (the coordinator idle while the follower reads, the
follower idle while the coordinator answers), each on a core of its own.  A connection
with ``send_every`` set sends as soon as that many writes wait, so the other end starts
on the first of them at once (peer links: a forwarded PUT 1.2x and GET 1.16x as fast;
docs/benchmarks.md, "Peer links send every 16 messages").

``send_buffered`` makes that send itself (``socket.send``) when nothing is left over from
an earlier send and no producer is registered; what the kernel does not take, and any
error, goes to Twisted's ``doWrite`` as before.

Ports of a TLS endpoint are plain TCP ports under a TLS wrapper factory, so their
encrypted bytes take this path too.
"""

from __future__ import annotations

from twisted.internet import main, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.python.failure import Failure
from zope.interface import implementer

# The reason of every close here, made once (a Failure costs a walk of the exception's
# classes; the reactor reuses one the same way: posixbase's faildict).
_CLOSED = Failure(main.CONNECTION_DONE)


class TurnSender:
    """The connections that have bytes to send at the end of this turn (one per
    replica: its client port, its peer port and its links to peers share it)."""

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self._pending: list[_SendsAtTurnEnd] = []
        self._closing: list[_SendsAtTurnEnd] = []
        self._call = None
        self._close_call = None
        self.turns = 0    # turns that sent something (the tests read it)

    def add(self, connection: _SendsAtTurnEnd) -> None:
        self._pending.append(connection)
        if self._call is None:
            self._call = self._clock.callLater(0, self.send)

    def close(self, connection: _SendsAtTurnEnd) -> None:
        """Close ``connection`` at the end of this turn (its own bytes sent first)."""
        self._closing.append(connection)
        if self._close_call is None:
            self._close_call = self._clock.callLater(0, self._close)

    def _close(self) -> None:
        self._close_call = None
        closing, self._closing = self._closing, []
        for connection in closing:
            connection.close_now()

    def send_now(self) -> None:
        """Send what is buffered now rather than at the end of the turn: for bytes on
        every write's path (pushes, acks) that the rest of the turn would only delay."""
        if self._call is not None:
            self._call.cancel()
            self.send()

    def send(self) -> None:
        """Send what this turn buffered (called at the end of the turn)."""
        self._call = None
        pending, self._pending = self._pending, []
        self.turns += 1
        for connection in pending:
            connection.send_buffered()


class _SendsAtTurnEnd:
    """The write path of a TCP connection whose writes wait for the end of the turn."""

    _queued = False     # in the turn sender's list, bytes buffered and not registered
    # Send mid-turn once this many writes wait (0: only at the end of the turn).  The
    # peer links set it (peer.PEER_SEND_EVERY): the peer starts on the first requests
    # of a big turn while this replica still reads the rest, a pipeline, not lock-step.
    send_every = 0
    _unsent = 0         # writes since the last send
    # Send mid-turn once more than this many bytes wait (0: only at the end of the
    # turn): the client port's connections (TurnSendEndpoint's ``send_over``), so a
    # client that does not read its replies pauses its protocol before one turn makes
    # them all.  Not the peer ports: bytes a reading peer has not been offered yet are
    # no congestion (test_bytes_that_wait_for_the_turn_end_are_no_congestion).
    send_over = 0

    def _turn_sender(self) -> TurnSender:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        # Not queued and not idle (bytes left from an earlier send, closing, or TLS of
        # its own): Twisted's own path.  (Inline, not a method: it runs per reply.)
        if not self._queued and (self.TLS or self.offset != len(self.dataBuffer)
                                 or self._tempDataLen or self._closing()):
            super().write(data)
            return
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if not self.connected or self._writeDisconnected or not data:
            return
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        if not self._queued:
            self._queued = True
            self._turn_sender().add(self)
        if self.send_every:
            self._unsent += 1
            if self._unsent >= self.send_every:
                self.send_buffered()
                return
        if self.send_over and self._tempDataLen > self.send_over:
            # A turn that writes this much (a client pipelining GETs of a big value)
            # offers it to the kernel now: what it does not take pauses a streaming
            # producer below, as Twisted's write would, so the protocol stops making
            # replies for a client that does not read them (client_protocol.py).
            self.send_buffered()
        # No producer is paused for bytes that wait only for the end of the turn: a
        # full buffer means the peer stopped reading, and these were never offered to
        # it.  (Pausing here made a big PUSH mark a reading follower congested until
        # the turn ended, so the next call to it failed.)  send_buffered pauses for
        # what the kernel did not take, as Twisted's write would.

    def _pause_if_backed_up(self) -> None:
        """What Twisted's write does (a streaming producer is paused when more than
        ``bufferSize`` bytes wait), counting only the bytes the kernel did not take."""
        left = len(self.dataBuffer) - self.offset + self._tempDataLen
        if (self.producer is not None and self.streamingProducer
                and not self.producerPaused and left > self.bufferSize):
            self.producerPaused = True
            self.producer.pauseProducing()

    def loseConnection(self) -> None:
        """Close once what was written is sent.  Twisted registers the connection for
        writability to send what is left, even when nothing is (an ``epoll_ctl`` in, a
        poll, an empty ``send`` and an ``epoll_ctl`` out: per one-shot request, after
        the client's end of stream); here, with nothing left over from an earlier send
        and no producer, it stops reading and closes at the end of the turn, after
        sending what this turn wrote, as Twisted would have (an orderly shutdown and
        close, ``connectionLost`` with the same reason).  Anything else is Twisted's
        path."""
        if (not self.connected or self.disconnecting or self.TLS or self._producer_waits()
                or self._writeDisconnecting or self._writeDisconnected
                or self.offset != len(self.dataBuffer)):
            super().loseConnection()
            return
        self.disconnecting = True
        self.stopReading()
        self._turn_sender().close(self)

    def close_now(self) -> None:
        """The end of the turn of a loseConnection: the bytes written in that turn are
        sent (one ``send``), and the connection closes; what the kernel does not take
        is Twisted's to send, and it closes once it has."""
        if not self.connected:
            return      # gone meanwhile
        if self.offset == len(self.dataBuffer) and (not self._tempDataLen
                                                    or self._send_turn_bytes()):
            self.stopWriting()
            self.connectionLost(_CLOSED)
            return
        self.startWriting()     # doWrite sends what is left, then closes (disconnecting)

    def _send_turn_bytes(self) -> bool:
        """One ``send`` of the bytes written this turn (nothing is left over from an
        earlier one); True if the kernel took them all, else what it did not take is
        left in Twisted's buffer (an error: all of it, for doWrite to meet again)."""
        pending = self._tempDataBuffer
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0      # Twisted's path meets the error again and handles it
        if sent == len(data):
            pending.clear()
            self._tempDataLen = 0
            return True
        self.dataBuffer, self.offset = data, sent
        self._tempDataBuffer, self._tempDataLen = [], 0
        return False

    def _producer_waits(self) -> bool:
        """A producer that doWrite must tell of a drained buffer: a pull producer
        (asked for more each time) or a paused streaming one.  A streaming producer
        that is not paused (a client connection's, peer.py's congestion watch) needs
        nothing from a send that the kernel takes whole."""
        return self.producer is not None and (not self.streamingProducer
                                              or self.producerPaused)

    def _closing(self) -> bool:
        """loseConnection, loseWriteConnection or abortConnection was called: its
        close registered the connection, Twisted's own path sends what is left."""
        return (self.disconnecting or self._writeDisconnecting
                or getattr(self, "_aborting", False))

    def send_buffered(self) -> None:
        """Send the buffered bytes now; hand what is left (or an error) to Twisted."""
        if not self._queued:
            return      # sent already (send_every), nothing written since
        self._queued = False
        self._unsent = 0
        if not self.connected or self._closing():
            return      # gone, or closing: Twisted sends what is left
        if not self.dataBuffer and not self._producer_waits():
            # The common case (nothing left over from an earlier send, no producer to
            # resume): one send of this turn's bytes, here.  doWrite would do the same
            # through writeSomeData, untilConcludes, stopWriting and removeWriter, about
            # a microsecond of Python per reply (GETs/s 1.08x, docs/benchmarks.md).
            if self._send_turn_bytes():
                return
        failed = self.doWrite() is not None
        if failed or self._tempDataLen or self.offset < len(self.dataBuffer):
            self._pause_if_backed_up()
            # A short send (the socket's buffer is full) or an error (EPIPE, a reset):
            # the reactor's doWrite finishes the job or closes the connection.
            self.startWriting()


class TurnSendServer(_SendsAtTurnEnd, tcp.Server):
    """An accepted connection; ``self.server`` (its port) holds the turn sender."""

    def _turn_sender(self) -> TurnSender:
        return self.server.turn_sender


class TurnSendServerSendingOver(TurnSendServer):
    """An accepted connection of a port listening with ``send_over``."""

    send_over = tcp.Server.bufferSize


class TurnSendClient(_SendsAtTurnEnd, tcp.Client):
    """A dialled connection; ``self.connector`` holds the turn sender."""

    def _turn_sender(self) -> TurnSender:
        return self.connector.turn_sender


class _TurnSendConnector(tcp.Connector):
    def __init__(self, host, port, factory, timeout, bindAddress, reactor, sender):
        super().__init__(host, port, factory, timeout, bindAddress, reactor)
        self.turn_sender = sender

    def _makeTransport(self) -> TurnSendClient:
        return TurnSendClient(self.host, self.port, self.bindAddress, self, self.reactor)


class TurnSendConnecting:
    """What a ``tcp:`` client endpoint needs of its reactor (``connectTCP``), dialling
    ``TurnSendClient`` connections: ``clientFromString(TurnSendConnecting(reactor,
    sender), "tcp:...")``.  A reactor that is not a POSIX one (a test's memory reactor)
    connects its own way."""

    def __init__(self, reactor, sender: TurnSender):
        self._reactor = reactor
        self._sender = sender

    def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
        if not isinstance(self._reactor, PosixReactorBase):
            return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)
        connector = _TurnSendConnector(host, port, factory, timeout, bindAddress,
                                       self._reactor, self._sender)
        connector.connect()
        return connector


@implementer(IStreamServerEndpoint)
class TurnSendEndpoint:
    """A server endpoint whose TCP ports accept ``TurnSendServer`` connections.

    Any other kind of port (UNIX sockets, say) listens unchanged.  With ``send_over``,
    a turn's writes past the transport's bufferSize are sent at once (the client port:
    ``_SendsAtTurnEnd.send_over``)."""

    def __init__(self, endpoint: IStreamServerEndpoint, sender: TurnSender,
                 send_over: bool = False):
        self._endpoint = endpoint
        self._sender = sender
        self._send_over = send_over

    def listen(self, factory) -> Deferred:
        return self._endpoint.listen(factory).addCallback(self._install)

    def _install(self, port):
        if isinstance(port, tcp.Port) and port.transport is tcp.Server:
            port.turn_sender = self._sender
            port.transport = TurnSendServerSendingOver if self._send_over else TurnSendServer
        return port
