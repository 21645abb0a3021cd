"""Hostile clients against a real coordinator service (swarm.shard.CoordinatorHost) on 127.0.0.1.

What it must hold against them (issue 18, "Coordinator"):

1. waiting is bounded: a GetAggregate for a round that has not begun is refused at once, and
   no more calls wait for the open round than the host lets wait, so health checks, submits
   and an honest client's aggregate are still served; every refusal is counted;
2. the global model goes only to holders of the swarm key: an unsigned, wrongly signed or
   tampered request is refused UNAUTHENTICATED and counted;
3. memory is bounded: only the last `keep_rounds` aggregates are kept, and a client asking for
   a dropped round catches up from a snapshot to the very global model the others hold.

Aggregates here are small integers, so every float32 sum is exact and models compare equal.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocols import wire
from protocols.config import CompressionConfig, CoordinatorConfig
from protocols.coordinator import CoordinatorState, FederatedClient, RoundNotOpen
from protocols.delta import DeltaRejected, Rejection
from protocols.errors import KeyMismatch, Refused, Stale
from protocols.peering import Codec, CoordinatorLink
from protocols.transport import Peers, TrafficCounters
from swarm.proto.v1 import coordinator_pb2, coordinator_pb2_grpc
from swarm.scenario import Scenario
from swarm.shard import CoordinatorHost, CoordinatorSpec

KEY = b"k" * 32
P = 4
MAX_BYTES = 2**20
#: Deadline of the hostile calls: long enough that none could end by itself during a test, so
#: any call that is still waiting holds its place until the round closes.
HOSTILE_DEADLINE_S = 30.0
#: Liveness bound for what must answer while the hostile calls are in flight (generous: an
#: answer takes milliseconds; this is no timing claim).
ANSWER_WITHIN_S = 2.0


@contextlib.contextmanager
def _coordinator(
    n_agents: int = 2,
    start_round: int = 0,
    x0_scale: tuple[float, float] | None = None,
    **config: object,
) -> Iterator[CoordinatorHost]:
    """A CoordinatorHost for agents 0..n-1 with models of P parameters, on 127.0.0.1."""
    sc = Scenario.model_validate(
        {
            "name": "coordinator_hostile",
            "agents": {"count": n_agents, "per_shard": n_agents},
            "gossip": {"topology": "coordinator", "coordinator": config},
            "baseline": {"isolated": False},
        }
    )
    spec = CoordinatorSpec(
        sc.model_dump(mode="json"), P, "L", KEY, start_round=start_round, x0_scale=x0_scale
    )
    host = CoordinatorHost(spec)
    try:
        yield host
    finally:
        host.close()


class _Swarm:
    """Honest nodes n0..n(k-1), one agent each, talking to the coordinator at `address`."""

    def __init__(self, address: str, n: int, key: bytes = KEY):
        self.peers = Peers(MAX_BYTES, TrafficCounters())
        codecs = [Codec(f"n{i}", key, MAX_BYTES, P, "L") for i in range(n)]
        self.links = [CoordinatorLink(self.peers, address, c) for c in codecs]
        self.clients = [_client(i) for i in range(n)]

    def submit(self, round_: int) -> None:
        """Every node submits a delta moving its model by round_ + i + 1 (integers)."""
        for i, (link, client) in enumerate(zip(self.links, self.clients, strict=True)):
            x = client.global_model[None, :] + float(round_ + i + 1)
            link.submit(round_, link.codec.sign(client.make_deltas(x, round_, [1])), 5.0)

    def rounds(self, n: int) -> None:
        """n whole rounds: every node submits, then applies the aggregate."""
        for r in range(n):
            self.submit(r)
            for link, client in zip(self.links, self.clients, strict=True):
                client.apply_aggregate(np.zeros((1, P), np.float32), link.aggregate(r, 5.0))

    def close(self) -> None:
        self.peers.close()


def _client(i: int) -> FederatedClient:
    return FederatedClient(
        local=[i],
        x0=np.zeros(P, np.float32),
        compression=CompressionConfig(kind="none"),
        layout="L",
    )


@contextlib.contextmanager
def _swarm(address: str, n: int) -> Iterator[_Swarm]:
    swarm = _Swarm(address, n)
    try:
        yield swarm
    finally:
        swarm.close()


@contextlib.contextmanager
def _channel(address: str) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    with grpc.insecure_channel(address) as channel:
        yield coordinator_pb2_grpc.CoordinatorStub(channel)


def _serving(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="swarm.v1.Coordinator"), timeout=ANSWER_WITHIN_S
        )
    return int(reply.status)


def _code(future: grpc.Future) -> grpc.StatusCode:
    """The status a finished call ended with."""
    exc = future.exception()
    return grpc.StatusCode.OK if exc is None else exc.code()


def _eventually(pred: Callable[[], bool], within_s: float) -> bool:
    """Whether `pred` holds within `within_s` (a liveness bound, not a timing claim)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _when_done(futures: list[grpc.Future], count: int) -> threading.Event:
    """An event set once `count` of `futures` have finished."""
    done, lock, finished = threading.Event(), threading.Lock(), [0]

    def one(_: grpc.Future) -> None:
        with lock:
            finished[0] += 1
            if finished[0] >= count:
                done.set()

    for f in futures:
        f.add_done_callback(one)
    return done


# -- 1. waiting is bounded -----------------------------------------------------------------------


def test_far_future_and_surplus_waiting_requests_are_refused_while_the_service_goes_on() -> None:
    # Prepare: 2 agents, so the host lets 4 calls wait (two per agent), 8 threads spare
    with (
        _coordinator(n_agents=2) as host,
        _channel(host.endpoint) as stub,
        _swarm(host.endpoint, 2) as swarm,
    ):
        places = host.servicer.max_waiting
        assert places == 4
        far = wire.aggregate_request("mallory", 10**9, KEY)  # signed: a key holder gone bad
        waiting = wire.aggregate_request("mallory", 0, KEY)  # the open round
        # Execute: 16 requests for a round far ahead and 4 more than the places for the open
        # round, all at once
        futures = [stub.GetAggregate.future(far, timeout=HOSTILE_DEADLINE_S) for _ in range(16)]
        waiters = [
            stub.GetAggregate.future(waiting, timeout=HOSTILE_DEADLINE_S) for _ in range(places + 4)
        ]
        assert _when_done(futures, 16).wait(ANSWER_WITHIN_S), "far-future requests still held"
        assert _when_done(waiters, 4).wait(ANSWER_WITHIN_S), "more calls wait than places"
        # Assert: the service goes on, and an honest round completes
        assert _serving(host.endpoint) == health_pb2.HealthCheckResponse.SERVING
        swarm.rounds(1)
        assert all(_code(f) == grpc.StatusCode.OUT_OF_RANGE for f in futures)
        codes = sorted(_code(f).name for f in waiters)
        assert codes == ["OK"] * places + ["RESOURCE_EXHAUSTED"] * 4  # the waiting got round 0
        assert swarm.clients[0].version == 1
        np.testing.assert_array_equal(swarm.clients[0].global_model, np.full(P, 1.5, np.float32))
        traffic = host.traffic()
        assert traffic["aggregates_refused_not_open"] == 16
        assert traffic["aggregates_refused_busy"] == 4


def test_a_round_that_has_not_begun_is_refused_through_the_client() -> None:
    with _coordinator() as host, _swarm(host.endpoint, 1) as swarm:
        with pytest.raises(Refused):
            swarm.links[0].aggregate(5, HOSTILE_DEADLINE_S)
        assert host.traffic()["aggregates_refused_not_open"] == 1


def test_a_waiting_call_its_client_cancelled_gives_its_place_back() -> None:
    # Prepare: one call more than the places; those that wait are then cancelled by their client
    with _coordinator(n_agents=2) as host, _channel(host.endpoint) as stub:
        request = wire.aggregate_request("mallory", 0, KEY)
        n = host.servicer.max_waiting + 1
        calls = [stub.GetAggregate.future(request, timeout=HOSTILE_DEADLINE_S) for _ in range(n)]
        assert _when_done(calls, 1).wait(ANSWER_WITHIN_S)
        refused = [f for f in calls if f.done()]
        assert [_code(f) for f in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        # Execute
        for f in calls:
            if f not in refused:
                f.cancel()

        # Assert: within a slice of the wait (1 s) the places are free again: a call that gets
        # one waits (until its own short deadline) instead of being refused at once
        def gets_a_place() -> bool:
            try:
                stub.GetAggregate(request, timeout=0.2)
            except grpc.RpcError as exc:
                return exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
            return True

        assert _eventually(gets_a_place, within_s=5.0), "cancelled calls kept their places"


# -- 2. authenticated ----------------------------------------------------------------------------


def test_unsigned_wrongly_signed_or_tampered_aggregate_requests_are_refused_and_counted() -> None:
    # Prepare: round 0 closed, so a request that were answered would be answered at once
    with _coordinator() as host, _channel(host.endpoint) as stub, _swarm(host.endpoint, 2) as sw:
        sw.rounds(1)
        unsigned = coordinator_pb2.AggregateRequest(node="mallory", round=0)
        other_key = wire.aggregate_request("mallory", 0, b"x" * 32)
        tampered = wire.aggregate_request("n0", 1, KEY)
        tampered.round = 0  # a signed request for the open round, turned to the closed one
        before = host.traffic()
        # Execute / Assert
        for request in (unsigned, other_key, tampered):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetAggregate(request, timeout=HOSTILE_DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        raw = grpc.insecure_channel(host.endpoint)
        with raw, pytest.raises(grpc.RpcError) as info:
            raw.unary_unary("/swarm.v1.Coordinator/GetAggregate")(b"\xff\xff", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = host.traffic()
        assert after["rejected_bad_signature"] - before.get("rejected_bad_signature", 0) == 3
        assert after["rejected_malformed"] - before.get("rejected_malformed", 0) == 1
        # a node with another key hears KeyMismatch; one with the swarm key is answered
        with _swarm(host.endpoint, 1) as ok:
            wrong = CoordinatorLink(
                ok.peers, host.endpoint, Codec("n9", b"x" * 32, MAX_BYTES, P, "L")
            )
            with pytest.raises(KeyMismatch):
                wrong.aggregate(0, 5.0)
            assert ok.links[0].aggregate(0, 5.0).base_version == 0


# -- 3. a bounded window, and catching up past it ------------------------------------------------


def test_only_keep_rounds_aggregates_are_kept_and_a_late_client_catches_up_from_a_snapshot() -> (
    None
):
    # Prepare: 8 rounds with a window of 3
    with _coordinator(keep_rounds=3) as host, _swarm(host.endpoint, 2) as swarm:
        swarm.rounds(8)
        # Assert: memory holds the last 3 aggregates only
        assert host.state.kept_rounds() == [5, 6, 7]
        assert host.state.contributors(0) is None and host.state.contributors(7) == [
            "agent-0",
            "agent-1",
        ]
        # inside the window nothing changed: round 6's own aggregate
        kept = swarm.links[0].aggregate(6, 5.0)
        assert not kept.snapshot and kept.base_version == 6
        # Execute: a client that stayed at version 0 asks for round 0, long dropped
        late, x = _client(0), np.zeros((1, P), np.float32)
        late.error[:] = 1.0
        assert swarm.links[0].catch_up(late, x, 8, 5.0) == 8
        # Assert: it holds the others' global model, bit for bit (integer sums)
        assert late.version == 8 and not late.error.any()
        np.testing.assert_array_equal(late.global_model, swarm.clients[0].global_model)
        np.testing.assert_array_equal(x[0], swarm.clients[0].global_model)
        # closed_aggregates from a dropped round: the snapshot, then the open round ends it
        got = swarm.links[1].closed_aggregates(2, 5.0, then_wait_s=0.1)
        assert [(a.snapshot, a.base_version) for a in got] == [(True, 8)]
        assert host.traffic()["aggregate_snapshots"] == 2
        # a submit naming a dropped round is stale even at the current version
        stale = swarm.clients[0].make_deltas(swarm.clients[0].global_model[None, :], 1, [1])
        with pytest.raises(Stale):
            swarm.links[0].submit(1, swarm.links[0].codec.sign(stale), 5.0)


def test_a_resumed_coordinator_refuses_a_dropped_round_it_cannot_snapshot() -> None:
    # A resumed run's coordinator holds no sum from version 0: a round before its window is
    # refused STALE (the client restores from a later checkpoint), never answered wrongly.
    with _coordinator(start_round=5) as host, _swarm(host.endpoint, 1) as swarm:
        with pytest.raises(Stale):
            swarm.links[0].aggregate(2, HOSTILE_DEADLINE_S)
        assert host.traffic()["rejected_stale"] == 1


def test_the_state_answers_each_kind_of_round_without_waiting() -> None:
    # Prepare: round 0 open (agent-0 in), version 0, window of 1
    state = CoordinatorState(
        agents=["agent-0", "agent-1"],
        num_params=P,
        layout="L",
        config=CoordinatorConfig(keep_rounds=1),
    )
    client = _client(0)
    state.submit(client.make_deltas(np.ones((1, P), np.float32), 0, [1]))
    # Assert: the open round waits (None at timeout 0), a round ahead is refused at once
    assert state.wait_aggregate(0, 0.0) is None
    with pytest.raises(RoundNotOpen):
        state.wait_aggregate(1, 3600.0)
    # two rounds later round 0 is dropped: a snapshot at version 2
    other = _client(1)
    state.submit(other.make_deltas(np.ones((1, P), np.float32), 0, [1]))
    for c in (client, other):
        closed = state.wait_aggregate(0, 0.0)
        assert closed is not None
        c.apply_aggregate(np.zeros((1, P), np.float32), closed[0])
    for c in (client, other):
        state.submit(c.make_deltas(np.full((1, P), 3.0, np.float32), 1, [1]))
    assert state.kept_rounds() == [1]
    answer = state.wait_aggregate(0, 3600.0)
    assert answer is not None
    snapshot, contributors = answer
    assert snapshot.snapshot and snapshot.base_version == 2 and contributors == 0
    np.testing.assert_array_equal(snapshot.payload.decode(), np.full(P, 3.0, np.float32))
    with pytest.raises(DeltaRejected) as info:  # a client already there refuses it
        c2 = _client(0)
        c2.version = 2
        c2.apply_aggregate(np.zeros((1, P), np.float32), snapshot)
    assert info.value.reason == Rejection.STALE


# -- 4. a key holder's submission is bounded like a gossip delta --------------------------------


def test_a_signed_submission_past_the_limits_is_refused_counted_and_keeps_no_place() -> None:
    from protocols.compression import DENSE_F32, Compressed
    from protocols.delta import Delta

    # Prepare: limits relative to an initial model of norm 100, largest value 10 (defaults:
    # a delta's norm at most 100, a value at most 160)
    with _coordinator(x0_scale=(100.0, 10.0)) as host, _swarm(host.address(), 2) as swarm:
        forged = Delta("agent-0", 0, 0, "L", Compressed(DENSE_F32, P, np.full(P, 1000, "f4")),
                       2000.0)  # fmt: skip
        link = swarm.links[1]  # a key holder (here: another node of the swarm)
        # Execute: it submits a huge delta as agent-0 for the open round
        with pytest.raises(Refused) as info:
            link.submit(0, link.codec.sign([forged]), 5.0)
        # Assert: refused and counted; agent-0's own delta still takes its place
        assert "OUT_OF_BOUNDS" in str(info.value) or "out_of_bounds" in str(info.value)
        assert host.traffic()["rejected_out_of_bounds"] == 1
        swarm.rounds(1)
        assert np.array_equal(swarm.clients[0].global_model, np.full(P, 1.5, np.float32))
