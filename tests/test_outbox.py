"""Per-peer outboxes (protocols/outbox.py): ordered delivery, retry with backoff, resync by
snapshot, bounded queues, forgetting and reviving peers.

The network boundary (`push`) is a fake whose behaviour per address the test controls; it raises
the domain errors of protocols/errors.py, as `protocols.transport.Peers.push` does."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from protocols.errors import PeerError, Refused, Stale, TlsHandshakeFailed, Unreachable
from protocols.outbox import Outboxes

A, B = "10.0.0.1:7000", "10.0.0.2:7000"


def stale(details: str) -> Stale:
    return Stale(A, details, "FAILED_PRECONDITION")


def _is_snapshot(batch: list) -> bool:
    return any(isinstance(m, tuple) and m[0] == "snap" for m in batch)


class FakeNet:
    """push(address, batch, timeout): records accepted batches; `rule[address]` (batch -> an
    exception or None) decides per call whether the peer refuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, list[list]] = defaultdict(list)
        self.calls: dict[str, list[tuple[float, list]]] = defaultdict(list)
        self.rule: dict[str, Callable[[list], Exception | None]] = {}
        self.timeouts: list[float] = []

    def push(self, address: str, batch: list, timeout: float) -> int:
        batch = list(batch)
        with self.lock:
            self.calls[address].append((time.monotonic(), batch))
            self.timeouts.append(timeout)
            rule = self.rule.get(address)
        exc = rule(batch) if rule is not None else None
        if exc is not None:
            raise exc
        with self.lock:
            self.accepted[address].append(batch)
        return len(batch)

    def down(
        self,
        address: str,
        kind: type[PeerError] = Unreachable,
        details: str = "connection refused",
        status: str = "UNAVAILABLE",
    ) -> None:
        with self.lock:
            self.rule[address] = lambda batch: kind(address, details, status)

    def up(self, address: str) -> None:
        with self.lock:
            self.rule.pop(address, None)

    def received(self, address: str) -> list:
        with self.lock:
            return [m for batch in self.accepted[address] for m in batch]

    def n_calls(self, address: str) -> int:
        with self.lock:
            return len(self.calls[address])


def pack_all(round_: int, msgs: list) -> list[list]:
    return [list(msgs)]


def pack_pairs(round_: int, msgs: list) -> list[list]:
    return [msgs[i : i + 2] for i in range(0, len(msgs), 2)]


def snapshots(round_: int, address: str) -> list:
    return [("snap", round_, address)]


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


@pytest.fixture
def make_outboxes(net):
    made: list[Outboxes] = []

    def _make(pack=pack_all, **kw) -> Outboxes:
        kw.setdefault("timeout_s", 0.5)
        ob = Outboxes(net.push, pack, snapshots, **kw)
        made.append(ob)
        return ob

    yield _make
    for ob in made:
        ob.close()


def _outbox_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("outbox-")]


# ---- delivery -----------------------------------------------------------------------------------


def test_messages_are_delivered_in_order_in_batches(net, make_outboxes):
    ob = make_outboxes(pack=pack_pairs)
    sent = []
    for r in range(5):
        msgs = [f"d{r}.{i}" for i in range(3)]
        sent += msgs
        ob.add(A, msgs, r)
    assert ob.wait_empty(5.0)

    assert net.received(A) == sent
    assert all(len(b) <= 2 for b in net.accepted[A])
    st = ob.stats()[A]
    assert st.delivered == len(sent)
    assert st.batches == len(net.accepted[A])
    assert st.failures == st.resyncs == st.dropped == 0
    assert st.last_ok is not None and st.last_error == ""
    assert set(net.timeouts) == {0.5}
    assert ob.pending() == 0 and ob.pending(A) == 0


def test_each_peer_gets_its_own_messages(net, make_outboxes):
    ob = make_outboxes()
    ob.add(A, ["a1", "a2"], 0)
    ob.add(B, ["b1"], 0)
    ob.add(A, ["a3"], 1)
    assert ob.wait_empty(5.0)
    assert net.received(A) == ["a1", "a2", "a3"]
    assert net.received(B) == ["b1"]


def test_unreachable_peer_keeps_its_messages_and_gets_them_once_it_answers(net, make_outboxes):
    ob = make_outboxes()
    net.down(A, details="failed to connect to all addresses")
    ob.add(A, ["m0", "m1"], 0)
    ob.add(B, ["b0"], 0)  # a down peer does not hold up the others
    assert wait_until(lambda: net.received(B) == ["b0"])
    assert wait_until(lambda: net.n_calls(A) >= 4)
    ob.add(A, ["m2"], 1)

    st = ob.stats()[A]
    assert st.failures >= 4 and st.delivered == 0
    assert st.last_error == "UNAVAILABLE: failed to connect to all addresses"
    assert net.received(A) == []
    assert ob.pending(A) == 3
    assert ob.wait_empty(0.05) is False

    # backoff: each retry waits at least twice as long as the one before (from 50 ms)
    times = [t for t, _ in net.calls[A]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)][:3]
    for i, gap in enumerate(gaps):
        assert gap >= 0.05 * 2**i * 0.9, gaps

    net.up(A)
    assert ob.wait_empty(5.0)
    assert net.received(A) == ["m0", "m1", "m2"]
    st = ob.stats()[A]
    assert st.delivered == 3 and st.last_error == "" and st.resyncs == 0 and st.dropped == 0
    assert st.failures == net.n_calls(A) - len(net.accepted[A])


def test_a_refusal_is_kept_as_last_refusal_a_network_failure_is_not(net, make_outboxes):
    ob = make_outboxes()
    net.down(A, Refused, "malformed: bad encoding", "INVALID_ARGUMENT")
    net.down(B)
    ob.add(A, ["a"], 0)
    ob.add(B, ["b"], 0)
    assert wait_until(lambda: net.n_calls(A) >= 1 and net.n_calls(B) >= 1)
    net.up(A)
    net.up(B)
    assert ob.wait_empty(5.0)
    st_a, st_b = ob.stats()[A], ob.stats()[B]
    assert st_a.last_error == ""
    assert st_a.last_refusal == "INVALID_ARGUMENT: malformed: bad encoding"
    assert st_a.resyncs == 0  # only Stale replaces the queue with a snapshot
    assert st_b.last_refusal == ""


def test_wait_empty_times_out_promptly_while_a_peer_is_down(net, make_outboxes):
    ob = make_outboxes()
    net.down(A)
    ob.add(A, ["m"], 0)
    t0 = time.monotonic()
    assert ob.wait_empty(0.2) is False
    assert 0.19 <= time.monotonic() - t0 < 1.5
    assert ob.pending() == 1 and ob.pending(A) == 1 and ob.pending(B) == 0


# ---- resync -------------------------------------------------------------------------------------


def test_failed_precondition_replaces_the_queue_with_a_snapshot(net, make_outboxes):
    ob = make_outboxes()
    refused = []

    def refuse_first_delta(batch):
        if not refused and not _is_snapshot(batch):
            refused.append(batch)
            return stale("holds epoch 2 version 7")
        return None

    net.rule[A] = refuse_first_delta
    ob.add(A, ["d0", "d1", "d2"], 4)
    assert ob.wait_empty(5.0)
    assert refused == [["d0", "d1", "d2"]]
    assert net.received(A) == [("snap", 4, A)]

    ob.add(A, ["d3", "d4"], 5)  # after the snapshot, deltas flow again
    assert ob.wait_empty(5.0)
    assert net.received(A) == [("snap", 4, A), "d3", "d4"]
    st = ob.stats()[A]
    assert st.resyncs == 1
    assert st.dropped == 3
    assert st.failures == 1
    assert st.delivered == 3  # the snapshot and two deltas


def test_a_refused_snapshot_is_retried_not_resynced_again(net, make_outboxes):
    ob = make_outboxes()
    snaps_refused = []

    def rule(batch):
        if not _is_snapshot(batch):
            return None if snaps_refused else stale("stale")
        if len(snaps_refused) < 2:
            snaps_refused.append(batch)
            return stale("snapshot too old")
        return None

    net.rule[A] = rule
    ob.add(A, ["d0"], 0)
    assert ob.wait_empty(5.0)
    assert net.received(A) == [("snap", 0, A)]
    st = ob.stats()[A]
    assert st.resyncs == 1 and st.failures == 3
    assert st.last_error == ""


def test_resync_request_sends_a_snapshot_first(net, make_outboxes):
    ob = make_outboxes()
    ob.add(A, ["d0"], 0)
    assert ob.wait_empty(5.0)
    ob.resync(A)
    assert ob.pending(A) == 1  # the snapshot to send
    assert ob.wait_empty(5.0)
    assert net.received(A) == ["d0", ("snap", 0, A)]
    st = ob.stats()[A]
    assert st.resyncs == 1 and st.dropped == 0 and st.delivered == 2


def test_overflow_drops_the_queue_for_a_snapshot_and_memory_stays_bounded(net, make_outboxes):
    ob = make_outboxes(max_queued=5)
    net.down(A)
    for r in range(40):
        ob.add(A, [f"d{r}.0", f"d{r}.1"], r)
        assert ob.pending(A) <= 5 + 1  # at most max_queued deltas and the resync
    with ob._lock:
        assert len(ob._links[A].queue) <= 5
    st = ob.stats()[A]
    assert st.dropped >= 80 - 5
    assert net.received(A) == []

    net.up(A)
    assert ob.wait_empty(5.0)
    received = net.received(A)
    assert received[0] == ("snap", 39, A)  # made when sent: the newest round
    assert all(isinstance(m, str) for m in received[1:])  # any deltas after it, none before
    st = ob.stats()[A]
    assert st.dropped + len(received) - 1 == 80
    assert st.resyncs == 1  # one snapshot delivered in place of the queue

    ob.add(A, ["after"], 40)
    assert ob.wait_empty(5.0)
    assert net.received(A)[-1] == "after"


def test_overflow_with_a_live_peer_needs_more_than_max_queued_in_one_add(net, make_outboxes):
    ob = make_outboxes(max_queued=3)
    ob.add(A, ["a", "b", "c"], 0)  # exactly max_queued: kept
    assert ob.wait_empty(5.0)
    ob.add(A, ["d", "e", "f", "g"], 1)  # beyond: replaced by a snapshot
    assert ob.wait_empty(5.0)
    assert net.received(A) == ["a", "b", "c", ("snap", 1, A)]
    st = ob.stats()[A]
    assert st.dropped == 4 and st.resyncs == 1 and st.failures == 0


# ---- forget and revive --------------------------------------------------------------------------


def test_forget_drops_the_queue_and_stops_sending(net, make_outboxes):
    ob = make_outboxes()
    net.down(A)
    ob.add(A, ["d0", "d1"], 0)
    assert wait_until(lambda: net.n_calls(A) >= 1)
    ob.forget(A)
    ob.add(A, ["d2"], 1)  # ignored while forgotten
    st = ob.stats()[A]
    assert st.forgotten and st.dropped == 2
    assert ob.pending(A) == 0 and ob.pending() == 0
    assert ob.wait_empty(0.5)

    net.up(A)
    calls = net.n_calls(A)
    time.sleep(0.3)  # longer than the pending backoff: nothing more may be pushed
    assert net.n_calls(A) <= calls + 1  # at most a retry that had already started
    assert net.received(A) == []


def test_revive_sends_a_snapshot_first_then_deltas(net, make_outboxes):
    ob = make_outboxes()
    ob.add(A, ["d0"], 0)
    assert ob.wait_empty(5.0)
    ob.forget(A)
    ob.add(A, ["lost"], 1)
    ob.add(A, ["lost too"], 2)
    assert net.received(A) == ["d0"]

    ob.revive(A)
    assert not ob.stats()[A].forgotten
    assert ob.pending(A) == 1
    assert wait_until(lambda: len(net.received(A)) == 2)
    ob.add(A, ["d3"], 3)
    assert ob.wait_empty(5.0)
    assert net.received(A) == ["d0", ("snap", 2, A), "d3"]
    assert ob.stats()[A].resyncs == 1


def test_forgetting_an_unknown_address_creates_a_silent_link(net, make_outboxes):
    ob = make_outboxes()
    ob.forget(B)
    ob.add(B, ["x"], 0)
    assert ob.pending() == 0
    assert ob.stats()[B].forgotten


def test_resync_requested_during_a_snapshot_push_is_not_lost(net, make_outboxes):
    ob = make_outboxes()
    in_flight, release = threading.Event(), threading.Event()

    def hold_first_snapshot(batch):
        if _is_snapshot(batch) and not in_flight.is_set():
            in_flight.set()
            assert release.wait(5.0)
        return None

    net.rule[A] = hold_first_snapshot
    ob.resync(A)  # snapshot of round 0, its push held in flight
    assert in_flight.wait(5.0)
    ob.add(A, ["d1"], 1)  # a delta made after that snapshot
    ob.resync(A)  # the peer restarted again: d1 is dropped for a *new* snapshot
    release.set()
    assert ob.wait_empty(5.0)
    received = net.received(A)
    assert received[0] == ("snap", 0, A)
    # d1 must reach the peer: as a delta, or inside a snapshot made after it (round >= 1)
    assert "d1" in received or ("snap", 1, A) in received, received


# ---- errors the caller must see, and shutting down ---------------------------------------------


def test_on_fatal_is_called_for_a_tls_handshake_failure(net, make_outboxes):
    fatal: list[tuple[str, Exception]] = []
    ob = make_outboxes(on_fatal=lambda address, exc: fatal.append((address, exc)))
    net.down(A, TlsHandshakeFailed, details="TLS handshake with A failed: check ca.pem")
    net.down(B, details="connection refused")
    ob.add(A, ["x"], 0)
    ob.add(B, ["y"], 0)
    assert wait_until(lambda: len(fatal) >= 2 and net.n_calls(B) >= 2)
    assert {address for address, _ in fatal} == {A}  # B's failure is not fatal
    assert all(isinstance(exc, TlsHandshakeFailed) for _, exc in fatal)
    assert ob.stats()[A].last_error == "UNAVAILABLE: TLS handshake with A failed: check ca.pem"
    assert ob.pending(A) == 1  # the link keeps the message and keeps retrying
    net.up(A)
    assert wait_until(lambda: net.received(A) == ["x"])


def test_close_joins_every_sender_thread_promptly(net, make_outboxes):
    before = set(_outbox_threads())
    ob = make_outboxes(timeout_s=2.0)
    net.down(A)
    ob.add(A, ["x"], 0)  # A retries with backoff
    ob.add(B, ["y"], 0)  # B delivers, then idles
    assert wait_until(lambda: net.received(B) == ["y"] and net.n_calls(A) >= 5)
    mine = [t for t in _outbox_threads() if t not in before]
    assert {t.name for t in mine} == {f"outbox-{A}", f"outbox-{B}"}

    t0 = time.monotonic()
    ob.close()
    assert time.monotonic() - t0 < 1.0
    assert not any(t.is_alive() for t in mine)
