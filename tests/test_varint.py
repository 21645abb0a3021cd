"""LEB128 gap encoding of sparse delta indices (protocols/compression.py), against hand-written
bytes: the one-byte fast path and the multi-byte path must write the same format."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.compression import decode_index_varint, encode_index_varint


@pytest.mark.parametrize(
    "indices, expected",
    [
        ([0, 1, 127], b"\x01\x01\x7e"),  # gaps 1, 1, 126: one byte each (fast path)
        ([0, 128, 16512], b"\x01\x80\x01\x80\x80\x01"),  # gaps 1, 128, 16384
        ([126, 126 + 127], b"\x7f\x7f"),  # gap 127: the largest one-byte gap
        ([2**32 - 1], b"\x80\x80\x80\x80\x10"),  # gap 2^32: five bytes
        ([5, 6, 300], b"\x06\x01\xa6\x02"),  # a long gap after short ones: 294 = 0x26 + 2 << 7
    ],
)
def test_varint_gaps_are_the_leb128_bytes(indices: list[int], expected: bytes) -> None:
    idx = np.array(indices, dtype=np.uint32)
    assert encode_index_varint(idx) == expected
    assert np.array_equal(decode_index_varint(expected, 2**32), idx)


def test_varint_mixed_widths_round_trip() -> None:
    rng = np.random.default_rng(0)
    gaps = rng.choice([1, 100, 200, 20_000, 3_000_000], size=500)
    idx = (np.cumsum(gaps) - 1).astype(np.uint32)
    data = encode_index_varint(idx)
    assert np.array_equal(decode_index_varint(data, int(idx[-1]) + 1), idx)
