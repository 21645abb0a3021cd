"""SWIM membership: failure detection and dissemination (pure logic, no grpc import).

Das, Gupta & Motivala, "SWIM: Scalable Weakly-consistent Infection-style Process Group
Membership Protocol" (DSN 2002), with the suspicion mechanism and timeouts of hashicorp
memberlist's LAN profile (see `MembershipConfig`). One `Membership` is one member's view; the
caller (`protocols.membership_net.MembershipNode`, or a fake network in the tests) moves the
messages and drives the protocol period:

    target = next_probe()                 # round-robin over a shuffled member list
    ping(target) within probe_timeout_s   -> on_ack(target, incarnation, updates)
    else helpers = on_probe_timeout(target)
         ping_req(helper, target) until the period ends
                                          -> on_indirect_result(target, reachable)
    tick()                                # suspects whose timer ran out become DEAD

Every message carries `piggyback(to)` (recent updates) and every received one is `merge`d.

Member states and incarnations (SWIM §4.2). An update (node, state, incarnation) overrides what
we hold iff (incarnation, state) is larger in lexicographic order with ALIVE < SUSPECT < DEAD:
a suspicion or death at the same incarnation beats "alive", and only the member itself can
produce a higher incarnation. A member that hears it is suspected or dead refutes by taking
incarnation + 1 and announcing itself ALIVE; that is also how a dead member rejoins. A direct
ack or ping from a member counts as "ALIVE at the incarnation it reports". When we talk to a
member we hold as SUSPECT or DEAD, its own record is always piggy-backed, so its very next
answer carries the refutation (a dead member that answers a ping is back after one round
trip).

Dissemination (SWIM §4.1, memberlist's TransmitLimitedQueue): the buffer holds at most one
update per member (a newer one replaces the older) and each is piggy-backed on at most
`retransmit_limit(n) = lambda * ceil(log10(n + 1))` messages (lambda = retransmit_mult = 4,
memberlist's LAN default), fewest-sent first. A member that learns something new re-queues it,
so news spreads like an epidemic in O(log n) periods, and the buffer drains once it has.

Hostile news (issue 18). Every message is signed with the swarm key (the gRPC edge,
`protocols.membership_net`, refuses and counts the others before they reach this class), so
only a key holder can send updates. What holds a key holder: an incarnation above the owner's
`ceiling` (swarm-node: its wall clock in ms plus the allowed clock skew, as a node's first
incarnation is its epoch; never above MAX_INCARNATION) is dropped, so a forged "DEAD at
2^64 - 1" can neither stick nor overflow the victim's refutation; strangers beyond
`max_members` are dropped; both are counted in `refused`; made-up members never answer, so
they die and are reaped like any other. A forged suspicion within those bounds is refuted by
its victim as SWIM refutes any (a refutation one above the ceiling is taken once the
receiver's clock has moved a millisecond).

Suspicion timeout (memberlist's formula):  S(n) = suspicion_mult * max(1, log10 n) * T,
with T = probe_interval_s and n the number of members in our table, ourselves included
(dead members count until they are reaped, as in memberlist).

Detection bound. Let P = max(probe_interval_s, probe_timeout_s) be the length of a protocol
period (a failed probe waits probe_timeout_s for the ack, then the indirect probes run until
the period ends; P = T whenever probe_timeout_s < T, as in memberlist) and m = n - 1 the
number of other members. The probe order is a fresh random permutation of the m others at
each traversal (SWIM §4.3), so between the start of a probe of X and the start of the next one
there are at most 2m - 1 periods (X first in one traversal, last in the next). Suppose X dies
just after answering a probe that started at t0. The next probe of X starts by
t0 + (2m - 1) P, fails, and its period ends by t0 + 2m P, when X becomes SUSPECT; X cannot
refute, so it is DEAD S(n) later. Hence every live member that keeps probing declares X dead
within

    detection_bound_s(n) = 2 (n - 1) P + S(n)

of its death, from its own probes alone (gossip about the suspicion only makes it earlier,
since a suspicion heard from another member starts our timer sooner and a DEAD update ends
it). Memberlist defaults, n = 10: 2 * 9 * 1 s + 4 s = 22 s. This is the worst case; a random
member's first detection is expected after ~e/(e - 1) periods (SWIM §3.1) plus S. The
timestamps are exact: expiry is evaluated lazily against the clock by every call, and a DEAD
member's `since` is the instant its timer ran out, not when someone looked.

DEAD members stay in the table and in the probe rotation (they only get the direct ping, no
helpers) for `dead_reap_s` (memberlist's GossipToTheDeadTime), so a member that comes back
soon is found again even if it forgot everyone; then they are reaped (`reaped` counts them),
which is what bounds the table's memory and rotation once made-up or departed members are
gone. Reaping removes only the dead, whose detection is over, so the bound above still holds
for every member alive when it died (n may only shrink by dead members after that death,
which shortens the rotation). A reaped member that returns is met again by its first message
(its own record rides on every ping) or by swarm-node's introductions. There is no full-state
push-pull sync as in memberlist: a new member learns the others from `join` and gossip.

Not thread-safe: the owner serializes calls (MembershipNode holds a lock). `on_change` is
called synchronously on every state change (and on a new member or address), with the new
`Member` and the previous state (None for a new member).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import IntEnum

from protocols.config import MembershipConfig

RETRANSMIT_MULT = 4
"""lambda of the dissemination limit: memberlist's LAN RetransmitMult."""
MAX_PIGGYBACK = 16
"""Updates carried by one message at most (memberlist bounds them by the UDP packet size)."""


class State(IntEnum):
    """Member state; the numbers are those of swarm.v1.MemberUpdate.State, the order is the
    precedence at equal incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@dataclass(frozen=True)
class Update:
    """One member's state as the sender believes it (piggy-backed on pings and acks)."""

    node: str
    address: str
    state: State
    incarnation: int


@dataclass(frozen=True)
class Member:
    """A row of the member table."""

    node: str
    address: str
    state: State
    incarnation: int
    since: float
    """Clock time of the last state change (a DEAD member: when its suspicion timer ran out)."""


OnChange = Callable[[Member, State | None], None]


def period_s(cfg: MembershipConfig) -> float:
    """Length P of one protocol period (the probe timeout cannot be cut short)."""
    return max(cfg.probe_interval_s, cfg.probe_timeout_s)


def suspicion_timeout_s(cfg: MembershipConfig, n: int) -> float:
    """memberlist: suspicion_mult * max(1, log10 n) * probe_interval_s (n counts ourselves)."""
    return cfg.suspicion_mult * max(1.0, math.log10(max(n, 1))) * cfg.probe_interval_s


def detection_bound_s(cfg: MembershipConfig, n: int) -> float:
    """Worst-case time from a member's death to every live member of an n-member group
    (ourselves included) declaring it DEAD: 2 (n - 1) P + S(n), derived in the module doc."""
    if n < 2:
        raise ValueError(f"a detection bound needs at least 2 members, got n={n}")
    return 2 * (n - 1) * period_s(cfg) + suspicion_timeout_s(cfg, n)


def retransmit_limit(n: int, mult: int = RETRANSMIT_MULT) -> int:
    """memberlist: how many messages carry one update, lambda * ceil(log10(n + 1))."""
    return mult * math.ceil(math.log10(n + 1))


@dataclass
class _Queued:
    update: Update
    transmits: int
    seq: int


#: Largest incarnation taken from a message, unless the owner sets a lower `ceiling`: each
#: refutation adds one, and a refutation (incarnation + 1) always fits the wire's uint64.
MAX_INCARNATION = 2**62


class ProbeRefused(Exception):
    """A probe a node will not serve: the gRPC status name to answer with, and why."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class Membership:
    """One member's SWIM view of the group: member table, probe rotation, suspicion timers,
    and the dissemination buffer."""

    def __init__(
        self,
        self_node: str,
        self_address: str,
        cfg: MembershipConfig,
        seed: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        incarnation: int = 0,
        on_change: OnChange | None = None,
        retransmit_mult: int = RETRANSMIT_MULT,
        max_piggyback: int = MAX_PIGGYBACK,
        ceiling: Callable[[], int] | None = None,
    ):
        self.node, self.address, self.cfg = self_node, self_address, cfg
        self._clock = clock
        self._rng = random.Random(seed)
        self._incarnation = incarnation
        self._on_change = on_change
        self._retransmit_mult, self._max_piggyback = retransmit_mult, max_piggyback
        self._members: dict[str, Member] = {}
        self._deadlines: dict[str, float] = {}  # suspicion timers: node -> when it is DEAD
        self._order: list[str] = []  # this traversal's probe order
        self._next = 0
        self._queue: dict[str, _Queued] = {}  # node -> its latest update still to be sent
        self._seq = 0
        #: The largest incarnation a message may carry now (swarm-node: its wall clock in ms
        #: plus the allowed clock skew, since an incarnation starts as an epoch); at most
        #: MAX_INCARNATION.
        self._ceiling = ceiling or (lambda: MAX_INCARNATION)
        #: News dropped, by reason: 'incarnation' (above the ceiling), 'table_full' (a stranger
        #: while max_members are known).
        self.refused: Counter[str] = Counter()
        #: DEAD members removed from the table after dead_reap_s.
        self.reaped = 0
        self._dead: dict[str, float] = {}  # DEAD members -> since (what _reap looks at)
        #: Addresses at which another member announced itself under our name (a duplicate
        #: agent: two nodes running the same one), and when we last heard of each.
        self.impostors: dict[str, float] = {}
        self._enqueue(self._self_update())  # announce ourselves (memberlist does on start)

    # -- table ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def n(self) -> int:
        """Members in the table, ourselves included (the n of S(n) and of the bound)."""
        return len(self._members) + 1

    def join(self, node: str, address: str) -> None:
        """Learn of a member (a seed peer, or one announced out of band); ALIVE at
        incarnation 0 until it says otherwise. A known member is left as it is."""
        if node == self.node or node in self._members:
            return
        self._add(Member(node, address, State.ALIVE, 0, self._clock()))

    def member(self, node: str) -> Member | None:
        self._expire()
        return self._members.get(node)

    def state(self, node: str) -> State | None:
        m = self.member(node)
        return None if m is None else m.state

    def members(self) -> list[Member]:
        """Every other member, DEAD ones included, sorted by name."""
        self._expire()
        return [self._members[k] for k in sorted(self._members)]

    def alive_members(self) -> list[str]:
        """Other members not DEAD, sorted. Suspects are included (as memberlist's Members()
        does): most suspicions are refuted, and dropping a peer is for confirmed deaths."""
        return [m.node for m in self.members() if m.state is not State.DEAD]

    def suspicion_timeout_s(self) -> float:
        return suspicion_timeout_s(self.cfg, self.n)

    def detection_bound_s(self, n: int | None = None) -> float:
        """`detection_bound_s(cfg, n)`; n defaults to the current table size."""
        return detection_bound_s(self.cfg, self.n if n is None else n)

    # -- protocol period -----------------------------------------------------------------

    def next_probe(self) -> str | None:
        """The member to ping this period: round-robin over a permutation of the others that
        is reshuffled at every traversal (SWIM §4.3). None when we know nobody."""
        self._expire()
        self._reap(self._clock())
        if not self._members:
            return None
        if self._next >= len(self._order):
            self._order = sorted(self._members)
            self._rng.shuffle(self._order)
            self._next = 0
        target = self._order[self._next]
        self._next += 1
        return target

    def on_ack(
        self, node: str, incarnation: int | None = None, updates: Iterable[Update] = ()
    ) -> None:
        """`node` answered a ping (ours or, on a helper, the one it sent for someone else)."""
        self._expire()
        self.merge(updates)
        if incarnation is not None:
            self._heard_from(node, incarnation)

    def on_probe_timeout(self, node: str) -> list[str]:
        """The direct ping of `node` went unanswered: the members to ask to ping it for us
        (up to indirect_checks random ALIVE others). A DEAD member gets no helpers."""
        self._expire()
        target = self._members.get(node)
        if target is None or target.state is State.DEAD:
            return []
        candidates = sorted(
            k for k, m in self._members.items() if m.state is State.ALIVE and k != node
        )
        return self._rng.sample(candidates, min(self.cfg.indirect_checks, len(candidates)))

    def on_indirect_result(self, node: str, reachable: bool) -> None:
        """End of a failed probe's period: suspect `node` unless a helper reached it."""
        self._expire()
        m = self._members.get(node)
        if reachable or m is None or m.state is not State.ALIVE:
            return  # a suspect stays suspect (only a refutation clears it); the dead stay dead
        self._apply(Update(node, m.address, State.SUSPECT, m.incarnation))

    def tick(self) -> None:
        """Declare DEAD the suspects whose timer ran out (every call does this too), and reap
        the members dead for dead_reap_s (this and `next_probe` do that)."""
        self._expire()
        self._reap(self._clock())

    def next_deadline(self) -> float | None:
        """When the next suspicion timer runs out, if any is running."""
        return min(self._deadlines.values(), default=None)

    # -- messages ------------------------------------------------------------------------

    def on_ping(
        self, sender: str, incarnation: int, updates: Iterable[Update]
    ) -> tuple[int, list[Update]]:
        """Answer a ping: merge its news, and reply (our incarnation, our news for it)."""
        self._expire()
        self.merge(updates)
        self._heard_from(sender, incarnation)
        return self._incarnation, self.piggyback(sender)

    def merge(self, updates: Iterable[Update]) -> None:
        """Apply piggy-backed updates; the ones that told us something new are re-queued."""
        for u in updates:
            self._apply(u)

    def piggyback(self, to: str | None = None) -> list[Update]:
        """Updates to carry on a message to `to`: its own record first if we hold it SUSPECT
        or DEAD (so it can refute), then the least-sent of the buffer, and always our own
        record, so a member that does not know us (one that restarted with an empty table)
        learns our address from our first message."""
        self._expire()
        out: list[Update] = []
        target = self._members.get(to) if to is not None else None
        if target is not None and target.state is not State.ALIVE:
            out.append(Update(target.node, target.address, target.state, target.incarnation))
        limit = retransmit_limit(self.n, self._retransmit_mult)
        # the fewest-sent, newest first: a partial selection, not a sort of the whole buffer
        # (thousands of entries under a flood of made-up members, on every message)
        queued = heapq.nsmallest(
            self._max_piggyback, self._queue.values(), key=lambda q: (q.transmits, -q.seq)
        )
        for q in queued:
            if q.update not in out:
                out.append(q.update)
            q.transmits += 1
            if q.transmits >= limit:
                del self._queue[q.update.node]
        me = self._self_update()
        if me not in out:
            out.append(me)  # a ping names its sender but not its address: this does
        return out

    # -- internals -----------------------------------------------------------------------

    def _self_update(self) -> Update:
        return Update(self.node, self.address, State.ALIVE, self._incarnation)

    def _enqueue(self, u: Update) -> None:
        self._seq += 1
        self._queue[u.node] = _Queued(u, 0, self._seq)

    def _notify(self, m: Member, previous: State | None) -> None:
        if self._on_change is not None:
            self._on_change(m, previous)

    def _add(self, m: Member) -> None:
        self._members[m.node] = m
        # a newcomer goes to a random place in what is left of this traversal (SWIM §4.3)
        self._order.insert(self._rng.randint(self._next, len(self._order)), m.node)
        self._enqueue(Update(m.node, m.address, m.state, m.incarnation))
        self._notify(m, None)

    def _heard_from(self, node: str, incarnation: int) -> None:
        """Direct contact: the member is ALIVE at the incarnation it reports."""
        m = self._members.get(node)
        if m is not None:
            self._apply(Update(node, m.address, State.ALIVE, incarnation))

    def _credible(self, u: Update) -> bool:
        """Whether an update's incarnation is one a real member could have (counted if not)."""
        if u.incarnation > min(self._ceiling(), MAX_INCARNATION):
            self.refused["incarnation"] += 1
            return False
        return True

    def _apply(self, u: Update) -> None:
        if not self._credible(u):
            return
        if u.node == self.node and u.address and u.address != self.address:
            # Another process uses our name (a copied config): news about it is not about us,
            # so no refutation (two refuting each other would only race incarnations up).
            self.refused["duplicate_name"] += 1
            self.impostors[u.address] = self._clock()
            return
        if u.node == self.node:
            # Refute (SWIM §4.2): anything about us at our incarnation or above that is not
            # our own ALIVE record means someone suspects us, buried us, or remembers a
            # previous life of ours: outbid it.
            newer = u.incarnation > self._incarnation
            if newer or (u.incarnation == self._incarnation and u.state is not State.ALIVE):
                self._incarnation = u.incarnation + 1
                self._enqueue(self._self_update())
            return
        cur = self._members.get(u.node)
        if cur is None:
            # Suspicions and deaths of strangers cannot be checked; memberlist ignores them.
            if u.state is State.ALIVE and u.address:
                if len(self._members) >= self.cfg.max_members:
                    self.refused["table_full"] += 1
                    return
                self._add(Member(u.node, u.address, u.state, u.incarnation, self._clock()))
            return
        if (u.incarnation, u.state) <= (cur.incarnation, cur.state):
            return  # old news
        now = self._clock()
        address = u.address if u.state is State.ALIVE and u.address else cur.address
        since = cur.since if u.state is cur.state else now
        new = Member(u.node, address, u.state, u.incarnation, since)
        self._members[u.node] = new
        if new.state is State.DEAD:
            self._dead[u.node] = new.since
        else:
            self._dead.pop(u.node, None)
        if u.state is State.SUSPECT:
            self._deadlines.setdefault(u.node, now + self.suspicion_timeout_s())
        else:
            self._deadlines.pop(u.node, None)
        self._enqueue(Update(new.node, new.address, new.state, new.incarnation))
        if new.state is not cur.state or new.address != cur.address:
            self._notify(new, cur.state)

    def _reap(self, now: float) -> None:
        """Remove the members DEAD for dead_reap_s or longer."""
        cutoff = now - self.cfg.dead_reap_s
        if not self._dead or min(self._dead.values()) > cutoff:
            return
        gone = [k for k, since in self._dead.items() if since <= cutoff]
        for k in gone:
            del self._dead[k]
        for k in gone:
            del self._members[k]
        gone_set = set(gone)
        kept_before = sum(1 for k in self._order[: self._next] if k not in gone_set)
        self._order = [k for k in self._order if k not in gone_set]
        self._next = kept_before
        self.reaped += len(gone)

    def _expire(self) -> None:
        now = self._clock()
        for node, deadline in sorted(self._deadlines.items(), key=lambda kv: kv[1]):
            if deadline > now:
                break
            del self._deadlines[node]
            cur = self._members[node]
            dead = replace(cur, state=State.DEAD, since=deadline)
            self._members[node] = dead
            self._dead[node] = deadline
            self._enqueue(Update(node, dead.address, State.DEAD, dead.incarnation))
            self._notify(dead, cur.state)
