"""Sightings on the wire: the to_proto / from_proto pair, every rejection, packing beside the
deltas, and the gRPC edge taking a batch's sightings all or nothing (a real server on
127.0.0.1)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from protocols import wire
from protocols.compression import DENSE_F32, Compressed
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.sightings import MAX_VALUE, Sighting
from protocols.transport import (
    REJECTION_KEY,
    STATUS,
    GossipServicer,
    TrafficCounters,
    messages_in,
    start_server,
)
from swarm.proto.v1 import delta_pb2, gossip_pb2_grpc

KEY = b"k" * 32
WINDOW = (4, 3)  # (W, D)
N_CLASSES = 5
MAX_HOPS = 2
P = 16  # parameters of the deltas sent beside the sightings
MAX_BYTES = 2**20


def _window(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=WINDOW).astype(np.float32)


def _sighting(origin: int = 3, tick: int = 17, cls: int = 2, hops: int = 1, seed: int = 0):
    return Sighting(origin, tick, cls, hops, _window(seed))


def _decode(msg: delta_pb2.Sighting) -> tuple[int, Sighting]:
    return wire.sighting_from_proto(
        msg, key=KEY, n_classes=N_CLASSES, window=WINDOW, max_hops=MAX_HOPS
    )


def _i8(values: list[int]) -> bytes:
    """WINDOW's worth of int8 bytes: `values` first, then zeros."""
    out = np.zeros(WINDOW[0] * WINDOW[1], "i1")
    out[: len(values)] = values
    return out.tobytes()


# -- the to_proto / from_proto pair ----------------------------------------------------------


def test_a_sighting_comes_back_as_sent_up_to_int8_rounding() -> None:
    s = Sighting(3, 17, 2, 1, _window(), via=5)
    msg = wire.sighting_to_proto(7, s, KEY)
    sender, back = _decode(msg)
    assert (sender, msg.sender, msg.origin, msg.via) == (7, "agent-7", "agent-3", "agent-5")
    assert (back.origin, back.tick, back.cls, back.hops, back.via) == (3, 17, 2, 1, 5)
    assert back.window.dtype == np.float32 and back.window.shape == WINDOW
    # int8 times one scale, the window's largest magnitude / 127: each value within half a step
    step = np.abs(s.window).max() / 127
    assert msg.scale == pytest.approx(step, rel=1e-6)
    assert np.abs(back.window - s.window).max() <= step / 2 * (1 + 1e-5)
    assert np.abs(back.window).max() == pytest.approx(np.abs(s.window).max(), rel=1e-6)
    assert len(msg.values) == WINDOW[0] * WINDOW[1]  # one byte a value on the wire
    # passed on again, a decoded window encodes to the same bytes (no drift hop by hop)
    again = wire.sighting_to_proto(3, back, KEY)
    assert (again.values, again.scale) == (msg.values, msg.scale)


def test_the_origin_sends_no_via_and_an_all_zero_window_survives() -> None:
    zeros = np.zeros(WINDOW, np.float32)
    msg = wire.sighting_to_proto(1, Sighting(1, 0, 0, 1, zeros), KEY)
    assert msg.via == "" and msg.scale == 0
    _, back = _decode(msg)
    assert back.via == -1 and np.array_equal(back.window, zeros)


def test_a_window_of_max_value_is_accepted() -> None:
    window = np.full(WINDOW, -MAX_VALUE * 127 / 128, np.float32)
    _, back = _decode(wire.sighting_to_proto(1, Sighting(1, 0, 0, 1, window), KEY))
    np.testing.assert_allclose(back.window, window, rtol=1e-6)


def _resigned(**fields: object) -> Callable[[], delta_pb2.Sighting]:
    """A good message with `fields` overwritten, then signed again with the swarm key: only
    the check for those fields can refuse it."""

    def make() -> delta_pb2.Sighting:
        msg = wire.sighting_to_proto(1, _sighting(), KEY)
        for name, value in fields.items():
            setattr(msg, name, value)
        wire.sign_sighting(msg, KEY)
        return msg

    return make


def _tampered() -> delta_pb2.Sighting:
    msg = wire.sighting_to_proto(1, _sighting(), KEY)
    msg.values = bytes([msg.values[0] ^ 1]) + msg.values[1:]  # after signing
    return msg


def _unsigned() -> delta_pb2.Sighting:
    msg = wire.sighting_to_proto(1, _sighting(), KEY)
    msg.signature = b""
    return msg


BAD: dict[str, tuple[Callable[[], delta_pb2.Sighting], Rejection]] = {
    "wrong_key": (
        lambda: wire.sighting_to_proto(1, _sighting(), b"x" * 32),
        Rejection.BAD_SIGNATURE,
    ),
    "unsigned": (_unsigned, Rejection.BAD_SIGNATURE),
    "tampered_value": (_tampered, Rejection.BAD_SIGNATURE),
    "sender_not_an_agent": (_resigned(sender="node-1"), Rejection.MALFORMED),
    "origin_not_an_agent": (_resigned(origin="agent-03"), Rejection.MALFORMED),
    "via_not_an_agent": (_resigned(via="shard-0"), Rejection.MALFORMED),
    "hops_0": (_resigned(hops=0), Rejection.MALFORMED),
    "hops_over_max": (_resigned(hops=MAX_HOPS + 1), Rejection.MALFORMED),
    "class_out_of_range": (_resigned(cls=N_CLASSES), Rejection.MALFORMED),
    # (3, 4) holds as many values as (4, 3): only the shape check can refuse it
    "rows_cols_swapped": (_resigned(rows=WINDOW[1], cols=WINDOW[0]), Rejection.WRONG_SHAPE),
    "truncated_values": (_resigned(values=_i8([])[:-1]), Rejection.WRONG_SHAPE),
    "extra_byte": (_resigned(values=_i8([]) + b"\x00"), Rejection.WRONG_SHAPE),
    "nan_scale": (_resigned(scale=float("nan")), Rejection.NON_FINITE),
    "infinite_scale": (_resigned(scale=float("-inf")), Rejection.NON_FINITE),
    "negative_scale": (_resigned(scale=-0.5), Rejection.NON_FINITE),
    "scale_beyond_max_value": (_resigned(scale=MAX_VALUE / 127), Rejection.NON_FINITE),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_sighting_is_refused_for_its_reason(kind: str) -> None:
    make, reason = BAD[kind]
    with pytest.raises(DeltaRejected) as info:
        _decode(make())
    assert info.value.reason == reason


def test_the_signature_is_checked_before_anything_else() -> None:
    msg = _resigned(sender="?", hops=0, cls=99, rows=1, scale=float("nan"))()
    msg.tick += 1  # after signing
    with pytest.raises(DeltaRejected) as info:
        _decode(msg)
    assert info.value.reason == Rejection.BAD_SIGNATURE


# -- packing beside the deltas ---------------------------------------------------------------


def _delta_msg(sender: str = "agent-1", version: int = 0) -> delta_pb2.KnowledgeDelta:
    values = np.ones(P, np.float32)
    d = Delta(
        sender,
        0,
        version,
        "L",
        Compressed(DENSE_F32, P, values),
        float(np.linalg.norm(values)),
    )
    return wire.to_proto(d, KEY)


def test_sightings_follow_the_deltas_in_batches_under_the_limit_each_once_in_order() -> None:
    deltas = [_delta_msg(version=v) for v in range(3)]
    sightings = [wire.sighting_to_proto(1, _sighting(tick=t, seed=t), KEY) for t in range(12)]
    limit = 256 + 3 * sightings[0].ByteSize()  # _BATCH_SLACK + room for about 2 sightings
    batches = wire.pack("n1", 4, deltas, limit, KEY, sightings=sightings)
    assert len(batches) > 4
    assert all(b.ByteSize() <= limit and (b.sender_node, b.round) == ("n1", 4) for b in batches)
    assert [d for b in batches for d in b.deltas] == deltas
    assert [s for b in batches for s in b.sightings] == sightings
    # deltas first: once a batch holds a sighting, no later batch holds a delta
    first = next(i for i, b in enumerate(batches) if b.sightings)
    assert not any(b.deltas for b in batches[first + 1 :])


def test_sightings_alone_are_packed_without_an_empty_batch() -> None:
    sightings = [wire.sighting_to_proto(1, _sighting(tick=t), KEY) for t in range(5)]
    batches = wire.pack("n1", 0, [], 256 + 2 * sightings[0].ByteSize(), KEY, sightings=sightings)
    assert all(b.sightings for b in batches)
    assert [s for b in batches for s in b.sightings] == sightings


def test_packing_without_sightings_is_unchanged() -> None:
    deltas = [_delta_msg(version=v) for v in range(5)]
    limit = 256 + 2 * deltas[0].ByteSize()
    plain = wire.pack("n1", 0, deltas, limit, KEY)
    assert len(plain) > 1 and not any(b.sightings for b in plain)
    with_none = wire.pack("n1", 0, deltas, limit, KEY, sightings=())
    assert [b.SerializeToString(deterministic=True) for b in plain] == [
        b.SerializeToString(deterministic=True) for b in with_none
    ]
    assert len(wire.pack("n1", 0, [], limit, KEY)) == 1  # still one empty batch


def test_a_sighting_too_large_for_any_batch_is_an_error() -> None:
    msg = wire.sighting_to_proto(1, _sighting(), KEY)
    with pytest.raises(ValueError, match="one sighting"):
        wire.pack("n1", 0, [], 256 + msg.ByteSize(), KEY, sightings=[msg])


# -- the gRPC edge ---------------------------------------------------------------------------


class Receiver:
    """What a node with sightings does with a batch, recorded: the deltas its sink got, and
    what its `check` and `take` were called with."""

    def __init__(self) -> None:
        self.applied: list[Delta] = []
        self.checked: list[list[delta_pb2.Sighting]] = []
        self.taken: list[list[tuple[int, Sighting]]] = []

    def sink(self, deltas) -> int:
        self.applied.extend(deltas)
        return len(deltas)

    def check(self, msgs: list[delta_pb2.Sighting]) -> list[tuple[int, Sighting]]:
        self.checked.append(msgs)
        return [_decode(m) for m in msgs]

    def take(self, decoded: list[tuple[int, Sighting]]) -> int:
        self.taken.append(decoded)
        return len(decoded)


def _decode_delta(msg: delta_pb2.KnowledgeDelta) -> Delta:
    return wire.from_proto(msg, key=KEY, num_params=P, layout="L")


@contextlib.contextmanager
def _serve(with_sight: bool):
    """A gossip server on 127.0.0.1 (with or without `sight`); yields (Receiver, counters,
    a GossipStub to it). Stops on the way out."""
    receiver, counters = Receiver(), TrafficCounters()
    servicer = GossipServicer(
        "n0",
        _decode_delta,
        receiver.sink,
        counters,
        sight=(receiver.check, receiver.take) if with_sight else None,
    )
    server, port = start_server("127.0.0.1", 0, gossip=servicer, max_message_bytes=MAX_BYTES)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield receiver, counters, gossip_pb2_grpc.GossipStub(channel)
    finally:
        server.stop(grace=None)


def _batch(deltas, sightings) -> delta_pb2.DeltaBatch:
    return delta_pb2.DeltaBatch(sender_node="n1", round=0, deltas=deltas, sightings=sightings)


def test_a_batch_with_deltas_and_sightings_reaches_the_sink_and_take() -> None:
    deltas = [_delta_msg("agent-1"), _delta_msg("agent-3")]
    sightings = [wire.sighting_to_proto(1, _sighting(tick=t, seed=t), KEY) for t in range(3)]
    with _serve(with_sight=True) as (receiver, counters, stub):
        reply = stub.PushDeltas(_batch(deltas, sightings), timeout=10)
    assert reply.accepted == 2
    assert [d.sender for d in receiver.applied] == ["agent-1", "agent-3"]
    assert receiver.checked == [sightings]
    assert len(receiver.taken) == 1
    assert [(sender, s.tick) for sender, s in receiver.taken[0]] == [(1, 0), (1, 1), (1, 2)]
    snap = counters.snapshot()
    assert snap["deltas_accepted"] == 2 and snap["sightings_accepted"] == 3
    assert snap["deltas_rejected"] == 0


def _refused(stub, batch: delta_pb2.DeltaBatch, reason: Rejection) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.PushDeltas(batch, timeout=10)
    assert info.value.code() == STATUS[reason]
    assert (REJECTION_KEY, reason.name) in tuple(info.value.trailing_metadata())


@pytest.mark.parametrize("kind", ["hops_0", "wrong_key", "nan_scale"])
def test_a_bad_sighting_refuses_the_whole_batch_and_nothing_is_applied(kind: str) -> None:
    make, reason = BAD[kind]
    good = wire.sighting_to_proto(1, _sighting(), KEY)
    batch = _batch([_delta_msg()], [good, make()])
    with _serve(with_sight=True) as (receiver, counters, stub):
        _refused(stub, batch, reason)
    assert receiver.applied == [] and receiver.taken == []
    snap = counters.snapshot()
    assert snap[f"rejected_{reason.value}"] == 3  # each message of the batch
    assert snap["deltas_refused"] == messages_in(batch) == 1
    assert snap["sightings_accepted"] == 0


def test_sightings_are_not_taken_when_the_deltas_are_refused() -> None:
    bad_delta = _delta_msg()
    bad_delta.layout = "other"  # signature no longer verifies
    batch = _batch([bad_delta], [wire.sighting_to_proto(1, _sighting(), KEY)])
    with _serve(with_sight=True) as (receiver, counters, stub):
        _refused(stub, batch, Rejection.BAD_SIGNATURE)
    assert receiver.taken == [] and receiver.applied == []
    assert counters.snapshot()["sightings_accepted"] == 0


def test_a_node_without_sight_refuses_a_batch_carrying_sightings() -> None:
    batch = _batch([_delta_msg()], [wire.sighting_to_proto(1, _sighting(), KEY)])
    with _serve(with_sight=False) as (receiver, counters, stub):
        _refused(stub, batch, Rejection.MALFORMED)
        assert stub.PushDeltas(_batch([_delta_msg()], []), timeout=10).accepted == 1
    assert len(receiver.applied) == 1  # only the batch without sightings
    assert counters.snapshot()["rejected_malformed"] == 2


def test_sightings_accepted_survives_a_snapshot_and_old_snapshots_load_as_zero() -> None:
    counters = TrafficCounters()
    counters.accepted_sightings(4)
    restored = TrafficCounters()
    restored.load(counters.snapshot())
    assert restored.snapshot()["sightings_accepted"] == 4
    old = {k: v for k, v in counters.snapshot().items() if k != "sightings_accepted"}
    restored.load(old)
    assert restored.sightings_accepted == 0
