"""Decentralized gossip of knowledge deltas: CHOCO-Gossip over a mixing matrix (pure logic).

One `ChocoGossip` serves one node (an AgentShard actor or a device) hosting some of the
agents. Per agent i it keeps a *public copy* xhat_i, the version of x_i that its neighbours
know. A round (Koloskova et al. 2019, Algorithm 1 with a general compressor Q):

    q_i      = Q(x_i - xhat_i)                 # the knowledge delta: learned since last share
    xhat_i  += q_i      (on the sender and on every node holding a copy of xhat_i)
    x_i     += gamma * sum_j W_ij (xhat_j - xhat_i)

With Q = identity and gamma = 1 this is plain gossip x <- W x. Each node keeps one copy of the
public vector of every agent that neighbours one of its agents; a copy starts at the common
initial weights x0 and only ever changes by received deltas, applied in version order.

Resynchronisation. The scheme needs every copy of xhat_i to equal the sender's own, which a
restart or a late joiner breaks. Two fields repair it: the *epoch* of a public copy (the
sender's incarnation: a restarted node uses a new, larger one, since the versions it produces
after the restart differ from those it sent before) and the *snapshot*, a message carrying the
whole xhat_i. A receiver tracks, per remote agent, (epoch, next version) and accepts

- a delta of the known epoch whose base_version is the next version;
- a snapshot of a newer epoch, or of the known epoch at a version not older than the copy's
  (so a replayed old snapshot cannot roll a copy back).

Convention: a snapshot with base_version v *is* version v of its epoch (the sender's version
counter when it was taken), so the next delta has base_version v. Everything else is refused
STALE (-> gRPC FAILED_PRECONDITION) with what the receiver holds; the sender answers with
`make_snapshots`. A restarted node sends its own snapshots first (its deltas of a new epoch
are refused until one has arrived) and learns its neighbours' copies from the snapshots they
send when its STALE refusals reach them. `state` / `load_state` checkpoint all of it.

Thread model: `receive` runs on gRPC server threads, `make_deltas` / `apply` / `state` on the
owner's thread; a lock guards the inbox, the acceptance counters and the active flags. Pending
deltas are applied in acceptance order, which per sender is version order; deltas of
different senders touch different copies, so their interleaving cannot change the result and
a seeded sync-mode run (apply after a barrier) stays reproducible.

Robust consensus (`RobustConfig`). A Byzantine neighbour j can send any q_j, so every copy of
xhat_j may sit anywhere and the plain step pulls x_i towards it. Two replacements of the step
bound its pull; both see only the active neighbours, like the plain one:

- clip (ClippedGossip, He, Karimireddy, Jaggi 2022, arXiv 2202.01545):
  x_i += gamma * sum_j W_ij clip(xhat_j - xhat_i, tau_i), clip(z, tau) = min(1, tau/||z||) z
  (aggregation.clip). tau_i is `clip_tau` if set, else adaptive,
  needing no knowledge of the attack's scale: with d_j = ||xhat_j - xhat_i|| sorted, tau_i is
  the (b+1)-th largest, so the b farthest neighbours are pulled in to the distance of the
  farthest remaining one. With b = 1 this is the rule of the authors' code
  (github.com/epfml/byzantine-robust-decentralized-optimizer, codes/aggregator.py,
  SelfCenteredClipping with tau=None: the second-largest distance); the paper's closed-form
  tau_i needs the honest neighbours' distances, which a node cannot know. If at most b
  neighbours are Byzantine, tau_i is at most the farthest honest neighbour's distance, so
  a Byzantine term is never longer than every honest one.
- trimmed_mean: per coordinate, over {xhat_i} and the active neighbours' copies, cut the b
  largest and b smallest values and average the rest (m_i); x_i += gamma * (m_i - xhat_i).
  This ignores W (the plain step is gamma * (sum_j W_ij xhat_j - xhat_i), a W-weighted
  mean, incl. W_ii, in place of m_i). With at most b Byzantine neighbours every kept value
  lies within the honest values of that coordinate (Yin et al. 2018; aggregation.py's rule
  with a count instead of a fraction). With `outlier_tau` it cuts whole copies instead: those
  farther from the coordinate-wise median than outlier_tau times the median distance between
  two copies (aggregation.without_outliers, at most b, the farthest), and averages the rest;
  without liars, the plain mean of the copies.

With fewer active neighbours than the rule needs (set_active), b shrinks to what they allow.
Only copies built from received deltas can lie: agents on the same node see each other's
true public copies.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols.aggregation import clip, without_outliers
from protocols.compression import DENSE_F32, Compressed, compress
from protocols.config import CompressionConfig, LimitsConfig, RobustConfig
from protocols.delta import Delta, DeltaRejected, Rejection


def agent_name(index: int) -> str:
    """The wire name of agent `index` (one name per idea: used by every node and metric)."""
    return f"agent-{index}"


def agent_index(name: str) -> int:
    """Inverse of `agent_name`; raises ValueError for any other name."""
    prefix, _, number = name.partition("-")
    if prefix != "agent" or not number.isdigit() or agent_name(int(number)) != name:
        raise ValueError(f"{name!r} is not an agent name (agent-<index>)")
    return int(number)


def scale_of(x0: np.ndarray) -> tuple[float, float]:
    """(norm, largest magnitude) of the common initial model: what `Limits` are relative to."""
    x = np.asarray(x0, np.float64)
    return float(np.linalg.norm(x)), float(np.max(np.abs(x))) if x.size else 0.0


#: The largest epoch any message may carry (protocols.wire refuses larger ones as malformed).
MAX_EPOCH = 2**62


@dataclass(frozen=True)
class Limits:
    """What a signed message may carry: past these it is refused OUT_OF_BOUNDS, counted, and
    never applied. The swarm key is shared, so a signature proves only that the sender holds
    it; these bound what a key holder can do to a copy (docs/node.md, threat model).

    epoch_ceiling: the largest epoch now (swarm-node: its wall clock in ms plus the allowed
        clock skew, since an epoch is a start time in ms; unbounded below MAX_EPOCH in a run).
    max_version_jump: how far past the next expected version a message of the epoch already
        held may go (an honest sender's version grows by one per round; a larger gap is
        resynced by a snapshot of a newer epoch, which a restart brings). Until a sender is
        first heard from, any version is taken.
    max_delta_norm: the largest norm of a delta.
    max_snapshot_norm: the largest norm of a snapshot (a whole public copy).
    max_value: the largest magnitude of one value of a delta or snapshot.
    exempt: senders (wire names) held to none of these: a run's shards exempt each other's
        agents (one program behind Ray, whose runs may diverge on purpose and must say so
        rather than refuse), and hold the devices that join them.
    """

    epoch_ceiling: Callable[[], int] = lambda: MAX_EPOCH
    max_version_jump: int = 2**62
    max_delta_norm: float = math.inf
    max_snapshot_norm: float = math.inf
    max_value: float = math.inf
    exempt: Callable[[str], bool] = lambda sender: False

    @classmethod
    def relative_to(
        cls,
        x0: np.ndarray,
        cfg: LimitsConfig,
        epoch_ceiling: Callable[[], int] | None = None,
        exempt: Callable[[str], bool] | None = None,
    ) -> Limits:
        """`GossipConfig.limits` as multiples of the common initial model x0: its norm for
        the norms, its largest magnitude for one value (an all-zero x0 leaves them unbounded)."""
        return cls.from_scale(scale_of(x0), cfg, epoch_ceiling, exempt)

    @classmethod
    def from_scale(
        cls,
        scale: tuple[float, float],
        cfg: LimitsConfig,
        epoch_ceiling: Callable[[], int] | None = None,
        exempt: Callable[[str], bool] | None = None,
    ) -> Limits:
        """`relative_to` given x0's (norm, largest magnitude), `scale_of(x0)` (what a
        coordinator, which holds no model, is told)."""
        norm, peak = scale
        return cls(
            epoch_ceiling=epoch_ceiling or (lambda: MAX_EPOCH),
            max_version_jump=cfg.version_jump,
            max_delta_norm=cfg.delta_norm * norm if norm > 0 else math.inf,
            max_snapshot_norm=cfg.snapshot_norm * norm if norm > 0 else math.inf,
            max_value=cfg.value * peak if peak > 0 else math.inf,
            exempt=exempt or (lambda sender: False),
        )

    def check_magnitude(self, d: Delta) -> None:
        """Raise DeltaRejected(OUT_OF_BOUNDS) when `d`'s norm or a value is past its limit."""
        if self.exempt(d.sender):
            return
        limit = self.max_snapshot_norm if d.snapshot else self.max_delta_norm
        what = "snapshot" if d.snapshot else "delta"
        if d.norm > limit:
            raise DeltaRejected(
                Rejection.OUT_OF_BOUNDS,
                f"{d.sender} {what} norm {d.norm:.4g} is above this swarm's limit {limit:.4g}",
            )
        if math.isfinite(self.max_value):
            peak = d.payload.peak()
            if peak > self.max_value:
                raise DeltaRejected(
                    Rejection.OUT_OF_BOUNDS,
                    f"{d.sender} {what} holds a value of magnitude {peak:.4g}, above this "
                    f"swarm's limit {self.max_value:.4g}",
                )

    def check(self, d: Delta, heard: bool, expected: int, held_epoch: int) -> None:
        """Raise DeltaRejected(OUT_OF_BOUNDS) when `d` is past a limit. heard: the sender was
        heard from before (its copy's next version is `expected` in epoch `held_epoch`)."""
        if self.exempt(d.sender):
            return
        ceiling = min(self.epoch_ceiling(), MAX_EPOCH)
        if d.epoch > ceiling:
            raise DeltaRejected(
                Rejection.OUT_OF_BOUNDS,
                f"{d.sender} epoch {d.epoch} is ahead of this node's clock ({ceiling})",
            )
        if heard and d.epoch == held_epoch and d.base_version - expected > self.max_version_jump:
            raise DeltaRejected(
                Rejection.OUT_OF_BOUNDS,
                f"{d.sender} version {d.base_version} is more than {self.max_version_jump} past "
                f"the {expected} this node expects",
            )
        self.check_magnitude(d)


class ChocoGossip:
    """CHOCO-Gossip state and steps for the agents hosted by one node.

    Args:
        local: global indices of the agents this node hosts, in the row order of `x`.
        weights: the (n, n) mixing matrix of the whole swarm (symmetric, doubly stochastic).
        x0: the common initial parameters (P,), float32.
        gamma: consensus step size.
        compression: how deltas are compressed.
        layout: fingerprint of the parameter layout (rejects deltas of another model).
        owner: maps a global agent index to the node that hosts it.
        epoch: incarnation of this node's agents' public copies; must be new (larger than any
            used before) for every start of a node that has sent deltas, see `load_state`.
            Receivers start out expecting epoch 0: with any other epoch, send `make_snapshots`
            to every peer before deltas (they are refused STALE until then).
        robust: the consensus step (see the module docstring); None or kind "none" is CHOCO's
            own. Raises ValueError if an agent has too few neighbours for it.
        limits: what a received message may carry (`Limits`); None: no limit but the wire's.
    """

    def __init__(
        self,
        *,
        local: Sequence[int],
        weights: np.ndarray,
        x0: np.ndarray,
        gamma: float,
        compression: CompressionConfig,
        layout: str,
        owner: Callable[[int], str],
        epoch: int = 0,
        robust: RobustConfig | None = None,
        limits: Limits | None = None,
    ):
        self.local = list(local)
        self.limits = limits or Limits()
        self.epoch = int(epoch)
        self.gamma = float(gamma)
        self.compression = compression
        self.layout = layout
        self.num_params = int(x0.size)
        local_set = set(self.local)
        # Neighbour lists with their weights, per local agent (row order of x).
        self.neighbours: list[list[tuple[int, float]]] = []
        tracked: set[int] = set(self.local)
        for i in self.local:
            row = [(int(j), float(weights[i, j])) for j in np.flatnonzero(weights[i]) if j != i]
            self.neighbours.append(row)
            tracked.update(j for j, _ in row)
        self.robust = robust if robust is not None and robust.kind != "none" else None
        if self.robust is not None:
            self._check_degrees(self.robust)
        # Public copies of every agent this node needs; all start at the common init x0.
        self.xhat: dict[int, np.ndarray] = {
            j: np.array(x0, dtype=np.float32, copy=True) for j in sorted(tracked)
        }
        self.version: dict[int, int] = dict.fromkeys(self.xhat, 0)
        # Remote senders whose deltas this node accepts, by wire name.
        self._remote = {agent_name(j): j for j in tracked - local_set}
        # Which remote nodes need agent i's delta (those hosting a neighbour of i).
        self._destinations = {
            i: sorted({owner(j) for j, _ in nbrs if j not in local_set})
            for i, nbrs in zip(self.local, self.neighbours, strict=True)
        }
        self._lock = threading.Lock()
        # Guards this node's own public copies between make_deltas (owner thread) and
        # make_snapshots (called from outbox sender threads, protocols/outbox.py).
        self._own = threading.Lock()
        self.duplicates = 0
        """Messages received again (at-least-once delivery) and dropped, see `receive`."""
        self._inbox: list[Delta] = []
        # Per remote agent, what accepted deltas (applied or still in the inbox) have made of
        # its copy: the next base_version, and the epoch they belong to.
        self._expected: dict[int, int] = {j: 0 for j in self._remote.values()}
        self._epoch_of: dict[int, int] = {j: 0 for j in self._remote.values()}
        self._inactive: set[int] = set()

    # -- sending -------------------------------------------------------------------------------

    def make_deltas(
        self, x: np.ndarray, round_: int, examples: Sequence[int] | np.ndarray
    ) -> list[Delta]:
        """The knowledge delta of every local agent for this round (updates own public copies).

        `x` is (K, P) with one row per local agent; `examples` is labelled examples per agent.
        """
        with self._own:  # a sender thread may be taking a snapshot of these copies
            return self._make_deltas(x, round_, examples)

    def _make_deltas(
        self, x: np.ndarray, round_: int, examples: Sequence[int] | np.ndarray
    ) -> list[Delta]:
        out = []
        for row, i in enumerate(self.local):
            payload = compress(x[row] - self.xhat[i], self.compression)
            q = payload.decode()
            delta = Delta(
                sender=agent_name(i),
                round=round_,
                base_version=self.version[i],
                layout=self.layout,
                payload=payload,
                norm=float(np.linalg.norm(q.astype(np.float64))),
                examples=int(examples[row]),
                epoch=self.epoch,
            )
            self.xhat[i] += q
            self.version[i] += 1
            out.append(delta)
        return out

    def make_snapshots(self, round_: int, agents: Collection[int] | None = None) -> list[Delta]:
        """A snapshot of every local agent's public copy (of those in `agents` if given), in
        row order; changes no state.

        Send these to a peer that refused a delta as STALE, and to every peer after a restart.
        Each is version `version[i]` of this node's epoch (the base_version of the next delta).
        """
        out = []
        for i in self.local:
            if agents is not None and i not in agents:
                continue
            with self._own:  # the copy and its version must be of the same instant
                values, version = self.xhat[i].copy(), self.version[i]
            out.append(
                Delta(
                    sender=agent_name(i),
                    round=round_,
                    base_version=version,
                    layout=self.layout,
                    payload=Compressed(DENSE_F32, self.num_params, values),
                    norm=float(np.linalg.norm(values.astype(np.float64))),
                    examples=0,
                    epoch=self.epoch,
                    snapshot=True,
                )
            )
        return out

    def destinations(self, sender_index: int) -> list[str]:
        """Remote nodes that hold a public copy of this local agent."""
        return self._destinations[sender_index]

    def logical_recipients(self, sender_index: int) -> int:
        """Neighbours of an agent: the messages it would send as a standalone device."""
        return len(self.neighbours[self.local.index(sender_index)])

    # -- receiving -----------------------------------------------------------------------------

    def receive(self, deltas: Sequence[Delta]) -> int:
        """Accept a batch of already-decoded deltas, all or none; raises DeltaRejected.

        Deltas are checked in batch order against what the earlier ones of the batch made of
        each copy, so [snapshot v, delta v, delta v+1] of one sender is a valid batch.

        A *duplicate*, a delta or snapshot of the current epoch whose version the copy already
        holds, is acknowledged and dropped (counted in `duplicates`): delivery over gRPC is
        at-least-once (a push whose reply was lost is sent again), and the signature proves
        it is the sender's own old message, so re-sending it must neither apply it twice nor
        force a resync. A replayed old message therefore cannot roll a copy back either.
        Returns how many new deltas were accepted.
        """
        with self._lock:
            expected = dict(self._expected)
            epoch_of = dict(self._epoch_of)
            fresh: list[Delta] = []
            duplicates = 0
            for d in deltas:
                j = self._remote.get(d.sender)
                if j is None:
                    raise DeltaRejected(
                        Rejection.UNKNOWN_SENDER, f"{d.sender!r} is not a neighbour of this node"
                    )
                heard = expected[j] > 0 or epoch_of[j] > 0
                self.limits.check(d, heard, expected[j], epoch_of[j])
                holds = f"this node holds {d.sender} epoch {epoch_of[j]} version {expected[j]}"
                what = "snapshot" if d.snapshot else "delta"
                if d.epoch < epoch_of[j]:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} {what} of epoch {d.epoch} is from an earlier incarnation; "
                        f"{holds}",
                    )
                if d.epoch == epoch_of[j] and d.base_version < expected[j]:
                    duplicates += 1  # the copy already holds this version
                    continue
                if d.snapshot:
                    expected[j], epoch_of[j] = d.base_version, d.epoch
                    fresh.append(d)
                    continue
                if d.epoch > epoch_of[j] and d.base_version == 0 == expected[j] == epoch_of[j]:
                    # Nothing heard from j yet (the copy is the common init x0, version 0 of
                    # any epoch) and j starts from x0 too: the first delta of a fresh sender.
                    epoch_of[j] = d.epoch
                if d.epoch > epoch_of[j]:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta of epoch {d.epoch} needs a snapshot first; {holds}",
                    )
                if d.base_version != expected[j]:
                    raise DeltaRejected(
                        Rejection.STALE,
                        f"{d.sender} delta applies to version {d.base_version}; {holds}",
                    )
                expected[j] += 1
                fresh.append(d)
            self._expected, self._epoch_of = expected, epoch_of
            self._inbox.extend(fresh)
            self.duplicates += duplicates
        return len(fresh)

    def apply(self, x: np.ndarray, *, mix: bool = True) -> int:
        """Apply pending deltas to the public copies, then one consensus step on `x` in place.

        Deltas are applied in acceptance order (version order per sender: the order `receive`
        checked them in); a snapshot replaces the copy. Inactive neighbours (`set_active`) are
        left out of the step, their weight staying with the agent itself. Returns how many
        deltas were applied.

        One consensus step belongs to one round (one `make_deltas`): the step's increment
        depends on the copies only, not on `x`, so repeating it without new deltas would move
        `x` by the same vector again and again. `mix=False` only takes in what arrived (a node
        waiting for its peers' last deltas).
        """
        with self._lock:
            pending, self._inbox = self._inbox, []
            inactive = set(self._inactive)
        for d in pending:
            j = self._remote[d.sender]
            if d.snapshot:
                self.xhat[j][:] = d.payload.decode()
                self.version[j] = d.base_version
            else:
                self.xhat[j] += d.payload.decode()
                self.version[j] += 1
        for row, i in enumerate(self.local):
            if not mix or not self.neighbours[row]:
                continue
            if self.robust is None:
                step = np.zeros(self.num_params, dtype=np.float64)
                for j, w in self.neighbours[row]:
                    if j not in inactive:
                        step += w * (self.xhat[j] - self.xhat[i])
            else:
                active = [(j, w) for j, w in self.neighbours[row] if j not in inactive]
                step = self._robust_step(i, active, self.robust)
            x[row] += (self.gamma * step).astype(np.float32)
        return len(pending)

    # -- robust consensus ----------------------------------------------------------------------

    def _check_degrees(self, robust: RobustConfig) -> None:
        b, need = robust.byzantine, robust.neighbours_needed()
        for i, nbrs in zip(self.local, self.neighbours, strict=True):
            if len(nbrs) < need:
                raise ValueError(
                    f"gossip.robust: {robust.kind} with byzantine = {b} needs every agent to "
                    f"have >= {need} neighbours; {agent_name(i)} has {len(nbrs)} (use a "
                    "denser graph or a smaller byzantine)"
                )

    def _robust_step(
        self, i: int, active: list[tuple[int, float]], robust: RobustConfig
    ) -> np.ndarray:
        """The (P,) float64 consensus increment of agent i (before gamma) by `robust`."""
        if not active:
            return np.zeros(self.num_params, dtype=np.float64)
        own = self.xhat[i].astype(np.float64)
        copies = np.stack([self.xhat[j] for j, _ in active]).astype(np.float64)  # (m, P)
        m = len(active)
        if robust.kind == "trimmed_mean":
            b = min(robust.byzantine, (m - 1) // 2)  # keep >= 2 of the m + 1 values
            stack = np.vstack([own[None], copies])  # (m + 1, P)
            if robust.outlier_tau is not None:  # the outlier copies cut whole, the rest averaged
                return without_outliers(stack, b, robust.outlier_tau).mean(axis=0) - own
            values = np.sort(stack, axis=0)  # (m + 1, P)
            return values[b : m + 1 - b].mean(axis=0) - own
        diffs = copies - own  # (m, P)
        if robust.clip_tau is not None:
            tau = robust.clip_tau
        else:
            dist = np.sort(np.linalg.norm(diffs, axis=1))  # (m,) ascending
            tau = float(dist[max(m - 1 - robust.byzantine, 0)])  # the (b+1)-th largest
        # tau = 0: the unclipped terms are zero and the clipped ones shrink to zero too.
        diffs = clip(diffs, tau) if tau > 0 else np.zeros_like(diffs)
        weights = np.array([w for _, w in active], dtype=np.float64)  # (m,)
        return weights @ diffs  # (m,) @ (m, P) -> (P,)

    # -- membership ----------------------------------------------------------------------------

    def set_active(self, j: int, active: bool) -> None:
        """Leave remote agent `j` out of the consensus step (e.g. declared dead by failure
        detection) or bring it back.

        Skipping the term moves W_ij to the diagonal, so the rest of the row still sums to one
        and nothing is pulled towards a copy that no longer changes. Deltas of an inactive
        agent are still accepted, so its copy is current when it comes back.
        """
        if j not in self._expected:
            raise ValueError(f"agent {j} is not a remote neighbour of this node")
        with self._lock:
            if active:
                self._inactive.discard(j)
            else:
                self._inactive.add(j)

    def active(self, j: int) -> bool:
        """Whether remote agent `j` takes part in the consensus step."""
        if j not in self._expected:
            raise ValueError(f"agent {j} is not a remote neighbour of this node")
        with self._lock:
            return j not in self._inactive

    # -- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray | int]:
        """Everything needed to resume this node's gossip after a crash, as plain numbers.

        Arrays (numeric dtypes, for an .npz with allow_pickle=False) and ints (for JSON):
        the public copies in agent order, their applied versions, the acceptance state of the
        remote ones (next version, epoch), the deltas accepted but not yet applied (decoded to
        dense float32: exactly what `apply` would add), and this node's epoch. Active flags
        are not kept: a restarted node relearns liveness from its failure detector.
        Call it on the owner's thread (it reads the copies `apply` writes).
        """
        tracked = sorted(self.xhat)
        with self._lock:
            inbox = list(self._inbox)
            expected = [self._expected.get(j, self.version[j]) for j in tracked]
            epoch_of = [self._epoch_of.get(j, self.epoch) for j in tracked]
        p = self.num_params
        return {
            "epoch": self.epoch,
            "agents": np.array(tracked, dtype=np.int64),
            "xhat": np.stack([self.xhat[j] for j in tracked]).astype(np.float32).reshape(-1, p),
            "version": np.array([self.version[j] for j in tracked], dtype=np.int64),
            "expected": np.array(expected, dtype=np.int64),
            "known_epoch": np.array(epoch_of, dtype=np.int64),
            "pending_sender": np.array([self._remote[d.sender] for d in inbox], dtype=np.int64),
            "pending_round": np.array([d.round for d in inbox], dtype=np.int64),
            "pending_base_version": np.array([d.base_version for d in inbox], dtype=np.int64),
            "pending_epoch": np.array([d.epoch for d in inbox], dtype=np.int64),
            "pending_snapshot": np.array([d.snapshot for d in inbox], dtype=np.bool_),
            "pending_examples": np.array([d.examples for d in inbox], dtype=np.int64),
            "pending_values": np.array(
                [d.payload.decode() for d in inbox], dtype=np.float32
            ).reshape(-1, p),
        }

    def load_state(self, state: Mapping[str, Any], *, epoch: int | None = None) -> None:
        """Resume from `state()` of a node with the same agents, graph and parameter count.

        epoch: this node's epoch from now on. None keeps the saved one, which is right only if
            nothing was sent after the checkpoint was taken (e.g. a clean shutdown). A node
            resuming after a crash must pass a new epoch, larger than every epoch it used
            before; not `state["epoch"] + 1` if the same checkpoint can be resumed twice: keep
            a counter that is incremented and stored at every start, before anything is sent.
            Then send `make_snapshots` to every peer: its deltas are refused until then.
        """
        tracked = sorted(self.xhat)
        agents = [int(a) for a in np.asarray(state["agents"]).reshape(-1)]
        if agents != tracked:
            raise ValueError(f"state holds copies of agents {agents}, this node tracks {tracked}")
        xhat = np.asarray(state["xhat"], dtype=np.float32)
        if xhat.shape != (len(tracked), self.num_params):
            raise ValueError(
                f"state copies have shape {xhat.shape}, expected {(len(tracked), self.num_params)}"
            )
        saved_epoch = int(np.asarray(state["epoch"]))
        new_epoch = saved_epoch if epoch is None else int(epoch)
        if new_epoch < saved_epoch:
            raise ValueError(f"epoch {new_epoch} is older than the saved epoch {saved_epoch}")
        version, expected, known_epoch = (
            [int(v) for v in np.asarray(state[k]).reshape(-1)]
            for k in ("version", "expected", "known_epoch")
        )
        names = {j: name for name, j in self._remote.items()}
        values = np.asarray(state["pending_values"], dtype=np.float32).reshape(-1, self.num_params)
        inbox = [
            Delta(
                sender=names[int(j)],
                round=int(r),
                base_version=int(b),
                layout=self.layout,
                payload=Compressed(DENSE_F32, self.num_params, v.copy()),
                norm=float(np.linalg.norm(v.astype(np.float64))),
                examples=int(n),
                epoch=int(e),
                snapshot=bool(s),
            )
            for j, r, b, n, e, s, v in zip(
                *(
                    np.asarray(state[f"pending_{k}"]).reshape(-1)
                    for k in ("sender", "round", "base_version", "examples", "epoch", "snapshot")
                ),
                values,
                strict=True,
            )
        ]
        self.epoch = new_epoch
        for row, j in enumerate(tracked):
            self.xhat[j] = xhat[row].copy()
            self.version[j] = version[row]
        with self._lock:
            self._inbox = inbox
            self._expected = {j: expected[tracked.index(j)] for j in self._expected}
            self._epoch_of = {j: known_epoch[tracked.index(j)] for j in self._epoch_of}
            self._inactive = set()

    # -- queries -------------------------------------------------------------------------------

    def known_sender(self, name: str) -> bool:
        return name in self._remote

    def received_from(self, name: str) -> int:
        """The version of remote agent `name`'s copy that accepted deltas reach: how many of
        its deltas this node has accepted, a snapshot counting for the versions it stands for.
        """
        with self._lock:
            return self._expected[self._remote[name]]

    def known_epoch(self, name: str) -> int:
        """The epoch of remote agent `name`'s copy as accepted so far."""
        with self._lock:
            return self._epoch_of[self._remote[name]]
