"""Deltas larger than the gRPC message limit travel in signed chunks and come back whole."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.compression import compress
from protocols.config import CompressionConfig
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.wire import MAX_CHUNKS, Reassembler, from_proto, make_decoder, pack, sign, to_proto

KEY = b"c" * 32
P = 300_000  # 1.2 MB dense: several chunks at a 256 KiB limit
LIMIT = 256 * 1024


def _delta(kind: str, round_: int = 0) -> Delta:
    x = np.random.default_rng(round_).normal(size=P).astype(np.float32)
    payload = compress(x, CompressionConfig(kind=kind, ratio=0.5))
    norm = float(np.linalg.norm(payload.decode().astype(np.float64)))
    return Delta("agent-1", round_, round_, "L", payload, norm, examples=4)


@pytest.mark.parametrize("kind", ["none", "int8", "topk", "topk_int8"])
def test_large_delta_is_packed_under_the_limit_and_reassembled_exactly(kind: str) -> None:
    delta = _delta(kind)
    batches = pack("n1", 0, [to_proto(delta, KEY)], LIMIT, KEY)
    decode = make_decoder(KEY, P, "L")
    out = [d for b in batches for d in map(decode, b.deltas) if d is not None]
    assert all(b.ByteSize() <= LIMIT for b in batches)
    assert (len(batches) > 1) == (to_proto(delta, KEY).ByteSize() > LIMIT - 256)
    assert len(out) == 1
    assert np.array_equal(out[0].payload.decode(), delta.payload.decode())
    assert (out[0].sender, out[0].examples) == ("agent-1", 4)


def _chunks():
    return [m for b in pack("n1", 0, [to_proto(_delta("none"), KEY)], LIMIT, KEY) for m in b.deltas]


def test_a_chunk_alone_is_not_a_delta_and_missing_chunks_hold_it_back() -> None:
    chunks = _chunks()
    with pytest.raises(DeltaRejected) as info:
        from_proto(chunks[0], key=KEY, num_params=P, layout="L")
    assert info.value.reason == Rejection.MALFORMED
    r = Reassembler(KEY, P)
    assert all(r.add(c) is None for c in chunks[:-1])  # incomplete: nothing yet
    assert r.add(chunks[-1]) is not None


def test_tampered_chunk_is_rejected_on_arrival() -> None:
    chunks = _chunks()
    chunks[1].values = b"\x00" + chunks[1].values[1:]
    with pytest.raises(DeltaRejected) as info:
        Reassembler(KEY, P).add(chunks[1])
    assert info.value.reason == Rejection.BAD_SIGNATURE


def test_absurd_chunk_count_is_rejected() -> None:
    chunk = _chunks()[0]
    chunk.chunk_count = MAX_CHUNKS + 1
    sign(chunk, KEY)
    with pytest.raises(DeltaRejected) as info:
        Reassembler(KEY, P).add(chunk)
    assert info.value.reason == Rejection.MALFORMED
