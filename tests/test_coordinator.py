"""Coordinator rounds: closing on completion or on timeout with a quorum (fake clock, no sleeps)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from protocols.compression import DENSE_F32, Compressed
from protocols.config import CompressionConfig, CoordinatorConfig
from protocols.coordinator import CoordinatorState, FederatedClient, quorum
from protocols.delta import Delta, DeltaRejected, Rejection

AGENTS = [f"agent-{i}" for i in range(4)]


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _delta(sender: str, values, examples: int = 1, version: int = 0, round_: int = 0) -> Delta:
    v = np.asarray(values, dtype=np.float32)
    payload = Compressed(DENSE_F32, v.size, v)
    return Delta(sender, round_, version, "L", payload, float(np.linalg.norm(v)), examples)


def _state(clock: FakeClock, **cfg) -> CoordinatorState:
    config = CoordinatorConfig(round_timeout_s=30.0, **cfg)
    return CoordinatorState(agents=AGENTS, num_params=3, layout="L", config=config, clock=clock)


@pytest.mark.parametrize(
    ("n", "fraction", "expected"), [(4, 0.5, 2), (3, 0.5, 2), (10, 0.3, 3), (1, 0.1, 1), (4, 1, 4)]
)
def test_quorum_is_ceil_of_fraction(n: int, fraction: float, expected: int) -> None:
    # 0.3 * 10 = 3.0000000000000004 in floating point; the rule means 3
    assert quorum(n, fraction) == expected


def test_closes_when_all_expected_agents_submitted() -> None:
    # Prepare
    clock = FakeClock()
    state = _state(clock, min_completion=1.0)
    for i, name in enumerate(AGENTS[:3]):
        state.submit([_delta(name, [i, 0, 0])])
    assert state.wait_aggregate(0, timeout_s=0) is None  # one agent still missing
    # Execute
    state.submit([_delta("agent-3", [3, 0, 0])])
    closed = state.wait_aggregate(0, timeout_s=0)
    # Assert: no time has passed; completion alone closed it
    assert closed is not None
    aggregate, count = closed
    assert count == 4 and np.allclose(aggregate.payload.decode(), [1.5, 0, 0])
    assert aggregate.base_version == 0 and state.version == 1
    assert state.contributors(0) == AGENTS and state.missing(0) == []


def test_does_not_close_on_timeout_below_min_completion() -> None:
    # Prepare: quorum = ceil(0.75 * 4) = 3, only 2 arrive
    clock = FakeClock()
    state = _state(clock, min_completion=0.75)
    state.submit([_delta("agent-0", [1, 0, 0]), _delta("agent-1", [0, 1, 0])])
    # Execute
    clock.t = 1000.0
    # Assert
    assert state.close_if_due() is None
    assert state.wait_aggregate(0, timeout_s=0) is None
    assert state.version == 0 and state.contributors(0) is None


def test_an_overdue_round_closes_as_soon_as_the_quorum_arrives() -> None:
    clock = FakeClock()
    state = _state(clock, min_completion=0.75)
    state.submit([_delta("agent-0", [3, 0, 0]), _delta("agent-1", [0, 3, 0])])
    clock.t = 31.0
    state.submit([_delta("agent-3", [0, 0, 3])])  # the third: quorum reached past the timeout
    closed = state.wait_aggregate(0, timeout_s=0)
    assert closed is not None and closed[1] == 3
    assert np.allclose(closed[0].payload.decode(), [1, 1, 1])
    assert state.missing(0) == ["agent-2"]


@pytest.mark.parametrize("via", ["wait_aggregate", "close_if_due"])
def test_closes_on_timeout_at_min_completion_with_the_arrived_agents(via: str) -> None:
    # Prepare: quorum = ceil(0.5 * 4) = 2; agent-0 at t=0 (the round's first delta), agent-2 at
    # t=20; agents 1 and 3 are dead. Examples 1 and 3: fedavg = ([1, 0, 0] + 3 [0, 4, 0]) / 4.
    clock = FakeClock()
    state = _state(clock, min_completion=0.5)
    state.submit([_delta("agent-0", [1, 0, 0], examples=1)])
    clock.t = 20.0
    state.submit([_delta("agent-2", [0, 4, 0], examples=3)])
    clock.t = 29.9  # timeout is counted from the first delta, not the last
    assert state.wait_aggregate(0, timeout_s=0) is None
    # Execute
    clock.t = 30.0
    if via == "close_if_due":
        assert state.close_if_due() == 0
    closed = state.wait_aggregate(0, timeout_s=0)
    # Assert
    assert closed is not None
    aggregate, count = closed
    assert count == 2 and aggregate.examples == 4 and aggregate.base_version == 0
    assert np.allclose(aggregate.payload.decode(), [0.25, 3.0, 0.0])
    assert state.contributors(0) == ["agent-0", "agent-2"]
    assert state.missing(0) == ["agent-1", "agent-3"]
    assert state.version == 1


def test_late_delta_after_a_timeout_close_is_stale() -> None:
    # Prepare: round 0 closed on timeout without agent-1
    clock = FakeClock()
    state = _state(clock, min_completion=0.5)
    state.submit([_delta("agent-0", [1, 0, 0]), _delta("agent-2", [0, 1, 0])])
    clock.t = 30.0
    assert state.close_if_due() == 0
    # Execute
    with pytest.raises(DeltaRejected) as info:
        state.submit([_delta("agent-1", [9, 9, 9], version=0)])
    # Assert: refused, and the closed aggregate is untouched
    assert info.value.reason == Rejection.STALE
    closed = state.wait_aggregate(0, timeout_s=0)
    assert closed is not None and np.allclose(closed[0].payload.decode(), [0.5, 0.5, 0])
    # a delta at the new version but naming the closed round is stale too
    with pytest.raises(DeltaRejected) as info:
        state.submit([_delta("agent-1", [9, 9, 9], version=1, round_=0)])
    assert info.value.reason == Rejection.STALE


def test_the_next_round_times_from_its_own_first_delta() -> None:
    clock = FakeClock()
    state = _state(clock, min_completion=0.5)
    state.submit([_delta("agent-0", [1, 0, 0]), _delta("agent-1", [0, 1, 0])])
    clock.t = 30.0
    assert state.close_if_due() == 0
    clock.t = 100.0
    state.submit([_delta(a, [1, 1, 1], version=1, round_=1) for a in ("agent-0", "agent-1")])
    clock.t = 129.0
    assert state.close_if_due() is None  # 29 s into round 1, though 129 s since round 0 opened
    clock.t = 130.0
    assert state.close_if_due() == 1


def test_a_blocked_waiter_wakes_when_the_last_agent_submits() -> None:
    # Prepare
    clock = FakeClock()
    state = _state(clock, min_completion=1.0)
    state.submit([_delta(a, [2, 0, 0]) for a in AGENTS[:3]])
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(state.wait_aggregate(0, 10.0)))
    waiter.start()
    # Execute
    state.submit([_delta("agent-3", [2, 0, 0])])
    waiter.join(timeout=10.0)
    # Assert
    assert not waiter.is_alive()
    assert result[0] is not None and result[0][1] == 4


def test_a_waiter_closes_a_round_that_falls_due_while_it_waits() -> None:
    # Real clock, 50 ms timeout: nobody submits or ticks after the waiter starts, so only the
    # waiter itself can close the round. The 10 s bound is a deadlock guard, not a timing claim.
    state = CoordinatorState(
        agents=AGENTS,
        num_params=3,
        layout="L",
        config=CoordinatorConfig(round_timeout_s=0.05, min_completion=0.5),
    )
    state.submit([_delta("agent-0", [1, 0, 0]), _delta("agent-1", [0, 1, 0])])
    closed = state.wait_aggregate(0, timeout_s=10.0)
    assert closed is not None and closed[1] == 2


def test_coordinator_uses_the_configured_robust_rule() -> None:
    clock = FakeClock()
    state = _state(clock, aggregator="median", min_completion=1.0)
    rows = [[1, 2, 3], [2, 3, 4], [3, 4, 5], [-300, 400, -500]]  # agent-3 is Byzantine
    state.submit([_delta(a, r) for a, r in zip(AGENTS, rows, strict=True)])
    closed = state.wait_aggregate(0, timeout_s=0)
    # median of 4 per coordinate: means of the middle two, (1+2)/2, (3+4)/2, (3+4)/2
    assert closed is not None and np.allclose(closed[0].payload.decode(), [1.5, 3.5, 3.5])


def test_krum_config_must_leave_a_timeout_round_enough_deltas() -> None:
    # f = 1 needs 5 deltas; 6 agents with min_completion 0.5 may close with 3
    agents = [f"agent-{i}" for i in range(6)]
    krum = CoordinatorConfig(aggregator="krum", byzantine=1, min_completion=0.5)
    with pytest.raises(ValueError, match="krum"):
        CoordinatorState(agents=agents, num_params=3, layout="L", config=krum)
    ok = krum.model_copy(update={"min_completion": 5 / 6})
    assert CoordinatorState(agents=agents, num_params=3, layout="L", config=ok).quorum == 5


def test_federated_clients_follow_a_round_closed_on_timeout() -> None:
    # Prepare: 3 agents on 3 nodes; agent-2's node is dead
    clock = FakeClock()
    state = CoordinatorState(
        agents=["agent-0", "agent-1", "agent-2"],
        num_params=3,
        layout="L",
        config=CoordinatorConfig(round_timeout_s=30.0, min_completion=0.5),
        clock=clock,
    )
    comp = CompressionConfig(kind="none")
    x0 = np.zeros(3, np.float32)
    clients = [FederatedClient(local=[i], x0=x0, compression=comp, layout="L") for i in range(2)]
    xs = [np.array([[1.0, 2.0, 3.0]], np.float32), np.array([[3.0, 2.0, 1.0]], np.float32)]
    for c, x in zip(clients, xs, strict=True):
        state.submit(c.make_deltas(x, 0, [1]))
    # Execute
    clock.t = 30.0
    closed = state.wait_aggregate(0, timeout_s=0)
    assert closed is not None
    for c, x in zip(clients, xs, strict=True):
        c.apply_aggregate(x, closed[0])
    # Assert: both live agents hold the mean of the two who arrived, at version 1
    for c, x in zip(clients, xs, strict=True):
        assert c.version == 1 and np.allclose(x, [[2.0, 2.0, 2.0]])
