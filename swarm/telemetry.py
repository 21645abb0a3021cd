"""Live figures of a run as Ray metrics, for Prometheus and Grafana.

(Run telemetry; not the drones' sensor telemetry of envs/drone_patrol.)

Every figure of a metrics row (metrics.jsonl) is also a Ray gauge named after it: `task/f1` ->
`swarm_task_f1`, the per-agent `learn/probe_acc` -> `swarm_learn_probe_acc{agent="agent-3"}`,
`learn/class_acc/fire` -> `swarm_learn_class_acc{kind="fire"}`. Ray's metrics agent serves them
on the node's Prometheus endpoint with its own prefix: `ray_swarm_task_f1`. Every series has a
`run` label (the run id, the name of runs/<run-id>/).

Figures are set where they are computed, once per metrics row:

- each AgentShard (a Ray worker process) sets its agents' figures (labels run, shard, agent)
  and its own (labels run, shard): see `shard_figures`;
- the driver sets the swarm's (label run) as it builds the row: see `row_figures`.

Ray 2.60 exports custom metrics from actors and from the driver alike, with or without the
dashboard (tested in tests/test_telemetry.py). Two of its habits shape this module:

- Cumulative counts (bytes, deltas, learning steps, ticks) are gauges too, holding the row's
  value: a Ray Counter cannot be incremented by 0, so "no delta rejected" would be no series at
  all, and a gauge equals summary.json exactly. Within a run they only grow, so PromQL's
  rate()/increase() apply as to counters.
- The metrics agent forgets a gauge that was not recorded for two export intervals (its gauge
  TTL, `OpenTelemetryMetricRecorder._resolve_gauge_ttl_seconds`), and a process exports only
  what it recorded since its last export. So each `Telemetry` re-records its last values every
  `REFRESH_S` from a daemon thread until `close()`: a run's series stay up while it runs,
  however slow its rows, and age out a few seconds after it ends.

Outside Ray (an AgentShard built in-process by a test) every call is a no-op, and this module
imports nothing heavy: `ray.util.metrics` is imported on the first figure set inside Ray.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from swarm.records import Row, ShardMeasure

if TYPE_CHECKING:
    from ray.util.metrics import Gauge

#: Prefix of our metric names; Ray's exporter adds its own namespace in front.
PREFIX = "swarm_"
#: What Prometheus sees in front of PREFIX (ray/_private/prometheus_exporter: namespace="ray").
RAY_NAMESPACE = "ray_"
#: Seconds between re-recordings of the last values. Ray exports at most once a second (its
#: floor on RAY_metrics_report_interval_ms, src/ray/stats/stats.h) and drops a gauge after two
#: export intervals without a record, so 1 s keeps every series alive at any export interval.
REFRESH_S = 1.0

#: What each figure means (its HELP line). Figures not listed (a world's task/* and rl/*)
#: are described by their row name.
DESCRIPTIONS = {
    "learn/probe_acc": "balanced accuracy of the agent on the held-out probe set",
    "learn/probe_acc_isolated": "probe accuracy of the agent's isolated twin (never shares)",
    "learn/loss": "training loss of the agent's last online step",
    "learn/steps": "online learning steps (PPO updates in worlds with rewards) of the shard",
    "learn/activation_density": "fraction of units active in the shard's last training step",
    "learn/consensus_distance": "mean squared distance of the agents' parameters to their mean",
    "learn/class_acc": "swarm-mean probe accuracy on one event kind",
    "task/first_detect_s": "seconds from a kind's first appearance in a zone to its first correct "
    "report there",
    "gossip/bytes_sent": "knowledge-delta bytes the agent sent, counted per recipient (cumulative)",
    "gossip/dense_bytes": "bytes dense fp32 sharing would have sent instead (cumulative)",
    "gossip/wire_bytes_sent": "bytes the shard's gRPC messages carried out (cumulative)",
    "gossip/wire_bytes_received": "bytes the shard's gRPC server received (cumulative)",
    "gossip/deltas_accepted": "knowledge deltas the shard accepted (cumulative)",
    "gossip/deltas_rejected": "knowledge deltas the shard rejected: bad signature, layout... "
    "(cumulative)",
    "gossip/rounds": "exchange rounds the shard took part in (cumulative)",
    "gossip/rho": "spectral gap figure rho of the gossip graph: error shrinks like rho^t",
    "run/ticks": "ticks done",
    "run/sim_time_s": "simulated seconds done",
    "run/real_time_factor": "simulated seconds per wall-clock second since the ticks started",
}

_INVALID = re.compile(r"[^A-Za-z0-9_]")


def metric_name(figure: str) -> str:
    """Our metric name of a row figure: `task/f1` -> `swarm_task_f1`."""
    return PREFIX + _INVALID.sub("_", figure)


def _in_ray() -> bool:
    # Only ask Ray if this process already imported it: importing ray just to find out that
    # it is not running would make every in-process use slow.
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


class Telemetry:
    """Sets a process's figures as Ray gauges, labelled `run` plus `labels` (e.g. shard)."""

    def __init__(self, run: str, **labels: str) -> None:
        self.base = {"run": run, **labels}
        self.enabled = _in_ray()
        self._gauges: dict[str, Gauge] = {}
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, figure: str, value: float | None, **labels: str) -> None:
        """Set `figure` to `value`. None or a non-finite value leaves the last one standing
        (a row figure is None when there was nothing to measure, e.g. no episode ended)."""
        if not self.enabled or value is None or not math.isfinite(value):
            return
        tags = tuple(sorted({**self.base, **labels}.items()))
        with self._lock:
            self._last[(figure, tags)] = float(value)
            self._record(figure, tags, float(value))
        if self._thread is None:
            self._thread = threading.Thread(target=self._refresh, name="swarm-telemetry")
            self._thread.daemon = True
            self._thread.start()

    def close(self) -> None:
        """Stop re-recording: the series age out of Ray's endpoint within two exports."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _record(self, figure: str, tags: tuple[tuple[str, str], ...], value: float) -> None:
        gauge = self._gauges.get(figure)
        if gauge is None:
            from ray.util.metrics import Gauge  # lazy: importing swarm must not load Ray

            description = DESCRIPTIONS.get(figure, f"the run's {figure} (see metrics.jsonl)")
            keys = tuple(k for k, _ in tags)
            gauge = self._gauges[figure] = Gauge(metric_name(figure), description, keys)
        gauge.set(value, tags=dict(tags))

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if not _in_ray():  # Ray was shut down under a Telemetry nobody closed
                return
            with self._lock:
                for (figure, tags), value in self._last.items():
                    self._record(figure, tags, value)


# -- what each side sets --------------------------------------------------------------------------


def shard_figures(
    tel: Telemetry,
    measured: ShardMeasure,
    agents: Sequence[str],
    *,
    steps: int,
    loss: Iterable[float] | None = None,
) -> None:
    """An AgentShard's figures from its `measure()` result: per agent (label agent) and per
    shard. `agents` are the agents' names in the shard's order; `loss` their last training
    losses (nan where an agent did not train)."""
    if not tel.enabled:
        return
    traffic = measured.traffic
    per_agent = {
        "learn/probe_acc": measured.probe_acc,
        "learn/probe_acc_isolated": measured.probe_acc_isolated,
        "learn/loss": loss,
        "gossip/bytes_sent": traffic.bytes_sent,
        "gossip/dense_bytes": traffic.dense_bytes,
    }
    for figure, values in per_agent.items():
        for name, value in zip(agents, values if values is not None else [], strict=False):
            tel.set(figure, float(value), agent=name)
    tel.set("learn/activation_density", measured.density)
    for key, value in measured.rl.items():
        tel.set(f"rl/{key}", value)
    for key in ("wire_bytes_sent", "wire_bytes_received", "deltas_accepted", "deltas_rejected"):
        if key in traffic.counters:
            tel.set(f"gossip/{key}", traffic.counters[key])
    tel.set("learn/steps", steps)
    # Last, so that an export showing this round count holds the whole measurement (an export
    # takes every figure at once): tests/test_telemetry.py waits for it.
    tel.set("gossip/rounds", traffic.rounds if traffic.bytes_sent is not None else None)


#: Row figures the shards set per agent or per shard; the driver leaves them to them, so that
#: one metric name never carries two label sets.
SHARD_FIGURES = frozenset(
    {
        "learn/probe_acc",
        "learn/probe_acc_min",
        "learn/probe_acc_isolated",
        "learn/activation_density",
        "gossip/bytes_sent",
        "gossip/dense_bytes",
        "gossip/wire_bytes",
        "gossip/deltas_accepted",
        "gossip/deltas_rejected",
        "gossip/rounds",
        "rl/entropy",
        "rl/value_loss",
        "rl/approx_kl",
        "rl/clip_frac",
    }
)


#: Row figures whose path names a thing: one metric with labels instead of one per thing
#: (`task/first_detect_s/forest/fire` -> `swarm_task_first_detect_s{zone="forest",kind="fire"}`).
LABELLED = {
    "learn/class_acc": ("kind",),
    "task/first_detect_s": ("zone", "kind"),
}


def row_figures(tel: Telemetry, row: Row, *, rho: float | None, real_time_factor: float) -> None:
    """The driver's figures of one metrics row: the world's (task/*, rl/team_return...), the
    consensus distance, per-kind accuracy (label kind), rho and the run's progress."""
    if not tel.enabled:
        return
    for figure, value in row.figures.items():
        if figure in SHARD_FIGURES or value is None:
            continue
        parts = figure.split("/")
        base, things = "/".join(parts[:2]), parts[2:]
        keys = LABELLED.get(base)
        if keys is not None and len(things) == len(keys):
            tel.set(base, value, **dict(zip(keys, things, strict=True)))
        else:
            tel.set(figure, value)
    tel.set("gossip/rho", rho)
    tel.set("run/sim_time_s", row.sim_time_s)
    tel.set("run/real_time_factor", real_time_factor)
    # Last, so that an export showing this tick holds the whole row (an export takes every
    # figure at once): tests/test_telemetry.py waits for it.
    tel.set("run/ticks", row.tick)


def metrics_endpoint() -> str | None:
    """URL of the Prometheus endpoint of the Ray node this driver runs on, or None when Ray
    exports no metrics (no metrics agent: `pip install 'ray[default]'`).

    Ray 2.60 picks a free port unless `ray.init(_metrics_export_port=...)` or
    `ray start --metrics-export-port` fixes one. The driver always runs on a node of its own
    machine, and the endpoint binds every interface (loopback only when the node's own address
    is a loopback one), so 127.0.0.1 reaches it; other machines use the node's address."""
    import ray  # lazy: importing swarm must not load Ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            port = int(node.get("MetricsExportPort") or 0)
            return f"http://127.0.0.1:{port}/metrics" if port > 0 else None
    return None
