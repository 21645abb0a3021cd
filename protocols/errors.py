"""What a call to another node can end in, as the project's own exceptions.

The gRPC client edge (`protocols.transport.Peers`) turns a failed call into one of these, so
nothing above it matches on gRPC status codes or on the words of a status's details. The
server says why it refused a call in a structured way (the `Rejection`, sent as trailing
metadata); a peer that does not (an older node) is classified by its status code alone.

    Unreachable         no answer in time, no connection (down, starting, network)
      TlsHandshakeFailed  the connection failed at the TLS handshake: retrying will not help
    Refused             the peer answered and refused (malformed, oversized, unknown sender...)
      Stale             its copy of a sender is not where these messages start: send snapshots
      ClockSkew         the two clocks disagree by more than it allows
      KeyMismatch       it could not verify this node's signature: the swarm keys differ
      NotServed         it does not run the service or method asked for
"""

from __future__ import annotations


class PeerError(Exception):
    """A call to another node failed. `address` is where, `reason` says why in words (the
    peer's own, when it refused). `status` names the wire status for people (status views,
    logs: "UNAVAILABLE"); code above the edge picks the subclass, never this string."""

    def __init__(self, address: str, reason: str, status: str = ""):
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.status = status

    def __reduce__(self) -> tuple[type[PeerError], tuple[str, str, str]]:
        # Exception pickles its args (one string here); a shard's error may cross Ray
        return type(self), (self.address, self.reason, self.status)

    def describe(self) -> str:
        """The failure as status views show it: `STATUS: reason`."""
        return f"{self.status or 'ERROR'}: {self.reason}"


class Unreachable(PeerError):
    """The peer did not answer in time, or no connection could be made (it may be down,
    starting, or the network between is)."""


class TlsHandshakeFailed(Unreachable):
    """A call failed because the TLS handshake did: the two nodes do not accept each other's
    certificate, which retrying cannot fix. `reason` says what to check
    (`protocols.tls.handshake_hint`)."""


class Refused(PeerError):
    """The peer answered and refused the call (malformed, oversized, unknown sender, ...)."""


class Stale(Refused):
    """The peer's copy of a sender is not where these messages start (a lost message or a
    restart on either side): answer with snapshots of those senders."""


class ClockSkew(Refused):
    """The peer refused because the two clocks disagree by more than it allows (or its
    introduction showed a clock too far from this node's)."""


class KeyMismatch(Refused):
    """The peer could not verify this node's signature (or this node could not verify the
    peer's): the two hold different swarm keys."""


class NotServed(Refused):
    """The peer does not run the service or method asked for."""
