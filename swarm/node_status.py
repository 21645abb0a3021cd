"""What a device node is doing: the status it writes (`status.json`, swarm/node.py) and the
view `swarm-node --config node.yaml --status` prints from it, with a live health check.

The fields of status.json are listed in docs/node.md ("Status").
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from protocols.gossip import agent_name
from protocols.membership_net import MembershipNode
from protocols.outbox import Outboxes
from protocols.peering import Directory
from protocols.transport import check_health
from swarm.node_config import NodeConfig, resolve_tls, state_dir
from swarm.records import JSON, Document, as_doc, as_list, as_number, as_str, json_of
from swarm.scenario import ScenarioError, load_scenario

if TYPE_CHECKING:  # swarm.node imports this module to write its status
    from swarm.node import Node

#: Prequential accuracy window: the last this many labelled readings.
ONLINE_WINDOW = 200
#: Deadline of the `--status` health check.
HEALTH_TIMEOUT_S = 2.0


# -- status.json ----------------------------------------------------------------------------


def members_view(
    membership: MembershipNode | None, own: str, dead_at: dict[str, float]
) -> dict[str, Document]:
    """node -> its SWIM state, incarnation and when it was declared dead (this node left out)."""
    if membership is None:
        return {}
    return {
        m.node: {
            "state": m.state.name.lower(),
            "incarnation": m.incarnation,
            "dead_at_unix": dead_at.get(m.node),
        }
        for m in membership.members()
        if m.node != own
    }


def peers_view(
    directory: Directory,
    listed: Iterable[str],
    outboxes: Outboxes,
    members: dict[str, Document],
) -> list[Document]:
    """One entry per address this node knows, lists, or has a link to, in address order."""
    links = outboxes.stats()
    known, hosted = directory.nodes(), directory.hosted()
    peers: list[Document] = []
    for address in sorted(set(known) | set(listed) | set(links)):
        link = links.get(address)
        node = known.get(address)
        peers.append(
            {
                "address": address,
                "node": node,
                "agents": json_of(sorted(hosted.get(address, []))),
                "state": members.get(node, {}).get("state") if node else None,
                "last_exchange_unix": link.last_ok if link else None,
                "delivered": link.delivered if link else 0,
                "failures": link.failures if link else 0,
                "resyncs": link.resyncs if link else 0,
                "queued": outboxes.pending(address) if link else 0,
                "last_error": link.last_error if link else "",
                "last_refusal": link.last_refusal if link else "",
            }
        )
    return peers


def _learning_view(node: Node) -> Document:
    return {
        "sensor": {
            "kind": node.cfg.sensor.kind,
            "position": node.sensor.position,
            "bad_lines": node.sensor.bad_lines,
            "hide_kinds": list(node.cfg.sensor.hide_kinds),
        },
        **node.local_accuracy(),
        "labels_dropped": node.learner.labels_dropped,
        # labelled windows this node's own sensor gave it, per class (its replay's intake)
        "labels_seen": dict(
            zip(node.classes, node.learner.replay.seen.sum(0).tolist(), strict=True)
        ),
    }


def status_of(node: Node) -> Document:
    """Everything status.json holds about `node`, now."""
    members = members_view(node.membership, node.name, node.dead_at)
    return {
        "node": node.name,
        "address": node.advertise,
        "pid": os.getpid(),
        "epoch": node.epoch,
        "updated_unix": time.time(),
        "started_unix": node.started,
        "step": node.step,
        "rounds": node.round,
        "neighbours": list(node.neighbours),
        **_learning_view(node),
        "peers": list(peers_view(node.directory, node.peer_list, node.outboxes, members)),
        "members": dict(members),
        # membership news and indirect probes refused, by reason (protocols/membership_net.py)
        "membership_refused": dict(node.membership.refusals() if node.membership else {}),
        "members_reaped": node.membership.reaped() if node.membership else 0,
        # agents claimed by more than one node: agent name -> the addresses claiming it
        "duplicate_agents": {
            agent: list[JSON](where) for agent, where in node.duplicate_agents().items()
        },
        "checkpoint": node.last_ckpt,
        "resumed_from": node.resumed_from,
        "error": node.error,
        "duplicates": node.gossip.duplicates,
        "coordinator": node.federation.status() if node.federation is not None else None,
        **node.counters.snapshot(),
    }


def _dumps(status: Document) -> str:
    """status.json's text: one top-level key per line, each value compact. json's C encoder
    runs only without `indent`; the pure-Python one took ~25 ms a write for a table of 4,000
    SWIM members, holding the interpreter lock the gRPC threads need (BENCHMARKS.md, Hostile
    peers)."""
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in status.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_status(status: Document, directory: Path) -> None:
    """Replace `directory`/status.json atomically (a reader never sees half a file)."""
    tmp = directory / ".status.json.tmp"
    tmp.write_text(_dumps(status))
    os.replace(tmp, directory / "status.json")


# -- `--status` ------------------------------------------------------------------------------


def _ago(t: JSON) -> str:
    """How long ago the wall time `t` (seconds, a status.json field; None: never) was."""
    if t is None:
        return "never"
    return f"{max(0.0, time.time() - as_number(t)):.1f} s ago"


def _health(address: str, cfg: NodeConfig, base: Path, name: str) -> str:
    """A live health check of the node's Gossip service, with the node's own credentials."""
    tls = resolve_tls(cfg.tls, base)
    if tls is None:
        with contextlib.suppress(ScenarioError):
            scenario = Path(cfg.scenario)
            tls = load_scenario(scenario if scenario.is_absolute() else base / scenario).gossip.tls
    return check_health(address, tls, name, "swarm.v1.Gossip", HEALTH_TIMEOUT_S)


def _print_view(st: Document, health: str) -> None:
    print(
        f"{st['node']} at {st['address']}  health: {health}  epoch {st['epoch']}  pid {st['pid']}"
    )
    print(f"  updated {_ago(st['updated_unix'])}; step {st['step']}, gossip rounds {st['rounds']}")
    acc = st.get("probe_acc")
    online = st.get("online_acc")
    print(
        f"  local accuracy: probe {acc if acc is not None else '-'}, "
        f"online (last {ONLINE_WINDOW} labels) {online if online is not None else '-'}"
    )
    print(
        f"  bytes sent {st['wire_bytes_sent']:,}, received {st['wire_bytes_received']:,}; "
        f"deltas accepted {st['deltas_accepted']}, rejected {st['deltas_rejected']}"
    )
    ck = st.get("checkpoint")
    if ck:
        ck = as_doc(ck)
        print(f"  checkpoint: step {ck['step']}, {_ago(ck['saved_unix'])}, probe {ck['probe_acc']}")
    print(f"  {'peer':<22} {'node':<10} {'agents':<8} {'state':<8} {'last exchange':<15} queued")
    for p in map(as_doc, as_list(st["peers"])):
        agents = ",".join(map(str, as_list(p["agents"]))) or "-"
        print(
            f"  {p['address']:<22} {p['node'] or '?':<10} {agents:<8} {p['state'] or '-':<8} "
            f"{_ago(p['last_exchange_unix']):<15} {p['queued']}"
            + (f"  ({p['last_error']})" if p["last_error"] else "")
        )


def show_status(cfg: NodeConfig, base: Path) -> int:
    """Print what the node of this config is doing: its status file plus a live health check.
    Exit status: 0 serving, 1 no status file, 3 not serving."""
    name = agent_name(cfg.agent)
    path = state_dir(cfg, base) / "status.json"
    try:
        st = as_doc(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{name}: no status at {path} ({exc}); has this node run?", file=sys.stderr)
        return 1
    health = _health(as_str(st["address"]), cfg, base, name)
    _print_view(st, health)
    return 0 if health == "SERVING" else 3
