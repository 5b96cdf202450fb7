"""The replica's role machine: Bully election, epochs, quorum take-over, lease.  Pure.

No sockets and no global reactor: network I/O goes out through a ``NodeActions`` object
(the replica's wiring) and time comes in as an injected ``IReactorTime``, so tests drive
it with ``task.Clock``.  docs/election.md has the protocol and a diagram.

States (each carries its own data and at most one timer; leaving a state cancels it):

    FOLLOWER     follows ``coordinator`` in ``epoch`` (or none yet: shown as electing)
    ELECTING     sent ELECTION to the higher ids; waits for an OK (answer timer); if
                 none came, asks the lower ids before it wins (pre-vote, answer timer)
    AWAITING     got an OK; waits for the COORDINATOR announcement (coordinator timer)
    TAKING_OVER  won: announced its epoch, pulls from the replicas that accepted it
                 (re-announce timer); serves once ``quorum`` replicas, itself included,
                 accepted the epoch and were pulled from, and every other answer is in
    SERVING      the coordinator clients use (re-announce timer; lease timer in quorum
                 mode)
    STOPPED      the service stopped; every input is ignored

Invariants (each is tested):

- I1 epochs never decrease; the epoch a replica wins with is persisted *before* it is
  announced, and a failed persist is retried on a timer (never a stuck state).
- I1b an epoch names one coordinator: a replica wins only epochs ``e`` with
  ``e % stride == its id`` (stride = highest member id + 1), and an announcement whose
  epoch is not the announcer's own is rejected.
- I2 a replica announces itself only when every higher member failed or stayed silent
  for ``answer_timeout_s``: a lower replica never announces while a higher one answers.
- I3 an announcement is rejected if its epoch is below the highest seen or if another
  coordinator already holds that epoch here; the rejection carries the newer epoch and
  makes the announcer re-elect above it, so an epoch names one coordinator.
- I4 a replica only ever follows a higher id, so "follows" chains have no cycles.
- I5 the highest live *eligible* replica bullies: an announcement from a lower id is
  rejected and answered with an election.
- I6 (quorum mode) a replica serves only after a majority, itself included, accepted its
  epoch; a replica that accepted epoch e refuses older epochs (fencing), so a deposed
  coordinator can no longer reach a write quorum.  A serving coordinator that hears from
  no majority for ``lease_s`` stops serving and answers at once that it cannot serve.
- I7 an epoch from the wire above ``MAX_EPOCH`` is refused at the edge (peerwire), and
  a newer epoch makes a coordinator step down before anything else is handled.
- I8 (pre-vote) a replica whose higher peers all failed mints no epoch while a lower
  peer confirms that it follows a live coordinator above it: the candidate cannot reach
  that coordinator, but the cluster can.  Without this, across a bridge (2 and 3 cut
  apart, 1 reaching both) 2's new epoch reached 3 through 1, 3 stood again above it,
  and so on, about 20 elections a second (docs/reliability.md, "Election storms").  The
  highest member never asks (no one can be above it), and an unanswered pre-vote is no
  objection, so a crash or a hang still fails over.
- I8b (objection to an election) a follower of a coordinator above it that gets
  ELECTION from a lower peer does not stand itself while it confirms that coordinator
  alive: it objects, and the lower peer stands down as after a pre-vote objection.
  Its own election could only end with the same coordinator, and while it ran it
  refused that coordinator's pushes: across a one-way cut (3's bytes to 1 held), 1
  stood about once a second, and each time 2 stood too, and 3's writes missed their
  quorum (docs/reliability.md, "Thirteenth session").  An unconfirmed coordinator is
  no objection: Bully as before.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

ANSWER_TIMEOUT_S = 0.3
COORDINATOR_TIMEOUT_S = 0.8
REANNOUNCE_INTERVAL_S = 1.0
PERSIST_RETRY_S = 0.5
MAX_EPOCH = 2**48     # far beyond any real history; bounds what the wire may claim


def veto_reason(vetoed: tuple[int, int]) -> str:
    """Why a vetoed replica (``Node.vetoed``: peer, coordinator) does not serve: the
    one wording of its client error and of its readiness probe."""
    peer, coordinator = vetoed
    return (f"coordinator {coordinator} is alive (replica {peer} reaches it) but this "
            "replica cannot reach it")


class Role(enum.Enum):
    FOLLOWER = "follower"
    ELECTING = "electing"
    AWAITING = "awaiting"
    TAKING_OVER = "taking-over"
    SERVING = "serving"
    STOPPED = "stopped"

    @property
    def is_coordinator(self) -> bool:
        return self in (Role.TAKING_OVER, Role.SERVING)

    @property
    def public_name(self) -> str:
        """What clients and peers see: AWAITING is a detail of electing, and a
        coordinator still taking over is a coordinator (forwards wait for it)."""
        if self in (Role.ELECTING, Role.AWAITING):
            return "electing"
        if self.is_coordinator:
            return "coordinator"
        return self.value


class Candidacy(enum.Enum):
    """Whether this replica stands for election (joining.py says which)."""

    YES = "yes"
    PENDING = "pending"   # will stand soon (a new replica still looking at its peers):
                          # answers OK to lower ids, so they wait for it, but never wins
    NO = "no"             # must first copy the cluster's data: lower ids do not wait


class Announcement(enum.Enum):
    """What a replica made of a peer's claim to coordinate (COORDINATOR, or a PING
    answer naming the peer coordinator).  True only when accepted, so the peer port
    answers OK or NO by its truth."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    # Rejected, and the claimant was told this replica's newer term: a lower replica's
    # claim of an older one, sent before our announcement reached it.  Nothing more is
    # needed; an election would end the same way, later.
    TOLD_OUR_TERM = "told-our-term"

    def __bool__(self) -> bool:
        return self is Announcement.ACCEPTED


class NodeActions(Protocol):
    """Network and disk side effects, implemented by the replica's wiring."""

    def send_election(self, peer_id: int, epoch: int) -> None:
        """Send ELECTION(epoch).  Call ``answer_received`` on OK, else
        ``election_send_failed`` within ``answer_timeout_s``."""

    def send_prevote(self, peer_id: int, epoch: int) -> None:
        """Ask a lower peer whether it follows a live coordinator above this replica
        (the peer's ``prevote_received``; it pings that coordinator before it says so).
        Call ``prevote_answered`` with the coordinator it confirmed (None: no
        objection), or ``prevote_failed``."""

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        """Send COORDINATOR(epoch); call ``coordinator_accepted``,
        ``coordinator_rejected`` or ``coordinator_send_failed``."""

    def pull_for_take_over(self, peer_id: int, epoch: int) -> None:
        """Pull what peer_id has and this replica lacks; call ``pull_done``."""

    def holders(self, peers: set[int]) -> set[int]:
        """(confirm_holders only) Those of ``peers`` known to hold every write this
        replica holds (their clock covers its own)."""

    def catch_up(self, peer_id: int, epoch: int) -> None:
        """(confirm_holders only) Ask peer_id, which accepted ``epoch``, to pull what it
        lacks from this replica; call ``caught_up``."""

    def history_ready(self, pulled: set[int]) -> bool:
        """Whether this replica, taking over, may serve as far as its cluster history
        goes, ``pulled`` being the peers that accepted its epoch and were pulled from:
        the replica makes a fresh cluster's id here (replica.py says when).  False: the
        node keeps taking over and asks again at the next accept or pull."""

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        """Called on every change of (role, coordinator, coordinator epoch)."""

    def persist_epoch(self, epoch: int) -> None:
        """Durably store the highest epoch seen; may raise (the node retries)."""


# States ------------------------------------------------------------------------------


@dataclass
class _State:
    role: Role
    coordinator: int | None = None
    epoch: int | None = None          # the coordinator's epoch, where there is one
    timer: IDelayedCall | None = None


@dataclass
class _Electing(_State):
    round: int = 0
    waiting_on: set[int] = field(default_factory=set)


@dataclass
class _PreVoting(_State):
    waiting_on: set[int] = field(default_factory=set)


@dataclass
class _TakingOver(_State):
    unsettled: set[int] = field(default_factory=set)   # announcements not answered yet
    accepted: set[int] = field(default_factory=set)
    pulled: set[int] = field(default_factory=set)
    pulling: set[int] = field(default_factory=set)
    catching_up: set[int] = field(default_factory=set)


@dataclass
class _Serving(_State):
    lease_timer: IDelayedCall | None = None


class Node:
    """One replica's role.  Inputs are the public methods; outputs are calls on
    ``actions``.  ``quorum`` is how many replicas, this one included, must accept an
    epoch before its coordinator serves: 1 in the default mode, a majority in quorum
    mode (where ``lease_s`` also applies)."""

    log = Logger()

    def __init__(
        self,
        my_id: int,
        member_ids: Iterable[int],
        actions: NodeActions,
        clock: IReactorTime,
        epoch: int = 0,
        quorum: int = 1,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        coordinator_timeout_s: float = COORDINATOR_TIMEOUT_S,
        reannounce_interval_s: float | None = REANNOUNCE_INTERVAL_S,
        lease_s: float | None = None,
        candidacy: Candidacy = Candidacy.YES,
        pause_s: float | None = None,
        confirm_holders: bool = False,
    ) -> None:
        members = frozenset(member_ids) | {my_id}
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must be between 0 and {MAX_EPOCH}, got {epoch}")
        if answer_timeout_s <= 0 or coordinator_timeout_s <= 0:
            raise ValueError("answer_timeout_s and coordinator_timeout_s must be > 0")
        if reannounce_interval_s is not None and reannounce_interval_s <= 0:
            raise ValueError("reannounce_interval_s must be > 0 or None")
        if not 1 <= quorum <= len(members):
            raise ValueError(f"quorum must be between 1 and {len(members)}, got {quorum}")
        self._my_id = my_id
        self._others = members - {my_id}
        self._stride = max(members) + 1
        self._higher = tuple(sorted(i for i in self._others if i > my_id))
        self._lower = tuple(sorted(i for i in self._others if i < my_id))
        self._actions = actions
        self._clock = clock
        self._epoch = epoch
        self._quorum = quorum
        self._answer_timeout_s = answer_timeout_s
        self._coordinator_timeout_s = coordinator_timeout_s
        self._reannounce_interval_s = reannounce_interval_s
        self._lease_s = lease_s if quorum > 1 else None
        self._candidacy = candidacy
        self._pause_s = pause_s        # no tick() for this long: the process was paused
        # Quorum mode: serve only once quorum - 1 peers hold every write this replica
        # holds after its take-over pulls (_check_taken_over says why).
        self._confirm_holders = confirm_holders and quorum > 1
        self._last_tick = clock.seconds()
        self._state: _State = _State(Role.FOLLOWER)
        self._round = 0
        self._contact: dict[int, float] = {}
        self._fail_fast = False        # lost the majority: refuse at once, do not wait
        self._veto: tuple[int, int] | None = None   # (peer, coordinator) of the last veto
        self._persist_timer: IDelayedCall | None = None
        self._waiters: list[defer.Deferred[None]] = []

    # -- read-only view -------------------------------------------------------------

    @property
    def my_id(self) -> int:
        return self._my_id

    @property
    def role(self) -> Role:
        return self._state.role

    @property
    def public_role(self) -> str:
        """Role.public_name, except that a follower without a coordinator is electing."""
        if self._state.role is Role.FOLLOWER and self._state.coordinator is None:
            return "electing"
        return self._state.role.public_name

    @property
    def coordinator(self) -> int | None:
        return self._state.coordinator

    @property
    def epoch(self) -> int:
        """Highest epoch seen."""
        return self._epoch

    @property
    def coordinator_epoch(self) -> int | None:
        return self._state.epoch

    @property
    def quorum(self) -> int:
        return self._quorum

    @property
    def eligible(self) -> bool:
        return self._candidacy is Candidacy.YES

    @property
    def candidacy(self) -> Candidacy:
        return self._candidacy

    @property
    def serving_as(self) -> int | None:
        """The coordinator a request goes to right now: this replica while SERVING, the
        followed coordinator for a follower; None while electing or taking over.

        A coordinator whose process was paused (SIGSTOP, a VM freeze: no ``tick`` for
        ``pause_s``) does not serve what was queued meanwhile: it stands again first
        (take-over pull included), since the others may have moved on without it."""
        state = self._state
        if state.role is Role.SERVING:
            if self._paused():
                self._paused_coordinator_stands_again()
                return None
            return self._my_id
        if state.role is Role.FOLLOWER:
            return state.coordinator
        return None

    @property
    def vetoed(self) -> tuple[int, int] | None:
        """(peer, coordinator) while this replica does not stand because ``peer``
        confirmed a live coordinator above it that this replica cannot reach (I8)."""
        return self._veto

    @property
    def follows(self) -> int | None:
        """The coordinator this follower follows and may answer reads in the name of
        (it is not refusing requests: ``cannot_serve``); else None.  One property for a
        follower's hot path, where the three it stands for were asked per read."""
        state = self._state
        if state.role is Role.FOLLOWER and not self._fail_fast and self._veto is None:
            return state.coordinator
        return None

    @property
    def cannot_serve(self) -> bool:
        """True while a request should be refused at once instead of waiting: a
        coordinator that lost its majority (quorum mode), a replica told that the
        coordinator is alive but out of its reach (I8), or a stopped node."""
        return (self._fail_fast or self._veto is not None
                or self._state.role is Role.STOPPED)

    def take_over_progress(self) -> tuple[int, int] | None:
        """(replicas accepted and pulled, this one included; quorum) while taking over."""
        state = self._state
        if isinstance(state, _TakingOver):
            return len(state.pulled) + 1, self._quorum
        return None

    # -- waiting ----------------------------------------------------------------------

    def wait_for_change(self, timeout_s: float) -> defer.Deferred[bool]:
        """Fires True at the next transition (or ``poke``), False after timeout_s."""
        if timeout_s <= 0 or self._state.role is Role.STOPPED:
            return defer.succeed(False)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)

        def leave(result):
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return result

        waiter.addTimeout(timeout_s, self._clock)
        waiter.addBoth(leave)
        waiter.addCallbacks(lambda _: True, lambda f: f.trap(defer.TimeoutError) and False)
        return waiter

    async def when_serving(self, deadline: float) -> int | None:
        """The coordinator to use, once there is one; None at the deadline, or at once
        while ``cannot_serve``."""
        while True:
            if self.cannot_serve:
                return None
            coordinator = self.serving_as
            if coordinator is not None:
                return coordinator
            if not await self.wait_for_change(deadline - self._clock.seconds()):
                return self.serving_as if not self.cannot_serve else None

    def poke(self) -> None:
        """Wake the waiters: the wiring learned something they may care about (a link
        dropped, a peer became suspect)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    # -- inputs: election ----------------------------------------------------------------

    def start_election(self, reason: str) -> None:
        """Hold an election unless one is running or this replica may not stand."""
        if self._state.role in (Role.STOPPED, Role.ELECTING, Role.AWAITING):
            return
        if not self.eligible:
            return
        self._elect(reason)

    def set_candidacy(self, candidacy: Candidacy, reason: str) -> None:
        """A replica that must first catch up (an empty data dir while the cluster has
        data) does not stand for election; once it has caught up it does."""
        if candidacy is self._candidacy or self._state.role is Role.STOPPED:
            return
        self._candidacy = candidacy
        self.log.info("replica {replica} candidacy {what}: {reason}", replica=self._my_id,
                      what=candidacy.value, reason=reason)
        state = self._state
        following_higher = (state.role is Role.FOLLOWER and state.coordinator is not None
                            and state.coordinator > self._my_id)
        if candidacy is Candidacy.YES and not following_higher:
            self.start_election(reason)   # Bully: a higher replica takes over
        elif self._state.role is not Role.FOLLOWER:
            self._enter(_State(Role.FOLLOWER))

    def election_received(self, from_id: int, epoch: int) -> bool:
        """ELECTION from a peer.  True means answer OK (carrying ``self.epoch``)."""
        if self._state.role is Role.STOPPED or from_id not in self._others:
            return False
        self.epoch_seen(epoch)
        if from_id > self._my_id or self._candidacy is Candidacy.NO:
            return False   # not Bully traffic, or not a candidate: do not make it wait
        if self._candidacy is Candidacy.PENDING:
            return True    # it will stand soon: the lower one waits for it
        if self._state.role.is_coordinator:
            assert self._state.epoch is not None
            self._actions.send_coordinator(from_id, self._state.epoch)
        else:
            self.start_election(f"election from {from_id}")
        return True

    def objection_to_election(self, from_id: int) -> int | None:
        """ELECTION from a lower peer, at a follower of a coordinator above this
        replica: that coordinator, which the glue confirms alive and then objects in
        its name instead of calling ``election_received`` (I8b); None: no objection
        (nor from a replica that is no candidate: it would not stand anyway)."""
        state = self._state
        if (state.role is Role.FOLLOWER and state.coordinator is not None
                and state.coordinator > self._my_id and from_id < self._my_id
                and from_id in self._others and self._candidacy is Candidacy.YES):
            return state.coordinator
        return None

    def election_objected(self, peer_id: int, coordinator: int) -> None:
        """A higher peer answered ELECTION: it follows ``coordinator``, above this
        replica, which answered it just now (I8b).  This replica cannot reach it, but
        the cluster can: stand down as after a pre-vote objection.  Once another
        higher peer answered OK (AWAITING), the objection changes nothing."""
        state = self._state
        if not isinstance(state, _Electing) or peer_id not in state.waiting_on:
            return
        if coordinator in self._higher:
            self._vetoed(peer_id, coordinator)
        else:
            self.election_send_failed(peer_id)

    def answer_received(self, from_id: int, epoch: int) -> None:
        """OK from a higher peer: it will win, so wait for its announcement."""
        if self._state.role is Role.STOPPED:
            return
        self.epoch_seen(epoch)
        if self._state.role is not Role.ELECTING or from_id <= self._my_id:
            return
        state = _State(Role.AWAITING)
        self._enter(state)
        state.timer = self._clock.callLater(self._coordinator_timeout_s,
                                            self._coordinator_timed_out, state)

    def election_send_failed(self, peer_id: int) -> None:
        """ELECTION to a higher peer failed: once all have, win at once (I2)."""
        state = self._state
        if not isinstance(state, _Electing):
            return
        state.waiting_on.discard(peer_id)
        if not state.waiting_on:
            self.log.info("replica {replica}: no higher replica reachable in epoch {epoch}",
                          replica=self._my_id, epoch=self._epoch)
            self._prevote_or_win()

    def peer_down(self, peer_id: int, silent_s: float = 0.0) -> None:
        """A call to a peer went unanswered for ``silent_s`` (its deadline), or its
        link dropped (``math.inf``): the glue's evidence.  An election waiting on the
        peer counts it as failed at once (a hung coordinator cost up to two answer
        timeouts more without this, issue #8; a wrong guess costs one more election:
        the live peer bullies back).

        A take-over stops waiting for the peer's answer to the announcement only on
        evidence as strong as that answer's own timeout: silence for answer_timeout
        (its ELECTION call, say) or a dropped link (a crashed process closes its
        sockets).  A 0.2 s anti-entropy PING lost to a loaded machine settled a live
        peer, and a take-over with a quorum of 1 served without pulling from it (CI: a
        woken coordinator carried out a DEL that peer had answered NOTFOUND); a wrong
        guess there costs the peer's writes, so it waits for the answer instead."""
        state = self._state
        if isinstance(state, _Electing) and peer_id in state.waiting_on:
            self.election_send_failed(peer_id)
        elif isinstance(state, _PreVoting) and peer_id in state.waiting_on:
            self.prevote_failed(peer_id)
        elif (isinstance(state, _TakingOver) and peer_id in state.unsettled
              and silent_s >= self._answer_timeout_s):
            self.coordinator_send_failed(peer_id, state.epoch)

    def prevote_received(self, from_id: int) -> int | None:
        """A peer asks before it stands (I8).  The coordinator above it that this
        replica follows (or is), which the glue confirms alive before it objects; None:
        no objection."""
        state = self._state
        if state.role is Role.STOPPED or from_id not in self._others:
            return None
        if state.role.is_coordinator and self._my_id > from_id:
            return self._my_id
        if (state.role is Role.FOLLOWER and state.coordinator is not None
                and state.coordinator > from_id):
            return state.coordinator
        return None

    def prevote_answered(self, peer_id: int, coordinator: int | None) -> None:
        """A lower peer answered the pre-vote: ``coordinator`` is the live coordinator
        above this replica that it confirmed (a veto), or None."""
        state = self._state
        if not isinstance(state, _PreVoting) or peer_id not in state.waiting_on:
            return
        state.waiting_on.discard(peer_id)
        if coordinator is not None and coordinator in self._higher:
            self._vetoed(peer_id, coordinator)
        elif not state.waiting_on:
            self._win()

    def prevote_failed(self, peer_id: int) -> None:
        """No answer to the pre-vote: no objection (a crashed or hung peer)."""
        self.prevote_answered(peer_id, None)

    def coordinator_received(self, from_id: int, epoch: int) -> Announcement:
        """COORDINATOR(epoch).  ACCEPTED (true); else rejected with ``self.epoch``
        (false), TOLD_OUR_TERM when the claimant was sent this replica's newer term."""
        if self._state.role is Role.STOPPED or from_id not in self._others:
            return Announcement.REJECTED
        if epoch > MAX_EPOCH or epoch % self._stride != from_id % self._stride:
            self.log.warn("replica {replica} rejects coordinator {peer}: epoch {epoch} "
                          "cannot be its own", replica=self._my_id, peer=from_id, epoch=epoch)
            return Announcement.REJECTED
        if from_id < self._my_id and self.eligible:
            self.epoch_seen(epoch)
            self.log.info("replica {replica} rejects coordinator {peer} (lower id) in "
                          "epoch {epoch}", replica=self._my_id, peer=from_id, epoch=epoch)
            state = self._state
            if state.role.is_coordinator and state.epoch is not None and epoch < state.epoch:
                # Sent before the lower one saw this epoch (a queued re-announcement,
                # say): this NO carries our epoch, so it steps down (I7), and our own
                # announcement follows, as for an ELECTION.  A new election per stale
                # announcement raced a returning replica's epoch up by dozens in a
                # second and restarted its take-over each time (docs/election.md, Epochs).
                self._actions.send_coordinator(from_id, state.epoch)
                return Announcement.TOLD_OUR_TERM
            self.start_election(f"announcement from lower {from_id}")
            return Announcement.REJECTED
        state = self._state
        holder = state.coordinator if state.role in (Role.FOLLOWER, Role.TAKING_OVER,
                                                     Role.SERVING) else None
        conflict = epoch == state.epoch and holder not in (None, from_id)
        if epoch < self._epoch or conflict:   # I3
            self.log.info(
                "replica {replica} rejects coordinator {peer} in epoch {epoch}: stale or "
                "already held by {holder} (highest seen {seen})", replica=self._my_id,
                peer=from_id, epoch=epoch, holder=holder, seen=self._epoch,
            )
            return Announcement.REJECTED
        self.epoch_seen(epoch)
        if (state.role, state.coordinator, state.epoch) == (Role.FOLLOWER, from_id, epoch):
            return Announcement.ACCEPTED   # a re-announcement
        self._enter(_State(Role.FOLLOWER, from_id, epoch))
        self.log.info("replica {replica} follows coordinator {coordinator} in epoch {epoch}",
                      replica=self._my_id, coordinator=from_id, epoch=epoch)
        return Announcement.ACCEPTED

    def coordinator_accepted(self, peer_id: int, epoch: int) -> None:
        """A peer accepted this replica's announcement of ``epoch``."""
        if peer_id not in self._others:
            return
        self._contact[peer_id] = self._clock.seconds()
        state = self._state
        if not isinstance(state, _TakingOver) or state.epoch != epoch:
            return
        state.unsettled.discard(peer_id)
        if peer_id not in state.accepted:
            state.accepted.add(peer_id)
            state.pulling.add(peer_id)
            self._actions.pull_for_take_over(peer_id, epoch)
        self._check_taken_over()

    def coordinator_send_failed(self, peer_id: int, epoch: int) -> None:
        state = self._state
        if isinstance(state, _TakingOver) and state.epoch == epoch:
            state.unsettled.discard(peer_id)
            self._check_taken_over()

    def coordinator_rejected(self, peer_id: int, epoch: int, my_epoch: int | None = None) -> None:
        """A peer rejected the announcement of ``my_epoch`` and answered with its own
        ``epoch``.  A lower one with an epoch at least ours has seen a newer term:
        re-elect above it.  A higher one is alive and will bully this replica."""
        state = self._state
        if isinstance(state, _TakingOver) and my_epoch in (None, state.epoch):
            state.unsettled.discard(peer_id)
        self.epoch_seen(epoch)
        state = self._state
        if my_epoch is not None and my_epoch != state.epoch:
            return    # a late answer to an older announcement (e.g. queued while paused)
        if (
            state.role.is_coordinator
            and peer_id < self._my_id
            and state.epoch is not None
            and epoch >= state.epoch
        ):
            self._elect(f"announcement rejected by {peer_id} in epoch {epoch}")
            return
        if isinstance(state, _TakingOver):
            self._check_taken_over()

    def pull_done(self, peer_id: int, epoch: int, ok: bool) -> None:
        """The take-over pull from an accepting peer ended."""
        state = self._state
        if not isinstance(state, _TakingOver) or state.epoch != epoch:
            return
        state.pulling.discard(peer_id)
        if ok:
            state.pulled.add(peer_id)
            self._contact[peer_id] = self._clock.seconds()   # it just answered
        else:
            state.accepted.discard(peer_id)   # asked again at the next re-announcement
        self._check_taken_over()

    def coordinator_failed(self) -> None:
        """A ping to the coordinator failed: a follower holds an election."""
        if self._state.role is Role.FOLLOWER:
            coordinator = self._state.coordinator
            if self.eligible:
                self._elect(f"coordinator {coordinator} failed")
            else:
                self._enter(_State(Role.FOLLOWER))

    def tick(self) -> None:
        """The wiring's heartbeat loop ran: this process is not paused.  If it was (the
        loop ran first on waking, before any request or peer message was read), a
        coordinator stands again, as serving_as would have it."""
        if self._paused() and self._state.role.is_coordinator:
            self._paused_coordinator_stands_again()
            return
        self._last_tick = self._clock.seconds()

    def _paused_coordinator_stands_again(self) -> None:
        self.log.warn("coordinator {replica} was paused for {gap_s:.1f} s: standing again "
                      "before it serves", replica=self._my_id,
                      gap_s=self._clock.seconds() - self._last_tick)
        self._elect("this process was paused")

    def _paused(self) -> bool:
        return (self._pause_s is not None
                and self._clock.seconds() - self._last_tick > self._pause_s)

    def contact(self, peer_id: int) -> None:
        """A peer answered this replica just now (keeps a quorum-mode lease)."""
        if peer_id in self._others:
            self._contact[peer_id] = self._clock.seconds()

    def epoch_seen(self, epoch: int) -> None:
        """I1: the highest epoch seen only rises.  A coordinator that sees a newer
        epoch steps down at once (I7), then holds an election on the next turn."""
        if self._state.role is Role.STOPPED or epoch <= self._epoch:
            return
        if epoch > MAX_EPOCH:
            self.log.warn("ignoring epoch {epoch} above the bound {bound}", epoch=epoch,
                          bound=MAX_EPOCH)
            return
        self._epoch = epoch
        self._persist(epoch)
        if self._state.role.is_coordinator:
            self.log.info("replica {replica} steps down: epoch {epoch} is newer than its "
                          "own {own}", replica=self._my_id, epoch=epoch,
                          own=self._state.epoch)
            self._enter(_State(Role.FOLLOWER))
            self._clock.callLater(0, self._elect_if_leaderless, "a newer epoch was seen")

    def stop(self) -> None:
        """Service shutdown: cancel timers; later inputs are ignored; waiters released."""
        self._enter(_State(Role.STOPPED))
        if self._persist_timer is not None and self._persist_timer.active():
            self._persist_timer.cancel()

    # -- internals --------------------------------------------------------------------

    def _elect_if_leaderless(self, reason: str) -> None:
        state = self._state
        if state.role is Role.FOLLOWER and state.coordinator is None:
            self.start_election(reason)

    def _elect(self, reason: str) -> None:
        if self._paused():
            # Whatever asked (a queued request, a peer's ELECTION or newer epoch read on
            # waking): not before the pause's stale evidence is spent.
            self._stand_again_after_pause(reason)
            return
        self.log.info("replica {replica} starts an election in epoch {epoch}: {reason}",
                      replica=self._my_id, epoch=self._epoch, reason=reason)
        if not self._higher:
            self._win()
            return
        self._round += 1
        state = _Electing(Role.ELECTING, round=self._round, waiting_on=set(self._higher))
        self._enter(state)
        state.timer = self._clock.callLater(self._answer_timeout_s, self._answer_timed_out,
                                            state)
        for peer in self._higher:
            if self._state is not state:   # the glue answered synchronously
                break
            self._actions.send_election(peer, self._epoch)

    def _stand_again_after_pause(self, reason: str) -> None:
        """Elect, but only answer_timeout after the pause ended.  What the glue knew of
        its peers is from before the pause: the calls it had in flight all time out at
        once on waking and report their peers down, and links the peers closed
        meanwhile are found closed only now.  A take-over started at once counted those
        peers failed and, with an election quorum of 1, served alone, carrying out
        requests queued during the pause that the others had answered since (a chaos
        run: a PUT retried elsewhere applied again, its old value back over a newer
        write).  After the wait that stale evidence is spent and the links are back,
        so the take-over reaches the peers and pulls from them (the request ids too)."""
        self.log.info("replica {replica} was paused: it stands again in {wait_s} s "
                      "({reason})", replica=self._my_id, wait_s=self._answer_timeout_s,
                      reason=reason)
        self._last_tick = self._clock.seconds()     # the pause is handled: this is it
        self._round += 1
        state = _Electing(Role.ELECTING, round=self._round)
        self._enter(state)
        state.timer = self._clock.callLater(self._answer_timeout_s, self._after_pause,
                                            state, reason)

    def _after_pause(self, state: _State, reason: str) -> None:
        if self._state is state:
            self._elect(reason)

    def _prevote_or_win(self) -> None:
        """Every higher replica failed or stayed silent.  Before minting an epoch, ask
        the lower ones whether they follow a live coordinator above this replica (I8);
        win once none objected (or answer_timeout passed)."""
        if not self._lower:
            self._win()
            return
        state = _PreVoting(Role.ELECTING, waiting_on=set(self._lower))
        self._enter(state)
        state.timer = self._clock.callLater(self._answer_timeout_s,
                                            self._prevote_timed_out, state)
        for peer in self._lower:
            if self._state is not state:   # the glue answered synchronously
                break
            self._actions.send_prevote(peer, self._epoch)

    def _prevote_timed_out(self, state: _State) -> None:
        if self._state is state:
            self._win()

    def _vetoed(self, peer_id: int, coordinator: int) -> None:
        """A lower peer reaches coordinator ``coordinator``, which this replica cannot:
        stand down without an epoch, refuse requests at once (the client tries another
        replica), and ask again after coordinator_timeout (or follow the coordinator
        when its announcement gets through)."""
        self.log.info("replica {replica} does not stand: replica {peer} follows "
                      "coordinator {coordinator}, alive but out of reach from here",
                      replica=self._my_id, peer=peer_id, coordinator=coordinator)
        self._veto = (peer_id, coordinator)
        state = _State(Role.FOLLOWER)
        self._enter(state)
        state.timer = self._clock.callLater(self._coordinator_timeout_s,
                                            self._elect_if_leaderless,
                                            f"coordinator {coordinator} still out of reach?")

    def _next_epoch(self) -> int:
        """The least epoch above every epoch seen that is this replica's own: epochs are
        ``round * stride + id`` (stride = highest member id + 1), so two coordinators
        can never hold the same epoch, even two that won alone in a partition."""
        epoch = self._epoch + 1
        return epoch + (self._my_id - epoch) % self._stride

    def _win(self) -> None:
        new_epoch = self._next_epoch()
        try:
            self._actions.persist_epoch(new_epoch)   # I1: durable before announced
        except Exception:
            self.log.failure("replica {replica} cannot persist epoch {epoch}; retrying in "
                             "{delay_s} s", replica=self._my_id, epoch=new_epoch,
                             delay_s=PERSIST_RETRY_S)
            state = _State(Role.ELECTING)
            self._enter(state)
            state.timer = self._clock.callLater(PERSIST_RETRY_S, self._retry_win, state)
            return
        self._epoch = new_epoch
        self.log.info("replica {replica} won the election in epoch {epoch}",
                      replica=self._my_id, epoch=new_epoch)
        state = _TakingOver(Role.TAKING_OVER, self._my_id, new_epoch,
                            unsettled=set(self._others))
        self._enter(state)
        self._announce(state)
        if self._state is state:
            self._check_taken_over()

    def _retry_win(self, state: _State) -> None:
        if self._state is state:
            self._win()

    def _persist(self, epoch: int) -> None:
        """Persist a seen epoch; on failure retry until it lands (or a later one does)."""
        try:
            self._actions.persist_epoch(epoch)
        except Exception:
            self.log.failure("cannot persist epoch {epoch}; retrying", epoch=epoch)
            if self._persist_timer is None or not self._persist_timer.active():
                self._persist_timer = self._clock.callLater(
                    PERSIST_RETRY_S, lambda: self._persist(self._epoch))

    def _announce(self, state: _State) -> None:
        """Send COORDINATOR to the others; repeated every reannounce_interval_s so a lost
        announcement heals (a missed one, a peer that came back)."""
        if self._reannounce_interval_s is not None:
            state.timer = self._clock.callLater(self._reannounce_interval_s,
                                                self._reannounce, state)
        targets = sorted(self._others)
        if isinstance(state, _TakingOver):
            state.unsettled |= set(targets) - state.accepted
            targets = sorted(state.unsettled)
        for peer in targets:
            if self._state is not state:
                break   # a synchronous rejection started a new election
            assert state.epoch is not None
            self._actions.send_coordinator(peer, state.epoch)

    def _reannounce(self, state: _State) -> None:
        if self._state is state:
            self._announce(state)

    def _check_taken_over(self) -> None:
        state = self._state
        if not isinstance(state, _TakingOver):
            return
        have = len(state.pulled) + 1
        settled = not state.unsettled and not state.pulling
        if have >= self._quorum and settled:
            if self._lease_s is not None and not self._lease_valid():
                # The take-over outlasted the lease (say a replica pulled from long ago
                # died since): no majority heard from within lease_s, so do not serve;
                # elect again, as at a lease expiry, which asks every replica anew.
                self._fail_fast = True
                self._elect("no majority heard from within the lease at take-over")
                return
            if self._confirm_holders and not self._held_by_a_majority(state):
                return
            if not self._actions.history_ready(set(state.pulled)):
                return
            serving = _Serving(Role.SERVING, self._my_id, state.epoch)
            self._last_tick = self._clock.seconds()
            self._enter(serving)
            self._fail_fast = False
            self.log.info("coordinator {replica} serving in epoch {epoch}: {have} replicas "
                          "hold the epoch (quorum {quorum})", replica=self._my_id,
                          epoch=state.epoch, have=have, quorum=self._quorum)
            if self._reannounce_interval_s is not None:
                serving.timer = self._clock.callLater(self._reannounce_interval_s,
                                                      self._reannounce, serving)
            if self._lease_s is not None:
                self._arm_lease(serving)
        elif settled and have < self._quorum and not self._fail_fast:
            self._fail_fast = True
            self.log.warn("coordinator {replica} cannot reach a majority in epoch {epoch} "
                          "({have} of {quorum}): refusing requests until it does",
                          replica=self._my_id, epoch=state.epoch, have=have,
                          quorum=self._quorum)
            self.poke()

    def _held_by_a_majority(self, state: _TakingOver) -> bool:
        """Whether quorum - 1 of the pulled peers hold every write this replica now
        holds; if not, the others are asked to catch up (and False).

        The pulls gave this replica what a majority holds, but also writes that fewer
        than a majority may hold: an earlier coordinator's write in doubt, pushed to
        one follower before that coordinator failed.  Served at once, such a write could
        be read by a session that the next majority, lacking it, then refuses until a
        holder is back (docs/consistency.md).  Usually the peers' clocks from the pulls
        show they hold everything already, and this costs nothing."""
        holding = self._actions.holders(set(state.pulled))
        if len(holding) + 1 >= self._quorum:
            return True
        asked = sorted(state.pulled - holding - state.catching_up)
        if asked:
            self.log.info("coordinator {replica} taking over in epoch {epoch}: replicas "
                          "{asked} lack some of its writes; asking them to catch up "
                          "before it serves", replica=self._my_id, epoch=state.epoch,
                          asked=", ".join(map(str, asked)))
        for peer_id in asked:
            state.catching_up.add(peer_id)
            self._actions.catch_up(peer_id, state.epoch)
        return False

    def caught_up(self, peer_id: int, epoch: int, ok: bool) -> None:
        """A catch-up asked of a pulled peer ended; not ``ok``: the peer is dropped and
        asked again at the next re-announcement, as after a failed pull."""
        state = self._state
        if not isinstance(state, _TakingOver) or state.epoch != epoch:
            return
        state.catching_up.discard(peer_id)
        if not ok:
            state.pulled.discard(peer_id)
            state.accepted.discard(peer_id)
        else:
            self._contact[peer_id] = self._clock.seconds()   # it just answered
        self._check_taken_over()

    def _majority_contact(self) -> float:
        """The time by which ``quorum - 1`` peers had last been heard from."""
        times = sorted(self._contact.get(p, float("-inf")) for p in self._others)
        return times[-(self._quorum - 1)] if self._quorum > 1 else self._clock.seconds()

    def _lease_valid(self) -> bool:
        # The same sum as _arm_lease's expiry: "now - contact < lease" can hold in floats
        # at the expiry itself, and re-arming with a zero delay then loops forever.
        assert self._lease_s is not None
        return self._clock.seconds() < self._majority_contact() + self._lease_s

    def _arm_lease(self, state: _Serving) -> None:
        assert self._lease_s is not None
        expiry = self._majority_contact() + self._lease_s
        delay = max(0.0, expiry - self._clock.seconds())
        state.lease_timer = self._clock.callLater(delay, self._lease_check, state)

    def _lease_check(self, state: _Serving) -> None:
        if self._state is not state:
            return
        assert self._lease_s is not None
        if self._lease_valid():
            self._arm_lease(state)
            return
        self.log.warn("coordinator {replica} heard from no majority for {lease_s} s: "
                      "stops serving in epoch {epoch}", replica=self._my_id,
                      lease_s=self._lease_s, epoch=state.epoch)
        self._fail_fast = True
        self._elect("lost the majority (lease expired)")

    def _answer_timed_out(self, state: _State) -> None:
        if self._state is state:
            self.log.info("replica {replica}: no OK within {timeout_s} s in epoch {epoch}",
                          replica=self._my_id, timeout_s=self._answer_timeout_s,
                          epoch=self._epoch)
            self._prevote_or_win()

    def _coordinator_timed_out(self, state: _State) -> None:
        if self._state is state:
            self._elect("no COORDINATOR after OK")

    def _enter(self, new: _State) -> None:
        """Move to a state; the old state's timers die with it; waiters wake up."""
        old = self._state
        for timer in (old.timer, getattr(old, "lease_timer", None)):
            if timer is not None and timer.active():
                timer.cancel()
        self._state = new
        if new.coordinator is not None:
            self._veto = None
        if new.role is Role.FOLLOWER and new.coordinator is not None:
            self._fail_fast = False
        if (old.role, old.coordinator, old.epoch) != (new.role, new.coordinator, new.epoch):
            shown = self._epoch if new.epoch is None else new.epoch
            self._actions.role_changed(new.role, new.coordinator, shown)
        self.poke()

