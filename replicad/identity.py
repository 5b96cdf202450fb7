"""Cluster ids and write origins: who a history and a replica's writes belong to.

Cluster ids are made once, when a cluster's history begins, and shared by every replica.

A cluster id tells apart two clusters that happen to share a secret (a copied config, a
test cluster next to production): peers compare ids in the handshake and refuse each
other when both are bound and the ids differ.  A replica whose database has never been
part of a cluster history is unbound (None; ``-`` on the wire).

An *origin* numbers a replica's writes: write ids are (origin, seq).  A replica's origin
is its replica id until it joins a history by copying it (a wiped or replaced disk, a
first start beside peers that already hold writes, a restored backup): it then takes a
new one (``new_origin``), because the copy may lack writes it issued under its old
origin that only a peer it cannot reach holds, and numbering on from the copy would
issue their ids again (store.py, ``Store.bind_cluster``).  Pure; no imports of ours.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

CLUSTER_ID_BYTES = 16
UNBOUND_TOKEN = "-"

# New origins are drawn from [FIRST_NEW_ORIGIN, LAST_NEW_ORIGIN]: above any replica id a
# config is likely to hold, 31 bits so that a clock entry stays a short token.
FIRST_NEW_ORIGIN = 2**20
LAST_NEW_ORIGIN = 2**31 - 1

_CLUSTER_ID = re.compile(rf"[0-9a-f]{{{2 * CLUSTER_ID_BYTES}}}")


def new_cluster_id() -> str:
    """A fresh cluster id: 32 lowercase hex digits (128 random bits)."""
    return secrets.token_hex(CLUSTER_ID_BYTES)


def new_origin(taken: Iterable[int]) -> int:
    """A fresh origin for a replica's writes: random (no two replicas can agree on a
    counter they may not reach), never one in ``taken`` (the members' ids, the origins
    of the clock copied)."""
    taken = set(taken)
    while True:
        origin = FIRST_NEW_ORIGIN + secrets.randbelow(LAST_NEW_ORIGIN - FIRST_NEW_ORIGIN + 1)
        if origin not in taken:
            return origin


def is_cluster_id(text: object) -> bool:
    """True for a well-formed cluster id (what new_cluster_id() makes), else False."""
    return isinstance(text, str) and _CLUSTER_ID.fullmatch(text) is not None


def encode_cluster_id(cluster_id: str | None) -> str:
    """The wire token: the id, or ``-`` when unbound."""
    return UNBOUND_TOKEN if cluster_id is None else cluster_id


def decode_cluster_id(token: str) -> str | None:
    """Inverse of encode_cluster_id; ValueError for anything else."""
    if token == UNBOUND_TOKEN:
        return None
    if not is_cluster_id(token):
        raise ValueError(f"bad cluster id {token[:40]!r}: expected 32 lowercase hex digits or -")
    return token
