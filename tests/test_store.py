"""The SQLite store: records, clock, durability, merge, exports and imports."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replicad.store
from replicad.store import (
    NewerEpoch,
    Record,
    RequestRow,
    Store,
    StoreError,
    disk_broken,
    is_conflict,
    outcome_unknown,
    winner,
)
from replicad.vclock import EMPTY, VectorClock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture
def small_batches(monkeypatch):
    """Tiny batches, so fetchmany, staging flushes, paging and an import's merge steps
    run many rounds."""
    monkeypatch.setattr(replicad.store, "BATCH_ROWS", 3)
    monkeypatch.setattr(replicad.store, "MERGE_ROWS", 4)


def dump(store):
    clock, records = store.export_full()
    return clock, list(records)


def rec(key, value, origin, clock):
    """A record written at origin by a replica whose clock (before the write) is clock."""
    version = VectorClock(clock).advance(origin)
    return Record(key, value, origin, version[origin], version)


def test_write_get_delete(store):
    assert store.get("k") is None
    r1 = store.write(1, "k", "v1")
    assert (r1.origin, r1.seq, r1.version) == (1, 1, VectorClock({1: 1}))
    assert store.get("k") == r1 and not r1.deleted
    r2 = store.write(1, "k", None)
    assert store.get("k") == r2 and r2.deleted and r2.seq == 2
    assert store.keys() == [] and store.count() == 0
    store.write(1, "e", "")
    assert store.get("e").value == "" and store.keys() == ["e"]


def test_clock_advances_with_writes(store):
    store.apply([rec("x", "1", 2, {})], VectorClock({2: 1}))
    for i in range(1, 4):
        r = store.write(1, f"k{i}", "v")
        assert r.version == store.clock == VectorClock({1: i, 2: 1})


def test_keys_prefix_and_count(store):
    for key in ["b", "a", "ab", "abc", "a/b", "ac", "z"]:
        store.write(1, key, "v")
    store.write(1, "ab", None)
    assert store.keys() == ["a", "a/b", "abc", "ac", "b", "z"]
    assert store.keys("a") == ["a", "a/b", "abc", "ac"]
    assert store.keys("ab") == ["abc"]
    assert store.keys("q") == []
    assert store.count() == 6


EDGE_CHARS = "a\x7f\x80\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff"


@settings(max_examples=50, deadline=None)
@given(
    st.sets(st.text(EDGE_CHARS, min_size=1, max_size=4), max_size=15),
    st.text(EDGE_CHARS, max_size=3),
)
def test_keys_prefix_unicode_matches_startswith(keys, prefix):
    """Prefix ranges around code point boundaries (surrogates, U+10FFFF) match startswith."""
    with Store(":memory:") as s:
        for key in keys:
            s.write(1, key, "v")
        assert s.keys(prefix) == sorted(k for k in keys if k.startswith(prefix))


def test_write_durable_across_reopen(tmp_path):
    path = str(tmp_path / "db.sqlite")
    s = Store(path)
    s.write(1, "k", "v")
    s.write(1, "gone", None)
    s.set_epoch(7)
    s.close()
    s = Store(path)
    assert s.get("k").value == "v" and s.get("gone").deleted
    assert s.clock == VectorClock({1: 2}) and s.epoch == 7
    s.close()


def test_write_survives_kill_9(tmp_path):
    path = tmp_path / "db.sqlite"
    script = (
        "import os, signal, sys\n"
        "from replicad.store import Store\n"
        "s = Store(sys.argv[1])\n"
        "s.write(3, 'k', 'v')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Store(str(path)) as s:
        assert s.get("k").value == "v" and s.clock == VectorClock({3: 1})


def test_apply_bad_record_half_way_leaves_nothing(store):
    store.write(1, "mine", "v")
    before = dump(store)
    good = rec("a", "x", 2, {})
    bad = Record("b", "y", 2, 5, VectorClock({2: 1}))  # version[origin] != seq
    with pytest.raises(StoreError):
        store.apply([good, bad], VectorClock({2: 2}))
    assert dump(store) == before and store.get("a") is None

    def failing():
        yield good
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError):
        store.apply(failing(), VectorClock({2: 1}))
    assert dump(store) == before and store.clock == VectorClock({1: 1})


def test_apply_merges_and_counts(store):
    r = rec("k", "v", 2, {})
    result = store.apply([r], VectorClock({2: 1}))
    assert (result.applied, result.conflicts) == (1, 0)
    assert store.get("k") == r and store.clock == VectorClock({2: 1})
    # a second delivery is covered by the clock: nothing changes
    assert store.apply([r], VectorClock({2: 1})).applied == 0
    # an older write loses to the newer one already held
    newer = store.write(1, "k", "mine")
    old = rec("k", "old", 3, {})
    result = store.apply([old], VectorClock({3: 1}))
    assert (result.applied, result.conflicts, result.conflict_keys) == (0, 1, ["k"])
    assert store.get("k") == newer and store.clock == VectorClock({1: 1, 2: 1, 3: 1})


def test_write_wins_over_the_record_it_replaces(store):
    """A pushed record may know writes this replica lacks (here 3:1): a later local write
    must still dominate it, or replicas that keep the pushed record would diverge."""
    pushed = Record("a", "theirs", 2, 1, VectorClock({2: 1, 3: 1}))
    assert store.apply_pushed(pushed) == "applied"
    assert store.clock == VectorClock({2: 1})
    mine = store.write(1, "a", "mine")
    assert mine.version == VectorClock({1: 1, 2: 1, 3: 1}) and store.clock == {1: 1, 2: 1}
    assert winner(pushed, mine) is mine and not is_conflict(pushed, mine)
    with Store(":memory:") as other:
        other.apply([pushed], VectorClock({2: 1, 3: 1}))
        other.apply(*reversed(store.export_delta(other.clock)))
        assert other.get("a") == mine


def test_write_refuses_a_replaced_database(store):
    """Seeing its own write beyond its clock means the replica lost its data."""
    store.apply([Record("a", "v", 1, 5, VectorClock({1: 5}))])
    with pytest.raises(StoreError, match="replaced"):
        store.write(1, "a", "new")
    assert store.clock == EMPTY and store.get("a").seq == 5


def test_winner_and_conflict_rules():
    a = rec("k", "a", 1, {})
    b = rec("k", "b", 2, {})
    assert is_conflict(a, b) and winner(a, b) is b and winner(b, a) is b
    c = rec("k", "c", 1, {1: 1, 2: 1})  # saw both
    assert not is_conflict(b, c) and winner(b, c) is c and winner(c, a) is c
    assert winner(a, a) is a


def test_conflicts_counted_and_persisted(tmp_path):
    path = str(tmp_path / "db.sqlite")
    s = Store(path)
    s.write(1, "k", "one")
    theirs = rec("k", "two", 2, {})
    assert s.apply([theirs], VectorClock({2: 1})).conflicts == 1
    assert s.get("k") == theirs  # (total, origin, seq): (1, 2, 1) > (1, 1, 1)
    assert s.apply([theirs, rec("j", "x", 3, {})]).conflicts == 0
    s.close()
    with Store(path) as s:
        assert s.conflicts == 1


def test_apply_pushed(store):
    r1 = rec("a", "1", 2, {})
    assert store.apply_pushed(r1) == "applied" and store.clock == VectorClock({2: 1})
    assert store.apply_pushed(r1) == "duplicate"
    r3 = rec("c", "3", 2, {2: 2})
    assert store.apply_pushed(r3) == "gap"
    assert store.get("c") == r3 and store.clock == VectorClock({2: 1})
    # the delta that fills the gap brings write 2 and the clock
    r2 = rec("b", "2", 2, {2: 1})
    assert store.apply([r2, r3], VectorClock({2: 3})).applied == 1
    assert store.clock == VectorClock({2: 3}) and store.get("b") == r2
    assert store.apply_pushed(r3) == "duplicate"


def test_export_full_and_delta(store):
    a1 = store.write(1, "a", "1")
    b = rec("b", "2", 2, {})
    store.apply([b], VectorClock({2: 1}))
    a2 = store.write(1, "c", None)
    clock, records = dump(store)
    assert clock == VectorClock({1: 2, 2: 1}) and records == [a1, b, a2]

    def delta(since):
        c, rs = store.export_delta(VectorClock(since))
        return c, sorted(rs, key=lambda r: (r.origin, r.seq))

    assert delta({}) == (clock, [a1, a2, b])
    assert delta({1: 1}) == (clock, [a2, b])
    assert delta({1: 2, 2: 1}) == (clock, [])
    assert delta({1: 5, 2: 0}) == (clock, [b])


def test_delta_reflects_overwrites(store, small_batches):
    for i in range(10):
        store.write(1, f"k{i % 4}", str(i))
    # keys hold the last of their writes: k0 <- 9, k1 <- 10, k2 <- 7, k3 <- 8
    _, records = store.export_delta(VectorClock({1: 6}))
    assert [(r.key, r.seq) for r in records] == [("k2", 7), ("k3", 8), ("k0", 9), ("k1", 10)]
    _, records = store.export_delta(VectorClock({1: 8}))
    assert [(r.key, r.value) for r in records] == [("k0", "8"), ("k1", "9")]


def test_export_snapshot_isolation(tmp_path, small_batches):
    s = Store(str(tmp_path / "db.sqlite"))
    for i in range(10):
        s.write(1, f"k{i}", "old")
    clock, records = s.export_full()
    first = next(records)
    dclock, delta = s.export_delta(VectorClock({1: 5}))
    for i in range(10):
        s.write(1, f"k{i}", "new")
    s.write(1, "late", "new")
    rest = [first, *records]
    assert clock == dclock == VectorClock({1: 10}) and s.clock == VectorClock({1: 21})
    assert [r.key for r in rest] == [f"k{i}" for i in range(10)]
    assert {r.value for r in rest} == {"old"}
    assert [r.seq for r in delta] == [6, 7, 8, 9, 10]
    s.close()


def test_export_iterator_releases_its_snapshot(tmp_path):
    s = Store(str(tmp_path / "db.sqlite"))
    s.write(1, "a", "1")
    _, records = s.export_full()
    s.write(1, "b", "2")

    def checkpoint_blocked():
        # PASSIVE never waits; it stops at the oldest snapshot a reader still holds
        _, wal_frames, copied = s._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return copied < wal_frames

    assert checkpoint_blocked()  # an open read transaction holds the old snapshot
    records.close()
    assert not checkpoint_blocked()
    _, records = s.export_delta(EMPTY)
    assert len(list(records)) == 2
    assert not checkpoint_blocked()
    s.close()


def make_source():
    src = Store(":memory:")
    for i in range(10):
        src.write(2, f"k{i}", f"v{i}")
    src.write(2, "k3", None)
    return src


@pytest.mark.parametrize("path", [":memory:", "file"])
def test_importer_bootstrap(tmp_path, small_batches, path):
    with make_source() as src, Store(str(tmp_path / "db") if path == "file" else path) as dst:
        clock, records = src.export_full()
        importer = dst.begin_import()
        for i, r in enumerate(records):
            importer.add(r)
            if i == 4:  # the reactor runs other writes between add() calls
                dst.write(1, "local", "x")
        result = importer.finish(clock)
        assert (result.applied, result.conflicts) == (10, 0)
        assert dst.clock == VectorClock({1: 1, 2: 11}) and dst.get("local").value == "x"
        expected = sorted(dump(src)[1] + [dst.get("local")], key=lambda r: r.key)
        assert dump(dst)[1] == expected
        with pytest.raises(StoreError):
            importer.add(rec("z", "z", 2, {}))
    assert not any(".import-" in n for n in os.listdir(tmp_path))


def test_importer_merges_keys_on_both_sides(small_batches):
    with make_source() as src, Store(":memory:") as dst:
        # concurrent with src's writes; src's k1 {2: 2} and k5 {2: 6} have higher totals
        dst.write(1, "k1", "mine")
        dst.write(1, "k5", "mine")
        dst.write(1, "k5", "mine again")
        dst.write(1, "zz", "only mine")
        clock, records = src.export_full()
        importer = dst.begin_import()
        for r in records:
            importer.add(r)
        result = importer.finish(clock)
        assert result.conflicts == 2 and dst.conflicts == 2
        assert result.conflict_keys == ["k1", "k5"]
        assert result.applied == 10  # 8 new keys + k1 + k5
        assert dst.get("k1") == src.get("k1") and dst.get("zz").value == "only mine"
        assert dst.clock == VectorClock({1: 4, 2: 11})


def test_importer_keeps_highest_rank_of_repeated_key(store):
    importer = store.begin_import()
    newer = rec("k", "new", 2, {2: 1})
    importer.add(newer)
    importer.add(rec("k", "old", 2, {}))
    assert importer.finish(VectorClock({2: 2})).applied == 1
    assert store.get("k") == newer


def test_importer_abort_leaves_live_data(tmp_path, small_batches):
    dst = Store(str(tmp_path / "db.sqlite"))
    dst.write(1, "a", "1")
    before = dump(dst)
    importer = dst.begin_import()
    for i in range(7):
        importer.add(rec(f"k{i}", "v", 2, {2: i}))
    assert any(".import-" in n for n in os.listdir(tmp_path))
    importer.abort()
    importer.abort()
    assert dump(dst) == before
    assert not any(".import-" in n for n in os.listdir(tmp_path))
    # close() aborts imports still open
    dst.begin_import().add(rec("x", "v", 2, {}))
    dst.close()
    assert not any(".import-" in n for n in os.listdir(tmp_path))


def test_importer_finish_failure_leaves_live_data(store, monkeypatch):
    store.write(1, "a", "mine")
    importer = store.begin_import()
    importer.add(rec("a", "theirs", 2, {}))
    importer.add(rec("b", "v", 2, {2: 1}))
    with pytest.raises(StoreError):
        importer.add(Record("c", "v", 2, 3, VectorClock({2: 1})))  # refused, not staged
    before = dump(store)

    def disk_full(new_clock):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_save_clock", disk_full)  # fails after the rows went in
    with pytest.raises(sqlite3.OperationalError):
        importer.finish(VectorClock({2: 2}))
    assert dump(store) == before and store.conflicts == 0


def staged(store, records, requests=()):
    importer = store.begin_import()
    for row in requests:
        importer.add_request(row)
    for r in records:
        importer.add(r)
    return importer


def ten_records():
    """k0..k9 written at origin 2, one after another (k3 a tombstone): clock {2: 10}."""
    return [rec(f"k{i}", None if i == 3 else f"v{i}", 2, {2: i}) for i in range(10)]


def test_an_import_merges_in_steps_and_raises_the_clock_with_the_last(tmp_path,
                                                                      small_batches):
    """A million keys took 4 s in one call (the replica answered no PING meanwhile):
    the finish runs in steps of MERGE_ROWS keys, each its own transaction.  Records land
    before the clock that promises them; the request rows (what a retry is told) with
    the first step."""
    with Store(str(tmp_path / "db")) as dst:
        dst.write(1, "local", "x")
        lost = RequestRow("00ff00ff.1", 2, 1, VectorClock({2: 1}), discarded=True)
        steps = staged(dst, ten_records(), [lost]).finish_steps(VectorClock({2: 10}))
        seen = []
        for _ in steps:
            seen.append(sorted(r.key for r in dump(dst)[1]))
            assert dst.clock == VectorClock({1: 1})         # not yet promised
            assert dst.discarded("00ff00ff.1")
            assert dst.count() == dst._count_live()
        assert seen == [["k0", "k1", "k2", "k3", "local"],
                        ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "local"]]
        assert dst.clock == VectorClock({1: 1, 2: 10}) and dst.count() == 10
        assert dst.count() == dst._count_live() and dst.get("k9").value == "v9"
    assert not any(".import-" in n for n in os.listdir(tmp_path))


def test_import_steps_stopped_early_keep_what_they_merged_under_the_old_clock(
        tmp_path, small_batches):
    """Closed between steps (a pull cancelled, the replica stopping): the staging is
    dropped, the merged records stay (the invariant allows records beyond the clock),
    the clock is not raised; the next pull brings the rest and counts no conflict."""
    with Store(str(tmp_path / "db")) as dst:
        steps = staged(dst, ten_records()).finish_steps(VectorClock({2: 10}))
        next(steps)
        steps.close()
        assert not any(".import-" in n for n in os.listdir(tmp_path))
        assert dst.clock == VectorClock() and dst.get("k2").value == "v2"
        assert dst.get("k4") is None and dst.count() == 3 == dst._count_live()
        result = staged(dst, ten_records()).finish(VectorClock({2: 10}))
        assert (result.applied, result.conflicts, dst.conflicts) == (6, 0, 0)
        assert dst.clock == VectorClock({2: 10}) and dst.count() == 9 == dst._count_live()


def test_a_write_between_import_steps_replaces_a_merged_record_causally(tmp_path,
                                                                       small_batches):
    """A write over a record an earlier step merged (beyond the clock) carries that
    record's version, so no replica that holds both takes the two for a conflict; a
    write over a key a later step merges is a concurrent one, as during the staging."""
    with Store(str(tmp_path / "db")) as dst:
        steps = staged(dst, ten_records()).finish_steps(VectorClock({2: 10}))
        next(steps)
        imported = dst.get("k1")
        mine = dst.write(1, "k1", "mine")
        assert mine.version >= imported.version and not is_conflict(imported, mine)
        dst.write(1, "k9", "mine")                       # not merged yet
        with pytest.raises(StopIteration) as done:
            while True:
                next(steps)
        assert done.value.value.conflicts == 1 and done.value.value.conflict_keys == ["k9"]
        assert dst.get("k1") == mine and dst.conflicts == 1
        assert dst.clock == VectorClock({1: 2, 2: 10})


def test_imports_open_at_once_are_bounded_with_a_clear_error(tmp_path):
    """Each import ATTACHes a staging database and SQLite allows 10 per connection: the
    store refuses one beyond MAX_IMPORTS in words (sync.py queues its pulls below it)
    rather than with SQLite's "too many attached databases"."""
    from replicad.store import MAX_IMPORTS

    with Store(str(tmp_path / "db")) as store:
        open_ = [store.begin_import() for _ in range(MAX_IMPORTS)]
        with pytest.raises(StoreError, match=f"{MAX_IMPORTS} imports are open already"):
            store.begin_import()
        open_.pop().abort()
        store.begin_import().add(rec("k", "v", 2, {}))


def test_path_with_uri_characters(tmp_path):
    """The export reader opens the file by URI: odd characters must be quoted."""
    directory = tmp_path / "a b?c#d%20e"
    directory.mkdir()
    with Store(str(directory / "db")) as s:
        s.write(1, "k", "v")
        clock, records = s.export_full()
        assert clock == VectorClock({1: 1}) and [r.key for r in records] == ["k"]


def test_not_a_database(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"this is not an sqlite file at all, just text" * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store(str(path))
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a replicad database"):
        Store(str(other))
    with pytest.raises(StoreError):
        Store(str(tmp_path / "missing-dir" / "db.sqlite"))


def test_epoch_persisted(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        assert s.epoch == 0
        s.set_epoch(3)
        assert s.epoch == 3
    with Store(path) as s:
        assert s.epoch == 3
        with pytest.raises(StoreError):
            s.set_epoch(-1)


# Identity -------------------------------------------------------------------------------

CLUSTER = "0123456789abcdef" * 2


def test_a_new_store_is_unbound_and_unclaimed(store):
    assert store.replica_id is None
    assert store.cluster_id is None


def test_claim_records_the_replica_id_once(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        s.claim(2)
        assert s.replica_id == 2
        s.claim(2)                           # the same replica again: nothing changes
    with Store(path) as s:
        assert s.replica_id == 2             # persisted
        s.claim(2)


def test_claim_by_another_replica_names_both(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        s.claim(2)
    with Store(path) as s:
        with pytest.raises(StoreError) as info:
            s.claim(3)
        assert str(info.value) == f"{path} belongs to replica 2, not replica 3: wrong --data-dir?"
        assert s.replica_id == 2
    with Store(path) as s:
        assert s.replica_id == 2


@pytest.mark.parametrize("bad", [0, -1, True, "2", 2.0, None])
def test_claim_needs_a_positive_integer(store, bad):
    with pytest.raises(StoreError, match="replica id must be a positive integer"):
        store.claim(bad)
    assert store.replica_id is None


def test_bind_cluster_once(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        s.bind_cluster(CLUSTER)
        assert s.cluster_id == CLUSTER
        s.bind_cluster(CLUSTER)              # idempotent
    with Store(path) as s:
        assert s.cluster_id == CLUSTER       # persisted
        assert s.replica_id is None          # independent of the replica id


def test_bind_to_another_cluster_names_both(tmp_path):
    path = str(tmp_path / "db.sqlite")
    other = "f" * 32
    with Store(path) as s:
        s.bind_cluster(CLUSTER)
        with pytest.raises(StoreError) as info:
            s.bind_cluster(other)
        assert str(info.value) == f"{path} belongs to cluster {CLUSTER}, not cluster {other}"
        assert s.cluster_id == CLUSTER
    with Store(path) as s:
        assert s.cluster_id == CLUSTER


@pytest.mark.parametrize("bad", ["", "-", "abc", CLUSTER.upper(), CLUSTER + "0", " " + CLUSTER,
                                 None, 42])
def test_bind_cluster_checks_the_format(store, bad):
    with pytest.raises(StoreError, match="bad cluster id"):
        store.bind_cluster(bad)
    assert store.cluster_id is None


def test_new_cluster_ids_are_fresh_and_well_formed():
    from replicad.identity import is_cluster_id, new_cluster_id

    a, b = new_cluster_id(), new_cluster_id()
    assert a != b and len(a) == 32
    assert is_cluster_id(a) and is_cluster_id(b)
    assert not is_cluster_id(a.upper()) and not is_cluster_id(a[:-1]) and not is_cluster_id(None)


def test_corrupt_identity_in_meta_is_refused(tmp_path):
    path = str(tmp_path / "db.sqlite")
    Store(path).close()
    for name, value in [("replica_id", "two"), ("replica_id", "0"), ("cluster_id", "xyz")]:
        db = sqlite3.connect(path)
        db.execute("DELETE FROM meta WHERE name IN ('replica_id', 'cluster_id')")
        db.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))
        db.commit()
        db.close()
        with pytest.raises(StoreError, match=f"corrupt {name.replace('_', ' ')}"):
            Store(path)


def test_is_empty(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        assert s.is_empty
        s.claim(1)
        s.bind_cluster(CLUSTER)
        s.set_epoch(4)
        assert s.is_empty                    # identity and epoch are not data
        s.write(1, "k", "v")
        assert not s.is_empty
    with Store(path) as s:
        assert not s.is_empty


def test_is_empty_false_for_a_clock_without_rows_and_for_tombstones(store):
    store.apply([], VectorClock({2: 3}))     # a clock with no row: not a fresh database
    assert not store.is_empty
    other = Store(":memory:")
    other.write(1, "k", None)                # a tombstone is a row, and a write
    assert not other.is_empty
    other.close()


# Epochs in records (issue #7): epoch-first ranking, fencing of deposed writers -----------


def test_a_newer_epoch_outranks_a_bigger_vector():
    """The acknowledged write of the newer coordinator beats a concurrent one that
    the deposed coordinator made, however many writes that side made."""
    deposed = Record("k", "lost", 3, 40, VectorClock({3: 40}), epoch=1)
    newer = Record("k", "kept", 2, 1, VectorClock({2: 1}), epoch=2)
    assert is_conflict(deposed, newer)
    assert winner(deposed, newer) is newer and winner(newer, deposed) is newer


def test_equal_epochs_rank_as_before():
    a = Record("k", "a", 1, 1, VectorClock({1: 1}), epoch=3)
    b = Record("k", "b", 1, 2, VectorClock({1: 2}), epoch=3)
    assert winner(a, b) is b


def test_a_write_over_a_newer_epochs_record_is_refused(store):
    store.apply([Record("k", "new", 2, 1, VectorClock({2: 1}), epoch=5)], VectorClock({2: 1}))
    with pytest.raises(replicad.store.NewerEpoch) as caught:
        store.write(3, "k", "stale coordinator", epoch=4)
    assert caught.value.epoch == 5
    assert store.get("k").value == "new" and store.clock == VectorClock({2: 1})
    record = store.write(3, "k", "same epoch", epoch=5)          # not newer: allowed
    assert (record.epoch, store.get("k").value) == (5, "same epoch")


def test_write_records_its_epoch_and_exports_carry_it(tmp_path):
    with Store(str(tmp_path / "db")) as store:
        store.write(1, "k", "v", epoch=7)
    with Store(str(tmp_path / "db")) as store:
        assert store.get("k").epoch == 7
        _clock, records = store.export_full()
        assert [r.epoch for r in records] == [7]


def test_import_keeps_the_newer_epoch(tmp_path, small_batches):
    with Store(str(tmp_path / "db")) as store:
        store.write(3, "k", "deposed", epoch=1)
        importer = store.begin_import()
        importer.add(Record("k", "kept", 2, 1, VectorClock({2: 1}), epoch=2))
        result = importer.finish(VectorClock({2: 1}))
        assert (store.get("k").value, result.conflicts) == ("kept", 1)


def test_a_schema_1_database_is_migrated(tmp_path):
    path = str(tmp_path / "old.sqlite")
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value TEXT, origin INTEGER NOT NULL,
            seq INTEGER NOT NULL, version TEXT NOT NULL, vtotal INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX kv_write ON kv (origin, seq);
        CREATE TABLE clock (replica INTEGER PRIMARY KEY, count INTEGER NOT NULL);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO kv VALUES ('k', 'old', 1, 1, '1:1', 1);
        INSERT INTO clock VALUES (1, 1);
        INSERT INTO meta VALUES ('schema', '1'), ('epoch', '3'), ('conflicts', '0');
        """
    )
    db.close()
    with Store(path) as store:
        assert store.get("k") == Record("k", "old", 1, 1, VectorClock({1: 1}), 0)
        assert (store.epoch, store.clock) == (3, VectorClock({1: 1}))
        store.write(2, "k", "new", epoch=4)
    with Store(path) as store:
        assert store.get("k").value == "new"


# Request ids (issue #8) ------------------------------------------------------------------


def written(store: Store, rid: str) -> tuple[int, int] | None:
    """The write id a store remembers for a request id."""
    row = store.request(rid)
    return None if row is None else (row.origin, row.seq)


def test_a_written_request_id_is_remembered_with_its_write(tmp_path):
    with Store(str(tmp_path / "db")) as store:
        record = store.write(1, "k", "v", rid="00ff00ff.1")
        assert store.request("00ff00ff.1") == RequestRow("00ff00ff.1", 1, 1, record.version)
        assert store.request("00ff00ff.2") is None
    with Store(str(tmp_path / "db")) as store:               # durable
        assert written(store, "00ff00ff.1") == (1, 1)
        assert store.get("k").rid == "00ff00ff.1"


def test_request_ids_travel_with_pushes_and_copies(tmp_path, small_batches):
    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b, \
            Store(str(tmp_path / "c")) as c:
        first = a.write(1, "k", "v1", rid="00ff00ff.1")
        a.write(1, "k", "v2", rid="00ff00ff.2")           # supersedes the first
        a.write(1, "j", "w", rid="00ff00ff.3")
        assert b.apply_pushed(first) == "applied"         # a push: remembered
        assert written(b, "00ff00ff.1") == (1, 1)
        clock, records = a.export_full()                  # a full copy carries the
        importer = c.begin_import()                       # current records' ids
        for record in records:
            importer.add(record)
        importer.finish(clock)
        assert written(c, "00ff00ff.2") == (1, 2)
        assert written(c, "00ff00ff.3") == (1, 3)
        assert c.request("00ff00ff.1") is None            # superseded before the copy


def test_request_ids_are_bounded(store, monkeypatch):
    monkeypatch.setattr(replicad.store, "REQUEST_IDS_KEPT", 1500)
    for n in range(1, 3001):
        store.write(1, f"k{n}", "v", rid=f"00ff00ff.{n}")
    kept = store._db.execute("SELECT count(*) FROM requests").fetchone()[0]
    assert 1500 <= kept < 2500
    assert store.request("00ff00ff.1") is None            # the oldest went first
    assert store.request("00ff00ff.3000") is not None


def test_pulls_carry_the_request_ids_of_superseded_writes_too(tmp_path, small_batches):
    """What keeps a retried write from being applied twice on a replica that only ever
    saw the write that superseded it (found by the chaos suite)."""
    from replicad.store import RequestRow

    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b:
        a.write(1, "k", "v1", rid="00ff00ff.1")
        a.write(1, "k", "v2", rid="00ff00ff.2")
        clock, items = a.export_delta(VectorClock(), requests=True)
        items = list(items)
        rows = [i for i in items if isinstance(i, RequestRow)]
        assert [r.rid for r in rows] == ["00ff00ff.1", "00ff00ff.2"]
        importer = b.begin_import()
        for item in items:
            (importer.add_request if isinstance(item, RequestRow) else importer.add)(item)
        importer.finish(clock)
        assert written(b, "00ff00ff.1") == (1, 1)    # superseded, still remembered
        _, since_one = a.export_delta(VectorClock({1: 1}), requests=True)
        assert [i.rid for i in since_one if isinstance(i, RequestRow)] == ["00ff00ff.2"]


# No-op markers: a DEL that found nothing (docs/reliability.md, chaos seed 4) ---------------


def test_a_del_that_found_nothing_is_a_marker_with_a_write_id_and_no_data(tmp_path):
    with Store(str(tmp_path / "db")) as store:
        store.write(1, "j", "v")
        marker = store.write_noop(1, "k", 2, "00ff00ff.7")
        assert (marker.origin, marker.seq, marker.noop, marker.value) == (1, 2, True, None)
        assert store.clock == VectorClock({1: 2}) == marker.version
        assert store.get("k") is None and store.count() == 1
        assert store.request("00ff00ff.7") == RequestRow("00ff00ff.7", 1, 2, marker.version,
                                                         noop=True)
    with Store(str(tmp_path / "db")) as store:               # durable
        assert store.request("00ff00ff.7").noop and store.clock == VectorClock({1: 2})
        assert store.get("k") is None


def test_a_marker_is_shipped_by_deltas_and_full_copies_as_a_request_row(tmp_path,
                                                                          small_batches):
    with Store(str(tmp_path / "a")) as a:
        a.write(1, "j", "v", rid="00ff00ff.1")
        a.write_noop(1, "k", 0, "00ff00ff.2")
        for export in (a.export_full(requests=True),
                       a.export_delta(VectorClock({1: 1}), requests=True)):
            clock, items = export
            rows = [i for i in items if isinstance(i, RequestRow)]
            assert clock == VectorClock({1: 2})
            assert ("00ff00ff.2", 2, True) in [(r.rid, r.seq, r.noop) for r in rows]
        _, items = a.export_delta(VectorClock({1: 2}), requests=True)
        assert list(items) == []


def test_a_pulled_marker_tells_the_puller_the_request_changed_nothing(tmp_path,
                                                                     small_batches):
    """The chaos seed-4 window in the store: b holds k (a write a never got) and pulls;
    it must learn that the request id was answered as a DEL that found nothing."""
    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b:
        a.write_noop(2, "k", 5, "00ff00ff.2")
        b.write(3, "k", "held", epoch=4)
        clock, items = a.export_delta(b.clock, requests=True)
        importer = b.begin_import()
        for item in items:
            (importer.add_request if isinstance(item, RequestRow) else importer.add)(item)
        importer.finish(clock)
        assert b.request("00ff00ff.2").noop and written(b, "00ff00ff.2") == (2, 1)
        assert b.get("k").value == "held"                  # a marker deletes nothing
        assert b.clock == VectorClock({2: 1, 3: 1})


def test_a_pushed_marker_is_remembered_and_moves_the_clock_in_order(store):
    store.apply_pushed(rec("a", "1", 2, {}))
    store.apply_pushed(Record("k", "held", 3, 1, VectorClock({3: 1}), 4))
    marker = Record("k", None, 2, 2, VectorClock({2: 2}), 5, "00ff00ff.3", noop=True)
    assert store.apply_pushed(marker) == "applied"
    assert store.request("00ff00ff.3").noop and store.clock == VectorClock({2: 2, 3: 1})
    assert store.get("k").value == "held" and store.conflicts == 0
    assert store.apply_pushed(marker) == "duplicate"


def test_a_batch_with_a_marker_is_merged_as_one_by_one(store, tmp_path):
    """A marker is never inserted as a row: the batch goes record by record."""
    batch = [rec("a", "1", 2, {}),
             Record("b", None, 2, 2, VectorClock({2: 2}), 0, "00ff00ff.4", noop=True),
             rec("c", "3", 2, {2: 2})]
    with Store(str(tmp_path / "one.sqlite")) as one:
        expected = [one.apply_pushed(r) for r in batch]
        assert expected == ["applied"] * 3
        assert store.apply_pushed_batch(batch) == expected
        assert store.clock == one.clock == VectorClock({2: 3})
        assert store.get("b") is None and store.request("00ff00ff.4").noop
        assert store._db.execute("SELECT count(*) FROM kv").fetchone()[0] == 2


def test_a_marker_over_a_newer_epoch_is_refused(store):
    store.apply([Record("k", None, 3, 1, VectorClock({3: 1}), 9)], VectorClock({3: 1}))
    with pytest.raises(NewerEpoch):
        store.write_noop(2, "k", 8, "00ff00ff.5")
    assert store.request("00ff00ff.5") is None and store.clock == VectorClock({3: 1})


def test_a_marker_is_refused_among_a_pulls_records_and_without_a_request_id(store):
    importer = store.begin_import()
    with pytest.raises(StoreError, match="marker"):
        importer.add(Record("k", None, 2, 1, VectorClock({2: 1}), 0, "00ff00ff.6", noop=True))
    importer.abort()
    with pytest.raises(StoreError, match="malformed"):
        store.apply_pushed(Record("k", None, 2, 1, VectorClock({2: 1}), 0, None, noop=True))
    with pytest.raises(StoreError, match="malformed"):
        store.apply_pushed(Record("k", "v", 2, 1, VectorClock({2: 1}), 0, "00ff.1", noop=True))


def test_a_no_op_kept_before_markers_is_answered_but_never_shipped(store):
    """Schema 2 kept a DEL that found nothing as write 0:0: still a no-op, local."""
    store._db.execute("INSERT INTO requests (rid, origin, seq, version)"
                      " VALUES ('00ff00ff.7', 0, 0, '-')")
    assert store.request("00ff00ff.7") == RequestRow("00ff00ff.7", 0, 0, VectorClock(),
                                                     noop=True)
    _, items = store.export_full(requests=True)
    assert list(items) == []


def test_a_schema_2_database_is_migrated(tmp_path):
    path = str(tmp_path / "two.sqlite")
    with Store(path) as store:
        store.write(1, "k", "v", rid="00ff00ff.1")
    db = sqlite3.connect(path)      # as schema 2 left it: no noop column
    db.executescript("""
        CREATE TABLE r2 AS SELECT n, rid, origin, seq, version, discarded FROM requests;
        DROP TABLE requests;
        CREATE TABLE requests (n INTEGER PRIMARY KEY, rid TEXT NOT NULL UNIQUE,
            origin INTEGER NOT NULL, seq INTEGER NOT NULL, version TEXT NOT NULL,
            discarded INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX requests_write ON requests (origin, seq);
        INSERT INTO requests SELECT * FROM r2;
        INSERT INTO requests (rid, origin, seq, version) VALUES ('00ff00ff.2', 0, 0, '-');
        DROP TABLE r2;
        UPDATE meta SET value = '2' WHERE name = 'schema';
    """)
    db.close()
    with Store(path) as store:
        assert written(store, "00ff00ff.1") == (1, 1)
        assert store.request("00ff00ff.2").noop
        store.write_noop(1, "j", 0, "00ff00ff.3")
    with Store(path) as store:
        assert store.request("00ff00ff.3").noop
        assert store._get_meta("schema") == "3"


def test_the_loser_of_a_merge_is_marked_discarded_and_the_mark_travels(tmp_path, small_batches):
    from replicad.store import RequestRow

    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b:
        a.write(2, "k", "mine", epoch=3, rid="00ff00ff.1")
        a.apply([Record("k", "theirs", 3, 5, VectorClock({3: 5}), 3, "00ff00ff.9")],
                VectorClock({3: 5}))
        assert a.discarded("00ff00ff.1") and not a.discarded("00ff00ff.9")
        clock, items = a.export_delta(VectorClock(), requests=True)
        items = list(items)
        assert [(r.rid, r.discarded) for r in items if isinstance(r, RequestRow)] == [
            ("00ff00ff.1", True), ("00ff00ff.9", False)]
        importer = b.begin_import()
        for item in items:
            (importer.add_request if isinstance(item, RequestRow) else importer.add)(item)
        importer.finish(clock)
        assert b.discarded("00ff00ff.1")


def test_a_request_answered_by_a_marker_here_keeps_it_when_its_write_elsewhere_loses(
        tmp_path):
    """One request, applied as a DEL on the far side of a partition (in doubt there)
    and answered NOTFOUND here with a no-op marker: when the far side's DEL loses a
    merge here, the marker's answer still holds (chaos seed 21's phantom write)."""
    with Store(str(tmp_path / "a")) as a:
        a.write(2, "k", "v", epoch=5)
        a.write(2, "k", "newer", epoch=5)
        a.write_noop(2, "gone", 5, "00ff00ff.2")         # NOTFOUND here
        far = Record("k", None, 3, 1, VectorClock({3: 1}), 3, "00ff00ff.2")
        a.apply([far], VectorClock({3: 1}))              # loses to 2's epoch 5
        row = a.request("00ff00ff.2")
        assert (row.origin, row.noop, row.discarded) == (2, True, False)


def test_a_pushed_write_that_loses_a_merge_is_reported_lost(store):
    """Not an acknowledgement: the follower keeps the concurrent winner (a replayed
    write re-pushed after a partition was counted towards its quorum)."""
    store.apply([Record("k", "kept", 2, 1, VectorClock({2: 1}), 9)], VectorClock({2: 1}))
    loser = Record("k", "old", 3, 1, VectorClock({3: 1}), 4, "00ff00ff.1")
    assert store.apply_pushed(loser) == "lost"
    assert store.get("k").value == "kept"
    assert store.apply_pushed(loser) == "lost"           # again: still not held
    assert store.apply_pushed(Record("j", "v", 3, 2, VectorClock({3: 2}), 9)) == "applied"


def pushes() -> list[Record]:
    """A PUSH's records: in order, a duplicate, a gap, and a write that loses a merge."""
    return [rec("a", "1", 2, {}), rec("b", "2", 2, {2: 1}), rec("a", "1", 2, {}),
            rec("d", "4", 2, {2: 3}),
            Record("k", "old", 3, 1, VectorClock({3: 1}), 4, "00ff00ff.1")]


def test_a_batch_of_pushes_is_merged_as_one_by_one(store, tmp_path):
    store.apply([Record("k", "kept", 1, 1, VectorClock({1: 1}), 9)], VectorClock({1: 1}))
    with Store(str(tmp_path / "one.sqlite")) as one:
        one.apply([Record("k", "kept", 1, 1, VectorClock({1: 1}), 9)], VectorClock({1: 1}))
        expected = [one.apply_pushed(r) for r in pushes()]
        assert expected == ["applied", "applied", "duplicate", "gap", "lost"]
        store.begin_group()
        assert store.apply_pushed_batch(pushes()) == expected
        store.commit_group()
        assert (store.clock, store.conflicts) == (one.clock, one.conflicts)
        assert [store.get(k) for k in "abdk"] == [one.get(k) for k in "abdk"]
        assert store.discarded("00ff00ff.1")


def in_order(origin: int = 3, count: int = 4, rid: bool = False) -> list[Record]:
    """A coordinator's usual PUSH: its next writes, each to a new key."""
    return [Record(f"n{seq}", f"v{seq}", origin, seq, VectorClock({1: 2, origin: seq}), 5,
                   f"0000000{origin}.{seq}" if rid else None)
            for seq in range(1, count + 1)]


@pytest.mark.parametrize("rid", [False, True])
def test_an_in_order_batch_of_new_keys_is_merged_as_one_by_one(store, tmp_path, rid):
    """The batch taken in one statement (Store._inserted_in_order) ends as the records
    merged one at a time do."""
    with Store(str(tmp_path / "one.sqlite")) as one:
        expected = [one.apply_pushed(r) for r in in_order(rid=rid)]
        store.begin_group()
        assert store.apply_pushed_batch(in_order(rid=rid)) == expected == ["applied"] * 4
        store.commit_group()
        assert store.clock == one.clock == VectorClock({3: 4})
        store._hot.clear()
        assert [store.get(f"n{q}") for q in range(1, 5)] == [one.get(f"n{q}") for q in
                                                              range(1, 5)]
        assert store.request("00000003.2") == (one.request("00000003.2") if rid else None)


def test_an_in_order_batch_with_a_key_that_has_a_row_is_merged_record_by_record(store):
    """n3 has a row the hot records do not know, accepted in a newer epoch: the batch's
    insert finds it and each record is merged on its own (n3 lost; the others meet the
    rows the batch inserted, the same writes)."""
    store.apply([Record("n3", "kept", 2, 1, VectorClock({2: 1}), 9)], VectorClock({2: 1}))
    store._hot.clear()
    store.begin_group()
    assert store.apply_pushed_batch(in_order()) == ["applied", "applied", "lost", "applied"]
    store.commit_group()
    store._hot.clear()
    assert [store.get(f"n{q}").value for q in range(1, 5)] == ["v1", "v2", "kept", "v4"]
    assert store.clock == VectorClock({2: 1, 3: 4}) and store.conflicts == 1


def test_an_in_order_batch_that_writes_one_key_twice_keeps_the_later_write(store):
    first = Record("k", "first", 3, 1, VectorClock({3: 1}), 5)
    later = Record("k", "later", 3, 2, VectorClock({3: 2}), 5)
    assert store.apply_pushed_batch([first, later]) == ["applied", "applied"]
    store._hot.clear()
    assert store.get("k") == later and store.clock == VectorClock({3: 2})


def test_a_key_read_and_found_absent_takes_the_batch_path(store):
    assert store.get("n1") is None                    # the hot records: known absent
    store.begin_group()
    seen = []
    store._db.set_trace_callback(seen.append)
    assert store.apply_pushed_batch(in_order(count=2)) == ["applied", "applied"]
    assert not any(sql.startswith(("SELECT", "REPLACE INTO kv")) for sql in seen)
    store.commit_group()


def test_an_in_order_batch_that_fails_midway_leaves_nothing_behind(store, monkeypatch):
    store.begin_group()
    store.write(1, "mine", "v")
    real, seen = store._remember, []

    def failing(record):          # after the batch's rows are in, before it is done
        seen.append(record.key)
        if len(seen) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        real(record)

    monkeypatch.setattr(store, "_remember", failing)
    with pytest.raises(sqlite3.OperationalError):
        store.apply_pushed_batch(in_order(rid=True))
    assert seen == ["n1", "n2"]                       # the batch's path was taken
    assert store.clock == VectorClock({1: 1}) and store.get("n1") is None
    store.commit_group()
    store._hot.clear()
    assert store.get("n1") is None and store.get("mine").value == "v"
    assert store.request("00000003.1") is None


def test_a_batch_with_a_record_the_store_refuses_applies_none_of_it(store):
    bad = Record("x", "v", 2, 3, VectorClock({2: 2}), 0)     # its version is not its id
    with pytest.raises(StoreError):
        store.apply_pushed_batch([rec("a", "1", 2, {}), bad])
    assert store.get("a") is None and store.clock == VectorClock()


def test_a_batch_that_fails_midway_leaves_nothing_behind(store, monkeypatch):
    store.begin_group()
    store.write(1, "mine", "v")                           # the open group's own write
    puts = []

    def failing(real):          # a record is written by _insert_new (a new key) or _put
        def write(record):
            puts.append(record.key)
            if len(puts) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return real(record)
        return write

    monkeypatch.setattr(store, "_put", failing(store._put))
    monkeypatch.setattr(store, "_insert_new", failing(store._insert_new))
    with pytest.raises(sqlite3.OperationalError):
        store.apply_pushed_batch(pushes())
    assert store.clock == VectorClock({1: 1}) and store.conflicts == 0
    assert store.get("a") is None and store.get("mine").value == "v"
    store.commit_group()
    assert store.clock == VectorClock({1: 1}) and store.get("a") is None


def _sqlite_error(kind: type[sqlite3.Error], name: str | None) -> sqlite3.Error:
    error = kind("an error")
    if name is not None:
        error.sqlite_errorname = name
    return error


@pytest.mark.parametrize(("kind", "name", "unknown"), [
    (sqlite3.OperationalError, "SQLITE_IOERR_FSYNC", True),   # the disk failed the fsync
    (sqlite3.OperationalError, "SQLITE_IOERR_WRITE", True),
    (sqlite3.OperationalError, "SQLITE_READONLY_DBMOVED", True),
    (sqlite3.DatabaseError, "SQLITE_CORRUPT", True),
    (sqlite3.OperationalError, None, True),                   # unnamed: assume the worst
    (sqlite3.OperationalError, "SQLITE_FULL", False),         # nothing of it was written
    (sqlite3.OperationalError, "SQLITE_BUSY", False),         # not even begun
    (sqlite3.OperationalError, "SQLITE_LOCKED_SHAREDCACHE", False),
    (sqlite3.ProgrammingError, None, False),                  # a bug, before any write
    (sqlite3.IntegrityError, "SQLITE_CONSTRAINT", False),
])
def test_which_failed_commits_may_be_on_the_disk_after_all(kind, name, unknown):
    assert outcome_unknown(_sqlite_error(kind, name)) is unknown


@pytest.mark.parametrize(("kind", "name", "broken"), [
    (sqlite3.DatabaseError, "SQLITE_CORRUPT", True),         # a page that makes no sense
    (sqlite3.DatabaseError, "SQLITE_CORRUPT_INDEX", True),
    (sqlite3.OperationalError, "SQLITE_IOERR_READ", True),   # the disk failed a read
    (sqlite3.OperationalError, "SQLITE_IOERR_SHORT_READ", True),
    (sqlite3.OperationalError, "SQLITE_IOERR_FSYNC", True),
    (sqlite3.DatabaseError, "SQLITE_NOTADB", True),          # the file was overwritten
    (sqlite3.OperationalError, "SQLITE_IOERR_NOMEM", False),  # memory, not the disk
    (sqlite3.OperationalError, "SQLITE_FULL", False),        # no room: the disk is sound
    (sqlite3.OperationalError, "SQLITE_BUSY", False),
    (sqlite3.OperationalError, "SQLITE_ERROR", False),       # a bad statement: a bug
    (sqlite3.OperationalError, None, False),                 # unnamed: not evidence
    (sqlite3.InterfaceError, "SQLITE_CORRUPT", False),       # not SQLite's DatabaseError
])
def test_which_errors_of_any_statement_say_the_disk_failed(kind, name, broken):
    assert disk_broken(_sqlite_error(kind, name)) is broken


def corrupted(tmp_path, keys: int = 600) -> str:
    """A store's file with ``keys`` 1 KB records whose pages past the first few are
    overwritten with garbage, as a disk that returns the wrong sectors leaves it: the
    meta and clock tables (the first pages) still read."""
    path = str(tmp_path / "bad.db")
    with Store(path) as store:
        store.claim(1)
        store.begin_group()
        for i in range(keys):
            store.write(1, f"k{i:05d}", "v" * 1000)
        store.commit_group()
    with open(path, "r+b") as f:         # closed: the WAL is checkpointed into the file
        f.seek(16 * 4096)
        f.write(b"\xa5" * (os.path.getsize(path) - 16 * 4096))
    return path


def test_a_read_that_meets_a_corrupt_page_is_reported_once(tmp_path):
    """Not only a COMMIT: a read of a page the disk returns wrong (SQLITE_CORRUPT; a
    read's EIO comes as that too, tests/integration/test_disk_read_failure.py) tells
    disk_failed once, with committing False: the replica stops rather than answer
    every such read ERR while it stays the coordinator."""
    store = Store(corrupted(tmp_path))
    heard: list[tuple[BaseException, bool]] = []
    store.disk_failed = lambda error, committing: heard.append((error, committing))
    with pytest.raises(sqlite3.DatabaseError) as caught:
        for i in range(600):
            store.get(f"k{i:05d}")
    assert heard == [(caught.value, False)] and disk_broken(caught.value)
    with pytest.raises(sqlite3.DatabaseError):
        store.keys()
    assert len(heard) == 1                 # once: the replica is already stopping
    store.close()


def test_an_export_that_meets_a_corrupt_page_is_reported(tmp_path):
    """A full copy served to a peer reads on its own connection: its failure is told
    too (the peer only sees its stream fail)."""
    store = Store(corrupted(tmp_path))
    heard: list[BaseException] = []
    store.disk_failed = lambda error, committing: heard.append(error)
    _clock, records = store.export_full()
    with pytest.raises(sqlite3.DatabaseError) as caught:
        list(records)
    assert heard == [caught.value]
    store.close()


def test_a_database_file_removed_or_replaced_under_the_store_is_told(tmp_path):
    """SQLite writes on into a file that was removed or replaced and says nothing
    (checked here: the write succeeds); file_lost says it, for the replica to stop."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(str(data / "r.db"))
    assert store.file_lost() is None
    shutil.rmtree(data)
    store.write(1, "a", "1")                         # no error: into the unlinked file
    assert store.file_lost() == f"{data / 'r.db'} was removed"
    data.mkdir()
    Store(str(data / "r.db")).close()                # another database at the path
    assert store.file_lost() == f"{data / 'r.db'} was replaced by another file"
    store.close()
    assert Store(":memory:").file_lost() is None


def test_a_commit_the_disk_fails_is_reported_once_with_its_error(tmp_path):
    """Store.disk_failed hears the first COMMIT whose outcome is unknown (the replica
    stops on it); a full disk is not reported there."""
    from tests.test_groupcommit import FailingCommits

    store = Store(str(tmp_path / "s.db"))
    heard: list[BaseException] = []
    store.disk_failed = lambda error, committing: heard.append(error)
    store._db = spy = FailingCommits(store._db)
    spy.full = True
    with pytest.raises(sqlite3.OperationalError):
        store.write(1, "a", "1")
    assert heard == [] and store.disk_failure is None
    spy.full, spy.fail = False, True
    for _ in range(2):
        with pytest.raises(sqlite3.OperationalError):
            store.write(1, "a", "1")
    assert len(heard) == 1 and store.disk_failure is heard[0]
    store._db = spy._db
    store.close()


# Origins: a replica that joins by copying numbers its writes anew (identity.py) ---------


def test_a_replica_numbers_its_writes_under_its_id_until_it_joins_by_copying(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with Store(path) as s:
        assert s.origin is None                  # unclaimed
        s.claim(3)
        assert s.origin == 3
        s.bind_cluster(CLUSTER, origin=2**30)    # joined by copying
        assert s.origin == 2**30
        s.bind_cluster(CLUSTER, origin=2**30 + 1)   # bound already: nothing changes
        assert s.origin == 2**30
    with Store(path) as s:
        assert (s.replica_id, s.origin) == (3, 2**30)   # persisted
        s.renumber(2**30 + 7)                    # a restored backup (backup.py)
    with Store(path) as s:
        assert s.origin == 2**30 + 7


def test_binding_with_a_bad_origin_binds_nothing(store):
    store.claim(1)
    for bad in (0, -1, True, "7", 2**63):
        with pytest.raises(StoreError, match="an origin must be a positive integer"):
            store.bind_cluster(CLUSTER, origin=bad)
        with pytest.raises(StoreError, match="an origin must be a positive integer"):
            store.renumber(bad)
    assert (store.cluster_id, store.origin) == (None, 1)


def test_a_corrupt_origin_in_meta_is_refused(tmp_path):
    path = str(tmp_path / "db.sqlite")
    Store(path).close()
    for value in ("x", "0", "-3", str(2**63)):
        db = sqlite3.connect(path)
        db.execute("REPLACE INTO meta (name, value) VALUES ('origin', ?)", (value,))
        db.commit()
        db.close()
        with pytest.raises(StoreError, match="corrupt origin"):
            Store(path)


def test_new_origins_avoid_the_ids_taken_and_fit_a_clock_entry(monkeypatch):
    from replicad import identity

    draws = iter([5, 5, 9])
    monkeypatch.setattr(identity.secrets, "randbelow", lambda n: next(draws))
    first = identity.FIRST_NEW_ORIGIN
    assert identity.new_origin({1, 2, 3, first + 5}) == first + 9   # taken twice, then free
    monkeypatch.undo()
    origins = {identity.new_origin({1, 2, 3}) for _ in range(100)}
    assert len(origins) == 100
    assert all(first <= o <= identity.LAST_NEW_ORIGIN < 2**31 for o in origins)


def test_the_write_ahead_log_shrinks_back_after_a_reader_held_it_long(tmp_path, monkeypatch):
    """A reader holding an old snapshot (a full copy to a slow peer) lets the log grow
    with every write meanwhile; once it is gone, the log is cut back to the limit when
    SQLite starts it over, and grows again only to its usual size (a checkpoint every
    1,000 pages, about 4 MB).  Without the limit it kept its largest size (checked)."""
    import replicad.store as store_module

    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT_BYTES", 256 * 1024)
    path = str(tmp_path / "db.sqlite")
    wal = path + "-wal"

    def write_many(s: Store, n: int, value: str) -> None:
        for start in range(0, n, 100):
            s.begin_group()
            for i in range(start, start + 100):
                s.write(1, f"k{i % 500}", value)
            s.commit_group()

    with Store(path) as s:
        s.claim(1)
        write_many(s, 500, "a" * 100)
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM kv").fetchone()     # holds its snapshot
        write_many(s, 20000, "b" * 100)
        grown = os.path.getsize(wal)
        reader.rollback()
        reader.close()
        write_many(s, 1000, "c" * 100)               # checkpoints pass, the log restarts
        assert os.path.getsize(wal) < 5 * 1024 * 1024 < grown
        assert s.get("k1").value == "c" * 100



@given(
    st.sets(st.text(EDGE_CHARS, min_size=1, max_size=4), max_size=15),
    st.text(EDGE_CHARS, max_size=3),
    st.none() | st.text(EDGE_CHARS, min_size=1, max_size=4),
    st.none() | st.integers(1, 6),
)
def test_a_keys_page_is_the_listing_after_its_key_cut_at_its_limit(keys, prefix, after, limit):
    with Store(":memory:") as s:
        for key in keys:
            s.write(1, key, "v")
        listing = sorted(k for k in keys if k.startswith(prefix)
                         and (after is None or k > after))
        assert s.keys(prefix, after, limit) == listing[:limit]


# The live-key count, kept as the rows change -------------------------------------------


def test_the_live_key_count_follows_every_way_a_row_changes(tmp_path):
    """STATUS's ``keys`` without a scan each time: inserts, overwrites, deletes, pushed batches
    (one statement, or record by record), merges, imports, and rollbacks of a change
    and of a group all leave it equal to a count of the rows."""
    path = str(tmp_path / "db.sqlite")

    def check(s: Store, expected: int) -> None:
        assert s.count() == s._count_live() == expected

    with Store(path) as s:
        s.claim(1)
        s.write(1, "a", "1")
        s.write(1, "b", "1")
        s.write(1, "a", "2")                     # over a live row
        s.write(1, "b", None)                    # a tombstone
        check(s, 1)
        s._hot.clear()
        s.write(1, "b", "again")                 # over a tombstone the hot dict forgot
        check(s, 2)
        s.begin_group()
        assert s.apply_pushed_batch(in_order()) == ["applied"] * 4    # one statement
        s.write(1, "c", "1")
        check(s, 7)
        s.commit_group()
        s.begin_group()
        s.write(1, "d", "1")
        s.write(1, "f", "1")
        s.write(1, "a", None)
        with pytest.raises(sqlite3.Error):
            with s._transaction(joinable=True):  # a change rolled back to its savepoint
                s.write(1, "e", "1")
                s._db.execute("SELECT no_such_column FROM kv")
        check(s, 8)
        s._db.execute("ROLLBACK")                # the group's COMMIT will fail
        with pytest.raises(sqlite3.Error):
            s.commit_group()
        check(s, 7)                              # as before the group
    with Store(path) as s:
        check(s, 7)                              # counted when first asked
        importer = s.begin_import()
        for n in range(5):
            importer.add(Record(f"new{n}", "v", 2, n + 1, VectorClock({2: n + 1}), 9))
        importer.add(Record("c", None, 2, 6, VectorClock({1: 9, 2: 6}), 9))   # a merge
        importer.finish(VectorClock({2: 6}))
        check(s, 11)
