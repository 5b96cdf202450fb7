"""Bully election with epochs: a pure state machine.

No sockets and no global reactor: network I/O goes out through an ``ElectionActions``
object (the replica glue) and time comes in as an injected ``IReactorTime``, so tests
drive it with ``task.Clock``.  See docs/election.md for the protocol and a diagram.

Invariants (each is tested):

- I1 epochs never decrease; every rise is persisted (``persist_epoch``) *before* it is
  announced, so a restarted replica never reuses an epoch.
- I2 a replica announces itself only when every higher member failed or stayed silent
  for ``answer_timeout_s``: a lower replica never announces while a higher one answers OK.
- I3 an announcement is rejected if its epoch is below the highest seen (a stale
  coordinator) or if a different coordinator already holds that epoch here (a replica
  that returns with an old persisted epoch can win with one the cluster already uses);
  the rejection makes the announcer re-elect above it, so an epoch names one term.
- I4 a replica only ever follows a higher id, so "follows" chains have no cycles.
- I5 the highest live replica bullies: an announcement from a lower id is rejected and
  answered with an election, which it wins with an epoch above the one it rejected.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

ANSWER_TIMEOUT_S = 0.3
COORDINATOR_TIMEOUT_S = 0.8
REANNOUNCE_INTERVAL_S = 1.0


class Role(enum.Enum):
    FOLLOWER = "follower"  # knows a coordinator that is another replica
    ELECTING = "electing"  # sent ELECTION to higher ids, waiting for an OK
    AWAITING = "awaiting"  # got an OK, waiting for the COORDINATOR announcement
    COORDINATOR = "coordinator"

    @property
    def public_name(self) -> str:
        """What clients see: AWAITING is an internal detail of electing."""
        return "electing" if self in (Role.ELECTING, Role.AWAITING) else self.value


class ElectionActions(Protocol):
    """Network side effects, implemented by the replica glue."""

    def send_election(self, peer_id: int, epoch: int) -> None:
        """Send ELECTION(epoch).  Call ``answer_received`` on OK, else
        ``election_send_failed`` (refused, error or timeout <= answer_timeout_s)."""

    def send_coordinator(self, peer_id: int, epoch: int) -> None:
        """Send COORDINATOR(epoch); on rejection call ``coordinator_rejected``."""

    def role_changed(self, role: Role, coordinator: int | None, epoch: int) -> None:
        """Called on every change of (role, coordinator, coordinator epoch).  ``epoch`` is
        the coordinator's epoch, or the highest seen while there is no coordinator."""

    def persist_epoch(self, epoch: int) -> None:
        """Durably store the highest epoch seen; must be done when this returns."""


class BullyElection:
    """One replica's view of the election.  Inputs are the public methods; outputs are
    calls on ``actions``.  Each state owns at most one timer (answer timer in ELECTING,
    coordinator timer in AWAITING, re-announce timer in COORDINATOR); every transition
    cancels it, so a stale timer can never fire into a later state."""

    log = Logger()

    def __init__(
        self,
        my_id: int,
        member_ids: Iterable[int],
        actions: ElectionActions,
        clock: IReactorTime,
        epoch: int = 0,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        coordinator_timeout_s: float = COORDINATOR_TIMEOUT_S,
        reannounce_interval_s: float | None = REANNOUNCE_INTERVAL_S,
    ) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if answer_timeout_s <= 0 or coordinator_timeout_s <= 0:
            raise ValueError("answer_timeout_s and coordinator_timeout_s must be > 0")
        if reannounce_interval_s is not None and reannounce_interval_s <= 0:
            raise ValueError("reannounce_interval_s must be > 0 or None")
        self._my_id = my_id
        self._others = frozenset(member_ids) - {my_id}
        self._higher = tuple(sorted(i for i in self._others if i > my_id))
        self._actions = actions
        self._clock = clock
        self._epoch = epoch
        self._answer_timeout_s = answer_timeout_s
        self._coordinator_timeout_s = coordinator_timeout_s
        self._reannounce_interval_s = reannounce_interval_s
        self._role = Role.FOLLOWER
        self._coordinator: int | None = None
        self._coordinator_epoch: int | None = None
        # Higher peers of this round whose send has not failed.  Failures carry no round,
        # so a late one from an earlier round counts here; harmless while the glue's send
        # timeout is <= answer_timeout_s (the earlier round's failures have all landed).
        self._waiting_on: set[int] = set()
        self._round = 0
        self._timer: IDelayedCall | None = None
        self._stopped = False

    # -- read-only view -------------------------------------------------------------

    @property
    def my_id(self) -> int:
        return self._my_id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def public_role(self) -> str:
        """Role.public_name, except that a follower without a coordinator is electing."""
        if self._role is Role.FOLLOWER and self._coordinator is None:
            return "electing"
        return self._role.public_name

    @property
    def coordinator(self) -> int | None:
        return self._coordinator

    @property
    def epoch(self) -> int:
        """Highest epoch seen (and persisted)."""
        return self._epoch

    @property
    def coordinator_epoch(self) -> int | None:
        """Epoch of the current coordinator's announcement."""
        return self._coordinator_epoch

    # -- inputs -----------------------------------------------------------------------

    def start_election(self, reason: str) -> None:
        """Hold an election unless one is already running."""
        if self._stopped or self._role in (Role.ELECTING, Role.AWAITING):
            return
        self._elect(reason)

    def election_received(self, from_id: int, epoch: int) -> bool:
        """ELECTION from a peer.  True means: answer OK (carrying ``self.epoch``)."""
        if self._stopped or from_id not in self._others:
            return False
        self.epoch_seen(epoch)
        if from_id > self._my_id:
            return False  # not Bully traffic: elections only go to higher ids
        if self._role is Role.COORDINATOR:
            # Already won: tell the lower one again, no new epoch needed.
            assert self._coordinator_epoch is not None
            self._actions.send_coordinator(from_id, self._coordinator_epoch)
        else:
            self.start_election(f"election from {from_id}")
        return True

    def answer_received(self, from_id: int, epoch: int) -> None:
        """OK from a higher peer: it will win, so wait for its announcement."""
        if self._stopped:
            return
        self.epoch_seen(epoch)
        if self._role is not Role.ELECTING or from_id <= self._my_id:
            return  # late or duplicate answer
        self._enter(Role.AWAITING, None, None)
        self._set_timer(self._coordinator_timeout_s, self._coordinator_timed_out)

    def election_send_failed(self, peer_id: int) -> None:
        """ELECTION to a higher peer failed: once all have, win without waiting (I2)."""
        if self._stopped or self._role is not Role.ELECTING:
            return
        self._waiting_on.discard(peer_id)
        if not self._waiting_on:
            self.log.info(
                "replica {replica}: no higher replica reachable in epoch {epoch}",
                replica=self._my_id, epoch=self._epoch,
            )
            self._win()

    def coordinator_received(self, from_id: int, epoch: int) -> bool:
        """COORDINATOR(epoch).  True = accepted; False = glue rejects with ``self.epoch``."""
        if self._stopped or from_id not in self._others:
            return False
        if from_id < self._my_id:
            # I5: bully the lower one whatever its epoch; if its epoch is stale and we
            # stayed quiet, it would keep believing it is coordinator.
            self.epoch_seen(epoch)
            self.log.info(
                "replica {replica} rejects coordinator {peer} (lower id) in epoch {epoch}",
                replica=self._my_id, peer=from_id, epoch=epoch,
            )
            self.start_election(f"announcement from lower {from_id}")
            return False
        conflict = epoch == self._coordinator_epoch and self._coordinator not in (None, from_id)
        if epoch < self._epoch or conflict:  # I3
            self.log.info(
                "replica {replica} rejects coordinator {peer} in epoch {epoch}: "
                "stale or already held by {holder} (highest seen {seen})",
                replica=self._my_id, peer=from_id, epoch=epoch,
                holder=self._coordinator, seen=self._epoch,
            )
            return False
        self.epoch_seen(epoch)
        if (self._role, self._coordinator, self._coordinator_epoch) == (
            Role.FOLLOWER, from_id, epoch,
        ):
            return True  # duplicate or re-announcement
        self._enter(Role.FOLLOWER, from_id, epoch)
        self.log.info(
            "replica {replica} follows coordinator {coordinator} in epoch {epoch}",
            replica=self._my_id, coordinator=from_id, epoch=epoch,
        )
        return True

    def coordinator_rejected(self, peer_id: int, epoch: int) -> None:
        """A peer rejected my announcement.  A lower one with an epoch at least mine has
        seen a newer epoch: re-elect to announce above it.  A higher one is alive and
        will bully me, so nothing else to do."""
        if self._stopped:
            return
        self.epoch_seen(epoch)
        if (
            self._role is Role.COORDINATOR
            and peer_id < self._my_id
            and self._coordinator_epoch is not None
            and epoch >= self._coordinator_epoch
        ):
            self.start_election(f"announcement rejected by {peer_id} in epoch {epoch}")

    def coordinator_failed(self) -> None:
        """A ping to the coordinator failed.  Only a follower acts; the glue must
        ``reset`` its detector on coordinator change so stale failures do not land."""
        if self._stopped or self._role is not Role.FOLLOWER:
            return
        self._elect(f"coordinator {self._coordinator} failed")

    def epoch_seen(self, epoch: int) -> None:
        """I1: the highest epoch seen only rises, and each rise is persisted."""
        if self._stopped or epoch <= self._epoch:
            return
        self._epoch = epoch
        self._actions.persist_epoch(epoch)
        if self._role is Role.COORDINATOR:
            # A newer term exists somewhere: re-elect and announce above it rather than
            # live on in an older epoch.  Next turn, since this may be called mid-input.
            self._clock.callLater(0, self._check_outdated)

    def _check_outdated(self) -> None:
        if (
            not self._stopped
            and self._role is Role.COORDINATOR
            and (self._coordinator_epoch or 0) < self._epoch
        ):
            self.start_election(f"a newer epoch {self._epoch} was seen")

    def stop(self) -> None:
        """Service shutdown: cancel timers; later inputs are ignored."""
        self._stopped = True
        self._cancel_timer()

    # -- internals --------------------------------------------------------------------

    def _elect(self, reason: str) -> None:
        self.log.info(
            "replica {replica} starts an election in epoch {epoch}: {reason}",
            replica=self._my_id, epoch=self._epoch, reason=reason,
        )
        if not self._higher:
            self._win()
            return
        self._round += 1
        this_round = self._round
        self._waiting_on = set(self._higher)
        self._enter(Role.ELECTING, None, None)
        self._set_timer(self._answer_timeout_s, self._answer_timed_out)
        for peer in self._higher:
            # The glue may answer synchronously; stop once this round is decided.
            if self._round != this_round or self._role is not Role.ELECTING:
                break
            self._actions.send_election(peer, self._epoch)

    def _win(self) -> None:
        new_epoch = self._epoch + 1
        self._epoch = new_epoch
        self._actions.persist_epoch(new_epoch)  # I1: durable before announced
        self.log.info(
            "replica {replica} won the election in epoch {epoch}",
            replica=self._my_id, epoch=new_epoch,
        )
        self._enter(Role.COORDINATOR, self._my_id, new_epoch)
        self._announce()

    def _announce(self) -> None:
        """Send COORDINATOR to all others.  Repeated every reannounce_interval_s so a
        lost announcement heals: a lower coordinator that missed ours follows, a higher
        live replica that missed ours bullies (I5)."""
        epoch = self._coordinator_epoch
        if self._reannounce_interval_s is not None:
            self._set_timer(self._reannounce_interval_s, self._announce)
        for peer in sorted(self._others):
            if self._role is not Role.COORDINATOR or self._coordinator_epoch != epoch:
                break  # a synchronous rejection started a new election
            assert epoch is not None
            self._actions.send_coordinator(peer, epoch)

    def _answer_timed_out(self) -> None:
        if self._role is Role.ELECTING:
            self.log.info(
                "replica {replica}: no OK within {timeout_s}s in epoch {epoch}",
                replica=self._my_id, timeout_s=self._answer_timeout_s, epoch=self._epoch,
            )
            self._win()

    def _coordinator_timed_out(self) -> None:
        if self._role is Role.AWAITING:
            self._elect("no COORDINATOR after OK")

    def _enter(self, role: Role, coordinator: int | None, coordinator_epoch: int | None) -> None:
        """Move to a state; the old state's timer dies with it."""
        self._cancel_timer()
        old = (self._role, self._coordinator, self._coordinator_epoch)
        new = (role, coordinator, coordinator_epoch)
        self._role, self._coordinator, self._coordinator_epoch = new
        if old != new:
            shown = self._epoch if coordinator_epoch is None else coordinator_epoch
            self._actions.role_changed(role, coordinator, shown)

    def _set_timer(self, delay_s: float, fire: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(delay_s, fire)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
