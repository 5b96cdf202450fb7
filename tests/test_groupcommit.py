"""Group commit on a real SQLite file, driven by task.Clock: one COMMIT per reactor turn."""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from replicad.groupcommit import GroupCommit, GroupFailed
from replicad.store import NewerEpoch, Record, Store
from replicad.vclock import VectorClock


class FailingCommits:
    """The store's connection, except that COMMIT fails while ``fail`` is set."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        self.fail = False
        self.full = False       # fail as SQLite does on a full disk (SQLITE_FULL)
        self.commits = 0

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            self.commits += 1
            if self.full:
                raise disk_full_error()
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def disk_full_error() -> sqlite3.OperationalError:
    """What sqlite3 raises when the disk is full (seen on a full tmpfs: the real one is
    exercised by tests/integration/test_disk_full.py)."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode, error.sqlite_errorname = 13, "SQLITE_FULL"
    return error


@pytest.fixture
def setup(tmp_path):
    path = str(tmp_path / "db.sqlite")
    store = Store(path)
    store._db = spy = FailingCommits(store._db)
    clock = Clock()
    yield store, GroupCommit(store, clock), clock, spy, path
    store.close()


def committed_keys(path: str) -> list[str]:
    """What another connection (or a restart after kill -9) sees."""
    with sqlite3.connect(path) as db:
        return [k for (k,) in db.execute("SELECT key FROM kv ORDER BY key")]


def test_writes_of_one_turn_share_one_commit_and_are_told_only_after_it(setup):
    store, commits, clock, spy, path = setup
    done = [commits.run(lambda n=n: store.write(1, f"k{n}", "v")) for n in range(10)]
    assert not any(d.called for d in done)
    assert committed_keys(path) == []                  # nothing durable yet
    clock.advance(0)
    assert [d.result.seq for d in done] == list(range(1, 11))
    assert committed_keys(path) == sorted(f"k{n}" for n in range(10))
    assert spy.commits == 1 and (commits.groups, commits.writes) == (1, 10)


def test_each_turn_is_its_own_group(setup):
    store, commits, clock, spy, _ = setup
    for n in range(3):
        commits.run(lambda n=n: store.write(1, f"k{n}", "v"))
        clock.advance(0)
    assert spy.commits == 3


def test_each_groups_commit_is_timed_and_an_empty_turn_is_not(setup):
    """The metrics hear how long every group's COMMIT blocked the reactor, failed ones
    too; a flush with no group open times nothing."""
    store, commits, clock, spy, _ = setup
    timed = []
    commits.committed = lambda seconds, ok: timed.append((round(seconds, 3), ok))
    real_execute = spy.execute

    def slow_disk(sql, *args):
        if sql == "COMMIT":
            clock.advance(0.25)          # the fsync inside it
        return real_execute(sql, *args)

    spy.execute = slow_disk
    commits.run(lambda: store.write(1, "a", "v"))
    clock.advance(0)
    spy.fail = True
    commits.run(lambda: store.write(1, "b", "v")).addErrback(lambda f: None)
    clock.advance(0)
    commits.flush()                      # nothing open: nothing to time
    assert timed == [(0.25, True), (0.25, False)]


def test_after_flush_runs_in_the_commits_turn_once_the_writers_were_told(setup):
    store, commits, clock, _, _ = setup
    seen = []
    done = commits.run(lambda: store.write(1, "k", "v"))
    commits.after_flush = lambda: seen.append((done.called, clock.seconds()))
    clock.advance(0)
    assert seen == [(True, 0)]


def test_a_failed_commit_fails_every_write_of_the_group_and_restores_the_clock(setup):
    store, commits, clock, spy, path = setup
    first = commits.run(lambda: store.write(1, "a", "v"))
    clock.advance(0)
    assert first.called and store.clock == VectorClock({1: 1})
    spy.fail = True
    failed = [commits.run(lambda n=n: store.write(1, f"k{n}", "v")) for n in range(3)]
    clock.advance(0)
    for d in failed:
        assert isinstance(d.result.value, GroupFailed)
        d.addErrback(lambda f: None)
    assert store.clock == VectorClock({1: 1})          # as if they never happened
    assert committed_keys(path) == ["a"]
    spy.fail = False
    again = commits.run(lambda: store.write(1, "k0", "v"))
    clock.advance(0)
    assert again.result.seq == 2                        # no write id was burnt


def test_a_write_that_raises_leaves_the_rest_of_the_group_alone(setup):
    store, commits, clock, _, path = setup
    store.apply([Record("taken", "new", 2, 1, VectorClock({2: 1}), epoch=9)], VectorClock({2: 1}))
    ok = commits.run(lambda: store.write(1, "a", "v", epoch=3))
    with pytest.raises(NewerEpoch):
        commits.run(lambda: store.write(1, "taken", "stale", epoch=3))
    also_ok = commits.run(lambda: store.write(1, "b", "v", epoch=3))
    clock.advance(0)
    assert ok.result.seq == 1 and also_ok.result.seq == 2
    assert committed_keys(path) == ["a", "b", "taken"]
    assert store.get("taken").value == "new"


def test_a_change_that_cannot_join_commits_the_group_first(setup):
    store, commits, clock, spy, path = setup
    d = commits.run(lambda: store.write(1, "a", "v"))
    store.set_epoch(5)                                  # its own transaction
    assert committed_keys(path) == ["a"] and not d.called
    clock.advance(0)
    assert d.result.seq == 1 and store.epoch == 5


def test_durable_waits_for_the_open_group_only(setup):
    store, commits, clock, _, _ = setup
    assert commits.durable().called                     # nothing pending
    commits.run(lambda: store.write(1, "a", "v"))
    waiting = commits.durable()
    assert not waiting.called
    clock.advance(0)
    assert waiting.called


def test_durable_fires_when_the_group_it_waited_for_failed(setup):
    """A failed COMMIT undid its writes: the store holds only what is durable, so a
    waiter is told so (the writers themselves hear GroupFailed)."""
    store, commits, clock, spy, _ = setup
    written = commits.run(lambda: store.write(1, "a", "v"))
    waiting = commits.durable()
    spy.fail = True
    clock.advance(0)
    assert written.result.check(GroupFailed)
    written.addErrback(lambda failure: None)
    assert waiting.called and waiting.result is None
    assert store.get("a") is None


def test_pushed_records_join_groups_too(setup):
    store, commits, clock, spy, path = setup
    records = [Record(f"k{n}", "v", 3, n, VectorClock({3: n})) for n in range(1, 6)]
    done = [commits.run(lambda r=r: store.apply_pushed(r)) for r in records]
    clock.advance(0)
    assert [d.result for d in done] == ["applied"] * 5
    assert spy.commits == 1 and len(committed_keys(path)) == 5


def test_imports_and_exports_work_while_a_group_is_open(setup):
    store, commits, clock, _, path = setup
    d = commits.run(lambda: store.write(1, "a", "v"))
    importer = store.begin_import()                     # ATTACH: commits the group first
    importer.add(Record("b", "w", 2, 1, VectorClock({2: 1})))
    commits.run(lambda: store.write(1, "c", "v"))
    importer.finish(VectorClock({2: 1}))
    clock.advance(0)
    assert d.called and committed_keys(path) == ["a", "b", "c"]


def committed_clock(path: str) -> dict[int, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT replica, count FROM clock"))


def test_the_group_commit_writes_the_clock_once_with_its_writes(setup):
    """The clock table is written by the COMMIT of the group (once, not per write),
    and a failed group leaves the persisted clock as it was."""
    store, commits, clock, spy, path = setup
    pushed = Record("p", "v", 2, 1, VectorClock({2: 1}))
    commits.run(lambda: store.write(1, "a", "v"))
    commits.run(lambda: store.apply_pushed(pushed))
    commits.run(lambda: store.write(1, "b", "v"))
    assert committed_clock(path) == {}
    clock.advance(0)
    assert committed_clock(path) == {1: 2, 2: 1}
    reopened = Store(path)                                   # a restart sees it
    assert reopened.clock == VectorClock({1: 2, 2: 1})
    reopened.close()
    spy.fail = True
    d = commits.run(lambda: store.write(1, "c", "v"))
    clock.advance(0)
    d.addErrback(lambda f: None)
    assert committed_clock(path) == {1: 2, 2: 1}


def test_a_writer_may_be_told_by_a_callback_and_one_that_raises_stops_no_other(setup):
    """run(change, done): no Deferred; done(result, None) after the COMMIT, or
    done(None, GroupFailed).  A done that raises is logged, and the writers after it
    are still told."""
    store, commits, clock, spy, _ = setup
    told = []

    def raises(result, error):
        raise RuntimeError("a writer's own bug")

    assert commits.run(lambda: store.write(1, "a", "v"), raises) is None
    assert commits.run(lambda: store.write(1, "b", "v"),
                       lambda result, error: told.append((result.key, error))) is None
    clock.advance(0)
    assert told == [("b", None)]
    spy.fail = True
    commits.run(lambda: store.write(1, "c", "v"),
                lambda result, error: told.append((result, type(error))))
    clock.advance(0)
    assert told[1] == (None, GroupFailed)


def test_what_is_ready_to_send_leaves_before_the_commit_blocks(setup):
    """before_commit runs ahead of a COMMIT (not when there is nothing to commit); one
    that raises is logged and the group is committed all the same."""
    store, commits, clock, spy, path = setup
    order = []
    commits.before_commit = lambda: order.append(("send", spy.commits))
    d = commits.run(lambda: store.write(1, "a", "v"))
    clock.advance(0)
    assert order == [("send", 0)] and spy.commits == 1 and d.called
    commits.flush()                                     # no group open: nothing to wait for
    assert order == [("send", 0)]

    def broken():
        raise RuntimeError("a connection's send failed")

    events = []
    commits.log = Logger(observer=events.append)
    commits.before_commit = broken
    d = commits.run(lambda: store.write(1, "b", "v"))
    clock.advance(0)
    assert d.result.seq == 2 and committed_keys(path) == ["a", "b"]
    [event] = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)


def test_a_full_disk_fails_the_group_as_disk_full_and_is_logged_once_per_episode(setup):
    """A COMMIT that finds the disk full fails its writers with GroupFailed(disk_full):
    nothing was applied and the same write works once space is freed.  The log says so
    once, not once per group (a traceback a turn would fill the log, often on the same
    disk), and once more when a COMMIT works again."""
    from twisted.logger import capturedLogs

    store, commits, clock, spy, path = setup
    spy.full = True
    with capturedLogs() as events:
        failed = []
        for n in range(3):                          # three turns, three failed groups
            failed.append(commits.run(lambda n=n: store.write(1, f"k{n}", "v")))
            clock.advance(0)
        assert commits.disk_full
        for d in failed:
            assert d.result.value.disk_full
            assert "the disk is full" in str(d.result.value)
            d.addErrback(lambda f: None)
        assert committed_keys(path) == [] and store.clock == VectorClock()
        spy.full = False
        again = commits.run(lambda: store.write(1, "k0", "v"))
        clock.advance(0)
    assert again.result.seq == 1 and committed_keys(path) == ["k0"]
    assert not commits.disk_full
    texts = [e["log_format"].format(**e) for e in events]
    assert [t for t in texts if "disk is full" in t] == [
        "the disk is full (database or disk is full): writes are refused, nothing "
        "half-applied, until space is freed"]
    assert [t for t in texts if "again" in t] == [
        "the disk takes writes again (3 group commits failed while it was full)"]
    assert not any(e.get("log_failure") for e in events)      # no traceback


def test_other_commit_failures_are_not_disk_full(setup):
    store, commits, clock, spy, _ = setup
    spy.fail = True
    d = commits.run(lambda: store.write(1, "k", "v"))
    clock.advance(0)
    assert not d.result.value.disk_full and not commits.disk_full
    d.addErrback(lambda f: None)


def test_a_group_committed_early_on_a_full_disk_fails_its_writers_as_disk_full(setup):
    """A change that cannot join a group (an import: a pull) commits the open group
    first; when that COMMIT finds the disk full, the group's writers (a push a follower
    is applying) hear GroupFailed(disk_full) at the flush, and the episode begins.  They
    heard a bare GroupFailed, so the follower answered the push ERR INTERNAL with a
    traceback in its log (a soak run of test_disk_full.py, caught by the log tails)."""
    store, commits, clock, spy, path = setup
    told = []
    commits.run(lambda: store.write(1, "k", "v"), lambda result, error: told.append(error))
    spy.full = True
    with pytest.raises(sqlite3.OperationalError):
        store.commit_group()                 # what an import does before it stages
    spy.full = False
    clock.advance(0)                         # the flush: nothing left to commit
    [error] = told
    assert isinstance(error, GroupFailed) and error.disk_full
    assert commits.disk_full and committed_keys(path) == []
