"""Client-centric consistency: what a request needs, how a session's clocks advance.  Pure.

A session keeps a read clock R (the writes its reads depended on) and a write clock W
(its own writes).  Every request, read or write, needs the serving replica's clock S to
cover both: S >= R gives monotonic reads and writes-follow-reads, S >= W gives
read-your-writes and monotonic writes.  A read reply returns the replica's clock (merged
into R); a write reply returns the write's version vector (merged into W).  See
docs/consistency.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from replicad.vclock import ClockError, VectorClock
from replicad.wire import Reply, Request, SessionContext


def missing(need: VectorClock, have: VectorClock) -> VectorClock:
    """The part of need that have does not cover; empty when the replica may serve."""
    return need.missing_from(have)


def requirement(context: SessionContext | None) -> VectorClock:
    return context.requirement() if context is not None else VectorClock()


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

    def context(self) -> SessionContext:
        return SessionContext(self.read, self.write, self.last_server)

    def observe(self, request: Request, reply: Reply, address: str) -> None:
        """Fold a reply into the session: merge its clock, learn who is where."""
        meta = reply.meta
        if meta is None:
            return
        if meta.here is not None:
            self.addresses[meta.here] = address
        if meta.coord is not None:
            self.coordinator = meta.coord
        if reply.is_error:
            return
        if request.is_read:
            self.read = self.read.merge(meta.vc)
        elif request.is_write:
            self.write = self.write.merge(meta.vc)
        if meta.by is not None:
            self.last_server = meta.by

    def order(self, servers: list[str]) -> list[str]:
        """Servers to try: the known coordinator's address first, then the static list.

        If a reply named a coordinator whose address we have not learned yet, servers
        we have never reached come before those known to be other replicas: one of
        them is the coordinator, and reaching it teaches us its address."""
        preferred = self.addresses.get(self.coordinator) if self.coordinator else None
        if preferred in servers:
            return [preferred] + [s for s in servers if s != preferred]
        if self.coordinator is not None:
            known = set(self.addresses.values())
            return [s for s in servers if s not in known] + [s for s in servers if s in known]
        return list(servers)

    def to_json(self) -> str:
        return json.dumps(
            {
                "read": self.read.encode(),
                "write": self.write.encode(),
                "last_server": self.last_server,
                "coordinator": self.coordinator,
                "addresses": {str(k): v for k, v in sorted(self.addresses.items())},
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
            )
        except (ValueError, ClockError, AttributeError, TypeError) as e:
            raise SessionFileError(f"session file is damaged: {e}") from None


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int):
        raise ValueError(f"expected a replica id, got {value!r}")
    return value
