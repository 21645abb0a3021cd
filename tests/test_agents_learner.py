"""Unit tests of the online learner (agents/learner.py): history, late labels, replay, learning."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from float_bounds import (
    U64,
    assert_close_rel,
    assert_took_step,
    chain_bound,
    model_stages,
    model_terms,
    reference_step,
    snapshot,
)

from agents.config import LearnConfig, ModelConfig
from agents.learner import OnlineLearner, RecentWindows, ReservoirReplay, balanced_accuracy

OBS = 16


def _learner(K=3, n_classes=3, seed=0, **learn) -> OnlineLearner:
    return OnlineLearner(ModelConfig(), LearnConfig(**learn), K, OBS, n_classes, seed)


def _tick_obs(K: int, tick: int) -> np.ndarray:
    """Observation whose every entry is tick + 1 (0 is reserved for zero padding)."""
    return np.full((K, OBS), tick + 1, np.float32)


def test_report_confidence_answers_background_below_the_operating_point() -> None:
    import torch

    learner = _learner(K=3, n_classes=3, report_confidence=0.6)
    # softmax rows: class 2 at 0.84, class 1 at ~0.42 (argmax, below 0.6), class 0 on top
    logits = torch.log(torch.tensor([[0.08, 0.08, 0.84], [0.29, 0.42, 0.29], [0.5, 0.3, 0.2]]))
    learner.population.step = lambda obs: logits  # type: ignore[method-assign]
    assert learner.act(0, _tick_obs(3, 0)).tolist() == [2, 0, 0]
    plain = _learner(K=3, n_classes=3)
    plain.population.step = lambda obs: logits  # type: ignore[method-assign]
    assert plain.act(0, _tick_obs(3, 0)).tolist() == [2, 1, 0]


# ---- history and late labels ----------------------------------------------------------------


def test_act_returns_one_class_per_agent_and_requires_increasing_ticks():
    learner = _learner(K=3)
    actions = learner.act(0, _tick_obs(3, 0))
    assert actions.shape == (3,) and actions.dtype == np.int64
    assert ((actions >= 0) & (actions < 3)).all()
    with pytest.raises(ValueError, match="increase"):
        learner.act(0, _tick_obs(3, 0))


def test_late_label_stores_the_zero_padded_window_ending_at_its_tick():
    # Prepare: 6 ticks observed, window 4; agent 1 is labelled at tick 2 and tick 5
    learner = _learner(K=2, window=4, history=8)
    for t in range(6):
        learner.act(t, _tick_obs(2, t))
    # Execute
    learner.add_labels(np.array([[1, 2, 2], [1, 5, 0]]))
    # Assert: window of tick 2 = [pad, t0, t1, t2], of tick 5 = [t2..t5]
    replay = learner.replay
    assert replay.size[1].tolist() == [1, 0, 1] and replay.size[0].sum() == 0
    np.testing.assert_array_equal(replay.items[1, 2, 0, :, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(replay.items[1, 0, 0, :, 0], [3, 4, 5, 6])
    assert learner.labels_dropped == 0


def test_labels_older_than_history_or_never_observed_are_dropped_and_counted():
    # Prepare: history 8 -> after 20 ticks (0..19) only ticks 12..19 can be labelled
    learner = _learner(K=2, window=4, history=8)
    for t in range(20):
        learner.act(t, _tick_obs(2, t))
    # Execute
    learner.add_labels(np.array([[0, 11, 1], [0, 12, 1], [1, 19, 2], [1, 25, 2]]))
    # Assert: tick 11 (too old) and 25 (never observed) dropped; tick 12's window intact
    assert learner.labels_dropped == 2
    assert learner.replay.size.sum() == 2
    np.testing.assert_array_equal(learner.replay.items[0, 1, 0, :, 0], [10, 11, 12, 13])


def test_take_example_counts_counts_added_windows_since_last_call():
    learner = _learner(K=3)
    for t in range(5):
        learner.act(t, _tick_obs(3, t))
    learner.add_labels(np.array([[0, 1, 0], [0, 2, 1], [2, 3, 2], [1, 99, 0]]))
    assert learner.take_example_counts().tolist() == [2, 0, 1]
    assert learner.take_example_counts().tolist() == [0, 0, 0]


def test_bad_labels_raise():
    learner = _learner(K=2)
    learner.act(0, _tick_obs(2, 0))
    with pytest.raises(ValueError, match="agent"):
        learner.add_labels(np.array([[2, 0, 0]]))
    with pytest.raises(ValueError, match="class"):
        learner.add_labels(np.array([[0, 0, 3]]))


# ---- learning steps -------------------------------------------------------------------------


def test_learn_step_masks_out_agents_with_empty_replay():
    # Prepare: only agent 0 has a labelled window
    learner = _learner(K=3)
    for t in range(3):
        learner.act(t, _tick_obs(3, t))
    learner.add_labels(np.array([[0, 2, 1]]))
    before = learner.population.flat.detach().clone()
    # Execute
    out = learner.learn_step()
    # Assert
    assert out["trained"].tolist() == [True, False, False]
    assert np.isfinite(out["loss"][0]) and np.isnan(out["loss"][1:]).all()
    after = learner.population.flat.detach()
    assert not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:])


def test_learner_is_deterministic_given_seed():
    def run(seed):
        learner = _learner(K=2, seed=seed)
        rng = np.random.default_rng(5)
        for t in range(12):
            learner.act(t, rng.standard_normal((2, OBS)).astype(np.float32))
            learner.add_labels(np.array([[0, t, t % 3], [1, t, (t + 1) % 3]]))
            learner.learn_step()
        return learner.population.flat.detach().clone()

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _stream_and_probe(K, n_classes, blind_agent, blind_class, ticks, seed=0):
    """Class prototypes + noise; mostly background class 0. `blind_agent` never sees
    `blind_class` (it sees class 1 instead). Yields per tick (obs (K, OBS), classes (K,))."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((n_classes, OBS)).astype(np.float32) * 1.5
    p = np.array([0.6] + [0.4 / (n_classes - 1)] * (n_classes - 1))

    def draw(shape):
        cls = rng.choice(n_classes, size=shape, p=p)
        return protos[cls] + 0.5 * rng.standard_normal((*shape, OBS)).astype(np.float32), cls

    stream = []
    for _ in range(ticks):
        obs, cls = draw((K,))
        if cls[blind_agent] == blind_class:
            cls[blind_agent] = 1
            obs[blind_agent] = protos[1] + 0.5 * rng.standard_normal(OBS)
        stream.append((obs.astype(np.float32), cls))
    # probe: windows of random history whose last token is each class equally often
    windows, _ = draw((300, 8))
    labels = np.arange(300) % n_classes
    windows[:, -1] = protos[labels] + 0.5 * rng.standard_normal((300, OBS))
    return stream, windows.astype(np.float32), labels


def test_learner_on_delayed_partial_labels_beats_chance_and_misses_unseen_class():
    # Prepare: 4 agents, 3 classes; agent 3 never sees class 2; half the ticks are labelled,
    # 3 ticks late
    K, n_classes, delay = 4, 3, 3
    stream, probe_x, probe_y = _stream_and_probe(
        K, n_classes, blind_agent=3, blind_class=2, ticks=400
    )
    learner = _learner(K=K, n_classes=n_classes, seed=0)
    label_rng = np.random.default_rng(1)
    pending: deque[np.ndarray] = deque()
    # Execute
    for tick, (obs, cls) in enumerate(stream):
        learner.act(tick, obs)
        labelled = label_rng.random(K) < 0.5
        pending.append(np.stack([np.arange(K), np.full(K, tick), cls], 1)[labelled])
        if len(pending) > delay:
            learner.add_labels(pending.popleft())
        if tick % 2 == 0:
            learner.learn_step()
    per_class = learner.evaluate(probe_x, probe_y)
    # Assert: clearly above chance (1/3) on the balanced probe; the blind agent fails class 2.
    # Measured with this test's stream, labels and learner drawn from seeds 0-5, under the
    # three kernel families of tests/numerics_matrix.sh at 1 and 2 threads (36 runs): every
    # sighted agent's balanced accuracy 1.00, the blind agent's recall of classes 0 and 1
    # 1.00, its recall of class 2 0.00 to 0.01 (100 probe windows per class, so 0.01 is one
    # window), the sighted agents' 1.00. The thresholds sit between those and chance.
    balanced = balanced_accuracy(per_class)
    assert per_class.shape == (K, n_classes)
    assert (balanced[:3] > 0.85).all(), balanced
    # never trained towards class 2, it only predicts 2 where that logit happens to stay on
    # top for unseen inputs: far below chance, where an agent that had learnt the class (like
    # the sighted ones) is near 1; gossip should fix this later
    assert per_class[3, 2] < 0.2, per_class[3]
    assert per_class[3, 2] < per_class[:3, 2].min() - 0.6
    assert per_class[3, :2].min() > 0.85, per_class[3]


def test_evaluate_marks_absent_classes_nan_and_balanced_accuracy_skips_them():
    learner = _learner(K=2, n_classes=3)
    per_class = learner.evaluate(np.zeros((4, 8, OBS), np.float32), np.array([0, 0, 2, 2]))
    assert np.isnan(per_class[:, 1]).all() and np.isfinite(per_class[:, [0, 2]]).all()
    np.testing.assert_allclose(balanced_accuracy(np.array([[1.0, np.nan, 0.5]])), [0.75])


# ---- reservoir replay -----------------------------------------------------------------------


def test_reservoir_keeps_capacity_and_a_uniform_sample_of_the_stream():
    # Prepare: 64 agents' reservoirs each offered the same 1000 items of class 0
    K, n, capacity = 64, 1000, 100  # 2 classes -> 50 slots per class
    replay = ReservoirReplay(K, 2, capacity, (1,), np.random.default_rng(0))
    ids = np.arange(n, dtype=np.float32)
    # Execute
    for start in range(0, n, 50):  # offered in chunks, as labels arrive
        chunk = ids[start : start + 50]
        agents = np.repeat(np.arange(K), len(chunk))
        replay.add(agents, np.zeros_like(agents), np.tile(chunk, K)[:, None])
    # Assert: bound kept, counts right, kept ids uniform over the stream (chi-square, 9 dof)
    assert replay.size[:, 0].tolist() == [50] * K and replay.size[:, 1].sum() == 0
    assert replay.seen[:, 0].tolist() == [n] * K
    kept = replay.items[:, 0, :, 0].ravel()
    assert len(np.unique(replay.items[0, 0, :, 0])) == 50  # no duplicates within a reservoir
    hist = np.histogram(kept, bins=10, range=(0, n))[0]
    expected = len(kept) / 10
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 27.9, hist  # p = 0.001 critical value; early items are not favoured


def test_reservoir_add_in_array_form_is_algorithm_r_item_by_item():
    # Prepare: calls that mix reservoirs, repeat one reservoir many times within a call, fill
    # it past its capacity mid-call, and write one slot twice; a copy of the same draws
    # replayed through Algorithm R one item at a time is the reference.
    K, C, capacity = 3, 2, 8  # 4 slots per (agent, class)
    replay = ReservoirReplay(K, C, capacity, (1,), np.random.default_rng(5))
    draws = np.random.default_rng(5)
    items = np.zeros((K, C, 4, 1), np.float32)
    size, seen = np.zeros((K, C), np.int64), np.zeros((K, C), np.int64)
    stream = np.random.default_rng(9)
    for n in (0, 5, 40, 3, 60):
        agents, classes = stream.integers(0, K, n), stream.integers(0, C, n)
        values = stream.normal(size=(n, 1)).astype(np.float32)
        # Execute
        replay.add(agents, classes, values)
        # the reference: the loop the array form replaced
        u = draws.random(n)
        for i, (a, c) in enumerate(zip(agents.tolist(), classes.tolist(), strict=True)):
            seen[a, c] += 1
            if size[a, c] < 4:
                slot = size[a, c]
                size[a, c] += 1
            else:
                slot = int(u[i] * seen[a, c])
                if slot >= 4:
                    continue
            items[a, c, slot] = values[i]
        # Assert
        assert np.array_equal(replay.size, size) and np.array_equal(replay.seen, seen)
        assert np.array_equal(replay.items, items)


def test_replay_sampling_is_class_balanced_and_uniform_within_a_class():
    # Prepare: agent 0 holds 40 background items and 3 event items; agent 1 is empty
    replay = ReservoirReplay(2, 2, 100, (1,), np.random.default_rng(0))
    replay.add(np.zeros(40, np.int64), np.zeros(40, np.int64), np.arange(40.0)[:, None])
    replay.add(np.zeros(3, np.int64), np.ones(3, np.int64), np.arange(3.0)[:, None])
    # Execute
    items, cls, mask = replay.sample(4000)
    # Assert
    assert mask[0].all() and not mask[1].any()
    assert abs(cls[0].mean() - 0.5) < 0.03  # both classes equally often
    background = items[0, cls[0] == 0, 0]
    hist = np.bincount(background.astype(np.int64), minlength=40)
    expected = len(background) / 40
    assert ((hist - expected) ** 2 / expected).sum() < 72.1  # chi-square, 39 dof, p = 0.001


# ---- plain online SGD (replay_mode "none") and online EWC in the learner --------------------


def test_recent_windows_returns_the_newest_first_and_overwrites_the_oldest():
    recent = RecentWindows(n_agents=2, capacity=3, item_shape=(1,))
    recent.add(np.zeros(5, np.int64), np.arange(5), np.arange(5.0)[:, None])  # agent 0: 0..4
    recent.add(np.ones(1, np.int64), np.array([7]), np.array([[9.0]]))  # agent 1: one item
    items, classes, mask = recent.newest(3, limit=np.array([3, 3]))
    assert classes[0].tolist() == [4, 3, 2] and items[0, :, 0].tolist() == [4, 3, 2]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert classes[1, 0] == 7
    _, classes, mask = recent.take_fresh(2)  # 5 and 1 fresh: the 2 and 1 newest
    assert mask.tolist() == [[True, True], [True, False]] and classes[0].tolist() == [4, 3]
    assert recent.fresh.tolist() == [0, 0]


def test_plain_online_sgd_trains_once_on_each_new_window_only():
    # Prepare: replay off; agent 0 gets two labels, agent 1 none
    learner = _learner(K=2, replay_mode="none")
    for t in range(4):
        learner.act(t, _tick_obs(2, t))
    learner.add_labels(np.array([[0, 2, 1], [0, 3, 2]]))
    before = learner.population.flat.detach().clone()
    # Execute
    first = learner.learn_step()
    second = learner.learn_step()  # nothing new arrived: nobody trains
    # Assert
    assert first["trained"].tolist() == [True, False] and not second["trained"].any()
    after = learner.population.flat.detach()
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert learner.replay.size.sum() == 0  # the reservoir is not filled


@pytest.mark.parametrize("replay_mode", ["reservoir", "none"])
def test_ewc_consolidates_every_n_steps_only_agents_with_data(replay_mode):
    # Prepare: agent 2 never gets a label
    learner = _learner(K=3, replay_mode=replay_mode, ewc_lambda=10.0, consolidate_every=3)
    assert learner.ewc is not None
    rng = np.random.default_rng(0)
    done = []
    # Execute
    for t in range(6):
        learner.act(t, rng.standard_normal((3, OBS)).astype(np.float32))
        learner.add_labels(np.array([[0, t, t % 3], [1, t, (t + 1) % 3]]))
        done.append(learner.learn_step()["consolidated"].tolist())
    # Assert: steps 3 and 6 consolidate agents 0 and 1; anchor = the weights after step 6
    assert [i + 1 for i, d in enumerate(done) if any(d)] == [3, 6]
    assert done[5] == [True, True, False]
    assert learner.ewc.consolidations.tolist() == [2, 2, 0]
    assert (learner.ewc.fisher[:2] > 0).any(1).all() and (learner.ewc.fisher[2] == 0).all()
    torch.testing.assert_close(learner.ewc.anchor[:2], learner.population.flat.detach()[:2])


def test_ewc_penalty_holds_the_weights_near_the_anchor():
    # Prepare: the same learner with and without EWC, consolidated once after 10 steps,
    # then trained on a new labelling of the same inputs
    def drift(ewc_lambda: float) -> float:
        learner = _learner(K=1, ewc_lambda=ewc_lambda, consolidate_every=10, seed=3)
        rng = np.random.default_rng(0)
        for t in range(30):
            learner.act(t, rng.standard_normal((1, OBS)).astype(np.float32))
            cls = t % 3 if t < 10 else (t + 1) % 3
            learner.add_labels(np.array([[0, t, cls]]))
            learner.learn_step()
            if t == 9:
                anchor = learner.population.flat.detach().clone()
        return float((learner.population.flat.detach() - anchor).norm())

    # Execute / Assert: a stiff penalty (lambda 1e5) halves the drift away from the anchor
    assert drift(1e5) < 0.5 * drift(1e-9)


def test_learn_config_rejects_unknown_modes():
    with pytest.raises(ValueError, match="replay_mode"):
        LearnConfig(replay_mode="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trainable"):
        LearnConfig(trainable="encoder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ewc_lambda"):
        LearnConfig(ewc_lambda=-1.0)


@pytest.mark.numerics
def test_pooled_population_is_one_model_trained_on_everyones_data():
    # The centralized upper bound: K pooled rows take the step a single model takes on the
    # union of their batches (equal batch sizes), and stay equal; agent 2 has no data this step.
    # Both are held to the float64 reference of that single model's step, not to each other:
    # the mean of two agents' gradients and one gradient over both batches round differently,
    # and Adam turns that into +-lr where a gradient is near 0 (tests/float_bounds.py).
    from agents.population import Population

    cfg, learn, K, B, T = ModelConfig(), LearnConfig(lr=1e-2), 3, 4, 5
    pooled = Population(cfg, learn, K, OBS, 3, seed=0)
    pooled.pooled = True
    single = Population(cfg, learn, 1, OBS, 3, seed=0)
    # the float32 gradient's error, relative to its max norm (float_bounds.chain_bound)
    rho = chain_bound(model_stages(cfg, backward=True), model_terms(cfg, 2 * B * T))
    g = torch.Generator().manual_seed(1)
    for step in range(1, 4):
        x = torch.randn(K, B, T, OBS, generator=g)
        y = torch.randint(0, 3, (K, B), generator=g)
        mask = torch.ones(K, B, dtype=torch.bool)
        mask[2] = False
        # one model, the active agents' batches side by side, each agent's mean weighing equally
        union = x[:2].reshape(1, 2 * B, T, OBS), y[:2].reshape(1, -1), mask[:2].reshape(1, -1)
        # Execute / Assert: the single model's step, and the pooled rows' from their own state
        before = snapshot(single)
        ref = reference_step(single, before, *union)
        assert_took_step(single, before, single.train_step(*union), ref, rho, f"single {step}")
        before = snapshot(pooled)
        ref = reference_step(pooled, before, x, y, mask, pooled=True)
        loss = pooled.train_step(x, y, mask)
        rows = pooled.flat.detach()
        # the same update applied to equal rows: the same arithmetic, so the same bits
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])
        assert_took_step(pooled, before, loss, ref, rho, f"pooled {step}")
        # and the pooled gradient is the union's (the mean of two means of B examples is the
        # mean of 2B): float64 against float64, two paths each within chain_bound at u64
        ref_union = reference_step(single, {k: v[:1] for k, v in before.items()}, *union)
        rel = 2 * chain_bound(model_stages(cfg, backward=True), model_terms(cfg, 2 * B * T), U64)
        assert_close_rel(ref.grad[0], ref_union.grad[0], rel, "pooled vs union gradient")
    assert not torch.allclose(rows[0], Population(cfg, learn, 1, OBS, 3, seed=0).flat[0])


def _head_rows(learner: OnlineLearner) -> torch.Tensor:
    from agents.yan.params import views

    head = views(learner.population.flat.detach(), learner.population.specs).head.cls
    assert head is not None
    return head.w.clone()  # (K, n_classes, D)


def test_restricted_softmax_leaves_the_classes_an_agent_was_never_taught_alone():
    # Prepare: 2 agents; agent 0 is taught classes 0 and 1, agent 1 classes 0 and 2
    def learner(scale: float) -> OnlineLearner:
        cfg = LearnConfig(batch=8, window=4, replay=40, absent_class_scale=scale)
        return OnlineLearner(ModelConfig(d_model=16, channels=2, layers=1), cfg, 2, 6, 5, seed=1)

    rng = np.random.default_rng(0)
    runs = {}
    for scale in (0.0, 1.0):
        ln = learner(scale)
        for t in range(6):
            ln.act(t, rng.normal(size=(2, 6)).astype(np.float32))
        ln.add_labels(np.array([[0, 2, 0], [0, 3, 1], [1, 2, 0], [1, 4, 2]]))
        before = _head_rows(ln)
        ln.learn_step()
        runs[scale] = (before, _head_rows(ln), ln.taught.copy())
    before, after, taught = runs[0.0]
    assert taught.tolist() == [[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]]
    # Assert: with scale 0 the head rows of the untaught classes do not move (no gradient:
    # Adam's first step moves only where the gradient is nonzero), the taught ones do
    for k in range(2):
        for c in range(5):
            moved = not torch.equal(before[k, c], after[k, c])
            assert moved == bool(taught[k, c]), (k, c)
    # ... while the plain softmax pushes every class's row
    before, after, _ = runs[1.0]
    assert not torch.equal(before[0, 3], after[0, 3])


def test_a_renewed_agent_forgets_what_it_was_taught():
    cfg = LearnConfig(batch=8, window=4, replay=40)
    ln = OnlineLearner(ModelConfig(d_model=16, channels=2, layers=1), cfg, 2, 6, 5, seed=1)
    for t in range(4):
        ln.act(t, np.zeros((2, 6), np.float32))
    ln.add_labels(np.array([[0, 2, 3], [1, 2, 4]]))
    ln.renew([1])
    assert ln.taught[0, 3] and not ln.taught[1].any()
