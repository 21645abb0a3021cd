"""The gRPC edge against a real server on 127.0.0.1: statuses, counting, nothing applied, and
the domain errors (protocols/errors.py) a failed call comes out as."""

from __future__ import annotations

import contextlib
import pickle
import socket

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocols import wire
from protocols.compression import DENSE_F32, Compressed
from protocols.config import CompressionConfig, GraphConfig
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.errors import (
    ClockSkew,
    KeyMismatch,
    NotServed,
    PeerError,
    Refused,
    Stale,
    Unreachable,
)
from protocols.gossip import ChocoGossip
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import (
    REJECTION_KEY,
    GossipServicer,
    Peers,
    TrafficCounters,
    check_health,
    peer_error,
    start_server,
)
from swarm.proto.v1 import delta_pb2, gossip_pb2, gossip_pb2_grpc

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


def _kind(exc: PeerError) -> type:
    """The most derived protocols.errors class of `exc` (Peers raises a transitional subclass
    that is also a grpc.RpcError, see protocols/transport.py: _StillRpcError)."""
    return next(c for c in type(exc).__mro__ if c.__module__ == "protocols.errors")


BAD = {  # kind -> (message, status, domain error, Rejection named in the trailing metadata)
    "bad_signature": (
        lambda: _msg(key=b"x" * 32),
        grpc.StatusCode.UNAUTHENTICATED,
        KeyMismatch,
        "BAD_SIGNATURE",
    ),
    "unknown_sender": (
        lambda: _msg("agent-2"),
        grpc.StatusCode.PERMISSION_DENIED,
        Refused,
        "UNKNOWN_SENDER",
    ),
    "wrong_shape": (
        lambda: _msg(num_params=P + 1, raw_values=np.ones(P + 1, "<f4").tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        Refused,
        "WRONG_SHAPE",
    ),
    "non_finite": (
        lambda: _msg(raw_values=np.full(P, np.inf, "<f4").tobytes()),
        grpc.StatusCode.INVALID_ARGUMENT,
        Refused,
        "NON_FINITE",
    ),
    "stale": (lambda: _msg(version=7), grpc.StatusCode.FAILED_PRECONDITION, Stale, "STALE"),
    "malformed": (
        lambda: _msg(encoding=9),
        grpc.StatusCode.INVALID_ARGUMENT,
        Refused,
        "MALFORMED",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_delta_gets_status_is_counted_and_never_applied(receiver, kind: str) -> None:
    node, counters, peers, address = receiver
    make, code, error, _ = BAD[kind]
    with pytest.raises(PeerError) as info:
        # a good delta in the same batch is refused with it: batches are all-or-nothing
        _push(peers, address, _msg("agent-3"), make())
    assert _kind(info.value) is error
    assert info.value.status == code.name and info.value.address == address
    assert kind in info.value.reason  # the peer's own words: "stale: ...", "malformed: ..."
    x = np.zeros((1, P), np.float32)
    assert node.apply(x) == 0
    assert np.array_equal(x, np.zeros((1, P), np.float32))
    assert counters.snapshot()["deltas_rejected"] == 2


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_refusal_names_its_rejection_in_the_trailing_metadata(receiver, kind: str) -> None:
    """What a client reads to tell refusals apart, with no word of the details matched."""
    _, _, _, address = receiver
    make, code, _, rejection = BAD[kind]
    batch = delta_pb2.DeltaBatch(sender_node="n1", deltas=[make()])
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        gossip_pb2_grpc.GossipStub(channel).PushDeltas(batch, timeout=10)
    assert info.value.code() == code
    assert (REJECTION_KEY, rejection) in tuple(info.value.trailing_metadata())


def _introduction(node: str = "n1") -> gossip_pb2.Introduction:
    return wire.introduction(node, "127.0.0.1:9", [1], membership=False, key=KEY)


def test_clock_skew_and_stale_are_told_apart_though_both_are_failed_precondition() -> None:
    def skewed(intro: gossip_pb2.Introduction) -> gossip_pb2.Introduction:
        raise DeltaRejected(Rejection.CLOCK_SKEW, "clock skew with n1: its clock is -3600.0 s")

    counters = TrafficCounters()
    servicer = GossipServicer("n0", lambda m: None, lambda d: 0, counters, introduce=skewed)
    server, port = start_server("127.0.0.1", 0, gossip=servicer, max_message_bytes=MAX_BYTES)
    peers = Peers(MAX_BYTES, TrafficCounters())
    try:
        with pytest.raises(ClockSkew) as info:
            peers.introduce(f"127.0.0.1:{port}", _introduction(), 10)
    finally:
        peers.close()
        server.stop(grace=None)
    assert not isinstance(info.value, Stale)
    assert info.value.status == "FAILED_PRECONDITION" and "-3600.0 s" in info.value.reason
    assert counters.snapshot()["rejected_clock_skew"] == 1


def test_a_node_that_takes_no_introductions_is_not_served(receiver) -> None:
    _, _, peers, address = receiver
    with pytest.raises(NotServed) as info:
        peers.introduce(address, _introduction(), 10)
    assert info.value.status == "UNIMPLEMENTED"


def test_a_peer_nobody_answers_for_is_unreachable() -> None:
    with socket.socket() as sock:  # a port nothing listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        peers = Peers(MAX_BYTES, TrafficCounters())
        try:
            batch = delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg()])
            with pytest.raises(Unreachable) as info:
                peers.push(address, batch, 0.5)  # waits for the peer to be ready until then
            assert check_health(address, None, "n1", "swarm.v1.Gossip", 0.5).startswith("DOWN (")
        finally:
            peers.close()
    assert info.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_check_health_reads_the_serving_status(receiver) -> None:
    _, _, _, address = receiver
    assert check_health(address, None, "n1", "swarm.v1.Gossip", 5.0) == "SERVING"


class _OldPeerError(grpc.RpcError):
    """A failed call from a peer that names no Rejection (an older node): a status alone."""

    def __init__(self, code: grpc.StatusCode, metadata: tuple = ()):
        self._code, self._metadata = code, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "in its words"

    def trailing_metadata(self) -> tuple:
        return self._metadata


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unreachable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unreachable),
        (grpc.StatusCode.FAILED_PRECONDITION, Stale),
        (grpc.StatusCode.UNAUTHENTICATED, KeyMismatch),
        (grpc.StatusCode.UNIMPLEMENTED, NotServed),
        (grpc.StatusCode.INVALID_ARGUMENT, Refused),
        (grpc.StatusCode.PERMISSION_DENIED, Refused),
        (grpc.StatusCode.INTERNAL, Refused),
    ],
)
def test_without_a_named_rejection_the_status_code_decides(code, error) -> None:
    exc = peer_error("h:1", _OldPeerError(code))
    assert _kind(exc) is error
    assert (exc.address, exc.reason, exc.status) == ("h:1", "in its words", code.name)
    assert exc.describe() == f"{code.name}: in its words"


def test_a_named_rejection_wins_over_the_status_code() -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    assert isinstance(
        peer_error("h:1", _OldPeerError(code, ((REJECTION_KEY, "CLOCK_SKEW"),))), ClockSkew
    )
    assert isinstance(peer_error("h:1", _OldPeerError(code, ((REJECTION_KEY, "STALE"),))), Stale)
    # a name this node does not know: the status code decides
    assert isinstance(peer_error("h:1", _OldPeerError(code, ((REJECTION_KEY, "NEW"),))), Stale)


def test_a_raised_error_survives_pickling() -> None:
    """A shard's failed call may cross Ray, which pickles the exception."""
    exc = peer_error("h:1", _OldPeerError(grpc.StatusCode.FAILED_PRECONDITION))
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and isinstance(back, Stale)
    assert (back.address, back.reason, back.status, str(back)) == (
        "h:1",
        "in its words",
        "FAILED_PRECONDITION",
        "h:1: in its words",
    )
