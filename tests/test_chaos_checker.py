"""The chaos checker on hand-written histories: each rule passes a history that keeps it
and catches the one that breaks it, naming the operations involved."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest

from replicad.chaos import checker
from replicad.chaos.__main__ import main
from replicad.chaos.checker import CheckError, Rule, check, format_report
from replicad.chaos.history import HistoryError, HistoryWriter, parse_lines, read_history
from replicad.vclock import Order, VectorClock


class H:
    """A history under construction: ops in the order written, one time step each."""

    def __init__(self, quorum: str = "majority", replicas: int = 3):
        self.replicas = replicas
        self.events: list[dict] = [{"type": "run", "t": 0.0, "seed": 1, "duration_s": 10,
                                    "replicas": replicas, "clients": 2,
                                    "write_quorum": quorum, "faults": []}]
        self.t = 0.0
        self.next_op = 1

    def op(self, session: str, kind: str, key: str, value: str | None = None, *,
           vc: str | None = "-", outcome: str = "ok", status: str | None = None,
           read: str | None = None, epoch: int = 1, by: int = 3, rid: str | None = None,
           overlap: bool = False) -> int:
        op_id = self.next_op
        self.next_op += 1
        self.t += 1.0
        invoke = {"type": "invoke", "t": self.t, "op": op_id, "session": session,
                  "client": 0, "kind": kind, "key": key}
        if value is not None:
            invoke["value"] = value
        if rid is not None:
            invoke["rid"] = rid
        if status is None:
            status = {"put": "OK", "del": "OK", "get": "VALUE" if read else "NOTFOUND"}[kind]
        done = {"type": "complete", "t": self.t + (5.0 if overlap else 0.5), "op": op_id,
                "outcome": outcome, "status": status if outcome == "ok" else "ERR"}
        if outcome == "ok":
            done.update({"vc": vc, "by": by, "epoch": epoch})
            if kind == "get":
                done["value"] = read
        self.events += [invoke, done]
        return op_id

    def put(self, session, key, value, vc, **kw) -> int:
        return self.op(session, "put", key, value, vc=vc, **kw)

    def get(self, session, key, read, vc, **kw) -> int:
        return self.op(session, "get", key, read=read, vc=vc, **kw)

    def delete(self, session, key, vc, **kw) -> int:
        return self.op(session, "del", key, vc=vc, **kw)

    def end(self, records: dict[str, tuple], clock: str, *, converged: bool = True,
            coordinator: int = 3, per_replica: dict[int, dict] | None = None,
            requests: dict[int, dict] | None = None, gets: dict[int, dict] | None = None,
            clocks: dict[int, str] | None = None) -> list[dict]:
        """Final state: records key -> (value, origin, seq, version, epoch[, rid])."""
        self.events.append({"type": "heal", "t": self.t + 10})
        if converged:
            self.events.append({"type": "converged", "t": self.t + 11, "ok": True,
                                "seconds": 1.0, "clock": clock, "coordinator": coordinator})
        for i in range(1, self.replicas + 1):
            rows = (per_replica or {}).get(i, records)
            encoded = {key: {"value": r[0], "origin": r[1], "seq": r[2], "version": r[3],
                             "epoch": r[4], "rid": r[5] if len(r) > 5 else None}
                       for key, r in rows.items()}
            replica_clock = (clocks or {}).get(i, clock)
            self.events.append({
                "type": "final", "t": self.t + 12, "replica": i,
                "status": {"clock": replica_clock, "conflicts": 0, "epoch": 1,
                           "role": "coordinator" if i == coordinator else "follower",
                           "coordinator": coordinator},
                "gets": (gets or {}).get(i, {k: r[0] for k, r in rows.items()}),
                "get_errors": {}, "records": encoded,
                "requests": (requests or {}).get(i, {}), "clock": replica_clock})
        self.events.append({"type": "end", "t": self.t + 13, "ops": self.next_op - 1})
        return self.events


def rules(report) -> set[Rule]:
    return {v.rule for v in report.violations}


def only(report, rule: Rule, *ops: int):
    """The report breaks rule and nothing else; every violation names ops."""
    assert rules(report) == {rule}, format_report(report)
    for op in ops:
        assert any(op in v.ops for v in report.violations), (op, format_report(report))
    return report


def clean() -> H:
    """Two sessions, one coordinator: put, read, overwrite, delete, read absent."""
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.get("s1", "k", "a", "3:1")
    h.put("s2", "k", "b", "3:2")
    h.get("s2", "k", "b", "3:2")
    h.get("s1", "k", "b", "3:2")
    h.delete("s1", "k", "3:3")
    h.get("s1", "k", None, "3:3")
    h.put("s2", "j", "c", "3:4")
    return h


def test_a_clean_history_has_no_violation_and_its_figures():
    h = clean()
    report = check(h.end({"k": (None, 3, 3, "3:3", 1), "j": ("c", 3, 4, "3:4", 1)}, "3:4"))
    assert report.ok, format_report(report)
    stats = report.stats
    assert stats["ops"] == 8
    assert stats["outcomes"] == {"ok": 8, "fail": 0, "unknown": 0}
    assert stats["writes"]["acknowledged"] == 4
    assert stats["writes"]["kept"] == 4
    assert stats["writes"]["lost_total"] == 0
    assert stats["converged"] and stats["converge_s"] == 1.0
    text = format_report(report)
    assert "violations: none" in text and "lost 0 (0 %)" in text


# read-your-writes ------------------------------------------------------------------------


def test_read_your_writes_catches_a_replica_without_the_sessions_write():
    h = H()
    w = h.put("s1", "k", "a", "3:1")
    r = h.get("s1", "k", None, "-")   # served by a replica that lacks 3:1
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1"))
    only(report, Rule.READ_YOUR_WRITES, r, w)


def test_read_your_writes_catches_a_value_older_than_the_sessions_write():
    h = H()
    old = h.put("s2", "k", "b", "3:1")
    w = h.put("s1", "k", "a", "3:2")
    r = h.get("s1", "k", "b", "3:2")   # the clock is fine, the value is not
    report = check(h.end({"k": ("a", 3, 2, "3:2", 1)}, "3:2"))
    only(report, Rule.READ_YOUR_WRITES, r, old, w)


def test_read_your_writes_catches_absent_after_own_put_with_no_delete():
    h = H()
    w = h.put("s1", "k", "a", "3:1")
    r = h.get("s1", "k", None, "3:1")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1"))
    only(report, Rule.READ_YOUR_WRITES, r, w)


def test_absent_after_own_put_is_fine_when_another_session_deleted_it():
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.delete("s2", "k", "3:2")
    h.get("s1", "k", None, "3:2")
    assert check(h.end({"k": (None, 3, 2, "3:2", 1)}, "3:2")).ok


def test_absent_is_fine_when_a_delete_of_unknown_outcome_may_explain_it():
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.delete("s2", "k", None, outcome="unknown")
    h.get("s1", "k", None, "3:1")
    assert check(h.end({"k": (None, 3, 2, "3:2", 1)}, "3:2")).ok


# monotonic reads -------------------------------------------------------------------------


def test_monotonic_reads_catches_a_clock_going_back():
    h = H()
    h.put("s2", "k", "a", "3:1")
    first = h.get("s1", "k", "a", "3:1")
    second = h.get("s1", "j", None, "-")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1"))
    only(report, Rule.MONOTONIC_READS, second, first)


def test_monotonic_reads_catches_an_older_value_after_a_newer_one():
    h = H()
    a = h.put("s2", "k", "a", "3:1")
    b = h.put("s2", "k", "b", "3:2")
    h.get("s1", "k", "b", "3:2")
    second = h.get("s1", "k", "a", "3:2")
    report = check(h.end({"k": ("b", 3, 2, "3:2", 1)}, "3:2"))
    only(report, Rule.MONOTONIC_READS, second, a, b)


def test_monotonic_reads_allows_newer_values_and_other_keys():
    h = H()
    h.put("s2", "k", "a", "3:1")
    h.get("s1", "k", "a", "3:1")
    h.put("s2", "k", "b", "3:2")
    h.get("s1", "k", "b", "3:2")
    h.get("s1", "j", None, "3:2")
    assert check(h.end({"k": ("b", 3, 2, "3:2", 1)}, "3:2")).ok


# monotonic writes ------------------------------------------------------------------------


def test_monotonic_writes_catches_a_write_that_does_not_supersede_an_earlier_one():
    h = H()
    first = h.put("s1", "k", "a", "3:1")
    second = h.put("s1", "j", "c", "2:1", by=2)   # made without the session's 3:1
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": ("c", 2, 1, "2:1", 1)},
                         "2:1,3:1"))
    only(report, Rule.MONOTONIC_WRITES, second, first)


def test_monotonic_writes_catches_two_writes_with_one_version():
    h = H()
    first = h.put("s1", "k", "a", "3:1")
    second = h.put("s1", "k", "b", "3:1")
    report = check(h.end({"k": ("b", 3, 1, "3:1", 1)}, "3:1"))
    assert Rule.MONOTONIC_WRITES in rules(report)
    assert any(v.rule is Rule.MONOTONIC_WRITES and {first, second} <= set(v.ops)
               for v in report.violations)


# writes follow reads ---------------------------------------------------------------------


def test_writes_follow_reads_catches_a_write_ordered_before_what_the_session_read():
    h = H()
    h.put("s2", "k", "a", "3:1")
    r = h.get("s1", "k", "a", "3:1")
    w = h.put("s1", "j", "c", "2:1", by=2)   # does not cover the 3:1 the session saw
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": ("c", 2, 1, "2:1", 1)},
                         "2:1,3:1"))
    only(report, Rule.WRITES_FOLLOW_READS, w, r)


def test_writes_follow_reads_holds_when_the_write_covers_the_read():
    h = H()
    h.put("s2", "k", "a", "3:1")
    h.get("s1", "k", "a", "3:1")
    h.put("s1", "j", "c", "3:2")
    assert check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": ("c", 3, 2, "3:2", 1)},
                       "3:2")).ok


# phantom writes --------------------------------------------------------------------------


def test_phantom_write_catches_a_value_nobody_wrote():
    h = H()
    h.put("s1", "k", "a", "3:1")
    r = h.get("s2", "k", "zzz", "3:1")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1"))
    only(report, Rule.PHANTOM_WRITE, r)


def test_phantom_write_catches_the_value_of_a_failed_write():
    h = H()
    h.put("s1", "k", "a", "3:1")
    failed = h.put("s1", "k", "b", None, outcome="fail")
    r = h.get("s2", "k", "b", "3:2")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:2"))
    only(report, Rule.PHANTOM_WRITE, r, failed)


def test_the_value_of_a_write_in_doubt_may_be_read():
    h = H()
    h.put("s1", "k", "a", None, outcome="unknown")
    h.get("s2", "k", "a", "3:1")
    assert check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1")).ok


# lost writes -----------------------------------------------------------------------------


def split_brain(quorum: str, overwrite: bool = False) -> list[dict]:
    """Replica 3 (epoch 1) cut off acknowledges a; replica 2 (epoch 2) acknowledges b,
    concurrent; the merge keeps b.  With overwrite, c then covers both."""
    h = H(quorum)
    h.put("s1", "k", "a", "3:1", epoch=1, by=3)
    h.put("s2", "k", "b", "2:1", epoch=2, by=2)
    if overwrite:
        h.put("s2", "k", "c", "2:2,3:1", epoch=2, by=2)
        return h.end({"k": ("c", 2, 2, "2:2,3:1", 2)}, "2:2,3:1", coordinator=2)
    return h.end({"k": ("b", 2, 1, "2:1", 2)}, "2:1,3:1", coordinator=2)


def test_quorum_mode_a_write_lost_to_a_concurrent_version_is_a_violation():
    report = check(split_brain("majority"))
    only(report, Rule.LOST_WRITE, 1, 2)
    assert report.stats["writes"]["lost_to_conflict"] == 1


def test_quorum_one_a_write_lost_to_a_conflict_is_counted_not_a_violation():
    report = check(split_brain("1"))
    assert report.ok, format_report(report)
    writes = report.stats["writes"]
    assert (writes["acknowledged"], writes["lost_to_conflict"], writes["lost"]) == (2, 1, 0)
    assert writes["lost_share"] == 0.5
    assert "lost 1 (50 %): 1 to conflicts" in format_report(report)


def test_acknowledged_and_lost_writes_by_the_fault_active_when_acknowledged():
    events = split_brain("1")
    # a (acknowledged at t=1.5) during an isolation, b (t=2.5) after it
    events[1:1] = [
        {"type": "fault", "t": 0.5, "phase": "start", "index": 0, "kind": "isolate"},
        {"type": "fault", "t": 2.0, "phase": "end", "index": 0, "kind": "isolate"},
    ]
    report = check(events)
    assert report.stats["writes"]["by_fault"] == {"isolate": [1, 1], "none": [1, 0]}
    assert "isolate 1 / 1 (100 %), none 1 / 0" in format_report(report)


def test_a_conflict_loss_stays_visible_when_a_later_write_overwrites_the_key():
    # The final value dominates a's version, but a's value never won the merge.
    report = check(split_brain("majority", overwrite=True))
    only(report, Rule.LOST_WRITE, 1)
    assert check(split_brain("1", overwrite=True)).stats["writes"]["lost_to_conflict"] == 1


def test_a_write_carried_by_a_descendant_that_wins_is_not_lost():
    h = H("1")
    h.put("s1", "k", "a", "3:1", epoch=1, by=3)
    b = h.put("s2", "k", "b", "2:1", epoch=2, by=2)
    h.put("s1", "k", "c", "3:2", epoch=3, by=3)   # descends from a, outranks b
    report = check(h.end({"k": ("c", 3, 2, "3:2", 3)}, "2:1,3:2"))
    assert report.ok, format_report(report)
    assert report.stats["writes"]["lost_to_conflict"] == 1   # b, not a
    assert report.stats["writes"]["kept"] == 2
    assert b == 2


def test_quorum_mode_two_concurrent_acknowledged_writes_are_a_violation_whoever_won():
    # Which branch won needs the writes' epochs; that one of them lost does not.
    h = H("majority")
    a = h.put("s1", "k", "a", "3:1", epoch=1, by=3)
    b = h.put("s2", "k", "b", "2:1", epoch=2, by=2)
    h.put("s1", "k", "c", "3:2", epoch=3, by=3)
    report = check(h.end({"k": ("c", 3, 2, "3:2", 3)}, "2:1,3:2"))
    only(report, Rule.LOST_WRITE, a, b)
    assert "concurrent with another acknowledged write" in report.violations[0].message


def test_a_late_reply_does_not_lend_its_newer_epoch_to_the_write():
    # Replica 3 (epoch 1) wrote a while cut off; it answered only after it took over
    # again in epoch 5 (a retry answered from its request-id memory).  Replica 2 had
    # meanwhile acknowledged b in epoch 2, which won the merge: a is the loser.
    h = H("1")
    h.put("s0", "j", "z", "3:1", epoch=1, by=3)
    a = h.put("s1", "k", "a", "3:2", epoch=5, by=3, overlap=True)
    h.put("s2", "k", "b", "2:1,3:1", epoch=2, by=2)
    h.put("s2", "j", "y", "2:2,3:2", epoch=5, by=3)
    report = check(h.end({"k": ("b", 2, 1, "2:1,3:1", 2), "j": ("y", 3, 3, "2:2,3:3", 5)},
                         "2:1,3:3"))
    assert report.stats["writes"]["lost_to_conflict"] == 1
    assert report.stats["writes"]["lost"] == 0
    assert a == 2


def test_a_final_value_older_than_an_acknowledged_write_is_lost_in_both_modes():
    for quorum in ("majority", "1"):
        h = H(quorum)
        h.put("s1", "k", "a", "3:1")
        lost = h.put("s2", "k", "b", "3:2")
        report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:2"))
        only(report, Rule.LOST_WRITE, lost)
        assert report.stats["writes"]["lost"] == 1


def test_an_acknowledged_write_whose_key_vanished_is_lost():
    h = H()
    lost = h.put("s1", "k", "a", "3:1")
    only(check(h.end({}, "3:1")), Rule.LOST_WRITE, lost)


# convergence -----------------------------------------------------------------------------


def test_convergence_catches_replicas_holding_different_data():
    h = H()
    w = h.put("s1", "k", "a", "3:1")
    h.put("s1", "k", "b", "3:2")
    records = {"k": ("b", 3, 2, "3:2", 1)}
    behind = {"k": ("a", 3, 1, "3:1", 1)}
    report = check(h.end(records, "3:2", per_replica={1: behind}))
    assert rules(report) == {Rule.CONVERGENCE}, format_report(report)
    assert any("different data for 'k'" in v.message and w in v.ops
               for v in report.violations)


def test_convergence_catches_clocks_that_differ_and_a_run_that_never_converged():
    h = H()
    h.put("s1", "k", "a", "3:1")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1", converged=False,
                         clocks={2: "3:1,2:1"}))
    messages = " / ".join(v.message for v in report.violations)
    assert rules(report) == {Rule.CONVERGENCE}
    assert "before the replicas converged" in messages and "clocks differ" in messages


def test_convergence_catches_a_get_that_disagrees_with_the_data():
    h = H()
    h.put("s1", "k", "a", "3:1")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1", gets={2: {"k": None}}))
    only(report, Rule.CONVERGENCE)
    assert "through replica 2" in report.violations[0].message


# applied twice ---------------------------------------------------------------------------


def test_duplicate_write_catches_a_request_id_applied_again_after_it_was_seen():
    h = H()
    w = h.put("s1", "k", "a", "3:1", rid="abcdef01.1")
    h.put("s2", "j", "c", "3:2")
    # Replica 2 remembers the same request id as a later write 3:3: applied twice.
    requests = {2: {"abcdef01.1": [3, 3, "3:3"]}, 3: {"abcdef01.1": [3, 1, "3:1"]}}
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": ("c", 3, 2, "3:2", 1)}, "3:3",
                         requests=requests))
    assert Rule.DUPLICATE_WRITE in rules(report)
    only_dup = [v for v in report.violations if v.rule is Rule.DUPLICATE_WRITE]
    assert only_dup[0].ops == (w,) and "applied twice" in only_dup[0].message


def test_duplicate_write_catches_a_value_held_under_a_later_write_id():
    h = H()
    w = h.put("s1", "k", "a", "3:1", rid="abcdef01.1")
    report = check(h.end({"k": ("a", 3, 2, "3:2", 1)}, "3:2"))
    assert Rule.DUPLICATE_WRITE in rules(report)
    assert any(v.rule is Rule.DUPLICATE_WRITE and v.ops == (w,) for v in report.violations)


def test_a_write_in_doubt_applied_on_both_sides_of_a_partition_is_counted():
    # Replica 3, cut off, applied the request (3:2) and could not confirm it; the
    # client sent it again with its id to replica 2, which applied it as 2:1.  The
    # copies are concurrent and the merge kept replica 2's: applied once, as seen.
    h = H("majority")
    h.put("s0", "k", "z", "3:1")
    w = h.put("s1", "k", "a", "2:1,3:1", rid="abcdef01.1", by=2, epoch=2)
    requests = {3: {"abcdef01.1": [3, 2, "3:2"]}, 2: {"abcdef01.1": [2, 1, "2:1,3:1"]}}
    report = check(h.end({"k": ("a", 2, 1, "2:1,3:1", 2, "abcdef01.1")}, "2:1,3:2",
                         coordinator=2, requests=requests))
    assert report.ok, format_report(report)
    assert report.stats["writes"]["applied_on_both_sides"] == 1
    assert report.stats["writes"]["applied_on_both_sides_ops"] == [w]


def test_unique_write_ids_catches_two_writes_acknowledged_with_one_version():
    h = H()
    first = h.put("s1", "k", "a", "3:1")
    second = h.put("s2", "j", "c", "3:1")
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": ("c", 3, 1, "3:1", 1)}, "3:1"))
    assert Rule.UNIQUE_WRITE_IDS in rules(report)
    assert any(v.rule is Rule.UNIQUE_WRITE_IDS and v.ops == (first, second)
               for v in report.violations)


def test_a_replayed_answer_is_one_write_not_two():
    # The retry was answered by replica 2 from its request-id memory: by = 2, but
    # the write is 3:1 and keeps its epoch from the record.
    h = H()
    h.put("s1", "k", "a", "3:1", rid="abcdef01.1", by=2, epoch=5)
    requests = {i: {"abcdef01.1": [3, 1, "3:1"]} for i in (1, 2, 3)}
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1, "abcdef01.1")}, "3:1",
                         requests=requests))
    assert report.ok, format_report(report)


# the file, the command line ---------------------------------------------------------------


def test_bad_histories_are_refused_with_a_reason():
    with pytest.raises(CheckError, match="never invoked"):
        check([{"type": "complete", "t": 1, "op": 7, "outcome": "ok"}])
    with pytest.raises(CheckError, match="same value"):
        h = H()
        h.put("s1", "k", "a", "3:1")
        h.put("s2", "k", "a", "3:2")
        check(h.events)
    with pytest.raises(HistoryError, match=":2:"):
        list(parse_lines(['{"type": "run"}', "{torn", '{"type": "end"}']))
    # a torn last line (the runner killed mid-write) is skipped
    assert [e["type"] for e in parse_lines(['{"type": "run"}', '{"type": "en'])] == ["run"]


def test_an_invocation_without_completion_is_in_doubt_for_writes_and_failed_for_reads():
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.events.append({"type": "invoke", "t": 50, "op": 90, "session": "s2", "kind": "put",
                     "key": "k", "value": "late"})
    h.events.append({"type": "invoke", "t": 50, "op": 91, "session": "s3", "kind": "get",
                     "key": "k"})
    report = check(h.end({"k": ("late", 3, 2, "3:2", 1)}, "3:2"))
    assert report.ok, format_report(report)
    assert report.stats["outcomes"] == {"ok": 1, "fail": 1, "unknown": 1}


def test_the_command_line_exits_non_zero_on_violations_and_names_them(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    h = clean()
    events = h.end({"k": (None, 3, 3, "3:3", 1), "j": ("c", 3, 4, "3:4", 1)}, "3:4")
    good.write_text("".join(json.dumps(e) + "\n" for e in events))
    bad.write_text("".join(json.dumps(e) + "\n" for e in split_brain("majority")))
    assert main(["check", str(good)]) == 0
    assert "violations: none" in capsys.readouterr().out
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "lost-write           1" in out and "op 1 " in out
    assert main(["check", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["violations_by_rule"]["lost-write"] == 1
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2


def test_the_history_writer_stamps_times_and_reads_back(tmp_path):
    ticks = iter([10.0, 10.5, 11.0])
    path = str(tmp_path / "h.jsonl")
    with HistoryWriter(path, clock=lambda: next(ticks)) as writer:
        writer.write({"type": "run", "seed": 3})
        writer.write({"type": "end"})
    assert read_history(path) == [{"type": "run", "t": 0.5, "seed": 3},
                                  {"type": "end", "t": 1.0}]


def test_quorum_is_majority():
    assert checker.quorum_is_majority("majority", 3)
    assert checker.quorum_is_majority("2", 3) and checker.quorum_is_majority(3, 5)
    assert not checker.quorum_is_majority("1", 3) and not checker.quorum_is_majority("2", 5)


def test_a_write_answered_from_the_request_id_memory_after_losing_the_merge():
    # The bug the chaos runs found (docs/reliability.md): replica 3, cut off in epoch 1,
    # wrote a (3:2) and could not confirm it; replica 2 acknowledged b in epoch 2;
    # after the heal replica 3 took over, the merge kept b, and the retry of a with its
    # request id was answered OK from replica 3's memory of it.
    from replicad.chaos.runner import log_events

    h = H("majority")
    h.put("s0", "k", "z", "3:1", epoch=1)
    b = h.put("s2", "k", "b", "2:1,3:1", epoch=2, by=2)
    a = h.put("s1", "k", "a", "3:2", epoch=9, rid="abcdef01.1", overlap=True)
    events = h.end({"k": ("b", 2, 1, "2:1,3:1", 2)}, "2:1,3:2",
                   requests={3: {"abcdef01.1": [3, 2, "3:2"]}})
    line = ("2026-11-29T21:20:41+0000 [replicad.writes.Writes#info] request abcdef01.1 "
            "was already applied as write 3:2; answering it again")
    events += list(log_events(3, ["noise", line]))
    report = check(events)
    only(report, Rule.LOST_WRITE, a, b)
    violation = report.violations[0]
    assert violation.cause == checker.REPLAYED_AFTER_MERGE
    assert "request-id memory of replica 3 (write 3:2)" in violation.message
    assert report.stats["writes"]["lost_to_conflict"] == 1


def test_a_write_answered_indoubt_after_losing_the_merge_is_not_acknowledged():
    # The fixed behaviour: the retry of a (3:2, discarded by the merge) is answered
    # ERR INDOUBT until the client's deadline: unknown, neither acknowledged nor lost.
    h = H("majority")
    h.put("s0", "k", "z", "3:1", epoch=1)
    h.put("s2", "k", "b", "2:1,3:1", epoch=2, by=2)
    h.put("s1", "k", "a", None, outcome="unknown", rid="abcdef01.1", overlap=True)
    report = check(h.end({"k": ("b", 2, 1, "2:1,3:1", 2)}, "2:1,3:2", coordinator=2,
                         requests={i: {"abcdef01.1": [3, 2, "3:2"]} for i in (1, 2, 3)}))
    assert report.ok, format_report(report)
    writes = report.stats["writes"]
    assert (writes["acknowledged"], writes["lost_total"]) == (2, 0)


def test_a_replay_answered_ok_once_a_write_after_the_merge_covers_the_lost_version():
    # What is left of that bug after 6be9ee9: replica 3's memory answers ERR INDOUBT
    # for a (3:2) while b's branch holds the key, the client retries, and once c,
    # written after the merge (2:2,3:3), covers a's version the retry is answered OK.
    from replicad.chaos.runner import log_events

    h = H("majority")
    h.put("s0", "k", "z", "3:1", epoch=1)
    b = h.put("s2", "k", "b", "2:1,3:1", epoch=2, by=2)
    a = h.put("s1", "k", "a", "3:2", epoch=9, rid="abcdef01.1", overlap=True)
    c = h.put("s3", "k", "c", "2:1,3:3", epoch=3, by=3)
    events = h.end({"k": ("c", 3, 3, "2:1,3:3", 3)}, "2:1,3:3",
                   requests={3: {"abcdef01.1": [3, 2, "3:2"]}})
    line = ("2026-11-29T21:20:41+0000 [replicad.writes.Writes#info] request abcdef01.1 "
            "was already applied as write 3:2; answering it again")
    events += list(log_events(3, [line, line]))
    report = check(events)
    only(report, Rule.LOST_WRITE, a, b)
    violation = report.violations[0]
    assert violation.cause == checker.REPLAYED_AFTER_OVERWRITE
    assert checker.REPLAYED_AFTER_OVERWRITE not in checker.OPEN_CAUSES   # fixed: 9ea17bd
    assert "replica 3 (write 3:2, 2 answers)" in violation.message
    assert f"after op {c} " in violation.message


def test_the_open_bug_explains_concurrent_writes_only_when_a_replay_is_in_each_pair():
    from replicad.chaos.runner import log_events

    line = ("2026-11-29T21:20:41+0000 [replicad.writes.Writes#info] request abcdef01.1 "
            "was already applied as write 3:2; answering it again")

    def history(plain_pair: bool, replay: bool) -> list[dict]:
        h = H("majority")
        h.put("s0", "k", "z", "3:1", epoch=1)
        h.put("s2", "k", "b", "2:1,3:1", epoch=2, by=2)
        if plain_pair:   # acknowledged by replica 1 without seeing b: no replay involved
            h.put("s4", "k", "e", "1:1,3:1", epoch=2, by=1)
        h.put("s1", "k", "a", "3:2", epoch=9, rid="abcdef01.1", overlap=True)
        h.put("s3", "k", "c", "1:1,2:1,3:3", epoch=3, by=3)
        events = h.end({"k": ("c", 3, 3, "1:1,2:1,3:3", 3)}, "1:1,2:1,3:3",
                       requests={3: {"abcdef01.1": [3, 2, "3:2"]}})
        return events + (list(log_events(3, [line])) if replay else [])

    causes = {v.cause for v in check(history(False, True)).violations}
    assert causes == {checker.REPLAYED_AFTER_OVERWRITE}
    assert {v.cause for v in check(history(True, True)).violations} == {None}
    assert {v.cause for v in check(history(False, False)).violations} == {None}


def test_log_events_picks_replays_and_conflicts():
    from replicad.chaos.runner import log_events

    lines = [
        "2026-11-29T21:20:41+0000 [replicad.sync.Synchroniser#warn] 2 concurrent versions "
        "resolved while pulling from replica 1: k5 k6",
        "2026-11-29T21:20:41+0000 [x#info] request 0123abcd.7 was already applied as write "
        "3:861; answering it again",
        "2026-11-29T21:20:42+0000 [x#info] something else",
    ]
    events = list(log_events(3, lines))
    assert events == [
        {"type": "log", "replica": 3, "kind": "conflicts", "when": "2026-11-29T21:20:41+0000",
         "n": 2, "peer": 1, "keys": ["k5", "k6"]},
        {"type": "log", "replica": 3, "kind": "replay", "when": "2026-11-29T21:20:41+0000",
         "rid": "0123abcd.7", "write": [3, 861]},
    ]


def wiped_twice(with_logs: bool) -> tuple[list[dict], int]:
    """Replica 3 wrote z under its id, lost its disk and wrote a under origin 1000001
    (epoch 4, cut off), lost it again and ends under 1000002; replica 2 deleted k
    meanwhile in epoch 5, which wins the merge.  The runner records STATUS's origin as
    the client types it (a string before this was fixed); its log names each origin."""
    from replicad.chaos.runner import log_events

    h = H("1")
    h.put("s0", "k", "z", "3:1", epoch=1)
    h.delete("s2", "k", "2:1,3:1", epoch=5, by=2, rid="abcdef01.2")
    a = h.put("s1", "k", "a", "3:1,1000001:1", epoch=4, by=3, rid="abcdef01.1")
    requests = {"abcdef01.1": [1000001, 1, "3:1,1000001:1"], "abcdef01.2": [2, 1, "2:1,3:1"]}
    events = h.end({"k": (None, 2, 1, "2:1,3:1", 5, "abcdef01.2")}, "2:1,3:1,1000001:1",
                   requests={i: requests for i in (1, 2, 3)})
    for event in events:
        if event["type"] == "final" and event["replica"] == 3:
            event["status"]["origin"] = "1000002"
    if with_logs:
        lines = [f"2026-12-02T11:39:{n}+0000 [replicad.replica.Replica#info] replica 3 joins "
                 f"cluster 1519f39d509ed77151f32163b903c26f: copied 1 peer(s); its writes are "
                 f"numbered under origin {origin} from now on"
                 for n, origin in ((19, 1000001), (40, 1000002))]
        events += list(log_events(3, lines))
    return events, a


def test_a_write_of_a_wiped_replicas_earlier_life_is_its_own():
    """Chaos seed 90 (2026-12-02): the checker took the origins of replicas only from
    the final STATUS, where the runner recorded them as strings it then ignored, and a
    replica wiped twice names only its last: an acknowledged write of an earlier life
    looked answered by a replica that did not make it, lost its epoch, and a loss to a
    conflict of a newer epoch was reported as a lost write (784 of them in that run)."""
    events, a = wiped_twice(with_logs=True)
    assert [e["origin"] for e in events if e.get("kind") == "origin"] == [1000001, 1000002]
    report = check(events)
    assert report.ok, format_report(report)
    assert report.stats["writes"]["lost_to_conflict"] == 1 and report.lost_ops == [a]
    events, a = wiped_twice(with_logs=False)   # an older history: strict, as before
    only(check(events), Rule.LOST_WRITE, a)


def test_phantom_write_catches_a_request_carried_out_after_its_answer():
    # The client's DEL was answered NOTFOUND (nothing done) by replica 3; a copy left
    # queued at a frozen replica 2 was forwarded when 2 resumed, and deleted the key.
    h = H()
    h.put("s1", "k", "a", "3:1")
    noop = h.delete("s2", "j", "3:1", status="NOTFOUND", rid="abcdef01.1")
    requests = {1: {"abcdef01.1": [3, 2, "3:2"]}}
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": (None, 3, 2, "3:2", 1)}, "3:2",
                         requests=requests))
    only(report, Rule.PHANTOM_WRITE, noop)
    assert "carried out after its answer" in report.violations[0].message


def test_a_del_applied_on_a_cut_off_side_and_notfound_on_the_other_is_no_phantom():
    """Chaos seed 1 at 4932717, op 71551: the DEL reached coordinator 3 just as it was
    isolated and was applied there (3:4, never acknowledged); the retry went to the
    other side, where coordinator 2 had no such key: NOTFOUND.  The write is concurrent
    with that answer (2 never saw it): applied on one side, nothing to delete on the
    other, counted with the writes applied on both sides, not carried out after."""
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.put("s1", "j", "b", "3:2")
    noop = h.delete("s2", "j", "2:1,3:2", status="NOTFOUND", rid="abcdef01.1", by=2)
    requests = {1: {"abcdef01.1": [3, 3, "3:3"]}}
    report = check(h.end({"k": ("a", 3, 1, "3:1", 1), "j": (None, 3, 3, "3:3", 1)},
                         "2:1,3:3", requests=requests))
    assert not [v for v in report.violations if v.rule is Rule.PHANTOM_WRITE], \
        format_report(report)
    assert report.stats["writes"]["applied_on_both_sides"] == 1
    assert noop in report.stats["writes"]["applied_on_both_sides_ops"]


def test_request_ids_that_changed_nothing_are_not_writes():
    # Since 6be9ee9 a DEL of a missing key remembers its request id as write 0:0 (so
    # that a retry answers NOTFOUND again); that is no write carried out later.
    from replicad.chaos.runner import log_events

    h = H()
    h.put("s1", "k", "a", "3:1")
    noop = h.delete("s2", "j", "3:1", status="NOTFOUND", rid="abcdef01.1")
    doubt = h.delete("s2", "j", "3:1", outcome="unknown", rid="abcdef01.2")
    requests = {i: {"abcdef01.1": [0, 0, "-"], "abcdef01.2": [0, 0, "-"]} for i in (1, 2, 3)}
    events = h.end({"k": ("a", 3, 1, "3:1", 1)}, "3:1", requests=requests)
    line = ("2026-11-29T21:20:41+0000 [replicad.writes.Writes#info] request abcdef01.1 "
            "was already applied as write 0:0; answering it again")
    events += list(log_events(2, [line]))
    report = check(events)
    assert report.ok, format_report(report)
    assert report.stats["writes"]["applied_on_both_sides"] == 0
    assert noop and doubt


def test_no_op_markers_are_not_writes_but_a_real_write_of_their_request_is_a_phantom():
    """A DEL that found nothing is a no-op marker (a write id, no data), remembered by
    every replica that holds it; another replica's tombstone for the same request, made
    after the answer (its version covers the answer's clock), is still a phantom."""
    h = H()
    h.put("s1", "k", "a", "3:1")
    h.put("s1", "j", "b", "3:2")
    noop = h.delete("s2", "m", "2:1,3:2", status="NOTFOUND", rid="abcdef01.1", by=2)
    marker = {"abcdef01.1": [2, 1, "2:1,3:2", "noop"]}
    final = {"k": ("a", 3, 1, "3:1", 1), "j": ("b", 3, 2, "3:2", 1)}
    ok = check(h.end(final, "2:1,3:2",
                     requests={i: marker for i in (1, 2, 3)}))
    assert ok.ok, format_report(ok)
    carried = {1: marker, 2: marker, 3: {"abcdef01.1": [3, 3, "2:1,3:3"]}}
    report = check(h.end(final, "2:1,3:3", requests=carried))
    only(report, Rule.PHANTOM_WRITE, noop)


def test_a_read_of_a_copy_nobody_remembers_is_judged_by_the_clock_that_served_it():
    # Replica 3, just cut off, applied x as its own write (3:2) and served a read of
    # it; the client's retry made x again on replica 2 (2:1,3:1), acknowledged.  The
    # request-id memories kept only replica 2's copy.  The read's clock (3:2) does not
    # cover that version, so the reader saw the other copy: s1's next write (3:3) is
    # not "older than what it read", and the copy is counted as applied twice.
    h = H("1")
    h.put("s0", "k", "z", "3:1")
    x = h.put("s2", "k", "a", "2:1,3:1", rid="abcdef01.1", by=2, epoch=2, overlap=True)
    read = h.get("s1", "k", "a", "3:2")
    h.put("s1", "k", "b", "3:3")
    requests = {i: {"abcdef01.1": [2, 1, "2:1,3:1"]} for i in (1, 2, 3)}
    report = check(h.end({"k": ("a", 2, 1, "2:1,3:1", 2, "abcdef01.1")}, "2:1,3:3",
                         coordinator=2, requests=requests))
    assert report.ok, format_report(report)
    writes = report.stats["writes"]
    assert writes["copies_seen_only_by_reads_ops"] == [(x, read)]
    assert writes["applied_on_both_sides"] == 1
    assert f"op {x} read by op {read}" in format_report(report)


def test_the_timeline_data_and_a_lazy_matplotlib():
    import subprocess
    import sys

    from replicad.chaos.plot import timeline

    events = [
        {"type": "run", "t": 0.0, "write_quorum": "1"},
        {"type": "complete", "t": 0.5, "op": 1, "outcome": "ok"},
        {"type": "complete", "t": 1.5, "op": 2, "outcome": "fail"},
        {"type": "complete", "t": 1.7, "op": 3, "outcome": "ok"},
        {"type": "fault", "t": 1.0, "phase": "start", "index": 0, "kind": "isolate",
         "describe": "isolate coordinator for 2.0 s", "targets": [3]},
        {"type": "fault", "t": 3.0, "phase": "end", "index": 0, "kind": "isolate"},
        {"type": "heal", "t": 3.5},
        {"type": "converged", "t": 3.9, "ok": True},
    ]
    data = timeline(events, lost_ops=[3])
    assert data["series"]["ok"][:2] == [1, 1] and data["series"]["fail"][:2] == [0, 1]
    assert data["series"]["lost"][:2] == [0, 1]
    assert data["spans"] == [(1.0, 3.0, "isolate", "isolate coordinator 3 for 2.0 s")]
    assert (data["heal"], data["converged"]) == (3.5, 3.9)
    # importing the chaos package and its plot module does not import matplotlib
    code = ("import sys, replicad.chaos.__main__, replicad.chaos.runner, "
            "replicad.chaos.plot; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_faults_this_machine_cannot_inject_are_refused_in_one_line_before_a_run(
        capsys, monkeypatch, tmp_path):
    import glob as glob_module

    monkeypatch.setattr(glob_module, "glob", lambda pattern: [])     # no libfaketime
    assert main(["run", "--faults", "kill,clock", "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("cannot run these faults here: the clock fault needs "
                          "libfaketime") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()            # nothing started
    monkeypatch.setattr("os.geteuid", lambda: 1000)                 # not root
    assert main(["run", "--faults", "full", "--dry-run"]) == 3
    assert "the full fault needs root" in capsys.readouterr().err


def test_what_an_exception_says_about_the_outcome():
    from replicad.chaos.runner import _failure
    from replicad.retry import (
        InvalidRequest,
        NoServerAvailable,
        OutcomeUnknown,
        ServerError,
        WriteInDoubt,
    )

    def outcome(e, write=True):
        return _failure(e, write)["outcome"]

    assert outcome(WriteInDoubt("QUORUM", "no quorum", "a")) == "unknown"
    # a retried write whose copy lost a merge (6be9ee9): in doubt, never acknowledged
    # (ERR INDOUBT then, ERR SUPERSEDED since; a client that predates the code raises
    # ServerError for it)
    for code in ("INDOUBT", "SUPERSEDED"):
        assert outcome(WriteInDoubt(code, "applied as 3:7, then discarded", "a")) == "unknown"
        assert outcome(ServerError(code, "applied as 3:7, then discarded", "a")) == "unknown"
    assert outcome(OutcomeUnknown("no answer")) == "unknown"
    assert outcome(NoServerAvailable("nobody", [])) == "fail"
    assert outcome(ServerError("UNAVAILABLE", "no majority", "a")) == "fail"
    assert outcome(ServerError("INTERNAL", "?", "a")) == "unknown"   # not known to be nothing
    assert outcome(ServerError("INTERNAL", "?", "a"), write=False) == "fail"
    assert outcome(InvalidRequest("BADKEY", "bad")) == "fail"


# The lost-write search: the index against the brute force it replaced ---------------------


def _old_count_le(chain, version):
    low, high = 0, len(chain)
    while low < high:
        mid = (low + high) // 2
        if chain[mid].version <= version:
            low = mid + 1
        else:
            high = mid
    return low


def _old_first_ge(chain, version):
    low, high = 0, len(chain)
    while low < high:
        mid = (low + high) // 2
        if version <= chain[mid].version:
            high = mid
        else:
            low = mid + 1
    return low


class _OldLineage:
    """checker._Lineage as it was before 2026-11-30 (130ee9a), the reference: chains of
    one origin searched by bisection when every chain is ordered, else every write
    compared with every write (and again for each rival's rescue)."""

    def __init__(self, writes_by_key):
        self.keys = []
        for writes in writes_by_key.values():
            known = [op for _t, _v, op in writes]
            chains = defaultdict(list)
            for op in known:
                origin = op.origin if op.origin is not None else op.by
                chains[origin if origin is not None else -1].append(op)
            for chain in chains.values():
                chain.sort(key=lambda o: (o.version.total(), o.id))
            ordered = all(a.version <= b.version for chain in chains.values()
                          for a, b in zip(chain, chain[1:], strict=False))
            self.keys.append((known, list(chains.values()), ordered))

    @staticmethod
    def _concurrent(chain, version):
        if version <= chain[0].version or chain[-1].version <= version:
            return []
        return chain[_old_count_le(chain, version):_old_first_ge(chain, version)]

    def _concurrent_with(self, w, known, chains, ordered):
        if not ordered:
            return [y for y in known if y.version.compare(w.version) is Order.CONCURRENT]
        return [y for chain in chains for y in self._concurrent(chain, w.version)]

    def concurrent_acknowledged(self):
        pairs = []
        for known, chains, ordered in self.keys:
            for w in known:
                if not w.acknowledged:
                    continue
                for y in self._concurrent_with(w, known, chains, ordered):
                    if y.acknowledged:
                        pairs.append((w, y))
                        break
        return pairs

    def losers(self):
        lost = {}
        for known, chains, ordered in self.keys:
            for w in known:
                if not w.acknowledged or w.epoch is None:
                    continue
                rivals = [y for y in self._concurrent_with(w, known, chains, ordered)
                          if y.epoch is not None and checker._rank(y) > checker._rank(w)]
                for y in sorted(rivals, key=checker._rank, reverse=True):
                    if not self._rescued(w, y, known, chains, ordered):
                        lost[w.id] = y
                        break
        return lost

    def _rescued(self, w, y, known, chains, ordered):
        rank_y = checker._rank(y)
        if not ordered:
            return any(z.epoch is not None and z.version >= w.version
                       and z.version.compare(y.version) is Order.CONCURRENT
                       and checker._rank(z) > rank_y for z in known)
        for chain in chains:
            low = max(_old_first_ge(chain, w.version), _old_count_le(chain, y.version))
            high = _old_first_ge(chain, y.version)
            for z in reversed(chain[low:high]):
                if z.epoch is not None:
                    if checker._rank(z) > rank_y:
                        return True
                    break
        return False


def _random_writes(rng: random.Random) -> dict[str, list]:
    """Writes of a few keys as index() lists them, made by replicas that write, sync
    and sometimes start over (wiped), with epochs that mostly grow, some unknown, some
    out of order, writes of unknown origin and some never acknowledged.  Half the keys
    are 'tidy' (each origin's versions grow: the chains are ordered)."""
    writes_by_key = {}
    next_id = 1
    for key in [f"k{i}" for i in range(rng.randint(1, 3))]:
        tidy = rng.random() < 0.5
        replicas = list(range(1, rng.choice([2, 3, 3, 4]) + 1))
        clocks = {r: {} for r in replicas}
        epochs = {r: 1 for r in replicas}
        versions = []
        writes = []
        for _ in range(rng.randint(1, 40)):
            roll = rng.random()
            a, b = rng.sample(replicas, 2)
            if roll < 0.25:   # a sync: a learns what b has
                for r, n in clocks[b].items():
                    clocks[a][r] = max(n, clocks[a].get(r, 0))
                continue
            if roll < 0.3:
                epochs[a] += 1
                continue
            if roll < 0.33 and not tidy:   # wiped: starts over
                clocks[a] = {}
                continue
            clocks[a][a] = clocks[a].get(a, 0) + 1
            version = VectorClock(clocks[a])
            if not tidy and versions and rng.random() < 0.08:
                version = rng.choice(versions)   # the same version twice
            elif not tidy and rng.random() < 0.05:
                version = VectorClock({r: rng.randint(0, 4) for r in replicas})
            versions.append(version)
            kind = "put" if rng.random() < 0.85 else "del"
            op = checker.Op(next_id, f"s{next_id}", kind, key, f"v{next_id}", None, 0.0)
            next_id += 1
            op.version = version
            if rng.random() < 0.85:
                op.outcome, op.status = checker.Outcome.OK, "OK"
            op.origin = a if tidy or rng.random() < 0.7 else None
            op.by = a if tidy else rng.choice([a, b, None])
            op.epoch = epochs[a]
            if rng.random() < 0.1:
                op.epoch = None
            elif rng.random() < 0.1:
                op.epoch = rng.randint(1, 4)   # a reply's epoch, not the write's
            writes.append((version.total(), version, op))
        writes.sort(key=lambda item: (item[0], item[2].id))
        writes_by_key[key] = writes
    return writes_by_key


def test_the_lost_write_index_finds_what_the_brute_force_found():
    seen = Counter()
    for seed in range(600):
        writes_by_key = _random_writes(random.Random(seed))
        old, new = _OldLineage(writes_by_key), checker._Lineage(writes_by_key)
        expected = [(w.id, y.id) for w, y in old.concurrent_acknowledged()]
        assert [(w.id, y.id) for w, y in new.concurrent_acknowledged()] == expected, seed
        lost = old.losers()
        losers = [(w, y.id) for w, y in lost.items()]
        assert [(w, y.id) for w, y in new.losers().items()] == losers, seed
        seen["ordered keys"] += sum(ordered for _k, _c, ordered in old.keys)
        seen["other keys"] += sum(not ordered for _k, _c, ordered in old.keys)
        seen["pairs"] += len(expected)
        seen["losers"] += len(losers)
        seen["rescued"] += sum(   # a rival outranks w, yet w is not lost
            1 for known, chains, ordered in old.keys for w in known
            if w.acknowledged and w.epoch is not None and w.id not in lost
            and any(y.epoch is not None and checker._rank(y) > checker._rank(w)
                    for y in old._concurrent_with(w, known, chains, ordered)))
    print(dict(seen))
    # every case was exercised, many times
    assert min(seen.values()) >= 100, seen
