"""Training and evaluation cut into groups of agents (agents/population.py AGENT_CHUNK_TOKENS)
give what one pass over all K agents gives.

Each agent's arithmetic is its own in both (matmuls batched over the agent dim, per-agent
reductions), and on this machine the bits agree. But a group is a batched matmul over fewer
matrices, and nothing promises a BLAS the same kernel, blocking or thread split for 3 matrices
as for 10 (MKL documents reproducibility only for identical calls), so the tests hold each
path to the float64 reference within float32's bounds (tests/float_bounds.py), as any two
paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from float_bounds import (
    assert_close_rel,
    assert_took_step,
    chain_bound,
    model_stages,
    model_terms,
    reference_step,
    snapshot,
)

import agents.population as population
from agents.config import LearnConfig, ModelConfig
from agents.population import Population, agent_spans


def test_agent_spans_cover_every_agent_once() -> None:
    tokens = population.AGENT_CHUNK_TOKENS // 3  # 3 agents a group
    assert agent_spans(11, tokens) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    # never one agent alone out of several (it would take another matmul path, other bits)
    assert agent_spans(10, tokens) == [(0, 3), (3, 6), (6, 10)]
    assert agent_spans(5, 10 * population.AGENT_CHUNK_TOKENS) == [(0, 2), (2, 5)]
    assert agent_spans(1, tokens) == [(0, 1)]


def _batch(K: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((K, 16, 8, 6)).astype(np.float32)
    y = rng.integers(0, 5, (K, 16))
    mask = rng.random((K, 16)) < 0.7
    mask[1] = False  # an agent with no labelled example stays untouched (without ssl)
    u = rng.standard_normal((K, 4, 8, 6)).astype(np.float32)
    return x, y, mask, u


@pytest.mark.numerics
@pytest.mark.parametrize("ssl", [0.0, 0.3])
def test_grouped_training_steps_equal_one_pass(monkeypatch, ssl: float) -> None:
    # Prepare: two populations with the same init; one runs in groups of 3 agents.
    K, B, T = 10, 16, 8
    pops = [Population(ModelConfig(), LearnConfig(), K, 6, 5, seed=2) for _ in range(2)]
    x, y, mask, u = (torch.as_tensor(a) for a in _batch(K))
    unlabeled = u if ssl else None
    # the float32 gradient's error, relative to its max norm (float_bounds.chain_bound)
    rho = chain_bound(model_stages(ModelConfig(), backward=True), model_terms(ModelConfig(), B * T))
    for pop, tokens in zip(pops, [10**9, 3 * (16 * 8 + (4 * 8 if ssl else 0))], strict=True):
        # the second in groups of 3, 3, 4 agents
        monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", tokens)
        # Execute / Assert: three steps (Adam moments in play), each the float64 reference
        # step from the state it started from
        for step in range(1, 4):
            before = snapshot(pop)
            ref = reference_step(pop, before, x, y, mask, unlabeled, ssl)
            loss = pop.train_step(x, y, mask, unlabeled=unlabeled, ssl_weight=ssl)
            assert_took_step(pop, before, loss, ref, rho, f"{tokens} tokens a group, step {step}")
    assert pops[0]._grad is None and pops[1]._grad is not None  # one pass vs groups


@pytest.mark.numerics
def test_grouped_evaluation_equals_one_pass(monkeypatch) -> None:
    K = 7
    cfg = ModelConfig()
    pop = Population(cfg, LearnConfig(), K, 6, 5, seed=2)
    pop.flat.data += 0.01 * torch.randn(pop.flat.shape, generator=torch.Generator().manual_seed(0))
    x = torch.randn(K, 5, 8, 6, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", 10**9)
    whole = pop.logits_parallel(x)
    monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", 2 * 5 * 8)  # groups of 2, 2, 3
    grouped = pop.logits_parallel(x)
    # each within float32's forward bound of the other (twice one path's: both round)
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 8))
    assert_close_rel(grouped, whole, rel, "groups of 2, 2, 3 vs one pass")
