"""The store's hot records: ``get`` from memory, never a record the database lacks.

Each test that checks a way around ``_put`` (a rolled-back change, a failed group, an
import) fails if the clearing of the dict on that path is taken out.
"""

from __future__ import annotations

import sqlite3

import pytest

import replicad.store
from replicad.store import Record, Store, StoreError
from replicad.vclock import VectorClock


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db.sqlite"))
    yield s
    s.close()


def statements(store: Store) -> list[str]:
    """The SQL the store's connection runs from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def from_disk(store: Store, key: str) -> Record | None:
    store._hot.clear()
    return store.get(key)


def test_a_hot_record_is_read_without_sql(store):
    store.write(1, "k", "v")
    store.get("missing")
    seen = statements(store)
    assert store.get("k").value == "v"
    assert store.get("missing") is None          # a key never written is known too
    assert seen == []
    store._hot.clear()
    assert store.get("k").value == "v"
    assert len(seen) == 1                        # a miss reads the row


def test_the_dict_is_bounded_oldest_out_first(store, monkeypatch):
    monkeypatch.setattr(replicad.store, "HOT_RECORDS", 3)
    for n in range(5):
        store.write(1, f"k{n}", str(n))
    assert list(store._hot) == ["k2", "k3", "k4"]
    assert store.get("k0").value == "0"          # evicted: read from the database
    assert list(store._hot) == ["k3", "k4", "k0"]


def test_a_rolled_back_change_in_a_group_is_not_read_back(store, monkeypatch):
    store.write(1, "k", "old")
    store.begin_group()

    def fails(record):
        raise sqlite3.OperationalError("database or disk is full")

    # A write with a request id is two statements (the record, then the id), so it
    # runs under a savepoint: the second failing undoes the first.
    monkeypatch.setattr(store, "_remember", fails)      # after _put, inside the change
    with pytest.raises(sqlite3.OperationalError):
        store.write(1, "k", "new", rid="0123abcd.1")
    monkeypatch.undo()
    assert store.get("k").value == "old"
    store.commit_group()
    assert store.get("k") == from_disk(store, "k")


def test_a_one_statement_write_that_fails_in_a_group_leaves_it_whole(store):
    """A write without a request id is one statement (REPLACE) and runs without a
    savepoint: SQLite itself undoes a failed statement, the delete half of a REPLACE
    over an existing row included, and the group's other writes stay."""
    store.write(1, "bad", "old")
    store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'bad'"
                      " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    store.begin_group()
    seen = statements(store)
    store.write(1, "a", "1")
    with pytest.raises(sqlite3.IntegrityError):
        store.write(1, "bad", "new")
    store.write(1, "c", "3")
    assert not any("SAVEPOINT" in sql for sql in seen)
    assert store.get("bad").value == "old"
    store.commit_group()
    assert [from_disk(store, k).value for k in ("a", "bad", "c")] == ["1", "old", "3"]
    assert store.clock == VectorClock({1: 3})          # the failed write took no number
    assert (from_disk(store, "c").seq, from_disk(store, "bad").seq) == (3, 1)


def test_a_rolled_back_transaction_is_not_read_back(store, monkeypatch):
    store.write(1, "k", "old")

    def fails(new_clock):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_save_clock", fails)    # after the merge's _put
    with pytest.raises(sqlite3.OperationalError):
        store.apply([Record("k", "theirs", 2, 1, VectorClock({1: 1, 2: 1}))],
                    VectorClock({2: 1}))
    monkeypatch.undo()
    assert store.get("k").value == "old"


def test_a_failed_group_commit_is_not_read_back(store, monkeypatch):
    store.write(1, "k", "old")
    store.begin_group()
    store.write(1, "k", "new")
    store.write(1, "fresh", "v")
    assert store.get("k").value == "new"          # the connection's own view, as SQL's

    def fails(old, new):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write_clock", fails)   # the group's COMMIT fails
    with pytest.raises(sqlite3.OperationalError):
        store.commit_group()
    assert store.get("k").value == "old"
    assert store.get("fresh") is None


def test_an_import_is_read_back_whole(store):
    store.write(1, "mine", "v")
    assert store.get("theirs") is None            # known absent, then copied in bulk
    importer = store.begin_import()
    importer.add(Record("theirs", "t", 2, 1, VectorClock({2: 1})))
    importer.add(Record("mine", "newer", 2, 2, VectorClock({1: 1, 2: 2})))
    importer.finish(VectorClock({2: 2}))
    assert store.get("theirs").value == "t"       # the INSERT .. SELECT went around _put
    assert store.get("mine").value == "newer"
    assert store.get("theirs") == from_disk(store, "theirs")


def test_a_refused_write_leaves_the_record_read_before(store):
    store.write(1, "k", "v", epoch=5)
    with pytest.raises(StoreError):
        store.write(1, "k", "older epoch", epoch=3)
    assert store.get("k") == from_disk(store, "k")
    assert store.get("k").value == "v"


# A change to a key the dict does not know tries an INSERT first (one statement for a
# new key); the tests below check that a key that has a row is still written over as
# its row says, which a blind insert-or-replace would get wrong.

def test_a_write_to_a_new_key_is_one_statement(store):
    store.begin_group()                 # as a replica writes: the group commits later
    seen = statements(store)
    store.write(1, "new", "v")
    assert len(seen) == 1 and seen[0].startswith("INSERT INTO kv")
    seen.clear()
    store.apply_pushed_batch([Record("pushed", "p", 2, 1, VectorClock({2: 1}))])
    assert not any(sql.startswith("SELECT") for sql in seen)
    store.commit_group()
    assert from_disk(store, "new").value == "v" and from_disk(store, "pushed").value == "p"


def test_a_write_over_a_row_the_dict_does_not_hold_merges_its_version(store):
    # After a gap the record's version is ahead of the clock: only the merge puts the
    # new write above it.
    theirs = Record("k", "theirs", 2, 5, VectorClock({2: 5}), epoch=1)
    assert store.apply_pushed_batch([theirs]) == ["gap"] and store.clock == VectorClock()
    store._hot.clear()
    mine = store.write(1, "k", "mine", epoch=1)
    assert mine.version == VectorClock({1: 1, 2: 5})   # above the record it replaced
    assert from_disk(store, "k") == mine


def test_a_write_over_a_newer_epoch_the_dict_does_not_hold_is_refused(store):
    store.apply([Record("k", "newer", 2, 1, VectorClock({2: 1}), epoch=7)],
                VectorClock({2: 1}))
    store._hot.clear()
    with pytest.raises(StoreError):
        store.write(1, "k", "deposed", epoch=3)
    assert from_disk(store, "k").value == "newer"
    assert store.clock == VectorClock({2: 1})


def test_a_pushed_record_that_loses_to_a_row_the_dict_does_not_hold(store):
    store.apply([Record("k", "winner", 2, 1, VectorClock({2: 1}), epoch=7)],
                VectorClock({2: 1}))
    store._hot.clear()
    outcome = store.apply_pushed_batch([Record("k", "loser", 3, 1, VectorClock({3: 1}),
                                               epoch=2)])
    assert outcome == ["lost"]
    assert from_disk(store, "k").value == "winner"


def test_a_write_says_which_record_it_replaced_hot_or_not(store, monkeypatch):
    """Store.replaced: what the write looked up anyway (quorumindex.py keeps it)."""
    store.write(1, "k", "a")
    assert store.replaced is None                        # a new key
    first = store.get("k")
    store.write(1, "k", "b")
    assert store.replaced == first                       # from the dict
    store._hot.clear()                                   # as after an import, or evicted
    second = from_disk(store, "k")
    store.write(1, "k", "c")
    assert store.replaced == second and second.value == "b"   # from a SELECT
