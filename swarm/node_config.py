"""A device node's configuration (`swarm-node --config node.yaml`, swarm/node.py): the file's
schema, where its paths lead, and the checks a node makes of it before it starts anything.

Paths in the file (scenario, key_file, state_dir, tls.cert_dir) are relative to the file's own
directory, `base` below.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from protocols.config import TlsConfig
from swarm._config import MAX_AGENT_INDEX, MAX_TICK, Section
from swarm.addresses import address_problem, host_of, is_loopback
from swarm.scenario import (
    MAX_KEY_BYTES,
    Problem,
    Scenario,
    cert_dir_problems,
    file_problem,
    load_scenario,
    parse_yaml_model,
    read_config_text,
    read_key_file,
)
from swarm.sensors import SensorConfig

#: A development key for loopback-only swarms; refused anywhere else.
DEV_KEY = b"yan-swarm-dev-key"


class NodeError(RuntimeError):
    """A node that cannot start or go on; the message tells the operator what to do."""


class NodeConfig(Section):
    """One device node (`swarm-node --config node.yaml`)."""

    scenario: str
    """Scenario file (relative to this file) that fixes the model, learning, gossip settings
    and graph; every node of a swarm uses the same one."""
    agent: int = Field(ge=0, le=MAX_AGENT_INDEX)
    """This node's agent index in the scenario's graph (at most 200,000, MAX_AGENT_INDEX)."""
    listen: str = "127.0.0.1:0"
    """HOST:PORT of this node's gRPC server (port 0: any free port)."""
    advertise: str | None = None
    """HOST:PORT peers use to reach this node (default: `listen`, with the bound port)."""
    peers: list[str] = []
    """Addresses (HOST:PORT) of peers to introduce this node to; the scenario's
    external_peers are added."""
    coordinator: str | None = None
    """HOST:PORT of a coordinator (`swarm coordinator`): exchange through it instead of
    gossiping with peers; the scenario's gossip.topology must be coordinator."""
    key_file: str | None = None
    """HMAC key shared by the swarm: a regular file of 32 bytes to 64 KiB (MAX_KEY_BYTES).
    Required off loopback."""
    tls: TlsConfig | None = None
    """Transport security (default: the scenario's gossip.tls). Off loopback: mtls required."""
    insecure: bool = False
    """Allow plaintext and the development key off loopback (a lab network, never a field)."""
    state_dir: str | None = None
    """Where checkpoints and status.json go (default: .swarm-node/agent-N beside this file)."""
    checkpoint_every_s: float = Field(30.0, gt=0, le=86_400)
    """Wall seconds between two checkpoints (one is also written on SIGTERM and at the end); at
    most a day, more learning than a crash should cost."""
    resume: bool = True
    """Resume from the checkpoint in state_dir when there is one."""
    sensor: SensorConfig = SensorConfig()
    shadow: bool = False
    """Also train an isolated twin of this agent on exactly the same readings, never sharing,
    and report its accuracy beside the sharing model's: what the swarm gave this device."""
    ticks: int | None = Field(None, ge=1, le=MAX_TICK)
    """Readings to process (default: the scenario's ticks for the simulated sensor, the whole
    stream for a file or stdin); at most MAX_TICK (2^40)."""
    tick_s: float = Field(0.0, ge=0, le=3600)
    """Wall seconds per reading (0: as fast as possible; a real sensor paces itself)."""
    linger_s: float = Field(10.0, ge=0, le=3600)
    """After the last reading, keep serving up to this long for the peers' last deltas."""
    max_clock_skew_s: float = Field(30.0, gt=0, le=86_400)
    """Largest difference between this node's wall clock and a peer's that is accepted; at most
    a day, past which the check would not catch a clock set to the wrong date."""
    status_every_s: float = Field(1.0, gt=0, le=3600)
    """Wall seconds between two rewrites of status.json; at most an hour, past which
    `--status` shows an operator a stale node."""

    @model_validator(mode="after")
    def _addresses(self) -> NodeConfig:
        named = [("listen", self.listen, True), ("advertise", self.advertise, False)]
        named += [("coordinator", self.coordinator, False)]
        named += [(f"peers[{i}]", p, False) for i, p in enumerate(self.peers)]
        for key, value, any_port in named:
            if value is not None and (problem := address_problem(value, any_port=any_port)):
                raise ValueError(f"{key}: {problem}")
        return self


def load_node_config(path: Path | str) -> NodeConfig:
    """The node config at `path`, its files checked (`named_file_problems`); ScenarioError with
    one `file:line: key: problem` line per problem."""
    path = Path(path)
    text = read_config_text(path, "node config")  # a regular file of sane size (/dev/zero: no)
    base = path.resolve().parent

    def files(cfg: NodeConfig) -> list[Problem]:
        return named_file_problems(cfg, base)

    return parse_yaml_model(text, NodeConfig, path, "node config", checks=files)


def _beside(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def named_file_problems(cfg: NodeConfig, base: Path) -> list[Problem]:
    """What is wrong with the files a node config names (relative to `base`), never what they
    hold: a file the node would read must not be a device, FIFO or socket, which would fill its
    memory (/dev/zero) or hang its start (a FIFO nobody writes):

    - key_file: a regular file of at most MAX_KEY_BYTES (64 KiB; a key is 32 bytes or more);
    - sensor.path (kind file): a regular file, of any size (read a line at a time, each line at
      most swarm.sensors.MAX_LINE_BYTES). A live stream is `kind: stdin`, bounded the same way
      per line, and ends when its writer closes it;
    - sensor.record_to (kind simulated): where it exists, a regular file (it is overwritten);
    - tls.cert_dir: as the scenario's gossip.tls.cert_dir (swarm.scenario.cert_dir_problems).
    """
    problems: list[Problem] = []
    if cfg.key_file:
        key = _beside(base, cfg.key_file)
        if problem := file_problem(key, MAX_KEY_BYTES):
            problems.append((("key_file",), f"{key} {problem}"))
    sensor = cfg.sensor
    if sensor.kind == "file" and sensor.path:
        recording = _beside(base, sensor.path)
        if problem := file_problem(recording, None):
            problems.append((("sensor", "path"), f"{recording} {problem}"))
    if sensor.kind == "simulated" and sensor.record_to:
        record = _beside(base, sensor.record_to)
        if record.exists() and not record.is_file():  # both follow links
            problems.append((("sensor", "record_to"), f"{record} is not a regular file"))
    if cfg.tls is not None and cfg.tls.mode != "off" and cfg.tls.cert_dir:
        cert_dir = _beside(base, cfg.tls.cert_dir)
        problems += [(("tls", "cert_dir"), p) for p in cert_dir_problems(cert_dir)]
    return problems


def load_node_scenario(cfg: NodeConfig, base: Path) -> Scenario:
    """The scenario the config names; raises ScenarioError, or NodeError when the config's
    agent is not in the scenario's graph."""
    sc = load_scenario(_beside(base, cfg.scenario), check_files=True)
    if cfg.agent >= sc.total_agents:
        raise NodeError(
            f"agent {cfg.agent}: the scenario's graph has agents 0..{sc.total_agents - 1}"
        )
    return sc


def state_dir(cfg: NodeConfig, base: Path) -> Path:
    """Where a node keeps epoch.json, its checkpoint and status.json (relative to `base`, the
    config file's directory)."""
    return _beside(base, cfg.state_dir or str(Path(".swarm-node") / f"agent-{cfg.agent}"))


def resolve_tls(tls: TlsConfig | None, base: Path) -> TlsConfig | None:
    """The node config's TLS section with cert_dir relative to the config file."""
    if tls is None or not tls.cert_dir or Path(tls.cert_dir).is_absolute():
        return tls
    return tls.model_copy(update={"cert_dir": str(base / tls.cert_dir)})


def read_key(cfg: NodeConfig, sc: Scenario, base: Path) -> bytes:
    """The swarm's HMAC key: the node's own key_file, else the scenario's (resolved against
    the config's directory), else the development key."""
    name = cfg.key_file or sc.gossip.key_file
    if not name:
        return DEV_KEY
    try:  # checked when the config was loaded, read bounded anyway: it may have changed since
        return read_key_file(_beside(base, name))
    except ValueError as exc:
        raise NodeError(f"key_file {exc}") from None


def check_address(cfg: NodeConfig) -> None:
    """A node listening on every interface must say where peers reach it."""
    if host_of(cfg.listen) in ("0.0.0.0", "::") and not cfg.advertise:
        raise NodeError(
            f"listen {cfg.listen} is every interface: set advertise: HOST:PORT, the "
            "address peers reach this node at (its certificate must name HOST)"
        )


def check_security(cfg: NodeConfig, sc: Scenario, tls: TlsConfig, key: bytes, name: str) -> None:
    """Off loopback a node needs mutual TLS and a real key, unless the config says insecure."""
    addresses = [
        cfg.listen,
        *cfg.peers,
        *(p.address for p in sc.external_peers),
        *([cfg.coordinator] if cfg.coordinator else []),
    ]
    remote = [a for a in addresses if not is_loopback(a)]
    if not remote or cfg.insecure:
        return
    problems = []
    if tls.mode != "mtls":
        problems.append(
            f"tls.mode is {tls.mode!r}: set tls: {{mode: mtls, cert_dir: DIR}} with "
            f"certificates from `swarm certs DIR --node {name} ...`"
        )
    if key == DEV_KEY:
        problems.append("no key_file: give the swarm's shared HMAC key (32+ random bytes)")
    if problems:
        raise NodeError(
            f"{remote[0]} is not a loopback address, so this node would be on a network: "
            + "; ".join(problems)
            + " (or set insecure: true on a lab network you trust)"
        )
