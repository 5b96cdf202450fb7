"""replicad.peer: the authenticated peer links, driven with StringTransport, iosim and Clock."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim

from replicad import peer, peerwire
from replicad.peer import (
    LATE_SWEEP_S,
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
CLUSTER_A = "a" * 32
CLUSTER_B = "b" * 32
AS_SENT = object()      # auth_line: use the cluster id the server sent in HELLO


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

    def __init__(self, n: int, kind: str = "REC", fail_at: int | None = None,
                 error: Exception | None = None):
        self.n, self.kind, self.fail_at = n, kind, fail_at
        self.error = error or RuntimeError("disk on fire")
        self.sent = 0
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.sent == self.fail_at:
            raise self.error
        if self.sent >= self.n:
            raise StopIteration
        self.sent += 1
        return (self.kind, f"k{self.sent} 1 {self.sent} 0 - 1:{self.sent} V value {self.sent}")

    def close(self):
        self.closed = True


def make_server(handler=None, secret=SECRET, max_line=10_000, cluster=None, factory=None):
    clock = task.Clock()
    handler = handler or Handler()
    if factory is None:
        factory = PeerServerFactory(SERVER_ID, set(MEMBERS), secret, handler, clock, max_line,
                                    cluster_id=lambda: cluster)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, handler


def auth_line(proto, client_id=CLIENT_ID, secret=SECRET, nonce=None, cluster=None,
              proof_cluster=AS_SENT, server_cluster=AS_SENT) -> bytes:
    """AUTH as a client would send it; proof_cluster/server_cluster: what the proof
    covers instead of the cluster ids really sent (a tampered handshake)."""
    proof_cluster = cluster if proof_cluster is AS_SENT else proof_cluster
    server_cluster = proto.cluster_id if server_cluster is AS_SENT else server_cluster
    proof = peerwire.client_proof(
        secret, client_id, SERVER_ID, nonce or proto.nonce, CLIENT_NONCE, server_cluster,
        proof_cluster,
    )
    return f"AUTH {client_id} {CLIENT_NONCE} {proof} {cluster or '-'}\n".encode()


def authenticated_server(handler=None, max_line=10_000):
    proto, transport, clock, handler = make_server(handler, max_line=max_line)
    assert lines(transport) == [f"HELLO {SERVER_ID} {proto.nonce} -"]
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


def make_client(secret=SECRET, expected_peer=SERVER_ID, cluster=None, factory=None):
    clock = task.Clock()
    if factory is None:
        factory = PeerClientFactory(CLIENT_ID, expected_peer, secret, clock, 10_000,
                                    cluster_id=lambda: cluster)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def ready_client():
    proto, transport, clock = make_client()
    proto.dataReceived(f"HELLO {SERVER_ID} servernonce -\n".encode())
    word, client_id, nonce, proof, cluster = lines(transport)[0].split(" ")
    assert (word, client_id, cluster) == ("AUTH", str(CLIENT_ID), "-")
    assert proof == peerwire.client_proof(SECRET, CLIENT_ID, SERVER_ID, "servernonce", nonce)
    welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, "servernonce", nonce)
    proto.dataReceived(f"WELCOME {welcome}\n".encode())
    assert success(proto.authenticated) is proto
    return proto, transport, clock


def connected_pair(handler=None, server_secret=SECRET, client_secret=SECRET,
                   expected_peer=SERVER_ID, server_cluster=None, client_cluster=None,
                   server_factory=None, client_factory=None):
    clock = task.Clock()
    handler = handler or Handler()
    if server_factory is None:
        server_factory = PeerServerFactory(
            SERVER_ID, set(MEMBERS), server_secret, handler, clock, 100_000,
            cluster_id=lambda: server_cluster,
        )
    if client_factory is None:
        client_factory = PeerClientFactory(CLIENT_ID, expected_peer, client_secret, clock,
                                           100_000, cluster_id=lambda: client_cluster)
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_io, client_io = iosim.makeFakeServer(server), iosim.makeFakeClient(client)
    pump = iosim.connect(server, server_io, client, client_io, clock=clock)
    return server, client, server_io, client_io, pump, clock, handler


# Server: handshake ----------------------------------------------------------------------


def test_hello_is_sent_on_connect():
    proto, transport, _clock, _handler = make_server()
    (hello,) = lines(transport)
    word, server_id, nonce, cluster = hello.split(" ")
    assert (word, server_id, cluster) == ("HELLO", str(SERVER_ID), "-")   # unbound
    assert nonce == proto.nonce and len(nonce) == 32
    assert make_server()[0].nonce != proto.nonce


@pytest.mark.parametrize("garbage", [b"hello\n", b"1 PING x\n", b"AUTH 1 n\n", b"\n",
                                     b"WELCOME x\n", b"AUTH 1 a b\n", b"AUTH 1 a b - c\n"])
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
    proto.dataReceived(b"AUTH one nonce proof -\n")
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
# (Such a line is now over the pre-handshake line limit; 900 digits still reach the parser.)
def test_huge_id_in_auth_is_refused():
    proto, transport, _clock, _handler = make_server(max_line=100_000)
    lines(transport)
    proto.dataReceived(f"AUTH {'9' * 900} {CLIENT_NONCE} proof -\n".encode())
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
    assert first[0] == "9 REC k1 1 1 0 - 1:1 V value 1"
    transport.producer.resumeProducing()
    assert len(lines(transport)) == 512
    rounds = drain(transport)
    rest = lines(transport)
    assert rounds == 2
    assert len(rest) == 2000 - 2 * 512 + 1
    assert rest[-2] == "9 REC k2000 1 2000 0 - 1:2000 V value 2000"
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


def test_a_short_body_in_memory_is_written_at_once_without_a_producer():
    """A forwarded request's reply: its lines and END in one write, next to a stream
    that is still being produced (frames carry their request id)."""
    bodies = {"big": PeerAnswer(body=Body(600)),
              "short": PeerAnswer("END", "", lines=(("LINE", "VALUE v"), ("LINE", "x")))}
    handler = Handler(lambda peer_id, verb, payload: bodies[payload])
    proto, transport, _clock, _handler = authenticated_server(handler)
    proto.dataReceived(b"1 DELTA big\n")
    assert transport.producer is not None            # the big one streams
    before = len(transport.value())
    proto.dataReceived(b"2 CLIENT short\n")
    written = transport.value()[before:].decode().splitlines()
    assert written == ["2 LINE VALUE v", "2 LINE x", "2 END"]
    drain(transport)
    assert lines(transport)[-1].startswith("1 END")


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
    assert out[:5] == [f"1 REC k{i} 1 {i} 0 - 1:{i} V value {i}" for i in range(1, 6)]
    assert out[5] == "1 ERR INTERNAL stream failed"
    assert out[6:] == ["2 REC k1 1 1 0 - 1:1 V value 1", "2 REC k2 1 2 0 - 1:2 V value 2", "2 END"]
    assert not transport.disconnecting


def test_a_stream_its_sender_refuses_ends_with_its_err_and_no_traceback():
    """A body that raises StreamRefused (a replica stopping on a failed disk) ends its
    stream with ERR and the sender's own reason, logged as one line, not as a failure."""
    bodies = {"bad": Body(10, fail_at=3, error=peer.StreamRefused("UNAVAILABLE it stops")),
              "good": Body(1)}
    handler = Handler(lambda peer_id, verb, payload: PeerAnswer(body=bodies[payload]))
    proto, transport, _clock, _handler = authenticated_server(handler)
    with capturedLogs() as events:
        proto.dataReceived(b"1 FULL bad\n2 FULL good\n")
        drain(transport)
    out = lines(transport)
    assert out[3] == "1 ERR UNAVAILABLE it stops"
    assert out[4:] == ["2 REC k1 1 1 0 - 1:1 V value 1", "2 END"]
    assert [e for e in events if e.get("log_failure")] == []
    assert any("stream 1 ended: UNAVAILABLE it stops" in formatEvent(e) for e in events)


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
    proto.dataReceived(b"HELLO 3 nonce -\n")
    assert transport.value() == b""          # no AUTH for the wrong replica
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "expected replica 2, found replica 3" in str(error)


def test_client_refuses_a_server_that_cannot_prove_the_secret():
    proto, transport, _clock = make_client()
    proto.dataReceived(b"HELLO 2 nonce -\n")
    lines(transport)
    proto.dataReceived(b"WELCOME " + b"0" * 64 + b"\n")
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "failed to prove" in str(error)
    assert error.sent is False


@pytest.mark.parametrize("first", [b"ERR AUTH bad proof\n", b"WELCOME abc\n", b"1 OK\n",
                                   b"HELLO 2\n", b"HELLO 2 nonce\n", b"HELLO 2 nonce xyz\n",
                                   b"HELLO 2 nonce " + b"A" * 32 + b"\n"])
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


def test_calls_share_one_timer_and_each_times_out_at_its_own_deadline():
    """One sweep timer for every call: a short call made after a long one still times
    out at its own deadline, the answered ones never, and no timer outlives the last."""
    proto, _transport, clock = ready_client()
    long = proto.call("CLIENT", "a", timeout_s=5.0)           # rid 1
    answered = proto.call("CLIENT", "b", timeout_s=1.0)       # rid 2
    short = proto.call("ELECTION", timeout_s=0.2)             # rid 3
    assert len(clock.getDelayedCalls()) == 1
    proto.dataReceived(b"2 END\n")
    clock.advance(0.2)
    assert "timed out" in str(failure_of(short, PeerUnavailable))
    assert not long.called
    assert success(answered).kind == "END"
    clock.advance(4.79)
    assert not long.called
    clock.advance(0.01)
    assert failure_of(long, PeerUnavailable).sent is True
    assert clock.getDelayedCalls() == []
    later = proto.call("PING", timeout_s=1.0)
    proto.dataReceived(b"4 OK\n")
    assert success(later).kind == "OK"
    assert clock.getDelayedCalls() == []                       # the answer took it


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


def test_a_call_behind_a_streamed_answer_waits_while_its_frames_come():
    """A PING sent on a connection that carries a FULL copy's frames is answered after
    them: it cannot time out while they keep coming (a follower pulling 100,000 records
    from its coordinator timed out the heartbeat behind them and held an election,
    twice).  Once the stream goes quiet, the PING's own timeout runs from its last
    frame."""
    proto, _transport, clock = ready_client()
    full = proto.call("FULL", timeout_s=5.0, on_line=lambda kind, text: None)
    ping = proto.call("PING", timeout_s=0.2)
    for i in range(10):                       # one second of frames, 0.1 s apart
        clock.advance(0.1)
        proto.dataReceived(f"1 REC r{i}\n".encode())
    assert not ping.called
    clock.advance(0.19)
    assert not ping.called
    clock.advance(0.01)                       # 0.2 s without a frame on the connection
    assert "timed out" in str(failure_of(ping, PeerUnavailable))
    proto.dataReceived(b"1 END 1:10\n")
    assert success(full).kind == "END"
    assert clock.getDelayedCalls() == []


def run_due_timers(clock: task.Clock) -> None:
    """What the reactor does before it polls (runUntilCurrent): the calls due now run,
    and a call they make for now waits for the next turn, after the poll (task.Clock's
    advance would run it at once)."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def test_a_sweep_that_runs_late_reads_what_came_first():
    """A process paused (SIGSTOP) or blocked past a call's deadline runs its due timers
    before it reads its sockets: the answer that came meanwhile is in the socket, yet
    the call timed out (a follower woken from a pause held an election over its
    coordinator's waiting heartbeat answer).  A late sweep is put off one turn; an
    answer read in that turn wins; a call still unanswered then times out."""
    proto, _transport, clock = ready_client()
    answered = proto.call("PING", timeout_s=0.2)
    silent = proto.call("PING", timeout_s=0.2)
    clock.rightNow += 1.5                     # paused: both deadlines long past
    run_due_timers(clock)
    assert not answered.called and not silent.called
    proto.dataReceived(b"1 OK follower\n")     # the poll: 1's answer was waiting
    run_due_timers(clock)                     # the next turn's timers
    assert success(answered).kind == "OK"
    assert "timed out" in str(failure_of(silent, PeerUnavailable))
    assert clock.getDelayedCalls() == []


def test_a_sweep_on_time_is_not_put_off():
    proto, _transport, clock = ready_client()
    d = proto.call("PING", timeout_s=0.2)
    clock.rightNow += 0.2 + LATE_SWEEP_S / 2  # a little late, as a busy turn makes it
    run_due_timers(clock)
    assert "timed out" in str(failure_of(d, PeerUnavailable))


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


def test_send_reports_to_done_later_and_forget_drops_the_call():
    """send(): call() without a Deferred (a follower's forwards).  ``done`` hears the
    answer, a timeout or a lost connection; never from inside send(); a forgotten
    call's answer is dropped and, with nothing else waiting, no timer is left."""
    proto, transport, clock = ready_client()
    heard: list = []

    def done(response, error):
        heard.append((response, error))

    answered = proto.send("CLIENT", "3 GET k", 1.0, done)
    forgotten = proto.send("CLIENT", "3 GET j", 1.0, done)
    timed_out = proto.send("CLIENT", "3 GET i", 0.5, done)
    assert (answered, forgotten, timed_out) == (1, 2, 3)
    assert lines(transport) == ["1 CLIENT 3 GET k", "2 CLIENT 3 GET j", "3 CLIENT 3 GET i"]
    assert heard == []
    proto.dataReceived(b"1 REPLY VALUE v w \n")        # a one-line reply, one frame
    assert heard == [(PeerResponse("REPLY", "VALUE v w "), None)]
    proto.forget(forgotten)
    proto.dataReceived(b"2 END\n")                    # dropped: nobody waits for it
    clock.advance(0.5)
    assert len(heard) == 2 and heard[1][0] is None
    assert heard[1][1].sent is True and "timed out" in str(heard[1][1])
    assert clock.getDelayedCalls() == []               # nothing left to time out
    lost = proto.send("PING", "", 1.0, done)
    proto.connectionLost(Failure(ConnectionDone()))
    assert lost == 4 and "connection lost" in str(heard[2][1])


def test_send_to_a_peer_that_is_not_reading_raises_at_once():
    proto, transport, _clock = ready_client()
    proto.congestion.pauseProducing()                  # what a full write buffer does
    with pytest.raises(PeerUnavailable) as raised:
        proto.send("CLIENT", "3 GET k", 1.0, lambda response, error: None)
    assert raised.value.sent is False and "not reading" in str(raised.value)
    assert lines(transport) == [] and proto._calls == {}


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
    assert seen[0] == ("REC", "k1 1 1 0 - 1:1 V value 1")
    assert seen[-1] == ("REC", "k2000 1 2000 0 - 1:2000 V value 2000")
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


def test_peer_link_call_never_outlives_its_timeout_connecting_plus_answering():
    """Connecting and answering share one deadline: a call with timeout_s = 1 whose
    connection took 0.7 s fails 0.3 s later if no answer comes, not 1 s later."""
    reactor = MemoryReactorClock()
    never = defer.Deferred()
    reactor.listenTCP(7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET,
                                              Handler(lambda *args: never), reactor, 100_000))
    link = make_link(reactor)
    d = link.call("ELECTION", "1", timeout_s=1.0)
    reactor.advance(0)
    reactor.advance(0.7)                  # the connection is slow to complete
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()                          # handshake done, request sent, no answer
    assert not d.called
    reactor.advance(0.3)
    assert failure_of(d, PeerUnavailable).sent is True
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


def test_a_link_backing_off_is_redialled_at_once_when_its_peer_talks_to_us():
    """A replica that comes back talks to us (its election, its COORDINATOR) before our
    link to it has redialled: the back-off's wait (up to max_retry_delay_s plus jitter)
    outlasted a follower's ping, which timed out into an election (bench/failover.py's
    bully-back, 255 ms).  alive_hint redials at once, at most every
    EARLY_REDIAL_INTERVAL_S (a peer whose requests reach us while ours are refused is
    not redialled at its rate), and does nothing while connected."""
    reactor = MemoryReactorClock()
    handler = Handler()
    reactor.listenTCP(
        7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, handler, reactor, 100_000)
    )
    link = make_link(reactor)
    refused = Failure(ConnectionRefusedError())
    iosim.ConnectionCompleter(reactor).failOnce(refused)     # the peer is down: back-off
    reactor.advance(0.01)
    assert reactor.tcpClients == []              # waiting out the back-off (0.05 s or more)
    link.alive_hint()                            # the peer talked to us
    reactor.advance(0)
    assert len(reactor.tcpClients) == 1          # dialled at once
    iosim.ConnectionCompleter(reactor).failOnce(refused)     # refused again
    link.alive_hint()                            # too soon after the last early redial
    reactor.advance(0)
    assert reactor.tcpClients == []
    reactor.advance(peer.EARLY_REDIAL_INTERVAL_S * 0.5)
    link.alive_hint()
    reactor.advance(0)
    assert reactor.tcpClients == []
    reactor.advance(peer.EARLY_REDIAL_INTERVAL_S * 0.5)
    link.alive_hint()
    reactor.advance(0)
    assert len(reactor.tcpClients) == 1
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    d = link.call("PING", "up", timeout_s=1.0)
    pump.flush()
    assert success(d) == PeerResponse("OK", "up", [])
    link.alive_hint()                            # connected: nothing to redial
    reactor.advance(1.0)
    assert reactor.tcpClients == []
    link.service.stopService()


# Cluster ids in the handshake -----------------------------------------------------------


def refusal_lines(events) -> list[str]:
    return [formatEvent(e) for e in events if formatEvent(e).startswith("refusing replica")]


def refusal(peer_id: int, theirs: str, ours: str) -> str:
    return (f"refusing replica {peer_id}: it belongs to cluster {theirs}, this replica to "
            f"cluster {ours} (a replica of another cluster with the same secret?)")


def mismatch_err(server_cluster: str, client_cluster: str) -> str:
    return (f"ERR AUTH cluster mismatch: replica {CLIENT_ID} belongs to cluster "
            f"{client_cluster}, replica {SERVER_ID} to cluster {server_cluster}")


def test_hello_carries_the_cluster_id_asked_at_connect():
    bound = {"id": None}
    factory = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(), task.Clock(),
                                10_000, cluster_id=lambda: bound["id"])
    proto, transport, _clock, _handler = make_server(factory=factory)
    assert lines(transport) == [f"HELLO {SERVER_ID} {proto.nonce} -"]
    bound["id"] = CLUSTER_A              # the replica binds: the next handshake says so
    proto, transport, _clock, _handler = make_server(factory=factory)
    assert lines(transport) == [f"HELLO {SERVER_ID} {proto.nonce} {CLUSTER_A}"]
    assert proto.cluster_id == CLUSTER_A


@pytest.mark.parametrize(
    "server_cluster, client_cluster",
    [(CLUSTER_A, CLUSTER_A), (CLUSTER_A, None), (None, CLUSTER_A), (None, None)],
    ids=["same", "client-unbound", "server-unbound", "both-unbound"],
)
def test_server_accepts_equal_or_unbound_cluster_ids(server_cluster, client_cluster):
    proto, transport, _clock, handler = make_server(cluster=server_cluster)
    lines(transport)
    proto.dataReceived(auth_line(proto, cluster=client_cluster) + b"1 PING x\n")
    welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, proto.nonce, CLIENT_NONCE,
                                    server_cluster, client_cluster)
    assert lines(transport) == [f"WELCOME {welcome}", "1 OK x"]
    assert proto.peer_id == CLIENT_ID
    assert proto.peer_cluster_id == client_cluster
    assert handler.calls == [(CLIENT_ID, "PING", "x")]


def test_server_refuses_another_cluster_once_in_the_log():
    proto, transport, _clock, handler = make_server(cluster=CLUSTER_A)
    factory = proto.factory
    with capturedLogs() as events:
        for _ in range(5):                     # the dialer retries every quarter second
            proto, transport, clock, _ = make_server(factory=factory)
            lines(transport)
            proto.dataReceived(auth_line(proto, cluster=CLUSTER_B) + b"1 PING x\n")
            assert lines(transport) == [mismatch_err(CLUSTER_A, CLUSTER_B)]
            assert transport.disconnecting
            assert proto.peer_id is None
            assert clock.getDelayedCalls() == []
    assert handler.calls == []
    assert refusal_lines(events) == [refusal(CLIENT_ID, CLUSTER_B, CLUSTER_A)]
    # The generic "closing peer connection" warning is not repeated either.
    assert [formatEvent(e) for e in events] == [refusal(CLIENT_ID, CLUSTER_B, CLUSTER_A)]


def test_server_logs_a_refusal_again_after_a_change_or_a_success():
    first, transport, _clock, _handler = make_server(cluster=CLUSTER_A)
    factory = first.factory
    other = "c" * 32

    def attempt(cluster):
        proto, transport, _clock, _ = make_server(factory=factory)
        lines(transport)
        proto.dataReceived(auth_line(proto, cluster=cluster))
        return lines(transport)[0]

    with capturedLogs() as events:
        attempt(CLUSTER_B)
        attempt(CLUSTER_B)
        attempt(other)                    # the peer's id changed: news
        assert attempt(CLUSTER_A).startswith("WELCOME ")   # then it authenticated
        attempt(other)                    # so a new refusal is news again
    assert refusal_lines(events) == [
        refusal(CLIENT_ID, CLUSTER_B, CLUSTER_A),
        refusal(CLIENT_ID, other, CLUSTER_A),
        refusal(CLIENT_ID, other, CLUSTER_A),
    ]


def test_server_refuses_a_malformed_cluster_id():
    proto, transport, _clock, _handler = make_server(cluster=CLUSTER_A)
    lines(transport)
    proto.dataReceived(f"AUTH {CLIENT_ID} {CLIENT_NONCE} proof ABC\n".encode())
    (line,) = lines(transport)
    assert line.startswith("ERR AUTH bad cluster id 'ABC'")
    assert transport.disconnecting


@pytest.mark.parametrize(
    "tamper",
    [
        # the AUTH line's cluster id differs from the one the client's proof covers
        {"cluster": CLUSTER_A, "proof_cluster": None},
        {"cluster": None, "proof_cluster": CLUSTER_A},
        {"cluster": CLUSTER_A, "proof_cluster": "c" * 32},
        # the client saw another cluster id in HELLO than the server sent
        {"cluster": CLUSTER_A, "server_cluster": None},
        {"cluster": CLUSTER_A, "server_cluster": CLUSTER_B},
    ],
)
def test_the_client_proof_covers_both_cluster_ids(tamper):
    proto, transport, _clock, _handler = make_server(cluster=CLUSTER_A)
    lines(transport)
    proto.dataReceived(auth_line(proto, **tamper))
    assert lines(transport)[0].startswith("ERR AUTH bad proof")
    assert proto.peer_id is None


def test_client_sends_its_cluster_id_asked_at_hello_and_checks_the_welcome():
    bound = {"id": None}
    factory = PeerClientFactory(CLIENT_ID, SERVER_ID, SECRET, task.Clock(), 10_000,
                                cluster_id=lambda: bound["id"])
    bound["id"] = CLUSTER_A              # asked when HELLO comes, not when built
    proto, transport, _clock = make_client(factory=factory)
    proto.dataReceived(f"HELLO {SERVER_ID} sn {CLUSTER_A}\n".encode())
    word, _id, nonce, proof, cluster = lines(transport)[0].split(" ")
    assert (word, cluster) == ("AUTH", CLUSTER_A)
    assert proof == peerwire.client_proof(SECRET, CLIENT_ID, SERVER_ID, "sn", nonce,
                                          CLUSTER_A, CLUSTER_A)
    # A WELCOME proven over other cluster ids (altered in flight) is refused.
    forged = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, "sn", nonce, None, CLUSTER_A)
    proto.dataReceived(f"WELCOME {forged}\n".encode())
    assert "failed to prove" in str(failure_of(proto.authenticated, PeerUnavailable))


def test_client_accepts_an_unbound_server_and_exposes_its_cluster_id():
    for server_cluster, client_cluster in [(None, CLUSTER_A), (CLUSTER_A, None),
                                           (CLUSTER_A, CLUSTER_A), (None, None)]:
        proto, transport, _clock = make_client(cluster=client_cluster)
        proto.dataReceived(f"HELLO {SERVER_ID} sn {server_cluster or '-'}\n".encode())
        nonce = lines(transport)[0].split(" ")[2]
        welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, "sn", nonce,
                                        server_cluster, client_cluster)
        proto.dataReceived(f"WELCOME {welcome}\n".encode())
        assert success(proto.authenticated) is proto
        assert proto.peer_cluster_id == server_cluster


def test_client_refuses_a_welcome_from_another_cluster():
    # A listener that should have refused (it does not, in this code) is refused here.
    proto, transport, _clock = make_client(cluster=CLUSTER_A)
    proto.dataReceived(f"HELLO {SERVER_ID} sn {CLUSTER_B}\n".encode())
    nonce = lines(transport)[0].split(" ")[2]
    welcome = peerwire.server_proof(SECRET, CLIENT_ID, SERVER_ID, "sn", nonce, CLUSTER_B,
                                    CLUSTER_A)
    with capturedLogs() as events:
        proto.dataReceived(f"WELCOME {welcome}\n".encode())
    assert transport.disconnecting
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert f"belongs to cluster {CLUSTER_B}, this replica to cluster {CLUSTER_A}" in str(error)
    assert refusal_lines(events) == [refusal(SERVER_ID, CLUSTER_B, CLUSTER_A)]


@pytest.mark.parametrize(
    "server_cluster, client_cluster",
    [(CLUSTER_A, CLUSTER_A), (CLUSTER_A, None), (None, CLUSTER_B), (None, None)],
    ids=["same", "client-unbound", "server-unbound", "both-unbound"],
)
def test_handshake_over_iosim_with_cluster_ids(server_cluster, client_cluster):
    server, client, server_io, client_io, pump, _clock, _handler = connected_pair(
        server_cluster=server_cluster, client_cluster=client_cluster
    )
    pump.flush()
    assert success(client.authenticated) is client
    assert server.peer_id == CLIENT_ID
    assert server.peer_cluster_id == client_cluster
    assert client.peer_cluster_id == server_cluster
    assert not server_io.disconnecting and not client_io.disconnecting


def test_different_clusters_over_iosim_are_refused_and_logged_once_on_each_side():
    clock = task.Clock()
    server_factory = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(), clock,
                                       100_000, cluster_id=lambda: CLUSTER_A)
    client_factory = PeerClientFactory(CLIENT_ID, SERVER_ID, SECRET, clock, 100_000,
                                       cluster_id=lambda: CLUSTER_B)
    with capturedLogs() as events:
        for _ in range(3):
            server, client, server_io, client_io, pump, _clock, handler = connected_pair(
                server_factory=server_factory, client_factory=client_factory
            )
            pump.flush()
            error = failure_of(client.authenticated, PeerUnavailable)
            assert str(error) == (f"replica {SERVER_ID} belongs to cluster {CLUSTER_A}, "
                                  f"this replica to cluster {CLUSTER_B}")
            assert error.sent is False
            assert server.peer_id is None
            assert server_io.disconnected and client_io.disconnected
    assert handler.calls == []
    assert refusal_lines(events) == [
        refusal(CLIENT_ID, CLUSTER_B, CLUSTER_A),      # the listener's line
        refusal(SERVER_ID, CLUSTER_A, CLUSTER_B),      # the dialer's line
    ]
    assert len(events) == 2                            # nothing else, however many retries


def test_peer_link_passes_the_cluster_id_and_records_the_peers():
    reactor = MemoryReactorClock()
    reactor.listenTCP(7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(),
                                              reactor, 100_000, cluster_id=lambda: CLUSTER_A))
    link = PeerLink(reactor, CLIENT_ID, SERVER_ID, "tcp:host=127.0.0.1:port=7102", SECRET,
                    100_000, cluster_id=lambda: None)
    link.service.startService()
    assert link.peer_cluster_id is None
    d = link.call("PING", "x")
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    assert success(d).payload == "x"
    assert link.peer_cluster_id == CLUSTER_A
    link.service.stopService()


def test_peer_link_to_another_cluster_fails_calls_like_a_failed_handshake():
    reactor = MemoryReactorClock()
    reactor.listenTCP(7102, PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(),
                                              reactor, 100_000, cluster_id=lambda: CLUSTER_A))
    link = PeerLink(reactor, CLIENT_ID, SERVER_ID, "tcp:host=127.0.0.1:port=7102", SECRET,
                    100_000, cluster_id=lambda: CLUSTER_B)
    link.service.startService()
    with capturedLogs() as events:
        d = link.call("PING", "x", timeout_s=5.0)
        reactor.advance(0)
        iosim.ConnectionCompleter(reactor).succeedOnce().flush()
        error = failure_of(d, PeerUnavailable)
        assert f"belongs to cluster {CLUSTER_A}" in str(error)
        assert error.sent is False
        for _ in range(4):                # ClientService redials: no new log lines
            reactor.advance(0.3)
            pump = iosim.ConnectionCompleter(reactor).succeedOnce()
            assert pump is not None
            pump.flush()
    assert link.peer_cluster_id is None
    assert refusal_lines(events) == [refusal(CLIENT_ID, CLUSTER_B, CLUSTER_A),
                                     refusal(SERVER_ID, CLUSTER_A, CLUSTER_B)]
    link.service.stopService()


# Peer-port limits (issue #9 item 5) ------------------------------------------------------


class KeepAliveTransport(StringTransport):
    """A StringTransport that records TCP options the way a TCP transport takes them."""

    def __init__(self, handle=None):
        super().__init__()
        self.keep_alive = None
        self.handle = handle

    def setTcpNoDelay(self, enabled):
        pass

    def setTcpKeepAlive(self, enabled):
        self.keep_alive = enabled

    def getHandle(self):
        return self.handle


def limited_factory(max_connections=3, handler=None, stall_s=peer.STREAM_STALL_TIMEOUT_S,
                    max_line=100_000):
    clock = task.Clock()
    factory = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, handler or Handler(), clock,
                                max_line, max_connections=max_connections,
                                stream_stall_timeout_s=stall_s)
    return factory, clock


def open_connection(factory, transport=None):
    proto = factory.buildProtocol(None)
    transport = transport or StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def authenticate(proto, transport, client_id=CLIENT_ID):
    lines(transport)
    proto.dataReceived(auth_line(proto, client_id=client_id))
    (welcome,) = lines(transport)
    assert welcome.startswith("WELCOME ") and proto.peer_id == client_id


def warnings(events) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") is not None
            and e["log_level"].name == "warn"]


def test_the_connection_limit_defaults_to_four_per_member():
    factory = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(), task.Clock(), 100)
    assert factory.max_connections == 4 * len(MEMBERS) == 12
    assert factory.stream_stall_timeout_s == peer.STREAM_STALL_TIMEOUT_S == 30.0


def test_at_the_limit_the_oldest_unauthenticated_connection_makes_room():
    factory, _clock = limited_factory(max_connections=3)
    authed, authed_io = open_connection(factory)
    authenticate(authed, authed_io)
    first, first_io = open_connection(factory)
    second, second_io = open_connection(factory)
    assert len(factory.connections) == 3
    with capturedLogs() as events:
        newest, newest_io = open_connection(factory)
    # The oldest connection still in its handshake went, with ERR BUSY; not the replica.
    assert lines(first_io)[-1] == "ERR BUSY too many peer connections, try later"
    assert first_io.disconnecting
    assert not authed_io.disconnecting and not second_io.disconnecting
    assert lines(newest_io)[0].startswith(f"HELLO {SERVER_ID} ")
    assert list(factory.connections) == [authed, second, newest]
    assert any("peer port full (3 connections)" in w for w in warnings(events))
    # The evicted connection's handshake timer is gone; its close does not count twice.
    first.connectionLost(Failure(ConnectionDone()))
    assert list(factory.connections) == [authed, second, newest]


def test_a_new_connection_is_closed_at_once_when_every_slot_is_authenticated():
    factory, _clock = limited_factory(max_connections=2)
    for client_id in (1, 3):
        proto, transport = open_connection(factory)
        authenticate(proto, transport, client_id)
    late, late_io = open_connection(factory)
    assert lines(late_io) == ["ERR BUSY too many peer connections, try later"]
    assert late_io.disconnecting and late not in factory.connections
    late.connectionLost(Failure(ConnectionDone()))
    assert len(factory.connections) == 2


def test_a_closed_connection_frees_its_slot():
    factory, _clock = limited_factory(max_connections=1)
    proto, transport = open_connection(factory)
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.connections == {}
    again, again_io = open_connection(factory)
    assert lines(again_io)[0].startswith("HELLO ")
    assert list(factory.connections) == [again]


def test_the_handshake_deadline_closes_and_frees_the_slot():
    factory, clock = limited_factory(max_connections=1)
    proto, transport = open_connection(factory)
    clock.advance(peer.HANDSHAKE_TIMEOUT_S - 0.01)
    assert not transport.disconnecting
    clock.advance(0.01)
    assert lines(transport)[-1] == "ERR AUTH handshake timed out"
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.connections == {} and clock.getDelayedCalls() == []


def test_a_replica_that_authenticates_again_replaces_its_older_connection():
    body = Body(5000)
    handler = Handler(lambda *args: PeerAnswer(body=body))
    factory, clock = limited_factory(handler=handler)
    old, old_io = open_connection(factory)
    authenticate(old, old_io)
    old.dataReceived(b"1 FULL 0\n")
    old_io.producer.resumeProducing()       # a stream its vanished dialer never reads
    new, new_io = open_connection(factory)
    with capturedLogs() as events:
        authenticate(new, new_io)
    assert old_io.disconnected                 # aborted: its buffer would never drain
    assert body.closed                         # the snapshot behind the stream is released
    assert list(factory.connections) == [new]
    assert any("replica 1 connected again" in formatEvent(e) for e in events)
    assert clock.getDelayedCalls() == []       # no stall timer left behind
    other, other_io = open_connection(factory)
    authenticate(other, other_io, client_id=3)  # another replica is not a duplicate
    assert not new_io.disconnecting


def test_refusals_of_unauthenticated_connections_are_rate_limited():
    factory, clock = limited_factory(max_connections=100)
    with capturedLogs() as events:
        for _ in range(25):
            proto, transport = open_connection(factory)
            proto.dataReceived(b"GET / HTTP/1.0\n")
            assert transport.disconnecting
            proto.connectionLost(Failure(ConnectionDone()))
        assert len(warnings(events)) == 1
        clock.advance(peer.REFUSAL_LOG_INTERVAL_S)
    logged = warnings(events)
    assert len(logged) == 2
    assert "not authenticated: send AUTH first" in logged[0]
    assert logged[1] == ("closed 24 more unauthenticated peer connections in the last "
                         "10 s")
    assert clock.getDelayedCalls() == []


def test_evictions_are_rate_limited_with_a_count():
    factory, clock = limited_factory(max_connections=4)
    with capturedLogs() as events:
        for _ in range(104):
            open_connection(factory)
        clock.advance(peer.REFUSAL_LOG_INTERVAL_S)
    logged = [w for w in warnings(events) if "port full" in w or "connection limit" in w]
    assert len(logged) == 2
    assert "peer port full (4 connections)" in logged[0]
    assert logged[1] == ("closed 99 more peer connections at the connection limit in "
                         "the last 10 s")
    assert len(factory.connections) == 4


def test_a_long_line_before_the_handshake_is_refused_near_one_kilobyte():
    proto, transport, _clock, handler = make_server(max_line=100_000)
    lines(transport)
    proto.dataReceived(b"AUTH " + b"x" * (peer.PRE_AUTH_MAX_LINE_BYTES - 5) + b"\n")
    assert lines(transport) == ["ERR AUTH not authenticated: send AUTH first"]
    proto, transport, _clock, handler = make_server(max_line=100_000)
    lines(transport)
    proto.dataReceived(b"AUTH " + b"x" * peer.PRE_AUTH_MAX_LINE_BYTES)   # no newline yet
    assert lines(transport) == ["ERR LINETOOLONG line too long"]
    assert transport.disconnecting and proto.peer_id is None


def test_after_the_handshake_the_normal_line_limit_applies():
    proto, transport, _clock, handler = authenticated_server(max_line=100_000)
    payload = "x" * 50_000
    proto.dataReceived(f"1 PING {payload}\n".encode())
    assert lines(transport) == [f"1 OK {payload}"]
    proto.dataReceived(b"2 PING " + b"x" * 100_001 + b"\n")
    assert lines(transport) == ["ERR LINETOOLONG line too long"]


def test_auth_and_a_request_in_one_write_use_the_right_limits():
    proto, transport, _clock, handler = make_server(max_line=100_000)
    lines(transport)
    payload = "y" * 5000
    proto.dataReceived(auth_line(proto) + f"7 PING {payload}\n".encode())
    assert lines(transport)[1:] == [f"7 OK {payload}"]


def test_the_dialer_refuses_a_long_line_before_the_handshake():
    proto, transport, _clock = make_client()
    proto.dataReceived(b"HELLO " + b"z" * 2000 + b"\n")
    error = failure_of(proto.authenticated, PeerUnavailable)
    assert "handshake line over 1024 bytes" in str(error)
    assert transport.disconnecting


def test_the_dialer_takes_long_lines_after_the_handshake():
    proto, transport, _clock = ready_client()
    d = proto.call("PING")
    proto.dataReceived(f"1 OK {'v' * 5000}\n".encode())
    assert success(d).payload == "v" * 5000


def test_both_sides_turn_tcp_keepalive_on():
    factory, _clock = limited_factory()
    _proto, server_io = open_connection(factory, KeepAliveTransport())
    client_factory = PeerClientFactory(CLIENT_ID, SERVER_ID, SECRET, task.Clock(), 10_000)
    client_io = KeepAliveTransport()
    client_factory.buildProtocol(None).makeConnection(client_io)
    assert server_io.keep_alive is True and client_io.keep_alive is True


def test_keepalive_probes_start_well_before_the_kernels_two_hours():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        transport = KeepAliveTransport(handle=handle)
        peer.keep_alive(transport)
        assert transport.keep_alive is True
        if hasattr(socket, "TCP_KEEPIDLE"):
            idle = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert idle == peer.KEEPALIVE_IDLE_S
            count = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert count == peer.KEEPALIVE_PROBES


# A frozen receiver: the stream is aborted, its snapshot released ---------------------------


def start_stream(body, stall_s=10.0):
    handler = Handler(lambda *args: PeerAnswer(body=body, trailer=lambda: "1:1 -"))
    factory, clock = limited_factory(handler=handler, stall_s=stall_s)
    proto, transport = open_connection(factory)
    authenticate(proto, transport)
    proto.dataReceived(b"4 FULL 0\n")
    return proto, transport, clock, factory


def test_a_stream_whose_receiver_stops_reading_is_aborted_at_the_deadline():
    body = Body(10_000)
    proto, transport, clock, factory = start_stream(body, stall_s=10.0)
    transport.producer.resumeProducing()     # one batch goes out; the buffer never drains
    assert body.sent == 512
    clock.advance(9.9)
    assert not transport.disconnecting and not body.closed
    with capturedLogs() as events:
        clock.advance(0.1)
    assert body.closed                           # the read snapshot is released now,
    assert transport.disconnected                # without waiting for the buffer
    assert transport.producer is None
    assert any("aborting FULL stream 4 to replica 1" in w for w in warnings(events))
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.connections == {} and clock.getDelayedCalls() == []


def test_a_stream_never_resumed_at_all_is_aborted_too():
    body = Body(10)
    _proto, transport, clock, _factory = start_stream(body, stall_s=10.0)
    clock.advance(10.0)
    assert body.closed and transport.disconnected and body.sent == 0


def test_a_stream_that_keeps_draining_is_not_cut():
    body = Body(512 * 8)
    _proto, transport, clock, _factory = start_stream(body, stall_s=10.0)
    for _ in range(8):
        clock.advance(9.0)                       # slow, but every batch drains in time
        transport.producer.resumeProducing()
    assert not transport.disconnecting and not body.closed
    transport.producer.resumeProducing()         # the END
    assert transport.producer is None
    assert lines(transport)[-1] == "4 END 1:1 -"
    assert clock.getDelayedCalls() == []         # the deadline went with the stream


def test_the_deadline_covers_the_streams_queued_behind_a_stalled_one():
    bodies = {"a": Body(5000), "b": Body(5000)}
    handler = Handler(lambda peer_id, verb, payload: PeerAnswer(body=bodies[payload]))
    factory, clock = limited_factory(handler=handler, stall_s=10.0)
    proto, transport = open_connection(factory)
    authenticate(proto, transport)
    proto.dataReceived(b"1 FULL a\n2 FULL b\n")
    transport.producer.resumeProducing()
    clock.advance(10.0)
    assert bodies["a"].closed and bodies["b"].closed and transport.disconnected


def test_a_batch_is_bounded_in_bytes_as_well_as_lines():
    class BigBody(Body):
        def __next__(self):
            kind, text = super().__next__()
            return kind, text + " " + "v" * 100_000

    body = BigBody(50)
    _proto, transport, _clock, _factory = start_stream(body)
    transport.producer.resumeProducing()
    assert body.sent == 11                       # 11 x 100 kB reach 1 MiB
    assert len(transport.value()) < peer.STREAM_BATCH_BYTES + 200_000


def test_a_stalled_stream_releases_a_real_read_snapshot(tmp_path):
    """The Replica's FULL answer holds an SQLite read transaction; while it is open the
    WAL cannot be checkpointed past it.  The stall deadline must release it."""
    from replicad.config import default_config
    from replicad.replica import Replica
    from replicad.store import Record
    from replicad.vclock import VectorClock

    reactor = MemoryReactorClock()
    replica = Replica(default_config(), 2, str(tmp_path / "data"), reactor, new_cluster=True)
    replica.startService()
    try:
        n_records = 3 * peer.STREAM_BATCH_LINES
        replica.store.apply(
            (Record(f"key{n:05}", "x" * 100, 1, n, VectorClock({1: n}), 0)
             for n in range(1, n_records + 1)),
            VectorClock({1: n_records}),
        )
        factory = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, replica, reactor,
                                    100_000, stream_stall_timeout_s=10.0)
        proto, transport = open_connection(factory)
        authenticate(proto, transport)
        proto.dataReceived(b"1 FULL 0\n")
        transport.producer.resumeProducing()
        replica.store.write(2, "after", "the snapshot")   # the WAL must keep this frame
        db = replica.store._db

        def checkpoint_blocked() -> bool:
            # PASSIVE: copies what it may without waiting; a reader's snapshot holds
            # back the frames written after it.
            _busy, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return done < log

        assert checkpoint_blocked()                       # pinned by the stream's reader
        reactor.advance(10.0)
        assert transport.disconnected
        assert not checkpoint_blocked()                   # released: the WAL can shrink
    finally:
        replica.stopService()


# Settings and wiring ----------------------------------------------------------------------


def test_peer_limit_settings_parse_validate_and_render():
    import configparser

    from replicad import config as cfg
    from replicad import sync

    assert cfg.MIN_STREAM_STALL_TIMEOUT_S == sync.STREAM_IDLE_TIMEOUT_S
    base = cfg.default_config()
    assert base.max_peer_connections is None and base.peer_connection_limit == 12
    assert cfg.default_config(5).peer_connection_limit == 20

    def parsed(**settings):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(cfg.render_config(base))
        for name, value in settings.items():
            parser["cluster"][name] = value
        return cfg.parse_config(parser, "test.ini")

    custom = parsed(max_peer_connections="7", stream_stall_timeout="12.5")
    assert custom.peer_connection_limit == 7
    assert custom.timers.stream_stall_timeout == 12.5
    rendered = cfg.render_config(custom)
    assert "max_peer_connections = 7" in rendered and "stream_stall_timeout = 12.5" in rendered
    assert "max_peer_connections" not in cfg.render_config(base)
    for settings, expected in [
        ({"max_peer_connections": "2"}, "must be at least the number of replicas (3)"),
        ({"max_peer_connections": "0"}, "max_peer_connections must be greater than 0"),
        ({"max_peer_connections": "many"}, "is not a whole number"),
        ({"stream_stall_timeout": "1"}, "stream_stall_timeout (1.0) must be at least 5 s"),
        ({"stream_stall_timeout": "-3"}, "stream_stall_timeout must be greater than 0"),
    ]:
        with pytest.raises(cfg.ConfigError) as info:
            parsed(**settings)
        message = str(info.value)
        assert expected in message and "\n" not in message, message


def test_tap_wires_the_peer_limits_into_the_peer_listener(tmp_path, monkeypatch):
    from twisted.application.internet import StreamServerEndpointService

    from replicad import config as cfg
    from replicad import tap

    monkeypatch.chdir(tmp_path)
    config = cfg.with_overrides(cfg.default_config(), max_peer_connections=9,
                                timers=cfg.Timers(stream_stall_timeout=7.0))
    (tmp_path / "cluster.ini").write_text(cfg.render_config(config))
    options = tap.Options()
    options.parseOptions(["--id", "1", "--config", "cluster.ini"])
    try:
        top = tap.makeService(options, reactor=MemoryReactorClock())
        factory = next(c.factory for c in top if isinstance(c, StreamServerEndpointService)
                       and isinstance(c.factory, PeerServerFactory))
        assert factory.max_connections == 9
        assert factory.stream_stall_timeout_s == 7.0
    finally:
        options.data_dir_lock.close()


# Found by fuzzing (tests/test_fuzz_peer.py) ---------------------------------------------


def test_a_refused_connection_says_err_once_and_ignores_the_rest():
    """A refusal used to leave the handshake timer armed (a second ERR AUTH 5 s later on
    a closing connection), and lines after the refusal drew more ERRs."""
    proto, transport, clock, handler = make_server()
    lines(transport)
    proto.dataReceived(b"HELLO?\n")
    proto.dataReceived(b"1 PING 0\nmore garbage\n")
    clock.advance(peer.HANDSHAKE_TIMEOUT_S)
    assert lines(transport) == ["ERR AUTH not authenticated: send AUTH first"]
    assert clock.getDelayedCalls() == [] and handler.calls == []


def test_an_answer_of_unknown_kind_fails_only_its_call():
    """It used to end the call as if it were an answer, leaving callers a kind they
    have no branch for."""
    proto, transport, _clock = ready_client()
    odd, good = proto.call("PING"), proto.call("PING")
    proto.dataReceived(b"1 MAYBE later\n2 OK fine\n")
    error = failure_of(odd, PeerWireError)
    assert "unexpected answer 'MAYBE'" in str(error)
    assert success(good) == PeerResponse("OK", "fine", [])
    assert not transport.disconnecting


def test_a_peer_that_stops_reading_gets_no_more_bytes_queued_for_it():
    """A frozen follower: its connection's write buffer fills, the transport pauses the
    link's producer, and calls fail at once (not sent) instead of growing memory."""
    _server, client, _sio, client_io, pump, _clock, _handler = connected_pair()
    pump.flush()
    assert success(client.authenticated) is client
    client_io.producer.pauseProducing()        # what a full write buffer makes TCP do
    error = failure_of(client.call("PUSH", "1 " + "x" * 100), PeerUnavailable)
    assert error.sent is False and "not reading" in str(error)
    client_io.producer.resumeProducing()       # drained: calls go out again
    d = client.call("PING", "back")
    pump.flush()
    assert success(d) == PeerResponse("OK", "back", [])


def test_both_ends_of_a_peer_link_send_every_peer_send_every_messages():
    """A forwarding follower's calls and the coordinator's answers leave mid-turn
    (turnsend.py's send_every), so that the two processes work as a pipeline."""
    from replicad.peer import PEER_SEND_EVERY

    class TurnEndTransport(StringTransport):
        send_every = 0        # what a TurnSend connection has

    clock = task.Clock()
    server = PeerServerFactory(SERVER_ID, set(MEMBERS), SECRET, Handler(), clock,
                               10_000).buildProtocol(None)
    client = PeerClientFactory(CLIENT_ID, SERVER_ID, SECRET, clock,
                               10_000).buildProtocol(None)
    for proto in (server, client):
        transport = TurnEndTransport()
        proto.makeConnection(transport)
        assert transport.send_every == PEER_SEND_EVERY
