"""What a call to another node can end in, as the project's own exceptions.

The gRPC client edge (`protocols.transport.Peers`) turns a failed call into one of these, so
nothing above it matches on gRPC status codes or on the words of a status's details. The
server says why it refused a call in a structured way (`Rejection`, sent as trailing
metadata); a peer that does not (an older node) is classified by its status code alone.
"""

from __future__ import annotations


class PeerError(Exception):
    """A call to another node failed. `address` is where, `reason` says why in words."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason


class Unreachable(PeerError):
    """The peer did not answer in time, or no connection could be made (it may be down,
    starting, or the TLS handshake failed)."""


class Refused(PeerError):
    """The peer answered and refused the call (malformed, oversized, unknown sender, ...)."""


class Stale(Refused):
    """The peer's copy of a sender is not where these messages start (a lost message or a
    restart on either side): answer with snapshots of those senders."""


class ClockSkew(Refused):
    """The peer refused because the two clocks disagree by more than it allows."""


class KeyMismatch(Refused):
    """The peer could not verify this node's signature: the two hold different swarm keys."""


class NotServed(Refused):
    """The peer does not run the service or method asked for."""
