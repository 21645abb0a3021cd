"""Training and evaluation cut into groups of agents (agents/population.py AGENT_CHUNK_TOKENS)
give the same bits as one pass over all K agents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("ssl", [0.0, 0.3])
def test_grouped_training_steps_equal_one_pass(monkeypatch, ssl: float) -> None:
    # Prepare: two populations with the same init; one runs in groups of 3 agents.
    K = 10
    pops = [Population(ModelConfig(), LearnConfig(), K, 6, 5, seed=2) for _ in range(2)]
    x, y, mask, u = _batch(K)
    losses = []
    for pop, tokens in zip(pops, [10**9, 3 * (16 * 8 + (4 * 8 if ssl else 0))], strict=True):
        # the second in groups of 3, 3, 4 agents
        monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", tokens)
        # Execute: three steps (Adam moments in play)
        for _ in range(3):
            out = pop.train_step(x, y, mask, unlabeled=u if ssl else None, ssl_weight=ssl)
        losses.append(out)
    # Assert: bit for bit
    assert pops[0]._grad is None and pops[1]._grad is not None  # one pass vs groups
    assert torch.equal(losses[0].nan_to_num(-1.0), losses[1].nan_to_num(-1.0))
    assert torch.equal(pops[0].flat, pops[1].flat)
    assert torch.equal(pops[0].optimizer.v, pops[1].optimizer.v)


def test_grouped_evaluation_equals_one_pass(monkeypatch) -> None:
    K = 7
    pop = Population(ModelConfig(), LearnConfig(), K, 6, 5, seed=2)
    pop.flat.data += 0.01 * torch.randn(pop.flat.shape, generator=torch.Generator().manual_seed(0))
    x = torch.randn(K, 5, 8, 6, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", 10**9)
    whole = pop.logits_parallel(x)
    monkeypatch.setattr(population, "AGENT_CHUNK_TOKENS", 2 * 5 * 8)  # groups of 2, 2, 3
    assert torch.equal(pop.logits_parallel(x), whole)
