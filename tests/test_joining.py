"""replicad.joining: when an unbound replica may take part.  Pure."""

from __future__ import annotations

import pytest

from replicad.joining import Joining

A, B = "aa" * 16, "bb" * 16


def test_a_new_cluster_is_fresh_once_every_other_member_was_seen_empty():
    joining = Joining(1, [1, 2, 3], pulls_needed=1)
    assert not joining.fresh
    joining.peer_seen(2, None, empty=True)
    assert not joining.fresh                       # 3 not seen yet: it may hold data
    joining.peer_seen(3, A, empty=True)            # the first coordinator, no write yet
    assert joining.fresh and not joining.knows_history
    joining.peer_seen(3, A, empty=False)           # it wrote since: still fresh (sticky)
    assert joining.fresh


def test_a_member_with_data_means_a_history_to_copy():
    joining = Joining(3, [1, 2, 3], pulls_needed=2)
    joining.peer_seen(1, A, empty=False)
    assert joining.knows_history and not joining.fresh
    assert joining.pulled(1, A) is None            # quorum mode: 2 copies needed
    assert (joining.copied, joining.has_copied(1), joining.has_copied(2)) == (1, True, False)
    assert joining.pulled(2, A) == A


def test_copies_of_different_clusters_do_not_add_up():
    joining = Joining(3, [1, 2, 3], pulls_needed=2)
    assert joining.pulled(1, A) is None
    assert joining.pulled(2, B) is None


def test_new_cluster_option_and_a_single_replica():
    assert Joining(1, [1, 2, 3], pulls_needed=1, new_cluster=True).fresh
    alone = Joining(1, [1], pulls_needed=1)
    assert alone.fresh and alone.pulls_needed == 0


def test_strangers_are_ignored_and_bounds_checked():
    joining = Joining(1, [1, 2], pulls_needed=1)
    joining.peer_seen(9, None, empty=True)
    assert joining.pulled(9, A) is None and not joining.fresh
    with pytest.raises(ValueError):
        Joining(1, [1, 2, 3], pulls_needed=3)
    assert "--new-cluster" in joining.waiting_for()
