"""The gRPC edge: servicers that only translate, clients, and the status-code map.

Everything here is thin on purpose (the Flower pattern): decoding and every check live in
`protocols.wire`, the round logic in `protocols.gossip` / `protocols.coordinator`. A servicer
turns a request into plain objects, hands them over, and maps `DeltaRejected` to a gRPC status.
Every received message is counted, and every rejection by reason, before anything is applied.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocols.delta import Delta, DeltaRejected, Rejection
from swarm.proto.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    delta_pb2,
    gossip_pb2,
    gossip_pb2_grpc,
)

STATUS: dict[Rejection, grpc.StatusCode] = {
    Rejection.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Rejection.WRONG_SHAPE: grpc.StatusCode.INVALID_ARGUMENT,
    Rejection.NON_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    Rejection.OVERSIZED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Rejection.BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    Rejection.UNKNOWN_SENDER: grpc.StatusCode.PERMISSION_DENIED,
    Rejection.STALE: grpc.StatusCode.FAILED_PRECONDITION,
}

Decode = Callable[[delta_pb2.KnowledgeDelta], Delta | None]
"""Checks and decodes one message; None when it is a chunk of a delta still incomplete."""
Sink = Callable[[Sequence[Delta]], int]


class TrafficCounters:
    """Thread-safe counts of what crossed this node's gRPC edge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.deltas_accepted = 0
        self.rejected: Counter[str] = Counter()

    def received(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_received += nbytes
            self.messages_received += 1

    def sent(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_sent += nbytes
            self.messages_sent += 1

    def accepted(self, n: int) -> None:
        with self._lock:
            self.deltas_accepted += n

    def reject(self, reason: Rejection, n: int) -> None:
        with self._lock:
            self.rejected[reason.value] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = {
                "wire_bytes_received": self.bytes_received,
                "wire_bytes_sent": self.bytes_sent,
                "messages_received": self.messages_received,
                "messages_sent": self.messages_sent,
                "deltas_accepted": self.deltas_accepted,
                "deltas_rejected": sum(self.rejected.values()),
            }
            out.update({f"rejected_{k}": v for k, v in sorted(self.rejected.items())})
            return out


def _ingest(
    batch: delta_pb2.DeltaBatch,
    context: grpc.ServicerContext,
    decode: Decode,
    sink: Sink,
    counters: TrafficCounters,
) -> int:
    counters.received(batch.ByteSize())
    try:
        n = sink([d for d in map(decode, batch.deltas) if d is not None])
    except DeltaRejected as exc:
        counters.reject(exc.reason, max(1, len(batch.deltas)))
        context.abort(STATUS[exc.reason], str(exc))
    counters.accepted(n)
    return n


class MembershipHandler(Protocol):
    """What the Gossip service hands liveness probes to (protocols/membership.py)."""

    def on_ping(self, request: gossip_pb2.PingRequest) -> gossip_pb2.PingReply: ...

    def on_ping_req(self, request: gossip_pb2.PingReqRequest) -> gossip_pb2.PingReqReply: ...


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    """Receives deltas for the agents of one node, and answers liveness probes."""

    def __init__(
        self,
        node: str,
        decode: Decode,
        sink: Sink,
        counters: TrafficCounters,
        membership: MembershipHandler | None = None,
    ):
        self.node, self.decode, self.sink, self.counters = node, decode, sink, counters
        self.membership = membership

    def PushDeltas(self, request, context):  # noqa: N802 - gRPC method name
        return gossip_pb2.PushReply(
            accepted=_ingest(request, context, self.decode, self.sink, self.counters)
        )

    def Ping(self, request, context):  # noqa: N802
        if self.membership is None:
            return gossip_pb2.PingReply(node=self.node, incarnation=0)
        return self.membership.on_ping(request)

    def PingReq(self, request, context):  # noqa: N802
        if self.membership is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node runs no membership protocol")
        return self.membership.on_ping_req(request)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """Collects deltas and hands out each round's aggregate."""

    def __init__(
        self,
        decode: Decode,
        submit: Sink,
        wait_aggregate: Callable[[int, float], tuple[Delta, int] | None],
        encode: Callable[[Delta], delta_pb2.KnowledgeDelta],
        counters: TrafficCounters,
        round_timeout_s: float,
    ):
        self.decode, self.submit, self.counters = decode, submit, counters
        self.wait_aggregate, self.encode = wait_aggregate, encode
        self.round_timeout_s = round_timeout_s

    def SubmitDeltas(self, request, context):  # noqa: N802
        return coordinator_pb2.SubmitReply(
            accepted=_ingest(request, context, self.decode, self.submit, self.counters)
        )

    def GetAggregate(self, request, context):  # noqa: N802
        timeout = self.round_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        closed = self.wait_aggregate(int(request.round), timeout)
        if closed is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"round {request.round} has not closed")
        aggregate, contributors = closed
        reply = coordinator_pb2.AggregateReply(
            round=request.round, aggregate=self.encode(aggregate), contributors=contributors
        )
        self.counters.sent(reply.ByteSize())
        return reply


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def start_server(
    host: str,
    port: int,
    *,
    gossip: GossipServicer | None = None,
    coordinator: CoordinatorServicer | None = None,
    max_message_bytes: int,
    workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server with the given services plus standard health checking.

    Returns the server and the bound port (pass port 0 to let the OS choose).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=grpc_options(max_message_bytes)
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if gossip is not None:
        gossip_pb2_grpc.add_GossipServicer_to_server(gossip, server)
        health_servicer.set("swarm.v1.Gossip", health_pb2.HealthCheckResponse.SERVING)
    if coordinator is not None:
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(coordinator, server)
        health_servicer.set("swarm.v1.Coordinator", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound


class Peers:
    """gRPC channels to other nodes, one per address, reused across rounds."""

    def __init__(self, max_message_bytes: int, counters: TrafficCounters):
        self._options = grpc_options(max_message_bytes)
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.counters = counters

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = grpc.insecure_channel(address, options=self._options)
            return self._channels[address]

    def push(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int:
        stub = gossip_pb2_grpc.GossipStub(self._channel(address))
        reply = stub.PushDeltas(batch, timeout=timeout_s, wait_for_ready=True)
        self.counters.sent(batch.ByteSize())
        return int(reply.accepted)

    def submit(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int:
        stub = coordinator_pb2_grpc.CoordinatorStub(self._channel(address))
        reply = stub.SubmitDeltas(batch, timeout=timeout_s, wait_for_ready=True)
        self.counters.sent(batch.ByteSize())
        return int(reply.accepted)

    def get_aggregate(
        self, address: str, node: str, round_: int, timeout_s: float
    ) -> coordinator_pb2.AggregateReply:
        stub = coordinator_pb2_grpc.CoordinatorStub(self._channel(address))
        reply = stub.GetAggregate(
            coordinator_pb2.AggregateRequest(node=node, round=round_), timeout=timeout_s
        )
        self.counters.received(reply.ByteSize())
        return reply

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
