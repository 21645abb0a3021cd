"""The protocol steps the device node and the shards share (protocols/peering.py), in one
process: real gRPC on 127.0.0.1 where the edge matters, a recording fake of `Peers` elsewhere."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from protocols import wire
from protocols.config import CompressionConfig, GraphConfig
from protocols.coordinator import CoordinatorState, FederatedClient
from protocols.delta import DeltaRejected, Rejection
from protocols.errors import ClockSkew, KeyMismatch, PeerError, Stale, Unreachable
from protocols.gossip import ChocoGossip, agent_name
from protocols.peering import (
    Codec,
    Contacts,
    CoordinatorLink,
    Directory,
    Introducer,
    Introductions,
    Snapshots,
    make_outboxes,
)
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import (
    CoordinatorServicer,
    GossipServicer,
    Peers,
    TrafficCounters,
    start_server,
)
from swarm.proto.v1 import delta_pb2, gossip_pb2

KEY = b"k" * 32
P = 8
MAX_BYTES = 2**20


def _gossip(local: list[int], n: int = 6) -> ChocoGossip:
    """Agents `local` of an n-ring (agent j's node is 'n{j}')."""
    return ChocoGossip(
        local=local,
        weights=metropolis_weights(build_graph(GraphConfig(kind="ring"), n, 0)),
        x0=np.zeros(P, np.float32),
        gamma=1.0,
        compression=CompressionConfig(kind="none"),
        layout="L",
        owner=lambda j: f"n{j}",
    )


def _codec(node: str = "n0", key: bytes = KEY) -> Codec:
    return Codec(node, key, MAX_BYTES, P, "L")


class FakePeers:
    """Records pushes; answers introductions with `reply(address, msg)` or raises what it
    returns."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pushed: dict[str, list[delta_pb2.DeltaBatch]] = {}
        self.introduced: list[str] = []
        self.reply: dict[str, object] = {}

    def push(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int:
        with self.lock:
            self.pushed.setdefault(address, []).append(batch)
        return len(batch.deltas)

    def introduce(self, address, msg, timeout_s):
        with self.lock:
            self.introduced.append(address)
        answer = self.reply.get(address, Unreachable(address, "connection refused"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def submit(self, address, batch, timeout_s):  # pragma: no cover - not used here
        raise NotImplementedError

    def get_aggregate(self, address, request, timeout_s):  # pragma: no cover
        raise NotImplementedError

    def senders(self, address: str) -> list[tuple[str, bool]]:
        with self.lock:
            return [(d.sender, d.snapshot) for b in self.pushed.get(address, []) for d in b.deltas]


def _wait(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# -- the wire and the directory ---------------------------------------------------------------


def test_codec_signs_packs_and_decodes_what_it_signed() -> None:
    g = _gossip([0])
    codec = _codec()
    (msg,) = codec.sign(g.make_deltas(np.ones((1, P), np.float32), 0, [3]))
    (batch,) = codec.pack(0, [msg])
    assert batch.sender_node == "n0" and list(batch.deltas) == [msg]
    back = codec.decode(batch.deltas[0])
    assert (back.sender, back.examples) == ("agent-0", 3)
    assert np.allclose(back.payload.decode(), 1.0)
    with pytest.raises(DeltaRejected) as info:
        _codec(key=b"x" * 32).decode(msg)
    assert info.value.reason is Rejection.BAD_SIGNATURE


def test_directory_tells_a_first_contact_and_where_agents_live() -> None:
    d = Directory({"dev:1": [4]})  # known from a scenario, not yet met
    assert d.address_of(4) == "dev:1" and d.agents_at("dev:1") == [4] and d.nodes() == {}
    assert d.learn("agent-4", "dev:1", [4]) is True
    assert d.learn("agent-4", "dev:1", [4]) is False
    assert d.learn("n2", "h:2", [2, 3]) is True
    assert d.addresses([2, 4, 9]) == {"h:2", "dev:1"}
    assert d.addresses_of_node("n2") == ["h:2"]
    assert d.hosted() == {"dev:1": [4], "h:2": [2, 3]}
    d.learn("n2", "h:3", [2, 3])  # restarted on another port
    assert d.agents_at("h:2") == [] and d.agents_at("h:3") == [2, 3]


def test_snapshots_are_of_the_local_agents_that_neighbour_the_peer() -> None:
    """A shard hosting agents 0..2 of a 6-ring: the peer hosting agent 3 holds a copy of
    agent 2 only; one hosting agent 5 of agent 0; one hosting nobody's neighbour gets none."""
    g = _gossip([0, 1, 2])
    d = Directory({"a:3": [3], "a:5": [5], "a:4": [4]})
    snaps = Snapshots(g, _codec(), d.agents_at)
    assert [m.sender for m in snaps(7, "a:3")] == ["agent-2"]
    assert [m.sender for m in snaps(7, "a:5")] == ["agent-0"]
    assert snaps(7, "a:4") == [] and snaps(7, "nowhere:1") == []
    (msg,) = snaps(7, "a:3")
    assert msg.snapshot and msg.round == 7


# -- contact ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _contacts(rounds: list[int]) -> Iterator[tuple[ChocoGossip, Contacts, FakePeers, list]]:
    """Node n0 hosting agent 0 of a 6-ring (neighbours 1 and 5), with outboxes on a fake."""
    g, peers, directory = _gossip([0]), FakePeers(), Directory()
    outboxes = make_outboxes(
        peers, _codec(), Snapshots(g, _codec(), directory.agents_at), timeout_s=1.0
    )
    met: list[tuple[str, str]] = []
    contacts = Contacts(
        g,
        outboxes,
        directory,
        [1, 5],
        rounds_done=lambda: rounds[0],
        on_contact=lambda node, address: met.append((node, address)),
    )
    try:
        yield g, contacts, peers, met
    finally:
        outboxes.close()


def test_a_neighbour_mixes_only_once_its_node_is_heard_from() -> None:
    with _contacts([0]) as (g, contacts, peers, met):
        contacts.leave_out_until_contact()
        assert not g.active(1) and not g.active(5)
        contacts.learn("n1", "h:1", [1])
        assert g.active(1) and not g.active(5)
        assert met == [("n1", "h:1")]
        assert contacts.outboxes.pending() == 0  # no round yet: nothing was missed


def test_first_contact_after_rounds_starts_the_link_with_a_snapshot() -> None:
    rounds = [0]
    with _contacts(rounds) as (g, contacts, peers, _):
        contacts.leave_out_until_contact()
        rounds[0] = 3
        contacts.learn("n5", "h:5", [5])
        assert _wait(lambda: peers.senders("h:5") == [("agent-0", True)])
        contacts.learn("n5", "h:5", [5])  # heard again, nothing missed: no new snapshot
        assert contacts.outboxes.wait_empty(2.0)
        assert contacts.outboxes.stats()["h:5"].resyncs == 1
        contacts.learn("n9", "h:9", [3])  # not a neighbour: no link at all
        assert "h:9" not in contacts.outboxes.stats()


def test_a_lost_node_leaves_the_step_and_its_link_until_it_is_back() -> None:
    with _contacts([2]) as (g, contacts, peers, _):
        contacts.learn("n1", "h:1", [1])
        assert _wait(lambda: contacts.outboxes.stats()["h:1"].resyncs == 1)
        contacts.lost("n1")
        assert not g.active(1) and contacts.outboxes.stats()["h:1"].forgotten
        contacts.back("n1")
        assert g.active(1) and not contacts.outboxes.stats()["h:1"].forgotten
        assert _wait(lambda: contacts.outboxes.stats()["h:1"].resyncs == 2)  # revived


# -- introductions ------------------------------------------------------------------------------


def test_answer_checks_key_form_and_clock() -> None:
    ours = Introductions("n0", KEY, membership=True, max_clock_skew_s=30.0)
    ours.address = "127.0.0.1:7"
    theirs = Introductions("n1", KEY, membership=False)
    theirs.address = "127.0.0.1:8"
    reply = ours.answer(theirs.make([1]), [0])
    wire.check_introduction(reply, KEY)
    assert (reply.node, reply.address, list(reply.agents), reply.membership) == (
        "n0",
        "127.0.0.1:7",
        [0],
        True,
    )
    old = theirs.make([1])
    old.unix_ms -= 3_600_000
    wire.sign_introduction(old, KEY)
    with pytest.raises(DeltaRejected) as info:
        ours.answer(old, [0])
    assert info.value.reason is Rejection.CLOCK_SKEW and "-3600.0 s" in info.value.detail
    assert theirs.answer(old, [1]).node == "n1"  # no max_clock_skew_s: clocks unjudged
    forged = Introductions("n1", b"x" * 32, membership=False)
    forged.address = "127.0.0.1:8"
    with pytest.raises(DeltaRejected) as info:
        ours.answer(forged.make([1]), [0])
    assert info.value.reason is Rejection.BAD_SIGNATURE


@contextlib.contextmanager
def _introduced_node(
    key: bytes = KEY, *, check: bool = True
) -> Iterator[tuple[str, list[gossip_pb2.Introduction]]]:
    """A real server whose node 'n1' (agent 1) answers introductions (without checking them
    unless `check`); yields its address and the introductions it took."""
    intros = Introductions("n1", key, membership=True, max_clock_skew_s=30.0)
    heard: list[gossip_pb2.Introduction] = []

    def on_introduce(intro: gossip_pb2.Introduction) -> gossip_pb2.Introduction:
        reply = intros.answer(intro, [1]) if check else intros.make([1])
        heard.append(intro)
        return reply

    servicer = GossipServicer("n1", lambda m: None, lambda d: 0, TrafficCounters())
    servicer.introduce = on_introduce
    server, port = start_server("127.0.0.1", 0, gossip=servicer, max_message_bytes=MAX_BYTES)
    intros.address = f"127.0.0.1:{port}"
    try:
        yield intros.address, heard
    finally:
        server.stop(grace=None)


def test_introduce_over_grpc_and_each_way_a_key_can_differ() -> None:
    ours = Introductions("n0", KEY, membership=False)
    ours.address = "127.0.0.1:7"
    peers = Peers(MAX_BYTES, TrafficCounters())
    try:
        with _introduced_node() as (address, heard):
            reply = ours.introduce(peers, address, [0], 5.0)
            assert (reply.node, list(reply.agents)) == ("n1", [1])
            assert [(m.node, list(m.agents)) for m in heard] == [("n0", [0])]
            stranger = Introductions("n0", b"x" * 32, membership=False)
            stranger.address = "127.0.0.1:7"
            with pytest.raises(KeyMismatch) as info:  # the peer refuses our signature
                stranger.introduce(peers, address, [0], 5.0)
            assert "refused this node's introduction: bad_signature" in str(info.value)
            assert info.value.status == "UNAUTHENTICATED"
        with _introduced_node(key=b"x" * 32, check=False) as (address, _):
            with pytest.raises(KeyMismatch) as info:  # it took ours, its reply does not verify
                Introductions("n0", KEY, membership=False, max_clock_skew_s=30.0).introduce(
                    peers, address, [0], 5.0
                )
            assert "answered with an introduction that does not verify" in str(info.value)
    finally:
        peers.close()


def test_a_reply_from_a_skewed_clock_is_clock_skew() -> None:
    peers = FakePeers()
    theirs = Introductions("n1", KEY, membership=True)
    theirs.address = "h:1"
    reply = theirs.make([1])
    reply.unix_ms += 7_200_000
    wire.sign_introduction(reply, KEY)
    peers.reply["h:1"] = reply
    ours = Introductions("n0", KEY, membership=True, max_clock_skew_s=30.0)
    with pytest.raises(ClockSkew) as info:
        ours.introduce(peers, "h:1", [0], 1.0)
    assert "clock skew with n1 at h:1: its clock is +7200" in info.value.reason


@pytest.mark.parametrize(("at_dialled", "where"), [(False, "adv"), (True, "h")])
def test_introducer_retries_until_answered_and_learns_the_reply(at_dialled, where) -> None:
    """n0 introduces itself to h:1 (down at first) and h:5; each reply is learned at the
    address the peer advertises, or with at_dialled at the one dialled."""
    peers = FakePeers()
    answers = {}
    for j in (1, 5):
        them = Introductions(agent_name(j), KEY, membership=True)
        them.address = f"adv:{j}"
        answers[f"h:{j}"] = them.make([j])
    peers.reply["h:5"] = answers["h:5"]
    outcomes: list[tuple[str, PeerError | None]] = []
    passes: list[int] = []
    with _contacts([0]) as (g, contacts, _, _):
        contacts.leave_out_until_contact()
        introducer = Introducer(
            peers,
            Introductions("n0", KEY, membership=True),
            contacts,
            targets=lambda: {"h:1": [0], "h:5": [0]},
            every_s=0.01,
            timeout_s=1.0,
            recheck_s=3600.0,
            at_dialled=at_dialled,
            on_outcome=lambda a, e: outcomes.append((a, e)),
            on_pass=lambda: passes.append(1),
        )
        introducer.start()
        try:
            assert _wait(lambda: len(passes) >= 3)
            peers.reply["h:1"] = answers["h:1"]
            assert _wait(lambda: g.active(1))
        finally:
            introducer.stop()
        assert g.active(5)
        assert contacts.directory.address_of(1) == f"{where}:1"
    assert [e for a, e in outcomes if a == "h:5"] == [None]  # answered once: done with it
    failures = [e for a, e in outcomes if a == "h:1" and e is not None]
    assert len(failures) >= 3 and all(isinstance(e, Unreachable) for e in failures)


# -- a coordinator ------------------------------------------------------------------------------


@contextlib.contextmanager
def _coordinator(n_agents: int = 2) -> Iterator[tuple[str, CoordinatorState]]:
    state = CoordinatorState(
        agents=[agent_name(i) for i in range(n_agents)], num_params=P, layout="L"
    )
    servicer = CoordinatorServicer(
        decode=wire.make_decoder(KEY, P, "L"),
        submit=state.submit,
        wait_aggregate=state.wait_aggregate,
        encode=lambda d: wire.to_proto(d, KEY),
        counters=TrafficCounters(),
        round_timeout_s=5.0,
    )
    server, port = start_server("127.0.0.1", 0, coordinator=servicer, max_message_bytes=MAX_BYTES)
    try:
        yield f"127.0.0.1:{port}", state
    finally:
        server.stop(grace=None)


def _client(i: int) -> FederatedClient:
    return FederatedClient(
        local=[i],
        x0=np.zeros(P, np.float32),
        compression=CompressionConfig(kind="none"),
        layout="L",
    )


def test_coordinator_rounds_stale_submissions_and_catching_up() -> None:
    peers = Peers(MAX_BYTES, TrafficCounters())
    try:
        with _coordinator() as (address, _):
            links = [CoordinatorLink(peers, address, _codec(f"n{i}")) for i in (0, 1)]
            clients = [_client(0), _client(1)]
            for r in range(3):  # three rounds, each closed by both agents
                for i in (0, 1):
                    x = np.full((1, P), float(i + r), np.float32)
                    msgs = links[i].codec.sign(clients[i].make_deltas(x, r, [1]))
                    assert links[i].submit(r, msgs, 5.0) == 1
                for i in (0, 1):
                    clients[i].apply_aggregate(
                        np.zeros((1, P), np.float32), links[i].aggregate(r, 5.0)
                    )
            with pytest.raises(Stale):  # round 0 closed long ago
                late = _client(0)
                links[0].submit(
                    0, links[0].codec.sign(late.make_deltas(np.ones((1, P)), 0, [1])), 5.0
                )
            # a node restored at version 0 catches up to round 3: the three aggregates
            behind = _client(0)
            behind.error[:] = 1.0
            x = np.zeros((1, P), np.float32)
            assert links[0].catch_up(behind, x, 3, 5.0) == 3
            assert behind.version == 3 and not behind.error.any()
            assert np.allclose(x[0], clients[0].global_model)
            # closed rounds from 1 on, in order; the open round 3 ends the list
            got = links[0].closed_aggregates(1, 5.0, then_wait_s=0.1)
            assert [a.base_version for a in got] == [1, 2]
            with pytest.raises(Unreachable):  # the first one not closed in time: raised
                links[0].closed_aggregates(3, 0.2)
            assert links[0].closed_aggregates(0, 5.0, stop=lambda: True) == []
    finally:
        peers.close()


def test_the_aggregate_request_names_the_node() -> None:
    """CoordinatorLink asks for a round as its codec's node (what the service logs)."""
    asked: list[tuple[str, str, int]] = []

    class Recording(FakePeers):
        def get_aggregate(self, address, request, timeout_s):
            asked.append((address, request.node, request.round))
            raise Unreachable(address, "round has not closed", "UNAVAILABLE")

    with pytest.raises(Unreachable):
        CoordinatorLink(Recording(), "c:1", _codec("agent-3")).aggregate(4, 0.1)
    assert asked == [("c:1", "agent-3", 4)]


def test_directory_reports_an_agent_two_nodes_claim_and_keeps_the_first() -> None:
    from protocols.peering import Directory

    # Prepare: this node n0 hosts agent 0; n1 at a1 hosts agent 1
    directory = Directory(node="n0", local=[0])
    directory.learn("n1", "a1", [1])
    # Execute: n2 claims agent 1 too; n1 moves to a new address; someone claims agent 0
    directory.learn("n2", "a2", [1])
    directory.learn("n1", "a1b", [1])
    directory.learn("n0", "a9", [0])
    # Assert: both clashes reported, the first claimant keeps agent 1; a move is no clash
    assert directory.conflicts() == {
        0: {"this node": "n0", "a9": "n0"},
        1: {"a1": "n1", "a2": "n2"},
    }
    assert directory.address_of(1) == "a1b"


def test_status_lists_peers_and_trouble_first_and_counts_every_member() -> None:
    from swarm.node_status import STATUS_MEMBERS, _count_states, listed_members

    # Prepare: a table of 1,000 made-up alive members, two dead ones and this node's peer
    members = {f"ghost-{i:04d}": {"state": "alive"} for i in range(1000)}
    members |= {"zz-dead-1": {"state": "dead"}, "zz-dead-2": {"state": "dead"}}
    members["zz-peer"] = {"state": "alive"}
    # Execute
    listed = listed_members(members, ["zz-peer"])
    # Assert: bounded, the peer and the dead kept; the counts cover everyone
    assert len(listed) == STATUS_MEMBERS
    assert list(listed)[:3] == ["zz-peer", "zz-dead-1", "zz-dead-2"]
    assert _count_states(members) == {"total": 1003, "alive": 1001, "suspect": 0, "dead": 2}
    assert listed_members({"a": {"state": "alive"}}, []) == {"a": {"state": "alive"}}
