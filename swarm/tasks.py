"""Tasks: what the agents learn to do, and how the run measures it.

A world either labels what the agents sense (classification: the drone patrol's event kinds)
or rewards what they do (reinforcement learning: PettingZoo worlds). Everything that differs
between the two lives in one `Task` class each, on every side of the run:

- the world side (`WorldHost`): what the world says of itself (`describe`) and how one of its
  ticks becomes a `Step` (`first_step`, `step`);
- the shard side (`AgentShard`): the learners it builds (`learning`) and, through them,
  acting, learning and measuring (`Learning`);
- the driver side (`Runner`, `swarm compare`, `swarm run`'s table): the task's part of a
  metrics row (`row`), of the summary (`final`), its headline figure and its table lines.

`task_of_world` and `task_named` are the only places that ask which task a run has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

import numpy as np

from envs.drone_patrol.config import EVENT_CLASSES
from swarm.records import (
    NO_LABELS,
    Document,
    Figure,
    GroupInfo,
    Row,
    ShardMeasure,
    Step,
    WorldInfo,
)

if TYPE_CHECKING:
    # the learners load torch: the driver (which only reads rows) must not
    from envs.drone_patrol.world import DronePatrolWorld, StepResult
    from envs.pz_world import ParallelEnvWorld, RLStepResult
    from swarm.learning import Learning
    from swarm.scenario import Scenario  # which validates against the tasks


#: An agent "recognises" an event kind when its probe accuracy on that kind reaches this.
RECOGNISED = 0.5
#: Knowledge spread of a kind: from its first label anywhere until this share of agents
#: recognise it.
SPREAD_SHARE = 0.9

TableRow = tuple[str, str]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _points(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f} points"


class World(Protocol):
    """What every world offers (envs/): a world of a task offers that task's parts too."""

    obs_dim: int
    agent_ids: list[str]


class Task(ABC):
    """One kind of task, on the world's, the shard's and the driver's side."""

    name: ClassVar[str]
    #: (metrics key, label) of the figure a run is judged by (`swarm compare`)
    headline: ClassVar[tuple[str, str]]
    #: the metrics row key whose course over the run `swarm compare` plots
    curve: ClassVar[str]
    #: whether the headline is a share (0..1), so that "x% of the centralized learner's"
    #: means something (a return can be negative)
    headline_is_a_share: ClassVar[bool] = False
    #: whether the shards measure the agents on a held-out probe set from the world
    needs_probe: ClassVar[bool] = False
    #: whether its learners can be checkpointed (and so resumed, or restored after a kill)
    checkpoints: ClassVar[bool] = False
    #: whether the isolated baseline (baseline.isolated) flies a twin world of its own: the
    #: same world (seed, events), driven by the isolated twins' decisions, so the baseline's
    #: task figures are what an isolated swarm does (keys `<figure>_isolated`)
    twin_world: ClassVar[bool] = False
    #: whether its agents learn from labelled windows they can relay as sightings
    #: (gossip.sightings, protocols/sightings.py)
    labelled: ClassVar[bool] = False

    # -- the world's side --------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def describe(world: World) -> WorldInfo: ...

    @staticmethod
    @abstractmethod
    def first_step(world: World, obs: np.ndarray) -> Step: ...

    @staticmethod
    @abstractmethod
    def step(result: StepResult | RLStepResult, first_label: dict[int, int]) -> Step:
        """The Step of one world tick; records in `first_label` when a class was first
        labelled."""

    # -- the shard's side --------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def learning(
        sc: Scenario, n_agents: int, info: WorldInfo, *, pooled: bool, twins: bool
    ) -> Learning:
        """The shard's learners. pooled: one model trained on everyone's data (centralized);
        twins: isolated shadow learners on the same stream, as the baseline."""

    # -- the driver's side -------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def row(
        shards: list[ShardMeasure], info: WorldInfo, byzantine: frozenset[int], into: Row
    ) -> None:
        """Add the task's figures (and per-agent figures) to a metrics row."""

    @staticmethod
    @abstractmethod
    def final(
        rows: list[Row], info: WorldInfo, first_labels: dict[int, int], sc: Scenario
    ) -> dict[str, Figure]:
        """The task's figures added to the last row for the summary."""

    @staticmethod
    @abstractmethod
    def table(metrics: dict[str, Figure], isolated_baseline: bool) -> list[TableRow]:
        """The task's lines of `swarm run`'s final table."""


# -- classification ---------------------------------------------------------------------------


class Classification(Task):
    name = "classify"
    headline = ("learn/probe_acc", "probe accuracy")
    curve = "learn/probe_acc"
    needs_probe = True
    checkpoints = True
    headline_is_a_share = True
    twin_world = True
    labelled = True

    @staticmethod
    def describe(world: World) -> WorldInfo:
        world = cast("DronePatrolWorld", world)  # the world kinds that label (WORLD_TASKS)
        inputs: Document = {"vector_dim": world.obs_dim}
        if hasattr(world, "input_config"):  # a world whose sensors deliver more than a vector
            inputs = dict(world.input_config())
        return WorldInfo(
            task=Classification.name,
            obs_dim=world.obs_dim,
            agent_ids=list(world.agent_ids),
            inputs=inputs,
            n_classes=world.n_classes,
            classes=list(EVENT_CLASSES),
            join_tick=world.join_ticks(),
        )

    @staticmethod
    def _twin_lines(m: dict[str, Figure]) -> list[TableRow]:
        """What the swarm did against what its isolated twins did in their own world."""
        lines: list[TableRow] = []
        twin = m.get("task/score_isolated")
        if twin is not None:
            gain = (m.get("task/score") or 0.0) - twin
            lines.append(("task score, isolated twins", f"{twin:.3f}"))
            lines.append(("task gain from sharing", f"{gain:+.3f}"))
        if m.get("task/first_encounters"):
            iso = m.get("task/first_encounter_recall_isolated")
            lines.append(
                (
                    "first-encounter recall (kinds never taught)",
                    f"{_pct(m.get('task/first_encounter_recall'))} of "
                    f"{m['task/first_encounters']:.0f}"
                    + ("" if iso is None else f" · isolated twins {_pct(iso)}"),
                )
            )
        return lines

    @staticmethod
    def first_step(world: World, obs: np.ndarray) -> Step:
        return Step(0, obs, NO_LABELS)

    @staticmethod
    def step(result: StepResult | RLStepResult, first_label: dict[int, int]) -> Step:
        result = cast("StepResult", result)  # the world kinds that label (WORLD_TASKS)
        for cls in np.unique(result.labels[:, 2]).tolist():
            first_label.setdefault(int(cls), result.tick)
        return Step(result.tick, result.obs, result.labels)

    @staticmethod
    def learning(
        sc: Scenario, n_agents: int, info: WorldInfo, *, pooled: bool, twins: bool
    ) -> Learning:
        from agents.learner import OnlineLearner  # torch: in the shard's process only
        from swarm.learning import ClassifyLearning  # the same: learning.py imports agents

        def build() -> OnlineLearner:
            return OnlineLearner(
                sc.model, sc.learning, n_agents, info.model_inputs, info.n_classes, seed=sc.seed
            )

        learner = build()
        # the upper bound: one model for everyone, trained on all agents' data
        learner.population.pooled = pooled
        # The isolated baseline: same observations, same labels, same seed, never shares.
        shadow = build() if twins else None
        return ClassifyLearning(learner, shadow, sc.learning.learn_every, info.join_tick)

    @staticmethod
    def row(
        shards: list[ShardMeasure], info: WorldInfo, byzantine: frozenset[int], into: Row
    ) -> None:
        acc = np.concatenate([m.probe_acc for m in shards])
        iso = np.concatenate([m.probe_acc_isolated for m in shards])
        per_class = np.concatenate([np.asarray(m.per_class) for m in shards])
        present = per_class >= 0
        class_acc = np.where(present, per_class, 0).sum(0) / np.maximum(present.sum(0), 1)
        row = into.figures
        if byzantine:  # what the liars did to everyone else
            agents = np.concatenate([m.agents for m in shards])
            honest = ~np.isin(agents, sorted(byzantine))
            row["learn/probe_acc_honest"] = float(acc[honest].mean())
        row["learn/probe_acc"] = float(acc.mean())
        row["learn/probe_acc_min"] = float(acc.min())
        row["learn/probe_acc_isolated"] = float(iso.mean())
        for c, name in enumerate(info.classes):
            row[f"learn/class_acc/{name}"] = float(class_acc[c])
            if c > 0:  # knowledge spread: the share of agents that recognise the event kind
                row[f"learn/recognised/{name}"] = float(np.mean(per_class[:, c] >= RECOGNISED))
        into.agents["learn/probe_acc"] = [round(float(a), 6) for a in acc]
        into.agents["learn/probe_acc_isolated"] = [round(float(a), 6) for a in iso]
        # what each agent knows: the event kinds it recognises (the replay colours by it)
        known = (per_class[:, 1:] >= RECOGNISED).sum(1)
        into.agents["learn/kinds_recognised"] = [int(k) for k in known]

    @staticmethod
    def final(
        rows: list[Row], info: WorldInfo, first_labels: dict[int, int], sc: Scenario
    ) -> dict[str, Figure]:
        last = rows[-1]
        out: dict[str, Figure] = {
            "learn/sharing_gain": last.value("learn/probe_acc")
            - last.value("learn/probe_acc_isolated")
        }
        out.update(spread(rows, info.classes, first_labels, sc.world.tick_s))
        out.update(newcomer_figures(rows, info.join_tick, sc))
        out.update(continual_figures(rows, info.classes, first_labels, sc))
        return out

    @staticmethod
    def table(metrics: dict[str, Figure], isolated_baseline: bool) -> list[TableRow]:
        m = metrics
        lines = [
            ("task score", f"{m.get('task/score', float('nan')):.3f}"),
            *Classification._twin_lines(m),
            ("detection F1", f"{m.get('task/f1', float('nan')):.3f}"),
            (
                "altitude-limit violations",
                f"{m.get('task/altitude_violations', 0):.0f} of "
                f"{m.get('task/sign_passages', 0):.0f} sign passages",
            ),
            ("collisions", f"{m.get('task/collisions', 0):.0f}"),
            ("cruise points visited (last tour)", _pct(m.get("task/point_coverage"))),
            ("probe accuracy, sharing", _pct(m["learn/probe_acc"])),
        ]
        if isolated_baseline:
            lines.append(("probe accuracy, isolated", _pct(m["learn/probe_acc_isolated"])))
            lines.append(("probe gain from sharing", _points(m["learn/sharing_gain"])))
        else:
            lines.append(("probe accuracy, isolated", "not measured (baseline.isolated)"))
        if "learn/newcomer_catchup_s" in m:
            lines.append(("newcomer reaches 90% of the swarm's accuracy", _catch_up(m)))
        if m.get("learn/acc") is not None:
            bwt = _points(m.get("learn/bwt") or 0.0)
            lines.append(("event kinds: final accuracy / BWT", f"{_pct(m['learn/acc'])} / {bwt}"))
        return lines


def _catch_up(m: dict[str, Figure]) -> str:
    def one(suffix: str) -> str:
        s = m.get(f"learn/newcomer_catchup_s{suffix}")
        r = m.get(f"learn/newcomer_catchup_rounds{suffix}")
        return "not within the run" if s is None or r is None else f"{s:.0f} s ({r:.0f} rounds)"

    twin = "learn/newcomer_catchup_s_isolated" in m
    return one("") + (f" · isolated twin: {one('_isolated')}" if twin else "")


def spread(
    rows: list[Row], classes: list[str], first_labels: dict[int, int], tick_s: float
) -> dict[str, Figure]:
    """Per event kind: when its first label arrived anywhere (s), and how long after that
    SPREAD_SHARE of the agents recognised it (s; None if they never did)."""
    out: dict[str, Figure] = {}
    for c, name in enumerate(classes):
        if c == 0 or c not in first_labels:
            continue
        first = first_labels[c] * tick_s
        out[f"learn/first_label_s/{name}"] = first
        reached = [
            r.sim_time_s
            for r in rows
            if r.sim_time_s >= first and r.value(f"learn/recognised/{name}") >= SPREAD_SHARE
        ]
        out[f"learn/spread_s/{name}"] = reached[0] - first if reached else None
    return out


#: A newcomer has caught up once its probe accuracy reaches this share of the swarm's.
CATCH_UP_SHARE = 0.9


def catch_up_tick(rows: list[Row], key: str, join: list[int]) -> dict[int, int | None]:
    """For each agent that joins later (join tick > 0): the first metrics row after its join
    at which its `key` (a per-agent figure) reaches CATCH_UP_SHARE of the mean over the
    agents there from the start; ticks after the join, None if it never does in the run."""
    first = [i for i, t in enumerate(join) if t == 0]
    out: dict[int, int | None] = {}
    for j, t in enumerate(join):
        if t == 0:
            continue
        out[j] = None
        for r in rows:
            acc = r.agents.get(key)
            # a row at tick r.tick measures after the acts of ticks < r.tick; the newcomer's
            # fresh model acts from tick t on
            if r.tick <= t or not acc or not first:
                continue
            if acc[j] >= CATCH_UP_SHARE * float(np.mean([acc[i] for i in first])):
                out[j] = r.tick - t
                break
    return out


def newcomer_figures(rows: list[Row], join: list[int], sc: Scenario) -> dict[str, Figure]:
    """How long the agents that join mid-run with a fresh model take to know what the swarm
    knows: `learn/newcomer_catchup_s` (simulated s from the join to the first metrics row at
    which each reaches CATCH_UP_SHARE of the swarm's mean probe accuracy; the slowest newcomer)
    and `learn/newcomer_catchup_rounds` (the same in gossip rounds); `..._isolated` for their
    isolated twins against the isolated twins. None: not within the run (or no newcomer)."""
    out: dict[str, Figure] = {}
    if not any(join):
        return out
    for key, suffix in (("learn/probe_acc", ""), ("learn/probe_acc_isolated", "_isolated")):
        ticks = list(catch_up_tick(rows, key, join).values())
        slowest = None if None in ticks else max(t for t in ticks if t is not None)
        out[f"learn/newcomer_catchup_s{suffix}"] = (
            None if slowest is None else slowest * sc.world.tick_s
        )
        out[f"learn/newcomer_catchup_rounds{suffix}"] = (
            None if slowest is None else slowest / sc.gossip.interval
        )
    return out


def continual_figures(
    rows: list[Row], classes: list[str], first_labels: dict[int, int], sc: Scenario
) -> dict[str, Figure]:
    """The swarm's continual-learning figures over the event kinds, each kind a "task" that
    starts with its first label (swarm-mean probe accuracy per kind, `learn/class_acc/<kind>`):

    - ``learn/acc``: average final accuracy over the kinds labelled during the run;
    - ``learn/bwt``: backward transfer, mean over those kinds of (final accuracy - best accuracy
      reached after the kind's first label): 0 when nothing learnt was lost, negative when the
      swarm forgot (Lopez-Paz & Ranzato 2017 measure against the accuracy right after the task;
      with kinds that overlap in time, the best accuracy reached is that reference).
    """
    final, back = [], []
    for c, name in enumerate(classes):
        if c == 0 or c not in first_labels:
            continue
        t0 = first_labels[c] * sc.world.tick_s
        acc = [r.value(f"learn/class_acc/{name}") for r in rows if r.sim_time_s >= t0]
        if not acc:
            continue
        final.append(acc[-1])
        back.append(acc[-1] - max(acc))
    return {
        "learn/acc": float(np.mean(final)) if final else None,
        "learn/bwt": float(np.mean(back)) if back else None,
    }


# -- reinforcement learning -------------------------------------------------------------------


class Reinforcement(Task):
    name = "rl"
    headline = ("rl/team_return_last", "team return (last quarter)")
    curve = "rl/team_return"

    @staticmethod
    def describe(world: World) -> WorldInfo:
        world = cast("ParallelEnvWorld", world)  # the world kinds that reward (WORLD_TASKS)
        groups = [
            GroupInfo(
                name=g.name,
                first=g.first,
                count=g.count,
                obs_dim=g.obs_dim,
                n_actions=g.n_actions,
                action_dim=g.action_dim,
                action_low=[float(v) for v in g.action_low],
                action_high=[float(v) for v in g.action_high],
            )
            for g in world.groups
        ]
        # with several groups a copy's agents are not one range of the swarm, and a shard
        # hosts part of a group, not whole copies: the world steps as a whole
        whole_copies = world.cfg.pipeline and len(groups) == 1
        return WorldInfo(
            task=Reinforcement.name,
            obs_dim=world.obs_dim,
            agent_ids=list(world.agent_ids),
            n_actions=world.n_actions,
            action_dim=world.action_dim,
            action_low=[float(v) for v in world.action_low],
            action_high=[float(v) for v in world.action_high],
            per_copy=world.per_copy if whole_copies else 0,
            groups=groups,
        )

    @staticmethod
    def first_step(world: World, obs: np.ndarray) -> Step:
        world = cast("ParallelEnvWorld", world)
        n = len(obs)
        return Step(0, obs, NO_LABELS, np.zeros(n, np.float32), None, world.alive.copy())

    @staticmethod
    def step(result: StepResult | RLStepResult, first_label: dict[int, int]) -> Step:
        result = cast("RLStepResult", result)
        return Step(
            result.tick,
            result.obs,
            NO_LABELS,
            result.rewards,
            result.done,
            result.alive,
            result.truncated,
            result.final_obs,
        )

    @staticmethod
    def learning(
        sc: Scenario, n_agents: int, info: WorldInfo, *, pooled: bool, twins: bool
    ) -> Learning:
        # torch: in the shard's process only
        from agents.actor_critic import ActionBox, OnlineActorCritic
        from swarm.learning import ControlLearning  # the same: learning.py imports agents

        actions: int | ActionBox = info.n_actions  # Discrete(n)
        if info.action_dim:  # a Box: a Gaussian policy within its bounds
            actions = ActionBox(tuple(info.action_low), tuple(info.action_high))
        learner = OnlineActorCritic(
            sc.model, sc.learning, sc.rl, n_agents, info.obs_dim, actions, seed=sc.seed
        )
        learner.population.pooled = pooled
        return ControlLearning(learner)

    @staticmethod
    def row(
        shards: list[ShardMeasure], info: WorldInfo, byzantine: frozenset[int], into: Row
    ) -> None:
        stats = [m.rl for m in shards if m.rl]
        for key in ("entropy", "value_loss", "approx_kl", "clip_frac"):
            into.figures[f"rl/{key}"] = float(np.mean([s[key] for s in stats])) if stats else None

    @staticmethod
    def final(
        rows: list[Row], info: WorldInfo, first_labels: dict[int, int], sc: Scenario
    ) -> dict[str, Figure]:
        # one interval's episodes are few: summarise the first and last quarter of the run
        first, last = _quarters(rows, "rl/team_return")
        out: dict[str, Figure] = {"rl/team_return_first": first, "rl/team_return_last": last}
        for g in info.groups if len(info.groups) > 1 else []:  # each side of the game apart
            first, last = _quarters(rows, f"rl/return/{g.name}")
            out[f"rl/return_first/{g.name}"] = first
            out[f"rl/return_last/{g.name}"] = last
        return out

    @staticmethod
    def table(metrics: dict[str, Figure], isolated_baseline: bool) -> list[TableRow]:
        m = metrics
        lines = [
            ("episodes", _num(m.get("rl/episodes"), ".0f")),
            ("team return, first quarter", _num(m.get("rl/team_return_first"))),
            ("team return, last quarter", _num(m.get("rl/team_return_last"))),
        ]
        prefix = "rl/return_first/"
        for key in sorted(k for k in m if k.startswith(prefix)):
            group = key[len(prefix) :]
            lines.append(
                (
                    f"{group}: return per agent, first -> last quarter",
                    f"{_num(m[key])} -> {_num(m.get(f'rl/return_last/{group}'))}",
                )
            )
        lines.append(("policy entropy (nats)", _num(m.get("rl/entropy"), ".3f")))
        return lines


def _quarters(rows: list[Row], key: str) -> tuple[Figure, Figure]:
    """The mean of a row figure over the first and over the last quarter of the rows that
    have it (None, None when none has)."""
    values = [r.value(key) for r in rows if r.get(key) is not None]
    q = max(1, len(values) // 4)
    if not values:
        return None, None
    return float(np.mean(values[:q])), float(np.mean(values[-q:]))


# -- the factory ------------------------------------------------------------------------------

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Reinforcement)}
#: The task each world kind poses (scenario `world.kind`): the drone patrol labels what its
#: drones sense; a PettingZoo world rewards what its agents do.
WORLD_TASKS: dict[str, type[Task]] = {"drone_patrol": Classification, "pettingzoo": Reinforcement}


def task_of_world(kind: str) -> type[Task]:
    """The task a world of this kind poses."""
    try:
        return WORLD_TASKS[kind]
    except KeyError:
        raise ValueError(f"unknown world kind {kind!r}; known: {', '.join(WORLD_TASKS)}") from None


def task_named(name: str) -> type[Task]:
    """The task of this name (WorldInfo.task, summary.json `task`)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
