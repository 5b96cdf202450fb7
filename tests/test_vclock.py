"""Laws of VectorClock: a join-semilattice under merge, ordered by <=."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.vclock import EMPTY, ClockError, Order, VectorClock

clocks = st.dictionaries(st.integers(0, 6), st.integers(0, 8), max_size=5).map(VectorClock)


@given(clocks, clocks)
def test_merge_commutative(a, b):
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_merge_associative(a, b, c):
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_merge_idempotent(a):
    assert a.merge(a) == a
    assert a.merge(EMPTY) == a


@given(clocks, clocks, clocks)
def test_merge_is_the_least_upper_bound(a, b, c):
    m = a.merge(b)
    assert a <= m and b <= m
    # least: pointwise max, so no upper bound of a and b lies below it
    assert all(m[r] == max(a[r], b[r]) for r in set(a) | set(b) | set(m))
    upper = c.merge(a).merge(b)  # an arbitrary upper bound
    assert m <= upper
    if a <= c and b <= c:
        assert m <= c


@given(clocks, clocks)
def test_compare_consistent_with_le(a, b):
    expected = {
        (True, True): Order.EQUAL,
        (True, False): Order.BEFORE,
        (False, True): Order.AFTER,
        (False, False): Order.CONCURRENT,
    }[(a <= b, b <= a)]
    assert a.compare(b) is expected
    assert (a < b) == (expected is Order.BEFORE)
    assert (a > b) == (expected is Order.AFTER)


@given(clocks, clocks)
def test_antisymmetry(a, b):
    if a <= b and b <= a:
        assert a == b and hash(a) == hash(b)


@given(clocks, clocks)
def test_total_strictly_monotone(a, b):
    if a < b:
        assert a.total() < b.total()
    assert a.total() < a.advance(3).total()


@given(clocks, st.integers(0, 6))
def test_advance_and_missing_from(a, replica):
    b = a.advance(replica)
    assert a < b and b[replica] == a[replica] + 1
    assert b.missing_from(a) == {replica: b[replica]}
    assert a.missing_from(b) == EMPTY


@given(clocks)
def test_encode_decode_round_trip(a):
    text = a.encode()
    assert text and " " not in text
    assert VectorClock.decode(text) == a


def test_zero_entries_are_absent():
    assert VectorClock({1: 0}) == EMPTY
    assert VectorClock({1: 0}).encode() == "-"
    assert VectorClock.decode("") == EMPTY
    assert VectorClock.decode("2:5,1:3").encode() == "1:3,2:5"


@pytest.mark.parametrize(
    "text",
    [
        "a:1",
        "1:",
        ":1",
        "1",
        "1:-2",
        "-1:2",
        "1:2,1:3",
        "1:2,",
        "1:2;2:3",
        "1: 2",
        "1:2.0",
        "\u0661:2",
        "1:\u0662",
        "\uff11:1",
        "1:\u00b2",
        "1:9223372036854775808",
        "1:" + "9" * 5000,
        "9" * 5000 + ":1",
    ],
)
def test_decode_rejects_garbage(text):
    with pytest.raises(ClockError):
        VectorClock.decode(text)


def test_decode_accepts_the_largest_count():
    assert VectorClock.decode("1:9223372036854775807")[1] == 2**63 - 1


def test_constructor_rejects_bad_entries():
    with pytest.raises(ClockError):
        VectorClock({1: -1})
    with pytest.raises(ClockError):
        VectorClock({"1": 1})


@given(clocks, clocks, st.integers(0, 6), st.one_of(st.none(), st.integers(0, 9)))
def test_derived_clocks_encode_as_built_from_scratch(a, b, replica, count):
    """merge and advance keep a clock's entries sorted without sorting when no replica
    is added (a write's hot path): the encoding is the canonical one either way."""
    for derived in (a.merge(b), b.merge(a), a.advance(replica, count)):
        assert derived.encode() == VectorClock(dict(derived)).encode()
        assert list(derived) == sorted(derived)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=5),
       st.sampled_from(["", "replica", "count"]))
def test_a_decoded_clock_encodes_canonically_whatever_the_text(entries, padded):
    """decode keeps the text it read as the encoding only when it is canonical (sorted,
    no zero counts, no leading zeros); anything else is encoded afresh."""
    r_pad = "0" if padded == "replica" else ""
    c_pad = "0" if padded == "count" else ""
    seen: dict[int, int] = {}
    for replica, count in entries:
        seen.setdefault(replica, count)
    text = ",".join(f"{r_pad}{r}:{c_pad}{c}" for r, c in seen.items()) or "-"
    clock = VectorClock.decode(text)
    assert clock.encode() == VectorClock(dict(clock)).encode()
    assert dict(clock) == {r: c for r, c in seen.items() if c}
