"""Serialization of deltas and sightings: `to_proto` / `from_proto` pairs, signatures, and all
input checks.

This is the only module that turns network bytes into arrays. It never unpickles: values are
raw little-endian bytes decoded with `numpy.frombuffer` after every length, range and finiteness
check. Signatures are HMAC-SHA256 over the deterministic serialization with the signature field
empty, keyed by the swarm's shared secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from protocols.compression import (
    DENSE_F32,
    DENSE_INT8,
    SPARSE_F32,
    SPARSE_INT8,
    Compressed,
    decode_index_varint,
    encode_index_varint,
)
from protocols.delta import Delta, DeltaRejected, Rejection
from protocols.gossip import agent_index, agent_name
from protocols.sightings import MAX_VALUE, Sighting
from swarm.proto.v1 import coordinator_pb2, delta_pb2, gossip_pb2

_VALUE_DTYPE: dict[int, np.dtype[Any]] = {
    DENSE_F32: np.dtype("<f4"),
    SPARSE_F32: np.dtype("<f4"),
    DENSE_INT8: np.dtype("i1"),
    SPARSE_INT8: np.dtype("i1"),
}
_INDEX_DTYPE = np.dtype("<u4")
#: Relative tolerance of the norm check: the sender computes it in float32.
_NORM_RTOL = 1e-3


_Signed = TypeVar(
    "_Signed",
    delta_pb2.KnowledgeDelta,
    gossip_pb2.Introduction,
    delta_pb2.Sighting,
    gossip_pb2.PingRequest,
    gossip_pb2.PingReply,
    gossip_pb2.PingReqRequest,
    gossip_pb2.PingReqReply,
    coordinator_pb2.AggregateRequest,
)


def _sign(msg: _Signed, key: bytes) -> None:
    msg.signature = b""
    msg.signature = hmac.new(
        key, msg.SerializeToString(deterministic=True), hashlib.sha256
    ).digest()


def sign(msg: delta_pb2.KnowledgeDelta, key: bytes) -> None:
    """Fill `msg.signature` with HMAC-SHA256(key, msg without signature)."""
    _sign(msg, key)


def _signature_ok(msg: _Signed, key: bytes) -> bool:
    if not msg.signature:
        return False
    unsigned = type(msg)()
    unsigned.CopyFrom(msg)
    unsigned.signature = b""
    want = hmac.new(key, unsigned.SerializeToString(deterministic=True), hashlib.sha256).digest()
    return hmac.compare_digest(want, msg.signature)


def to_proto(delta: Delta, key: bytes) -> delta_pb2.KnowledgeDelta:
    """A signed wire message for `delta`."""
    payload = delta.payload
    msg = delta_pb2.KnowledgeDelta(
        sender=delta.sender,
        round=delta.round,
        base_version=delta.base_version,
        num_params=payload.num_params,
        layout=delta.layout,
        encoding=delta_pb2.Encoding.Name(payload.encoding),
        values=payload.values.astype(_VALUE_DTYPE[payload.encoding], copy=False).tobytes(),
        scale=payload.scale,
        norm=delta.norm,
        examples=delta.examples,
        epoch=delta.epoch,
        snapshot=delta.snapshot,
    )
    if payload.indices is not None:
        msg.indices = encode_index_varint(payload.indices)
        msg.index_encoding = delta_pb2.INDEX_ENCODING_DELTA_VARINT
    sign(msg, key)
    return msg


def _indices(msg: delta_pb2.KnowledgeDelta, n_values: int, num_params: int) -> np.ndarray:
    """The sparse indices of `msg`, checked: as many as values, strictly increasing, in range."""
    if n_values > num_params:
        raise DeltaRejected(Rejection.WRONG_SHAPE, "more values than parameters")
    if msg.index_encoding == delta_pb2.INDEX_ENCODING_DELTA_VARINT:
        try:
            indices = decode_index_varint(msg.indices, num_params)
        except ValueError as exc:
            raise DeltaRejected(Rejection.MALFORMED, f"indices: {exc}") from None
    elif msg.index_encoding == delta_pb2.INDEX_ENCODING_U32:
        if len(msg.indices) != n_values * _INDEX_DTYPE.itemsize:
            raise DeltaRejected(Rejection.MALFORMED, "indices and values differ in length")
        indices = np.frombuffer(msg.indices, dtype=_INDEX_DTYPE)
        if indices.size and int(indices[-1]) >= num_params:
            raise DeltaRejected(Rejection.WRONG_SHAPE, "an index is out of range")
        if indices.size > 1 and not np.all(indices[1:] > indices[:-1]):
            raise DeltaRejected(Rejection.MALFORMED, "indices are not strictly increasing")
    else:
        raise DeltaRejected(Rejection.MALFORMED, f"unknown index encoding {msg.index_encoding}")
    if indices.size != n_values:
        raise DeltaRejected(Rejection.MALFORMED, "indices and values differ in length")
    return indices


def _check_signature(msg: delta_pb2.KnowledgeDelta, key: bytes) -> None:
    if not _signature_ok(msg, key):
        raise DeltaRejected(Rejection.BAD_SIGNATURE, f"signature of {msg.sender!r} does not verify")


def from_proto(
    msg: delta_pb2.KnowledgeDelta,
    *,
    key: bytes,
    num_params: int,
    layout: str,
    signature_checked: bool = False,
) -> Delta:
    """Check a received message completely and decode it; raises DeltaRejected.

    Checks, in order: signature (nothing else is trusted before it), layout and length,
    encoding and byte lengths (a snapshot must be dense float32), index range and order,
    finiteness, and the declared norm.
    signature_checked: the Reassembler verified every chunk of a reassembled delta.
    """
    if not signature_checked:
        _check_signature(msg, key)
    _check_counters(msg)
    encoding = _checked_encoding(msg, num_params, layout)
    values, indices = _checked_values(msg, encoding, num_params)
    _check_finite(msg, values)
    payload = Compressed(encoding, num_params, values, indices, float(msg.scale))
    return Delta(
        sender=msg.sender,
        round=int(msg.round),
        base_version=int(msg.base_version),
        layout=msg.layout,
        payload=payload,
        norm=_checked_norm(msg, payload),
        examples=int(msg.examples),
        epoch=int(msg.epoch),
        snapshot=bool(msg.snapshot),
    )


#: Largest epoch, version, round or example count a message may carry: the receiver stores
#: them in int64 arrays (checkpoints) and adds to them, so 2^62 leaves room; an honest node's
#: epoch is its start time in ms (~2^41 today) and its counters grow by one per round.
MAX_COUNTER = 2**62


def _check_counters(msg: delta_pb2.KnowledgeDelta) -> None:
    for name in ("epoch", "base_version", "round", "examples"):
        if getattr(msg, name) > MAX_COUNTER:
            raise DeltaRejected(
                Rejection.MALFORMED,
                f"{name} {getattr(msg, name)} is above 2^62 (no honest node counts that far)",
            )


def _checked_encoding(msg: delta_pb2.KnowledgeDelta, num_params: int, layout: str) -> int:
    """The value encoding of a whole (not chunked) message of this swarm's layout and length."""
    if msg.chunk_count > 1:
        raise DeltaRejected(Rejection.MALFORMED, "a chunk must go through a Reassembler")
    if msg.layout != layout or msg.num_params != num_params:
        raise DeltaRejected(
            Rejection.WRONG_SHAPE,
            f"delta for layout {msg.layout!r} with {msg.num_params} params; "
            f"this swarm uses {layout!r} with {num_params}",
        )
    encoding = int(msg.encoding)
    if encoding not in _VALUE_DTYPE:
        raise DeltaRejected(Rejection.MALFORMED, f"unknown encoding {encoding}")
    if msg.snapshot and encoding != DENSE_F32:
        # A snapshot replaces the receiver's copy: a lossy or partial one would corrupt it.
        raise DeltaRejected(
            Rejection.MALFORMED,
            f"a snapshot must be ENCODING_DENSE_F32, not {delta_pb2.Encoding.Name(encoding)}",
        )
    return encoding


def _checked_values(
    msg: delta_pb2.KnowledgeDelta, encoding: int, num_params: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, indices or None when dense) of `msg`, their byte lengths and counts checked."""
    dtype = _VALUE_DTYPE[encoding]
    if len(msg.values) % dtype.itemsize:
        raise DeltaRejected(Rejection.MALFORMED, "values are not a whole number of elements")
    values = np.frombuffer(msg.values, dtype=dtype)
    indices = None
    if encoding in (SPARSE_F32, SPARSE_INT8):
        indices = _indices(msg, values.size, num_params)
    elif msg.indices or values.size != num_params:
        raise DeltaRejected(
            Rejection.WRONG_SHAPE, f"dense delta has {values.size} values, expected {num_params}"
        )
    return values, indices


def _check_finite(msg: delta_pb2.KnowledgeDelta, values: np.ndarray) -> None:
    """Scale, declared norm and float values are all finite."""
    scale = float(msg.scale)
    if not math.isfinite(scale) or not math.isfinite(float(msg.norm)):
        raise DeltaRejected(Rejection.NON_FINITE, "scale or norm is not finite")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise DeltaRejected(Rejection.NON_FINITE, "values contain NaN or infinity")


def _checked_norm(msg: delta_pb2.KnowledgeDelta, payload: Compressed) -> float:
    """The norm of the decoded values: finite, and the one the message declares."""
    norm = float(np.linalg.norm(payload.decode().astype(np.float64)))
    if not math.isfinite(norm):
        raise DeltaRejected(Rejection.NON_FINITE, "decoded delta is not finite")
    if not math.isclose(norm, float(msg.norm), rel_tol=_NORM_RTOL, abs_tol=1e-6):
        raise DeltaRejected(
            Rejection.MALFORMED, f"declared norm {msg.norm:.6g} but the values have {norm:.6g}"
        )
    return norm


# ---------------------------------------------------------------------------------------------
# Chunking: a delta larger than the message limit travels as several signed messages, each
# holding a contiguous run of the values (dense) or of the kept entries (sparse).


def split(
    msg: delta_pb2.KnowledgeDelta, max_bytes: int, key: bytes
) -> list[delta_pb2.KnowledgeDelta]:
    """`msg` itself if it fits in max_bytes, else chunks that each do (each signed)."""
    if msg.ByteSize() <= max_bytes:
        return [msg]
    itemsize = _VALUE_DTYPE[int(msg.encoding)].itemsize
    sparse = int(msg.encoding) in (SPARSE_F32, SPARSE_INT8)
    values = np.frombuffer(msg.values, dtype=_VALUE_DTYPE[int(msg.encoding)])
    indices = _indices(msg, values.size, msg.num_params) if sparse else None
    # room for the header, and up to 5 varint bytes per sparse entry
    per_item = itemsize + (_VARINT_BYTES if sparse else 0)
    room = max_bytes - (msg.ByteSize() - len(msg.values) - len(msg.indices)) - _CHUNK_SLACK
    if room < per_item:
        raise ValueError(f"max_bytes {max_bytes} cannot hold even one entry of this delta")
    step = room // per_item
    bounds = list(range(0, values.size, step)) or [0]
    chunks = []
    for i, lo in enumerate(bounds):
        hi = min(values.size, lo + step)
        chunk = delta_pb2.KnowledgeDelta()
        chunk.CopyFrom(msg)
        chunk.values = values[lo:hi].tobytes()
        chunk.chunk_index, chunk.chunk_count = i, len(bounds)
        if indices is not None:
            chunk.indices = encode_index_varint(indices[lo:hi])
            chunk.index_encoding = delta_pb2.INDEX_ENCODING_DELTA_VARINT
            chunk.param_offset = int(indices[lo]) if hi > lo else 0
        else:
            chunk.param_offset = lo
        sign(chunk, key)
        chunks.append(chunk)
    return chunks


_VARINT_BYTES = 5
_CHUNK_SLACK = 64  # chunk fields and varint length prefixes the header estimate leaves out
#: Most chunks one delta may announce: bounds a hostile sender's claim on receiver memory.
MAX_CHUNKS = 4096


_ChunkOf = tuple[int, int, int, bool]  # (round, base_version, epoch, snapshot)


class Reassembler:
    """Collects the chunks of each (sender, round, base_version, epoch, snapshot); hands out the
    whole message.

    Every chunk's signature is checked on arrival (a bad one is rejected at once); a complete
    set is merged into one unsigned message to pass to `from_proto(signature_checked=True)`.
    Thread-safe. At most one incomplete delta per sender is kept: a newer one replaces it.
    """

    def __init__(self, key: bytes, num_params: int):
        self.key, self.num_params = key, num_params
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[_ChunkOf, dict[int, delta_pb2.KnowledgeDelta]]] = {}

    def add(self, msg: delta_pb2.KnowledgeDelta) -> tuple[delta_pb2.KnowledgeDelta, bool] | None:
        """(message, signature_checked) when a delta is whole, else None."""
        if msg.chunk_count <= 1:
            return msg, False
        _check_signature(msg, self.key)
        if msg.chunk_count > MAX_CHUNKS or msg.chunk_index >= msg.chunk_count:
            raise DeltaRejected(Rejection.MALFORMED, "chunk index/count out of range")
        # A snapshot and a delta of one round and version (or two epochs' messages) are
        # different messages: their chunks must never mix.
        ident = (int(msg.round), int(msg.base_version), int(msg.epoch), bool(msg.snapshot))
        with self._lock:
            known, parts = self._pending.get(msg.sender, (ident, {}))
            if known != ident:
                parts = {}
            parts[int(msg.chunk_index)] = msg
            if len(parts) < msg.chunk_count:
                self._pending[msg.sender] = (ident, parts)
                return None
            self._pending.pop(msg.sender, None)
        ordered = [parts[i] for i in range(msg.chunk_count)]
        if any(c.chunk_count != msg.chunk_count for c in ordered):
            raise DeltaRejected(Rejection.MALFORMED, "chunks disagree on their count")
        return _merge(ordered, self.num_params), True


def _merge(chunks: list[delta_pb2.KnowledgeDelta], num_params: int) -> delta_pb2.KnowledgeDelta:
    whole = delta_pb2.KnowledgeDelta()
    whole.CopyFrom(chunks[0])
    whole.values = b"".join(c.values for c in chunks)
    whole.chunk_index = whole.chunk_count = whole.param_offset = 0
    whole.signature = b""
    if int(whole.encoding) in (SPARSE_F32, SPARSE_INT8):
        itemsize = _VALUE_DTYPE[int(whole.encoding)].itemsize
        parts = [_indices(c, len(c.values) // itemsize, num_params) for c in chunks]
        whole.indices = encode_index_varint(np.concatenate(parts))  # re-checked by from_proto
        whole.index_encoding = delta_pb2.INDEX_ENCODING_DELTA_VARINT
    return whole


def make_decoder(
    key: bytes, num_params: int, layout: str
) -> Callable[[delta_pb2.KnowledgeDelta], Delta | None]:
    """The receive path of one node: reassemble chunks, then check and decode whole deltas
    (None while a chunked delta is incomplete)."""
    chunks = Reassembler(key, num_params)

    def decode(msg: delta_pb2.KnowledgeDelta) -> Delta | None:
        whole = chunks.add(msg)
        if whole is None:
            return None
        merged, checked = whole
        return from_proto(
            merged, key=key, num_params=num_params, layout=layout, signature_checked=checked
        )

    return decode


def pack(
    sender_node: str,
    round_: int,
    msgs: list[delta_pb2.KnowledgeDelta],
    max_bytes: int,
    key: bytes,
    *,
    sightings: Sequence[delta_pb2.Sighting] = (),
) -> list[delta_pb2.DeltaBatch]:
    """DeltaBatches under max_bytes each, holding `msgs` in order (split into chunks where one
    alone is too large) and then `sightings` in order: what a node sends another in one round.
    A sighting is never split; one too large for a batch on its own raises ValueError."""
    budget = max_bytes - _BATCH_SLACK
    batches: list[delta_pb2.DeltaBatch] = []
    current = delta_pb2.DeltaBatch(sender_node=sender_node, round=round_)
    for msg in msgs:
        for part in split(msg, budget, key):
            size = part.ByteSize() + _VARINT_BYTES + 1  # field tag + length prefix
            if current.deltas and current.ByteSize() + size > budget:
                batches.append(current)
                current = delta_pb2.DeltaBatch(sender_node=sender_node, round=round_)
            current.deltas.append(part)
    for sighting in sightings:
        size = sighting.ByteSize() + _VARINT_BYTES + 1
        if size > budget:
            raise ValueError(f"max_bytes {max_bytes} cannot hold even one sighting ({size} bytes)")
        if (current.deltas or current.sightings) and current.ByteSize() + size > budget:
            batches.append(current)
            current = delta_pb2.DeltaBatch(sender_node=sender_node, round=round_)
        current.sightings.append(sighting)
    if current.deltas or current.sightings or not batches:
        batches.append(current)
    return batches


_BATCH_SLACK = 256  # the batch's own fields


# ---------------------------------------------------------------------------------------------
# Sightings: labelled observation windows relayed beside the deltas (protocols/sightings.py).

#: Values travel as int8 times one float32 scale per sighting (the window's largest magnitude /
#: 127): a quarter of float32's bytes, and a step of 1/254 of the window's range, far below the
#: sensor noise a window carries (feature_noise 0.6 on O(1) signatures).
_SIGHTING_DTYPE = np.dtype("i1")


def sign_sighting(msg: delta_pb2.Sighting, key: bytes) -> None:
    """Fill `msg.signature` with HMAC-SHA256(key, msg without signature), as `sign` does."""
    _sign(msg, key)


def sighting_to_proto(sender: int, s: Sighting, key: bytes) -> delta_pb2.Sighting:
    """A signed wire message for sighting `s`, sent on by agent `sender`."""
    if s.window.ndim != 2:
        raise ValueError(f"a sighting's window is (W, D), not {s.window.shape}")
    rows, cols = s.window.shape
    window = np.asarray(s.window, np.float32)
    top = float(np.abs(window).max(initial=0.0))
    scale = np.float32(top / 127.0)
    q = np.zeros(window.shape, np.int8) if scale == 0 else np.rint(window / scale)
    msg = delta_pb2.Sighting(
        sender=agent_name(sender),
        origin=agent_name(s.origin),
        tick=s.tick,
        cls=s.cls,
        hops=s.hops,
        rows=rows,
        cols=cols,
        values=np.clip(q, -127, 127).astype(_SIGHTING_DTYPE).tobytes(),
        scale=float(scale),
        via=agent_name(s.via) if s.via >= 0 else "",
    )
    sign_sighting(msg, key)
    return msg


def sighting_from_proto(
    msg: delta_pb2.Sighting,
    *,
    key: bytes,
    n_classes: int,
    window: tuple[int, int],
    max_hops: int,
) -> tuple[int, Sighting]:
    """Check a received sighting completely and decode it: (sender index, sighting with a
    float32 window). Raises DeltaRejected.

    Checks, in order: signature (nothing else is trusted before it), agent names, hops and
    class (MALFORMED), shape and byte length (WRONG_SHAPE), and the scale (NON_FINITE: finite,
    >= 0, and small enough that every int8 value times it stays within +-MAX_VALUE).
    """
    if not _signature_ok(msg, key):
        raise DeltaRejected(
            Rejection.BAD_SIGNATURE, f"sighting from {msg.sender[:80]!r} does not verify"
        )
    try:
        sender, origin = agent_index(msg.sender), agent_index(msg.origin)
        via = agent_index(msg.via) if msg.via else -1
    except ValueError:
        raise DeltaRejected(
            Rejection.MALFORMED,
            f"sender {msg.sender[:80]!r}, origin {msg.origin[:80]!r} or via {msg.via[:80]!r} "
            "is not an agent name",
        ) from None
    if msg.tick > MAX_COUNTER:
        raise DeltaRejected(Rejection.MALFORMED, f"tick {msg.tick} is above 2^62")
    if not 0 < msg.hops <= max_hops:
        # hops counts the hop just made, so it is at least 1
        raise DeltaRejected(Rejection.MALFORMED, f"hops {msg.hops} is not in 1..{max_hops}")
    if msg.cls >= n_classes:
        raise DeltaRejected(Rejection.MALFORMED, f"class {msg.cls} of {n_classes}")
    shape = (int(msg.rows), int(msg.cols))
    if shape != tuple(window):
        raise DeltaRejected(Rejection.WRONG_SHAPE, f"window {shape}, this swarm uses {window}")
    if len(msg.values) != shape[0] * shape[1] * _SIGHTING_DTYPE.itemsize:
        raise DeltaRejected(Rejection.WRONG_SHAPE, f"{len(msg.values)} value bytes for {shape}")
    scale = np.float32(msg.scale)
    if not np.isfinite(scale):
        raise DeltaRejected(Rejection.NON_FINITE, f"scale {msg.scale} is not finite")
    if not 0 <= scale * 128 <= MAX_VALUE:
        raise DeltaRejected(
            Rejection.NON_FINITE, f"scale {msg.scale:g} puts values beyond +-{MAX_VALUE:g}"
        )
    q = np.frombuffer(msg.values, dtype=_SIGHTING_DTYPE).reshape(shape)
    values = q.astype(np.float32) * scale
    return sender, Sighting(origin, int(msg.tick), int(msg.cls), int(msg.hops), values, via)


# ---------------------------------------------------------------------------------------------
# Introductions: who a node is, where it listens and which agents it hosts (Gossip.Introduce).

#: Longest node name / address an introduction may carry: bounds what a peer makes us store.
MAX_NAME_CHARS = 256
MAX_ADDRESS_CHARS = 512


def sign_introduction(msg: gossip_pb2.Introduction, key: bytes) -> None:
    """Fill `msg.signature` with HMAC-SHA256(key, msg without signature), as `sign` does."""
    _sign(msg, key)


def sign_aggregate_request(msg: coordinator_pb2.AggregateRequest, key: bytes) -> None:
    """Fill `msg.signature` with HMAC-SHA256(key, msg without signature), as `sign` does."""
    _sign(msg, key)


def aggregate_request(node: str, round_: int, key: bytes) -> coordinator_pb2.AggregateRequest:
    """Node `node`'s signed request for the aggregate of round `round_` (Coordinator.GetAggregate:
    the global model goes only to a holder of the swarm key)."""
    msg = coordinator_pb2.AggregateRequest(node=node, round=round_)
    sign_aggregate_request(msg, key)
    return msg


_Named = TypeVar("_Named", gossip_pb2.Introduction, coordinator_pb2.AggregateRequest)


def _check_signed_by_name(msg: _Named, key: bytes, what: str) -> None:
    """The checks a message naming its node gets first: the signature (BAD_SIGNATURE), then a
    node name of 1..MAX_NAME_CHARS characters (MALFORMED)."""
    if not _signature_ok(msg, key):
        raise DeltaRejected(Rejection.BAD_SIGNATURE, f"{what} of {msg.node[:80]!r} does not verify")
    if not msg.node or len(msg.node) > MAX_NAME_CHARS:
        raise DeltaRejected(
            Rejection.MALFORMED, f"node name must be 1..{MAX_NAME_CHARS} characters"
        )


def check_aggregate_request(msg: coordinator_pb2.AggregateRequest, key: bytes) -> None:
    """Verify an aggregate request before answering it; raises DeltaRejected: BAD_SIGNATURE
    when it was not signed with the swarm key (or not at all), MALFORMED when the node name is
    empty or longer than MAX_NAME_CHARS."""
    _check_signed_by_name(msg, key, "aggregate request")


def introduction(
    node: str, address: str, agents: list[int], *, membership: bool, key: bytes
) -> gossip_pb2.Introduction:
    """This node's signed introduction, with the wall clock read now."""
    msg = gossip_pb2.Introduction(
        node=node,
        address=address,
        agents=agents,
        unix_ms=int(time.time() * 1000),
        membership=membership,
    )
    sign_introduction(msg, key)
    return msg


_Probe = TypeVar(
    "_Probe",
    gossip_pb2.PingRequest,
    gossip_pb2.PingReply,
    gossip_pb2.PingReqRequest,
    gossip_pb2.PingReqReply,
)


def sign_probe(msg: _Probe, key: bytes) -> _Probe:
    """Sign a SWIM message (Ping, PingReq or a reply) in place, as `sign` does; returns it."""
    _sign(msg, key)
    return msg


def probe_signed(msg: _Probe, key: bytes) -> bool:
    """Whether a SWIM message carries the swarm key's signature (nothing in it is believed
    before this holds: membership news decides whom a node talks to)."""
    return _signature_ok(msg, key)


def check_introduction(msg: gossip_pb2.Introduction, key: bytes) -> None:
    """Verify an introduction before anything in it is believed; raises DeltaRejected.

    BAD_SIGNATURE when it was not signed with the swarm key; MALFORMED when a field is absurd
    (no node name, an address that is not host:port, an agent listed twice, oversized strings).
    The clock reading (`unix_ms`) is reported, not judged: freshness is the caller's policy
    (a device without a real-time clock may honestly read 1970).
    """
    _check_signed_by_name(msg, key, "introduction")
    host, sep, port = msg.address.rpartition(":")
    if (
        not sep
        or not host
        or len(msg.address) > MAX_ADDRESS_CHARS
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
    ):
        raise DeltaRejected(
            Rejection.MALFORMED, f"address {msg.address[:80]!r} of {msg.node!r} is not host:port"
        )
    if len(set(msg.agents)) != len(msg.agents):
        raise DeltaRejected(Rejection.MALFORMED, f"{msg.node!r} lists an agent twice")
