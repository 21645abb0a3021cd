"""The single-file build of swarm-node (swarm/build_node.py, docs/node.md).

SLOW: builds a real ~240 MB file (torch included), about 1-2 minutes here, then unpacks it
(~0.9 GB) once. It runs the file with the *base* interpreter in isolated mode, so nothing of
the venv is visible: that is what proves the file needs only Python.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Run inside the built file through shiv's interpreter mode (SHIV_INTERPRETER=1, `-c CODE`):
#: everything below must come from the file's own site-packages.
PROBE = """\
import json, sys
import grpc, torch
import agents.population, protocols.wire, swarm.node
from agents.config import ModelConfig
from agents.yan.model import init_flat
flat = init_flat(ModelConfig(), 8, 4, seed=0)  # a tiny Yan model's weights
print(json.dumps({"torch": torch.__version__, "torch_file": torch.__file__,
                  "params": int(flat.numel()), "path": sys.path}))
"""


def _base_python() -> str:
    """The interpreter this venv was made from (it has none of the venv's packages)."""
    exe = getattr(sys, "_base_executable", None)
    if exe and exe != sys.executable and Path(exe).is_file():
        return exe
    v = sys.version_info
    for name in (f"python{v.major}.{v.minor}", "python3"):
        candidate = Path(sys.base_prefix, "bin", name)
        if candidate.is_file():
            return str(candidate)
    pytest.skip(f"no base interpreter found under {sys.base_prefix}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_single_file_build_runs_on_bare_python(tmp_path: Path) -> None:
    """SLOW (a real build): `python -m swarm.build_node --no-sim` makes one file that a bare
    Python runs, carrying its own torch."""
    base = _base_python()
    bare = subprocess.run([base, "-I", "-c", "import torch"], capture_output=True, timeout=60)
    if bare.returncode == 0:
        pytest.skip(
            f"the base interpreter {base} imports torch by itself: the test would prove "
            "nothing about the file carrying its own"
        )

    pyz = tmp_path / "swarm-node.pyz"
    built = subprocess.run(
        [sys.executable, "-m", "swarm.build_node", "--out", str(pyz), "--no-sim"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert pyz.is_file() and "done in" in built.stdout

    shiv_root = tmp_path / "shiv_root"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "SHIV_ROOT": str(shiv_root),
    }
    helped = subprocess.run(
        [base, "-I", str(pyz), "--help"], env=env, capture_output=True, text=True, timeout=300
    )
    assert helped.returncode == 0, helped.stderr[-3000:]
    # the node's options are being reworked: either generation of them will do
    assert "--config" in helped.stdout or "--agent" in helped.stdout, helped.stdout
    assert any(shiv_root.iterdir()), "the file did not unpack into SHIV_ROOT"

    probed = subprocess.run(
        [base, "-I", str(pyz), "-c", PROBE],
        env={**env, "SHIV_INTERPRETER": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probed.returncode == 0, probed.stderr[-3000:]
    seen = json.loads(probed.stdout.strip().splitlines()[-1])
    assert seen["torch"] == importlib.metadata.version("torch")
    assert Path(seen["torch_file"]).resolve().is_relative_to(shiv_root.resolve())
    assert seen["params"] > 0
    venv = str(Path(sys.prefix).resolve())
    assert not [p for p in seen["path"] if p.startswith((sys.prefix, venv))], seen["path"]


def test_pins_are_the_installed_versions() -> None:
    from swarm import build_node

    pins = build_node.pinned(build_node.NODE_DEPS)
    # torch exactly as installed, local label and all: never an unpinned (CUDA) torch
    assert f"torch=={importlib.metadata.version('torch')}" in pins
    assert all("==" in pin for pin in pins)
    assert not build_node.EXCLUDED & {p.split("==")[0].lower() for p in pins}


def test_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from swarm import build_node

    with pytest.raises(build_node.BuildError, match="make setup"):
        build_node.pinned(["surely-not-installed-dist"])
    monkeypatch.setattr(build_node, "SIM_DEPS", ("surely-not-installed-dist",))
    with pytest.raises(build_node.BuildError, match="--no-sim"):
        build_node.pinned(["surely-not-installed-dist"])
    monkeypatch.setattr(build_node.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(build_node.BuildError, match="pip install shiv"):
        build_node.shiv_command()
