"""Both clients against scripted line servers on 127.0.0.1, plus the retry policy alone.

Every behaviour test runs twice, once per client: the Twisted client directly on the
reactor, the blocking one in a thread (deferToThread) so the reactor keeps running.
The scripted server is a plain socket server in a thread, so it serves both alike.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from replicad.client import (
    Attempt,
    Backoff,
    BlockingClient,
    InvalidRequest,
    NoServerAvailable,
    Outcome,
    OutcomeUnknown,
    ReplicadClient,
    RetryPlan,
    ServerError,
    UnexpectedReply,
    Verdict,
    WriteInDoubt,
    classify,
    parse_status,
)
from replicad.session import ClientSession
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, Request, error_reply

# A scripted server ---------------------------------------------------------------------

DROP = "drop"      # read the request, close without answering
SILENT = "silent"  # read the request, never answer, keep the connection open

Script = Callable[[str], "bytes | str"]


class ScriptedServer:
    """A one-request-per-connection line server in a thread; script(line) says what to do."""

    def __init__(self, script: Script):
        self.script = script
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            conn.close()
            return
        line = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
        self.requests.append(line)
        action = self.script(line)
        if action == SILENT:
            self._held.append(conn)
            return
        if isinstance(action, bytes):
            try:
                conn.sendall(action)
            except OSError:
                pass
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for conn in self._held:
            conn.close()


def answer(reply: Reply, **meta: object) -> Script:
    """A script answering every request with reply, plus a meta token if given."""
    if meta:
        reply = reply.with_meta(ReplyMeta(**meta))
    return lambda line: reply.encode()


@pytest.fixture
def server() -> Iterator[Callable[[Script], ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        started.append(ScriptedServer(script))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture
def refused() -> Iterator[str]:
    """An address that refuses connections: bound, never listening (so nobody else gets it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An address where connecting hangs: a listen queue of one, already full."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield f"127.0.0.1:{listener.getsockname()[1]}"


# One test body, two clients ------------------------------------------------------------


class Driver:
    """Calls a client method and returns a Deferred, whichever client it is."""

    def __init__(self, kind: str):
        self.kind = kind

    def make(self, servers: list[str], **kwargs: object) -> ReplicadClient | BlockingClient:
        kwargs.setdefault("timeout_s", 2.0)
        if self.kind == "twisted":
            return ReplicadClient(reactor, servers, **kwargs)
        return BlockingClient(servers, **kwargs)

    def call(self, client: object, method: str, *args: object) -> defer.Deferred:
        if self.kind == "twisted":
            return getattr(client, method)(*args)
        return threads.deferToThread(getattr(client, method), *args)


@pytest.fixture(params=["twisted", "blocking"])
def drive(request: pytest.FixtureRequest) -> Driver:
    return Driver(request.param)


async def raises(exc_type: type[BaseException], d: defer.Deferred) -> BaseException:
    try:
        await d
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


VALUE = Reply("VALUE", "v1")


@pytest_twisted.ensureDeferred
async def test_refused_server_is_skipped(drive, server, refused):
    good = server(answer(VALUE))
    client = drive.make([refused, good.address])
    assert await drive.call(client, "get", "k") == "v1"
    assert len(good.requests) == 1


@pytest_twisted.ensureDeferred
async def test_server_that_never_accepts_is_skipped_after_connect_timeout(
    drive, server, blackhole
):
    good = server(answer(VALUE))
    client = drive.make([blackhole, good.address], connect_timeout_s=0.2)
    started = time.monotonic()
    assert await drive.call(client, "get", "k") == "v1"
    assert 0.15 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.STALE])
@pytest_twisted.ensureDeferred
async def test_retryable_error_moves_on_to_the_next_server(drive, server, code):
    busy = server(answer(error_reply(code, "try elsewhere"), coord=2))
    good = server(answer(VALUE))
    client = drive.make([busy.address, good.address])
    assert await drive.call(client, "get", "k") == "v1"
    assert len(busy.requests) == 1 and len(good.requests) == 1
    assert client.session.coordinator == 2   # learned from the ERR's meta


@pytest.mark.parametrize("code", [Code.INDOUBT, Code.QUORUM])
@pytest_twisted.ensureDeferred
async def test_in_doubt_write_is_not_retried(drive, server, code):
    doubtful = server(answer(error_reply(code, "may or may not survive")))
    good = server(answer(Reply("OK")))
    client = drive.make([doubtful.address, good.address])
    e = await raises(WriteInDoubt, drive.call(client, "put", "k", "v"))
    assert isinstance(e, OutcomeUnknown) and isinstance(e, ServerError)
    assert e.code == code
    assert good.requests == []


@pytest_twisted.ensureDeferred
async def test_write_dropped_after_sending_is_outcome_unknown(drive, server):
    dropper = server(lambda line: DROP)
    good = server(answer(Reply("OK")))
    client = drive.make([dropper.address, good.address])
    e = await raises(OutcomeUnknown, drive.call(client, "put", "k", "v"))
    assert dropper.address in str(e) and "may or may not" in str(e)
    assert good.requests == []
    assert len(dropper.requests) == 1


@pytest_twisted.ensureDeferred
async def test_read_dropped_after_sending_is_retried(drive, server):
    dropper = server(lambda line: DROP)
    good = server(answer(VALUE))
    client = drive.make([dropper.address, good.address])
    assert await drive.call(client, "get", "k") == "v1"


@pytest_twisted.ensureDeferred
async def test_silent_server_read_moves_on_after_reply_timeout(drive, server):
    silent = server(lambda line: SILENT)
    good = server(answer(VALUE))
    client = drive.make([silent.address, good.address], reply_timeout_s=0.2)
    assert await drive.call(client, "get", "k") == "v1"


@pytest_twisted.ensureDeferred
async def test_silent_server_write_is_outcome_unknown(drive, server):
    silent = server(lambda line: SILENT)
    good = server(answer(Reply("OK")))
    client = drive.make([silent.address, good.address], reply_timeout_s=0.2)
    e = await raises(OutcomeUnknown, drive.call(client, "put", "k", "v"))
    assert "no reply" in str(e)
    assert good.requests == []


@pytest_twisted.ensureDeferred
async def test_notfound(drive, server):
    missing = server(answer(Reply("NOTFOUND")))
    client = drive.make([missing.address])
    assert await drive.call(client, "get", "k") is None
    assert await drive.call(client, "delete", "k") is False


@pytest_twisted.ensureDeferred
async def test_put_and_delete(drive, server):
    ok = server(answer(Reply("OK")))
    client = drive.make([ok.address])
    assert await drive.call(client, "put", "k", "a value  with spaces") is None
    assert await drive.call(client, "delete", "k") is True
    assert ok.requests[0].endswith(" PUT k a value  with spaces")
    assert ok.requests[1].endswith(" DEL k")


@pytest_twisted.ensureDeferred
async def test_multiline_keys(drive, server):
    listing = server(answer(Reply("KEYS", lines=("a1", "a2", "END"))))
    client = drive.make([listing.address])
    assert await drive.call(client, "keys", "a") == ["a1", "a2", "END"]
    assert listing.requests[0].endswith(" KEYS a")
    assert await drive.call(client, "keys") == ["a1", "a2", "END"]
    assert listing.requests[1].endswith(" KEYS")


@pytest_twisted.ensureDeferred
async def test_request_carries_session_context_and_reply_meta_is_merged(drive, server):
    s = server(answer(VALUE, vc=VectorClock({1: 5}), by=3, here=1, coord=3, epoch=7))
    session = ClientSession(VectorClock({1: 2}), VectorClock({2: 1}), last_server=3)
    client = drive.make([s.address], session=session)
    assert await drive.call(client, "get", "k") == "v1"
    assert s.requests == ["@r=1:2;w=2:1;via=3 GET k"]
    assert session.read == VectorClock({1: 5})
    assert session.write == VectorClock({2: 1})
    assert session.coordinator == 3 and session.addresses == {1: s.address}


@pytest_twisted.ensureDeferred
async def test_known_coordinator_is_tried_first(drive, server):
    first = server(answer(VALUE))
    coordinator = server(answer(VALUE))
    session = ClientSession(coordinator=2, addresses={2: coordinator.address})
    client = drive.make([first.address, coordinator.address], session=session)
    await drive.call(client, "get", "k")
    assert first.requests == [] and len(coordinator.requests) == 1


@pytest_twisted.ensureDeferred
async def test_final_error_is_server_error_and_not_retried(drive, server):
    bad = server(answer(error_reply(Code.BADARGS, "usage: GET <key>")))
    good = server(answer(VALUE))
    client = drive.make([bad.address, good.address])
    e = await raises(ServerError, drive.call(client, "get", "k"))
    assert (e.code, e.message) == (Code.BADARGS, "usage: GET <key>")
    assert not isinstance(e, OutcomeUnknown)
    assert good.requests == []


@pytest_twisted.ensureDeferred
async def test_reply_that_does_not_fit(drive, server):
    confused = server(answer(Reply("PONG")))
    client = drive.make([confused.address])
    await raises(UnexpectedReply, drive.call(client, "get", "k"))


@pytest_twisted.ensureDeferred
async def test_deadline_gives_no_server_available(drive, refused):
    client = drive.make([refused], timeout_s=0.3)
    started = time.monotonic()
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert 0.25 <= time.monotonic() - started < 2
    assert refused in str(e) and "connection refused" in str(e)
    assert e.tried == [refused]


@pytest_twisted.ensureDeferred
async def test_deadline_names_the_retryable_error(drive, server):
    busy = server(answer(error_reply(Code.UNAVAILABLE, "no coordinator")))
    client = drive.make([busy.address], timeout_s=0.3)
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert "ERR UNAVAILABLE no coordinator" in str(e) and "retryable" in str(e)
    assert len(busy.requests) >= 2   # passes were repeated until the deadline


@pytest_twisted.ensureDeferred
async def test_silent_server_read_gives_up_at_the_deadline(drive, server):
    silent = server(lambda line: SILENT)
    client = drive.make([silent.address], timeout_s=0.3)
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert "no reply" in str(e)


@pytest_twisted.ensureDeferred
async def test_bad_key_is_rejected_before_any_connection(drive, server):
    s = server(answer(VALUE))
    client = drive.make([s.address])
    e = await raises(InvalidRequest, drive.call(client, "get", "two words"))
    assert e.code == Code.BADKEY
    await raises(InvalidRequest, drive.call(client, "put", "k", "line\nbreak"))
    assert s.requests == []


@pytest_twisted.ensureDeferred
async def test_status_is_parsed(drive, server):
    body = ("id 2", "role follower", "coordinator 3", "epoch 5", "clock 1:2,3:4",
            "keys 7", "peers 1:up,3:down", "conflicts 0", "write_quorum 1")
    s = server(answer(Reply("STATUS", lines=body)))
    client = drive.make([s.address])
    status = await drive.call(client, "status")
    assert status == {
        "id": 2, "role": "follower", "coordinator": 3, "epoch": 5,
        "clock": {"1": 2, "3": 4}, "keys": 7, "peers": {"1": "up", "3": "down"},
        "conflicts": 0, "write_quorum": 1, "server": s.address,
    }


@pytest_twisted.inlineCallbacks
def test_twisted_request_returns_the_raw_reply(server):
    s = server(answer(error_reply(Code.BADKEY, "nope")))
    client = ReplicadClient(reactor, [s.address])
    reply = yield client.request(Request("GET", "k"))
    assert reply.error_code == Code.BADKEY


@pytest_twisted.inlineCallbacks
def test_twisted_request_can_be_cancelled(blackhole):
    client = ReplicadClient(reactor, [blackhole], timeout_s=5, connect_timeout_s=5)
    d = client.get("k")
    reactor.callLater(0.05, d.cancel)
    with pytest.raises(defer.CancelledError):
        yield d


def test_servers_are_validated():
    with pytest.raises(ValueError):
        BlockingClient([])
    with pytest.raises(Exception, match="not host:port"):
        BlockingClient(["nohost"])


# The retry policy, pure ----------------------------------------------------------------

GET = Request("GET", "k")
PUT = Request("PUT", "k", "v")


@pytest.mark.parametrize(
    "request_, outcome, verdict",
    [
        (GET, Outcome("a", reply=VALUE, sent=True), Verdict.DONE),
        (GET, Outcome("a", reply=Reply("NOTFOUND"), sent=True), Verdict.DONE),
        (PUT, Outcome("a", reply=Reply("OK"), sent=True), Verdict.DONE),
        (GET, Outcome("a", reply=error_reply(Code.UNAVAILABLE, "x"), sent=True), Verdict.RETRY),
        (PUT, Outcome("a", reply=error_reply(Code.UNAVAILABLE, "x"), sent=True), Verdict.RETRY),
        (PUT, Outcome("a", reply=error_reply(Code.STALE, "x"), sent=True), Verdict.RETRY),
        (PUT, Outcome("a", reply=error_reply(Code.BUSY, "x"), sent=True), Verdict.RETRY),
        (PUT, Outcome("a", reply=error_reply(Code.INDOUBT, "x"), sent=True), Verdict.DONE),
        (PUT, Outcome("a", reply=error_reply(Code.QUORUM, "x"), sent=True), Verdict.DONE),
        (GET, Outcome("a", reply=error_reply(Code.BADKEY, "x"), sent=True), Verdict.DONE),
        (GET, Outcome("a", failure="connection refused"), Verdict.RETRY),
        (PUT, Outcome("a", failure="connection refused"), Verdict.RETRY),
        (GET, Outcome("a", failure="closed", sent=True), Verdict.RETRY),
        (Request("STATUS"), Outcome("a", failure="closed", sent=True), Verdict.RETRY),
        (PUT, Outcome("a", failure="closed", sent=True), Verdict.FAIL),
        (Request("DEL", "k"), Outcome("a", failure="closed", sent=True), Verdict.FAIL),
    ],
)
def test_classify(request_, outcome, verdict):
    assert classify(request_, outcome) is verdict


def test_plan_walks_servers_backs_off_and_gives_up_at_the_deadline():
    plan = RetryPlan(GET, ["a", "b"], ClientSession(), timeout_s=1.0, now=100.0, rng=lambda: 0.5)
    assert plan.next_step(100.0) == Attempt("a", 1.0)
    assert plan.record(Outcome("a", failure="connection refused")) is None
    assert plan.next_step(100.25) == Attempt("b", 0.75)
    assert plan.record(Outcome("b", reply=error_reply(Code.UNAVAILABLE, "busy"))) is None
    assert plan.next_step(100.5) == Backoff(pytest.approx(0.075))
    assert plan.next_step(100.6) == Attempt("a", pytest.approx(0.4))
    assert plan.record(Outcome("a", failure="connection refused")) is None
    assert plan.next_step(100.96) == Attempt("b", pytest.approx(0.04))
    assert plan.record(Outcome("b", failure="connection refused")) is None
    assert plan.next_step(100.99) == Backoff(pytest.approx(0.01))
    with pytest.raises(NoServerAvailable) as info:
        plan.next_step(101.0)
    message = str(info.value)
    assert "tried a, b" in message and "b: connection refused" in message
    assert "last answer: ERR UNAVAILABLE busy" in message
    assert info.value.last_reply == error_reply(Code.UNAVAILABLE, "busy")


def test_plan_reorders_each_pass_when_a_coordinator_is_learned():
    session = ClientSession(addresses={2: "b"})
    plan = RetryPlan(GET, ["a", "b"], session, timeout_s=5, now=0, rng=lambda: 0)
    assert plan.next_step(0).address == "a"
    plan.record(Outcome("a", reply=error_reply(Code.STALE, "x").with_meta(ReplyMeta(coord=2))))
    assert plan.next_step(0).address == "b"
    plan.record(Outcome("b", failure="connection refused"))
    assert isinstance(plan.next_step(0), Backoff)
    assert plan.next_step(0).address == "b"


def test_plan_returns_final_reply_and_folds_it_into_the_session():
    session = ClientSession()
    plan = RetryPlan(PUT, ["a"], session, timeout_s=5, now=0)
    plan.next_step(0)
    ok = Reply("OK", meta=ReplyMeta(VectorClock({3: 4}), by=3, here=3, coord=3))
    assert plan.record(Outcome("a", reply=ok, sent=True)) is ok
    assert session.write == VectorClock({3: 4}) and session.last_server == 3


def test_plan_write_lost_after_sending_raises_outcome_unknown():
    plan = RetryPlan(PUT, ["a", "b"], ClientSession(), timeout_s=5, now=0)
    plan.next_step(0)
    with pytest.raises(OutcomeUnknown, match="PUT k: the request reached a"):
        plan.record(Outcome("a", failure="closed the connection", sent=True))


def test_plan_with_no_time_at_all():
    plan = RetryPlan(GET, ["a"], ClientSession(), timeout_s=0, now=0)
    with pytest.raises(NoServerAvailable, match="tried none"):
        plan.next_step(0)


def test_parse_status_keeps_what_it_does_not_understand():
    status = parse_status(("id 1", "coordinator -", "clock garbage", "peers -", "extra x y"),
                          "h:1")
    assert status["id"] == 1 and status["coordinator"] is None
    assert status["clock"] == "garbage" and status["peers"] == {}
    assert status["extra"] == "x y" and status["role"] is None and status["server"] == "h:1"
