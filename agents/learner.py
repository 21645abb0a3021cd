"""The online learner an AgentShard hosts: K agents that act and keep learning from late labels.

Per agent: a ring of recent observations (so a label that arrives late still finds the window that
ended at its tick), a class-partitioned reservoir replay memory (or, with `replay_mode: none`,
only the newest labelled windows: plain online SGD), optional online EWC and a trainable subset
(agents/continual.py), and its own row of the stacked population. Deterministic given the seed:
all sampling uses one numpy Generator owned here, and the weights' init uses a torch Generator
seeded inside `init_flat`; the global RNGs are never touched.

Observations are flat vectors of `obs_dim` floats whatever the sensor (a camera image is stored
as its pixels followed by the telemetry, see agents/population.py), so the rings and memories
are plain arrays; the population splits them before every forward.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.config import LearnConfig, ModelConfig
from agents.continual import OnlineEWC, trainable_mask
from agents.population import Inputs, Population

EVAL_CHUNK = 256  # probe windows per forward pass in `evaluate`: bounds activation memory


class ReservoirReplay:
    """Per-agent, per-class reservoir memories of fixed-shape items (Vitter 1985, Algorithm R).

    Each (agent, class) reservoir keeps at most `capacity // n_classes` items; the n-th item of a
    class is kept with probability M/n and replaces a uniformly chosen slot, so the memory is a
    uniform sample of everything the agent saw of that class. Partitioning by class lets batches
    be class-balanced: background observations vastly outnumber events.
    """

    def __init__(
        self,
        n_agents: int,
        n_classes: int,
        capacity: int,
        item_shape: tuple[int, ...],
        rng: np.random.Generator,
    ) -> None:
        if capacity < n_classes:
            raise ValueError(
                f"replay capacity ({capacity}) must be >= n_classes ({n_classes}): every class "
                "needs at least one slot; raise learn.replay"
            )
        self.n_agents, self.n_classes = n_agents, n_classes
        self.per_class = capacity // n_classes  # M of each (agent, class) reservoir
        self.rng = rng
        self.items = np.zeros((n_agents, n_classes, self.per_class, *item_shape), np.float32)
        self.size = np.zeros((n_agents, n_classes), np.int64)  # items held
        self.seen = np.zeros((n_agents, n_classes), np.int64)  # items offered, ever

    def add(self, agents: np.ndarray, classes: np.ndarray, items: np.ndarray) -> None:
        """Offer items (N, *item_shape) to reservoirs (agents[i], classes[i])."""
        u = self.rng.random(len(agents))  # one draw per item, used only once a reservoir is full
        if not len(agents):
            return
        # Algorithm R item by item, in array form: item i is the (r_i + 1)-th item of this call
        # for its reservoir, so it is that reservoir's item number seen + r_i + 1, and lands in
        # slot size + r_i while the reservoir fills, else in slot u_i n if that is < M.
        M, C = self.per_class, self.n_classes
        key = agents * C + classes  # (n,) reservoir of each item
        order = np.argsort(key, kind="stable")  # by reservoir, in arrival order within one
        run_start = np.r_[0, np.flatnonzero(np.diff(key[order])) + 1]  # first of each reservoir
        rank = np.empty(len(key), np.int64)  # (n,) r_i: earlier items of this call there
        rank[order] = np.arange(len(key)) - np.repeat(
            run_start, np.diff(np.r_[run_start, len(key)])
        )
        size, seen = self.size.reshape(-1), self.seen.reshape(-1)  # views, (K*C,)
        filling = size[key] + rank < M
        slot = np.where(filling, size[key] + rank, (u * (seen[key] + rank + 1)).astype(np.int64))
        kept = np.flatnonzero(filling | (slot < M))  # kept with probability M/n once full
        # the last write to a slot wins, as in the loop
        target = key[kept] * M + slot[kept]
        _, last = np.unique(target[::-1], return_index=True)
        write = kept[::-1][last]
        self.items[agents[write], classes[write], slot[write]] = items[write]
        count = np.bincount(key, minlength=size.size)
        seen += count
        np.minimum(size + count, M, out=size)

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class-balanced batch per agent: a class uniformly among those it holds, then an item
        uniformly within it. Returns items (K, batch, *item_shape), classes (K, batch) int64 and
        mask (K, batch) bool (False for every row of an agent whose replay is empty)."""
        K, C = self.n_agents, self.n_classes
        held = self.size > 0  # (K, C)
        has_any = np.asarray(held.any(1))  # (K,)
        probs = held / np.maximum(held.sum(1, keepdims=True), 1)  # (K, C)
        cum = np.cumsum(probs, axis=1)  # (K, C)
        r = self.rng.random((K, batch, 1))
        cls = np.minimum((r >= cum[:, None, :]).sum(-1), C - 1)  # (K, batch)
        n_held = self.size[np.arange(K)[:, None], cls]  # (K, batch)
        slot = (self.rng.random((K, batch)) * n_held).astype(np.int64)  # 0 where empty
        items = self.items[np.arange(K)[:, None], cls, slot]  # (K, batch, *item_shape)
        mask = np.broadcast_to(has_any[:, None], (K, batch)).copy()
        return items, cls.astype(np.int64), mask


class RecentWindows:
    """Per-agent FIFO of the newest `capacity` labelled windows, and how many arrived since the
    last learning step: the data of plain online SGD (`replay_mode: none`)."""

    def __init__(self, n_agents: int, capacity: int, item_shape: tuple[int, ...]) -> None:
        self.capacity = capacity
        self.items = np.zeros((n_agents, capacity, *item_shape), np.float32)
        self.classes = np.zeros((n_agents, capacity), np.int64)
        self.count = np.zeros(n_agents, np.int64)  # windows added, ever
        self.fresh = np.zeros(n_agents, np.int64)  # windows added since the last `take_fresh`

    def add(self, agents: np.ndarray, classes: np.ndarray, items: np.ndarray) -> None:
        """Append items (N, *item_shape) in order; each agent's oldest are overwritten."""
        for i, (a, c) in enumerate(zip(agents.tolist(), classes.tolist(), strict=True)):
            slot = self.count[a] % self.capacity
            self.items[a, slot], self.classes[a, slot] = items[i], c
            self.count[a] += 1
            self.fresh[a] += 1

    def newest(self, n: int, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each agent's min(n, limit[k], held) newest windows, newest first: items (K, n, ...),
        classes (K, n), mask (K, n) bool (False past an agent's share)."""
        n = min(n, self.capacity)
        K = len(self.count)
        age = np.arange(n)  # 0 = newest
        slot = (self.count[:, None] - 1 - age) % self.capacity  # (K, n)
        take = np.minimum(np.minimum(limit, self.count), n)  # (K,)
        mask = age[None, :] < take[:, None]  # (K, n)
        rows = np.arange(K)[:, None]
        return self.items[rows, slot], self.classes[rows, slot], mask

    def take_fresh(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The newest windows that arrived since the last call (at most n per agent; older fresh
        ones beyond n are skipped, never trained on), then marks all of them used."""
        out = self.newest(n, self.fresh)
        self.fresh[:] = 0
        return out


class OnlineLearner:
    """K agents that act every tick and learn online from labels that arrive late."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        learn_cfg: LearnConfig,
        n_agents: int,
        obs_dim: Inputs,
        n_classes: int,
        seed: int,
    ) -> None:
        """obs_dim: the width of a vector observation, or the InputConfig (or its dict, e.g. a
        world's `input_config()`) of an image + vector one; `self.obs_dim` is the flat width."""
        self.learn_cfg = learn_cfg
        self.seed = seed
        self.population = Population(model_cfg, learn_cfg, n_agents, obs_dim, n_classes, seed)
        obs_dim = self.population.obs_dim
        self.n_agents, self.obs_dim, self.n_classes = n_agents, obs_dim, n_classes
        self.rng = np.random.default_rng(seed)
        # observation ring: `history` ticks a label may look back, plus window-1 older ones so
        # the window of the oldest labellable tick is still whole
        self._ring = learn_cfg.history + learn_cfg.window - 1
        self._obs = np.zeros((n_agents, self._ring, obs_dim), np.float32)  # (K, R, obs_dim)
        self._ticks = np.full(self._ring, -1, np.int64)  # tick of each ring slot (shared by all)
        self._n = 0  # observations recorded so far (act calls)
        self.replay = ReservoirReplay(
            n_agents, n_classes, learn_cfg.replay, (learn_cfg.window, obs_dim), self.rng
        )
        self.recent: RecentWindows | None = None
        """The newest labelled windows, kept only when replay_mode is "none"."""
        if learn_cfg.replay_mode == "none":
            capacity = learn_cfg.batch
            if learn_cfg.ewc_lambda > 0:
                capacity = max(capacity, learn_cfg.fisher_batch)
            self.recent = RecentWindows(n_agents, capacity, (learn_cfg.window, obs_dim))
        self.ewc: OnlineEWC | None = None
        """Online EWC state (running Fisher, anchor), when ewc_lambda > 0."""
        if learn_cfg.ewc_lambda > 0:
            self.ewc = OnlineEWC(
                n_agents, self.population.num_params, learn_cfg.ewc_lambda, learn_cfg.ewc_gamma
            )
        self.grad_mask = trainable_mask(
            self.population.specs, learn_cfg.trainable, learn_cfg.trainable_fraction, seed
        )
        """(P,) bool: the parameters online learning may change; None = all."""
        self.learn_steps = 0
        """learn_step calls so far (the EWC consolidation clock)."""
        self._new_examples = np.zeros(n_agents, np.int64)
        self.taught = np.zeros((n_agents, n_classes), bool)
        """(K, n_classes): the classes each agent has had a label of (restricted softmax)."""
        self.labels_dropped = 0
        """Labels whose tick had left the history (or was never observed), since creation."""
        self.labelled: list[tuple[np.ndarray, ...]] | None = None
        """The labelled windows not yet taken by `take_labelled` (kept only once
        `keep_labelled` was called: the agents relay them as sightings)."""

    def keep_labelled(self) -> None:
        """From now on keep every labelled window for `take_labelled`."""
        if self.labelled is None:
            self.labelled = []

    def take_labelled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The windows labelled since the last call: rows (M,), ticks (M,), classes (M,) and
        windows (M, window, obs_dim) float32."""
        parts = self.labelled or []
        if self.labelled is not None:
            self.labelled = []
        if not parts:
            W = self.learn_cfg.window
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros((0, W, self.obs_dim), np.float32)
        rows, ticks, classes, windows = (np.concatenate(p) for p in zip(*parts, strict=True))
        return rows, ticks, classes, windows

    def add_sightings(self, rows: np.ndarray, classes: np.ndarray, windows: np.ndarray) -> None:
        """Labelled windows other agents saw (protocols/sightings.py): into the replay of
        agents `rows` as if they had been labelled here."""
        rows, classes = np.asarray(rows, np.int64), np.asarray(classes, np.int64)
        if not rows.size:
            return
        windows = np.asarray(windows, np.float32)
        if windows.shape != (rows.size, self.learn_cfg.window, self.obs_dim):
            raise ValueError(f"sightings have shape {windows.shape}, expected "
                             f"{(rows.size, self.learn_cfg.window, self.obs_dim)}")  # fmt: skip
        self.taught[rows, classes] = True
        self._remember(rows, classes, windows)

    def _remember(self, agents: np.ndarray, classes: np.ndarray, windows: np.ndarray) -> None:
        """Labelled windows into the agents' memory: the replay, or (replay_mode "none") the
        newest-windows buffer."""
        if self.recent is not None:
            self.recent.add(agents, classes, windows)
        else:
            self.replay.add(agents, classes, windows)

    def act(self, tick: int, obs: np.ndarray) -> np.ndarray:
        """Record obs (K, obs_dim) at `tick`, run one recurrent step, return classes (K,) int64."""
        obs = np.asarray(obs, np.float32)
        if obs.shape != (self.n_agents, self.obs_dim):
            raise ValueError(f"obs has shape {obs.shape}, expected {(self.n_agents, self.obs_dim)}")
        if self._n and tick <= self._last_tick():
            raise ValueError(f"ticks must increase: got {tick} after {self._last_tick()}")
        slot = self._n % self._ring
        self._obs[:, slot] = obs
        self._ticks[slot] = tick
        self._n += 1
        logits = self.population.step(obs)  # (K, n_classes)
        chosen = logits.argmax(-1).numpy().astype(np.int64)
        floor = self.learn_cfg.report_confidence
        if floor > 0:  # below the operating point a detector says 'nothing there' (class 0)
            sure = logits.softmax(-1).max(-1).values.numpy() >= floor
            chosen = np.where(sure, chosen, 0)
        return chosen

    def renew(self, agents: list[int]) -> None:
        """Fresh agents (new devices joining): the initial model, and nothing learned or
        remembered (replay, EWC anchor, example counts)."""
        if not agents:
            return
        self.population.renew(agents, self.seed)
        self.replay.size[agents] = 0
        self.replay.seen[agents] = 0
        if self.recent is not None:
            self.recent.count[agents] = 0
            self.recent.fresh[agents] = 0
        if self.ewc is not None:
            self.ewc.fisher[agents] = 0.0
            self.ewc.anchor[agents] = 0.0
        self._new_examples[agents] = 0
        self.taught[agents] = False

    def _last_tick(self) -> int:
        return int(self._ticks[(self._n - 1) % self._ring])

    def add_labels(self, labels: np.ndarray) -> None:
        """labels (M, 3) int64 rows (agent_index, tick, cls): the true class of what the agent
        observed at `tick`. Windows still in the history go to the agent's replay; the rest are
        dropped and counted in `labels_dropped`."""
        labels = np.asarray(labels, np.int64).reshape(-1, 3)
        agents, ticks, classes = labels.T
        if ((agents < 0) | (agents >= self.n_agents)).any():
            raise ValueError(f"agent index outside [0, {self.n_agents}) in labels")
        if ((classes < 0) | (classes >= self.n_classes)).any():
            raise ValueError(f"class outside [0, {self.n_classes}) in labels")
        W = self.learn_cfg.window
        lo = max(0, self._n - self.learn_cfg.history)  # oldest labellable observation index
        recent = np.arange(lo, self._n)  # observation indices, oldest first
        recent_ticks = self._ticks[recent % self._ring]  # increasing (act enforces it)
        pos = np.searchsorted(recent_ticks, ticks)
        found = pos < len(recent)
        found[found] = recent_ticks[pos[found]] == ticks[found]
        self.labels_dropped += int((~found).sum())
        if not found.any():
            return
        agents, classes = agents[found], classes[found]
        self.taught[agents, classes] = True
        end = lo + pos[found]  # (M',) observation index of each labelled tick
        idx = end[:, None] + np.arange(-W + 1, 1)  # (M', W) the window, oldest first
        windows = self._obs[agents[:, None], idx % self._ring]  # (M', W, obs_dim)
        windows[idx < 0] = 0.0  # zero-padded before the first observation
        if self.labelled is not None:
            self.labelled.append((agents, ticks[found], classes, windows.copy()))
        self._remember(agents, classes, windows)
        self._new_examples += np.bincount(agents, minlength=self.n_agents)

    def learn_step(self) -> dict[str, np.ndarray]:
        """One batched optimizer step; each agent trains on up to `batch` of its labelled windows:
        a class-balanced replay sample, or (replay_mode "none") those that arrived since the
        previous step. With EWC on, every `consolidate_every` steps the agents that hold data
        are consolidated after the step (new Fisher, anchor = the weights just reached).

        Returns {"loss": (K,) float32, nan where not trained (includes the EWC penalty);
        "trained": (K,) bool; "consolidated": (K,) bool}.
        """
        cfg, K = self.learn_cfg, self.n_agents
        self.learn_steps += 1
        if self.recent is not None:
            x, y, mask = self.recent.take_fresh(cfg.batch)
        else:
            x, y, mask = self.replay.sample(cfg.batch)
        trained = np.asarray(mask.any(1))  # (K,)
        unlabeled = self._unlabeled_windows() if cfg.ssl_weight > 0 else None
        if unlabeled is not None:
            trained[:] = True  # every agent has its own experience to learn from
        loss = np.full(K, np.nan, np.float32)
        if trained.any():
            penalty = self.ewc.penalty if self.ewc is not None else None
            out = self.population.train_step(
                x, y, mask, penalty=penalty, grad_mask=self.grad_mask,
                unlabeled=unlabeled, ssl_weight=cfg.ssl_weight,
                taught=self.taught, absent_scale=cfg.absent_class_scale,
            ).numpy()  # fmt: skip
            loss = np.where(trained, out, np.nan).astype(np.float32)
        consolidated = np.zeros(K, bool)
        if self.ewc is not None and self.learn_steps % cfg.consolidate_every == 0:
            consolidated = self.consolidate()
        return {"loss": loss, "trained": trained, "consolidated": consolidated}

    def _unlabeled_windows(self) -> np.ndarray | None:
        """(K, ssl_batch, window, obs_dim) windows of each agent's own recent observations,
        ending at random ticks of its history; None until a whole window has been seen."""
        W, n = self.learn_cfg.window, self._n
        lo = max(W - 1, n - self.learn_cfg.history)
        if n - 1 < lo:
            return None
        ends = self.rng.integers(lo, n, size=(self.n_agents, self.learn_cfg.ssl_batch))
        idx = ends[..., None] + np.arange(-W + 1, 1)  # (K, Bu, W), oldest first
        agents = np.arange(self.n_agents)[:, None, None]
        return self._obs[agents, idx % self._ring]  # (K, Bu, W, obs_dim)

    def consolidate(self) -> np.ndarray:
        """Online-EWC consolidation now, on `fisher_batch` of each agent's windows (replay
        sample, or the newest ones); agents without data are skipped. Returns which (K,) bool."""
        if self.ewc is None:
            raise RuntimeError("EWC is off: set learn.ewc_lambda > 0")
        n = self.learn_cfg.fisher_batch
        if self.recent is not None:
            x, y, mask = self.recent.newest(n, self.recent.count)
        else:
            x, y, mask = self.replay.sample(n)
        return self.ewc.consolidate(self.population, x, y, mask).numpy()

    @torch.no_grad()
    def evaluate(self, windows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-class accuracy (K, n_classes) of every agent on a probe set, nan for absent classes.

        windows (N, W, obs_dim), labels (N,): each window read from a zero state, last token
        classified (the same task as training).
        """
        probe = torch.as_tensor(np.asarray(windows, np.float32))  # (N, W, obs_dim)
        labels = np.asarray(labels, np.int64)
        K = self.n_agents
        preds = []
        for start in range(0, len(probe), EVAL_CHUNK):
            chunk = probe[start : start + EVAL_CHUNK]  # (n, W, obs_dim)
            x = chunk.unsqueeze(0).expand(K, *chunk.shape)  # (K, n, W, obs_dim)
            preds.append(self.population.logits_parallel(x)[:, :, -1].argmax(-1).numpy())
        pred = np.concatenate(preds, axis=1)  # (K, N)
        acc = np.full((K, self.n_classes), np.nan)
        for c in range(self.n_classes):
            sel = labels == c
            if sel.any():
                acc[:, c] = (pred[:, sel] == c).mean(1)
        return acc

    def take_example_counts(self) -> np.ndarray:
        """Labelled windows added to each agent's replay since the last call (K,) int64."""
        out, self._new_examples = self._new_examples, np.zeros(self.n_agents, np.int64)
        return out


def balanced_accuracy(per_class: np.ndarray) -> np.ndarray:
    """(K, n_classes) per-class accuracy -> (K,) mean over the classes present (non-nan)."""
    return np.nanmean(per_class, axis=1)


# -- checkpointing -----------------------------------------------------------------------------
#
# Everything a learner needs to go on exactly where it stopped, as plain numpy arrays (so a
# checkpoint is an .npz read with allow_pickle=False) plus one JSON-able dict of scalars.


def learner_state(learner: OnlineLearner) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(arrays, scalars): weights, optimizer moments, recurrent state, observation ring, replay
    memory (or recent windows), EWC state and the sampling RNG."""
    arrays = {
        f"pop.{k}": v.detach().numpy().copy() for k, v in learner.population.state_dict().items()
    }
    arrays["obs"] = learner._obs.copy()
    arrays["ticks"] = learner._ticks.copy()
    arrays["new_examples"] = learner._new_examples.copy()
    arrays["taught"] = learner.taught.copy()
    arrays["replay.items"] = learner.replay.items.copy()
    arrays["replay.size"] = learner.replay.size.copy()
    arrays["replay.seen"] = learner.replay.seen.copy()
    if learner.recent is not None:
        arrays["recent.items"] = learner.recent.items.copy()
        arrays["recent.classes"] = learner.recent.classes.copy()
        arrays["recent.count"] = learner.recent.count.copy()
        arrays["recent.fresh"] = learner.recent.fresh.copy()
    if learner.grad_mask is not None:
        arrays["grad_mask"] = learner.grad_mask.numpy().copy()
    if learner.ewc is not None:
        arrays["ewc.fisher"] = learner.ewc.fisher.numpy().copy()
        arrays["ewc.anchor"] = learner.ewc.anchor.numpy().copy()
        arrays["ewc.consolidations"] = learner.ewc.consolidations.numpy().copy()
    scalars: dict[str, object] = {
        "n": learner._n,
        "learn_steps": learner.learn_steps,
        "labels_dropped": learner.labels_dropped,
        "rng": learner.rng.bit_generator.state,  # ints and strings only (JSON-able)
    }
    return arrays, scalars


def load_learner_state(
    learner: OnlineLearner, arrays: dict[str, np.ndarray], scalars: dict[str, object]
) -> None:
    """Restore what `learner_state` saved into a learner built with the same configs.

    Raises ValueError when the shapes differ (another model, agent count or memory size)."""

    def put(dst: np.ndarray, key: str) -> None:
        src = arrays[key]
        if src.shape != dst.shape:
            raise ValueError(f"checkpoint {key} has shape {src.shape}, this learner {dst.shape}")
        dst[...] = src

    sd = {k[4:]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith("pop.")}
    learner.population.load_state_dict(sd)
    put(learner._obs, "obs")
    put(learner._ticks, "ticks")
    put(learner._new_examples, "new_examples")
    if "taught" in arrays:  # older checkpoints: what the replay holds is what was taught
        put(learner.taught, "taught")
    else:
        learner.taught[...] = learner.replay.size > 0
    put(learner.replay.items, "replay.items")
    put(learner.replay.size, "replay.size")
    put(learner.replay.seen, "replay.seen")
    if learner.recent is not None:
        put(learner.recent.items, "recent.items")
        put(learner.recent.classes, "recent.classes")
        put(learner.recent.count, "recent.count")
        put(learner.recent.fresh, "recent.fresh")
    if learner.grad_mask is not None and "grad_mask" in arrays:
        put(learner.grad_mask.numpy(), "grad_mask")  # a random subset: the saved one
    if learner.ewc is not None:
        put(learner.ewc.fisher.numpy(), "ewc.fisher")
        put(learner.ewc.anchor.numpy(), "ewc.anchor")
        put(learner.ewc.consolidations.numpy(), "ewc.consolidations")
    learner._n = int(scalars["n"])  # type: ignore[call-overload]
    learner.learn_steps = int(scalars["learn_steps"])  # type: ignore[call-overload]
    learner.labels_dropped = int(scalars["labels_dropped"])  # type: ignore[call-overload]
    learner.rng.bit_generator.state = scalars["rng"]  # type: ignore[assignment]
