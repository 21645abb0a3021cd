"""Typed configs of knowledge exchange (no grpc import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from swarm._config import Section


class GraphConfig(Section):
    """The gossip graph over agents (networkx)."""

    kind: Literal["ring", "torus", "random_regular", "erdos_renyi", "small_world", "complete"] = (
        "ring"
    )
    """Graph family."""
    degree: int = Field(4, ge=1)
    """Degree of random_regular; neighbours per node (k) of small_world."""
    p: float = Field(0.2, ge=0, le=1)
    """Edge probability of erdos_renyi; rewiring probability of small_world."""


class CompressionConfig(Section):
    """How a knowledge delta is squeezed before it goes on the wire."""

    kind: Literal["none", "topk", "int8", "topk_int8"] = "topk_int8"
    """none = dense fp32; topk keeps the largest |entries|; int8 quantizes; topk_int8 both."""
    ratio: float = Field(0.1, gt=0, le=1)
    """Fraction of entries top-k keeps."""


class GossipConfig(Section):
    """Who shares knowledge with whom, how often and how."""

    topology: Literal["decentralized", "coordinator", "isolated"] = "decentralized"
    """decentralized = peer-to-peer over `graph`; coordinator = via a coordinator service;
    isolated = no sharing at all."""
    graph: GraphConfig = GraphConfig()
    """Peer graph of decentralized gossip."""
    mode: Literal["sync", "async"] = "sync"
    """sync: deltas of round r are applied at round r+1 after all are delivered (reproducible);
    async: deltas are applied when they land."""
    interval: int = Field(5, ge=1)
    """Ticks between gossip rounds."""
    gamma: float = Field(0.5, gt=0, le=1)
    """CHOCO-Gossip consensus step size (Koloskova et al. 2019); 1 with no compression is
    plain gossip."""
    compression: CompressionConfig = CompressionConfig()
    """Delta compression."""
    max_message_mb: float = Field(4.0, gt=0, le=1024)
    """gRPC message size limit, both directions."""
