"""replicad.peer: the authenticated peer links, driven with StringTransport, iosim and Clock."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from replicad import peer, peerwire
from replicad.peer import (
    PeerAnswer,
    PeerClientFactory,
    PeerLink,
    PeerResponse,
    PeerServerFactory,
    PeerUnavailable,
)
from replicad.peerwire import PeerWireError

SECRET = "s3cret"
MEMBERS = {1, 2, 3}
SERVER_ID = 2
CLIENT_ID = 1
CLIENT_NONCE = "c" * 32


# Helpers --------------------------------------------------------------------------------


def result_of(d: defer.Deferred):
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def success(d: defer.Deferred):
    result = result_of(d)
    assert not isinstance(result, Failure), result
    return result


def failure_of(d: defer.Deferred, *types):
    result = result_of(d)
    assert isinstance(result, Failure), f"expected a failure, got {result!r}"
    assert result.check(*types), result
    return result.value


def lines(transport) -> list[str]:
    """The lines written since the last call (the peer protocol ends lines with LF)."""
    text = transport.value().decode("utf-8")
    transport.clear()
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


class Handler:
    """The replica's side of the peer protocol: records calls, answers as told."""

    def __init__(self, respond=None):
        self.calls: list[tuple[int, str, str]] = []
        self.respond = respond or (lambda peer_id, verb, payload: PeerAnswer("OK", payload))

    def peer_request(self, peer_id, verb, payload):
        self.calls.append((peer_id, verb, payload))
        return self.respond(peer_id, verb, payload)


class Body:
    """A body iterator that remembers how far it was read and whether it was closed."""

    def __init__(self, n: int, kind: str = "REC", fail_at: int | None = None):
        self.n, self.kind, self.fail_at = n, kind, fail_at
        self.sent = 0
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.sent == self.fail_at:
            raise RuntimeError("disk on fire")
        if self.sent >= self.n:
            raise StopIteration
        self.sent += 1
        return (self.kind, f"k{self.sent} 1 {self.sent} 1:{self.sent} V value {self.sent}")

    def close(self):
        self.closed = True


def make_server(handler=None, secret=SECRET, max_line=10_000):
    clock = task.Clock()
    handler = handler or Handler()
    factory = PeerServerFactory(SERVER_ID, set(MEMBERS), secret, handler, clock, max_line)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, handler


def auth_line(proto, client_id=CLIENT_ID, secret=SECRET, nonce=None) -> bytes:
    proof = peerwire.client_proof(
        secret, client_id, SERVER_ID, nonce or proto.nonce, CLIENT_NONCE
    )
    return f"AUTH {client_id} {CLIENT_NONCE} {proof}\n".encode()


def authenticated_server(handler=None, max_line=10_000):
    proto, transport, clock, handler = make_server(handler, max_line=max_line)
    assert lines(transport) == [f"HELLO {SERVER_ID} {proto.nonce}"]
    proto.dataReceived(auth_line(proto))
    welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, proto.nonce, CLIENT_NONCE)
    assert lines(transport) == [f"WELCOME {welcome}"]
    assert proto.peer_id == CLIENT_ID
    return proto, transport, clock, handler


def drain(transport) -> int:
    """Play the reactor's part for pull producers: resume until unregistered."""
    rounds = 0
    while transport.producer is not None:
        assert transport.streaming is False
        transport.producer.resumeProducing()
        rounds += 1
        assert rounds < 100
    return rounds


def make_client(secret=SECRET, expected_peer=SERVER_ID):
    clock = task.Clock()
    factory = PeerClientFactory(CLIENT_ID, expected_peer, secret, clock, 10_000)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def ready_client():
    proto, transport, clock = make_client()
    proto.dataReceived(f"HELLO {SERVER_ID} servernonce\n".encode())
    word, client_id, nonce, proof = lines(transport)[0].split(" ")
    assert (word, client_id) == ("AUTH", str(CLIENT_ID))
    assert proof == peerwire.client_proof(SECRET, CLIENT_ID, SERVER_ID, "servernonce", nonce)
    welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, "servernonce", nonce)
    proto.dataReceived(f"WELCOME {welcome}\n".encode())
    assert success(proto.authenticated) is proto
    return proto, transport, clock


def connected_pair(handler=None, server_secret=SECRET, client_secret=SECRET,
                   expected_peer=SERVER_ID):
    clock = task.Clock()
    handler = handler or Handler()
    server_factory = PeerServerFactory(
        SERVER_ID, set(MEMBERS), server_secret, handler, clock, 100_000
    )
    client_factory = PeerClientFactory(CLIENT_ID, expected_peer, client_secret, clock, 100_000)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io, client_io = iosim.makeFakeServer(server), iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, clock=clock)
    return server, client, server_io, client_io, pump, clock, handler


# Server: handshake ----------------------------------------------------------------------


def test_hello_is_sent_on_connect():
    proto, transport, _clock, _handler = make_server()
    (hello,) = lines(transport)
    word, server_id, nonce = hello.split(" ")
    assert (word, server_id) == ("HELLO", str(SERVER_ID))
    assert nonce == proto.nonce and len(nonce) == 32
    assert make_server()[0].nonce != proto.nonce


@pytest.mark.parametrize("garbage", [b"hello\n", b"1 PING x\n", b"AUTH 1 n\n", b"\n",
                                     b"WELCOME x\n", b"AUTH 1 a b c\n"])
def test_garbage_before_auth_is_refused(garbage):
    proto, transport, _clock, handler = make_server()
    lines(transport)
    proto.dataReceived(garbage + b"1 PING x\n")
    assert lines(transport) == ["ERR AUTH not authenticated: send AUTH first"]
    assert transport.disconnecting
    assert proto.peer_id is None
    assert handler.calls == []


def test_wrong_secret_is_refused():
    proto, transport, _clock, handler = make_server()
    lines(transport)
    proto.dataReceived(auth_line(proto, secret="not the secret") + b"1 PING x\n")
    (line,) = lines(transport)
    assert line.startswith("ERR AUTH bad proof")
    assert "secret" in line
    assert transport.disconnecting
    assert proto.peer_id is None
    assert handler.calls == []


def test_proof_for_another_nonce_is_refused():
    proto, transport, _clock, _handler = make_server()
    lines(transport)
    proto.dataReceived(auth_line(proto, nonce="0" * 32))   # a replayed handshake
    assert lines(transport)[0].startswith("ERR AUTH bad proof")
    assert transport.disconnecting


@pytest.mark.parametrize("client_id", [9, 0, SERVER_ID])
def test_unknown_or_own_id_is_refused(client_id):
    proto, transport, _clock, _handler = make_server()
    lines(transport)
    # Even with a proof computed correctly for that id.
    proto.dataReceived(auth_line(proto, client_id=client_id))
    assert lines(transport) == [
        f"ERR AUTH replica {client_id} is not a member of this cluster"
    ]
    assert transport.disconnecting
    assert proto.peer_id is None


def test_non_numeric_id_is_refused():
    proto, transport, _clock, _handler = make_server()
    lines(transport)
    proto.dataReceived(b"AUTH one nonce proof\n")
    assert lines(transport) == ["ERR AUTH replica id must be a number, got 'one'"]
    assert transport.disconnecting


def test_handshake_timeout_closes():
    proto, transport, clock, _handler = make_server()
    lines(transport)
    clock.advance(peer.HANDSHAKE_TIMEOUT_S - 0.01)
    assert not transport.disconnecting
    clock.advance(0.01)
    assert lines(transport) == ["ERR AUTH handshake timed out"]
    assert transport.disconnecting


def test_handshake_timer_is_cancelled_by_auth_and_by_connection_lost():
    _proto, transport, clock, _handler = authenticated_server()
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert not transport.disconnecting
    proto, _transport, clock, _handler = make_server()
    proto.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_auth_line_may_end_with_crlf():
    proto, transport, _clock, _handler = make_server()
    lines(transport)
    proto.dataReceived(auth_line(proto).replace(b"\n", b"\r\n"))
    assert lines(transport)[0].startswith("WELCOME ")
    assert proto.peer_id == CLIENT_ID


# Regression: a 5000-digit id made parse_int raise a plain ValueError out of lineReceived.
def test_huge_id_in_auth_is_refused():
    proto, transport, _clock, _handler = make_server(max_line=100_000)
    lines(transport)
    proto.dataReceived(f"AUTH {'9' * 5000} {CLIENT_NONCE} proof\n".encode())
    assert lines(transport) == [f"ERR AUTH replica id must be a number, got '{'9' * 20}'"]
    assert transport.disconnecting


def test_huge_rid_after_auth_is_a_protocol_error():
    proto, transport, _clock, handler = authenticated_server(max_line=100_000)
    proto.dataReceived(("9" * 5000 + " PING\n").encode())
    assert lines(transport)[0].startswith("ERR PROTOCOL expected")
    assert transport.disconnecting
    assert handler.calls == []


# Server: requests -----------------------------------------------------------------------


def test_request_is_dispatched_and_answered_ok():
    proto, transport, _clock, handler = authenticated_server()
    proto.dataReceived(b"1 PING hello there\n")
    assert handler.calls == [(CLIENT_ID, "PING", "hello there")]
    assert lines(transport) == ["1 OK hello there"]
    proto.dataReceived(b"2 ELECTION\r\n")
    assert handler.calls[-1] == (CLIENT_ID, "ELECTION", "")
    assert lines(transport) == ["2 OK"]


def test_no_answer():
    handler = Handler(lambda peer_id, verb, payload: PeerAnswer("NO", "not the coordinator"))
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"7 CLIENT GET k\n")
    assert handler.calls == [(CLIENT_ID, "CLIENT", "GET k")]
    assert lines(transport) == ["7 NO not the coordinator"]


def test_deferred_answers_are_written_when_they_fire():
    pending: list[defer.Deferred] = []

    def respond(peer_id, verb, payload):
        pending.append(defer.Deferred())
        return pending[-1]

    proto, transport, _clock, _handler = authenticated_server(Handler(respond))
    proto.dataReceived(b"1 PING a\n2 PING b\n")
    assert len(pending) == 2
    assert lines(transport) == []
    pending[1].callback(PeerAnswer("OK", "second"))
    pending[0].callback(PeerAnswer("OK", "first"))
    assert lines(transport) == ["2 OK second", "1 OK first"]


def test_handler_raising_is_err_internal_and_the_connection_stays_open():
    def respond(peer_id, verb, payload):
        if payload == "boom":
            raise RuntimeError("boom")
        return PeerAnswer("OK", payload)

    proto, transport, _clock, _handler = authenticated_server(Handler(respond))
    proto.dataReceived(b"3 PUSH boom\n")
    assert lines(transport) == ["3 ERR INTERNAL request failed"]
    assert not transport.disconnecting
    proto.dataReceived(b"4 PUSH fine\n")
    assert lines(transport) == ["4 OK fine"]


def test_handler_errback_is_err_internal():
    respond = lambda peer_id, verb, payload: defer.fail(KeyError("x"))  # noqa: E731
    proto, transport, _clock, _handler = authenticated_server(Handler(respond))
    proto.dataReceived(b"5 DELTA 1:1\n")
    assert lines(transport) == ["5 ERR INTERNAL request failed"]
    assert not transport.disconnecting


def test_peer_wire_error_is_badargs():
    def respond(peer_id, verb, payload):
        if verb == "PUSH":
            raise PeerWireError("bad record 'x'")
        return defer.fail(PeerWireError("bad clock"))

    proto, transport, _clock, _handler = authenticated_server(Handler(respond))
    proto.dataReceived(b"4 PUSH x\n5 DELTA y\n")
    assert lines(transport) == ["4 ERR BADARGS bad record 'x'", "5 ERR BADARGS bad clock"]
    assert not transport.disconnecting


def test_unknown_verb_is_badverb():
    proto, transport, _clock, handler = authenticated_server()
    proto.dataReceived(b"6 FROBNICATE x\n6 ping\n")
    assert lines(transport) == [
        "6 ERR BADVERB unknown verb FROBNICATE",
        "6 ERR BADVERB unknown verb ping",      # verbs are case-sensitive
    ]
    assert handler.calls == []
    assert not transport.disconnecting


def test_malformed_frame_after_auth_closes():
    proto, transport, _clock, handler = authenticated_server()
    proto.dataReceived(b"PING 1\n2 PING\n")
    (line,) = lines(transport)
    assert line.startswith("ERR PROTOCOL expected '<rid> <KIND> ...'")
    assert transport.disconnecting
    assert handler.calls == []


def test_streamed_answer_is_written_in_batches_through_the_producer():
    body = Body(2000)
    handler = Handler(lambda *args: PeerAnswer(body=body, trailer=lambda: f"sent={body.sent}"))
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"9 FULL\n")
    assert lines(transport) == []         # nothing until the transport asks for data
    assert transport.producer is not None
    transport.producer.resumeProducing()
    first = lines(transport)
    assert len(first) == peer.STREAM_BATCH_LINES == 512
    assert first[0] == "9 REC k1 1 1 1:1 V value 1"
    transport.producer.resumeProducing()
    assert len(lines(transport)) == 512
    rounds = drain(transport)
    rest = lines(transport)
    assert rounds == 2
    assert len(rest) == 2000 - 2 * 512 + 1
    assert rest[-2] == "9 REC k2000 1 2000 1:2000 V value 2000"
    # The trailer is computed after the body ran out.
    assert rest[-1] == "9 END sent=2000"
    assert transport.producer is None


def test_stream_without_trailer_ends_with_the_answer_payload():
    handler = Handler(lambda *args: PeerAnswer(payload="1:3", body=Body(3, "LINE")))
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"2 DELTA -\n")
    drain(transport)
    out = lines(transport)
    assert [line.split(" ")[1] for line in out] == ["LINE", "LINE", "LINE", "END"]
    assert out[-1] == "2 END 1:3"


def test_two_streams_queue_one_after_the_other():
    bodies = {"a": Body(600), "b": Body(3)}

    def respond(peer_id, verb, payload):
        if verb == "PING":
            return PeerAnswer("OK", payload)
        return PeerAnswer(body=bodies[payload], trailer=lambda: payload)

    handler = Handler(respond)
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"1 FULL a\n2 FULL b\n3 PING c\n")
    # The plain answer is not held up by the streams.
    assert lines(transport) == ["3 OK c"]
    first_producer = transport.producer
    drain(transport)
    out = lines(transport)
    rids = [line.split(" ")[0] for line in out]
    assert rids == ["1"] * 601 + ["2"] * 4
    assert out[600] == "1 END a"
    assert out[-1] == "2 END b"
    assert first_producer is not None and transport.producer is None


def test_failing_stream_ends_with_err_and_the_next_stream_runs():
    bodies = {"bad": Body(10, fail_at=5), "good": Body(2)}
    handler = Handler(lambda peer_id, verb, payload: PeerAnswer(body=bodies[payload]))
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"1 FULL bad\n2 FULL good\n")
    drain(transport)
    out = lines(transport)
    assert out[:5] == [f"1 REC k{i} 1 {i} 1:{i} V value {i}" for i in range(1, 6)]
    assert out[5] == "1 ERR INTERNAL stream failed"
    assert out[6:] == ["2 REC k1 1 1 1:1 V value 1", "2 REC k2 1 2 1:2 V value 2", "2 END"]
    assert not transport.disconnecting


def test_connection_lost_closes_active_and_queued_bodies():
    bodies = {"a": Body(2000), "b": Body(2000)}
    handler = Handler(lambda peer_id, verb, payload: PeerAnswer(body=bodies[payload]))
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"1 FULL a\n2 FULL b\n")
    transport.producer.resumeProducing()
    proto.connectionLost(Failure(ConnectionDone()))
    assert bodies["a"].closed and bodies["b"].closed
    assert bodies["a"].sent == 512 and bodies["b"].sent == 0


def test_over_long_line_is_refused_and_closed():
    proto, transport, _clock, handler = authenticated_server(max_line=200)
    proto.dataReceived(b"1 PUSH " + b"x" * 200 + b"\n")
    assert lines(transport) == ["ERR LINETOOLONG line too long"]
    assert transport.disconnecting
    assert handler.calls == []


def test_over_long_line_without_newline_before_auth():
    proto, transport, _clock, _handler = make_server(max_line=100)
    lines(transport)
    proto.dataReceived(b"A" * 150)
    assert lines(transport) == ["ERR LINETOOLONG line too long"]
    assert transport.disconnecting


@pytest.mark.parametrize("authenticated", [False, True])
def test_non_utf8_is_refused(authenticated):
    if authenticated:
        proto, transport, _clock, handler = authenticated_server()
    else:
        proto, transport, _clock, handler = make_server()
        lines(transport)
    proto.dataReceived(b"1 PING \xff\xfe\n")
    assert lines(transport) == ["ERR PROTOCOL line is not valid UTF-8"]
    assert transport.disconnecting
    assert handler.calls == []


# Client protocol over StringTransport ---------------------------------------------------


def test_client_handshake_step_by_step():
    proto, transport, _clock = ready_client()
    d = proto.call("PING", "x")
    assert lines(transport) == ["1 PING x"]
    proto.dataReceived(b"1 OK pong\n")
    assert success(d) == PeerResponse("OK", "pong", [])


def test_client_call_rids_increase():
    proto, transport, _clock = ready_client()
    proto.call("PING")
    proto.call("ELECTION", "7")
    assert lines(transport) == ["1 PING", "2 ELECTION 7"]


def test_client_refuses_the_wrong_replica():
    proto, transport, _clock = make_client(expected_peer=SERVER_ID)
    proto.dataReceived(b"HELLO 3 nonce\n")
    assert transport.value() == b""          # no AUTH for the wrong replica
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "expected replica 2, found replica 3" in str(error)


def test_client_refuses_a_server_that_cannot_prove_the_secret():
    proto, transport, _clock = make_client()
    proto.dataReceived(b"HELLO 2 nonce\n")
    lines(transport)
    proto.dataReceived(b"WELCOME " + b"0" * 64 + b"\n")
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "failed to prove" in str(error)
    assert error.sent is False


@pytest.mark.parametrize("first", [b"ERR AUTH bad proof\n", b"WELCOME abc\n", b"1 OK\n",
                                   b"HELLO 2\n"])
def test_client_handshake_garbage_fails(first):
    proto, transport, _clock = make_client()
    proto.dataReceived(first)
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "handshake failed" in str(error)


def test_client_connection_lost_during_handshake():
    proto, _transport, _clock = make_client()
    proto.connectionLost(Failure(ConnectionDone()))
    assert "during handshake" in str(failure_of(proto.authenticated, PeerUnavailable))


def test_client_call_times_out():
    proto, _transport, clock = ready_client()
    d = proto.call("PING", timeout_s=0.5)
    clock.advance(0.49)
    assert not d.called
    clock.advance(0.01)
    error = failure_of(d, PeerUnavailable)
    assert error.sent is True
    assert "timed out" in str(error)
    assert clock.getDelayedCalls() == []


def test_client_timeout_restarts_on_every_frame_of_a_stream():
    proto, _transport, clock = ready_client()
    seen = []
    d = proto.call("FULL", timeout_s=1.0, on_line=lambda kind, text: seen.append((kind, text)))
    for i in range(3):
        clock.advance(0.9)
        proto.dataReceived(f"1 REC r{i}\n".encode())
    clock.advance(0.9)
    assert not d.called
    proto.dataReceived(b"1 END 1:3\n")
    response = success(d)
    assert response == PeerResponse("END", "1:3", [])
    assert response.ok
    assert seen == [("REC", "r0"), ("REC", "r1"), ("REC", "r2")]
    assert clock.getDelayedCalls() == []


def test_client_collects_stream_lines_without_on_line():
    proto, _transport, _clock = ready_client()
    d = proto.call("DELTA", "-")
    proto.dataReceived(b"1 LINE a b\n1 REC c\n1 END\n")
    assert success(d) == PeerResponse("END", "", [("LINE", "a b"), ("REC", "c")])


def test_response_ok():
    assert PeerResponse("OK", "").ok and PeerResponse("END", "").ok
    assert not PeerResponse("NO", "").ok and not PeerResponse("ERR", "x").ok


def test_on_line_raising_fails_only_that_call():
    proto, transport, _clock = ready_client()

    def bad(kind, text):
        raise PeerWireError(f"bad record {text!r}")

    d1 = proto.call("FULL", on_line=bad)
    d2 = proto.call("PING")
    proto.dataReceived(b"1 REC junk\n1 REC more\n1 END\n2 OK\n")
    assert "junk" in str(failure_of(d1, PeerWireError))
    assert success(d2).kind == "OK"
    assert not transport.disconnecting


def test_client_connection_lost_fails_pending_calls():
    proto, _transport, clock = ready_client()
    d1, d2 = proto.call("PING"), proto.call("CLIENT", "GET k")
    proto.connectionLost(Failure(ConnectionDone()))
    for d in (d1, d2):
        error = failure_of(d, PeerUnavailable)
        assert error.sent is True
        assert "connection lost" in str(error)
    assert clock.getDelayedCalls() == []


def test_client_drops_frames_for_unknown_calls():
    proto, transport, _clock = ready_client()
    proto.dataReceived(b"42 OK stray\n")
    d = proto.call("PING")
    proto.dataReceived(b"1 OK mine\n")
    assert success(d).payload == "mine"
    assert not transport.disconnecting


def test_client_refuses_malformed_frames():
    proto, transport, _clock = ready_client()
    d = proto.call("PING")
    lines(transport)
    proto.dataReceived(b"garbage\n")
    assert lines(transport)[0].startswith("ERR PROTOCOL expected")
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    failure_of(d, PeerUnavailable)


# Client against server over iosim -------------------------------------------------------


def test_handshake_over_iosim():
    server, client, server_io, client_io, _pump, clock, _handler = connected_pair()
    assert success(client.authenticated) is client
    assert server.peer_id == CLIENT_ID
    assert not server_io.disconnecting and not client_io.disconnecting
    assert clock.getDelayedCalls() == []      # the handshake timer is gone


def test_mismatched_secret_over_iosim_closes_both_sides():
    server, client, server_io, client_io, pump, clock, handler = connected_pair(
        client_secret="wrong"
    )
    pump.flush()
    error = failure_of(client.authenticated, PeerUnavailable)
    assert "ERR AUTH bad proof" in str(error)
    assert server.peer_id is None
    assert server_io.disconnected and client_io.disconnected
    assert clock.getDelayedCalls() == []      # server's connectionLost cancelled its timer


def test_wrong_expected_peer_over_iosim():
    _server, client, server_io, client_io, pump, _clock, _handler = connected_pair(
        expected_peer=3
    )
    pump.flush()
    assert "expected replica 3" in str(failure_of(client.authenticated, PeerUnavailable))
    assert server_io.disconnected and client_io.disconnected


def test_call_gets_ok_over_iosim():
    _server, client, _sio, _cio, pump, _clock, handler = connected_pair()
    d = client.call("COORDINATOR", "2 5")
    pump.flush()
    assert success(d) == PeerResponse("OK", "2 5", [])
    assert handler.calls == [(CLIENT_ID, "COORDINATOR", "2 5")]


def test_call_gets_err_over_iosim():
    _server, client, _sio, _cio, pump, _clock, _handler = connected_pair()
    d = client.call("NOSUCHVERB", "x")
    pump.flush()
    response = success(d)
    assert (response.kind, response.payload) == ("ERR", "BADVERB unknown verb NOSUCHVERB")
    assert not response.ok


def test_call_timeout_and_late_frames_over_iosim():
    late = defer.Deferred()

    def respond(peer_id, verb, payload):
        return late if payload == "slow" else PeerAnswer("OK", payload)

    _server, client, _sio, client_io, pump, clock, _handler = connected_pair(Handler(respond))
    d = client.call("PING", "slow", timeout_s=0.5)
    pump.flush()
    clock.advance(0.5)
    error = failure_of(d, PeerUnavailable)
    assert error.sent is True
    late.callback(PeerAnswer("OK", "too late"))
    d2 = client.call("PING", "fast")
    pump.flush()
    assert success(d2) == PeerResponse("OK", "fast", [])
    assert not client_io.disconnecting


def test_streamed_records_reach_on_line_over_iosim():
    body = Body(2000)
    handler = Handler(lambda *args: PeerAnswer(body=body, trailer=lambda: "1:2000"))
    _server, client, _sio, _cio, pump, _clock, _handler = connected_pair(handler)
    seen = []
    d = client.call("FULL", on_line=lambda kind, text: seen.append((kind, text)))
    pump.flush()
    assert success(d) == PeerResponse("END", "1:2000", [])
    assert len(seen) == 2000
    assert seen[0] == ("REC", "k1 1 1 1:1 V value 1")
    assert seen[-1] == ("REC", "k2000 1 2000 1:2000 V value 2000")
    # The lines really are records.
    record = peerwire.decode_record(seen[-1][1])
    assert (record.key, record.value, record.seq) == ("k2000", "value 2000", 2000)


def test_connection_lost_fails_calls_over_iosim():
    never = defer.Deferred()
    _server, client, server_io, _cio, pump, _clock, _handler = connected_pair(
        Handler(lambda *args: never)
    )
    d = client.call("PING")
    pump.flush()
    server_io.loseConnection()
    pump.flush()
    error = failure_of(d, PeerUnavailable)
    assert error.sent is True
    never.callback(PeerAnswer("OK"))       # the answer after the close goes nowhere


# PeerLink: ClientService on a MemoryReactorClock ----------------------------------------


def make_link(reactor, endpoint="tcp:host=127.0.0.1:port=7102"):
    link = PeerLink(reactor, CLIENT_ID, SERVER_ID, endpoint, SECRET, 100_000)
    link.service.startService()
    return link


def test_peer_link_connects_authenticates_and_calls():
    reactor = MemoryReactorClock()
    handler = Handler()
    reactor.listenTCP(
        7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, handler, reactor, 100_000)
    )
    link = make_link(reactor)
    d = link.call("PING", "over the link")
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    assert success(d) == PeerResponse("OK", "over the link", [])
    assert handler.calls == [(CLIENT_ID, "PING", "over the link")]
    link.service.stopService()


def test_peer_link_refused_connection_is_unavailable_not_sent():
    reactor = MemoryReactorClock()
    link = make_link(reactor)
    d = link.call("PING", timeout_s=1.0)
    reactor.advance(0)                  # the call starts on the next reactor turn
    iosim.ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))
    error = failure_of(d, PeerUnavailable)
    assert error.sent is False
    assert "replica 2" in str(error)
    link.service.stopService()


def test_peer_link_connect_timeout_is_unavailable_not_sent():
    reactor = MemoryReactorClock()
    link = make_link(reactor)
    d = link.call("PING", timeout_s=1.0)
    reactor.advance(0)
    reactor.advance(0.99)
    assert not d.called
    reactor.advance(0.01)
    error = failure_of(d, PeerUnavailable)
    assert error.sent is False
    link.service.stopService()


def test_peer_link_call_made_from_a_failed_calls_errback_succeeds_later():
    reactor = MemoryReactorClock()
    handler = Handler()
    reactor.listenTCP(
        7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, handler, reactor, 100_000)
    )
    link = make_link(reactor)
    retried = []

    def retry(failure):
        failure.trap(PeerUnavailable)
        retried.append(link.call("PING", "again", timeout_s=5.0))

    link.call("PING", "first", timeout_s=5.0).addErrback(retry)
    reactor.advance(0)
    iosim.ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))
    assert len(retried) == 1
    reactor.advance(0)
    reactor.advance(0.2)                 # past the first back-off delay: a new attempt
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    assert success(retried[0]) == PeerResponse("OK", "again", [])
    assert handler.calls == [(CLIENT_ID, "PING", "again")]
    link.service.stopService()
