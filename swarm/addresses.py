"""HOST:PORT addresses: which are loopback (no network, no TLS needed)."""

from __future__ import annotations

import ipaddress


def host_of(address: str) -> str:
    """The host of HOST:PORT, without the brackets of an IPv6 literal."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; a name is assumed to be on a network."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
