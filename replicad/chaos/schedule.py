"""The fault schedule: which fault, on which replicas, when.  Pure and seeded.

``make_schedule(seed, duration_s, replicas, kinds)`` returns the same list of ``Fault``
for the same arguments, on every machine: the runner only carries it out, so a run is
reproduced by its seed (the timing of client operations is not; the faults are).
The last fault lasts until ``duration_s``: it is still in effect when the clients stop,
and the final heal ends it, so the time to converge measures recovery from a fault.

Faults run one at a time.  Each holds for ``hold_s`` (``MIN_HOLD_S``-``MAX_HOLD_S``),
then is undone (restart, SIGCONT, heal), then the cluster gets ``MIN_GAP_S``-``MAX_GAP_S``
to recover before the next one.  One fault at a time keeps every failure explainable
from the history: a lost write happened in the one fault that was active.  The kinds
are drawn from a shuffled bag (every requested kind once, then reshuffle), so a run of
a few dozen faults covers every kind evenly.

Targets are replica ids, or ``COORDINATOR``: "the replica every other names as
coordinator when the fault starts", which only the runner can resolve (it is recorded
in the history with the id it resolved to).

Kinds (the partitions hold bytes in the fault proxy; nothing is closed):

- ``kill``: SIGKILL, restart after the hold.
- ``pause``: SIGSTOP, SIGCONT after the hold (a hung replica: sockets stay open).
- ``isolate``: cut the coordinator from every other replica.
- ``split``: two sides, the smaller one ``size // 2`` replicas (1/2 of 3, 2/3 of 5).
- ``oneway``: hold the bytes from one replica to another, not back.
- ``bridge``: two sides that do not see each other and one replica that sees both.
- ``wipe``: SIGKILL, delete the data dir, restart empty after the hold.
- ``full``: the replica's disk fills up (its data directory is a tmpfs shrunk to what it
  holds plus a few pages), grown back after the hold.
- ``clock``: the replica's wall clock is stepped an hour forward or back (libfaketime),
  and back to the real time after the hold.
- ``slow``: every byte between the replica and the others is delayed (150-600 ms, about
  the failure detector's timeouts), nothing held; undone by a heal.
- ``fsync``: every fsync of the replica first sleeps 0.5-3 s (a stalled disk: its
  reactor blocks in each COMMIT), back to none after the hold.
- ``eio``: every fsync of the replica fails with EIO (a failing disk): it answers the
  writes of that COMMIT in doubt and stops (exit 74); started again on a healthy disk
  after the hold.
- ``eioread``: every pread of the replica fails with EIO (bad sectors): at its next
  read of a page SQLite does not hold in memory (a peer's copy or delta, a cold key)
  it stops (exit 74); if it read none, it goes on; started again after the hold.
- ``delete``: the replica's data directory is deleted while it runs (an operator's
  ``rm -rf``): it stops within a second (exit 74); started again after the hold, on the
  empty directory, it copies the data.

``all`` leaves the last seven out, and so keeps every recorded seed's schedule (``full``
needs root and mount(8), ``clock`` Debian's libfaketime, ``fsync``, ``eio`` and
``eioread`` a C compiler): ask for them by name,
``all,full,clock,slow,fsync,eio,eioread,delete``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

COORDINATOR = "coordinator"   # a target resolved when the fault starts

MIN_HOLD_S = 2.0
MAX_HOLD_S = 6.0
MIN_GAP_S = 1.0
MAX_GAP_S = 3.0
FIRST_FAULT_S = 2.0   # the cluster serves a little before the first fault
# Share of kill/pause/wipe faults aimed at the coordinator (the rest at any replica):
# a coordinator's failure is the interesting one, a follower's the common one.
COORDINATOR_SHARE = 0.5


class FaultKind(enum.Enum):
    KILL = "kill"
    PAUSE = "pause"
    ISOLATE = "isolate"
    SPLIT = "split"
    ONEWAY = "oneway"
    BRIDGE = "bridge"
    WIPE = "wipe"
    FULL = "full"
    CLOCK = "clock"
    SLOW = "slow"
    FSYNC = "fsync"
    EIO = "eio"
    EIOREAD = "eioread"
    DELETE = "delete"


# ``all``: the kinds of the recorded seeds.  The later ones are asked for by name:
# adding them here would change the schedule of every seed in docs/reliability.md
# (and FULL mounts a tmpfs per replica: root; CLOCK preloads libfaketime; FSYNC, EIO
# and EIOREAD a library it compiles).
OPT_IN = (FaultKind.FULL, FaultKind.CLOCK, FaultKind.SLOW, FaultKind.FSYNC, FaultKind.EIO,
          FaultKind.EIOREAD, FaultKind.DELETE)
# The faults that fail a replica's disk through the preloaded library.
DISK_ERRORS = (FaultKind.EIO, FaultKind.EIOREAD)
# The faults after which a replica stops itself (exit 74), as it must: not a crash.
SELF_STOPPING = (*DISK_ERRORS, FaultKind.DELETE)
ALL_KINDS = tuple(k for k in FaultKind if k not in OPT_IN)
# Faults aimed at one replica (a replica id or COORDINATOR).
_ONE_REPLICA = (FaultKind.KILL, FaultKind.PAUSE, FaultKind.WIPE, FaultKind.FULL,
                FaultKind.CLOCK, FaultKind.SLOW, FaultKind.FSYNC, *SELF_STOPPING)
# Faults with a ``target`` (those, and ISOLATE, always the coordinator).
TARGETED = (*_ONE_REPLICA, FaultKind.ISOLATE)
CLOCK_STEP_S = 3600     # a clock fault steps the wall clock this far, forward or back
SLOW_MS = (150, 600)    # a slow fault's delay: around ping_timeout and answer_timeout
FSYNC_MS = (500, 3000)  # an fsync fault's delay: below and above pause detection (1.2 s)


class ScheduleError(ValueError):
    """Arguments no schedule can be made from; the message is one line."""


@dataclass(frozen=True)
class Fault:
    """One fault: its kind, when it starts and for how long, and whom it hits.

    ``target`` is a replica id or COORDINATOR (kill, pause, wipe, full, clock, isolate);
    ``step_s`` the step of a clock fault (+/- CLOCK_STEP_S); ``delay_ms`` a slow or
    fsync fault's delay; ``groups``
    the sides of a partition (split, bridge: the bridge is in neither side);
    ``pair`` (source, destination) of a one-way cut; ``bridge`` the replica that sees
    both sides.
    """

    index: int
    kind: FaultKind
    start_s: float
    hold_s: float
    target: int | str | None = None
    groups: tuple[tuple[int, ...], ...] = ()
    pair: tuple[int, int] | None = None
    bridge: int | None = None
    step_s: int | None = None
    delay_ms: int | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.hold_s

    def describe(self) -> str:
        """One line for the progress output and the history."""
        kind = self.kind
        if kind is FaultKind.CLOCK:
            what = f"clock {self.target} {self.step_s:+d} s"
        elif kind is FaultKind.SLOW:
            what = f"slow {self.target} by {self.delay_ms} ms"
        elif kind is FaultKind.FSYNC:
            what = f"fsync {self.target} +{self.delay_ms} ms"
        elif kind in TARGETED:
            what = f"{kind.value} {self.target}"
        elif kind is FaultKind.SPLIT:
            what = "split " + " | ".join(",".join(map(str, g)) for g in self.groups)
        elif kind is FaultKind.ONEWAY:
            assert self.pair is not None
            what = f"oneway {self.pair[0]}->{self.pair[1]}"
        else:
            sides = " | ".join(",".join(map(str, g)) for g in self.groups)
            what = f"bridge {self.bridge} between {sides}"
        return f"{what} for {self.hold_s:.1f} s"

    def to_json(self) -> dict:
        return {
            "index": self.index, "kind": self.kind.value, "start_s": self.start_s,
            "hold_s": self.hold_s, "target": self.target,
            "groups": [list(g) for g in self.groups],
            "pair": list(self.pair) if self.pair else None, "bridge": self.bridge,
            "step_s": self.step_s, "delay_ms": self.delay_ms,
        }


def parse_kinds(text: str) -> tuple[FaultKind, ...]:
    """``kill,pause,...``, ``all`` (also within a list: ``all,full``) or ``none`` ->
    kinds, in the order given, without repeats."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ScheduleError("no fault kinds given")
    if names == ["none"]:
        return ()
    kinds: list[FaultKind] = []
    for name in names:
        if name == "all":
            named = list(ALL_KINDS)
        else:
            try:
                named = [FaultKind(name)]
            except ValueError:
                known = ", ".join(k.value for k in FaultKind)
                raise ScheduleError(f"unknown fault kind {name!r} (known: {known}, all, "
                                    "none)") from None
        kinds.extend(k for k in named if k not in kinds)
    return tuple(kinds)


def make_schedule(seed: int, duration_s: float, replicas: int,
                  kinds: Iterable[FaultKind] = ALL_KINDS) -> list[Fault]:
    """The faults of a run, in time order; the last one ends at ``duration_s``."""
    kinds = tuple(kinds)
    if replicas < 3:
        raise ScheduleError(f"faults need at least 3 replicas, got {replicas}")
    if duration_s <= 0:
        raise ScheduleError(f"the duration must be positive, got {duration_s:g} s")
    rng = random.Random(f"replicad-chaos-{seed}")   # str seeds hash stably (SHA-512)
    ids = list(range(1, replicas + 1))
    faults: list[Fault] = []
    bag: list[FaultKind] = []
    t = FIRST_FAULT_S
    while kinds and t < duration_s:
        hold = rng.uniform(MIN_HOLD_S, MAX_HOLD_S)
        last = t + hold + MAX_GAP_S + MIN_HOLD_S >= duration_s
        if last:
            hold = duration_s - t   # still in effect at the end: the final heal ends it
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        faults.append(_fault(rng, len(faults), kind, round(t, 2), round(hold, 2), ids))
        if last:
            break
        t += hold + rng.uniform(MIN_GAP_S, MAX_GAP_S)
    return faults


def _fault(rng: random.Random, index: int, kind: FaultKind, start_s: float, hold_s: float,
           ids: Sequence[int]) -> Fault:
    if kind in _ONE_REPLICA:
        target: int | str = COORDINATOR if rng.random() < COORDINATOR_SHARE else rng.choice(ids)
        step = rng.choice((-CLOCK_STEP_S, CLOCK_STEP_S)) if kind is FaultKind.CLOCK else None
        delay = None
        if kind is FaultKind.SLOW:
            delay = rng.randrange(SLOW_MS[0], SLOW_MS[1] + 1, 10)
        elif kind is FaultKind.FSYNC:
            delay = rng.randrange(FSYNC_MS[0], FSYNC_MS[1] + 1, 100)
        return Fault(index, kind, start_s, hold_s, target=target, step_s=step,
                     delay_ms=delay)
    if kind is FaultKind.ISOLATE:
        return Fault(index, kind, start_s, hold_s, target=COORDINATOR)
    shuffled = list(ids)
    rng.shuffle(shuffled)
    if kind is FaultKind.SPLIT:
        small = len(ids) // 2
        sides = (tuple(sorted(shuffled[:small])), tuple(sorted(shuffled[small:])))
        return Fault(index, kind, start_s, hold_s, groups=sides)
    if kind is FaultKind.ONEWAY:
        return Fault(index, kind, start_s, hold_s, pair=(shuffled[0], shuffled[1]))
    # BRIDGE: the others split as evenly as possible on either side of the bridge.
    bridge, rest = shuffled[0], shuffled[1:]
    half = len(rest) // 2
    sides = (tuple(sorted(rest[:half])), tuple(sorted(rest[half:])))
    return Fault(index, kind, start_s, hold_s, groups=sides, bridge=bridge)


def replicas_touched(fault: Fault) -> set[int | str]:
    """Every replica a fault names (COORDINATOR stays symbolic)."""
    touched: set[int | str] = set()
    if fault.target is not None:
        touched.add(fault.target)
    for group in fault.groups:
        touched.update(group)
    if fault.pair:
        touched.update(fault.pair)
    if fault.bridge is not None:
        touched.add(fault.bridge)
    return touched
