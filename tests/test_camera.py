"""The rendered camera sensor: images, scene, determinism, the agents' image path, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.config import LearnConfig, ModelConfig
from agents.learner import OnlineLearner, balanced_accuracy
from agents.population import Population, flat_dim
from agents.yan.io import InputConfig
from envs.drone_patrol.config import EVENT_CLASSES, ZONES, DronePatrolConfig

pytest.importorskip("pybullet")

from envs.drone_patrol.camera import observation_dim  # noqa: E402
from envs.drone_patrol.sensor import TELEMETRY_DIM  # noqa: E402
from envs.drone_patrol.world import DronePatrolWorld  # noqa: E402

FIRE = EVENT_CLASSES.index("fire")
PX = 16  # the default camera_px
N_PIX = PX * PX * 3
ALT = 6.0  # the default cruise altitude, m


@pytest.fixture
def make_world(make_world):
    """The shared world factory (conftest.py) with the camera sensor."""
    return lambda n_agents=4, seed=0, **cfg: make_world(n_agents, seed, sensor="camera", **cfg)


def _none(world: DronePatrolWorld) -> np.ndarray:
    return np.zeros(world.n_agents, dtype=np.int64)


def _host(world: DronePatrolWorld, cls: int) -> int:
    """A cruise point where class ``cls`` can appear."""
    return next(pt for pt, c in world.events.hosts if c == cls)


def _images(obs: np.ndarray) -> np.ndarray:
    """(..., obs_dim) -> (..., PX, PX, 3) in 0..255."""
    return obs[..., :N_PIX].reshape(*obs.shape[:-1], PX, PX, 3) * 255.0


# ---- the observation ----------------------------------------------------------------------


def test_observations_are_pixels_then_telemetry(make_world):
    # Prepare
    world = make_world(n_agents=4)
    # Execute
    obs = world.reset()
    res = world.step(_none(world))
    # Assert
    assert world.obs_dim == N_PIX + TELEMETRY_DIM == observation_dim(world.cfg)
    for o in (obs, res.obs):
        assert o.shape == (4, world.obs_dim) and o.dtype == np.float32
        assert o[:, :N_PIX].min() >= 0.0 and o[:, :N_PIX].max() <= 1.0
    # the telemetry is the feature sensor's: altitude / 10 first, a unit heading vector last
    np.testing.assert_allclose(res.obs[:, N_PIX], world.positions()[:, 2] / 10, atol=1e-5)
    np.testing.assert_allclose(np.hypot(res.obs[:, -2], res.obs[:, -1]), 1.0, atol=1e-5)
    # every drone starts over the ground of its zone: not one flat colour over the whole swarm
    assert len({tuple(np.median(im.reshape(-1, 3), axis=0) // 16) for im in _images(obs)}) > 1


def test_an_active_fire_under_a_drone_paints_orange_pixels(make_world):
    # Prepare: drone 0 looks down from cruise altitude on a forest cruise point
    world = make_world(n_agents=2)
    pt = _host(world, FIRE)
    x, y = world.map.points[pt]
    world.physics.pos[0] = [x, y, ALT]
    speed, heading = np.zeros(2), np.zeros(2)

    def look(cls: int) -> np.ndarray:
        world.physics.show_event(pt, cls)
        rng = np.random.default_rng(0)
        return _images(world.sensor.observe(world.physics, speed, heading, rng)[0])

    def orange(im: np.ndarray) -> int:
        r, g, b = im[..., 0], im[..., 1], im[..., 2]
        return int(((r > 150) & (g > 40) & (g < 120) & (b < 50)).sum())

    # Execute
    without, with_fire, cleared = look(0), look(FIRE), look(0)
    # Assert
    assert orange(without) == 0 and orange(cleared) == 0
    assert orange(with_fire) > 10  # a 3 m disc seen from 4 m above its top
    np.testing.assert_array_equal(without, cleared)  # the marker is gone again


def test_each_event_class_looks_different(make_world):
    # Prepare: every class at one of its points, and the same points empty, seen from above
    world = make_world(n_agents=1)
    classes = list(range(1, world.n_classes))
    points = np.array([_host(world, c) for c in classes])
    eyes = np.concatenate([world.map.points[points], np.full((len(points), 1), ALT)], axis=1)
    # Execute
    shown = world.sensor.render_probe(points, np.array(classes), eyes[:, None])[:, 0]
    empty = world.sensor.render_probe(points, np.zeros_like(points), eyes[:, None])[:, 0]
    # Assert: each marker changes some pixels, and the markers' colours differ by class
    colours = []
    for im, bg in zip(shown.astype(float), empty.astype(float), strict=True):
        changed = np.abs(im - bg).sum(-1) > 30
        assert changed.sum() >= 3
        colours.append(im[changed].mean(0))
    c = np.array(colours)  # (4, 3)
    dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
    assert dist[~np.eye(len(c), dtype=bool)].min() > 40


def test_zones_and_the_river_have_their_own_ground_colour(make_world):
    # Prepare: a spot near a corner of each zone (no cruise point or river within view), and
    # a river cruise point (water)
    world = make_world(n_agents=1)
    corners = world.map.zone_rects[:, :2] + 3.0  # (Z, 2)
    river_pt = world.map.zone_points(ZONES.index("river"))[0]
    spots = np.concatenate([corners, world.map.points[river_pt][None]])  # (Z+1, 2)
    eyes = np.concatenate([spots, np.full((len(spots), 1), ALT)], axis=1)
    # Execute
    images = world.sensor.render_probe(
        np.zeros(len(spots), np.int64), np.zeros(len(spots), np.int64), eyes[:, None]
    )[:, 0]
    # Assert
    ground = np.median(images.reshape(len(spots), -1, 3).astype(float), axis=1)  # (Z+1, 3)
    dist = np.linalg.norm(ground[:, None] - ground[None], axis=-1)
    assert dist[~np.eye(len(spots), dtype=bool)].min() > 30
    water = ground[-1]
    assert water[2] > water[0] + 60 and water[2] > water[1] + 60  # blue


# ---- determinism and the probe ------------------------------------------------------------


def test_same_seed_same_observations_and_probe(make_world):
    # Prepare
    world, twin = make_world(n_agents=3, seed=5), make_world(n_agents=3, seed=5)
    # Execute
    first = world.reset()
    a = [world.step(_none(world)).obs for _ in range(4)]
    b = [twin.step(_none(twin)).obs for _ in range(4)]
    replay = world.reset()
    x1, y1 = world.probe_set(4, 3, seed=1)
    x2, y2 = twin.probe_set(4, 3, seed=1)
    x3, _ = world.probe_set(4, 3, seed=2)
    # Assert
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    np.testing.assert_array_equal(first, replay)  # reset replays, tiles and all
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)


def test_probe_set_is_balanced_rendered_and_leaves_the_live_world_alone(make_world):
    # Prepare
    world, twin = make_world(n_agents=2, seed=3), make_world(n_agents=2, seed=3)
    per_class, window = 6, 4
    world.step(_none(world))
    twin.step(_none(twin))
    # Execute
    x, y = world.probe_set(per_class, window, seed=0)
    # Assert
    n = world.n_classes * per_class
    assert x.shape == (n, window, world.obs_dim) and x.dtype == np.float32
    assert np.array_equal(np.bincount(y, minlength=world.n_classes), [per_class] * world.n_classes)
    assert x[..., :N_PIX].min() >= 0.0 and x[..., :N_PIX].max() <= 1.0
    assert np.array_equal(world.step(_none(world)).obs, twin.step(_none(twin)).obs)


# ---- the agents' image path ----------------------------------------------------------------


@pytest.mark.parametrize("sensor", ["features", "camera"])
def test_input_config_describes_the_flat_observation(sensor):
    # Prepare
    world = DronePatrolWorld(DronePatrolConfig(sensor=sensor), n_agents=2, seed=0)
    obs = world.reset()
    world.close()
    # Execute
    inp = InputConfig.model_validate(world.input_config())
    pop = Population(ModelConfig(d_model=8, channels=2, layers=1), LearnConfig(), 2,
                     world.input_config(), world.n_classes, seed=0)  # fmt: skip
    split = pop.split_obs(torch.as_tensor(obs))
    # Assert
    assert flat_dim(inp) == pop.obs_dim == world.obs_dim == observation_dim(world.cfg)
    if sensor == "features":
        assert inp == InputConfig(vector_dim=world.obs_dim)
        return
    assert inp.image is not None and inp.vector_dim == TELEMETRY_DIM
    assert (inp.image.height, inp.image.width, inp.image.patch) == (PX, PX, world.cfg.camera_patch)
    assert isinstance(split, dict)
    np.testing.assert_array_equal(split["image"].numpy(), obs[:, :N_PIX].reshape(2, PX, PX, 3))
    np.testing.assert_array_equal(split["vector"].numpy(), obs[:, N_PIX:])


def test_vector_inputs_train_exactly_as_an_int_obs_dim():
    # Prepare: the same population from an int, an InputConfig and its dict
    cfg, learn = ModelConfig(d_model=8, channels=2, layers=1), LearnConfig(lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 6, generator=g)
    y = torch.randint(0, 3, (2, 4), generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    unlabeled = torch.randn(2, 2, 3, 6, generator=g)
    pops = [Population(cfg, learn, 2, d, 3, seed=1)
            for d in (6, InputConfig(vector_dim=6), {"vector_dim": 6})]  # fmt: skip
    # Execute
    losses = [p.train_step(x, y, mask, unlabeled=unlabeled, ssl_weight=0.5) for p in pops]
    # Assert
    assert pops[0].split_obs(x) is x  # a vector input goes to the model untouched
    for p, loss in zip(pops[1:], losses[1:], strict=True):
        assert torch.equal(loss, losses[0]) and torch.equal(p.flat, pops[0].flat)


def test_flat_observations_cannot_carry_tokens(make_world):
    cfg = ModelConfig(d_model=8, channels=2, layers=1)
    with pytest.raises(ValueError, match="vocab"):
        Population(cfg, LearnConfig(), 1, {"vector_dim": 4, "vocab": 3}, 5, seed=0)


def test_ewc_fisher_reads_camera_windows(make_world):
    # Prepare: the Fisher of a camera learner comes from split (image + vector) windows
    from agents.continual import empirical_fisher

    world = make_world(n_agents=1)
    cfg = ModelConfig(d_model=8, channels=2, layers=1)
    learner = OnlineLearner(cfg, LearnConfig(ewc_lambda=1.0), 2, world.input_config(), 5, seed=0)
    x, y = world.probe_set(2, 3, seed=0)  # (10, 3, obs_dim)
    xk = np.stack([x, x[::-1]])  # (2, 10, 3, obs_dim): each agent its own examples
    yk = np.stack([y, y[::-1]])
    # Execute
    fisher = empirical_fisher(learner.population, xk, yk, np.ones((2, 10), bool))
    # Assert: finite, non-zero, and the image encoder's weights have a share of it
    assert torch.isfinite(fisher).all() and (fisher.sum(1) > 0).all()
    offset = 0
    for name, shape in learner.population.specs:
        size = int(np.prod(shape))
        if name == "enc.image.w":
            assert (fisher[:, offset : offset + size].sum(1) > 0).all()
            break
        offset += size
    else:
        raise AssertionError("no image encoder in the camera model")


def test_online_learner_learns_the_camera_probe_end_to_end(make_world):
    # Prepare: two agents act on the live camera stream for a few ticks (recurrent step, ring),
    # then train on rendered labelled windows with the self-supervised loss on their own
    # experience; held-out windows from another probe seed test them.
    world = make_world(n_agents=2, seed=0)
    window = 4
    x_train, y_train = world.probe_set(40, window, seed=1)
    x_test, y_test = world.probe_set(30, window, seed=2)
    learner = OnlineLearner(
        ModelConfig(d_model=16, channels=2, layers=1),
        LearnConfig(lr=1e-2, batch=32, window=window, replay=400, ssl_weight=0.1, ssl_batch=4),
        2, world.input_config(), world.n_classes, seed=0,
    )  # fmt: skip
    obs = world.reset()
    for tick in range(6):
        obs = world.step(learner.act(tick, obs)).obs
    n = len(y_train)
    learner.replay.add(np.repeat([0, 1], n), np.tile(y_train, 2), np.concatenate([x_train] * 2))
    before = balanced_accuracy(learner.evaluate(x_test, y_test))
    # Execute
    for _ in range(100):
        out = learner.learn_step()
    # Assert
    after = balanced_accuracy(learner.evaluate(x_test, y_test))
    assert out["trained"].all() and np.isfinite(out["loss"]).all()
    chance = 1 / world.n_classes
    assert (after > chance + 0.25).all(), (before, after)


# ---- PettingZoo ---------------------------------------------------------------------------


def test_pettingzoo_env_follows_the_camera_obs_dim():
    # (the PettingZoo API and seed tests of the camera env are rows of tests/test_pettingzoo.py)
    from envs.drone_patrol.pz import DronePatrolParallelEnv

    # Prepare
    cfg = DronePatrolConfig(sensor="camera", cruise_points_per_zone=1, area_m=80)
    env = DronePatrolParallelEnv(cfg, n_agents=3, max_cycles=10)
    # Execute
    obs, _ = env.reset(seed=0)
    # Assert
    space = env.observation_space("drone_0")
    assert space.shape == (observation_dim(cfg),) == (N_PIX + TELEMETRY_DIM,)
    assert all(space.contains(o) for o in obs.values())
    env.close()
