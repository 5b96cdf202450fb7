"""TLS and start-up checks, in-process: endpoint strings in the config, the checks twistd
replicad makes before it forks (check_startup), the one-line failures and where they
are written, failed handshakes in the log, and both clients over TLS against scripted
servers with certificates made at test time (tests/tlscerts.py).

The same over real twistd processes: tests/integration/test_tls.py and
tests/integration/test_startup_errors.py.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import socket
import ssl
import sys
import time

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.application import service
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from replicad import tap
from replicad.client import (
    CLOSED_SILENTLY,
    BlockingClient,
    FailureKind,
    NoServerAvailable,
    Outcome,
    RetryPlan,
    TLSSetupError,
    describe_tls_error,
)
from replicad.cluster import ClusterTLS
from replicad.config import (
    Address,
    ConfigError,
    Member,
    load_config,
    parse_config,
    parse_endpoint,
)
from replicad.session import ClientSession
from replicad.wire import Reply, Request
from tests.test_client import (  # noqa: F401 (fixtures)
    Driver,
    ScriptedServer,
    answer,
    drive,
    raises,
    refused,
)
from tests.tlscerts import make_ca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE = Reply("VALUE", "v1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost, one for another name only,
    an expired one, and a second CA with its own server certificate."""
    root = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(root)
    other = make_ca(root, "other-ca")

    class PKI:
        pass

    pki = PKI()
    pki.root, pki.ca, pki.other_ca = root, ca, other
    pki.server = ca.issue(os.path.join(root, "server"), "server")
    pki.elsewhere = ca.issue(os.path.join(root, "elsewhere"), "elsewhere", ("db9.example",))
    pki.expired = ca.issue(os.path.join(root, "expired"), "expired", expired=True)
    pki.foreign = other.issue(os.path.join(root, "foreign"), "foreign")
    return pki


def write_ini(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def config_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_ini(tmp_path / "cluster.ini", text))
    message = str(info.value)
    assert "\n" not in message
    return message


def tls_member(i: int, pki, *, client_cert=None, trust=None, host="127.0.0.1",
               base=7000) -> str:
    cert = client_cert or pki.server
    keys = f"privateKey={cert.key}:certKey={cert.cert}"
    return (
        f"[replica:{i}]\nclient = 127.0.0.1:{base + i}\npeer = 127.0.0.1:{base + 100 + i}\n"
        f"client_listen = ssl:{base + i}:interface=127.0.0.1:{keys}\n"
        f"peer_listen = ssl:{base + 100 + i}:interface=127.0.0.1:{keys}\n"
        f"peer_connect = tls:host={host}:port={base + 100 + i}:"
        f"trustRoots={trust or pki.ca.dir}\n"
    )


def tls_config(tmp_path, pki, **member) -> str:
    text = "[cluster]\nsecret = s\n\n" + "\n".join(
        tls_member(i, pki, **(member if i == 1 else {})) for i in (1, 2, 3))
    return write_ini(tmp_path / "cluster.ini", text)


# Endpoint strings in the config ---------------------------------------------------------


def test_endpoints_are_taken_apart_as_twisted_does():
    endpoint = parse_endpoint(r"SSL:7001:interface=\:\:1:privateKey=/k\:ey.pem:x=a=b")
    assert endpoint.type == "ssl" and endpoint.tls
    assert endpoint.args == ("7001",)
    assert endpoint.kwargs == {"interface": "::1", "privateKey": "/k:ey.pem", "x": "a=b"}
    assert endpoint.param("port", 0) == "7001"
    assert not parse_endpoint("tcp:host=h:port=1").tls


@pytest.mark.parametrize(
    "setting, value, complaint",
    [
        ("client_listen", "tpc:7001", "unknown endpoint type 'tpc'"),
        ("client_listen", "ssl:7001:privatekey=k.pem", "unknown parameter 'privatekey'"),
        ("client_listen", "ssl:7001:certKey=c.pem", "needs privateKey="),
        ("client_listen", "tcp:interface=127.0.0.1", "needs a port"),
        ("client_listen", "tcp:port=99999", "needs a port from 1 to 65535"),
        ("peer_listen", "tls:port=7101", "directory of PEM files"),
        ("peer_connect", "ssl:host=h:port=7101", "does not verify the replica it dials"),
        ("peer_connect", "tls:host=h:port=7101:trustroots=/ca", "unknown parameter 'trustroots'"),
        ("peer_connect", "tls:port=7101", "needs a host and a port"),
        ("peer_connect", "http:h:7101", "unknown endpoint type 'http'"),
        ("admin_listen", "tcp6:", "needs a port"),
    ],
)
def test_a_bad_endpoint_string_is_one_line_naming_the_setting(tmp_path, setting, value,
                                                               complaint):
    extra = "admin = 127.0.0.1:7201\n" if setting == "admin_listen" else ""
    message = config_error(tmp_path, "[cluster]\nsecret = s\n[replica:1]\n"
                           f"client = 127.0.0.1:7001\npeer = 127.0.0.1:7101\n{extra}"
                           f"{setting} = {value}\n")
    assert f"[replica:1] {setting} = {value}" in message
    assert complaint in message, message


def test_peer_connect_that_dials_another_replica_is_the_known_misreading(tmp_path):
    """peer_connect in [replica:1] is how the others reach replica 1; written as "how
    1 dials 2" every replica dialled replica 2 expecting 1: 140 warnings in 12 s."""
    message = config_error(tmp_path, "[cluster]\nsecret = s\n"
                           "[replica:1]\nclient = 10.0.0.1:7001\npeer = 10.0.0.1:7101\n"
                           "peer_connect = tcp:host=10.0.0.2:port=7101\n"
                           "[replica:2]\nclient = 10.0.0.2:7001\npeer = 10.0.0.2:7101\n")
    assert "dials 10.0.0.2:7101, the peer address of replica 2" in message
    assert "how the OTHER replicas reach replica 1" in message


@pytest.mark.parametrize(
    "lines, complaint",
    [
        ("peer_listen = ssl:7101:privateKey=k.pem\n", "has no peer_connect"),
        ("peer_listen = ssl:7101:privateKey=k.pem\npeer_connect = tcp:host=h:port=7101\n",
         "peer_listen is TLS but peer_connect dials in plain TCP"),
        ("peer_connect = tls:host=h:port=7101\n",
         "peer_connect dials with TLS but peer_listen is plain TCP"),
    ],
)
def test_both_ends_of_the_peer_link_must_agree_on_tls(tmp_path, lines, complaint):
    message = config_error(tmp_path, "[cluster]\nsecret = s\n[replica:1]\n"
                           f"client = 127.0.0.1:7001\npeer = 127.0.0.1:7101\n{lines}")
    assert complaint in message, message


def test_a_tls_peer_connect_gets_the_connect_timeout_unless_it_names_one():
    member = Member(1, Address("h", 1), Address("h", 2),
                    peer_connect="tls:host=h:port=2:trustRoots=/ca")
    assert member.peer_connect_endpoint(0.4) == "tls:host=h:port=2:trustRoots=/ca:timeout=1"
    timed = Member(1, Address("h", 1), Address("h", 2),
                   peer_connect="tls:host=h:port=2:timeout=7")
    assert timed.peer_connect_endpoint(0.4) == "tls:host=h:port=2:timeout=7"
    plain = Member(1, Address("h", 1), Address("h", 2), peer_connect="tcp:host=h:port=2")
    assert plain.peer_connect_endpoint(0.4) == "tcp:host=h:port=2"


def test_the_three_replica_tls_config_in_the_docs_is_valid():
    """docs/operations.md shows a whole TLS cluster; it must load as printed."""
    with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as handle:
        text = handle.read()
    blocks = re.findall(r"```ini\n(.*?)```", text, re.S)
    tls_blocks = [b for b in blocks if "client_listen = ssl:" in b and "[replica:3]" in b]
    assert tls_blocks, "no three-replica TLS config in docs/operations.md"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(tls_blocks[0])
    config = parse_config(parser, "docs/operations.md")
    assert len(config.members) == 3
    for member in config.members.values():
        assert parse_endpoint(member.client_listen).tls
        assert parse_endpoint(member.peer_listen).tls
        dial = parse_endpoint(member.peer_connect)
        assert dial.type == "tls" and "trustRoots" in dial.kwargs
        assert (dial.kwargs["host"], int(dial.kwargs["port"])) == (member.peer.host,
                                                                  member.peer.port)


def test_local_cluster_tls_settings_are_a_valid_config(tmp_path, pki):
    tls = ClusterTLS(pki.server.cert, pki.server.key, pki.ca.cert, pki.ca.dir)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string("[cluster]\nsecret = s\n")
    for i in (1, 2):
        parser[f"replica:{i}"] = {"client": f"127.0.0.1:{7000 + i}",
                                  "peer": f"127.0.0.1:{7100 + i}",
                                  **tls.settings(Address("127.0.0.1", 7000 + i),
                                                 Address("127.0.0.1", 7100 + i))}
    config = parse_config(parser, "test")
    assert config.members[2].peer_connect.startswith("tls:host=127.0.0.1:port=7102:")


# What twistd replicad checks before it forks ------------------------------------------


def check(path: str, my_id: int = 1, bind: bool = False) -> None:
    tap.check_startup(load_config(path), my_id, MemoryReactorClock(), bind=bind)


def startup_error(path: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        check(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_tls_config_passes(tmp_path, pki):
    check(tls_config(tmp_path, pki))


def test_tls_without_pyopenssl_is_one_line(tmp_path, pki, monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenSSL", None)   # import OpenSSL -> ImportError
    message = startup_error(tls_config(tmp_path, pki))
    assert "uses TLS, which needs pyOpenSSL and service-identity" in message
    assert "pip install 'twisted[tls]'" in message


def test_a_missing_certificate_names_the_file(tmp_path, pki):
    path = tls_config(tmp_path, pki)
    text = open(path).read().replace(pki.server.cert, "/nonexistent/server.crt", 2)
    message = startup_error(write_ini(tmp_path / "c2.ini", text))
    assert message == ("[replica:1] client_listen: cannot read certKey "
                       "/nonexistent/server.crt: No such file or directory")


def test_an_unreadable_key_names_the_file(tmp_path, pki):
    path = tls_config(tmp_path, pki)
    text = open(path).read().replace(pki.server.key, str(tmp_path), 2)  # a directory
    message = startup_error(write_ini(tmp_path / "c2.ini", text))
    assert f"cannot read privateKey {tmp_path}: Is a directory" in message


def test_a_key_that_is_not_pem_is_one_line(tmp_path, pki):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    path = tls_config(tmp_path, pki)
    text = open(path).read().replace(pki.server.key, str(bad), 2)
    message = startup_error(write_ini(tmp_path / "c2.ini", text))
    assert f"privateKey {bad} holds no unencrypted PEM private key" in message


def test_a_certificate_and_key_that_do_not_match(tmp_path, pki):
    path = tls_config(tmp_path, pki)
    text = open(path).read().replace(pki.server.key, pki.foreign.key, 2)
    message = startup_error(write_ini(tmp_path / "c2.ini", text))
    assert "do not match" in message


def test_an_expired_certificate_is_refused(tmp_path, pki):
    message = startup_error(tls_config(tmp_path, pki, client_cert=pki.expired))
    assert "expired on" in message and pki.expired.cert in message


def test_trust_roots_must_hold_a_ca_certificate(tmp_path, pki):
    empty = tmp_path / "empty"
    empty.mkdir()
    path = tls_config(tmp_path, pki)
    text = open(path).read().replace(f"trustRoots={pki.ca.dir}\n\n[replica:3]",
                                     f"trustRoots={empty}\n\n[replica:3]")
    message = startup_error(write_ini(tmp_path / "c2.ini", text))
    assert message.startswith("[replica:2] peer_connect: trustRoots")
    assert "holds no readable, unexpired CA certificate" in message
    text = text.replace(str(empty), "/nonexistent-ca-dir")
    message = startup_error(write_ini(tmp_path / "c3.ini", text))
    assert "must be a directory of CA certificates" in message


def test_a_peer_certificate_must_name_the_host_the_others_dial(tmp_path, pki):
    message = startup_error(tls_config(tmp_path, pki, client_cert=pki.elsewhere))
    assert message.startswith("[replica:1] peer_listen: the certificate in")
    assert "does not name 127.0.0.1, the host the other replicas verify" in message


def test_a_port_in_use_is_found_before_forking(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = write_ini(tmp_path / "c.ini", "[cluster]\nsecret = s\n[replica:1]\n"
                         f"client = 127.0.0.1:{port}\npeer = 127.0.0.1:{port_free()}\n")
        message = startup_error(path, bind=True)
    assert message == (f"cannot listen on 127.0.0.1:{port} (the client port of replica 1): "
                       "address already in use: another replicad, or another program, "
                       "listens there")


def port_free() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unresolvable_host_is_one_line(tmp_path):
    path = write_ini(tmp_path / "c.ini", "[cluster]\nsecret = s\n[replica:1]\n"
                     "client = nosuch.invalid:7001\npeer = 127.0.0.1:7101\n")
    message = startup_error(path, bind=True)
    assert message.startswith("cannot listen on nosuch.invalid:7001 (the client port of "
                              "replica 1): cannot resolve the host name 'nosuch.invalid'")


def test_make_service_turns_a_startup_problem_into_one_line(tmp_path, pki, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tls_config(tmp_path, pki, client_cert=pki.expired)
    options = tap.Options()
    options.parseOptions(["--id", "1", "--config", path, "--data-dir", str(tmp_path / "d")])
    with pytest.raises(SystemExit) as info:
        tap.makeService(options, MemoryReactorClock())
    assert str(info.value.code).startswith("replicad: error: [replica:1] client_listen: ")
    options.data_dir_lock.close()


# Where a start-up failure is written ----------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_daemon_gets_the_line_in_its_log_file(tmp_path, log_format):
    log = tmp_path / "replica.log"
    exit_ = tap.startup_failure("port 7001 is in use", {"nodaemon": False,
                                                        "logfile": str(log)}, log_format)
    assert exit_.code == "replicad: error: port 7001 is in use"
    text = log.read_text()
    assert text.count("\n") == 1
    if log_format == "json":
        assert json.loads(text)["text"] == "replicad: error: port 7001 is in use"
    else:
        assert text.rstrip().endswith("[replicad.tap#critical] replicad: error: port 7001 "
                                      "is in use")


def test_the_terminal_gets_the_line_only_on_stderr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tap.startup_failure("x", {"nodaemon": True})
    tap.startup_failure("x", {"nodaemon": False, "logfile": "-"})
    assert os.listdir(tmp_path) == []


def test_a_config_error_reaches_a_daemons_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = tap.Options()
    options.parent = {"nodaemon": False, "logfile": str(tmp_path / "d.log")}
    with pytest.raises(SystemExit):
        options.parseOptions(["--id", "9"])
    assert "replicad: error: replica id 9 is not in built-in cluster" in (
        tmp_path / "d.log").read_text()


class _CannotListen(service.Service):
    def privilegedStartService(self) -> None:
        raise error.CannotListenError("127.0.0.1", 7001, OSError(98, "Address already in use"))


def test_a_listener_failing_after_the_fork_is_one_line_and_exit_1(tmp_path, monkeypatch):
    """A port taken between the check and twistd's bind: the log and stderr get the
    line, a daemonizing twistd's first process its status pipe, the pid file goes."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stderr)
    read, write = os.pipe()
    pidfile = tmp_path / "replica.pid"
    pidfile.write_text("1")
    options = {"nodaemon": True, "statusPipe": write, "pidfile": str(pidfile)}
    top = tap.ReplicaService(twistd_options=options)
    _CannotListen().setServiceParent(top)
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        with pytest.raises(SystemExit) as info:
            top.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    line = ("replicad: error: cannot listen on 127.0.0.1:7001: address already in use: "
            "another replicad, or another program, listens there")
    assert info.value.code == 1
    assert stderr.getvalue() == line + "\n"
    assert any(e.get("line") == line for e in logged)
    status = os.read(read, 200)
    os.close(read)
    assert status.startswith(b"1 replicad: error: cannot listen on 127.0.0.1:7001")
    assert len(status) <= 100 and not status.endswith(b"liste")   # cut at a word
    assert not pidfile.exists()
    assert options["statusPipe"] is None


# Failed handshakes in the log ------------------------------------------------------------


class _Recorder(Protocol):
    def __init__(self):
        self.lost = None

    def connectionLost(self, reason=None):
        self.lost = reason


class _Transport:
    def __init__(self, done: bool):
        self._handshakeDone = done


def test_failed_handshakes_are_logged_with_a_hint_and_rate_limited():
    clock = MemoryReactorClock()
    watched = tap.TLSFailureLog(Factory.forProtocol(_Recorder), "peer", clock)
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for port in (1, 2, 3):
            proto = watched.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
            proto.transport = _Transport(done=False)
            reason = Failure(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))
            proto.connectionLost(reason)
            assert proto.lost is reason            # the protocol still hears of it
        clock.advance(tap.TLS_FAILURE_LOG_INTERVAL_S)
        # After the handshake, or a close without TLS at all: nothing to say.
        done = watched.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4))
        done.transport = _Transport(done=True)
        done.connectionLost(Failure(SSL.Error([("SSL routines", "", "unexpected eof")])))
        silent = watched.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        silent.transport = _Transport(done=False)
        silent.connectionLost(Failure(error.ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    ours = [e for e in logged if e.get("log_namespace") == "replicad.tap"]
    assert len(ours) == 2
    assert ours[0]["peer"] == "127.0.0.1:1" and ours[0]["reason"] == "tlsv1 alert unknown ca"
    assert "does not trust this replica's certificate" in ours[0]["hint"]
    assert ours[1]["count"] == 2


def test_only_tls_listeners_are_watched():
    factory = Factory.forProtocol(_Recorder)
    assert tap.watch_tls(factory, "tcp:7001", "client", None) is factory
    assert isinstance(tap.watch_tls(factory, "ssl:7001:privateKey=k", "client", None),
                      tap.TLSFailureLog)


# Both clients over TLS --------------------------------------------------------------------


class TLSServer(ScriptedServer):
    """A scripted server behind a TLS handshake with ``cert``.  Like a Twisted TLS
    listener (replicad's), it closes a plain-text connection without a word."""

    def __init__(self, script, cert, frozen: bool = False):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert, cert.key)
        self.handshake_errors: list[str] = []
        super().__init__(script, frozen)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if conn.recv(1, socket.MSG_PEEK) != b"\x16":   # not a TLS ClientHello
                time.sleep(0.05)
                conn.recv(65536)            # read it (a close with unread data is a RST)
                conn.close()
                return
            conn = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(str(e))
            conn.close()
            return
        super()._handle(conn)


@pytest.fixture
def tls_server(pki):
    started: list[ScriptedServer] = []

    def start(script, cert=None, frozen=False, plain=False):
        if plain:
            started.append(ScriptedServer(script, frozen))
        else:
            started.append(TLSServer(script, cert or pki.server, frozen))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest_twisted.ensureDeferred
async def test_a_client_with_the_ca_is_served_over_tls(drive, tls_server, pki):  # noqa: F811
    good = tls_server(answer(VALUE))
    client = drive.make([good.address], cacert=pki.ca.cert)
    assert await drive.call(client, "get", "k") == "v1"
    assert good.requests and good.pings == 1


@pytest_twisted.ensureDeferred
async def test_localhost_is_verified_by_name(drive, tls_server, pki):  # noqa: F811
    good = tls_server(answer(VALUE))
    port = good.address.rsplit(":", 1)[1]
    client = drive.make([f"localhost:{port}"], cacert=pki.ca.cert)
    assert await drive.call(client, "get", "k") == "v1"


@pytest_twisted.ensureDeferred
async def test_a_client_without_the_ca_is_refused_at_once(drive, tls_server):  # noqa: F811
    servers = [tls_server(answer(VALUE)), tls_server(answer(VALUE))]
    client = drive.make([s.address for s in servers], tls=True, timeout_s=20.0)
    started = time.monotonic()
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert time.monotonic() - started < 10        # one pass, not the 20 s timeout
    assert e.tls_failed and not e.all_refused
    assert "the TLS handshake failed with every server" in str(e)
    assert "certificate verify failed" in str(e)
    assert all(s.requests == [] for s in servers)  # nothing was sent


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_host_is_refused(drive, tls_server,  # noqa: F811
                                                         pki):
    server = tls_server(answer(VALUE), cert=pki.elsewhere)
    client = drive.make([server.address], cacert=pki.ca.cert, timeout_s=20.0)
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert e.tls_failed
    assert "mismatch" in str(e) or "does not name the host" in str(e)
    assert server.requests == []


@pytest_twisted.ensureDeferred
async def test_an_untrusted_server_is_skipped_for_a_trusted_one(drive, tls_server,  # noqa
                                                                 pki):
    foreign = tls_server(answer(VALUE), cert=pki.foreign)
    good = tls_server(answer(VALUE))
    client = drive.make([foreign.address, good.address], cacert=pki.ca.cert)
    assert await drive.call(client, "get", "k") == "v1"
    assert foreign.requests == [] and good.requests


@pytest_twisted.ensureDeferred
async def test_a_handshake_that_never_completes_is_skipped(drive, tls_server, pki):  # noqa
    hung = tls_server(answer(VALUE), frozen=True)
    good = tls_server(answer(VALUE))
    client = drive.make([hung.address, good.address], cacert=pki.ca.cert)
    assert await drive.call(client, "get", "k") == "v1"
    assert list(client.session.demoted) == [hung.address]


@pytest_twisted.ensureDeferred
async def test_a_plain_client_on_a_tls_port_is_told_fast(drive, tls_server):  # noqa: F811
    servers = [tls_server(answer(VALUE)), tls_server(answer(VALUE))]
    client = drive.make([s.address for s in servers], timeout_s=20.0)
    started = time.monotonic()
    e = await raises(NoServerAvailable, drive.call(client, "put", "k", "v"))
    assert time.monotonic() - started < 10
    assert e.silent
    assert "closed the connection without answering" in str(e)
    assert "use TLS?" in str(e)


@pytest_twisted.ensureDeferred
async def test_a_tls_client_on_a_plain_port_gives_up(drive, tls_server, pki):  # noqa: F811
    plain = tls_server(answer(VALUE), plain=True, frozen=True)   # reads, never answers
    client = drive.make([plain.address], cacert=pki.ca.cert, timeout_s=1.5)
    e = await raises(NoServerAvailable, drive.call(client, "get", "k"))
    assert "TLS handshake" in str(e)


def test_an_unusable_ca_file_is_refused_before_any_network_use(tmp_path, refused):  # noqa
    with pytest.raises(TLSSetupError, match="cannot read the CA file /nonexistent"):
        BlockingClient([refused], cacert="/nonexistent")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(TLSSetupError, match="holds no PEM certificate"):
        BlockingClient([refused], cacert=str(junk))
    from replicad.client import ReplicadClient

    with pytest.raises(TLSSetupError, match="holds no PEM certificate"):
        ReplicadClient(MemoryReactorClock(), [refused], cacert=str(junk))


def test_cacert_implies_tls(refused, pki):  # noqa: F811
    assert BlockingClient([refused], cacert=pki.ca.cert).tls
    assert not BlockingClient([refused]).tls


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("wrong version number", "TLS: the server does not speak TLS (wrong version number)"),
        ("certificate verify failed", "not signed by a CA this client trusts"),
        ("certificate verify failed: Hostname mismatch, certificate is not valid for 'x'.",
         "TLS: certificate verify failed: Hostname mismatch, certificate is not valid "
         "for 'x'"),
    ],
)
def test_tls_errors_are_worded_for_people(reason, expected):
    assert expected in describe_tls_error(reason)


# The retry policy's TLS rules -----------------------------------------------------------


def plan(servers: list[str]) -> RetryPlan:
    return RetryPlan(Request("GET", "k"), servers, ClientSession(), 30.0, now=0.0,
                     rng=lambda: 0.0)


def test_a_pass_of_tls_failures_ends_the_request_at_once():
    p = plan(["a:1", "b:1"])
    for address in ("a:1", "b:1"):
        step = p.next_step(0.0)
        assert step.address == address
        p.record(Outcome(address, failure="TLS: certificate verify failed",
                         kind=FailureKind.TLS))
    with pytest.raises(NoServerAvailable) as info:
        p.next_step(0.1)
    assert info.value.tls_failed
    assert str(info.value) == ("the TLS handshake failed with every server (a:1, b:1): "
                               "TLS: certificate verify failed")


def test_tls_failures_and_refusals_end_the_request_after_two_passes():
    p = plan(["a:1", "b:1"])
    outcomes = {"a:1": Outcome("a:1", failure="TLS: x", kind=FailureKind.TLS),
                "b:1": Outcome("b:1", failure="connection refused", kind=FailureKind.REFUSED)}
    with pytest.raises(NoServerAvailable) as info:
        for _ in range(10):
            step = p.next_step(0.0)
            if hasattr(step, "address"):
                p.record(outcomes[step.address])
    assert info.value.tls_failed
    assert "the others refused the connection" in str(info.value)


def test_silent_closes_end_the_request_after_two_passes_and_leave_no_doubt():
    p = RetryPlan(Request("PUT", "k", "v"), ["a:1"], ClientSession(), 30.0, now=0.0,
                  rng=lambda: 0.0)
    with pytest.raises(NoServerAvailable) as info:
        for _ in range(10):
            step = p.next_step(0.0)
            if hasattr(step, "address"):
                p.record(Outcome("a:1", failure=CLOSED_SILENTLY, kind=FailureKind.SILENT))
    assert info.value.silent and p.doubt is None
