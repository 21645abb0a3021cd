"""gRPC credentials from a `swarm certs` directory (`gossip.tls`: mode off | tls | mtls).

    off   plaintext; both functions return None (loopback only)
    tls   servers present <node>.pem / <node>.key; clients verify them against ca.pem
    mtls  as tls, and servers also require a client certificate signed by ca.pem; clients
          present their own <node>.pem / <node>.key

Peers are verified by their real address (the certificates carry the node name, localhost,
127.0.0.1 and ::1 as subject alternative names), so no `grpc.ssl_target_name_override` is set.

The files are checked here, at start-up, with `cryptography` (present, parseable, key matches
certificate, signed by this ca.pem, within its validity dates), because once gRPC holds them a
mistake only shows as a failed handshake on the other node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from protocols.config import TlsConfig

# The diagnosis of a failed handshake (`handshake_hint`) is raised by protocols.transport.Peers
# as this domain error; it lives with the others and is named here too, where it always was.
from protocols.errors import TlsHandshakeFailed as TlsHandshakeFailed

_HOW_TO_FIX = "run `swarm certs CERT_DIR --node NAME ...` to make them"


class TlsError(RuntimeError):
    """Certificates for TLS are missing or unusable; the message says which file and why."""


@dataclass(frozen=True)
class Credentials:
    """PEM bytes of one node's identity and the CA it trusts."""

    ca: bytes
    cert: bytes
    key: bytes


def enabled(cfg: TlsConfig | None) -> bool:
    return cfg is not None and cfg.mode != "off"


def _cert_dir(cfg: TlsConfig) -> Path:
    if not cfg.cert_dir:
        raise TlsError(f"tls mode {cfg.mode!r} needs tls.cert_dir; {_HOW_TO_FIX}")
    path = Path(cfg.cert_dir)
    if not path.is_dir():
        raise TlsError(f"tls.cert_dir {path} is not a directory; {_HOW_TO_FIX}")
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{path} is missing; {_HOW_TO_FIX}") from None
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise TlsError(f"{path} is not a PEM certificate; {_HOW_TO_FIX}") from None


def _check_dates(cert: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise TlsError(
            f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            f"make new ones with `swarm certs` (--days sets their lifetime)"
        )
    if cert.not_valid_before_utc > now:
        raise TlsError(
            f"certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            f"UTC; check this machine's clock"
        )


def load(cfg: TlsConfig, node: str | None) -> Credentials:
    """Read and check ca.pem and the node's certificate and key from `cfg.cert_dir`."""
    if node is None:
        raise TlsError(f"tls mode {cfg.mode!r} needs the node name to find <node>.pem / .key")
    cert_dir = _cert_dir(cfg)
    ca_path, cert_path, key_path = (
        cert_dir / "ca.pem",
        cert_dir / f"{node}.pem",
        cert_dir / f"{node}.key",
    )
    ca = _load_cert(ca_path)
    _check_dates(ca, ca_path)
    cert = _load_cert(cert_path)
    _check_dates(cert, cert_path)
    key_pem = _read(key_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{key_path} is not an unencrypted PEM private key; {_HOW_TO_FIX}") from None
    if key.public_key() != cert.public_key():
        raise TlsError(
            f"{key_path} is not the key of {cert_path}; make both again with `swarm certs`"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsError(
            f"certificate {cert_path} was not signed by the CA in {ca_path}: peers will refuse "
            f"it; make it with `swarm certs` in the same directory as ca.pem"
        ) from None
    return Credentials(ca=_read(ca_path), cert=_read(cert_path), key=key_pem)


def server_credentials(cfg: TlsConfig | None, node: str | None) -> grpc.ServerCredentials | None:
    """Credentials for `server.add_secure_port`, or None when TLS is off."""
    if not enabled(cfg):
        return None
    assert cfg is not None
    creds = load(cfg, node)
    mutual = cfg.mode == "mtls"
    return grpc.ssl_server_credentials(
        [(creds.key, creds.cert)],
        root_certificates=creds.ca if mutual else None,
        require_client_auth=mutual,
    )


def channel_credentials(
    cfg: TlsConfig | None, node: str | None = None
) -> grpc.ChannelCredentials | None:
    """Credentials for `grpc.secure_channel`, or None when TLS is off.

    tls: only ca.pem is needed (node may be None); mtls: the node's own certificate and key too.
    """
    if not enabled(cfg):
        return None
    assert cfg is not None
    if cfg.mode == "tls":
        ca_path = _cert_dir(cfg) / "ca.pem"
        _check_dates(_load_cert(ca_path), ca_path)
        return grpc.ssl_channel_credentials(root_certificates=_read(ca_path))
    creds = load(cfg, node)
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert
    )


#: Words in gRPC's connection error that point at the TLS handshake rather than a dead peer
#: (a dead peer reads "Connection refused"); "socket closed" is what a client sees when the
#: server drops it mid-handshake, e.g. for a certificate from another CA or none at all.
_HANDSHAKE_SIGNS = ("handshake", "ssl", "certificate", "socket closed", "hostname verification")


def handshake_hint(cfg: TlsConfig, address: str, details: str) -> str | None:
    """Say what to check when a TLS connection to `address` failed with gRPC's `details`;
    None when the failure does not look like a TLS problem."""
    if not any(sign in details.lower() for sign in _HANDSHAKE_SIGNS):
        return None
    return (
        f"TLS handshake with {address} failed (tls.mode {cfg.mode!r}): the two nodes do not "
        f"accept each other's certificate. Check that both run the same tls.mode and use "
        f"certificates made by `swarm certs` with the same ca.pem (this node: cert_dir "
        f"{cfg.cert_dir}), and that the peer's certificate names the address dialled "
        f"(`swarm certs DIR --node NAME=HOST`). gRPC said: {details}"
    )
