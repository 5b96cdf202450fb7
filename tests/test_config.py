"""replicad.config: the built-in cluster, INI loading, every operator mistake.  Pure."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st
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
    describe_quorum,
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


def sized(size: int, settings: str = "") -> str:
    """A file with replicas 1..size and the given [cluster] lines."""
    members = "".join(
        f"[replica:{i}]\nclient = 127.0.0.1:{8000 + i}\npeer = 127.0.0.1:{8100 + i}\n"
        for i in range(1, size + 1)
    )
    return "[cluster]\nsecret = x\n" + textwrap.dedent(settings) + "\n" + members


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


def test_default_quorum_is_one_and_timers_are_derived():
    config = default_config()
    assert (config.write_quorum, config.write_quorum_text) == (1, "1")
    assert not config.quorum_mode
    assert config.majority == 2
    assert describe_quorum(config) == "1 (always serviceable)"
    timers = config.timers
    assert timers.derived == {"forward_timeout", "lease_timeout"}
    assert (timers.forward_timeout, timers.forward_timeout_s) == (7.0, 7.0)   # 3 + 1 + 2 + 1
    assert (timers.lease_timeout, timers.lease_timeout_s) == (0.6, 0.6)       # 2 x 0.3


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
    assert config.timers.lease_timeout == 1.0      # derived: 2 x ping_interval
    assert config.timers.forward_timeout == 7.0    # derived: 3 + 1 + 2 + 1 s margin
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


# write_quorum = majority ----------------------------------------------------------------


@pytest.mark.parametrize(("size", "majority"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3),
                                                (6, 4), (7, 4)])
@pytest.mark.parametrize("word", ["majority", "MAJORITY", "Majority"])
def test_write_quorum_majority(tmp_path, size, majority, word):
    config = load_config(write(tmp_path, sized(size, f"write_quorum = {word}")))
    assert config.write_quorum == majority
    assert config.majority == majority
    assert config.write_quorum_text == "majority"
    assert config.quorum_mode
    assert describe_quorum(config) == f"majority {majority} of {size} (partition-safe)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("most", "write_quorum = 'most' is neither a whole number nor 'majority'"),
        ("1.5", "write_quorum = '1.5' is neither a whole number nor 'majority'"),
        ("majority of 3", "write_quorum = 'majority of 3' is neither a whole number nor "
                          "'majority'"),
        ("", "write_quorum = '' is neither a whole number nor 'majority'"),
        ("0", "write_quorum must be greater than 0, got '0'"),
        ("-1", "write_quorum must be greater than 0, got '-1'"),
        ("4", "write_quorum = 4 must be between 1 and the number of replicas (3)"),
    ],
)
def test_bad_write_quorum(tmp_path, value, message):
    assert message in config_error(tmp_path, sized(3, f"write_quorum = {value}"))


@pytest.mark.parametrize(
    ("size", "quorum", "quorum_mode", "description"),
    [
        (1, 1, True, "1 of 1 (partition-safe)"),
        (2, 1, False, "1 (always serviceable)"),
        (2, 2, True, "2 of 2 (partition-safe)"),
        (3, 1, False, "1 (always serviceable)"),
        (3, 2, True, "2 of 3 (partition-safe)"),
        (3, 3, True, "3 of 3 (partition-safe)"),
        (4, 2, False, "2 of 4 (not partition-safe)"),
        (4, 3, True, "3 of 4 (partition-safe)"),
        (5, 2, False, "2 of 5 (not partition-safe)"),
        (5, 3, True, "3 of 5 (partition-safe)"),
    ],
)
def test_quorum_mode_is_more_than_half(tmp_path, size, quorum, quorum_mode, description):
    config = load_config(write(tmp_path, sized(size, f"write_quorum = {quorum}")))
    assert (config.write_quorum, config.write_quorum_text) == (quorum, str(quorum))
    assert config.quorum_mode is quorum_mode
    assert config.majority == size // 2 + 1
    assert describe_quorum(config) == description


def test_write_quorum_text_follows_overrides():
    majority = with_overrides(default_config(), write_quorum="majority")
    assert (majority.write_quorum, majority.write_quorum_text) == (2, "majority")
    # Unrelated changes keep it; a new number replaces it.
    assert with_overrides(majority, secret="other").write_quorum_text == "majority"
    assert with_overrides(majority, write_quorum=3).write_quorum_text == "3"
    # The number is what counts: a copy with more members keeps 2, no longer a majority.
    grown = with_overrides(majority, members=default_config(size=5).members)
    assert (grown.write_quorum, grown.write_quorum_text, grown.quorum_mode) == (2, "2", False)
    assert with_overrides(grown, write_quorum="majority").write_quorum == 3
    with pytest.raises(ConfigError, match="write_quorum = 'most' is neither"):
        with_overrides(majority, write_quorum="most")


# Derived timers and the timer rules -----------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "forward", "lease"),
    [
        ("", 7.0, 0.6),
        ("election_wait = 1\nfetch_timeout = 0.5\nquorum_timeout = 0.5", 3.0, 0.6),
        ("election_wait = 0.1\nfetch_timeout = 0.2\nquorum_timeout = 0.3", 1.6, 0.6),
        ("ping_interval = 0.5", 7.0, 1.0),
        ("ping_interval = 2\nping_timeout = 1", 7.0, 4.0),
        ("forward_timeout = 9.5", 9.5, 0.6),
        ("lease_timeout = 0.45", 7.0, 0.45),
    ],
)
def test_forward_and_lease_timeouts(tmp_path, settings, forward, lease):
    timers = load_config(write(tmp_path, with_cluster(settings))).timers
    assert (timers.forward_timeout, timers.lease_timeout) == (forward, lease)
    assert (timers.forward_timeout_s, timers.lease_timeout_s) == (forward, lease)
    assert type(timers.forward_timeout_s) is float and type(timers.lease_timeout_s) is float
    explicit = {name for name in ("forward_timeout", "lease_timeout") if name in settings}
    assert timers.derived == {"forward_timeout", "lease_timeout"} - explicit


def test_timers_built_directly_have_float_values():
    # Tests and tools build Timers(...) themselves; readers use .forward_timeout.
    timers = Timers(ping_interval=0.5, ping_timeout=0.25, quorum_timeout=0.5)
    assert isinstance(timers.forward_timeout, float) and timers.forward_timeout == 5.5
    assert isinstance(timers.lease_timeout, float) and timers.lease_timeout == 1.0
    assert Timers(forward_timeout=None).forward_timeout == 7.0
    given = Timers(forward_timeout=8.0, lease_timeout=1.5)
    assert (given.forward_timeout, given.lease_timeout, given.derived) == (8.0, 1.5, set())
    assert timers.forward_timeout_floor_s == 4.5


def test_replace_derives_again_and_keeps_given_values():
    # dataclasses.replace passes every field on: a derived value must not turn into a
    # stale "given" one (which the rules would then reject).
    timers = dataclasses.replace(Timers(), ping_interval=1.0, ping_timeout=0.5,
                                 election_wait=10.0)
    assert (timers.forward_timeout, timers.lease_timeout) == (14.0, 2.0)
    assert timers.derived == {"forward_timeout", "lease_timeout"}
    given = dataclasses.replace(Timers(), forward_timeout=20.0)
    assert given.derived == {"lease_timeout"}
    assert dataclasses.replace(given, election_wait=1.0).forward_timeout == 20.0
    config = with_overrides(default_config(), timers=timers)
    assert config.timers.forward_timeout == 14.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("forward_timeout = 3",
         "forward_timeout (3.0) must be at least election_wait + fetch_timeout + "
         "quorum_timeout (3.0 + 1.0 + 2.0 = 6.0): a follower would report ERR INDOUBT for "
         "writes the coordinator completes"),
        ("forward_timeout = 5.9",
         "forward_timeout (5.9) must be at least election_wait + fetch_timeout + "
         "quorum_timeout (3.0 + 1.0 + 2.0 = 6.0)"),
        ("forward_timeout = 3.9\nquorum_timeout = 0.5\nelection_wait = 2.5",
         "forward_timeout (3.9) must be at least election_wait + fetch_timeout + "
         "quorum_timeout (2.5 + 1.0 + 0.5 = 4.0)"),
        ("lease_timeout = 0.3",
         "lease_timeout (0.3) must be longer than ping_interval (0.3): a coordinator in "
         "quorum mode would lose its lease between two heartbeats of a healthy cluster"),
        ("lease_timeout = 0.5\nping_interval = 1\nping_timeout = 0.5",
         "lease_timeout (0.5) must be longer than ping_interval (1.0)"),
        ("coordinator_timeout = 0.3",
         "coordinator_timeout (0.3) must be longer than answer_timeout (0.3): the replica "
         "that answered OK waits answer_timeout for higher ones before it announces, so the "
         "election would restart before its COORDINATOR could arrive"),
        ("answer_timeout = 1",
         "coordinator_timeout (0.8) must be longer than answer_timeout (1.0)"),
    ],
)
def test_timer_rules(tmp_path, settings, message):
    assert message in config_error(tmp_path, with_cluster(settings))


@pytest.mark.parametrize(
    "settings",
    [
        "forward_timeout = 6",                                     # exactly the sum
        "forward_timeout = 0.6\nelection_wait = 0.1\nfetch_timeout = 0.2\n"
        "quorum_timeout = 0.3",                                    # 0.1 + 0.2 + 0.3 in floats
        "lease_timeout = 0.31",
        "coordinator_timeout = 0.31",
        # reannounce_interval is free: the winner announces at once, and repeats only
        # to heal a lost announcement.
        "reannounce_interval = 5",
    ],
)
def test_timer_rules_boundaries_are_accepted(tmp_path, settings):
    load_config(write(tmp_path, with_cluster(settings)))


def test_with_overrides_checks_the_timer_rules():
    config = default_config()
    with pytest.raises(ConfigError, match=r"forward_timeout \(3\.0\) must be at least"):
        with_overrides(config, timers=Timers(forward_timeout=3.0))
    with pytest.raises(ConfigError, match=r"lease_timeout \(0\.2\) must be longer"):
        with_overrides(config, timers=Timers(lease_timeout=0.2))
    with pytest.raises(ConfigError, match=r"coordinator_timeout \(0\.2\) must be longer"):
        with_overrides(config, timers=Timers(coordinator_timeout=0.2))


seconds = st.floats(min_value=0.001, max_value=1000, allow_nan=False, allow_infinity=False)


@given(ping_interval=seconds, election_wait=seconds, fetch_timeout=seconds,
       quorum_timeout=seconds)
def test_derived_timers_always_pass_their_rules(ping_interval, election_wait, fetch_timeout,
                                               quorum_timeout):
    timers = Timers(ping_interval=ping_interval, ping_timeout=ping_interval / 2,
                    election_wait=election_wait, fetch_timeout=fetch_timeout,
                    quorum_timeout=quorum_timeout)
    config = with_overrides(default_config(), timers=timers)   # validates
    assert config.timers.forward_timeout >= timers.forward_timeout_floor_s + 0.999
    assert config.timers.lease_timeout > ping_interval


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


def test_render_majority_and_derived_timers_round_trip(tmp_path):
    config = load_config(write(tmp_path, sized(5, "write_quorum = Majority\nping_interval = 0.5")))
    text = render_config(config)
    assert "write_quorum = majority\n" in text
    assert "ping_interval = 0.5\n" in text
    assert "forward_timeout" not in text and "lease_timeout" not in text
    loaded = load_config(write(tmp_path, text, name="rendered.ini"))
    assert comparable(loaded) == comparable(config)
    assert (loaded.write_quorum, loaded.write_quorum_text) == (3, "majority")
    assert loaded.timers.derived == {"forward_timeout", "lease_timeout"}
    assert (loaded.timers.forward_timeout, loaded.timers.lease_timeout) == (7.0, 1.0)
    # Not written back, so they follow the timers they come from when the file is edited.
    edited = text.replace("ping_interval = 0.5", "ping_interval = 0.5\nelection_wait = 1")
    timers = load_config(write(tmp_path, edited, name="edited.ini")).timers
    assert timers.forward_timeout == 5.0


def test_render_given_forward_and_lease_timeouts_round_trip(tmp_path):
    config = load_config(write(tmp_path, sized(3, "write_quorum = 2\nforward_timeout = 7\n"
                                                    "lease_timeout = 0.45")))
    text = render_config(config)
    assert "write_quorum = 2\n" in text
    assert "forward_timeout = 7.0\n" in text and "lease_timeout = 0.45\n" in text
    loaded = load_config(write(tmp_path, text, name="rendered.ini"))
    assert comparable(loaded) == comparable(config)
    assert (loaded.write_quorum_text, loaded.timers.derived) == ("2", set())


@pytest.mark.parametrize("size", range(1, 8))
@pytest.mark.parametrize("quorum", ["majority", "1", "max"])
def test_render_round_trips_every_quorum(tmp_path, size, quorum):
    text = "majority" if quorum == "majority" else str(size) if quorum == "max" else quorum
    config = with_overrides(default_config(size=size), write_quorum=text)
    loaded = load_config(write(tmp_path, render_config(config)))
    assert comparable(loaded) == comparable(config)
    assert loaded.write_quorum_text == config.write_quorum_text == text
    assert describe_quorum(loaded) == describe_quorum(config)


@pytest.mark.parametrize("value", ["1.5", "2", "nan"])
def test_full_copy_ratio_is_a_fraction(tmp_path, value):
    message = config_error(tmp_path, with_cluster(f"full_copy_ratio = {value}"))
    assert "full_copy_ratio" in message


def test_replica_ids_are_bounded_because_epochs_contain_them(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[cluster]\nsecret = s\n[replica:10000]\nclient = 127.0.0.1:1\n"
                    "peer = 127.0.0.1:2\n")
    with pytest.raises(ConfigError, match="replica id 10000 is above 9999"):
        load_config(str(path))


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:port=7001:interface=127.0.0.1", "tcp:port=7001:interface=127.0.0.1:backlog=64"),
        ("ssl:7001:privateKey=k.pem", "ssl:7001:privateKey=k.pem:backlog=64"),
        ("tcp:7001:backlog=5", "tcp:7001:backlog=5"),              # the operator's wins
        ("unix:/run/replicad.sock", "unix:/run/replicad.sock"),   # no backlog option here
    ],
)
def test_listen_backlog_is_added_to_server_endpoints(endpoint, expected):
    from replicad.config import with_backlog
    assert with_backlog(endpoint, 64) == expected


def test_listen_backlog_setting(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[cluster]\nsecret = s\nlisten_backlog = 4096\n[replica:1]\n"
                    "client = 127.0.0.1:1\npeer = 127.0.0.1:2\n")
    assert load_config(str(path)).listen_backlog == 4096
    assert default_config().listen_backlog == 1024
    path.write_text(path.read_text().replace("4096", "0"))
    with pytest.raises(ConfigError, match="listen_backlog must be greater than 0"):
        load_config(str(path))


@pytest.mark.parametrize("text, value", [("yes", True), ("No", False), ("true", True),
                                         ("off", False), ("1", True), (" 0 ", False)])
def test_follower_reads_is_a_switch(tmp_path, text, value):
    config = load_config(write(tmp_path, with_cluster(f"follower_reads = {text}")))
    assert config.follower_reads is value
    loaded = load_config(write(tmp_path, render_config(config), name="rendered.ini"))
    assert loaded.follower_reads is value


def test_follower_reads_is_off_unless_asked(tmp_path):
    assert default_config().follower_reads is False
    assert load_config(write(tmp_path, with_cluster(""))).follower_reads is False


@pytest.mark.parametrize("text", ["maybe", "", "2", "yes please"])
def test_follower_reads_must_be_yes_or_no(tmp_path, text):
    message = config_error(tmp_path, with_cluster(f"follower_reads = {text}"))
    assert "follower_reads must be yes or no" in message
