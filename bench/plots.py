"""PNG plots of a bench/suite.py run, from its JSON results.

    .venv/bin/python bench/plots.py docs/suite/suite.json [--out docs/suite]

matplotlib is imported only here, when a plot is made (``pip install matplotlib`` into
the venv); the suite runs without it and says so.  Three plots:

- ``<section>-connections.png``: ops/s against the number of persistent connections,
  GET and PUT, replicad (3 replicas, wq=1) and Redis (appendfsync always), log scales;
- ``<section>-latency.png``: p50 and p99 latency of the main scenarios, replicad and
  Redis side by side (log scale);
- ``<section>-cluster-size.png``: PUT ops/s (50 connections) against the number of
  replicas for write_quorum 1 and majority, Redis as a line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPLICAD = "R3"
REDIS = "Ra"
LATENCY_SCENARIOS = [("get-1", "GET\n1 conn"), ("get-50", "GET\n50 conns"),
                     ("get-p16", "GET\npipe 16"), ("get-os50", "GET\none-shot"),
                     ("put-1", "PUT\n1 conn"), ("put-50", "PUT\n50 conns"),
                     ("put-p16", "PUT\npipe 16"), ("put-os50", "PUT\none-shot")]


def _cells(data: dict) -> dict[tuple[str, str], dict]:
    return {(c["scenario"], c["target"]): c for c in data["cells"]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(data: dict) -> str:
    return f"{data.get('code', '')}, {data.get('started', '')[:16].replace('T', ' ')}"


def plot_connections(data: dict, path: str) -> bool:
    plt = _pyplot()
    cells = _cells(data)
    labels = data["targets"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    drew = False
    for ax, op in zip(axes, ("get", "put"), strict=True):
        for target, style in ((REPLICAD, "o-"), (REDIS, "s--")):
            points = sorted((c["conns"], cells[(c["key"], target)])
                            for c in data["scenarios"]
                            if c["op"] == op and c["mode"] == "persistent"
                            and c["pipeline"] == 1 and c["via"] == "coordinator"
                            and (c["key"], target) in cells)
            if not points:
                continue
            drew = True
            xs = [p[0] for p in points]
            ys = [p[1]["rate"] for p in points]
            ax.plot(xs, ys, style, label=labels[target]["label"])
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 5),
                            ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("persistent connections")
        ax.set_ylabel("ops/s")
        ax.set_title(f"{op.upper()}: throughput against connections")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(data), fontsize=8)
    fig.tight_layout()
    if drew:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drew


def plot_latency(data: dict, path: str) -> bool:
    plt = _pyplot()
    cells = _cells(data)
    labels = data["targets"]
    present = [(key, name) for key, name in LATENCY_SCENARIOS
               if (key, REPLICAD) in cells or (key, REDIS) in cells]
    if not present:
        return False
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.2
    series = [(REPLICAD, "p50_us", "p50", "#1f77b4", ""), (REPLICAD, "p99_us", "p99",
               "#aec7e8", ""), (REDIS, "p50_us", "p50", "#d62728", ""),
              (REDIS, "p99_us", "p99", "#ff9896", "")]
    for n, (target, field, pname, colour, _) in enumerate(series):
        xs, ys = [], []
        for i, (key, _name) in enumerate(present):
            cell = cells.get((key, target))
            if cell and cell[field] == cell[field] and cell[field] > 0:
                xs.append(i + (n - 1.5) * width)
                ys.append(cell[field] / 1000)
        if target in labels:
            ax.bar(xs, ys, width, color=colour, label=f"{labels[target]['label']} {pname}")
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels([name for _, name in present], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("Latency percentiles (medians over the rounds)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(_title(data), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_cluster_size(data: dict, path: str) -> bool:
    plt = _pyplot()
    cells = _cells(data)
    fig, ax = plt.subplots(figsize=(6, 4))
    drew = False
    for name, keys, style in (("write_quorum = 1", (("R1", 1), ("R3", 3), ("R5", 5)), "o-"),
                              ("write_quorum = majority", (("R1", 1), ("R3m", 3), ("R5m", 5)),
                               "s--")):
        points = [(size, cells[("put-50", k)]["rate"]) for k, size in keys
                  if ("put-50", k) in cells]
        if len(points) < 2:
            continue
        drew = True
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
        for x, y in points:
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7)
    redis = cells.get(("put-50", REDIS))
    if redis:
        ax.axhline(redis["rate"], color="#d62728", linestyle=":",
                   label=f"Redis appendfsync always ({redis['rate']:,.0f})")
    ax.set_xticks([1, 3, 5])
    ax.set_yscale("log")
    ax.set_xlabel("replicas")
    ax.set_ylabel("PUT ops/s, 50 connections (log)")
    ax.set_title("Write rate against cluster size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_title(data), fontsize=8)
    fig.tight_layout()
    if drew:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drew


def make_plots(data: dict, out_dir: str, section: str) -> list[tuple[str, str]]:
    """Write the plots; [(title, path)] of those written.  ImportError without matplotlib."""
    import matplotlib  # noqa: F401  (fail early, before any file is touched)

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for title, suffix, make in (("throughput against connections", "connections",
                                 plot_connections),
                                ("latency percentiles", "latency", plot_latency),
                                ("write rate against cluster size", "cluster-size",
                                 plot_cluster_size)):
        path = os.path.join(out_dir, f"{section}-{suffix}.png")
        if make(data, path):
            written.append((title, path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a JSON file written by bench/suite.py")
    parser.add_argument("--out", help="directory for the PNGs (default: next to the JSON)")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as handle:
        data = json.load(handle)
    out = args.out or os.path.dirname(os.path.abspath(args.results))
    for _title_text, path in make_plots(data, out, data.get("section", "suite")):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
