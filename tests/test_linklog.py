"""LinkStateLog: a link's changes logged at once, a flapping link's summed up.  task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent

from replicad.linklog import LinkStateLog


def logged(events) -> list[str]:
    return [formatEvent(e) for e in events]


def test_a_change_now_and_then_is_logged_as_it_happens():
    clock = Clock()
    links = LinkStateLog(Logger(), clock, interval_s=10)
    with capturedLogs() as events:
        links.changed(2, False)
        clock.advance(10)
        links.changed(2, True)
        links.changed(3, False)              # another peer: its own interval
    assert logged(events) == ["replica 2 is down", "replica 2 is up", "replica 3 is down"]
    assert clock.getDelayedCalls() == []


def test_a_flapping_link_costs_a_few_lines_an_interval_with_its_state_at_the_end():
    clock = Clock()
    links = LinkStateLog(Logger(), clock, interval_s=10, burst=2)
    with capturedLogs() as events:
        links.changed(2, False)
        for n in range(57):                  # up, down, up, ... ending up
            clock.advance(0.01)
            links.changed(2, n % 2 == 0)
        assert logged(events) == ["replica 2 is down", "replica 2 is up"]
        clock.advance(10 - clock.seconds())  # the interval's end
        assert logged(events)[2:] == [
            "replica 2 went down or came back 56 more times in the last 10 s; it is up now"]
        links.changed(2, False)              # still flapping: held from the first change
        clock.advance(10)
        assert logged(events)[3:] == [
            "replica 2 went down or came back 1 more time in the last 10 s; it is down now"]
        clock.advance(10)                    # a quiet interval: the next change is news
        links.changed(2, True)
    assert logged(events)[4:] == ["replica 2 is up"]
    assert clock.getDelayedCalls() == []


def test_a_crash_and_a_restart_are_logged_as_they_happen():
    clock = Clock()
    links = LinkStateLog(Logger(), clock, interval_s=10)
    with capturedLogs() as events:
        links.changed(3, True)               # the cluster forms
        clock.advance(2)
        links.changed(3, False)              # killed 2 s later
        clock.advance(1)
        links.changed(3, True)               # back
    assert logged(events) == ["replica 3 is up", "replica 3 is down", "replica 3 is up"]


def test_stopping_logs_the_summary_due_and_leaves_no_timer():
    clock = Clock()
    links = LinkStateLog(Logger(), clock, interval_s=10, burst=1)
    with capturedLogs() as events:
        links.changed(2, False)
        clock.advance(2.5)
        links.changed(2, True)
        links.stop()                         # 2.5 s into the interval
    assert logged(events) == [
        "replica 2 is down",
        "replica 2 went down or came back 1 more time in the last 2.5 s; it is up now"]
    assert clock.getDelayedCalls() == []


def test_every_line_logged_is_recorded_and_only_those():
    clock = Clock()
    recorded = []
    links = LinkStateLog(Logger(), clock, interval_s=10, burst=1,
                         record=lambda *line: recorded.append(line))
    links.changed(2, False)
    for n in range(5):
        links.changed(2, n % 2 == 0)
    clock.advance(10)
    assert recorded == [
        (2, False, "replica 2 is down"),
        (2, True, "replica 2 went down or came back 5 more times in the last 10 s; "
                  "it is up now")]
