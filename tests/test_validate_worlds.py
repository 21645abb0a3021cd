"""Every PettingZoo world a run would refuse is refused by `swarm validate` (exit 2, one line
naming the file, no Ray, no run directory), and `swarm run` refuses it the same way before
anything starts (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scenario_hostile import _swarm

SCENARIOS = Path(__file__).parents[1] / "scenarios"

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
        # predators (3) and prey (1) form two groups: per_shard 4 would straddle them
        ("mpe2.simple_tag_v3:parallel_env", 4, "{max_cycles: 25}",
         "agents.per_shard: a shard hosts agents of one group"),
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
    ids=["groups", "count", "aec", "kwarg", "renamed", "attribute"],
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
    assert "agents.per_shard: a shard hosts agents of one group" in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()
    assert "Ray" not in done.stdout  # no cluster was started


def test_a_good_world_still_validates(tmp_path: Path) -> None:
    done = _swarm(
        tmp_path, "validate", str(_scenario(tmp_path, "mpe2.simple_spread_v3:parallel_env", 3))
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok" in done.stdout


def test_continuous_actions_validate(tmp_path: Path) -> None:
    # a Box action space of finite bounds: a Gaussian policy acts in it
    for path in (
        _scenario(
            tmp_path, "mpe2.simple_spread_v3:parallel_env", 3,
            "{max_cycles: 25, continuous_actions: true}",
        ),
        SCENARIOS / "spread_continuous.yaml",
    ):  # fmt: skip
        done = _swarm(tmp_path, "validate", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok" in done.stdout


# A ParallelEnv of 2 agents observing 2 numbers, acting in the spaces each function names;
# written next to the scenario and allowed by SWARM_ENV_PACKAGES, as one's own env would be.
ODD_ENVS = """
import numpy as np
from gymnasium import spaces


class Env:
    def __init__(self, acts):
        self.possible_agents = ["a0", "a1"]
        self.agents = []
        self._acts = dict(zip(self.possible_agents, acts))

    def observation_space(self, agent):
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return self._acts[agent]

    def reset(self, seed=None):
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, {}

    def step(self, actions):
        raise NotImplementedError

    def close(self):
        pass


def unbounded():
    return Env([spaces.Box(-np.inf, np.inf, (2,))] * 2)


def mixed():
    return Env([spaces.Discrete(3), spaces.Box(0.0, 1.0, (3,))])


def multidiscrete():
    return Env([spaces.MultiDiscrete([3, 3])] * 2)
"""


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ("unbounded", "a Box with infinite bounds; a continuous action space needs finite ones"),
        ("mixed", "groups that mix discrete and continuous actions are not supported yet"),
        ("multidiscrete", "only Discrete and Box action spaces are supported"),
    ],
)
def test_action_spaces_still_refused_are_refused_by_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, says: str
) -> None:
    (tmp_path / "odd_envs.py").write_text(ODD_ENVS, encoding="utf-8")
    monkeypatch.setenv("SWARM_ENV_PACKAGES", "odd_envs")
    path = _scenario(tmp_path, f"odd_envs:{env}", 2, "{}")
    # Execute: the CLI runs in tmp_path, where `python -m` finds odd_envs
    done = _swarm(tmp_path, "validate", str(path))
    # Assert
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    assert str(path) in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# ---- agent groups -------------------------------------------------------------------------------


def test_worlds_of_agent_groups_validate(tmp_path: Path) -> None:
    # predators and prey (16 and 14 numbers observed), speaker and listener (other spaces and
    # Discrete(3) / Discrete(5)): a group each, one agent per shard here
    tag = _scenario(tmp_path, "mpe2.simple_tag_v3:parallel_env", 4)
    tag.write_text(tag.read_text().replace("per_shard: 4", "per_shard: 1"), encoding="utf-8")
    for path in (tag, SCENARIOS / "tag.yaml"):
        done = _swarm(tmp_path, "validate", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok" in done.stdout
    assert "groups adversary 48, agent 16" in done.stdout
    listener = tmp_path / "speaker_listener.yaml"
    listener.write_text(
        HEAD.replace("COUNT", "1").replace("count: 1", "count: 2")
        + "  env: mpe2.simple_speaker_listener_v4:parallel_env\n  kwargs: {max_cycles: 25}\n",
        encoding="utf-8",
    )
    done = _swarm(tmp_path, "validate", str(listener))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "groups speaker 1, listener 1" in done.stdout


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("topology: decentralized ", "topology: coordinator "),
         "gossip.topology: coordinator: one coordinator aggregates one model"),
        (("  # groups: {adversary:", "  groups: {predator: 'adversary_\\d+'}\n  # {"),
         "world: world.groups: agent 'agent_0' of world.env 'mpe2.simple_tag_v3:parallel_env' "
         "matches no group"),
        (("graph: {kind: exponential}", "graph: {kind: random_regular, degree: 20}"),
         "group 'agent' has 16 agents: the degree (20) must be below that"),
    ],
    ids=["coordinator", "unmatched", "graph"],
)  # fmt: skip
def test_what_a_scenario_cannot_do_with_its_groups_is_refused_by_validate(
    tmp_path: Path, change: tuple[str, str], says: str
) -> None:
    text = (SCENARIOS / "tag.yaml").read_text(encoding="utf-8")
    assert change[0] in text
    path = tmp_path / "tag.yaml"
    path.write_text(text.replace(*change), encoding="utf-8")
    # Execute
    done = _swarm(tmp_path, "validate", str(path))
    # Assert: exit 2, one line naming the file and the reason
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: {path}: " in done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_swarm_compare_refuses_the_modes_a_world_of_groups_cannot_run(tmp_path: Path) -> None:
    done = _swarm(
        tmp_path, "compare", str(SCENARIOS / "tag.yaml"), "--modes", "isolated,coordinator",
        "--runs", str(tmp_path / "runs"), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--modes coordinator: gossip.topology: coordinator" in done.stdout + done.stderr
    assert not (tmp_path / "runs").exists()
