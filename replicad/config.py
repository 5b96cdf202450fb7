"""Cluster membership and settings, read from an INI file and validated.  Pure.

Every mistake raises ConfigError with one sentence that names the problem, so that
``twistd replicad`` and ``replicad-cli`` can print it as a single line and exit
non-zero.  With no file the built-in cluster is used: three replicas on 127.0.0.1,
client ports 7001-7003 and peer ports 7101-7103 (docs/operations.md).

Invariants of a built config (``default_config``, ``parse_config``, ``with_overrides``):

- ``write_quorum`` is an int in 1..N; ``write_quorum_text`` is what the operator wrote
  (``"majority"`` or the number) and is what ``render_config`` writes back.
- Every timer is a float.  ``forward_timeout`` and ``lease_timeout`` may be *derived*
  (left unset): they are computed from the other timers whenever a ``Timers`` is built,
  ``dataclasses.replace`` included, and ``render_config`` does not write them back.
- Timer rules, each with its reason in docs/operations.md: ping_timeout < ping_interval;
  forward_timeout >= election_wait + fetch_timeout + quorum_timeout;
  lease_timeout > ping_interval; coordinator_timeout > answer_timeout;
  stream_stall_timeout >= MIN_STREAM_STALL_TIMEOUT_S.
- ``max_peer_connections`` is None (derived: ``peer_connection_limit`` is
  PEER_CONNECTIONS_PER_MEMBER x N) or a number >= N.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import re
from dataclasses import dataclass, field

from replicad.wire import Limits, is_number

DEFAULT_SIZE = 3
DEFAULT_HOST = "127.0.0.1"
DEFAULT_CLIENT_BASE_PORT = 7000
DEFAULT_PEER_BASE_PORT = 7100
DEFAULT_SECRET = "replicad-insecure-default-secret"
MAX_REPLICAS = 64
MAX_REPLICA_ID = 9999
MAJORITY = "majority"       # write_quorum = majority: N // 2 + 1
# A derived forward_timeout adds this to the longest the coordinator may legitimately
# take (election_wait + fetch_timeout + quorum_timeout): the request and its reply
# still have to cross the peer link.
FORWARD_MARGIN_S = 1.0
LEASE_HEARTBEATS = 2        # a derived lease_timeout is this many ping_intervals
# A derived max_peer_connections is this many per member: each other member holds one
# authenticated link and at most one handshake at a time; the rest is room for
# operators' probes and for handshakes that overlap a flood.
PEER_CONNECTIONS_PER_MEMBER = 4
# A receiver gives up on a stream after this much silence (sync.STREAM_IDLE_TIMEOUT_S;
# config cannot import sync): a sender should be at least as patient.
MIN_STREAM_STALL_TIMEOUT_S = 5.0


class ConfigError(Exception):
    """A configuration mistake, worded for the operator."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def server_endpoint(self) -> str:
        """Twisted server endpoint string listening on exactly this address."""
        return f"tcp:port={self.port}:interface={_escape(self.host)}"

    def client_endpoint(self, timeout_s: float | None = None) -> str:
        spec = f"tcp:host={_escape(self.host)}:port={self.port}"
        if timeout_s is not None:
            spec += f":timeout={max(1, math.ceil(timeout_s))}"
        return spec


def _escape(host: str) -> str:
    return host.replace(":", "\\:")


_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_address(text: str, what: str = "address") -> Address:
    """``host:port`` or ``[v6]:port`` -> Address; ConfigError names what was wrong."""
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise ConfigError(f"{what} {text.strip()!r} is not host:port")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {text.strip()!r} has port {port}, outside 1-65535")
    return Address(match.group("v6") or match.group("host"), port)


@dataclass(frozen=True)
class Member:
    id: int
    client: Address
    peer: Address
    client_listen: str | None = None   # endpoint string override (e.g. ssl:...)
    peer_listen: str | None = None
    peer_connect: str | None = None
    # The HTTP admin port (/metrics, /healthz, /readyz, the cluster page); off when None.
    admin: Address | None = None
    admin_listen: str | None = None    # endpoint string override; needs ``admin``

    def client_listen_endpoint(self) -> str:
        return self.client_listen or self.client.server_endpoint()

    def peer_listen_endpoint(self) -> str:
        return self.peer_listen or self.peer.server_endpoint()

    def peer_connect_endpoint(self, timeout_s: float) -> str:
        """How the OTHER replicas dial this one (not how this one dials them): the
        ``peer_connect`` endpoint string, else plain TCP to ``peer``.  A TLS endpoint
        (ssl:, tls:) without ``timeout=`` gets connect_timeout, as the default does
        (Twisted's own default is 30 s)."""
        if not self.peer_connect:
            return self.peer.client_endpoint(timeout_s)
        endpoint = parse_endpoint(self.peer_connect)
        if endpoint.tls and "timeout" not in endpoint.kwargs:
            return f"{self.peer_connect}:timeout={max(1, math.ceil(timeout_s))}"
        return self.peer_connect

    def admin_listen_endpoint(self) -> str | None:
        """Where the admin port listens, or None when it is off (no ``admin``)."""
        if self.admin is None:
            return None
        return self.admin_listen or self.admin.server_endpoint()


class _Derived(float):
    """A timer value computed from the others rather than set by the operator.

    Being a float, every reader of ``timers.forward_timeout`` keeps working; being its
    own type, the mark survives ``dataclasses.replace`` (which passes every field on),
    so the copy derives the value again from its own timers instead of freezing a stale
    one as if the operator had set it."""

    __slots__ = ()


_DERIVED_TIMERS = ("forward_timeout", "lease_timeout")


@dataclass(frozen=True)
class Timers:
    """Seconds.  Defaults aim at < 1 s client-visible failover on a LAN (docs/election.md).

    ``forward_timeout`` and ``lease_timeout`` default to None, meaning *derived*; once
    built they are always floats (see ``forward_timeout_s`` and ``lease_timeout_s``),
    and ``derived`` names the ones that were computed rather than given.
    """

    ping_interval: float = 0.3      # heartbeat period; a client-triggered ping is skipped
                                    # if one succeeded within this interval
    ping_timeout: float = 0.2       # must be shorter than ping_interval
    answer_timeout: float = 0.3     # wait for OK from a higher replica
    coordinator_timeout: float = 0.8  # wait for COORDINATOR after an OK
    reannounce_interval: float = 1.0  # a coordinator repeats COORDINATOR: heals lost ones
    election_wait: float = 3.0      # a client request waits this long for a coordinator
    # A forwarded request waits this long for its reply.  None: derived, see
    # forward_timeout_s; never below forward_timeout_floor_s (checked).
    forward_timeout: float | None = None
    fetch_timeout: float = 1.0      # catching up with a session before ERR STALE
    quorum_timeout: float = 2.0     # waiting for write_quorum acks before ERR QUORUM
    anti_entropy_interval: float = 2.0
    idle_timeout: float = 60.0      # a client connection that sends nothing is closed
    connect_timeout: float = 1.0    # dialing a peer
    # Quorum mode: a coordinator that has not heard from a majority for this long stops
    # serving.  None: derived, see lease_timeout_s; must exceed ping_interval (checked).
    lease_timeout: float | None = None
    # A streamed answer (DELTA, FULL) whose receiver has read nothing for this long is
    # aborted with its connection, releasing its read snapshot; at least
    # MIN_STREAM_STALL_TIMEOUT_S (checked).
    stream_stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        derive = {
            "forward_timeout": round(self.forward_timeout_floor_s + FORWARD_MARGIN_S, 9),
            "lease_timeout": LEASE_HEARTBEATS * self.ping_interval,
        }
        for name in _DERIVED_TIMERS:
            value = getattr(self, name)
            if value is None or isinstance(value, _Derived):
                object.__setattr__(self, name, _Derived(derive[name]))

    @property
    def forward_timeout_floor_s(self) -> float:
        """The longest a coordinator may take over a forwarded request it completes:
        waiting for its take-over (election_wait), catching up with the session
        (fetch_timeout), then collecting write_quorum acks (quorum_timeout).  A follower
        that gave up sooner would answer ERR INDOUBT for a write that succeeded."""
        # Rounded so that 0.1 + 0.2 + 0.3 admits a forward_timeout of 0.6.
        return round(self.election_wait + self.fetch_timeout + self.quorum_timeout, 9)

    @property
    def forward_timeout_s(self) -> float:
        """Effective forward_timeout: as set, or derived as forward_timeout_floor_s +
        FORWARD_MARGIN_S (7.0 s with the defaults).  Same value as ``forward_timeout``."""
        return float(self.forward_timeout)

    @property
    def lease_timeout_s(self) -> float:
        """Effective lease_timeout: as set, or derived as LEASE_HEARTBEATS (2) x
        ping_interval (0.6 s with the defaults).  Same value as ``lease_timeout``."""
        return float(self.lease_timeout)

    @property
    def derived(self) -> frozenset[str]:
        """Names of the timers computed from the others (not set): render_config skips
        them, so they follow the timers they come from."""
        return frozenset(n for n in _DERIVED_TIMERS if isinstance(getattr(self, n), _Derived))


@dataclass(frozen=True)
class ClusterConfig:
    members: dict[int, Member]
    secret: str = DEFAULT_SECRET
    client_password: str | None = None   # clients must send AUTH <password> first
    write_quorum: int = 1   # an int once built; given as text, "majority" or "2"
    max_connections: int = 1000
    # The listen queue of the client and peer ports: a burst of new connections beyond
    # it costs each dropped SYN a 1 s retransmit (Twisted's default is 50).  The kernel
    # caps it at net.core.somaxconn (4096 on current Linux).
    listen_backlog: int = 1024
    # Open connections on the peer port; None: derived, see peer_connection_limit.
    max_peer_connections: int | None = None
    # A pull asks for a full copy when this replica is empty or lacks at least this
    # fraction of the writes the peer has seen; otherwise a delta (never larger).
    full_copy_ratio: float = 0.9
    # A follower may answer a read itself (replica.py, _may_read_here): the session
    # guarantees hold as on the coordinator; a read without a session may miss writes
    # of the last heartbeat interval.  Off: confirmed_reads decides (below).
    follower_reads: bool = False
    # A follower answers a read itself once its coordinator confirms, after the read
    # arrived, the writes it has made durable (one READINDEX call in flight, shared by
    # the reads that came before it; confirmedreads.py): as fresh as a forwarded read.
    # Off: it forwards them.
    confirmed_reads: bool = True
    timers: Timers = field(default_factory=Timers)
    limits: Limits = field(default_factory=Limits)
    source: str = "built-in cluster"
    # What the operator wrote for write_quorum: "majority" or the number; set on
    # construction (leave it None).  See __post_init__.
    write_quorum_text: str | None = None

    def __post_init__(self) -> None:
        # write_quorum may be given as text ("majority", "2"): it is always an int after.
        # The text is kept only while it still describes the number, so a replace() that
        # changes write_quorum or the members cannot leave a stale "majority" behind.
        if isinstance(self.write_quorum, str):
            number, text = _parse_write_quorum(self.write_quorum, len(self.members),
                                               self.source)
        else:
            number = self.write_quorum
            given = (self.write_quorum_text or "").strip().lower()
            text = MAJORITY if given == MAJORITY and number == self.majority else str(number)
        object.__setattr__(self, "write_quorum", number)
        object.__setattr__(self, "write_quorum_text", text)

    @property
    def majority(self) -> int:
        """Replicas that make a majority of the members: N // 2 + 1."""
        return len(self.members) // 2 + 1

    @property
    def peer_connection_limit(self) -> int:
        """Effective max_peer_connections: as set, or PEER_CONNECTIONS_PER_MEMBER (4) x N
        (12 for 3 replicas); derived, it follows the member list."""
        if self.max_peer_connections is not None:
            return self.max_peer_connections
        return PEER_CONNECTIONS_PER_MEMBER * len(self.members)

    @property
    def quorum_mode(self) -> bool:
        """True when write_quorum > N / 2 (partition-safe): two sides of a partition can
        never both complete writes, and the coordinator holds a lease (lease_timeout)."""
        return 2 * self.write_quorum > len(self.members)

    @property
    def ids(self) -> list[int]:
        return sorted(self.members)

    def member(self, replica_id: int) -> Member:
        try:
            return self.members[replica_id]
        except KeyError:
            known = ", ".join(map(str, self.ids))
            raise ConfigError(
                f"replica id {replica_id} is not in {self.source} (known ids: {known})"
            ) from None

    @property
    def uses_default_secret(self) -> bool:
        return self.secret == DEFAULT_SECRET


def describe_quorum(config: ClusterConfig) -> str:
    """The write quorum for people: "1 (always serviceable)", "majority 2 of 3
    (partition-safe)", "3 of 3 (partition-safe)" or "2 of 5 (not partition-safe)"."""
    quorum, size = config.write_quorum, len(config.members)
    if config.write_quorum_text == MAJORITY:
        return f"majority {quorum} of {size} (partition-safe)"
    if config.quorum_mode:
        return f"{quorum} of {size} (partition-safe)"
    if quorum == 1:
        return "1 (always serviceable)"
    return f"{quorum} of {size} (not partition-safe)"


def default_config(
    size: int = DEFAULT_SIZE,
    client_base_port: int = DEFAULT_CLIENT_BASE_PORT,
    peer_base_port: int = DEFAULT_PEER_BASE_PORT,
    host: str = DEFAULT_HOST,
) -> ClusterConfig:
    """The built-in cluster: replica i listens on client_base+i and peer_base+i."""
    members = {
        i: Member(i, Address(host, client_base_port + i), Address(host, peer_base_port + i))
        for i in range(1, size + 1)
    }
    config = ClusterConfig(members)
    _validate(config)
    return config


_CLUSTER_FLOATS = {f.name for f in dataclasses.fields(Timers)}
_CLUSTER_RATIOS = {"full_copy_ratio"}
_CLUSTER_INTS = {"max_connections", "max_peer_connections", "listen_backlog", "max_key_bytes",
                 "max_value_bytes", "max_keys"}
_CLUSTER_STRINGS = {"secret", "client_password", "write_quorum"}
_CLUSTER_SWITCHES = {"follower_reads", "confirmed_reads"}
_MEMBER_KEYS = {"client", "peer", "client_listen", "peer_listen", "peer_connect", "admin",
                "admin_listen"}


def load_config(path: str) -> ClusterConfig:
    """Read and validate an INI file; ConfigError for every mistake."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not a valid INI file: {first}") from None
    return parse_config(parser, path)


def parse_config(parser: configparser.ConfigParser, source: str) -> ClusterConfig:
    where = f"config file {source}"
    if not parser.has_section("cluster"):
        raise ConfigError(f"{where} has no [cluster] section")
    cluster = parser["cluster"]
    unknown = (set(cluster) - _CLUSTER_FLOATS - _CLUSTER_INTS - _CLUSTER_STRINGS
               - _CLUSTER_RATIOS - _CLUSTER_SWITCHES)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r} in [cluster]")

    members: dict[int, Member] = {}
    for section in parser.sections():
        if section == "cluster":
            continue
        name, sep, id_text = section.partition(":")
        if name != "replica" or not sep:
            raise ConfigError(f"{where}: unknown section [{section}] (expected [replica:N])")
        if not is_number(id_text) or int(id_text) < 1:
            raise ConfigError(f"{where}: section [{section}] needs a positive integer id")
        if int(id_text) > MAX_REPLICA_ID:
            # Epochs are round x (highest id + 1) + id: ids must stay small.
            raise ConfigError(f"{where}: replica id {int(id_text)} is above {MAX_REPLICA_ID}")
        if int(id_text) in members:
            raise ConfigError(f"{where}: replica id {int(id_text)} is defined twice")
        members[int(id_text)] = _parse_member(int(id_text), parser[section], where)
    if not members:
        raise ConfigError(f"{where} has no [replica:N] sections")

    timers = {}
    for name in _CLUSTER_FLOATS & set(cluster):
        timers[name] = _positive(cluster[name], name, where, float)
    ints = {
        name: _positive(cluster[name], name, where, int)
        for name in _CLUSTER_INTS & set(cluster)
    }
    limits = Limits(
        max_key_bytes=ints.pop("max_key_bytes", Limits.max_key_bytes),
        max_value_bytes=ints.pop("max_value_bytes", Limits.max_value_bytes),
        max_keys=ints.pop("max_keys", Limits.max_keys),
    )
    for name in _CLUSTER_RATIOS & set(cluster):
        ratio = _positive(cluster[name], name, where, float)
        if ratio > 1:
            raise ConfigError(f"{where}: {name} must be at most 1, got {cluster[name]!r}")
        ints[name] = ratio
    switches = {name: _switch(cluster[name], name, where)
                for name in _CLUSTER_SWITCHES & set(cluster)}
    secret = cluster.get("secret", "").strip()
    if not secret:
        raise ConfigError(f"{where}: [cluster] needs a non-empty secret")
    config = ClusterConfig(
        members=members,
        secret=secret,
        client_password=cluster.get("client_password", "").strip() or None,
        write_quorum=cluster.get("write_quorum", "1"),   # parsed in __post_init__
        timers=Timers(**timers),
        limits=limits,
        source=where,
        **ints,
        **switches,
    )
    _validate(config)
    return config


def _switch(text: str, name: str, where: str) -> bool:
    """configparser's own words: yes/no, true/false, on/off, 1/0 (any case)."""
    value = configparser.ConfigParser.BOOLEAN_STATES.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"{where}: {name} must be yes or no, got {text.strip()!r}")
    return value


def _parse_member(replica_id: int, section: configparser.SectionProxy, where: str) -> Member:
    unknown = set(section) - _MEMBER_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {sorted(unknown)[0]!r} in [replica:{replica_id}]"
        )
    for required in ("client", "peer"):
        if required not in section:
            raise ConfigError(f"{where}: [replica:{replica_id}] needs a {required} address")
    admin = section.get("admin", "").strip()
    admin_listen = section.get("admin_listen", "").strip() or None
    if admin_listen is not None and not admin:
        # The admin address is what the cluster page links to and what the docs print;
        # an endpoint string alone does not say where a browser should go.
        raise ConfigError(
            f"{where}: [replica:{replica_id}] sets admin_listen without an admin address "
            f"(admin = host:port, the address people and the cluster page use)"
        )
    return Member(
        replica_id,
        parse_address(section["client"], f"[replica:{replica_id}] client address"),
        parse_address(section["peer"], f"[replica:{replica_id}] peer address"),
        section.get("client_listen") or None,
        section.get("peer_listen") or None,
        section.get("peer_connect") or None,
        parse_address(admin, f"[replica:{replica_id}] admin address") if admin else None,
        admin_listen,
    )


def _positive(text: str, name: str, where: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{where}: {name} = {text!r} is not {noun}") from None
    if not value > 0 or (kind is float and not math.isfinite(value)):
        raise ConfigError(f"{where}: {name} must be greater than 0, got {text!r}")
    return value


def _parse_write_quorum(text: str, size: int, where: str) -> tuple[int, str]:
    """``majority`` (any case) or a positive whole number -> (number, text to keep)."""
    word = text.strip()
    if word.lower() == MAJORITY:
        return size // 2 + 1, MAJORITY
    try:
        number = int(word)
    except ValueError:
        raise ConfigError(
            f"{where}: write_quorum = {word!r} is neither a whole number nor 'majority'"
        ) from None
    if number < 1:
        raise ConfigError(f"{where}: write_quorum must be greater than 0, got {word!r}")
    return number, str(number)


def _validate(config: ClusterConfig) -> None:
    where = config.source
    if len(config.members) > MAX_REPLICAS:
        raise ConfigError(f"{where}: at most {MAX_REPLICAS} replicas are supported")
    _validate_endpoints(config)
    seen: dict[Address, str] = {}
    for member in config.members.values():
        addresses = [("client", member.client), ("peer", member.peer)]
        if member.admin is not None:
            addresses.append(("admin", member.admin))
        for kind, address in addresses:
            label = f"replica {member.id} {kind} address {address}"
            if address in seen:
                raise ConfigError(f"{where}: {label} is also {seen[address]}")
            seen[address] = label
    if not 1 <= config.write_quorum <= len(config.members):
        raise ConfigError(
            f"{where}: write_quorum = {config.write_quorum} must be between 1 and the "
            f"number of replicas ({len(config.members)})"
        )
    timers = config.timers
    if timers.ping_timeout >= timers.ping_interval:
        raise ConfigError(
            f"{where}: ping_timeout ({timers.ping_timeout}) must be shorter than "
            f"ping_interval ({timers.ping_interval})"
        )
    # Explicit values only can break these two: a derived one is built to pass.
    floor = timers.forward_timeout_floor_s
    if timers.forward_timeout < floor:
        raise ConfigError(
            f"{where}: forward_timeout ({timers.forward_timeout}) must be at least "
            f"election_wait + fetch_timeout + quorum_timeout ({timers.election_wait} + "
            f"{timers.fetch_timeout} + {timers.quorum_timeout} = {floor}): a follower "
            f"would report ERR INDOUBT for writes the coordinator completes"
        )
    if timers.lease_timeout <= timers.ping_interval:
        raise ConfigError(
            f"{where}: lease_timeout ({timers.lease_timeout}) must be longer than "
            f"ping_interval ({timers.ping_interval}): a coordinator in quorum mode would "
            f"lose its lease between two heartbeats of a healthy cluster"
        )
    if timers.coordinator_timeout <= timers.answer_timeout:
        raise ConfigError(
            f"{where}: coordinator_timeout ({timers.coordinator_timeout}) must be longer "
            f"than answer_timeout ({timers.answer_timeout}): the replica that answered OK "
            f"waits answer_timeout for higher ones before it announces, so the election "
            f"would restart before its COORDINATOR could arrive"
        )
    if timers.stream_stall_timeout < MIN_STREAM_STALL_TIMEOUT_S:
        raise ConfigError(
            f"{where}: stream_stall_timeout ({timers.stream_stall_timeout}) must be at "
            f"least {MIN_STREAM_STALL_TIMEOUT_S:g} s: a receiver waits that long for a "
            f"stream's next line, so a shorter one would cut streams still being read"
        )
    size = len(config.members)
    if config.max_peer_connections is not None and config.max_peer_connections < size:
        raise ConfigError(
            f"{where}: max_peer_connections ({config.max_peer_connections}) must be at "
            f"least the number of replicas ({size}): each other replica holds one "
            f"connection and a reconnecting one needs a slot for its handshake"
        )


def render_config(config: ClusterConfig) -> str:
    """INI text for a config (used by replicad-local to write the file it starts with)."""
    lines = ["[cluster]", f"secret = {config.secret}",
             f"write_quorum = {config.write_quorum_text}"]
    if config.client_password:
        lines.append(f"client_password = {config.client_password}")
    for f in dataclasses.fields(Timers):
        if f.name in config.timers.derived:
            continue   # not written back: it follows the timers it is derived from
        value = getattr(config.timers, f.name)
        if value != f.default:
            lines.append(f"{f.name} = {value}")
    for name in ("max_key_bytes", "max_value_bytes", "max_keys"):
        value = getattr(config.limits, name)
        if value != getattr(Limits, name):
            lines.append(f"{name} = {value}")
    for name in ("max_connections", "max_peer_connections", "listen_backlog",
                 "full_copy_ratio"):
        value = getattr(config, name)
        if value != getattr(ClusterConfig, name):
            lines.append(f"{name} = {value}")
    for name in sorted(_CLUSTER_SWITCHES):     # off by default: written only when on
        if getattr(config, name):
            lines.append(f"{name} = yes")
    for member in sorted(config.members.values(), key=lambda m: m.id):
        lines += ["", f"[replica:{member.id}]"]
        lines += [f"client = {member.client}", f"peer = {member.peer}"]
        if member.admin is not None:
            lines.append(f"admin = {member.admin}")
        for name in ("client_listen", "peer_listen", "peer_connect", "admin_listen"):
            if getattr(member, name):
                lines.append(f"{name} = {getattr(member, name)}")
    return "\n".join(lines) + "\n"


def with_overrides(config: ClusterConfig, **changes: object) -> ClusterConfig:
    """A copy with cluster-level settings changed, validated again."""
    new = dataclasses.replace(config, **changes)
    _validate(new)
    return new


def with_backlog(endpoint: str, backlog: int) -> str:
    """A server endpoint string with the listen backlog, unless it names one already
    (tcp:, ssl: and tcp6: take ``backlog=``)."""
    kind = endpoint.split(":", 1)[0]
    if kind not in ("tcp", "ssl", "tcp6") or "backlog=" in endpoint:
        return endpoint
    return f"{endpoint}:backlog={backlog}"


# Endpoint strings ----------------------------------------------------------------------
#
# client_listen, peer_listen and admin_listen are Twisted *server* endpoint strings (where
# this replica listens); peer_connect is a Twisted *client* endpoint string: how the
# OTHER replicas dial the replica whose section holds it.  They are checked here for
# what can be told from the text alone (the type, the parameters, TLS on both ends of
# the peer link, a peer_connect that dials another replica), so that a typo is one
# line wherever the config is read; twistd replicad then opens the files they name
# (replicad.tap) before it forks.

SERVER_ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "tls", "unix", "systemd")
CLIENT_ENDPOINT_TYPES = ("tcp", "ssl", "tls", "unix")
TLS_ENDPOINT_TYPES = frozenset({"ssl", "tls"})
# Parameters Twisted accepts, per type (unix: and systemd: are not checked).
_SERVER_PARAMETERS = {
    "tcp": {"port", "interface", "backlog"},
    "tcp6": {"port", "interface", "backlog"},
    "ssl": {"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain",
            "sslmethod", "dhParameters"},
    "tls": {"port", "interface", "backlog"},
}
_CLIENT_PARAMETERS = {
    "tcp": {"host", "port", "timeout", "bindAddress"},
    "ssl": {"host", "port", "timeout", "bindAddress", "certKey", "privateKey",
            "caCertsDir", "hostname"},
    "tls": {"host", "port", "timeout", "bindAddress", "certificate", "privateKey",
            "trustRoots", "endpoint"},
}


@dataclass(frozen=True)
class Endpoint:
    """A Twisted endpoint string taken apart as Twisted does (``:`` separates, ``\\``
    escapes the next character, the first ``=`` of a part makes it a parameter)."""

    type: str                          # lower case
    args: tuple[str, ...]              # positional parts after the type
    kwargs: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.type in TLS_ENDPOINT_TYPES

    def param(self, name: str, position: int | None = None) -> str | None:
        """A parameter given by name, or else at that position among the args."""
        if name in self.kwargs:
            return self.kwargs[name]
        if position is not None and position < len(self.args):
            return self.args[position]
        return None


def parse_endpoint(text: str) -> Endpoint:
    parts: list[list[str]] = [[""]]
    chars = iter(text.strip())
    for char in chars:
        if char == "\\":
            parts[-1][-1] += next(chars, "")
        elif char == ":":
            parts.append([""])
        elif char == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += char
    head, rest = parts[0], parts[1:]
    kind = head[0].strip().lower() if len(head) == 1 else ""
    return Endpoint(kind, tuple(p[0] for p in rest if len(p) == 1),
                    {p[0]: p[1] for p in rest if len(p) == 2})


def is_tls_endpoint(text: str | None) -> bool:
    return bool(text) and parse_endpoint(text).tls


def endpoint_tcp_address(endpoint: Endpoint, server: bool) -> tuple[str, int] | None:
    """(host or interface, port) of a tcp/tcp6/ssl/tls endpoint, None for other types
    or an unreadable port.  A server's interface defaults as Twisted's does ("" is
    every IPv4 address, "::" every address)."""
    if endpoint.type not in ("tcp", "tcp6", "ssl", "tls"):
        return None
    if server:
        position = 1 if endpoint.type == "tls" else 0   # tls:<dir of PEMs>:port=...
        port = endpoint.param("port", position)
        if port is None and endpoint.type == "tls":
            port = "443"
        default = "::" if endpoint.type in ("tcp6", "tls") else ""
        host = endpoint.kwargs.get("interface", default)
    else:
        host, port = endpoint.param("host", 0), endpoint.param("port", 1)
    if host is None or port is None or not (port.isascii() and port.isdigit()):
        return None
    return host, int(port)


def _check_endpoint(text: str, setting: str, member: Member, where: str,
                    server: bool) -> Endpoint:
    label = f"{where}: [replica:{member.id}] {setting} = {text.strip()}"
    endpoint = parse_endpoint(text)
    known = SERVER_ENDPOINT_TYPES if server else CLIENT_ENDPOINT_TYPES
    if endpoint.type not in known:
        what = f"type {endpoint.type!r}" if endpoint.type else "type"
        raise ConfigError(f"{label}: unknown endpoint {what} (known here: "
                          f"{', '.join(known)}; e.g. {known[0]}:...)")
    allowed = (_SERVER_PARAMETERS if server else _CLIENT_PARAMETERS).get(endpoint.type)
    if allowed is not None:
        unknown = sorted(set(endpoint.kwargs) - allowed)
        if unknown:
            raise ConfigError(f"{label}: unknown parameter {unknown[0]!r} for a "
                              f"{endpoint.type}: endpoint (known: {', '.join(sorted(allowed))}; "
                              f"names are case-sensitive)")
        address = endpoint_tcp_address(endpoint, server)
        if address is None or not 1 <= address[1] <= 65535:
            needs = "a port from 1 to 65535" if server else "a host and a port (1-65535)"
            raise ConfigError(f"{label}: a {endpoint.type}: endpoint needs {needs}")
    if server and endpoint.type == "ssl" and "privateKey" not in endpoint.kwargs:
        raise ConfigError(f"{label}: an ssl: listener needs privateKey=KEY.pem (and "
                          f"certKey=CERT.pem unless the key file holds the certificate too)")
    if server and endpoint.type == "tls" and not endpoint.args:
        raise ConfigError(f"{label}: a tls: listener needs a directory of PEM files "
                          f"(tls:DIR:port=N); ssl:N:privateKey=...:certKey=... is simpler")
    if not server and endpoint.type == "ssl" and not (
            "caCertsDir" in endpoint.kwargs and "hostname" in endpoint.kwargs):
        raise ConfigError(
            f"{label}: an ssl: peer_connect without caCertsDir= and hostname= does not "
            f"verify the replica it dials (any certificate would do); use "
            f"tls:host=H:port=P:trustRoots=DIR, which checks the CA and the host name")
    return endpoint


def _validate_endpoints(config: ClusterConfig) -> None:
    where = config.source
    peers = {m.id: (m.peer.host, m.peer.port) for m in config.members.values()}
    for member in config.members.values():
        for setting in ("client_listen", "peer_listen", "admin_listen"):
            text = getattr(member, setting)
            if text is not None:
                _check_endpoint(text, setting, member, where, server=True)
        listen_tls = is_tls_endpoint(member.peer_listen)
        if member.peer_connect is None:
            if listen_tls:
                raise ConfigError(
                    f"{where}: [replica:{member.id}] peer_listen is TLS but it has no "
                    f"peer_connect, so the other replicas would dial it in plain TCP: add "
                    f"peer_connect = tls:host={_escape(member.peer.host)}:"
                    f"port={member.peer.port}:trustRoots=DIR (how the others reach "
                    f"replica {member.id})")
            continue
        dial = _check_endpoint(member.peer_connect, "peer_connect", member, where,
                               server=False)
        target = endpoint_tcp_address(dial, server=False)
        others = [i for i, address in peers.items() if address == target and i != member.id]
        if others and "endpoint" not in dial.kwargs:
            host, port = target
            raise ConfigError(
                f"{where}: [replica:{member.id}] peer_connect dials {host}:{port}, the peer "
                f"address of replica {others[0]}: peer_connect in [replica:{member.id}] is "
                f"how the OTHER replicas reach replica {member.id} (its own peer port), not "
                f"how replica {member.id} dials the others")
        if listen_tls != dial.tls:
            if listen_tls:
                problem = "peer_listen is TLS but peer_connect dials in plain TCP"
            else:
                problem = "peer_connect dials with TLS but peer_listen is plain TCP"
            raise ConfigError(f"{where}: [replica:{member.id}] {problem}: both ends of the "
                              f"peer link must agree (ssl: or tls: on both, or neither)")
