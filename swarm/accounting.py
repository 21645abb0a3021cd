"""Message accounting: every knowledge message sent is delivered, rejected or lost to a fault.

A *message* is one agent's delta (or snapshot) to one receiving node: the unit a fault acts on
(protocols/faults.py) and a receiver accepts or refuses. Each sending shard keeps a `Ledger`;
each receiving node counts, per batch it took or refused, the messages in it
(`protocols.transport.TrafficCounters`: deltas_delivered, deltas_refused). `account` adds them
up for summary.json:

    sent = delivered + rejected + dropped                    (the senders' side)
    delivered (senders) = delivered (receivers)              (nothing vanished on the way)
    rejected (senders)  = refused (receivers)

`dropped` is what injected faults took: messages dropped, cut by a partition, or held back
(delayed) past the end of the run (`dropped_held_at_end`). A duplicate injected by a fault is
two messages sent; the receiver acknowledges the second and drops it (it counts as delivered,
and in the receivers' `duplicates`). Messages to and from devices (external_peers) cross the
run's boundary: with devices only the senders' side is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from swarm.records import Document


@dataclass
class Ledger:
    """One sender's counts of knowledge messages (deltas and snapshots)."""

    sent: int = 0
    """Messages handed to the network, each copy of an injected duplicate counted."""
    delivered: int = 0
    """Acknowledged by the receiver: applied, or recognised as one it already had."""
    rejected: int = 0
    """Refused by the receiver (a gap left by a lost message, an earlier epoch, ...)."""
    dropped: int = 0
    """Lost to injected faults: dropped, cut by a partition, or still held back at the end."""
    dropped_partition: int = 0
    """Of `dropped`: cut by a partition."""
    delayed: int = 0
    """Messages a fault held back for later rounds (counted once sent or dropped)."""
    duplicated: int = 0
    """Extra copies a fault sent."""
    snapshots: int = 0
    """Of `sent`: snapshots (whole public copies) that answered a refusal or a restart."""
    corrupted: int = 0
    """Deltas a Byzantine agent falsified before sending."""
    held: int = 0
    """Sent, and still held back by a delay fault (lost if the run ends first)."""

    def add(self, other: Ledger) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def state(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, int]) -> Ledger:
        return cls(**{k: int(v) for k, v in state.items() if k in cls.__dataclass_fields__})


def account(
    senders: Iterable[Mapping[str, int]],
    receivers: Iterable[Mapping[str, int]],
    *,
    closed: bool = True,
) -> Document:
    """The run's message accounting from every sender's ledger and every receiver's counters.

    closed: every sender and receiver of the run is counted (no devices); only then do the
    receivers' counts have to match the senders'.
    """
    total = Ledger()
    for state in senders:
        total.add(Ledger.from_state(state))
    got = {"delivered": 0, "refused": 0, "accepted": 0}
    for counters in receivers:
        got["delivered"] += int(counters.get("deltas_delivered", 0))
        got["refused"] += int(counters.get("deltas_refused", 0))
        got["accepted"] += int(counters.get("deltas_accepted", 0))
    counts = total.state()
    # the run is over: what a delay fault still holds is lost with it
    counts["dropped"] += counts.pop("held")
    balance = counts["sent"] - (counts["delivered"] + counts["rejected"] + counts["dropped"])
    checks = [balance == 0]
    if closed:
        checks += [total.delivered == got["delivered"], total.rejected == got["refused"]]
    return {
        **counts,
        "dropped_held_at_end": total.held,
        "received": {
            "delivered": got["delivered"],
            "accepted": got["accepted"],
            "duplicates": got["delivered"] - got["accepted"],
            "refused": got["refused"],
        },
        "unaccounted": balance,
        "closed": closed,
        "holds": all(checks),
    }
