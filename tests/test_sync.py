"""Synchroniser.compare: anti-entropy pulls only what stays missing.  No sockets."""

from __future__ import annotations

from twisted.internet.task import Clock

from replicad.config import default_config
from replicad.peerwire import PeerStatus
from replicad.store import Record, Store
from replicad.sync import Synchroniser
from replicad.vclock import VectorClock


def make(tmp_path):
    store = Store(str(tmp_path / "replica.sqlite"))
    sync = Synchroniser(store, [], default_config(), Clock(), ping=None, call=None, mark=None,
                        epoch=lambda: 0)
    pulls: list[int] = []
    sync.sync_from = pulls.append          # record instead of dialling
    return store, sync, pulls


def seen(clock: dict[int, int]) -> PeerStatus:
    return PeerStatus(3, "coordinator", 3, 1, VectorClock(clock))


def push(store: Store, seq: int) -> None:
    record = Record(f"k{seq}", "v", 3, seq, VectorClock({3: seq}))
    assert store.apply_pushed(record) == "applied"


def test_writes_still_in_flight_are_not_pulled_lost_ones_are(tmp_path):
    store, sync, pulls = make(tmp_path)
    push(store, 1)
    sync.compare(seen({3: 2}))         # 3:2 may still be on its way
    assert pulls == []
    push(store, 2)
    sync.compare(seen({3: 3}))         # 3:2 arrived; 3:3 may be on its way
    assert pulls == []
    sync.compare(seen({3: 4}))         # 3:3 was missing last time and still is
    assert pulls == [3]


def test_an_empty_replica_pulls_at_once(tmp_path):
    store, sync, pulls = make(tmp_path)
    sync.compare(seen({3: 5}))
    assert pulls == [3]


def test_nothing_missing_nothing_pulled(tmp_path):
    store, sync, pulls = make(tmp_path)
    push(store, 1)
    sync.compare(seen({3: 1}))
    sync.compare(seen({3: 1}))
    assert pulls == []
