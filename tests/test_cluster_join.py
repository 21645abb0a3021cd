"""`swarm run --address` joins a cluster made by `ray start --head`, as the README shows (issue
18): Ray >= 2.59 starts such a cluster with token authentication, and a client sends its token
only when RAY_AUTH_MODE=token is set before Ray loads its config. The cluster gets its own port
and temp dir; the test stops it by killing the processes it started (found by that temp dir),
never with a machine-wide `ray stop`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_under(marker: str) -> list[int]:
    """Pids whose command line names `marker` (the cluster's temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(entry.name))
    return pids


def _stop(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_under(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _processes_under(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.skipif(
    not (Path.home() / ".ray" / "auth_token").exists() and "RAY_AUTH_TOKEN" not in os.environ,
    reason="no Ray auth token on this machine: `ray start --head` would run without one",
)
def test_swarm_run_joins_a_ray_start_cluster_with_its_token(tmp_path: Path) -> None:
    # Prepare: a head node of our own (short temp dir: Ray's socket paths are length-limited)
    temp = Path(f"/tmp/rj{os.getpid()}")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    try:
        subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}",
             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
             "--node-ip-address=127.0.0.1"],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        # Execute: the CLI in a fresh process, as a user types it (no RAY_AUTH_MODE set)
        out = subprocess.run(
            [str(BIN / "swarm"), "run", str(TINY), "--address", f"127.0.0.1:{port}",
             "--runs", str(tmp_path), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        _stop(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
    # Assert: it ran on that cluster to the end
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["agents"] == 4 and summary["shards"] == 2
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["tick"] == 40  # the scenario's 40 ticks, to the end
    assert not _processes_under(str(temp))


def test_the_dashboard_hint_says_where_the_token_is(monkeypatch, tmp_path: Path) -> None:
    from swarm.runner import dashboard_token_hint

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dashboard_token_hint() == f"it asks for a token: `cat {tmp_path}/.ray/auth_token`"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/etc/ray/token")
    assert "`cat /etc/ray/token`" in dashboard_token_hint()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x")
    assert "RAY_AUTH_TOKEN" in dashboard_token_hint()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert dashboard_token_hint().startswith("no token")
