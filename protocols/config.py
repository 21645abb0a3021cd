"""Typed configs of knowledge exchange (no grpc import).

Every number is bounded (issue 18), by family: counts of agents (degrees, byzantine, table
sizes) by MAX_AGENT_INDEX, ticks and rounds by MAX_TICK (swarm/_config.py), timeouts and
periods by an hour (a probe or round slower than that detects or aggregates nothing useful),
multipliers and radii (suspicion_mult, nnm_tau, outlier_tau, indirect probes) by what no
setting of SWIM or the robust rules needs, and magnitudes (clip_norm, clip_tau) by 1e30, past
which float32 weights overflow anyway. Floats are finite (`Section`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from swarm._config import MAX_AGENT_INDEX, MAX_TICK, Section


class GraphConfig(Section):
    """The gossip graph over agents (networkx)."""

    kind: Literal[
        "ring",
        "torus",
        "random_regular",
        "erdos_renyi",
        "small_world",
        "complete",
        "exponential",
        "star",
        "file",
        "proximity",
    ] = "ring"
    """Graph family. exponential: agent i is joined to i + 2^k for every 2^k < n (degree about
    2 log2 n, fast mixing at any size); star: agent 0 is the hub; file: edges read from `path`;
    proximity: agents within `radio_range_m` of each other, rebuilt as they move."""
    degree: int = Field(4, ge=1, le=MAX_AGENT_INDEX)
    """Degree of random_regular; neighbours per node (k) of small_world."""
    p: float = Field(0.2, ge=0, le=1)
    """Edge probability of erdos_renyi; rewiring probability of small_world."""
    path: str | None = None
    """kind file: an edge list, one 'i j' pair of agent indices per line ('#' comments)."""
    radio_range_m: float = Field(60.0, gt=0, le=1e6)
    """kind proximity: radio range in metres."""


class CompressionConfig(Section):
    """How a knowledge delta is squeezed before it goes on the wire."""

    kind: Literal["none", "topk", "int8", "topk_int8"] = "topk_int8"
    """none = dense fp32; topk keeps the largest |entries|; int8 quantizes; topk_int8 both."""
    ratio: float = Field(0.1, gt=0, le=1)
    """Fraction of entries top-k keeps."""


class CoordinatorConfig(Section):
    """How the coordinator aggregates a round, and when it stops waiting."""

    aggregator: Literal[
        "fedavg", "trimmed_mean", "median", "krum", "multi_krum", "clipped_mean"
    ] = "fedavg"
    """fedavg: weighted by examples; trimmed_mean, median: coordinate-wise robust rules; krum:
    the delta closest to its n - f - 2 nearest; multi_krum: the mean of the n - f deltas Krum
    scores best; clipped_mean: norms clipped to clip_norm."""
    trim_fraction: float = Field(0.2, ge=0, lt=0.5)
    """trimmed_mean: fraction cut from each end per coordinate (Flower's default 0.2)."""
    byzantine: int = Field(0, ge=0, le=MAX_AGENT_INDEX)
    """krum, multi_krum: f, the number of Byzantine agents tolerated (needs n >= 2f + 3)."""
    clip_norm: float = Field(1.0, gt=0, le=1e30)
    """clipped_mean: each delta is scaled down to at most this L2 norm."""
    bucket: int = Field(1, ge=1, le=64)
    """trimmed_mean, median: average the deltas in random buckets of this many before the rule
    (Karimireddy, He, Jaggi 2022: the agents' data differ, and a coordinate-wise rule over
    heterogeneous deltas is biased towards whichever side liars sit on; means of s deltas are
    s times less spread). s liars' worth of buckets may be spoiled: trim at least s times the
    liars' fraction. 1: no buckets."""
    nnm: bool = False
    """trimmed_mean, median, krum, multi_krum: nearest-neighbour mixing first (Allouah et al.
    2023, "Fixing by mixing"): each delta is replaced by the mean of the n - f deltas nearest
    to it (itself included, f = `byzantine`), so the rule compares means over mostly honest
    agents, not heterogeneous single deltas; a liar's own row becomes mostly honest too.
    Needs byzantine >= 1."""
    nnm_tau: float | None = Field(None, gt=1, le=1e6)
    """nnm: leave out of each mixing only the round's outliers, the deltas farther from the
    coordinate-wise median than nnm_tau times the median distance between two deltas (at most
    f of them), instead of always the f farthest. Without outliers nothing is left out and
    every rule returns the plain mean: on a patrol whose zones teach different kinds the f
    farthest deltas are honest drones of another zone, which fixed-f mixing under-weights.
    The price: a liar within that distance is mixed in, its pull on the aggregate bounded by
    (f / n) nnm_tau times the median distance (liars sending -1x their delta cost 16 points on
    the patrol, as with fedavg; fixed f: 2.7); and with more than ~29% liars most pairs of
    deltas involve one, so the scale is theirs. None: always f (Allouah et al. 2023)."""
    round_timeout_s: float = Field(30.0, gt=0, le=3600)
    """A round closes this long after its first delta even if some agents are missing ..."""
    min_completion: float = Field(0.5, gt=0, le=1)
    """... provided at least this fraction of the agents contributed."""
    keep_rounds: int = Field(64, ge=1, le=4096)
    """Closed rounds whose aggregates the coordinator keeps to hand out; older ones are dropped
    (memory: keep_rounds dense float32 models). A client asking for a dropped round gets a
    snapshot of the global model instead (protocols/coordinator.py). 64 rounds cover a shard
    restored from a checkpoint up to 320 ticks old at gossip.interval 5, or a device away for
    64 rounds, with the per-round catch-up honest clients have always used; at 4096 a model of
    16k parameters keeps 256 MiB."""

    @model_validator(mode="after")
    def _bucket_rule(self) -> CoordinatorConfig:
        coordinate_wise = self.aggregator in ("trimmed_mean", "median")
        if self.bucket > 1 and not coordinate_wise:
            raise ValueError(
                f"bucket: buckets are for trimmed_mean and median; {self.aggregator} would "
                "ignore them"
            )
        if self.nnm and not (coordinate_wise or self.aggregator in ("krum", "multi_krum")):
            raise ValueError(
                f"nnm: nearest-neighbour mixing is for trimmed_mean, median, krum and "
                f"multi_krum; {self.aggregator} would ignore it"
            )
        if self.nnm and self.bucket > 1:
            raise ValueError("nnm: mix by nearest neighbours or by buckets, not both")
        if self.nnm_tau is not None and not self.nnm:
            raise ValueError(
                "nnm_tau: it sets how nearest-neighbour mixing counts outliers; set nnm too"
            )
        if self.nnm and self.byzantine < 1:
            raise ValueError(
                "nnm: set byzantine (f >= 1), the liars to mix around; with f = 0 every "
                "delta becomes the plain mean and the rule resists nothing"
            )
        return self

    @property
    def compares_coordinates(self) -> bool:
        """Whether the rule compares the agents' values coordinate by coordinate (median,
        trimmed mean, Krum's distances): then the agents send shared coordinates
        (protocols.compression.shared_indices), not each its own top-k."""
        return self.aggregator in ("trimmed_mean", "median", "krum", "multi_krum")


class MembershipConfig(Section):
    """SWIM-style failure detection (defaults: hashicorp memberlist's LAN profile)."""

    probe_interval_s: float = Field(1.0, gt=0, le=3600)
    """Each member pings one random member this often."""
    probe_timeout_s: float = Field(0.5, gt=0, le=3600)
    """A ping unanswered this long triggers indirect probes."""
    indirect_checks: int = Field(3, ge=0, le=64)
    """Members asked to ping a silent member on our behalf."""
    suspicion_mult: float = Field(4.0, gt=0, le=1000)
    """Suspect -> dead after suspicion_mult * max(1, log10 n) * probe_interval_s."""
    max_members: int = Field(4096, ge=1, le=MAX_AGENT_INDEX)
    """Members one table holds, ourselves left out: news of more strangers is dropped and
    counted (a flood of made-up members cannot grow it without bound)."""
    dead_reap_s: float = Field(30.0, gt=0, le=86400, allow_inf_nan=False)
    """A member DEAD this long leaves the table (memberlist's GossipToTheDeadTime, 30 s on a
    LAN): long enough for its death to reach everyone, and what a key holder's made-up members
    cost is bounded in time as well as by max_members. A reaped member that comes back is met
    again through its introductions and its first message."""
    max_ping_req_in_flight: int = Field(4, ge=1, le=64)
    """Indirect probes (PingReq) one node relays at once; more are refused RESOURCE_EXHAUSTED
    and counted, so waiting on silent targets cannot hold the server's threads."""


class TlsConfig(Section):
    """Transport security of the gRPC links."""

    mode: Literal["off", "tls", "mtls"] = "off"
    """off: plaintext (loopback only); tls: servers prove who they are; mtls: both sides do."""
    cert_dir: str | None = None
    """Directory made by `swarm certs`: ca.pem, and <node>.pem / <node>.key per node."""


class RobustConfig(Section):
    """Byzantine-robust consensus step of decentralized gossip (protocols/gossip.py)."""

    kind: Literal["none", "clip", "trimmed_mean"] = "none"
    """none: CHOCO's step x_i += gamma sum_j W_ij (xhat_j - xhat_i); clip: ClippedGossip, each
    term clipped to a radius tau_i (He, Karimireddy, Jaggi 2022); trimmed_mean: a step towards
    the coordinate-wise trimmed mean of the own and the neighbours' copies (ignores W)."""
    byzantine: int = Field(1, ge=1, le=MAX_AGENT_INDEX)
    """b, the Byzantine neighbours one agent tolerates. clip: the adaptive tau_i is the
    (b+1)-th largest neighbour distance, so the b farthest get clipped (needs degree >= b + 1);
    trimmed_mean: b values cut from each end of every coordinate (needs degree >= 2b + 1)."""
    clip_tau: float | None = Field(None, gt=0, le=1e30)
    """clip: a fixed radius for every agent instead of the adaptive one."""
    outlier_tau: float | None = Field(None, gt=1, le=1e6)
    """trimmed_mean: cut whole copies instead of values: those of the own and neighbours'
    copies farther from their coordinate-wise median than outlier_tau times the median
    distance between two of them (protocols/aggregation.py `without_outliers`, at most b, the
    farthest), and average the rest. Without outliers the step is towards the plain mean of
    the copies; cutting b values at each end of every coordinate whether or not anyone lied
    mixed 9 points slower on the patrol. None: b values per coordinate."""

    @model_validator(mode="after")
    def _outlier_tau_for_trimming(self) -> RobustConfig:
        if self.outlier_tau is not None and self.kind != "trimmed_mean":
            raise ValueError(
                f"outlier_tau: it sets how many values trimmed_mean cuts; {self.kind} would "
                "ignore it"
            )
        return self

    def neighbours_needed(self) -> int:
        """The fewest neighbours every agent must have for this step (0: no condition):
        clip ranks b + 1 distances (unless its radius is fixed); trimmed_mean with 2b + 1
        neighbours averages at least two of the own and neighbours' values after cutting b at
        each end."""
        if self.kind == "trimmed_mean":
            return 2 * self.byzantine + 1
        if self.kind == "clip" and self.clip_tau is None:
            return self.byzantine + 1
        return 0


class SightingsConfig(Section):
    """Labelled observations relayed between neighbours beside the weights
    (protocols/sightings.py)."""

    per_round: int = Field(0, ge=0, le=64)
    """Sightings each agent sends its neighbours per round (its own newest labels and those it
    received, one class at a time); 0: none, only the weights are shared."""
    hops: int = Field(8, ge=1, le=64)
    """How many hops a sighting travels from the agent that saw it."""
    max_age_ticks: int = Field(240, ge=1, le=MAX_TICK)
    """A sighting older than this (ticks since it was seen) is neither taken nor passed on."""


class LimitsConfig(Section):
    """What one signed delta or snapshot may carry, as multiples of the common initial model
    x0 (protocols/gossip.py `Limits`); past them it is refused OUT_OF_BOUNDS and counted. The
    defaults are far above what honest agents send: on the drone patrol over 2,400 ticks the
    largest delta norm was 0.116 ||x0||, the model's norm grew from 1.00 to 1.05 ||x0|| and its
    largest value from 1.00 to 1.04 max|x0| (BENCHMARKS.md, Hostile peers)."""

    delta_norm: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    """The largest delta norm, times ||x0||."""
    snapshot_norm: float = Field(4.0, gt=0, le=1e6, allow_inf_nan=False)
    """The largest snapshot (a whole public copy) norm, times ||x0||."""
    value: float = Field(16.0, gt=0, le=1e6, allow_inf_nan=False)
    """The largest magnitude of one value of a delta or snapshot, times max|x0|."""
    version_jump: int = Field(2**20, ge=1, le=2**62)
    """How far past the next expected version a message of the same epoch may go (one
    version per gossip round: 2^20 rounds are 12 days at one a second); a sender further
    ahead is taken again after its next restart (a newer epoch)."""


class GossipConfig(Section):
    """Who shares knowledge with whom, how often and how."""

    topology: Literal["decentralized", "coordinator", "isolated", "centralized"] = "decentralized"
    """decentralized = peer-to-peer over `graph`; coordinator = via a coordinator service;
    isolated = no sharing at all; centralized = the upper bound: one model trained on every
    agent's data (all agents in one shard, their gradients averaged every step; no network)."""
    graph: GraphConfig = GraphConfig()
    """Peer graph of decentralized gossip."""
    mode: Literal["sync", "async"] = "sync"
    """sync: deltas of round r are applied at round r+1 after all are delivered (reproducible);
    async: deltas are applied when they land."""
    interval: int = Field(5, ge=1, le=MAX_TICK)
    """Ticks between gossip rounds."""
    gamma: float = Field(0.3, gt=0, le=1)
    """CHOCO-Gossip consensus step size (Koloskova et al. 2019); 1 with no compression is
    plain gossip. A compressor that drops entries (topk, topk_int8) needs a small step: on the
    drone patrol (ring of 12, topk_int8 0.08, a learning step between rounds) gamma 0.5 mixed
    faster over the first 1,000 ticks and then diverged (the consensus distance grew
    geometrically, to NaN by ~6,000 ticks); 0.3 and 0.2 stayed flat over 3,000 ticks and a
    20-minute soak (BENCHMARKS.md, Soak). Dense deltas (none) are stable at 0.5 and above."""
    compression: CompressionConfig = CompressionConfig()
    """Delta compression."""
    robust: RobustConfig = RobustConfig()
    """Byzantine-robust consensus step of decentralized gossip; none = plain CHOCO."""
    sightings: SightingsConfig = SightingsConfig()
    """Labelled observations each agent relays to its neighbours (decentralized gossip of a
    classification world); off by default."""
    max_message_mb: float = Field(4.0, gt=0, le=1024)
    """gRPC message size limit, both directions; larger deltas are sent in chunks."""
    limits: LimitsConfig = LimitsConfig()
    """What one received delta or snapshot may carry (hostile key holders)."""
    coordinator: CoordinatorConfig = CoordinatorConfig()
    """Aggregation at the coordinator (topology: coordinator)."""
    membership: MembershipConfig = MembershipConfig()
    """Failure detection between gossip nodes (protocols/membership.py). The simulated
    runner's shards are supervised by Ray and do not probe each other yet."""
    tls: TlsConfig = TlsConfig()
    """Transport security."""
    key_file: str | None = None
    """File holding the HMAC key that signs every delta (32 bytes or more). Needed when devices
    join (external_peers); without it a run makes a secret key of its own."""
