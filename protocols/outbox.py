"""Per-peer outboxes: deliver one node's deltas to peers that may be slow, down or restarted.

CHOCO-Gossip needs every delta of a sender, in order, at every holder of its public copy. Over
a real network a peer can be unreachable for a while (a device reboots, a radio link drops) or
come back from a crash holding an older copy. One `Outboxes` serves one node (a device, or a
simulated shard talking to devices) with one queue and one sender thread per peer address:

    add(address, msgs)     queue this round's signed messages for a peer (never blocks)
    peer answers           delivered in order, oldest first, in batches under the size limit
    peer unreachable       kept and retried with backoff; beyond `max_queued` messages the
                           queue is dropped and replaced by a resync (memory stays bounded)
    refused as Stale       the peer's copy is out of step (it restarted from a checkpoint, or
                           joined late): the queue is dropped and *snapshots* are sent, the
                           sender's whole public copies at their current version, after which
                           ordinary deltas apply again (protocols.gossip: snapshot rules)
    forget(address)        the peer was declared dead: stop sending; it gets a snapshot first
                           when it is heard from again (`revive`)

A snapshot is made when it is sent, from the live public copies, so it already contains every
delta that was queued: dropping the queue loses nothing. The learning loop only ever calls
`add`; it never waits for a peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocols.errors import PeerError, Refused, Stale, TlsHandshakeFailed

#: Longest wait between two attempts to reach an unreachable peer.
MAX_BACKOFF_S = 2.0


@dataclass
class PeerStats:
    """What happened on the link to one peer (read by status views and tests)."""

    delivered: int = 0  # deltas (and snapshots) the peer accepted
    batches: int = 0
    failures: int = 0  # pushes that failed (unreachable, timeout, refused)
    resyncs: int = 0  # snapshots delivered in place of the queue (peer restarted, joined late)
    dropped: int = 0  # queued deltas replaced by a snapshot (overflow or refusal)
    last_ok: float | None = None  # wall time of the last accepted push
    last_error: str = ""  # of the last failed push; cleared by a success
    last_refusal: str = ""  # the peer's reason the last time it refused a push (kept)
    forgotten: bool = False


@dataclass
class _Link:
    address: str
    queue: list[Any] = field(default_factory=list)
    resync: bool = False
    requests: int = 0  # resync requests so far: one made during a snapshot push is not lost
    stats: PeerStats = field(default_factory=PeerStats)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Outboxes:
    """One node's outgoing links.

    Args:
        push: sends one DeltaBatch to an address, raises protocols.errors.PeerError
            (`Peers.push`).
        pack: (round, messages) -> DeltaBatches under the size limit (`wire.pack`, bound).
        snapshots: (round, address) -> signed snapshot messages of this node's agents that
            the peer at `address` holds copies of.
        max_queued: messages one peer's queue may hold before it is replaced by a resync.
        timeout_s: deadline of one push.
        on_fatal: called with (address, error) for a failure retrying cannot fix (a TLS
            handshake the peer refuses: TlsHandshakeFailed); the link keeps retrying, the
            caller decides.
    """

    def __init__(
        self,
        push: Callable[[str, Any, float], int],
        pack: Callable[[int, list[Any]], list[Any]],
        snapshots: Callable[[int, str], list[Any]],
        *,
        max_queued: int = 256,
        timeout_s: float = 2.0,
        on_fatal: Callable[[str, Exception], None] | None = None,
    ):
        self._push, self._pack, self._snapshots = push, pack, snapshots
        self.max_queued, self.timeout_s = max_queued, timeout_s
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._round = 0
        self._stop = threading.Event()

    def _link(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(address)
            link.thread = threading.Thread(
                target=self._run, args=(link,), name=f"outbox-{address}", daemon=True
            )
            link.thread.start()
        return link

    def add(self, address: str, msgs: list[Any], round_: int) -> None:
        """Queue messages for `address` (ignored while it is forgotten)."""
        with self._lock:
            self._round = max(self._round, round_)
            link = self._link(address)
            if link.stats.forgotten:
                return
            link.queue.extend(msgs)
            if len(link.queue) > self.max_queued:
                link.stats.dropped += len(link.queue)
                link.queue.clear()
                link.resync = True
                link.requests += 1
            link.wake.set()

    def resync(self, address: str) -> None:
        """Send snapshots to `address` next (e.g. it introduced itself after a restart)."""
        self._drop_queue(address, forgotten=False)

    def forget(self, address: str) -> None:
        """The peer was declared dead: drop its queue and stop sending to it."""
        self._drop_queue(address, forgotten=True)

    def _drop_queue(self, address: str, *, forgotten: bool) -> None:
        """Replace the queue by a resync (the snapshot holds everything queued)."""
        with self._lock:
            link = self._link(address)
            link.stats.dropped += len(link.queue)
            link.queue.clear()
            link.resync = True
            link.requests += 1
            link.stats.forgotten = forgotten
            if not forgotten:
                link.wake.set()

    def revive(self, address: str) -> None:
        """The peer is back: it gets snapshots, then deltas again."""
        self.resync(address)

    def pending(self, address: str | None = None) -> int:
        """Messages queued (for one address, or all) not yet delivered."""
        with self._lock:
            links = [self._links[address]] if address in self._links else []
            if address is None:
                links = list(self._links.values())
            return sum(
                len(link.queue) + int(link.resync and not link.stats.forgotten) for link in links
            )

    def stats(self) -> dict[str, PeerStats]:
        with self._lock:
            return {a: PeerStats(**vars(link.stats)) for a, link in self._links.items()}

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until every live link has delivered everything; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.02)
        return self.pending() == 0

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.wake.set()
        for link in links:
            if link.thread is not None:
                link.thread.join(timeout=self.timeout_s + 1.0)

    # -- the sender thread of one link --------------------------------------------------------

    def _take(self, link: _Link) -> tuple[list[Any], bool, int, int]:
        with self._lock:
            if link.stats.forgotten:
                return [], False, self._round, link.requests
            if link.resync:
                # the snapshot about to be made holds everything queued so far
                link.stats.dropped += len(link.queue)
                link.queue.clear()
                return [], True, self._round, link.requests
            return list(link.queue), False, self._round, link.requests

    def _failed(self, link: _Link, exc: PeerError, resync: bool) -> bool:
        """Count a failed push; True when the peer said it is out of step (Stale) and the queue
        was replaced by a resync, so the snapshot goes out next."""
        with self._lock:
            link.stats.failures += 1
            link.stats.last_error = exc.describe()
            if isinstance(exc, Refused):  # the peer's own answer, not a network failure
                link.stats.last_refusal = link.stats.last_error
            if not isinstance(exc, Stale) or resync:
                return False  # a refused snapshot is retried with backoff
            # what was queued is in the snapshot we send instead
            link.stats.dropped += len(link.queue)
            link.queue.clear()
            link.resync = True
            link.requests += 1
            return True

    def _run(self, link: _Link) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            msgs, resync, round_, requests = self._take(link)
            if not msgs and not resync:
                link.wake.wait(0.5)
                link.wake.clear()
                continue
            if resync:
                msgs = self._snapshots(round_, link.address)
            try:
                for batch in self._pack(round_, msgs):
                    self._push(link.address, batch, self.timeout_s)
                    link.stats.batches += 1
            except PeerError as exc:
                if self._failed(link, exc, resync):
                    backoff = 0.05  # out of step: the snapshot goes out at once
                    continue
                if self._on_fatal is not None and isinstance(exc, TlsHandshakeFailed):
                    self._on_fatal(link.address, exc)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            backoff = 0.05
            with self._lock:
                link.stats.delivered += len(msgs)
                link.stats.last_ok = time.time()
                link.stats.last_error = ""
                if resync:
                    link.stats.resyncs += 1
                    # a request made while this snapshot was in flight dropped deltas made
                    # after it: it stands, and the next pass sends a newer snapshot
                    link.resync = link.requests != requests
                else:
                    del link.queue[: len(msgs)]
