"""A narrated failover walkthrough on a running LocalCluster (``replicad-local --demo``).

It shows, step by step, what DESIGN.md promises: any replica answers (forwarding writes
to the coordinator, answering reads the coordinator confirmed), the highest live id
coordinates, a SIGKILLed coordinator is replaced quickly, and a replica that comes back
takes over again (Bully) in a higher epoch with every key. One session is used
throughout, so every read also checks the session guarantees. Printing is the point
here, so this module prints. It imports replicad.cluster; only replicad/local.py imports
it (cluster never does).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from replicad.client import (
    BlockingClient,
    ClientError,
    build_request,
    get_result,
    put_result,
)
from replicad.cluster import ClusterError, LocalCluster
from replicad.session import ClientSession
from replicad.wire import Reply

FAILOVER_DEADLINE_S = 20.0
TAKEOVER_DEADLINE_S = 30.0
KEYS = {"city": "Paris", "river": "Seine", "greeting": "hello world"}


class DemoError(Exception):
    """A step did not turn out as promised; the message names the step."""


def run(cluster: LocalCluster, out: TextIO = sys.stdout) -> None:
    """Walk through the demo on a ready cluster; DemoError if any step fails."""
    _Demo(cluster, out).run()


class _Demo:
    def __init__(self, cluster: LocalCluster, out: TextIO):
        self.cluster = cluster
        self.out = out
        self.session = ClientSession()
        self.expected = dict(KEYS)

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.say(f"==> {title}")
        try:
            yield
        except DemoError:
            raise
        except (ClientError, ClusterError, TimeoutError, OSError) as e:
            raise DemoError(f"{title}: {e}") from None

    def client(self, *ids: int, timeout_s: float = 5.0) -> BlockingClient:
        servers = [self.cluster.address(i) for i in (ids or self.cluster.ids)]
        return BlockingClient(servers, timeout_s=timeout_s, session=self.session,
                              password=self.cluster.password)

    def run(self) -> None:
        cluster = self.cluster
        if cluster.size < 2:
            raise DemoError("the demo needs at least 2 replicas (--size 2 or more)")
        coordinator = cluster.wait_ready()
        others = [i for i in cluster.live_ids() if i != coordinator]
        entry, reader = others[0], others[-1]

        with self.step(f"writing {len(KEYS)} keys through replica {entry} "
                       f"({cluster.address(entry)}), which forwards to the coordinator"):
            client = self.client(entry)
            for key, value in KEYS.items():
                reply, _ = client.exchange(build_request("PUT", key, value))
                put_result(reply, cluster.address(entry))
                self.say(f"    PUT {key} {value!r}: OK ({_served(reply)})")

        with self.step(f"reading them back through replica {reader} "
                       f"({cluster.address(reader)}), which answers once the coordinator "
                       "confirms what it committed"):
            self.check_keys(self.client(reader))

        with self.step("STATUS of every replica"):
            epoch = self.show_statuses()

        with self.step(f"SIGKILL the coordinator, replica {coordinator}, and write again"):
            cluster.kill(coordinator)
            self.say(f"    replica {coordinator} killed; writing through any live replica...")
            elapsed, tries = self.write_until_accepted(
                "after-failover", f"written while replica {coordinator} was down"
            )
            self.say(f"    a write succeeded again {elapsed * 1000:.0f} ms after the kill "
                     f"({tries} {'try' if tries == 1 else 'tries'})")
            new = cluster.wait_ready()
            status = cluster.status(new) or {}
            self.say(f"    replica {new} is the coordinator now "
                     f"(epoch {status.get('epoch')}, was {epoch})")
            if new == coordinator:
                raise DemoError("the killed replica is still named coordinator")

        with self.step("reading every key through the remaining replicas"):
            self.check_keys(self.client(*cluster.live_ids()))

        with self.step(f"restarting replica {coordinator}; the highest id takes over again"):
            before = (cluster.status(new) or {}).get("epoch") or 0
            started = time.monotonic()
            cluster.start_replica(coordinator)
            cluster.wait_until(
                lambda: self.took_over(coordinator, before), TAKEOVER_DEADLINE_S,
                what=f"replica {coordinator} to become coordinator in an epoch above {before}",
            )
            status = cluster.status(coordinator) or {}
            self.say(f"    replica {coordinator} is coordinator again after "
                     f"{(time.monotonic() - started) * 1000:.0f} ms, epoch {status.get('epoch')} "
                     f"(was {before})")

        with self.step(f"reading every key through replica {coordinator}"):
            self.check_keys(self.client(coordinator))
            status = cluster.status(coordinator) or {}
            self.say(f"    its clock is {_clock(status.get('clock'))}, "
                     f"{status.get('keys')} keys")

        self.say("==> done: every step behaved as promised")

    def check_keys(self, client: BlockingClient) -> None:
        for key, value in self.expected.items():
            reply, address = client.exchange(build_request("GET", key))
            got = get_result(reply, address)
            if got != value:
                raise DemoError(f"GET {key} gave {got!r} (from {address}), expected {value!r}")
            self.say(f"    GET {key} -> {got!r} ({_served(reply)})")

    def show_statuses(self) -> int:
        epoch = 0
        for i in self.cluster.ids:
            status = self.cluster.status(i)
            if status is None:
                self.say(f"    replica {i}: not answering")
                continue
            epoch = max(epoch, status["epoch"] if isinstance(status["epoch"], int) else 0)
            self.say(f"    replica {i}: {status['role']}, coordinator {status['coordinator']}, "
                     f"epoch {status['epoch']}, clock {_clock(status['clock'])}, "
                     f"{status['keys']} keys, peers {_clock(status['peers'])}")
        return epoch

    def write_until_accepted(self, key: str, value: str) -> tuple[float, int]:
        """Time from now until a PUT is acknowledged, retrying whatever went wrong
        (the value is the same each time, so a write that did land is harmless)."""
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                self.client(timeout_s=2.0).put(key, value)
            except ClientError as e:
                if time.monotonic() - started > FAILOVER_DEADLINE_S:
                    raise DemoError(f"no write succeeded within {FAILOVER_DEADLINE_S:g} s "
                                    f"after the kill; last error: {e}") from None
                self.say(f"    not yet: {e}")
                continue
            self.expected[key] = value
            return time.monotonic() - started, tries

    def took_over(self, replica: int, epoch_before: int) -> bool:
        statuses = self.cluster.statuses(0.5)
        mine = statuses.get(replica)
        if mine is None or not isinstance(mine["epoch"], int) or mine["epoch"] <= epoch_before:
            return False
        return all(s is not None and s["coordinator"] == replica for s in statuses.values())


def _served(reply: Reply) -> str:
    meta = reply.meta
    if meta is None:
        return "no meta in the reply"
    if meta.here is not None and meta.here != meta.by:
        return f"reached replica {meta.here}, executed by replica {meta.by}"
    return f"executed by replica {meta.by}"


def _clock(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)

