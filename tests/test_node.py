"""`swarm-node` as real OS processes on 127.0.0.1, gossiping with each other (no Ray)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from swarm.scenario import load_scenario

TINY = Path(__file__).parent / "data" / "tiny.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "swarm.node", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "--peer" in proc.stdout and "--agent" in proc.stdout


def test_two_nodes_exchange_deltas(tmp_path: Path) -> None:
    data = load_scenario(TINY).model_dump(mode="json")
    data["agents"] = {"count": 2, "per_shard": 1}
    data["gossip"]["compression"] = {"kind": "topk_int8", "ratio": 0.2}
    scenario = tmp_path / "pair.yaml"
    scenario.write_text(yaml.safe_dump(data))
    key = tmp_path / "swarm.key"
    key.write_bytes(b"k" * 32)
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swarm.node",
                "--scenario",
                str(scenario),
                "--agent",
                str(i),
                "--listen",
                f"127.0.0.1:{ports[i]}",
                "--peer",
                f"{1 - i}=127.0.0.1:{ports[1 - i]}",
                "--key-file",
                str(key),
                "--ticks",
                "40",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for status in results:
        # 40 ticks / interval 4 = 10 rounds; each node's 10 deltas reached the other in order
        # (late ones from an outbox if the peer was still starting), none refused.
        assert status["rounds"] == 10
        assert status["deltas_accepted"] == 10
        assert status["deltas_rejected"] == 0
        assert status["wire_bytes_received"] > 0
