"""Fuzzing the client protocol (issue #9 item 4): random and mutated request lines.

Lines go into ``ClientFactory``'s protocol over a StringTransport, split into chunks at
random points (so CR and LF may arrive in separate writes), in front of a fake replica
and of a real one (a coordinator with a SQLite store on a MemoryReactorClock).  For
every input:

- nothing escapes ``dataReceived`` and nothing is logged as a failure;
- every complete line gets exactly one reply, in order: a line that ``wire`` refuses
  gets ``ERR`` with that code, an over-long line gets ``ERR LINETOOLONG`` and a close;
  only ``QUIT`` and an over-long line close the connection;
- the store holds exactly what it held before, except keys that a *valid* write in the
  input named;
- afterwards a fresh connection still writes and reads.

The mutation strategies here are shared with the peer fuzzing and the live test.
Example counts stay modest (the whole file runs in a few seconds); for a long run set
``REPLICAD_FUZZ_EXAMPLES`` (e.g. 5000) for this file and tests/test_fuzz_peer.py.
"""

from __future__ import annotations

import os
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from replicad import wire
from replicad.client_protocol import ClientFactory
from replicad.config import default_config, with_overrides
from replicad.replica import Replica
from replicad.vclock import VectorClock
from replicad.wire import Limits, Reply, ReplyParser, SessionContext, WireError

MAX_VALUE = 200      # small limits make TOOBIG and LINETOOLONG cheap to reach
LIMITS = Limits(max_value_bytes=MAX_VALUE)

FUZZ = settings(
    max_examples=int(os.environ.get("REPLICAD_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Mutations (shared with test_fuzz_peer and the live test) ------------------------------

HUGE_NUMBERS = [
    b"9" * 19, b"9" * 40, b"9" * 5000, str(2**63).encode(), str(2**64).encode(),
    str(2**48 + 1).encode(), b"-1", b"0", b"00000000000000000007", b"1e9", b"0x10",
    "\u0663".encode(),               # ARABIC-INDIC DIGIT THREE: isdigit(), not ASCII
    "\uff11".encode(),               # FULLWIDTH DIGIT ONE
]
AWKWARD_BYTES = [
    b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
    b"\x00", b"\x7f", b"\x1b[2J", b"\t", b" ", b"  ", b"@", b";", b"=", b":", b",", b"-",
    b".", "\x85".encode(), "\u2028".encode(), "\u00a0".encode(), "\ufeff".encode(),
    "\U0010ffff".encode(), "\u00e9".encode(), b"\x1c",
]
LINE_BREAKS = [b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r\n"]
MUTATIONS = ["flip", "insert", "delete", "number", "awkward", "awkward", "split",
             "duplicate", "truncate", "swap-case", "long"]
# Lengths of the runs a "long" mutation inserts: around the client's value and line
# limits here (MAX_VALUE, LIMITS.max_line_bytes) and the peer's 1 KiB handshake limit.
LONG_RUNS = (199, 201, 1000, 1030, 4400, 4500)
_DIGITS = re.compile(rb"[0-9]+")


def mutated(lines: st.SearchStrategy[bytes], max_mutations: int = 4,
            long_runs: tuple[int, ...] = LONG_RUNS) -> st.SearchStrategy[bytes]:
    """Valid lines with 1..max_mutations byte-level mutations (``mutate_bytes``, driven
    by a Random that hypothesis draws, so failures replay and shrink)."""
    return st.builds(lambda rng, line: mutate_bytes(rng, line, max_mutations, long_runs),
                     st.randoms(use_true_random=False), lines)


def mutate_bytes(rng: random.Random, data: bytes, max_mutations: int = 4,
                 long_runs: tuple[int, ...] = LONG_RUNS) -> bytes:
    """The mutations of ``mutated``, driven by a seeded Random: for inputs that exist
    only at run time (a handshake's nonce) or are sent to a live cluster."""
    out = bytearray(data)
    for _ in range(rng.randint(1, max_mutations)):
        kind = rng.choice(MUTATIONS)
        pos = rng.randint(0, len(out))
        if kind == "flip" and out:          # one bit: only the top one breaks ASCII
            out[min(pos, len(out) - 1)] ^= 1 << rng.randint(0, 7)
        elif kind == "insert" and rng.random() < 0.5:
            out[pos:pos] = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 8)))
        elif kind == "insert":
            text = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FFF)]))
                           for _ in range(rng.randint(1, 4)))
            out[pos:pos] = text.encode("utf-8", "replace")
        elif kind == "delete":
            del out[pos:pos + rng.randint(1, 12)]
        elif kind == "number":
            runs = list(_DIGITS.finditer(bytes(out)))
            huge = rng.choice(HUGE_NUMBERS)
            if runs:
                run = rng.choice(runs)
                out[run.start():run.end()] = huge
            else:
                out[pos:pos] = huge
        elif kind == "awkward":
            out[pos:pos] = rng.choice(AWKWARD_BYTES)
        elif kind == "split":
            out[pos:pos] = rng.choice(LINE_BREAKS)
        elif kind == "duplicate":
            out[pos:pos] = out[pos:pos + rng.randint(0, 40)]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "swap-case":
            out[:] = bytes(out).swapcase()
        elif kind == "long":
            out[pos:pos] = rng.choice([b"x", b"9", b" ", b"\xc3\xa9"]) * rng.choice(long_runs)
    return bytes(out)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """data split at the given offsets (taken modulo its length): CR and LF may land in
    different writes, as they do on a real socket."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


CUTS = st.lists(st.integers(0, 10_000), max_size=6)


def failures(events) -> list[str]:
    """Logged failures: tracebacks (log.failure, Unhandled Error) and errors."""
    return [
        formatEvent(e) + ("\n" + e["log_failure"].getTraceback() if "log_failure" in e else "")
        for e in events
        if "log_failure" in e or e.get("isError")
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


# Valid lines ----------------------------------------------------------------------------

KEY_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                          blacklist_characters="\x85\u180e\u200b\ufeff")
FUZZ_KEYS = st.one_of(
    st.sampled_from(["k", "key-1", "a/b", "END", "\u00e9t\u00e9", "x" * 256]),
    st.text(KEY_CHARS, min_size=1, max_size=12).filter(lambda k: not any(c.isspace() for c in k)),
)
VALUES = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
CLOCKS = st.dictionaries(st.integers(1, 3), st.integers(0, 3), max_size=3).map(VectorClock)
REQUEST_IDS = st.builds(lambda c, n: f"{c:08x}.{n}", st.integers(0, 2**32 - 1),
                        st.integers(1, 10**6))
CONTEXTS = st.builds(SessionContext, CLOCKS, CLOCKS, st.none() | st.integers(1, 3),
                     st.none() | REQUEST_IDS)


@st.composite
def client_lines(draw) -> bytes:
    command = draw(st.sampled_from(["PUT", "GET", "DEL", "KEYS", "STATUS", "PING", "HELP"]))
    key = draw(FUZZ_KEYS)
    if command == "PUT":
        request = wire.Request("PUT", key, draw(VALUES))
    elif command in ("GET", "DEL"):
        request = wire.Request(command, key)
    elif command == "KEYS":
        request = wire.Request("KEYS", draw(st.none() | st.just(key[:3])))
    else:
        request = wire.Request(command)
    if draw(st.booleans()):
        request = request.with_context(draw(CONTEXTS))
    line = request.encode()
    if draw(st.booleans()):
        line = line.lower() if draw(st.booleans()) else line
    return line.encode("utf-8")


GOOD_LINES = client_lines()
BAD_LINES = mutated(GOOD_LINES)
RANDOM_LINES = st.binary(max_size=300)
ANY_INPUT = st.lists(st.one_of(BAD_LINES, BAD_LINES, BAD_LINES, GOOD_LINES, RANDOM_LINES),
                     min_size=1, max_size=6)


# The oracle -----------------------------------------------------------------------------


def expected_outcomes(data: bytes, limits: Limits):
    """What the protocol must do with each complete line of data, up to a close:
    ("err", code), ("serve", request), ("close", code) or ("close", "BYE")."""
    max_line = limits.max_line_bytes
    outcomes = []
    for fragment in data.split(b"\n")[:-1]:
        if len(fragment) > max_line:
            outcomes.append(("close", "LINETOOLONG"))
            return outcomes
        try:
            request = wire.parse_request(wire.decode_line(fragment), limits)
        except WireError as e:
            outcomes.append(("err", e.code))
            continue
        if request is None:
            continue
        if request.command == "QUIT":
            outcomes.append(("close", "BYE"))
            return outcomes
        outcomes.append(("serve", request))
    if len(data.rpartition(b"\n")[2]) > max_line:   # an unterminated over-long tail
        outcomes.append(("close", "LINETOOLONG"))
    return outcomes


def written_replies(transport) -> list[Reply]:
    data = transport.value().decode("utf-8")
    transport.clear()
    assert data == "" or data.endswith("\r\n"), data[-200:]
    parser, out = ReplyParser(), []
    for line in data.split("\r\n")[:-1]:
        reply = parser.feed(line)
        if reply is not None:
            out.append(reply)
    assert parser.idle
    return out


def check_replies(outcomes, replies: list[Reply], transport) -> None:
    assert len(replies) == len(outcomes), (outcomes, replies)
    for (kind, what), reply in zip(outcomes, replies, strict=True):
        if kind == "err":
            assert reply.error_code == what, (what, reply)
        elif kind == "close":
            assert reply.status == "BYE" if what == "BYE" else reply.error_code == what
        else:
            assert reply.error_code != "INTERNAL", reply
    closing = bool(outcomes) and outcomes[-1][0] == "close"
    assert bool(transport.disconnecting) == closing


def connect(factory: ClientFactory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


# A fake replica: answers at once, remembers what reached it -----------------------------


class EchoHandler:
    def __init__(self, clock):
        self.handled = []
        self.clock = clock

    def client_connected(self):
        pass

    def status(self, request):
        return Reply("STATUS", lines=wire.status_lines({"role": "coordinator"}))

    def answer_now(self, request):
        """The fast path (no Deferred, reading not paused): GETs of even-length keys."""
        if request.command == "GET" and len(request.key) % 2 == 0:
            self.handled.append(request)
            return Reply("VALUE", request.key)
        return None

    def stopping_reply(self, request):
        return None

    def answer_confirmed(self, request, deliver):
        """A follower's confirmed read (answered later, by callback): GETs of keys whose
        length is 3 modulo 4, answered on the clock's next turn."""
        if request.command == "GET" and len(request.key) % 4 == 3:
            self.handled.append(request)
            self.clock.callLater(0, deliver, Reply("VALUE", request.key))
            return True
        return False

    def handle(self, request, placed=None):
        self.handled.append(request)
        if request.command == "GET":
            return defer.succeed(Reply("VALUE", request.key))
        if request.command == "KEYS":
            return defer.succeed(Reply("KEYS", lines=(request.key or "",)))
        return defer.succeed(Reply("OK"))


def fake_factory():
    config = with_overrides(default_config(), limits=LIMITS)
    clock = MemoryReactorClock()
    return ClientFactory(EchoHandler(clock), config, clock)


def run_turns(factory: ClientFactory, turns: int) -> None:
    """Run the turns in which confirmed reads are answered (each may let the next
    line be read and taken)."""
    for _ in range(turns):
        factory.clock.advance(0)


@FUZZ
@given(lines=ANY_INPUT, cuts=CUTS, crlf=st.booleans())
def test_every_line_gets_one_reply_or_a_clean_close(lines, cuts, crlf):
    factory = fake_factory()
    proto, transport = connect(factory)
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    outcomes = expected_outcomes(data, LIMITS)
    with capturedLogs() as events:
        for chunk in chunked(data, cuts):
            proto.dataReceived(chunk)
            run_turns(factory, len(lines) + 1)
    assert failures(events) == []
    check_replies(outcomes, written_replies(transport), transport)
    served = [what for kind, what in outcomes if kind == "serve"
              and what.command not in wire.LOCAL_COMMANDS]
    assert factory.handler.handled == served          # bad lines never reach the replica
    if not transport.disconnecting:
        proto.dataReceived(b"GET still-here\r\n")
        assert written_replies(transport) == [Reply("VALUE", "still-here")]


@FUZZ
@given(data=st.binary(max_size=600), cuts=CUTS)
def test_random_bytes_never_escape(data, cuts):
    factory = fake_factory()
    proto, transport = connect(factory)
    data += b"\n"
    with capturedLogs() as events:
        for chunk in chunked(data, cuts):
            proto.dataReceived(chunk)
            run_turns(factory, data.count(b"\n") + 1)
    assert failures(events) == []
    check_replies(expected_outcomes(data, LIMITS), written_replies(transport), transport)


@pytest.mark.parametrize("line", [
    b"PUT k " + b"v" * (MAX_VALUE + 1),                 # TOOBIG
    b"PUT " + b"k" * 300 + b" v",                       # BADKEY
    b"GET " + b"x" * (LIMITS.max_line_bytes + 1),       # LINETOOLONG, closed
    b"@r=1:" + b"9" * 40 + b" GET k",                   # BADCONTEXT
    b"@id=" + b"a" * 60 + b".1 PUT k v",                # BADCONTEXT
    b"GET \xff",                                        # BADENCODING
    b"\xef\xbb\xbfGET k",                               # a BOM: BADCMD
    b"GET k\rGET j",                                    # CR inside a line: BADARGS
])
def test_hand_picked_bad_lines(line):
    factory = fake_factory()
    proto, transport = connect(factory)
    data = line + b"\r\n"
    proto.dataReceived(data)
    check_replies(expected_outcomes(data, LIMITS), written_replies(transport), transport)
    assert factory.handler.handled == []


# A real replica: a coordinator with a SQLite store ---------------------------------------


def snapshot(store) -> tuple:
    clock, records = store.export_full()
    return clock, {r.key: r for r in records}


def settle(proto, reactor, limit_s: float = 30.0) -> None:
    """Run simulated time until the protocol stops waiting for a reply (a request with
    an unmet session context waits fetch_timeout for a catch-up, then ERR STALE)."""
    waited = 0.0
    reactor.advance(0)
    while proto.paused and waited < limit_s:
        reactor.advance(0.1)
        waited += 0.1
    assert not proto.paused, "a request got no reply within 30 simulated seconds"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """Replica 2 of the built-in cluster, serving as coordinator (replica 3 never
    answers), with a few keys written through the protocol."""
    reactor = MemoryReactorClock()
    config = with_overrides(default_config(), limits=LIMITS)
    replica = Replica(config, 2, str(tmp_path_factory.mktemp("fuzz") / "data"), reactor,
                      new_cluster=True)
    replica.startService()
    # Durability is not under test here, and an fsync per write would be most of the run.
    replica.store._db.execute("PRAGMA synchronous=OFF")
    for _ in range(4):
        reactor.advance(config.timers.answer_timeout)
    assert replica.node.serving_as == 2
    factory = ClientFactory(replica, config, reactor)
    proto, transport = connect(factory)
    for line in [b"PUT k v0", b"PUT END end", b"PUT a/b 1 2 3", b"PUT x v", b"DEL x"]:
        proto.dataReceived(line + b"\r\n")
        settle(proto, reactor)
    assert [r.status for r in written_replies(transport)] == ["OK"] * 5
    yield replica, factory
    replica.stopService()


def written_keys(outcomes) -> set[str]:
    return {what.key for kind, what in outcomes if kind == "serve" and what.is_write}


@FUZZ
@given(lines=ANY_INPUT, cuts=CUTS)
def test_a_real_replica_keeps_its_data_and_keeps_serving(coordinator, lines, cuts):
    replica, factory = coordinator
    reactor = replica.reactor
    proto, transport = connect(factory)
    data = b"".join(line + b"\r\n" for line in lines)
    outcomes = expected_outcomes(data, LIMITS)
    before = snapshot(replica.store)
    with capturedLogs() as events:
        for chunk in chunked(data, cuts):
            proto.dataReceived(chunk)
            settle(proto, reactor)
    assert failures(events) == []
    check_replies(outcomes, written_replies(transport), transport)
    # Bad lines change nothing; valid writes change only the keys they name.
    clock, records = snapshot(replica.store)
    touched = written_keys(outcomes)
    if not touched:
        assert (clock, records) == before
    for key in set(before[1]) | set(records):
        if key not in touched:
            assert records.get(key) == before[1].get(key), key
    # The replica keeps serving, on a new connection and on this one if it is open.
    for client, client_io in [connect(factory), (proto, transport)]:
        if client_io.disconnecting:
            continue
        client.dataReceived(b"PUT fuzz-check ok\r\nGET fuzz-check\r\nGET k\r\n")
        for _ in range(3):
            settle(client, reactor)
        got = written_replies(client_io)
        k = replica.store.get("k")
        k_reply = Reply("NOTFOUND") if k is None or k.deleted else Reply("VALUE", k.value)
        assert got == [Reply("OK"), Reply("VALUE", "ok"), k_reply], got
        client.connectionLost(None)
