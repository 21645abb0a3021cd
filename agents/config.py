"""Typed configs of the agent's mind (no torch import: scenario validation stays fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from swarm._config import MAX_TICK, Section


class ModelConfig(Section):
    """Shape of one agent's Yan model (MCSD blocks, arXiv 2406.12230)."""

    d_model: int = Field(32, ge=4, le=4096)
    """Width of the token stream."""
    channels: int = Field(4, ge=1, le=256)
    """C: the MCSD block splits d_model into this many channels, each with its own slope
    window and decay rate."""
    layers: int = Field(2, ge=1, le=64)
    """Number of pre-norm residual MCSD blocks."""
    ffn_mult: int = Field(2, ge=1, le=16)
    """Feed-forward width = ffn_mult * d_model."""
    slope_window: int = Field(4, ge=1, le=256)
    """W: how many recent tokens the slope section aggregates (short-range)."""
    ffn_groups: int = Field(1, ge=1, le=4096)
    """G: the feed-forward neurons are split into G groups that a router switches on per token
    (selective activation, agents/yan/selective.py); 1 = dense FFN, no router."""
    ffn_top_k: int = Field(1, ge=1, le=4096)
    """k <= G: groups active per token (activation density k / G)."""
    router_noise_anneal_steps: int = Field(500, ge=0, le=MAX_TICK)
    """Training steps of an agent over which the router's exploration noise falls linearly
    from 1 to 0 ("random at first, targeted later"); 0 = never noisy. At most MAX_TICK (2^40),
    the most steps a run takes."""

    @model_validator(mode="after")
    def _channels_divide_width(self) -> ModelConfig:
        if self.d_model % self.channels:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by channels ({self.channels})"
            )
        return self

    @model_validator(mode="after")
    def _groups_divide_ffn(self) -> ModelConfig:
        ffn = self.ffn_mult * self.d_model
        if ffn % self.ffn_groups:
            raise ValueError(
                f"ffn_groups ({self.ffn_groups}) must divide the FFN width ffn_mult * d_model "
                f"({ffn})"
            )
        if self.ffn_top_k > self.ffn_groups:
            raise ValueError(
                f"ffn_top_k ({self.ffn_top_k}) must be <= ffn_groups ({self.ffn_groups})"
            )
        return self


class LearnConfig(Section):
    """How an agent keeps learning while it acts."""

    lr: float = Field(3e-3, gt=0, le=1.0)
    """Adam learning rate of the online updates."""
    learn_every: int = Field(2, ge=1, le=MAX_TICK)
    """Ticks between two online learning steps; at most MAX_TICK (2^40), the longest run."""
    batch: int = Field(16, ge=1, le=4096)
    """Labelled windows per agent per learning step, drawn from its replay memory."""
    window: int = Field(8, ge=1, le=1024)
    """Tokens of history the model reads per training example (the labelled tick is last)."""
    replay: int = Field(512, ge=1, le=100_000)
    """Reservoir replay capacity per agent, in labelled windows (allocated up front: agents x
    replay x window x features x 4 bytes, so the bound keeps a typo from asking for terabytes)."""
    history: int = Field(64, ge=1, le=100_000)
    """Ticks of raw observations each agent keeps so late labels can still find their window
    (a ring of agents x (history + window - 1) x features, allocated up front)."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Per-agent optimizer (its state is stacked with the parameters)."""
    replay_mode: Literal["reservoir", "none"] = "reservoir"
    """"reservoir": train on class-balanced batches of the per-class reservoir replay; "none":
    plain online SGD, each step trains once on the windows labelled since the previous step."""
    ewc_lambda: float = Field(0.0, ge=0.0, le=1e10)
    """lambda of online EWC's penalty (lambda/2) sum_i F_i (theta_i - theta*_i)^2; 0 = off. At
    most 1e10: lambda offsets the Fisher's scale, so sane values span decades, but none this
    far above the 1 to 100 tried here (tests/test_agents_continual.py)."""
    ewc_gamma: float = Field(0.9, ge=0.0, le=1.0)
    """Decay of the running Fisher at each consolidation, F <- gamma F + F_new (Schwarz et al.
    2018 use gamma < 1 so old importance fades)."""
    consolidate_every: int = Field(100, ge=1, le=MAX_TICK)
    """Learning steps between two EWC consolidations (new Fisher, new anchor): a deployed agent
    sees no task boundaries. With fisher_batch 32 one consolidation costs ~8 plain steps (K 16,
    batch 16, window 8, default model), so 100 keeps it under ~10% of learning time. At most
    MAX_TICK (2^40), the most steps a run takes."""
    fisher_batch: int = Field(32, ge=1, le=4096)
    """Labelled windows per agent for each Fisher estimate (replay samples, or the newest
    windows when replay_mode is "none")."""
    ssl_weight: float = Field(0.0, ge=0.0, le=100.0)
    """Weight of the self-supervised next-step loss on unlabelled windows of the agent's own
    recent experience (0 = off): unlabelled experience teaches too. At most 100 times the
    labelled loss, which leaves the labels no say."""
    ssl_batch: int = Field(8, ge=1, le=4096)
    """Unlabelled windows per agent per learning step when ssl_weight > 0."""
    absent_class_scale: float = Field(1.0, ge=0.0, le=1.0)
    """Restricted softmax (FedRS, Li & Zhan, KDD 2021): in an agent's own training steps the
    logits of the classes it has never had a label of are multiplied by this. 1 is the plain
    softmax, which teaches an agent that has only met fire that nothing is ever a sign, and so
    unlearns, step after step, what its peers' deltas taught it; below 1 its local steps leave
    the kinds it was never taught to the others (0: no learning signal to them at all)."""
    report_confidence: float = Field(0.0, ge=0.0, lt=1.0)
    """An agent answers a class other than 0 (the background: 'nothing there') only when its
    softmax gives that class at least this probability; below it answers 0. 0: plain argmax.
    A detector's operating point: false alarms fall, and so, a little, do detections."""
    trainable: Literal["all", "head", "last_block", "random"] = "all"
    """Which parameters online learning may change: all; the head and every norm gain; the
    last block, final norm and head; or a fixed random `trainable_fraction` of them."""
    trainable_fraction: float = Field(0.1, gt=0.0, le=1.0)
    """Share of the parameters trained when `trainable` is "random"."""

    @model_validator(mode="after")
    def _history_holds_window(self) -> LearnConfig:
        if self.history < self.window:
            raise ValueError(f"history ({self.history}) must be >= window ({self.window})")
        return self


class RLConfig(Section):
    """Online actor-critic (used when the world hands out rewards, e.g. a PettingZoo env).

    Every agent acts from the last `learning.window` observations of its episode and updates its
    own actor and critic every `rollout` ticks with a clipped policy-gradient step (PPO's
    objective, Schulman et al. 2017) on what it just lived through; `learning.lr` and
    `learning.optimizer` apply (scenarios/spread.yaml uses lr 1e-3: 3e-4 barely moved its
    policies in 6000 ticks). Defaults are the usual PPO ones (Schulman et al. 2017; Andrychowicz
    et al. 2021, "What Matters in On-Policy RL")."""

    enabled: bool = True
    """False = the agents act but never update (the "without learning" baseline): weights,
    optimizer and running statistics stay as initialised."""
    rollout: int = Field(128, ge=1, le=100_000)
    """Ticks of experience per update; each agent learns from its own rollout, so this is its
    batch (128: PPO's steps per environment, Schulman et al. 2017, Atari)."""
    update_lag: int = Field(0, ge=0, le=100_000)
    """0: each update runs when its rollout ends, and acting waits for it. n > 0: it runs on a
    thread beside the next n ticks of acting (which use the weights it started from) and is
    applied before the tick after them, so acting and learning use two cores; its change is
    added to the live weights, keeping what gossip merged meanwhile. Results do not depend on
    the machine's timing. Less than `rollout`."""
    epochs: int = Field(4, ge=1, le=64)
    """Passes over each rollout (1 = plain advantage actor-critic)."""
    discount: float = Field(0.99, gt=0.0, le=1.0)
    """gamma of the return. Dense rewards that an action changes within a few steps (e.g. MPE's
    distances) learn faster with a shorter horizon such as 0.9 (a scenario setting)."""
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    """lambda of generalised advantage estimation (Schulman et al. 2016)."""
    clip: float = Field(0.2, gt=0.0, le=10.0)
    """PPO ratio clip epsilon."""
    value_coef: float = Field(0.5, ge=0.0, le=100.0)
    """Weight of the value loss. The critic is a separate model with its own gradient clip and
    Adam scales each parameter's step, so this weight matters little. At most 100, 200 times
    PPO's 0.5."""
    entropy_coef: float = Field(0.01, ge=0.0, le=100.0)
    """Weight of the entropy bonus (keeps exploring); at most 100, where the bonus alone drives
    the policy (PPO uses 0.01)."""
    max_grad_norm: float = Field(0.5, gt=0.0, le=1e6)
    """Per-agent gradient norm clip, applied to the actor and to the critic separately; at most
    1e6, which never clips an agent's gradient (PPO uses 0.5)."""
    obs_norm: bool = True
    """Normalise each agent's observations by its own running mean and std (clipped to +-10):
    the encoder sees O(1) inputs whatever the env's units (Andrychowicz et al. 2021 found it
    helps in most envs; on mpe2 simple_spread, whose inputs are O(1) already, it made no
    difference: -23.2 team return after 6000 ticks either way, mean of 2 seeds)."""

    @model_validator(mode="after")
    def _lag_within_rollout(self) -> RLConfig:
        if self.update_lag >= self.rollout:
            raise ValueError(
                f"update_lag ({self.update_lag}) must be less than rollout ({self.rollout}): "
                "an update is applied before the next one starts"
            )
        return self
