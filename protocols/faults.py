"""Seeded, reproducible fault injection: what goes wrong, where and when (pure logic).

A scenario's `faults:` section (`FaultsConfig`) says what to inject; a `FaultPlan` built from
it, the number of agents and a seed answers every question a runner asks while it runs:

- `fate(round_, sender, receiver, attempt)`: what happens to one message, i.e. one agent's
  delta (or snapshot) to one receiving node: deliver, drop, duplicate or delay it;
- `partitioned(tick, a, b)`: whether a network partition separates agents a and b;
- `kills_at(tick)`: which shard actors to kill (Ray restarts them);
- `byzantine`, `corrupt(agent, round_, q)` and `corrupt_delta`: which agents lie, and how.

Every answer is a pure function of the seed and its arguments, never of call order, thread
or process: each draw seeds its own Philox stream (numpy's default bit generator) from a
SeedSequence of (stream tag, seed, arguments...). A receiver name enters that key as its
CRC-32 (zlib.crc32), which is stable across processes, unlike Python's salted hash(). So every
shard decides the same fate for the same message, in every run with the same seed.

Attacks (`Byzantine.attack`) replace an agent's compressed delta q before it is sent:

    sign_flip   -scale * q
    scale        scale * q
    noise        noise_std * N(0, I): Gaussian noise of that absolute std per coordinate,
                 independent of q (drawn per (seed, agent, round))

A Byzantine agent otherwise runs the protocol honestly: it learns and mixes like everyone,
updates its own public copy with the true q and lies only on the wire, so its neighbours'
copies of it drift away from its real one. Snapshots are sent truthfully (`corrupt_delta`
leaves them alone): they only flow on resynchronisation (protocols/gossip.py), a lie in the
deltas already moves a neighbour's copy anywhere, and an honest snapshot merely resets that
copy once; so this attacker is slightly weaker than a worst-case one.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from protocols.compression import compress
from protocols.config import CompressionConfig
from protocols.delta import Delta
from protocols.gossip import agent_index
from swarm._config import MAX_AGENT_INDEX, MAX_TICK, Section

# Stream tags: the first word of every SeedSequence key, so the draws of different questions
# are independent even when their other key words coincide.
_FATE, _SELECT, _CORRUPT = 1, 2, 3
_U64 = (1 << 64) - 1

#: The largest factor or std an attack may use: 1e30 times a delta already overflows every
#: neighbour's float32 weights (tests/test_run.py), and past float32's 3.4e38 the factor
#: itself would be inf.
MAX_ATTACK = 1e30
AgentIndex = Annotated[int, Field(ge=0, le=MAX_AGENT_INDEX)]


class MessageFaults(Section):
    """Faults applied independently to every message: one agent's delta (or snapshot) to one
    receiving node."""

    drop: float = Field(0.0, ge=0, le=1)
    """Fraction of messages lost."""
    duplicate: float = Field(0.0, ge=0, le=1)
    """Fraction of messages delivered twice."""
    delay: float = Field(0.0, ge=0, le=1)
    """Fraction of messages held back `delay_rounds` gossip rounds."""
    delay_rounds: int = Field(1, ge=1, le=MAX_TICK)
    """Gossip rounds a delayed message is held back; at most MAX_TICK (2^40), the longest
    run."""

    @model_validator(mode="after")
    def _at_most_one_fault(self) -> MessageFaults:
        total = self.drop + self.duplicate + self.delay
        if total > 1 + 1e-12:  # the fates partition [0, 1): one message has one fate
            raise ValueError(
                f"faults.messages: drop + duplicate + delay must be <= 1, got {total:g}"
            )
        return self

    @property
    def active(self) -> bool:
        """Whether any message fault is injected."""
        return self.drop + self.duplicate + self.delay > 0


class Partition(Section):
    """A network partition: messages between its groups are lost in [from_tick, to_tick)."""

    from_tick: int = Field(ge=0, le=MAX_TICK)
    """First tick of the partition; at most MAX_TICK (2^40), the longest run."""
    to_tick: int = Field(ge=1, le=MAX_TICK)
    """The partition heals at this tick (exclusive end); at most MAX_TICK."""
    groups: list[list[AgentIndex]] | None = None
    """Agent indices of each side (at most MAX_AGENT_INDEX, 200,000); the agents not listed
    form one more group."""
    split: int | None = Field(None, ge=2, le=MAX_AGENT_INDEX)
    """Or: agents 0..n-1 cut into this many contiguous blocks (sizes differ by at most one,
    as numpy.array_split cuts them); at most MAX_AGENT_INDEX, more blocks than any swarm has
    agents."""

    @model_validator(mode="after")
    def _one_shape(self) -> Partition:
        if self.to_tick <= self.from_tick:
            raise ValueError(
                f"faults.partitions: to_tick ({self.to_tick}) must be > from_tick "
                f"({self.from_tick})"
            )
        if (self.groups is None) == (self.split is None):
            raise ValueError("faults.partitions: give exactly one of groups and split")
        if self.groups is not None:  # each index is in [0, MAX_AGENT_INDEX] (AgentIndex)
            listed = [a for g in self.groups for a in g]
            if len(set(listed)) != len(listed):
                raise ValueError(f"faults.partitions: an agent is in two groups: {self.groups}")
        return self

    def active_at(self, tick: int) -> bool:
        """Whether the partition is in force at `tick`."""
        return self.from_tick <= tick < self.to_tick


class KillShard(Section):
    """Kill one shard actor's process at one tick; Ray restarts it (a crash-restart test)."""

    shard: int = Field(ge=0, le=MAX_AGENT_INDEX)
    """Index of the shard actor; at most MAX_AGENT_INDEX, since a shard hosts an agent at
    least."""
    at_tick: int = Field(ge=1, le=MAX_TICK)
    """Tick at which it is killed; at most MAX_TICK (2^40), the longest run."""


class Byzantine(Section):
    """Agents that lie in the deltas they send (see the module docstring for the attacks)."""

    agents: list[AgentIndex] = []
    """These agents lie (indices at most MAX_AGENT_INDEX, 200,000) ..."""
    fraction: float = Field(0.0, ge=0, le=0.5)
    """... or this fraction of all agents, round(fraction * n) (half up), chosen with the
    faults seed."""
    attack: Literal["sign_flip", "scale", "noise"] = "sign_flip"
    """sign_flip sends -scale * q instead of the delta q; scale sends scale * q; noise sends
    Gaussian noise of std noise_std per coordinate (absolute, independent of q)."""
    scale: float = Field(10.0, gt=0, le=MAX_ATTACK)
    """Factor of sign_flip (-scale * q) and scale (scale * q); at most MAX_ATTACK (1e30)."""
    noise_std: float = Field(1.0, gt=0, le=MAX_ATTACK)
    """Standard deviation per coordinate of the noise attack; at most MAX_ATTACK (1e30)."""

    @model_validator(mode="after")
    def _one_choice(self) -> Byzantine:
        if self.agents and self.fraction > 0:
            raise ValueError("faults.byzantine: give agents or fraction, not both")
        if len(set(self.agents)) != len(self.agents):  # each in [0, MAX_AGENT_INDEX]
            raise ValueError(f"faults.byzantine: agents must be distinct, got {self.agents}")
        return self

    @property
    def active(self) -> bool:
        """Whether any agent is asked to lie."""
        return bool(self.agents) or self.fraction > 0


class FaultsConfig(Section):
    """What goes wrong during a run; the default injects nothing."""

    seed: int | None = Field(None, ge=0, le=_U64)
    """Seed of every fault decision; None: the scenario's seed. Below 2^64: the draws keep 64
    bits of it (`_key`), so a larger seed would repeat a smaller one's faults."""
    messages: MessageFaults = MessageFaults()
    """Per-message loss, duplication and delay."""
    partitions: list[Partition] = []
    """Network partitions between groups of agents."""
    kill: list[KillShard] = []
    """Shard actors to kill."""
    byzantine: Byzantine = Byzantine()
    """Agents that lie."""

    @property
    def active(self) -> bool:
        """Whether anything is injected."""
        return (
            self.messages.active
            or bool(self.partitions)
            or bool(self.kill)
            or self.byzantine.active
        )


@dataclass(frozen=True)
class Fate:
    """What happens to one message: delivered, dropped, delivered twice, or delivered
    `rounds` gossip rounds late (delay only; 0 otherwise)."""

    kind: Literal["deliver", "drop", "duplicate", "delay"]
    rounds: int = 0


DELIVER = Fate("deliver")
DROP = Fate("drop")
DUPLICATE = Fate("duplicate")


def _key(*words: int) -> list[int]:
    """SeedSequence entropy must be non-negative: fold every word into 64 bits."""
    return [int(w) & _U64 for w in words]


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(_key(*words))))


class FaultPlan:
    """The faults of one run, decided from (config, n_agents, seed) alone.

    Args:
        config: the scenario's `faults:` section.
        n_agents: number of agents in the swarm (indices 0..n-1).
        seed: the scenario's seed, used unless `config.seed` is set.

    Raises ValueError when the config names an agent >= n_agents or splits into more blocks
    than there are agents.
    """

    def __init__(self, config: FaultsConfig, n_agents: int, seed: int):
        if n_agents < 1:
            raise ValueError(f"faults: need at least one agent, got {n_agents}")
        self.config = config
        self.n_agents = int(n_agents)
        self.seed = int(seed if config.seed is None else config.seed)
        m = config.messages
        # Cumulative thresholds of one uniform draw u: [0, drop) drop, then duplicate, delay.
        self._cuts = (m.drop, m.drop + m.duplicate, m.drop + m.duplicate + m.delay)
        self._sides: list[tuple[Partition, np.ndarray]] = [
            (p, self._side_of(p, k)) for k, p in enumerate(config.partitions)
        ]
        self.byzantine: frozenset[int] = self._choose_byzantine(config.byzantine)
        """The agents that lie (resolved from `agents` or `fraction`)."""

    # -- messages ------------------------------------------------------------------------------

    def fate(self, round_: int, sender: int, receiver: str, attempt: int = 0) -> Fate:
        """The fate of agent `sender`'s message of gossip round `round_` to node `receiver`;
        `attempt` counts re-sends of the same message (each gets its own fate)."""
        if self._cuts[2] <= 0:
            return DELIVER
        crc = zlib.crc32(receiver.encode())
        u = float(_rng(_FATE, self.seed, round_, sender, crc, attempt).random())
        drop, duplicate, delay = self._cuts
        if u < drop:
            return DROP
        if u < duplicate:
            return DUPLICATE
        if u < delay:
            return Fate("delay", self.config.messages.delay_rounds)
        return DELIVER

    # -- partitions ----------------------------------------------------------------------------

    def _side_of(self, p: Partition, k: int) -> np.ndarray:
        """(n,) group index of every agent under partition p."""
        n = self.n_agents
        if p.split is not None:
            if p.split > n:
                raise ValueError(
                    f"faults.partitions[{k}]: split {p.split} is more blocks than {n} agents"
                )
            side = np.empty(n, dtype=np.int64)
            for g, block in enumerate(np.array_split(np.arange(n), p.split)):
                side[block] = g
            return side
        assert p.groups is not None  # the validator demands exactly one of groups, split
        side = np.full(n, len(p.groups), dtype=np.int64)  # the unlisted agents' group
        for g, members in enumerate(p.groups):
            for a in members:
                if a >= n:
                    raise ValueError(
                        f"faults.partitions[{k}]: agent {a} is out of range (n = {n} agents)"
                    )
                side[a] = g
        return side

    def partitioned(self, tick: int, a: int, b: int) -> bool:
        """Whether agents a and b are on different sides of a partition in force at `tick`."""
        return any(p.active_at(tick) and side[a] != side[b] for p, side in self._sides)

    # -- shard kills ---------------------------------------------------------------------------

    def kills_at(self, tick: int) -> list[int]:
        """Shards to kill at `tick`, ascending, each once."""
        return sorted({k.shard for k in self.config.kill if k.at_tick == tick})

    # -- Byzantine agents ----------------------------------------------------------------------

    def _choose_byzantine(self, cfg: Byzantine) -> frozenset[int]:
        n = self.n_agents
        if cfg.agents:
            out = [a for a in cfg.agents if a >= n]
            if out:
                raise ValueError(
                    f"faults.byzantine: agents {out} are out of range (n = {n} agents)"
                )
            return frozenset(cfg.agents)
        count = math.floor(cfg.fraction * n + 0.5)  # round half up
        if count == 0:
            return frozenset()
        chosen = _rng(_SELECT, self.seed).choice(n, size=count, replace=False)
        return frozenset(int(a) for a in chosen)

    def corrupt(self, agent: int, round_: int, q: np.ndarray) -> np.ndarray:
        """What Byzantine `agent` sends instead of its delta q in round `round_` (float32, q's
        shape); deterministic per (seed, agent, round_). Applies the attack whether or not
        `agent` is in `byzantine`: the caller decides who lies."""
        cfg = self.config.byzantine
        q = np.asarray(q, dtype=np.float32)
        if cfg.attack == "sign_flip":
            return (np.float32(-cfg.scale) * q).astype(np.float32)
        if cfg.attack == "scale":
            return (np.float32(cfg.scale) * q).astype(np.float32)
        noise = _rng(_CORRUPT, self.seed, agent, round_).standard_normal(q.shape)
        return (cfg.noise_std * noise).astype(np.float32)


def corrupt_delta(delta: Delta, plan: FaultPlan, compression: CompressionConfig) -> Delta:
    """The delta a Byzantine sender puts on the wire instead of `delta`.

    The payload is decoded, corrupted by `plan.corrupt` and compressed again with
    `compression` (the run's, so the lie has the honest deltas' size and encoding); `norm` is
    recomputed as `ChocoGossip.make_deltas` does (receivers check it), every other field is
    kept. Deltas of honest senders and snapshots are returned unchanged (see the module
    docstring for why snapshots stay truthful).
    """
    agent = agent_index(delta.sender)
    if delta.snapshot or agent not in plan.byzantine:
        return delta
    payload = compress(plan.corrupt(agent, delta.round, delta.payload.decode()), compression)
    q = payload.decode()
    return dataclasses.replace(
        delta, payload=payload, norm=float(np.linalg.norm(q.astype(np.float64)))
    )


__all__ = [
    "DELIVER",
    "DROP",
    "DUPLICATE",
    "Byzantine",
    "Fate",
    "FaultPlan",
    "FaultsConfig",
    "KillShard",
    "MessageFaults",
    "Partition",
    "corrupt_delta",
]
