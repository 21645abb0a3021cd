"""The sightings relay (protocols/sightings.py): labelled windows passed on hop by hop."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.sightings import Sighting, SightingRelay

W, D, C = 3, 2, 4  # window, observation width, classes


def ring(n: int) -> dict[int, list[int]]:
    return {i: [(i - 1) % n, (i + 1) % n] for i in range(n)}


def relays(n: int, parts: list[list[int]], **kw: int) -> list[SightingRelay]:
    """One relay per node; node k hosts the agents parts[k] of a ring of n."""
    nbrs = ring(n)
    args = {"per_round": 2, "hops": 8, "max_age_ticks": 100} | kw
    return [
        SightingRelay(
            local=p, neighbours={i: nbrs[i] for i in p}, n_classes=C, window=(W, D), **args
        )
        for p in parts
    ]


def window(v: float) -> np.ndarray:
    return np.full((W, D), v, np.float32)


def see(r: SightingRelay, agent: int, tick: int, cls: int, v: float = 1.0) -> None:
    row = r.local.index(agent)
    r.own(tick, np.array([row]), np.array([tick]), np.array([cls]), window(v)[None])


def round_(nodes: list[SightingRelay], k: int, tick: int) -> list[tuple[np.ndarray, ...]]:
    """One round: every node sends, every node receives everything (it keeps what its agents
    neighbour), then every node settles; returns each node's settled (rows, classes, windows)."""
    sent = [(i, s) for r in nodes for i, s in r.outgoing(k, tick).items()]
    for r in nodes:
        for i, picked in sent:
            r.receive(i, picked)
    return [r.settle() for r in nodes]


def holders(nodes: list[SightingRelay], sid: tuple[int, int]) -> set[int]:
    return {i for r in nodes for i in r.local if sid in r.seen[i]}


def test_a_sighting_moves_one_hop_per_round_across_nodes() -> None:
    nodes = relays(8, [[0, 1, 2, 3], [4, 5, 6, 7]])
    see(nodes[0], 0, tick=5, cls=2)
    assert holders(nodes, (0, 5)) == {0}
    for k in range(1, 5):
        round_(nodes, k, tick=5 + k)
        # after k rounds every agent within k hops of agent 0 on the ring has it
        assert holders(nodes, (0, 5)) == {i for i in range(8) if min(i, 8 - i) <= k}


def test_what_arrives_goes_to_the_learner_once_with_its_window_and_class() -> None:
    nodes = relays(4, [[0, 1], [2, 3]])
    see(nodes[0], 0, tick=1, cls=3, v=0.25)
    first = round_(nodes, 0, tick=2)  # agent 0's neighbours 1 (node 0) and 3 (node 1)
    assert [n[0].tolist() for n in first] == [[1], [1]]  # rows: agent 1 and agent 3
    rows, classes, windows = first[1]
    assert classes.tolist() == [3]
    np.testing.assert_array_equal(windows[0], window(0.25))
    later = [round_(nodes, k, tick=2 + k) for k in (1, 2, 3)]  # echoes come back: duplicates
    assert sum(len(n[0]) for rnd in later for n in rnd) == 1  # agent 2, once
    assert sum(r.taken for r in nodes) == 3 and sum(r.duplicates for r in nodes) > 0


def test_hops_bound_how_far_a_sighting_travels() -> None:
    nodes = relays(10, [list(range(10))], hops=2)
    see(nodes[0], 0, tick=1, cls=0)
    for k in range(6):
        round_(nodes, k, tick=2 + k)
    assert holders(nodes, (0, 1)) == {8, 9, 0, 1, 2}


def test_per_round_takes_the_classes_in_turn_newest_first() -> None:
    (r,) = relays(3, [[0, 1, 2]], per_round=2)
    for t in range(1, 6):
        see(r, 0, tick=t, cls=0)  # five of a common class (the box keeps the 2 newest)
    see(r, 0, tick=0, cls=3)  # one of a rare class
    out = r.outgoing(0, tick=6)[0]
    assert sorted((s.cls, s.tick) for s in out) == [(0, 5), (3, 0)]
    assert all(s.hops == 1 for s in out)
    assert [(s.cls, s.tick) for s in r.outgoing(1, tick=6)[0]] == [(0, 4)]  # what is left
    assert r.outgoing(2, tick=6) == {}


def test_old_sightings_are_neither_taken_nor_passed_on() -> None:
    (a, b) = relays(2, [[0], [1]], max_age_ticks=10)
    see(a, 0, tick=1, cls=1)
    b.receive(0, a.outgoing(0, tick=50)[0] if a.outgoing(0, tick=50) else [])
    assert a.outgoing(0, tick=50) == {}  # forgotten at the sender
    b.now = 50
    b.receive(0, [Sighting(0, 1, 1, 1, window(1.0))])
    rows, _, _ = b.settle()
    assert rows.size == 0 and b.duplicates == 1


def test_settle_does_not_depend_on_arrival_order() -> None:
    made = [Sighting(o, t, t % C, 1, window(o + t / 10)) for o in (1, 3) for t in range(4)]

    def settled(order: list[int]) -> list[np.ndarray]:
        (r,) = relays(4, [[2]])
        for k in order:
            r.receive(made[k].origin, [made[k]])
        out = list(r.settle()) + [s.tick for box in r.outbox[2] for s in box]
        return out

    a, b = settled(list(range(8))), settled(list(reversed(range(8))))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_state_round_trip_continues_identically() -> None:
    def world() -> list[SightingRelay]:
        nodes = relays(6, [[0, 1, 2], [3, 4, 5]])
        for i, t in [(0, 1), (4, 2), (4, 3)]:
            see(nodes[i // 3], i, tick=t, cls=t % C, v=t)
        round_(nodes, 0, tick=4)
        return nodes

    a, b = world(), world()
    restored = relays(6, [[0, 1, 2], [3, 4, 5]])
    for r, src in zip(restored, b, strict=True):
        r.load_state({k: v.copy() for k, v in src.state().items()})
    for k in range(1, 4):
        for x, y in zip(round_(a, k, 4 + k), round_(restored, k, 4 + k), strict=True):
            for u, v in zip(x, y, strict=True):
                np.testing.assert_array_equal(u, v)
    assert [r.counts() for r in a] == [r.counts() for r in restored]


def test_a_renewed_agent_forgets_what_it_held() -> None:
    (r,) = relays(3, [[0, 1, 2]])
    see(r, 1, tick=1, cls=2)
    r.renew([1])
    assert r.outgoing(0, tick=2) == {} and r.seen[1] == {}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="per_round"):
        relays(3, [[0, 1, 2]], per_round=0)


def test_a_sighting_is_not_sent_back_where_it_came_from() -> None:
    nodes = relays(8, [[0, 1, 2, 3], [4, 5, 6, 7]])
    see(nodes[0], 0, tick=1, cls=1)
    for k in range(6):
        round_(nodes, k, tick=2 + k)
    assert holders(nodes, (0, 1)) == set(range(8))
    # the two fronts meet at agent 4, which gets it from both sides (one duplicate) and passes
    # it on to agent 5, which has it (the other); nobody got back what it had sent
    assert sum(r.taken for r in nodes) == 7 and sum(r.duplicates for r in nodes) == 2
