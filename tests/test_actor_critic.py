"""Unit tests of the online actor-critic (agents/actor_critic.py): GAE by hand, time-limit
bootstrapping, what must stay unchanged, learning on a toy chain, determinism (no Ray)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from float_bounds import U32, chain_bound, model_stages, model_terms

from agents import actor_critic
from agents.actor_critic import (
    INIT_LOG_STD,
    ActionBox,
    Gaussian,
    OnlineActorCritic,
    RunningMoments,
    gae,
)
from agents.config import LearnConfig, ModelConfig, RLConfig

OBS, ACTIONS = 3, 2
SMALL = ModelConfig(d_model=16, channels=2, layers=1, slope_window=2)


def _learner(
    K: int = 2, seed: int = 0, window: int = 2, lr: float = 3e-3, **rl: Any
) -> OnlineActorCritic:
    return OnlineActorCritic(
        SMALL, LearnConfig(lr=lr, window=window), RLConfig(**rl), K, OBS, ACTIONS, seed
    )


def _obs(rng: np.random.Generator, K: int) -> np.ndarray:
    return rng.normal(size=(K, OBS)).astype(np.float32)


# ---- advantages and returns -----------------------------------------------------------------


def test_gae_by_hand_with_a_terminal_and_a_time_limit_cut() -> None:
    # Prepare: 4 steps, gamma = lambda = 0.5. Both episodes end after step 1: agent 0's by the
    # task (terminal), agent 1's by a time limit, so its reward there holds gamma * V(final) =
    # 0.5 * 6 on top of the 2 it earned.
    rewards = np.array([[1, 1], [2, 2 + 0.5 * 6], [3, 3], [4, 4]], np.float32)
    ends = np.array([[0, 0], [1, 1], [0, 0], [0, 0]], bool)
    values = np.array([[0.5, 0.5], [1, 1], [1.5, 1.5], [2, 2]], np.float32)
    # Execute
    adv, ret = gae(rewards, ends, values, np.array([10.0, 10.0]), gamma=0.5, lam=0.5)
    # Assert, by hand (delta_t = r_t + 0.5 V_{t+1} [not ended] - V_t, A_t = delta_t + 0.25 A_{t+1}):
    # t=3: 4 + 0.5*10 - 2 = 7;  t=2: (3 + 0.5*2 - 1.5) + 0.25*7 = 4.25
    # t=1: agent 0: 2 - 1 = 1, agent 1: 5 - 1 = 4 (the episode ended: nothing flows back)
    # t=0: (1 + 0.5*1 - 0.5) + 0.25 * A_1 = 1.25 and 2
    np.testing.assert_allclose(adv, [[1.25, 2], [1, 4], [4.25, 4.25], [7, 7]])
    np.testing.assert_allclose(ret, adv + values)


@pytest.mark.numerics
def test_time_limit_cut_bootstraps_from_discount_times_the_final_window_value(monkeypatch) -> None:
    # Prepare: 3 agents, rollout 4, window 2. After step 1 agent 0's episode ends by the task,
    # agent 1's by a time limit (with its last observation), and agent 2 stops acting (no done:
    # terminated before its team).
    gamma = 0.9
    learner = _learner(K=3, window=2, rollout=4, discount=gamma, obs_norm=False)
    rng = np.random.default_rng(0)
    seen: dict[str, np.ndarray] = {}

    def spy(rewards, ends, values, next_value, g, lam):  # noqa: ANN001, ANN202
        seen.update(rewards=rewards.copy(), ends=ends.copy(), std=learner.return_moments.std)
        return gae(rewards, ends, values, next_value, g, lam)

    monkeypatch.setattr(actor_critic, "gae", spy)
    obs = [_obs(rng, 3) for _ in range(5)]
    raw = rng.normal(size=(4, 3)).astype(np.float32)
    final = _obs(rng, 3)
    alive = np.array([True, True, False])
    learner.act(obs[0])
    learner.act(obs[1], raw[0])
    learner.act(
        obs[2], raw[1], done=np.array([True, True, False]), alive=alive,
        truncated=np.array([False, True, False]), final_obs=final,
    )  # fmt: skip
    learner.act(obs[3], raw[2], alive=alive)
    # agent 1's final window: the observation before the cut, then the cut-off one
    window = torch.from_numpy(np.stack([obs[1][1], final[1]])[None, None])  # (1, 1, W, OBS)
    window = window.expand(3, 1, 2, OBS).contiguous()
    with torch.no_grad():
        v_final = float(learner.population.value(window)[1, 0])
    # Execute: the fifth tick completes the rollout and updates
    learner.act(obs[4], raw[3], alive=alive)
    # Assert
    assert learner.updates == 1
    np.testing.assert_array_equal(seen["ends"][1], [True, True, True])
    assert not seen["ends"][[0, 2, 3]].any()
    expected = raw / np.maximum(seen["std"], 1e-4)
    expected[1, 1] += gamma * v_final  # the cut, and only the cut, bootstraps
    # v_final came from the learner's batch of 9 windows per agent and here from 1: twice one
    # forward path's bound (tests/float_bounds.py) on a value of normalised returns, O(1)
    rel = 2 * chain_bound(model_stages(SMALL), model_terms(SMALL, 2))
    atol = gamma * max(abs(v_final), 1.0) * rel
    np.testing.assert_allclose(seen["rewards"], expected, rtol=4 * U32, atol=atol)


# ---- what must not change ---------------------------------------------------------------------


def test_disabled_learning_leaves_weights_optimizer_and_statistics_bit_identical() -> None:
    learner = _learner(K=3, rollout=10, enabled=False)
    before = learner.population.flat.detach().clone()
    rng = np.random.default_rng(1)
    for t in range(35):
        done = np.full(3, t % 7 == 6)
        learner.act(_obs(rng, 3) * 5 + 2, rng.normal(size=3).astype(np.float32), done)
    assert torch.equal(learner.population.flat.detach(), before)
    opt = learner.population.optimizer
    assert not opt.m.any() and not opt.v.any() and not opt.t.any()
    np.testing.assert_array_equal(learner.obs_moments.mean, 0.0)
    np.testing.assert_array_equal(learner.obs_moments.var, 1.0)
    np.testing.assert_array_equal(learner.return_moments.var, 1.0)
    assert learner.updates == 0 and learner.stats == {}


def test_an_agent_with_no_live_step_stays_unchanged() -> None:
    learner = _learner(K=2, rollout=5, epochs=2)
    before = learner.population.flat.detach().clone()
    rng = np.random.default_rng(2)
    alive = np.array([True, False])
    for _ in range(6):  # 5 steps, then the tick that updates
        learner.act(_obs(rng, 2), rng.normal(size=2).astype(np.float32), alive=alive)
    flat = learner.population.flat.detach()
    assert learner.updates == 1
    assert torch.equal(flat[1], before[1])
    assert not torch.equal(flat[0], before[0])
    assert learner.population.optimizer.t.tolist() == [2.0, 0.0]


def test_actor_and_critic_live_side_by_side_and_unused_head_halves_never_move() -> None:
    learner = _learner(K=2, rollout=5)
    pop = learner.population
    names = [name for name, _ in pop.specs]
    half = len(names) // 2
    assert all(n.startswith("actor.") for n in names[:half])
    assert [n.replace("actor.", "critic.", 1) for n in names[:half]] == names[half:]
    before = pop.flat.detach().clone()
    rng = np.random.default_rng(3)
    for _ in range(11):
        learner.act(_obs(rng, 2), rng.normal(size=2).astype(np.float32))
    assert learner.updates == 2
    offsets = np.cumsum([0] + [int(np.prod(s)) for _, s in pop.specs])
    moved = {n: not torch.equal(pop.flat[:, a:b], before[:, a:b]) for n, a, b in
             zip(names, offsets[:-1], offsets[1:], strict=True)}  # fmt: skip
    assert not moved["actor.head.value.w"] and not moved["critic.head.policy.w"]
    assert moved["actor.head.policy.w"] and moved["critic.head.value.w"]
    assert moved["actor.blocks.0.ffn.w1"] and moved["critic.blocks.0.ffn.w1"]


def test_running_moments_match_numpy_per_row_and_skip_rows_not_updated() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(3.0, 2.0, size=(50, 3, 2))  # 50 samples, 3 rows, 2 features
    moments = RunningMoments(3, (2,))
    for sample in x:
        moments.update(sample, np.array([True, True, False]))
    np.testing.assert_allclose(moments.mean[:2], x[:, :2].mean(0), rtol=1e-4)
    np.testing.assert_allclose(moments.var[:2], x[:, :2].var(0), rtol=1e-3)
    np.testing.assert_array_equal(moments.mean[2], 0.0)
    np.testing.assert_array_equal(moments.var[2], 1.0)


def test_each_agent_normalises_observations_by_its_own_statistics() -> None:
    # agent 0 observes numbers near 1000, agent 1 near 0.001: both policies read O(1) inputs
    learner = _learner(K=2, rollout=50)
    rng = np.random.default_rng(5)
    for _ in range(40):
        z = rng.normal(size=(2, OBS))
        learner.act((np.array([[1000.0], [0.001]]) * (1 + 0.1 * z)).astype(np.float32))
    window = learner._hist[:, -1]  # (K, OBS) the last normalised observation
    assert np.abs(window).max() < 5 and np.abs(window).min(1).max() < 3


# ---- learning and determinism ------------------------------------------------------------------


def _chain_returns(learn: bool, ticks: int = 1000, K: int = 4, steps: int = 10) -> list[float]:
    """A 1-D chain: start at x in [-4, 4], actions move -1, 0, +1, reward -|x| per step,
    episodes of `steps` cut by a time limit. A policy blind to x walks at random (about -25
    per episode); walking to 0 and staying there earns about -2."""
    learner = OnlineActorCritic(
        SMALL, LearnConfig(lr=3e-3, window=1),
        RLConfig(rollout=2 * steps, discount=0.9, enabled=learn), K, 1, 3, seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.integers(-4, 5, K)
    reward = done = final = None
    t_ep, ret, returns = 0, np.zeros(K), []
    for _ in range(ticks):
        a = learner.act(x[:, None].astype(np.float32), reward, done, None, done, final)
        x = x + a - 1
        reward = -np.abs(x).astype(np.float32)
        ret, t_ep = ret + reward, t_ep + 1
        done = np.full(K, t_ep == steps)
        final = x[:, None].astype(np.float32)
        if t_ep == steps:
            returns.append(float(ret.mean()))
            x, ret, t_ep = rng.integers(-4, 5, K), np.zeros(K), 0
    return returns


def test_learning_walks_the_chain_to_zero_far_better_than_chance() -> None:
    learned, blind = _chain_returns(learn=True), _chain_returns(learn=False)
    assert np.mean(blind[-20:]) < -15
    assert np.mean(learned[-20:]) > -8
    assert np.mean(learned[:10]) < -15  # it started as blind as the others


def test_same_seed_gives_the_same_actions_and_weights() -> None:
    def run(seed: int) -> tuple[np.ndarray, torch.Tensor]:
        learner = _learner(K=3, seed=seed, rollout=10)
        rng = np.random.default_rng(6)
        actions = [learner.act(_obs(rng, 3), rng.normal(size=3).astype(np.float32))
                   for _ in range(35)]  # fmt: skip
        return np.stack(actions), learner.population.flat.detach().clone()

    a1, w1 = run(3)
    a2, w2 = run(3)
    a3, _ = run(4)
    np.testing.assert_array_equal(a1, a2)
    assert torch.equal(w1, w2)
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("groups", [2])
def test_selective_ffn_trains_actor_and_critic_with_routing_stats(groups: int) -> None:
    cfg = ModelConfig(d_model=16, channels=2, layers=1, slope_window=2, ffn_groups=groups)
    learner = OnlineActorCritic(cfg, LearnConfig(window=2), RLConfig(rollout=5), 2, OBS, 3, 0)
    rng = np.random.default_rng(7)
    for _ in range(6):
        learner.act(_obs(rng, 2), rng.normal(size=2).astype(np.float32))
    stats = learner.population.select_stats
    assert learner.updates == 1 and np.isfinite(learner.stats["value_loss"])
    assert stats["select/density"].shape == (4,)  # actor and critic of each agent
    np.testing.assert_allclose(stats["select/density"], 1 / groups)


# ---- an update beside acting (rl.update_lag) ---------------------------------------------------


def _live(learner: OnlineActorCritic, ticks: int, seed: int) -> list[np.ndarray]:
    """`ticks` acting ticks on a fixed random stream; the actions taken."""
    rng = np.random.default_rng(seed)
    K = learner.n_agents
    out = []
    for t in range(ticks):
        reward = None if t == 0 else rng.normal(size=K).astype(np.float32)
        out.append(learner.act(_obs(rng, K), reward))
    return out


def test_an_update_beside_acting_lands_its_change_update_lag_ticks_later_on_what_was_merged() -> (
    None
):
    # Prepare: two learners alike on one stream, rollout 5: one updates at the rollout's end
    # (lag 0), the other on a thread, applied 3 ticks later. The lagged one acts those 3 ticks
    # on the weights the update started from, and meanwhile "gossip" adds 0.25 to agent 1.
    rollout, lag = 5, 3
    now = _learner(K=3, rollout=rollout)
    later = _learner(K=3, rollout=rollout, update_lag=lag)
    _live(now, rollout + 1, seed=1)  # the 6th act runs the update, then acts
    _live(later, rollout + 1, seed=1)
    start = later.population.flat.detach().clone()
    # Execute
    assert later._job is not None and later.updates == 0
    later.population.flat.data[1] += 0.25  # merged while the update runs
    rng = np.random.default_rng(2)
    for _ in range(lag - 1):
        later.act(_obs(rng, 3), np.zeros(3, np.float32))
        assert later.updates == 0, "applied before its tick"
    later.act(_obs(rng, 3), np.zeros(3, np.float32))
    # Assert: applied on the lag-th tick, as the change the synchronous update made, on top of
    # the merge. The thread's steps are the synchronous ones (same data, same operations), so
    # the two differ by rounding only: (start + 0.25) + (work - start) against work + 0.25 is
    # three float32 roundings, each at most half an ulp <= M 2^-24 of numbers up to
    # M = max|w| + 0.25
    assert later.updates == 1 and later._job is None
    assert later.stats.keys() == now.stats.keys()
    expect = now.population.flat.detach().clone()
    expect[1] += 0.25
    assert not torch.equal(now.population.flat, start), "the update changed the weights"
    bound = 3 * float(expect.abs().max() + 0.25) * 2.0**-24
    got = later.population.flat.detach()
    assert float((got - expect).abs().max()) <= bound


def test_an_update_beside_acting_gives_the_same_run_whatever_the_threads_timing(
    monkeypatch,
) -> None:
    # Prepare: the same lagged learner twice; the second time every update thread sleeps
    # before it starts, so acting runs far ahead of it until the tick it is due.
    import time as time_

    def run() -> tuple[list[np.ndarray], torch.Tensor]:
        learner = _learner(K=2, rollout=4, update_lag=2)
        actions = _live(learner, 15, seed=3)
        learner.settle()
        return actions, learner.population.flat.detach().clone()

    first = run()
    slow = actor_critic.OnlineActorCritic._learn

    def late(self, *args):  # type: ignore[no-untyped-def]
        time_.sleep(0.05)
        return slow(self, *args)

    monkeypatch.setattr(actor_critic.OnlineActorCritic, "_learn", late)
    # Execute
    second = run()
    # Assert: same actions, same weights
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))
    assert torch.equal(first[1], second[1])


def test_an_update_that_fails_on_its_thread_fails_the_tick_it_is_due(monkeypatch) -> None:
    learner = _learner(K=2, rollout=3, update_lag=1)

    def broken(self, *args):  # type: ignore[no-untyped-def]
        raise FloatingPointError("nan in the loss")

    monkeypatch.setattr(actor_critic.OnlineActorCritic, "_learn", broken)
    with pytest.raises(FloatingPointError, match="nan in the loss"):
        _live(learner, 5, seed=0)


def test_update_lag_must_be_less_than_the_rollout() -> None:
    with pytest.raises(ValueError, match="update_lag .5. must be less than rollout .5."):
        RLConfig(rollout=5, update_lag=5)


# ---- continuous actions (a Gaussian policy) ----------------------------------------------------

BOX = ActionBox((0.0, -1.0, 2.0), (1.0, 1.0, 6.0))  # three ranges: widths 1, 2 and 4


def _gaussian(K: int = 3, seed: int = 0, box: ActionBox = BOX, **rl: Any) -> OnlineActorCritic:
    return OnlineActorCritic(
        SMALL, LearnConfig(lr=3e-3, window=1), RLConfig(**rl), K, OBS, box, seed
    )


def test_gaussian_log_prob_and_entropy_match_torch_normal() -> None:
    # Prepare: outputs, log stds and actions (some outside the box: the learner never clips)
    g = torch.Generator().manual_seed(0)
    dist = Gaussian(BOX)
    out = torch.randn(4, 5, 3, generator=g)  # (K, R, d)
    log_std = torch.randn(4, 3, generator=g)  # (K, d)
    a = torch.randn(4, 5, 3, generator=g) * 3
    # the reference, in float64, from the box itself: mean = centre + half * out, std = half *
    # exp(log_std)
    low, high = torch.tensor(BOX.low).double(), torch.tensor(BOX.high).double()
    centre, half = (low + high) / 2, (high - low) / 2
    normal = torch.distributions.Normal(
        centre + half * out.double(), half * log_std.double().exp()[:, None]
    )
    want_logp = normal.log_prob(a.double()).sum(-1)  # (K, R)
    want_entropy = normal.entropy().sum(-1)
    # Execute
    logp, entropy = dist.evaluate(out, log_std, a)
    # Assert: about ten float32 roundings per dimension (mean, log std, exp, difference,
    # square, sums), each within 2u (exp, log) of a term no larger than z^2/2 + |log std| + 2
    # (z the standardised action): 32 u times the sum of those terms bounds the difference
    z = (a.double() - normal.mean) / normal.stddev
    scale = (z**2 / 2 + normal.stddev.log().abs() + 2).sum(-1)
    assert logp.shape == entropy.shape == (4, 5)
    assert ((logp.double() - want_logp).abs() <= 32 * U32 * scale).all()
    assert ((entropy.double() - want_entropy).abs() <= 32 * U32 * scale).all()


def test_gaussian_draws_follow_its_mean_and_std_and_report_their_log_prob() -> None:
    # 4000 agents' draws at one mean: the sample mean and std per dimension land within
    # 5 standard errors of the policy's (std / sqrt(n) and std / sqrt(2n))
    dist = Gaussian(BOX)
    out = torch.full((4000, 3), 0.5)  # mean = centre + half / 2
    log_std = torch.full((4000, 3), -0.5)
    action, logp = dist.sample(out, log_std, torch.Generator().manual_seed(1))
    mean, log_sd = dist.mean_and_log_std(out, log_std)
    sd = log_sd.exp()[0]
    n = len(action)
    assert ((action.mean(0) - mean[0]).abs() <= 5 * sd / n**0.5).all()
    assert ((action.std(0) - sd).abs() <= 5 * sd / (2 * n) ** 0.5).all()
    # the log-probability handed back is the one the update recomputes
    again, _ = dist.evaluate(out[:, None], log_std, action[:, None])
    torch.testing.assert_close(logp, again[:, 0], rtol=0, atol=0)


def test_a_box_row_ends_with_each_agents_log_std_after_actor_and_critic() -> None:
    learner = _gaussian(K=2)
    pop = learner.population
    names = [name for name, _ in pop.specs]
    assert names[-1] == "actor.log_std" and pop.specs[-1][1] == (3,)
    assert pop.num_params == 2 * pop.role_params + 3
    assert pop.n_actions == 3  # the actor's head gives the 3 means
    np.testing.assert_array_equal(pop.flat.detach()[:, -3:], INIT_LOG_STD)
    # the initial policy sits at the box's centre (a small policy head), whatever its units
    with torch.no_grad():
        out = pop.policy(torch.randn(2, 1, 1, OBS))[:, 0]
        mean, _ = pop.dist.mean_and_log_std(out, pop.split(pop.flat)[1])
    np.testing.assert_allclose(mean, [[0.5, 0.0, 4.0]] * 2, atol=0.1)


def test_the_learner_keeps_its_draws_unclipped_the_world_clips() -> None:
    # Prepare: a wide policy (std 2.7 half-widths), so that many draws fall outside the box
    learner = _gaussian(K=4, rollout=50)
    learner.population.flat.data[:, -3:] = 1.0
    rng = np.random.default_rng(8)
    # Execute
    actions = np.stack([learner.act(_obs(rng, 4)) for _ in range(10)])  # (10, K, d)
    # Assert: float32 (K, d) actions, a good share outside the box, kept as drawn
    assert actions.dtype == np.float32 and actions.shape == (10, 4, 3)
    outside = (actions < np.array(BOX.low)) | (actions > np.array(BOX.high))
    assert outside.mean() > 0.3  # P(|z| > 1 / 2.7) = 0.71 at the centre
    np.testing.assert_array_equal(learner._a[:10], actions)


def _bandit(learn: bool, ticks: int, K: int = 4, target: float = 0.7) -> list[float]:
    """A one-step continuous bandit in [-1, 1]^2: reward -|clip(a) - target| summed over the
    2 numbers (the clip is the world's), each episode one step. Every 50 ticks: how far the
    agents' policy means are from the target (the largest over agents and numbers), on the
    window they just acted on."""
    box = ActionBox((-1.0, -1.0), (1.0, 1.0))
    learner = OnlineActorCritic(
        SMALL, LearnConfig(lr=3e-3, window=1), RLConfig(rollout=20, enabled=learn), K, 1, box, 0
    )
    pop = learner.population
    obs, reward, done = np.ones((K, 1), np.float32), None, None
    far = []
    for t in range(ticks):
        a = learner.act(obs, reward, done)
        reward = -np.abs(np.clip(a, -1, 1) - target).sum(1).astype(np.float32)
        done = np.ones(K, bool)
        if t % 50 == 0:
            with torch.no_grad():
                out = pop.policy(torch.from_numpy(learner._hist[:, None]))[:, 0]
                mean, _ = pop.dist.mean_and_log_std(out, pop.split(pop.flat)[1])
            far.append(float((mean - target).abs().max()))
    return far


def test_agents_learn_to_put_the_mean_on_the_bandits_target() -> None:
    learned, blind = _bandit(learn=True, ticks=400), _bandit(learn=False, ticks=400)
    # both start at the box's centre, 0.7 from the target in each number
    assert learned[0] == pytest.approx(0.7, abs=0.05) and blind[0] == pytest.approx(0.7, abs=0.05)
    assert min(blind) > 0.65  # not learning, the mean stays where it was
    # measured: 0.13 - 0.21 from tick 100 on (5 updates of 4 agents x 20 draws); half the
    # start's distance leaves room for another kernel's rounding to change the draws' course
    assert max(learned[-3:]) < 0.35


def test_same_seed_gives_the_same_continuous_actions_and_weights() -> None:
    def run(seed: int, lag: int = 0) -> tuple[np.ndarray, torch.Tensor]:
        learner = _gaussian(K=3, seed=seed, rollout=10, update_lag=lag)
        actions = _live(learner, 35, seed=6)
        learner.settle()
        return np.stack(actions), learner.population.flat.detach().clone()

    a1, w1 = run(3)
    a2, w2 = run(3)
    a3, _ = run(4)
    np.testing.assert_array_equal(a1, a2)
    assert torch.equal(w1, w2)
    assert not np.array_equal(a1, a3)
    # an update beside acting (rl.update_lag): a function of the seed too, and it learns
    l1, v1 = run(3, lag=4)
    l2, v2 = run(3, lag=4)
    np.testing.assert_array_equal(l1, l2)
    assert torch.equal(v1, v2)
    assert not torch.equal(v1[:, -3:], torch.full_like(v1[:, -3:], INIT_LOG_STD))


def test_the_log_std_is_clipped_with_the_actors_gradient_not_the_critics(monkeypatch) -> None:
    # Prepare: a loss linear in the weights, so its gradient is known: g = c (K, P), with the
    # log std's part far larger than the rest; capture what reaches the optimizer
    learner = _gaussian(K=2, max_grad_norm=0.5)
    pop = learner.population
    c = torch.randn(pop.flat.shape, generator=torch.Generator().manual_seed(9))
    c[:, -3:] *= 100.0
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(pop.optimizer, "step", lambda flat, grad, active: seen.append(grad))
    # Execute
    learner._step((pop.flat * c).sum(1), torch.ones(2, dtype=torch.bool), pop.flat)
    # Assert: the actor with its log std, and the critic, each scaled to norm 0.5 apart, each
    # in its own direction
    (grad,) = seen
    P = pop.role_params
    actor = torch.cat([grad[:, :P], grad[:, 2 * P :]], 1)
    critic = grad[:, P : 2 * P]
    torch.testing.assert_close(actor.norm(dim=1), torch.full((2,), 0.5))
    torch.testing.assert_close(critic.norm(dim=1), torch.full((2,), 0.5))
    scale = actor.norm(dim=1) / torch.cat([c[:, :P], c[:, 2 * P :]], 1).norm(dim=1)
    torch.testing.assert_close(grad[:, -3:], c[:, -3:] * scale[:, None])
