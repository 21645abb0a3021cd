"""The steps a node takes with its peers, written once for the device node (swarm/node.py) and
the simulated shards (swarm/shard.py), both of which host agents and talk `swarm.v1` over
`protocols.transport.Peers`.

    Codec           how this node's messages go on the wire: signed, packed, decoded
    Directory       which node and agents live at which address (thread-safe)
    Snapshots       (round, address) -> signed snapshots of the local agents that neighbour the
                    agents at that address: the resync callback of `protocols.outbox.Outboxes`
    make_outboxes   the Outboxes of one node, wired to Peers.push, the Codec and its Snapshots
    Contacts        what hearing from a peer does (its agents join the consensus step; a link
                    that missed rounds starts with snapshots) and what losing one does
    Introductions   this node's signed Introduction, and the check of a peer's (key, form, clock)
    Introducer      introduces this node to peers on a thread: until each answers, then again
                    every so often (a peer that restarted learns this node anew)
    CoordinatorLink submit a round's deltas to a coordinator, fetch the closed rounds'
                    aggregates, catch a FederatedClient up

Every call to another node raises a `protocols.errors.PeerError` when it fails; a message that
does not verify raises `protocols.delta.DeltaRejected` where it is checked. Nothing here reads
gRPC status codes, and the wire formats are those of protocols/wire.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from protocols import wire
from protocols.coordinator import FederatedClient
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.errors import ClockSkew, KeyMismatch, PeerError, Refused
from protocols.gossip import ChocoGossip, agent_index
from protocols.outbox import Outboxes
from protocols.transport import Decode, messages_in
from swarm.proto.v1 import coordinator_pb2, delta_pb2, gossip_pb2

Introduction = gossip_pb2.Introduction
Message = delta_pb2.KnowledgeDelta


class PeerCalls(Protocol):
    """The calls of `protocols.transport.Peers` these steps make, each raising PeerError (a
    test may pass a fake)."""

    def push(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int: ...

    def introduce(self, address: str, msg: Introduction, timeout_s: float) -> Introduction: ...

    def submit(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int: ...

    def get_aggregate(
        self, address: str, request: coordinator_pb2.AggregateRequest, timeout_s: float
    ) -> coordinator_pb2.AggregateReply: ...


# -- the wire --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How node `node`'s messages go on the wire: signed with the swarm `key`, packed in
    batches under `max_bytes` (a delta too large for one goes in signed chunks), and what it
    receives checked against its model (`num_params`, `layout`) before it is decoded."""

    node: str
    key: bytes
    max_bytes: int
    num_params: int
    layout: str

    def sign(self, deltas: Iterable[Delta]) -> list[Message]:
        return [wire.to_proto(d, self.key) for d in deltas]

    def pack(
        self, round_: int, msgs: list[Message], sightings: Sequence[delta_pb2.Sighting] = ()
    ) -> list[delta_pb2.DeltaBatch]:
        return wire.pack(self.node, round_, msgs, self.max_bytes, self.key, sightings=sightings)

    def decode(self, msg: Message) -> Delta:
        """Check and decode one whole message (an aggregate); raises DeltaRejected."""
        return wire.from_proto(msg, key=self.key, num_params=self.num_params, layout=self.layout)

    def decoder(self) -> Decode:
        """The receive path of a servicer: chunks reassembled, then checked and decoded."""
        return wire.make_decoder(self.key, self.num_params, self.layout)


# -- who is where --------------------------------------------------------------------------------


class Directory:
    """Which node, hosting which agents, lives at which address.

    `known` seeds addresses this node knows beforehand (a shard's scenario lists its devices'
    addresses and agents); an address counts as met only once its node introduced itself.

    Duplicate agents. An agent runs on one node; two nodes that both claim it (a copied config)
    would each lose the other's pushes without a word. `learn` notes every agent claimed by a
    node other than the one already known to host it, or claimed at all while it is one of
    `local` (this node's own, whose name is `node`): `conflicts()`. The first claimant
    keeps the agent. Since an introduction is answered with the callee's own, both nodes of a
    clash see it.
    """

    def __init__(
        self,
        known: Mapping[str, Iterable[int]] | None = None,
        *,
        node: str = "",
        local: Iterable[int] = (),
    ):
        self._lock = threading.Lock()
        self._node_at: dict[str, str] = {}  # address -> node name, once met
        self._address_of: dict[int, str] = {}  # agent -> address of the node hosting it
        for address, agents in (known or {}).items():
            for j in agents:
                self._address_of[int(j)] = address
        self._self, self._local = node, {int(j) for j in local}
        self._conflicts: dict[int, dict[str, str]] = {}  # agent -> {node: address} claiming it

    def learn(self, node: str, address: str, agents: Iterable[int]) -> bool:
        """Record that `node` at `address` hosts `agents`; True when the address is new. An
        agent already hosted by another node (or by this one) is a conflict, not moved."""
        with self._lock:
            new = address not in self._node_at
            self._node_at[address] = node
            for j in map(int, agents):
                holder = self._holder(j)
                # this node never hears its own introduction: a claim on its agents, even
                # under its own name (a copied config), is always another process
                if holder is not None and (j in self._local or holder[1] != node):
                    clash = self._conflicts.setdefault(j, dict([holder]))
                    clash[address] = node
                    continue
                self._address_of[j] = address
            return new

    def _holder(self, j: int) -> tuple[str, str] | None:
        """(address, node) known to host agent j, if met ("this node" for its own agents)."""
        if j in self._local:
            return "this node", self._self
        address = self._address_of.get(j)
        node = self._node_at.get(address) if address is not None else None
        return None if node is None or address is None else (address, node)

    def conflicts(self) -> dict[int, dict[str, str]]:
        """agent -> {address: node name} of every node that claimed it, when more than one
        did (this node's own agents listed at "this node")."""
        with self._lock:
            return {j: dict(c) for j, c in sorted(self._conflicts.items())}

    def address_of(self, agent: int) -> str | None:
        with self._lock:
            return self._address_of.get(agent)

    def host_of(self, sender: str) -> str | None:
        """The node met hosting the agent of wire name `sender` (this node for its own);
        None when unknown or not an agent name (`GossipServicer(host_of=...)`)."""
        try:
            j = agent_index(sender)
        except ValueError:
            return None
        with self._lock:
            held = self._holder(j)
        return None if held is None else held[1]

    def addresses(self, agents: Iterable[int]) -> set[str]:
        """The known addresses of these agents."""
        with self._lock:
            return {self._address_of[j] for j in agents if j in self._address_of}

    def agents_at(self, address: str) -> list[int]:
        with self._lock:
            return sorted(j for j, a in self._address_of.items() if a == address)

    def addresses_of_node(self, node: str) -> list[str]:
        with self._lock:
            return [a for a, n in self._node_at.items() if n == node]

    def nodes(self) -> dict[str, str]:
        """address -> node name, of every node met."""
        with self._lock:
            return dict(self._node_at)

    def hosted(self) -> dict[str, list[int]]:
        """address -> the agents known to live there."""
        with self._lock:
            out: dict[str, list[int]] = {}
            for j, a in self._address_of.items():
                out.setdefault(a, []).append(j)
            return out


# -- outboxes and their snapshots ------------------------------------------------------------------


class Snapshots:
    """Outboxes' resync callback: (round, address) -> signed snapshots of the local agents that
    neighbour an agent living at `address` (the copies that peer holds), made now."""

    def __init__(
        self, gossip: ChocoGossip, codec: Codec, agents_at: Callable[[str], Iterable[int]]
    ):
        self.gossip, self.codec, self.agents_at = gossip, codec, agents_at

    def local_for(self, address: str) -> set[int]:
        """The local agents that neighbour an agent at `address`."""
        remote = set(self.agents_at(address))
        return {
            i
            for i, nbrs in zip(self.gossip.local, self.gossip.neighbours, strict=True)
            if any(j in remote for j, _ in nbrs)
        }

    def __call__(self, round_: int, address: str) -> list[Message]:
        return self.codec.sign(self.gossip.make_snapshots(round_, self.local_for(address)))


def make_outboxes(
    peers: PeerCalls,
    codec: Codec,
    snapshots: Callable[[int, str], list[Message]],
    *,
    timeout_s: float,
    on_fatal: Callable[[str, Exception], None] | None = None,
) -> Outboxes:
    """One node's outboxes: pushed with `peers.push`, packed by `codec`, resynchronised with
    `snapshots` (a `Snapshots`)."""
    return Outboxes(peers.push, codec.pack, snapshots, timeout_s=timeout_s, on_fatal=on_fatal)


# -- contact -------------------------------------------------------------------------------------


class Contacts:
    """What hearing from a peer, and losing one, does to this node's consensus step and links.

    `neighbours` are the remote agents this node mixes with that live on nodes met through
    introductions (a device node: its graph neighbours; a shard: its devices' agents).
    `on_contact(node, address)` is called after each contact (a device node starts probing
    the peer).
    """

    def __init__(
        self,
        gossip: ChocoGossip,
        outboxes: Outboxes,
        directory: Directory,
        neighbours: Iterable[int],
        rounds_done: Callable[[], int],
        on_contact: Callable[[str, str], None] | None = None,
    ):
        self.gossip, self.outboxes, self.directory = gossip, outboxes, directory
        self.neighbours = set(neighbours)
        self.rounds_done = rounds_done
        self.on_contact = on_contact

    def leave_out_until_contact(self) -> None:
        """Take every neighbour out of the consensus step until its node is heard from: a copy
        nobody updates would pull the local agents back towards the initial weights. (Call it
        before restoring a checkpoint: `ChocoGossip.load_state` brings every agent back in, so
        a restored node mixes with the copies it saved, as it always has.)"""
        for j in self.neighbours:
            self.gossip.set_active(j, False)

    def learn(self, node: str, address: str, agents: Iterable[int]) -> None:
        """`node` at `address`, hosting `agents`, introduced itself or answered this node."""
        agents = [int(j) for j in agents]
        new = self.directory.learn(node, address, agents)
        mine = [j for j in agents if j in self.neighbours]
        left_out = any(not self.gossip.active(j) for j in mine)
        if mine and (new or left_out) and self.rounds_done() > 0:
            # Deltas made before this contact never reached it: start the link with a
            # snapshot rather than a delta it would refuse as out of step.
            self.outboxes.resync(address)
        if self.on_contact is not None:
            self.on_contact(node, address)
        for j in mine:
            if not self.gossip.active(j):
                self.gossip.set_active(j, True)
        stats = self.outboxes.stats().get(address)
        if stats is not None and stats.forgotten:
            self.outboxes.revive(address)

    def lost(self, node: str) -> None:
        """`node` was declared dead: its agents leave the consensus step, its links stop."""
        addresses = self.directory.addresses_of_node(node)
        for a in addresses:
            self.outboxes.forget(a)
        self._set_active(addresses, False)

    def back(self, node: str) -> None:
        """`node` is alive again: its agents mix again, its links get snapshots first."""
        addresses = self.directory.addresses_of_node(node)
        self._set_active(addresses, True)
        links = self.outboxes.stats()
        for a in addresses:  # declared dead before (perhaps via a later suspicion)
            if a in links and links[a].forgotten:
                self.outboxes.revive(a)

    def _set_active(self, addresses: Collection[str], active: bool) -> None:
        for a in addresses:
            for j in self.directory.agents_at(a):
                if j in self.neighbours:
                    self.gossip.set_active(j, active)


# -- introductions -------------------------------------------------------------------------------


def _skew_problem(skew_s: float, who: str, limit_s: float) -> str:
    return (
        f"clock skew with {who}: its clock is {skew_s:+.1f} s from this node's "
        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC here), more than "
        f"max_clock_skew_s {limit_s:g}; set both clocks (NTP, chrony, or "
        f"an RTC) before joining: devices without a real-time clock start in 1970"
    )


class Introductions:
    """This node's introduction ("node N at ADDRESS hosts agents A, my clock reads T", signed
    with the swarm key) and the check of a peer's, the same both ways.

    Args:
        node: this node's name. key: the swarm key.
        membership: whether this node probes its peers (SWIM); shards answer pings only.
        max_clock_skew_s: refuse a peer whose clock is further than this from ours; None
            leaves clocks unjudged (shards accept an introduction at any clock).
    `address` (this node's advertised HOST:PORT) is set once its server listens.
    """

    def __init__(
        self, node: str, key: bytes, *, membership: bool, max_clock_skew_s: float | None = None
    ):
        self.node, self.key, self.membership = node, key, membership
        self.max_clock_skew_s = max_clock_skew_s
        self.address = ""

    def make(self, agents: Sequence[int]) -> Introduction:
        """This node's signed introduction, announcing `agents`, its clock read now."""
        return wire.introduction(
            self.node, self.address, list(agents), membership=self.membership, key=self.key
        )

    def skew(self, peer_unix_ms: int, who: str) -> str | None:
        """What is wrong with a peer's clock reading, in words; None when it is close enough."""
        if self.max_clock_skew_s is None:
            return None
        skew = peer_unix_ms / 1000 - time.time()
        if abs(skew) <= self.max_clock_skew_s:
            return None
        return _skew_problem(skew, who, self.max_clock_skew_s)

    def check(self, intro: Introduction, who: str) -> None:
        """Believe nothing of `intro` before this; raises DeltaRejected: BAD_SIGNATURE (another
        key), MALFORMED, or CLOCK_SKEW."""
        wire.check_introduction(intro, self.key)
        problem = self.skew(int(intro.unix_ms), who)
        if problem:
            raise DeltaRejected(Rejection.CLOCK_SKEW, problem)

    def answer(self, intro: Introduction, agents: Sequence[int]) -> Introduction:
        """The server side (`GossipServicer(introduce=...)`): check a peer's introduction and
        answer with this node's, announcing `agents`; raises DeltaRejected (the servicer
        refuses the call with its status)."""
        self.check(intro, f"{intro.node} at {intro.address}")
        return self.make(agents)

    def introduce(
        self, peers: PeerCalls, address: str, agents: Sequence[int], timeout_s: float
    ) -> Introduction:
        """The client side: introduce this node to the one at `address` and check its reply.

        Raises PeerError: what the call raised (KeyMismatch: it refused our signature,
        ClockSkew: our clock, Unreachable...), KeyMismatch / Refused when its reply does not
        verify, ClockSkew when the reply's clock is too far from ours.
        """
        try:
            reply = peers.introduce(address, self.make(agents), timeout_s)
        except KeyMismatch as exc:
            reason = f"refused this node's introduction: {exc.reason}"
            raise KeyMismatch(address, reason, exc.status) from exc
        try:
            self.check(reply, f"{reply.node} at {address}")
        except DeltaRejected as exc:
            if exc.reason is Rejection.CLOCK_SKEW:
                raise ClockSkew(address, exc.detail) from None
            kind = KeyMismatch if exc.reason is Rejection.BAD_SIGNATURE else Refused
            reason = f"answered with an introduction that does not verify: {exc}"
            raise kind(address, reason) from None
        return reply


class Introducer:
    """Introduces this node to its peers on a thread of its own.

    Each pass introduces this node to every address of `targets()` (address -> the local agents
    to announce there) that has not answered yet; every `recheck_s` (0: every pass) all of them
    again, so a peer that restarted learns this node anew. A reply is learned by `contacts`,
    at the peer's advertised address, or at the address dialled with `at_dialled` (a shard
    routes to its devices by the addresses its scenario lists). `on_outcome(address, error)`
    hears every attempt (error None: it answered and its reply verified); `on_pass()` runs
    after each pass.
    """

    def __init__(
        self,
        peers: PeerCalls,
        introductions: Introductions,
        contacts: Contacts,
        targets: Callable[[], Mapping[str, Sequence[int]]],
        *,
        every_s: float,
        timeout_s: float,
        recheck_s: float = 0.0,
        at_dialled: bool = False,
        on_outcome: Callable[[str, PeerError | None], None] | None = None,
        on_pass: Callable[[], None] | None = None,
    ):
        self.peers, self.introductions, self.contacts = peers, introductions, contacts
        self.targets = targets
        self.every_s, self.timeout_s, self.recheck_s = every_s, timeout_s, recheck_s
        self.at_dialled = at_dialled
        self.on_outcome, self.on_pass = on_outcome, on_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="introducer", daemon=True)

    def introduce(self, address: str, agents: Sequence[int]) -> Introduction:
        """One introduction, its reply checked and learned; raises PeerError."""
        reply = self.introductions.introduce(self.peers, address, agents, self.timeout_s)
        self.contacts.learn(reply.node, address if self.at_dialled else reply.address, reply.agents)
        return reply

    def _attempt(self, address: str, agents: Sequence[int]) -> bool:
        try:
            self.introduce(address, agents)
        except PeerError as exc:  # not up yet, or refusing: the caller hears, we try again
            if self.on_outcome is not None:
                self.on_outcome(address, exc)
            return False
        if self.on_outcome is not None:
            self.on_outcome(address, None)
        return True

    def _run(self) -> None:
        done: set[str] = set()
        last_full = time.monotonic()
        while not self._stop.is_set():
            for address, agents in self.targets().items():
                if address not in done and self._attempt(address, agents):
                    done.add(address)
            if self.on_pass is not None:
                self.on_pass()
            if time.monotonic() - last_full >= self.recheck_s:
                done.clear()
                last_full = time.monotonic()
            self._stop.wait(self.every_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the introduction in flight (at most `timeout_s`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)


# -- a coordinator -------------------------------------------------------------------------------


class CoordinatorLink:
    """This node's calls to the coordinator at `address` (`swarm coordinator`, or a run's
    CoordinatorHost); each raises PeerError when it fails."""

    def __init__(self, peers: PeerCalls, address: str, codec: Codec):
        self.peers, self.address, self.codec = peers, address, codec

    def submit(self, round_: int, msgs: list[Message], timeout_s: float) -> int:
        """Submit signed messages for round `round_`, packed; returns the knowledge messages
        delivered (swarm/accounting.py's unit). Stale: the round closed without them."""
        delivered = 0
        for batch in self.codec.pack(round_, msgs):
            self.peers.submit(self.address, batch, timeout_s)
            delivered += messages_in(batch)
        return delivered

    def aggregate(self, round_: int, timeout_s: float) -> Delta:
        """Round `round_`'s aggregate, decoded, waiting up to `timeout_s` for the round to
        close (Unreachable when it did not); raises DeltaRejected if it does not verify.

        The request is signed with the swarm key (the coordinator answers nobody else). For a
        round the coordinator no longer keeps the answer is a snapshot (`Delta.snapshot`: the
        sum of every aggregate since version 0, at the coordinator's version), which
        `FederatedClient.apply_aggregate` turns into the global model; the reply's own
        `snapshot` flag must agree with the signed one."""
        request = wire.aggregate_request(self.codec.node, round_, self.codec.key)
        reply = self.peers.get_aggregate(self.address, request, timeout_s)
        aggregate = self.codec.decode(reply.aggregate)
        if aggregate.snapshot != reply.snapshot:
            raise DeltaRejected(
                Rejection.MALFORMED,
                f"round {round_}: the reply and its aggregate disagree on whether it is a snapshot",
            )
        return aggregate

    def closed_aggregates(
        self,
        first: int,
        wait_s: float,
        *,
        then_wait_s: float = 0.5,
        stop: Callable[[], bool] = lambda: False,
    ) -> list[Delta]:
        """Aggregates of rounds first, first + 1, ... that have closed: the first waits up to
        `wait_s`, later ones `then_wait_s` (a closed round answers at once). Raises the first
        round's PeerError; a later failure ends the list. A snapshot (a round the coordinator
        no longer keeps) stands for every round up to its base_version: the list goes on
        from there."""
        out: list[Delta] = []
        round_, wait = first, wait_s
        while not stop():
            try:
                got = self.aggregate(round_, wait)
            except PeerError:
                if not out:
                    raise
                break
            out.append(got)
            round_, wait = got.base_version if got.snapshot else round_ + 1, then_wait_s
        return out

    def catch_up(
        self, client: FederatedClient, x: np.ndarray, round_: int, timeout_s: float
    ) -> int:
        """Bring `client` (and its agents' rows `x`), at a version before `round_`, to the
        global model: apply each closed round's aggregate in turn (or, past the coordinator's
        window, its snapshot), then drop the error feedback, whose residuals belonged to
        deltas the global model now holds. Returns the versions it moved on."""
        start = client.version
        while client.version < round_:
            client.apply_aggregate(x, self.aggregate(client.version, timeout_s))
        client.error[:] = 0
        return client.version - start
