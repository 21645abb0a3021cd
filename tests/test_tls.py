"""TLS and mutual TLS on real servers on 127.0.0.1, with certificates from `swarm certs`."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_transport import MAX_BYTES, P, _msg, serve_receiver

from protocols.config import MembershipConfig, TlsConfig
from protocols.errors import Unreachable
from protocols.tls import TlsError, TlsHandshakeFailed
from protocols.transport import Peers, TrafficCounters
from swarm.certs import CertError, make_certs
from swarm.proto.v1 import delta_pb2

#: Deadline of calls expected to fail: Peers waits for a ready channel, so a refused handshake
#: only ends at the deadline; on loopback a good handshake takes milliseconds.
FAIL_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def cert_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two independent CAs: `ours` certifies n0 (server) and n1 (client), `theirs` an n1."""
    root = tmp_path_factory.mktemp("certs")
    make_certs(root / "ours", ["n0", "n1"], days=2)
    make_certs(root / "theirs", ["n1"], days=2)
    return root / "ours", root / "theirs"


def _cfg(mode: str, cert_dir: Path) -> TlsConfig:
    return TlsConfig(mode=mode, cert_dir=str(cert_dir))


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


def _push(peers: Peers, address: str, timeout_s: float = 10) -> int:
    return peers.push(address, delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg()]), timeout_s)


# -- the certificates ------------------------------------------------------------------------


def test_make_certs_writes_a_ca_and_node_certs_with_loopback_sans(tmp_path: Path) -> None:
    written = make_certs(tmp_path, ["n0", "10.1.2.3"], days=3)
    assert [p.name for p in written] == [
        "ca.key",
        "ca.pem",
        "n0.key",
        "n0.pem",
        "10.1.2.3.key",
        "10.1.2.3.pem",
    ]
    for key in ("ca.key", "n0.key", "10.1.2.3.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "n0.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n0", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    ip_cert = x509.load_pem_x509_certificate((tmp_path / "10.1.2.3.pem").read_bytes())
    ip_san = ip_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.1.2.3") in ip_san.get_values_for_type(x509.IPAddress)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_make_certs_again_reuses_the_ca(tmp_path: Path) -> None:
    make_certs(tmp_path, ["n0"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    written = make_certs(tmp_path, ["n1"])
    assert [p.name for p in written] == ["n1.key", "n1.pem"]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate((tmp_path / "n1.pem").read_bytes()).verify_directly_issued_by(ca)


def test_make_certs_refuses_a_ca_without_its_key(tmp_path: Path) -> None:
    make_certs(tmp_path, ["n0"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertError, match="refusing to replace the CA"):
        make_certs(tmp_path, ["n1"])


def test_cli_certs_smoke(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = subprocess.run(
        [sys.executable, "-m", "swarm.cli", "certs", str(out), "--node", "a", "--node", "b"]
        + ["--days", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote") == 6
    assert sorted(p.name for p in out.iterdir()) == [
        "a.key",
        "a.pem",
        "b.key",
        "b.pem",
        "ca.key",
        "ca.pem",
    ]


# -- servers refuse what they must -----------------------------------------------------------


def test_tls_server_refuses_a_plaintext_client(cert_dirs) -> None:
    ours, _ = cert_dirs
    with (
        serve_receiver(tls=_cfg("tls", ours), node="n0") as (node, counters, address),
        grpc.insecure_channel(address) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            _health(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert counters.snapshot()["messages_received"] == 0


def test_mtls_server_refuses_a_client_without_a_certificate(cert_dirs) -> None:
    ours, _ = cert_dirs
    ca_only = grpc.ssl_channel_credentials(root_certificates=(ours / "ca.pem").read_bytes())
    with (
        serve_receiver(tls=_cfg("mtls", ours), node="n0") as (node, counters, address),
        grpc.secure_channel(address, ca_only) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            _health(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_refuses_a_client_certified_by_another_ca(cert_dirs) -> None:
    ours, theirs = cert_dirs
    # The client trusts our CA (so it accepts the server) but shows a certificate of another.
    foreign = grpc.ssl_channel_credentials(
        root_certificates=(ours / "ca.pem").read_bytes(),
        private_key=(theirs / "n1.key").read_bytes(),
        certificate_chain=(theirs / "n1.pem").read_bytes(),
    )
    with (
        serve_receiver(tls=_cfg("mtls", ours), node="n0") as (node, counters, address),
        grpc.secure_channel(address, foreign) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            _health(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        x = np.zeros((1, P), np.float32)
        assert node.apply(x) == 0


# -- and accept what they should ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tls", "mtls"])
def test_certified_client_pushes_a_delta_that_is_applied(cert_dirs, mode: str) -> None:
    ours, _ = cert_dirs
    cfg = _cfg(mode, ours)
    # The server is verified by its real address 127.0.0.1 (an IP SAN), no name override.
    with serve_receiver(tls=cfg, node="n0") as (node, counters, address):
        peers = Peers(MAX_BYTES, TrafficCounters(), tls=cfg, node="n1")
        try:
            assert _push(peers, address) == 1
        finally:
            peers.close()
        x = np.zeros((1, P), np.float32)
        assert node.apply(x) == 1
        assert np.allclose(x, 1 / 3)  # MH weight of a 4-ring neighbour, delta of ones
        assert counters.snapshot()["deltas_accepted"] == 1


# -- errors a person can act on ----------------------------------------------------------------


def test_under_mtls_a_node_speaks_only_as_its_certificate_name(cert_dirs) -> None:
    from protocols.errors import PeerError
    from protocols.membership_net import MembershipNode
    from protocols.transport import GossipServicer, start_server
    from protocols.wire import sign_probe
    from swarm.proto.v1 import gossip_pb2, gossip_pb2_grpc

    # Prepare: n0 serving gossip and membership under mTLS; n1 its certified client
    ours, _ = cert_dirs
    cfg = _cfg("mtls", ours)
    counters = TrafficCounters()
    hosts = {"agent-1": "n2"}  # n0 met n2, which hosts agent-1
    servicer = GossipServicer("n0", lambda m: None, lambda d: 0, counters, host_of=hosts.get)
    server, port = start_server(
        "127.0.0.1", 0, gossip=servicer, max_message_bytes=MAX_BYTES, tls=cfg, node="n0"
    )
    address = f"127.0.0.1:{port}"
    membership = servicer.membership = MembershipNode("n0", address, MembershipConfig(), key=b"k")
    peers = Peers(MAX_BYTES, TrafficCounters(), tls=cfg, node="n1")
    try:
        # Execute: n1, proven by its certificate, sends as n2 (a batch and a ping), and as
        # itself a delta of agent-1, which lives on n2
        forged = delta_pb2.DeltaBatch(sender_node="n2", deltas=[_msg()])
        with pytest.raises(PeerError) as info:
            peers.push(address, forged, 10)
        with pytest.raises(PeerError) as agent_info:
            peers.push(address, delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg()]), 10)
        # an agent not known to live anywhere is judged by the gossip rules, not here
        peers.push(address, delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg("agent-3")]), 10)
        stub = gossip_pb2_grpc.GossipStub(peers.channel(address))
        with pytest.raises(grpc.RpcError) as ping_err:
            stub.Ping(sign_probe(gossip_pb2.PingRequest(sender_node="n2"), b"k"), timeout=5)
        ok = stub.Ping(sign_probe(gossip_pb2.PingRequest(sender_node="n1"), b"k"), timeout=5)
    finally:
        peers.close()
        server.stop(grace=None)
    # Assert: both refused and counted; as itself it is answered
    assert info.value.status == "PERMISSION_DENIED" and "certificate is 'n1'" in info.value.reason
    assert agent_info.value.status == "PERMISSION_DENIED"
    assert "'agent-1' lives on 'n2', not on 'n1'" in agent_info.value.reason
    assert counters.snapshot()["rejected_unknown_sender"] == 2
    assert ping_err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert membership.refusals() == {"wrong_identity": 1}
    assert ok.node == "n0"


def test_under_mtls_a_coordinator_takes_submits_only_under_the_callers_name(cert_dirs) -> None:
    from protocols.errors import PeerError
    from protocols.transport import CoordinatorServicer, start_server

    # Prepare: a coordinator (certificate n0) and its certified client n1
    cfg = _cfg("mtls", cert_dirs[0])
    counters = TrafficCounters()
    servicer = CoordinatorServicer(
        decode=lambda m: None,
        submit=lambda deltas: len(deltas),
        wait_aggregate=lambda round_, timeout_s: None,
        encode=lambda d: delta_pb2.KnowledgeDelta(),
        counters=counters,
        round_timeout_s=1.0,
    )
    server, port = start_server(
        "127.0.0.1", 0, coordinator=servicer, max_message_bytes=MAX_BYTES, tls=cfg, node="n0"
    )
    peers = Peers(MAX_BYTES, TrafficCounters(), tls=cfg, node="n1")
    try:
        # Execute: n1 submits as n2, then as itself
        with pytest.raises(PeerError) as info:
            peers.submit(
                f"127.0.0.1:{port}", delta_pb2.DeltaBatch(sender_node="n2", deltas=[_msg()]), 10
            )
        as_itself = delta_pb2.DeltaBatch(sender_node="n1", deltas=[_msg()])
        peers.submit(f"127.0.0.1:{port}", as_itself, 10)
    finally:
        peers.close()
        server.stop(grace=None)
    # Assert: refused PERMISSION_DENIED and counted; as itself it is taken
    assert info.value.status == "PERMISSION_DENIED" and "certificate is 'n1'" in info.value.reason
    assert counters.snapshot()["rejected_unknown_sender"] == 1


def test_bad_client_certificate_error_says_what_to_check(cert_dirs) -> None:
    ours, theirs = cert_dirs
    with serve_receiver(tls=_cfg("mtls", ours), node="n0") as (node, counters, address):
        peers = Peers(MAX_BYTES, TrafficCounters(), tls=_cfg("mtls", theirs), node="n1")
        try:
            with pytest.raises(TlsHandshakeFailed) as info:
                _push(peers, address, timeout_s=FAIL_TIMEOUT_S)
        finally:
            peers.close()
    # a domain error: unreachable for callers that only retry, fatal for those that know it
    assert isinstance(info.value, Unreachable) and info.value.address == address
    assert info.value.describe().startswith("UNAVAILABLE: TLS handshake with")
    text = str(info.value)
    for words in ("TLS handshake", address, "certificate", "swarm certs", "ca.pem", str(theirs)):
        assert words in text


def test_missing_certificate_file_is_named_at_startup(cert_dirs, tmp_path: Path) -> None:
    ours, _ = cert_dirs
    with pytest.raises(TlsError) as info:
        Peers(MAX_BYTES, TrafficCounters(), tls=_cfg("mtls", ours), node="n7")
    assert str(ours / "n7.pem") in str(info.value)
    assert "swarm certs" in str(info.value)
    with pytest.raises(TlsError, match="needs tls.cert_dir"):
        Peers(MAX_BYTES, TrafficCounters(), tls=TlsConfig(mode="tls"))


def test_certificate_of_another_ca_is_refused_at_startup(cert_dirs, tmp_path: Path) -> None:
    ours, theirs = cert_dirs
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.pem").write_bytes((ours / "ca.pem").read_bytes())
    for suffix in (".pem", ".key"):
        (mixed / f"n1{suffix}").write_bytes((theirs / f"n1{suffix}").read_bytes())
    with (
        pytest.raises(TlsError, match=r"n1\.pem was not signed by the CA"),
        serve_receiver(tls=_cfg("mtls", mixed), node="n1"),
    ):
        pass


def test_certs_name_the_addresses_peers_dial(tmp_path) -> None:
    """`--node agent-4=10.0.0.14,drone4.lan`: the certificate (file agent-4.pem) also names the
    IP and DNS name peers on a network dial the node by."""
    import ipaddress

    from cryptography import x509

    from swarm.certs import CertError, make_certs

    make_certs(tmp_path, ["agent-4=10.0.0.14,drone4.lan"])
    cert = x509.load_pem_x509_certificate((tmp_path / "agent-4.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.14") in san.get_values_for_type(x509.IPAddress)
    assert {"agent-4", "drone4.lan", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    with pytest.raises(CertError, match="neither an IP address nor a DNS name"):
        make_certs(tmp_path, ["agent-5=bad/host"])
