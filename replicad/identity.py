"""Cluster ids: made once, when a cluster's history begins, and shared by every replica.

A cluster id tells apart two clusters that happen to share a secret (a copied config, a
test cluster next to production): peers compare ids in the handshake and refuse each
other when both are bound and the ids differ.  A replica whose database has never been
part of a cluster history is unbound (None; ``-`` on the wire).  Pure; no imports of ours.
"""

from __future__ import annotations

import re
import secrets

CLUSTER_ID_BYTES = 16
UNBOUND_TOKEN = "-"

_CLUSTER_ID = re.compile(rf"[0-9a-f]{{{2 * CLUSTER_ID_BYTES}}}")


def new_cluster_id() -> str:
    """A fresh cluster id: 32 lowercase hex digits (128 random bits)."""
    return secrets.token_hex(CLUSTER_ID_BYTES)


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
