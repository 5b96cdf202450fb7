"""replicad.peerwire: records, frames and the handshake proofs.  Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad import peerwire
from replicad.node import MAX_EPOCH
from replicad.peerwire import (
    Frame,
    PeerStatus,
    PeerWireError,
    client_proof,
    decode_clock,
    decode_record,
    encode_record,
    parse_frame,
    parse_int,
    proofs_match,
    server_proof,
)
from replicad.store import Record
from replicad.vclock import VectorClock
from replicad.wire import MAX_NUMBER_DIGITS

SECRET = "cluster secret"

KEY_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")
).filter(lambda ch: not ch.isspace())
KEYS = st.text(KEY_CHARS, min_size=1, max_size=20)
VALUES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.just("\t"),
    max_size=40,
)
CLOCKS = st.dictionaries(
    st.integers(1, 64), st.integers(1, 2**63 - 1), max_size=4
).map(VectorClock)
# Write ids on the peer wire have at most wire.MAX_NUMBER_DIGITS digits.
SEQS = st.integers(1, 10**MAX_NUMBER_DIGITS - 1)
RIDS = st.none() | st.builds(lambda c, n: f"{c}.{n}", st.text("0123456789abcdef", min_size=8,
                                                          max_size=32), st.integers(1, 10**17))
CLOCKS = st.dictionaries(                # small entries: a record's version total
    st.integers(1, 64), st.integers(1, 10**15), max_size=4     # must fit SQLite
).map(VectorClock)


@st.composite
def records(draw):
    """Records the store accepts: the version holds the write itself (version[origin]
    == seq), as every real record does."""
    origin, seq = draw(st.integers(1, 64)), draw(st.integers(1, 10**15))
    version = VectorClock({**dict(draw(CLOCKS).items()), origin: seq})
    return Record(draw(KEYS), draw(st.none() | VALUES), origin, seq, version,
                  draw(st.integers(0, MAX_EPOCH)), draw(RIDS))


RECORDS = records()


# Records --------------------------------------------------------------------------------


def test_record_encoding():
    record = Record("k", "hello world", 2, 7, VectorClock({1: 3, 2: 7}), 5)
    assert encode_record(record) == "k 2 7 5 - 1:3,2:7 V hello world"
    tombstone = Record("k", None, 1, 4, VectorClock({1: 4}), rid="0123abcd.9")
    assert encode_record(tombstone) == "k 1 4 0 0123abcd.9 1:4 T"
    assert encode_record(Record("k", "", 1, 1, VectorClock())) == "k 1 1 0 - - V "


@pytest.mark.parametrize(
    "value", ["plain", "with spaces", "  leading and trailing  ", "", " ", "a\tb", "V T END",
              "caf\u00e9 \u2603", "5 6 7 8 9"]
)
def test_record_round_trip_values(value):
    record = Record("key", value, 3, 9, VectorClock({3: 9, 1: 2}))
    assert decode_record(encode_record(record)) == record


def test_tombstone_round_trip():
    record = Record("gone", None, 1, 2, VectorClock({1: 2}))
    decoded = decode_record(encode_record(record))
    assert decoded == record
    assert decoded.deleted
    assert decoded.value is None


def test_a_no_op_marker_round_trips_as_n():
    marker = Record("k", None, 2, 5, VectorClock({2: 5}), 3, "0123abcd.9", noop=True)
    assert encode_record(marker) == "k 2 5 3 0123abcd.9 2:5 N"
    decoded = decode_record(encode_record(marker))
    assert decoded == marker and decoded.noop
    assert not decode_record("k 2 5 3 0123abcd.9 2:5 T").noop


def test_empty_value_is_not_a_tombstone():
    decoded = decode_record("k 1 1 0 - 1:1 V ")
    assert decoded.value == ""
    assert not decoded.deleted


@given(RECORDS)
def test_record_round_trip_property(record):
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    "text",
    [
        "",
        "k",
        "k 1 2",
        "k 1 2 0 - 1:1",            # no flag
        "k 1 2 0 - 1:1 X v",        # unknown flag
        "k 1 2 0 - 1:1 v value",    # flag is case-sensitive
        "k 1 2 0 - 1:1 V",          # V without a value (not even the space)
        "k 1 2 0 - 1:1 T extra",    # a tombstone with a value
        "k 1 2 0 - 1:1 T ",         # ... even an empty one
        "k 1 2 0 - 1:1 N",          # a no-op marker without its request id
        "k 1 2 0 0123abcd.1 1:1 N v",   # ... or with a value
        "k x 2 0 - 1:1 V v",        # origin not a number
        "k 1 -2 0 - 1:1 V v",       # seq not a number
        "k \u0663 2 0 - 1:1 V v",   # a non-ASCII digit
        "k 1 2 0 - bogus V v",      # bad version
        "k 1 2 0 - 1:1,1:2 V v",    # replica twice in the version
        "k 1 2 0 - 1:-1 V v",
        "k 1 2 0 1:1 V v",        # no request id field
        "k 1 2 x - 1:1 V v",      # epoch not a number
        "k 1 2 0 NOTANID.1 1:1 V v",   # bad request id
        f"k 1 2 {MAX_EPOCH + 1} - 1:1 V v",   # epoch above the bound
    ],
)
def test_bad_records_raise_peer_wire_error(text):
    with pytest.raises(PeerWireError):
        decode_record(text)


def test_peer_wire_error_is_a_value_error():
    assert issubclass(PeerWireError, ValueError)


def test_decode_clock_and_parse_int():
    assert decode_clock("1:2,3:4") == VectorClock({1: 2, 3: 4})
    assert decode_clock("-") == VectorClock()
    with pytest.raises(PeerWireError):
        decode_clock("1:x")
    assert parse_int("42", "count") == 42
    for bad in ("", "-1", "4.2", "x", "\u0663", " 1"):
        with pytest.raises(PeerWireError, match="count must be a number"):
            parse_int(bad, "count")


# Regression: int() of a 5000-digit string raises a plain ValueError (Python's int max
# str digits), which the peer protocol did not catch.
@pytest.mark.parametrize(
    "parse",
    [
        lambda: parse_int("9" * 5000, "replica id"),
        lambda: parse_frame("9" * 5000 + " PING"),
        lambda: decode_record("k " + "9" * 5000 + " 1 0 - 1:1 V v"),
    ],
    ids=["parse_int", "parse_frame", "decode_record"],
)
def test_huge_numbers_raise_peer_wire_error(parse):
    with pytest.raises(PeerWireError):
        parse()


def test_number_digit_limit():
    biggest = "9" * MAX_NUMBER_DIGITS
    assert parse_int(biggest, "rid") == int(biggest)
    assert parse_frame(biggest + " OK") == Frame(int(biggest), "OK")
    assert decode_record(f"k 1 {biggest} 0 - 1:{biggest} T").seq == int(biggest)
    with pytest.raises(PeerWireError):
        parse_int(biggest + "9", "rid")


# Frames ---------------------------------------------------------------------------------


def test_frame_encoding():
    assert Frame(3, "OK").encode() == "3 OK"
    assert Frame(3, "OK", "").encode() == "3 OK"
    assert Frame(12, "REC", "k 1 1 - V a b").encode() == "12 REC k 1 1 - V a b"


@pytest.mark.parametrize(
    "frame",
    [Frame(1, "PING"), Frame(7, "PUSH", "k 1 1 1:1 V  two  spaces "), Frame(99, "END", "1:4"),
     Frame(0, "ERR", "BADARGS nope")],
)
def test_frame_round_trip(frame):
    assert parse_frame(frame.encode()) == frame


@pytest.mark.parametrize("line", ["", "PING", "x PING", "1", "1 ", "-1 PING", " 1 PING",
                                  "\u0663 PING"])
def test_bad_frames(line):
    with pytest.raises(PeerWireError, match="expected '<rid> <KIND> ...'"):
        parse_frame(line)


def test_frame_kinds_and_verbs():
    assert peerwire.FINAL_KINDS == {"OK", "NO", "ERR", "END", "STALE", "REPLY"}
    assert peerwire.STREAM_KINDS == {"LINE", "REC", "REQ"}
    assert not peerwire.FINAL_KINDS & peerwire.STREAM_KINDS
    assert {"PING", "ELECTION", "COORDINATOR"} <= peerwire.VERBS


# Handshake proofs -----------------------------------------------------------------------


def test_nonces_are_fresh_hex():
    a, b = peerwire.new_nonce(), peerwire.new_nonce()
    assert a != b
    assert len(a) == 2 * peerwire.NONCE_BYTES
    int(a, 16)


def test_proofs_are_hex_sha256():
    proof = client_proof(SECRET, 1, 2, "sn", "cn")
    assert len(proof) == 64
    int(proof, 16)
    assert proof == client_proof(SECRET, 1, 2, "sn", "cn")   # deterministic


def test_client_and_server_proofs_differ():
    args = (SECRET, 1, 2, "server-nonce", "client-nonce")
    assert client_proof(*args) != server_proof(*args)


@pytest.mark.parametrize(
    "changed",
    [
        ("other secret", 1, 2, "sn", "cn"),
        (SECRET, 3, 2, "sn", "cn"),      # client id
        (SECRET, 1, 3, "sn", "cn"),      # server id
        (SECRET, 1, 2, "sN", "cn"),      # server nonce
        (SECRET, 1, 2, "sn", "cN"),      # client nonce
        (SECRET, 2, 1, "sn", "cn"),      # ids swapped
        (SECRET, 1, 2, "cn", "sn"),      # nonces swapped (a reflected handshake)
    ],
)
def test_proofs_depend_on_secret_ids_and_both_nonces(changed):
    base = (SECRET, 1, 2, "sn", "cn")
    assert client_proof(*changed) != client_proof(*base)
    assert server_proof(*changed) != server_proof(*base)


def test_proof_is_a_keyed_mac_of_the_documented_message():
    import hashlib
    import hmac

    message = b"replicad-peer-auth-v2|client|1|2|sn|cn|-|-"
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert client_proof(SECRET, 1, 2, "sn", "cn") == expected
    assert client_proof(SECRET, 1, 2, "sn", "cn", None, None) == expected
    bound = b"replicad-peer-auth-v2|server|1|2|sn|cn|" + b"a" * 32 + b"|" + b"b" * 32
    expected = hmac.new(SECRET.encode(), bound, hashlib.sha256).hexdigest()
    assert server_proof(SECRET, 1, 2, "sn", "cn", "a" * 32, "b" * 32) == expected


CLUSTER_A, CLUSTER_B = "a" * 32, "b" * 32


@pytest.mark.parametrize(
    "clusters",
    [(CLUSTER_A, None), (None, CLUSTER_A), (CLUSTER_B, CLUSTER_A), (CLUSTER_A, CLUSTER_B),
     (CLUSTER_B, CLUSTER_B)],
)
def test_proofs_cover_both_cluster_ids(clusters):
    base = (SECRET, 1, 2, "sn", "cn", CLUSTER_A, CLUSTER_A)
    changed = (SECRET, 1, 2, "sn", "cn", *clusters)
    assert client_proof(*changed) != client_proof(*base)
    assert server_proof(*changed) != server_proof(*base)


def test_parse_cluster_id():
    assert peerwire.parse_cluster_id("-") is None
    assert peerwire.parse_cluster_id(CLUSTER_A) == CLUSTER_A
    for bad in ("", "a" * 31, "a" * 33, "A" * 32, "g" * 32, " " + "a" * 31, "--"):
        with pytest.raises(PeerWireError, match="bad cluster id"):
            peerwire.parse_cluster_id(bad)


def test_clusters_conflict_only_when_both_are_bound_and_differ():
    assert peerwire.clusters_conflict(CLUSTER_A, CLUSTER_B)
    assert not peerwire.clusters_conflict(CLUSTER_A, CLUSTER_A)
    assert not peerwire.clusters_conflict(CLUSTER_A, None)
    assert not peerwire.clusters_conflict(None, CLUSTER_A)
    assert not peerwire.clusters_conflict(None, None)


# PING answers ---------------------------------------------------------------------------


def test_peer_status_carries_the_cluster_id():
    status = PeerStatus(2, "follower", 3, 4, VectorClock({1: 2}), CLUSTER_A)
    assert status.encode() == f"follower 3 4 1:2 {CLUSTER_A}"
    assert PeerStatus.parse(2, status.encode()) == status
    unbound = PeerStatus(2, "coordinator", None, 0, VectorClock())
    assert unbound.cluster_id is None                      # the old constructor still works
    assert unbound.encode() == "coordinator - 0 - -"
    assert PeerStatus.parse(2, unbound.encode()) == unbound
    # An answer without the field (an older replica) reads as unbound.
    assert PeerStatus.parse(2, "follower 3 4 1:2") == PeerStatus(
        2, "follower", 3, 4, VectorClock({1: 2}), None
    )


@pytest.mark.parametrize("payload", ["follower 3 4 1:2 xyz", "follower 3 4 1:2 - extra",
                                     "follower 3 4", f"follower 3 4 1:2 {'A' * 32}"])
def test_bad_peer_status(payload):
    with pytest.raises(PeerWireError):
        PeerStatus.parse(2, payload)


def test_proofs_match_semantics():
    proof = client_proof(SECRET, 1, 2, "sn", "cn")
    assert proofs_match(proof, proof)
    assert proofs_match(proof, str(proof))
    assert not proofs_match(proof, proof.upper())
    assert not proofs_match(proof, proof[:-1])
    assert not proofs_match(proof, proof + "0")
    assert not proofs_match(proof, "")
    assert not proofs_match(proof, proof[:-1] + ("0" if proof[-1] != "0" else "1"))
    # Non-ASCII input from the wire is compared, not an exception.
    assert not proofs_match(proof, "\u00e9" * 64)


def test_proofs_match_uses_constant_time_compare(monkeypatch):
    calls = []
    real = peerwire.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(peerwire.hmac, "compare_digest", spy)
    assert proofs_match("ab", "ab")
    assert calls == [(b"ab", b"ab")]


# Typed messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        peerwire.Ping(0),
        peerwire.Election(7),
        peerwire.Coordinator(MAX_EPOCH),
        peerwire.Client(3, "PUT k a value with spaces"),
        peerwire.ReadIndex(5),
        peerwire.Push(4, (Record("k", "v w", 2, 3, VectorClock({2: 3}), 4),)),
        peerwire.Push(4, (Record("a", "1:2 3", 2, 3, VectorClock({2: 3}), 4, "00ff00ff.1"),
                          Record("b", None, 2, 4, VectorClock({2: 4}), 4),
                          Record("c", "", 2, 5, VectorClock({2: 5}), 4))),
        peerwire.Delta(2, VectorClock({1: 5, 3: 2})),
        peerwire.Delta(2, VectorClock()),
        peerwire.Full(9),
        peerwire.CatchUp(11),
    ],
)
def test_messages_round_trip_with_their_epoch(message):
    verb, payload = peerwire.encode_message(message)
    assert verb in peerwire.VERBS
    assert payload.split(" ")[0] == str(message.epoch)
    assert peerwire.decode_message(verb, payload) == message


def test_fenced_messages_are_the_ones_that_change_or_copy_state():
    fenced = {cls.verb for cls in (peerwire.Ping, peerwire.Election, peerwire.PreVote,
                                   peerwire.Coordinator, peerwire.Client,
                                   peerwire.ReadIndex, peerwire.Push, peerwire.Delta,
                                   peerwire.Full, peerwire.CatchUp) if cls.fenced}
    assert fenced == {"CLIENT", "READINDEX", "PUSH", "DELTA", "FULL", "CATCHUP"}


@pytest.mark.parametrize(
    ("verb", "payload"),
    [
        ("PING", ""),                          # no epoch
        ("PING", "x"),
        ("ELECTION", "-1"),
        ("COORDINATOR", str(MAX_EPOCH + 1)),   # a huge epoch is refused, never adopted
        ("COORDINATOR", "9" * 19),             # 19 digits: above every bound
        ("PUSH", "1 k 1 1 0 1:1"),             # bad record
        ("DELTA", "1 1:x"),
        ("NOPE", "1"),
    ],
)
def test_bad_messages_raise_peer_wire_error(verb, payload):
    with pytest.raises(PeerWireError):
        peerwire.decode_message(verb, payload)


def test_parse_epoch_bounds():
    assert peerwire.parse_epoch(str(MAX_EPOCH)) == MAX_EPOCH
    with pytest.raises(PeerWireError, match="above the bound"):
        peerwire.parse_epoch(str(MAX_EPOCH + 1))


@given(st.lists(RECORDS, min_size=1, max_size=5))
def test_record_batches_round_trip(records):
    assert peerwire.decode_batch(peerwire.encode_batch(records)) == tuple(records)


@pytest.mark.parametrize("text", ["", "5:k 1 1", "x:k", "3:abc4:defg", "99:k 1 1 0 - 1:1 V v",
                                  "14:k 1 1 0 - 1:1 T extra"])
def test_bad_record_batches_raise_peer_wire_error(text):
    with pytest.raises(PeerWireError):
        peerwire.decode_batch(text)


def test_request_rows_round_trip_and_bad_ones_are_refused():
    from replicad.store import RequestRow

    row = RequestRow("00ff00ff.12", 3, 7, VectorClock({3: 7, 1: 2}))
    assert peerwire.decode_request_row(peerwire.encode_request_row(row)) == row
    for bad in ("", "00ff00ff.1 3 7", "nothex.1 3 7 3:7", "00ff00ff.1 0 7 3:7",
                "00ff00ff.1 3 x 3:7", "00ff00ff.1 3 7 3:x"):
        with pytest.raises(PeerWireError):
            peerwire.decode_request_row(bad)


def test_a_discarded_request_row_round_trips():
    from replicad.store import RequestRow

    row = RequestRow("00ff00ff.12", 3, 7, VectorClock({3: 7}), discarded=True)
    assert peerwire.encode_request_row(row).endswith(" D")
    assert peerwire.decode_request_row(peerwire.encode_request_row(row)) == row


def test_a_no_op_request_row_round_trips():
    from replicad.store import RequestRow

    row = RequestRow("00ff00ff.12", 3, 7, VectorClock({3: 7}), noop=True)
    assert peerwire.encode_request_row(row) == "00ff00ff.12 3 7 3:7 N"
    assert peerwire.decode_request_row(peerwire.encode_request_row(row)) == row
    for bad in ("00ff00ff.12 3 7 3:7 X", "00ff00ff.12 3 7 3:7 N D", "00ff00ff.12 0 0 - N"):
        with pytest.raises(PeerWireError):
            peerwire.decode_request_row(bad)
