"""replicad.reactor: Twisted's epoll reactor less the per-event legacy log context.

Each test builds a reactor of its own (never installed, never run: it is iterated by
hand) and talks to it through real loopback sockets, so the dispatch that replicad
replaced is exercised as a replica process uses it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from twisted.internet import epollreactor, protocol
from twisted.logger import globalLogPublisher
from twisted.python import context, log

from replicad import reactor as replicad_reactor

DEADLINE_S = 10.0      # a bound on a hang, never a measure of speed


def build(kind):
    made = kind()
    yield made
    for reader in list(getattr(made, "_internalReaders", ())):
        made.removeReader(reader)
        reader.connectionLost(None)
    made.disconnectAll()
    for call in made.getDelayedCalls():
        call.cancel()
    made._poller.close()


@pytest.fixture
def ours():
    yield from build(replicad_reactor.EPollReactor)


@pytest.fixture
def stock():
    yield from build(epollreactor.EPollReactor)


def spin(made, done) -> None:
    """Iterate the reactor until done() or the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, "the reactor never got there"
        made.runUntilCurrent()
        made.doIteration(0.05)


class Recorder(protocol.Protocol):
    """Answers each chunk with ``got <bytes>`` and notes the legacy log context it ran
    in; ``boom`` makes dataReceived raise."""

    def connectionMade(self):
        self.factory.made.append(self)
        self.systems: list[str] = []
        self.lost = None

    def dataReceived(self, data):
        self.systems.append(context.get(log.ILogContext)["system"])
        if data.startswith(b"boom"):
            raise RuntimeError("a protocol bug")
        self.transport.write(b"got " + data)

    def connectionLost(self, reason):
        self.lost = reason


def listen(made):
    factory = protocol.Factory.forProtocol(Recorder)
    factory.made = []
    port = made.listenTCP(0, factory, interface="127.0.0.1")
    return factory, port.getHost().port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.setblocking(False)
    return sock


def receive(made, sock: socket.socket) -> bytes:
    """What the server sent, until it closed the connection or sent something."""
    got = []

    def arrived() -> bool:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return False
        got.append(chunk)
        return True

    spin(made, arrived)
    return b"".join(got)


def test_events_are_dispatched_as_twisteds_reactor_does(ours):
    factory, port = listen(ours)
    sock = connect(port)
    spin(ours, lambda: factory.made)
    sock.sendall(b"hello")
    assert receive(ours, sock) == b"got hello"
    sock.close()
    server = factory.made[0]
    spin(ours, lambda: server.lost is not None)
    assert "ConnectionDone" in repr(server.lost.value)


def test_without_the_legacy_log_context_per_event(ours, stock):
    """What the subclass removes: Twisted's reactor runs dataReceived inside the
    connection's log prefix; replicad's does not (the default, "-")."""
    systems = {}
    for name, made in (("stock", stock), ("ours", ours)):
        factory, port = listen(made)
        sock = connect(port)
        sock.sendall(b"x")
        assert receive(made, sock) == b"got x"
        systems[name] = factory.made[0].systems
        sock.close()
    assert systems["stock"] == ["Recorder,0,127.0.0.1"]
    assert systems["ours"] == ["-"]


def test_a_protocol_that_raises_loses_its_connection_and_the_rest_go_on(ours):
    errors = []

    def observe(event):
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        factory, port = listen(ours)
        bad, good = connect(port), connect(port)
        spin(ours, lambda: len(factory.made) == 2)
        bad.sendall(b"boom")
        assert receive(ours, bad) == b""          # closed by the reactor
        good.sendall(b"still")
        assert receive(ours, good) == b"got still"
        bad.close()
        good.close()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any("a protocol bug" in str(e.get("log_failure", e.get("failure")))
               for e in errors)


def test_a_reactor_already_chosen_is_kept():
    """In this process pytest-twisted installed the reactor first."""
    from twisted.internet import reactor

    assert replicad_reactor.install_unless_chosen() is False
    from twisted.internet import reactor as after

    assert after is reactor


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_twistds_replica_runs_on_it_unless_a_reactor_was_chosen():
    """makeService's choice, in fresh interpreters: installed when nothing is, and
    twistd -r (a reactor installed before the plugin runs) wins."""
    pick = ("from replicad import tap; print(tap.use_replicad_reactor()); "
            "from twisted.internet import reactor; print(type(reactor).__module__)")
    assert run_python(pick).split() == ["True", "replicad.reactor"]
    chosen = "from twisted.internet import pollreactor; pollreactor.install(); " + pick
    assert run_python(chosen).split() == ["False", "twisted.internet.pollreactor"]


# The monotonic clock --------------------------------------------------------------------


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0])
def test_a_wall_clock_step_moves_no_timer(ours, stock, monkeypatch, step_s):
    """A timer set before the wall clock is stepped fires when it was due, neither an
    hour late (a step back: no heartbeat, a lease that seems valid for an hour) nor at
    once (a step forward: every timeout, and a pause of an hour seen).  Twisted's own
    reactor, beside it, is moved by the step.  (Real replicas under libfaketime:
    tests/integration/test_clock_steps.py.)"""
    fired = {"ours": None, "stock": None}
    for name, made in (("ours", ours), ("stock", stock)):
        made.callLater(0.3, lambda name=name: fired.__setitem__(name, time.monotonic()))
    set_at = time.monotonic()
    real_time = time.time
    # The step: the wall clock, as our reactor would read it (it must not), and as
    # Twisted's reads it (bound at import: twisted.python.runtime.seconds).
    monkeypatch.setattr(time, "time", lambda: real_time() + step_s)
    monkeypatch.setattr(stock, "seconds", lambda: real_time() + step_s)
    if hasattr(time, "CLOCK_BOOTTIME"):    # counts a suspended machine's sleep
        assert ours.seconds() == pytest.approx(time.clock_gettime(time.CLOCK_BOOTTIME),
                                               abs=0.05)
    else:
        assert ours.seconds() == pytest.approx(time.monotonic(), abs=0.05)
    deadline = set_at + 1.0
    while time.monotonic() < deadline and fired["ours"] is None:
        for made in (ours, stock):
            made.runUntilCurrent()
            made.doIteration(0.01)
    assert fired["ours"] is not None and fired["ours"] - set_at >= 0.3
    if step_s < 0:
        assert fired["stock"] is None          # due an hour from now
    else:
        assert fired["stock"] is not None and fired["stock"] - set_at < 0.3   # at once
