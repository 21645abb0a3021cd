"""Knowledge-exchange logic against theory and hand-computed arrays (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from float_bounds import U32

from protocols.compression import DENSE_F32, Compressed, compress
from protocols.config import CompressionConfig, GraphConfig
from protocols.coordinator import CoordinatorState, FederatedClient, fedavg
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.gossip import ChocoGossip, agent_name
from protocols.topology import build_graph, metropolis_weights, spectral_rho
from protocols.wire import from_proto, to_proto

KEY = b"k" * 32
GRAPHS = [
    GraphConfig(kind="ring"),
    GraphConfig(kind="torus"),
    GraphConfig(kind="random_regular", degree=4),
    GraphConfig(kind="erdos_renyi", p=0.3),
    GraphConfig(kind="small_world", degree=4, p=0.2),
    GraphConfig(kind="complete"),
]


@pytest.mark.parametrize("cfg", GRAPHS, ids=lambda c: c.kind)
def test_metropolis_weights_symmetric_doubly_stochastic(cfg: GraphConfig) -> None:
    w = metropolis_weights(build_graph(cfg, 16, seed=3))
    assert np.allclose(w, w.T)
    assert np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1)
    assert (w >= 0).all()
    assert spectral_rho(w) < 1  # connected: gossip reaches consensus


def test_rho_matches_reference_figures() -> None:
    # REFERENCES.md: ring n=16 rho 0.949; 8x8 torus 0.883; complete: exact in one step.
    assert spectral_rho(metropolis_weights(build_graph(GraphConfig(kind="ring"), 16, 0))) == (
        pytest.approx(0.949, abs=1e-3)
    )
    torus = metropolis_weights(build_graph(GraphConfig(kind="torus"), 64, 0))
    assert spectral_rho(torus) == pytest.approx(0.883, abs=1e-3)
    assert spectral_rho(metropolis_weights(build_graph(GraphConfig(kind="complete"), 8, 0))) == (
        pytest.approx(0.0, abs=1e-9)
    )


@pytest.mark.parametrize("kind", ["none", "topk", "int8", "topk_int8"])
def test_compressors_round_trip_within_their_error(kind: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).astype(np.float32)
    c = compress(x, CompressionConfig(kind=kind, ratio=0.1))
    y = c.decode()
    assert y.shape == x.shape and y.dtype == np.float32
    # the kept entries are those the payload names (a kept value may decode to 0 under int8)
    kept = c.indices.astype(np.int64) if "topk" in kind else np.arange(x.size)
    if "topk" in kind:
        assert kept.size == 100 and (np.diff(kept) > 0).all()
        # the kept entries are the largest in magnitude (the same float32 values: exact), and
        # nothing else survives
        assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-100]
        assert not np.delete(y, kept).any()
    # int8: half a quantisation step (scale / 2, scale = max |x| / 127), plus float32 rounding
    # of x / scale (before rint), of the scale and of q * scale: each u32 of max |x|
    tol = np.abs(x).max() * (1 / 127 / 2 + 3 * U32) if "int8" in kind else 0
    assert np.abs(y[kept] - x[kept]).max() <= tol
    assert c.nbytes < x.nbytes or kind == "none"


@pytest.mark.parametrize("kind", ["none", "topk", "int8", "topk_int8"])
def test_a_payloads_peak_is_the_largest_magnitude_it_decodes_to(kind: str) -> None:
    # the property itself, compared on the decoded vector (both float32: equal, not close)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=1000) * 3).astype(np.float32)
    c = compress(x, CompressionConfig(kind=kind, ratio=0.1))
    assert c.peak() == float(np.max(np.abs(c.decode())))
    assert Compressed(DENSE_F32, 0, np.zeros(0, np.float32)).peak() == 0.0


def _delta(values: np.ndarray, sender: str = "agent-1", version: int = 0) -> Delta:
    payload = Compressed(DENSE_F32, values.size, values.astype(np.float32))
    return Delta(sender, 0, version, "L", payload, float(np.linalg.norm(values)), 3)


def test_wire_round_trip() -> None:
    d = Delta(
        "agent-3",
        5,
        2,
        "L",
        compress(np.arange(20, dtype=np.float32) - 7, CompressionConfig(kind="topk_int8")),
        0.0,
        9,
    )
    d = Delta(
        d.sender,
        d.round,
        d.base_version,
        d.layout,
        d.payload,
        float(np.linalg.norm(d.payload.decode())),
        d.examples,
    )
    back = from_proto(to_proto(d, KEY), key=KEY, num_params=20, layout="L")
    assert (back.sender, back.round, back.base_version, back.examples) == ("agent-3", 5, 2, 9)
    assert np.array_equal(back.payload.decode(), d.payload.decode())


def _tampered(kind: str):
    msg = to_proto(_delta(np.ones(8, np.float32)), KEY)
    if kind == "bad_signature":
        msg.signature = b"\x00" * 32
        return msg, Rejection.BAD_SIGNATURE
    if kind == "wrong_shape":
        msg.values = np.ones(9, "<f4").tobytes()
        msg.num_params = 9
        reason = Rejection.WRONG_SHAPE
    elif kind == "non_finite":
        msg.values = np.array([np.nan] + [1] * 7, "<f4").tobytes()
        reason = Rejection.NON_FINITE
    elif kind == "malformed":
        msg.values = msg.values[:-1]
        reason = Rejection.MALFORMED
    elif kind == "wrong_norm":
        msg.norm = 100.0
        reason = Rejection.MALFORMED
    else:
        raise AssertionError(kind)
    from protocols.wire import sign

    sign(msg, KEY)  # a correctly signed message that is still wrong
    return msg, reason


@pytest.mark.parametrize(
    "kind", ["bad_signature", "wrong_shape", "non_finite", "malformed", "wrong_norm"]
)
def test_wire_rejects_bad_deltas(kind: str) -> None:
    msg, reason = _tampered(kind)
    with pytest.raises(DeltaRejected) as info:
        from_proto(msg, key=KEY, num_params=8, layout="L")
    assert info.value.reason == reason


def _choco_swarm(n: int, kind: str, gamma: float, x0: np.ndarray):
    w = metropolis_weights(build_graph(GraphConfig(kind="ring"), n, 0))
    nodes = [
        ChocoGossip(
            local=[i],
            weights=w,
            x0=x0,
            gamma=gamma,
            compression=CompressionConfig(kind=kind, ratio=0.25),
            layout="L",
            owner=lambda j: f"n{j}",
        )
        for i in range(n)
    ]
    return w, nodes


def _choco_round(nodes, xs, r):
    outbox = [node.make_deltas(xs[i][None], r, [1])[0] for i, node in enumerate(nodes)]
    for node in nodes:
        node.receive([outbox[j] for j in range(len(nodes)) if node.known_sender(agent_name(j))])
    for i, node in enumerate(nodes):
        x = xs[i][None].copy()
        node.apply(x)
        xs[i] = x[0]


@pytest.mark.numerics
def test_choco_with_identity_compressor_is_plain_gossip() -> None:
    rng = np.random.default_rng(1)
    n, p = 8, 5
    x0 = np.zeros(p, np.float32)
    w, nodes = _choco_swarm(n, "none", 1.0, x0)
    xs = rng.normal(size=(n, p)).astype(np.float32)
    expected = xs.astype(np.float64)
    for r in range(1, 6):
        _choco_round(nodes, xs, r - 1)
        expected = w @ expected
        # the nodes keep x in float32: each round rounds it once more (x += step, |x| never
        # above max |x0| under a doubly stochastic W, so old errors do not grow), and the
        # float64 step reads float32 copies; a float64 matrix iteration as the reference
        atol = 2 * r * U32 * np.abs(xs).max()
        np.testing.assert_allclose(xs, expected, rtol=0, atol=atol)


def test_compressed_choco_keeps_mean_and_reaches_consensus() -> None:
    # Top-k commutes with a positive scale and the common init is 0, so the whole run does: a
    # start brings only its direction. Over 100 directions (seeds 0-99) the error after 100
    # rounds was 0.9e-4 to 1.23e-4 of err0 and by round 200 at the float32 floor (<= 1.6e-7);
    # the arithmetic is element-wise (no BLAS call), the same bits under every kernel family.
    # So 1e-3 after 100 rounds holds with a margin of 8 over the worst direction, on 3 of them.
    n, p = 8, 40
    x0 = np.zeros(p, np.float32)
    for seed in [2, 3, 4]:
        _, nodes = _choco_swarm(n, "topk", 0.4, x0)
        xs = np.random.default_rng(seed).normal(size=(n, p)).astype(np.float32)
        mean0 = xs.mean(0)
        err0 = np.linalg.norm(xs - mean0)
        peak = np.abs(xs).max()
        for r in range(100):
            _choco_round(nodes, xs, r)
            peak = max(peak, np.abs(xs).max())
        # W doubly stochastic: the float64 steps of a round sum to 0 over the agents, so the
        # mean moves only by x's float32 rounding, at most 2 u32 |x| per agent and round (as
        # in the identity test above)
        np.testing.assert_allclose(xs.mean(0), mean0, rtol=0, atol=2 * 100 * U32 * peak)
        assert np.linalg.norm(xs - xs.mean(0)) < 1e-3 * err0, seed


def test_gossip_rejects_unknown_sender_and_stale_versions() -> None:
    x0 = np.zeros(4, np.float32)
    _, nodes = _choco_swarm(6, "none", 1.0, x0)
    with pytest.raises(DeltaRejected) as info:
        nodes[0].receive([_delta(np.ones(4), sender="agent-3")])  # not a ring neighbour of 0
    assert info.value.reason == Rejection.UNKNOWN_SENDER
    nodes[0].receive([_delta(np.ones(4), sender="agent-1", version=0)])
    # a replay is acknowledged and dropped (at-least-once delivery), never applied twice
    assert nodes[0].receive([_delta(np.ones(4), sender="agent-1", version=0)]) == 0
    assert nodes[0].duplicates == 1
    with pytest.raises(DeltaRejected) as info:
        nodes[0].receive([_delta(np.ones(4), sender="agent-1", version=2)])  # a gap
    assert info.value.reason == Rejection.STALE


def test_fedavg_matches_hand_computed_weights() -> None:
    a = _delta(np.array([1.0, 0.0]), "agent-0")
    b = _delta(np.array([0.0, 4.0]), "agent-1")
    a = Delta(a.sender, 0, 0, "L", a.payload, a.norm, examples=1)
    b = Delta(b.sender, 0, 0, "L", b.payload, b.norm, examples=3)
    assert np.allclose(fedavg([a, b], 2), [0.25, 3.0])
    no_examples = [Delta(d.sender, 0, 0, "L", d.payload, d.norm, 0) for d in (a, b)]
    assert np.allclose(fedavg(no_examples, 2), [0.5, 2.0])


def test_coordinator_round_moves_every_agent_to_the_global_model() -> None:
    x0 = np.zeros(3, np.float32)
    comp = CompressionConfig(kind="none")
    clients = [FederatedClient(local=[i], x0=x0, compression=comp, layout="L") for i in range(2)]
    state = CoordinatorState(agents=["agent-0", "agent-1"], num_params=3, layout="L")
    xs = [np.array([[1.0, 2.0, 3.0]], np.float32), np.array([[3.0, 2.0, 1.0]], np.float32)]
    for c, x in zip(clients, xs, strict=True):
        state.submit(c.make_deltas(x, 0, [1]))
    closed = state.wait_aggregate(0, timeout_s=1)
    assert closed is not None and closed[1] == 2
    for c, x in zip(clients, xs, strict=True):
        c.apply_aggregate(x, closed[0])
        assert np.allclose(x, [[2.0, 2.0, 2.0]])
    stale = Delta("agent-0", 1, 0, "L", Compressed(DENSE_F32, 3, np.zeros(3, np.float32)), 0.0)
    with pytest.raises(DeltaRejected) as info:  # version 0 is closed: a late delta is stale
        state.submit([stale])
    assert info.value.reason == Rejection.STALE


@pytest.mark.parametrize("density", [1.0, 0.1, 0.01, 1e-4])
def test_varint_indices_round_trip_and_cost_about_a_byte_at_top10(density: float) -> None:
    from protocols.compression import decode_index_varint, encode_index_varint

    rng = np.random.default_rng(5)
    p = 100_000
    idx = np.sort(rng.choice(p, size=max(1, int(density * p)), replace=False)).astype(np.uint32)
    data = encode_index_varint(idx)
    assert np.array_equal(decode_index_varint(data, p), idx)
    if density >= 0.1:
        assert len(data) <= 1.05 * idx.size  # gaps < 128: one byte each (uint32 took four)


@pytest.mark.parametrize(
    "data, words",
    [(b"\x80", "truncated"), (b"\xff" * 5 + b"\x01", "longer than 5"), (b"\x00", ">= 1"),
     (b"\x7f\x7f", "out of range")],
)  # fmt: skip
def test_varint_indices_reject_hostile_bytes(data: bytes, words: str) -> None:
    from protocols.compression import decode_index_varint

    with pytest.raises(ValueError, match=words):
        decode_index_varint(data, 200)
