"""Re-tasking on the drone patrol (issue 17): zone rotation, drones that join mid-run with a
fresh model, the first-encounter figures, and the newcomer's catch-up."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig
from envs.drone_patrol.metrics import KNOWN_LEAD_S, PatrolMetrics
from swarm.records import Row

FIRE = EVENT_CLASSES.index("fire")
SIGN = EVENT_CLASSES.index("altitude_limit_sign")


# ---- the config refuses what cannot work ----------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        ({"rotation_s": 60, "patrol": "shared"}, "rotation_s moves drones from zone to zone"),
        ({"rotation_s": 60, "physics_workers": 2}, "physics_workers: 1"),
        (
            {"arrivals": [{"agent": 1, "at_s": 10}, {"agent": 1, "at_s": 20}]},
            "arrives twice",
        ),
        (
            {"arrivals": [{"agent": 1, "at_s": 50}], "departures": [{"agent": 1, "at_s": 40}]},
            "not after it arrives",
        ),
        ({"arrivals": [{"agent": 1, "at_s": 0}]}, "greater than 0"),
    ],
)
def test_combinations_that_cannot_work_are_refused_with_the_reason(cfg, reason) -> None:
    with pytest.raises(ValidationError, match=reason):
        DronePatrolConfig(**cfg)


def test_an_arrival_of_a_drone_that_does_not_exist_is_refused(make_world) -> None:
    with pytest.raises(ValueError, match="drone_9.*does not exist"):
        make_world(4, arrivals=[{"agent": 9, "at_s": 5.0}])


# ---- rotation and arrivals in the world (PyBullet) -------------------------------------------


def test_rotation_moves_every_group_to_the_next_zone_and_keeps_altitudes_apart(make_world):
    # Prepare: 8 drones, a rotation every 5 s (10 ticks)
    world = make_world(8, seed=1, rotation_s=5.0, physics_hz=60)
    world.reset()
    p = world.patrol
    zone_of_point = world.map.point_zone
    # Assert: altitudes are distinct over the whole swarm (groups cross between zones)
    assert len(np.unique(np.round(p.cruise_alt, 6))) == 8
    before = zone_of_point[world.target_points()].copy()
    assert (before == np.arange(8) % len(ZONES)).all()
    # Execute: to the first rotation tick
    for _ in range(10):
        world.step(np.zeros(8, np.int64))
    # Assert: every drone now heads for a point of the next zone
    after = zone_of_point[world.target_points()]
    assert (after == (before + 1) % len(ZONES)).all()
    for _ in range(10):
        world.step(np.zeros(8, np.int64))
    assert (zone_of_point[world.target_points()] == (before + 2) % len(ZONES)).all()


def test_a_drone_that_arrives_later_stands_still_then_joins_its_group(make_world):
    # Prepare: drone_2 joins at 4 s (tick 8), labels of every report
    labels = {"label_fraction": 1.0, "background_label_fraction": 1.0, "label_delay_ticks": 0}
    world = make_world(4, seed=2, arrivals=[{"agent": 2, "at_s": 4.0}], physics_hz=60, **labels)
    world.reset()
    assert world.join_ticks() == [0, 0, 8, 0]
    parked = world.positions()[2].copy()
    labelled = set()
    for _ in range(8):
        assert not world.patrolling()[2] and world.target_points()[2] == -1
        result = world.step(world.true_classes())
        seen_before = result.labels[:, 1] < 8  # observations before its join at tick 8
        labelled |= set(result.labels[seen_before, 0].tolist())
    # Assert: on the ground, where it stood; no operator confirmed anything it saw
    assert world.positions()[2][2] < 0.1
    assert np.allclose(world.positions()[2][:2], parked[:2], atol=0.05)
    assert 2 not in labelled and {0, 1, 3} <= labelled
    # Execute: it has joined: it patrols, and takes off toward its group's route
    assert world.patrolling()[2] and world.target_points()[2] >= 0
    for _ in range(12):
        world.step(world.true_classes())
    assert world.positions()[2][2] > 2.0
    assert world.task_metrics()["task/collisions"] == 0


# ---- first encounters (pure numpy) ---------------------------------------------------------


def _metrics(n: int = 3) -> PatrolMetrics:
    return PatrolMetrics(tick_s=1.0, n_agents=n)


def test_a_first_encounter_is_a_drone_seeing_a_kind_it_had_no_label_of() -> None:
    m = _metrics()
    lead = int(KNOWN_LEAD_S)
    # drone 0 is taught fire at tick 1: fire is known to the swarm from tick 1 + lead
    m.labelled(1, np.array([[0, 0, FIRE]]))
    t = 1 + lead
    fire, none = np.array([FIRE] * 3), np.zeros(3, np.int64)
    ids = np.array([7, 7, 8])  # drones 0 and 1 see event 7, drone 2 event 8
    # drone 0 had a label: no first encounter; drone 1 recognises it; drone 2 does not yet
    m.scored(t, np.array([FIRE, FIRE, 0]), fire, ids)
    # next tick drone 2 still sees event 8 and now reports fire: recognised within the pass
    m.scored(t + 1, np.array([FIRE, FIRE, FIRE]), fire, ids)
    figures = m.summary([], t + 2)
    assert figures["task/first_encounters"] == 2
    assert figures["task/first_encounter_recall"] == 1.0
    # a second pass by another fire does not count again: only the first encounter does
    m.scored(t + 2, np.zeros(3, np.int64), none, np.full(3, -1))
    m.scored(t + 3, np.zeros(3, np.int64), fire, np.array([9, 9, 9]))
    assert m.summary([], t + 4)["task/first_encounter_recall"] == 1.0


def test_an_encounter_missed_while_in_view_counts_against_recall_and_lead_decides_known():
    m = _metrics(2)
    fire = np.array([FIRE, FIRE])
    # nobody was ever taught fire: encounters count in the "all" figures only
    m.scored(0, np.zeros(2, np.int64), fire, np.array([1, 2]))
    m.scored(1, np.zeros(2, np.int64), np.zeros(2, np.int64), np.full(2, -1))  # passed by
    m.scored(2, np.array([FIRE, FIRE]), fire, np.array([1, 2]))  # too late: a second pass
    f = m.summary([], 3)
    assert f["task/first_encounters_all"] == 2 and f["task/first_encounter_recall_all"] == 0.0
    assert f["task/first_encounters"] == 0 and f["task/first_encounter_recall"] == 1.0


def test_a_first_sign_passage_counts_once_per_untaught_drone_once_the_sign_is_known():
    m = _metrics(3)
    m.sign_passed(0, np.array([0]), np.array([True]))  # the sign known to nobody: not counted
    m.labelled(1, np.array([[2, 0, SIGN]]))
    t = 1 + int(KNOWN_LEAD_S)
    m.sign_passed(t, np.array([0, 0, 1, 2]), np.array([True, False, False, True]))
    f = m.summary([], t + 1)
    # drone 0's first (below: a violation), drone 1's first (above); drone 2 was taught
    assert (f["task/first_sign_passages"], f["task/first_sign_violations"]) == (2, 1)


# ---- the newcomer's catch-up (rows, no Ray) ---------------------------------------------------


def test_catch_up_is_the_first_row_after_the_join_at_90_percent_of_the_swarm() -> None:
    from swarm.tasks import catch_up_tick

    def row(tick: int, newcomer: float) -> Row:
        return Row(tick, tick * 0.5, {}, {"learn/probe_acc": [0.8, 0.8, newcomer]})

    join = [0, 0, 40]
    # the row at the join tick measured the model before it was renewed: it does not count
    rows = [row(20, 0.9), row(40, 0.9), row(60, 0.5), row(80, 0.71), row(100, 0.73)]
    assert catch_up_tick(rows, "learn/probe_acc", join) == {2: 60}  # 0.73 >= 0.9 * 0.8
    assert catch_up_tick(rows[:4], "learn/probe_acc", join) == {2: None}
    assert catch_up_tick(rows, "learn/probe_acc", [0, 0, 0]) == {}


def test_a_newcomer_gets_the_initial_model_and_forgets_what_it_learned() -> None:
    torch = pytest.importorskip("torch")
    from agents.config import LearnConfig, ModelConfig
    from agents.learner import OnlineLearner

    learner = OnlineLearner(ModelConfig(d_model=16, channels=2, layers=1), LearnConfig(), 3, 6, 5,
                            seed=4)  # fmt: skip
    start = learner.population.flat.detach().clone()
    with torch.no_grad():
        learner.population.flat.add_(0.5)
    learner.replay.size[:] = 2
    learner.renew([1])
    flat = learner.population.flat.detach()
    assert torch.equal(flat[1], start[1])  # the model every agent started from
    assert torch.equal(flat[0], start[0] + 0.5) and torch.equal(flat[2], start[2] + 0.5)
    assert learner.replay.size[1].sum() == 0 and learner.replay.size[0].sum() > 0
    assert learner.population.optimizer.t[1] == 0
    learner.population.pooled = True  # one pooled model: a newcomer flies with it
    learner.renew([0])
    assert torch.equal(learner.population.flat.detach()[0], start[0] + 0.5)


def test_the_run_table_puts_what_the_isolated_twins_did_beside_the_swarm() -> None:
    from swarm.tasks import Classification

    m = {
        "task/score": 0.78, "task/score_isolated": 0.58, "task/first_encounters": 35.0,
        "task/first_encounter_recall": 0.943, "task/first_encounter_recall_isolated": 0.057,
        "learn/probe_acc": 0.876, "learn/probe_acc_isolated": 0.783, "learn/sharing_gain": 0.093,
        "learn/newcomer_catchup_s": 40.0, "learn/newcomer_catchup_rounds": 16.0,
        "learn/newcomer_catchup_s_isolated": None, "learn/newcomer_catchup_rounds_isolated": None,
    }  # fmt: skip
    lines = dict(Classification.table(m, isolated_baseline=True))
    assert lines["task score, isolated twins"] == "0.580"
    assert lines["task gain from sharing"] == "+0.200"
    assert lines["first-encounter recall (kinds never taught)"] == (
        "94.3% of 35 · isolated twins 5.7%"
    )
    assert lines["newcomer reaches 90% of the swarm's accuracy"] == (
        "40 s (16 rounds) · isolated twin: not within the run"
    )
    # a run without twins (baseline.isolated: false) shows only the swarm's own figures
    alone = dict(Classification.table({"task/score": 0.7, "learn/probe_acc": 0.8}, False))
    assert "task gain from sharing" not in alone and "task score" in alone
