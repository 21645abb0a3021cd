"""The Runner on an existing multi-node Ray cluster (issue 8): `ray.cluster_utils.Cluster`
starts two Ray nodes on this machine, both on loopback; the run joins it by address, its
placement group spreads the shards over both nodes, and the shards gossip over gRPC between
the nodes at the addresses they advertise."""

from __future__ import annotations

from pathlib import Path

from swarm.runner import Runner
from swarm.scenario import Scenario, load_scenario

TINY = Path(__file__).parent / "data" / "tiny.yaml"
LOOPBACK = "127.0.0.2"


def test_shards_on_two_nodes_exchange_deltas(tmp_path: Path, monkeypatch, no_shared_ray) -> None:
    import ray
    from ray.cluster_utils import Cluster

    # Nodes started here take no token authentication; say so, or the Runner (seeing a token
    # in ~/.ray from an earlier `ray start`) would join with one (runner._token_auth_for_clients)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")

    # 127.0.0.2, loopback too: ray.init rewrites an address of 127.0.0.1 to this machine's
    # network address (services.resolve_ip_for_localhost), where nodes bound to loopback
    # do not listen.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK},
    )
    try:
        cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
        cluster.wait_for_nodes()
        data = load_scenario(TINY).model_dump(mode="json")
        data["agents"] = {"count": 4, "per_shard": "auto"}  # 2 CPUs: 2 shards
        sc = Scenario.model_validate(data)
        infos: list[str] = []
        result = Runner(sc, tmp_path, address=cluster.address, on_info=infos.append).run()
        node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        ray.shutdown()
        cluster.shutdown()

    placement = result.summary["placement"]
    assert len(node_ids) == 2
    assert [p["shard"] for p in placement] == [0, 1]
    # one shard on each node ...
    assert {p["node"] for p in placement} == node_ids
    assert any("shards on 2 Ray nodes" in line for line in infos)
    # ... each serving at its node's address, and each took in the other's deltas
    assert all(p["endpoint"].startswith(f"{LOOPBACK}:") for p in placement)
    assert all(p["deltas_accepted"] > 0 and p["messages_delivered"] > 0 for p in placement)
    assert result.summary["shards"] == 2
