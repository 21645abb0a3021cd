"""Hostile bytes at the gRPC edge of a real server on 127.0.0.1: it refuses them with a status,
counts them, applies nothing, and keeps serving."""

from __future__ import annotations

import contextlib

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from test_transport import KEY, MAX_BYTES, P, _msg, serve_receiver

from protocols import wire
from protocols.delta import Delta
from protocols.transport import STATUS, CoordinatorServicer, TrafficCounters, start_server
from swarm.proto.v1 import coordinator_pb2, delta_pb2, gossip_pb2

PUSH = "/swarm.v1.Gossip/PushDeltas"
SUBMIT = "/swarm.v1.Coordinator/SubmitDeltas"
#: The only codes a refused delta may get (protocols.transport.STATUS); INTERNAL or UNKNOWN
#: would mean our code raised on the input instead of refusing it.
REFUSALS = set(STATUS.values())
#: A client that can send more than the server accepts (gRPC's hard limit there is 2x ours).
BIG_CLIENT = [("grpc.max_send_message_length", 8 * MAX_BYTES)]

_VALID = delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg()]).SerializeToString()
#: Bytes of the batch before its first delta (sender_node "n1"): not signed, so a change there
#: would leave a valid delta that must be accepted; mutations start after it.
_HEADER = len(delta_pb2.DeltaBatch(sender_node="n1").SerializeToString())


@st.composite
def _mutated_valid(draw) -> bytes:
    """A valid batch with some bytes of its delta changed: parses more often than noise, so the
    checks behind the parser (signature, shape, finiteness) get hostile input too."""
    body = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(_HEADER, len(body) - 1))
        body[at] = (body[at] + draw(st.integers(1, 255))) % 256  # always a different byte
    return bytes(body)


BODIES = st.one_of(st.binary(max_size=1024), _mutated_valid())


@contextlib.contextmanager
def _coordinator():
    """A coordinator service whose submit sink only records what would be applied."""
    applied: list[Delta] = []
    counters = TrafficCounters()

    def submit(deltas):
        applied.extend(deltas)
        return len(deltas)

    servicer = CoordinatorServicer(
        decode=lambda m: wire.from_proto(m, key=KEY, num_params=P, layout="L"),
        submit=submit,
        wait_aggregate=lambda round_, timeout: None,
        encode=lambda d: wire.to_proto(d, KEY),
        counters=counters,
        round_timeout_s=1.0,
    )
    server, port = start_server("127.0.0.1", 0, coordinator=servicer, max_message_bytes=MAX_BYTES)
    try:
        yield applied, counters, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _send(channel: grpc.Channel, method: str, body: bytes) -> tuple[grpc.StatusCode, bytes]:
    """One call with `body` as the raw request; (status, raw reply or b"")."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        return grpc.StatusCode.OK, call(body, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), b""


def _still_serves(channel: grpc.Channel, service: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_random_bytes_to_push_deltas_are_refused_and_never_applied() -> None:
    with serve_receiver() as (node, counters, address), grpc.insecure_channel(address) as channel:
        calls = []

        genuine = []  # mutations that still encode the genuine delta (e.g. a non-canonical
        # varint): accepted once, then acknowledged as duplicates; nothing else is accepted

        @settings(max_examples=200, deadline=None)
        @given(body=BODIES)
        def push(body: bytes) -> None:
            code, reply = _send(channel, PUSH, body)
            calls.append(code)
            if code == grpc.StatusCode.OK and gossip_pb2.PushReply.FromString(reply).accepted:
                (delta,) = delta_pb2.DeltaBatch.FromString(body).deltas
                assert delta == _msg()
                genuine.append(body)
                return
            assert code in REFUSALS or code == grpc.StatusCode.OK

        push()
        x = np.zeros((1, P), np.float32)
        assert node.apply(x) == len(genuine) <= 1
        if not genuine:  # nothing hostile moved the model
            assert np.array_equal(x, np.zeros((1, P), np.float32))
        snap = counters.snapshot()
        assert snap["messages_received"] == len(calls)
        assert snap["deltas_accepted"] == len(genuine)
        assert snap["deltas_rejected"] >= sum(code != grpc.StatusCode.OK for code in calls)
        # both the parser and the checks behind it (wire.from_proto) saw hostile input
        assert snap["rejected_malformed"] > 0 and snap["rejected_bad_signature"] > 0
        # ... and the server is alive and still takes a good delta.
        _still_serves(channel, "swarm.v1.Gossip")
        code, reply = _send(channel, PUSH, _VALID)
        assert code == grpc.StatusCode.OK
        assert gossip_pb2.PushReply.FromString(reply).accepted == 1 - len(genuine)
        assert node.apply(x) == 1 - len(genuine)


def test_random_bytes_to_submit_deltas_are_refused_and_never_applied() -> None:
    with _coordinator() as (applied, counters, address), grpc.insecure_channel(address) as channel:
        calls = []

        @settings(max_examples=200, deadline=None)
        @given(body=BODIES)
        def submit(body: bytes) -> None:
            code, reply = _send(channel, SUBMIT, body)
            calls.append(code)
            assert code in REFUSALS or (
                code == grpc.StatusCode.OK
                and coordinator_pb2.SubmitReply.FromString(reply).accepted == 0
            )

        submit()
        assert applied == []
        assert counters.snapshot()["messages_received"] == len(calls)
        _still_serves(channel, "swarm.v1.Coordinator")
        code, reply = _send(channel, SUBMIT, _VALID)
        assert code == grpc.StatusCode.OK
        assert coordinator_pb2.SubmitReply.FromString(reply).accepted == 1
        assert len(applied) == 1


def test_malformed_protobuf_is_invalid_argument_and_counted() -> None:
    with serve_receiver() as (node, counters, address), grpc.insecure_channel(address) as channel:
        # field 1 (sender_node, a string) announced as 100 bytes long, then the stream ends
        code, _ = _send(channel, PUSH, b"\x0a\x64abc")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert counters.snapshot()["rejected_malformed"] == 1
        assert node.apply(np.zeros((1, P), np.float32)) == 0
        _still_serves(channel, "swarm.v1.Gossip")


def test_oversized_message_is_resource_exhausted_and_counted() -> None:
    with (
        serve_receiver() as (node, counters, address),
        grpc.insecure_channel(address, options=BIG_CLIENT) as channel,
    ):
        # A well-formed, signed batch that is merely too big: refused before it is parsed.
        big = delta_pb2.DeltaBatch(
            sender_node="n1", deltas=[_msg()] * (MAX_BYTES // (len(_VALID) - _HEADER) + 1)
        ).SerializeToString()
        assert MAX_BYTES < len(big) < 2 * MAX_BYTES
        code, _ = _send(channel, PUSH, big)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        snap = counters.snapshot()
        assert snap["rejected_oversized"] == 1
        assert snap["wire_bytes_received"] == len(big)
        # Beyond gRPC's own hard limit the message never reaches us: refused all the same.
        code, _ = _send(channel, PUSH, b"\0" * (2 * MAX_BYTES + 1))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        x = np.zeros((1, P), np.float32)
        assert node.apply(x) == 0
        assert np.array_equal(x, np.zeros((1, P), np.float32))
        _still_serves(channel, "swarm.v1.Gossip")
