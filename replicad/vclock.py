"""Vector clocks: the partial order behind replication and session guarantees.

A clock maps replica id -> number of writes originated at that replica which the
holder has applied.  Missing entries are zero, so ``{}`` is the empty clock and
``{1: 0}`` equals it.  Clocks are immutable values; every operation returns a new one.

Wire encoding is compact text, ``1:3,2:5`` (ids ascending, zero entries omitted);
the empty clock encodes as ``-`` so that it is never an empty token on a line.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping

EMPTY_TOKEN = "-"
MAX_ENTRY = 2**63 - 1  # clocks are persisted as SQLite INTEGERs (signed 64-bit)


class Order(enum.Enum):
    """How two clocks relate."""

    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


class ClockError(ValueError):
    """A clock could not be decoded, or holds a negative or non-integer count."""


class VectorClock(Mapping[int, int]):
    """An immutable vector clock.  ``a <= b`` means every entry of a is <= b's."""

    __slots__ = ("_entries", "_hash", "_text")

    def __init__(self, entries: Mapping[int, int] | Iterable[tuple[int, int]] = ()):
        items = entries.items() if isinstance(entries, Mapping) else entries
        clean: dict[int, int] = {}
        for replica, count in items:
            if not isinstance(replica, int) or not isinstance(count, int):
                raise ClockError(f"clock entries must be integers, got {replica!r}:{count!r}")
            if replica < 0 or count < 0:
                raise ClockError(f"clock entries must not be negative, got {replica}:{count}")
            if count:
                clean[replica] = count
        self._entries = dict(sorted(clean.items()))
        self._hash: int | None = None
        self._text: str | None = None       # encode(), once: a write encodes it often

    @classmethod
    def _of(cls, entries: dict[int, int], in_order: bool = False) -> VectorClock:
        """A clock of entries known clean (positive ints), no check: the operations
        below build their results from clocks already checked (a write's hot path).
        ``in_order``: the entries are sorted already (a copy with no new replica)."""
        clock = object.__new__(cls)
        clock._entries = entries if in_order else dict(sorted(entries.items()))
        clock._hash = None
        clock._text = None
        return clock

    # Mapping protocol: a missing replica reads as zero through get()/[].
    def __getitem__(self, replica: int) -> int:
        return self._entries.get(replica, 0)

    def __iter__(self) -> Iterator[int]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, replica: object) -> bool:
        return replica in self._entries

    def __eq__(self, other: object) -> bool:
        if isinstance(other, VectorClock):
            return self._entries == other._entries
        if isinstance(other, Mapping):
            return self._entries == VectorClock(other)._entries
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._entries.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"VectorClock({self._entries!r})"

    def __le__(self, other: VectorClock) -> bool:
        theirs = other._entries if isinstance(other, VectorClock) else other
        for replica, count in self._entries.items():
            if count > theirs.get(replica, 0):
                return False
        return True

    def __ge__(self, other: VectorClock) -> bool:
        return other <= self

    def __lt__(self, other: VectorClock) -> bool:
        return self <= other and self != other

    def __gt__(self, other: VectorClock) -> bool:
        return other < self

    def compare(self, other: VectorClock) -> Order:
        """Return how self relates to other (EQUAL, BEFORE, AFTER or CONCURRENT)."""
        below = self <= other
        above = other <= self
        if below and above:
            return Order.EQUAL
        if below:
            return Order.BEFORE
        if above:
            return Order.AFTER
        return Order.CONCURRENT

    def merge(self, other: Mapping[int, int]) -> VectorClock:
        """Pointwise maximum: the least clock that is >= both."""
        if not isinstance(other, VectorClock):
            other = VectorClock(other)
        mine = self._entries
        merged = dict(mine)
        for replica, count in other._entries.items():
            if count > merged.get(replica, 0):
                merged[replica] = count
        return VectorClock._of(merged, in_order=len(merged) == len(mine))

    def advance(self, replica: int, count: int | None = None) -> VectorClock:
        """Return a copy with replica's entry raised to count (default: one more)."""
        if not isinstance(replica, int) or not (count is None or isinstance(count, int)):
            raise ClockError(f"clock entries must be integers, got {replica!r}:{count!r}")
        if replica < 0 or (count is not None and count < 0):
            raise ClockError(f"clock entries must not be negative, got {replica}:{count}")
        new = dict(self._entries)
        mine = new.get(replica, 0)
        raised = mine + 1 if count is None else max(count, mine)
        if raised:
            new[replica] = raised
        return VectorClock._of(new, in_order=mine > 0)   # no new replica: still sorted

    def capped(self, replica: int, count: int) -> VectorClock:
        """Return a copy with replica's entry lowered to at most count (0: removed)."""
        mine = self._entries.get(replica, 0)
        if mine <= count:
            return self
        new = dict(self._entries)
        if count > 0:
            new[replica] = count
        else:
            del new[replica]
        return VectorClock._of(new, in_order=True)

    def missing_from(self, have: Mapping[int, int]) -> VectorClock:
        """The entries where self is ahead of have: what a holder of have still needs."""
        return VectorClock._of({r: c for r, c in self._entries.items() if c > have.get(r, 0)})

    def total(self) -> int:
        """Sum of all entries; strictly grows along the happened-before order."""
        return sum(self._entries.values())

    def encode(self) -> str:
        text = self._text
        if text is None:
            text = self._text = (
                ",".join(f"{replica}:{count}" for replica, count in self._entries.items())
                or EMPTY_TOKEN)
        return text

    @classmethod
    def decode(cls, text: str) -> VectorClock:
        """Parse ``1:3,2:5`` (or ``-``/empty for the empty clock); raise ClockError."""
        text = text.strip()
        if text in ("", EMPTY_TOKEN):
            return cls()
        entries: dict[int, int] = {}
        previous = -1
        canonical = True     # as encode() would write it: then encode() need not
        for part in text.split(","):
            replica_text, sep, count_text = part.partition(":")
            if not sep or not _is_number(replica_text) or not _is_number(count_text):
                raise ClockError(f"bad clock entry {part!r} (expected id:count)")
            replica = int(replica_text)
            if replica in entries:
                raise ClockError(f"replica {replica} appears twice in clock {text!r}")
            count = entries[replica] = int(count_text)
            canonical = (canonical and replica > previous and count > 0
                         and count_text[0] != "0"
                         and (replica_text[0] != "0" or replica_text == "0"))
            previous = replica
        if canonical:
            clock = cls._of(entries, in_order=True)
            clock._text = text       # a pushed record's version, stored as it came
            return clock
        if 0 in entries.values():
            entries = {replica: count for replica, count in entries.items() if count}
        return cls._of(entries)     # checked above: non-negative ints, zeros dropped


EMPTY = VectorClock()


def _is_number(text: str) -> bool:
    # Length first: int() of a huge digit string raises a plain ValueError (3.11's limit).
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ENTRY
