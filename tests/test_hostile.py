"""Hostile bytes at the gRPC edge of a real server on 127.0.0.1, judged by the property itself.

The oracle decides whether a request is an attack the way a receiver must: it parses the bytes
and checks every delta's HMAC-SHA256, recomputed here from delta.proto rather than with
protocols.wire, so that it does not share a bug of the code under test. Then, per request:

1. anything that does not verify is refused with a status (INVALID_ARGUMENT when it does not
   parse, UNAUTHENTICATED when a signature fails), counted, and changes nothing;
2. a delta that verifies is applied at most once, however often and in whatever wrapping it is
   replayed. The batch header (sender_node, round) is not signed: a request with a changed
   header, or with a genuine delta in a non-canonical encoding, carries a genuine delta and is
   taken like any other, not counted as an attack;
3. the server keeps serving: health SERVING, and a legitimate delta is still accepted.

Verifying deltas are also held to the receiver's documented acceptance rule (a fresh delta next
in line is taken; see `_GossipEdge.accepts` / `_CoordinatorEdge.accepts`), so a server that
refused everything would fail too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_transport import KEY, MAX_BYTES, P, _msg, serve_receiver

from protocols import wire
from protocols.config import CompressionConfig, GraphConfig
from protocols.coordinator import CoordinatorState
from protocols.delta import Delta
from protocols.gossip import ChocoGossip, agent_name
from protocols.topology import build_graph, metropolis_weights
from protocols.transport import CoordinatorServicer, GossipServicer, TrafficCounters, start_server
from swarm.proto.v1 import coordinator_pb2, delta_pb2, gossip_pb2

PUSH = "/swarm.v1.Gossip/PushDeltas"
SUBMIT = "/swarm.v1.Coordinator/SubmitDeltas"
#: A client that can send more than the server accepts (gRPC's hard limit there is 2x ours).
BIG_CLIENT = [("grpc.max_send_message_length", 8 * MAX_BYTES)]

#: Deterministic on every machine: examples come from a seed derived from the test itself and no
#: example database is read or written, so what a run tries never depends on what earlier runs
#: on this machine happened to find. No deadline: a request is a real gRPC round trip.
#: 150 examples of up to 6 requests: about 1 s per test on this 2-core machine.
HOSTILE = settings(max_examples=150, derandomize=True, database=None, deadline=None)

Key = tuple[str, int]
"""A genuine delta of this test: (sender, base_version)."""


def _pool(*specs: tuple[str, int, float]) -> dict[Key, delta_pb2.KnowledgeDelta]:
    """Deltas signed with the swarm key, each all `fill` (a power of two, so any set of them
    sums to a different copy, exactly in float32)."""
    return {(s, v): _msg(s, np.full(P, fill, np.float32), version=v) for s, v, fill in specs}


#: What n0 (agent 0 of a 4-ring; agents 1 and 3 remote) may be sent: agent-1's first two
#: versions, which apply only in order, and agent-3's first. ("agent-1", 0) is `_msg()`.
GOSSIP_POOL = _pool(("agent-1", 0, 1.0), ("agent-1", 1, 2.0), ("agent-3", 0, 4.0))
#: Round-0 deltas for a coordinator expecting agents 0..3; agent-3 is kept for the legitimate
#: request after the hostile ones (so the round never closes while they arrive).
COORDINATOR_POOL = _pool(("agent-0", 0, 2.0), ("agent-1", 0, 1.0), ("agent-2", 0, 4.0))


def _batch(sender_node: str, round_: int, deltas: list[delta_pb2.KnowledgeDelta]) -> bytes:
    return delta_pb2.DeltaBatch(
        sender_node=sender_node, round=round_, deltas=deltas
    ).SerializeToString()


_VALID = _batch("n1", 0, [_msg()])
#: Bytes of the batch before its first delta (the unsigned header, sender_node "n1").
_HEADER = len(delta_pb2.DeltaBatch(sender_node="n1").SerializeToString())


# -- the oracle ---------------------------------------------------------------------------------

MALFORMED, FORGED = "malformed", "forged"


def _hmac(msg: delta_pb2.KnowledgeDelta, key: bytes) -> bytes:
    """delta.proto's signature, computed here: HMAC-SHA256 of the message serialized
    (deterministically) with its `signature` field empty."""
    unsigned = delta_pb2.KnowledgeDelta()
    unsigned.CopyFrom(msg)
    unsigned.ClearField("signature")
    return hmac.new(key, unsigned.SerializeToString(deterministic=True), hashlib.sha256).digest()


def _verifies(msg: delta_pb2.KnowledgeDelta) -> bool:
    """What a receiver must check before it believes anything in `msg`."""
    return hmac.compare_digest(_hmac(msg, KEY), msg.signature)


def _judge(body: bytes, pool: dict[Key, delta_pb2.KnowledgeDelta]) -> str | list[Key]:
    """MALFORMED if `body` is not a DeltaBatch, FORGED if any delta in it fails its signature,
    else the keys of its deltas in batch order (each one this test signed)."""
    try:
        batch = delta_pb2.DeltaBatch.FromString(body)
    except DecodeError:
        return MALFORMED
    keys = []
    for msg in batch.deltas:
        if not _verifies(msg):
            return FORGED
        key = (msg.sender, msg.base_version)
        # HMAC cannot be forged: whatever verifies is a message this test signed.
        assert pool.get(key) == msg, f"oracle: {key} verifies but was never signed here"
        keys.append(key)
    return keys


def _changed(body: bytes, old: bytes, new: bytes) -> bytes:
    assert body.count(old) == 1, f"{old!r} is not a unique place in the batch"
    return body.replace(old, new)


def _non_canonical() -> bytes:
    """`_VALID` with its delta's num_params, 16 (field 4, tag 0x20), written as a two-byte
    varint: other bytes, the same message, a signature that still verifies."""
    delta = _msg().SerializeToString()
    at = delta_pb2.KnowledgeDelta(sender="agent-1").ByteSize()
    assert delta[at : at + 2] == b"\x20\x10"
    delta = delta[:at] + b"\x20\x90\x00" + delta[at + 2 :]
    assert len(delta) < 128  # so its length prefix stays one byte
    return _VALID[:_HEADER] + b"\x1a" + bytes([len(delta)]) + delta


_SIGNATURE_AT = _VALID.index(_msg().signature)
_SIGNATURE_CHANGED = bytearray(_VALID)
_SIGNATURE_CHANGED[_SIGNATURE_AT] ^= 1
#: Requests every run sends whatever the seed, each followed by the untouched `_VALID`:
#: - the batch a fresh clone's Hypothesis found: `_VALID` with its unsigned sender_node changed.
#:   Its delta is genuine, so it is taken, and `_VALID` and the renamed batch again are replays;
#: - the genuine delta in a non-canonical encoding: taken, the same way;
#: - a signed field changed inside the delta (the sender, to another member; every other check
#:   still passes): only the signature tells it from a genuine delta;
#: - one byte of the signature changed.
MUST_RUN = [
    [_changed(_VALID, b"n1", b"m1"), _VALID, _changed(_VALID, b"n1", b"m1")],
    [_non_canonical(), _VALID],
    [_changed(_VALID, b"agent-1", b"agent-3"), _VALID],
    [bytes(_SIGNATURE_CHANGED), _VALID],
]


def _must_run(test):
    for ops in MUST_RUN:
        test = example(ops=ops)(test)
    return test


@st.composite
def _mutated(draw, batches: st.SearchStrategy[bytes]) -> bytes:
    """A genuine batch with some bytes changed, anywhere: it parses more often than noise, so
    the checks behind the parser get hostile input too; a change in the header leaves the
    deltas genuine."""
    body = bytearray(draw(batches))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(body) - 1))
        body[at] = (body[at] + draw(st.integers(1, 255))) % 256  # always a different byte
    return bytes(body)


@st.composite
def _tampered(draw, pool: dict[Key, delta_pb2.KnowledgeDelta]) -> bytes:
    """A batch of genuine deltas and one whose signed fields (sender, base_version, examples) were
    set after signing, or that was signed again with another key: every check of a receiver
    but the signature passes it (unless the fields drawn are its own: then it is genuine)."""
    signed = st.sampled_from(list(pool.values()))
    msg = delta_pb2.KnowledgeDelta()
    msg.CopyFrom(draw(signed))
    msg.sender = draw(st.sampled_from([agent_name(i) for i in range(4)]))
    msg.base_version = draw(st.integers(0, 2))
    msg.examples = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        msg.signature = _hmac(msg, b"not the swarm key")
    deltas = draw(st.lists(signed, max_size=2))
    deltas.insert(draw(st.integers(0, len(deltas))), msg)
    return _batch("n1", 0, deltas)


@st.composite
def _requests(draw, pool: dict[Key, delta_pb2.KnowledgeDelta]) -> list[bytes]:
    """Up to 6 requests made of up to 4 bodies, so that a body is often sent again: noise,
    genuine batches (any header; deltas repeated, in any order), genuine batches with some bytes
    changed, and batches with a tampered delta."""
    signed = st.sampled_from(list(pool.values()))
    header = (st.text(max_size=8), st.integers(0, 2**64 - 1))
    genuine = st.builds(_batch, *header, st.lists(signed, min_size=1, max_size=3))
    body = st.one_of(st.binary(max_size=1024), genuine, _mutated(genuine), _tampered(pool))
    bodies = draw(st.lists(body, min_size=1, max_size=4, unique=True))
    return draw(st.lists(st.sampled_from(bodies), min_size=1, max_size=6))


# -- the servers --------------------------------------------------------------------------------


class _GossipEdge:
    """Node n0 of a 4-ring (agent 0; agents 1 and 3 remote), as test_transport.serve_receiver
    builds it but decoding as the nodes do (`wire.make_decoder`). One server serves the whole
    test; `reset()` gives each example a fresh node, so no example depends on another."""

    method, service, reply, pool = PUSH, "swarm.v1.Gossip", gossip_pb2.PushReply, GOSSIP_POOL
    remote = {"agent-1": 1, "agent-3": 3}

    def __init__(self) -> None:
        self.counters = TrafficCounters()
        self.reset()

    def reset(self) -> None:
        self.node = ChocoGossip(
            local=[0],
            weights=metropolis_weights(build_graph(GraphConfig(kind="ring"), 4, 0)),
            x0=np.zeros(P, np.float32),
            gamma=1.0,
            compression=CompressionConfig(kind="none"),
            layout="L",
            owner=lambda j: f"n{j}",
        )
        self.decoder = wire.make_decoder(KEY, P, "L")
        self.held = dict.fromkeys(self.remote, 0)  # version of each copy at the last look

    def services(self) -> dict[str, GossipServicer]:
        return {"gossip": GossipServicer("n0", self._decode, self._receive, self.counters)}

    def _decode(self, msg: delta_pb2.KnowledgeDelta) -> Delta | None:
        return self.decoder(msg)  # this example's

    def _receive(self, deltas: Sequence[Delta]) -> int:
        return self.node.receive(deltas)  # this example's node

    def newly_applied(self) -> list[Key]:
        """The deltas that reached the public copies since the last look, read off the copies'
        versions."""
        self.node.apply(np.zeros((1, P), np.float32), mix=False)
        out = []
        for sender, j in self.remote.items():
            out += [(sender, v) for v in range(self.held[sender], self.node.version[j])]
            self.held[sender] = self.node.version[j]
        return out

    def check_state(self, applied: set[Key]) -> None:
        """Each copy is x0 plus exactly the genuine deltas taken, each once."""
        for sender, j in self.remote.items():
            want = np.zeros(P, np.float32)
            for key in sorted(k for k in applied if k[0] == sender):
                want += np.frombuffer(self.pool[key].values, "<f4")
            assert np.array_equal(self.node.xhat[j], want), f"copy of {sender}"

    @staticmethod
    def accepts(keys: list[Key], applied: set[Key]) -> list[Key] | None:
        """ChocoGossip.receive's rule for epoch-0 deltas, in batch order: a version the copy
        holds is a duplicate (acknowledged, dropped), the next one is taken, a later one refuses
        the whole batch (STALE). The keys taken, or None."""
        held = Counter(s for s, _ in applied)
        taken = []
        for sender, version in keys:
            if version > held[sender]:
                return None
            if version == held[sender]:
                held[sender] += 1
                taken.append((sender, version))
        return taken

    @staticmethod
    def legitimate(applied: set[Key]) -> tuple[bytes, Key]:
        """agent-3's next delta, from its node."""
        key = ("agent-3", sum(s == "agent-3" for s, _ in applied))
        return _batch("n3", 0, [_msg(key[0], np.full(P, 8.0, np.float32), version=key[1])]), key


class _CoordinatorEdge:
    """A coordinator service wired as swarm.shard.CoordinatorHost wires it (`wire.make_decoder`,
    `CoordinatorState.submit`) for agents 0..3, its submits recorded. One server serves the
    whole test; `reset()` gives each example a fresh state."""

    method, service = SUBMIT, "swarm.v1.Coordinator"
    reply, pool = coordinator_pb2.SubmitReply, COORDINATOR_POOL

    def __init__(self) -> None:
        self.counters = TrafficCounters()
        self.reset()

    def reset(self) -> None:
        # The clock stands still: the round never closes on timeout, only when all 4 submitted.
        self.state = CoordinatorState(
            agents=[agent_name(i) for i in range(4)], num_params=P, layout="L", clock=lambda: 0.0
        )
        self.decoder = wire.make_decoder(KEY, P, "L")
        self.taken: list[Delta] = []

    def services(self) -> dict[str, CoordinatorServicer]:
        servicer = CoordinatorServicer(
            decode=self._decode,
            submit=self._submit,
            wait_aggregate=lambda round_, timeout: self.state.wait_aggregate(round_, timeout),
            encode=lambda d: wire.to_proto(d, KEY),
            counters=self.counters,
            round_timeout_s=1.0,
        )
        return {"coordinator": servicer}

    def _decode(self, msg: delta_pb2.KnowledgeDelta) -> Delta | None:
        return self.decoder(msg)  # this example's

    def _submit(self, deltas: Sequence[Delta]) -> int:
        n = self.state.submit(deltas)  # this example's state; all or none: it raises first
        self.taken.extend(deltas)
        return n

    def newly_applied(self) -> list[Key]:
        """The deltas the coordinator state took since the last look."""
        out, self.taken = [(d.sender, d.base_version) for d in self.taken], []
        return out

    def check_state(self, applied: set[Key]) -> None:
        """agent-3 has not submitted: the round is still open."""
        assert self.state.version == 0

    @staticmethod
    def accepts(keys: list[Key], applied: set[Key]) -> list[Key] | None:
        """CoordinatorState.submit's rule in an open round: each agent once; a repeat (in the
        batch, or since the round opened) refuses the whole batch (STALE). The keys taken, or
        None."""
        senders = [s for s, _ in keys]
        if len(set(senders)) < len(senders) or {s for s, _ in applied} & set(senders):
            return None
        return list(keys)

    @staticmethod
    def legitimate(applied: set[Key]) -> tuple[bytes, Key]:
        """agent-3's delta for the round, from its node."""
        return _batch("n3", 0, [_msg("agent-3", np.full(P, 8.0, np.float32))]), ("agent-3", 0)


Edge = _GossipEdge | _CoordinatorEdge


@contextlib.contextmanager
def _serving(edge: Edge) -> Iterator[grpc.Channel]:
    server, port = start_server("127.0.0.1", 0, max_message_bytes=MAX_BYTES, **edge.services())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        server.stop(grace=None)


def _send(channel: grpc.Channel, method: str, body: bytes) -> tuple[grpc.StatusCode, bytes]:
    """One call with `body` as the raw request; (status, raw reply or b"")."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        return grpc.StatusCode.OK, call(body, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), b""


def _still_serves(channel: grpc.Channel, service: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


#: The status and the counter of a request that does not verify, by the oracle's verdict.
REFUSED = {
    MALFORMED: (grpc.StatusCode.INVALID_ARGUMENT, "rejected_malformed"),
    FORGED: (grpc.StatusCode.UNAUTHENTICATED, "rejected_bad_signature"),
}


def _hostile_requests(
    edge: Edge, channel: grpc.Channel, ops: list[bytes], reached: Counter
) -> None:
    """Send `ops` in order to a fresh receiver, checking properties 1 and 2 after each request
    and property 3 after the last."""
    edge.reset()
    applied: set[Key] = set()
    for body in ops:
        verdict = _judge(body, edge.pool)
        before = Counter(edge.counters.snapshot())
        code, reply = _send(channel, edge.method, body)
        counted = Counter(edge.counters.snapshot()) - before
        newly = edge.newly_applied()
        assert counted["messages_received"] == 1
        if isinstance(verdict, str):
            # 1. what does not verify is refused with a status, counted, and applies nothing
            reached[verdict] += 1
            status, counter = REFUSED[verdict]
            assert newly == [], f"a {verdict} request applied {newly}"
            assert code == status, f"a {verdict} request got {code}"
            assert counted[counter] > 0, counted
            continue
        # 2. a genuine delta is applied only when it is sent, and at most once
        assert set(newly) <= set(verdict), f"the receiver took {newly}, the request held {verdict}"
        again = [k for k in newly if k in applied or newly.count(k) > 1]
        assert not again, f"applied {again} again"
        reached["replayed"] += bool(set(verdict) & applied)
        taken = edge.accepts(verdict, applied)
        if taken is None:  # a genuine delta out of turn: refused as stale, nothing applied
            assert (code, newly) == (grpc.StatusCode.FAILED_PRECONDITION, []), (verdict, code)
            assert counted["rejected_stale"] > 0
            reached["stale"] += 1
        else:
            assert code == grpc.StatusCode.OK, f"genuine {verdict} refused: {code}"
            accepted = edge.reply.FromString(reply).accepted
            assert accepted == counted["deltas_accepted"] == len(taken)
            assert sorted(newly) == sorted(taken)
            reached["taken"] += bool(taken)
        applied |= set(newly)
        edge.check_state(applied)
    # 3. the server still serves, and takes a legitimate delta
    _still_serves(channel, edge.service)
    body, key = edge.legitimate(applied)
    code, reply = _send(channel, edge.method, body)
    assert code == grpc.StatusCode.OK
    assert edge.reply.FromString(reply).accepted == 1
    assert edge.newly_applied() == [key]


def _check_reached(reached: Counter) -> None:
    """The requests reached every verdict, so none of the properties held vacuously."""
    assert all(reached[kind] for kind in (MALFORMED, FORGED, "taken", "replayed")), reached


@pytest.mark.parametrize(
    ("make_edge", "pool"),
    [(_GossipEdge, GOSSIP_POOL), (_CoordinatorEdge, COORDINATOR_POOL)],
    ids=["push_deltas", "submit_deltas"],
)
def test_applies_only_what_verifies_and_each_genuine_delta_at_most_once(
    make_edge: Callable[[], Edge], pool: dict[Key, delta_pb2.KnowledgeDelta]
) -> None:
    edge, reached = make_edge(), Counter[str]()
    with _serving(edge) as channel:

        @HOSTILE
        @_must_run
        @given(ops=_requests(pool))
        def hostile(ops: list[bytes]) -> None:
            _hostile_requests(edge, channel, ops, reached)

        hostile()
    _check_reached(reached)


def test_malformed_protobuf_is_invalid_argument_and_counted() -> None:
    with serve_receiver() as (node, counters, address), grpc.insecure_channel(address) as channel:
        # field 1 (sender_node, a string) announced as 100 bytes long, then the stream ends
        code, _ = _send(channel, PUSH, b"\x0a\x64abc")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert counters.snapshot()["rejected_malformed"] == 1
        assert node.apply(np.zeros((1, P), np.float32)) == 0
        _still_serves(channel, "swarm.v1.Gossip")


def test_oversized_message_is_resource_exhausted_and_counted() -> None:
    with (
        serve_receiver() as (node, counters, address),
        grpc.insecure_channel(address, options=BIG_CLIENT) as channel,
    ):
        # A well-formed, signed batch that is merely too big: refused before it is parsed.
        big = delta_pb2.DeltaBatch(
            sender_node="n1", deltas=[_msg()] * (MAX_BYTES // (len(_VALID) - _HEADER) + 1)
        ).SerializeToString()
        assert MAX_BYTES < len(big) < 2 * MAX_BYTES
        code, _ = _send(channel, PUSH, big)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        snap = counters.snapshot()
        assert snap["rejected_oversized"] == 1
        assert snap["wire_bytes_received"] == len(big)
        # Beyond gRPC's own hard limit the message never reaches us: refused all the same.
        code, _ = _send(channel, PUSH, b"\0" * (2 * MAX_BYTES + 1))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        x = np.zeros((1, P), np.float32)
        assert node.apply(x) == 0
        assert np.array_equal(x, np.zeros((1, P), np.float32))
        _still_serves(channel, "swarm.v1.Gossip")
