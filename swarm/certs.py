"""`swarm certs`: a small certificate authority and one certificate per node, for (m)TLS.

Layout of the output directory (what `protocols.tls` reads, `gossip.tls.cert_dir`):

    ca.pem, ca.key          the CA (self-signed, EC P-256); ca.key is mode 0600
    <node>.pem, <node>.key  per node, signed by the CA; <node>.key is mode 0600

Every node certificate names the node (a DNS name, or an IP address if the name is one) plus
`localhost`, 127.0.0.1 and ::1, so nodes on one machine verify each other by their real
address with no `ssl_target_name_override`. It carries both serverAuth and clientAuth: one
node is a server to its peers and their client too.

Running it again on the same directory never replaces the CA: the existing ca.pem / ca.key sign
the new node certificates, so nodes certified earlier keep trusting the new ones. A node's own
files are re-issued (overwritten). Delete the directory to start a new CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
#: Certificates start this long in the past so a peer whose clock runs a little behind does
#: not see them as "not yet valid" (common practice, e.g. mkcert and cfssl backdate too).
_BACKDATE = dt.timedelta(minutes=5)
#: Loopback names every node certificate carries, so one-machine swarms and tests verify.
_LOOPBACK_DNS = ("localhost",)
_LOOPBACK_IPS = ("127.0.0.1", "::1")


class CertError(RuntimeError):
    """The output directory holds something `swarm certs` must not touch or cannot use."""


def _write(path: Path, data: bytes, *, private: bool) -> Path:
    if private:
        # Created 0600 from the start (no window where the key is world-readable), and
        # chmod-ed in case the file already existed with wider permissions.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path.chmod(0o600)
    else:
        path.write_bytes(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "yan-swarm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(node: str, hosts: tuple[str, ...] = ()) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for name in (node, *hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    names += [x509.DNSName(n) for n in _LOOPBACK_DNS if n != node]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _LOOPBACK_IPS if ip != node]
    return x509.SubjectAlternativeName(names)


def _parse_node(entry: str) -> tuple[str, tuple[str, ...]]:
    """'agent-4' or 'agent-4=10.0.0.14,drone4.lan': the node name (its file names) and the
    addresses peers dial it by, which its certificate must name (IP or DNS)."""
    name, _, hosts = entry.partition("=")
    extra = tuple(h.strip() for h in hosts.split(",") if h.strip())
    for host in extra:
        if not host.isascii() or any(c in host for c in "/\\ :") and not _is_ip(host):
            raise CertError(f"{host!r} (for {name}) is neither an IP address nor a DNS name")
    return name, extra


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _check_node_name(node: str) -> None:
    # The name becomes a file name and a SAN: no path tricks, nothing a DNS name cannot hold.
    if not node or node in (".", "..") or "/" in node or "\\" in node or not node.isascii():
        raise CertError(f"node name {node!r} cannot be a file name and a DNS name")
    if Path(node).stem == "ca":
        raise CertError(f"node name {node!r} would overwrite the CA files")


def _new_ca(now: dt.datetime, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("yan-swarm CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(out_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((out_dir / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((out_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{out_dir / CA_KEY} is not an EC key; delete {out_dir} to make a new CA")
    if key.public_key() != cert.public_key():
        raise CertError(
            f"{out_dir / CA_KEY} does not belong to {out_dir / CA_CERT}; "
            f"delete both to make a new CA (every node then needs a new certificate)"
        )
    return cert, key


def _node_cert(
    node: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    days: int,
    hosts: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A node certificate must not outlive its CA: verifiers reject the chain past that date.
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(node))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(node, hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_certs(out_dir: Path, nodes: list[str], days: int = 365) -> list[Path]:
    """Make (or reuse) the CA in `out_dir` and a certificate + key per node; return the files
    written, in order.

    An existing ca.pem + ca.key pair is reused, never replaced (see the module docstring); a
    ca.pem without its ca.key is an error rather than a silent new CA.
    """
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    named = [_parse_node(entry) for entry in nodes]
    for node, _ in named:
        _check_node_name(node)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    written: list[Path] = []
    has_cert, has_key = (out_dir / CA_CERT).exists(), (out_dir / CA_KEY).exists()
    if has_cert and has_key:
        ca_cert, ca_key = _load_ca(out_dir)
        if ca_cert.not_valid_after_utc <= now:
            raise CertError(
                f"the CA in {out_dir / CA_CERT} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; "
                f"delete {out_dir} and run `swarm certs` again for every node"
            )
    elif has_cert or has_key:
        present, missing = (CA_CERT, CA_KEY) if has_cert else (CA_KEY, CA_CERT)
        raise CertError(
            f"{out_dir / present} exists but {out_dir / missing} does not: refusing to replace "
            f"the CA; restore {missing} or delete {present} to make a new CA"
        )
    else:
        ca_cert, ca_key = _new_ca(now, days)
        written.append(_write(out_dir / CA_KEY, _key_pem(ca_key), private=True))
        written.append(
            _write(
                out_dir / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), private=False
            )
        )
    for node, hosts in named:
        cert, key = _node_cert(node, ca_cert, ca_key, now, days, hosts)
        written.append(_write(out_dir / f"{node}.key", _key_pem(key), private=True))
        written.append(
            _write(
                out_dir / f"{node}.pem",
                cert.public_bytes(serialization.Encoding.PEM),
                private=False,
            )
        )
    return written
