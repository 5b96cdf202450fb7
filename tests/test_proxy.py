"""replicad.testing.proxy: the command parser and cut table (pure), the Pipe on
StringTransports, and the proxy process itself with real loopback sockets.

"Nothing arrives" is shown by a short bounded read that must time out: with holding
disabled the bytes arrive within milliseconds and these tests fail.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.testing import StringTransport

from replicad.config import Address
from replicad.testing import proxy
from replicad.testing.cluster import ProxyCommandError, ProxyProcess
from replicad.testing.proxy import Command, CommandError, Cuts, Pipe, Verb

SILENCE_S = 0.3      # how long "nothing arrives" is watched for
ARRIVAL_S = 5.0      # deadline for what must arrive


# Parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("CUT 1 2", Command(Verb.CUT, ("1", "2"))),
    ("cut 1 2", Command(Verb.CUT, ("1", "2"))),
    ("  CUTONEWAY 3 1 \r", Command(Verb.CUTONEWAY, ("3", "1"))),
    ("HEAL", Command(Verb.HEAL)),
    ("HEAL 2", Command(Verb.HEAL, ("2",))),
    ("HEAL 1 2", Command(Verb.HEAL, ("1", "2"))),
    ("ISOLATE 3", Command(Verb.ISOLATE, ("3",))),
    ("STATUS", Command(Verb.STATUS)),
    ("SLOW 3 250", Command(Verb.SLOW, ("3",), delay_ms=250)),
    ("SLOW 3 0", Command(Verb.SLOW, ("3",), delay_ms=0)),
    ("PARTITION 1,2 3,4,5",
     Command(Verb.PARTITION, groups=(frozenset({"1", "2"}), frozenset({"3", "4", "5"})))),
])
def test_parse_good_commands(line, expected):
    assert proxy.parse_command(line) == expected


@pytest.mark.parametrize("line, message", [
    ("", "empty command"),
    ("   ", "empty command"),
    ("CRASH 1", "unknown command"),
    ("CUT 1", "CUT takes 2 replica names, got 1"),
    ("CUT 1 2 3", "CUT takes 2"),
    ("CUT 1 1", "two different replicas"),
    ("CUTONEWAY 2", "CUTONEWAY takes 2"),
    ("HEAL 1 2 3", "HEAL takes 0 or 1 or 2"),
    ("ISOLATE", "ISOLATE takes 1"),
    ("STATUS 1", "STATUS takes 0"),
    ("PARTITION 1,2", "at least two groups"),
    ("PARTITION 1,2 2,3", "replica 2 is in two groups"),
    ("PARTITION 1, 2", "bad replica name ''"),
    ("CUT 1 x-y", "bad replica name 'x-y'"),
    ("SLOW 3", "SLOW takes a replica name and a delay"),
    ("SLOW 3 -5", "SLOW takes"),
    ("SLOW 3 fast", "SLOW takes"),
    ("SLOW 3 60001", "0 to 60000 ms"),
])
def test_parse_bad_commands(line, message):
    with pytest.raises(CommandError, match=message):
        proxy.parse_command(line)


def test_parse_route():
    route = proxy.parse_route("1-2=0:127.0.0.1:7102")
    assert (route.name, route.listen_port, route.target_host, route.target_port) == \
        ("1-2", 0, "127.0.0.1", 7102)
    assert route.upstream == ("1", "2")     # what replica 1 sends to replica 2
    assert route.downstream == ("2", "1")


@pytest.mark.parametrize("text", [
    "1=0:127.0.0.1:7102", "1-1=0:127.0.0.1:7102", "1-2=0:127.0.0.1", "1-2=70000:h:1",
    "1-2=0:h:0", "1-2:0:h:1",
])
def test_parse_bad_routes(text):
    with pytest.raises(ValueError):
        proxy.parse_route(text)


# The cut table ---------------------------------------------------------------------------


def table(*members: str) -> Cuts:
    return Cuts(members or ("1", "2", "3"))


def run(cuts: Cuts, line: str) -> list[str]:
    return cuts.apply(proxy.parse_command(line))


def test_cut_holds_both_directions_and_only_that_pair():
    cuts = table()
    assert run(cuts, "CUT 1 2") == ["OK"]
    assert cuts.held("1", "2") and cuts.held("2", "1")
    assert not cuts.held("1", "3") and not cuts.held("3", "2")


def test_cut_one_way_holds_one_direction():
    cuts = table()
    run(cuts, "CUTONEWAY 1 2")
    assert cuts.held("1", "2")
    assert not cuts.held("2", "1")


def test_heal_a_pair_a_replica_or_everything():
    cuts = table()
    run(cuts, "CUT 1 2")
    run(cuts, "CUT 1 3")
    run(cuts, "CUTONEWAY 2 3")
    run(cuts, "HEAL 2 1")
    assert cuts.held_pairs() == [("1", "3"), ("2", "3"), ("3", "1")]
    run(cuts, "HEAL 3")
    assert cuts.held_pairs() == []
    run(cuts, "ISOLATE 1")
    run(cuts, "HEAL")
    assert cuts.held_pairs() == []


def test_isolate_cuts_one_replica_from_all_others():
    cuts = table("1", "2", "3", "4")
    run(cuts, "ISOLATE 3")
    assert cuts.held_pairs() == [("1", "3"), ("2", "3"), ("3", "1"), ("3", "2"),
                                 ("3", "4"), ("4", "3")]


def test_partition_cuts_across_groups_only():
    cuts = table("1", "2", "3", "4", "5")
    run(cuts, "PARTITION 1,2 3,4,5")
    for a in "12345":
        for b in "12345":
            across = (a in "12") != (b in "12")
            assert cuts.held(a, b) is across, (a, b)


def test_partition_leaves_replicas_in_no_group_alone():
    cuts = table("1", "2", "3")
    run(cuts, "PARTITION 1 2")
    assert cuts.held_pairs() == [("1", "2"), ("2", "1")]


def test_no_dial_holds_a_route_not_a_direction_and_heals_with_its_replicas():
    cuts = table()
    run(cuts, "NODIAL 3 1")
    assert cuts.route_held("3", "1") and not cuts.route_held("1", "3")
    assert cuts.held_pairs() == []                  # no direction between names is cut
    assert run(cuts, "STATUS") == ["NODIAL 3 1", "END"]
    run(cuts, "HEAL 1 3")
    assert cuts.held_routes() == []
    run(cuts, "NODIAL 3 1")
    run(cuts, "HEAL 2")                             # another replica: still held
    assert cuts.held_routes() == [("3", "1")]
    run(cuts, "HEAL")
    assert cuts.held_routes() == []


def test_status_lists_held_directions_in_numeric_order_then_end():
    cuts = table("2", "10", "3")
    run(cuts, "CUTONEWAY 10 2")
    run(cuts, "CUTONEWAY 3 2")
    assert run(cuts, "STATUS") == ["CUTONEWAY 3 2", "CUTONEWAY 10 2", "END"]


@pytest.mark.parametrize("line", ["CUT 1 9", "ISOLATE 9", "PARTITION 1 2,9", "HEAL 9"])
def test_unknown_replicas_are_refused_and_change_nothing(line):
    cuts = table()
    with pytest.raises(CommandError, match="unknown replica 9 .known: 1 2 3."):
        run(cuts, line)
    assert cuts.held_pairs() == []


# The Pipe, on StringTransports -----------------------------------------------------------


def test_slow_delays_both_ways_between_one_replica_and_the_others_until_healed():
    cuts = table()
    assert run(cuts, "SLOW 2 250") == ["OK"]
    assert cuts.delay_s("2", "1") == cuts.delay_s("3", "2") == 0.25
    assert cuts.delay_s("1", "3") == 0
    assert run(cuts, "STATUS") == ["DELAY 1 2 250", "DELAY 2 1 250", "DELAY 2 3 250",
                                   "DELAY 3 2 250", "END"]
    run(cuts, "HEAL 1 2")
    assert cuts.delay_s("1", "2") == 0 and cuts.delay_s("3", "2") == 0.25
    run(cuts, "SLOW 2 0")
    assert run(cuts, "STATUS") == ["END"]
    run(cuts, "SLOW 1 100")
    run(cuts, "HEAL")
    assert run(cuts, "STATUS") == ["END"]


def pipe_between(cuts: Cuts, clock=None) -> tuple[Pipe, StringTransport, StringTransport]:
    pipe = Pipe("1", "2", cuts.held, cuts.delay_s, clock)
    source, dest = StringTransport(), StringTransport()
    pipe.attach_source(source)
    pipe.attach_dest(dest)
    return pipe, source, dest


def test_pipe_holds_then_delivers_in_order_and_the_end_last():
    cuts = table()
    pipe, _, dest = pipe_between(cuts)
    pipe.receive(b"a")
    cuts.cut("1", "2")
    pipe.receive(b"b")
    pipe.receive(b"c")
    pipe.source_ended(full=True)
    pipe.flush()
    assert dest.value() == b"a"
    assert not dest.disconnecting
    cuts.heal()
    pipe.flush()
    assert dest.value() == b"abc"
    assert dest.disconnecting
    assert dest.producer is None   # unregistered, or the transport would never close


def test_pipe_holds_in_the_cut_direction_only():
    cuts = table()
    cuts.cut_one_way("2", "1")
    pipe, _, dest = pipe_between(cuts)
    pipe.receive(b"x")
    assert dest.value() == b"x"


def test_pipe_pauses_its_source_when_too_much_is_held_or_the_dest_is_full():
    cuts = table()
    cuts.cut("1", "2")
    pipe, source, _ = pipe_between(cuts)
    pipe.receive(b"x" * proxy.HOLD_LIMIT_BYTES)
    assert source.producerState == "producing"
    pipe.receive(b"x")
    assert source.producerState == "paused"
    cuts.heal()
    pipe.flush()
    assert source.producerState == "producing"
    pipe.pauseProducing()   # the destination's buffer is full
    assert source.producerState == "paused"
    pipe.resumeProducing()
    assert source.producerState == "producing"


def test_pipe_delays_each_chunk_keeps_the_order_and_sends_the_end_last():
    from twisted.internet.task import Clock

    clock, cuts = Clock(), table()
    run(cuts, "SLOW 2 200")
    pipe, _, dest = pipe_between(cuts, clock)
    pipe.receive(b"a")
    clock.advance(0.1)
    pipe.receive(b"b")
    run(cuts, "SLOW 2 0")            # no delay for what comes now, but after "b"
    pipe.receive(b"c")
    pipe.source_ended(full=False)
    assert dest.value() == b"" and pipe.queued_bytes == 3
    clock.advance(0.1)
    assert dest.value() == b"a" and not dest.disconnecting
    clock.advance(0.1)
    assert dest.value() == b"abc" and pipe.queued_bytes == 0
    assert dest.disconnecting                        # the end after the last byte
    assert clock.getDelayedCalls() == []


def test_pipe_drops_bytes_towards_a_lost_connection():
    pipe, _, dest = pipe_between(table())
    pipe.dest_lost()
    pipe.receive(b"lost")
    assert dest.value() == b"" and pipe.queued_bytes == 0


# The proxy process, with real sockets ------------------------------------------------------


def recv_exactly(sock: socket.socket, size: int, timeout_s: float = ARRIVAL_S) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes: {data[:40]!r}")
        data += chunk
    return data


def assert_silent(sock: socket.socket, wait_s: float = SILENCE_S) -> None:
    """Nothing arrives within wait_s: neither bytes nor EOF."""
    sock.settimeout(wait_s)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return
    raise AssertionError(f"expected silence, got {data!r}" if data else "expected silence, got EOF")


def assert_eof(sock: socket.socket, timeout_s: float = ARRIVAL_S) -> None:
    sock.settimeout(timeout_s)
    assert sock.recv(4096) == b""


class Harness:
    """A proxy with routes 1-2 and 2-1 whose targets are listening sockets of the test."""

    def __init__(self, work_dir: str):
        self.listeners: dict[str, socket.socket] = {}
        for name in ("1-2", "2-1"):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            self.listeners[name] = listener
        self.process = ProxyProcess(
            {name: Address("127.0.0.1", s.getsockname()[1]) for name, s in self.listeners.items()},
            work_dir,
        )
        self.sockets: list[socket.socket] = []

    def dial(self, route: str) -> socket.socket:
        """Connect to the proxy's port for route (what the dialing replica does)."""
        sock = socket.create_connection(("127.0.0.1", self.process.route_ports[route]),
                                        timeout=ARRIVAL_S)
        self.sockets.append(sock)
        return sock

    def accept(self, route: str, timeout_s: float = ARRIVAL_S) -> socket.socket:
        """The upstream end of the next proxied connection on route (the target replica)."""
        self.listeners[route].settimeout(timeout_s)
        sock, _ = self.listeners[route].accept()
        self.sockets.append(sock)
        return sock

    def connect(self, route: str) -> tuple[socket.socket, socket.socket]:
        client = self.dial(route)
        return client, self.accept(route)

    def command(self, line: str) -> list[str]:
        return self.process.command(line)

    def close(self) -> None:
        for sock in self.sockets + list(self.listeners.values()):
            sock.close()
        self.process.stop()


@pytest.fixture
def harness(tmp_path):
    harness = Harness(str(tmp_path))
    try:
        harness.process.start()
        yield harness
    finally:
        harness.close()


def test_bytes_flow_both_ways(harness):
    client, server = harness.connect("1-2")
    client.sendall(b"ping\n")
    assert recv_exactly(server, 5) == b"ping\n"
    server.sendall(b"pong\n")
    assert recv_exactly(client, 5) == b"pong\n"


def test_cut_holds_both_directions_of_both_routes_without_closing_then_heal_delivers(harness):
    one_dials, two_accepts = harness.connect("1-2")
    two_dials, one_accepts = harness.connect("2-1")
    assert harness.command("CUT 1 2") == []
    # Every direction, in several writes: each must arrive whole and in order after HEAL.
    ends = [(one_dials, two_accepts), (two_accepts, one_dials),
            (two_dials, one_accepts), (one_accepts, two_dials)]
    for n, (sender, _) in enumerate(ends):
        for part in (b"first-", b"second-", b"third"):
            sender.sendall(b"%d:" % n + part)
    for _, receiver in ends:
        assert_silent(receiver)
    assert harness.command("STATUS") == ["CUTONEWAY 1 2", "CUTONEWAY 2 1"]
    assert harness.command("HEAL 1 2") == []
    for n, (_, receiver) in enumerate(ends):
        expected = b"%d:first-%d:second-%d:third" % (n, n, n)
        assert recv_exactly(receiver, len(expected)) == expected
    # And the connections still work.
    one_dials.sendall(b"after")
    assert recv_exactly(two_accepts, 5) == b"after"


def test_slow_delays_the_bytes_both_ways_without_holding_them(harness):
    client, server = harness.connect("1-2")
    assert harness.command("SLOW 2 400") == []
    assert harness.command("STATUS") == ["DELAY 1 2 400", "DELAY 2 1 400"]
    client.sendall(b"late")
    server.sendall(b"also")
    assert_silent(server, 0.2)                  # not yet: due 0.4 s after it was sent
    assert recv_exactly(server, 4) == b"late"   # then delivered, nothing held
    assert recv_exactly(client, 4) == b"also"
    harness.command("HEAL 2")
    client.sendall(b"now")
    assert recv_exactly(server, 3) == b"now"


def test_cut_one_way_holds_only_bytes_from_src_to_dst(harness):
    one_dials, two_accepts = harness.connect("1-2")
    two_dials, one_accepts = harness.connect("2-1")
    harness.command("CUTONEWAY 1 2")
    one_dials.sendall(b"1>2 request")    # held: client->server on route 1-2
    one_accepts.sendall(b"1>2 answer")   # held: server->client on route 2-1
    two_accepts.sendall(b"2>1 answer")   # flows
    two_dials.sendall(b"2>1 request")    # flows
    assert recv_exactly(one_dials, 10) == b"2>1 answer"
    assert recv_exactly(one_accepts, 11) == b"2>1 request"
    assert_silent(two_accepts)
    assert_silent(two_dials)
    harness.command("HEAL")
    assert recv_exactly(two_accepts, 11) == b"1>2 request"
    assert recv_exactly(two_dials, 10) == b"1>2 answer"


def test_no_dial_holds_one_route_both_ways_and_leaves_the_other(harness):
    """One-way reachability: 1 cannot reach 2's peer port, 2 still reaches 1's."""
    one_dials, two_accepts = harness.connect("1-2")
    two_dials, one_accepts = harness.connect("2-1")
    assert harness.command("NODIAL 1 2") == []
    one_dials.sendall(b"1>2 request")    # held: route 1-2
    two_accepts.sendall(b"2>1 answer")   # held: route 1-2 as well
    two_dials.sendall(b"2>1 request")    # route 2-1 flows both ways
    one_accepts.sendall(b"1>2 answer")
    assert recv_exactly(one_accepts, 11) == b"2>1 request"
    assert recv_exactly(two_dials, 10) == b"1>2 answer"
    assert_silent(two_accepts)
    assert_silent(one_dials)
    with pytest.raises(TimeoutError):   # a new dial on the route waits for the heal
        harness.dial("1-2")
        harness.accept("1-2", timeout_s=SILENCE_S)
    assert harness.command("STATUS") == ["NODIAL 1 2"]
    harness.command("HEAL 2")
    assert recv_exactly(two_accepts, 11) == b"1>2 request"
    assert recv_exactly(one_dials, 10) == b"2>1 answer"


def test_a_new_connection_during_a_cut_is_dialled_only_after_heal(harness):
    harness.command("CUTONEWAY 2 1")   # even one way: the SYN-ACK would not come back
    client = harness.dial("1-2")       # accepted by the proxy...
    client.sendall(b"hello")
    with pytest.raises(TimeoutError):
        harness.accept("1-2", timeout_s=SILENCE_S)   # ...but not dialled upstream
    assert_silent(client)
    harness.command("HEAL")
    server = harness.accept("1-2")
    assert recv_exactly(server, 5) == b"hello"
    server.sendall(b"world")
    assert recv_exactly(client, 5) == b"world"


def test_a_close_during_a_cut_is_held_like_a_byte(harness):
    client, server = harness.connect("1-2")
    harness.command("CUT 1 2")
    client.sendall(b"bye")
    client.close()
    assert_silent(server)   # neither the bytes nor the EOF
    harness.command("HEAL")
    assert recv_exactly(server, 3) == b"bye"
    assert_eof(server)


def test_a_megabyte_held_arrives_whole_and_in_order(harness):
    client, server = harness.connect("1-2")
    harness.command("CUT 1 2")
    payload = bytes(i % 251 for i in range(1 << 20))
    client.sendall(payload)   # fits in the proxy's buffer and the socket buffers
    assert_silent(server)
    harness.command("HEAL")
    assert recv_exactly(server, len(payload)) == payload


def test_an_unreachable_target_closes_the_accepted_connection(harness):
    harness.listeners["1-2"].close()   # replica 2 is down
    client = harness.dial("1-2")
    assert_eof(client)


@pytest.mark.parametrize("line, error", [
    ("", "ERR empty command"),
    ("FREEZE 1", "ERR unknown command 'FREEZE'"),
    ("CUT 1", "ERR CUT takes 2 replica names, got 1"),
    ("CUT 1 7", "ERR unknown replica 7 (known: 1 2)"),
])
def test_bad_commands_get_err_and_change_nothing(harness, line, error):
    with pytest.raises(ProxyCommandError) as raised:
        harness.command(line)
    assert str(raised.value).endswith(error) or error in str(raised.value)
    assert harness.command("STATUS") == []


def test_one_control_connection_answers_each_line_in_turn(harness):
    with socket.create_connection(("127.0.0.1", harness.process.control_port),
                                  timeout=ARRIVAL_S) as control:
        control.sendall(b"CUT 1 2\nBOGUS\nSTATUS\nHEAL\r\nSTATUS\n")
        expected = (b"OK\nERR unknown command 'BOGUS' (known: CUT CUTONEWAY NODIAL HEAL "
                    b"ISOLATE PARTITION SLOW STATUS)\nCUTONEWAY 1 2\nCUTONEWAY 2 1\nEND\nOK\nEND\n")
        assert recv_exactly(control, len(expected)) == expected
