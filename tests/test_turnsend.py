"""Replies sent at the end of the turn (replicad.turnsend), on real loopback sockets.

What it saves is the writability registration: a small reply must leave without the
connection ever being in the reactor's writers.  What it must not break: order,
replies bigger than the socket's buffer, a reply followed by a close or a half-close,
a connection reset under a buffered reply, an abort, TLS.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from replicad.peer import _Congestion
from replicad.turnsend import (
    TurnSendClient,
    TurnSendConnecting,
    TurnSendEndpoint,
    TurnSender,
    TurnSendServer,
)
from tests.tlscerts import make_ca

DEADLINE_S = 30.0    # a bound on a hung test, never a measure of speed


class Server(Protocol):
    """Answers each chunk it receives with what ``factory.answer(self, data)`` does."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost = defer.Deferred()
        self.registered: list[bool] = []    # was it among the writers after a write?

    def dataReceived(self, data: bytes) -> None:
        self.factory.answer(self, data)
        self.registered.append(self.transport in reactor.getWriters())

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(reason.value)     # the exception, as a value


class Client(Protocol):
    def __init__(self, want: int = 0):
        self.received = bytearray()
        self.want = want
        self.got_all = defer.Deferred()
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.want and len(self.received) >= self.want and not self.got_all.called:
            self.got_all.callback(bytes(self.received))

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(bytes(self.received))


def within(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(DEADLINE_S, reactor)


async def listen(answer, endpoint_text: str = "tcp:0:interface=127.0.0.1",
                 sender: TurnSender | None = None, send_over: bool = False):
    factory = Factory.forProtocol(Server)
    factory.connections = []
    factory.answer = answer
    sender = sender or TurnSender(reactor)
    port = await TurnSendEndpoint(serverFromString(reactor, endpoint_text), sender,
                                  send_over).listen(factory)
    return port, factory, sender


async def connect(port, client: Client, tls=None) -> Client:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await connectProtocol(endpoint, client)
    return client


async def until(condition) -> None:
    """Wait for ``condition()``, polling the reactor, at most DEADLINE_S."""
    deadline = reactor.seconds() + DEADLINE_S
    while not condition():
        assert reactor.seconds() < deadline, "condition not met in time"
        await task.deferLater(reactor, 0.001, lambda: None)


def record_sends(transport) -> list[bytes]:
    """The bytes of each send the transport makes from now on, in a list (its socket
    is wrapped: the turn-end send calls it directly, Twisted's doWrite through
    writeSomeData)."""
    sends: list[bytes] = []
    transport.socket = _RecordingSocket(transport.socket, sends)
    return sends


class _RecordingSocket:
    def __init__(self, real, sends: list[bytes]):
        self._real = real
        self._sends = sends

    def send(self, data) -> int:
        sent = self._real.send(data)
        self._sends.append(bytes(data)[:sent])
        return sent

    def __getattr__(self, name):
        return getattr(self._real, name)


def reply(server: Server, data: bytes) -> None:
    server.transport.write(b"re:" + data)


@pytest_twisted.ensureDeferred
async def test_a_reply_leaves_without_registering_for_writability():
    port, factory, sender = await listen(reply)
    try:
        client = await connect(port, Client(want=len(b"re:ping")))
        client.transport.write(b"ping")
        assert await within(client.got_all) == b"re:ping"
        server = factory.connections[0]
        assert isinstance(server.transport, TurnSendServer)
        assert server.registered == [False]      # Twisted's write would say True
        assert sender.turns == 1
        client.transport.loseConnection()
        await within(server.lost)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_writes_of_one_turn_leave_in_one_send_and_in_order():
    def three(server: Server, data: bytes) -> None:
        for part in (b"a", b"b", b"c"):
            server.transport.write(part)

    port, factory, _ = await listen(three)
    try:
        client = await connect(port, Client(want=3))
        await task.deferLater(reactor, 0, lambda: None)
        sends = record_sends(factory.connections[0].transport)
        client.transport.write(b"go")
        assert await within(client.got_all) == b"abc"
        assert sends == [b"abc"]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_send_now_sends_in_this_turn_and_cancels_the_turn_end_send():
    sender = TurnSender(reactor)
    left_over = []

    def at_once(server: Server, data: bytes) -> None:
        reply(server, data)
        sender.send_now()
        transport = server.transport
        left_over.append(transport._tempDataLen + len(transport.dataBuffer))

    port, factory, _ = await listen(at_once, sender=sender)
    try:
        client = await connect(port, Client(want=len(b"re:ping")))
        client.transport.write(b"ping")
        assert await within(client.got_all) == b"re:ping"
        await task.deferLater(reactor, 0, lambda: None)
        assert left_over == [0]              # sent before the handler returned
        assert sender.turns == 1             # and the end-of-turn send never ran
        assert factory.connections[0].registered == [False]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytes_that_wait_for_the_turn_end_are_no_congestion():
    """Two pushes of 100 KB in one turn to a peer that reads: the second must not find
    the link congested by the first, whose bytes were never offered to the peer."""
    congestion = _Congestion()   # what a peer link registers
    seen = []

    def two_pushes(server: Server, data: bytes) -> None:
        server.transport.registerProducer(congestion, True)
        server.transport.write(b"a" * 100_000)
        seen.append(congestion.congested)
        server.transport.write(b"b" * 100_000)

    port, factory, _ = await listen(two_pushes)
    try:
        client = await connect(port, Client(want=200_000))
        client.transport.write(b"go")
        assert len(await within(client.got_all)) == 200_000
        assert seen == [False]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_does_not_read_pauses_the_producer_at_the_turn_end():
    """What the kernel did not take is congestion: paused by the turn's send itself,
    before any later write could notice."""
    congestion = _Congestion()   # what a peer link registers
    big = b"x" * (8 * 1024 * 1024)

    def bulk(server: Server, data: bytes) -> None:
        server.transport.registerProducer(congestion, True)
        server.transport.write(big)

    port, factory, sender = await listen(bulk)
    try:
        client = await connect(port, Client(want=len(big)))
        client.transport.pauseProducing()             # the peer stops reading
        client.transport.write(b"go")
        await until(lambda: sender.turns == 1)        # the turn's send, in one call
        assert congestion.congested
        client.transport.resumeProducing()            # reading again: drained, resumed
        assert len(await within(client.got_all)) == len(big)
        await task.deferLater(reactor, 0, lambda: None)
        assert not congestion.congested
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_client_port_pauses_its_producer_within_the_turn_that_backs_up():
    """A port listening with ``send_over`` offers a turn's writes past bufferSize to
    the kernel at once: for a client that does not read, its producer is paused before
    the turn makes more (client_protocol.py stops serving it).  At the end of the turn
    only, one turn could make every reply of a long pipeline first."""
    congestion = _Congestion()
    paused_after: list[int] = []
    chunk = b"x" * 100_000

    def many_replies(server: Server, data: bytes) -> None:
        server.transport.registerProducer(congestion, True)
        for n in range(1, 200):
            server.transport.write(chunk)
            if congestion.congested:
                paused_after.append(n)
                return

    port, factory, sender = await listen(many_replies, send_over=True)
    try:
        client = await connect(port, Client(want=10**9))
        client.transport.pauseProducing()             # it reads nothing
        client.transport.write(b"go")
        await until(lambda: sender.turns == 1)
        assert paused_after and paused_after[0] < 199  # paused within the turn
        client.transport.abortConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_reply_bigger_than_the_socket_buffer_arrives_whole():
    big = os.urandom(8 * 1024 * 1024)

    def bulk(server: Server, data: bytes) -> None:
        server.transport.write(big)

    port, factory, _ = await listen(bulk)
    try:
        client = await connect(port, Client(want=len(big)))
        client.transport.write(b"go")
        assert await within(client.got_all) == big
        server = factory.connections[0]
        # The first send came up short, so Twisted's own path finished it.
        assert server.transport.dataBuffer == b"" and not server.transport._tempDataLen
    finally:
        await port.stopListening()


@pytest.mark.parametrize("close, arrives", [
    ("loseConnection", b"reply"),         # the reply, then the close
    ("loseWriteConnection", b"reply"),    # the reply, then the end of stream
    ("abortConnection", b""),             # nothing: an abort drops what is buffered
])
@pytest_twisted.ensureDeferred
async def test_a_reply_then_a_close_in_the_same_turn(close, arrives):
    def answer_and_close(server: Server, data: bytes) -> None:
        server.transport.write(b"reply")
        getattr(server.transport, close)()

    port, factory, _ = await listen(answer_and_close)
    try:
        client = await connect(port, Client())
        client.transport.write(b"x")
        # The client sees the close (or the end of stream, and closes): what came first.
        assert await within(client.closed) == arrives
        lost = await within(factory.connections[0].lost)
        if close == "abortConnection":
            assert isinstance(lost, ConnectionAborted)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_close_with_nothing_left_to_send_is_not_registered_for_writability():
    """The reply left in an earlier turn; the close needs no poll for writability and no
    empty send (Twisted's path makes both: one-shot clients pay them per request)."""
    seen = []

    def reply_then_close_on_the_next_chunk(server: Server, data: bytes) -> None:
        if data == b"bye":
            sends = record_sends(server.transport)
            server.transport.loseConnection()
            seen.append((server.transport in reactor.getWriters(), sends))
        else:
            reply(server, data)

    port, factory, sender = await listen(reply_then_close_on_the_next_chunk)
    try:
        client = await connect(port, Client(want=len(b"re:ping")))
        client.transport.write(b"ping")
        assert await within(client.got_all) == b"re:ping"
        client.transport.write(b"bye")
        assert await within(client.closed) == b"re:ping"    # an orderly close: no reset
        lost = await within(factory.connections[0].lost)
        assert isinstance(lost, ConnectionDone)
        [(registered, sends)] = seen
        assert not registered and sends == []
        assert not factory.connections[0].transport.connected
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_close_then_a_write_in_the_same_turn_sends_it_before_closing():
    def close_then_write(server: Server, data: bytes) -> None:
        server.transport.loseConnection()
        server.transport.write(b"last words")

    port, factory, _ = await listen(close_then_write)
    try:
        client = await connect(port, Client())
        client.transport.write(b"x")
        assert await within(client.closed) == b"last words"
        assert isinstance(await within(factory.connections[0].lost), ConnectionDone)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_reply_to_a_connection_the_client_reset_closes_it_quietly():
    """The client resets the connection while the server holds a reply for it: the
    turn's send fails, Twisted's path sees the error and closes the connection."""
    held: list[Server] = []

    def hold(server: Server, data: bytes) -> None:
        held.append(server)
        server.transport.pauseProducing()     # it will not read the reset

    port, factory, sender = await listen(hold)
    try:
        raw = socket.create_connection(("127.0.0.1", port.getHost().port))
        raw.sendall(b"x")
        while not held:
            await within(task.deferLater(reactor, 0.01, lambda: None))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()                           # RST
        server = held[0]
        server.transport.write(b"late reply " * 1000)
        reason = await within(server.lost)
        assert isinstance(reason, ConnectionLost)
        assert not server.transport.connected
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_replies_over_tls_take_the_same_path(tmp_path):
    ca = make_ca(str(tmp_path))
    cert = ca.issue(str(tmp_path / "server"), "server")
    port, factory, sender = await listen(
        reply, f"ssl:0:interface=127.0.0.1:privateKey={cert.key}:certKey={cert.cert}")
    try:
        with open(ca.cert, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        tls = ssl.optionsForClientTLS("localhost", trustRoot=authority)
        client = await connect(port, Client(want=len(b"re:secret")), tls=tls)
        client.transport.write(b"secret")
        assert await within(client.got_all) == b"re:secret"
        assert isinstance(factory.connections[0].transport.transport, TurnSendServer)
        assert sender.turns >= 1            # the handshake and the reply took the path
    finally:
        await port.stopListening()


def test_a_port_that_is_not_tcp_listens_unchanged():
    class UnixPort:
        transport = object()

    port = UnixPort()
    assert TurnSendEndpoint(None, TurnSender(reactor))._install(port) is port
    assert port.transport is UnixPort.transport
    assert not hasattr(port, "turn_sender")


def test_a_write_that_is_not_bytes_is_refused_as_twisted_refuses_it():
    connection = TurnSendServer.__new__(TurnSendServer)
    connection.TLS = False
    connection.disconnecting = connection._writeDisconnecting = False
    connection.dataBuffer, connection.offset, connection._tempDataLen = b"", 0, 0
    with pytest.raises(TypeError):
        connection.write("text")


class Recorder(Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = bytearray()
        self.got = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.factory.want and not self.got.called:
            self.got.callback(bytes(self.received))


class Dialler(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")
        self.registered = self.transport in reactor.getWriters()


@pytest_twisted.ensureDeferred
async def test_a_dialled_connection_sends_at_the_end_of_the_turn_too():
    factory = Factory.forProtocol(Recorder)
    factory.connections, factory.want = [], len(b"hello")
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sender = TurnSender(reactor)
    try:
        endpoint = clientFromString(TurnSendConnecting(reactor, sender),
                                    f"tcp:host=127.0.0.1:port={port.getHost().port}")
        dialler = await within(connectProtocol(endpoint, Dialler()))
        assert isinstance(dialler.transport, TurnSendClient)
        assert dialler.registered is False       # Twisted's write would say True
        while not factory.connections:
            await within(task.deferLater(reactor, 0.01, lambda: None))
        assert await within(factory.connections[0].got) == b"hello"
        assert sender.turns >= 1
        dialler.transport.loseConnection()
    finally:
        await port.stopListening()


def test_a_memory_reactor_dials_its_own_way():
    memory = MemoryReactorClock()
    connecting = TurnSendConnecting(memory, TurnSender(memory))
    clientFromString(connecting, "tcp:host=127.0.0.1:port=7101").connect(Factory())
    assert [(host, port) for host, port, *_ in memory.tcpClients] == [("127.0.0.1", 7101)]


@pytest_twisted.ensureDeferred
async def test_a_connection_with_send_every_sends_mid_turn_and_the_rest_at_its_end():
    """send_every = 3: seven writes in one turn leave as 3 + 3 (as they are made) + 1
    (at the end of the turn), in order, and nothing is sent empty."""
    sent_before_return = []

    def seven(server: Server, data: bytes) -> None:
        for n in range(7):
            server.transport.write(b"%d" % n)
        sent_before_return.append(list(sends))

    port, factory, sender = await listen(seven)
    try:
        client = await connect(port, Client(want=7))
        await until(lambda: factory.connections)
        server_transport = factory.connections[0].transport
        server_transport.send_every = 3
        sends = record_sends(server_transport)
        client.transport.write(b"go")
        assert await within(client.got_all) == b"0123456"
        await task.deferLater(reactor, 0, lambda: None)
        assert sent_before_return == [[b"012", b"345"]]
        assert sends == [b"012", b"345", b"6"]
        assert factory.connections[0].registered == [False]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_peer_links_send_every_peer_send_every_messages():
    from replicad.peer import PEER_SEND_EVERY, send_mid_turn

    port, factory, _ = await listen(reply)
    try:
        await connect(port, Client())
        await until(lambda: factory.connections)
        transport = factory.connections[0].transport
        assert transport.send_every == 0            # client connections: turn end only
        send_mid_turn(transport)
        assert transport.send_every == PEER_SEND_EVERY > 1
        send_mid_turn(object())                     # not ours (TLS, a test's): no error
    finally:
        await port.stopListening()
