"""Plots of a finished run, regenerated from the files in its run directory.

probe_accuracy.png  probe accuracy over time: every agent (thin), swarm mean with sharing,
                    and the isolated baseline (dashed)
bytes.png           cumulative bytes sent by the swarm, and the dense-fp32 equivalent
trajectories.png    map of the patrol area with zones, river, cruise points, every
                    drone's path, the events by kind (layout.json "events") and where
                    departed drones landed
team_return.png     (worlds with rewards) team return per episode and policy entropy, and
                    each agent group's return per agent (`rl/return/<group>`) where the
                    world has two or more groups (predators and prey apart)
knowledge_spread.png  per event kind, the fraction of agents that recognise it over time
graph.png           the gossip graph (graph.json), nodes coloured by shard
report.html         all of the above and the final figures in one self-contained page
replay.gif          (`swarm report` only, write_replay) the run animated: the map, the events
                    alive at each tick and the drones coloured by the event kinds they
                    recognise (probe accuracy on runs from before that figure)
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from swarm.records import JSON, Document, Row, as_doc, as_int, as_list, as_number, as_str

if TYPE_CHECKING:  # matplotlib itself is imported lazily (see _pyplot)
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.typing import ColorType
    from PIL.Image import Image


def read_rows(run_dir: Path) -> list[Row]:
    with open(run_dir / "metrics.jsonl") as fh:
        return [Row.from_json(as_doc(json.loads(line))) for line in fh if line.strip()]


def _read_doc(path: Path) -> Document:
    """A JSON document of the run directory (an object at the top)."""
    return as_doc(json.loads(path.read_text()))


@dataclass(frozen=True)
class _Event:
    """One event of layout.json's "events" (the world's ``event_log()``), as drawn."""

    point: int  # index into the cruise points
    kind: str
    appear_tick: int
    clear_tick: int  # first tick at which it is gone (planned)

    @classmethod
    def from_json(cls, doc: Document) -> _Event:
        return cls(
            point=as_int(doc["point"]),
            kind=as_str(doc["kind"]),
            appear_tick=as_int(doc["appear_tick"]),
            clear_tick=as_int(doc["clear_tick"]),
        )


def _pyplot():
    # lazy: matplotlib takes ~0.4 s to import, and a device node ships without it (build_node)
    import matplotlib

    matplotlib.use("Agg")  # no screen here, and none needed
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[Row], out: Path) -> None:
    plt = _pyplot()
    t = np.array([r.sim_time_s for r in rows])
    per_agent = np.array([r.agents["learn/probe_acc"] for r in rows])  # (R, N)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.fill_between(t, per_agent.min(1), per_agent.max(1), color="tab:blue", alpha=0.15,
                    label="sharing (range over agents)")  # fmt: skip
    ax.plot(t, per_agent, color="tab:blue", alpha=0.18, linewidth=0.8)
    ax.plot(t, per_agent.mean(1), color="tab:blue", linewidth=2.2, label="sharing (mean)")
    iso_agents = [r.agents.get("learn/probe_acc_isolated") for r in rows]
    if all(a is not None for a in iso_agents):
        iso_a = np.array(iso_agents)  # (R, N)
        ax.fill_between(t, iso_a.min(1), iso_a.max(1), color="tab:red", alpha=0.10,
                        label="isolated (range over agents)")  # fmt: skip
    iso = np.array([r.figures["learn/probe_acc_isolated"] for r in rows])
    ax.plot(t, iso, color="tab:red", linestyle="--", linewidth=2, label="isolated (mean)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("probe accuracy (balanced over event classes)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("What the swarm knows: probe accuracy per agent")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


#: A group's return in the rows: `rl/return/<group>` (envs/pz_world.py).
GROUP_RETURN = "rl/return/"


def plot_returns(rows: list[Row], out: Path) -> None:
    """Team return of the episodes finished in each metrics interval, each agent group's
    return per agent (worlds of two or more groups), and the policy entropy."""
    plt = _pyplot()
    pts = [
        (r.sim_time_s, r.figures["rl/team_return"])
        for r in rows
        if r.get("rl/team_return") is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if pts:
        t, ret = np.array(pts).T
        ax.plot(t, ret, "o-", color="tab:blue", linewidth=1.8, markersize=3,
                label="team return (episodes ending in the interval)")  # fmt: skip
    groups = sorted({k for r in rows for k in r.figures if k.startswith(GROUP_RETURN)})
    for key in groups:
        curve = [(r.sim_time_s, r.figures[key]) for r in rows if r.get(key) is not None]
        if curve:
            tg, rg = np.array(curve).T
            ax.plot(tg, rg, "s--", linewidth=1.2, markersize=2.5,
                    label=f"{key[len(GROUP_RETURN):]}: return per agent")  # fmt: skip
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("team return per episode (mean per agent)")
    ax.grid(alpha=0.3)
    ent = [(r.sim_time_s, r.figures["rl/entropy"]) for r in rows if r.get("rl/entropy") is not None]
    if ent:
        ax2 = ax.twinx()
        te, e = np.array(ent).T
        ax2.plot(te, e, color="tab:gray", linestyle="--", linewidth=1.2, label="policy entropy")
        ax2.set_ylabel("policy entropy (nats)")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title("What the swarm learned: team return over the run")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_bytes(rows: list[Row], out: Path) -> None:
    plt = _pyplot()
    t = np.array([r.sim_time_s for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    sent = np.array([r.figures["gossip/bytes_sent"] for r in rows]) / 2**20
    dense = np.array([r.figures["gossip/dense_bytes"] for r in rows]) / 2**20
    ax.plot(t, sent, linewidth=2.2, label="sent (compressed deltas)")
    ax.plot(t, dense, linestyle="--", linewidth=1.5, label="dense fp32 equivalent")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("cumulative MiB, whole swarm")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Knowledge exchange traffic")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


#: (marker, colour) of each event kind on the map; the colours follow the physics markers.
_EVENT_STYLE: dict[str, tuple[str, str]] = {
    "fire": ("*", "#ff5a00"),
    "garbage_overflow": ("s", "#8c5a2b"),
    "river_garbage": ("D", "#2a9d8f"),
    "altitude_limit_sign": ("v", "#d62728"),
}
_SPARE_MARKERS = ("o", "p", "h", "<", ">")
#: A drone whose last recorded altitude is below this is drawn as landed (its body is 3 cm tall).
LANDED_Z_M = 0.3
#: Event markers sit on a ring around their cruise point, one angle per kind, so kinds that share
#: a point stay apart and off the point's own marker: radius as a fraction of the area side
#: (4 m on the default 160 m map, about two marker widths at this figure size).
_EVENT_RING = 0.025


def plot_trajectories(trajectory: np.ndarray, layout: Document, out: Path) -> None:
    """Map of the run: zones (shaded, named), river, every drone's path (a dot at its start),
    cruise points, the events at their cruise points and the landing spots of drones that ended
    on the ground.

    ``trajectory`` (T, N, 3) metres; ``layout`` the world's ``layout()``, optionally with
    ``events`` (the world's ``event_log()``: id, point, zone, kind, appear_tick, clear_tick).
    Each event kind has its own marker and colour, placed on a small ring around its cruise
    point; marker area grows with how long the event lasted (planned clearing, clipped to the
    recorded run) and markers are translucent, so a point that hosted many events reads darker.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 7.5), dpi=110)  # room on the right for the legend
    _draw_zones(ax, layout)
    traj = np.asarray(trajectory, dtype=float)  # (T, N, 3)
    cmap = plt.get_cmap("tab10")
    _draw_paths(ax, traj, cmap)
    xy = _draw_points(ax, layout)  # (P, 2)
    events = _logged_events(layout, len(xy))
    handles = _draw_events(ax, events, xy, traj.shape[0], layout, cmap) if events else []
    if traj.shape[0]:
        _draw_landed(ax, traj[-1])
    _frame_map(ax, layout, handles, len(events))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _draw_zones(ax: Axes, layout: Document) -> None:
    """The zones of the map (shaded rectangles, named) and the river."""
    from matplotlib.patches import Rectangle  # lazy, as matplotlib itself (see _pyplot)

    colors = {"forest": "#cfe8c4", "city": "#e0e0e0", "river": "#cfe3f5", "industrial": "#f3e0c8"}
    for zone in map(as_doc, as_list(layout.get("zones", []))):
        x0, y0, x1, y1 = (as_number(v) for v in as_list(zone["rect"]))
        name = as_str(zone["name"])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color=colors.get(name, "#eeeeee")))
        ax.text(x0 + 2, y1 - 6, name, fontsize=9, color="#555555")
    river = np.asarray(layout.get("river", []), dtype=float)
    if river.size:
        ax.plot(river[:, 0], river[:, 1], color="#3b7dd8", linewidth=4, alpha=0.6, label="river")


def _draw_points(ax: Axes, layout: Document, size: float = 60) -> np.ndarray:
    """The cruise points (black triangles); returns where they are, (P, 2) m."""
    points = [as_doc(p) for p in as_list(layout.get("cruise_points", []))]
    xy = np.array([[as_number(p["x"]), as_number(p["y"])] for p in points]).reshape(-1, 2)
    if len(points):
        ax.scatter(
            xy[:, 0], xy[:, 1], marker="^", s=size, color="black", zorder=5, label="cruise points"
        )
    return xy


def _logged_events(layout: Document, n_points: int) -> list[_Event]:
    """layout.json's "events" that sit on one of its ``n_points`` cruise points."""
    logged = [as_doc(e) for e in as_list(layout.get("events", []))]
    return [_Event.from_json(e) for e in logged if 0 <= as_int(e["point"]) < n_points]


def _draw_paths(ax: Axes, traj: np.ndarray, cmap: Colormap) -> None:
    """Every drone's path (T, N, 3), one colour each, with a dot where it started."""
    for n in range(traj.shape[1]):
        c = cmap(n % 10)
        ax.plot(traj[:, n, 0], traj[:, n, 1], linewidth=0.9, alpha=0.8, color=c)
        ax.plot(traj[0, n, 0], traj[0, n, 1], "o", markersize=3, color=c)


def _draw_events(
    ax: Axes,
    events: list[_Event],
    xy: np.ndarray,
    ticks: int,
    layout: Document,
    cmap: Colormap,
) -> list[Artist]:
    """The events, one marker per kind on a ring around its cruise point (``xy`` (P, 2)), area
    by how long it lasted within the ``ticks`` recorded; returns the legend handles."""
    from matplotlib.lines import Line2D  # lazy, as matplotlib itself (see _pyplot)

    handles: list[Artist] = []
    kinds = _event_kinds(events)
    last_tick = max(ticks - 1, 1)  # the trajectory has one row per tick
    life = np.array([min(e.clear_tick, last_tick) - e.appear_tick for e in events], dtype=float)
    size = 25 + 125 * np.clip(life, 1, None) / max(life.max(), 1.0)  # marker area, pt^2
    for j, kind in enumerate(kinds):
        marker, color = _kind_style(j, kind, cmap)
        mine = [i for i, e in enumerate(events) if e.kind == kind]
        at = xy[[events[i].point for i in mine]] + _ring_offset(j, len(kinds), layout)  # (E, 2)
        ax.scatter(
            at[:, 0],
            at[:, 1],
            marker=marker,
            s=size[mine],
            color=color,
            alpha=0.35,
            edgecolors="none",
            zorder=6,
        )
        label = f"{kind.replace('_', ' ')} ({len(mine)})"
        handles.append(
            Line2D([], [], marker=marker, linestyle="", color=color, markersize=8, label=label)
        )
    return handles


def _event_kinds(events: list[_Event]) -> list[str]:
    """The kinds among ``events``, the known ones first, in the order the map draws them."""
    return sorted({e.kind for e in events}, key=lambda k: (k not in _EVENT_STYLE, k))


def _kind_style(j: int, kind: str, cmap: Colormap) -> tuple[str, ColorType]:
    """(marker, colour) of the ``j``-th event kind drawn; a kind without a style gets spares."""
    spare = _SPARE_MARKERS[j % len(_SPARE_MARKERS)]
    return _EVENT_STYLE.get(kind, (spare, cmap((j + 3) % 10)))


def _ring_offset(j: int, n_kinds: int, layout: Document) -> np.ndarray:
    """Where the ``j``-th of ``n_kinds`` event kinds sits relative to its cruise point, (2,) m."""
    angle = 2 * np.pi * j / n_kinds + np.pi / 4
    ring = _EVENT_RING * float(as_number(layout.get("area_m", 160.0)))
    return ring * np.array([np.cos(angle), np.sin(angle)])


def _draw_landed(ax: Axes, end: np.ndarray) -> None:
    """A cross, named, where a drone ended on the ground (last positions ``end`` (N, 3))."""
    down = np.flatnonzero(end[:, 2] < LANDED_Z_M)
    if down.size:
        ax.scatter(
            end[down, 0],
            end[down, 1],
            marker="X",
            s=90,
            color="black",
            edgecolors="white",
            zorder=7,
            label="landed (departed)",
        )
        for d in down.tolist():
            ax.annotate(
                f"drone_{d}",
                (end[d, 0], end[d, 1]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
            )


def _frame_map(ax: Axes, layout: Document, handles: list[Artist], n_events: int) -> None:
    """The map's extent, axes, legend (what was drawn, then ``handles``) and title."""
    side = layout.get("area_m")
    if side:
        area = as_number(side)
        lo = -area / 2 if layout.get("origin") == "centre" else 0.0
        ax.set_xlim(lo, lo + area)
        ax.set_ylim(lo, lo + area)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    base, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*base, *handles], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    title = "Patrol map: trajectories"
    if n_events:
        title += f", {n_events} events (marker size = duration)"
    ax.set_title(title)


def plot_spread(rows: list[Row], summary: Document, out: Path) -> bool:
    """Knowledge spread: for every event kind, the fraction of agents that recognise it (probe
    accuracy on that kind >= 0.5) over time, with the time of its first label anywhere. False
    (nothing drawn) for a run without those figures."""
    keys = sorted({k for r in rows for k in r.figures if k.startswith("learn/recognised/")})
    if not keys:
        return False
    plt = _pyplot()
    m = as_doc(summary.get("metrics", {}))
    t = np.array([r.sim_time_s for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10")
    for j, key in enumerate(keys):
        kind = key.rsplit("/", 1)[1]
        frac = np.array([r.figures.get(key, np.nan) for r in rows], dtype=float)
        spread = m.get(f"learn/spread_s/{kind}")
        label = kind.replace("_", " ")
        label += f" (90% after {spread:.0f} s)" if spread is not None else " (90% not reached)"
        ax.plot(t, frac, color=cmap(j % 10), linewidth=2, label=label)
        first = m.get(f"learn/first_label_s/{kind}")
        if first is not None:
            ax.axvline(first, color=cmap(j % 10), linestyle=":", linewidth=1)
    ax.axhline(0.9, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("simulated time (s); dotted: the kind's first label anywhere")
    ax.set_ylabel("fraction of agents that recognise it")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Knowledge spread: who recognises each event kind")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def plot_graph(graph: Document, out: Path) -> None:
    """The gossip graph (graph.json: nodes, edges, shard of each node), drawn with networkx."""
    plt = _pyplot()
    g = nx.Graph()
    g.add_nodes_from(range(as_int(graph["nodes"])))
    g.add_edges_from((as_int(a), as_int(b)) for a, b in map(as_list, as_list(graph["edges"])))
    shard = [as_int(s) for s in as_list(graph.get("shard_of", [0] * g.number_of_nodes()))]
    pos = (
        nx.circular_layout(g)
        if graph.get("kind") in ("ring", "complete", "star")
        else (nx.spring_layout(g, seed=0))
    )
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    cmap = plt.get_cmap("tab10")
    nx.draw_networkx_edges(g, pos, ax=ax, alpha=0.5)
    for s in sorted(set(shard)):
        nodes = [n for n in g.nodes if shard[n] == s]
        color, label = (("white", "device (swarm-node)") if s < 0
                        else (cmap(s % 10), f"shard {s}"))  # fmt: skip
        nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=[color], ax=ax, node_size=260,
                               edgecolors="black", label=label)  # fmt: skip
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=8)
    rho = graph.get("rho")
    ax.set_title(f"Gossip graph: {graph.get('kind', '?')}, {g.number_of_edges()} edges"
                 + (f", rho = {rho:.3f}" if rho is not None else ""))  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_html(run_dir: Path, images: list[Path]) -> Path:
    """report.html: the summary table and every plot, self-contained (images inlined)."""
    summary_file = run_dir / "summary.json"
    summary = _read_doc(summary_file) if summary_file.exists() else {}
    m = as_doc(summary.get("metrics", {}))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(m.items())
    )
    figs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
        if p.exists()
    )
    run = as_doc(summary.get("run", {}))
    title = html.escape(
        f"{summary.get('scenario', run_dir.name)}: {summary.get('agents', '?')} agents, "
        f"{summary.get('topology', '?')} ({summary.get('mode', '?')})"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td{{border-bottom:1px solid #ddd;padding:2px 8px}}
td:last-child{{text-align:right;font-family:monospace}}img{{max-width:100%}}</style></head>
<body><h1>{title}</h1>
<p>Run directory <code>{html.escape(str(run_dir))}</code>; wall time {_fmt(run.get("wall_s"))} s,
{_fmt(run.get("real_time_factor"))}x real time. Figures are the final values of the run
(metrics.jsonl holds every interval).</p>
{figs}
<h2>Final figures</h2><table>{rows}</table></body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _fmt(v: JSON) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


def write_plots(run_dir: Path) -> list[Path]:
    """(Re)draw every plot of a run directory; returns the files written."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    if any("rl/team_return" in r.figures for r in rows):  # a world with rewards
        written = [run_dir / "team_return.png", run_dir / "bytes.png"]
        plot_returns(rows, written[0])
    else:
        written = [run_dir / "probe_accuracy.png", run_dir / "bytes.png"]
        plot_accuracy(rows, written[0])
    plot_bytes(rows, written[1])
    traj_file, layout_file = run_dir / "trajectory.npy", run_dir / "layout.json"
    if traj_file.exists() and layout_file.exists():
        out = run_dir / "trajectories.png"
        plot_trajectories(np.load(traj_file), _read_doc(layout_file), out)
        written.append(out)
    summary_file = run_dir / "summary.json"
    summary = _read_doc(summary_file) if summary_file.exists() else {}
    if plot_spread(rows, summary, run_dir / "knowledge_spread.png"):
        written.append(run_dir / "knowledge_spread.png")
    graph_file = run_dir / "graph.json"
    if graph_file.exists():
        plot_graph(_read_doc(graph_file), run_dir / "graph.png")
        written.append(run_dir / "graph.png")
    written.append(write_html(run_dir, written))
    return written


# The replay: replay.gif, an animation of the run, written by `swarm report` only (drawing it
# takes seconds, so a run's own write_plots leaves it out and its wall time stays as it was).

#: The per-agent figure the replay colours drones by: the event kinds each agent recognises.
KINDS_RECOGNISED = "learn/kinds_recognised"
#: About this many frames by default, at REPLAY_FPS: a 600-tick run shows every 5th tick and
#: plays in 12 s; a longer run skips more ticks rather than growing the file.
REPLAY_FRAMES = 120
REPLAY_FPS = 10
#: 7.2 x 5.2 in at 80 dpi is 576 x 416 px: the map stays readable, and 120 frames of it make a
#: GIF of about 1.5 MB (each frame keeps its own 256-colour palette).
_REPLAY_SIZE_IN = (7.2, 5.2)
_REPLAY_DPI = 80
_UNMEASURED = (0.85, 0.85, 0.85, 1.0)  # a drone before the first metrics row: light grey
_GROUNDED_EDGE = (0.45, 0.45, 0.45, 1.0)  # a drone on the ground: hollow, grey ring
_CLEAR = (0.0, 0.0, 0.0, 0.0)


class ReplayUnavailable(Exception):
    """The run directory holds nothing a replay can show (no map, no trajectory); the message
    says what is missing."""


def replay_step(n_ticks: int, frames: int = REPLAY_FRAMES) -> int:
    """The default tick step: about ``frames`` frames over the ``n_ticks`` recorded."""
    return max(1, -(-(n_ticks - 1) // frames))  # ceil((n_ticks - 1) / frames)


def replay_ticks(n_ticks: int, step: int) -> list[int]:
    """The ticks the replay shows: every ``step``-th of the ``n_ticks`` trajectory rows, from 0,
    and always the last one (the run's end)."""
    if n_ticks < 1 or step < 1:
        raise ValueError(f"need n_ticks >= 1 and step >= 1, got {n_ticks} and {step}")
    ticks = list(range(0, n_ticks, step))
    if ticks[-1] != n_ticks - 1:
        ticks.append(n_ticks - 1)
    return ticks


@dataclass(frozen=True)
class Knowledge:
    """What each agent knows at each metrics row, as the replay colours it: the event kinds it
    recognises (``learn/kinds_recognised``), or, for runs written before that figure existed,
    its balanced probe accuracy (``learn/probe_acc``)."""

    ticks: np.ndarray  # (R,) the rows' ticks, ascending
    per_agent: np.ndarray  # (R, N) kinds recognised or probe accuracy; NaN: not measured
    mean_acc: np.ndarray  # (R,) the swarm's mean probe accuracy; NaN: not measured
    full: float  # full knowledge: the number of event kinds, or 1.0 for accuracy
    counts: bool  # per_agent counts kinds (a discrete scale) rather than accuracy

    @classmethod
    def from_rows(cls, rows: list[Row], n_agents: int, n_kinds: int) -> Knowledge:
        counts = bool(rows) and all(KINDS_RECOGNISED in r.agents for r in rows)
        key = KINDS_RECOGNISED if counts else "learn/probe_acc"
        unmeasured = [np.nan] * n_agents
        per_agent = [
            r.agents[key] if len(r.agents.get(key, ())) == n_agents else unmeasured for r in rows
        ]
        acc = [r.get("learn/probe_acc") for r in rows]
        return cls(
            ticks=np.array([r.tick for r in rows], dtype=np.int64),
            per_agent=np.array(per_agent, dtype=float).reshape(len(rows), n_agents),
            mean_acc=np.array([np.nan if a is None else a for a in acc], dtype=float),
            full=float(n_kinds) if counts else 1.0,
            counts=counts,
        )

    def at(self, tick: int) -> tuple[np.ndarray, float]:
        """Per agent (N,) and the swarm's mean accuracy, from the last row at or before
        ``tick``; NaN before the first row."""
        r = int(np.searchsorted(self.ticks, tick, side="right")) - 1
        if r < 0:
            return np.full(self.per_agent.shape[1], np.nan), float("nan")
        return self.per_agent[r], float(self.mean_acc[r])

    def scale(self) -> tuple[Colormap, Normalize]:
        """The colour scale: viridis, one colour per count of kinds, or continuous 0..1."""
        from matplotlib import colormaps
        from matplotlib.colors import BoundaryNorm, Normalize

        if self.counts:
            levels = int(self.full) + 1  # 0..full kinds
            cmap = colormaps["viridis"].resampled(levels)
            return cmap, BoundaryNorm(np.arange(levels + 1) - 0.5, levels)
        return colormaps["viridis"], Normalize(0.0, 1.0)

    def label(self) -> str:
        if self.counts:
            return f"event kinds the drone recognises (of {int(self.full)})"
        return "the drone's probe accuracy (balanced over event classes)"


def drone_colours(
    known: np.ndarray, z: np.ndarray, knowledge: Knowledge
) -> tuple[np.ndarray, np.ndarray]:
    """Face and edge colours (N, 4) of the drones: the face by what each knows (``known`` (N,),
    NaN: not measured yet), hollow with a grey ring for a drone on the ground (``z`` (N,) m
    below LANDED_Z_M: not yet taken off, departed or parked)."""
    cmap, norm = knowledge.scale()
    faces = np.array(cmap(norm(np.nan_to_num(known, nan=0.0))), dtype=float).reshape(-1, 4)
    faces[np.isnan(known)] = _UNMEASURED
    edges = np.zeros_like(faces)
    edges[:, 3] = 1.0  # black
    grounded = z < LANDED_Z_M
    faces[grounded] = _CLEAR
    edges[grounded] = _GROUNDED_EDGE
    return faces, edges


@dataclass(frozen=True)
class _KindLayer:
    """The events of one kind on the replay: where each sits and the ticks it is there."""

    artist: PathCollection
    at: np.ndarray  # (E, 2) m, on the kind's ring around the cruise point
    appear: np.ndarray  # (E,) tick it appears
    clear: np.ndarray  # (E,) first tick it is gone (planned)

    def show(self, tick: int) -> None:
        alive = (self.appear <= tick) & (tick < self.clear)
        self.artist.set_offsets(self.at[alive])


@dataclass(frozen=True)
class _ReplayScene:
    """The replay's figure: the map rendered once (``background``), and the artists that change
    with the tick, drawn over it for each frame (blitting: re-rendering the axes, the legend and
    the colour bar for every frame would take ten times as long)."""

    canvas: FigureCanvasAgg
    background: object  # the canvas's pixels without the animated artists (a BufferRegion)
    ax: Axes
    drones: PathCollection
    layers: list[_KindLayer]

    def frame(self, tick: int, pos: np.ndarray, knowledge: Knowledge, tick_s: float) -> Image:
        """The frame of ``tick``: the drones at ``pos`` (N, 3) m, coloured by what they know,
        as a 256-colour image (what a GIF frame holds)."""
        from PIL.Image import Palette, fromarray  # Pillow comes with matplotlib

        known, acc = knowledge.at(tick)
        faces, edges = drone_colours(known, pos[:, 2], knowledge)
        self.drones.set_offsets(pos[:, :2])
        self.drones.set_facecolor(_rgba(faces))
        self.drones.set_edgecolor(_rgba(edges))
        for layer in self.layers:
            layer.show(tick)
        title = f"t = {tick * tick_s:.0f} s (tick {tick})"
        if not np.isnan(acc):
            title += f", swarm mean probe accuracy {acc:.2f}"
        self.ax.set_title(title, fontsize=10)
        self.canvas.restore_region(self.background)
        for artist in [*(layer.artist for layer in self.layers), self.drones, self.ax.title]:
            self.ax.draw_artist(artist)
        rgb = np.asarray(self.canvas.buffer_rgba())[..., :3]  # (H, W, 3) uint8
        return fromarray(rgb).convert("P", palette=Palette.ADAPTIVE)


def _rgba(colours: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(N, 4) colours as the tuples matplotlib's stubs ask for (its arrays work as well)."""
    return [(r, g, b, a) for r, g, b, a in colours.tolist()]


def _event_layers(
    ax: Axes, events: list[_Event], xy: np.ndarray, layout: Document, cmap: Colormap
) -> tuple[list[_KindLayer], list[Artist]]:
    """One (initially empty) scatter per event kind, styled as the static map draws it, and the
    legend handles."""
    from matplotlib.lines import Line2D  # lazy, as matplotlib itself (see _pyplot)

    kinds = _event_kinds(events)
    layers: list[_KindLayer] = []
    handles: list[Artist] = []
    for j, kind in enumerate(kinds):
        marker, color = _kind_style(j, kind, cmap)
        mine = [e for e in events if e.kind == kind]
        at = xy[[e.point for e in mine]] + _ring_offset(j, len(kinds), layout)  # (E, 2)
        artist = ax.scatter([], [], marker=marker, s=70, color=color, edgecolors="white",
                            linewidths=0.5, zorder=6)  # fmt: skip
        appear = np.array([e.appear_tick for e in mine])
        layers.append(_KindLayer(artist, at, appear, np.array([e.clear_tick for e in mine])))
        handles.append(Line2D([], [], marker=marker, linestyle="", color=color, markersize=7,
                              label=kind.replace("_", " ")))  # fmt: skip
    return layers, handles


def _drone_handles() -> list[Artist]:
    """Legend entries for the drones' two colourless states."""
    from matplotlib.lines import Line2D  # lazy, as matplotlib itself (see _pyplot)

    def dot(face: ColorType, edge: ColorType, label: str) -> Artist:
        return Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=face,
                      markeredgecolor=edge, label=label)  # fmt: skip

    return [
        dot(_UNMEASURED, "black", "drone, not measured yet"),
        dot("none", _GROUNDED_EDGE, "drone on the ground"),
    ]


def _replay_scene(layout: Document, knowledge: Knowledge, n_drones: int) -> _ReplayScene:
    """The replay's figure, with the map, the legend and the colour bar rendered once."""
    from matplotlib import colormaps  # lazy, as matplotlib itself (see _pyplot)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    fig = Figure(figsize=_REPLAY_SIZE_IN, dpi=_REPLAY_DPI)  # off pyplot: nothing to close
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_zones(ax, layout)
    xy = _draw_points(ax, layout, size=30)  # (P, 2)
    layers, handles = _event_layers(ax, _logged_events(layout, len(xy)), xy, layout,
                                    colormaps["tab10"])  # fmt: skip
    drones = ax.scatter(np.zeros(n_drones), np.zeros(n_drones), s=55, linewidths=1.3, zorder=8)
    _frame_map(ax, layout, [*handles, *_drone_handles()], 0)  # its title holds the title's room
    cmap, norm = knowledge.scale()
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, orientation="horizontal",
                       fraction=0.04, pad=0.12, aspect=40)  # fmt: skip
    bar.set_label(knowledge.label(), fontsize=9)
    if knowledge.counts:
        bar.set_ticks(list(range(int(knowledge.full) + 1)))
    fig.tight_layout()
    for artist in [*(layer.artist for layer in layers), drones, ax.title]:
        artist.set_animated(True)  # left out of canvas.draw(): each frame draws them
    canvas.draw()
    return _ReplayScene(canvas, canvas.copy_from_bbox(fig.bbox), ax, drones, layers)


def _replay_inputs(run_dir: Path) -> tuple[np.ndarray, Document]:
    """The trajectory (T+1, N, 3) m and the map of a run; ReplayUnavailable says what is
    missing."""
    layout_file, traj_file = run_dir / "layout.json", run_dir / "trajectory.npy"
    if not layout_file.exists():
        raise ReplayUnavailable(
            f"{run_dir} has no layout.json: its world has no map (a PettingZoo world), "
            "so there is no replay to draw"
        )
    layout = _read_doc(layout_file)
    if not layout.get("zones") and not layout.get("cruise_points"):
        raise ReplayUnavailable(f"{layout_file} has no zones and no cruise points to draw")
    if not traj_file.exists():
        raise ReplayUnavailable(f"{run_dir} has no trajectory.npy: no positions to replay")
    trajectory = np.asarray(np.load(traj_file), dtype=float)
    if trajectory.ndim != 3 or trajectory.shape[0] == 0 or trajectory.shape[2] < 3:
        raise ReplayUnavailable(f"{traj_file} has shape {trajectory.shape}, not (T+1, N, 3)")
    return trajectory, layout


def _n_kinds(run_dir: Path) -> int:
    """How many event kinds there are to recognise: summary.json's classes less 'none', else
    the drone patrol's four."""
    summary_file = run_dir / "summary.json"
    summary = _read_doc(summary_file) if summary_file.exists() else {}
    classes = as_list(summary.get("classes", []))
    return len([c for c in classes if c != "none"]) or len(_EVENT_STYLE)


def _tick_s(run_dir: Path, rows: list[Row]) -> float:
    """Simulated seconds per tick: scenario.yaml's world.tick_s, else a metrics row's
    sim_time_s / tick, else 1."""
    import yaml

    scenario_file = run_dir / "scenario.yaml"
    scenario = yaml.safe_load(scenario_file.read_text()) if scenario_file.exists() else None
    world = scenario.get("world") if isinstance(scenario, dict) else None
    tick_s = world.get("tick_s") if isinstance(world, dict) else None
    if isinstance(tick_s, (int, float)) and tick_s > 0:
        return float(tick_s)
    timed = [r for r in rows if r.tick > 0]
    return timed[0].sim_time_s / timed[0].tick if timed else 1.0


def write_replay(
    run_dir: Path, step: int | None = None, on_frame: Callable[[int, int], None] | None = None
) -> Path:
    """replay.gif in the run directory: the map, the events alive at each tick and the drones
    coloured by what they know, one frame every ``step`` ticks (default: about REPLAY_FRAMES
    frames) at REPLAY_FPS. ``on_frame(done, total)`` after each frame. ReplayUnavailable when
    the run has no map or no trajectory."""
    run_dir = Path(run_dir)
    trajectory, layout = _replay_inputs(run_dir)  # (T+1, N, 3)
    rows = read_rows(run_dir)
    knowledge = Knowledge.from_rows(rows, trajectory.shape[1], _n_kinds(run_dir))
    ticks = replay_ticks(trajectory.shape[0], step or replay_step(trajectory.shape[0]))
    tick_s = _tick_s(run_dir, rows)
    scene = _replay_scene(layout, knowledge, trajectory.shape[1])
    frames: list[Image] = []
    for tick in ticks:
        frames.append(scene.frame(tick, trajectory[tick], knowledge, tick_s))
        if on_frame is not None:
            on_frame(len(frames), len(ticks))
    out = run_dir / "replay.gif"
    # what matplotlib.animation.PillowWriter does with its frames, minus its full redraws
    frames[0].save(out, save_all=True, append_images=frames[1:], loop=0,
                   duration=1000 // REPLAY_FPS)  # fmt: skip
    return out
