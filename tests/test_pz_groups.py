"""Agent groups (issue 19): a PettingZoo world whose agents differ in observation or action
space runs as groups, each with a model layout of its own that gossips only within itself.

Unit tests without Ray: how groups form (by space, by name), the swarm's group-major order and
the padding of observations and actions (MPE2 simple_tag and simple_speaker_listener, and a
small env of our own that records what it is given), per-group returns, what a scenario cannot
do with groups (`groups_problem`), the graph built per group, the consensus distance over two
layouts, and a shard's learners built for its group's spaces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
from gymnasium import spaces

from envs.pz_config import PettingZooConfig
from envs.pz_world import ParallelEnvWorld, group_name
from protocols.config import GraphConfig
from protocols.topology import build_graph, build_graph_in_groups, mixing_summary
from swarm.records import GroupInfo, ShardMeasure, Traffic, WorldInfo
from swarm.runner import consensus_distance
from swarm.scenario import Scenario, groups_problem, load_scenario
from swarm.tasks import Reinforcement

pytest.importorskip("mpe2")

TAG = "mpe2.simple_tag_v3:parallel_env"
SPEAKER_LISTENER = "mpe2.simple_speaker_listener_v4:parallel_env"
TAG_KWARGS = {"num_good": 1, "num_adversaries": 3, "num_obstacles": 2, "max_cycles": 5}
TAG_YAML = Path(__file__).parents[1] / "scenarios" / "tag.yaml"


def _tag(copies: int = 2, groups: dict[str, str] | None = None, **kwargs: Any) -> ParallelEnvWorld:
    cfg = PettingZooConfig(env=TAG, kwargs={**TAG_KWARGS, **kwargs}, copies=copies, groups=groups)
    return ParallelEnvWorld(cfg, 4 * copies, seed=0)


# ---- how groups form --------------------------------------------------------------------------


def test_simple_tag_forms_predators_and_prey_by_space_group_major_over_copies() -> None:
    # Prepare / Execute: 2 copies of 3 predators observing 16 numbers and 1 prey observing 14
    world = _tag(copies=2)
    # Assert: two groups named after their agents, each one contiguous range of the swarm
    got = [(g.name, g.members, g.first, g.count, g.obs_dim, g.n_actions) for g in world.groups]
    assert got == [
        ("adversary", ("adversary_0", "adversary_1", "adversary_2"), 0, 6, 16, 5),
        ("agent", ("agent_0",), 6, 2, 14, 5),
    ]
    assert world.agent_ids == [
        "0/adversary_0", "0/adversary_1", "0/adversary_2",
        "1/adversary_0", "1/adversary_1", "1/adversary_2",
        "0/agent_0", "1/agent_0",
    ]  # fmt: skip
    assert (world.obs_dim, world.n_actions, world.action_dim) == (16, 5, 0)


def test_groups_named_by_regex_take_the_scenarios_names_and_order() -> None:
    world = _tag(copies=1, groups={"prey": r"agent_\d+", "predator": r"adversary_\d+"})
    assert [(g.name, g.members, g.first) for g in world.groups] == [
        ("prey", ("agent_0",), 0),
        ("predator", ("adversary_0", "adversary_1", "adversary_2"), 1),
    ]
    assert world.agent_ids == ["agent_0", "adversary_0", "adversary_1", "adversary_2"]


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ({"predator": r"adversary_\d+"},
         "world.groups: agent 'agent_0' of world.env 'mpe2.simple_tag_v3:parallel_env' matches "
         "no group (predator: 'adversary_\\\\d+'); every agent must belong to one"),
        ({"all": ".*", "none": "nobody"},
         "world.groups: group 'none' ('nobody') matches no agent"),
        # one group of predators and prey: their observations differ (16 and 14 numbers)
        ({"all": ".*"},
         "world.groups: group 'all' has agent 'adversary_0', which observes Box(-inf, inf, "
         "(16,), float32), acts in Discrete(5), and agent 'agent_0', which observes Box(-inf, "
         "inf, (14,), float32), acts in Discrete(5); the agents of one group share one model "
         "layout"),
    ],
    ids=["unmatched-agent", "empty-group", "mixed-spaces"],
)  # fmt: skip
def test_named_groups_that_do_not_fit_the_agents_say_which_and_why(
    groups: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        _tag(copies=1, groups=groups)


def test_a_group_is_named_after_its_agents_without_their_number() -> None:
    assert group_name(["adversary_0", "adversary_1"]) == "adversary"
    assert group_name(["agent_0"]) == "agent"
    assert group_name(["speaker", "listener_0"]) == "speaker"  # no common name: the first's


def test_bad_group_names_and_expressions_are_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="is not a regular expression"):
        PettingZooConfig(env=TAG, groups={"a": "(unclosed"})
    with pytest.raises(ValueError, match="group name 'a b'"):
        PettingZooConfig(env=TAG, groups={"a b": ".*"})


# ---- arrays: order, padding, actions ----------------------------------------------------------


def test_each_agents_observation_fills_its_groups_columns_and_zeros_follow() -> None:
    # Prepare: a second world's envs reset with the seeds of each copy's first episode
    # (ParallelEnvWorld._episode_seed: run seed 0, copy c, episode 0), read directly
    world = _tag(copies=2)
    obs = world.reset()
    again = _tag(copies=2)
    seeds = [int(np.random.SeedSequence([0, c, 0]).generate_state(1)[0]) for c in range(2)]
    raw = [again.envs[c].reset(seed=seeds[c])[0] for c in range(2)]
    # Assert: the prey of copy c (row 6 + c) sees its own 14 numbers, then zeros
    for c in range(2):
        np.testing.assert_array_equal(obs[6 + c, :14], raw[c]["agent_0"])
        assert not obs[6 + c, 14:].any()
        for k in range(3):
            np.testing.assert_array_equal(obs[3 * c + k], raw[c][f"adversary_{k}"])


class TwoKinds:
    """A ParallelEnv of two kinds of agent: 'big_0', 'big_1' observe 3 numbers and act in
    Discrete(5); 'small_0' observes 2 and acts in Discrete(2). Every step gives each agent the
    reward of its action (so a test can read who got which), and the episode ends after
    `length` steps; records what each step was given."""

    def __init__(self, length: int = 2) -> None:
        self.possible_agents = ["big_0", "small_0", "big_1"]  # kinds interleaved
        self.agents: list[str] = []
        self.length, self.t = length, 0
        self.given: list[dict[str, Any]] = []

    def observation_space(self, agent: str) -> spaces.Box:
        return spaces.Box(-9.0, 9.0, (2 if agent.startswith("small") else 3,), np.float32)

    def action_space(self, agent: str) -> spaces.Discrete:
        return spaces.Discrete(2 if agent.startswith("small") else 5)

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            a: np.full(self.observation_space(a).shape, 1 + self.possible_agents.index(a))
            for a in self.agents
        }

    def reset(self, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        self.agents, self.t = list(self.possible_agents), 0
        return self._obs(), {}

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        self.given.append(dict(actions))
        self.t += 1
        rew = {a: float(actions[a]) for a in self.agents}
        end = self.t >= self.length
        trunc = dict.fromkeys(self.agents, end)
        term = dict.fromkeys(self.agents, False)
        obs = self._obs()
        if end:
            self.agents = []
        return obs, rew, term, trunc, {}

    def close(self) -> None:
        pass


def _two_kinds(copies: int = 2, length: int = 2) -> ParallelEnvWorld:
    # the config's own checks allow only known packages: built as a test's config is
    cfg = PettingZooConfig.model_construct(
        env=f"{__name__}:TwoKinds", kwargs={"length": length}, copies=copies, tick_s=0.1,
        pipeline=True, groups=None,
    )  # fmt: skip
    return ParallelEnvWorld(cfg, 3 * copies, seed=0)


def test_actions_reach_the_right_agent_of_the_right_copy_and_returns_are_kept_per_group() -> None:
    # Prepare: 2 copies; swarm order big (copy 0: big_0, big_1; copy 1: ...), then small
    world = _two_kinds(copies=2, length=2)
    assert world.agent_ids == ["0/big_0", "0/big_1", "1/big_0", "1/big_1", "0/small_0", "1/small_0"]
    obs = world.reset()
    assert obs.shape == (6, 3)
    np.testing.assert_array_equal(obs[4], [2, 2, 0])  # small_0 (index 1 in the env): 2 numbers
    np.testing.assert_array_equal(obs[1], [3, 3, 3])  # big_1
    # Execute: each agent's action its own number, two steps: one episode per copy
    actions = np.array([4, 3, 2, 1, 1, 0])
    world.step(actions)
    last = world.step(actions)
    # Assert: the env of copy 1 was given the actions of rows 2, 3 and 5
    assert world.envs[1].given[-1] == {"big_0": 2, "big_1": 1, "small_0": 0}
    assert world.envs[0].given[-1] == {"big_0": 4, "big_1": 3, "small_0": 1}
    np.testing.assert_array_equal(last.rewards, actions)
    assert last.done.all()
    m = world.task_metrics()
    # per group: its rewards over the episode / its agents per copy, averaged over the copies
    assert m["rl/return/big"] == pytest.approx(np.mean([2 * (4 + 3) / 2, 2 * (2 + 1) / 2]))
    assert m["rl/return/small"] == pytest.approx(np.mean([2 * 1, 2 * 0]))
    assert m["rl/team_return"] == pytest.approx(np.mean([2 * 8 / 3, 2 * 3 / 3]))


def test_an_action_outside_its_groups_space_is_named() -> None:
    world = _two_kinds(copies=1)
    world.reset()
    # Discrete(5) for the big ones, Discrete(2) for small_0 (row 2): 3 fits one, not the other
    with pytest.raises(ValueError, match=r"action 3 of agent 'small_0' is not in \[0, 2\)"):
        world.step(np.array([3, 3, 3]))


def test_a_world_of_groups_steps_whole() -> None:
    world = _two_kinds(copies=2)
    world.reset()
    with pytest.raises(ValueError, match="a world of 2 agent groups steps whole"):
        world.step(np.zeros(3, np.int64), copies=(0, 1))


def test_one_group_per_world_keeps_the_copy_major_order_and_no_group_figures() -> None:
    cfg = PettingZooConfig(env="mpe2.simple_spread_v3:parallel_env", kwargs={"N": 3}, copies=2)
    world = ParallelEnvWorld(cfg, 6, seed=0)
    assert [g.name for g in world.groups] == ["agent"]
    assert world.agent_ids == [f"{c}/agent_{j}" for c in range(2) for j in range(3)]
    assert not any(k.startswith("rl/return/") for k in world.task_metrics())


def test_continuous_groups_of_different_widths_are_padded_and_clipped_to_their_own_box() -> None:
    # speaker: Box(0, 1, (3,)), listener: Box(0, 1, (5,)); decisions are (N, 5)
    cfg = PettingZooConfig(
        env=SPEAKER_LISTENER, kwargs={"max_cycles": 5, "continuous_actions": True}, copies=1
    )
    world = ParallelEnvWorld(cfg, 2, seed=0)
    assert [(g.name, g.action_dim) for g in world.groups] == [("speaker", 3), ("listener", 5)]
    assert (world.obs_dim, world.action_dim) == (11, 5)
    world.reset()
    given: list[dict[str, Any]] = []
    step = world.envs[0].step
    world.envs[0].step = lambda acts: (given.append(acts), step(acts))[1]  # type: ignore[method-assign]
    world.step(np.array([[0.5, 2.0, -1.0, 7.0, 7.0], [0.1, 0.2, 0.3, 0.4, 9.0]], np.float32))
    assert given[0]["speaker_0"].shape == (3,)
    np.testing.assert_allclose(given[0]["speaker_0"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(given[0]["listener_0"], [0.1, 0.2, 0.3, 0.4, 1.0])


class Mixed(TwoKinds):
    """TwoKinds whose small agent acts in a Box: one discrete group, one continuous."""

    def action_space(self, agent: str) -> Any:
        return spaces.Box(0.0, 1.0, (2,)) if agent.startswith("small") else spaces.Discrete(5)


def test_groups_mixing_discrete_and_continuous_actions_are_refused() -> None:
    cfg = PettingZooConfig.model_construct(
        env=f"{__name__}:Mixed", kwargs={}, copies=1, tick_s=0.1, pipeline=True, groups=None
    )
    with pytest.raises(ValueError, match="groups that mix discrete and continuous actions"):
        ParallelEnvWorld(cfg, 3, seed=0)


# ---- what a shard is told ---------------------------------------------------------------------


def test_world_info_gives_a_shard_its_groups_spaces_and_refuses_a_shard_across_groups() -> None:
    info = Reinforcement.describe(_tag(copies=2))
    assert [(g.name, g.first, g.count, g.obs_dim, g.n_actions) for g in info.groups] == [
        ("adversary", 0, 6, 16, 5),
        ("agent", 6, 2, 14, 5),
    ]
    assert info.per_copy == 0  # a copy's agents are no range: the world steps whole
    prey = info.for_agents([6, 7])
    assert (prey.obs_dim, prey.n_actions, prey.per_copy) == (14, 5, 0)
    assert info.for_agents([2, 3]).obs_dim == 16
    with pytest.raises(ValueError, match="straddle agent groups"):
        info.for_agents([5, 6])


def test_a_shards_learners_act_on_their_groups_columns() -> None:
    # Prepare: the prey's learners of a 2-copy simple_tag, built as a shard builds them
    from swarm.records import Step

    sc = _tag_scenario(copies=2, per_shard=2)
    world = _tag(copies=2)
    info = Reinforcement.describe(world).for_agents([6, 7])
    learning = Reinforcement.learning(sc, 2, info, pooled=False, twins=False)
    obs = world.reset()
    step = Step(0, obs, np.zeros((0, 3), np.int64), np.zeros(8, np.float32), None, world.alive)
    # Execute
    actions = learning.act(step, 6, 8)
    # Assert: a model of 14 inputs acted on the prey's rows, one action in Discrete(5) each
    assert learning.population.obs_dim == 14
    assert actions.shape == (2,) and ((actions >= 0) & (actions < 5)).all()


# ---- what a scenario cannot do with groups ----------------------------------------------------


def _tag_scenario(copies: int = 16, per_shard: int | str = 16, **gossip: Any) -> Scenario:
    data = load_scenario(TAG_YAML).model_dump(mode="json")
    data["agents"] = {"count": 4 * copies, "per_shard": per_shard}
    data["world"]["copies"] = copies
    data["gossip"].update(gossip)
    return Scenario.model_validate(data)


def _tag_info(copies: int = 16) -> WorldInfo:
    return Reinforcement.describe(_tag(copies=copies, max_cycles=25))


def test_the_shipped_tag_scenario_fits_its_groups() -> None:
    sc = load_scenario(TAG_YAML)
    world = ParallelEnvWorld(sc.world, sc.agents.count, sc.seed)  # type: ignore[arg-type]
    info = Reinforcement.describe(world)
    assert [(g.name, g.count) for g in info.groups] == [("adversary", 48), ("agent", 16)]
    assert groups_problem(sc, info) is None


@pytest.mark.parametrize(
    ("scenario", "says"),
    [
        ({"per_shard": 12},
         "agents.per_shard: a shard hosts agents of one group (one model layout), and the "
         "world's agent groups have adversary 48, agent 16 agents; 12 does not divide them: "
         "use one that divides 16: 16, 8, 4, 2 or 1"),
        ({"per_shard": "auto"}, "agents.per_shard: a shard hosts agents of one group"),
        ({"topology": "coordinator"},
         "gossip.topology: coordinator: one coordinator aggregates one model, and the world's "
         "agent groups (adversary 48, agent 16 agents) have a model layout each"),
        ({"topology": "centralized", "per_shard": 64},
         "gossip.topology: centralized: one shard trains one pooled model for every agent"),
        # degree 20 < 64 agents, as the schema checks, but the prey are 16
        ({"graph": {"kind": "random_regular", "degree": 20}},
         "gossip.graph: a random_regular graph is built per agent group, and group 'agent' "
         "has 16 agents: the degree (20) must be below that and degree times that even"),
    ],
    ids=["per_shard", "auto", "coordinator", "centralized", "random_regular"],
)  # fmt: skip
def test_what_a_scenario_cannot_do_with_groups_is_named(
    scenario: dict[str, Any], says: str
) -> None:
    per_shard = scenario.pop("per_shard", 16)
    sc = _tag_scenario(per_shard=per_shard, **scenario)
    assert says in str(groups_problem(sc, _tag_info()))


def test_a_world_of_one_group_has_no_group_problem() -> None:
    sc = _tag_scenario(per_shard=5)  # would not divide two groups' sizes
    info = _tag_info()
    one = WorldInfo(task="rl", obs_dim=16, agent_ids=info.agent_ids, groups=info.groups[:1])
    assert groups_problem(sc, one) is None


# ---- the graph, per group ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "exponential", "complete", "random_regular"])
def test_the_graph_joins_agents_of_one_group_only(kind: str) -> None:
    cfg = GraphConfig(kind=kind, degree=4)  # type: ignore[arg-type]
    groups = [(0, 48), (48, 16)]
    graph = build_graph_in_groups(cfg, groups, seed=3)
    assert sorted(graph.nodes) == list(range(64))
    side = np.repeat([0, 1], [48, 16])
    assert all(side[i] == side[j] for i, j in graph.edges())
    # each group's part is the kind's own graph on its agents
    prey = nx.convert_node_labels_to_integers(graph.subgraph(range(48, 64)))
    assert sorted(prey.edges()) == sorted(build_graph(cfg, 16, seed=3).edges())
    # one group of every agent: the graph as it always was
    one = build_graph_in_groups(cfg, [(0, 64)], seed=3)
    assert sorted(one.edges()) == sorted(build_graph(cfg, 64, seed=3).edges())


def test_rho_of_a_graph_per_group_is_the_slowest_groups() -> None:
    cfg = GraphConfig(kind="ring")
    graph = build_graph_in_groups(cfg, [(0, 48), (48, 16)], seed=0)
    summary = mixing_summary(graph, [(0, 48), (48, 16)])
    ring48 = mixing_summary(build_graph(cfg, 48, seed=0))
    assert summary["rho"] == pytest.approx(ring48["rho"])  # the longer ring mixes slower
    assert summary["connected"] and summary["nodes"] == 64 and summary["edges"] == 64
    assert mixing_summary(graph)["rho"] == pytest.approx(1.0)  # as one graph: two components


# ---- the consensus distance over two layouts --------------------------------------------------


def _measure(agents: list[int], x: np.ndarray) -> ShardMeasure:
    x = np.asarray(x, np.float64)
    return ShardMeasure(agents, x.sum(0), float((x**2).sum()), Traffic(), 1.0)


def test_consensus_distance_is_taken_within_each_group_and_weighted_by_agents() -> None:
    # Prepare: group a (3 agents, P = 2) in two shards, group b (1 agent, P = 3)
    info = WorldInfo(
        task="rl", obs_dim=3, agent_ids=list("0123"),
        groups=[GroupInfo("a", 0, 3, 2), GroupInfo("b", 3, 1, 3)],
    )  # fmt: skip
    a = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]])
    shards = [_measure([0, 1], a[:2]), _measure([2], a[2:]), _measure([3], [[5.0, 5.0, 5.0]])]
    # Execute
    got = consensus_distance(shards, info)
    # Assert: by hand, group a's mean is (2, 1): squared distances 5, 1, 8 -> 14 / 3; group b
    # has one agent (0); weighted by agents: (3 * 14/3 + 1 * 0) / 4 = 3.5
    assert got == pytest.approx(3.5)
    # one group: the swarm's own formula, unchanged
    one = WorldInfo(task="rl", obs_dim=2, agent_ids=list("012"), groups=[GroupInfo("a", 0, 3, 2)])
    assert consensus_distance(shards[:2], one) == pytest.approx(14 / 3)


# ---- a world of groups stepped by its shards, in this process ---------------------------------


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_speaker_listener_runs_a_few_ticks_through_the_world_host_and_its_shards(
    continuous: bool,
) -> None:
    # Prepare: 2 copies of a speaker (observes 3, Discrete(3) or Box (3,)) and a listener
    # (observes 11, Discrete(5) or Box (5,)); a shard per group, no network (isolated)
    from swarm.shard import AgentShard, ShardSpec, WorldHost

    data = load_scenario(TAG_YAML).model_dump(mode="json")
    data["world"] = {
        "kind": "pettingzoo", "env": SPEAKER_LISTENER, "copies": 2,
        "kwargs": {"max_cycles": 5, "continuous_actions": continuous},
    }  # fmt: skip
    data["agents"] = {"count": 4, "per_shard": 2}
    data["gossip"]["topology"] = "isolated"
    data["rl"]["rollout"] = 5
    sc = Scenario.model_validate(data)
    spec = sc.model_dump(mode="json")
    host = WorldHost(spec)
    info = host.info()
    assert [(g.name, g.first, g.count) for g in info.groups] == [
        ("speaker", 0, 2),
        ("listener", 2, 2),
    ]
    shards = [AgentShard(ShardSpec(spec, s, [2 * s, 2 * s + 1], info, b"k" * 32)) for s in (0, 1)]
    # Execute: 12 ticks, two episodes of 5 per copy and two PPO updates per shard
    step = host.reset()
    widths = set()
    for _ in range(12):
        decisions = [s.act(step) for s in shards]
        widths.add(tuple(d.shape[1:] for d in decisions))
        step = host.step(*decisions)
    m = host.measure()
    # Assert: each shard's learner has its group's inputs and actions
    assert [s.learning.population.obs_dim for s in shards] == [3, 11]
    assert widths == ({((3,), (5,))} if continuous else {((), ())})
    assert host.decisions[-1].shape == ((4, 5) if continuous else (4,))
    assert m["rl/episodes"] == 4
    assert m["rl/return/speaker"] is not None and m["rl/return/listener"] is not None
    assert all(s.learning.steps() == 2 for s in shards)
    for s in shards:
        s.close()
    host.close()
