"""A key holder against a real gossip server on 127.0.0.1: signed messages past the limits of
`protocols.gossip.Limits` (and the wire's counters) are refused with a status, counted, and
never applied; the honest sender they imitate is still taken afterwards (issue 18)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from test_transport import KEY, MAX_BYTES, P

from protocols import wire
from protocols.compression import DENSE_F32, Compressed
from protocols.config import CompressionConfig, GraphConfig, LimitsConfig
from protocols.delta import Delta
from protocols.errors import PeerError
from protocols.gossip import ChocoGossip, Limits
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server
from swarm.proto.v1 import delta_pb2

#: The common initial model: ||x0|| = 4, max|x0| = 1 (P = 16 values of 1).
X0 = np.ones(P, np.float32)
#: This node's clock ceiling for epochs (a swarm-node: wall ms + allowed skew).
CEILING = 5_000


@contextlib.contextmanager
def limited_receiver() -> Iterator[tuple[ChocoGossip, TrafficCounters, Peers, str]]:
    """Node n0 hosting agent 0 of a 4-ring with the default `GossipConfig.limits`."""
    node = ChocoGossip(
        local=[0],
        weights=metropolis_weights(build_graph(GraphConfig(kind="ring"), 4, 0)),
        x0=X0,
        gamma=1.0,
        compression=CompressionConfig(kind="none"),
        layout="L",
        owner=lambda j: f"n{j}",
        limits=Limits.relative_to(X0, LimitsConfig(), epoch_ceiling=lambda: CEILING),
    )
    counters = TrafficCounters()
    server, port = start_server(
        "127.0.0.1",
        0,
        gossip=GossipServicer("n0", wire.make_decoder(KEY, P, "L"), node.receive, counters),
        max_message_bytes=MAX_BYTES,
    )
    peers = Peers(MAX_BYTES, TrafficCounters())
    try:
        yield node, counters, peers, f"127.0.0.1:{port}"
    finally:
        peers.close()
        server.stop(grace=None)


def _signed(values: np.ndarray, *, version: int = 0, epoch: int = 0, snapshot: bool = False):
    d = Delta(
        "agent-1",
        0,
        version,
        "L",
        Compressed(DENSE_F32, P, values.astype(np.float32)),
        float(np.linalg.norm(values.astype(np.float64))),
        epoch=epoch,
        snapshot=snapshot,
    )
    return wire.to_proto(d, KEY)


def _push(peers: Peers, address: str, msg: delta_pb2.KnowledgeDelta) -> int:
    return peers.push(address, delta_pb2.DeltaBatch(sender_node="n1", deltas=[msg]), 10)


SMALL = np.full(P, 0.01, np.float32)  # norm 0.04: an ordinary delta


@pytest.mark.parametrize(
    ("what", "msg", "status", "counted"),
    [
        # the forgery: a snapshot at epoch 2^63 - 1 (crashed the next checkpoint)
        ("epoch beyond 2^62", _signed(X0, epoch=2**63 - 1, snapshot=True), "INVALID_ARGUMENT",
         "rejected_malformed"),
        ("version beyond 2^62", _signed(SMALL, version=2**62 + 1), "INVALID_ARGUMENT",
         "rejected_malformed"),
        ("epoch ahead of the clock", _signed(X0, epoch=CEILING + 1, snapshot=True),
         "INVALID_ARGUMENT", "rejected_out_of_bounds"),
        # the forgery: values 1000 (probe accuracy 0.74 -> 0.14 in 8 s)
        ("snapshot of values 1000", _signed(np.full(P, 1000.0), epoch=7, snapshot=True),
         "INVALID_ARGUMENT", "rejected_out_of_bounds"),
        ("snapshot norm 5 ||x0||", _signed(5 * X0, epoch=7, snapshot=True), "INVALID_ARGUMENT",
         "rejected_out_of_bounds"),
        ("delta norm 2 ||x0||", _signed(2 * X0), "INVALID_ARGUMENT", "rejected_out_of_bounds"),
        ("one value of 17 max|x0|", _signed(np.eye(1, P, 0, np.float32)[0] * 17),
         "INVALID_ARGUMENT", "rejected_out_of_bounds"),
    ],
)  # fmt: skip
def test_a_key_holders_message_past_a_limit_is_refused_counted_and_not_applied(
    what: str, msg: delta_pb2.KnowledgeDelta, status: str, counted: str
) -> None:
    with limited_receiver() as (node, counters, peers, address):
        # Execute
        with pytest.raises(PeerError) as info:
            _push(peers, address, msg)
        # Assert: the status, the count, and the copy untouched; the honest agent-1 is next
        assert info.value.status == status, what
        assert counters.snapshot()[counted] == 1, what
        assert np.array_equal(node.xhat[1], X0), what
        assert _push(peers, address, _signed(SMALL)) == 1
        node.apply(np.zeros((1, P), np.float32), mix=False)
        assert np.allclose(node.xhat[1], X0 + SMALL)


def test_a_version_far_past_the_last_accepted_is_refused_within_the_epoch() -> None:
    jump = LimitsConfig().version_jump
    with limited_receiver() as (node, counters, peers, address):
        # Prepare: agent-1 heard from at epoch 7, version 3
        assert _push(peers, address, _signed(X0, version=3, epoch=7, snapshot=True)) == 1
        # Execute / Assert: a snapshot jumping past the window is refused ...
        with pytest.raises(PeerError) as info:
            _push(peers, address, _signed(X0, version=3 + jump + 1, epoch=7, snapshot=True))
        assert info.value.status == "INVALID_ARGUMENT"
        assert counters.snapshot()["rejected_out_of_bounds"] == 1
        # ... so agent-1's own next deltas are still taken (not dropped as old duplicates)
        assert _push(peers, address, _signed(SMALL, version=3, epoch=7)) == 1
        # a jump within the window is an honest resync; a newer epoch (a restart) any version
        assert _push(peers, address, _signed(X0, version=3 + jump, epoch=7, snapshot=True)) == 1
        assert _push(peers, address, _signed(X0, version=2**40, epoch=8, snapshot=True)) == 1


def test_honest_deltas_are_far_inside_the_default_limits() -> None:
    # The limits are multiples of x0; what the defaults allow on this x0
    limits = Limits.relative_to(X0, LimitsConfig())
    assert limits.max_delta_norm == pytest.approx(4.0)  # 1 x ||x0||
    assert limits.max_snapshot_norm == pytest.approx(16.0)  # 4 x ||x0||
    assert limits.max_value == pytest.approx(16.0)  # 16 x max|x0|
    # an all-zero x0 (a test model) leaves the norms and values unbounded
    zero = Limits.relative_to(np.zeros(P, np.float32), LimitsConfig())
    assert zero.max_delta_norm == zero.max_snapshot_norm == zero.max_value == float("inf")


def test_a_runs_own_agents_are_exempt_and_devices_are_held() -> None:
    from protocols.delta import DeltaRejected

    # Prepare: a shard's limits: agents below 4 are the run's own, 4 and up are devices
    limits = Limits.relative_to(X0, LimitsConfig(), exempt=lambda s: int(s.split("-")[1]) < 4)
    huge = Compressed(DENSE_F32, P, np.full(P, 100.0, np.float32))
    norm = float(np.linalg.norm(huge.values))
    # Execute / Assert: the run's agent-1 passes (a diverging run must say so, not refuse) ...
    limits.check_magnitude(Delta("agent-1", 0, 0, "L", huge, norm))
    # ... a device's agent-5 does not
    with pytest.raises(DeltaRejected, match="above this swarm's limit"):
        limits.check_magnitude(Delta("agent-5", 0, 0, "L", huge, norm))
