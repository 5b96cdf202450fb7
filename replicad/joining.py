"""When an unbound replica may take part in its cluster.  Pure.

A replica whose database belongs to no cluster history yet (``Store.cluster_id`` is
None: a first start, or a wiped data dir) must not become coordinator or count towards
a write quorum before it holds what the cluster acknowledged; otherwise a wiped disk
silently loses acknowledged writes (the quorum that held a write no longer does) and the
replica issues write ids it issued before.  Two ways out:

- **fresh**: every other member was seen holding no write (unbound, or bound with an
  empty clock: the first coordinator of a new cluster), so no write exists anywhere; or
  the operator said ``--new-cluster``.  The first coordinator makes the cluster id (once
  every member accepted its epoch: replica.py, ``history_ready``); the
  others bind to it when they see it.
- **joined**: it copied the data of ``pulls_needed`` distinct bound peers (full copies)
  and binds to their cluster id.  ``pulls_needed`` is 1 in the default mode and
  N - majority + 1 in quorum mode: an acknowledged write is on a majority, so at least
  majority - 1 of the others still hold it, and any N - majority + 1 of the others
  include one of them.

Until then the replica does not stand for election and refuses pushes; its log says
what it waits for.
"""

from __future__ import annotations

from collections.abc import Iterable


class Joining:
    def __init__(self, my_id: int, member_ids: Iterable[int], pulls_needed: int,
                 new_cluster: bool = False):
        self._others = frozenset(member_ids) - {my_id}
        if not 1 <= pulls_needed <= max(1, len(self._others)):
            raise ValueError(f"pulls_needed must be between 1 and {len(self._others)}")
        self.pulls_needed = min(pulls_needed, len(self._others)) if self._others else 0
        self.new_cluster = new_cluster
        self._seen_unbound: set[int] = set()
        self._seen_bound = False
        self._fresh = False
        self._pulled: dict[int, str] = {}      # peer -> cluster id it had when copied

    @property
    def fresh(self) -> bool:
        """No write exists anywhere (every other member reported an empty clock), or
        the operator asked for a new history."""
        if self._seen_unbound >= self._others:
            self._fresh = True      # sticky: the first coordinator then binds, and that
                                    # must not make the others think history existed
        return self.new_cluster or self._fresh

    @property
    def knows_history(self) -> bool:
        """A bound peer was seen: there is a history to copy before taking part."""
        return self._seen_bound

    def peer_seen(self, peer_id: int, cluster_id: str | None, empty: bool) -> None:
        """A peer's PING answer: its cluster id and whether its clock is empty."""
        if peer_id not in self._others:
            return
        if empty:
            self._seen_unbound.add(peer_id)
        else:
            self._seen_unbound.discard(peer_id)
        if cluster_id is not None and not empty and not self.fresh:
            self._seen_bound = True

    @property
    def copied(self) -> int:
        return len(self._pulled)

    def has_copied(self, peer_id: int) -> bool:
        return peer_id in self._pulled

    def pulled(self, peer_id: int, cluster_id: str) -> str | None:
        """A full copy from a bound peer landed; the cluster id to bind to once enough
        peers of one cluster were copied, else None."""
        if peer_id not in self._others:
            return None
        self._pulled[peer_id] = cluster_id
        same = [p for p, c in self._pulled.items() if c == cluster_id]
        return cluster_id if len(same) >= self.pulls_needed else None

    def waiting_for(self) -> str:
        """One sentence for the log: what this replica waits for."""
        done = len(self._pulled)
        return (f"copied {done} of the {self.pulls_needed} peers needed "
                f"(start with --new-cluster to begin a new history instead)")
