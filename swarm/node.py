"""`swarm-node`: one agent as one small gRPC program, for devices (no Ray).

    swarm-node --scenario scenarios/drone_patrol.yaml --agent 3 --listen 127.0.0.1:50051 \\
               --peer 2=10.0.0.12:50051 --peer 4=10.0.0.14:50051 --key-file swarm.key

The node runs agent `--agent` of the scenario: its own Yan model, learning online from a
built-in simulated sensor (its drone's view of the scenario's patrol world), and gossiping
knowledge deltas with its graph neighbours over the same wire protocol as the simulated
shards (`swarm.v1.Gossip`, CHOCO-Gossip, HMAC-signed deltas), plus standard gRPC health
checking. Deltas to a peer that cannot be reached wait in that peer's outbox and go out, in
order, once it answers: CHOCO's public copies need every delta.

This first version prints one JSON status line when it ends (after `--ticks`, or on SIGTERM /
Ctrl-C, finishing the tick in flight). Recorded and stdin sensors, checkpoints, TLS and a live
`--status` view are the device-node issue's work.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from swarm.scenario import ScenarioError, load_scenario

#: Seconds a push may wait for a peer; an unreachable peer keeps its deltas in the outbox.
PUSH_TIMEOUT_S = 2.0


def _parse_peer(text: str) -> tuple[int, str]:
    index, sep, address = text.partition("=")
    if not sep or not index.isdigit() or ":" not in address:
        raise argparse.ArgumentTypeError(f"expected AGENT=HOST:PORT, got {text!r}")
    return int(index), address


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm-node", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--scenario", type=Path, required=True, help="scenario YAML file")
    parser.add_argument("--agent", type=int, required=True, help="agent index this node runs")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of the gRPC server")
    parser.add_argument(
        "--peer", type=_parse_peer, action="append", default=[], help="AGENT=HOST:PORT, repeatable"
    )
    parser.add_argument("--key-file", type=Path, help="shared HMAC key for deltas (32+ bytes)")
    parser.add_argument("--ticks", type=int, help="ticks to run (default: the scenario's)")
    parser.add_argument(
        "--linger-s",
        type=float,
        default=10.0,
        help="after the last tick, keep serving up to this long for peers' last deltas",
    )
    parser.add_argument(
        "--tick-s", type=float, default=0.0, help="wall seconds per tick (0 = as fast as possible)"
    )
    return parser


class Node:
    """One agent with its sensor, learner, gossip state and gRPC server."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from agents.learner import OnlineLearner
        from envs import make_world
        from protocols import wire
        from protocols.delta import layout_fingerprint
        from protocols.gossip import ChocoGossip, agent_name
        from protocols.topology import build_graph, metropolis_weights
        from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server

        torch.set_num_threads(1)
        sc = self.sc = load_scenario(args.scenario)
        if not 0 <= args.agent < sc.agents.count:
            raise ScenarioError(
                f"--agent {args.agent}: the scenario has agents 0..{sc.agents.count - 1}"
            )
        self.index, self.name = args.agent, agent_name(args.agent)
        self.key = args.key_file.read_bytes() if args.key_file else b"yan-swarm-dev-key"
        # The simulated sensor: this drone's view of the scenario's world.
        if sc.world.kind != "drone_patrol":
            raise SystemExit(
                f"swarm-node: the simulated sensor needs a drone_patrol world, not "
                f"{sc.world.kind!r}"
            )
        self.world = make_world(sc.world, sc.agents.count, sc.seed)
        self.learner = OnlineLearner(
            sc.model, sc.learning, 1, self.world.input_config(), self.world.n_classes, seed=sc.seed
        )
        self.probe = self.world.probe_set(
            sc.metrics.probe_per_class, sc.learning.window, sc.seed + 1_000_003
        )
        population = self.learner.population
        self.x = population.flat.data.numpy()  # (1, P), shares memory with the model
        self.layout = layout_fingerprint(population.specs)
        graph = build_graph(sc.gossip.graph, sc.agents.count, sc.seed)
        self.gossip = ChocoGossip(
            local=[self.index],
            weights=metropolis_weights(graph),
            x0=self.x[0].copy(),
            gamma=sc.gossip.gamma,
            compression=sc.gossip.compression,
            layout=self.layout,
            owner=agent_name,
        )
        self.peers_by_node = {agent_name(j): address for j, address in args.peer}
        self.outbox: dict[str, list[Any]] = {node: [] for node in self.peers_by_node}
        self.counters = TrafficCounters()
        max_bytes = self.max_bytes = int(sc.gossip.max_message_mb * 2**20)
        self.peers = Peers(max_bytes, self.counters, tls=sc.gossip.tls, node=self.name)
        num_params = population.num_params

        decode = wire.make_decoder(self.key, num_params, self.layout)
        host, _, port = args.listen.rpartition(":")
        servicer = GossipServicer(self.name, decode, self.gossip.receive, self.counters)
        self.server, self.port = start_server(
            host,
            int(port),
            gossip=servicer,
            max_message_bytes=max_bytes,
            tls=sc.gossip.tls,
            node=self.name,
        )
        self.address = f"{host}:{self.port}"
        self._wire = wire
        self.stopping = False
        self.undelivered_rounds = 0
        self.linger_s = args.linger_s

    def share(self, round_: int) -> None:
        examples = self.learner.take_example_counts()
        (delta,) = self.gossip.make_deltas(self.x, round_, examples)
        msg = self._wire.to_proto(delta, self.key)
        for node in self.gossip.destinations(self.index):
            if node in self.outbox:  # else: a neighbour nobody told us the address of
                self.outbox[node].append(msg)
        self.flush(round_)

    def flush(self, round_: int) -> bool:
        """Push every peer's outbox, oldest first; True when all are empty."""

        for node, msgs in self.outbox.items():
            if not msgs:
                continue
            try:
                for batch in self._wire.pack(self.name, round_, msgs, self.max_bytes, self.key):
                    self.peers.push(self.peers_by_node[node], batch, PUSH_TIMEOUT_S)
                self.outbox[node] = []
            except Exception:  # noqa: BLE001 - any transport failure: keep and retry later
                self.undelivered_rounds += 1
        return not any(self.outbox.values())

    def drain(self, rounds: int, timeout_s: float) -> None:
        """Before leaving: deliver our outboxes and wait for the peers' last deltas."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sent = self.flush(rounds)
            heard = all(self.gossip.received_from(node) >= rounds for node in self.peers_by_node)
            if sent and heard:
                break
            time.sleep(0.05)
        self.gossip.apply(self.x)

    def run(self, ticks: int, tick_s: float) -> dict[str, Any]:
        sc = self.sc
        obs = self.world.reset()
        labels = np.zeros((0, 3), np.int64)
        round_ = tick = 0
        for tick in range(ticks):
            if self.stopping:
                break
            started = time.monotonic()
            mine = labels[labels[:, 0] == self.index].copy()
            mine[:, 0] = 0
            self.learner.add_labels(mine)
            if tick > 0 and tick % sc.learning.learn_every == 0:
                self.learner.learn_step()
            (pred,) = self.learner.act(tick, obs[self.index : self.index + 1])
            # The other drones of the simulated world follow the true classes; this one acts
            # on its own model's prediction.
            predictions = self.world.true_classes().astype(np.int64)
            predictions[self.index] = pred
            step = self.world.step(predictions)
            obs, labels = step.obs, step.labels
            if (tick + 1) % sc.gossip.interval == 0:
                self.share(round_)
                self.gossip.apply(self.x)
                round_ += 1
            if tick_s > 0:
                time.sleep(max(0.0, tick_s - (time.monotonic() - started)))
        if not self.stopping:
            self.drain(round_, self.linger_s)
        return self.status(tick + 1, round_)

    def status(self, ticks: int, rounds: int) -> dict[str, Any]:
        from agents.learner import balanced_accuracy

        acc = balanced_accuracy(self.learner.evaluate(*self.probe))[0]
        return {
            "node": self.name,
            "address": self.address,
            "ticks": ticks,
            "rounds": rounds,
            "probe_acc": round(float(acc), 6),
            "undelivered_rounds": self.undelivered_rounds,
            **self.counters.snapshot(),
        }

    def close(self) -> None:
        self.peers.close()
        self.server.stop(grace=1.0)
        self.world.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        node = Node(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

    def stop(signum: int, frame: Any) -> None:
        node.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"node": node.name, "listening": node.address}), flush=True)
    try:
        status = node.run(args.ticks or node.sc.ticks, args.tick_s)
    finally:
        node.close()
    print(json.dumps(status), flush=True)


if __name__ == "__main__":
    main()
