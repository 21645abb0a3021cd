"""Resynchronisation of CHOCO-Gossip after restarts and for late joiners (epochs, snapshots,
checkpoints), node introductions, and inactive neighbours: in pure logic and over real gRPC on
127.0.0.1."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protocols import wire
from protocols.compression import DENSE_F32, Compressed, compress
from protocols.config import CompressionConfig, GraphConfig
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.errors import KeyMismatch, NotServed, Refused, Stale
from protocols.gossip import ChocoGossip, agent_name
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server
from swarm.proto.v1 import delta_pb2, gossip_pb2

KEY = b"r" * 32
P = 16
MAX_BYTES = 2**20
PAIR = np.full((2, 2), 0.5)  # two agents, each averaging with the other


def _gossip(
    local: list[int],
    weights: np.ndarray = PAIR,
    *,
    epoch: int = 0,
    kind: str = "none",
    p: int = P,
) -> ChocoGossip:
    return ChocoGossip(
        local=local,
        weights=weights,
        x0=np.zeros(p, np.float32),
        gamma=0.5,
        compression=CompressionConfig(kind=kind, ratio=0.25),
        layout="L",
        owner=lambda j: f"n{j}",
        epoch=epoch,
    )


def _message(
    values: np.ndarray, *, version: int, epoch: int = 0, snapshot: bool = False, sender: int = 0
) -> Delta:
    values = np.asarray(values, np.float32)
    return Delta(
        sender=agent_name(sender),
        round=0,
        base_version=version,
        layout="L",
        payload=Compressed(DENSE_F32, values.size, values),
        norm=float(np.linalg.norm(values.astype(np.float64))),
        epoch=epoch,
        snapshot=snapshot,
    )


def _stale(node: ChocoGossip, deltas: list[Delta], words: str) -> DeltaRejected:
    with pytest.raises(DeltaRejected, match=words) as info:
        node.receive(deltas)
    assert info.value.reason == Rejection.STALE
    return info.value


# -- acceptance rules ---------------------------------------------------------------------------


def test_snapshot_acceptance_rules() -> None:
    ones = np.ones(P)
    # The first delta of a fresh sender (version 0: it starts from the common init, like the
    # receiver's untouched copy) is taken whatever its epoch.
    fresh = _gossip([1])
    assert fresh.receive([_message(ones, version=0, epoch=7)]) == 1
    assert (fresh.known_epoch("agent-0"), fresh.received_from("agent-0")) == (7, 1)
    b = _gossip([1])
    # A delta of a newer epoch cannot apply to a copy of the old one.
    exc = _stale(b, [_message(ones, version=1, epoch=1)], "needs a snapshot first")
    assert "holds agent-0 epoch 0 version 0" in exc.detail  # what the sender must act on
    # A snapshot of a newer epoch is accepted, whatever its version.
    assert b.receive([_message(3 * ones, version=3, epoch=1, snapshot=True)]) == 1
    assert (b.known_epoch("agent-0"), b.received_from("agent-0")) == (1, 3)
    _stale(b, [_message(ones, version=9, epoch=0, snapshot=True)], "earlier incarnation")
    _stale(b, [_message(ones, version=3, epoch=0)], "earlier incarnation")
    # An older snapshot of the current epoch is a duplicate: acknowledged, not applied.
    assert b.receive([_message(ones, version=2, epoch=1, snapshot=True)]) == 0
    b.receive([_message(3 * ones, version=3, epoch=1, snapshot=True)])  # same version: harmless
    b.receive([_message(ones, version=3, epoch=1)])
    # a delta sent again (at-least-once delivery) is a duplicate too
    assert b.receive([_message(ones, version=3, epoch=1)]) == 0
    assert b.duplicates == 2
    _stale(b, [_message(ones, version=5, epoch=1)], "applies to version 5")  # a gap
    # A later incarnation may start from a lower version.
    b.receive([_message(-ones, version=0, epoch=2, snapshot=True)])
    assert (b.known_epoch("agent-0"), b.received_from("agent-0")) == (2, 0)
    # Batches stay all-or-none: a good delta next to a stale one is refused with it.
    _stale(b, [_message(ones, version=0, epoch=2), _message(ones, version=5, epoch=2)], "version")
    assert b.received_from("agent-0") == 0
    b.apply(np.zeros((1, P), np.float32))
    assert np.array_equal(b.xhat[0], -ones.astype(np.float32))
    assert b.version[0] == 0


def test_batch_is_checked_in_order_and_applied_in_acceptance_order() -> None:
    b = _gossip([1])
    ones = np.ones(P)
    batch = [
        _message(ones, version=0),
        _message(5 * ones, version=7, snapshot=True),  # skips versions 1..6
        _message(2 * ones, version=7),
        _message(ones, version=8),
    ]
    assert b.receive(batch) == 4
    assert b.apply(np.zeros((1, P), np.float32)) == 4
    assert np.array_equal(b.xhat[0], np.full(P, 8, np.float32))
    assert b.version[0] == 9 == b.received_from("agent-0")


def test_replaying_an_old_snapshot_cannot_roll_a_copy_back() -> None:
    a, b = _gossip([0]), _gossip([1])
    rng = np.random.default_rng(0)
    xa = rng.normal(size=(1, P)).astype(np.float32)
    first = a.make_snapshots(0)
    b.receive(first)
    for r in range(3):
        xa += rng.normal(size=(1, P)).astype(np.float32)
        b.receive(a.make_deltas(xa, r, [1]))
    b.apply(np.zeros((1, P), np.float32))
    assert b.receive(first) == 0  # acknowledged as a duplicate, never applied
    b.apply(np.zeros((1, P), np.float32))
    assert np.array_equal(b.xhat[0], a.xhat[0])
    assert b.version[0] == a.version[0] == 3


def test_make_deltas_stamps_the_epoch_and_snapshots_change_nothing() -> None:
    a = _gossip([0], epoch=4)
    x = np.ones((1, P), np.float32)
    (d,) = a.make_deltas(x, 0, [2])
    assert (d.epoch, d.snapshot, d.base_version) == (4, False, 0)
    before = a.state()
    (s,) = a.make_snapshots(7)
    assert (s.epoch, s.snapshot, s.base_version, s.round, s.examples) == (4, True, 1, 7, 0)
    assert s.payload.encoding == DENSE_F32
    assert np.array_equal(s.payload.decode(), a.xhat[0])
    assert s.norm == pytest.approx(np.linalg.norm(a.xhat[0]))
    assert _same_state(before, a.state())


# -- restart in pure logic ------------------------------------------------------------------------


def _deliver(sender: ChocoGossip, receiver: ChocoGossip, msgs: list[Delta], round_: int) -> bool:
    """What a node program does: push; on STALE push snapshots instead. True if it resynced."""
    try:
        receiver.receive(msgs)
        return False
    except DeltaRejected as exc:
        assert exc.reason == Rejection.STALE, exc
        receiver.receive(sender.make_snapshots(round_))
        return True


def _learn(x: np.ndarray, rng: np.random.Generator) -> None:
    x += 0.1 * rng.normal(size=x.shape).astype(np.float32)


def test_restart_from_a_checkpoint_resynchronises_every_copy() -> None:
    rng = np.random.default_rng(1)
    a, b = _gossip([0], kind="topk"), _gossip([1], kind="topk")
    xa = rng.normal(size=(1, P)).astype(np.float32)
    xb = rng.normal(size=(1, P)).astype(np.float32)
    saved = None
    for r in range(5):
        _learn(xa, rng)
        _learn(xb, rng)
        da, db = a.make_deltas(xa, r, [1]), b.make_deltas(xb, r, [1])
        assert not _deliver(a, b, da, r) and not _deliver(b, a, db, r)
        a.apply(xa)
        b.apply(xb)
        if r == 2:
            saved, xb_saved = b.state(), xb.copy()
    assert saved is not None
    # B crashes and resumes from its round-2 checkpoint, as a new incarnation.
    b = _gossip([1], kind="topk")
    b.load_state(saved, epoch=int(saved["epoch"]) + 1)
    xb = xb_saved
    a.receive(b.make_snapshots(5))  # a restarted node announces itself with snapshots
    assert a.known_epoch(agent_name(1)) == 1
    resynced = []
    for r in range(5, 8):
        _learn(xa, rng)
        _learn(xb, rng)
        da, db = a.make_deltas(xa, r, [1]), b.make_deltas(xb, r, [1])
        resynced.append((_deliver(a, b, da, r), _deliver(b, a, db, r)))
        a.apply(xa)
        b.apply(xb)
        assert np.array_equal(a.xhat[1], b.xhat[1])
        assert np.array_equal(b.xhat[0], a.xhat[0])
        assert a.version[1] == b.version[1] and a.version[0] == b.version[0]
    # B's copy of A was at round 2: A's first delta was refused, once; B's deltas never were.
    assert resynced == [(True, False), (False, False), (False, False)]


def test_restart_needs_a_new_epoch() -> None:
    """Why epochs: a restored node reuses version numbers. Within one epoch (sender, version)
    names one message, so a receiver drops a version it holds as a duplicate; a restored node
    that kept its epoch would be ignored, and one with a new epoch is resynchronised."""
    a, b = _gossip([0]), _gossip([1])
    xb = np.zeros((1, P), np.float32)
    saved = b.state()
    for r in range(3):
        xb += 1
        a.receive(b.make_deltas(xb, r, [1]))
    a.apply(np.zeros((1, P), np.float32))
    held = a.xhat[1].copy()
    b2 = _gossip([1])
    b2.load_state(saved)  # same epoch: its versions 0..2 are not what A holds
    assert a.receive(b2.make_deltas(xb - 5, 3, [1])) == 0  # taken for a duplicate
    a.apply(np.zeros((1, P), np.float32))
    assert np.array_equal(a.xhat[1], held)
    b3 = _gossip([1])
    b3.load_state(saved, epoch=1)
    _stale(a, b3.make_deltas(xb - 5, 3, [1]), "needs a snapshot first")
    assert a.receive(b3.make_snapshots(3)) == 1
    a.apply(np.zeros((1, P), np.float32))
    assert np.array_equal(a.xhat[1], b3.xhat[1])


# -- checkpoints --------------------------------------------------------------------------------


def _same_state(s1: dict, s2: dict) -> bool:
    return s1.keys() == s2.keys() and all(np.array_equal(s1[k], s2[k]) for k in s1)


def _save(state: dict, path: Path) -> None:
    """How a node program would store it: ints in JSON, arrays in an .npz, no pickles."""
    ints = {k: v for k, v in state.items() if isinstance(v, int)}
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    assert len(ints) + len(arrays) == len(state)
    path.with_suffix(".json").write_text(json.dumps(ints))
    np.savez(path.with_suffix(".npz"), **arrays)


def _load(path: Path) -> dict:
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as npz:
        state: dict = {k: npz[k] for k in npz.files}
    state.update(json.loads(path.with_suffix(".json").read_text()))
    return state


def _ring_round(nodes: list[ChocoGossip], xs: np.ndarray, r: int, *, apply: bool = True) -> None:
    outbox = [node.make_deltas(xs[i][None], r, [i]) for i, node in enumerate(nodes)]
    for node in nodes:
        node.receive([d for ds in outbox for d in ds if node.known_sender(d.sender)])
    if apply:
        for i, node in enumerate(nodes):
            x = xs[i][None].copy()
            node.apply(x)
            xs[i] = x[0]


def test_state_round_trip_behaves_identically(tmp_path: Path) -> None:
    n = 5
    w = metropolis_weights(build_graph(GraphConfig(kind="ring"), n, 0))
    nodes = [_gossip([i], w, kind="topk_int8", epoch=2) for i in range(n)]
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(n, P)).astype(np.float32)
    for sender in nodes:  # a swarm that starts at epoch 2 first sends snapshots of it
        for node in nodes:
            node.receive([s for s in sender.make_snapshots(0) if node.known_sender(s.sender)])
    for r in range(3):
        _ring_round(nodes, xs, r)
    nodes[0].receive(nodes[1].make_snapshots(3))
    _ring_round(nodes, xs, 3, apply=False)  # node 0 checkpoints with deltas still pending
    node = nodes[0]
    node.set_active(1, False)  # not part of the state: liveness is relearned after a restart
    _save(node.state(), tmp_path / "ckpt")
    twin = _gossip([0], w, kind="topk_int8")
    twin.load_state(_load(tmp_path / "ckpt"))
    node.set_active(1, True)
    assert _same_state(node.state(), twin.state())
    assert twin.epoch == 2 and twin.active(1)
    assert twin.received_from("agent-1") == node.received_from("agent-1") == 4
    x1, x2 = xs[:1].copy(), xs[:1].copy()
    assert node.apply(x1) == twin.apply(x2) == 3  # agent-1's snapshot and delta, agent-4's
    assert np.array_equal(x1, x2)
    for r in range(4, 6):
        d1, d2 = node.make_deltas(x1, r, [1]), twin.make_deltas(x2, r, [1])
        for a, b in zip(d1, d2, strict=True):
            assert (a.base_version, a.epoch, a.norm) == (b.base_version, b.epoch, b.norm)
            assert np.array_equal(a.payload.decode(), b.payload.decode())
        incoming = nodes[1].make_deltas(xs[1][None].copy(), r, [1])
        assert node.receive(incoming) == twin.receive(incoming) == 1
        assert node.apply(x1) == twin.apply(x2) == 1
        assert np.array_equal(x1, x2)
    assert _same_state(node.state(), twin.state())


def test_load_state_refuses_another_node_and_an_older_epoch() -> None:
    state = _gossip([0], epoch=3).state()
    with pytest.raises(ValueError, match="older than the saved epoch"):
        _gossip([0]).load_state(state, epoch=2)
    w = metropolis_weights(build_graph(GraphConfig(kind="ring"), 5, 0))
    with pytest.raises(ValueError, match="tracks"):
        _gossip([0], w).load_state(state)
    with pytest.raises(ValueError, match="shape"):
        _gossip([0], p=P + 1).load_state(state)


# -- wire ---------------------------------------------------------------------------------------


def test_wire_carries_epoch_and_snapshot() -> None:
    a = _gossip([0], epoch=6)
    a.make_deltas(np.arange(P, dtype=np.float32)[None], 0, [1])
    (snap,) = a.make_snapshots(1)
    back = wire.from_proto(wire.to_proto(snap, KEY), key=KEY, num_params=P, layout="L")
    assert (back.epoch, back.snapshot, back.base_version) == (6, True, 1)
    assert np.array_equal(back.payload.decode(), a.xhat[0])


def test_lossy_snapshot_is_malformed() -> None:
    values = np.arange(P, dtype=np.float32)
    payload = compress(values, CompressionConfig(kind="int8"))
    norm = float(np.linalg.norm(payload.decode()))
    lossy = Delta("agent-0", 0, 0, "L", payload, norm, epoch=1, snapshot=True)
    with pytest.raises(DeltaRejected, match="ENCODING_DENSE_F32") as info:
        wire.from_proto(wire.to_proto(lossy, KEY), key=KEY, num_params=P, layout="L")
    assert info.value.reason == Rejection.MALFORMED


def test_chunked_snapshot_is_reassembled_with_its_epoch() -> None:
    p, limit = 300_000, 256 * 1024  # 1.2 MB dense: several chunks
    a = _gossip([0], epoch=3, p=p)
    a.make_deltas(np.random.default_rng(4).normal(size=(1, p)).astype(np.float32), 0, [1])
    (snap,) = a.make_snapshots(9)
    batches = wire.pack("n0", 9, [wire.to_proto(snap, KEY)], limit, KEY)
    assert len(batches) > 1
    chunks = [m for b in batches for m in b.deltas]
    assert all(c.snapshot and c.epoch == 3 for c in chunks)
    decode = wire.make_decoder(KEY, p, "L")
    # A chunk of a delta with the same round and version must never be merged into the
    # snapshot: it displaces the incomplete snapshot (one pending message per sender), which
    # then has to come again, rather than completing it with foreign values.
    stray = delta_pb2.KnowledgeDelta()
    stray.CopyFrom(chunks[1])
    stray.snapshot = False
    stray.values = bytes(len(stray.values))
    wire.sign(stray, KEY)
    assert [decode(c) for c in [*chunks[:-1], stray, chunks[-1]]] == [None] * (len(chunks) + 1)
    out = [d for d in map(decode, chunks) if d is not None]
    assert len(out) == 1
    (back,) = out
    assert (back.snapshot, back.epoch, back.base_version, back.round) == (True, 3, 1, 9)
    assert np.array_equal(back.payload.decode(), a.xhat[0])
    b = _gossip([1], p=p)
    b.receive(out)
    b.apply(np.zeros((1, p), np.float32))
    assert np.array_equal(b.xhat[0], a.xhat[0]) and b.version[0] == 1


# -- inactive neighbours ------------------------------------------------------------------------


def test_inactive_neighbour_is_left_out_of_the_mix() -> None:
    w = np.full((3, 3), 1 / 3)
    node = _gossip([0], w)
    node.receive([_message(np.full(P, 3.0), version=0, sender=1)])
    node.receive([_message(np.full(P, -6.0), version=0, sender=2)])
    assert node.active(1) and node.active(2)
    node.set_active(2, False)
    assert not node.active(2)
    x = np.zeros((1, P), np.float32)
    node.apply(x)
    assert np.allclose(x, 0.5 * (1 / 3) * 3.0)  # gamma * W_01 * (xhat_1 - xhat_0); 2 skipped
    node.receive([_message(np.ones(P), version=1, sender=2)])  # still accepted while inactive
    node.set_active(2, True)
    x = np.zeros((1, P), np.float32)
    node.apply(x)
    assert np.allclose(x, 0.5 * (1 / 3) * (3.0 - 5.0))
    with pytest.raises(ValueError, match="not a remote neighbour"):
        node.set_active(0, False)


# -- over real gRPC -----------------------------------------------------------------------------


@contextlib.contextmanager
def _serve(name: str, gossip: ChocoGossip | None = None, **servicer_kwargs) -> Iterator[tuple]:
    """A Gossip server on 127.0.0.1 feeding `gossip`; yields (address, counters)."""
    counters = TrafficCounters()
    decode = wire.make_decoder(KEY, P, "L")
    sink = gossip.receive if gossip is not None else (lambda deltas: len(deltas))
    servicer = GossipServicer(name, decode, sink, counters, **servicer_kwargs)
    server, port = start_server("127.0.0.1", 0, gossip=servicer, max_message_bytes=MAX_BYTES)
    try:
        yield f"127.0.0.1:{port}", counters
    finally:
        server.stop(grace=None)


def _batch(node: str, round_: int, deltas: list[Delta]) -> delta_pb2.DeltaBatch:
    return delta_pb2.DeltaBatch(
        sender_node=node, round=round_, deltas=[wire.to_proto(d, KEY) for d in deltas]
    )


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers(MAX_BYTES, TrafficCounters())
    yield p
    p.close()


def test_restarted_peer_refuses_stale_pushes_until_snapshots_arrive(peers: Peers) -> None:
    rng = np.random.default_rng(5)
    a, b = _gossip([0]), _gossip([1])
    xa = rng.normal(size=(1, P)).astype(np.float32)
    xb = rng.normal(size=(1, P)).astype(np.float32)
    with _serve("n0", a) as (addr_a, _):
        with _serve("n1", b) as (addr_b, _):
            for r in range(3):
                assert peers.push(addr_b, _batch("n0", r, a.make_deltas(xa, r, [1])), 10) == 1
                assert peers.push(addr_a, _batch("n1", r, b.make_deltas(xb, r, [1])), 10) == 1
                a.apply(xa)
                b.apply(xb)
        # B restarts from scratch as incarnation 1, on a new port.
        b = _gossip([1], epoch=1)
        xb = rng.normal(size=(1, P)).astype(np.float32)
        with _serve("n1", b) as (addr_b, counters_b):
            r = 3
            db = b.make_deltas(xb, r, [1])
            with pytest.raises(Stale) as info:  # A holds B's epoch 0
                peers.push(addr_a, _batch("n1", r, db), 10)
            assert "needs a snapshot first" in info.value.reason
            peers.push(addr_a, _batch("n1", r, b.make_snapshots(r)), 10)
            da = a.make_deltas(xa, r, [1])
            with pytest.raises(Stale) as info:  # B holds A's version 0
                peers.push(addr_b, _batch("n0", r, da), 10)
            assert "holds agent-0 epoch 0 version 0" in info.value.reason
            assert counters_b.snapshot()["rejected_stale"] == 1
            peers.push(addr_b, _batch("n0", r, a.make_snapshots(r)), 10)
            a.apply(xa)
            b.apply(xb)
            for r in range(4, 7):
                assert peers.push(addr_b, _batch("n0", r, a.make_deltas(xa, r, [1])), 10) == 1
                assert peers.push(addr_a, _batch("n1", r, b.make_deltas(xb, r, [1])), 10) == 1
                a.apply(xa)
                b.apply(xb)
                assert np.array_equal(a.xhat[1], b.xhat[1])
                assert np.array_equal(b.xhat[0], a.xhat[0])
    # Plain gossip between two (gamma 0.5, W 1/2): they approach each other.
    assert np.abs(xa - xb).max() < 0.2 * np.abs(xa).max()


def _introduction(node: str = "n1", address: str = "10.0.0.2:50051", key: bytes = KEY):
    msg = gossip_pb2.Introduction(
        node=node, address=address, agents=[1, 2], unix_ms=1_700_000_000_000, membership=True
    )
    wire.sign_introduction(msg, key)
    return msg


def test_check_introduction() -> None:
    wire.check_introduction(_introduction(), KEY)
    wire.check_introduction(_introduction(address="[::1]:7"), KEY)
    tampered = _introduction()
    tampered.agents.append(3)
    unsigned = _introduction()
    unsigned.signature = b""
    for bad in (tampered, unsigned, _introduction(key=b"x" * 32)):
        with pytest.raises(DeltaRejected) as info:
            wire.check_introduction(bad, KEY)
        assert info.value.reason == Rejection.BAD_SIGNATURE
    twice = gossip_pb2.Introduction(node="n1", address="h:1", agents=[4, 4])
    wire.sign_introduction(twice, KEY)
    for bad in (
        _introduction(node=""),
        _introduction(node="n" * 1000),
        _introduction(address="10.0.0.2"),
        _introduction(address=":50051"),
        _introduction(address="h:port"),
        _introduction(address="h:70000"),
        _introduction(address="h:0"),
        twice,
    ):
        with pytest.raises(DeltaRejected) as info:
            wire.check_introduction(bad, KEY)
        assert info.value.reason == Rejection.MALFORMED


def test_introduce_over_grpc(peers: Peers) -> None:
    heard: list[gossip_pb2.Introduction] = []

    def introduce(msg: gossip_pb2.Introduction) -> gossip_pb2.Introduction:
        wire.check_introduction(msg, KEY)
        heard.append(msg)
        return _introduction("n0", "127.0.0.1:1")

    with _serve("n0", introduce=introduce) as (address, counters):
        reply = peers.introduce(address, _introduction(), 10)
        wire.check_introduction(reply, KEY)
        assert (reply.node, list(reply.agents), reply.membership) == ("n0", [1, 2], True)
        assert [(m.node, m.address) for m in heard] == [("n1", "10.0.0.2:50051")]
        with pytest.raises(KeyMismatch):
            peers.introduce(address, _introduction(key=b"x" * 32), 10)
        with pytest.raises(Refused) as refused:
            peers.introduce(address, _introduction(address="nowhere"), 10)
        assert refused.value.status == "INVALID_ARGUMENT"
        stats = counters.snapshot()
        assert stats["rejected_bad_signature"] == 1 and stats["rejected_malformed"] == 1
        assert stats["deltas_accepted"] == 0 and stats["messages_received"] == 0
        assert len(heard) == 1
    with _serve("n0") as (address, _), pytest.raises(NotServed):
        peers.introduce(address, _introduction(), 10)


def test_apply_without_mix_only_takes_in_deltas() -> None:
    """A node lingering for its peers' last deltas must not repeat the consensus step: the
    step's increment depends on the copies only, so each repeat would move x again."""
    a, b = _gossip([0]), _gossip([1])
    xa = np.ones((1, P), np.float32)
    b.receive(a.make_deltas(xa, 0, [1]))
    xb = np.zeros((1, P), np.float32)
    assert b.apply(xb, mix=False) == 1
    assert np.array_equal(xb, np.zeros((1, P), np.float32))  # x untouched
    assert np.array_equal(b.xhat[0], a.xhat[0])  # the copy took the delta in
    b.apply(xb)
    once = xb.copy()
    assert not np.array_equal(once, np.zeros((1, P), np.float32))
    b.apply(xb)  # a second step with nothing new moves x by the same vector again
    assert np.allclose(xb, 2 * once)
