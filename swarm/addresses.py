"""HOST:PORT addresses: which are loopback (no network, no TLS needed)."""

from __future__ import annotations

import ipaddress


def host_of(address: str) -> str:
    """The host of HOST:PORT, without the brackets of an IPv6 literal."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") else host


def address_problem(address: str, *, any_port: bool = False) -> str | None:
    """Why `address` is not HOST:PORT (None if it is): a host without spaces or ':' (an IPv6
    literal in brackets), and a port 1..65535 (0 too with `any_port`: bind any free one)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return f"{address!r} is not HOST:PORT"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "")
        except ValueError:
            return f"{address!r}: {host} is not a bracketed IPv6 address"
    elif ":" in host or any(c.isspace() for c in host):
        return f"{address!r}: the host {host!r} is not a name or an IPv4 address"
    low = 0 if any_port else 1
    if not port.isdigit() or not low <= int(port) <= 65535:
        return f"{address!r}: the port must be a number from {low} to 65535"
    return None


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; a name is assumed to be on a network."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
