"""Group commit: the writes of one reactor turn share one COMMIT, so one fsync.

Why one transaction per reactor turn and not a writer thread: SQLite's COMMIT with
``synchronous=FULL`` costs one fdatasync whatever it carries, and the reactor already
collects every request that arrived together (many connections, pipelined lines) into
one turn. Writes join the open group synchronously (the store's savepoints keep each
all-or-nothing and its errors synchronous, e.g. a deposed coordinator's NewerEpoch);
the group is committed by a call scheduled for the next turn, and only then are the
writers told (their Deferreds fire). Nothing is acknowledged, pushed or read from
before it is durable. ``after_flush`` then lets the replica push the group and send
what the commit released in that same turn (replica.py, ``_after_commit``).

The fsync stays on the reactor thread, measured: running it on a thread of its own
(``synchronous=NORMAL`` plus our own fdatasync of the WAL, the group held open while an
fsync runs; branch experiment/fsync-thread) cost 10 µs more coordinator CPU per write
at 50 connections and about 90 µs per write at 1 (the hand-over to the thread and
back), for 0.91-0.95x PUTs/s with write_quorum 1 and 0.87-0.89x with majority on the
2-core machine (docs/benchmarks.md, "The fsync on a thread").

Nor is a group held open in quorum mode while the previous one waits for its quorum
(fewer, bigger groups; branch experiment/group-hold): it cut the groups' number by a
quarter but measured 0.90-1.01x the PUTs/s of committing every turn once the rest of
that session's changes were in (docs/benchmarks.md, "Tried and not kept: holding a
group open").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from replicad.store import Store, disk_full, outcome_unknown

T = TypeVar("T")


class GroupCommit:
    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime):
        self._store = store
        self._clock = clock
        self._waiting: list[tuple[defer.Deferred, object, int]] = []
        self._call: IDelayedCall | None = None
        self.groups = 0          # committed groups, for metrics and tests
        self.writes = 0          # writes they carried
        # The disk is full (the last COMMIT failed with SQLITE_FULL): said once in the
        # log, with how many groups failed, not once per group (a traceback each
        # turn would fill the log, often on the same disk).
        self.disk_full = False
        self._failed_while_full = 0
        # Told True when a disk-full episode starts and False when it ends (the admin
        # page's timeline, through the metrics).
        self.disk_changed: Callable[[bool], None] | None = None
        # Called after every flush, once the writers were told: what their callbacks
        # queued to send (pushes, replies, acks) can leave in this turn, not the next.
        self.after_flush: Callable[[], None] | None = None
        # Called before a COMMIT (its fsync blocks the reactor): what is ready to send
        # and needs nothing of the group (replies relayed from the coordinator, forwards,
        # answered reads) leaves first rather than wait for the disk.
        self.before_commit: Callable[[], None] | None = None
        # Told how long each group's COMMIT took and whether it worked (the metrics: a
        # slow disk blocks the reactor for that long).
        self.committed: Callable[[float, bool], None] | None = None

    @property
    def settled(self) -> bool:
        """Nothing written so far is uncommitted or waiting to be told: a read may be
        answered now with what the store holds."""
        return not self._store.group_open and not self._waiting

    def run(self, change: Callable[[], T],
            done: Callable[[T | None, Exception | None], None] | None = None,
            ) -> defer.Deferred[T] | None:
        """Run ``change`` (a store write) inside the open group now; the Deferred fires
        with its result once the group is durable (or, given ``done``, no Deferred:
        done(result, None), or done(None, GroupFailed) if the COMMIT failed).  Errors
        of ``change`` itself are raised here, synchronously, and leave nothing behind."""
        store = self._store
        if not store.group_open:
            store.begin_group()
        if self._call is None or not self._call.active():
            self._call = self._clock.callLater(0, self.flush)
        try:
            result = change()
        except Exception as e:
            if disk_full(e):
                self.full_seen(e)   # the statement found no room: the episode begins
            raise
        if done is not None:
            self._waiting.append((done, result, store.group_id))
            return None
        d: defer.Deferred[T] = defer.Deferred()
        self._waiting.append((d, result, store.group_id))
        return d

    def durable(self) -> defer.Deferred[None]:
        """Fires once nothing written so far is still uncommitted (at once if so):
        committed, or undone by a COMMIT that failed.  It never fails: either way the
        store then holds only what is durable, which is what a waiting reader or a
        request deciding again needs (the failed writes' own writers hear of it)."""
        if self.settled:
            return defer.succeed(None)
        decided: defer.Deferred[None] = defer.Deferred()
        self.run(lambda: None, lambda result, error: decided.callback(None))
        return decided

    def flush(self) -> None:
        """Commit the open group and tell its writers (also called by tests)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        waiting, self._waiting = self._waiting, []
        store = self._store
        if store.group_open and self.before_commit is not None:
            try:
                self.before_commit()
            except Exception:
                self.log.failure("before the group commit of {n} writes", n=len(waiting))
        committing = store.group_open
        failed: Exception | None = None
        started = self._clock.seconds()
        try:
            store.commit_group()
        except Exception as e:
            failed = e
            if not disk_full(e) and not outcome_unknown(e):
                self.log.failure("group commit of {n} writes failed", n=len(waiting))
        else:
            if committing and waiting:      # an empty COMMIT proves nothing of the disk
                self.commit_worked()
        if committing and self.committed is not None:
            self.committed(self._clock.seconds() - started, failed is None)
        if waiting:
            self.groups += 1
            self.writes += len(waiting)
        # A group may also have been committed (or failed) early, by a change that
        # cannot join a group (an import); its writers learn the outcome here all the
        # same, a full disk as such (a follower answered a push ERR INTERNAL, with a
        # traceback, when a pull's early COMMIT of the push's group found it full).
        outcomes = [(d, result, store.group_failure(group_id))
                    for d, result, group_id in waiting]
        store.forget_failed_groups()
        # This group's COMMIT, or an early one, found the disk full: once per flush.
        full = [f for f in (failed, *(f for _, _, f in outcomes))
                if f is not None and disk_full(f)]
        if full:
            self.full_seen(full[0])
        for told, result, failure in outcomes:
            error = None if failure is None else GroupFailed.of(failure)
            if isinstance(told, defer.Deferred):
                if error is not None:
                    told.errback(error)
                else:
                    told.callback(result)
                continue
            try:
                told(None if error is not None else result, error)
            except Exception:
                self.log.failure("telling a writer of its group commit")
        if self.after_flush is not None:
            try:
                self.after_flush()
            except Exception:
                self.log.failure("after the group commit of {n} writes", n=len(waiting))


    def commit_worked(self) -> None:
        """A COMMIT worked (this group's, or an import's): the disk takes writes."""
        if self.disk_full:
            self.disk_full = False
            self.log.info("the disk takes writes again ({n} group commits failed while "
                          "it was full)", n=self._failed_while_full)
            self._tell_disk(False)

    def full_seen(self, error: Exception) -> None:
        """SQLite found the disk full (this group's COMMIT, a statement of a change that
        SQLite undid, or a pull's import): an episode starts, said once, or goes on."""
        self._failed_while_full = (self._failed_while_full + 1) if self.disk_full else 1
        if not self.disk_full:
            self.disk_full = True
            self.log.error("the disk is full ({error}): writes are refused, nothing "
                           "half-applied, until space is freed", error=error)
            self._tell_disk(True)

    def _tell_disk(self, full: bool) -> None:
        if self.disk_changed is not None:
            try:
                self.disk_changed(full)
            except Exception:
                self.log.failure("telling of the disk's state")


class GroupFailed(Exception):
    """The COMMIT of a write group failed.  ``disk_full``: because the disk is full;
    none of its writes happened (the same write succeeds once space is freed).
    ``in_doubt``: the disk failed otherwise (store.outcome_unknown): its writes may be
    on the disk after all, and come back when the database is next opened."""

    def __init__(self, message: str, disk_full: bool = False, in_doubt: bool = False):
        super().__init__(message)
        self.disk_full = disk_full
        self.in_doubt = in_doubt

    @classmethod
    def of(cls, failure: BaseException) -> GroupFailed:
        if disk_full(failure):
            return cls("the disk is full: the write could not be committed; nothing "
                       "was done", disk_full=True)
        if outcome_unknown(failure):
            return cls(f"the COMMIT failed: {failure}", in_doubt=True)
        return cls("the write could not be committed; nothing was done")
