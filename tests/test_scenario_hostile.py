"""Hostile scenario files and command lines: each is refused with one line naming the file (or
the option) and the line, quickly, with exit status 2 and nothing started (issue 18).

A scenario may come from someone else. What it may make `swarm validate` and `swarm run` do is
bounded: YAML aliases that expand without end, nesting that runs out the stack, keys given
twice, numbers no run can use (inf, NaN, a seed of 10**100), files that are devices or
directories or no edge list at all (whose contents must never be echoed), and a `world.env`
that names any module at all, which validation would import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from swarm._config import Section
from swarm.scenario import (
    ENV_PACKAGES_VAR,
    MAX_GRAPH_BYTES,
    MAX_SCENARIO_BYTES,
    MAX_SEED,
    MAX_YAML_DEPTH,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)

ROOT = Path(__file__).resolve().parents[1]
SPREAD_WORLD = "world:\n  kind: pettingzoo\n  env: mpe2.simple_spread_v3:parallel_env\n"


def _swarm(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (the console entry point's error handling included)."""
    return subprocess.run(
        [sys.executable, "-m", "swarm.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "300"},  # click's error box wraps at the terminal width
    )


def _refusal(text: str, tmp_path: Path, name: str = "bad.yaml") -> str:
    """The error of loading `text` as a scenario file with its files checked."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, check_files=True)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# The file itself and its YAML: size, aliases, nesting, duplicate keys


def test_a_scenario_path_that_is_no_small_file_is_refused_unread(tmp_path: Path) -> None:
    # Prepare: /dev/zero never ends; a sparse file is large for nothing
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(MAX_SCENARIO_BYTES + 1)

    for path, problem in (
        (Path("/dev/zero"), "it is not a regular file (a device, FIFO or socket)"),
        (big, f"it is {MAX_SCENARIO_BYTES + 1:,} bytes, more than the"),
        (tmp_path, "it is a directory, not a file"),
    ):
        # Execute
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)

        # Assert
        assert str(info.value).startswith(f"{path}: cannot read the scenario: {problem}")


def _alias_bomb(levels: int) -> str:
    """PettingZoo kwargs holding `levels` anchors of nine aliases each: 9**levels values."""
    lines = [
        SPREAD_WORLD + "  kwargs:",
        "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "name: t\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    # Prepare: nine levels, 387 million values (~1 GB and seconds of pydantic before #18)
    bomb = _alias_bomb(9)

    # Execute
    tracemalloc.start()
    try:
        message = _refusal(bomb, tmp_path, "bomb.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert: refused on the line where it outgrows the bound, with next to nothing built
    where, _, problem = message.partition(": ")
    assert where.startswith(f"{tmp_path / 'bomb.yaml'}:"), message
    assert int(where.rsplit(":", 1)[1]) in range(7, 16)  # one of the alias lines
    assert problem.startswith("YAML that grows past") and "aliases" in problem
    assert "\n" not in message
    assert peak < 16 * 2**20


def test_aliases_of_a_sane_size_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(_alias_bomb(3))  # 729 values

    sc = load_scenario(path, check_files=True)

    assert sc.world.kind == "pettingzoo"
    assert len(sc.world.kwargs["a2"]) == 9 and sc.world.kwargs["a2"][8][8] == ["lol"] * 9


@pytest.mark.parametrize("levels", [2000, MAX_YAML_DEPTH - 2])
def test_nesting_deeper_than_the_bound_is_refused_with_its_line(
    tmp_path: Path, levels: int
) -> None:
    # Prepare: the root mapping, world and kwargs are three levels; the list adds `levels`
    text = f"name: t\n{SPREAD_WORLD}  kwargs:\n    deep: {'[' * levels}{']' * levels}\n"

    # Execute
    message = _refusal(text, tmp_path)

    # Assert (2000 levels was a RecursionError traceback before #18)
    assert message == (
        f"{tmp_path / 'bad.yaml'}:6: YAML nested deeper than {MAX_YAML_DEPTH} levels (the most "
        "a scenario may nest)"
    )


def test_nesting_up_to_the_bound_loads() -> None:
    levels = MAX_YAML_DEPTH - 3
    text = f"name: t\n{SPREAD_WORLD}  kwargs:\n    deep: {'[' * levels}{']' * levels}\n"

    sc = parse_scenario(text, "ok.yaml")

    assert sc.world.kind == "pettingzoo" and "deep" in sc.world.kwargs


def test_an_alias_counts_the_depth_of_what_it_repeats(tmp_path: Path) -> None:
    # Prepare: two lists of 40 levels, each shallow enough alone; the alias puts one inside
    # the other
    deep = "[" * 40 + "]" * 40
    inner = "[" * 39 + "*d" + "]" * 39
    text = f"name: t\n{SPREAD_WORLD}  kwargs:\n    d: &d {deep}\n    e: {inner}\n"

    message = _refusal(text, tmp_path)

    assert message.startswith(f"{tmp_path / 'bad.yaml'}:7: YAML nested deeper than")


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("name: t\nticks: 5\nticks: 7\n", 3, "ticks", 2),
        ("name: t\ngossip:\n  interval: 5\n  'interval': 10\n", 4, "gossip.interval", 3),
        ("name: t\nagents: {count: 4, count: 6}\n", 2, "agents.count", 2),
        (f"name: t\n{SPREAD_WORLD}  kwargs: {{N: 3, N: 4}}\n", 5, "world.kwargs.N", 5),
    ],
)
def test_a_key_given_twice_is_refused(
    tmp_path: Path, text: str, line: int, key: str, first: int
) -> None:
    message = _refusal(text, tmp_path)

    assert message == (
        f"{tmp_path / 'bad.yaml'}:{line}: {key}: duplicate key (first given on line {first})"
    )


# ---------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("name: t\nworld:\n  feature_noise: .nan\n", 3, "world.feature_noise"),
        ("name: t\nworld:\n  rotation_s: .inf\n", 3, "world.rotation_s"),
        ("name: t\ngossip:\n  coordinator: {round_timeout_s: .inf}\n", 3, "gossip.coordinator"),
        ("name: t\ngossip:\n  membership:\n    probe_interval_s: .inf\n", 4, "gossip.membership"),
        ("name: t\nlearning: {ewc_lambda: .inf}\n", 2, "learning.ewc_lambda"),
        ("name: t\nrl: {entropy_coef: -.inf}\n", 2, "rl.entropy_coef"),
        (f"name: t\n{SPREAD_WORLD}  tick_s: .inf\n", 5, "world.tick_s"),
    ],
)
def test_floats_must_be_finite(text: str, line: int, key: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")

    assert f"bad.yaml:{line}: {key}" in str(info.value)
    assert "Input should be a finite number" in str(info.value)


def _sections(model: type[BaseModel], seen: set[type]) -> None:
    """Every pydantic model reachable from `model`'s fields (unions and containers too)."""
    if model in seen:
        return
    seen.add(model)
    todo: list[object] = [f.annotation for f in model.model_fields.values()]
    while todo:
        kind = todo.pop()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            _sections(kind, seen)
        elif not isinstance(kind, type):  # list[...], X | Y, Annotated[X, ...], Literal[...]
            todo += getattr(kind, "__args__", ())


def test_every_section_of_the_scenario_is_a_finite_strict_section() -> None:
    # Prepare
    seen: set[type] = set()

    # Execute: the models of every section a scenario file can reach
    _sections(Scenario, seen)

    # Assert: each one inherits finite floats and strictness from Section
    assert len(seen) > 20  # world, agents, gossip, faults, ... and their subsections
    loose = sorted(m.__name__ for m in seen if not issubclass(m, Section))
    assert not loose
    assert all(m.model_config.get("allow_inf_nan") is False for m in seen)


@pytest.mark.parametrize("seed", [MAX_SEED + 1, 10**100])
def test_a_seed_beyond_what_the_run_can_use_is_refused(seed: int) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.yaml:2: seed: Input should be less than"):
        parse_scenario(f"name: t\nseed: {seed}\n", "bad.yaml")
    assert parse_scenario(f"name: t\nseed: {MAX_SEED}\n").seed == MAX_SEED


# ---------------------------------------------------------------------------------------------
# Files a scenario names

SECRET = "root:x:0:0:SECRET-FIRST-LINE:/root:/bin/bash"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with a scenario's neighbours: a secret file that is no edge list, a good
    ring edge list of 12 agents, a key, a certificate directory and a FIFO."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(SECRET + "\ndaemon:x:1:1::/:/bin/false\n")
    (tmp_path / "ring.txt").write_text("".join(f"{i} {(i + 1) % 12}\n" for i in range(12)))
    (tmp_path / "swarm.key").write_bytes(os.urandom(32))
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "huge.txt").open("wb") as f:
        f.truncate(MAX_GRAPH_BYTES + 1)  # sparse: no disk used
    (tmp_path / "scenarios").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "gossip, key, problem",
    [
        ("key_file: /dev/zero", "gossip.key_file", "/dev/zero is not a regular file"),
        ("key_file: ../fifo", "gossip.key_file", "fifo is not a regular file"),
        ("key_file: ../missing.key", "gossip.key_file", "missing.key does not exist"),
        ("key_file: ../certs", "gossip.key_file", "certs is a directory, not a file"),
        ("graph: {kind: file, path: ../etc/passwd}", "gossip.graph.path", "passwd:1: not an edge"),
        ("graph: {kind: file, path: ..}", "gossip.graph.path", "is a directory, not a file"),
        ("graph: {kind: file, path: /dev/zero}", "gossip.graph.path", "is not a regular file"),
        ("graph: {kind: file, path: ../huge.txt}", "gossip.graph.path", "bytes, more than the"),
        ("tls: {mode: tls, cert_dir: ../etc}", "gossip.tls.cert_dir", "ca.pem does not exist"),
        ("tls: {mode: mtls, cert_dir: ../swarm.key}", "gossip.tls.cert_dir", "not a directory"),
    ],
)
def test_named_files_must_be_regular_files_of_sane_size(
    files: Path, gossip: str, key: str, problem: str
) -> None:
    # Execute: the scenario sits one directory down; its relative paths start there
    message = _refusal(f"name: t\ngossip:\n  {gossip}\n", files / "scenarios")

    # Assert: one problem, on the key's line, naming the file and never what it holds
    head, line = message.splitlines()
    assert head.endswith("1 problem in the scenario:")
    assert line.strip().startswith(f"{files / 'scenarios' / 'bad.yaml'}:3: {key}: ")
    assert problem in line
    assert "SECRET" not in message and "root:x" not in message


def test_a_certificate_directory_holding_a_device_is_refused(files: Path) -> None:
    (files / "certs" / "shard-0.key").symlink_to("/dev/zero")
    text = f"name: t\ngossip:\n  tls: {{mode: mtls, cert_dir: {files / 'certs'}}}\n"

    message = _refusal(text, files)

    assert f"bad.yaml:3: gossip.tls.cert_dir: {files / 'certs' / 'shard-0.key'} is not a" in (
        message
    )


def test_a_good_graph_file_key_and_certificate_directory_validate(files: Path) -> None:
    path = files / "scenarios" / "ok.yaml"
    path.write_text(
        "name: t\ngossip:\n  graph: {kind: file, path: ../ring.txt}\n  key_file: ../swarm.key\n"
        "  tls: {mode: tls, cert_dir: ../certs}\n"
    )

    sc = load_scenario(path, check_files=True)

    assert sc.gossip.graph.path == str(files / "ring.txt")


def test_a_graph_file_too_sparse_for_the_robust_step_is_refused_at_its_key(files: Path) -> None:
    # a ring gives 2 neighbours; trimmed_mean with byzantine 1 needs 3
    text = (
        "name: t\ngossip:\n  graph: {kind: file, path: ../ring.txt}\n"
        "  robust: {kind: trimmed_mean, byzantine: 1}\n"
    )

    message = _refusal(text, files / "scenarios")

    assert "bad.yaml:4: gossip.robust: trimmed_mean with byzantine = 1 needs every agent" in (
        message
    )


@pytest.mark.parametrize(
    "gossip, problem",
    [
        ("key_file: /dev/zero", "gossip.key_file: /dev/zero is not a regular file"),
        ("graph: {kind: file, path: ../etc/passwd}", "gossip.graph.path: "),
    ],
)
def test_cli_validate_and_run_refuse_bad_files_before_any_run_directory(
    files: Path, gossip: str, problem: str
) -> None:
    # Prepare
    scenario = files / "scenarios" / "s.yaml"
    scenario.write_text(f"name: t\ngossip:\n  {gossip}\n")
    runs = files / "runs"
    runs.mkdir()

    for command in (["validate", str(scenario)], ["run", str(scenario), "--runs", str(runs)]):
        # Execute
        proc = _swarm(files, *command)

        # Assert
        assert proc.returncode == 2, proc.stderr
        assert f"s.yaml:3: {problem}" in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert "SECRET" not in proc.stderr + proc.stdout
    assert not list(runs.iterdir())


# ---------------------------------------------------------------------------------------------
# Command-line overrides


@pytest.mark.parametrize(
    "option, value, problem",
    [
        ("--ticks", "0", "--ticks: Input should be greater than or equal to 1 (got 0)"),
        ("--seed", "-1", "--seed: Input should be greater than or equal to 0 (got -1)"),
        (
            "--seed",
            str(2**64),
            f"--seed: Input should be less than or equal to {MAX_SEED} (got {2**64})",
        ),
    ],
)
def test_cli_overrides_are_checked_like_the_file(
    tmp_path: Path, option: str, value: str, problem: str
) -> None:
    # Prepare
    runs = tmp_path / "runs"
    runs.mkdir()

    # Execute
    proc = _swarm(
        tmp_path, "run", str(ROOT / "scenarios" / "drone_patrol.yaml"), option, value, "--runs",
        str(runs),
    )  # fmt: skip

    # Assert: one line naming the option, status 2, and no run started
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {problem}"
    assert not list(runs.iterdir())


def test_an_override_that_breaks_a_check_across_sections_names_file_and_key(
    tmp_path: Path,
) -> None:
    # Prepare: a kill at tick 50 is fine in 90 ticks, not in 10
    scenario = tmp_path / "kill.yaml"
    scenario.write_text(
        "name: t\nticks: 90\ncheckpoint: {every_ticks: 10}\nfaults:\n"
        "  kill:\n    - {shard: 0, at_tick: 50}\n"
    )
    runs = tmp_path / "runs"
    runs.mkdir()

    # Execute
    proc = _swarm(tmp_path, "run", str(scenario), "--ticks", "10", "--runs", str(runs))

    # Assert
    assert proc.returncode == 2, proc.stderr
    assert "kill.yaml with --ticks 10: faults.kill: at_tick 50 is not before the end (10)" in (
        proc.stderr
    )
    assert not list(runs.iterdir())


def test_compare_refuses_seeds_past_the_largest_before_any_run(tmp_path: Path) -> None:
    # Prepare: `swarm compare` runs seeds seed, seed + 1, ...
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: t\nseed: {MAX_SEED}\n")
    runs = tmp_path / "runs"
    runs.mkdir()

    # Execute
    proc = _swarm(tmp_path, "compare", str(scenario), "--seeds", "2", "--runs", str(runs))

    # Assert
    assert proc.returncode == 2, proc.stderr
    assert f"would go past the largest seed, {MAX_SEED}" in proc.stderr
    assert not list(runs.iterdir())


# ---------------------------------------------------------------------------------------------
# world.env names the code a run calls


@pytest.fixture
def noisy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An importable package whose import leaves a mark: what `find_spec('pkg.mod')` would do
    for a package of anyone's choosing."""
    name = f"noisy_{tmp_path.name.replace('-', '_')}"
    mark = tmp_path / "imported"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(
        f"from pathlib import Path\nPath({str(mark)!r}).write_text('side effect')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_PACKAGES_VAR, raising=False)
    yield name, mark
    sys.modules.pop(name, None)


def test_world_env_outside_pettingzoo_packages_is_refused_before_any_import(
    noisy_package: tuple[str, Path],
) -> None:
    # Prepare
    name, mark = noisy_package
    text = f"name: t\nworld:\n  kind: pettingzoo\n  env: {name}.envs:parallel_env\n"

    # Execute
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")

    # Assert: refused on its line, nothing imported
    assert f"bad.yaml:4: world.env: module '{name}.envs' is not in a package of PettingZoo" in (
        str(info.value)
    )
    assert ENV_PACKAGES_VAR in str(info.value)
    assert not mark.exists() and name not in sys.modules


@pytest.mark.parametrize(
    "env, problem",
    [
        ("os:system", "module 'os' is not in a package of PettingZoo envs"),
        ("subprocess:run", "module 'subprocess' is not in a package of PettingZoo envs"),
        (".relative:env", "module '.relative' is not in a package"),
        ("mpe2.simple_spread_v3:__loader__", "the callable after ':' must be a public name"),
    ],
)
def test_world_env_must_name_a_public_callable_of_a_pettingzoo_package(
    env: str, problem: str
) -> None:
    text = f"name: t\nworld:\n  kind: pettingzoo\n  env: '{env}'\n"

    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")

    assert f"bad.yaml:4: world.env: {problem}" in str(info.value)


def test_a_package_allowed_by_whoever_runs_is_imported_as_before(
    noisy_package: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the person running the swarm names the package
    name, mark = noisy_package
    monkeypatch.setenv(ENV_PACKAGES_VAR, f"some_other, {name}")
    text = f"name: t\nworld:\n  kind: pettingzoo\n  env: {name}.envs:parallel_env\n"

    # Execute
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")

    # Assert: validation goes on to look the module up (it has none called envs)
    assert f"world.env: module '{name}.envs' is not installed" in str(info.value)
    assert mark.exists()


# ---------------------------------------------------------------------------------------------
# Numbers without an upper bound before (issue 18): the ray section and the tick counts


@pytest.mark.parametrize(
    "text, line, key, most",
    [
        ("ray:\n  num_cpus: 1000000\n", 2, "ray.num_cpus", "1024"),
        ("ray:\n  dashboard: false\n  object_store_mb: 1000000000\n", 3, "ray.object_store_mb",
         "65536"),
        ("ray: {task_events_kept: 10000000000}\n", 1, "ray.task_events_kept", "1000000"),
        (f"ticks: {2**41}\n", 1, "ticks", str(2**40)),
        (f"metrics: {{interval: {2**70}}}\n", 1, "metrics.interval", str(2**40)),
        (f"checkpoint:\n  every_ticks: {2**41}\n", 2, "checkpoint.every_ticks", str(2**40)),
        (
            "agents: {count: 4}\nexternal_peers:\n  - {agent: 10000000, address: '127.0.0.1:1'}\n",
            3,
            "external_peers[0].agent",
            "200000",
        ),
    ],
)  # fmt: skip
def test_swarm_validate_refuses_a_number_past_its_bound_naming_key_file_and_line(
    tmp_path: Path, text: str, line: int, key: str, most: str
) -> None:
    # Prepare: the number on line `line` + 1 (after the name)
    scenario = tmp_path / "big.yaml"
    scenario.write_text(f"name: t\n{text}")

    # Execute
    proc = _swarm(tmp_path, "validate", str(scenario))

    # Assert: status 2, its one problem on one line, no traceback
    assert proc.returncode == 2, proc.stderr
    problems = [p for p in proc.stderr.splitlines() if f"big.yaml:{line + 1}:" in p]
    assert len(problems) == 1, proc.stderr
    assert (
        problems[0]
        .strip()
        .startswith(
            f"{scenario}:{line + 1}: {key}: Input should be less than or equal to {most} (got "
        )
    ), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_the_ray_section_bounds_let_the_shipped_values_through() -> None:
    sc = parse_scenario(
        "name: t\nray: {num_cpus: 1024, object_store_mb: 65536, task_events_kept: 1000000}\n"
        f"ticks: {2**40}\n"
    )

    assert (sc.ray.num_cpus, sc.ray.object_store_mb, sc.ray.task_events_kept) == (
        1024,
        65536,
        1_000_000,
    )
    assert sc.ticks == 2**40


# ---------------------------------------------------------------------------------------------
# Numbers of the world, the agents' minds, the faults and the node that had no upper bound
# (issue 18): each row is a scenario with one value past its bound, on line `line` + 1

MAX_TIME = str(2**40 * 10)  # envs.drone_patrol.config.MAX_TIME_S: MAX_TICK ticks of 10 s
BEYOND_TIME = "1.0e+14"
BOUNDS = [
    # envs/drone_patrol/config.py
    ("world:\n  area_m: 100001\n", 2, "world.area_m", "100000"),
    ("world: {cruise_altitude_m: 1001}\n", 1, "world.cruise_altitude_m", "1000"),
    ("world: {altitude_limit_m: 1001}\n", 1, "world.altitude_limit_m", "1000"),
    ("world: {routes_per_zone: 1025}\n", 1, "world.routes_per_zone", "1024"),
    ("world:\n  departures:\n    - {agent: 200001, at_s: 5}\n", 3, "world.departures[0].agent",
     "200000"),
    (f"world:\n  departures:\n    - {{agent: 0, at_s: {BEYOND_TIME}}}\n", 3,
     "world.departures[0].at_s", MAX_TIME),
    ("world:\n  arrivals:\n    - {agent: 200001, at_s: 5}\n", 3, "world.arrivals[0].agent",
     "200000"),
    (f"world:\n  arrivals:\n    - {{agent: 0, at_s: {BEYOND_TIME}}}\n", 3,
     "world.arrivals[0].at_s", MAX_TIME),
    (f"world: {{rotation_s: {BEYOND_TIME}}}\n", 1, "world.rotation_s", MAX_TIME),
    ("world: {feature_noise: 101}\n", 1, "world.feature_noise", "100"),
    ("world: {sensing_radius_m: 1001}\n", 1, "world.sensing_radius_m", "1000"),
    (f"world: {{label_delay_ticks: {2**41}}}\n", 1, "world.label_delay_ticks", str(2**40)),
    ("world:\n  events:\n    fire: {zones: [forest], rate_per_min: 6001}\n", 3,
     "world.events.fire.rate_per_min", "6000"),
    (f"world:\n  events:\n    fire: {{zones: [forest], duration_s: {BEYOND_TIME}}}\n", 3,
     "world.events.fire.duration_s", MAX_TIME),
    (f"world:\n  events:\n    fire: {{zones: [forest], appears_after_s: {BEYOND_TIME}}}\n", 3,
     "world.events.fire.appears_after_s", MAX_TIME),
    (f"world:\n  events:\n    fire:\n      zones: [forest]\n      later_zones: {{city: "
     f"{BEYOND_TIME}}}\n", 5, "world.events.fire.later_zones.city", MAX_TIME),
    # envs/pz_config.py
    (f"{SPREAD_WORLD}  tick_s: 86401\n", 4, "world.tick_s", "86400"),
    # agents/config.py
    (f"model: {{router_noise_anneal_steps: {2**41}}}\n", 1, "model.router_noise_anneal_steps",
     str(2**40)),
    (f"learning: {{learn_every: {2**41}}}\n", 1, "learning.learn_every", str(2**40)),
    ("learning: {ewc_lambda: 1.0e+11}\n", 1, "learning.ewc_lambda", str(10**10)),
    (f"learning: {{consolidate_every: {2**41}}}\n", 1, "learning.consolidate_every", str(2**40)),
    ("learning: {ssl_weight: 101}\n", 1, "learning.ssl_weight", "100"),
    ("rl: {value_coef: 101}\n", 1, "rl.value_coef", "100"),
    ("rl: {entropy_coef: 101}\n", 1, "rl.entropy_coef", "100"),
    ("rl: {max_grad_norm: 1.0e+7}\n", 1, "rl.max_grad_norm", "1000000"),
    # protocols/faults.py
    (f"faults: {{seed: {2**64}}}\n", 1, "faults.seed", str(2**64 - 1)),
    (f"faults:\n  messages: {{delay: 0.1, delay_rounds: {2**41}}}\n", 2,
     "faults.messages.delay_rounds", str(2**40)),
    (f"faults:\n  partitions:\n    - {{from_tick: {2**41}, to_tick: 5, split: 2}}\n", 3,
     "faults.partitions[0].from_tick", str(2**40)),
    (f"faults:\n  partitions:\n    - {{from_tick: 0, to_tick: {2**41}, split: 2}}\n", 3,
     "faults.partitions[0].to_tick", str(2**40)),
    ("faults:\n  partitions:\n    - {from_tick: 0, to_tick: 5, groups: [[0, 200001]]}\n", 3,
     "faults.partitions[0].groups[0][1]", "200000"),
    ("faults:\n  partitions:\n    - {from_tick: 0, to_tick: 5, split: 200001}\n", 3,
     "faults.partitions[0].split", "200000"),
    ("faults:\n  kill:\n    - {shard: 200001, at_tick: 5}\n", 3, "faults.kill[0].shard",
     "200000"),
    (f"faults:\n  kill:\n    - {{shard: 0, at_tick: {2**41}}}\n", 3, "faults.kill[0].at_tick",
     str(2**40)),
    ("faults:\n  byzantine: {agents: [200001]}\n", 2, "faults.byzantine.agents[0]", "200000"),
    ("faults:\n  byzantine: {attack: scale, scale: 1.0e+31}\n", 2, "faults.byzantine.scale",
     str(10**30)),
    ("faults:\n  byzantine: {attack: noise, noise_std: 1.0e+31}\n", 2,
     "faults.byzantine.noise_std", str(10**30)),
    # protocols/config.py
    ("gossip:\n  graph: {kind: random_regular, degree: 200001}\n", 2, "gossip.graph.degree",
     "200000"),
    ("gossip:\n  graph: {kind: proximity, radio_range_m: 1.0e+7}\n", 2,
     "gossip.graph.radio_range_m", "1000000"),
    (f"gossip: {{interval: {2**41}}}\n", 1, "gossip.interval", str(2**40)),
    ("gossip:\n  coordinator: {round_timeout_s: 3601}\n", 2,
     "gossip.coordinator.round_timeout_s", "3600"),
    ("gossip:\n  coordinator: {clip_norm: 1.0e+31}\n", 2, "gossip.coordinator.clip_norm",
     str(10**30)),
    ("gossip:\n  membership: {probe_interval_s: 3601}\n", 2,
     "gossip.membership.probe_interval_s", "3600"),
    ("gossip:\n  membership: {indirect_checks: 65}\n", 2, "gossip.membership.indirect_checks",
     "64"),
    ("gossip:\n  membership: {suspicion_mult: 1001}\n", 2, "gossip.membership.suspicion_mult",
     "1000"),
    ("gossip:\n  membership: {max_members: 200001}\n", 2, "gossip.membership.max_members",
     "200000"),
    ("gossip:\n  membership: {dead_reap_s: 86401}\n", 2, "gossip.membership.dead_reap_s",
     "86400"),
    ("gossip:\n  limits: {delta_norm: 1.0e+7}\n", 2, "gossip.limits.delta_norm", "1000000"),
    (f"gossip:\n  limits: {{version_jump: {2**63}}}\n", 2, "gossip.limits.version_jump",
     str(2**62)),
    ("gossip:\n  coordinator: {keep_rounds: 4097}\n", 2, "gossip.coordinator.keep_rounds",
     "4096"),
    (f"gossip:\n  sightings: {{max_age_ticks: {2**41}}}\n", 2,
     "gossip.sightings.max_age_ticks", str(2**40)),
]  # fmt: skip


def _too_large(path: Path, line: int, key: str, most: str) -> str:
    """The start of the one problem line of a value past its bound `most`."""
    return f"{path}:{line}: {key}: Input should be less than or equal to {most} (got "


@pytest.mark.parametrize("text, line, key, most", BOUNDS, ids=[row[2] for row in BOUNDS])
def test_every_number_of_the_scenario_has_an_upper_bound_refused_at_its_line(
    tmp_path: Path, text: str, line: int, key: str, most: str
) -> None:
    # Prepare: the number on line `line` + 1 (after the name)
    path = tmp_path / "big.yaml"

    # Execute
    message = _refusal(f"name: t\n{text}", tmp_path, path.name)

    # Assert: one problem, on one line, naming file, line, key and the bound
    head, *problems = message.splitlines()
    assert head == f"{path}: 1 problem in the scenario:", message
    assert len(problems) == 1 and problems[0].strip().startswith(
        _too_large(path, line + 1, key, most)
    ), message


@pytest.mark.parametrize(
    "key",
    ["world.area_m", "world.tick_s", "learning.ewc_lambda", "faults.byzantine.scale"],
)  # one row of each config module: drone patrol, PettingZoo, agents, faults
def test_swarm_validate_refuses_a_world_mind_or_fault_number_past_its_bound(
    tmp_path: Path, key: str
) -> None:
    # Prepare
    text, line, _, most = next(row for row in BOUNDS if row[2] == key)
    scenario = tmp_path / "big.yaml"
    scenario.write_text(f"name: t\n{text}")

    # Execute
    proc = _swarm(tmp_path, "validate", str(scenario))

    # Assert: status 2, its one problem on one line, no traceback
    assert proc.returncode == 2, proc.stderr
    problems = [p.strip() for p in proc.stderr.splitlines() if f"big.yaml:{line + 1}:" in p]
    assert len(problems) == 1, proc.stderr
    assert problems[0].startswith(_too_large(scenario, line + 1, key, most)), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "key, value, most",
    [
        ("checkpoint_every_s", "86401", "86400"),
        ("max_clock_skew_s", "86401", "86400"),
        ("status_every_s", "3601", "3600"),
    ],
)
def test_a_node_config_time_past_its_bound_is_refused_at_its_line(
    tmp_path: Path, key: str, value: str, most: str
) -> None:
    # Prepare: the node config is checked before the scenario it names is read
    from swarm.node_config import load_node_config

    path = tmp_path / "node.yaml"
    path.write_text(f"scenario: s.yaml\nagent: 0\n{key}: {value}\n")

    # Execute
    with pytest.raises(ScenarioError) as info:
        load_node_config(path)

    # Assert
    head, *problems = str(info.value).splitlines()
    assert head == f"{path}: 1 problem in the node config:"
    assert len(problems) == 1 and problems[0].strip().startswith(_too_large(path, 3, key, most))


def test_the_new_bounds_let_the_largest_planned_values_through() -> None:
    # Prepare: agents.count's cap (100,000 drones) at the default beat, and every bound itself
    from envs.drone_patrol.config import MAX_TIME_S, scaled_layout

    area = scaled_layout(100_000)["area_m"]
    text = (
        f"name: t\nagents: {{count: 100000, per_shard: auto}}\n"
        f"world:\n  area_m: {area}\n  rotation_s: {MAX_TIME_S}\n  label_delay_ticks: {2**40}\n"
        "  feature_noise: 100.0\n  sensing_radius_m: 1000.0\n  tick_s: 0.001\n"
        f"  events:\n    fire: {{zones: [forest], rate_per_min: 6000.0, duration_s: {MAX_TIME_S},"
        f" appears_after_s: {MAX_TIME_S}, later_zones: {{city: {MAX_TIME_S}}}}}\n"
        f"learning: {{learn_every: {2**40}, ewc_lambda: 1.0e+10, ssl_weight: 100.0}}\n"
        "rl: {value_coef: 100.0, entropy_coef: 100.0, max_grad_norm: 1000000.0}\n"
        f"faults:\n  seed: {2**64 - 1}\n  messages: {{delay: 0.1, delay_rounds: {2**40}}}\n"
        f"  partitions:\n    - {{from_tick: 0, to_tick: {2**40}, split: 100000}}\n"
        "  byzantine: {attack: scale, scale: 1.0e+30}\n"
    )

    # Execute
    sc = parse_scenario(text)

    # Assert
    assert sc.world.kind == "drone_patrol" and sc.world.area_m == area > 14_000
    assert sc.faults.byzantine.scale == 1e30 and sc.learning.learn_every == 2**40


def test_every_example_scenario_and_node_config_validates() -> None:
    # scenarios/*.yaml: tests/test_scenario.py::test_shipped_scenarios_validate
    import yaml

    from swarm.node_config import NodeConfig
    from swarm.scenario import parse_yaml_model

    paths = sorted((ROOT / "examples").rglob("*.yaml")) + sorted(
        (ROOT / "tests" / "data").glob("*.yaml")
    )
    assert len(paths) >= 5  # examples/node: a scenario and three node configs; tiny.yaml
    for path in paths:
        if "scenario" in yaml.safe_load(path.read_text()):  # a node config names its scenario
            # its key_file (swarm.key) is made by whoever runs the example: the schema only
            parse_yaml_model(path.read_text(), NodeConfig, path, "node config")
        else:
            assert load_scenario(path).agents.count >= 1, path
