"""replay.gif: the animated replay `swarm report` draws of a finished run (swarm/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from swarm.records import Row
from swarm.report import (
    LANDED_Z_M,
    Knowledge,
    ReplayUnavailable,
    drone_colours,
    replay_step,
    replay_ticks,
    write_plots,
    write_replay,
)

TICKS = 40  # the synthetic run: 3 drones, trajectory rows for ticks 0..40
DRONES = 3


def _rows(kinds: bool = True) -> list[Row]:
    """Two metrics rows: at tick 20 every agent knows no event kind, at tick 40 all four."""
    rows = []
    for tick, known, acc in ((20, 0, 0.2), (40, 4, 0.9)):
        agents = {"learn/probe_acc": [acc] * DRONES, "learn/probe_acc_isolated": [0.2] * DRONES}
        if kinds:
            agents["learn/kinds_recognised"] = [float(known)] * DRONES
        figures = {
            "learn/probe_acc": acc,
            "learn/probe_acc_isolated": 0.2,
            "gossip/bytes_sent": 1000.0 * tick,  # what the report's other plots read
            "gossip/dense_bytes": 9000.0 * tick,
        }
        rows.append(Row(tick=tick, sim_time_s=tick * 0.5, figures=figures, agents=agents))
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run's directory as the runner writes it: the map and the events of a real
    drone patrol world after 40 ticks, 3 drones holding still (two hovering, one on the ground,
    so only what they know changes their colour), a scenario and two metrics rows."""
    pytest.importorskip("pybullet")
    from envs.drone_patrol.config import DronePatrolConfig
    from envs.drone_patrol.world import DronePatrolWorld

    world = DronePatrolWorld(DronePatrolConfig(), n_agents=DRONES, seed=0)
    try:
        world.reset()
        for _ in range(TICKS):
            world.step(np.zeros(DRONES, dtype=np.int64))
        layout = {**world.layout(), "events": world.event_log()}
    finally:
        world.close()
    d = tmp_path_factory.mktemp("run")
    still = np.array([[-40.0, -40.0, 6.0], [40.0, 40.0, 6.0], [40.0, -40.0, 0.02]])  # (N, 3)
    np.save(d / "trajectory.npy", np.repeat(still[None], TICKS + 1, 0).astype(np.float32))
    (d / "layout.json").write_text(json.dumps(layout))
    (d / "scenario.yaml").write_text(yaml.safe_dump({"ticks": TICKS, "world": {"tick_s": 0.5}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r.as_json()) + "\n" for r in _rows()))
    return d


def test_replay_shows_every_step_th_tick_and_always_the_last() -> None:
    assert replay_ticks(TICKS + 1, 5) == list(range(0, TICKS + 1, 5))
    assert replay_ticks(43, 5) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 42]
    assert replay_ticks(1, 5) == [0]
    # the default step: a 600-tick run (601 trajectory rows) is 121 frames, every 5th tick
    assert replay_step(601) == 5
    assert len(replay_ticks(601, replay_step(601))) == 121
    assert replay_step(6001) == 50  # a longer run skips more ticks, the GIF stays as long
    with pytest.raises(ValueError, match="step"):
        replay_ticks(10, 0)


def test_a_drone_knows_what_the_last_row_at_or_before_the_tick_says() -> None:
    knowledge = Knowledge.from_rows(_rows(), DRONES, n_kinds=4)

    before, acc = knowledge.at(19)  # no row yet
    assert np.isnan(before).all() and np.isnan(acc)
    assert knowledge.at(20)[0].tolist() == [0, 0, 0]
    assert knowledge.at(39)[0].tolist() == [0, 0, 0]
    assert knowledge.at(40)[0].tolist() == [4, 4, 4]
    assert knowledge.at(40)[1] == pytest.approx(0.9)
    assert knowledge.counts and knowledge.full == 4
    assert "of 4" in knowledge.label()


def test_runs_without_kinds_recognised_are_coloured_by_probe_accuracy() -> None:
    knowledge = Knowledge.from_rows(_rows(kinds=False), DRONES, n_kinds=4)

    assert not knowledge.counts and knowledge.full == 1.0
    assert knowledge.at(40)[0].tolist() == pytest.approx([0.9] * DRONES)
    assert "probe accuracy" in knowledge.label()


def test_drone_colour_says_what_it_knows_and_a_grounded_drone_is_hollow() -> None:
    knowledge = Knowledge.from_rows(_rows(), DRONES, n_kinds=4)
    airborne = np.full(4, 6.0)

    faces, edges = drone_colours(np.array([0.0, 2.0, 4.0, np.nan]), airborne, knowledge)

    assert len({tuple(f) for f in faces}) == 4  # nothing, half, everything, not measured
    assert (faces[:, 3] == 1).all() and (edges[:, :3] == 0).all()  # opaque, black ring
    z = np.array([6.0, LANDED_Z_M - 0.01, 0.0, 6.0])
    grounded, ring = drone_colours(np.full(4, 4.0), z, knowledge)
    assert grounded[[1, 2], 3].tolist() == [0, 0]  # hollow
    assert (ring[[1, 2], :3] > 0.3).all()  # a grey ring, not black
    assert grounded[[0, 3], 3].tolist() == [1, 1]


def _share_near(frame: Image.Image, rgb: tuple[float, float, float]) -> float:
    """The fraction of a frame's pixels within a small distance of ``rgb`` (0..1 floats)."""
    pixels = np.asarray(frame.convert("RGB"), dtype=float) / 255  # (H, W, 3)
    return float((np.linalg.norm(pixels - np.array(rgb), axis=-1) < 0.08).mean())


def test_replay_gif_has_a_frame_per_step_and_drones_change_colour_as_they_learn(
    run_dir: Path,
) -> None:
    seen: list[tuple[int, int]] = []

    gif = write_replay(run_dir, step=5, on_frame=lambda done, total: seen.append((done, total)))

    assert gif == run_dir / "replay.gif"
    with Image.open(gif) as im:
        assert im.format == "GIF"
        assert im.n_frames == len(replay_ticks(TICKS + 1, 5)) == 9
        frames = []
        for i in (4, 8):  # ticks 20 (the agents know no kind) and 40 (all four)
            im.seek(i)
            frames.append(im.convert("RGB"))
    assert seen[-1] == (9, 9)
    cmap, norm = Knowledge.from_rows(_rows(), DRONES, n_kinds=4).scale()
    nothing, everything = (cmap(norm(k))[:3] for k in (0, 4))
    # the drones hold still, so what changes in these colours is the two airborne drones' faces
    # (the colour bar shows both colours in every frame)
    assert _share_near(frames[0], nothing) > _share_near(frames[1], nothing)
    assert _share_near(frames[1], everything) > _share_near(frames[0], everything)


def test_a_run_without_a_map_or_a_trajectory_has_no_replay(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    with pytest.raises(ReplayUnavailable, match="no layout.json"):
        write_replay(tmp_path)  # a PettingZoo world's run: no map
    (tmp_path / "layout.json").write_text((run_dir / "layout.json").read_text())
    with pytest.raises(ReplayUnavailable, match="no trajectory.npy"):
        write_replay(tmp_path)


def test_swarm_report_writes_the_replay_or_says_why_not(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swarm.cli import app

    result = CliRunner().invoke(app, ["report", str(run_dir), "--replay-step", "10"])
    assert result.exit_code == 0, result.output
    assert f"wrote {run_dir / 'replay.gif'} (5 frames)" in result.output
    (tmp_path / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no replay:" in result.output and not (tmp_path / "replay.gif").exists()
    result = CliRunner().invoke(app, ["report", str(run_dir), "--no-replay"])
    assert "replay" not in result.output


def test_the_plots_a_run_writes_as_it_ends_leave_the_replay_out(
    run_dir: Path, tmp_path: Path
) -> None:
    # the Runner calls write_plots; the replay is `swarm report`'s, so a run's wall time keeps
    for name in ("trajectory.npy", "layout.json", "scenario.yaml", "metrics.jsonl"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())

    written = write_plots(tmp_path)

    assert tmp_path / "trajectories.png" in written
    assert not (tmp_path / "replay.gif").exists()
