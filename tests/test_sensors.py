"""Sensor sources of a swarm-node (swarm/sensors.py): the JSON-lines stream reader, its header
checks, malformed-line handling, hidden kinds and resume, and recordings of the drone world."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from swarm.sensors import (
    FORMAT,
    Reading,
    SensorConfig,
    SensorError,
    StreamSensor,
    open_sensor,
    record_world,
)

D = 3
CLASSES = ["none", "fire", "smoke"]


def _header(**over) -> dict:
    h = {"format": FORMAT, "input": {"vector_dim": D}, "classes": CLASSES}
    h.update(over)
    return h


def _text(header: dict | str, *lines) -> str:
    out = [header if isinstance(header, str) else json.dumps(header)]
    out += [ln if isinstance(ln, str) else json.dumps(ln) for ln in lines]
    return "\n".join(out) + "\n"


def _sensor(text: str, name: str = "rec.jsonl", skip: int = 0, **cfg) -> StreamSensor:
    return StreamSensor(io.StringIO(text), name, SensorConfig(**cfg), skip=skip)


def _all(sensor: StreamSensor) -> list[Reading]:
    out = []
    while (r := sensor.read()) is not None:
        out.append(r)
    return out


def _rec(t: int, labels=None, cls=None, obs=None) -> dict:
    rec: dict = {"t": t, "obs": obs if obs is not None else [float(t) + 0.5, -1.0, 2.0]}
    if labels is not None:
        rec["labels"] = labels
    if cls is not None:
        rec["class"] = cls
    return rec


# ---- header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"input": {"vector_dim": D}, "classes": CLASSES}, id="no-format"),
        pytest.param(_header(format="yan-swarm-sensor/2"), id="other-format"),
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param("{not json", id="not-json"),
        pytest.param(_header(input="vector"), id="input-not-object"),
        pytest.param(_header(input=None), id="input-missing"),
        pytest.param(_header(classes="none,fire"), id="classes-not-list"),
        pytest.param(_header(classes=["none"]), id="one-class"),
        pytest.param(
            _header(probe={"windows": [[[0.0] * D]] * 2, "labels": [0]}), id="probe-n-labels"
        ),
        pytest.param(
            _header(probe={"windows": [[[0.0] * (D + 1)]], "labels": [0]}), id="probe-width"
        ),
        pytest.param(_header(probe={"windows": [[0.0] * D], "labels": [0]}), id="probe-2d"),
        pytest.param(_header(probe={"windows": [[[0.0] * D]]}), id="probe-no-labels"),
        pytest.param(
            _header(probe={"windows": [[[0.0] * D], [[1.0]]], "labels": [0, 1]}), id="ragged"
        ),
        pytest.param(_header(probe={"windows": [[[0.0] * D]], "labels": [3]}), id="probe-class"),
        pytest.param(
            _header(probe={"windows": [[[float("nan")] * D]], "labels": [0]}), id="probe-nan"
        ),
        pytest.param(_header(probe=[1, 2]), id="probe-list"),
    ],
)
def test_bad_header_is_a_sensor_error_at_line_1(header):
    with pytest.raises(SensorError, match=r"^rec\.jsonl:1: "):
        _sensor(_text(header, _rec(0)))


@pytest.mark.parametrize(
    "inputs",
    [{"vector_dim": 0}, {"vector_dim": D, "bogus": 1}, {"vector_dim": "3"}, {"vocab": 5}],
    ids=["no-modality", "unknown-key", "string-dim", "tokens"],
)
def test_invalid_input_object_is_a_sensor_error_at_line_1(inputs):
    with pytest.raises(SensorError, match=r"^rec\.jsonl:1: "):
        _sensor(_text(_header(input=inputs), _rec(0)))


def test_empty_stream_is_a_sensor_error():
    with pytest.raises(SensorError, match="empty"):
        _sensor("\n\n")


def test_header_fields_and_probe_are_read():
    probe = {"windows": [[[0.0, 1.0, 2.0]] * 2] * 3, "labels": [0, 2, 1]}
    s = _sensor(_text(_header(probe=probe)))
    assert s.classes == CLASSES
    assert s.dim == D
    assert s.input == {"vector_dim": D}
    x, y = s.probe_set
    assert x.dtype == np.float32 and x.shape == (3, 2, D)
    assert y.dtype == np.int64 and y.tolist() == [0, 2, 1]
    assert s.read() is None  # no reading lines


def test_without_probe_the_probe_set_is_none():
    assert _sensor(_text(_header(), _rec(0))).probe_set is None


# ---- good and bad lines ---------------------------------------------------------------------


def test_good_lines_become_readings(capsys):
    s = _sensor(
        _text(
            _header(),
            _rec(0),
            "",  # blank lines are not lines of data
            _rec(1, labels=[[0, 1], [1, 2]]),
            _rec(5, labels=[]),
        )
    )
    readings = _all(s)

    assert [r.tick for r in readings] == [0, 1, 5]
    for r in readings:
        assert r.obs.dtype == np.float32 and r.obs.shape == (D,)
        assert r.labels.dtype == np.int64 and r.labels.ndim == 2 and r.labels.shape[1] == 2
    np.testing.assert_array_equal(readings[1].obs, np.array([1.5, -1.0, 2.0], np.float32))
    assert readings[0].labels.shape == (0, 2)
    assert readings[1].labels.tolist() == [[0, 1], [1, 2]]
    assert readings[2].labels.shape == (0, 2)
    assert s.bad_lines == 0 and s.position == 3
    assert capsys.readouterr().err == ""


BAD_LINES = {
    "not-json": "{'t': 1}",
    "not-object": "[1, 2, 3]",
    "short-obs": _rec(1, obs=[1.0, 2.0]),
    "long-obs": _rec(1, obs=[1.0] * (D + 1)),
    "obs-not-list": _rec(1, obs=3.0),
    "obs-word": _rec(1, obs=["a", 1.0, 2.0]),
    "obs-null": _rec(1, obs=[None, 1.0, 2.0]),
    "nan": '{"t": 1, "obs": [NaN, 1.0, 2.0]}',
    "infinity": '{"t": 1, "obs": [1.0, Infinity, 2.0]}',
    "overflow": '{"t": 1, "obs": [1.0, 1e400, 2.0]}',
    "too-big-for-f32": _rec(1, obs=[1e39, 0.0, 0.0]),
    "old-tick": _rec(0),
    "same-tick": _rec(0, labels=[[0, 1]]),
    "negative-tick": _rec(-1),
    "no-tick": {"obs": [1.0, 2.0, 3.0]},
    "float-tick": _rec(1.0),
    "string-tick": _rec("1"),
    "bool-tick": {"t": True, "obs": [1.0, 2.0, 3.0]},
    "class-too-big": _rec(1, labels=[[0, 3]]),
    "class-negative": _rec(1, labels=[[0, -1]]),
    "float-label": _rec(1, labels=[[0, 1.5]]),
    "float-label-int-valued": _rec(1, labels=[[0.0, 1]]),
    "bool-label": _rec(1, labels=[[0, True]]),
    "string-label": _rec(1, labels=[["0", 1]]),
    "label-triple": _rec(1, labels=[[0, 1, 2]]),
    "labels-null": _rec(1, labels=None) | {"labels": None},
    "labels-object": _rec(1, labels={"0": 1}),
}


@pytest.mark.parametrize("bad", list(BAD_LINES))
def test_bad_line_is_skipped_counted_and_reported_with_its_number(bad, capsys):
    # line 1 header, line 2 tick 0, line 3 blank, line 4 the bad line, line 5 tick 2
    s = _sensor(_text(_header(), _rec(0), "", BAD_LINES[bad], _rec(2, labels=[[0, 2]])))
    readings = _all(s)

    assert [r.tick for r in readings] == [0, 2]
    assert readings[1].labels.tolist() == [[0, 2]]
    assert s.bad_lines == 1
    assert s.position == 2
    err = capsys.readouterr().err
    assert re.search(r"warning: rec\.jsonl:4: .*skipped", err), err
    assert err.count("warning") == 1


def test_every_bad_line_counts_and_a_tick_after_a_bad_line_still_must_increase(capsys):
    s = _sensor(
        _text(
            _header(),
            _rec(3),
            _rec(9, obs=[1.0]),  # bad: its tick 9 is not taken as the last tick
            _rec(4),
            _rec(4),  # bad: does not increase
            "garbage",
            _rec(10),
        )
    )
    assert [r.tick for r in _all(s)] == [3, 4, 10]
    assert s.bad_lines == 3
    err = capsys.readouterr().err
    assert [int(n) for n in re.findall(r"rec\.jsonl:(\d+):", err)] == [3, 5, 6]


def test_flat_label_pair_is_a_bad_line(capsys):
    s = _sensor(_text(_header(), _rec(0, labels=[0, 1]), _rec(1)))
    assert [r.tick for r in _all(s)] == [1]
    assert s.bad_lines == 1


def test_label_row_of_four_is_a_bad_line():
    s = _sensor(_text(_header(), _rec(0, labels=[[0, 1, 0, 2]]), _rec(1)))
    assert [r.tick for r in _all(s)] == [1]
    assert s.bad_lines == 1


def test_nested_obs_is_a_bad_line():
    s = _sensor(_text(_header(), _rec(0, obs=[[1.0], [2.0], [3.0]]), _rec(1)))
    readings = _all(s)
    assert all(r.obs.shape == (D,) for r in readings)
    assert [r.tick for r in readings] == [1]


def test_numeric_strings_in_obs_are_a_bad_line():
    s = _sensor(_text(_header(), _rec(0, obs=["1.0", "2", "3"]), _rec(1)))
    assert [r.tick for r in _all(s)] == [1]


# ---- hidden kinds -----------------------------------------------------------------------------


def test_hide_kinds_drops_readings_of_that_class_and_labels_naming_it(capsys):
    text = _text(
        _header(),
        _rec(0, cls=0),
        _rec(1, cls=1),  # a fire: hidden
        _rec(2, cls=2, labels=[[1, 1], [0, 0]]),  # the fire's label drops, the other stays
        _rec(3, labels=[[2, 2], [1, 1]]),  # no class: kept
        _rec(4, cls=1, labels=[[3, 2]]),  # hidden, and so is its label of tick 3
        _rec(5, cls=0),
    )
    s = _sensor(text, hide_kinds=["fire"])
    readings = _all(s)

    assert [r.tick for r in readings] == [0, 2, 3, 5]
    assert readings[1].labels.tolist() == [[0, 0]]
    assert readings[2].labels.tolist() == [[2, 2]]
    assert all(r.labels.shape[1] == 2 for r in readings)
    assert s.position == 6  # hidden readings were consumed too
    assert s.bad_lines == 0
    assert capsys.readouterr().err == ""

    plain = _all(_sensor(text))
    assert [r.tick for r in plain] == [0, 1, 2, 3, 4, 5]
    assert plain[2].labels.tolist() == [[1, 1], [0, 0]]


def test_hiding_two_kinds():
    text = _text(_header(), _rec(0, cls=1), _rec(1, cls=2), _rec(2, cls=0, labels=[[0, 1]]))
    readings = _all(_sensor(text, hide_kinds=["fire", "smoke"]))
    assert [r.tick for r in readings] == [2]
    assert readings[0].labels.shape == (0, 2)


def test_unknown_hide_kind_is_a_sensor_error():
    with pytest.raises(SensorError, match="unknown kinds.*'rain'"):
        _sensor(_text(_header(), _rec(0)), hide_kinds=["rain"])


def test_hiding_background_is_a_sensor_error():
    with pytest.raises(SensorError, match="'none'"):
        _sensor(_text(_header(), _rec(0)), hide_kinds=["none"])


# ---- resume -------------------------------------------------------------------------------------


def test_skip_resumes_after_the_readings_already_consumed(capsys):
    text = _text(
        _header(),
        _rec(0, cls=0),
        "junk",
        _rec(1, cls=1),
        _rec(2, cls=0),
        _rec(3, cls=2),
        _rec(4, cls=0),
    )
    first = _sensor(text, hide_kinds=["fire"])
    consumed = [first.read().tick, first.read().tick]  # 0, then 2 (1 was hidden)
    assert consumed == [0, 2]
    assert first.position == 3
    capsys.readouterr()

    resumed = _sensor(text, skip=first.position, hide_kinds=["fire"])
    assert resumed.position == 3
    assert [r.tick for r in _all(resumed)] == [3, 4]
    assert resumed.position == 5

    with pytest.raises(AssertionError):  # control: without skip it starts over
        assert [r.tick for r in _all(_sensor(text))] == [3, 4]


def test_skip_keeps_the_tick_order_check():
    text = _text(_header(), _rec(0), _rec(5), _rec(3), _rec(6))
    resumed = _sensor(text, skip=2)
    assert [r.tick for r in _all(resumed)] == [6]  # 3 is still older than 5
    assert resumed.bad_lines == 1


def test_skip_past_the_end_reads_nothing():
    s = _sensor(_text(_header(), _rec(0), _rec(1)), skip=10)
    assert s.read() is None
    assert s.position == 2


# ---- open_sensor kind file ----------------------------------------------------------------------


def _open(path: str, base: Path | None = None, skip: int = 0, **cfg):
    return open_sensor(
        SensorConfig(kind="file", path=path, **cfg),
        world_cfg=None,
        n_agents=1,
        index=0,
        seed=0,
        window=2,
        probe_per_class=1,
        skip=skip,
        base=base,
    )


def test_open_sensor_reads_a_file_relative_to_base(tmp_path, capsys):
    (tmp_path / "rec.jsonl").write_text(
        _text(_header(), _rec(0), "bad", _rec(1, labels=[[0, 2]]), _rec(2, cls=1)),
        encoding="utf-8",
    )
    s = _open("rec.jsonl", base=tmp_path)
    assert isinstance(s, StreamSensor)
    readings = _all(s)
    s.close()
    assert s.stream.closed
    assert [r.tick for r in readings] == [0, 1, 2]
    assert readings[1].labels.tolist() == [[0, 2]]
    assert s.bad_lines == 1
    assert f"{tmp_path / 'rec.jsonl'}:3:" in capsys.readouterr().err

    resumed = _open(str(tmp_path / "rec.jsonl"), skip=2, hide_kinds=["fire"])
    assert _all(resumed) == []
    resumed.close()


def test_open_sensor_file_errors(tmp_path):
    with pytest.raises(SensorError, match="needs sensor.path"):
        open_sensor(
            SensorConfig(kind="file"),
            world_cfg=None,
            n_agents=1,
            index=0,
            seed=0,
            window=2,
            probe_per_class=1,
        )
    with pytest.raises(SensorError, match="missing.jsonl"):
        _open("missing.jsonl", base=tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"format": "other"}\n', encoding="utf-8")
    with pytest.raises(SensorError, match=r"bad\.jsonl:1: "):
        _open(str(tmp_path / "bad.jsonl"))


# ---- recordings of the drone world ------------------------------------------------------------


def test_record_world_writes_files_the_stream_reader_reads_back(tmp_path):
    pytest.importorskip("pybullet")
    from envs.drone_patrol.config import EVENT_CLASSES
    from swarm.scenario import load_scenario

    sc = load_scenario(Path(__file__).parent / "data" / "tiny.yaml")
    ticks = []
    paths = record_world(
        sc.world,
        sc.total_agents,
        sc.seed,
        [0, 2],
        12,
        tmp_path / "rec",
        window=sc.learning.window,
        probe_per_class=2,
        progress=ticks.append,
    )

    assert paths == [tmp_path / "rec" / "agent-0.jsonl", tmp_path / "rec" / "agent-2.jsonl"]
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == [
        "agent-0.jsonl",
        "agent-2.jsonl",
    ]
    assert ticks == [1] * 12
    n_classes = len(EVENT_CLASSES)
    obs_seen = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 + 12
        header = json.loads(lines[0])
        assert header["format"] == FORMAT
        assert header["classes"] == list(EVENT_CLASSES)
        records = [json.loads(ln) for ln in lines[1:]]
        assert [r["t"] for r in records] == list(range(12))
        assert all(isinstance(r["class"], int) and 0 <= r["class"] < n_classes for r in records)

        with open(path, encoding="utf-8") as stream:
            s = StreamSensor(stream, str(path), SensorConfig())
            x, y = s.probe_set
            assert x.shape == (n_classes * 2, sc.learning.window, s.dim)
            assert sorted(y.tolist()) == sorted(list(range(n_classes)) * 2)
            readings = _all(s)
        assert s.bad_lines == 0
        assert [r.tick for r in readings] == list(range(12))
        assert all(r.obs.shape == (s.dim,) and np.isfinite(r.obs).all() for r in readings)
        for r in readings:
            assert ((r.labels[:, 0] <= r.tick) & (r.labels[:, 1] < n_classes)).all()
        obs_seen.append(np.stack([r.obs for r in readings]))
    assert not np.array_equal(obs_seen[0], obs_seen[1])  # two drones, two streams


def test_record_world_refuses_agents_outside_the_world(tmp_path):
    from swarm.scenario import load_scenario

    sc = load_scenario(Path(__file__).parent / "data" / "tiny.yaml")
    with pytest.raises(SensorError, match=r"\[4\]"):
        record_world(
            sc.world,
            sc.total_agents,
            sc.seed,
            [0, 4],
            2,
            tmp_path,
            window=sc.learning.window,
            probe_per_class=1,
        )
    assert list(tmp_path.iterdir()) == []


def test_hostile_lines_are_skipped_and_counted_not_fatal(capsys) -> None:
    # issue 18: each of these killed a node (OverflowError, RecursionError, ValueError), or,
    # for t = 2^70, was taken and pushed every later line out as "does not increase"
    from swarm._config import MAX_TICK
    from swarm.sensors import MAX_LINE_BYTES

    hostile = [
        '{"t": 1, "obs": [' + "9" * 401 + ", 0, 0]}",  # an integer no float holds
        '{"t": 2, "obs": [0, 0, 0], "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # deep
        '{"t": ' + "7" * 5_000 + ', "obs": [0, 0, 0]}',  # beyond Python's int parsing limit
        _rec(2**70),  # a tick past MAX_TICK
        _rec(4, labels=[[2**70, 1]]),  # a label tick past it
        _rec(5, labels=[[1, 2**70]]),  # a label class past int64
        '{"t": 6, "obs": [' + "0," * MAX_LINE_BYTES + "0]}",  # longer than a line may be
    ]
    text = _text(_header(), _rec(0), *hostile, _rec(7, labels=[[0, 1]]), _rec(MAX_TICK))
    # Execute
    readings = _all(_sensor(text))
    # Assert: the good lines around them are read, each hostile one is one bad line
    assert [r.tick for r in readings] == [0, 7, MAX_TICK]
    assert readings[1].labels.tolist() == [[0, 1]]
    err = capsys.readouterr().err
    assert err.count("line skipped") == len(hostile)
    assert "longer than" in err and "a huge integer or deep nesting" in err
