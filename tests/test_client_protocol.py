"""replicad.client_protocol: the client LineReceiver with StringTransport and task.Clock."""

from __future__ import annotations

import socket
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from replicad import wire
from replicad.client_protocol import ClientFactory
from replicad.config import Timers, default_config, with_overrides
from replicad.vclock import VectorClock
from replicad.wire import Code, Limits, Reply, ReplyParser, Request, SessionContext

IDLE_S = 10.0
MAX_VALUE = 100


class FakeHandler:
    """The replica as the protocol sees it; handle() returns Deferreds the test fires."""

    def __init__(self):
        self.connected = 0
        self.handled: list[Request] = []
        self.pending: list[defer.Deferred] = []
        self.status_requests: list[Request] = []
        self.confirming: list = []
        self.status_error: Exception | None = None
        self.stopping: Reply | None = None

    def client_connected(self):
        self.connected += 1

    def status(self, request):
        self.status_requests.append(request)
        if self.status_error is not None:
            raise self.status_error
        return Reply("STATUS", lines=wire.status_lines({"role": "coordinator", "epoch": "4"}))

    def answer_now(self, request):
        """The read fast path: a GET of 'fast' is answered at once; of 'bad-sector',
        raises what SQLite raises when the disk cannot read the page."""
        if request.command == "GET" and request.key == "fast":
            return Reply("VALUE", "at once")
        if request.command == "GET" and request.key == "bad-sector":
            raise sqlite3.OperationalError("disk I/O error")
        return None

    def answer_confirmed(self, request, deliver):
        """A follower's confirmed read: a GET of a key starting 'confirmed' is taken,
        and answered when the test calls the deliver kept in ``confirming``."""
        if request.command == "GET" and request.key.startswith("confirmed"):
            self.handled.append(request)
            self.confirming.append(deliver)
            return True
        return False

    def handle(self, request, placed=None):
        self.handled.append(request)
        self.pending.append(defer.Deferred())
        return self.pending[-1]

    def stopping_reply(self, request):
        return self.stopping


def make_factory(max_connections=1000, handler=None, client_password=None):
    config = with_overrides(
        default_config(),
        max_connections=max_connections,
        client_password=client_password,
        timers=Timers(idle_timeout=IDLE_S),
        limits=Limits(max_value_bytes=MAX_VALUE),
    )
    clock = task.Clock()
    return ClientFactory(handler or FakeHandler(), config, clock), clock


def connect(factory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def setup(**kwargs):
    factory, clock = make_factory(**kwargs)
    proto, transport = connect(factory)
    return proto, transport, clock, factory.handler, factory


def replies(transport) -> list[Reply]:
    """Parse everything written since the last call; it must be whole replies."""
    data = transport.value().decode("utf-8")
    transport.clear()
    assert data == "" or data.endswith("\r\n")
    parser, out = ReplyParser(), []
    for line in data.split("\r\n")[:-1]:
        reply = parser.feed(line)
        if reply is not None:
            out.append(reply)
    assert parser.idle
    return out


def error_codes(transport) -> list[str | None]:
    return [reply.error_code for reply in replies(transport)]


# Local commands -------------------------------------------------------------------------


def test_connect_tells_the_handler_and_writes_nothing():
    _proto, transport, _clock, handler, factory = setup()
    assert handler.connected == 1
    assert factory.open_connections == 1
    assert transport.value() == b""


def test_ping():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"PING\r\n")
    assert transport.value() == b"PONG\r\n"
    proto.dataReceived(b"ping\n")
    assert transport.value() == b"PONG\r\nPONG\r\n"
    assert handler.handled == []


def test_help():
    proto, transport, _clock, _handler, _factory = setup()
    proto.dataReceived(b"HELP\r\n")
    assert replies(transport) == [Reply("HELP", lines=wire.HELP_LINES)]
    assert not transport.disconnecting


def test_quit_says_bye_and_closes_without_reading_further():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"QUIT\r\nGET k\r\nPING\r\n")
    assert transport.value() == b"BYE\r\n"
    assert transport.disconnecting
    assert handler.handled == []


def test_status_calls_handler_status():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"@r=1:1;w=- STATUS\r\n")
    assert handler.status_requests == [
        Request("STATUS", context=SessionContext(VectorClock({1: 1})))
    ]
    (reply,) = replies(transport)
    assert reply.status == "STATUS"
    assert wire.parse_status_lines(reply.lines) == {"role": "coordinator", "epoch": "4"}
    assert handler.handled == []


def test_blank_lines_are_ignored():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"\r\n\n   \r\nPING\r\n")
    assert transport.value() == b"PONG\r\n"


# Data commands --------------------------------------------------------------------------


def test_data_command_goes_to_handle_and_the_reply_is_written():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"@r=1:2;w=-;via=3 PUT k two words\r\n")
    assert handler.handled == [
        Request("PUT", "k", "two words", SessionContext(VectorClock({1: 2}), via=3))
    ]
    assert transport.value() == b""
    handler.pending[0].callback(Reply("OK"))
    assert transport.value() == b"OK\r\n"


@pytest.mark.parametrize("line", [b"GET k", b"DEL k", b"KEYS", b"KEYS p", b"PUT k v"])
def test_every_data_command_is_handled(line):
    proto, _transport, _clock, handler, _factory = setup()
    proto.dataReceived(line + b"\r\n")
    assert len(handler.handled) == 1
    assert handler.handled[0].needs_coordinator


def test_pipelined_requests_are_handled_one_at_a_time_and_answered_in_order():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET a\r\nGET b\r\nPING\r\n")
    assert [r.key for r in handler.handled] == ["a"]       # b waits for a's reply
    assert proto.paused                                     # its line is held
    assert transport.producerState == "producing"          # few bytes: still reading
    assert transport.value() == b""
    handler.pending[0].callback(Reply("VALUE", "1"))
    assert [r.key for r in handler.handled] == ["a", "b"]
    assert transport.value() == b"VALUE 1\r\n"
    assert proto.paused
    handler.pending[1].callback(Reply("NOTFOUND"))
    # PING, pipelined behind b, is answered after b.
    assert transport.value() == b"VALUE 1\r\nNOTFOUND\r\nPONG\r\n"
    assert transport.producerState == "producing"


def test_a_client_that_keeps_sending_while_it_waits_is_stopped_at_the_bound():
    """Lines held behind a request being served cost memory: past HELD_INPUT_BYTES the
    transport stops reading (back-pressure), and reads again once they are served."""
    from replicad.client_protocol import HELD_INPUT_BYTES

    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET a\r\n")
    assert proto.paused and transport.producerState == "producing"
    flood = b"PING\r\n" * (HELD_INPUT_BYTES // 6 + 1)
    proto.dataReceived(flood[:HELD_INPUT_BYTES // 2])
    assert transport.producerState == "producing"
    proto.dataReceived(flood[HELD_INPUT_BYTES // 2:])
    assert transport.producerState == "paused"           # no more than the bound held
    assert len(proto._buffer) <= len(flood)
    handler.pending[0].callback(Reply("VALUE", "1"))
    assert transport.producerState == "producing"
    answered = replies(transport)                          # every held line served
    assert len(answered) == 1 + flood.count(b"PING") and answered[-1].status == "PONG"


def test_requests_arriving_while_one_is_served_wait():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"PUT k v\r\n")
    proto.dataReceived(b"GET k\r\n")
    proto.dataReceived(b"PING\r\n")
    assert len(handler.handled) == 1
    handler.pending[0].callback(Reply("OK"))
    assert len(handler.handled) == 2
    handler.pending[1].callback(Reply("VALUE", "v"))
    assert transport.value() == b"OK\r\nVALUE v\r\nPONG\r\n"


def test_a_reply_ready_at_once_does_not_stop_the_pipeline():
    class Immediate(FakeHandler):
        def handle(self, request, placed=None):
            self.handled.append(request)
            return Reply("VALUE", request.key)   # not even a Deferred

    proto, transport, _clock, handler, _factory = setup(handler=Immediate())
    proto.dataReceived(b"GET a\r\nGET b\r\nGET c\r\n")
    assert transport.value() == b"VALUE a\r\nVALUE b\r\nVALUE c\r\n"
    assert transport.producerState == "producing"


def test_a_confirmed_read_is_answered_in_its_place_and_holds_what_follows():
    """A follower's confirmed read is answered by callback, later: nothing pipelined
    after it is served before it (a write behind it must not be applied before it is
    read), and its reply goes out in order."""
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET confirmed-a\r\nPUT k v\r\nPING\r\n")
    assert [r.key for r in handler.handled] == ["confirmed-a"]
    assert proto.paused and transport.value() == b""
    handler.confirming[0](Reply("VALUE", "a"))
    assert transport.value() == b"VALUE a\r\n"
    assert [r.command for r in handler.handled] == ["GET", "PUT"]   # now the PUT
    handler.pending[0].callback(Reply("OK"))
    assert replies(transport) == [Reply("VALUE", "a"), Reply("OK"), Reply("PONG")]
    assert not proto.paused


def test_a_confirmed_read_waits_behind_a_request_in_flight():
    """Taken while a forwarded request is served before it: answered first, written
    second."""
    class TakesAll(FakeHandler):
        def answer_confirmed(self, request, deliver):
            if request.key == "confirmed":
                self.confirming.append(deliver)
                return True
            return False

    proto, transport, _clock, handler, _factory = setup(handler=TakesAll())
    proto.dataReceived(b"GET first\r\n")
    proto.dataReceived(b"GET confirmed\r\n")    # held: GET first is being served
    assert handler.confirming == []
    handler.pending[0].callback(Reply("VALUE", "1"))
    handler.confirming[0](Reply("VALUE", "2"))
    assert replies(transport) == [Reply("VALUE", "1"), Reply("VALUE", "2")]


def test_a_read_not_taken_for_confirmation_takes_the_full_path():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET other\r\n")
    assert handler.confirming == [] and len(handler.pending) == 1
    handler.pending[0].callback(Reply("NOTFOUND"))
    assert replies(transport) == [Reply("NOTFOUND")]


def test_a_confirmed_read_delivered_as_a_failure_is_err_internal_in_its_place():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET confirmed\r\nPING\r\n")
    handler.confirming[0](Failure(RuntimeError("database is locked")))
    (internal, pong) = replies(transport)
    assert internal.error_code == "INTERNAL"
    assert "nothing was half-applied" in internal.error_message
    assert "database" not in internal.text
    assert pong == Reply("PONG")
    assert not transport.disconnecting


def test_a_confirmed_read_answered_after_the_client_left_writes_nothing():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET confirmed\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    handler.confirming[0](Reply("VALUE", "late"))
    assert transport.value() == b""


def test_reply_meta_is_written():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET k\r\n")
    meta = wire.ReplyMeta(VectorClock({1: 1}), by=1, coord=1, epoch=2, here=1)
    handler.pending[0].callback(Reply("VALUE", "x", meta=meta))
    assert replies(transport) == [Reply("VALUE", "x", meta=meta)]


# Errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"FROB", "BADCMD"),
        (b"GET", "BADARGS"),
        (b"PUT k", "BADARGS"),
        (b"GET " + b"k" * 300, "BADKEY"),
        (b"PUT k " + b"v" * (MAX_VALUE + 1), "TOOBIG"),
        (b"PUT k a\x00b", "BADVALUE"),
        (b"@r=zz GET k", "BADCONTEXT"),
    ],
)
def test_parse_errors_reply_err_and_the_connection_stays_usable(line, code):
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(line + b"\r\n")
    assert error_codes(transport) == [code]
    assert not transport.disconnecting
    assert handler.handled == []
    proto.dataReceived(b"PING\r\n")
    assert transport.value() == b"PONG\r\n"


def test_a_fast_read_that_raises_is_err_internal_and_the_connection_stays():
    """An error of the read fast path (a page the disk cannot read) is one ERR INTERNAL
    in its place, as on the full path, not a dropped connection and a traceback from
    the reactor."""
    proto, transport, _clock, _handler, _factory = setup()
    proto.dataReceived(b"GET bad-sector\r\nGET fast\r\n")
    (internal, fast) = replies(transport)
    assert internal.error_code == "INTERNAL"
    assert "nothing was half-applied" in internal.error_message
    assert "disk" not in internal.text
    assert fast == Reply("VALUE", "at once")
    assert not transport.disconnecting


def test_a_failure_while_the_replica_stops_is_answered_as_it_says():
    """A replica that stops because its disk failed (Replica.stopping_reply) tells the
    client where to go, on the fast path and the full one alike, not ERR INTERNAL
    (after which a client would not try another server)."""
    proto, transport, _clock, handler, _factory = setup()
    handler.stopping = wire.error_reply(Code.UNAVAILABLE, "replica 3 stops")
    with capturedLogs() as events:
        proto.dataReceived(b"GET bad-sector\r\nGET k\r\n")
        handler.pending[0].errback(sqlite3.OperationalError("disk I/O error"))
    assert replies(transport) == [handler.stopping, handler.stopping]
    # One line each, no traceback: the replica logs its stop once.
    assert [e for e in events if e.get("log_failure")] == []
    assert any("failed as this replica stops: disk I/O error" in formatEvent(e)
               for e in events)


def test_a_status_that_raises_is_err_internal_and_the_connection_stays():
    proto, transport, _clock, handler, _factory = setup()
    handler.status_error = sqlite3.OperationalError("disk I/O error")
    proto.dataReceived(b"STATUS\r\nPING\r\n")
    (internal, pong) = replies(transport)
    assert internal.error_code == "INTERNAL" and pong == Reply("PONG")
    assert not transport.disconnecting


def test_handler_errback_is_err_internal():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET k\r\nPING\r\n")
    handler.pending[0].errback(RuntimeError("database is locked"))
    (internal, pong) = replies(transport)
    assert internal.error_code == "INTERNAL"
    assert "nothing was half-applied" in internal.error_message
    assert "database" not in internal.text       # internals are not shown to clients
    assert pong == Reply("PONG")
    assert not transport.disconnecting


def test_handler_raising_is_err_internal():
    class Raising(FakeHandler):
        def handle(self, request, placed=None):
            raise ValueError("bug")

    proto, transport, _clock, _handler, _factory = setup(handler=Raising())
    proto.dataReceived(b"DEL k\r\nPING\r\n")
    assert [r.status for r in replies(transport)] == ["ERR", "PONG"]


def test_over_long_line_is_linetoolong_and_closed():
    proto, transport, _clock, handler, _factory = setup()
    limit = proto.MAX_LENGTH
    assert limit == Limits(max_value_bytes=MAX_VALUE).max_line_bytes
    proto.dataReceived(b"PUT k " + b"v" * limit + b"\r\nPING\r\n")
    (reply,) = replies(transport)
    assert reply.error_code == "LINETOOLONG"
    assert str(limit) in reply.error_message
    assert transport.disconnecting
    assert handler.handled == []


def test_over_long_line_without_newline_is_linetoolong():
    proto, transport, _clock, _handler, _factory = setup()
    proto.dataReceived(b"x" * (proto.MAX_LENGTH + 10))
    assert error_codes(transport) == ["LINETOOLONG"]
    assert transport.disconnecting


def test_a_line_at_the_limit_is_fine():
    proto, transport, _clock, handler, _factory = setup()
    line = b"PUT k " + b"v" * MAX_VALUE
    proto.dataReceived(line + b" " * (proto.MAX_LENGTH - len(line)) + b"\n")
    assert error_codes(transport) == ["TOOBIG"]      # parsed, not cut off
    assert not transport.disconnecting


def test_non_utf8_is_badencoding_and_still_usable():
    proto, transport, _clock, _handler, _factory = setup()
    proto.dataReceived(b"GET \xff\xfe\r\n")
    assert error_codes(transport) == ["BADENCODING"]
    assert not transport.disconnecting
    proto.dataReceived(b"PING\r\n")
    assert transport.value() == b"PONG\r\n"


# Regression: NBSP or \\v next to the command word raised AssertionError out of
# lineReceived (wire.parse_request), which drops the connection on a real transport.
def test_odd_whitespace_gets_a_reply_not_a_crash():
    proto, transport, _clock, _handler, _factory = setup()
    proto.dataReceived("PING\u00a0\r\n\x0bPING\r\n".encode())
    assert transport.value() == b"PONG\r\nPONG\r\n"
    assert not transport.disconnecting


def test_huge_number_in_context_gets_badcontext():
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"@via=" + b"9" * 4400 + b" GET k\r\nPING\r\n")
    assert [r.error_code for r in replies(transport)] == ["BADCONTEXT", None]
    assert handler.handled == []


# Idle timeout ---------------------------------------------------------------------------


def test_idle_connection_gets_err_idle_and_is_closed():
    _proto, transport, clock, _handler, _factory = setup()
    clock.advance(IDLE_S - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    (reply,) = replies(transport)
    assert reply.error_code == "IDLE"
    assert reply.error_message == "no request for 10 s, closing"
    assert transport.disconnecting


def test_each_request_resets_the_idle_timer():
    proto, transport, clock, _handler, _factory = setup()
    for _ in range(3):
        clock.advance(IDLE_S - 1)
        proto.dataReceived(b"PING\r\n")
    assert not transport.disconnecting
    clock.advance(IDLE_S)
    assert transport.disconnecting


def test_no_idle_timeout_while_a_request_is_in_progress():
    proto, transport, clock, handler, _factory = setup()
    proto.dataReceived(b"GET k\r\n")
    clock.advance(IDLE_S * 10)                 # the timer fires and is re-armed
    assert not transport.disconnecting
    assert transport.value() == b""
    handler.pending[0].callback(Reply("NOTFOUND"))
    assert transport.value() == b"NOTFOUND\r\n"
    # The timer starts again once the reply is written.
    clock.advance(IDLE_S - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting


# Connection accounting ------------------------------------------------------------------


def test_max_connections_exceeded_is_busy_and_closed():
    factory, _clock = make_factory(max_connections=2)
    (p1, _t1), (_p2, _t2) = connect(factory), connect(factory)
    p3, t3 = connect(factory)
    assert t3.value() == b"ERR BUSY too many connections, try later\r\n"
    assert t3.disconnecting
    assert factory.open_connections == 2
    assert factory.handler.connected == 2
    p3.connectionLost(Failure(ConnectionDone()))
    assert factory.open_connections == 2        # a refused connection was never counted
    p1.connectionLost(Failure(ConnectionDone()))
    assert factory.open_connections == 1
    _p4, t4 = connect(factory)
    assert t4.value() == b""
    assert not t4.disconnecting
    assert factory.open_connections == 2


def test_connection_count_is_decremented_once_on_close():
    factory, clock = make_factory()
    proto, _transport = connect(factory)
    assert factory.open_connections == 1
    proto.connectionLost(Failure(ConnectionDone()))
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.open_connections == 0
    assert clock.getDelayedCalls() == []         # the idle timer is cancelled


def test_reply_after_the_client_disconnected_is_dropped_silently():
    proto, transport, clock, handler, factory = setup()
    proto.dataReceived(b"GET k\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert factory.open_connections == 0
    handler.pending[0].callback(Reply("VALUE", "late"))
    assert transport.value() == b""
    assert clock.getDelayedCalls() == []


def test_reply_after_disconnect_raises_nothing():
    # The part of the above that holds today: firing the Deferred late is not an error.
    proto, _transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET k\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    result = []
    handler.pending[0].addBoth(result.append)
    handler.pending[0].callback(Reply("VALUE", "late"))
    assert result == [None]


# Client password ------------------------------------------------------------------------


def test_without_a_password_configured_auth_is_accepted_and_not_needed():
    proto, transport, clock, handler, factory = setup()
    proto.dataReceived(b"AUTH anything\r\nGET k\r\n")
    assert [r.status for r in replies(transport)] == ["OK"]
    assert [r.command for r in handler.handled] == ["GET"]


def test_with_a_password_data_and_status_need_auth_first():
    proto, transport, clock, handler, factory = setup(client_password="s3cret pass")
    proto.dataReceived(b"GET k\r\nSTATUS\r\nPING\r\nHELP\r\n")
    got = replies(transport)
    assert [r.error_code for r in got[:2]] == ["AUTH", "AUTH"]
    assert [r.status for r in got[2:]] == ["PONG", "HELP"]
    assert handler.handled == [] and handler.status_requests == []
    proto.dataReceived(b"AUTH s3cret pass\r\nGET k\r\n")
    assert [r.status for r in replies(transport)] == ["OK"]
    assert [r.command for r in handler.handled] == ["GET"]


def test_three_wrong_passwords_close_the_connection():
    proto, transport, clock, handler, factory = setup(client_password="right")
    proto.dataReceived(b"AUTH wrong\r\nAUTH Right\r\n")
    assert error_codes(transport) == ["AUTH", "AUTH"]
    assert not transport.disconnecting
    proto.dataReceived(b"AUTH right \r\n")      # a trailing space is part of it
    assert error_codes(transport) == ["AUTH"]
    assert transport.disconnecting


# Replies the client does not read ------------------------------------------------------


def test_lines_wait_while_replies_wait_unread_and_are_served_in_order_after():
    """The protocol is its transport's streaming producer: paused (more than the
    transport's bufferSize of replies unsent: the client does not read them), it serves
    nothing more; resumed (they were sent), it goes on where it stopped.  Before, every
    line was served at once, and the replies piled up in memory."""
    proto, transport, _clock, handler, _factory = setup()
    assert transport.streaming and transport.producer is not None
    proto.dataReceived(b"GET fast\r\n")
    assert replies(transport) == [Reply("VALUE", "at once")]
    transport.producer.pauseProducing()          # what the transport does when backed up
    proto.dataReceived(b"GET fast\r\nGET k\r\nPING\r\n")
    assert replies(transport) == [] and handler.handled == []
    transport.producer.resumeProducing()         # they were sent
    assert replies(transport) == [Reply("VALUE", "at once")]
    assert [r.key for r in handler.handled] == ["k"]      # being served, PING held
    handler.pending[0].callback(Reply("VALUE", "v"))
    assert replies(transport) == [Reply("VALUE", "v"), Reply("PONG")]


def test_a_request_answered_while_replies_wait_unread_does_not_resume_reading():
    """The reply of a request being served (a queue that drains) does not undo the
    transport's pause: the lines after it wait until the replies are sent."""
    proto, transport, _clock, handler, _factory = setup()
    proto.dataReceived(b"GET k\r\nPING\r\n")
    transport.producer.pauseProducing()
    handler.pending[0].callback(Reply("VALUE", "v"))
    assert replies(transport) == [Reply("VALUE", "v")]        # written: it was ready
    assert proto.paused                                        # PING still held
    transport.producer.resumeProducing()
    assert replies(transport) == [Reply("PONG")]


def test_connections_whose_replies_wait_are_counted_for_the_metrics():
    proto, transport, _clock, _handler, factory = setup()
    transport.producer.pauseProducing()
    transport.producer.pauseProducing()               # told twice: counted once
    assert factory.backed_up_connections == 1
    transport.producer.resumeProducing()
    assert factory.backed_up_connections == 0
    transport.producer.pauseProducing()
    proto.connectionLost(Failure(ConnectionDone()))   # gone while backed up
    assert factory.backed_up_connections == 0


def test_a_client_that_never_reads_its_replies_is_closed_when_idle():
    """Backed up, it sends requests that are not served: no activity, so the idle
    timer closes it (ERR IDLE after the replies it has not read, then a half-close and,
    as it lingers, an abort): a slot is not held for ever."""
    proto, transport, clock, handler = half_close_setup()
    transport.producer.pauseProducing()
    proto.dataReceived(b"GET fast\r\n")
    clock.advance(IDLE_S)
    assert error_codes(transport) == ["IDLE"] and transport.write_closed
    clock.advance(2.0)
    assert transport.aborted


def test_a_half_closed_client_whose_replies_wait_is_served_once_they_are_sent():
    proto, transport, _clock, _handler = half_close_setup()
    transport.producer.pauseProducing()
    proto.dataReceived(b"GET fast\r\n")
    proto.readConnectionLost()
    assert replies(transport) == [] and not transport.disconnecting
    transport.producer.resumeProducing()
    assert replies(transport) == [Reply("VALUE", "at once")] and transport.disconnecting


# Closing after a final reply ------------------------------------------------------------


class HalfCloseTransport(StringTransport):
    """A StringTransport that can half-close, like a real TCP transport."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True


def half_close_setup(**kwargs):
    factory, clock = make_factory(**kwargs)
    proto = factory.buildProtocol(None)
    transport = HalfCloseTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, factory.handler


def test_an_over_long_line_gets_its_error_then_a_half_close_and_input_is_drained():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"x" * (proto.MAX_LENGTH + 10))
    assert error_codes(transport) == ["LINETOOLONG"]
    assert transport.write_closed and not transport.aborted
    proto.dataReceived(b"more of the same line\r\nGET k\r\n")   # discarded, not served
    assert transport.value() == b"" and handler.handled == []
    clock.advance(2.0)                                       # the client lingers: abort
    assert transport.aborted


def test_lines_pipelined_after_quit_are_not_served():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"QUIT\r\nPUT k v\r\n")
    assert [r.status for r in replies(transport)] == ["BYE"]
    assert handler.handled == [] and transport.write_closed


def test_the_linger_timer_dies_with_the_connection():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"QUIT\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_eof_after_quit_closes_at_once():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"QUIT\r\n")
    assert transport.write_closed and not transport.disconnecting
    proto.readConnectionLost()
    assert transport.disconnecting


# Half-close: the client shuts down its write side ---------------------------------------


def test_a_request_in_progress_at_eof_is_answered_then_the_connection_closed():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"PUT k v\n")
    proto.readConnectionLost()
    assert not transport.disconnecting
    handler.pending[0].callback(Reply("OK"))
    assert transport.value() == b"OK\r\n"
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []          # no idle timer left behind


def test_pipelined_requests_before_eof_are_all_answered_in_order():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"PUT a 1\nGET a\nPING\n")
    proto.readConnectionLost()
    handler.pending[0].callback(Reply("OK"))
    assert not transport.disconnecting and len(handler.pending) == 2
    handler.pending[1].callback(Reply("VALUE", "1"))
    assert transport.value() == b"OK\r\nVALUE 1\r\nPONG\r\n"
    assert transport.disconnecting


def test_a_last_line_without_a_newline_is_served_at_eof():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"PING\nGET k")
    assert transport.value() == b"PONG\r\n" and handler.handled == []
    proto.readConnectionLost()
    assert handler.handled == [Request("GET", "k")]
    handler.pending[0].callback(Reply("NOTFOUND"))
    assert transport.value() == b"PONG\r\nNOTFOUND\r\n" and transport.disconnecting


def test_eof_with_nothing_pending_closes_at_once():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"PING\r\n")
    proto.readConnectionLost()
    assert transport.value() == b"PONG\r\n" and transport.disconnecting
    proto.readConnectionLost()                    # twice is harmless


def test_quit_before_eof_still_says_bye():
    proto, transport, clock, handler = half_close_setup()
    proto.dataReceived(b"QUIT")
    proto.readConnectionLost()
    assert transport.value() == b"BYE\r\n" and transport.disconnecting


class DelayedHandler(FakeHandler):
    """Answers every request on the real reactor a little later, like a replica."""

    def __init__(self, reactor, delay_s):
        super().__init__()
        self.reactor = reactor
        self.delay_s = delay_s

    def handle(self, request, placed=None):
        self.handled.append(request)
        reply = Reply("OK") if request.is_write else Reply("VALUE", "x")
        return task.deferLater(self.reactor, self.delay_s, lambda: reply)


def shut_write_and_read_all(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
@pytest_twisted.inlineCallbacks
def test_half_close_on_a_real_socket_still_gets_the_reply(delay_s):
    from twisted.internet import reactor

    handler = DelayedHandler(reactor, delay_s)
    factory, _clock = make_factory(handler=handler)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        data = yield threads.deferToThread(
            shut_write_and_read_all, port.getHost().port, b"PUT k v\nGET k\nPING")
    finally:
        yield port.stopListening()
    assert data == b"OK\r\nVALUE x\r\nPONG\r\n"
    assert handler.handled == [Request("PUT", "k", "v"), Request("GET", "k")]


def test_a_read_answered_at_once_takes_no_deferred_and_does_not_pause_reading():
    handler = FakeHandler()
    proto, transport = connect(make_factory(handler=handler)[0])
    proto.dataReceived(b"GET fast\r\nGET fast\r\n")
    assert transport.value() == b"VALUE at once\r\nVALUE at once\r\n"
    assert handler.handled == [] and transport.producerState == "producing"
    proto.dataReceived(b"GET slow\r\nGET fast\r\n")      # the slow one keeps order:
    assert [r.key for r in handler.handled] == ["slow"]     # lines held behind it
    assert proto.paused and transport.producerState == "producing"
    handler.pending[0].callback(Reply("NOTFOUND"))
    assert transport.value().endswith(b"NOTFOUND\r\nVALUE at once\r\n")


# Pipelining: requests whose place is fixed at once do not stop reading -------------------


class Placing(FakeHandler):
    """Writes (PUT/DEL) are placed at once, as the coordinator places a write in its open
    commit group; anything else is not (a forwarded request, say)."""

    def handle(self, request, placed=None):
        if request.is_write and placed is not None:
            placed()
        return super().handle(request)


def test_placed_writes_are_all_started_and_answered_in_order():
    proto, transport, _clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nPUT b 2\r\nDEL c\r\n")
    assert [r.key for r in handler.handled] == ["a", "b", "c"]   # one commit group
    assert transport.producerState == "producing"
    handler.pending[2].callback(Reply("NOTFOUND"))
    handler.pending[1].callback(Reply("OK"))
    assert transport.value() == b""                 # a's reply comes first
    handler.pending[0].callback(Reply("OK"))
    assert transport.value() == b"OK\r\nOK\r\nNOTFOUND\r\n"


def test_a_request_not_placed_stops_reading_until_everything_before_it_is_answered():
    proto, transport, _clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nGET a\r\nPUT b 2\r\n")
    assert [r.command for r in handler.handled] == ["PUT", "GET"]
    assert proto.paused
    handler.pending[1].callback(Reply("VALUE", "1"))
    assert len(handler.handled) == 2                # a is still being served
    handler.pending[0].callback(Reply("OK"))
    assert [r.key for r in handler.handled] == ["a", "a", "b"]
    assert transport.producerState == "producing"
    handler.pending[2].callback(Reply("OK"))
    assert transport.value() == b"OK\r\nVALUE 1\r\nOK\r\n"


def test_local_and_fast_replies_wait_behind_the_writes_in_flight():
    proto, transport, _clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nPING\r\nGET fast\r\nBOGUS\r\n")
    assert transport.value() == b""
    handler.pending[0].callback(Reply("OK"))
    assert [r.status for r in replies(transport)] == ["OK", "PONG", "VALUE", "ERR"]


def test_the_pipeline_is_bounded():
    from replicad.client_protocol import MAX_PIPELINE

    proto, transport, _clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"".join(b"PUT k%d v\r\n" % i for i in range(MAX_PIPELINE + 3)))
    assert len(handler.handled) == MAX_PIPELINE
    assert proto.paused
    for d in list(handler.pending):
        d.callback(Reply("OK"))
    assert len(handler.handled) == MAX_PIPELINE + 3
    for d in handler.pending[MAX_PIPELINE:]:
        d.callback(Reply("OK"))
    assert len(replies(transport)) == MAX_PIPELINE + 3
    assert transport.producerState == "producing"


def test_no_idle_timeout_while_placed_writes_are_in_flight():
    proto, transport, clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nPUT b 2\r\n")
    clock.advance(IDLE_S * 2)
    assert not transport.disconnecting
    handler.pending[0].callback(Reply("OK"))
    handler.pending[1].callback(Reply("OK"))
    clock.advance(IDLE_S)
    assert error_codes(transport)[-1] == "IDLE"


def test_quit_behind_placed_writes_closes_after_their_replies():
    proto, transport, _clock, handler = half_close_setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nQUIT\r\nPUT b 2\r\n")
    assert len(handler.handled) == 1 and not transport.write_closed
    handler.pending[0].callback(Reply("OK"))
    assert transport.value() == b"OK\r\nBYE\r\n"
    assert transport.write_closed and len(handler.handled) == 1


def test_an_over_long_line_behind_placed_writes_is_answered_after_them():
    proto, transport, _clock, handler = half_close_setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\n" + b"x" * (proto.MAX_LENGTH + 10))
    assert transport.value() == b"" and not transport.write_closed
    handler.pending[0].callback(Reply("OK"))
    assert error_codes(transport) == [None, "LINETOOLONG"]
    assert transport.write_closed


def test_placed_writes_in_flight_at_eof_are_answered_then_the_connection_closed():
    proto, transport, _clock, handler = half_close_setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\nPUT b 2")          # the last line has no newline
    proto.readConnectionLost()
    assert [r.key for r in handler.handled] == ["a", "b"] and not transport.disconnecting
    handler.pending[0].callback(Reply("OK"))
    assert not transport.disconnecting
    handler.pending[1].callback(Reply("OK"))
    assert transport.value() == b"OK\r\nOK\r\n" and transport.disconnecting


def test_a_placed_write_whose_connection_died_writes_nothing():
    proto, transport, _clock, handler, _factory = setup(handler=Placing())
    proto.dataReceived(b"PUT a 1\r\nPUT b 2\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    handler.pending[1].callback(Reply("OK"))
    handler.pending[0].callback(Reply("OK"))
    assert transport.value() == b""
