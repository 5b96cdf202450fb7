"""A timeline of a chaos run: operations ok / failed / unknown per second, faults marked.

matplotlib is imported only when a plot is drawn (``pip install matplotlib``, or the
``chaos`` extra): the runner and the checker work without it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

BIN_S = 1.0
FAULT_COLOURS = {
    "kill": "tab:red", "wipe": "tab:brown", "pause": "tab:purple", "isolate": "tab:orange",
    "split": "tab:olive", "oneway": "tab:cyan", "bridge": "tab:pink", "full": "tab:gray",
    "clock": "tab:green", "slow": "tab:blue", "fsync": "black",
    "eio": "darkred", "eioread": "firebrick", "delete": "saddlebrown",
}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def timeline(events: Iterable[Mapping[str, Any]], bin_s: float = BIN_S,
             lost_ops: Iterable[int] = ()) -> dict[str, Any]:
    """The data of the plot (pure): per bin the completed operations by outcome and the
    acknowledged writes later lost (by when they were acknowledged), the fault spans,
    the heal and convergence times."""
    lost = set(lost_ops)
    counts: dict[str, dict[int, int]] = {o: defaultdict(int)
                                         for o in ("ok", "fail", "unknown", "lost")}
    starts: dict[int, tuple[float, str, str]] = {}
    spans: list[tuple[float, float, str, str]] = []
    run: Mapping[str, Any] = {}
    heal = converged = None
    last = 0.0
    for event in events:
        kind = event.get("type")
        t = float(event.get("t", 0.0))
        last = max(last, t)
        if kind == "run":
            run = event
        elif kind == "complete" and event.get("outcome") in ("ok", "fail", "unknown"):
            counts[event["outcome"]][int(t // bin_s)] += 1
            if event.get("op") in lost:
                counts["lost"][int(t // bin_s)] += 1
        elif kind == "fault" and event.get("phase") == "start":
            label = str(event.get("describe", event.get("kind")))
            targets = event.get("targets") or []
            if "coordinator" in label and targets:
                label = label.replace("coordinator", f"coordinator {targets[0]}")
            starts[int(event.get("index", -1))] = (t, str(event.get("kind")), label)
        elif kind == "fault" and event.get("phase") == "end":
            begun = starts.pop(int(event.get("index", -1)), None)
            if begun is not None:
                spans.append((begun[0], t, begun[1], begun[2]))
        elif kind == "heal":
            heal = t
        elif kind == "converged" and event.get("ok"):
            converged = t
    for begun_t, fault_kind, label in starts.values():
        spans.append((begun_t, heal if heal is not None else last, fault_kind, label))
    bins = int(last // bin_s) + 1
    series = {o: [c.get(b, 0) for b in range(bins)] for o, c in counts.items()}
    return {"run": dict(run), "bin_s": bin_s, "times": [b * bin_s for b in range(bins)],
            "series": series, "spans": sorted(spans), "heal": heal, "converged": converged}


def plot(events: Iterable[Mapping[str, Any]], path: str, title: str | None = None,
         lost_ops: Iterable[int] = ()) -> str:
    """Draw the timeline into path (PNG); PlotUnavailable without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed (pip install matplotlib)") from None
    data = timeline(events, lost_ops=lost_ops)
    run = data["run"]
    fig, ax = plt.subplots(figsize=(12, 5), dpi=110)
    times, series = data["times"], data["series"]
    width = data["bin_s"]
    ax.bar(times, series["ok"], width=width, align="edge", color="tab:green", label="ok",
           zorder=2)
    ax.bar(times, series["fail"], width=width, align="edge", bottom=series["ok"],
           color="tab:gray", label="failed (nothing done)", zorder=2)
    stacked = [a + b for a, b in zip(series["ok"], series["fail"], strict=True)]
    ax.bar(times, series["unknown"], width=width, align="edge", bottom=stacked,
           color="black", label="unknown (in doubt)", zorder=2)
    if any(series["lost"]):
        ax.bar(times, series["lost"], width=width, align="edge", color="tab:red",
               label="acknowledged, later lost", zorder=3)
    top = max([a + b for a, b in zip(stacked, series["unknown"], strict=True)] or [1])
    seen = set()
    for start, end, kind, label in data["spans"]:
        colour = FAULT_COLOURS.get(kind, "tab:blue")
        ax.axvspan(start, end, color=colour, alpha=0.18, zorder=0,
                   label=None if kind in seen else f"fault: {kind}")
        seen.add(kind)
        ax.text(start, top * 1.02, label.split(" for ")[0], rotation=90, fontsize=6,
                va="bottom", ha="left")
    if data["heal"] is not None:
        ax.axvline(data["heal"], color="tab:blue", linestyle="--", linewidth=1,
                   label="final heal")
    if data["converged"] is not None:
        ax.axvline(data["converged"], color="tab:green", linestyle=":", linewidth=1.5,
                   label="converged")
    ax.set_ylim(0, top * 1.35)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel(f"operations completed per {width:g} s")
    ax.set_title(title or (f"replicad chaos run: write_quorum {run.get('write_quorum')}, "
                           f"{run.get('replicas')} replicas, {run.get('clients')} clients, "
                           f"seed {run.get('seed')}"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, ncol=7,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
