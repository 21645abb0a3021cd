"""`swarm coordinator`: the coordinator service as a program of its own (no Ray), for devices.

    swarm coordinator SCENARIO --listen 0.0.0.0:50050 --advertise 10.0.0.2:50050

Device nodes whose config names `coordinator: HOST:PORT` submit their knowledge deltas here
each round and fetch the round's aggregate (protocols/coordinator.py: FedAvg or a robust rule,
`gossip.coordinator` in the scenario). The service needs the model's parameter layout to check
every delta; it takes it from the scenario, building the drone patrol world once to learn the
sensor's input layout. It signs with the scenario's gossip.key_file and serves TLS as
`gossip.tls` says (certificate `coordinator.pem`). It prints one JSON line when it listens and
one with its figures when it stops (SIGTERM or Ctrl-C).

It answers aggregate requests signed with that key only, lets at most two calls per agent wait
for the open round (the server keeps threads spare for health checks and submits), refuses a
round that has not begun at once, and keeps the aggregates of the last
`gossip.coordinator.keep_rounds` rounds, answering an older round with a snapshot
(swarm.shard.CoordinatorHost, protocols/coordinator.py). Every refusal is in the final figures:
`rejected_<reason>` (bad_signature, malformed, stale, ...), `aggregates_refused_busy`,
`aggregates_refused_not_open`, and the snapshots sent, `aggregate_snapshots`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from envs import make_world
from protocols.delta import layout_fingerprint
from protocols.gossip import scale_of
from swarm.addresses import is_loopback
from swarm.exchange import exchange_for
from swarm.node import freeze_startup_objects
from swarm.node_config import DEV_KEY, NodeError
from swarm.scenario import Scenario, ScenarioError, load_scenario


def model_layout(sc: Scenario) -> tuple[int, str, tuple[float, float]]:
    """(number of parameters, layout fingerprint, `scale_of` the initial model) of the
    scenario's agents' models."""
    from agents.population import Population  # lazy: torch, only when serving

    world = make_world(sc.world, sc.total_agents, sc.seed)
    try:
        inputs, n_classes = world.input_config(), world.n_classes
    finally:
        world.close()
    population = Population(sc.model, sc.learning, 1, inputs, n_classes, sc.seed)
    scale = scale_of(population.flat.data.numpy()[0])
    return population.num_params, layout_fingerprint(population.specs), scale


def serve(scenario_path: Path, listen: str, advertise: str | None = None) -> dict[str, int]:
    """Run the service until SIGTERM / SIGINT; returns its figures."""
    # lazy: the simulator's modules (the driver's helpers, the actor roles), only when serving
    from swarm.runner import read_key
    from swarm.shard import CoordinatorHost, CoordinatorSpec

    sc = load_scenario(scenario_path, check_files=True)
    if not exchange_for(sc.gossip.topology).needs_coordinator:
        raise NodeError(
            f"{scenario_path}: gossip.topology is {sc.gossip.topology!r}, not coordinator"
        )
    key = read_key(sc.gossip.key_file) if sc.gossip.key_file else DEV_KEY
    if not is_loopback(listen) and (sc.gossip.tls.mode != "mtls" or key == DEV_KEY):
        raise NodeError(
            f"{listen} is not a loopback address: set gossip.tls to mode mtls (certificate "
            "coordinator.pem from `swarm certs DIR --node coordinator=HOST`) and gossip.key_file"
        )
    num_params, layout, scale = model_layout(sc)
    freeze_startup_objects()  # as a node does, before it listens: collections skip torch's
    host, _, port = listen.rpartition(":")
    service = CoordinatorHost(
        CoordinatorSpec(
            sc.model_dump(mode="json"), num_params, layout, key, host, int(port), x0_scale=scale
        )
    )
    address = advertise or service.endpoint
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        json.dumps({"coordinator": address, "agents": sc.total_agents, "layout": layout}),
        flush=True,
    )
    while not stop.wait(0.5):
        service.state.close_if_due()  # an overdue round closes even if nobody asks
    figures = {"rounds": service.state.version, **service.traffic()}
    service.close()
    return figures


def main(scenario: Path, listen: str, advertise: str | None) -> None:
    from swarm.runner import RunError  # lazy: as in `serve`

    try:
        figures = serve(scenario, listen, advertise)
    except (NodeError, RunError, ScenarioError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(figures), flush=True)
