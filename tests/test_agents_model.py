"""Unit tests of the stacked Yan model (agents/yan/model.py) and the Population around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.config import LearnConfig, ModelConfig
from agents.population import Population
from agents.yan.model import (
    forward_last,
    forward_parallel,
    forward_step,
    init_flat,
    init_state,
    num_params,
    param_specs,
    unflatten,
)

OBS, N_CLASSES = 6, 3


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tensors are tiny: with 2 intra-op threads on a busy 2-core machine every op waits
    on the other core (measured 10-50x slower), so run single-threaded like a shard does."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _perturbed_flat(cfg: ModelConfig, K: int, scale: float = 0.2, seed: int = 0) -> torch.Tensor:
    """K agents' parameters: common init plus per-agent noise, so the agents really differ."""
    g = torch.Generator().manual_seed(seed)
    row = init_flat(cfg, OBS, N_CLASSES, seed=1)
    return row.expand(K, -1) + scale * torch.randn(K, row.numel(), generator=g)


def _run_recurrent(cfg, params, x):
    """x (K, B, T, obs) through forward_step token by token -> logits (K, B, T, n)."""
    K, B, T, _ = x.shape
    state = init_state(cfg, K, B, x.dtype)
    out = []
    for t in range(T):
        logits, state = forward_step(cfg, params, x[:, :, t], state)
        out.append(logits)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize("T", [1, 7, 64])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
def test_parallel_and_recurrent_forms_agree(T, dtype, tol):
    # Prepare: 3 agents with different weights, random inputs, a non-default shape
    cfg = ModelConfig(d_model=16, channels=4, layers=2, slope_window=3)
    params = unflatten(_perturbed_flat(cfg, 3).to(dtype), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(3, 2, T, OBS, generator=torch.Generator().manual_seed(T), dtype=dtype)
    # Execute
    parallel = forward_parallel(cfg, params, x)
    recurrent = _run_recurrent(cfg, params, x)
    # Assert: same logits (f32: rounding only; f64 shows the two forms are the same function)
    assert parallel.shape == (3, 2, T, N_CLASSES)
    torch.testing.assert_close(recurrent, parallel, atol=tol, rtol=0)


def test_forward_last_equals_last_token_of_parallel():
    # Prepare
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 2).double(), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(2, 5, 9, OBS, dtype=torch.float64)
    # Execute / Assert
    torch.testing.assert_close(
        forward_last(cfg, params, x),
        forward_parallel(cfg, params, x)[:, :, -1],
        atol=1e-12,
        rtol=0,
    )


def test_parallel_form_is_causal():
    # Prepare: two inputs that differ only after token 4
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 2), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(2, 1, 10, OBS)
    x2 = x.clone()
    x2[:, :, 5:] += 1.0
    # Execute
    a, b = forward_parallel(cfg, params, x), forward_parallel(cfg, params, x2)
    # Assert: tokens <= 4 unchanged, later tokens changed
    torch.testing.assert_close(a[:, :, :5], b[:, :, :5], atol=1e-6, rtol=0)
    assert (a[:, :, 5:] - b[:, :, 5:]).abs().max() > 1e-3


def test_recurrent_state_size_does_not_grow_with_tokens_seen():
    # Prepare
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 2), param_specs(cfg, OBS, N_CLASSES))
    state = init_state(cfg, 2, 3)
    sizes = []
    # Execute: 1, then 100 more tokens
    for t in range(101):
        _, state = forward_step(cfg, params, torch.randn(2, 3, OBS), state)
        if t in (0, 100):
            sizes.append([tuple(s.shape) for layer in state for s in layer])
    # Assert
    assert sizes[0] == sizes[1]
    assert len(state) == cfg.layers


def test_unflatten_returns_differentiable_views_covering_flat():
    # Prepare
    cfg = ModelConfig()
    specs = param_specs(cfg, OBS, N_CLASSES)
    flat = torch.zeros(2, num_params(specs), requires_grad=True)
    # Execute
    params = unflatten(flat, specs)
    sum(p.sum() * (i + 1) for i, p in enumerate(params.values())).backward()
    # Assert: every element of flat belongs to exactly one named parameter
    assert flat.grad is not None
    assert (flat.grad > 0).all()
    assert sorted(set(flat.grad[0].tolist())) == list(range(1, len(specs) + 1))
    assert params["enc.w"].shape == (2, cfg.d_model, OBS)


def test_init_flat_is_deterministic_in_the_seed():
    cfg = ModelConfig()
    a, b, c = (init_flat(cfg, OBS, N_CLASSES, s) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32


def test_default_parameter_count():
    # 16-dim observations, 5 classes: the figure quoted in the report
    assert num_params(param_specs(ModelConfig(), 16, 5)) == 15397


# ---- Population -----------------------------------------------------------------------------


def _population(K: int, flat: torch.Tensor | None = None, **learn) -> Population:
    pop = Population(ModelConfig(), LearnConfig(**learn), K, OBS, N_CLASSES, seed=1)
    if flat is not None:
        pop.flat.data.copy_(flat)
    return pop


def test_population_starts_from_common_init_and_keeps_flat_layout():
    pop = _population(4)
    assert pop.flat.shape == (4, pop.num_params)
    assert pop.flat.is_contiguous() and pop.flat.dtype == torch.float32
    assert torch.equal(pop.flat[0], pop.flat[3])
    # gossip writes through numpy: memory is shared with the parameter
    pop.flat.data.numpy()[2, 0] = 123.0
    assert pop.flat[2, 0].item() == 123.0


def test_batched_forward_equals_loop_of_single_agents():
    # Prepare: 4 agents with different weights
    K = 4
    flat = _perturbed_flat(ModelConfig(), K)
    pop = _population(K, flat)
    x = torch.randn(K, 3, 8, OBS)
    singles = [_population(1, flat[k : k + 1]) for k in range(K)]
    # Execute
    batched = pop.logits_parallel(x)
    looped = torch.cat([s.logits_parallel(x[k : k + 1]) for k, s in enumerate(singles)])
    steps = pop.step(x[:, 0, 0])
    looped_steps = torch.cat([s.step(x[k : k + 1, 0, 0]) for k, s in enumerate(singles)])
    # Assert
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps, looped_steps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_train_step_equals_loop_of_single_agents(optimizer):
    # Prepare: different weights, batches and masks per agent (agent 2 has a partial mask)
    K = 4
    flat = _perturbed_flat(ModelConfig(), K)
    pop = _population(K, flat, optimizer=optimizer)
    singles = [_population(1, flat[k : k + 1], optimizer=optimizer) for k in range(K)]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(K, 5, 8, OBS, generator=g)
    y = torch.randint(0, N_CLASSES, (K, 5), generator=g)
    mask = torch.ones(K, 5, dtype=torch.bool)
    mask[2, :3] = False
    # Execute: two steps, so Adam's moments matter
    for _ in range(2):
        loss = pop.train_step(x, y, mask)
        loop_loss = torch.cat(
            [
                s.train_step(x[k : k + 1], y[k : k + 1], mask[k : k + 1])
                for k, s in enumerate(singles)
            ]
        )
    # Assert
    torch.testing.assert_close(loss, loop_loss, atol=1e-5, rtol=0)
    looped_flat = torch.cat([s.flat.detach() for s in singles])
    torch.testing.assert_close(pop.flat.detach(), looped_flat, atol=1e-5, rtol=0)
    assert not torch.equal(pop.flat.detach(), flat)  # it did train


def test_agent_with_all_false_mask_is_unchanged_even_with_adam_momentum():
    # Prepare: one step with everyone active, so every agent has nonzero Adam moments
    K = 3
    pop = _population(K, _perturbed_flat(ModelConfig(), K))
    x, y = torch.randn(K, 4, 8, OBS), torch.randint(0, N_CLASSES, (K, 4))
    pop.train_step(x, y, torch.ones(K, 4, dtype=torch.bool))
    before = pop.state_dict()
    mask = torch.ones(K, 4, dtype=torch.bool)
    mask[1] = False
    # Execute
    pop.train_step(x, y, mask)
    # Assert: agent 1's weights and optimizer state bit-identical, the others moved
    after = pop.state_dict()
    for key in ("flat", "opt.m", "opt.v", "opt.t"):
        assert torch.equal(after[key][1], before[key][1]), key
    assert not torch.equal(after["flat"][0], before["flat"][0])
    assert not torch.equal(after["flat"][2], before["flat"][2])


def test_state_dict_round_trip_keeps_the_flat_tensor_object():
    # Prepare
    a, b = _population(2, _perturbed_flat(ModelConfig(), 2)), _population(2)
    a.train_step(
        torch.randn(2, 3, 8, OBS),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.ones(2, 3, dtype=torch.bool),
    )
    a.step(np.ones((2, OBS), np.float32))
    flat_obj = b.flat
    # Execute
    b.load_state_dict(a.state_dict())
    # Assert
    assert b.flat is flat_obj
    assert all(isinstance(v, torch.Tensor) for v in a.state_dict().values())
    x = np.random.default_rng(0).standard_normal((2, OBS)).astype(np.float32)
    torch.testing.assert_close(a.step(x), b.step(x), atol=0, rtol=0)


def test_reset_state_restarts_the_stream():
    pop = _population(2, _perturbed_flat(ModelConfig(), 2))
    x = np.random.default_rng(0).standard_normal((5, 2, OBS)).astype(np.float32)
    first = [pop.step(x[t]) for t in range(5)]
    pop.reset_state()
    second = [pop.step(x[t]) for t in range(5)]
    torch.testing.assert_close(torch.stack(first), torch.stack(second), atol=0, rtol=0)
    assert not torch.equal(first[0], first[4])  # the state does carry history
