"""Live monitoring: a real run's figures on Ray's Prometheus endpoint, and a Grafana dashboard
whose every query names a metric that such a run exports.

Two small runs (the tiny drone patrol, a tiny PettingZoo world) share the tests' Ray, which
exports every second (conftest.ray_local). At its last tick, while the actors still live, each
run's `on_tick` scrapes the endpoint that the Runner printed, over HTTP on 127.0.0.1, until the
final figures are there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swarm.runner import Runner, new_run_dir
from swarm.scenario import Scenario, load_scenario
from swarm.telemetry import metric_name

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
SPREAD = ROOT / "scenarios" / "spread.yaml"
DASHBOARD = ROOT / "dashboards" / "yan-swarm.json"
#: Seconds a scrape may wait for a run's last figures: Ray exports every second here, so a
#: few seconds on a busy machine; the bound only keeps a broken export from hanging the test.
SCRAPE_DEADLINE_S = 30.0


@dataclass
class Scraped:
    """A finished run and what its metrics endpoint said at its last tick."""

    run: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    infos: list[str]
    samples: list[tuple[str, dict[str, str], float]]  # (name, labels, value), this run only

    def values(self, name: str, **labels: str) -> list[float]:
        return [
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == x for k, x in labels.items())
        ]

    def one(self, name: str, **labels: str) -> float:
        found = self.values(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {lab[label]: v for n, lab, v in self.samples if n == name}


def _parse(text: str, run: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("ray_swarm_") and s.labels.get("run") == run
    ]


def _run_and_scrape(sc: Scenario, root: Path) -> Scraped:
    run_dir = new_run_dir(root, sc)
    infos: list[str] = []
    rounds = sc.ticks // sc.gossip.interval
    scraped: list[tuple[str, dict[str, str], float]] = []

    def done(samples: list[tuple[str, dict[str, str], float]]) -> bool:
        # The driver sets run/ticks, and each shard gossip/rounds, last of their figures.
        ticks = [v for n, _, v in samples if n == "ray_swarm_run_ticks"]
        shard_rounds = [v for n, _, v in samples if n == "ray_swarm_gossip_rounds"]
        return ticks == [sc.ticks] and shard_rounds == [rounds] * sc.n_shards

    def at_last_tick(tick: int) -> None:
        if tick != sc.ticks - 1:
            return
        (url,) = [m.group(1) for i in infos if (m := re.match(r"metrics: (\S+)", i))]
        deadline = time.monotonic() + SCRAPE_DEADLINE_S
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=10) as reply:
                scraped[:] = _parse(reply.read().decode(), run_dir.name)
            if done(scraped):
                return
            time.sleep(0.2)  # poll: Ray exports once a second

    result = Runner(sc, run_dir, on_info=infos.append, on_tick=at_last_tick).run()
    assert done(scraped), f"the last figures never reached the endpoint: {scraped}"
    return Scraped(run_dir.name, result.summary, result.rows, infos, scraped)


@pytest.fixture(scope="module")
def drone(ray_local, tmp_path_factory) -> Scraped:
    return _run_and_scrape(load_scenario(TINY), tmp_path_factory.mktemp("drone"))


@pytest.fixture(scope="module")
def spread(ray_local, tmp_path_factory) -> Scraped:
    data = load_scenario(SPREAD).model_dump(mode="json")
    data["ticks"] = 20  # two 10-step episodes per copy: one metrics row with a team return
    data["agents"] = {"count": 6, "per_shard": 3}
    data["world"].update({"copies": 2, "kwargs": {"N": 3, "max_cycles": 10}})
    data["rl"]["rollout"] = 10
    data["metrics"]["interval"] = 20
    data["ray"]["dashboard"] = False
    return _run_and_scrape(Scenario.model_validate(data), tmp_path_factory.mktemp("spread"))


# -- the endpoint -------------------------------------------------------------------------------


def test_run_prints_where_prometheus_can_scrape(drone: Scraped) -> None:
    lines = [i for i in drone.infos if i.startswith("metrics: ")]
    assert len(lines) == 1
    assert re.match(r"metrics: http://127\.0\.0\.1:\d+/metrics \(Prometheus", lines[0])


def test_agent_figures_carry_agent_and_shard_and_match_the_record(drone: Scraped) -> None:
    last, m = drone.rows[-1], drone.summary["metrics"]
    agents = [f"agent-{i}" for i in range(drone.summary["agents"])]
    acc = drone.by_label("ray_swarm_learn_probe_acc", "agent")
    iso = drone.by_label("ray_swarm_learn_probe_acc_isolated", "agent")
    assert sorted(acc) == sorted(iso) == agents
    for i, name in enumerate(agents):  # tiny: 2 agents per shard
        shard = f"shard-{i // 2}"
        assert 0.0 <= drone.one("ray_swarm_learn_probe_acc", agent=name, shard=shard) <= 1.0
        assert acc[name] == pytest.approx(last["agents"]["learn/probe_acc"][i], abs=1e-6)
        assert iso[name] == pytest.approx(last["agents"]["learn/probe_acc_isolated"][i], abs=1e-6)
        assert drone.one("ray_swarm_learn_loss", agent=name, shard=shard) >= 0.0
    assert sum(acc.values()) / len(acc) == pytest.approx(m["learn/probe_acc"], abs=1e-6)
    assert sum(iso.values()) / len(iso) == pytest.approx(m["learn/probe_acc_isolated"], abs=1e-6)


def test_traffic_figures_add_up_to_the_summary(drone: Scraped) -> None:
    m = drone.summary["metrics"]
    sent = drone.by_label("ray_swarm_gossip_bytes_sent", "agent")
    assert list(sent.values()) == pytest.approx(
        [drone.rows[-1]["agents"]["gossip/bytes_sent"][int(a.split("-")[1])] for a in sent]
    )
    assert sum(sent.values()) == m["gossip/bytes_sent"] > 0
    assert sum(drone.values("ray_swarm_gossip_dense_bytes")) == m["gossip/dense_bytes"]
    assert sum(drone.values("ray_swarm_gossip_wire_bytes_sent")) == m["gossip/wire_bytes"]
    assert sum(drone.values("ray_swarm_gossip_wire_bytes_received")) > 0
    assert sum(drone.values("ray_swarm_gossip_deltas_accepted")) == m["gossip/deltas_accepted"]
    # A clean run rejects nothing, and still exports the zero, one series per shard.
    assert drone.values("ray_swarm_gossip_deltas_rejected") == [0.0, 0.0]
    assert m["gossip/deltas_rejected"] == 0


def test_swarm_figures_match_the_summary(drone: Scraped) -> None:
    m, run = drone.summary["metrics"], drone.summary["run"]
    for figure in ("task/score", "task/f1", "learn/consensus_distance", "gossip/rho"):
        assert drone.one("ray_" + metric_name(figure)) == pytest.approx(m[figure], rel=1e-9)
    kinds = drone.by_label("ray_swarm_learn_class_acc", "kind")
    assert kinds == pytest.approx({k: m[f"learn/class_acc/{k}"] for k in drone.summary["classes"]})
    first = {k: v for k, v in m.items() if k.startswith("task/first_detect_s/")}
    assert len(drone.values("ray_swarm_task_first_detect_s")) == len(first) > 0
    assert drone.one("ray_swarm_run_ticks") == 40
    assert drone.one("ray_swarm_run_sim_time_s") == m["sim_time_s"]
    # Live: simulated time over time since the ticks started; the summary's divides by the
    # whole run after set-up (it ran on after this row), so it can only be smaller.
    assert drone.one("ray_swarm_run_real_time_factor") >= run["real_time_factor"] > 0
    assert all(v > 0 for v in drone.values("ray_swarm_learn_steps"))


def test_rl_world_exports_team_return_and_policy_figures(spread: Scraped) -> None:
    m = spread.summary["metrics"]
    assert spread.one("ray_swarm_rl_team_return") == pytest.approx(m["rl/team_return"])
    assert spread.one("ray_swarm_rl_episodes") == m["rl/episodes"] == 4
    entropy = spread.by_label("ray_swarm_rl_entropy", "shard")
    assert sorted(entropy) == ["shard-0", "shard-1"]
    assert sum(entropy.values()) / 2 == pytest.approx(m["rl/entropy"])
    assert len(spread.values("ray_swarm_gossip_bytes_sent")) == 6
    assert not spread.values("ray_swarm_learn_probe_acc")  # no probe set in a reward world


def test_figures_outlive_rays_gauge_ttl_until_closed(ray_local) -> None:
    # Prepare: one figure through Telemetry, one control gauge set directly, once each.
    from ray.util.metrics import Gauge

    from swarm.telemetry import Telemetry, metrics_endpoint

    url = metrics_endpoint()
    assert url is not None and url.startswith("http://127.0.0.1:")
    tel = Telemetry("ttl-test")
    tel.set("task/f1", 0.25)
    Gauge("swarm_ttl_control", "set once", ("run",)).set(1.0, tags={"run": "ttl-test"})

    # Execute: scrape until Ray has dropped the control (two exports without a record).
    seen_control, samples = False, []
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as reply:
            samples = _parse(reply.read().decode(), "ttl-test")
        names = {n for n, _, _ in samples}
        seen_control |= "ray_swarm_ttl_control" in names
        if seen_control and "ray_swarm_ttl_control" not in names:
            break
        time.sleep(0.2)
    tel.close()

    # Assert: the control came and went; the figure Telemetry keeps re-recording stayed.
    assert seen_control and "ray_swarm_ttl_control" not in {n for n, _, _ in samples}
    assert ("ray_swarm_task_f1", {"run": "ttl-test"}, 0.25) in [
        (n, {"run": lab["run"]}, v) for n, lab, v in samples
    ]


# -- outside Ray --------------------------------------------------------------------------------


def test_outside_ray_figures_are_a_no_op_and_ray_is_not_imported() -> None:
    code = (
        "import sys; import swarm.runner; from swarm.telemetry import Telemetry\n"
        "tel = Telemetry('r', shard='shard-0'); tel.set('task/f1', 0.5); tel.close()\n"
        "assert not tel.enabled and tel._thread is None, 'enabled outside Ray'\n"
        "assert 'ray' not in sys.modules, 'importing swarm imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_metric_names_follow_the_row_names() -> None:
    assert metric_name("task/f1") == "swarm_task_f1"
    assert metric_name("learn/probe_acc_isolated") == "swarm_learn_probe_acc_isolated"
    assert metric_name("rl/team-return") == "swarm_rl_team_return"


# -- the Grafana dashboard ----------------------------------------------------------------------

#: PromQL words that are not metric names: aggregations and functions are followed by "(",
#: so only operators and modifiers need listing.
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left"}
PROMQL_WORDS |= {"group_right", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers left once strings, label matchers
    {...}, ranges [...], grouping clauses, function calls and numbers are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(\s*\()?", expr):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def test_promql_metric_names_finds_names_not_functions_or_labels() -> None:
    expr = (
        'sum by (run) (rate(ray_swarm_gossip_bytes_sent{run=~"$run", agent="a"}[$__rate_interval]))'
        " / on (run) group_left avg without (shard) (ray_swarm_gossip_dense_bytes) > bool 0.5"
    )
    assert promql_metric_names(expr) == {
        "ray_swarm_gossip_bytes_sent",
        "ray_swarm_gossip_dense_bytes",
    }


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:  # rows may hold their own panels (collapsed)
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def test_dashboard_is_importable_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["schemaVersion"], int) and board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"run", "agent"} <= set(variables)
    panels = [p for p in _panels(board["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(board["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]


def test_every_dashboard_query_names_a_metric_a_run_exported(
    drone: Scraped, spread: Scraped
) -> None:
    exported = {n for n, _, _ in drone.samples + spread.samples}
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in _panels(board["panels"]) if p["type"] != "row"]
    queries = [(p["title"], t["expr"]) for p in panels for t in p["targets"]]
    queries += [
        (v["name"], v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    used: set[str] = set()
    for title, expr in queries:
        expr = re.sub(r"^label_values\((.*)\)$", r"\1", expr)  # label_values(series, label)
        expr = re.sub(r",\s*\w+$", "", expr)
        names = promql_metric_names(expr)
        assert names, (title, expr)
        assert names <= exported, (title, sorted(names - exported))
        used |= names
    wanted = {
        "learn/probe_acc",
        "learn/probe_acc_isolated",
        "task/score",
        "task/f1",
        "gossip/bytes_sent",
        "gossip/deltas_rejected",
        "learn/consensus_distance",
        "gossip/rho",
        "rl/team_return",
        "run/real_time_factor",
    }
    assert {"ray_" + metric_name(f) for f in wanted} <= used
