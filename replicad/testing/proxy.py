"""A TCP proxy between replicas that can hold their bytes: partitions without crashes.

Killing a replica tests failover; it does not test a replica that is alive, believes it
is the coordinator, and cannot be reached.  This proxy sits on every peer connection
(route ``A-B`` is the connection replica A dials to replica B's peer port) and can
*hold* the bytes flowing from one replica to another.  Holding is a partition, not a
crash:

- nothing is closed and nothing is dropped: held bytes are buffered and delivered in
  order when the cut heals, as TCP retransmits after a partition heals;
- an end of stream (FIN) is held like a byte, so a replica that closes a connection
  during a cut is seen to close only after the heal;
- a connection accepted on a route while either of its directions is held is not
  dialled upstream until the heal (its SYN never arrives); what it sends is held too;
- bytes sent towards a connection that is already gone are dropped (a real peer would
  answer them with a reset).

Directions are between replica names, not connections: ``CUT A B`` holds A->B and
B->A on both routes A-B and B-A; ``CUTONEWAY A B`` holds A->B only, which is the
client->server direction of route A-B and the server->client direction of route B-A.
``NODIAL A B`` holds both directions of route A-B only: A cannot reach B's peer port
while B still reaches A's (one-way reachability, as when B's peer port is flooded or a
firewall drops A's SYNs), which no cut between names can express.

``SLOW A MS`` delays every byte between A and the others, both ways, by MS milliseconds
(a congested or distant link: nothing held, nothing reordered; ``SLOW A 0`` or a HEAL
involving A ends it).  Bytes already on their way keep the time they were due.

Control protocol, one line per command on the control port, answered only once the
change is in effect::

    CUT A B            hold both directions between A and B
    CUTONEWAY A B      hold A->B only
    NODIAL A B         hold both directions of route A-B (A's dials to B) only
    SLOW A MS          delay the bytes between A and every other replica by MS ms
    HEAL [A [B]]       release A<->B; with one name every cut and delay involving A;
                       with none all
    ISOLATE A          cut A from every other replica named in the routes
    PARTITION 1,2 3,4  cut every pair across groups (additive: HEAL first to replace)
    STATUS             one "CUTONEWAY SRC DST" line per held direction, one "NODIAL
                       A B" line per held route, one "DELAY SRC DST MS" line per
                       delayed direction, then END

Each answer is ``OK`` or ``ERR <message>`` (STATUS ends with ``END`` instead of OK).
Run it as ``python -m replicad.testing.proxy --control PORT --route 1-2=LISTEN:HOST:PORT
...`` (port 0: any free port; ``--ready-file`` then says which).  The command parser
and the cut table are pure; the protocols only move bytes.
"""

from __future__ import annotations

import argparse
import collections
import enum
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 5
# Above this many held bytes in one direction the proxy stops reading that side, so a
# long cut under load fills the sender's TCP window instead of the proxy's memory.
HOLD_LIMIT_BYTES = 4 * 1024 * 1024
MAX_CONTROL_LINE_BYTES = 4096
MAX_DELAY_MS = 60_000

_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


# Pure logic ----------------------------------------------------------------------------


class CommandError(ValueError):
    """A control line that cannot be obeyed; the message becomes ``ERR <message>``."""


class Verb(enum.Enum):
    CUT = "CUT"
    CUTONEWAY = "CUTONEWAY"
    NODIAL = "NODIAL"
    HEAL = "HEAL"
    ISOLATE = "ISOLATE"
    PARTITION = "PARTITION"
    SLOW = "SLOW"
    STATUS = "STATUS"


@dataclass(frozen=True)
class Command:
    verb: Verb
    names: tuple[str, ...] = ()
    groups: tuple[frozenset[str], ...] = ()   # PARTITION only
    delay_ms: int = 0                         # SLOW only


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CommandError(f"bad replica name {name[:40]!r}")
    return name


def parse_command(line: str) -> Command:
    """One control line -> Command; CommandError says what is wrong with it."""
    words = line.split()
    if not words:
        raise CommandError("empty command")
    try:
        verb = Verb(words[0].upper())
    except ValueError:
        known = " ".join(v.value for v in Verb)
        raise CommandError(f"unknown command {words[0][:40]!r} (known: {known})") from None
    args = words[1:]
    if verb is Verb.PARTITION:
        if len(args) < 2:
            raise CommandError("PARTITION needs at least two groups, such as 1,2 3")
        groups = []
        seen: set[str] = set()
        for arg in args:
            group = frozenset(_check_name(n) for n in arg.split(","))
            if group & seen:
                raise CommandError(f"replica {sorted(group & seen)[0]} is in two groups")
            seen |= group
            groups.append(group)
        return Command(verb, groups=tuple(groups))
    if verb is Verb.SLOW:
        if len(args) != 2 or not args[1].isdigit() or int(args[1]) > MAX_DELAY_MS:
            raise CommandError(f"SLOW takes a replica name and a delay of 0 to "
                               f"{MAX_DELAY_MS} ms, such as SLOW 3 250")
        return Command(verb, (_check_name(args[0]),), delay_ms=int(args[1]))
    arity = {Verb.CUT: (2,), Verb.CUTONEWAY: (2,), Verb.NODIAL: (2,), Verb.HEAL: (0, 1, 2),
             Verb.ISOLATE: (1,), Verb.STATUS: (0,)}[verb]
    if len(args) not in arity:
        wanted = " or ".join(map(str, arity))
        raise CommandError(f"{verb.value} takes {wanted} replica names, got {len(args)}")
    names = tuple(_check_name(n) for n in args)
    if len(names) == 2 and names[0] == names[1]:
        raise CommandError(f"{verb.value} needs two different replicas, got {names[0]} twice")
    return Command(verb, names)


def _name_key(name: str) -> tuple[int, int, str]:
    """Numeric names in numeric order (2 before 10), then the others."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _in_name_order(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(pairs, key=lambda p: (_name_key(p[0]), _name_key(p[1])))


class Cuts:
    """Which directions (src, dst) between replicas, and which routes (dialer,
    listener), have their bytes held.  Pure."""

    def __init__(self, members: Iterable[str]):
        self.members = frozenset(members)
        self._held: set[tuple[str, str]] = set()
        self._routes: set[tuple[str, str]] = set()
        self._delays: dict[tuple[str, str], int] = {}   # (src, dst) -> milliseconds

    def held(self, src: str, dst: str) -> bool:
        return (src, dst) in self._held

    def route_held(self, dialer: str, listener: str) -> bool:
        return (dialer, listener) in self._routes

    def delay_s(self, src: str, dst: str) -> float:
        """How long the bytes from src to dst are delayed, in seconds."""
        return self._delays.get((src, dst), 0) / 1000

    def slow(self, a: str, delay_ms: int) -> None:
        for other in self.members - {a}:
            for pair in ((a, other), (other, a)):
                if delay_ms:
                    self._delays[pair] = delay_ms
                else:
                    self._delays.pop(pair, None)

    def no_dial(self, dialer: str, listener: str) -> None:
        self._routes.add((dialer, listener))

    def cut(self, a: str, b: str) -> None:
        self._held |= {(a, b), (b, a)}

    def cut_one_way(self, src: str, dst: str) -> None:
        self._held.add((src, dst))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Release a<->b; with only a, everything involving a; with neither, everything."""
        if a is None:
            self._held.clear()
            self._routes.clear()
            self._delays.clear()
        elif b is None:
            self._held = {pair for pair in self._held if a not in pair}
            self._routes = {pair for pair in self._routes if a not in pair}
            self._delays = {pair: ms for pair, ms in self._delays.items() if a not in pair}
        else:
            self._held -= {(a, b), (b, a)}
            self._routes -= {(a, b), (b, a)}
            for pair in ((a, b), (b, a)):
                self._delays.pop(pair, None)

    def isolate(self, a: str) -> None:
        for other in self.members - {a}:
            self.cut(a, other)

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        sets = [set(g) for g in groups]
        for index, group in enumerate(sets):
            for other in sets[index + 1:]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def held_pairs(self) -> list[tuple[str, str]]:
        return _in_name_order(self._held)

    def held_routes(self) -> list[tuple[str, str]]:
        return _in_name_order(self._routes)

    def delayed(self) -> list[tuple[str, str, int]]:
        return [(src, dst, self._delays[(src, dst)])
                for src, dst in _in_name_order(self._delays)]

    def apply(self, command: Command) -> list[str]:
        """Carry out a parsed command; return its answer lines (CommandError if unknown names)."""
        names = set(command.names).union(*command.groups)
        unknown = names - self.members
        if unknown:
            known = " ".join(sorted(self.members, key=_name_key))
            raise CommandError(f"unknown replica {sorted(unknown, key=_name_key)[0]} "
                               f"(known: {known})")
        verb = command.verb
        if verb is Verb.STATUS:
            return ([f"CUTONEWAY {src} {dst}" for src, dst in self.held_pairs()]
                    + [f"NODIAL {a} {b}" for a, b in self.held_routes()]
                    + [f"DELAY {src} {dst} {ms}" for src, dst, ms in self.delayed()]
                    + ["END"])
        if verb is Verb.CUT:
            self.cut(*command.names)
        elif verb is Verb.CUTONEWAY:
            self.cut_one_way(*command.names)
        elif verb is Verb.NODIAL:
            self.no_dial(*command.names)
        elif verb is Verb.HEAL:
            self.heal(*command.names)
        elif verb is Verb.ISOLATE:
            self.isolate(command.names[0])
        elif verb is Verb.PARTITION:
            self.partition(command.groups)
        elif verb is Verb.SLOW:
            self.slow(command.names[0], command.delay_ms)
        return ["OK"]


@dataclass(frozen=True)
class Route:
    """Connections that replica ``dialer`` makes to replica ``listener``'s peer port."""

    dialer: str
    listener: str
    listen_port: int
    target_host: str
    target_port: int

    @property
    def name(self) -> str:
        return f"{self.dialer}-{self.listener}"

    @property
    def upstream(self) -> tuple[str, str]:
        """(src, dst) of the bytes the dialer sends (client -> server)."""
        return (self.dialer, self.listener)

    @property
    def downstream(self) -> tuple[str, str]:
        return (self.listener, self.dialer)


_ROUTE = re.compile(r"^(?P<a>[A-Za-z0-9_.]+)-(?P<b>[A-Za-z0-9_.]+)="
                    r"(?P<listen>\d{1,5}):(?P<host>[^\s:]+):(?P<port>\d{1,5})$")


def parse_route(text: str) -> Route:
    """``A-B=LISTEN_PORT:TARGET_HOST:TARGET_PORT`` -> Route; ValueError if malformed."""
    match = _ROUTE.match(text.strip())
    if match is None:
        raise ValueError(f"route {text!r} is not NAME-NAME=LISTEN_PORT:HOST:PORT")
    if match["a"] == match["b"]:
        raise ValueError(f"route {text!r} goes from a replica to itself")
    listen, port = int(match["listen"]), int(match["port"])
    if not 0 <= listen <= 65535 or not 1 <= port <= 65535:
        raise ValueError(f"route {text!r} has a port outside 0-65535")
    return Route(match["a"], match["b"], listen, match["host"], port)


def members_of(routes: Iterable[Route]) -> set[str]:
    return {name for route in routes for name in (route.dialer, route.listener)}


# Moving bytes -------------------------------------------------------------------------


@implementer(IPushProducer)
class Pipe:
    """The bytes flowing one way (src -> dst) through one proxied connection.

    Invariant: bytes leave in the order they came, so while anything is queued new
    bytes queue behind it, held or not, and a chunk is never due before the one ahead
    of it (a delay that shrinks does not reorder).  As the producer registered on the
    destination transport it pauses the source when the destination cannot keep up.
    """

    def __init__(self, src: str, dst: str, is_held: Callable[[str, str], bool],
                 delay_of: Callable[[str, str], float] | None = None, clock=None):
        self.src, self.dst = src, dst
        self._is_held = is_held
        self._delay_of = delay_of
        self._clock = clock                   # for delays (IReactorTime)
        self._chunks: collections.deque[tuple[float, bytes]] = collections.deque()
        self._due_call = None                 # the flush of the next delayed chunk
        self.queued_bytes = 0
        self._source = None            # the transport we read from (to pause it)
        self._dest = None              # the transport we write to, once connected
        self._dest_gone = False
        self._end: str | None = None   # the source ended: "half" (FIN) or "full"
        self._end_sent: str | None = None
        self._dest_full = False
        self._source_paused = False

    @property
    def held(self) -> bool:
        return self._is_held(self.src, self.dst)

    def attach_source(self, transport) -> None:
        self._source = transport

    def attach_dest(self, transport) -> None:
        self._dest = transport
        transport.registerProducer(self, True)
        self.flush()

    def receive(self, data: bytes) -> None:
        if self._dest_gone:
            return   # towards a closed connection: a real peer would reset it
        due = 0.0
        delay = self._delay_of(self.src, self.dst) if self._delay_of is not None else 0.0
        if delay > 0 and self._clock is not None:
            due = self._clock.seconds() + delay
        if self._chunks:
            due = max(due, self._chunks[-1][0])
        self._chunks.append((due, data))
        self.queued_bytes += len(data)
        self.flush()

    def source_ended(self, full: bool) -> None:
        """The source sent FIN (full=False) or its connection is gone (full=True)."""
        if full:
            self._source = None
        if self._end != "full":
            self._end = "full" if full else "half"
        self.flush()

    def dest_lost(self) -> None:
        self._dest = None
        self._dest_gone = True
        self._chunks.clear()
        self.queued_bytes = 0
        if self._due_call is not None and self._due_call.active():
            self._due_call.cancel()
        self._dest_full = False
        self._throttle()

    def flush(self) -> None:
        """Deliver what is queued and due unless this direction is held or not yet
        connected; the end of the stream follows the last byte."""
        dest = self._dest
        if dest is not None and not self.held:
            now = self._clock.seconds() if self._clock is not None else 0.0
            chunks = self._chunks
            while chunks and chunks[0][0] <= now:
                data = chunks.popleft()[1]
                self.queued_bytes -= len(data)
                dest.write(data)
            if chunks:
                if self._due_call is None or not self._due_call.active():
                    self._due_call = self._clock.callLater(chunks[0][0] - now, self.flush)
            elif self._end is not None and self._end != self._end_sent:
                self._end_sent = self._end
                # A registered producer would keep the transport from closing.
                dest.unregisterProducer()
                if self._end == "half" and hasattr(dest, "loseWriteConnection"):
                    dest.loseWriteConnection()
                else:
                    dest.loseConnection()
        self._throttle()

    def _throttle(self) -> None:
        source = self._source
        if source is None:
            return
        pause = self._dest_full or self.queued_bytes > HOLD_LIMIT_BYTES
        if pause and not self._source_paused:
            self._source_paused = True
            source.pauseProducing()
        elif not pause and self._source_paused:
            self._source_paused = False
            source.resumeProducing()

    # IPushProducer, called by the destination transport.
    def pauseProducing(self) -> None:
        self._dest_full = True
        self._throttle()

    def resumeProducing(self) -> None:
        self._dest_full = False
        self._throttle()

    def stopProducing(self) -> None:
        pass   # the destination's connectionLost tells us through dest_lost()


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One of the two TCP connections of a proxied pair: the accepted or the dialled one."""

    def __init__(self, outgoing: Pipe, incoming: Pipe, on_made: Callable[[], None],
                 on_lost: Callable[[], None]):
        self.outgoing, self.incoming = outgoing, incoming
        self._on_made, self._on_lost = on_made, on_lost
        self._read_closed = self._write_closed = False

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)   # forward small peer lines at once, as the replicas do
        self.outgoing.attach_source(self.transport)
        self.incoming.attach_dest(self.transport)
        self._on_made()

    def dataReceived(self, data: bytes) -> None:
        self.outgoing.receive(data)

    def readConnectionLost(self) -> None:
        self._read_closed = True
        self.outgoing.source_ended(full=False)
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        # Twisted leaves a connection open when both halves are shut one by one.
        if self._read_closed and self._write_closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.outgoing.source_ended(full=True)
        self.incoming.dest_lost()
        self._on_lost()


class _Connection:
    """An accepted connection on a route and, once its route is clear, its upstream."""

    log = Logger()

    def __init__(self, proxy: Proxy, route: Route):
        self.proxy, self.route = proxy, route
        cuts, dialer, listener = proxy.cuts, route.dialer, route.listener

        def held(src: str, dst: str) -> bool:
            return cuts.held(src, dst) or cuts.route_held(dialer, listener)

        self.up = Pipe(*route.upstream, held, cuts.delay_s, proxy.reactor)
        self.down = Pipe(*route.downstream, held, cuts.delay_s, proxy.reactor)
        self.accepted = _Side(self.up, self.down, self._accepted_made, self._accepted_lost)
        self.dialled: _Side | None = None
        self._accepted_open = False
        self._upstream_open = False
        self._dialling = False

    @property
    def blocked(self) -> bool:
        """A new connection waits while either direction is held: its SYN or SYN-ACK."""
        return self.up.held or self.down.held

    def update(self) -> None:
        """The cuts changed: dial if we were waiting for that, and deliver what may go."""
        if self._accepted_open and self.dialled is None and not self.blocked:
            self._dial()
        self.up.flush()
        self.down.flush()

    def _accepted_made(self) -> None:
        self._accepted_open = True
        self.proxy.connections.add(self)
        self.log.debug("accepted a connection on route {route}", route=self.route.name)
        self.update()

    def _accepted_lost(self) -> None:
        self._accepted_open = False
        if self.dialled is None:
            # Closed before its SYN got through: never dial (the client gave up).
            self.log.debug("connection on route {route} closed before it was dialled",
                           route=self.route.name)
        self._forget_if_done()

    def _dial(self) -> None:
        self.dialled = _Side(self.down, self.up, self._upstream_made, self._upstream_lost)
        self._dialling = True
        endpoint = TCP4ClientEndpoint(self.proxy.reactor, self.route.target_host,
                                      self.route.target_port, timeout=CONNECT_TIMEOUT_S)
        d = endpoint.connect(_DialFactory(self.dialled))
        d.addErrback(self._dial_failed)

    def _upstream_made(self) -> None:
        self._dialling = False
        self._upstream_open = True

    def _upstream_lost(self) -> None:
        self._upstream_open = False
        self._forget_if_done()

    def _dial_failed(self, failure) -> None:
        self._dialling = False
        self.log.info("route {route}: cannot reach {host}:{port}: {error}",
                      route=self.route.name, host=self.route.target_host,
                      port=self.route.target_port, error=failure.getErrorMessage())
        # As if the target had refused: what was sent is lost, and the accepted side is
        # closed (after the close itself is released, if that direction is held).
        self.up.dest_lost()
        self.down.source_ended(full=True)
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        if not (self._accepted_open or self._upstream_open or self._dialling):
            self.proxy.connections.discard(self)


class _DialFactory(Factory):
    noisy = False

    def __init__(self, side: _Side):
        self.side = side

    def buildProtocol(self, addr):
        return self.side


class _RouteFactory(Factory):
    noisy = False

    def __init__(self, proxy: Proxy, route: Route):
        self.proxy, self.route = proxy, route

    def buildProtocol(self, addr):
        return _Connection(self.proxy, self.route).accepted


class ControlProtocol(LineReceiver):
    """Reads one command per line and answers it once the change is in effect."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_CONTROL_LINE_BYTES

    def __init__(self, proxy: Proxy):
        self.proxy = proxy

    def lineReceived(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        for answer in self.proxy.handle_line(line):
            self.sendLine(answer.encode("utf-8"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"ERR line too long")
        self.transport.loseConnection()


class _ControlFactory(Factory):
    noisy = False

    def __init__(self, proxy: Proxy):
        self.proxy = proxy

    def buildProtocol(self, addr):
        return ControlProtocol(self.proxy)


class Proxy:
    """Listens on every route and on the control port; applies commands to all connections."""

    log = Logger()

    def __init__(self, reactor, routes: Sequence[Route], host: str = HOST):
        names = [route.name for route in routes]
        if len(set(names)) != len(names):
            raise ValueError("two routes have the same name")
        self.reactor = reactor
        self.routes = list(routes)
        self.host = host
        self.cuts = Cuts(members_of(self.routes))
        self.connections: set[_Connection] = set()
        self._ports: list = []

    @defer.inlineCallbacks
    def listen(self, control_port: int = 0):
        """Listen on every route and the control port; fires with the ports bound.

        The result is ``{"control": port, "routes": {name: port}}`` (ports asked as 0
        are the ones the system picked).
        """
        bound: dict[str, int] = {}
        try:
            for route in self.routes:
                endpoint = TCP4ServerEndpoint(self.reactor, route.listen_port, interface=self.host)
                port = yield endpoint.listen(_RouteFactory(self, route))
                self._ports.append(port)
                bound[route.name] = port.getHost().port
            endpoint = TCP4ServerEndpoint(self.reactor, control_port, interface=self.host)
            port = yield endpoint.listen(_ControlFactory(self))
            self._ports.append(port)
        except Exception:
            yield self.stop_listening()
            raise
        return {"control": port.getHost().port, "routes": bound}

    def stop_listening(self) -> defer.Deferred:
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def handle_line(self, line: str) -> list[str]:
        """Obey one control line; the answer lines (``OK``, ``ERR ...``, STATUS's)."""
        try:
            answer = self.cuts.apply(parse_command(line))
        except CommandError as e:
            self.log.info("control: {line!r} refused: {error}", line=line[:80], error=e)
            return [f"ERR {e}"]
        # Before answering: dial the connections that were waiting, deliver what may go.
        for connection in list(self.connections):
            connection.update()
        if answer == ["OK"]:
            self.log.info("control: {line} (held: {held})", line=line.strip(),
                          held=" ".join([f"{s}>{d}" for s, d in self.cuts.held_pairs()]
                                        + [f"{a}-{b}" for a, b in self.cuts.held_routes()])
                          or "none")
        return answer


# The process ---------------------------------------------------------------------------


def _route_arg(text: str) -> Route:
    try:
        return parse_route(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _write_ready_file(path: str, ports: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"pid": os.getpid(), **ports}, handle)
    os.replace(tmp, path)   # a reader sees no file or a whole one


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m replicad.testing.proxy",
        description="A TCP proxy between replicas whose bytes can be held (partitions).",
    )
    parser.add_argument("--control", type=int, required=True, metavar="PORT",
                        help="control port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--route", type=_route_arg, action="append", required=True,
                        metavar="A-B=LISTEN_PORT:TARGET_HOST:TARGET_PORT",
                        help="connections A makes to B (repeat; listen port 0: any)")
    parser.add_argument("--ready-file", metavar="PATH",
                        help="once listening, write the bound ports here as JSON")
    parser.add_argument("--verbose", action="store_true", help="log every connection")
    args = parser.parse_args(argv)
    if len({r.name for r in args.route}) != len(args.route):
        parser.error("two routes have the same name")

    level = LogLevel.debug if args.verbose else LogLevel.info
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log = Logger(namespace="replicad.testing.proxy")

    from twisted.internet import reactor

    proxy = Proxy(reactor, args.route)
    exit_code = [0]

    def ready(ports: dict) -> None:
        if args.ready_file:
            _write_ready_file(args.ready_file, ports)
        log.info("proxy ready: control port {control}, routes {routes}",
                 control=ports["control"], routes=ports["routes"])

    def failed(failure) -> None:
        log.failure("proxy could not start", failure)
        exit_code[0] = 1
        reactor.stop()

    reactor.callWhenRunning(
        lambda: proxy.listen(args.control).addCallbacks(ready, failed)
    )
    reactor.run()
    return exit_code[0]


if __name__ == "__main__":
    # Run the module's importable copy, so that log namespaces read replicad.testing.proxy.
    from replicad.testing import proxy as _importable

    sys.exit(_importable.main())
