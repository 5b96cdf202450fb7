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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from replicad.identity import decode_cluster_id, encode_cluster_id
from replicad.node import MAX_EPOCH
from replicad.store import Record, RequestRow, StoreError, check_record
from replicad.vclock import ClockError, VectorClock
from replicad.wire import is_number, is_request_id

AUTH_CONTEXT = "replicad-peer-auth-v2"     # v2: the MACs cover both cluster ids
NONCE_BYTES = 16

# STALE <epoch>: the request carried an older epoch than the answerer's; nothing done.
# REPLY <line>: a forwarded request's reply of one line, in one frame (LINE + END else).
FINAL_KINDS = frozenset({"OK", "NO", "ERR", "END", "STALE", "REPLY"})
STREAM_KINDS = frozenset({"LINE", "REC", "REQ"})

VERBS = frozenset(
    {"PING", "ELECTION", "PREVOTE", "COORDINATOR", "CLIENT", "READINDEX", "PUSH", "DELTA",
     "FULL", "CATCHUP"}
)


class PeerWireError(ValueError):
    """A peer line that does not follow the format."""


class ErrorAnswer(PeerWireError):
    """A peer answered a call ``ERR <code> <message>``: it refused the request."""

    def __init__(self, peer_id: int, payload: str):
        super().__init__(f"replica {peer_id} answered ERR {payload}")
        self.code = payload.partition(" ")[0]


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


@dataclass(slots=True)
class Frame:
    """One line after the handshake: a request (kind is the verb) or a response frame.
    (Slotted, not frozen: one is parsed per peer line; see store.Record.)"""

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
    """``<key> <origin> <seq> <epoch> <rid|-> <version> V <value>``, ``... T`` (a
    tombstone) or ``... N`` (a no-op marker: a DEL of key that found nothing)."""
    rid = record.rid or "-"
    head = (f"{record.key} {record.origin} {record.seq} {record.epoch} {rid} "
            f"{record.version.encode()}")
    if record.value is not None:
        return f"{head} V {record.value}"
    return f"{head} N" if record.noop else f"{head} T"


def decode_record(text: str) -> Record:
    parts = text.split(" ", 7)
    if len(parts) < 7 or parts[6] not in ("V", "T", "N"):
        raise PeerWireError(f"bad record {text[:60]!r}")
    key, origin, seq, epoch_text, rid, version_text, flag = parts[:7]
    if not (is_number(origin) and is_number(seq)):
        raise PeerWireError(f"bad write id in record {text[:60]!r}")
    epoch = parse_epoch(epoch_text)
    if rid != "-" and not is_request_id(rid):
        raise PeerWireError(f"bad request id in record {text[:60]!r}")
    try:
        version = VectorClock.decode(version_text)
    except ClockError as e:
        raise PeerWireError(f"bad version in record: {e}") from None
    if flag == "V":
        if len(parts) != 8:
            raise PeerWireError(f"record {text[:60]!r} has no value")
        value: str | None = parts[7]
    else:
        if len(parts) != 7:
            raise PeerWireError(f"record {text[:60]!r} without data has a value")
        value = None
    record = Record(key, value, int(origin), int(seq), version, epoch,
                    None if rid == "-" else rid, flag == "N")
    try:
        check_record(record)     # what the store would refuse is refused at the edge
    except StoreError as e:
        raise PeerWireError(f"bad record: {e}") from None
    return record


def encode_request_row(row: RequestRow) -> str:
    """``<rid> <origin> <seq> <version>[ D| N]``: a remembered request id, as pulls
    carry them; ``D`` when its write lost a merge (a retry is answered ERR INDOUBT),
    ``N`` when it is a no-op marker (a retry is answered NOTFOUND)."""
    text = f"{row.rid} {row.origin} {row.seq} {row.version.encode()}"
    if row.discarded:
        return f"{text} D"
    return f"{text} N" if row.noop else text


def decode_request_row(text: str) -> RequestRow:
    parts = text.split(" ")
    flag = parts.pop() if len(parts) == 5 and parts[4] in ("D", "N") else ""
    if (len(parts) != 4 or not is_request_id(parts[0]) or not is_number(parts[1])
            or not is_number(parts[2]) or int(parts[1]) < 1 or int(parts[2]) < 1):
        raise PeerWireError(f"bad request row {text[:60]!r}")
    return RequestRow(parts[0], int(parts[1]), int(parts[2]), decode_clock(parts[3]),
                      flag == "D", flag == "N")


def decode_clock(text: str) -> VectorClock:
    try:
        return VectorClock.decode(text)
    except ClockError as e:
        raise PeerWireError(str(e)) from None


def parse_int(text: str, what: str) -> int:
    if not is_number(text):
        raise PeerWireError(f"{what} must be a number, got {text[:20]!r}")
    return int(text)


def parse_epoch(text: str) -> int:
    """An epoch from the wire: bounded, so a huge one is a refused message, not a
    value that wedges every later comparison (or the persisted state)."""
    epoch = parse_int(text, "epoch")
    if epoch > MAX_EPOCH:
        raise PeerWireError(f"epoch {text[:20]} is above the bound {MAX_EPOCH}")
    return epoch


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
            parse_epoch(epoch),
            decode_clock(clock),
            parse_cluster_id(cluster),
        )


# Typed requests -----------------------------------------------------------------------
#
# Every request carries the sender's epoch first: ``<VERB> <epoch> [args]``.  The wiring
# decodes a frame once into one of these and checks the epoch once, where it enters
# (replica.Replica.peer_request): a newer epoch is seen before anything else (a
# coordinator steps down), an older one is refused with ``STALE <epoch>`` where
# ``fenced`` (requests that change or copy state), and merely answered with the newer
# epoch otherwise (PING and ELECTION, which exist to spread epochs and liveness).


@dataclass(frozen=True)
class Ping:
    epoch: int
    verb: ClassVar[str] = "PING"
    fenced: ClassVar[bool] = False

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class Election:
    epoch: int
    verb: ClassVar[str] = "ELECTION"
    fenced: ClassVar[bool] = False

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class PreVote:
    """Asked before a replica stands (node.py I8).  Answered ``OK <epoch>`` (no
    objection) or ``NO <epoch> <coordinator>``: the answerer follows that coordinator,
    above the asker, and it answered a ping just now."""

    epoch: int
    verb: ClassVar[str] = "PREVOTE"
    fenced: ClassVar[bool] = False

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class Coordinator:
    """Fenced by the node itself (I3 in node.py): its answer is NO <epoch>."""

    epoch: int
    verb: ClassVar[str] = "COORDINATOR"
    fenced: ClassVar[bool] = False

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class Client:
    epoch: int
    line: str
    verb: ClassVar[str] = "CLIENT"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return self.line


@dataclass(frozen=True)
class ReadIndex:
    """A follower asks its coordinator which writes it has made durable, to answer the
    reads that arrived before it asked (confirmedreads.py).  Answered ``OK <clock>``
    by a serving coordinator, ``NO <epoch>`` by any other replica."""

    epoch: int
    verb: ClassVar[str] = "READINDEX"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class Push:
    """The writes of one reactor turn, for one link: ``<len>:<record>`` each (len in
    characters), separated by a space, so one frame is decoded per batch."""

    epoch: int
    records: tuple[Record, ...]
    # encode_batch(records), when the sender has it already: one batch goes to every
    # peer, and encoding it once per peer was a pusher's cost per follower per write.
    encoded: str = field(default="", compare=False, repr=False)
    verb: ClassVar[str] = "PUSH"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return self.encoded or encode_batch(self.records)


def encode_batch(records) -> str:
    return join_batch([encode_record(record) for record in records])


def join_batch(texts: list[str]) -> str:
    """A batch of records already encoded (``encode_record``)."""
    return " ".join(f"{len(text)}:{text}" for text in texts)


def decode_batch(text: str) -> tuple[Record, ...]:
    records = []
    at = 0
    while at < len(text):
        colon = text.find(":", at, at + 12)
        if colon < 0 or not is_number(text[at:colon]):
            raise PeerWireError(f"bad record batch at {text[at:at + 20]!r}")
        end = colon + 1 + int(text[at:colon])
        if end > len(text) or (end < len(text) and text[end] != " "):
            raise PeerWireError("a record batch's lengths do not match its records")
        records.append(decode_record(text[colon + 1:end]))
        at = end + 1
    if not records:
        raise PeerWireError("an empty record batch")
    return tuple(records)


@dataclass(frozen=True)
class Delta:
    epoch: int
    since: VectorClock
    verb: ClassVar[str] = "DELTA"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return self.since.encode()


@dataclass(frozen=True)
class Full:
    epoch: int
    verb: ClassVar[str] = "FULL"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return ""


@dataclass(frozen=True)
class CatchUp:
    """A coordinator taking over in quorum mode asks a follower that accepted it to pull
    what it lacks from it, so that a majority holds its clock before it serves
    (node.py, ``_held_by_a_majority``).  Answered ``OK <clock>`` once that pull is
    durable; ``NO <epoch>`` by a replica that does not follow the asker in that epoch,
    or whose pull failed."""

    epoch: int
    verb: ClassVar[str] = "CATCHUP"
    fenced: ClassVar[bool] = True

    def args(self) -> str:
        return ""


Message = (Ping | Election | PreVote | Coordinator | Client | ReadIndex | Push | Delta
           | Full | CatchUp)

_DECODERS: dict[str, Callable[[int, str], Message]] = {
    "PING": lambda epoch, rest: Ping(epoch),
    "ELECTION": lambda epoch, rest: Election(epoch),
    "PREVOTE": lambda epoch, rest: PreVote(epoch),
    "COORDINATOR": lambda epoch, rest: Coordinator(epoch),
    "CLIENT": lambda epoch, rest: Client(epoch, rest),
    "READINDEX": lambda epoch, rest: ReadIndex(epoch),
    "PUSH": lambda epoch, rest: Push(epoch, decode_batch(rest)),
    "DELTA": lambda epoch, rest: Delta(epoch, decode_clock(rest)),
    "FULL": lambda epoch, rest: Full(epoch),
    "CATCHUP": lambda epoch, rest: CatchUp(epoch),
}


def encode_message(message: Message) -> tuple[str, str]:
    """(verb, payload) for PeerLink.call."""
    args = message.args()
    return message.verb, f"{message.epoch} {args}" if args else str(message.epoch)


def decode_message(verb: str, payload: str) -> Message:
    """The typed request for a frame; PeerWireError for anything malformed."""
    decoder = _DECODERS.get(verb)
    if decoder is None:
        raise PeerWireError(f"unknown verb {verb[:20]}")
    epoch_text, _, rest = payload.partition(" ")
    return decoder(parse_epoch(epoch_text), rest)
