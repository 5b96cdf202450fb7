"""The coordinator's writes: into the open commit group, pushed, answered.

A write the coordinator takes joins the open commit group at once (``groupcommit``: its
errors are synchronous and it is all or nothing), is pushed to every follower once that
group is durable (``sync``: one PUSH per link per turn) and is answered once
``write_quorum`` replicas hold it.  Invariants this module keeps:

- nothing is answered OK before it is durable here and (quorum mode) on a majority;
  meanwhile the write waits in the quorum index, so that no read shows it
  (``quorumindex``);
- a write sent again with a request id the store remembers is answered, never applied
  twice (``replay``): OK again only while it, or another copy of the same request (a
  retry applied on the other side of a partition), is still the key's value (pushed
  again, so the answer says whether it now has its quorum), ERR SUPERSEDED once another
  write replaced it or a merge discarded it;
- a deposed coordinator (the store holds the key in a newer epoch) writes nothing and
  raises NotCoordinator: the request goes to whoever serves now.

What is *not* here: whether this replica serves and what a session needs first (the
replica's request loop, ``Replica._coordinate``), and the replies' metadata (the
replica's ``meta`` and ``error``, given to the constructor).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replicad import session
from replicad.config import ClusterConfig
from replicad.groupcommit import GroupCommit
from replicad.metrics import ReplicaMetrics
from replicad.node import Node
from replicad.quorumindex import QuorumIndex
from replicad.store import NewerEpoch, Record, RequestRow, Store, disk_full
from replicad.sync import Synchroniser
from replicad.vclock import VectorClock
from replicad.wire import Code, Reply, ReplyMeta, Request


class NotCoordinator(Exception):
    """This replica stopped being the coordinator while serving a request."""


class Writes:
    """Takes, pushes and answers the writes of the coordinator ``my_id``."""

    log = Logger()

    def __init__(self, my_id: int, config: ClusterConfig, clock: IReactorTime,
                 store: Store, commits: GroupCommit, sync: Synchroniser,
                 quorum_index: QuorumIndex, node: Node, metrics: ReplicaMetrics,
                 meta: Callable[[Request, VectorClock], ReplyMeta | None],
                 error: Callable[[Request, str, str], Reply],
                 push_refused: Callable[[int], None]):
        self.my_id = my_id
        self.config = config
        self.clock = clock
        self.store = store
        self.commits = commits
        self.sync = sync
        self.quorum_index = quorum_index
        self.node = node
        self.metrics = metrics
        self._meta = meta
        self._error = error
        self._push_refused = push_refused

    def take(self, request: Request, placed=None) -> defer.Deferred[Reply] | None:
        """The fast path for a write this coordinator can take at once (``can_take``):
        into the open commit group now, then pushed, with no coroutine; its reply by
        the Deferred.  None when the request loop must decide: anything that waits,
        replays or answers NOTFOUND, or a coordinator that just stepped down."""
        if not self.can_take(request):
            return None
        rid = request.context.rid if request.context else None
        try:
            return self.apply(request, rid, self.node.coordinator_epoch, placed)
        except NotCoordinator:
            return None                   # it stepped down: the full path sends it on

    def can_take(self, request: Request) -> bool:
        """A write taken at once: this replica serves, the session needs nothing it
        lacks, the request id is new, a DEL finds its key."""
        store = self.store
        if (not request.is_write or self.node.serving_as != self.my_id
                or not session.requirement(request.context) <= store.clock):
            return False
        rid = request.context.rid if request.context else None
        if rid is not None and store.request(rid) is not None:
            return False
        if request.command == "DEL":
            current = store.get(request.key)
            if current is None or current.deleted:
                return False
        return True

    def apply(self, request: Request, rid: str | None, epoch: int,
              placed=None, noop: bool = False) -> defer.Deferred[Reply]:
        """Write into the open commit group now (then ``placed()``); the reply once it
        is durable and pushed.  A deposed coordinator (NewerEpoch) steps down and raises
        NotCoordinator: nothing was written, the request goes elsewhere.  ``noop``: a
        DEL that found nothing, written as a no-op marker and answered NOTFOUND."""
        store = self.store
        reply: defer.Deferred[Reply] = defer.Deferred()
        index = self.quorum_index if self.config.quorum_mode else None
        if noop:
            def change():
                return store.write_noop(store.origin, request.key, epoch, rid)
        else:
            def change():
                return store.write(store.origin, request.key, request.value, epoch, rid)

        def write():
            if index is None:
                return change()
            # Quorum mode: the write waits for its quorum from the moment it is in the
            # store, where a read resumed by this group's COMMIT could see it before
            # this write's own callback runs (quorumindex.py)
            record = change()
            if noop:
                index.waiting(record.seq)
            else:
                index.waiting(record.seq, request.key, store.replaced, record)
            written.append(record.seq)
            return record

        written: list[int] = []

        def durable(record, error) -> None:   # only then is it pushed
            if error is not None:
                if written:         # its COMMIT failed: it is not in the store any more
                    index.withdraw(written[0])
                if error.disk_full:
                    reply.callback(self._no_space(request))
                elif error.in_doubt:
                    reply.callback(self._disk_failed(request, error))
                else:
                    reply.callback(self._error(request, Code.INTERNAL, str(error)))
                return
            started = self.clock.seconds()   # metrics hook

            def replicated(reached: bool) -> None:
                if index is not None:
                    index.decided(record.seq)
                try:
                    outcome = self._quorum_outcome(reached, record, request, started)
                except Exception:       # not into the push loop that settled it
                    reply.errback()
                    return
                reply.callback(outcome)

            self.sync.replicate(record, epoch, self._push_refused, replicated)

        try:
            self.commits.run(write, durable)
        except NewerEpoch as e:
            self.node.epoch_seen(e.epoch)
            raise NotCoordinator() from None
        except sqlite3.Error as e:
            if not disk_full(e):
                raise
            # The statement itself found no room (SQLite undid it; the commit group
            # counted it in the episode): answered at once.
            reply.callback(self._no_space(request))
        if placed is not None:
            placed()
        return reply

    def _no_space(self, request: Request) -> Reply:
        return self._error(
            request, Code.NOSPACE,
            f"replica {self.my_id}, the coordinator, could not write to its disk: it is "
            "full; nothing was done (free space there, then send the write again)",
        )

    def _disk_failed(self, request: Request, error: Exception) -> Reply:
        """Not "nothing was done": the failed COMMIT may have reached the disk, and the
        replica stops (replica.py), so a retry with the request id goes elsewhere."""
        return self._error(
            request, Code.INDOUBT,
            f"the write may or may not have been applied: replica {self.my_id}, the "
            f"coordinator, stops because its disk failed while making it durable "
            f"({error})",
        )

    async def replay(self, request: Request, done: RequestRow) -> Reply:
        """A write sent again with a request id this cluster already applied: answer
        it, never apply it twice.  If the write is still the key's current version it
        is pushed again (followers that have it answer "duplicate", which counts), so
        the answer says whether it now has its quorum; a no-op marker likewise."""
        origin, seq, version = done.origin, done.seq, done.version
        rid = done.rid
        if done.noop:
            self.log.info("request {rid} changed nothing (no-op {origin}:{seq}); "
                          "answering NOTFOUND again", rid=rid, origin=origin, seq=seq)
            if origin == 0:         # kept before markers: this replica's answer alone
                return Reply("NOTFOUND", meta=self._meta(request, self.store.clock))
            marker = Record(request.key, None, origin, seq, version, 0, rid, noop=True)
            return await self._replicated(marker, request, self.node.coordinator_epoch)
        self.log.info("request {rid} was already applied as write {origin}:{seq}; "
                      "answering it again", rid=rid, origin=origin, seq=seq)
        current = self.store.get(request.key)
        if current is not None and (
                (current.origin, current.seq) == (origin, seq)
                # Another copy of the same request, applied by the other side of a
                # (false) partition when the client retried there, that won the merge:
                # the request is in the data (CI: a loaded machine's 1.6 s stall).
                or (current.rid == rid and not current.noop)):
            return await self._replicated(current, request, self.node.coordinator_epoch)
        if done.discarded:
            return self._discarded(request, origin, seq)
        # No longer the key's write.  Overwritten by a write that saw it, or gone with a
        # branch a merge discarded (it, or a later write of the same losing side that
        # overwrote it): versions are clocks and cannot tell these apart (a chaos run
        # had OK answered for a write whose branch was discarded).  Never OK then, and
        # never applied again: the outcome is reported unknown, and settled (SUPERSEDED:
        # the client stops there instead of asking every replica until its deadline).
        if current is not None and version <= current.version:
            return self._error(
                request, Code.SUPERSEDED,
                f"this write was applied as {origin}:{seq} and is no longer the key's "
                "value (overwritten, or discarded with a partition's losing side); read "
                "the key to see what it holds",
            )
        return self._discarded(request, origin, seq)

    def _discarded(self, request: Request, origin: int, seq: int) -> Reply:
        return self._error(
            request, Code.SUPERSEDED,
            f"this write was applied as {origin}:{seq}, then discarded by a concurrent "
            "write during a partition; it is not in the data",
        )

    def _replicated(self, record, request: Request, epoch) -> defer.Deferred[Reply]:
        """Push a durable write; its reply once write_quorum replicas have it (or not)."""
        started = self.clock.seconds()   # metrics hook
        reached = self.sync.replicate(record, epoch, self._push_refused)
        return reached.addCallback(self._quorum_outcome, record, request, started)

    def _quorum_outcome(self, reached: bool, record, request: Request,
                        started: float) -> Reply:
        self.metrics.quorum_wait(self.clock.seconds() - started, reached)   # metrics hook
        if not reached:
            what = ("the DEL found nothing to delete; that answer" if record.noop
                    else "the write")
            return self._error(
                request, Code.QUORUM,
                f"{what} is on this replica but fewer than write_quorum = "
                f"{self.config.write_quorum} replicas confirmed it in time; it may or may "
                "not survive a failure",
            )
        return Reply("NOTFOUND" if record.noop else "OK",
                     meta=self._meta(request, record.version))
