"""`drone_patrol_v0`: the drone patrol world as a PettingZoo ParallelEnv.

Agents are the drones (`drone_0` ...). Each step every drone observes a feature vector
(`Box`, float32, the world's `obs_dim`) and answers with what it believes it sees: an action
is an event class (`Discrete(len(EVENT_CLASSES))`, 0 = none). The world scores and acts on the
answers exactly as in `swarm run` (reports, altitude-limit climbs). Reward: +1 for a correct
report of an event in view, -1 for a false report, 0 otherwise (for 'none' when nothing is in
view). Episodes are truncated after `max_cycles` steps. A drone in the config's `departures`
terminates on the step whose new tick is its departure tick (the world's first tick at or after
`at_s`; at reset if that is tick 0): `terminations[agent]` is True in that step's returns and it
leaves `env.agents` (it flies home and lands in the world, which keeps simulating it). Each step
returns its dicts for the agents alive when it began.

`render()` (render_mode "rgb_array") draws a small top-down map: zones, river, cruise points,
drones (departed ones grey). Spaces are created once per agent and returned as the same objects
(the API test checks identity).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs import make_world
from envs.drone_patrol.camera import observation_dim
from envs.drone_patrol.config import EVENT_CLASSES, DronePatrolConfig

_ZONE_RGB = {
    "forest": (207, 232, 196),
    "city": (224, 224, 224),
    "river": (207, 227, 245),
    "industrial": (243, 224, 200),
}


class DronePatrolParallelEnv(ParallelEnv):
    metadata = {"name": "drone_patrol_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(
        self,
        cfg: DronePatrolConfig | None = None,
        n_agents: int = 4,
        max_cycles: int = 200,
        render_mode: str | None = None,
        render_size: int = 96,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.cfg = cfg or DronePatrolConfig()
        self.n_drones, self.max_cycles = n_agents, max_cycles
        self.render_mode, self.render_size = render_mode, render_size
        self.possible_agents = [f"drone_{i}" for i in range(n_agents)]
        self.agents: list[str] = []
        self._world: Any = None
        obs_dim = observation_dim(self.cfg)  # features, or camera pixels + telemetry
        # one space object per agent, made once (parallel_api_test checks identity)
        self._observation_spaces = {
            a: spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
            for a in self.possible_agents
        }
        self._action_spaces: dict[str, spaces.Discrete] = {
            a: spaces.Discrete(len(EVENT_CLASSES)) for a in self.possible_agents
        }

    def observation_space(self, agent: str) -> spaces.Box:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))  # fresh entropy
        if self._world is not None:
            self._world.close()
        self._world = make_world(self.cfg, self.n_drones, seed)
        obs = self._world.reset()
        patrolling = self._world.patrolling()
        self.agents = [a for i, a in enumerate(self.possible_agents) if patrolling[i]]
        self._cycles = 0
        return self._split(obs, self.agents), self._infos(self.agents)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        live = list(self.agents)
        truth = self._world.true_classes()  # what each drone had in view
        # Agents that are gone act 'none' (the world ignores a departed drone anyway).
        preds = np.array([int(actions.get(a, 0)) for a in self.possible_agents], dtype=np.int64)
        result = self._world.step(preds)
        self._cycles += 1
        correct = (preds == truth) & (truth != 0)
        false_report = (preds != truth) & (preds != 0)
        reward = correct.astype(np.float64) - false_report.astype(np.float64)
        done = self._cycles >= self.max_cycles
        patrolling = self._world.patrolling()
        index = {a: i for i, a in enumerate(self.possible_agents)}
        obs = self._split(result.obs, live)
        rewards = {a: float(reward[index[a]]) for a in live}
        terminations = {a: not patrolling[index[a]] for a in live}
        truncations = dict.fromkeys(live, done)
        infos = self._infos(live)
        self.agents = [] if done else [a for a in live if patrolling[index[a]]]
        return obs, rewards, terminations, truncations, infos

    def _split(self, obs: np.ndarray, agents: list[str] | None = None) -> dict[str, np.ndarray]:
        return {
            a: obs[i].astype(np.float32)
            for i, a in enumerate(self.possible_agents)
            if agents is None or a in agents
        }

    def _infos(self, agents: list[str] | None = None) -> dict[str, dict]:
        truth = self._world.true_classes()
        return {
            a: {"true_class": int(truth[i])}
            for i, a in enumerate(self.possible_agents)
            if agents is None or a in agents
        }

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._world is None:
            return None
        n = self.render_size
        layout = self._world.layout()
        half = layout["area_m"] / 2
        img = np.full((n, n, 3), 255, dtype=np.uint8)

        def px(x: float, y: float) -> tuple[int, int]:  # world metres -> (row, col)
            col = int(np.clip((x + half) / (2 * half) * (n - 1), 0, n - 1))
            row = int(np.clip((half - y) / (2 * half) * (n - 1), 0, n - 1))
            return row, col

        for zone in layout["zones"]:
            x0, y0, x1, y1 = zone["rect"]
            (r1, c0), (r0, c1) = px(x0, y0), px(x1, y1)
            img[r0 : r1 + 1, c0 : c1 + 1] = _ZONE_RGB.get(zone["name"], (238, 238, 238))
        for x, y in layout["river"]:
            r, c = px(x, y)
            img[max(r - 1, 0) : r + 2, c] = (59, 125, 216)
        for point in layout["cruise_points"]:
            r, c = px(point["x"], point["y"])
            img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = (0, 0, 0)
        patrolling = self._world.patrolling()
        for (x, y, _), on in zip(self._world.positions(), patrolling, strict=True):
            r, c = px(float(x), float(y))
            rgb = (220, 40, 40) if on else (110, 110, 110)  # departed drones in grey
            img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = rgb
        return img

    def close(self) -> None:
        if self._world is not None:
            self._world.close()
            self._world = None


def parallel_env(**kwargs: Any) -> DronePatrolParallelEnv:
    """PettingZoo's constructor convention: `drone_patrol_v0.parallel_env(...)`."""
    return DronePatrolParallelEnv(**kwargs)
