"""Sightings: labelled observations relayed hop by hop between neighbours (pure numpy).

A *sighting* is one window of an agent's own observations with the class an operator confirmed
for it: "this is what a sign looked like to me". Weight gossip spreads what agents learned
slowly where the data are uneven: a kind one drone was taught moves into its neighbours'
models only through averaging, diluted by every neighbour that never saw it (on the drone
patrol, 121 s until 90% of the drones recognise a sign first taught to one; BENCHMARKS.md,
Mixing). Sharing a small part of the data itself is the classic remedy for non-IID federated
learning (Zhao et al. 2018, "Federated Learning with Non-IID Data": 5% of the data shared
recovered most of the lost accuracy); here it goes peer to peer, through the same neighbours
and rounds as the weights, and every byte is counted as the devices would send it.

Each agent keeps, per class, the newest sightings it has not passed on yet (its own first
labels and those it received), and every round sends its neighbours up to `per_round` of them,
taking the classes in turn (a rare class is never starved by a common one). A received sighting
is new to an agent when its id (origin agent, tick) is not among those it has seen in the last
`max_age_ticks`; a new one goes into the agent's replay (the caller's learner) and, while it
has travelled fewer than `hops` hops, into its outbox to be passed on. A sighting older than
`max_age_ticks` is neither taken nor passed on, which bounds what an agent remembers of ids.
One agent's sighting reaches an agent d hops away after d rounds (when the outboxes on the way
have room): the knowledge front moves one hop per round, not one averaging step's share.

A sighting carries a label no robust aggregation rule can screen: `swarm validate` refuses
sightings where the scenario has lying agents or a robust rule (swarm/scenario.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Largest magnitude a sighting's observation may hold: far above any sensor's range (features
#: are O(1), pixels are in [0, 1]), it refuses values that would blow up a receiver's model.
MAX_VALUE = 1.0e3


@dataclass(frozen=True)
class Sighting:
    """One labelled observation window: agent `origin` saw `window` (W, D) float32 ending at
    `tick`, of class `cls`; `hops` is how many times it has been passed on (0 at the origin).
    `via`: the agent this copy came from (-1: its holder saw it itself); a holder passes it on
    to every neighbour but that one and the origin, which have it already."""

    origin: int
    tick: int
    cls: int
    hops: int
    window: np.ndarray
    via: int = -1

    def recipients(self, neighbours: Sequence[int]) -> list[int]:
        """The neighbours of its holder that this copy goes to (not back where it came from)."""
        return [j for j in neighbours if j != self.via and j != self.origin]

    @property
    def id(self) -> tuple[int, int]:
        return (self.origin, self.tick)


class SightingRelay:
    """The sightings of the agents one node hosts.

    Args:
        local: global indices of the node's agents (the row order the learner uses).
        neighbours: for each local agent, the global indices of its neighbours.
        n_classes: classes a sighting may have.
        window: the (W, D) shape of a sighting's observation window.
        per_round: sightings an agent sends its neighbours each round.
        hops: how far a sighting travels from its origin.
        max_age_ticks: a sighting older than this is neither taken nor passed on.
    """

    def __init__(
        self,
        *,
        local: Sequence[int],
        neighbours: Mapping[int, Sequence[int]],
        n_classes: int,
        window: tuple[int, int],
        per_round: int,
        hops: int,
        max_age_ticks: int,
    ):
        if per_round < 1 or hops < 1 or max_age_ticks < 1:
            raise ValueError("per_round, hops and max_age_ticks must be >= 1")
        self.local = [int(i) for i in local]
        self.row = {i: r for r, i in enumerate(self.local)}
        self.neighbours = {i: sorted(int(j) for j in neighbours[i]) for i in self.local}
        self.n_classes, self.window = int(n_classes), (int(window[0]), int(window[1]))
        self.per_round, self.hops, self.max_age = int(per_round), int(hops), int(max_age_ticks)
        # per local agent, per class: sightings to pass on, newest first (at most per_round)
        self.outbox: dict[int, list[list[Sighting]]] = {
            i: [[] for _ in range(self.n_classes)] for i in self.local
        }
        self.seen: dict[int, dict[tuple[int, int], int]] = {i: {} for i in self.local}
        """per local agent: id -> tick of every sighting it holds or has passed on."""
        self._pending: list[tuple[int, Sighting]] = []  # (sender, sighting) not yet settled
        self._lock = threading.Lock()  # receive runs on gRPC threads
        self.now = 0  # the newest tick this relay has been told of
        self.taken = 0
        """Sightings received that were new to their agent (went to its replay)."""
        self.duplicates = 0
        """Sightings received that their agent already had (or were too old)."""
        self.sent = 0
        """Sightings sent, one per neighbour (as the devices would send them)."""
        self.lost = 0
        """Sightings in batches another node refused (counted, not retried)."""

    # -- what the local agents saw ---------------------------------------------------------------

    def own(
        self,
        tick: int,
        rows: np.ndarray,
        ticks: np.ndarray,
        classes: np.ndarray,
        windows: np.ndarray,
    ) -> None:
        """New labels of local agents (rows index `local`): each labelled window becomes a
        sighting of its agent, to be passed on from the next round."""
        self.now = max(self.now, int(tick))
        for r, t, c, w in zip(rows, ticks, classes, windows, strict=True):
            s = Sighting(self.local[int(r)], int(t), int(c), 0, np.asarray(w, np.float32))
            self._hold(s.origin, s)

    def _hold(self, agent: int, s: Sighting) -> bool:
        """Remember `s` at `agent`; False if the agent had it already, or it is too old, or
        more than max_age ticks newer than anything this relay has been told of (no honest
        agent is that far ahead; such a one would never age out and would head every outbox)."""
        seen = self.seen[agent]
        if s.id in seen or not self.now - self.max_age <= s.tick <= self.now + self.max_age:
            return False
        seen[s.id] = s.tick
        if s.hops < self.hops:
            box = self.outbox[agent][s.cls]
            box.insert(0, s)
            box.sort(key=lambda x: (-x.tick, x.origin))  # newest first, ties by origin
            del box[self.per_round :]
        return True

    # -- a round ---------------------------------------------------------------------------------

    def outgoing(self, round_: int, tick: int) -> dict[int, list[Sighting]]:
        """What each local agent sends all its neighbours this round (taken from its outbox):
        up to per_round sightings, one class at a time starting at class round_ mod C, newest
        first within a class; hops already counts the hop they are about to make, and via is
        still the agent the sender got each from (its neighbours but that one take it)."""
        self.now = max(self.now, int(tick))
        self._forget()
        out: dict[int, list[Sighting]] = {}
        for i in self.local:
            boxes = self.outbox[i]
            picked: list[Sighting] = []
            order = [(round_ + k) % self.n_classes for k in range(self.n_classes)]
            while len(picked) < self.per_round and any(boxes[c] for c in order):
                for c in order:
                    if boxes[c] and len(picked) < self.per_round:
                        s = boxes[c].pop(0)
                        picked.append(
                            Sighting(s.origin, s.tick, s.cls, s.hops + 1, s.window, s.via)
                        )
            if picked:
                out[i] = picked
        return out

    def receive(self, sender: int, sightings: Sequence[Sighting]) -> None:
        """Sightings sent by agent `sender` (already checked on the wire), held until `settle`:
        thread-safe, and whatever order they arrive in, `settle` takes them in one order."""
        with self._lock:
            self._pending.extend((int(sender), s) for s in sightings)

    def settle(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take what arrived since the last call: each local neighbour of a sender takes the
        sightings new to it (in the order sender, origin, tick, hops), which go to its outbox
        and are returned for the learner: rows (M,) into `local`, classes (M,) and windows
        (M, W, D) float32."""
        with self._lock:
            pending, self._pending = self._pending, []
        pending.sort(key=lambda p: (p[0], p[1].origin, p[1].tick, p[1].hops))
        taken: list[tuple[int, Sighting]] = []
        for sender, sent in pending:
            s = Sighting(sent.origin, sent.tick, sent.cls, sent.hops, sent.window, via=sender)
            for i in self.local:
                if sender not in self.neighbours[i] or i in (sent.via, sent.origin):
                    continue  # not sent to i: i is not a neighbour, or has it already
                if self._hold(i, s):
                    taken.append((i, s))
                else:
                    self.duplicates += 1
        self.taken += len(taken)
        W, D = self.window
        rows = np.array([self.row[i] for i, _ in taken], np.int64)
        classes = np.array([s.cls for _, s in taken], np.int64)
        windows = np.stack([s.window for _, s in taken]) if taken else np.zeros((0, W, D))
        return rows, classes, windows.astype(np.float32)

    def renew(self, agents: Iterable[int]) -> None:
        """Fresh devices in place of local agents (rows): nothing held, nothing seen."""
        for r in agents:
            i = self.local[int(r)]
            self.outbox[i] = [[] for _ in range(self.n_classes)]
            self.seen[i] = {}

    def _forget(self) -> None:
        """Drop the ids (and pending sightings) older than max_age_ticks."""
        oldest = self.now - self.max_age
        for i in self.local:
            seen = self.seen[i]
            for k in [k for k, t in seen.items() if t < oldest]:
                del seen[k]
            for box in self.outbox[i]:
                box[:] = [s for s in box if s.tick >= oldest]

    # -- checkpoints -----------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that restore this relay exactly (between rounds: nothing is pending)."""
        W, D = self.window
        held = [(r, s) for r, i in enumerate(self.local) for box in self.outbox[i] for s in box]
        seen = [(r, o, t) for r, i in enumerate(self.local) for (o, t) in self.seen[i]]
        return {
            "outbox_meta": np.array(
                [(r, s.origin, s.tick, s.cls, s.hops, s.via) for r, s in held], np.int64
            ).reshape(-1, 6),
            "outbox_windows": (
                np.stack([s.window for _, s in held]) if held else np.zeros((0, W, D), np.float32)
            ),
            "seen": np.array(seen, np.int64).reshape(-1, 3),
            "counts": np.array(
                [self.now, self.taken, self.duplicates, self.sent, self.lost], np.int64
            ),
        }

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        for i in self.local:
            self.outbox[i] = [[] for _ in range(self.n_classes)]
            self.seen[i] = {}
        self._pending = []
        for r, o, t in np.asarray(state["seen"], np.int64).tolist():
            self.seen[self.local[r]][(o, t)] = t
        meta = np.asarray(state["outbox_meta"], np.int64).tolist()
        for (r, o, t, c, h, v), w in zip(meta, state["outbox_windows"], strict=True):
            self.outbox[self.local[r]][c].append(Sighting(o, t, c, h, np.asarray(w, np.float32), v))
        for i in self.local:
            for box in self.outbox[i]:
                box.sort(key=lambda x: (-x.tick, x.origin))
        self.now, self.taken, self.duplicates, self.sent, self.lost = (
            int(v) for v in state["counts"]
        )

    def counts(self) -> dict[str, int]:
        """The relay's counts since the run began, as traffic counters."""
        return {
            "sightings_sent": self.sent,
            "sightings_taken": self.taken,
            "sightings_duplicates": self.duplicates,
            "sightings_lost": self.lost,
        }


__all__ = ["MAX_VALUE", "Sighting", "SightingRelay"]
