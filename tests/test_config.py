"""replicad.config: the built-in cluster, INI loading, every operator mistake.  Pure."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from replicad import config as cfg
from replicad.config import (
    Address,
    ConfigError,
    Member,
    Timers,
    default_config,
    load_config,
    parse_address,
    render_config,
    with_overrides,
)
from replicad.wire import Limits

GOOD = """\
[cluster]
secret = s3cret words
write_quorum = 2
ping_interval = 0.5
ping_timeout = 0.25
answer_timeout = 0.4
idle_timeout = 30
anti_entropy_interval = 7.5
max_connections = 50
full_copy_ratio = 0.5
max_key_bytes = 100
max_value_bytes = 2000

[replica:1]
client = 127.0.0.1:8001
peer = 127.0.0.1:8101

[replica:2]
client = 10.0.0.2:8001
peer = 10.0.0.2:8101
client_listen = tcp:port=8001
peer_connect = tcp:host=10.0.0.2:port=8101

[replica:3]
client = [::1]:8003
peer = [::1]:8103
"""

MEMBERS = """\
[replica:1]
client = 127.0.0.1:8001
peer = 127.0.0.1:8101

[replica:2]
client = 127.0.0.1:8002
peer = 127.0.0.1:8102
"""


def write(tmp_path, text: str, name: str = "cluster.ini") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def config_error(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def with_cluster(settings: str) -> str:
    """A file with two good members and the given [cluster] lines."""
    return "[cluster]\nsecret = x\n" + textwrap.dedent(settings) + "\n" + MEMBERS


# The built-in cluster ---------------------------------------------------------------


def test_default_config_ports_and_secret():
    config = default_config()
    assert config.ids == [1, 2, 3]
    for i in (1, 2, 3):
        member = config.member(i)
        assert member.client == Address("127.0.0.1", 7000 + i)
        assert member.peer == Address("127.0.0.1", 7100 + i)
        assert member.client_listen_endpoint() == f"tcp:port={7000 + i}:interface=127.0.0.1"
        assert member.peer_listen_endpoint() == f"tcp:port={7100 + i}:interface=127.0.0.1"
    assert config.secret == cfg.DEFAULT_SECRET
    assert config.uses_default_secret
    assert config.write_quorum == 1
    assert config.timers == Timers()
    assert config.limits == Limits()
    assert config.source == "built-in cluster"


def test_default_config_size_and_ports():
    config = default_config(size=5, client_base_port=9000, peer_base_port=9100, host="::1")
    assert config.ids == [1, 2, 3, 4, 5]
    assert config.member(5).client == Address("::1", 9005)
    assert str(config.member(5).peer) == "[::1]:9105"
    with pytest.raises(ConfigError, match="at most 64 replicas"):
        default_config(size=cfg.MAX_REPLICAS + 1)


def test_member_unknown_id_lists_known_ids():
    with pytest.raises(ConfigError) as info:
        default_config().member(9)
    message = str(info.value)
    assert "replica id 9" in message
    assert "built-in cluster" in message
    assert "known ids: 1, 2, 3" in message


def test_default_timers_keep_ping_timeout_under_interval():
    timers = Timers()
    assert timers.ping_timeout < timers.ping_interval


# Loading a good file --------------------------------------------------------------------


def test_load_good_config(tmp_path):
    path = write(tmp_path, GOOD)
    config = load_config(path)
    assert config.ids == [1, 2, 3]
    assert config.secret == "s3cret words"
    assert not config.uses_default_secret
    assert config.write_quorum == 2
    assert config.max_connections == 50
    assert config.full_copy_ratio == 0.5
    assert config.timers == Timers(
        ping_interval=0.5, ping_timeout=0.25, answer_timeout=0.4, idle_timeout=30.0,
        anti_entropy_interval=7.5,
    )
    assert config.limits == Limits(max_key_bytes=100, max_value_bytes=2000)
    assert config.source == f"config file {path}"
    assert config.member(1) == Member(
        1, Address("127.0.0.1", 8001), Address("127.0.0.1", 8101)
    )
    two = config.member(2)
    assert two.client_listen_endpoint() == "tcp:port=8001"
    assert two.peer_listen_endpoint() == "tcp:port=8101:interface=10.0.0.2"
    assert two.peer_connect_endpoint(5.0) == "tcp:host=10.0.0.2:port=8101"
    assert config.member(3).client == Address("::1", 8003)
    with pytest.raises(ConfigError, match=r"known ids: 1, 2, 3"):
        config.member(4)


def test_setting_names_are_case_insensitive(tmp_path):
    config = load_config(write(tmp_path, with_cluster("Idle_Timeout = 9\nWRITE_QUORUM = 2")))
    assert config.timers.idle_timeout == 9.0
    assert config.write_quorum == 2


def test_secret_is_stripped_and_not_interpolated(tmp_path):
    config = load_config(write(tmp_path, "[cluster]\nsecret =   100%${x}  \n" + MEMBERS))
    assert config.secret == "100%${x}"


# Every mistake --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"cannot read config file {path}: No such file or directory"


def test_unreadable_file_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path))


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[cluster]\nsecret = \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(str(path))


@pytest.mark.parametrize(
    "text",
    [
        "just some words\n",
        "[cluster]\nthis line has no equals sign\n",
        "[cluster]\nsecret = a\nsecret = b\n",
        "[cluster]\n[cluster]\n",
    ],
)
def test_not_ini(tmp_path, text):
    assert "is not a valid INI file" in config_error(tmp_path, text)


def test_missing_cluster_section(tmp_path):
    assert "has no [cluster] section" in config_error(tmp_path, MEMBERS)


def test_empty_file_has_no_cluster(tmp_path):
    assert "has no [cluster] section" in config_error(tmp_path, "")


def test_no_replicas(tmp_path):
    assert "has no [replica:N] sections" in config_error(tmp_path, "[cluster]\nsecret = x\n")


@pytest.mark.parametrize("section", ["replicas:1", "node:1", "replica", "Replica:1", "cluster:2"])
def test_bad_section_name(tmp_path, section):
    message = config_error(tmp_path, with_cluster("") + f"\n[{section}]\nclient = a:1\n")
    assert f"unknown section [{section}]" in message
    assert "[replica:N]" in message


@pytest.mark.parametrize("section", ["replica:0", "replica:x", "replica:", "replica:-1",
                                     "replica:1.5", "replica:\u0663"])
def test_non_integer_or_zero_id(tmp_path, section):
    message = config_error(
        tmp_path, "[cluster]\nsecret = x\n" + f"[{section}]\nclient = a:1\npeer = a:2\n"
    )
    assert f"section [{section}] needs a positive integer id" in message


@pytest.mark.parametrize("missing", ["client", "peer"])
def test_missing_client_or_peer(tmp_path, missing):
    present = "peer" if missing == "client" else "client"
    message = config_error(tmp_path, f"[cluster]\nsecret = x\n[replica:4]\n{present} = a:1\n")
    assert f"[replica:4] needs a {missing} address" in message


@pytest.mark.parametrize(
    "address", ["localhost", "localhost:", ":7001", "a b:7001", "::1:7001", "[::1]", "host:x",
                "host:123456", "[fe80::zz]:1", "[::1]7001"]
)
def test_bad_host_port(tmp_path, address):
    message = config_error(
        tmp_path, f"[cluster]\nsecret = x\n[replica:1]\nclient = {address}\npeer = a:1\n"
    )
    assert "[replica:1] client address" in message
    assert "is not host:port" in message


@pytest.mark.parametrize("port", [0, 65536, 70000, 99999])
def test_port_out_of_range(tmp_path, port):
    message = config_error(
        tmp_path, f"[cluster]\nsecret = x\n[replica:1]\nclient = a:1\npeer = host:{port}\n"
    )
    assert "[replica:1] peer address" in message
    assert f"has port {port}, outside 1-65535" in message


def test_port_bounds_are_inclusive():
    assert parse_address("h:1") == Address("h", 1)
    assert parse_address(" h:65535 ") == Address("h", 65535)


def test_duplicate_client_address(tmp_path):
    text = """\
        [cluster]
        secret = x
        [replica:1]
        client = 127.0.0.1:8001
        peer = 127.0.0.1:8101
        [replica:2]
        client = 127.0.0.1:8001
        peer = 127.0.0.1:8102
        """
    message = config_error(tmp_path, text)
    assert (
        "replica 2 client address 127.0.0.1:8001 is also replica 1 client address "
        "127.0.0.1:8001" in message
    )


def test_client_address_equal_to_another_replicas_peer_address(tmp_path):
    text = """\
        [cluster]
        secret = x
        [replica:1]
        client = 127.0.0.1:8001
        peer = 127.0.0.1:8101
        [replica:2]
        client = 127.0.0.1:8101
        peer = 127.0.0.1:8102
        """
    message = config_error(tmp_path, text)
    assert "replica 2 client address 127.0.0.1:8101 is also replica 1 peer address" in message


def test_client_address_equal_to_own_peer_address(tmp_path):
    text = "[cluster]\nsecret = x\n[replica:1]\nclient = h:5\npeer = h:5\n"
    assert "replica 1 peer address h:5 is also replica 1 client address" in config_error(
        tmp_path, text
    )


def test_unknown_setting_in_cluster(tmp_path):
    message = config_error(tmp_path, with_cluster("ping_intreval = 0.5"))
    assert "unknown setting 'ping_intreval' in [cluster]" in message


def test_unknown_setting_in_replica(tmp_path):
    text = "[cluster]\nsecret = x\n[replica:3]\nclinet = a:1\nclient = a:1\npeer = a:2\n"
    assert "unknown setting 'clinet' in [replica:3]" in config_error(tmp_path, text)


@pytest.mark.parametrize("value", ["-1", "0", "0.0", "-0.5", "nan", "NaN", "inf", "-inf",
                                   "1e400"])
def test_timer_must_be_positive_and_finite(tmp_path, value):
    message = config_error(tmp_path, with_cluster(f"idle_timeout = {value}"))
    assert f"idle_timeout must be greater than 0, got '{value}'" in message


@pytest.mark.parametrize("value", ["soon", "", "1s", "1,5"])
def test_timer_must_be_a_number(tmp_path, value):
    message = config_error(tmp_path, with_cluster(f"forward_timeout = {value}"))
    assert f"forward_timeout = '{value}' is not a number of seconds" in message


@pytest.mark.parametrize(
    ("settings", "timeout", "interval"),
    [
        ("ping_timeout = 0.3", 0.3, 0.3),                    # equal to the default interval
        ("ping_interval = 0.1", 0.2, 0.1),                   # under the default timeout
        ("ping_interval = 1\nping_timeout = 2", 2.0, 1.0),
    ],
)
def test_ping_timeout_must_be_shorter_than_interval(tmp_path, settings, timeout, interval):
    message = config_error(tmp_path, with_cluster(settings))
    assert (
        f"ping_timeout ({timeout}) must be shorter than ping_interval ({interval})" in message
    )


@pytest.mark.parametrize("value", ["1.5", "two", "0x10"])
def test_integer_setting_must_be_whole(tmp_path, value):
    message = config_error(tmp_path, with_cluster(f"max_connections = {value}"))
    assert f"max_connections = '{value}' is not a whole number" in message


@pytest.mark.parametrize("name", ["max_value_bytes", "max_key_bytes", "full_copy_ratio"])
def test_integer_settings_must_be_positive(tmp_path, name):
    assert f"{name} must be greater than 0" in config_error(tmp_path, with_cluster(f"{name} = 0"))


def test_write_quorum_zero(tmp_path):
    assert "write_quorum must be greater than 0" in config_error(
        tmp_path, with_cluster("write_quorum = 0")
    )


def test_write_quorum_over_the_number_of_replicas(tmp_path):
    message = config_error(tmp_path, with_cluster("write_quorum = 3"))
    assert "write_quorum = 3 must be between 1 and the number of replicas (2)" in message


def test_write_quorum_equal_to_the_number_of_replicas_is_fine(tmp_path):
    assert load_config(write(tmp_path, with_cluster("write_quorum = 2"))).write_quorum == 2


@pytest.mark.parametrize("secret_line", ["secret =", "secret =    ", ""])
def test_empty_or_missing_secret(tmp_path, secret_line):
    text = f"[cluster]\n{secret_line}\n" + MEMBERS
    assert "[cluster] needs a non-empty secret" in config_error(tmp_path, text)


def test_messages_name_the_file(tmp_path):
    path = write(tmp_path, with_cluster("write_quorum = 0"), name="mine.ini")
    with pytest.raises(ConfigError, match=r"config file .*mine\.ini"):
        load_config(path)


def test_with_overrides_validates_again():
    config = default_config()
    assert with_overrides(config, write_quorum=3).write_quorum == 3
    assert config.write_quorum == 1
    with pytest.raises(ConfigError, match="write_quorum = 4"):
        with_overrides(config, write_quorum=4)
    with pytest.raises(ConfigError, match="ping_timeout"):
        with_overrides(config, timers=Timers(ping_timeout=1.0))


# Regression: [replica:01] used to replace [replica:1] silently.
def test_the_same_id_twice_is_an_error(tmp_path):
    text = MEMBERS + "\n[replica:01]\nclient = 127.0.0.1:9001\npeer = 127.0.0.1:9101\n"
    message = config_error(tmp_path, "[cluster]\nsecret = x\n" + text)
    assert "replica id 1 is defined twice" in message


# Regression: int() of a 5000-digit id raised ValueError instead of ConfigError.
def test_huge_section_id_is_a_config_error(tmp_path):
    section = "replica:" + "9" * 5000
    message = config_error(tmp_path, "[cluster]\nsecret = x\n[" + section + "]\n")
    assert "needs a positive integer id" in message


# Addresses and endpoints ----------------------------------------------------------------


def test_ipv6_address_parses_and_endpoints_escape_colons():
    address = parse_address("[::1]:7001")
    assert address == Address("::1", 7001)
    assert str(address) == "[::1]:7001"
    assert address.server_endpoint() == "tcp:port=7001:interface=\\:\\:1"
    assert address.client_endpoint() == "tcp:host=\\:\\:1:port=7001"
    assert parse_address("[fe80::1:2]:80").host == "fe80::1:2"


def test_endpoint_strings_are_understood_by_twisted():
    reactor = MemoryReactor()
    address = Address("::1", 7001)
    serverFromString(reactor, address.server_endpoint()).listen(Factory())
    port, _factory, _backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (7001, "::1")
    clientFromString(reactor, address.client_endpoint(2.5)).connect(Factory())
    host, port, _factory, timeout, _bind = reactor.tcpClients[0]
    assert (host, port, timeout) == ("::1", 7001, 3)


def test_client_endpoint_timeout_rounds_up_to_at_least_one_second():
    address = Address("h", 1)
    assert address.client_endpoint(0.2) == "tcp:host=h:port=1:timeout=1"
    assert address.client_endpoint(2.1) == "tcp:host=h:port=1:timeout=3"
    assert Member(1, address, Address("h", 2)).peer_connect_endpoint(0.5) == (
        "tcp:host=h:port=2:timeout=1"
    )


# render_config --------------------------------------------------------------------------


def comparable(config):
    return dataclasses.replace(config, source="")


def test_render_default_config_loads_back(tmp_path):
    config = default_config()
    loaded = load_config(write(tmp_path, render_config(config)))
    assert loaded.members == config.members
    assert comparable(loaded) == comparable(config)


def test_render_config_with_ipv6_timers_and_limits_loads_back(tmp_path):
    base = default_config(size=4, client_base_port=9000, peer_base_port=9100, host="::1")
    config = with_overrides(
        base,
        secret="another secret",
        write_quorum=3,
        timers=Timers(ping_interval=0.7, ping_timeout=0.35, election_wait=1.25),
        limits=Limits(max_key_bytes=32, max_value_bytes=1024),
    )
    text = render_config(config)
    assert "[::1]:9001" in text
    loaded = load_config(write(tmp_path, text))
    assert loaded.members == config.members
    assert loaded.ids == [1, 2, 3, 4]
    assert comparable(loaded) == comparable(config)


# Regression: render_config used to drop max_connections, full_copy_ratio and the
# members' client_listen/peer_listen/peer_connect.
def test_render_config_keeps_every_setting(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    loaded = load_config(write(tmp_path, render_config(config), name="rendered.ini"))
    assert loaded.members == config.members
    assert comparable(loaded) == comparable(config)


@pytest.mark.parametrize("value", ["1.5", "2", "nan"])
def test_full_copy_ratio_is_a_fraction(tmp_path, value):
    message = config_error(tmp_path, with_cluster(f"full_copy_ratio = {value}"))
    assert "full_copy_ratio" in message
