"""replicad.tap and the twistd dropin: option checking and the service tree (never started)."""

from __future__ import annotations

import os

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage

from replicad import tap
from replicad.client_protocol import ClientFactory
from replicad.config import default_config, render_config, with_overrides
from replicad.peer import PeerServerFactory


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def one_line_exit(*args: str) -> str:
    with pytest.raises(SystemExit) as info:
        parse(*args)
    message = info.value.code
    assert isinstance(message, str)
    assert "\n" not in message
    assert message.startswith("replicad: error: ")
    return message


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Options --------------------------------------------------------------------------------


def test_missing_id_is_a_usage_error(in_tmp):
    with pytest.raises(usage.UsageError, match="--id is required"):
        parse()
    assert not (in_tmp / tap.DEFAULT_DATA_ROOT).exists()


def test_non_numeric_id_is_a_usage_error(in_tmp):
    with pytest.raises(usage.UsageError):
        parse("--id", "one")


def test_unknown_id_exits_with_one_line_naming_it(in_tmp):
    message = one_line_exit("--id", "9")
    assert "replica id 9" in message
    assert "known ids: 1, 2, 3" in message
    assert not (in_tmp / tap.DEFAULT_DATA_ROOT).exists()     # nothing created


def test_bad_config_path_exits_with_one_line(in_tmp):
    message = one_line_exit("--id", "1", "--config", str(in_tmp / "missing.ini"))
    assert "cannot read config file" in message
    assert "missing.ini" in message


def test_bad_config_contents_exit_with_one_line(in_tmp):
    path = in_tmp / "bad.ini"
    path.write_text("[cluster]\nsecret = x\nwrite_quorum = 0\n[replica:1]\nclient = a:1\n"
                    "peer = a:2\n")
    message = one_line_exit("-i", "1", "-c", str(path))
    assert "write_quorum must be greater than 0" in message


def test_id_missing_from_the_config_file(in_tmp):
    path = in_tmp / "two.ini"
    path.write_text(render_config(default_config(size=2)))
    message = one_line_exit("--id", "3", "--config", str(path))
    assert "replica id 3" in message
    assert str(path) in message
    assert "known ids: 1, 2" in message


def test_default_data_dir_is_created_under_the_working_directory(in_tmp):
    options = parse("--id", "2")
    assert options["id"] == 2
    assert options["data-dir"] == os.path.join("replicad-data", "replica-2")
    assert (in_tmp / "replicad-data" / "replica-2").is_dir()
    assert options.cluster.ids == [1, 2, 3]
    assert options.cluster.source == "built-in cluster"


def test_explicit_data_dir_and_config(in_tmp):
    path = in_tmp / "c.ini"
    config = with_overrides(default_config(size=4), write_quorum=2)
    path.write_text(render_config(config))
    options = parse("-i", "4", "-c", str(path), "-d", str(in_tmp / "d4"))
    assert options["data-dir"] == str(in_tmp / "d4")
    assert (in_tmp / "d4").is_dir()
    assert options.cluster.ids == [1, 2, 3, 4]
    assert options.cluster.write_quorum == 2
    assert not (in_tmp / "replicad-data").exists()


def test_data_dir_under_a_regular_file_exits_with_one_line(in_tmp):
    blocker = in_tmp / "a-file"
    blocker.write_text("not a directory")
    message = one_line_exit("--id", "1", "--data-dir", str(blocker / "data"))
    assert "cannot create data dir" in message
    assert str(blocker / "data") in message


def test_data_dir_that_is_a_file_exits_with_one_line(in_tmp):
    blocker = in_tmp / "a-file"
    blocker.write_text("not a directory")
    message = one_line_exit("--id", "1", "--data-dir", str(blocker))
    assert "data dir" in message
    assert str(blocker) in message


def test_data_dir_with_a_damaged_database_exits_with_one_line(in_tmp):
    from replicad.replica import DB_FILENAME

    (in_tmp / "dd").mkdir()
    (in_tmp / "dd" / DB_FILENAME).write_bytes(b"this is not SQLite" * 100)
    message = one_line_exit("--id", "1", "--data-dir", "dd")
    assert DB_FILENAME in message


def test_the_data_dir_is_locked_for_the_life_of_the_options(in_tmp):
    first = parse("--id", "1", "--data-dir", "dd")
    assert first.data_dir_lock.locked
    message = one_line_exit("--id", "1", "--data-dir", "dd")
    assert message == (
        f"replicad: error: data dir dd is in use by another replicad process (pid {os.getpid()})"
    )
    first.data_dir_lock.close()
    parse("--id", "1", "--data-dir", "dd").data_dir_lock.close()


def test_a_data_dir_of_another_replica_exits_with_one_line(in_tmp):
    parse("--id", "2", "--data-dir", "dd").data_dir_lock.close()
    message = one_line_exit("--id", "3", "--data-dir", "dd")
    db = in_tmp / "dd" / "replica.sqlite"
    assert message == (
        f"replicad: error: {db} belongs to replica 2, not replica 3: wrong --data-dir?"
    )
    # The failed start let go of the lock: the right replica can start.
    assert parse("--id", "2", "--data-dir", "dd").data_dir_lock.locked


def test_new_cluster_flag(in_tmp):
    assert not parse("--id", "1", "-d", "a")["new-cluster"]
    assert parse("--id", "1", "-d", "b", "--new-cluster")["new-cluster"]
    assert "--new-cluster" in str(tap.Options())


# makeService ----------------------------------------------------------------------------


def test_make_service_passes_identity_to_the_replica_and_the_peer_listener(in_tmp):
    from replicad.replica import Replica

    for flag, expected in [([], False), (["--new-cluster"], True)]:
        options = parse("--id", "1", "-d", f"d{expected}", *flag)
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor=reactor)
        replica = next(c for c in top if isinstance(c, Replica))
        assert replica.new_cluster is expected
        factory = next(c.factory for c in top if isinstance(c, StreamServerEndpointService)
                       and isinstance(c.factory, PeerServerFactory))
        assert factory.cluster_id() is None              # no store before startService

        class FakeStore:
            cluster_id = "ab" * 16

        replica.store = FakeStore()
        assert factory.cluster_id() == "ab" * 16         # asked at each handshake
        for link in replica.links.values():
            assert link.factory.cluster_id() == "ab" * 16
        replica.store = None
        # The daemon rewrites the pid in LOCK once the reactor runs (after the fork).
        assert reactor.whenRunningHooks == [(options.data_dir_lock.write_pid, (), {})]
        options.data_dir_lock.close()



def test_make_service_builds_replica_and_two_listeners_without_starting(in_tmp):
    options = parse("--id", "1")
    reactor = MemoryReactorClock()
    top = tap.makeService(options, reactor=reactor)
    assert isinstance(top, MultiService)
    children = list(top)
    assert len(children) == 3
    from replicad.replica import Replica

    replicas = [c for c in children if isinstance(c, Replica)]
    listeners = [c for c in children if isinstance(c, StreamServerEndpointService)]
    assert len(replicas) == 1 and len(listeners) == 2
    assert {type(listener.factory) for listener in listeners} == {
        ClientFactory, PeerServerFactory
    }
    for child in children:
        assert IService.providedBy(child)
        assert not child.running
    assert not top.running
    # Nothing happens before startService: no listening, dialing, or timers.
    assert reactor.tcpServers == [] and reactor.tcpClients == []
    assert reactor.getDelayedCalls() == []
    peer_factory = next(
        lst.factory for lst in listeners if isinstance(lst.factory, PeerServerFactory)
    )
    assert peer_factory.my_id == 1
    assert peer_factory.member_ids == {1, 2, 3}
    assert peer_factory.secret == options.cluster.secret
    assert peer_factory.max_line_bytes > options.cluster.limits.max_line_bytes


def test_make_service_listens_on_the_members_addresses_when_started(in_tmp):
    # Start only the listeners (not the replica) to see the endpoints they bind.
    options = parse("--id", "3")
    reactor = MemoryReactorClock()
    top = tap.makeService(options, reactor=reactor)
    listeners = [c for c in top if isinstance(c, StreamServerEndpointService)]
    for listener in listeners:
        listener.startService()
    ports = sorted((port, interface) for port, _f, _b, interface in reactor.tcpServers)
    assert ports == [(7003, "127.0.0.1"), (7103, "127.0.0.1")]
    for listener in listeners:
        listener.stopService()


def test_client_and_peer_ports_send_at_the_end_of_the_turn_with_one_sender(in_tmp):
    from replicad.turnsend import TurnSendEndpoint

    top = tap.makeService(parse("--id", "1"), reactor=MemoryReactorClock())
    endpoints = [c.endpoint for c in top if isinstance(c, StreamServerEndpointService)]
    assert len(endpoints) == 2
    assert all(isinstance(e, TurnSendEndpoint) for e in endpoints)
    assert endpoints[0]._sender is endpoints[1]._sender


# The twistd plugin ----------------------------------------------------------------------


def test_plugin_is_discoverable():
    makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "replicad"]
    assert len(makers) == 1
    maker = makers[0]
    assert maker.options is tap.Options
    assert maker.description


def test_a_replica_process_fits_the_garbage_collector_once_started(in_tmp):
    """tune_collector freezes what start-up made and raises the young generation's
    threshold; only twistd's own process does it, never a service a test builds."""
    import gc

    top = tap.makeService(parse("--id", "1"), reactor=MemoryReactorClock())
    assert top.tune_gc is False                 # a test's reactor: the process is not ours
    before = gc.get_threshold()
    try:
        tap.tune_collector()
        assert gc.get_threshold() == (tap.GC_GEN0_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_top_service_tunes_the_collector_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(tap, "tune_collector", lambda: calls.append(True))
    tap.ReplicaService().startService()
    assert calls == []
    tap.ReplicaService(tune_gc=True).startService()
    assert calls == [True]
