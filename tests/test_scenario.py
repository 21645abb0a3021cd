"""Scenario schema and loader: strictness and the quality of error messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarm.scenario import Scenario, ScenarioError, dump_scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
GOOD = "name: t\nagents:\n  count: 6\n  per_shard: 3\n"


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.agents.count >= 1


def test_resolved_scenario_round_trips() -> None:
    sc = parse_scenario(GOOD)
    again = parse_scenario(dump_scenario(sc))
    assert again == sc
    assert sc.n_shards == 2


@pytest.mark.parametrize(
    "text, line, path, words",
    [
        ("name: t\nagents:\n  cout: 3\n", 3, "agents.cout", "did you mean 'count'"),
        ("name: t\nagents:\n  count: three\n", 3, "agents.count", "valid integer"),
        ("name: t\nagents:\n  count: -4\n", 3, "agents.count", "greater than or equal to 1"),
        ("name: t\nticks: '50'\n", 2, "ticks", "valid integer"),
        ("name: t\ngossip:\n  graph:\n    kind: moebius\n", 4, "gossip.graph.kind", "ring"),
        (
            "name: t\nworld:\n  events:\n    fire:\n      zones: [forest, moon]\n",
            5,
            "world.events.fire.zones[1]",
            "moon",
        ),
        ("name: t\nmodel:\n  d_model: 30\n  channels: 4\n", 2, "model", "divisible"),
        ("name: t\nagents:\n  per_shard: many\n", 3, "agents.per_shard", "'auto' or a whole"),
        # checks across sections point at the key they are about
        (
            "name: t\ngossip: {interval: 5}\ncheckpoint:\n  every_ticks: 12\n",
            4,
            "checkpoint.every_ticks",
            "not a multiple of gossip.interval",
        ),
        (
            "name: t\nticks: 90\nfaults:\n  kill:\n    - {shard: 0, at_tick: 50}\n",
            4,
            "faults.kill",
            "set checkpoint.every_ticks",
        ),
        (
            "name: t\nfaults:\n  messages: {drop: 0.7, delay: 0.5}\n",
            3,
            "faults.messages",
            "must be <= 1",
        ),
        (
            "name: t\ngossip: {topology: coordinator}\nfaults:\n  messages: {drop: 0.2}\n",
            4,
            "faults.messages",
            "need gossip.topology decentralized",
        ),
        (
            "name: t\nagents: {count: 4}\nfaults:\n  byzantine: {agents: [9]}\n",
            4,
            "faults.byzantine",
            "out of range",
        ),
        # a robust consensus step on a graph too sparse for it (a ring: 2 neighbours each)
        (
            "name: t\ngossip:\n  robust: {kind: trimmed_mean, byzantine: 1}\n",
            3,
            "gossip.robust",
            "needs every agent to have >= 3 neighbours; the ring graph",
        ),
        # sightings where they cannot be served honestly (protocols/sightings.py)
        (
            "name: t\ngossip:\n  topology: coordinator\n  sightings: {per_round: 2}\n",
            4,
            "gossip.sightings",
            "gossip.topology coordinator has none",
        ),
        (
            "name: t\ngossip:\n  graph: {kind: complete}\n  robust: {kind: clip}\n"
            "  sightings: {per_round: 2}\n",
            5,
            "gossip.sightings",
            "no robust rule screens",
        ),
        (
            "name: t\ngossip:\n  sightings: {per_round: 2}\nfaults:\n  messages: {drop: 0.2}\n",
            3,
            "gossip.sightings",
            "sightings would pass them",
        ),
    ],
)
def test_errors_name_key_path_and_line(text: str, line: int, path: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")
    message = str(info.value)
    assert f"bad.yaml:{line}: {path}:" in message
    assert words in message


def test_every_problem_is_reported_in_file_order() -> None:
    text = "name: t\nagents:\n  count: -1\n  per_shrd: 2\nseeed: 3\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")
    lines = str(info.value).splitlines()
    assert "3 problems" in lines[0]
    assert [ln.strip().split(":")[1] for ln in lines[1:]] == ["3", "4", "5"]


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ScenarioError, match=r"bad\.yaml:3: not valid YAML"):
        parse_scenario("name: t\nagents:\n  count: 5: 6\n", "bad.yaml")


def test_unreadable_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_sections_are_immutable() -> None:
    sc = parse_scenario(GOOD)
    with pytest.raises(Exception, match="frozen"):
        sc.agents.count = 2  # type: ignore[misc]
    assert isinstance(sc, Scenario)


@pytest.mark.parametrize(
    "body, key",
    [
        ("name: t\nagnets:\n  count: 3\n", "agnets"),
        ("name: t\nagents:\n  count: 1.5\n", "agents.count"),
        ("name: t\nagents:\n  count: -2\n", "agents.count"),
    ],
)
def test_cli_rejects_bad_scenario_without_traceback(tmp_path: Path, body: str, key: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    for command in ("validate", "run"):
        proc = subprocess.run(
            [sys.executable, "-m", "swarm.cli", command, str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "bad.yaml:" in proc.stderr and key in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started for a bad file


def test_relative_paths_resolve_against_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    scenario = tmp_path / "sub" / "s.yaml"
    scenario.write_text(
        "name: t\ngossip:\n  graph: {kind: file, path: edges.txt}\n  tls: {cert_dir: certs}\n"
    )
    sc = load_scenario(scenario)
    assert sc.gossip.graph.path == str(tmp_path / "sub" / "edges.txt")
    assert sc.gossip.tls.cert_dir == str(tmp_path / "sub" / "certs")


def test_a_robust_step_on_a_graph_dense_enough_validates() -> None:
    # 12 agents on the exponential graph have 6 neighbours each: trimmed_mean b = 2 needs 5
    text = (
        "name: t\ngossip:\n  graph: {kind: exponential}\n"
        "  robust: {kind: trimmed_mean, byzantine: 2}\n"
    )
    assert parse_scenario(text, "ok.yaml").gossip.robust.neighbours_needed() == 5
    # a fixed clip radius ranks nobody: any graph will do
    ring = "name: t\ngossip:\n  robust: {kind: clip, byzantine: 4, clip_tau: 1.0}\n"
    assert parse_scenario(ring, "ok.yaml").gossip.robust.neighbours_needed() == 0
