"""Every PettingZoo world a run would refuse is refused by `swarm validate` (exit 2, one line
naming the file, no Ray, no run directory), and `swarm run` refuses it the same way before
anything starts (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scenario_hostile import _swarm

HEAD = "name: w\nticks: 10\nagents: {count: COUNT, per_shard: COUNT}\nworld:\n  kind: pettingzoo\n"


def _scenario(tmp_path: Path, env: str, count: int, kwargs: str = "{max_cycles: 25}") -> Path:
    path = tmp_path / "world.yaml"
    path.write_text(
        HEAD.replace("COUNT", str(count)) + f"  env: {env}\n  kwargs: {kwargs}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("env", "count", "kwargs", "says"),
    [
        # predators and prey observe 16 and 14 values (agent groups: not yet)
        ("mpe2.simple_tag_v3:parallel_env", 4, "{max_cycles: 25}",
         "every agent needs a Box observation of one shape"),
        # continuous actions (a Gaussian policy: not yet)
        ("mpe2.simple_spread_v3:parallel_env", 3, "{max_cycles: 25, continuous_actions: true}",
         "every agent needs the same Discrete action space"),
        # the count does not match the env's agents
        ("mpe2.simple_spread_v3:parallel_env", 4, "{max_cycles: 25}",
         "agents.count is 4, but world.env"),
        # an AEC env, not a ParallelEnv
        ("mpe2.simple_spread_v3:env", 3, "{max_cycles: 25}", "it is an AEC env"),
        # a keyword the env does not take
        ("mpe2.simple_spread_v3:parallel_env", 3, "{max_cycles: 25, speed: 3}",
         "TypeError"),
        # a renamed env: the installed release and the versions it has are named
        ("pettingzoo.sisl.pursuit_v4:parallel_env", 8, "{max_cycles: 25}",
         "is not in the installed pettingzoo"),
        # an attribute the module lacks
        ("mpe2.simple_spread_v3:no_such_env", 3, "{max_cycles: 25}",
         "has no attribute 'no_such_env'"),
    ],
    ids=["groups", "continuous", "count", "aec", "kwarg", "renamed", "attribute"],
)  # fmt: skip
def test_swarm_validate_refuses_what_a_run_would(
    tmp_path: Path, env: str, count: int, kwargs: str, says: str
) -> None:
    path = _scenario(tmp_path, env, count, kwargs)
    # Execute
    done = _swarm(tmp_path, "validate", str(path))
    # Assert: exit 2, the reason, the file, no traceback
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    assert str(path) in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_renamed_env_is_named_with_the_versions_installed(tmp_path: Path) -> None:
    done = _swarm(
        tmp_path, "validate", str(_scenario(tmp_path, "pettingzoo.sisl.pursuit_v4:parallel_env", 8))
    )
    assert "it has pettingzoo.sisl.pursuit, pettingzoo.sisl.pursuit_v5" in done.stdout + done.stderr
    assert "pip install" not in done.stdout + done.stderr  # the package is installed


def test_swarm_run_refuses_a_bad_world_before_ray_and_makes_no_run_directory(
    tmp_path: Path,
) -> None:
    path = _scenario(tmp_path, "mpe2.simple_tag_v3:parallel_env", 4)
    # Execute
    done = _swarm(tmp_path, "run", str(path), "--runs", str(tmp_path / "runs"), "--no-progress")
    # Assert
    assert done.returncode == 2, done.stdout + done.stderr
    assert "every agent needs a Box observation of one shape" in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()
    assert "Ray" not in done.stdout  # no cluster was started


def test_a_good_world_still_validates(tmp_path: Path) -> None:
    done = _swarm(
        tmp_path, "validate", str(_scenario(tmp_path, "mpe2.simple_spread_v3:parallel_env", 3))
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout
