"""`swarm-node` as real OS processes on 127.0.0.1 (no Ray in the nodes), with a simulated swarm.

The nodes read recorded sensor streams (one pass of the drone patrol physics records every
device's drone, in `recordings`), so the processes spend their time learning and gossiping.
A test stops its nodes (SIGTERM) as soon as what it checks has happened: the readings and
lingers below are upper bounds on how long a node stays up, not waits.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from swarm.scenario import load_scenario

#: The device swarm: 4 simulated drones (2 shards) and 3 devices (agents 4, 5, 6) on a ring of
#: 7, patrolling by zone: drone i patrols zone i % 4, so device 4 flies the forest (fires),
#: device 5 the city (garbage overflow) and device 6 the river.
DEVICE_SCENARIO: dict[str, Any] = {
    "name": "devices",
    "seed": 5,
    # The simulated run of the acceptance test: 2 metrics rows, 16 gossip rounds, deltas both
    # ways with the devices (which linger for it). Its shards' start and ticks are that test's
    # critical path.
    "ticks": 80,
    "agents": {"count": 4, "per_shard": 2},
    "world": {
        "area_m": 80,
        "cruise_points_per_zone": 3,
        "physics_hz": 120,
        "feature_noise": 0.4,
        "label_fraction": 0.5,
    },
    "model": {"d_model": 32, "channels": 4, "layers": 2, "ffn_mult": 2, "slope_window": 4},
    "learning": {"lr": 0.003, "learn_every": 2, "batch": 16, "window": 8, "replay": 256},
    "gossip": {
        "graph": {"kind": "ring"},
        "interval": 5,
        "compression": {"kind": "topk_int8", "ratio": 0.1},
        # fast failure detection for the tests: detection bound 2(n-1)P + S(n), see below
        "membership": {"probe_interval_s": 0.5, "probe_timeout_s": 0.25, "suspicion_mult": 3},
    },
    "metrics": {"interval": 40, "probe_per_class": 20},
    "baseline": {"isolated": False},
    "ray": {"dashboard": False, "num_cpus": 2},
}
#: Recorded ticks per device: enough for the survivors of the kill -9 test to read on until the
#: killed node is back; the other tests read fewer (a node's `ticks`) or stop their nodes.
READINGS = 800
#: Readings each device reads in the acceptance test, at 0.04 s: 10 s, about as long as the
#: simulated run's start and 80 ticks take here. Device 5's fire recall came out at 0.85 with
#: 250 (0.9 with 500), its isolated twin's at 0.
DEVICE_READINGS = 250


def _free_port() -> int:
    """A port for a node its peers must know before it starts; another process may take it
    first, so a node nobody needs to know in advance listens on port 0 instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sensor streams of drones 4, 5 and 6 of the device scenario's world (7 drones)."""
    from swarm.scenario import Scenario
    from swarm.sensors import record_world

    out = tmp_path_factory.mktemp("recordings")
    sc = Scenario.model_validate(DEVICE_SCENARIO)
    record_world(
        sc.world, 7, sc.seed, [4, 5, 6], READINGS, out, window=sc.learning.window,
        probe_per_class=sc.metrics.probe_per_class,
    )  # fmt: skip
    return out


def _write_scenario(
    tmp: Path, *, count: int = 4, devices: dict[int, int] | None = None, **over: Any
) -> Path:
    data = json.loads(json.dumps(DEVICE_SCENARIO))
    data["agents"]["count"] = count
    host = over.pop("external_host", "127.0.0.1")
    data.update(over)
    if devices:
        data["external_peers"] = [
            {"agent": a, "address": f"{host}:{p}"} for a, p in sorted(devices.items())
        ]
        data["gossip"]["key_file"] = "swarm.key"
    (tmp / "swarm.key").write_bytes(b"k" * 40)
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _recorded(recordings: Path, agent: int, *, blind_to_fire: bool = False) -> dict[str, Any]:
    """A node's sensor: the recorded stream of drone `agent`, its fires hidden if blind."""
    return {
        "kind": "file",
        "path": str(recordings / f"agent-{agent}.jsonl"),
        "hide_kinds": ["fire"] if blind_to_fire else [],
    }


def _write_node(tmp: Path, agent: int, port: int, **cfg: Any) -> Path:
    data = {
        "scenario": "scenario.yaml",
        "agent": agent,
        "listen": f"127.0.0.1:{port}",
        "key_file": "swarm.key",
        "checkpoint_every_s": 1.0,
        "status_every_s": 0.2,
        **cfg,
    }
    path = tmp / f"node-{agent}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


#: A node process on standby: it imports what a node runs on (the interpreter's start and
#: torch's import take seconds), then waits for a line on stdin before it runs `swarm-node`.
STANDBY = (
    "import sys, torch, agents.learner, protocols.gossip, protocols.membership_net, swarm.node\n"
    "sys.stdin.readline()\n"
    "swarm.node.main(['--config', sys.argv[1]])\n"
)


class NodeProc:
    """One `swarm-node` OS process; its stdout is JSON lines (start, then final status).
    On `standby`, the node starts when `go()` is called."""

    def __init__(self, config: Path, *, standby: bool = False):
        self.config = config
        command = (
            ["-c", STANDBY, str(config)]
            if standby
            else ["-m", "swarm.node", "--config", str(config)]
        )
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            stdin=subprocess.PIPE if standby else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def go(self) -> None:
        assert self.proc.stdin is not None, "not on standby"
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def first(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.lines:
            if self.proc.poll() is not None and not self.lines:
                raise AssertionError(f"node exited {self.proc.returncode}: {self._stderr()}")
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        return json.loads(self.lines[0])

    def _stderr(self) -> str:
        if self.proc.poll() is not None and self.proc.stderr is not None and not self.err:
            self.err = self.proc.stderr.read()
        return self.err[-3000:]

    def status(self) -> dict[str, Any] | None:
        data = yaml.safe_load(self.config.read_text())
        path = self.config.parent / ".swarm-node" / f"agent-{data['agent']}" / "status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def wait(self, timeout: float = 120) -> dict[str, Any]:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.proc.returncode == 0, self._stderr()
        return json.loads(self.lines[-1])

    def exit(self, timeout: float = 120) -> tuple[int, str]:
        """For a node that stops on its own with an error: its exit status and whole stderr."""
        self.proc.wait(timeout=timeout)
        self._stderr()
        return self.proc.returncode, self.err

    def terminate(self) -> None:
        """SIGTERM: the node finishes its reading, gives its deltas a short grace, and saves."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> dict[str, Any]:
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _stop_all(nodes: list[NodeProc]) -> list[dict[str, Any]]:
    """SIGTERM every node, then wait for each: their shutdown graces (up to 2 s) overlap."""
    for node in nodes:
        node.terminate()
    return [node.wait(60) for node in nodes]


def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.slow
def test_node_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "swarm.node", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "--config" in proc.stdout and "--status" in proc.stdout


def test_node_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    from swarm.node import Node, NodeError, load_node_config
    from swarm.scenario import ScenarioError

    _write_scenario(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: scenario.yaml\nagent: 1\nlisten: 127.0.0.1:0\npeer: [x]\n")
    with pytest.raises(
        ScenarioError, match=r"bad.yaml:4: peer: unknown key \(did you mean 'peers'"
    ):
        load_node_config(bad)

    # Off loopback, plaintext and the development key are refused unless `insecure: true`.
    cfg = load_node_config(
        _write_node(tmp_path, 1, 0, listen="0.0.0.0:0", advertise="10.0.0.7:50051", key_file=None)
    )
    with pytest.raises(NodeError, match="not a loopback address.*mtls.*key_file.*insecure"):
        Node(cfg, tmp_path)
    cfg = load_node_config(_write_node(tmp_path, 1, 0, peers=["10.1.2.3:50051"]))
    with pytest.raises(NodeError, match="10.1.2.3:50051 is not a loopback address"):
        Node(cfg, tmp_path)
    (tmp_path / "short.key").write_bytes(b"k" * 8)
    cfg = load_node_config(_write_node(tmp_path, 1, 0, key_file="short.key"))
    with pytest.raises(NodeError, match="8 bytes; the key needs 32"):
        Node(cfg, tmp_path)
    cfg = load_node_config(_write_node(tmp_path, 9, 0))
    with pytest.raises(NodeError, match="agents 0..3"):
        Node(cfg, tmp_path)
    cfg = load_node_config(_write_node(tmp_path, 1, 0, listen="0.0.0.0:0", insecure=True))
    with pytest.raises(NodeError, match="every interface: set advertise"):
        Node(cfg, tmp_path)
    # a simulated run whose devices are on a network must use mutual TLS with a shared CA
    with pytest.raises(ScenarioError, match="10.0.0.9:50051 is on a network.*mtls"):
        load_scenario(_write_scenario(tmp_path, devices={4: 50051}, external_host="10.0.0.9"))


def test_a_node_start_removes_what_a_crash_left_half_written(tmp_path: Path, monkeypatch) -> None:
    # issue 18: a full disk left a 0-byte epoch.tmp and a partial .checkpoint.npz.tmp behind
    from swarm.node import Node, NodeError, load_node_config

    _write_scenario(tmp_path)
    (tmp_path / "swarm.key").write_bytes(b"k" * 32)
    cfg = load_node_config(_write_node(tmp_path, 1, 0, state_dir="state"))
    state = tmp_path / "state"
    state.mkdir()
    (state / "epoch.tmp").write_bytes(b"")
    (state / ".checkpoint.npz.tmp").write_bytes(b"PK\x03\x04 half")
    # a disk that is full when the epoch is written: one clear error, no temp file left
    real_write = Path.write_text

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name == "epoch.tmp":
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(NodeError, match="cannot write .*epoch.json: No space left on device"):
        Node(cfg, tmp_path)
    assert sorted(p.name for p in state.iterdir()) == []


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"listen": "127.0.0.1:99999"},
            r"listen: '127.0.0.1:99999': the port must be a number from 0",
        ),
        ({"advertise": "not an address"}, r"advertise: 'not an address' is not HOST:PORT"),
        ({"advertise": "127.0.0.1:0"}, r"advertise: .* from 1 to 65535"),
        ({"peers": ["127.0.0.1:1", "a b:5"]}, r"peers\[1\]: 'a b:5': the host 'a b'"),
        ({"coordinator": "[::1:5"}, r"coordinator: .* is not a bracketed IPv6 address"),
        ({"tick_s": float("inf")}, r"tick_s: Input should be a finite number"),
        ({"linger_s": 1e9}, r"linger_s: Input should be less than or equal to 3600"),
    ],
)
def test_node_config_refuses_addresses_and_times_no_node_can_use(
    tmp_path: Path, cfg: dict[str, Any], message: str
) -> None:
    # issue 18: listen 127.0.0.1:99999 bound some other port, advertise "not an address" was
    # taken, tick_s .inf crashed at the first reading and linger_s .inf never ended
    from swarm.node import load_node_config
    from swarm.scenario import ScenarioError

    _write_scenario(tmp_path)
    with pytest.raises(ScenarioError, match=message):
        load_node_config(_write_node(tmp_path, 1, 0, **cfg))
    load_node_config(_write_node(tmp_path, 1, 0, listen="[::1]:0", peers=["localhost:50051"]))


# -- acceptance 1: devices and a simulated swarm ------------------------------------------------


@pytest.mark.slow
def test_devices_and_simulated_swarm_share_knowledge(
    tmp_path: Path, recordings: Path, ray_local: Any
) -> None:
    """Three device processes and a simulated swarm of 4 in one ring gossip together; device 5
    never sees a fire (its sensor hides them) and still learns to recognise fires."""
    from swarm.runner import Runner, new_run_dir

    ports = {a: _free_port() for a in (4, 5, 6)}
    scenario = _write_scenario(tmp_path, devices=ports)
    configs = {
        a: _write_node(
            tmp_path,
            a,
            ports[a],
            ticks=DEVICE_READINGS,
            tick_s=0.04,
            linger_s=120,
            shadow=(a == 5),
            sensor=_recorded(recordings, a, blind_to_fire=(a == 5)),
        )  # fmt: skip
        for a in ports
    }
    sc = load_scenario(scenario)
    started = threading.Event()

    def on_info(text: str) -> None:
        if text.startswith("external peers"):
            started.set()

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["run"] = Runner(sc, new_run_dir(tmp_path / "runs", sc), on_info=on_info).run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc
            started.set()

    runner = threading.Thread(target=run)
    runner.start()
    assert started.wait(120)
    nodes = {a: NodeProc(c) for a, c in configs.items()}
    try:
        for node in nodes.values():
            node.first()
        runner.join(timeout=600)
        assert "error" not in result, result.get("error")
        # the run is over; the devices finish their readings, then stop on SIGTERM
        _until(lambda: all((n.status() or {}).get("step") == DEVICE_READINGS
                           for n in nodes.values()),
               180, "every device to read its readings")  # fmt: skip
        final = dict(zip(nodes, _stop_all(list(nodes.values())), strict=True))
    finally:
        for node in nodes.values():
            node.kill()
    summary = result["run"].summary
    devices: dict[int, Any] = {}
    for a, st in final.items():
        refused = {k: v for k, v in st.items() if k.startswith("rejected_") and v}
        assert st["step"] == DEVICE_READINGS and st["deltas_rejected"] == 0, (
            a,
            st["step"],
            refused,
            nodes[a]._stderr()[-1500:],
        )
        devices[a] = {p["node"]: p for p in st["peers"] if p["node"]}
    # Devices 4 and 6 neighbour the simulated agents 3 and 0: the shards introduced
    # themselves and deltas went both ways.
    assert devices[4]["shard-1"]["agents"] == [3] and devices[4]["shard-1"]["delivered"] > 0
    assert devices[6]["shard-0"]["agents"] == [0] and devices[6]["shard-0"]["delivered"] > 0
    assert final[4]["deltas_accepted"] > final[4]["rounds"]  # from agent 5 and from agent 3
    assert summary["agents"] == 4
    # Device 5 never saw a fire: no fire label reached it, yet its model recognises fires,
    # while its isolated twin (same readings, no sharing) does not.
    five = final[5]
    assert five["labels_seen"]["fire"] == 0 and five["labels_seen"]["garbage_overflow"] > 0
    assert five["probe_recall"]["fire"] >= 0.5, five
    assert five["probe_recall_isolated"]["fire"] <= 0.2, five
    assert five["probe_recall"]["fire"] - five["probe_recall_isolated"]["fire"] >= 0.4
    # and no device's model was wrecked on the way (0.7 measured; a node that repeated its
    # consensus step while waiting for its peers' last deltas once fell to 0.2)
    assert all(st["probe_acc"] >= 0.5 for st in final.values()), final
    print("figures:", json.dumps({a: {k: final[a][k] for k in (
        "probe_acc", "probe_acc_isolated", "probe_recall", "probe_recall_isolated",
        "labels_seen", "deltas_accepted") if k in final[a]} for a in final}))  # fmt: skip


# -- acceptance 2: kill -9, failure detection, resume ---------------------------------------


@pytest.mark.slow
def test_kill_9_is_detected_and_the_node_resumes_from_its_checkpoint(
    tmp_path: Path, recordings: Path
) -> None:
    from protocols.config import MembershipConfig
    from protocols.membership import detection_bound_s
    from swarm import checkpoint

    ports = [_free_port() for _ in range(3)]
    _write_scenario(tmp_path, count=3)
    peers = [f"127.0.0.1:{p}" for p in ports]
    # The survivors must still be reading when node 2 restarts and rejoins (once they have read
    # everything they leave, node 2 being dead): the recording's 800 readings at 0.02 s leave
    # them about 13 s after the kill, for its detection (3.5 s at most) and a restart on
    # standby (0.3 s measured). The test stops them after the resync.
    configs = [
        _write_node(
            tmp_path,
            i,
            ports[i],
            peers=peers,
            tick_s=0.02,
            linger_s=60,
            sensor=_recorded(recordings, 4 + i),
        )  # fmt: skip
        for i in range(3)
    ]
    bound = detection_bound_s(MembershipConfig(**DEVICE_SCENARIO["gossip"]["membership"]), 3)
    nodes = [NodeProc(c) for c in configs]
    restarted: NodeProc | None = None
    try:
        fresh_acc = nodes[2].first()["probe_acc"]
        for n in nodes:
            n.first()
        # node 2's next process, ready to run the node as soon as the test kills this one
        restarted = NodeProc(configs[2], standby=True)

        def ready() -> bool:
            st = [n.status() or {} for n in nodes]
            if not all(st):
                return False
            alive = all(
                sorted(m for m, v in s.get("members", {}).items() if v["state"] == "alive")
                == sorted(f"agent-{j}" for j in range(3) if f"agent-{j}" != s["node"])
                for s in st
            )
            return alive and ((st[2].get("checkpoint") or {}).get("step") or 0) >= 100

        _until(ready, 120, "a full membership and a checkpoint of node 2 at step >= 100")
        nodes[2].proc.kill()  # SIGKILL: no chance to save anything
        killed_at = time.time()
        nodes[2].proc.wait(timeout=10)
        _, meta = checkpoint.load(tmp_path / ".swarm-node" / "agent-2" / "checkpoint.npz")

        def dead_at(n: NodeProc) -> float | None:
            member = ((n.status() or {}).get("members") or {}).get("agent-2") or {}
            return member.get("dead_at_unix") if member.get("state") == "dead" else None

        detected = [_until(lambda n=n: dead_at(n), bound + 10, "agent-2 declared dead")
                    for n in nodes[:2]]  # fmt: skip
        # SWIM's bound (protocols/membership.py): 2 (n - 1) P + S(n); 1 s more for scheduling
        # on a loaded machine and the status file's refresh.
        for t in detected:
            assert t - killed_at <= bound + 1.0, (t - killed_at, bound)
        print(f"figures: declared dead after {[round(t - killed_at, 2) for t in detected]} s, "
              f"bound {bound:.2f} s")  # fmt: skip
        # the others go on: still reading and gossiping with each other
        steps = [(n.status() or {})["step"] for n in nodes[:2]]
        _until(lambda: all((n.status() or {})["step"] > s
                           for n, s in zip(nodes[:2], steps, strict=True)),
               30, "the survivors to go on")  # fmt: skip

        restarted.go()
        start = restarted.first()
        first_epoch = nodes[2].first()["epoch"]
        assert start["epoch"] > first_epoch == meta["epoch"]  # a new incarnation
        assert start["resumed_from"]["checkpoint_step"] == meta["step"] >= 100
        # right after the restart: exactly the checkpoint's accuracy, not a fresh model's
        assert start["probe_acc"] == start["resumed_from"]["checkpoint_probe_acc"]
        assert start["probe_acc"] == meta["probe_acc"]
        assert meta["probe_acc"] >= fresh_acc + 0.1, (meta["probe_acc"], fresh_acc)
        print(f"figures: fresh {fresh_acc}, checkpoint (step {meta['step']}) "
              f"{meta['probe_acc']}, right after restart {start['probe_acc']}")  # fmt: skip
        # it rejoins: the others see it alive again and deltas reach it after a resync
        _until(lambda: all(((n.status() or {}).get("members") or {}).get("agent-2", {})
                           .get("state") == "alive" for n in nodes[:2]),
               bound + 20, "agent-2 alive again")  # fmt: skip

        def resynced() -> bool:
            # the survivors sent it snapshots (their copies of it had moved on), then deltas
            links = [next((p for p in (n.status() or {}).get("peers", [])
                           if p["node"] == "agent-2"), {}) for n in nodes[:2]]  # fmt: skip
            mine = restarted.status() or {}
            # >= 2: at least a snapshot from each (on a loaded machine the survivors may have
            # read all their readings by now and only linger, sending nothing new)
            return (
                mine.get("epoch") == start["epoch"]
                and (mine.get("deltas_accepted") or 0) >= 2
                and all((link.get("resyncs") or 0) >= 1 for link in links)
            )

        _until(resynced, 60, "deltas to flow again between agent-2 and the others")
        final = _stop_all([restarted, *nodes[:2]])
    finally:
        for n in [*nodes, *([restarted] if restarted else [])]:
            n.kill()
    # at most the stale deltas that triggered a resync (one per peer) were refused
    assert all(st["deltas_rejected"] <= 2 for st in final), final


# -- acceptance 3: TLS --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_node_without_a_valid_certificate_cannot_join(tmp_path: Path, recordings: Path) -> None:
    from swarm.certs import make_certs

    swarm_ca, rogue_ca = tmp_path / "certs", tmp_path / "rogue"
    make_certs(swarm_ca, ["agent-0", "agent-1"])
    make_certs(rogue_ca, ["agent-2"])  # a certificate of its own CA: locally consistent
    ports = [_free_port() for _ in range(2)]
    _write_scenario(tmp_path, count=3)
    peers = [f"127.0.0.1:{p}" for p in ports]
    sensor = _recorded(recordings, 4)
    # All four start at once. The certified nodes serve until the test stops them: 800
    # readings at 0.02 s, then a linger that runs its course (agent 2, their neighbour, never
    # joins): over a minute for the other two to try.
    good = [
        NodeProc(
            _write_node(
                tmp_path,
                i,
                ports[i],
                peers=peers,
                tls={"mode": "mtls", "cert_dir": str(swarm_ca)},
                sensor=sensor,
                linger_s=60,
                tick_s=0.02,
            )
        )  # fmt: skip
        for i in range(2)
    ]
    # The rogue retries while the certified nodes are not listening yet (a refused connection
    # is no handshake failure), then fails their handshakes. Paced, so that it is still
    # reading by then (a node that has read its whole recording lingers instead of stopping).
    rogue = NodeProc(_write_node(
        tmp_path, 2, 0, peers=peers, tick_s=0.02, sensor=sensor,
        tls={"mode": "mtls", "cert_dir": str(rogue_ca)},
    ))  # fmt: skip
    # a node whose certificate is missing, in a directory of its own (it runs beside the rogue,
    # which is agent 2 too)
    (tmp_path / "missing").mkdir()
    missing = NodeProc(_write_node(
        tmp_path / "missing", 2, 0, scenario="../scenario.yaml", key_file="../swarm.key",
        sensor=sensor, tls={"mode": "mtls", "cert_dir": str(swarm_ca)},
    ))  # fmt: skip
    try:
        # the two certified nodes gossip over mutual TLS
        _until(lambda: all(((n.status() or {}).get("deltas_accepted") or 0) > 0 for n in good),
               120, "deltas accepted by both certified nodes")  # fmt: skip
        # the rogue is refused by them (its status file says why it stopped); they can stop
        # while it closes
        _until(lambda: (rogue.status() or {}).get("error") or rogue.proc.poll() is not None,
               120, "the rogue to be refused")  # fmt: skip
        final = _stop_all(good)
        rogue_code, rogue_err = rogue.exit(120)
        assert rogue_code == 3, rogue_err[-2000:]
        assert "cannot join the swarm" in rogue_err
        assert "TLS handshake" in rogue_err and "certificate" in rogue_err
        # the other says which file is missing and how to make it
        missing_code, missing_err = missing.exit(120)
        assert missing_code == 2, missing_err[-2000:]
        assert "agent-2.pem is missing" in missing_err and "swarm certs" in missing_err
    finally:
        for n in (*good, rogue, missing):
            n.kill()
    refusals = [[p["last_refusal"] for p in st["peers"]] for st in final]
    assert all(st["deltas_accepted"] > 0 and st["deltas_rejected"] == 0 for st in final), refusals


# -- SIGTERM, status view, clock skew, stdin ------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_status_view_and_clock_skew(tmp_path: Path) -> None:
    """The built-in simulated sensor; `--status` while running; a peer whose clock is an hour
    off is refused with a message saying so; SIGTERM finishes the reading and saves."""
    from protocols import wire
    from protocols.errors import ClockSkew
    from protocols.transport import Peers, TrafficCounters
    from swarm import checkpoint
    from swarm.proto.v1 import gossip_pb2

    _write_scenario(tmp_path, count=2)
    # linger_s 0: a node alone has no deltas in flight, the shutdown grace would only wait
    config = _write_node(
        tmp_path, 0, 0, tick_s=0.02, checkpoint_every_s=3600, ticks=5000, linger_s=0
    )
    node = NodeProc(config)
    try:
        address = node.first()["listening"]
        _until(lambda: ((node.status() or {}).get("step") or 0) >= 20, 60, "20 readings")
        view = subprocess.run(
            [sys.executable, "-m", "swarm.node", "--config", str(config), "--status"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert view.returncode == 0, view.stderr
        assert "health: SERVING" in view.stdout and "local accuracy: probe" in view.stdout

        intro = gossip_pb2.Introduction(
            node="agent-1", address="127.0.0.1:1", agents=[1],
            unix_ms=int((time.time() - 3600) * 1000), membership=False,
        )  # fmt: skip
        wire.sign_introduction(intro, b"k" * 40)
        peers = Peers(2**20, TrafficCounters())
        with pytest.raises(ClockSkew) as info:  # told apart from Stale by the Rejection
            peers.introduce(address, intro, 10.0)
        peers.close()
        assert info.value.status == "FAILED_PRECONDITION"
        assert "clock skew" in info.value.reason and "-3600" in info.value.reason

        final = node.stop()
    finally:
        node.kill()
    _, meta = checkpoint.load(tmp_path / ".swarm-node" / "agent-0" / "checkpoint.npz")
    assert meta["step"] == final["step"] > 20  # saved on SIGTERM, after the last reading
    assert final["rejected_clock_skew"] == 1


@pytest.mark.slow
def test_devices_through_a_coordinator(tmp_path: Path, recordings: Path) -> None:
    """`swarm coordinator` and three nodes with `coordinator:`: FedAvg rounds over gRPC; the
    node that never sees a fire recognises fires through the global model."""
    gossip = dict(DEVICE_SCENARIO["gossip"], topology="coordinator", key_file="swarm.key",
                  coordinator={"round_timeout_s": 2.0, "min_completion": 0.6})  # fmt: skip
    scenario = _write_scenario(tmp_path, count=3, gossip=gossip)
    # Port 0 for the service and the nodes (nobody dials the nodes): a port picked free here
    # may be taken by another process before the service binds it.
    service = subprocess.Popen(
        [sys.executable, "-m", "swarm.cli", "coordinator", str(scenario),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # the nodes import what they run on while the service starts; they need its address
    nodes = [NodeProc(tmp_path / f"node-{i}.yaml", standby=True) for i in range(3)]
    try:
        assert service.stdout is not None
        hello = json.loads(service.stdout.readline())
        assert hello["agents"] == 3
        for i, node in enumerate(nodes):
            _write_node(
                tmp_path,
                i,
                0,
                coordinator=hello["coordinator"],
                tick_s=0.02,
                shadow=(i == 1),
                sensor=_recorded(recordings, 4 + i, blind_to_fire=(i == 1)),
            )  # writes node.config
            node.go()

        # 400 readings and 13 rounds (10 asserted) on every node, then all stop together; a
        # round takes ~0.6 s, 400 readings at 0.02 s gave 13 to 15 (node 1's fire recall 0.85
        # by then). Left to read on after the others had left, node 1 (no fires) trained on
        # without their knowledge and forgot fires (recall 0.35 once, loaded).
        def enough(st: dict[str, Any]) -> bool:
            fed = st.get("coordinator") or {}
            return (st.get("step") or 0) >= 400 and (fed.get("submitted") or 0) >= 13

        _until(lambda: all(enough(n.status() or {}) for n in nodes), 300,
               "400 readings and 13 rounds on every node")  # fmt: skip
        final = _stop_all(nodes)
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    finally:
        for n in nodes:
            n.kill()
        service.kill()
    assert service.returncode == 0, err[-2000:]
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["rounds"] >= 10
    # a node late for a round that closed on timeout is refused as stale and catches up:
    # every refusal at the service is one such stale submission, nothing else
    assert figures["deltas_rejected"] == figures.get("rejected_stale", 0)
    assert figures["deltas_rejected"] == sum(st["coordinator"]["stale"] for st in final)
    for st in final:
        fed = st["coordinator"]
        assert fed["submitted"] >= 10 and fed["aggregates_applied"] >= fed["submitted"] - 1
        # at most the last round timed out: the other nodes had left before its quorum
        assert fed["last_error"] in ("", "DEADLINE_EXCEEDED: Deadline Exceeded"), fed
    assert sum(st["coordinator"]["submitted"] for st in final) == figures["deltas_accepted"]
    one = final[1]
    assert one["labels_seen"]["fire"] == 0
    assert one["probe_recall"]["fire"] - one["probe_recall_isolated"]["fire"] >= 0.4, one
    print(
        "figures:",
        json.dumps(
            {
                "rounds": figures["rounds"],
                "probe_acc": [st["probe_acc"] for st in final],
                "fire": one["probe_recall"]["fire"],
                "fire_isolated": one["probe_recall_isolated"]["fire"],
            }
        ),
    )


@pytest.mark.slow
def test_a_node_with_another_key_is_told_so(tmp_path: Path, recordings: Path) -> None:
    _write_scenario(tmp_path, count=2)
    (tmp_path / "other.key").write_bytes(b"o" * 40)
    sensor = _recorded(recordings, 4)
    good = NodeProc(_write_node(tmp_path, 0, 0, sensor=sensor, tick_s=0.05, linger_s=5))
    try:
        address = good.first()["listening"]
        other = subprocess.run(
            [sys.executable, "-m", "swarm.node", "--config", str(_write_node(
                tmp_path, 1, 0, peers=[address], key_file="other.key",
                sensor=sensor, tick_s=0.02,  # still reading when the refusal comes
            ))],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        good.kill()
    assert other.returncode == 3, other.stderr[-2000:]
    assert "sign with different keys" in other.stderr and "key_file" in other.stderr
    status = json.loads((tmp_path / ".swarm-node" / "agent-1" / "status.json").read_text())
    assert "different keys" in status["error"]  # the status file says why it stopped


@pytest.mark.slow
def test_two_nodes_running_one_agent_both_say_so(tmp_path: Path, recordings: Path) -> None:
    # Prepare: agent 0, and agent 1 run twice (a copied config), each copy in its own directory
    dirs = {name: tmp_path / name for name in ("a", "b", "c")}
    for d in dirs.values():
        d.mkdir()
        _write_scenario(d, count=2)
    sensor = _recorded(recordings, 4)
    common = {"sensor": sensor, "tick_s": 0.05, "linger_s": 30}
    a = NodeProc(_write_node(dirs["a"], 0, 0, **common))
    nodes = [a]
    try:
        a_address = a.first()["listening"]
        b = NodeProc(_write_node(dirs["b"], 1, 0, peers=[a_address], **common))
        nodes.append(b)
        b_address = b.first()["listening"]
        # Execute: the second copy joins both
        c = NodeProc(_write_node(dirs["c"], 1, 0, peers=[a_address, b_address], **common))
        nodes.append(c)
        c_address = c.first()["listening"]

        # Assert: both copies report the other in their status, and warn on stderr
        def reported(node: NodeProc, other: str) -> bool:
            status = node.status() or {}
            return other in status.get("duplicate_agents", {}).get("agent-1", [])

        _until(lambda: reported(b, c_address), 30, "b reports c running agent-1")
        _until(lambda: reported(c, b_address), 30, "c reports b running agent-1")
        assert "this node" in b.status()["duplicate_agents"]["agent-1"]  # type: ignore[index]
        assert not (a.status() or {}).get("duplicate_agents", {}).get("agent-0")
    finally:
        for node in nodes:
            node.kill()
    for node in (b, c):
        _, err = node.exit()
        assert "agent-1 is run by more than one node" in err


@pytest.mark.slow
def test_a_node_never_imports_ray(tmp_path: Path, recordings: Path) -> None:
    _write_scenario(tmp_path, count=2)
    config = _write_node(tmp_path, 0, 0, linger_s=0, sensor=_recorded(recordings, 4))
    code = (
        "import sys; from pathlib import Path; from swarm.node import Node, load_node_config\n"
        f"node = Node(load_node_config({str(config)!r}), Path({str(tmp_path)!r}))\n"
        "status = node.run(30); node.close()\n"
        "print(status['step'], sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["30", "[]"]


@pytest.mark.slow
def test_stdin_sensor_skips_bad_lines(tmp_path: Path, recordings: Path) -> None:
    lines = (recordings / "agent-5.jsonl").read_text().splitlines()[:121]
    lines.insert(50, '{"t": 100000, "obs": [1, 2]}')  # a glitch: wrong length
    lines.insert(80, "not json")
    _write_scenario(tmp_path, count=2)
    config = _write_node(tmp_path, 0, 0, sensor={"kind": "stdin"}, linger_s=0)
    proc = subprocess.run(
        [sys.executable, "-m", "swarm.node", "--config", str(config)],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads(proc.stdout.splitlines()[-1])
    assert final["step"] == 120 and final["sensor"]["bad_lines"] == 2
    assert "<stdin>:51: 'obs' must be a list of" in proc.stderr
    assert "<stdin>:81: not JSON" in proc.stderr
    assert final["labels_seen"]["garbage_overflow"] > 0
