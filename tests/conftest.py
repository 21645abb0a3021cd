"""Shared fixtures: one small Ray for the whole session, worlds, the thread count, and the
message accounting every run must satisfy."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on a real Ray runtime is slow (actors are processes that import torch, ~3 s
    a run), whether or not it says so: `make test-fast` (-m "not slow") leaves it out."""
    for item in items:
        if {"ray_local", "no_shared_ray"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def _ray_session():
    """Whoever started the shared Ray stops it once, at the end of the session."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """One small Ray for every module that asks for it (~3 s a start), started by the first
    of them and again after a test that needed Ray to itself (`no_shared_ray`). It exports
    its metrics every second (RAY_metrics_report_interval_ms; Ray's default is 10 s), which
    the telemetry tests scrape for."""
    import ray

    if not ray.is_initialized():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RAY_metrics_report_interval_ms", "1000")
            ray.init(
                address="local",  # never a `ray start` cluster that may run on this machine
                num_cpus=2,
                object_store_memory=96 * 2**20,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
    yield ray


@pytest.fixture
def no_shared_ray():
    """For a test that starts its own Ray (a multi-node cluster, the CLI's embedded one in
    this process): the shared one stops first; the next module that asks starts it again."""
    import ray

    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread, as in the actors: on 2 busy cores a second torch thread mostly
    waits (10-50x slower recurrent steps measured here). SWARM_TEST_THREADS=2 runs the suite
    with two, as `make test-numerics` does: the numerics tests must not depend on how a
    reduction is split across threads."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SWARM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fixed_global_seeds():
    """Tests that draw from torch's or numpy's global generator get the same numbers whichever
    tests ran before them in the process (`-k`, `-m`, another order), as a seeded test would."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)


@pytest.fixture
def make_world():
    """Build drone patrol worlds, make_world(n_agents=4, seed=0, **config); all closed after the
    test."""
    pytest.importorskip("pybullet")
    from envs.drone_patrol.config import DronePatrolConfig
    from envs.drone_patrol.world import DronePatrolWorld

    worlds: list[DronePatrolWorld] = []

    def _make(n_agents: int = 4, seed: int = 0, **cfg) -> DronePatrolWorld:
        w = DronePatrolWorld(DronePatrolConfig(**cfg), n_agents=n_agents, seed=seed)
        worlds.append(w)
        return w

    yield _make
    for w in worlds:
        w.close()


@pytest.fixture(autouse=True)
def runs_account_for_every_message(monkeypatch):
    """Every run a test makes accounts for its messages: each one sent was delivered, rejected
    or dropped by an injected fault, and the receivers' counts agree with the senders'
    (summary.json "accounting", swarm/accounting.py). CLI runs are checked where they run."""
    from swarm import runner

    run = runner.Runner.run

    def checked(self):
        result = run(self)
        accounting = result.summary["accounting"]
        assert accounting["holds"], f"message accounting does not add up: {accounting}"
        return result

    monkeypatch.setattr(runner.Runner, "run", checked)
