"""The replica-to-replica line format: handshake, RPC frames, records.  Pure.

Handshake (the secret never crosses the wire; both sides prove they know it):

    server: HELLO <server_id> <server_nonce> <server_cluster|->
    client: AUTH <client_id> <client_nonce> <mac(client, ...)> <client_cluster|->
    server: WELCOME <mac(server, ...)>          or  ERR AUTH <message>, then close

Both MACs cover both ids and nonces and both cluster ids (``-``: unbound), so neither
cluster id can be altered in flight.  Two bound sides with different cluster ids refuse
each other; an unbound side accepts either (it binds when it first copies a peer).

After it the dialing side sends requests ``<rid> <VERB> [args]`` and the listening side
answers with frames ``<rid> <KIND> [payload]``: ``OK``/``NO``/``ERR`` end a call;
``LINE``/``REC`` are streamed body lines that ``END`` closes.  docs/protocol.md lists
every verb.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from replicad.identity import decode_cluster_id, encode_cluster_id
from replicad.store import Record
from replicad.vclock import ClockError, VectorClock
from replicad.wire import is_number

AUTH_CONTEXT = "replicad-peer-auth-v2"     # v2: the MACs cover both cluster ids
NONCE_BYTES = 16

FINAL_KINDS = frozenset({"OK", "NO", "ERR", "END"})
STREAM_KINDS = frozenset({"LINE", "REC"})

VERBS = frozenset(
    {"PING", "ELECTION", "COORDINATOR", "CLIENT", "PUSH", "DELTA", "FULL"}
)


class PeerWireError(ValueError):
    """A peer line that does not follow the format."""


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def auth_mac(secret: str, role: str, *parts: object) -> str:
    """HMAC-SHA256 over the role and both nonces, so a MAC cannot be replayed or reflected."""
    message = "|".join([AUTH_CONTEXT, role, *map(str, parts)]).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def client_proof(secret: str, client_id: int, server_id: int, server_nonce: str,
                 client_nonce: str, server_cluster: str | None = None,
                 client_cluster: str | None = None) -> str:
    """The AUTH proof.  Cluster ids as sent in HELLO and AUTH (None: unbound)."""
    return auth_mac(secret, "client", client_id, server_id, server_nonce, client_nonce,
                    encode_cluster_id(server_cluster), encode_cluster_id(client_cluster))


def server_proof(secret: str, client_id: int, server_id: int, server_nonce: str,
                 client_nonce: str, server_cluster: str | None = None,
                 client_cluster: str | None = None) -> str:
    """The WELCOME proof, over the same fields as client_proof."""
    return auth_mac(secret, "server", client_id, server_id, server_nonce, client_nonce,
                    encode_cluster_id(server_cluster), encode_cluster_id(client_cluster))


def parse_cluster_id(token: str) -> str | None:
    """A cluster id token from the wire: the id, or None for ``-``; PeerWireError else."""
    try:
        return decode_cluster_id(token)
    except ValueError as e:
        raise PeerWireError(str(e)) from None


def clusters_conflict(ours: str | None, theirs: str | None) -> bool:
    """Both sides bound to different clusters: the handshake must be refused."""
    return ours is not None and theirs is not None and ours != theirs


def proofs_match(expected: str, given: str) -> bool:
    return hmac.compare_digest(
        expected.encode("ascii", "replace"), given.encode("ascii", "replace")
    )


@dataclass(frozen=True)
class Frame:
    """One line after the handshake: a request (kind is the verb) or a response frame."""

    rid: int
    kind: str
    payload: str = ""

    def encode(self) -> str:
        head = f"{self.rid} {self.kind}"
        return f"{head} {self.payload}" if self.payload else head


def parse_frame(line: str) -> Frame:
    rid_text, _, rest = line.partition(" ")
    kind, _, payload = rest.partition(" ")
    if not is_number(rid_text) or not kind:
        raise PeerWireError(f"expected '<rid> <KIND> ...', got {line[:60]!r}")
    return Frame(int(rid_text), kind, payload)


def encode_record(record: Record) -> str:
    """``<key> <origin> <seq> <version> V <value>`` or ``... T`` for a tombstone."""
    head = f"{record.key} {record.origin} {record.seq} {record.version.encode()}"
    return f"{head} T" if record.value is None else f"{head} V {record.value}"


def decode_record(text: str) -> Record:
    parts = text.split(" ", 5)
    if len(parts) < 5 or parts[4] not in ("V", "T"):
        raise PeerWireError(f"bad record {text[:60]!r}")
    key, origin, seq, version_text, flag = parts[:5]
    if not (is_number(origin) and is_number(seq)):
        raise PeerWireError(f"bad write id in record {text[:60]!r}")
    try:
        version = VectorClock.decode(version_text)
    except ClockError as e:
        raise PeerWireError(f"bad version in record: {e}") from None
    if flag == "V":
        if len(parts) != 6:
            raise PeerWireError(f"record {text[:60]!r} has no value")
        value: str | None = parts[5]
    else:
        if len(parts) != 5:
            raise PeerWireError(f"tombstone record {text[:60]!r} has a value")
        value = None
    return Record(key, value, int(origin), int(seq), version)


def decode_clock(text: str) -> VectorClock:
    try:
        return VectorClock.decode(text)
    except ClockError as e:
        raise PeerWireError(str(e)) from None


def parse_int(text: str, what: str) -> int:
    if not is_number(text):
        raise PeerWireError(f"{what} must be a number, got {text[:20]!r}")
    return int(text)


@dataclass(frozen=True)
class PeerStatus:
    """What a PING answer tells: the peer's role, its coordinator, epoch, clock and
    cluster id (None: unbound)."""

    peer_id: int
    role: str
    coordinator: int | None
    epoch: int
    clock: VectorClock
    cluster_id: str | None = None

    def encode(self) -> str:
        """The PING answer payload (peer_id is who answers, so it is not sent)."""
        coordinator = "-" if self.coordinator is None else str(self.coordinator)
        return (f"{self.role} {coordinator} {self.epoch} {self.clock.encode()} "
                f"{encode_cluster_id(self.cluster_id)}")

    @classmethod
    def parse(cls, peer_id: int, payload: str) -> PeerStatus:
        """The PING answer; one without a cluster id (4 fields) reads as unbound."""
        parts = payload.split(" ")
        if len(parts) == 4:
            parts.append("-")
        if len(parts) != 5:
            raise PeerWireError(f"bad PING answer {payload[:60]!r}")
        role, coord, epoch, clock, cluster = parts
        return cls(
            peer_id,
            role,
            None if coord == "-" else parse_int(coord, "coordinator"),
            parse_int(epoch, "epoch"),
            decode_clock(clock),
            parse_cluster_id(cluster),
        )
