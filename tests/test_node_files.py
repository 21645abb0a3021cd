"""Files of the wrong kind in a node config (issue 18): a `key_file` or a recorded sensor that
is /dev/zero or a FIFO filled a node's memory or hung its start. They are refused when the
config is loaded, with one line naming the config's file and line, the key and the file, exit
status 2, before anything is read from them; a regular file and a live stdin sensor still load.

A case that hung before is run in its own process under a timeout, so it fails, not hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.scenario import MAX_KEY_BYTES, ScenarioError

SCENARIO = "name: files\nagents: {count: 3, per_shard: 3}\ngossip: {graph: {kind: ring}}\n"
HEADER = '{"format": "yan-swarm-sensor/1", "input": {"vector_dim": 4}, "classes": ["none", "x"]}'
NOT_REGULAR = "is not a regular file (a device, FIFO or socket)"


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """A node's directory: its scenario, a key, a recording, a FIFO, a sparse key file past the
    bound and a certificate directory whose ca.pem leads to /dev/zero."""
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    (tmp_path / "swarm.key").write_bytes(os.urandom(32))
    (tmp_path / "rec.jsonl").write_text(HEADER + '\n{"t": 0, "obs": [0, 0, 0, 0]}\n')
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "big.key").open("wb") as f:
        f.truncate(MAX_KEY_BYTES + 1)  # sparse: no disk used
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").symlink_to("/dev/zero")
    return tmp_path


def _config(base: Path, lines: str) -> Path:
    """node.yaml: `lines` from line 4 on."""
    path = base / "node.yaml"
    path.write_text(f"scenario: scenario.yaml\nagent: 1\nlinger_s: 0\n{lines}")
    return path


@pytest.mark.parametrize(
    "lines, line, key, file, problem",
    [
        ("key_file: /dev/zero\n", 4, "key_file", "/dev/zero", NOT_REGULAR),
        ("key_file: fifo\n", 4, "key_file", "fifo", NOT_REGULAR),
        ("key_file: big.key\n", 4, "key_file", "big.key", "bytes, more than the 65,536 allowed"),
        ("key_file: certs\n", 4, "key_file", "certs", "is a directory, not a file"),
        ("sensor:\n  kind: file\n  path: /dev/zero\n", 6, "sensor.path", "/dev/zero", NOT_REGULAR),
        ("sensor:\n  kind: file\n  path: fifo\n", 6, "sensor.path", "fifo", NOT_REGULAR),
        ("sensor: {kind: file, path: certs}\n", 4, "sensor.path", "certs", "is a directory"),
        ("sensor: {record_to: fifo}\n", 4, "sensor.record_to", "fifo", "is not a regular file"),
        (
            "tls: {mode: mtls, cert_dir: certs}\n",
            4,
            "tls.cert_dir",
            "certs/ca.pem",
            NOT_REGULAR,
        ),
    ],
)
def test_a_node_file_of_the_wrong_kind_is_refused_at_config_load(
    node_dir: Path, lines: str, line: int, key: str, file: str, problem: str
) -> None:
    # Prepare
    config = _config(node_dir, lines)
    from swarm.node_config import load_node_config

    # Execute
    with pytest.raises(ScenarioError) as info:
        load_node_config(config)

    # Assert: one problem, on the key's line, naming the file (relative ones resolved)
    head, found = str(info.value).splitlines()
    assert head == f"{config}: 1 problem in the node config:"
    where = file if file.startswith("/") else str(node_dir / file)
    assert found.strip().startswith(f"{config}:{line}: {key}: {where} "), found
    assert problem in found


def test_regular_files_and_a_live_stdin_sensor_still_load(node_dir: Path) -> None:
    from swarm.node_config import load_node_config

    recorded = load_node_config(
        _config(node_dir, "key_file: swarm.key\nsensor: {kind: file, path: rec.jsonl}\n")
    )
    live = load_node_config(_config(node_dir, "sensor: {kind: stdin}\n"))
    recording = load_node_config(_config(node_dir, "sensor: {record_to: new.jsonl}\n"))

    assert recorded.sensor.path == "rec.jsonl" and recorded.key_file == "swarm.key"
    assert live.sensor.kind == "stdin"
    assert recording.sensor.record_to == "new.jsonl"  # made when the node starts


def _swarm_node(config: Path) -> subprocess.CompletedProcess[str]:
    """`swarm-node --config config` in its own process; a start that hangs fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "swarm.node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "lines, line, key, file",
    [
        ("key_file: fifo\n", 4, "key_file", "fifo"),  # hung at the start before #18
        ("sensor: {kind: file, path: /dev/zero}\n", 4, "sensor.path", "/dev/zero"),  # read on
        ("sensor: {kind: file, path: fifo}\n", 4, "sensor.path", "fifo"),  # hung at open()
    ],
)
def test_swarm_node_refuses_a_fifo_or_device_with_exit_2_before_it_reads(
    node_dir: Path, lines: str, line: int, key: str, file: str
) -> None:
    # Prepare
    config = _config(node_dir, lines)
    where = file if file.startswith("/") else str(node_dir / file)

    # Execute
    proc = _swarm_node(config)

    # Assert
    assert proc.returncode == 2, proc.stderr
    assert f"{config}:{line}: {key}: {where} {NOT_REGULAR}" in proc.stderr.splitlines()[1]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("file", ["fifo", "/dev/zero"])
def test_a_run_reads_its_key_file_bounded(node_dir: Path, file: str) -> None:
    # `swarm run` checks gossip.key_file when it loads the scenario; the read itself refuses
    # a file that became a FIFO or device since (it blocked, or filled memory, before #18)
    path = file if file.startswith("/") else str(node_dir / file)
    code = (
        "import sys\nfrom swarm.runner import RunError, read_key\n"
        f"try:\n    read_key({path!r})\nexcept RunError as exc:\n    sys.exit(str(exc))\n"
    )

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1
    assert proc.stderr.strip() == f"gossip.key_file {path} {NOT_REGULAR}"
