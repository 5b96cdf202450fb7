"""ClientSession: how replies advance the clocks, server order, request ids, the cluster it
belongs to, and the JSON file form."""

import pytest

from replicad.session import ClientSession, SessionFileError, missing, requirement
from replicad.vclock import VectorClock
from replicad.wire import (
    Code,
    Reply,
    ReplyMeta,
    Request,
    SessionContext,
    error_reply,
    is_request_id,
)

GET = Request("GET", "k")
KEYS = Request("KEYS")
PUT = Request("PUT", "k", "v")
DEL = Request("DEL", "k")
STATUS = Request("STATUS")


CLUSTER_A = "a" * 32
CLUSTER_B = "b" * 32


def meta(vc=None, by=3, here=1, coord=3, epoch=5):
    return ReplyMeta(VectorClock(vc or {}), by=by, coord=coord, epoch=epoch, here=here)


@pytest.mark.parametrize("request_", [GET, KEYS])
def test_read_reply_merges_into_read_clock(request_):
    session = ClientSession(VectorClock({1: 4}), VectorClock({2: 1}))
    session.observe(request_, Reply("VALUE", "x", meta=meta({1: 2, 3: 7})), "h:1")
    assert session.read == VectorClock({1: 4, 3: 7})
    assert session.write == VectorClock({2: 1})
    assert session.last_server == 3


@pytest.mark.parametrize("request_", [PUT, DEL])
def test_write_reply_merges_into_write_clock(request_):
    session = ClientSession(VectorClock({1: 4}), VectorClock({2: 1}))
    session.observe(request_, Reply("OK", meta=meta({3: 9})), "h:1")
    assert session.write == VectorClock({2: 1, 3: 9})
    assert session.read == VectorClock({1: 4})


def test_notfound_is_a_read_that_still_merges():
    session = ClientSession()
    session.observe(GET, Reply("NOTFOUND", meta=meta({3: 2})), "h:1")
    assert session.read == VectorClock({3: 2})


@pytest.mark.parametrize("code", [Code.UNAVAILABLE, Code.STALE, Code.INDOUBT, Code.BADKEY])
def test_error_does_not_merge_clocks_but_teaches_who_is_where(code):
    session = ClientSession(VectorClock({1: 1}), VectorClock({1: 1}), last_server=1)
    reply = error_reply(code, "x").with_meta(meta({3: 99}, by=2, here=2, coord=3))
    session.observe(PUT, reply, "h:2")
    assert session.read == VectorClock({1: 1}) and session.write == VectorClock({1: 1})
    assert session.last_server == 1
    assert session.coordinator == 3
    assert session.addresses == {2: "h:2"}


def test_here_and_coordinator_are_learned():
    session = ClientSession()
    session.observe(GET, Reply("VALUE", "x", meta=meta(by=3, here=1, coord=3)), "h:1")
    session.observe(STATUS, Reply("STATUS", meta=meta(by=2, here=2, coord=3)), "h:2")
    assert session.addresses == {1: "h:1", 2: "h:2"}
    assert session.coordinator == 3


def test_status_reply_does_not_touch_clocks():
    session = ClientSession()
    session.observe(STATUS, Reply("STATUS", meta=meta({1: 5})), "h:1")
    assert session.read == VectorClock() and session.write == VectorClock()


def test_reply_without_meta_changes_nothing():
    session = ClientSession()
    session.observe(GET, Reply("VALUE", "x"), "h:1")
    assert session == ClientSession()


def test_context_carries_both_clocks_and_last_server():
    session = ClientSession(VectorClock({1: 2}), VectorClock({2: 3}), last_server=2)
    context = session.context()
    assert context == SessionContext(VectorClock({1: 2}), VectorClock({2: 3}), 2)
    assert context.encode() == "@r=1:2;w=2:3;via=2"
    assert requirement(context) == VectorClock({1: 2, 2: 3})
    assert requirement(None) == VectorClock()


def test_missing_is_what_the_replica_lacks():
    assert missing(VectorClock({1: 3, 2: 1}), VectorClock({1: 1, 2: 5})) == VectorClock({1: 3})
    assert missing(VectorClock({1: 1}), VectorClock({1: 1})) == VectorClock()


def test_order_puts_known_coordinator_first():
    session = ClientSession(coordinator=3, addresses={3: "c:3"})
    assert session.order(["a:1", "b:2", "c:3"]) == ["c:3", "a:1", "b:2"]


@pytest.mark.parametrize(
    "session",
    [
        ClientSession(),                                        # nothing known
        ClientSession(coordinator=3),                           # address unknown
        ClientSession(coordinator=3, addresses={3: "x:9"}),     # not one of ours
    ],
)
def test_order_keeps_the_static_list_otherwise(session):
    assert session.order(["a:1", "b:2"]) == ["a:1", "b:2"]


def test_json_round_trip():
    session = ClientSession(
        VectorClock({1: 2, 3: 4}), VectorClock({2: 1}), last_server=3, coordinator=3,
        addresses={1: "127.0.0.1:7001", 3: "[::1]:7003"}, cluster=CLUSTER_A,
        client_id="0123456789abcdef", seq=12, epoch=7, demoted={"127.0.0.1:7003": 6},
    )
    assert ClientSession.from_json(session.to_json()) == session
    assert ClientSession.from_json(ClientSession().to_json()) == ClientSession()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"read": "1:x"}',
        '{"read": 5}',
        '{"last_server": "three"}',
        '{"addresses": {"one": "h:1"}}',
        '{"addresses": []}',
        '{"cluster": "ABC"}',
        '{"cluster": 5}',
        '{"client_id": "not hex"}',
        '{"seq": -1}',
        '{"seq": "3"}',
        '{"seq": true}',
        '{"demoted": "h:1"}',
        '{"demoted": [1]}',
        '{"demoted": {"h:1": -1}}',
        '{"epoch": "5"}',
    ],
)
def test_damaged_json_raises_session_file_error(text):
    with pytest.raises(SessionFileError, match="damaged"):
        ClientSession.from_json(text)


def test_an_unknown_coordinator_is_looked_for_among_servers_never_reached():
    session = ClientSession(coordinator=3, addresses={1: "h:1"})
    assert session.order(["h:1", "h:2", "h:3"]) == ["h:2", "h:3", "h:1"]
    session.addresses[3] = "h:3"
    assert session.order(["h:1", "h:2", "h:3"]) == ["h:3", "h:1", "h:2"]


def test_demoted_servers_go_last_even_the_coordinator():
    session = ClientSession(coordinator=3, addresses={3: "c:3"},
                            demoted={"c:3": 0, "a:1": 0})
    assert session.order(["a:1", "b:2", "c:3"]) == ["b:2", "c:3", "a:1"]
    session.demote("b:2")
    session.demote("c:3")                  # already demoted: keeps its place
    assert list(session.demoted) == ["c:3", "a:1", "b:2"]
    assert session.order(["a:1", "b:2", "c:3"]) == ["c:3", "a:1", "b:2"]
    assert session.order(["a:1"]) == ["a:1"]


def test_a_reply_promotes_a_demoted_server():
    session = ClientSession(coordinator=3, addresses={3: "c:3"}, demoted={"c:3": 4})
    session.observe(GET, Reply("VALUE", "x"), "c:3")          # even without meta
    assert list(session.demoted) == []
    assert session.order(["a:1", "c:3"]) == ["c:3", "a:1"]


def test_request_ids_are_made_once_per_session_and_never_repeat():
    session = ClientSession()
    assert session.client_id is None        # no id until the first write
    first, second = session.next_request_id(), session.next_request_id()
    client = session.client_id
    assert len(client) == 16 and first == f"{client}.1" and second == f"{client}.2"
    assert is_request_id(first) and is_request_id(second)
    assert ClientSession().next_request_id() != first          # another session


def test_the_context_carries_the_request_id():
    session = ClientSession(VectorClock({1: 1}), client_id="abcdef12", seq=4)
    assert session.context(session.next_request_id()).encode() == "@r=1:1;w=-;id=abcdef12.5"


def test_a_session_binds_to_the_first_cluster_it_hears_of():
    session = ClientSession(VectorClock({1: 2}))
    assert session.adopt_cluster(None) is None and session.cluster is None
    assert session.adopt_cluster(CLUSTER_A) is None
    assert session.cluster == CLUSTER_A and session.read == VectorClock({1: 2})
    assert session.adopt_cluster(CLUSTER_A) is None


def test_another_cluster_resets_the_session():
    session = ClientSession(VectorClock({1: 2}), VectorClock({1: 2}), last_server=1,
                            coordinator=1, addresses={1: "h:1"}, cluster=CLUSTER_A,
                            client_id="abcdef12", seq=9, epoch=3, demoted={"h:2": 3})
    assert session.adopt_cluster(CLUSTER_B) == CLUSTER_A
    assert session == ClientSession(cluster=CLUSTER_B)


def test_an_old_session_file_without_the_new_fields_still_loads():
    session = ClientSession.from_json('{"read": "1:2", "write": "-", "coordinator": 1}')
    assert session == ClientSession(VectorClock({1: 2}), coordinator=1)


def test_a_demoted_coordinator_elected_again_in_a_newer_epoch_is_tried_first_again():
    session = ClientSession(coordinator=3, addresses={2: "b:2", 3: "c:3"}, epoch=4)
    session.demote("c:3")                     # it stalled in epoch 4
    assert session.demoted == {"c:3": 4}
    # A follower still names it in epoch 4: no news, it stays last.
    session.observe(GET, Reply("VALUE", "x", meta=meta(by=3, here=2, coord=3, epoch=4)), "b:2")
    assert session.order(["b:2", "c:3"]) == ["b:2", "c:3"]
    # Replica 2 took over in epoch 5; later 3 recovered and took over in epoch 6.
    session.observe(GET, Reply("VALUE", "x", meta=meta(by=2, here=2, coord=2, epoch=5)), "b:2")
    assert session.demoted == {"c:3": 4} and session.epoch == 5
    session.observe(GET, Reply("VALUE", "x", meta=meta(by=3, here=2, coord=3, epoch=6)), "b:2")
    assert session.demoted == {} and session.order(["b:2", "c:3"]) == ["c:3", "b:2"]
