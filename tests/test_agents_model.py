"""Unit tests of the stacked Yan model (agents/yan/model.py) and the Population around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from float_bounds import (
    U32,
    U64,
    assert_close_rel,
    assert_took_step,
    chain_bound,
    model_stages,
    model_terms,
    reference_step,
    snapshot,
)

from agents.config import LearnConfig, ModelConfig
from agents.population import CHUNKWISE_FROM_T, Population
from agents.yan import model as yan_model
from agents.yan.model import (
    forward_chunkwise,
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
SMALL = ModelConfig(d_model=16, channels=4, layers=2, slope_window=3)
# the same with selective activation (2 of 4 FFN groups per token; no noise outside training)
SMALL_SELECTIVE = ModelConfig(
    d_model=16, channels=4, layers=2, slope_window=3, ffn_groups=4, ffn_top_k=2
)
# the smallest model that still has several channels and layers: the recurrent form with
# autograd over 1000 tokens is the slow part of this file
TINY = ModelConfig(d_model=8, channels=2, layers=2, slope_window=3)


def _perturbed_flat(cfg: ModelConfig, K: int, scale: float = 0.2, seed: int = 0) -> torch.Tensor:
    """K agents' parameters: common init plus per-agent noise, so the agents really differ."""
    g = torch.Generator().manual_seed(seed)
    row = init_flat(cfg, OBS, N_CLASSES, seed=1)
    return row.expand(K, -1) + scale * torch.randn(K, row.numel(), generator=g)


def _run_recurrent(cfg, params, x, state=None):
    """x (K, B, T, obs) through forward_step token by token -> logits (K, B, T, n), state."""
    K, B, T, _ = x.shape
    state = init_state(cfg, K, B, x.dtype) if state is None else state
    out = []
    for t in range(T):
        logits, state = forward_step(cfg, params, x[:, :, t], state)
        out.append(logits)
    return torch.stack(out, dim=2), state


def _forms(cfg, T, chunks, parallel=True):
    """name -> fn(params, x) -> logits, for every form of the model to compare."""
    forms = {"recurrent": lambda p, x: _run_recurrent(cfg, p, x)[0]}
    if parallel:
        forms["parallel"] = lambda p, x: forward_parallel(cfg, p, x)
    for c in chunks:
        forms[f"chunk{c}"] = lambda p, x, c=c: forward_chunkwise(cfg, p, x, chunk=c)[0]
    return forms


def _outputs_and_grads(cfg, form, flat, x, r):
    """Logits of `form` and the gradients of sum(logits * r) w.r.t. flat (K, P) and x."""
    flat = flat.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    out = form(unflatten(flat, param_specs(cfg, OBS, N_CLASSES)), x)
    (out * r).sum().backward()
    return out.detach(), flat.grad, x.grad


TINY_SELECTIVE = ModelConfig(
    d_model=8, channels=2, layers=2, slope_window=3, ffn_groups=4, ffn_top_k=2
)


# The 1000-token case stays out of `make test-numerics`: autograd through 1000 recurrent steps
# of tiny ops took 40-70 s at 2 threads on the busy 2-core machine, and its errors sat below
# 0.04 of the bound in every kernel family (the 64-token case, at 0.16, is the tight one).
NUMERICS = pytest.mark.numerics


@pytest.mark.parametrize(
    ("T", "chunks"),
    [
        pytest.param(1, (1, 64), marks=NUMERICS),
        pytest.param(7, (1, 3, 64), marks=NUMERICS),
        pytest.param(64, (5, 64), marks=NUMERICS),
        (1000, (64, 300)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("selective", [False, True], ids=["dense", "selective"])
def test_parallel_chunkwise_and_recurrent_forms_agree_in_outputs_and_gradients(
    selective, dtype, T, chunks
):
    """Each form against the recurrent one, within twice one path's rounding bound
    (tests/float_bounds.py chain_bound, relative to the max norm): the logits sum over T tokens
    of a sequence, a gradient w.r.t. a shared weight over all B*T; in float64 the same bound at
    u = 2^-53 shows the forms are the same function. Measured in float32, against a float64
    reference, each form's own gradient error reaches 2.4e-5 (T=64) and 8.3e-5 (T=1000,
    recurrent) of the max norm: the bound is 1.1e-4 and 4.3e-4."""
    # Prepare: 2 agents with different weights, random inputs and output weights r; chunk
    # sizes that divide T, do not (3 in 7, 5 in 64, 300 in 1000) and exceed it (64 > 7).
    # T=1000 runs the smallest model and skips nothing but speed: the recurrent form with
    # autograd over 1000 tokens is the slow part of this file.
    if T == 1000:
        cfg = TINY_SELECTIVE if selective else TINY
        if selective and dtype == torch.float64:
            pytest.skip("time budget: the float64 1000-token case runs on the dense model")
    else:
        cfg = SMALL_SELECTIVE if selective else SMALL
    g = torch.Generator().manual_seed(T)
    flat = _perturbed_flat(cfg, 2).to(dtype)
    x = torch.randn(2, 2, T, OBS, generator=g, dtype=dtype)
    r = torch.randn(2, 2, T, N_CLASSES, generator=g, dtype=dtype)
    # Execute
    results = {
        name: _outputs_and_grads(cfg, form, flat, x, r)
        for name, form in _forms(cfg, T, chunks).items()
    }
    # Assert: every form matches the recurrent one in logits, d/dflat and d/dx
    u = U64 if dtype == torch.float64 else U32
    logits_rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, T), u)
    grad_rel = 2 * chain_bound(model_stages(cfg, backward=True), model_terms(cfg, 2 * T), u)
    reference = results.pop("recurrent")
    for name, got in results.items():
        for what, a, b, rel in zip(
            ("logits", "grad flat", "grad x"),
            got,
            reference,
            (logits_rel, grad_rel, grad_rel),
            strict=True,
        ):
            assert_close_rel(a, b, rel, f"{name} vs recurrent, T={T}, {what}")


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("T", "dtype", "u"), [(1, torch.float32, U32), (64, torch.float32, U32),
                          (64, torch.float64, U64)],
)  # fmt: skip
def test_parallel_and_recurrent_forms_agree_on_the_default_shape(T, dtype, u):
    # Prepare: 3 agents with different weights, random inputs
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 3).to(dtype), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(3, 2, T, OBS, generator=torch.Generator().manual_seed(T), dtype=dtype)
    # Execute
    parallel = forward_parallel(cfg, params, x)
    recurrent, _ = _run_recurrent(cfg, params, x)
    # Assert: same logits (f32: rounding only; f64 shows the two forms are the same function),
    # within twice one path's forward bound (tests/float_bounds.py)
    assert parallel.shape == (3, 2, T, N_CLASSES)
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, T), u)
    assert_close_rel(recurrent, parallel, rel, f"recurrent vs parallel, T={T}")


@pytest.mark.numerics
@pytest.mark.parametrize("cfg", [SMALL, SMALL_SELECTIVE], ids=["dense", "selective"])
def test_chunkwise_continues_from_a_state_and_hands_over_to_the_recurrent_form(cfg):
    # Prepare: a 50-token stream, prefilled in two uneven pieces, then decoded for 6 tokens
    params = unflatten(_perturbed_flat(cfg, 2), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(2, 3, 56, OBS, generator=torch.Generator().manual_seed(5))
    # Execute
    whole, whole_state = forward_chunkwise(cfg, params, x[:, :, :50], chunk=8)
    first, state = forward_chunkwise(cfg, params, x[:, :, :21], chunk=8)
    second, state = forward_chunkwise(cfg, params, x[:, :, 21:50], state, chunk=16)
    decoded, _ = _run_recurrent(cfg, params, x[:, :, 50:], state)
    recurrent, _ = _run_recurrent(cfg, params, x)
    # Assert: pieces == one call; its final state == the recurrent one; decoding continues it.
    # Within twice one path's forward bound over the 56 tokens (tests/float_bounds.py),
    # relative to each tensor's max norm: h grows to ~|q| / (1 - lambda), up to 256 |q|.
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 56))
    assert_close_rel(torch.cat([first, second], dim=2), whole, rel, "two pieces vs one call")
    _, rec_state_50 = _run_recurrent(cfg, params, x[:, :, :50])
    for i, ((v_a, h_a), (v_b, h_b)) in enumerate(zip(whole_state, rec_state_50, strict=True)):
        assert v_a.shape == v_b.shape and h_a.shape == h_b.shape
        assert_close_rel(v_a, v_b, rel, f"layer {i} v ring vs recurrent")
        assert_close_rel(h_a, h_b, rel, f"layer {i} h vs recurrent")
    assert_close_rel(decoded, recurrent[:, :, 50:], rel, "decoding after the prefill")


def test_chunkwise_runs_16k_tokens_without_a_T_by_T_matrix(monkeypatch):
    # Prepare: the parallel form's (C, 2, T, T) builder is made to fail if anything calls it
    def no_T_by_T(*args):
        raise AssertionError("the chunkwise form must not build the T x T mixing matrix")

    monkeypatch.setattr(yan_model, "mixing_matrices", no_T_by_T)
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 1), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(1, 1, 16384, OBS, generator=torch.Generator().manual_seed(0))
    # Execute
    with torch.no_grad():
        logits, state = forward_chunkwise(cfg, params, x)
        tail, _ = forward_chunkwise(cfg, params, x[:, :, -100:], state)
    # Assert: finite, and the state after 16k tokens still has the O(1) recurrent shape
    assert logits.shape == (1, 1, 16384, N_CLASSES)
    assert torch.isfinite(logits).all() and torch.isfinite(tail).all()
    assert [tuple(t.shape) for t in state[0]] == [tuple(t.shape) for t in init_state(cfg, 1, 1)[0]]


@pytest.mark.numerics
def test_forward_last_equals_last_token_of_parallel():
    # Prepare
    cfg = ModelConfig()
    params = unflatten(_perturbed_flat(cfg, 2).double(), param_specs(cfg, OBS, N_CLASSES))
    x = torch.randn(2, 5, 9, OBS, dtype=torch.float64)
    # Execute / Assert: in float64, twice one path's forward bound at u = 2^-53
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 9), U64)
    last, parallel = forward_last(cfg, params, x), forward_parallel(cfg, params, x)[:, :, -1]
    assert_close_rel(last, parallel, rel, "forward_last vs parallel")


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
    assert params["enc.vector.w"].shape == (2, cfg.d_model, OBS)


def test_init_flat_is_deterministic_in_the_seed():
    cfg = ModelConfig()
    a, b, c = (init_flat(cfg, OBS, N_CLASSES, s) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.float32


def test_default_parameter_count():
    # 16-dim observations, 5 classes: the figure quoted in docs/model.md. Per agent:
    # encoder 32*16 + modality 32; per block norms 2*32, w_in 4*32*8, w_out 32*64, FFN
    # 64*32+64+32*64+32; final norm 32; class head 5*32+5; next-step head 16*32+16.
    block = 2 * 32 + 4 * 32 * 8 + 32 * 64 + (64 * 32 + 64 + 32 * 64 + 32)
    expected = 32 * 16 + 32 + 2 * block + 32 + (5 * 32 + 5) + (16 * 32 + 16)
    assert num_params(param_specs(ModelConfig(), 16, 5)) == expected == 15925


# ---- Population -----------------------------------------------------------------------------


def _population(
    K: int, flat: torch.Tensor | None = None, cfg: ModelConfig | None = None, **learn
) -> Population:
    cfg = ModelConfig() if cfg is None else cfg
    pop = Population(cfg, LearnConfig(**learn), K, OBS, N_CLASSES, seed=1)
    if flat is not None:
        pop.flat.data.copy_(flat)
    return pop


# selective FFN without router noise: the noise is drawn for the whole stack at once, so with
# noise a batched step and a loop of single agents draw different numbers
SELECTIVE_NO_NOISE = ModelConfig(ffn_groups=4, ffn_top_k=2, router_noise_anneal_steps=0)
POP_CFGS = pytest.mark.parametrize(
    "cfg", [ModelConfig(), SELECTIVE_NO_NOISE], ids=["dense", "selective"]
)


def test_population_starts_from_common_init_and_keeps_flat_layout():
    pop = _population(4)
    assert pop.flat.shape == (4, pop.num_params)
    assert pop.flat.is_contiguous() and pop.flat.dtype == torch.float32
    assert torch.equal(pop.flat[0], pop.flat[3])
    # gossip writes through numpy: memory is shared with the parameter
    pop.flat.data.numpy()[2, 0] = 123.0
    assert pop.flat[2, 0].item() == 123.0


@pytest.mark.numerics
@POP_CFGS
def test_batched_forward_equals_loop_of_single_agents(cfg):
    # Prepare: 4 agents with different weights
    K = 4
    flat = _perturbed_flat(cfg, K)
    pop = _population(K, flat, cfg)
    x = torch.randn(K, 3, 8, OBS)
    singles = [_population(1, flat[k : k + 1], cfg) for k in range(K)]
    # Execute
    batched = pop.logits_parallel(x)
    looped = torch.cat([s.logits_parallel(x[k : k + 1]) for k, s in enumerate(singles)])
    steps = pop.step(x[:, 0, 0])
    looped_steps = torch.cat([s.step(x[k : k + 1, 0, 0]) for k, s in enumerate(singles)])
    # Assert: K = 4 and K = 1 take other matmul paths (agent_spans): within twice one path's
    # forward bound (tests/float_bounds.py)
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 8))
    assert_close_rel(batched, looped, rel, "batched vs looped logits_parallel")
    assert_close_rel(steps, looped_steps, rel, "batched vs looped step")


@pytest.mark.numerics
@POP_CFGS
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_train_step_equals_loop_of_single_agents(optimizer, cfg):
    """Every agent's step, in the batched population and alone, is the float64 reference step
    (tests/float_bounds.py: the loss from its definition, textbook Adam or SGD) up to float32
    rounding. Not batched == loop to a flat 1e-5: where a gradient is near 0 Adam turns its
    last bit into a step of +-lr (an AVX-512 machine differed by 3.8e-4 in 30 weights)."""
    # Prepare: different weights, batches and masks per agent: agent 2 has a partial mask,
    # and at the second step agent 1 has no example at all (it must not move)
    K, B, T = 4, 5, 8
    flat = _perturbed_flat(cfg, K)
    pop = _population(K, flat, cfg, optimizer=optimizer)
    singles = [_population(1, flat[k : k + 1], cfg, optimizer=optimizer) for k in range(K)]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(K, B, T, OBS, generator=g)
    y = torch.randint(0, N_CLASSES, (K, B), generator=g)
    mask = torch.ones(K, B, dtype=torch.bool)
    mask[2, :3] = False
    second = mask.clone()
    second[1] = False
    # the float32 gradient's error, relative to its max norm (float_bounds.chain_bound)
    rho = chain_bound(model_stages(cfg, backward=True), model_terms(cfg, B * T))
    # Execute / Assert: two steps, so Adam's moments matter; every step checked from the
    # state it started from
    for step, m in enumerate([mask, second], start=1):
        before = snapshot(pop)
        ref = reference_step(pop, before, x, y, m)
        assert_took_step(pop, before, pop.train_step(x, y, m), ref, rho, f"batched, step {step}")
        for k, single in enumerate(singles):
            xk, yk, mk = x[k : k + 1], y[k : k + 1], m[k : k + 1]
            before = snapshot(single)
            ref = reference_step(single, before, xk, yk, mk)
            loss = single.train_step(xk, yk, mk)
            assert_took_step(single, before, loss, ref, rho, f"agent {k} alone, step {step}")
    assert not torch.equal(pop.flat.detach(), flat)  # it did train


@pytest.mark.parametrize(
    "cfg", [ModelConfig(), ModelConfig(ffn_groups=4, ffn_top_k=2)], ids=["dense", "selective"]
)
def test_agent_with_all_false_mask_is_unchanged_even_with_adam_momentum(cfg):
    # Prepare: one step with everyone active, so every agent has nonzero Adam moments
    K = 3
    pop = _population(K, _perturbed_flat(cfg, K), cfg)
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


@pytest.mark.numerics
def test_logits_parallel_switches_to_chunkwise_for_long_windows(monkeypatch):
    # Prepare: a window just past the switch, and the parallel form's result as reference
    pop = _population(2, _perturbed_flat(ModelConfig(), 2))
    x = torch.randn(2, 1, CHUNKWISE_FROM_T + 9, OBS)
    expected = forward_parallel(pop.model_cfg, unflatten(pop.flat.detach(), pop.specs), x)

    def no_T_by_T(*args):
        raise AssertionError("long windows must not build the T x T mixing matrix")

    monkeypatch.setattr(yan_model, "mixing_matrices", no_T_by_T)
    # Execute
    got = pop.logits_parallel(x)
    # Assert: the chunkwise form, within twice one path's forward bound (tests/float_bounds.py)
    rel = 2 * chain_bound(model_stages(pop.model_cfg), model_terms(pop.model_cfg, x.shape[2]))
    assert_close_rel(got, expected, rel, "chunkwise vs parallel")


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
