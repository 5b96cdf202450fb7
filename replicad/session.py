"""Client-centric consistency: what a request needs, how a session's clocks advance.  Pure.

A session keeps a read clock R (the writes its reads depended on) and a write clock W
(its own writes).  Every request, read or write, needs the serving replica's clock S to
cover both: S >= R gives monotonic reads and writes-follow-reads, S >= W gives
read-your-writes and monotonic writes.  A read reply returns the replica's clock (merged
into R); a write reply returns the write's version vector (merged into W).  See
docs/consistency.md.

Invariants of a ClientSession:

- It belongs to one cluster: ``cluster`` is the id the first reply that named one gave.
  Clocks of one cluster mean nothing in another (a wiped cluster starts counting again),
  so a reply from another cluster resets the session (``adopt_cluster``).
- Each write carries a request id ``<client_id>.<seq>``: the client id is made once per
  session (at its first write), seq grows by one per write and never repeats within the
  session, so a write sent again after an unknown outcome keeps its id and the
  coordinator can tell it from a new one.
- ``demoted`` maps servers that failed or stalled to the epoch the session knew then;
  they are tried last, the known coordinator included, until they answer again or a
  reply names one of them coordinator in a newer epoch (it recovered and was elected
  again: it is the right first try once more).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from replicad.identity import is_cluster_id
from replicad.vclock import ClockError, VectorClock
from replicad.wire import Reply, Request, SessionContext

CLIENT_ID_BYTES = 8              # 16 hex digits; the wire allows 8 to 32
_CLIENT_ID = re.compile(r"[0-9a-f]{8,32}")
MAX_SEQ = 10**18 - 1             # the wire's seq has at most 18 digits
MAX_EPOCH = 2**48                # as the replicas bound it


def missing(need: VectorClock, have: VectorClock) -> VectorClock:
    """The part of need that have does not cover; empty when the replica may serve."""
    return need.missing_from(have)


_NOTHING = VectorClock()   # clocks are immutable: one empty clock serves every call


def requirement(context: SessionContext | None) -> VectorClock:
    return context.requirement() if context is not None else _NOTHING


def new_client_id() -> str:
    return secrets.token_hex(CLIENT_ID_BYTES)


class SessionFileError(ValueError):
    """A session file that cannot be read back."""


@dataclass
class ClientSession:
    """The client's side of a session; survives between one-shot CLI runs as JSON."""

    read: VectorClock = field(default_factory=VectorClock)
    write: VectorClock = field(default_factory=VectorClock)
    last_server: int | None = None        # sent as via: it has what we saw
    coordinator: int | None = None        # last coordinator named by a reply
    addresses: dict[int, str] = field(default_factory=dict)   # learned id -> host:port
    cluster: str | None = None            # the cluster this session belongs to
    client_id: str | None = None          # made at the first write (request ids)
    seq: int = 0                          # the last request id's sequence number
    epoch: int = 0                        # the highest election epoch a reply named
    # failed or stalled servers, tried last: address -> the epoch known when it failed
    demoted: dict[str, int] = field(default_factory=dict)

    def context(self, rid: str | None = None) -> SessionContext:
        return SessionContext(self.read, self.write, self.last_server, rid)

    def next_request_id(self) -> str:
        """A request id never used before in this session: ``<client_id>.<seq>``."""
        if self.client_id is None:
            self.client_id = new_client_id()
        if self.seq >= MAX_SEQ:   # 10^18 writes: start over under a new name
            self.client_id, self.seq = new_client_id(), 0
        self.seq += 1
        return f"{self.client_id}.{self.seq}"

    def adopt_cluster(self, cluster: str | None) -> str | None:
        """Bind the session to the cluster a reply named.  A reply from another cluster
        resets the session to that cluster and returns the old id (else None)."""
        if cluster is None or cluster == self.cluster:
            return None
        old = self.cluster
        if old is None:
            self.cluster = cluster
            return None
        self.reset(cluster)
        return old

    def reset(self, cluster: str | None = None) -> None:
        """Forget everything (clocks, who is where, the client id): a new session."""
        fresh = ClientSession(cluster=cluster)
        self.__dict__.update(fresh.__dict__)

    def observe(self, request: Request, reply: Reply, address: str) -> None:
        """Fold a reply into the session: merge its clock, learn who is where."""
        self.answered(address)
        meta = reply.meta
        if meta is None:
            return
        if meta.here is not None:
            self.addresses[meta.here] = address
        if meta.coord is not None:
            self.coordinator = meta.coord
            named = self.addresses.get(meta.coord)
            if named in self.demoted and meta.epoch > self.demoted[named]:
                del self.demoted[named]    # elected again since it failed: it recovered
        self.epoch = max(self.epoch, meta.epoch)
        if reply.is_error:
            return
        if request.is_read:
            self.read = self.read.merge(meta.vc)
        elif request.is_write:
            self.write = self.write.merge(meta.vc)
        if meta.by is not None:
            self.last_server = meta.by

    def demote(self, address: str) -> None:
        """address failed or stalled: try it last until it answers again, or until a
        reply names it coordinator in an epoch newer than the one known now."""
        self.demoted.setdefault(address, self.epoch)

    def answered(self, address: str) -> None:
        self.demoted.pop(address, None)

    def order(self, servers: list[str]) -> list[str]:
        """Servers to try: the known coordinator's address first, then the static list;
        demoted servers (failed or stalled) last, in the order they were demoted.

        If a reply named a coordinator whose address we have not learned yet, servers
        we have never reached come before those known to be other replicas: one of
        them is the coordinator, and reaching it teaches us its address."""
        preferred = self.addresses.get(self.coordinator) if self.coordinator else None
        if preferred in servers:
            ordered = [preferred] + [s for s in servers if s != preferred]
        elif self.coordinator is not None:
            known = set(self.addresses.values())
            ordered = [s for s in servers if s not in known] + [s for s in servers if s in known]
        else:
            ordered = list(servers)
        last = [s for s in self.demoted if s in ordered]
        return [s for s in ordered if s not in last] + last

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster": self.cluster,
                "read": self.read.encode(),
                "write": self.write.encode(),
                "last_server": self.last_server,
                "coordinator": self.coordinator,
                "addresses": {str(k): v for k, v in sorted(self.addresses.items())},
                "client_id": self.client_id,
                "seq": self.seq,
                "epoch": self.epoch,
                "demoted": dict(self.demoted),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClientSession:
        try:
            data = json.loads(text)
            return cls(
                VectorClock.decode(data.get("read", "")),
                VectorClock.decode(data.get("write", "")),
                _optional_int(data.get("last_server")),
                _optional_int(data.get("coordinator")),
                {int(k): str(v) for k, v in data.get("addresses", {}).items()},
                _optional_text(data.get("cluster"), is_cluster_id, "cluster id"),
                _optional_text(data.get("client_id"), _CLIENT_ID.fullmatch, "client id"),
                _count(data.get("seq", 0), MAX_SEQ, "sequence number"),
                _count(data.get("epoch", 0), MAX_EPOCH, "epoch"),
                _demoted(data.get("demoted", {})),
            )
        except (ValueError, ClockError, AttributeError, TypeError) as e:
            raise SessionFileError(f"session file is damaged: {e}") from None


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected a replica id, got {value!r}")
    return value


def _optional_text(value: object, valid, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not valid(value):
        raise ValueError(f"bad {what} {value!r}")
    return value


def _count(value: object, limit: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"bad {what} {value!r}")
    return value


def _demoted(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"expected addresses and epochs, got {value!r}")
    return {str(k): _count(v, MAX_EPOCH, "epoch") for k, v in value.items()}
