"""The least a Twisted process does to serve replicad's line protocol: bench/ceiling.py's floor.

    python bench/bare_server.py PORT DATA_DIR [--send twisted|turn]

``PING`` -> ``PONG``; ``GET k`` -> ``VALUE v`` or ``NOTFOUND`` from SQLite; ``PUT k v`` ->
``OK`` once durable: the first PUT of a reactor turn opens a transaction, every PUT of
the turn is one ``INSERT OR REPLACE``, and one ``COMMIT`` at the end of the turn (WAL,
``synchronous = FULL``: an fdatasync, as replicad's group commit) answers them all.
Nothing else: one replica, no replication, no clocks, no sessions, no request ids, no
metrics, no errors handled beyond a closed connection.  It runs on replicad's reactor
(``replicad.reactor.EPollReactor``) and, with ``--send turn`` (the default), sends its
replies through ``replicad.turnsend`` as a replica does; ``--send twisted`` uses
Twisted's own ``transport.write``.  Not a product: a yardstick for what replicad's
own code costs on top of Twisted, the kernel and SQLite on this machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from replicad.reactor import EPollReactor  # noqa: E402

_reactor = EPollReactor()
from twisted.internet.main import installReactor  # noqa: E402

installReactor(_reactor)

from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from replicad.turnsend import TurnSendEndpoint, TurnSender  # noqa: E402


class Storage:
    """SQLite, one transaction per reactor turn that wrote."""

    def __init__(self, path: str, clock):
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        self._clock = clock
        self._waiting: list = []      # transports owed an OK at this turn's COMMIT
        self._commit = None

    def put(self, key: str, value: str, transport) -> None:
        if self._commit is None:
            self._db.execute("BEGIN")
            self._commit = self._clock.callLater(0, self._commit_group)
        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        self._waiting.append(transport)

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _commit_group(self) -> None:
        self._commit = None
        self._db.execute("COMMIT")
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            transport.write(b"OK\r\n")


class BareProtocol(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line: bytes) -> None:
        words = line.rstrip(b"\r").decode().split(" ", 2)
        command = words[0].upper()
        if command == "PING":
            self.transport.write(b"PONG\r\n")
        elif command == "GET":
            value = self.factory.storage.get(words[1])
            self.transport.write(b"NOTFOUND\r\n" if value is None
                                 else f"VALUE {value}\r\n".encode())
        elif command == "PUT":
            self.factory.storage.put(words[1], words[2], self.transport)
        else:
            self.transport.write(b"ERR BADCMD\r\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("data_dir")
    parser.add_argument("--send", choices=("twisted", "turn"), default="turn")
    args = parser.parse_args(argv)
    factory = Factory.forProtocol(BareProtocol)
    factory.storage = Storage(os.path.join(args.data_dir, "bare.sqlite3"), _reactor)
    endpoint = TCP4ServerEndpoint(_reactor, args.port, backlog=1024, interface="127.0.0.1")
    if args.send == "turn":
        endpoint = TurnSendEndpoint(endpoint, TurnSender(_reactor))
    endpoint.listen(factory)
    gc.freeze()       # as replicad's tap does once it has started
    _reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
