"""Knowledge deltas: the unit of sharing, and the reasons one is refused.

A `Delta` is what an agent learned since it last shared, compressed. It travels as a
`swarm.v1.KnowledgeDelta` protobuf (see `protocols.wire`); this module is the plain-Python side
that the gossip and coordinator logic work with.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from protocols.compression import Compressed


class Rejection(enum.Enum):
    """Why a received delta was refused; each maps to one gRPC status code at the edge."""

    MALFORMED = "malformed"
    WRONG_SHAPE = "wrong_shape"
    NON_FINITE = "non_finite"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SENDER = "unknown_sender"
    STALE = "stale"
    CLOCK_SKEW = "clock_skew"
    OUT_OF_BOUNDS = "out_of_bounds"
    """Well formed and signed, but beyond what an honest sender produces: an epoch from the
    future, a version far past the last accepted one, a norm far above the model's (the
    limits of `protocols.gossip.Limits`)."""


class DeltaRejected(Exception):
    """A delta (or the batch holding it) that must not be applied."""

    def __init__(self, reason: Rejection, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Delta:
    """One agent's compressed knowledge delta for one round.

    `epoch` is the incarnation of the sender's public copy (a restarted node uses a new one, so
    its new versions are never mistaken for the ones it sent before). With `snapshot` the
    payload is the sender's whole public copy (dense float32), not a difference: applied, the
    receiver's copy *is* version `base_version` of `epoch`, and the next delta has that
    base_version.
    """

    sender: str
    round: int
    base_version: int
    layout: str
    payload: Compressed
    norm: float
    examples: int = 0
    epoch: int = 0
    snapshot: bool = False


def layout_fingerprint(specs: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    """A short stable hash of a parameter layout (names and shapes, in order).

    Two agents may exchange deltas only if their flat parameter vectors mean the same thing.
    """
    text = ";".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in specs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
