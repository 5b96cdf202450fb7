"""The history of a chaos run: one JSON object per line, written as things happen.

Every event has ``type`` and ``t`` (seconds since the run started, monotonic clock).
The checker (replicad/chaos/checker.py) reads nothing else, so this is the contract:

``run``
    First line: ``seed``, ``duration_s``, ``replicas``, ``clients``, ``write_quorum``
    (``"1"`` or ``"majority"``), ``faults`` (kinds), ``keys``, ``started`` (wall clock,
    ISO 8601), ``version`` (replicad's), ``schedule`` (the faults planned).
``invoke``
    A client operation begins: ``op`` (id, unique in the run), ``session`` (name,
    unique in the run), ``client`` (the thread), ``kind`` (``put``, ``get``, ``del``),
    ``key``, ``value`` (put only: unique in the run, so a value names its write),
    ``rid`` (the request id the session sent with a write, when it sends one).
``complete``
    The operation ended: ``op``, ``outcome`` (``ok``; ``fail``: certainly not applied;
    ``unknown``: a write that may or may not have been applied), ``status`` (the
    reply: ``OK``, ``VALUE``, ``NOTFOUND`` or the error code), ``value`` (what a get
    read; None for NOTFOUND), ``vc`` (the reply's ``vc``: a write's version vector, or
    the serving replica's clock for a get and for a del answered NOTFOUND, which wrote
    nothing), ``by`` (the coordinator that served: the write's origin, or the replica
    whose ``origin`` it is after a wipe), ``epoch``,
    ``address`` (the server that answered), ``error`` (text, for fail and unknown).
``fault``
    ``phase`` ``start`` or ``end``, ``index``, ``kind``, ``describe``, ``targets`` (ids
    resolved when it started), ``error`` (if carrying it out failed).
``heal``
    After the last fault: everything healed, continued and restarted (``restarted``).
``converged``
    ``ok`` (every replica answers with the same clock and coordinator), ``seconds``
    since the heal, ``clock``.
``final``
    One per replica, after convergence: ``replica``, ``status`` (STATUS fields:
    ``clock``, ``conflicts``, ``epoch``, ``role``, ``coordinator``, ``cluster_id``,
    ``origin``: the origin of its writes, its id unless it rejoined), ``gets`` (key ->
    value or None, GET through that replica), ``get_errors``, ``records`` (its database:
    key -> ``value``, ``origin``, ``seq``, ``version``, ``epoch``, ``rid``),
    ``requests`` (request id -> ``[origin, seq, version]``: the writes it remembers;
    ``[origin, seq, version, "noop"]`` for a request that changed nothing, a DEL of a
    missing key kept as a no-op marker; ``[0, 0, "-"]`` for one kept before markers),
    ``clock`` (from its database), ``error`` (if the database could not be read).
``log``
    Evidence from a replica's log after the run: ``kind`` ``replay`` (a write answered
    from the request-id memory: ``rid``, ``write`` ``[origin, seq]``) or ``conflicts``
    (a pull met concurrent versions: ``n``, ``peer``, ``keys``); ``when`` (its time).
``crash``
    A replica exited although no fault stopped it: ``replica``, ``exit``, ``log_tail``.
``end``
    Last line: ``ops``, ``wall_s``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any


class HistoryError(ValueError):
    """A history file that cannot be read; the message names the line."""


class HistoryWriter:
    """Appends events to a JSON-lines file from any thread; stamps ``t``."""

    def __init__(self, path: str, clock=time.monotonic):
        self.path = path
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")

    def now(self) -> float:
        """Seconds since the history began."""
        return round(self._clock() - self._t0, 6)

    def write(self, event: dict[str, Any], t: float | None = None) -> dict[str, Any]:
        stamped = {"type": event["type"], "t": self.now() if t is None else t}
        stamped.update((k, v) for k, v in event.items() if k != "type")
        line = json.dumps(stamped, separators=(",", ":"), sort_keys=False)
        with self._lock:
            if self._file is None:
                raise ValueError(f"history {self.path} is closed")
            self._file.write(line + "\n")
            self._file.flush()
        return stamped

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_lines(lines: Iterable[str], name: str = "history") -> Iterator[dict[str, Any]]:
    """Events from JSON lines.  A torn last line (the runner was killed mid-write) is
    skipped; a bad line elsewhere is a HistoryError."""
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if pending is not None:
            raise HistoryError(f"{name}:{pending[0]}: not a JSON object: {pending[1][:80]!r}")
        text = line.strip()
        if not text:
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            pending = (number, text)
            continue
        if not isinstance(event, dict) or "type" not in event:
            raise HistoryError(f"{name}:{number}: an event needs a 'type': {text[:80]!r}")
        yield event


def read_history(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return list(parse_lines(handle, path))
