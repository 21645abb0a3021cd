"""Sensor sources of a `swarm-node`: the built-in simulated drone, a recorded file, or stdin.

Every source yields `Reading`s, one per tick the device observed something:

    Reading(tick, obs, labels)   obs (D,) float32; labels (M, 2) int64 rows (tick, class):
                                 true classes of earlier (or this) ticks' observations, as an
                                 operator or a ground-truth source confirms them, possibly late

The recorded format (what `sensor.record_to` writes, what `kind: file` and `kind: stdin` read)
is JSON lines, so a device's own sensor pipeline can produce it in any language:

    {"format": "yan-swarm-sensor/1", "input": {"vector_dim": 31}, "classes": ["none", ...]}
    {"t": 0, "obs": [0.1, ...]}
    {"t": 1, "obs": [...], "labels": [[0, 2]]}
    ...

The first line is the header (the model's input layout and the class names); it may also carry
`"probe": {"windows": [[[...]]], "labels": [...]}`, a held-out set to score the local model on.
A malformed line is reported with its line number and skipped (counted in `bad_lines`): a
glitch on a device's sensor must not stop the node, nor be learned from. Ticks must increase.
What a line may hold is bounded (issue 18: one line could kill a node): at most MAX_LINE_BYTES,
JSON nested at most as deep as Python parses without running out of stack, ticks (`t` and a
label's) at most MAX_TICK, and numbers within float32; anything else is a bad line. A recording
(`kind: file`) must be a regular file: a FIFO would block the node's start and /dev/zero, one
line without end, would keep it reading forever; a live source is `kind: stdin`, whose memory
is bounded the same way (a line at a time, MAX_LINE_BYTES at most) and which ends when its
writer closes it.

`hide_kinds` makes a source drop every observation whose true class is one of those kinds, and
any label naming one: the node never sees that event kind itself, so recognising it can only
come from the other agents' knowledge (the device-swarm acceptance test).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, TypeGuard, cast

import numpy as np
from pydantic import Field

from envs import make_world
from envs.drone_patrol.config import EVENT_CLASSES
from swarm._config import MAX_TICK, Section
from swarm.records import JSON, Document, as_doc
from swarm.scenario import file_problem

if TYPE_CHECKING:  # the worlds are built lazily, through envs.make_world (pybullet)
    from envs.drone_patrol.config import DronePatrolConfig
    from envs.drone_patrol.world import DronePatrolWorld
    from envs.pz_config import PettingZooConfig

FORMAT = "yan-swarm-sensor/1"


class SensorConfig(Section):
    """Where a node's observations and labels come from."""

    kind: Literal["simulated", "file", "stdin"] = "simulated"
    """simulated: this agent's drone in the scenario's drone patrol world (needs pybullet);
    file: a recording (JSON lines, see swarm/sensors.py); stdin: the same format, live."""
    path: str | None = None
    """kind file: the recording to read, a regular file of any size (a device or a FIFO is
    refused: /dev/zero never ends a line, a FIFO blocks the start; a live stream is kind
    stdin)."""
    hide_kinds: list[str] = []
    """Event kinds this node never observes nor gets labels of."""
    record_to: str | None = None
    """kind simulated: also write what the sensor produces to this file (a recording); where
    it exists it must be a regular file (it is overwritten)."""
    probe_per_class: int | None = Field(None, ge=1)
    """Probe windows per class for the local accuracy (simulated; default: the scenario's)."""


@dataclass
class Reading:
    tick: int
    obs: np.ndarray  # (D,) float32
    labels: np.ndarray  # (M, 2) int64 rows (tick, class)


#: Longest line a stream sensor reads; a longer one is skipped unread (a reading of 10,000
#: features is ~200 KB of JSON).
MAX_LINE_BYTES = 1 << 20


class SensorError(ValueError):
    """A sensor source that cannot be used at all (bad header, missing file, unknown kind)."""


class _Hider:
    """Drops hidden kinds from a stream of readings."""

    def __init__(self, classes: list[str], hide: list[str]):
        unknown = sorted(set(hide) - set(classes))
        if unknown:
            raise SensorError(f"sensor.hide_kinds: unknown kinds {unknown}; known: {classes}")
        if "none" in hide:
            raise SensorError("sensor.hide_kinds: 'none' (background) cannot be hidden")
        self.hidden = np.array([classes.index(k) for k in hide], np.int64)

    def hides(self, cls: int) -> bool:
        return bool(np.isin(cls, self.hidden))

    def labels(self, labels: np.ndarray) -> np.ndarray:
        return labels[~np.isin(labels[:, 1], self.hidden)] if self.hidden.size else labels


class SimulatedSensor:
    """This agent's drone in its own copy of the scenario's drone patrol world.

    The other drones of that world fly their patrol and report their true classes; this one
    reports what the node's model predicts (`feedback`), which matters under `labels: reports`.
    """

    def __init__(
        self,
        world_cfg: DronePatrolConfig | PettingZooConfig,
        n_agents: int,
        index: int,
        seed: int,
        cfg: SensorConfig,
        window: int,
        probe_per_class: int,
    ):
        if world_cfg.kind != "drone_patrol":
            raise SensorError(
                f"sensor.kind simulated needs a drone_patrol world, not {world_cfg.kind!r}; "
                "use a recorded file or stdin"
            )
        self.world: DronePatrolWorld = make_world(world_cfg, n_agents, seed)
        self.index = index
        self.classes = list(EVENT_CLASSES)
        self.input = self.world.input_config()
        self.hider = _Hider(self.classes, cfg.hide_kinds)
        self.probe_set: tuple[np.ndarray, np.ndarray] | None = self.world.probe_set(
            probe_per_class, window, seed + 1_000_003
        )
        self.position = 0
        self.bad_lines = 0
        self._prediction = 0
        self._obs = self.world.reset()
        self._labels = np.zeros((0, 3), np.int64)
        self._record: IO[str] | None = None
        if cfg.record_to:
            self._record = open(cfg.record_to, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._record.write(_header(self.input, self.classes, self.probe_set))

    def feedback(self, prediction: int) -> None:
        """What the node's model made of the last reading (this drone's report)."""
        self._prediction = int(prediction)

    def read(self) -> Reading | None:
        while True:
            tick = self.world.tick
            mine = self._labels[self._labels[:, 0] == self.index][:, 1:]
            obs = self._obs[self.index].astype(np.float32)
            true = int(self.world.true_classes()[self.index])
            predictions = self.world.true_classes().astype(np.int64)
            predictions[self.index] = self._prediction
            self._prediction = 0
            step = self.world.step(predictions)
            self._obs, self._labels = step.obs, step.labels
            self.position += 1
            if self._record is not None:
                self._record.write(_line(tick, obs, true, mine))
            labels = self.hider.labels(mine)
            if self.hider.hides(true):
                continue  # this device did not see it; later labels of that tick drop too
            return Reading(tick, obs, labels)

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
        self.world.close()


class StreamSensor:
    """Readings from JSON lines (a recording, or standard input)."""

    def __init__(self, stream: IO[str], name: str, cfg: SensorConfig, skip: int = 0):
        self.stream, self.name = stream, name
        self.lineno = 0
        first = self._next_line()
        if first is None:
            raise SensorError(f"{name}: empty; expected a header line {{'format': {FORMAT!r}}}")
        try:
            header: JSON = json.loads(first)
        except json.JSONDecodeError as exc:
            raise SensorError(f"{name}:1: the header is not JSON: {exc.msg}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SensorError(f"{name}:1: the header must be a JSON object with format {FORMAT!r}")
        inputs, classes = header.get("input"), header.get("classes")
        if not isinstance(inputs, dict) or not isinstance(classes, list) or len(classes) < 2:
            raise SensorError(f"{name}:1: the header needs 'input' (object) and 'classes' (list)")
        self.input: Document = inputs
        self.classes = [str(c) for c in classes]
        from agents.population import flat_dim, input_config  # lazy: torch, for file sensors

        try:
            self.dim = flat_dim(input_config(self.input))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise SensorError(
                f"{name}:1: header 'input' is not a valid input layout: {exc}"
            ) from None
        self.hider = _Hider(self.classes, cfg.hide_kinds)
        self.probe_set = self._probe(header.get("probe"))
        self.bad_lines = 0
        self.position = 0  # readings consumed (kept or hidden): what a resume skips
        self._last_tick: int | None = None
        for _ in range(skip):
            if self._parse_next() is None:
                break
        self.bad_lines = 0  # those were counted (and reported) by the run that read them

    def _probe(self, probe: JSON) -> tuple[np.ndarray, np.ndarray] | None:
        if probe is None:
            return None
        try:
            x = np.asarray(as_doc(probe)["windows"], np.float32)
            y = np.asarray(as_doc(probe)["labels"], np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise SensorError(f"{self.name}:1: header 'probe' is malformed: {exc}") from None
        if x.ndim != 3 or x.shape[2] != self.dim or y.shape != (x.shape[0],):
            raise SensorError(
                f"{self.name}:1: header 'probe' windows must be (N, window, {self.dim}), "
                "with N labels"
            )
        if ((y < 0) | (y >= len(self.classes))).any() or not np.isfinite(x).all():
            raise SensorError(f"{self.name}:1: header 'probe' has bad labels or values")
        return x, y

    def _next_line(self) -> str | None:
        while True:
            line = self.stream.readline(MAX_LINE_BYTES + 1)
            if not line:
                return None
            self.lineno += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith("\n"):
                while (rest := self.stream.readline(MAX_LINE_BYTES)) and not rest.endswith("\n"):
                    pass  # the rest of the over-long line, dropped piece by piece
                self._reject(f"longer than {MAX_LINE_BYTES:,} characters")
                continue
            if line.strip():
                return line

    def _reject(self, why: str) -> None:
        self.bad_lines += 1
        print(f"warning: {self.name}:{self.lineno}: {why}; line skipped", file=sys.stderr)

    def _parse_next(self) -> tuple[Reading, int | None] | None:
        """(reading, true class or None) of the next valid line; None at the end."""
        while True:
            line = self._next_line()
            if line is None:
                return None
            try:
                rec: JSON = json.loads(line)
            except json.JSONDecodeError as exc:
                self._reject(f"not JSON ({exc.msg})")
                continue
            except (ValueError, RecursionError):  # an integer of > 4,300 digits; deep nesting
                self._reject("not JSON a reading can hold (a huge integer or deep nesting)")
                continue
            if not isinstance(rec, dict):
                self._reject("not a JSON object")
                continue
            reading = self._check(rec)
            if reading is None:
                continue
            self.position += 1
            true = rec.get("class")
            return reading, true if isinstance(true, int) else None

    def _check(self, rec: Document) -> Reading | None:
        tick = rec.get("t")
        obs = rec.get("obs")
        if not _is_int(tick) or not 0 <= tick <= MAX_TICK:
            self._reject(f"'t' must be an integer tick from 0 to {MAX_TICK}")
            return None
        if self._last_tick is not None and tick <= self._last_tick:
            self._reject(f"tick {tick} does not increase (last {self._last_tick})")
            return None
        if not isinstance(obs, list) or len(obs) != self.dim:
            self._reject(f"'obs' must be a list of {self.dim} numbers")
            return None
        # NaN fails both comparisons and infinity the bound: what passes is finite in float32,
        # and a huge integer never reaches numpy (it would overflow converting to float)
        if not all(_is_number(v) and -3e38 <= v <= 3e38 for v in obs):  # type: ignore[operator]
            self._reject("'obs' holds NaN, infinity or something not a number within float32")
            return None
        x = np.asarray(obs, np.float64)
        raw = rec.get("labels", [])
        if not isinstance(raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in raw
        ):
            self._reject("'labels' must be a list of [tick, class] pairs of integers")
            return None
        pairs = [cast("list[int]", p) for p in raw]  # [tick, class], integers (checked above)
        if not all(0 <= t <= MAX_TICK for t, _ in pairs):
            self._reject(f"a label's tick is outside [0, {MAX_TICK}]")
            return None
        if not all(0 <= c < len(self.classes) for _, c in pairs):
            self._reject(f"a label class is outside [0, {len(self.classes)})")
            return None
        labels = np.asarray(pairs, np.int64).reshape(-1, 2)
        self._last_tick = tick
        return Reading(tick, x.astype(np.float32), labels)

    def feedback(self, prediction: int) -> None:
        pass

    def read(self) -> Reading | None:
        while True:
            parsed = self._parse_next()
            if parsed is None:
                return None
            reading, true = parsed
            if true is not None and self.hider.hides(true):
                continue
            reading.labels = self.hider.labels(reading.labels)
            return reading

    def close(self) -> None:
        if self.stream is not sys.stdin:
            self.stream.close()


def _is_int(v: JSON) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: JSON) -> bool:
    return isinstance(v, float) or _is_int(v)


def open_sensor(
    cfg: SensorConfig,
    *,
    world_cfg: DronePatrolConfig | PettingZooConfig,
    n_agents: int,
    index: int,
    seed: int,
    window: int,
    probe_per_class: int,
    skip: int = 0,
    base: Path | None = None,
) -> SimulatedSensor | StreamSensor:
    """The configured source. `skip`: readings a resumed file source passes over."""
    if cfg.kind == "simulated":
        if cfg.record_to and base is not None and not Path(cfg.record_to).is_absolute():
            cfg = cfg.model_copy(update={"record_to": str(base / cfg.record_to)})
        return SimulatedSensor(
            world_cfg, n_agents, index, seed, cfg, window, cfg.probe_per_class or probe_per_class
        )
    if cfg.kind == "stdin":
        return StreamSensor(sys.stdin, "<stdin>", cfg)
    if not cfg.path:
        raise SensorError("sensor.kind file needs sensor.path")
    path = Path(cfg.path)
    if base is not None and not path.is_absolute():
        path = base / path
    if problem := file_problem(path, None):  # a FIFO would block open(), /dev/zero readline
        raise SensorError(f"sensor.path {path} {problem}")
    try:
        stream = open(path, encoding="utf-8")  # noqa: SIM115 - owned by the sensor
    except OSError as exc:
        raise SensorError(f"sensor.path {path}: {exc.strerror}") from None
    return StreamSensor(stream, str(path), cfg, skip=skip)


def _header(inputs: Document, classes: list[str], probe: tuple[np.ndarray, np.ndarray]) -> str:
    """The first line of a recording: the input layout, the class names and the probe set."""
    x, y = probe
    header = {"format": FORMAT, "input": inputs, "classes": classes,
              "probe": {"windows": x.tolist(), "labels": y.tolist()}}  # fmt: skip
    return json.dumps(header) + "\n"


def _line(tick: int, obs: np.ndarray, true: int, labels: np.ndarray) -> str:
    """One reading of a recording; `class` is its true class (what hide_kinds reads)."""
    line: Document = {"t": tick, "obs": obs.tolist(), "class": true}
    if len(labels):
        line["labels"] = labels.tolist()
    return json.dumps(line) + "\n"


def record_world(
    world_cfg: DronePatrolConfig | PettingZooConfig,
    n_agents: int,
    seed: int,
    agents: list[int],
    ticks: int,
    out_dir: Path,
    *,
    window: int,
    probe_per_class: int,
    progress: Callable[[int], object] | None = None,
) -> list[Path]:
    """Fly the scenario's drone patrol world for `ticks` and write the sensor stream of each of
    `agents` to out_dir/agent-<i>.jsonl (the format `sensor.kind: file` reads), with the probe
    set in each header. Every drone reports its true class (a perfect observer), so the labels
    do not depend on any model; one pass of the physics serves every recorded drone."""
    if world_cfg.kind != "drone_patrol":
        raise SensorError(f"recording needs a drone_patrol world, not {world_cfg.kind!r}")
    bad = [a for a in agents if not 0 <= a < n_agents]
    if bad:
        raise SensorError(f"agents {bad} are not in 0..{n_agents - 1}")
    world: DronePatrolWorld = make_world(world_cfg, n_agents, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        probe = world.probe_set(probe_per_class, window, seed + 1_000_003)
        header = _header(world.input_config(), list(EVENT_CLASSES), probe)
        paths = [out_dir / f"agent-{a}.jsonl" for a in agents]
        files = [open(p, "w", encoding="utf-8") for p in paths]  # noqa: SIM115 - closed below
        try:
            for f in files:
                f.write(header)
            obs = world.reset()
            labels = np.zeros((0, 3), np.int64)
            for _ in range(ticks):
                tick, true = world.tick, world.true_classes()
                for a, f in zip(agents, files, strict=True):
                    f.write(_line(tick, obs[a], int(true[a]), labels[labels[:, 0] == a][:, 1:]))
                step = world.step(true.astype(np.int64))
                obs, labels = step.obs, step.labels
                if progress is not None:
                    progress(1)
        finally:
            for f in files:
                f.close()
    finally:
        world.close()
    return paths
