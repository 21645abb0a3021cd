"""Build `swarm-node` as one self-contained file: a shiv zipapp (docs/node.md).

    python -m swarm.build_node --out dist/swarm-node.pyz            # with the simulated sensor
    python -m swarm.build_node --out dist/swarm-node.pyz --no-sim   # without pybullet

The file carries its own site-packages (torch, numpy, grpcio, ... and this project), so a
machine of the same platform needs only a Python of the same minor version as the one that ran
the build, and no install step: `python3.11 swarm-node.pyz --help`. On first run shiv unpacks
the site-packages to ~/.shiv (or $SHIV_ROOT) and reuses them afterwards.

Every package is pinned to the version installed in the interpreter that runs the build (the
versions that were tested), transitive ones too, through a constraints file. The wheels are
this platform's: build on the machine kind you deploy to (an aarch64 Pi builds its own file).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

#: What swarm/node.py's import graph needs at run time, by distribution name. Found by walking
#: the imports of swarm.node through the swarm, agents, protocols and envs packages: torch
#: (agents), numpy, grpcio + grpcio-health-checking + protobuf (protocols.transport and the
#: generated stubs), cryptography (protocols.tls), pydantic + PyYAML (the scenario and its
#: config sections), networkx (protocols.topology).
NODE_DEPS: tuple[str, ...] = (
    "torch",
    "numpy",
    "grpcio",
    "grpcio-health-checking",
    "protobuf",
    "cryptography",
    "pydantic",
    "PyYAML",
    "networkx",
)
#: Only the built-in simulated sensor (envs.drone_patrol's physics and camera) needs these.
SIM_DEPS: tuple[str, ...] = ("pybullet",)
#: Never in the node: Ray is the simulator's, matplotlib the reports', and pettingzoo, mpe2 and
#: gymnasium are the PettingZoo world's (envs.pz_world), which a device node does not run.
EXCLUDED: frozenset[str] = frozenset({"ray", "matplotlib", "pettingzoo", "mpe2", "gymnasium"})

ENTRY_POINT = "swarm.node:main"
DEFAULT_SHEBANG = "/usr/bin/env python3"
#: Deflate the archive. Measured here (torch 2.13.0 CPU, Python 3.11, x86_64): --no-sim 236 MB
#: deflated vs 848 MB stored, with pybullet 339 MB vs 1139 MB. The first run unpacks ~0.9-1.2 GB
#: to ~/.shiv either way, and took no longer from the deflated file (11-25 s vs 22-25 s
#: --no-sim, on 2 busy shared cores): writing the unpacked tree dominates, and the stored file
#: is 3.6x more to read.
#: Later runs never read the members again, so they start the same (~1.5 s for --help).
#: Deflating costs ~40 s more at build time, paid once; a file a third the size is what gets
#: copied to and kept on a device's SD card.
COMPRESSED = True

#: Files of the project's root that its build reads (pyproject's readme, licence...).
_PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in")
_PROJECT_GLOBS = ("README*", "LICENSE*", "LICENCE*", "NOTICE*")

#: Runs first in the built file, after unpacking: the wheels inside are compiled for one Python
#: minor version and one platform, and a mismatch would otherwise fail deep in an import.
_PREAMBLE = '''\
"""swarm-node.pyz guard: this file's wheels are compiled for one Python and platform."""
import platform
import sys

BUILT_FOR = ({major}, {minor}, {system!r}, {machine!r})
HERE = (sys.version_info[0], sys.version_info[1], sys.platform, platform.machine())
if HERE != BUILT_FOR:
    sys.exit(
        "swarm-node.pyz was built for Python %d.%d on %s %s (its wheels are compiled for that); "
        "this is Python %d.%d on %s %s. Run it with python%d.%d on such a machine, or rebuild it "
        "on this one: python -m swarm.build_node (docs/node.md)."
        % (BUILT_FOR + HERE + BUILT_FOR[:2])
    )
'''


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def _step(text: str) -> None:
    print(f"[build_node] {text}", flush=True)


def project_root() -> Path:
    """The source checkout this module lives in (the directory holding pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BuildError(
            f"no pyproject.toml in {root}: run the build from a source checkout of yan-swarm "
            "(an editable install, `pip install -e .`, or `python -m swarm.build_node` in the tree)"
        )
    return root


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(dists: Sequence[str]) -> list[str]:
    """`name==version` of each distribution, the version installed in this interpreter.

    The exact version, local label included: torch here is `2.13.0+cpu`, and `torch==2.13.0+cpu`
    can only be the CPU wheel on local disk, never the multi-GB CUDA build of the same version.
    """
    pins = []
    for dist in dists:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            hint = " or build with --no-sim" if dist in SIM_DEPS else ""
            raise BuildError(
                f"{dist} is not installed in {sys.executable}: the build pins every package to "
                f"the version installed here (the tested one). Set the project up first "
                f"(`make setup`){hint}."
            ) from None
        pins.append(f"{dist}=={version}")
    return pins


def write_constraints(path: Path) -> int:
    """Pin every distribution installed here (bar the project and EXCLUDED) for pip's
    resolver, so the transitive dependencies are the tested versions too. Returns the count."""
    own = _canonical("yan-swarm")
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = _canonical(name)
        if key in seen or key == own or key in EXCLUDED:
            continue  # the first one found is the one `import` sees
        seen[key] = f"{name}=={dist.version}"
    path.write_text("\n".join(sorted(seen.values(), key=str.lower)) + "\n")
    return len(seen)


def stage_project(root: Path, dest: Path) -> Path:
    """Copy what building the project needs into `dest`, so the build writes its build/ and
    *.egg-info there, not into the source tree."""
    dest.mkdir(parents=True)
    for name in _PROJECT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    for pattern in _PROJECT_GLOBS:
        for path in root.glob(pattern):
            if path.is_file():
                shutil.copy2(path, dest / path.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for path in sorted(root.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():  # a top-level package
            shutil.copytree(path, dest / path.name, ignore=ignore)
    return dest


def _run(cmd: list[str], what: str) -> None:
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{what} failed (exit {exc.returncode}); see its output above") from None


def pip_install(target: Path, args: list[str], what: str) -> None:
    # --no-compile: shiv leaves .pyc files out of the archive anyway, and unpacking would make
    # them stale (new mtimes); Python compiles what it imports into ~/.shiv on first run.
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target"]
    _run([*cmd, str(target), *args], what)


def shiv_command() -> list[str]:
    if importlib.util.find_spec("shiv") is None:
        raise BuildError(
            f"shiv is not installed in {sys.executable}: pip install shiv "
            "(it is in the dev extra: pip install -e '.[dev]')"
        )
    return [sys.executable, "-m", "shiv"]


def _drop_build_paths(site: Path) -> None:
    """Remove what only records the build machine: pip's console scripts (shebangs naming this
    venv's python, and not how the node starts) and direct_url.json (the staged source path).
    Keeps the archive free of local paths and its build id a function of the packages."""
    shutil.rmtree(site / "bin", ignore_errors=True)
    for path in site.glob("*.dist-info/direct_url.json"):
        path.unlink()


def build(out: Path, *, sim: bool, python: str, keep_build_dir: bool) -> Path:
    started = time.monotonic()
    root = project_root()
    shiv = shiv_command()
    deps = [*NODE_DEPS, *(SIM_DEPS if sim else ())]
    pins = pinned(deps)
    build_dir = Path(tempfile.mkdtemp(prefix="swarm-node-build-"))
    try:
        site = build_dir / "site-packages"
        constraints = build_dir / "constraints.txt"
        n = write_constraints(constraints)
        _step(f"1/4 pip install into {site}: {' '.join(pins)} (+ {n} pins for their dependencies)")
        pip_install(site, ["--constraint", str(constraints), *pins], "installing the dependencies")
        _drop_build_paths(site)  # before the project's install, which would find bin/ taken
        _step(f"2/4 pip install --no-deps the project ({root})")
        staged = stage_project(root, build_dir / "project")
        pip_install(site, ["--no-deps", str(staged)], "installing the project")
        _drop_build_paths(site)
        preamble = build_dir / "swarm_node_preamble.py"
        preamble.write_text(
            _PREAMBLE.format(
                major=sys.version_info[0],
                minor=sys.version_info[1],
                system=sys.platform,
                machine=platform.machine(),
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        _step(f"3/4 shiv -> {out} (entry point {ENTRY_POINT}, shebang #!{python})")
        _run(
            [
                *shiv,
                "--site-packages",
                str(site),
                "--entry-point",
                ENTRY_POINT,
                "--python",
                python,
                "--reproducible",
                "--compressed" if COMPRESSED else "--uncompressed",
                "--preamble",
                str(preamble),
                "--output-file",
                str(out),
            ],
            "shiv",
        )
    finally:
        if keep_build_dir:
            _step(f"kept the build directory {build_dir}")
        else:
            shutil.rmtree(build_dir, ignore_errors=True)
    size = out.stat().st_size
    _step(
        f"4/4 done in {time.monotonic() - started:.0f} s: {out} is {size / 1e6:.1f} MB "
        f"({size} bytes); it runs on Python {sys.version_info[0]}.{sys.version_info[1]} "
        f"on {sys.platform} {platform.machine()} (set SHIV_ROOT to choose where it unpacks)"
    )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m swarm.build_node",
        description="Build swarm-node as one file that needs only Python (docs/node.md).",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .pyz file to write")
    parser.add_argument(
        "--no-sim",
        action="store_true",
        help="leave out pybullet (the built-in simulated sensor); the node then needs a recorded "
        "or stdin sensor",
    )
    parser.add_argument(
        "--python",
        default=DEFAULT_SHEBANG,
        help=f"the file's shebang interpreter (default: {DEFAULT_SHEBANG!r}); it must be the "
        f"same Python minor version as the one running the build",
    )
    parser.add_argument(
        "--keep-build-dir",
        action="store_true",
        help="keep the temporary site-packages directory (for debugging)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        build(args.out, sim=not args.no_sim, python=args.python, keep_build_dir=args.keep_build_dir)
    except BuildError as exc:
        print(f"build_node: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
