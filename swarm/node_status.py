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
    """node -> its SWIM state, incarnation and when it was declared dead (this node left out).
    Drops from `dead_at` the members reaped since (so it stays as small as the table)."""
    if membership is None:
        return {}
    members = membership.members()
    present = {m.node for m in members}
    for gone in [k for k in list(dead_at) if k not in present]:
        dead_at.pop(gone, None)  # reaped: forget when it died too (bounded by the table)
    return {
        m.node: {
            "state": m.state.name.lower(),
            "incarnation": m.incarnation,
            "dead_at_unix": dead_at.get(m.node),
        }
        for m in members
        if m.node != own
    }


#: Members status.json lists one by one at most (the peers and the suspected and dead first):
#: a table of 4,000 made it ~330 KB, rewritten every status_every_s while holding the
#: interpreter lock (BENCHMARKS.md, Hostile peers). `member_count` counts them all.
STATUS_MEMBERS = 256


def listed_members(members: dict[str, Document], peers: Iterable[str]) -> dict[str, JSON]:
    """The STATUS_MEMBERS members status.json lists: this node's peers, then the suspected
    and dead, then the others, each group by name."""
    if len(members) <= STATUS_MEMBERS:
        return dict[str, JSON](members)
    peer_set = set(peers)

    def rank(name: str) -> tuple[int, str]:
        if name in peer_set:
            return 0, name
        return (1 if members[name].get("state") != "alive" else 2), name

    listed: dict[str, JSON] = {k: members[k] for k in sorted(members, key=rank)[:STATUS_MEMBERS]}
    return listed


def _count_states(members: dict[str, Document]) -> dict[str, JSON]:
    counts = {"alive": 0, "suspect": 0, "dead": 0}
    for m in members.values():
        counts[str(m.get("state"))] = counts.get(str(m.get("state")), 0) + 1
    return {"total": len(members), **counts}


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
        "members": listed_members(
            members, [*node.directory.nodes().values(), *map(agent_name, node.neighbours)]
        ),
        "member_count": _count_states(members),
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
