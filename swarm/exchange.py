"""Exchange strategies: how a shard's agents share knowledge with the rest of the swarm.

One interface (`Exchange`, after Flower's `Strategy`), four implementations chosen once by
`exchange_for(topology)`:

    isolated        Isolated      no exchange; every agent learns alone
    centralized     Centralized   no exchange; one pooled model (the upper bound)
    decentralized   Gossip        CHOCO-gossip deltas to the shards (gRPC) and devices hosting
                                  the agents' neighbours
    coordinator     Coordinated   deltas to a coordinator, its aggregate back (gRPC)

A shard holds one and never asks which. What every networked exchange shares lives beside it,
not inside it:

- `Book`: byte accounting (logical bytes per agent, the dense fp32 equivalent, rounds) and
  the message ledger (swarm.accounting);
- `Faults`: the injected faults of the scenario's `faults:` (drops, delays, duplicates,
  partitions, Byzantine lies), between the exchange and the wire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypedDict

import numpy as np

from protocols import peering, wire
from protocols.coordinator import FederatedClient
from protocols.delta import Delta, DeltaRejected, Rejection, layout_fingerprint
from protocols.errors import Refused, Stale
from protocols.faults import FaultPlan, corrupt_delta
from protocols.gossip import ChocoGossip, Limits, agent_index, agent_name
from protocols.outbox import Outboxes, PeerStats
from protocols.sightings import Sighting, SightingRelay
from protocols.topology import build_graph, graph_from_edges, metropolis_weights
from protocols.transport import GossipServicer, Peers, TrafficCounters, messages_in, start_server
from swarm.accounting import Ledger
from swarm.proto.v1 import delta_pb2
from swarm.proto.v1.gossip_pb2 import Introduction
from swarm.records import JSON, Document, Labelled, Traffic, as_doc, as_int, json_of

if TYPE_CHECKING:
    from agents.yan.params import Spec
    from swarm.scenario import Scenario  # which validates against the exchanges

#: Seconds a gRPC call between nodes may take before the round reports a failure.
RPC_TIMEOUT_S = 60.0
#: Push deadline and re-introduction period towards devices (external_peers).
DEVICE_TIMEOUT_S = 2.0
INTRODUCE_EVERY_S = 5.0
#: Snapshot batches a shard sends one peer in a round after refusals (each may be lost too).
MAX_RESYNCS = 3

Message = delta_pb2.KnowledgeDelta
Item = tuple[int, Message]  # (sending agent, its signed message)


class BookCounts(TypedDict):
    """What a Book counts (JSON-able)."""

    ledger: dict[str, int]  # swarm.accounting.Ledger
    logical_bytes: list[int]  # per local agent
    dense_bytes: list[int]
    rounds: int


class Counts(BookCounts):
    """An exchange's running counts (JSON-able): carried over a restart, kept in checkpoints."""

    counters: dict[str, int]  # transport.TrafficCounters
    held: int  # messages a delay fault holds back


def counts_of(doc: Document) -> Counts:
    """Counts read back from a checkpoint's metadata."""

    def ints(v: JSON) -> dict[str, int]:
        return {k: as_int(x) for k, x in as_doc(v).items()}

    def int_list(v: JSON) -> list[int]:
        return [as_int(x) for x in v] if isinstance(v, list) else []

    return Counts(
        counters=ints(doc["counters"]),
        ledger=ints(doc["ledger"]),
        logical_bytes=int_list(doc["logical_bytes"]),
        dense_bytes=int_list(doc["dense_bytes"]),
        rounds=as_int(doc["rounds"]),
        held=as_int(doc.get("held", 0)),
    )


@dataclass(frozen=True)
class Wiring:
    """What an exchange needs of the shard that holds it."""

    sc: Scenario
    node: str  # the shard's node name ("shard-<i>")
    agents: list[int]  # the global indices of its agents
    x: np.ndarray  # (K, P) the live parameters (shares memory with the models)
    specs: list[Spec]  # the models' parameter layout (agents.yan.model.param_specs)
    key: bytes  # the swarm's HMAC key
    listen: str = "127.0.0.1"  # the host its gRPC server binds
    advertise: str = "127.0.0.1"  # the host the others dial
    edges: list[tuple[int, int]] | None = None  # the gossip graph (None: build it)
    n_classes: int = 0  # classes a sighting may have (0: the task learns from no labels)
    window: tuple[int, int] = (0, 0)  # a sighting's observation window (window, obs_dim)


def owner_in_run(sc: Scenario, j: int) -> str:
    """The node hosting agent j in a run: its shard, or the device running it (named after
    the agent, as `swarm-node` is)."""
    return f"shard-{j // sc.per_shard}" if j < sc.agents.count else agent_name(j)


class Exchange:
    """The interface every way of sharing implements. The Runner schedules a round (`share`
    on every shard, then `merge`) only for an exchange whose `rounds` is True."""

    #: whether the Runner schedules rounds of this exchange
    rounds: ClassVar[bool] = False
    #: one model trained on every agent's data (all agents in one shard)
    pooled: ClassVar[bool] = False
    #: the Runner builds the gossip graph for it
    needs_graph: ClassVar[bool] = False
    #: the Runner starts a coordinator for it
    needs_coordinator: ClassVar[bool] = False
    #: whether message faults (drops, delays, partitions) apply to it
    message_faults: ClassVar[bool] = False
    #: whether devices (scenario external_peers) can join it
    takes_devices: ClassVar[bool] = False
    #: whether each shard serves gRPC for it (then it needs the hosts to listen on and advertise)
    serves: ClassVar[bool] = False

    endpoint = ""  # host:port of this shard's gRPC server ('' when it serves none)

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        """Where the other shards and the coordinator serve (after all have started)."""

    def set_endpoints(self, endpoints: list[str]) -> None:
        """Where the other shards serve now (one restarted on a new port)."""

    def share(self, round_: int, tick: int, examples: np.ndarray) -> int:
        """Send this round's knowledge (after `tick` ticks); returns the deltas made."""
        raise NotImplementedError(f"{type(self).__name__} holds no rounds")

    def relays_sightings(self) -> bool:
        """Whether the agents relay sightings (labelled windows) through this exchange."""
        return False

    def own_sightings(self, tick: int, labelled: Labelled) -> None:
        """The local agents' new labelled windows, to relay from this round on."""
        raise NotImplementedError(f"{type(self).__name__} relays no sightings")

    def take_sightings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sightings that arrived this round and were new to their agents: rows, classes,
        windows (for the learners' replay)."""
        raise NotImplementedError(f"{type(self).__name__} relays no sightings")

    def merge(self, round_: int) -> int:
        """Apply what arrived; returns the deltas (or aggregates) applied."""
        raise NotImplementedError(f"{type(self).__name__} holds no rounds")

    def traffic(self) -> Traffic:
        return Traffic()

    def counts(self) -> Counts | None:
        """Every running count: carried over a restart (`load_counts`); None without any."""
        return None

    def load_counts(self, state: Counts, *, lost: int = 0) -> None:
        """Take the counts of the process this one replaces; `lost` messages it held back
        died with it and count as dropped."""

    def state(self) -> tuple[dict[str, np.ndarray], Document]:
        """(arrays, scalars) at a round boundary, for a checkpoint."""
        return {}, {}

    def load_state(
        self, arrays: dict[str, np.ndarray], scalars: Document, *, new_epoch: bool
    ) -> None:
        """Resume from `state()`; new_epoch: after a crash (the peers heard from these agents
        after the checkpoint)."""

    def close(self) -> None:
        """Stop serving and close the channels."""


class Isolated(Exchange):
    """Every agent learns alone: the baseline."""


class Centralized(Exchange):
    """One model for everyone, trained on all agents' data: the upper bound (no network)."""

    pooled = True


# -- what networked exchanges share ------------------------------------------------------------


class Book:
    """Byte accounting and the message ledger of one shard's exchange."""

    def __init__(self, n_agents: int, num_params: int):
        self.ledger = Ledger()
        self.dense = 4 * num_params  # one dense fp32 delta
        self.logical_bytes = np.zeros(n_agents, np.int64)
        self.dense_bytes = np.zeros(n_agents, np.int64)
        self.rounds = 0

    def sent(self, row: int, msg: Message, fanout: int = 1) -> None:
        """Agent `row` sent `msg` to `fanout` neighbours (as standalone devices would)."""
        self.logical_bytes[row] += fanout * msg.ByteSize()
        self.dense_bytes[row] += fanout * self.dense

    def sent_beside(self, row: int, msg: delta_pb2.Sighting, fanout: int) -> None:
        """Agent `row` sent `msg`, no delta (a sighting), to `fanout` neighbours: its bytes
        count, and it has no dense fp32 equivalent."""
        self.logical_bytes[row] += fanout * msg.ByteSize()

    def counts(self) -> BookCounts:
        return {
            "ledger": self.ledger.state(),
            "logical_bytes": self.logical_bytes.tolist(),
            "dense_bytes": self.dense_bytes.tolist(),
            "rounds": self.rounds,
        }

    def load(self, state: BookCounts) -> None:
        self.ledger = Ledger.from_state(state["ledger"])
        self.logical_bytes[:] = state["logical_bytes"]
        self.dense_bytes[:] = state["dense_bytes"]
        self.rounds = int(state["rounds"])


class Faults:
    """The scenario's injected faults between an exchange and the wire, decided by a seeded
    plan every shard shares. Without a plan every message passes untouched."""

    def __init__(self, plan: FaultPlan | None, book: Book, sc: Scenario):
        self.plan = plan
        self.book = book
        self.compression = sc.gossip.compression
        # Messages a delay fault holds back: (receiving node, round it goes out) -> items,
        # sent before that round's own messages.
        self.held: dict[tuple[str, int], list[Item]] = {}
        # The agents of another node each local agent neighbours (partitions cut per agent).
        self.across: dict[tuple[int, str], list[int]] = {}

    def lie(self, deltas: list[Delta]) -> list[Delta]:
        """A Byzantine agent (faults.byzantine) falsifies the deltas it sends; its own model
        and its own public copy stay honest, so only its peers are misled."""
        if self.plan is None or not self.plan.byzantine:
            return deltas
        out = []
        for d in deltas:
            if agent_index(d.sender) in self.plan.byzantine:
                d = corrupt_delta(d, self.plan, self.compression)
                self.book.ledger.corrupted += 1
            out.append(d)
        return out

    def due(self, round_: int) -> list[str]:
        """Nodes that held-back messages are due to in this round."""
        return [node for node, due in sorted(self.held) if due == round_]

    def release(self, node: str, round_: int) -> list[Item]:
        """The held-back messages to `node` due in this round."""
        return self.held.pop((node, round_), [])

    def through(self, node: str, items: list[Item], round_: int, tick: int, attempt: int) -> list:
        """The messages that go out now: each is sent (counted), then dropped, cut by a
        partition, held back or duplicated as the fault plan decides."""
        ledger = self.book.ledger
        ledger.sent += len(items)
        plan = self.plan
        if plan is None:
            return list(items)
        out: list[Item] = []
        for i, msg in items:
            if any(plan.partitioned(tick, i, j) for j in self.across[(i, node)]):
                ledger.dropped += 1
                ledger.dropped_partition += 1
                continue
            fate = plan.fate(round_, i, node, attempt)
            if fate.kind == "drop":
                ledger.dropped += 1
            elif fate.kind == "delay":
                self.held.setdefault((node, round_ + fate.rounds), []).append((i, msg))
                ledger.delayed += 1
            else:
                out.append((i, msg))
                if fate.kind == "duplicate":
                    out.append((i, msg))
                    ledger.sent += 1
                    ledger.duplicated += 1
        return out

    def n_held(self) -> int:
        return sum(len(v) for v in self.held.values())

    def state(self) -> tuple[dict[str, np.ndarray], list[JSON]]:
        held = [
            (node, due, i, msg.SerializeToString())
            for (node, due), items in sorted(self.held.items())
            for i, msg in items
        ]
        arrays: dict[str, np.ndarray] = {
            "held.sizes": np.array([len(b) for *_, b in held], np.int64),
            "held.bytes": np.frombuffer(b"".join(b for *_, b in held), np.uint8).copy(),
        }
        return arrays, [[node, due, i] for node, due, i, _ in held]

    def load_state(self, arrays: dict[str, np.ndarray], held: JSON) -> None:
        """Take back what `state` saved: `held` lists (receiving node, round due, agent)."""
        self.held = {}
        offsets = np.concatenate([[0], np.cumsum(arrays["held.sizes"])])
        raw = arrays["held.bytes"].tobytes()
        for k, entry in enumerate(held if isinstance(held, list) else []):
            node, due, i = entry if isinstance(entry, list) else (None, None, None)
            msg = Message.FromString(raw[offsets[k] : offsets[k + 1]])
            self.held.setdefault((str(node), as_int(due)), []).append((as_int(i), msg))


class Networked(Exchange):
    """What gossip and the coordinator client share: the gRPC channels, the traffic counts,
    the book, the faults, and the signing of messages."""

    rounds = True

    def __init__(self, w: Wiring, plan: FaultPlan | None):
        sc = w.sc
        self.w = w
        self.node, self.key = w.node, w.key
        self.x = w.x
        self.x0 = w.x[0].copy()  # every agent starts from the common init
        self.layout = layout_fingerprint(w.specs)
        self.num_params = int(w.x.shape[1])
        self.counters = TrafficCounters()
        self.max_bytes = int(sc.gossip.max_message_mb * 2**20)
        self.peers = Peers(self.max_bytes, self.counters, tls=sc.gossip.tls, node=w.node)
        self.endpoints: list[str] = []
        self.coordinator = ""
        self.codec = peering.Codec(w.node, w.key, self.max_bytes, self.num_params, self.layout)
        self.book = Book(len(w.agents), self.num_params)
        self.faults = Faults(plan, self.book, sc)

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        self.endpoints, self.coordinator = list(endpoints), coordinator

    def set_endpoints(self, endpoints: list[str]) -> None:
        self.endpoints = list(endpoints)

    def traffic(self) -> Traffic:
        ledger = self.book.ledger.state()
        ledger["held"] = self.faults.n_held()
        return Traffic(
            counters=self.counters.snapshot(),
            bytes_sent=self.book.logical_bytes.tolist(),
            dense_bytes=self.book.dense_bytes.tolist(),
            rounds=self.book.rounds,
            ledger=ledger,
        )

    def counts(self) -> Counts:
        return Counts(
            counters=self.counters.snapshot(), held=self.faults.n_held(), **self.book.counts()
        )

    def load_counts(self, state: Counts, *, lost: int = 0) -> None:
        self.counters.load(state["counters"])
        self.book.load(state)
        self.book.ledger.dropped += lost

    def state(self) -> tuple[dict[str, np.ndarray], Document]:
        """The protocol's state (`protocol_state`), the messages a delay fault holds back, and
        the counts."""
        arrays, scalars = self.protocol_state()
        scalars["counts"] = json_of(self.counts())
        held_arrays, scalars["held"] = self.faults.state()
        arrays.update(held_arrays)
        return arrays, scalars

    def load_state(
        self, arrays: dict[str, np.ndarray], scalars: Document, *, new_epoch: bool
    ) -> None:
        self.load_protocol_state(arrays, scalars, new_epoch=new_epoch)
        # After a crash the messages held at the checkpoint were already sent or dropped by the
        # process that died (their rounds are past); a resumed run still owes them.
        self.faults.load_state(arrays, [] if new_epoch else scalars["held"])
        self.load_counts(counts_of(as_doc(scalars["counts"])))

    def protocol_state(self) -> tuple[dict[str, np.ndarray], Document]:
        raise NotImplementedError

    def load_protocol_state(
        self, arrays: dict[str, np.ndarray], scalars: Document, *, new_epoch: bool
    ) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.peers.close()


# -- coordinator --------------------------------------------------------------------------------


class Coordinated(Networked):
    """Each round every agent's delta goes to the coordinator; its aggregate comes back and
    becomes every local agent's model."""

    needs_coordinator = True

    def __init__(self, w: Wiring, plan: FaultPlan | None):
        super().__init__(w, plan)
        sc = w.sc
        self.client = FederatedClient(
            local=w.agents,
            x0=self.x0,
            compression=sc.gossip.compression,
            layout=self.layout,
            shared_coordinates=sc.gossip.coordinator.compares_coordinates,
        )

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        super().connect(endpoints, coordinator)
        self.link = peering.CoordinatorLink(self.peers, coordinator, self.codec)

    def share(self, round_: int, tick: int, examples: np.ndarray) -> int:
        if self.client.version < round_:  # restored from a checkpoint rounds ago
            self.link.catch_up(self.client, self.x, round_, RPC_TIMEOUT_S)
        deltas = self.faults.lie(self.client.make_deltas(self.x, round_, examples))
        messages = self.codec.sign(deltas)
        self.book.ledger.sent += len(messages)
        self.book.ledger.delivered += self.link.submit(round_, messages, RPC_TIMEOUT_S)
        for row, msg in enumerate(messages):
            self.book.sent(row, msg)
        self.book.rounds += 1
        return len(deltas)

    def merge(self, round_: int) -> int:
        self.client.apply_aggregate(self.x, self.link.aggregate(round_, RPC_TIMEOUT_S))
        return 1

    def protocol_state(self) -> tuple[dict[str, np.ndarray], Document]:
        arrays = {
            "fed.global_model": self.client.global_model.copy(),
            "fed.error": self.client.error.copy(),
        }
        return arrays, {"fed.version": int(self.client.version)}

    def load_protocol_state(
        self, arrays: dict[str, np.ndarray], scalars: Document, *, new_epoch: bool
    ) -> None:
        self.client.global_model[:] = arrays["fed.global_model"]
        self.client.error[:] = arrays["fed.error"]
        self.client.version = as_int(scalars["fed.version"])


# -- gossip -------------------------------------------------------------------------------------


class Gossip(Networked):
    """CHOCO-gossip over the scenario's graph: each round every agent sends its compressed
    delta to the nodes hosting its neighbours, over gRPC; devices (external_peers) are
    reached through outboxes, so the round barrier never waits for one."""

    needs_graph = True
    message_faults = True
    takes_devices = True
    serves = True

    def __init__(self, w: Wiring, plan: FaultPlan | None):
        super().__init__(w, plan)
        sc = w.sc
        self.algo = self._algorithm(w)
        self.external = {agent_name(p.agent): p.address for p in sc.external_peers}
        self.faults.across = {
            (i, node): [j for j, _ in nbrs if self._owner(j) == node]
            for i, nbrs in zip(w.agents, self.algo.neighbours, strict=True)
            for node in self.algo.destinations(i)
        }
        # Send a snapshot of every local agent before the next deltas: set when this shard
        # restarted from a checkpoint with a new epoch (its peers refuse deltas until then).
        self.announce = False
        # membership False: Ray supervises shards; they answer pings but do not probe
        self.intros = peering.Introductions(w.node, w.key, membership=False)
        self.outboxes: Outboxes | None = None
        self.introducer: peering.Introducer | None = None
        self.relay = self._relay(w)
        servicer = GossipServicer(
            w.node,
            self.codec.decoder(),
            self.algo.receive,
            self.counters,
            introduce=self._answer,
            sight=None if self.relay is None else (self._check_sightings, self._take_sightings),
            key=w.key,
        )
        self.server, port = start_server(
            w.listen,
            0,
            gossip=servicer,
            max_message_bytes=self.max_bytes,
            tls=sc.gossip.tls,
            node=w.node,
        )
        self.endpoint = self.intros.address = f"{w.advertise}:{port}"
        self._devices()

    def _owner(self, j: int) -> str:
        return owner_in_run(self.w.sc, j)

    def _address(self, node: str) -> str:
        """Where shard `node` ("shard-<i>") serves."""
        return self.endpoints[int(node.split("-")[1])]

    def _algorithm(self, w: Wiring) -> ChocoGossip:
        sc = w.sc
        n = sc.total_agents
        graph = graph_from_edges(n, w.edges) if w.edges is not None else None
        graph = graph or build_graph(sc.gossip.graph, n, sc.seed)
        return ChocoGossip(
            robust=sc.gossip.robust,
            local=w.agents,
            weights=metropolis_weights(graph),
            x0=self.x0,
            gamma=sc.gossip.gamma,
            compression=sc.gossip.compression,
            layout=self.layout,
            owner=self._owner,
            # The wall clock: a device that kept its state from an earlier run holds older
            # epochs of these agents, and resynchronises instead of mixing the two runs.
            epoch=int(time.time() * 1000),
            # no clock ceiling: a shard takes a device's epoch whatever its clock reads; the
            # run's own agents are exempt (Limits.exempt), the devices' are held
            limits=Limits.relative_to(
                self.x0, sc.gossip.limits, exempt=lambda s: agent_index(s) < sc.agents.count
            ),
        )

    # -- sightings (gossip.sightings) -----------------------------------------------------------

    def _relay(self, w: Wiring) -> SightingRelay | None:
        """The local agents' sightings relay, when the scenario asks for one and the task
        learns from labels."""
        cfg = w.sc.gossip.sightings
        if not cfg.per_round or not w.n_classes:
            return None
        return SightingRelay(
            local=w.agents,
            neighbours={
                i: [j for j, _ in nbrs]
                for i, nbrs in zip(w.agents, self.algo.neighbours, strict=True)
            },
            n_classes=w.n_classes,
            window=w.window,
            per_round=cfg.per_round,
            hops=cfg.hops,
            max_age_ticks=cfg.max_age_ticks,
        )

    def relays_sightings(self) -> bool:
        return self.relay is not None

    def own_sightings(self, tick: int, labelled: Labelled) -> None:
        assert self.relay is not None
        self.relay.renew(labelled.renewed)
        self.relay.own(tick, labelled.rows, labelled.ticks, labelled.classes, labelled.windows)

    def take_sightings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.relay is not None
        return self.relay.settle()

    def _check_sightings(self, msgs: list[delta_pb2.Sighting]) -> list[tuple[int, Sighting]]:
        """Every sighting of a pushed batch checked (all or none; raises DeltaRejected)."""
        assert self.relay is not None
        cfg = self.w.sc.gossip.sightings
        out = []
        per_sender: dict[str, int] = {}
        for msg in msgs:
            per_sender[msg.sender] = per_sender.get(msg.sender, 0) + 1
            if per_sender[msg.sender] > cfg.per_round:  # an honest agent sends no more a round
                raise DeltaRejected(
                    Rejection.MALFORMED,
                    f"more than per_round = {cfg.per_round} sightings from {msg.sender[:80]!r}",
                )
            sender, s = wire.sighting_from_proto(
                msg, key=self.key, n_classes=self.relay.n_classes, window=self.relay.window,
                max_hops=cfg.hops,
            )  # fmt: skip
            if not any(sender in nbrs for nbrs in self.relay.neighbours.values()):
                raise DeltaRejected(
                    Rejection.UNKNOWN_SENDER, f"{msg.sender!r} neighbours no agent of this node"
                )
            out.append((sender, s))
        return out

    def _take_sightings(self, checked: list[tuple[int, Sighting]]) -> int:
        assert self.relay is not None
        for sender, s in checked:
            self.relay.receive(sender, [s])
        return len(checked)

    def _relay_round(self, round_: int, tick: int) -> dict[str, list[delta_pb2.Sighting]]:
        """This round's sightings: signed per sender for the nodes hosting its neighbours,
        handed in process to its local neighbours, and counted as the devices would send
        them (one copy per neighbour that does not have it yet: not the one it came from)."""
        out: dict[str, list[delta_pb2.Sighting]] = {}
        if self.relay is None:
            return out
        for i, picked in self.relay.outgoing(round_, tick).items():
            msgs = [wire.sighting_to_proto(i, s, self.key) for s in picked]
            nbrs = self.relay.neighbours[i]
            for s, m in zip(picked, msgs, strict=True):
                fanout = len(s.recipients(nbrs))  # not back to where it came from
                self.book.sent_beside(self.relay.row[i], m, fanout)
                self.relay.sent += fanout
            self.relay.receive(i, picked)  # the neighbours this node hosts
            for node in self.algo.destinations(i):
                out.setdefault(node, []).extend(msgs)
        return out

    def _push_sightings(self, address: str, msgs: list[delta_pb2.Sighting], round_: int) -> None:
        """Sightings go in batches of their own: a receiver that refuses a round's deltas
        (Stale, answered with snapshots) still takes them, and one that refuses a sighting
        keeps the deltas. A refused or lost batch is counted, not retried."""
        for batch in self.codec.pack(round_, [], sightings=msgs):
            try:
                self.peers.push(address, batch, RPC_TIMEOUT_S)
            except Refused:
                assert self.relay is not None
                self.relay.lost += len(batch.sightings)

    # -- devices (scenario external_peers) -----------------------------------------------------

    def _devices(self) -> None:
        """Devices this shard's agents neighbour: reached through outboxes (a device may be
        down or restart; the round barrier never waits for one), and introduced again every
        few seconds (a device that restarts learns its neighbours anew). A device is out of
        the consensus step until it answers: the copy of one that never joins would pull the
        local agents back to the initial weights."""
        local = {
            address: [i for i in self.w.agents if name in self.algo.destinations(i)]
            for name, address in self.external.items()
        }
        self.device_targets = {a: agents for a, agents in local.items() if agents}
        if not self.device_targets:
            return
        directory = peering.Directory(
            {a: [agent_index(n)] for n, a in self.external.items() if a in self.device_targets},
            node=self.w.node,
            local=self.w.agents,
        )
        snapshots = peering.Snapshots(self.algo, self.codec, directory.agents_at)
        self.outboxes = peering.make_outboxes(
            self.peers, self.codec, snapshots, timeout_s=DEVICE_TIMEOUT_S
        )
        contacts = peering.Contacts(
            self.algo,
            self.outboxes,
            directory,
            [agent_index(n) for n, a in self.external.items() if a in self.device_targets],
            rounds_done=lambda: self.book.rounds,
        )
        contacts.leave_out_until_contact()
        self.introducer = peering.Introducer(
            self.peers,
            self.intros,
            contacts,
            targets=lambda: self.device_targets,
            every_s=INTRODUCE_EVERY_S,
            timeout_s=DEVICE_TIMEOUT_S,
            at_dialled=True,  # routed by the addresses the scenario lists
        )

    def _answer(self, intro: Introduction) -> Introduction:
        """Another node's introduction: answered with the local agents that neighbour it."""
        agents = [i for i in self.w.agents if intro.node in self.algo.destinations(i)]
        return self.intros.answer(intro, agents)

    def connect(self, endpoints: list[str], coordinator: str) -> None:
        super().connect(endpoints, coordinator)
        if self.introducer is not None:
            self.introducer.start()

    # -- a round --------------------------------------------------------------------------------

    def share(self, round_: int, tick: int, examples: np.ndarray) -> int:
        # a restarted shard's new epoch starts with snapshots of its agents (before the deltas)
        snapshots = self.algo.make_snapshots(round_) if self.announce else []
        self.announce = False
        deltas = self.faults.lie(self.algo.make_deltas(self.x, round_, examples))
        by_node: dict[str, list[Item]] = {}
        for d in snapshots:
            i = agent_index(d.sender)
            for node in self.algo.destinations(i):
                by_node.setdefault(node, []).append((i, self.codec.sign([d])[0]))
                self.book.ledger.snapshots += node not in self.external
        for row, msg in enumerate(self.codec.sign(deltas)):
            i = self.w.agents[row]
            # As standalone devices, an agent would send its delta to every neighbour.
            self.book.sent(row, msg, self.algo.logical_recipients(i))
            for node in self.algo.destinations(i):
                by_node.setdefault(node, []).append((i, msg))
        for node in self.faults.due(round_):  # held back, due now: even with nothing else
            by_node.setdefault(node, [])
        sightings = self._relay_round(round_, tick)
        for node, msgs in sorted(sightings.items()):
            self._push_sightings(self._address(node), msgs, round_)
        for node, items in sorted(by_node.items()):
            if node in self.external:  # devices: through outboxes, outside the ledger
                assert self.outboxes is not None
                self.outboxes.add(self.external[node], [m for _, m in items], round_)
            else:
                self._deliver(node, items, round_, tick)
        self.book.rounds += 1
        return len(deltas)

    def _deliver(self, node: str, items: list[Item], round_: int, tick: int) -> None:
        """Send one round's messages to another shard, through the injected faults.

        A refusal (Stale: the receiver's copy of a sender is not where these messages start,
        after a lost message or a restart on either side) is answered with snapshots of those
        senders' public copies, which go through the faults too."""
        address = self._address(node)
        batch = self.faults.release(node, round_)
        batch += self.faults.through(node, items, round_, tick, 0)
        attempt = 0
        while batch and not self._push(address, batch, round_) and attempt < MAX_RESYNCS:
            attempt += 1
            made = self.algo.make_snapshots(round_, {i for i, _ in batch})
            snaps = [(agent_index(d.sender), self.codec.sign([d])[0]) for d in made]
            self.book.ledger.snapshots += len(snaps)
            batch = self.faults.through(node, snaps, round_, tick, attempt)

    def _push(self, address: str, items: list[Item], round_: int) -> bool:
        """Push messages in as few batches as fit; False if the receiver refused any batch."""
        ok = True
        for batch in self.codec.pack(round_, [m for _, m in items]):
            n = messages_in(batch)
            try:
                self.peers.push(address, batch, RPC_TIMEOUT_S)
            except Stale:
                self.book.ledger.rejected += n
                ok = False
            else:
                self.book.ledger.delivered += n
        return ok

    def merge(self, round_: int) -> int:
        return self.algo.apply(self.x)

    # -- traffic and checkpoints ---------------------------------------------------------------

    def traffic(self) -> Traffic:
        out = super().traffic()
        if self.relay is not None:
            out.counters.update(self.relay.counts())
        if self.outboxes is not None:
            stats = self.outboxes.stats()
            out.devices = {
                name: stats.get(address) or PeerStats()
                for name, address in self.external.items()
                if address in self.device_targets
            }
        return out

    def protocol_state(self) -> tuple[dict[str, np.ndarray], Document]:
        arrays: dict[str, np.ndarray] = {}
        scalars: Document = {}
        if self.relay is not None:
            arrays.update({f"sightings.{k}": v for k, v in self.relay.state().items()})
        for k, v in self.algo.state().items():
            if isinstance(v, np.ndarray):
                arrays[f"gossip.{k}"] = v
            else:
                scalars[f"gossip.{k}"] = int(v)
        return arrays, scalars

    def load_protocol_state(
        self, arrays: dict[str, np.ndarray], scalars: Document, *, new_epoch: bool
    ) -> None:
        state: dict[str, np.ndarray | int] = {
            k[7:]: v for k, v in arrays.items() if k.startswith("gossip.")
        }
        state.update({k[7:]: as_int(v) for k, v in scalars.items() if k.startswith("gossip.")})
        saved = as_int(scalars["gossip.epoch"])
        epoch = max(saved + 1, int(time.time() * 1000)) if new_epoch else None
        self.algo.load_state(state, epoch=epoch)
        self.announce = new_epoch
        if self.relay is not None and "sightings.counts" in arrays:
            self.relay.load_state(
                {k[10:]: v for k, v in arrays.items() if k.startswith("sightings.")}
            )

    def close(self) -> None:
        if self.introducer is not None:
            self.introducer.stop()
        if self.outboxes is not None:
            self.outboxes.close()
        super().close()
        self.server.stop(grace=None)


# -- the factory --------------------------------------------------------------------------------

EXCHANGES: dict[str, type[Exchange]] = {
    "isolated": Isolated,
    "centralized": Centralized,
    "decentralized": Gossip,
    "coordinator": Coordinated,
}


def exchange_for(topology: str) -> type[Exchange]:
    """The exchange a scenario's gossip.topology names."""
    try:
        return EXCHANGES[topology]
    except KeyError:
        raise ValueError(f"unknown topology {topology!r}; known: {', '.join(EXCHANGES)}") from None


def make_exchange(w: Wiring, plan: FaultPlan | None) -> Exchange:
    """The shard's exchange for its scenario's gossip.topology."""
    cls = exchange_for(w.sc.gossip.topology)
    if issubclass(cls, Networked):
        return cls(w, plan)
    return cls()
