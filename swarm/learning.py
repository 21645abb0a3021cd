"""A shard's learners for each task: acting, learning and measuring, in the shard's process.

swarm/tasks.py chooses one of these for a run (`Task.learning`); this module loads the
learners (and so torch), which the driver, reading only rows, never imports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from agents.actor_critic import OnlineActorCritic, PolicyPopulation
from agents.learner import OnlineLearner, balanced_accuracy, learner_state, load_learner_state
from agents.population import Population
from swarm.records import Document, Labelled, Probe, ShardMeasure, Step, as_doc

Learner = OnlineLearner | OnlineActorCritic


class Learning(ABC):
    """A shard's learners for one task: act on a tick, and report what they know."""

    #: learners saved in a checkpoint, by name
    learners: dict[str, Learner]

    @property
    @abstractmethod
    def population(self) -> Population | PolicyPopulation:
        """The live models: what the exchange shares."""

    @abstractmethod
    def act(self, step: Step, lo: int, hi: int) -> np.ndarray:
        """This tick's decisions of agents lo..hi-1 (classifications or actions)."""

    def act_twins(self, step: Step, twin: Step, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The decisions of the agents on `step` and of their isolated twins on `twin`, for a
        task whose twins fly a world of their own (Task.twin_world)."""
        raise NotImplementedError(f"{type(self).__name__} has no isolated twins")

    @abstractmethod
    def measure(self, probe: Probe | None, into: ShardMeasure) -> None:
        """Fill in the task's fields of this shard's measurement."""

    @abstractmethod
    def steps(self) -> int:
        """Learning steps taken so far (the live figure learn/steps)."""

    def loss(self) -> np.ndarray | None:
        """The agents' losses at their last learning step (None when not tracked)."""
        return None

    def probe_acc(self, probe: Probe | None) -> np.ndarray:
        """Balanced probe accuracy per agent now (empty without a probe set)."""
        return np.zeros(0)

    def take_example_counts(self) -> np.ndarray:
        """Examples each agent learned from since the last call (weights for aggregation)."""
        return self.learners["learner"].take_example_counts()

    def keep_labelled(self) -> None:
        """From now on keep the sharing agents' labelled windows for `take_labelled`."""
        raise NotImplementedError(f"{type(self).__name__} learns from no labels to relay")

    def take_labelled(self) -> Labelled:
        """What the sharing agents had labelled since the last call, to relay as sightings
        (protocols/sightings.py): only a task whose agents learn from labels has any."""
        raise NotImplementedError(f"{type(self).__name__} learns from no labels to relay")

    def add_sightings(self, rows: np.ndarray, classes: np.ndarray, windows: np.ndarray) -> None:
        """Labelled windows the sharing agents (rows) received from others."""
        raise NotImplementedError(f"{type(self).__name__} learns from no labels to relay")

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """(arrays, scalars) of every learner, names prefixed ("learner.", "shadow.")."""
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, object] = {}
        for name, learner in self.learners.items():
            part, values = learner_state(learner)  # type: ignore[arg-type]  # both kinds
            arrays.update({f"{name}.{k}": v for k, v in part.items()})
            scalars[name] = values
        return arrays, scalars

    def load_state(self, arrays: dict[str, np.ndarray], scalars: Document) -> None:
        for name, learner in self.learners.items():
            part = {k[len(name) + 1 :]: v for k, v in arrays.items() if k.startswith(name + ".")}
            load_learner_state(learner, part, dict(as_doc(scalars[name])))  # type: ignore[arg-type]


class ClassifyLearning(Learning):
    """Each agent classifies what it senses; labels arrive late and for a fraction of reports.
    An isolated twin of each agent (the baseline) never shares: in a run it flies a twin world
    of its own (`act_twins`); called alone (`act`) it learns on the agents' stream."""

    def __init__(
        self,
        learner: OnlineLearner,
        shadow: OnlineLearner | None,
        learn_every: int,
        join_tick: list[int] | None = None,
    ):
        self.learner, self.shadow = learner, shadow
        #: (N,) the tick each agent of the swarm joins with a fresh model (0: from the start)
        self.join_tick = np.asarray(join_tick or [], np.int64)
        self.learners: dict[str, Learner] = {"learner": learner}
        if shadow is not None:
            self.learners["shadow"] = shadow
        self.learn_every = learn_every
        self._loss: np.ndarray | None = None
        self._renewed: list[int] = []  # sharing agents (rows) renewed since take_labelled

    @property
    def population(self) -> Population:
        return self.learner.population

    def act(self, step: Step, lo: int, hi: int) -> np.ndarray:
        out = self._act(self.learner, step, lo, hi, keep_loss=True)
        if self.shadow is not None:  # the twin learns on the same stream
            self._act(self.shadow, step, lo, hi)
        return out

    def act_twins(self, step: Step, twin: Step, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The sharing agents act on `step`, their isolated twins on `twin` (the twin world
        the twins fly themselves); both decisions, for their own worlds."""
        assert self.shadow is not None, "act_twins needs the isolated twins (baseline.isolated)"
        return (
            self._act(self.learner, step, lo, hi, keep_loss=True),
            self._act(self.shadow, twin, lo, hi),
        )

    def _act(
        self, learner: OnlineLearner, step: Step, lo: int, hi: int, *, keep_loss: bool = False
    ) -> np.ndarray:
        """One learner's tick: newcomers renewed, the labels that arrived, a learning step
        every learn_every ticks, and the decisions of agents lo..hi-1."""
        labels = step.labels[(step.labels[:, 0] >= lo) & (step.labels[:, 0] < hi)].copy()
        labels[:, 0] -= lo
        if step.tick:  # newcomers take off with a fresh model
            fresh = np.flatnonzero(self.join_tick[lo:hi] == step.tick).tolist()
            learner.renew(fresh)
            if learner is self.learner:
                self._renewed += fresh
        learner.add_labels(labels)
        if step.tick > 0 and step.tick % self.learn_every == 0:
            stats = learner.learn_step()
            if keep_loss:  # kept for the live metrics (learn/loss)
                self._loss = stats["loss"]
        return learner.act(step.tick, step.obs[lo:hi])

    def measure(self, probe: Probe | None, into: ShardMeasure) -> None:
        assert probe is not None
        windows, labels = probe
        per_class = self.learner.evaluate(windows, labels)
        into.probe_acc = balanced_accuracy(per_class).tolist()
        into.per_class = np.nan_to_num(per_class, nan=-1.0).tolist()
        into.probe_acc_isolated = into.probe_acc
        if self.shadow is not None:
            iso = balanced_accuracy(self.shadow.evaluate(windows, labels)).tolist()
            into.probe_acc_isolated = iso

    def steps(self) -> int:
        return int(self.learner.learn_steps)

    def keep_labelled(self) -> None:
        self.learner.keep_labelled()

    def take_labelled(self) -> Labelled:
        renewed, self._renewed = self._renewed, []
        return Labelled(renewed, *self.learner.take_labelled())

    def add_sightings(self, rows: np.ndarray, classes: np.ndarray, windows: np.ndarray) -> None:
        self.learner.add_sightings(rows, classes, windows)

    def loss(self) -> np.ndarray | None:
        return self._loss

    def probe_acc(self, probe: Probe | None) -> np.ndarray:
        if probe is None:
            return np.zeros(0)
        return np.asarray(balanced_accuracy(self.learner.evaluate(*probe)), np.float64)


class ControlLearning(Learning):
    """Each agent acts on its observations and learns from the rewards (online actor-critic).

    Acting changes what an agent experiences, so an isolated twin cannot live on the same
    stream: compare against a run with gossip.topology: isolated instead."""

    def __init__(self, learner: OnlineActorCritic):
        self.learner = learner
        self.learners = {"learner": learner}

    @property
    def population(self) -> PolicyPopulation:
        return self.learner.population

    def act(self, step: Step, lo: int, hi: int) -> np.ndarray:
        # observations of a world with agent groups are as wide as the widest group's: these
        # agents' own are the first obs_dim numbers of their rows (envs/pz_world.py)
        d = self.learner.obs_dim
        part = [None if a is None else a[lo:hi] for a in (step.rewards, step.done, step.alive)]
        part.append(None if step.truncated is None else step.truncated[lo:hi])
        part.append(None if step.final_obs is None else step.final_obs[lo:hi, :d])
        return self.learner.act(step.obs[lo:hi, :d], *part)

    def measure(self, probe: Probe | None, into: ShardMeasure) -> None:
        into.rl = dict(self.learner.stats)

    def steps(self) -> int:
        return int(self.learner.updates)
