"""The cluster page in a real headless browser (Debian's chromium, which ``make test``
installs where it can; skipped with a message where it is missing).

How: ``chromium --headless --dump-dom`` with ``--virtual-time-budget`` loads the page,
lets its script run (the budget covers the first fetches of /cluster.json), and prints
the DOM.  The page writes every script error (window ``error`` and
``unhandledrejection`` events, and any exception while rendering) into a hidden
``#errors`` element, which must stay empty; the console is also logged to stderr
(``--enable-logging=stderr``) and must hold no uncaught error.  The cards carry
``data-replica-id``, ``data-role``, ``data-link`` and ``data-coordinator`` for the
assertions; a screenshot is taken as well, to check a picture comes out at all."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser

import pytest

from replicad.client import BlockingClient
from replicad.cluster import LocalCluster, find_free_base_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (make test-deps installs Debian's chromium; "
           "apt-get install chromium): the cluster page's browser test is skipped",
)
VIRTUAL_TIME_BUDGET_MS = 4000
BROWSER_TIMEOUT_S = 90


@pytest.fixture
def cluster(tmp_path):
    cluster = LocalCluster(size=3, base_port=find_free_base_port(3, admin=True),
                           data_dir=str(tmp_path / "cluster"), admin=True)
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=20)
        yield cluster
    finally:
        cluster.stop()


def chromium(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--mute-audio",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr", "--v=0",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *extra, url,
    ]
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=BROWSER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class Page(HTMLParser):
    """What the test looks at in the dumped DOM."""

    def __init__(self, html: str):
        super().__init__()
        self.cards: dict[int, dict[str, str]] = {}
        self.summary: dict[str, str] = {}
        self.errors = ""
        self.timeline: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "article" and "data-replica-id" in attrs:
            self.cards[int(attrs["data-replica-id"])] = attrs
        elif attrs.get("id") == "summary":
            self.summary = attrs
        elif attrs.get("id") == "errors":
            self._in = "errors"
        elif tag == "li" and "data-kind" in attrs:
            self.timeline.append(attrs["data-kind"])

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "errors":
            self.errors += data


def console_errors(stderr: str) -> list[str]:
    """Console messages of the page that report errors (chromium logs the console as
    ``CONSOLE(line)] "message"`` lines with --enable-logging=stderr)."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]


def page_of(tmp_path, cluster: LocalCluster, i: int) -> Page:
    result = chromium(tmp_path, cluster.admin_url(i), "--dump-dom")
    page = Page(result.stdout)
    assert page.errors.strip() == "", f"script errors on the page:\n{page.errors}"
    assert console_errors(result.stderr) == []
    return page


def coordinator_seen_by(cluster: LocalCluster, i: int) -> int | None:
    with urllib.request.urlopen(cluster.admin_url(i, "/cluster.json"), timeout=2) as answer:
        return json.loads(answer.read())["coordinator"]


def test_the_page_shows_the_cluster_and_the_new_coordinator_after_a_kill(tmp_path, cluster):
    coordinator = cluster.wait_ready()
    client = BlockingClient(cluster.addresses(), timeout_s=5)
    for n in range(7):
        client.put(f"key-{n}", f"value {n}")
    watcher = min(cluster.ids)

    page = page_of(tmp_path, cluster, watcher)
    assert sorted(page.cards) == cluster.ids
    marked = [i for i, card in page.cards.items() if card["data-coordinator"] == "true"]
    assert marked == [coordinator]
    assert page.cards[coordinator]["data-role"] == "coordinator"
    assert page.summary["data-id"] == str(coordinator)
    assert all(card["data-link"] in ("up", "self") for card in page.cards.values())
    assert "replica 1" in " ".join(page.text)

    cluster.kill(coordinator)                              # SIGKILL
    new = cluster.wait_ready()
    deadline = time.monotonic() + 20
    while coordinator_seen_by(cluster, watcher) != new:
        assert time.monotonic() < deadline, "the watcher never saw the new coordinator"
        time.sleep(0.1)

    page = page_of(tmp_path, cluster, watcher)
    assert sorted(page.cards) == cluster.ids               # the dead one is still shown
    marked = [i for i, card in page.cards.items() if card["data-coordinator"] == "true"]
    assert marked == [new]
    assert page.summary["data-id"] == str(new)
    assert page.cards[coordinator]["data-link"] == "down"
    assert page.cards[coordinator]["data-role"] == "down"
    assert "failover" in page.timeline

    screenshot = tmp_path / "page.png"
    chromium(tmp_path, cluster.admin_url(watcher), "--window-size=1280,900",
             f"--screenshot={screenshot}")
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_the_page_degrades_well_when_most_replicas_are_down(tmp_path, cluster):
    """Two of three replicas SIGKILLed: the last one's page still shows all three, the
    dead ones as down, and itself as the coordinator (write quorum 1 serves alone)."""
    survivor = min(cluster.ids)
    for i in cluster.ids:
        if i != survivor:
            cluster.kill(i)
    deadline = time.monotonic() + 20
    while coordinator_seen_by(cluster, survivor) != survivor:
        assert time.monotonic() < deadline, "the survivor never took over"
        time.sleep(0.1)
    page = page_of(tmp_path, cluster, survivor)
    assert page.summary["data-id"] == str(survivor)
    assert [i for i, c in page.cards.items() if c["data-link"] == "down"] == [
        i for i in cluster.ids if i != survivor]
    assert page.cards[survivor]["data-coordinator"] == "true"


def test_the_page_keeps_the_last_answer_when_its_replica_stops_answering(tmp_path):
    """The page's own replica dies while someone watches: a stub server answers
    /cluster.json once, then with 503s.  The page keeps the last picture, says since
    when the replica does not answer, and links the other replicas' pages."""
    import http.server
    import threading

    from replicad import admin

    view = {
        "replica": 3, "now": time.time(), "version": "0", "cluster_id": "ab" * 16,
        "write_quorum": "1 (always serviceable)", "mode": "available",
        "follower_reads": True, "role": "coordinator",
        "coordinator": 3, "epoch": 7, "ready": True, "ready_reason": "serving",
        "members": [
            {"id": i, "here": i == 3, "client": f"127.0.0.1:700{i}",
             "peer": f"127.0.0.1:710{i}", "admin": f"127.0.0.1:720{i}",
             "link": "self" if i == 3 else "up", "role": "coordinator" if i == 3
             else "follower", "coordinator": 3, "epoch": 7, "clock": "3:4", "writes": 4,
             "keys": 4, "age_s": 0.2, "lag_writes": 0, "missing_writes": 0}
            for i in (1, 2, 3)
        ],
        "timeline": [{"at": time.time() - 5, "replica": 3, "kind": "serving",
                      "text": "serving as coordinator in epoch 7", "epoch": 7}],
    }
    answered = []

    class Stub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                body, kind, code = admin.page_html(), "text/html; charset=utf-8", 200
            elif self.path.startswith("/cluster.json") and not answered:
                answered.append(self.path)
                body, kind, code = json.dumps(view).encode(), "application/json", 200
            else:
                body, kind, code = b"gone\n", "text/plain", 503
            self.send_response(code)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        result = chromium(tmp_path, url, "--dump-dom")
    finally:
        server.shutdown()
        server.server_close()
    page = Page(result.stdout)
    assert answered and page.errors.strip() == ""
    text = " ".join(page.text)
    assert "Replica 3's admin port does not answer" in text
    assert sorted(page.cards) == [1, 2, 3]                 # the last picture is kept
    assert page.summary["data-id"] == "3"
    assert 'href="http://127.0.0.1:7201/"' in result.stdout    # other replicas' pages
    assert "no answer: HTTP 503" in text
    assert "write quorum 1 (always serviceable) \u00b7 followers answer reads" in text
