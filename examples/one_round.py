"""The swarm's loop in one process: observe -> act -> labels -> learn -> share -> merge -> measure.

`swarm run` spreads this loop over Ray actors (a WorldHost and AgentShards, swarm/shard.py)
that send each other knowledge deltas over gRPC. Here the same library calls run in one plain
loop, without Ray or a network: every drone is its own gossip node, and its deltas are handed
to its neighbours as Python objects. From the repository root:

    .venv/bin/python examples/one_round.py [--ticks 200] [--agents 4]

Every 20 ticks it prints the swarm's mean probe accuracy (balanced over the 5 event classes,
so always answering 'none' scores 0.2) and how far apart the drones' models are before and
after the last gossip round.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from agents.learner import OnlineLearner, balanced_accuracy
from envs import make_world
from protocols.delta import layout_fingerprint
from protocols.gossip import ChocoGossip, agent_index, agent_name
from protocols.topology import build_graph, metropolis_weights
from swarm.scenario import Scenario, load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "drone_patrol.yaml"


def spread(x: np.ndarray) -> float:
    """How far apart the models are: mean squared distance of the rows of x (K, P) to their mean."""
    return float(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())


def ring_of_nodes(sc: Scenario, x: np.ndarray, layout: str) -> list[ChocoGossip]:
    """One gossip node per drone: drone i is node "agent-i" on the scenario's ring. Metropolis
    weights make the mixing matrix W doubly stochastic, so rounds pull every model to the mean."""
    weights = metropolis_weights(build_graph(sc.gossip.graph, len(x), sc.seed))
    return [
        ChocoGossip(
            local=[i],  # the agents this node hosts (a shard lists several)
            weights=weights,
            x0=x[0].copy(),  # every model starts from the same weights
            gamma=sc.gossip.gamma,
            compression=sc.gossip.compression,  # top-k + int8: a few % of the values travel
            layout=layout,  # a fingerprint of the model: deltas of another model are refused
            owner=agent_name,  # the node that hosts agent j: here, its own
        )
        for i in range(len(x))
    ]


def gossip_round(
    nodes: list[ChocoGossip], x: np.ndarray, examples: np.ndarray, round_: int
) -> None:
    """share, then merge (swarm/exchange.py: Gossip.share and .merge): every node sends its
    drone's knowledge delta to its neighbours' nodes, then takes one consensus step."""
    for i, node in enumerate(nodes):  # share: what drone i learned since its last delta
        for delta in node.make_deltas(x[i : i + 1], round_, examples[i : i + 1]):
            for name in node.destinations(i):  # the nodes of i's neighbours
                # a real run signs it, sends it over gRPC and checks it (protocols.wire)
                nodes[agent_index(name)].receive([delta])
    for i, node in enumerate(nodes):  # merge: one consensus step on every model
        node.apply(x[i : i + 1])  # in place: x is the models' own memory


def main() -> None:
    parser = argparse.ArgumentParser(description="The swarm's loop in one process.")
    parser.add_argument("--ticks", type=int, default=200, help="world ticks (0.5 s each)")
    parser.add_argument("--agents", type=int, default=4, help="drones (drone i patrols zone i%%4)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each shard does: one core, float sums in a fixed order

    # The scenario file holds every setting. Keep its world (with fewer drones, and without the
    # departure and arrival of drones that do not exist here), its model and its learning
    # settings.
    sc = load_scenario(SCENARIO)
    alone = sc.world.model_copy(update={"departures": [], "arrivals": []})
    world = make_world(alone, args.agents, sc.seed)
    # The population: the Yan models stacked in one learner (an AgentShard hosts a few so).
    learner = OnlineLearner(
        sc.model, sc.learning, args.agents, world.input_config(), world.n_classes, seed=sc.seed
    )
    x = learner.population.flat.data.numpy()  # (n, P) every model's weights, the same memory
    nodes = ring_of_nodes(sc, x, layout_fingerprint(learner.population.specs))
    # A held-out probe set drawn from the world's sensor model: what "knowing" is measured on.
    probe = world.probe_set(sc.metrics.probe_per_class, sc.learning.window, sc.seed + 1_000_003)

    def accuracy() -> float:  # AgentShard.measure: mean over the drones
        return float(balanced_accuracy(learner.evaluate(*probe)).mean())

    n, params = x.shape
    print(f"{n} drones, {params} parameters each; probe accuracy {accuracy():.3f} at start")
    tick, obs, labels = 0, world.reset(), np.zeros((0, 3), np.int64)
    round_, before, after = 0, 0.0, 0.0
    for done in range(1, args.ticks + 1):
        # labels -> learn -> observe and act (AgentShard.act). Labels are (drone, tick, class)
        # rows: an operator's answers about observations a few ticks old.
        learner.add_labels(labels)
        if tick > 0 and tick % sc.learning.learn_every == 0:
            learner.learn_step()  # one optimizer step for every drone at once
        predictions = learner.act(tick, obs)  # (n,) the class each drone believes it sees
        # The world acts on the reports (a drone that sees the altitude sign climbs), flies one
        # tick and hands back new observations and the labels that arrived.
        result = world.step(predictions)
        tick, obs, labels = result.tick, result.obs, result.labels

        if done % sc.gossip.interval == 0:  # share -> merge, with new labelled windows counted
            before = spread(x)
            gossip_round(nodes, x, learner.take_example_counts(), round_)
            round_, after = round_ + 1, spread(x)

        if done % sc.metrics.interval == 0 or done == args.ticks:  # measure
            print(
                f"tick {done:4d}  round {round_:3d}  probe accuracy {accuracy():.3f}  "
                f"spread {before:.3g} -> {after:.3g} in the last round"
            )
    world.close()
    print(f"final probe accuracy {accuracy():.3f} (chance 0.2)")


if __name__ == "__main__":
    main()
