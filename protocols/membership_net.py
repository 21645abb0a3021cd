"""The gRPC edge of SWIM membership: a prober thread and the Ping/PingReq handler.

`MembershipNode` owns a `protocols.membership.Membership` and only moves its messages: it is
passed to `GossipServicer(..., membership=node)` to answer Ping/PingReq, and its daemon
prober thread runs the protocol period (`Membership` docstring) against the wall clock:

    period k starts at s_k = max(s_{k-1} + P, now)   (P = period_s(cfg); no catch-up bursts)
    ping next_probe() with timeout probe_timeout_s
    if unanswered: PingReq to the helpers in parallel, deadline s_k + P
    then sleep until s_{k+1}, waking at suspicion deadlines so `on_change` fires on time

Thread model: one RLock guards the Membership; no RPC is made while holding it. `on_change`
callbacks are queued under the lock and delivered, in order, after it is released (so a
callback may call back into this node or take its own locks); they run on whichever thread
caused the change (prober or gRPC server thread) and must not block.

Channels are cached per address. The default factory makes insecure channels whose reconnect
backoff is capped at one period (`channel_options`): gRPC's default backoff (1 s, x1.6, up to
120 s) would leave a member that comes back unreachable for minutes. A TLS factory should
add the same options.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from protocols.config import MembershipConfig
from protocols.membership import (
    MAX_PIGGYBACK,
    Member,
    Membership,
    OnChange,
    ProbeRefused,
    State,
    Update,
    period_s,
)
from protocols.wire import probe_signed, sign_probe
from swarm.proto.v1 import gossip_pb2, gossip_pb2_grpc

log = logging.getLogger(__name__)

ChannelFactory = Callable[[str], grpc.Channel]
#: The most updates an honest message carries: the receiver's own record when it is suspected
#: or dead, MAX_PIGGYBACK from the buffer, and the sender's own record. More is a flood of
#: made-up news: the message is refused whole ('too_many_updates').
MAX_UPDATES = MAX_PIGGYBACK + 2
_Request = TypeVar("_Request", gossip_pb2.PingRequest, gossip_pb2.PingReqRequest)
_Reply = TypeVar("_Reply", gossip_pb2.PingReply, gossip_pb2.PingReqReply)


def channel_options(cfg: MembershipConfig) -> list[tuple[str, int]]:
    """gRPC channel options that let a returning member be reached within a period."""
    backoff_ms = max(1, round(period_s(cfg) * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


def to_proto(u: Update) -> gossip_pb2.MemberUpdate:
    return gossip_pb2.MemberUpdate(
        node=u.node, address=u.address, state=u.state.name, incarnation=u.incarnation
    )


def from_proto(updates: Iterable[gossip_pb2.MemberUpdate]) -> list[Update]:
    """Decode piggy-backed updates; nameless ones and unknown states are dropped."""
    out = []
    for u in updates:
        if u.node and u.state in State._value2member_map_:
            out.append(Update(u.node, u.address, State(u.state), int(u.incarnation)))
    return out


class MembershipNode:
    """One node's SWIM failure detector over gRPC: answers probes, and probes others."""

    def __init__(
        self,
        node: str,
        address: str,
        cfg: MembershipConfig,
        *,
        seed: int = 0,
        incarnation: int = 0,
        on_change: OnChange | None = None,
        channel_factory: ChannelFactory | None = None,
        ceiling: Callable[[], int] | None = None,
        key: bytes,
    ):
        self.node, self.address, self.cfg = node, address, cfg
        self._key = key
        self._lock = threading.RLock()
        self._changes: deque[tuple[Member, State | None]] = deque()
        self._delivering = threading.Lock()
        self._user_on_change = on_change
        self._m = Membership(
            node,
            address,
            cfg,
            seed,
            time.monotonic,
            incarnation=incarnation,
            on_change=lambda m, prev: self._changes.append((m, prev)),
            ceiling=ceiling,
        )
        options = channel_options(cfg)
        self._factory = channel_factory or (
            lambda addr: grpc.insecure_channel(addr, options=options)
        )
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._channel_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relaying = threading.BoundedSemaphore(cfg.max_ping_req_in_flight)
        self._refused: Counter[str] = Counter()  # PingReq refusals, by reason

    # -- the member table (thread-safe reads) --------------------------------------------

    def join(self, node: str, address: str) -> None:
        with self._state() as m:
            m.join(node, address)

    def member(self, node: str) -> Member | None:
        with self._state() as m:
            return m.member(node)

    def state(self, node: str) -> State | None:
        with self._state() as m:
            return m.state(node)

    def members(self) -> list[Member]:
        with self._state() as m:
            return m.members()

    def alive_members(self) -> list[str]:
        with self._state() as m:
            return m.alive_members()

    @property
    def incarnation(self) -> int:
        with self._state() as m:
            return m.incarnation

    def detection_bound_s(self, n: int | None = None) -> float:
        with self._state() as m:
            return m.detection_bound_s(n)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"membership of {self.node} already started")
        self._thread = threading.Thread(
            target=self._run, name=f"swim-prober-{self.node}", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop probing and close the channels; returns within about one period (the
        longest an in-flight probe can take). Idempotent. Probes are still answered while
        the server runs, but no longer relayed (PingReq answers unreachable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._channel_lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()

    # -- handler for GossipServicer ------------------------------------------------------

    def on_ping(
        self, request: gossip_pb2.PingRequest, peer: str | None = None
    ) -> gossip_pb2.PingReply:
        """Answer a signed ping; an unsigned or wrongly signed one raises `ProbeRefused`
        (UNAUTHENTICATED), counted, and nothing in it is believed. peer: the caller's name
        as its certificate proves it (mutual TLS), which the sender's name must be."""
        self._check_signed(request, peer)
        with self._state() as m:
            incarnation, updates = m.on_ping(
                request.sender_node, int(request.incarnation), from_proto(request.updates)
            )
        return sign_probe(
            gossip_pb2.PingReply(
                node=self.node, incarnation=incarnation, updates=[to_proto(u) for u in updates]
            ),
            self._key,
        )

    def refusals(self) -> dict[str, int]:
        """What this node refused, by reason: membership news ('incarnation', 'table_full',
        'duplicate_name': another address under this node's name), messages without the swarm
        key's signature ('bad_signature': a Ping or PingReq; 'bad_reply_signature': a reply,
        taken as no answer), a sender name that is not the caller's certificate name under
        mutual TLS ('wrong_identity'), messages of more than MAX_UPDATES updates
        ('too_many_updates'), and indirect probes ('ping_req_unknown': a target that
        is not the member we know at that address; 'ping_req_busy': max_ping_req_in_flight
        relays already waiting)."""
        with self._state() as m:
            return dict(m.refused + self._refused)

    def impostors(self) -> list[str]:
        """Addresses where another node announced itself under this node's name."""
        with self._state() as m:
            return sorted(m.impostors)

    def reaped(self) -> int:
        """Members removed from the table after dead_reap_s DEAD."""
        with self._state() as m:
            return m.reaped

    def _check_signed(self, request: _Request, peer: str | None) -> None:
        if peer is not None and request.sender_node != peer:
            with self._lock:
                self._refused["wrong_identity"] += 1
            raise ProbeRefused(
                "PERMISSION_DENIED",
                f"membership message names sender {request.sender_node[:80]!r} but the "
                f"caller's certificate is {peer!r}",
            )
        if not probe_signed(request, self._key):
            with self._lock:
                self._refused["bad_signature"] += 1
            raise ProbeRefused(
                "UNAUTHENTICATED",
                f"membership message from {request.sender_node[:80]!r} is not signed with "
                "this swarm's key",
            )
        if len(request.updates) > MAX_UPDATES:
            with self._lock:
                self._refused["too_many_updates"] += 1
            raise ProbeRefused(
                "INVALID_ARGUMENT",
                f"{len(request.updates)} membership updates in one message; at most {MAX_UPDATES}",
            )

    def _reply_signed(self, reply: _Reply) -> bool:
        """Whether an answer may be believed: signed, and no flood of updates."""
        if len(reply.updates) > MAX_UPDATES:
            with self._lock:
                self._refused["too_many_updates"] += 1
            return False
        if probe_signed(reply, self._key):
            return True
        with self._lock:
            self._refused["bad_reply_signature"] += 1
        return False

    def on_ping_req(
        self, request: gossip_pb2.PingReqRequest, peer: str | None = None
    ) -> gossip_pb2.PingReqReply:
        """Relay a probe, only to a member we know at the address we know it by (never to an
        address a caller names), and at most max_ping_req_in_flight at once; refusals raise
        `ProbeRefused` for the servicer to answer with a gRPC status."""
        self._check_signed(request, peer)
        with self._state() as m:
            m.merge(from_proto(request.updates))
            target = m.member(request.target_node)
            if target is None or target.address != request.target_address:
                self._refused["ping_req_unknown"] += 1
                raise ProbeRefused(
                    "FAILED_PRECONDITION",
                    f"{request.target_node!r} at {request.target_address!r} is not a member "
                    "known here at that address",
                )
            ping = self._ping_request(m, request.target_node)
        if not self._relaying.acquire(blocking=False):
            with self._lock:
                self._refused["ping_req_busy"] += 1
            raise ProbeRefused("RESOURCE_EXHAUSTED", "too many indirect probes at once")
        try:
            reply = self._ping(target.address, request.target_node, ping, self.cfg.probe_timeout_s)
        finally:
            self._relaying.release()
        with self._state() as m:
            if reply is not None:
                m.on_ack(request.target_node, int(reply.incarnation), from_proto(reply.updates))
            back = m.piggyback(request.sender_node)
        return sign_probe(
            gossip_pb2.PingReqReply(
                reachable=reply is not None, updates=[to_proto(u) for u in back]
            ),
            self._key,
        )

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _state(self) -> Iterator[Membership]:
        try:
            with self._lock:
                yield self._m
        finally:
            self._deliver()

    def _deliver(self) -> None:
        """Hand queued changes to the user's callback, in order, outside the state lock.
        Whoever holds `_delivering` delivers for everyone; the outer loop re-checks after
        releasing it so a change queued in between is not stranded."""
        while self._changes:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while self._changes:
                    member, previous = self._changes.popleft()
                    if self._user_on_change is not None:
                        try:
                            self._user_on_change(member, previous)
                        except Exception:
                            log.exception("membership on_change callback failed")
            finally:
                self._delivering.release()

    def _stub(self, address: str) -> Any:
        with self._channel_lock:
            if self._stop.is_set():
                raise ValueError(f"membership of {self.node} is stopped")  # as a closed channel
            if address not in self._stubs:
                self._channels[address] = self._factory(address)
                self._stubs[address] = gossip_pb2_grpc.GossipStub(self._channels[address])
            return self._stubs[address]

    def _ping_request(self, m: Membership, target: str) -> gossip_pb2.PingRequest:
        return sign_probe(
            gossip_pb2.PingRequest(
                sender_node=self.node,
                incarnation=m.incarnation,
                updates=[to_proto(u) for u in m.piggyback(target)],
            ),
            self._key,
        )

    def _ping(
        self, address: str, node: str, request: gossip_pb2.PingRequest, timeout_s: float
    ) -> gossip_pb2.PingReply | None:
        """One Ping; None if it failed or another node answers at that address."""
        if timeout_s <= 0:
            return None
        try:
            reply = self._stub(address).Ping(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            log.debug("%s: ping %s at %s failed: %s", self.node, node, address, exc.code())
            return None
        except ValueError:  # the channel was closed by stop()
            return None
        if not self._reply_signed(reply) or (reply.node and reply.node != node):
            return None
        return reply

    def _run(self) -> None:
        period = period_s(self.cfg)
        start = time.monotonic()
        while not self._stop.is_set():
            try:
                self._probe_once(start + period)
            except Exception:  # keep the detector alive whatever one probe does
                log.exception("%s: probe failed", self.node)
            start = max(start + period, time.monotonic())
            while not self._stop.is_set():
                with self._state() as m:
                    m.tick()
                    deadline = m.next_deadline()
                now = time.monotonic()
                if now >= start:
                    break
                wake = start if deadline is None else min(start, max(deadline, now))
                self._stop.wait(wake - now)

    def _probe_once(self, period_end: float) -> None:
        with self._state() as m:
            target = m.next_probe()
            if target is None:
                return
            member = m.member(target)
            assert member is not None
            request = self._ping_request(m, target)
        reply = self._ping(member.address, target, request, self.cfg.probe_timeout_s)
        with self._state() as m:
            if reply is not None:
                m.on_ack(target, int(reply.incarnation), from_proto(reply.updates))
                return
            helpers = m.on_probe_timeout(target)
            asks = []
            for helper in helpers:
                h = m.member(helper)
                assert h is not None
                asks.append(
                    (
                        h.address,
                        sign_probe(
                            gossip_pb2.PingReqRequest(
                                sender_node=self.node,
                                target_node=target,
                                target_address=member.address,
                                updates=[to_proto(u) for u in m.piggyback(helper)],
                            ),
                            self._key,
                        ),
                    )
                )
        reachable = self._indirect(asks, period_end)
        with self._state() as m:
            m.on_indirect_result(target, reachable)

    def _indirect(self, asks: list[tuple[str, gossip_pb2.PingReqRequest]], deadline: float) -> bool:
        """PingReq every helper at once; True as soon as one reached the target."""
        timeout_s = deadline - time.monotonic()
        if not asks or timeout_s <= 0:
            return False
        futures = []
        for address, request in asks:
            try:
                futures.append(self._stub(address).PingReq.future(request, timeout=timeout_s))
            except ValueError:  # the channel was closed by stop()
                continue
        if not futures:
            return False
        done, reached = threading.Event(), threading.Event()
        finished = [0]
        guard = threading.Lock()
        believed: list[Any] = []  # the answers that passed _reply_signed, judged once each

        def on_done(future: Any) -> None:
            ok = not future.cancelled() and future.exception() is None
            ok = ok and self._reply_signed(future.result())
            if ok and future.result().reachable:
                reached.set()
            with guard:
                if ok:
                    believed.append(future)
                finished[0] += 1
                if reached.is_set() or finished[0] == len(futures):
                    done.set()

        for future in futures:
            future.add_done_callback(on_done)
        done.wait(timeout_s)
        for future in futures:
            future.cancel()  # no-op for those that finished
        with guard:
            answers = [future.result() for future in believed]
        for answer in answers:
            with self._state() as m:
                m.merge(from_proto(answer.updates))
        return reached.is_set()
