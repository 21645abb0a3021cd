"""The gRPC edge: servicers that only translate, clients, and the status-code map.

Everything here is thin on purpose (the Flower pattern): decoding and every check live in
`protocols.wire`, the round logic in `protocols.gossip` / `protocols.coordinator`. A servicer
turns a request into plain objects, hands them over, and maps `DeltaRejected` to a gRPC status.
Every received message is counted, and every rejection by reason, before anything is applied.

Raw bytes in, on purpose: the services are registered with no request deserializer (see
`_guarded`), so the bytes of every call reach our code. If gRPC parsed them, a message that is
not valid protobuf would fail inside gRPC (an uncounted INTERNAL) and one above gRPC's own size
limit would never reach us. Here each message is measured against our limit
(`max_message_bytes`, -> RESOURCE_EXHAUSTED, counted "oversized") and parsed with `FromString`
in a try (-> INVALID_ARGUMENT, counted "malformed"). gRPC's hard limit is set at
`_HARD_LIMIT_FACTOR` times ours so the band in between is seen and counted; only messages beyond
it are dropped by gRPC unseen (it must stay bounded: it caps the memory one call can take).
Network bytes are only ever parsed as protobuf, never unpickled.

TLS (`protocols.tls`): pass `tls=TlsConfig(...)` and this node's name to `start_server` and
`Peers`; mode off keeps plaintext.

Errors, both ways. A servicer refuses with `refuse`: the status of `STATUS[reason]`, and the
`Rejection` named in the trailing metadata (`REJECTION_KEY`). `Peers` turns every failed call
into a `protocols.errors.PeerError` (`peer_error`): the Rejection when the peer named one,
else the status code (Unreachable, Stale, KeyMismatch, NotServed, Refused), and a TLS
handshake it can diagnose into TlsHandshakeFailed. Nothing above this module reads gRPC codes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocols import tls as tls_
from protocols import wire
from protocols.config import TlsConfig
from protocols.coordinator import RoundNotOpen
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.errors import (
    ClockSkew,
    KeyMismatch,
    NotServed,
    PeerError,
    Refused,
    Stale,
    TlsHandshakeFailed,
    Unreachable,
)
from protocols.membership import ProbeRefused
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
    Rejection.CLOCK_SKEW: grpc.StatusCode.FAILED_PRECONDITION,
    Rejection.OUT_OF_BOUNDS: grpc.StatusCode.INVALID_ARGUMENT,
}

#: Trailing metadata key under which a server names the `Rejection` (its enum name) when it
#: refuses a call, so a client tells e.g. STALE from CLOCK_SKEW (both FAILED_PRECONDITION)
#: without reading the details' words.
REJECTION_KEY = "swarm-rejection"


def refuse(context: grpc.ServicerContext, reason: Rejection, message: str) -> NoReturn:
    """Abort the call with the status of `reason`, naming it in the trailing metadata."""
    context.set_trailing_metadata(((REJECTION_KEY, reason.name),))
    context.abort(STATUS[reason], message)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


Decode = Callable[[delta_pb2.KnowledgeDelta], Delta | None]
"""Checks and decodes one message; None when it is a chunk of a delta still incomplete."""
Sink = Callable[[Sequence[Delta]], int]

_Checked = TypeVar("_Checked")
Sight = tuple[Callable[[list[delta_pb2.Sighting]], _Checked], Callable[[_Checked], int]]
"""(check, take) for the sightings of a batch: `check` verifies every one (e.g. with
`wire.sighting_from_proto`; raises DeltaRejected, all or none) and returns their decoded form,
before any delta is applied; `take` stores that form once the delta sink has accepted the batch
and returns how many it took."""


class TrafficCounters:
    """Thread-safe counts of what crossed this node's gRPC edge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.deltas_accepted = 0
        self.sightings_accepted = 0
        self.rejected: Counter[str] = Counter()
        # Messages (swarm/accounting.py) in batches taken / refused whole.
        self.deltas_delivered = 0
        self.deltas_refused = 0

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

    def accepted_sightings(self, n: int) -> None:
        with self._lock:
            self.sightings_accepted += n

    def reject(self, reason: Rejection, n: int) -> None:
        with self._lock:
            self.rejected[reason.value] += n

    def outcome(self, *, delivered: int = 0, refused: int = 0) -> None:
        with self._lock:
            self.deltas_delivered += delivered
            self.deltas_refused += refused

    def load(self, state: dict[str, int]) -> None:
        """Continue from an earlier `snapshot()` (a shard restored from a checkpoint)."""
        with self._lock:
            self.bytes_received = int(state.get("wire_bytes_received", 0))
            self.bytes_sent = int(state.get("wire_bytes_sent", 0))
            self.messages_received = int(state.get("messages_received", 0))
            self.messages_sent = int(state.get("messages_sent", 0))
            self.deltas_accepted = int(state.get("deltas_accepted", 0))
            self.sightings_accepted = int(state.get("sightings_accepted", 0))
            self.deltas_delivered = int(state.get("deltas_delivered", 0))
            self.deltas_refused = int(state.get("deltas_refused", 0))
            self.rejected = Counter(
                {
                    k[len("rejected_") :]: int(v)
                    for k, v in state.items()
                    if k.startswith("rejected_")
                }
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = {
                "wire_bytes_received": self.bytes_received,
                "wire_bytes_sent": self.bytes_sent,
                "messages_received": self.messages_received,
                "messages_sent": self.messages_sent,
                "deltas_accepted": self.deltas_accepted,
                "sightings_accepted": self.sightings_accepted,
                "deltas_rejected": sum(self.rejected.values()),
                "deltas_delivered": self.deltas_delivered,
                "deltas_refused": self.deltas_refused,
            }
            out.update({f"rejected_{k}": v for k, v in sorted(self.rejected.items())})
            return out


def messages_in(batch: delta_pb2.DeltaBatch) -> int:
    """Knowledge messages a batch completes: its deltas, a chunked one counted at its last
    chunk (the unit of swarm/accounting.py)."""
    return sum(1 for d in batch.deltas if d.chunk_count <= 1 or d.chunk_index == d.chunk_count - 1)


def _check_sightings(batch: delta_pb2.DeltaBatch, sight: Sight[Any] | None) -> Any:
    """What `check` makes of the sightings of `batch` (None when it has none); raises
    DeltaRejected."""
    if not batch.sightings:
        return None
    if sight is None:
        raise DeltaRejected(Rejection.MALFORMED, "this node takes no sightings")
    check, _ = sight
    return check(list(batch.sightings))


def _ingest(
    batch: delta_pb2.DeltaBatch,
    context: grpc.ServicerContext,
    decode: Decode,
    sink: Sink,
    counters: TrafficCounters,
    sight: Sight[Any] | None = None,
) -> int:
    """Hand a batch's deltas to `sink` and its sightings to `sight`, all or nothing: every
    sighting is checked before any delta is decoded, and taken only after the sink accepted.
    A refusal counts each message of the batch (deltas and sightings) under its reason."""
    try:
        sightings = _check_sightings(batch, sight)
        n = sink([d for d in map(decode, batch.deltas) if d is not None])
    except DeltaRejected as exc:
        counters.reject(exc.reason, max(1, len(batch.deltas) + len(batch.sightings)))
        counters.outcome(refused=messages_in(batch))
        refuse(context, exc.reason, str(exc))
    counters.accepted(n)
    counters.outcome(delivered=messages_in(batch))
    if sight is not None and batch.sightings:
        _, take = sight
        counters.accepted_sightings(take(sightings))
    return n


class MembershipHandler(Protocol):
    """What the Gossip service hands liveness probes to (protocols/membership.py)."""

    def on_ping(
        self, request: gossip_pb2.PingRequest, peer: str | None = None
    ) -> gossip_pb2.PingReply: ...

    def on_ping_req(
        self, request: gossip_pb2.PingReqRequest, peer: str | None = None
    ) -> gossip_pb2.PingReqReply: ...


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The node name the caller's certificate proves (its common name, which `swarm certs`
    sets to the node's name) under mutual TLS; None without a client certificate."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else None


def refuse_batch(
    batch: delta_pb2.DeltaBatch,
    context: grpc.ServicerContext,
    counters: TrafficCounters,
    exc: DeltaRejected,
) -> NoReturn:
    """Refuse a whole batch before anything in it is decoded, counted as `_ingest` does."""
    counters.reject(exc.reason, max(1, len(batch.deltas) + len(batch.sightings)))
    counters.outcome(refused=messages_in(batch))
    refuse(context, exc.reason, str(exc))


HostOf = Callable[[str], str | None]
"""The node known to host an agent (by wire name), if any."""


def check_hosts(batch: delta_pb2.DeltaBatch, peer: str | None, host_of: HostOf | None) -> None:
    """Under mutual TLS (`peer`, the caller's certificate name) refuse (UNKNOWN_SENDER) a
    batch holding a delta of an agent known to live on another node; an agent not known yet is
    left to the receiver's own rules."""
    if peer is None or host_of is None:
        return
    for d in batch.deltas:
        host = host_of(d.sender)
        if host is not None and host != peer:
            raise DeltaRejected(
                Rejection.UNKNOWN_SENDER,
                f"{d.sender[:80]!r} lives on {host!r}, not on {peer!r} (the caller's certificate)",
            )


def check_sender(
    batch: delta_pb2.DeltaBatch, context: grpc.ServicerContext, host_of: HostOf | None
) -> None:
    """A batch's sender, under mutual TLS: the node its certificate names (`check_identity`),
    speaking only for agents not known to live elsewhere (`check_hosts`)."""
    peer = peer_identity(context)
    _check_claim(batch.sender_node, peer, "delta batch")
    check_hosts(batch, peer, host_of)


def _check_claim(claimed: str, peer: str | None, what: str) -> None:
    if peer is not None and claimed != peer:
        raise DeltaRejected(
            Rejection.UNKNOWN_SENDER,
            f"{what} names sender {claimed[:80]!r} but the caller's certificate is {peer!r}",
        )


def check_identity(claimed: str, context: grpc.ServicerContext, what: str) -> None:
    """Under mutual TLS a node speaks only as itself: refuse (DeltaRejected UNKNOWN_SENDER)
    a message whose sender name is not the name in the caller's certificate. Without a
    client certificate nothing binds the name (the swarm key is shared: see docs/node.md,
    threat model)."""
    _check_claim(claimed, peer_identity(context), what)


Introduce = Callable[[gossip_pb2.Introduction], gossip_pb2.Introduction]
"""Checks a peer's Introduction (`wire.check_introduction`, may raise DeltaRejected), takes note
of it, and returns this node's own signed Introduction."""


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    """Receives deltas (and, with `sight`, sightings) for the agents of one node, answers
    liveness probes and introductions. Without `sight` a batch carrying sightings is refused
    MALFORMED whole."""

    def __init__(
        self,
        node: str,
        decode: Decode,
        sink: Sink,
        counters: TrafficCounters,
        membership: MembershipHandler | None = None,
        introduce: Introduce | None = None,
        *,
        sight: Sight[Any] | None = None,
        key: bytes | None = None,
        host_of: HostOf | None = None,
    ):
        """key: the swarm key, to sign this node's answer to a Ping when it runs no membership
        protocol itself (a shard: device nodes probe it and believe only signed answers).
        host_of: the node known to host an agent (by wire name), if any: under mutual TLS a
        delta of an agent known to live elsewhere is refused when the caller's certificate
        names another node (an agent not yet known is taken)."""
        self.node, self.decode, self.sink, self.counters = node, decode, sink, counters
        self.membership = membership
        self.introduce = introduce
        self.sight = sight
        self.key = key
        self.host_of = host_of

    def PushDeltas(self, request, context):  # noqa: N802 - gRPC method name
        try:
            check_sender(request, context, self.host_of)
        except DeltaRejected as exc:
            refuse_batch(request, context, self.counters, exc)
        return gossip_pb2.PushReply(
            accepted=_ingest(request, context, self.decode, self.sink, self.counters, self.sight)
        )

    def Ping(self, request, context):  # noqa: N802
        if self.membership is None:
            reply = gossip_pb2.PingReply(node=self.node, incarnation=0)
            if self.key is not None:
                wire.sign_probe(reply, self.key)
            return reply
        try:
            return self.membership.on_ping(request, peer_identity(context))
        except ProbeRefused as exc:
            context.abort(grpc.StatusCode[exc.status], exc.reason)

    def PingReq(self, request, context):  # noqa: N802
        if self.membership is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node runs no membership protocol")
        try:
            return self.membership.on_ping_req(request, peer_identity(context))
        except ProbeRefused as exc:
            context.abort(grpc.StatusCode[exc.status], exc.reason)

    def Introduce(self, request, context):  # noqa: N802
        if self.introduce is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node takes no introductions")
        try:
            check_identity(request.node, context, "introduction")
            return self.introduce(request)
        except DeltaRejected as exc:
            self.counters.reject(exc.reason, 1)
            refuse(context, exc.reason, str(exc))


#: GetAggregate calls a coordinator lets wait at once unless told otherwise: half of
#: start_server's default 8 workers, so health checks and submits always find a thread.
AGGREGATE_WAITERS = 4
#: A waiting GetAggregate looks this often whether its caller is still there, so a call the
#: client cancelled frees its place within a second, not at the end of the round timeout.
_WAIT_SLICE_S = 1.0


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """Collects deltas and hands out each round's aggregate.

    A GetAggregate that must wait (for the open round) holds a server thread, so waiting is
    rationed: at most `max_waiting` calls wait at once (run the server with more workers than
    that: `start_server(workers=...)`), a further one is refused RESOURCE_EXHAUSTED; each waits
    no longer than `round_timeout_s` and its own deadline, and stops when its caller goes. A
    kept round answers at once and needs no place; a round that has not begun is refused
    OUT_OF_RANGE at once (`protocols.coordinator.RoundNotOpen`), a dropped one the state cannot
    snapshot FAILED_PRECONDITION (STALE). With `key`, a request that is not signed with it is
    refused UNAUTHENTICATED (counted BAD_SIGNATURE in `counters`); None, only in-process tests
    that predate signed requests, answers anyone. Refusals without a Rejection of their own are
    counted here (`figures`), next to the snapshots sent.
    """

    #: What `figures` counts: GetAggregate refused because `max_waiting` calls were waiting,
    #: refused for a round that has not begun, and answered with a snapshot.
    FIGURES = ("aggregates_refused_busy", "aggregates_refused_not_open", "aggregate_snapshots")

    def __init__(
        self,
        decode: Decode,
        submit: Sink,
        wait_aggregate: Callable[[int, float], tuple[Delta, int] | None],
        encode: Callable[[Delta], delta_pb2.KnowledgeDelta],
        counters: TrafficCounters,
        round_timeout_s: float,
        *,
        key: bytes | None = None,
        max_waiting: int = AGGREGATE_WAITERS,
        host_of: HostOf | None = None,
    ):
        """wait_aggregate: `CoordinatorState.wait_aggregate` (or its contract). host_of: the
        node hosting each agent, to refuse under mTLS a submission for another node's agent."""
        self.host_of = host_of
        self.decode, self.submit, self.counters = decode, submit, counters
        self.wait_aggregate, self.encode = wait_aggregate, encode
        self.round_timeout_s = round_timeout_s
        self.key, self.max_waiting = key, max_waiting
        self._places = threading.BoundedSemaphore(max_waiting)
        self._lock = threading.Lock()
        self._figures: Counter[str] = Counter(dict.fromkeys(self.FIGURES, 0))

    def _count(self, figure: str) -> None:
        with self._lock:
            self._figures[figure] += 1

    def figures(self) -> dict[str, int]:
        """The counts named in FIGURES (for the host's traffic figures and checkpoints)."""
        with self._lock:
            return dict(self._figures)

    def load_figures(self, state: dict[str, int]) -> None:
        """Continue from an earlier `figures()` (a resumed run's coordinator)."""
        with self._lock:
            for figure in self.FIGURES:
                self._figures[figure] = int(state.get(figure, 0))

    def SubmitDeltas(self, request, context):  # noqa: N802
        try:
            check_sender(request, context, self.host_of)
        except DeltaRejected as exc:
            refuse_batch(request, context, self.counters, exc)
        return coordinator_pb2.SubmitReply(
            accepted=_ingest(request, context, self.decode, self.submit, self.counters)
        )

    def GetAggregate(self, request, context):  # noqa: N802
        if self.key is not None:
            try:
                wire.check_aggregate_request(request, self.key)
                check_identity(request.node, context, "aggregate request")
            except DeltaRejected as exc:
                self.counters.reject(exc.reason, 1)
                refuse(context, exc.reason, str(exc))
        round_ = int(request.round)
        closed = self._look(round_, 0.0, context)  # kept, snapshot, refused: no waiting
        if closed is None:
            closed = self._wait(round_, context)
        if closed is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"round {round_} has not closed")
        aggregate, contributors = closed
        reply = coordinator_pb2.AggregateReply(
            round=aggregate.round,
            aggregate=self.encode(aggregate),
            contributors=contributors,
            snapshot=aggregate.snapshot,
        )
        if aggregate.snapshot:
            self._count("aggregate_snapshots")
        self.counters.sent(reply.ByteSize())
        return reply

    def _look(
        self, round_: int, timeout_s: float, context: grpc.ServicerContext
    ) -> tuple[Delta, int] | None:
        """`wait_aggregate`, its refusals turned into statuses (counted)."""
        try:
            return self.wait_aggregate(round_, timeout_s)
        except RoundNotOpen as exc:
            self._count("aggregates_refused_not_open")
            context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except DeltaRejected as exc:
            self.counters.reject(exc.reason, 1)
            refuse(context, exc.reason, str(exc))
        raise AssertionError("unreachable: context.abort raises")  # for type checkers

    def _wait(self, round_: int, context: grpc.ServicerContext) -> tuple[Delta, int] | None:
        """Wait for the open round in one of the `max_waiting` places: at most round_timeout_s
        and the call's deadline, while the caller is still there."""
        if not self._places.acquire(blocking=False):
            self._count("aggregates_refused_busy")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_waiting} aggregate requests are waiting already; ask again later",
            )
        try:
            timeout = self.round_timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, remaining)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                closed = self._look(round_, max(0.0, min(left, _WAIT_SLICE_S)), context)
                if closed is not None or left <= _WAIT_SLICE_S or not context.is_active():
                    return closed
        finally:
            self._places.release()


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options: gRPC refuses to send or receive messages above `max_message_bytes`."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


#: gRPC's own receive limit on a server is this many times `max_message_bytes`, so messages
#: between the two limits reach `_guarded` and are refused there, counted. 2x lets a peer
#: configured with twice our limit (the likeliest misconfiguration) be seen, while one call
#: still cannot make the server buffer an unbounded message.
_HARD_LIMIT_FACTOR = 2

_Parse = Callable[[bytes], Message]
_Method = Callable[[Message, grpc.ServicerContext], Message]
_Methods = dict[str, tuple[_Method, _Parse, Callable[[Message], bytes], bool]]


def _guarded(
    method: _Method,
    parse: _Parse,
    limit: int,
    counters: TrafficCounters,
    traffic: bool,
) -> Callable[[bytes, grpc.ServicerContext], Message]:
    """Wrap a servicer method to take the raw request bytes: size check, then a safe parse.

    Each refused message is counted as one rejection, whatever the method; with `traffic` (the
    delta-carrying methods) its bytes are also counted as received (probes, introductions and
    aggregate requests are not delta traffic).
    """

    def handler(raw: bytes, context: grpc.ServicerContext) -> Message:
        if traffic:
            counters.received(len(raw))
        if len(raw) > limit:
            counters.reject(Rejection.OVERSIZED, 1)
            refuse(
                context,
                Rejection.OVERSIZED,
                f"message of {len(raw)} bytes is over this node's limit of {limit} bytes",
            )
        try:
            request = parse(raw)
        except DecodeError:
            # protobuf raises DecodeError for every kind of bad input (truncated, bad wire type,
            # invalid UTF-8 in a string field); anything else is a bug and should surface.
            counters.reject(Rejection.MALFORMED, 1)
            refuse(context, Rejection.MALFORMED, "request is not a valid protobuf message")
        return method(request, context)

    return handler


def _add_service(
    server: grpc.Server,
    service: str,
    methods: _Methods,
    limit: int,
    counters: TrafficCounters,
) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(method, parse, limit, counters, counted),
            request_deserializer=None,  # raw bytes: `_guarded` parses
            response_serializer=serialize,
        )
        for name, (method, parse, serialize, counted) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # As the generated add_*_to_server does: stubs call with _registered_method=True.
    server.add_registered_method_handlers(service, handlers)


def _gossip_methods(gossip: GossipServicer) -> _Methods:
    """swarm.v1.Gossip: (method, parse, serialize, counted as delta traffic) per RPC."""
    return {
        "PushDeltas": (
            gossip.PushDeltas,
            delta_pb2.DeltaBatch.FromString,
            gossip_pb2.PushReply.SerializeToString,
            True,
        ),
        "Ping": (
            gossip.Ping,
            gossip_pb2.PingRequest.FromString,
            gossip_pb2.PingReply.SerializeToString,
            False,
        ),
        "PingReq": (
            gossip.PingReq,
            gossip_pb2.PingReqRequest.FromString,
            gossip_pb2.PingReqReply.SerializeToString,
            False,
        ),
        "Introduce": (
            gossip.Introduce,
            gossip_pb2.Introduction.FromString,
            gossip_pb2.Introduction.SerializeToString,
            False,
        ),
    }


def _coordinator_methods(coordinator: CoordinatorServicer) -> _Methods:
    """swarm.v1.Coordinator, as `_gossip_methods` (GetAggregate's bytes are not delta
    traffic)."""
    return {
        "SubmitDeltas": (
            coordinator.SubmitDeltas,
            delta_pb2.DeltaBatch.FromString,
            coordinator_pb2.SubmitReply.SerializeToString,
            True,
        ),
        "GetAggregate": (
            coordinator.GetAggregate,
            coordinator_pb2.AggregateRequest.FromString,
            coordinator_pb2.AggregateReply.SerializeToString,
            False,
        ),
    }


def _new_server(max_message_bytes: int, workers: int) -> grpc.Server:
    options = [
        ("grpc.max_receive_message_length", _HARD_LIMIT_FACTOR * max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC lets a second server bind the same port by default (SO_REUSEPORT), and the
        # two would split the connections: refuse instead
        ("grpc.so_reuseport", 0),
    ]
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)


def _listen(
    server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> int:
    """Bind `host:port` (secure with `credentials`); the bound port."""
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    return int(bound)


def start_server(
    host: str,
    port: int,
    *,
    gossip: GossipServicer | None = None,
    coordinator: CoordinatorServicer | None = None,
    max_message_bytes: int,
    workers: int = 8,
    tls: TlsConfig | None = None,
    node: str | None = None,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server with the given services plus standard health checking.

    Returns the server and the bound port (pass port 0 to let the OS choose). With `tls` mode
    tls or mtls the port is secure and `node` names this node's certificate in `tls.cert_dir`;
    a missing or unusable certificate raises `protocols.tls.TlsError` before anything listens.
    """
    credentials = tls_.server_credentials(tls, node)
    server = _new_server(max_message_bytes, workers)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services: list[tuple[str, _Methods, TrafficCounters]] = []
    if gossip is not None:
        services.append(("swarm.v1.Gossip", _gossip_methods(gossip), gossip.counters))
    if coordinator is not None:
        services.append(
            ("swarm.v1.Coordinator", _coordinator_methods(coordinator), coordinator.counters)
        )
    for service, methods, counters in services:
        _add_service(server, service, methods, max_message_bytes, counters)
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    bound = _listen(server, host, port, credentials)
    server.start()
    return server, bound


# -- the client edge: failed calls become protocols.errors -------------------------------------

#: Status codes of calls that never reached a peer able to answer (or not in time).
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,  # the channel was closed under the call (this node stopping)
}
#: A peer that names no Rejection (an older node) is classified by its status code alone;
#: FAILED_PRECONDITION is STALE there (clock skew is refused only at introductions).
_BY_STATUS: dict[grpc.StatusCode, type[PeerError]] = {
    **dict.fromkeys(_UNREACHABLE, Unreachable),
    grpc.StatusCode.FAILED_PRECONDITION: Stale,
    grpc.StatusCode.UNAUTHENTICATED: KeyMismatch,
    grpc.StatusCode.UNIMPLEMENTED: NotServed,
}
_BY_REJECTION: dict[Rejection, type[PeerError]] = {
    Rejection.STALE: Stale,
    Rejection.CLOCK_SKEW: ClockSkew,
    Rejection.BAD_SIGNATURE: KeyMismatch,
}


def _rejection(exc: grpc.RpcError) -> Rejection | None:
    """The Rejection the peer named in the trailing metadata (`refuse`), if any."""
    trailing = getattr(exc, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    for key, value in metadata or ():
        if key == REJECTION_KEY and value in Rejection.__members__:
            return Rejection[value]
    return None


def peer_error(address: str, exc: grpc.RpcError) -> PeerError:
    """The domain error (protocols.errors) for a failed call to `address`."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    reason = str(details) if details is not None else str(exc)
    status = code.name if code is not None else ""
    rejection = _rejection(exc)
    if rejection is not None:
        kind = _BY_REJECTION.get(rejection, Refused)
    elif code is None:  # no status at all: nothing answered
        kind = Unreachable
    else:
        kind = _BY_STATUS.get(code, Refused)
    return kind(address, reason, status)


#: Timeout of the health check that diagnoses a failed TLS call: a handshake on loopback or a
#: LAN takes milliseconds; one second leaves room on a loaded machine and bounds the delay.
_PROBE_TIMEOUT_S = 1.0


class Peers:
    """gRPC channels to other nodes, one per address, reused across rounds.

    With `tls` mode tls or mtls every channel is secure: the peer's certificate is verified
    against ca.pem and its address (a SAN); under mtls this node presents `node`'s certificate.
    Credentials are loaded once, here, so a bad certificate fails at start-up (TlsError).
    """

    def __init__(
        self,
        max_message_bytes: int,
        counters: TrafficCounters,
        tls: TlsConfig | None = None,
        node: str | None = None,
    ):
        self._options = grpc_options(max_message_bytes)
        self._tls = tls
        self._credentials = tls_.channel_credentials(tls, node)
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.counters = counters

    def channel(self, address: str) -> grpc.Channel:
        """The shared (secure under TLS) channel to `address`; e.g. a `channel_factory` for
        protocols.membership_net, so liveness probes use the same credentials."""
        return self._channel(address)

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=self._options)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=self._options)
                self._channels[address] = channel
            return self._channels[address]

    def _explain(self, address: str, exc: grpc.RpcError) -> PeerError:
        """The domain error of a failed call; under TLS, TlsHandshakeFailed when its cause was
        the handshake.

        Calls wait for the peer to be ready (it may still be starting), so a handshake that
        keeps failing shows only as DEADLINE_EXCEEDED. One health check that does not wait
        brings out gRPC's real connection error.
        """
        error = peer_error(address, exc)
        if self._tls is None or self._credentials is None:
            return error
        if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return error
        try:
            health_pb2_grpc.HealthStub(self._channel(address)).Check(
                health_pb2.HealthCheckRequest(), timeout=_PROBE_TIMEOUT_S
            )
        except grpc.RpcError as probe:
            hint = tls_.handshake_hint(self._tls, address, str(probe.details()))
            if hint is not None:
                return TlsHandshakeFailed(address, hint, "UNAVAILABLE")
        return error

    def _call(
        self, address: str, method: str, request: Message, timeout_s: float, *, wait: bool = True
    ) -> Any:
        """One unary call on the shared channel; a failure raises a protocols.errors.PeerError
        (`_explain`)."""
        stub: Any = (
            coordinator_pb2_grpc.CoordinatorStub(self._channel(address))
            if method in ("SubmitDeltas", "GetAggregate")
            else gossip_pb2_grpc.GossipStub(self._channel(address))
        )
        try:
            return getattr(stub, method)(request, timeout=timeout_s, wait_for_ready=wait)
        except grpc.RpcError as exc:
            raise self._explain(address, exc) from exc

    def push(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int:
        """Deliver one batch; returns how many deltas were accepted. Raises PeerError: Stale
        means the peer's copy of a sender is not where the batch starts (a restart on either
        side, a lost batch): answer it with snapshots (`ChocoGossip.make_snapshots`); other
        refusals are Refused, a peer that is down or slow Unreachable."""
        reply = self._call(address, "PushDeltas", batch, timeout_s)
        self.counters.sent(batch.ByteSize())
        return int(reply.accepted)

    def introduce(
        self, address: str, msg: gossip_pb2.Introduction, timeout_s: float
    ) -> gossip_pb2.Introduction:
        """Introduce this node to the one at `address`; returns its Introduction, unchecked
        (verify it with `wire.check_introduction` before believing it). Raises PeerError:
        KeyMismatch, ClockSkew or another Refused, NotServed if the peer takes none."""
        reply: gossip_pb2.Introduction = self._call(address, "Introduce", msg, timeout_s)
        return reply

    def submit(self, address: str, batch: delta_pb2.DeltaBatch, timeout_s: float) -> int:
        """Submit one batch to a coordinator; raises PeerError (Stale: the round it is for has
        closed without it)."""
        reply = self._call(address, "SubmitDeltas", batch, timeout_s)
        self.counters.sent(batch.ByteSize())
        return int(reply.accepted)

    def get_aggregate(
        self, address: str, request: coordinator_pb2.AggregateRequest, timeout_s: float
    ) -> coordinator_pb2.AggregateReply:
        """The aggregate of the round `request` names, signed by the caller
        (`wire.aggregate_request`), waiting up to `timeout_s` for it to close; raises PeerError
        (Unreachable when it did not close in time, KeyMismatch when the coordinator refused
        the signature, Stale for a round it dropped and cannot snapshot, Refused for a round
        that has not begun or when as many calls as it lets wait were waiting already)."""
        # no wait_for_ready: the call itself may wait up to timeout_s for the round to close
        reply: coordinator_pb2.AggregateReply = self._call(
            address, "GetAggregate", request, timeout_s, wait=False
        )
        self.counters.received(reply.ByteSize())
        return reply

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def check_health(
    address: str, tls: TlsConfig | None, node: str, service: str, timeout_s: float
) -> str:
    """One standard health check of `service` at `address`, in words: the serving status
    ("SERVING", ...), "DOWN (CODE)" when the call failed, or "unknown (why)" when this node's
    own credentials cannot be loaded. Under mtls `node`'s certificate vouches for the check."""
    try:
        creds = tls_.channel_credentials(tls, node)
    except tls_.TlsError as exc:
        return f"unknown ({exc})"
    channel = (
        grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as exc:
        return f"DOWN ({exc.code().name})"
    finally:
        channel.close()
