"""The gRPC edge against a real server on 127.0.0.1: statuses, counting, nothing applied."""

from __future__ import annotations

import contextlib

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocols import wire
from protocols.compression import DENSE_F32, Compressed
from protocols.config import CompressionConfig, GraphConfig
from protocols.delta import Delta
from protocols.gossip import ChocoGossip
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import GossipServicer, Peers, TrafficCounters, start_server
from swarm.proto.v1 import delta_pb2

KEY = b"s" * 32
P = 16
MAX_BYTES = 2**20


@contextlib.contextmanager
def serve_receiver(**server_kwargs):
    """Node n0 hosting agent 0 of a 4-ring (agents 1 and 3 are its remote neighbours), served on
    127.0.0.1; yields (ChocoGossip sink, its TrafficCounters, address). Shared by the TLS and
    hostile-input tests; `server_kwargs` go to `start_server` (e.g. tls=, node=)."""
    weights = metropolis_weights(build_graph(GraphConfig(kind="ring"), 4, 0))
    node = ChocoGossip(
        local=[0],
        weights=weights,
        x0=np.zeros(P, np.float32),
        gamma=1.0,
        compression=CompressionConfig(kind="none"),
        layout="L",
        owner=lambda j: f"n{j}",
    )
    counters = TrafficCounters()

    def decode(msg):
        return wire.from_proto(msg, key=KEY, num_params=P, layout="L")

    server, port = start_server(
        "127.0.0.1",
        0,
        gossip=GossipServicer("n0", decode, node.receive, counters),
        max_message_bytes=MAX_BYTES,
        **server_kwargs,
    )
    try:
        yield node, counters, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def receiver():
    with serve_receiver() as (node, counters, address):
        peers = Peers(MAX_BYTES, TrafficCounters())
        yield node, counters, peers, address
        peers.close()


def _msg(sender="agent-1", values=None, version=0, key=KEY, **fields):
    values = np.ones(P, np.float32) if values is None else values
    d = Delta(
        sender,
        0,
        version,
        "L",
        Compressed(DENSE_F32, values.size, values),
        float(np.linalg.norm(values)),
    )
    msg = wire.to_proto(d, key)
    if fields:
        for k, v in fields.items():
            setattr(msg, "values" if k == "raw_values" else k, v)
        wire.sign(msg, key)
    return msg


def _push(peers, address, *msgs):
    return peers.push(address, delta_pb2.DeltaBatch(sender_node="n1", deltas=msgs), 10)


def test_health_check_serves(receiver) -> None:
    _, _, _, address = receiver
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="swarm.v1.Gossip"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_good_delta_crosses_and_changes_weights(receiver) -> None:
    node, counters, peers, address = receiver
    assert _push(peers, address, _msg("agent-1"), _msg("agent-3", values=-np.ones(P, "f4"))) == 2
    x = np.zeros((1, P), np.float32)
    assert node.apply(x) == 2
    assert counters.snapshot()["deltas_accepted"] == 2
    assert counters.snapshot()["wire_bytes_received"] > 2 * 4 * P
    # MH weights on a 4-ring are 1/3: x0 += 1/3 * (1 - 0) + 1/3 * (-1 - 0) = 0 ...
    assert np.allclose(x, 0)
    # ... while one-sided knowledge moves it.
    _push(peers, address, _msg("agent-1", version=1))
    node.apply(x)
    assert np.allclose(x, 1 / 3 * 2 + 1 / 3 * (-1), atol=1e-6)


BAD = {
    "bad_signature": (lambda: _msg(key=b"x" * 32), grpc.StatusCode.UNAUTHENTICATED),
    "unknown_sender": (lambda: _msg("agent-2"), grpc.StatusCode.PERMISSION_DENIED),
    "wrong_shape": (
        lambda: _msg(num_params=P + 1, raw_values=np.ones(P + 1, "<f4").tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "non_finite": (
        lambda: _msg(raw_values=np.full(P, np.inf, "<f4").tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "stale": (lambda: _msg(version=7), grpc.StatusCode.FAILED_PRECONDITION),
    "malformed": (lambda: _msg(encoding=9), grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_delta_gets_status_is_counted_and_never_applied(receiver, kind: str) -> None:
    node, counters, peers, address = receiver
    make, code = BAD[kind]
    with pytest.raises(grpc.RpcError) as info:
        # a good delta in the same batch is refused with it: batches are all-or-nothing
        _push(peers, address, _msg("agent-3"), make())
    assert info.value.code() == code
    x = np.zeros((1, P), np.float32)
    assert node.apply(x) == 0
    assert np.array_equal(x, np.zeros((1, P), np.float32))
    assert counters.snapshot()["deltas_rejected"] == 2
