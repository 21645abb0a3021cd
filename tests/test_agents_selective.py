"""Unit tests of selective activation (agents/yan/selective.py) and its use in the Population."""

from __future__ import annotations

from dataclasses import replace

import pydantic
import pytest
import torch
from float_bounds import assert_close_rel, chain_bound, model_stages, model_terms

from agents.config import LearnConfig, ModelConfig
from agents.population import Population
from agents.yan import selective
from agents.yan.model import (
    forward_chunkwise,
    forward_last,
    forward_parallel,
    forward_step,
    init_flat,
    init_state,
    param_specs,
    unflatten,
)
from agents.yan.params import as_model
from agents.yan.selective import (
    LOAD_BALANCE_ALPHA,
    RouteRecord,
    Routing,
    cost_per_token,
    gather_groups,
    load_balance_loss,
    noise_scale,
    route,
    selective_stats,
)

OBS, N_CLASSES = 6, 3
SHAPE = {"d_model": 16, "channels": 4, "layers": 2, "slope_window": 3}  # F = 32 neurons


@pytest.fixture(autouse=True)
def _fixed_seed():
    """The global seed makes every random input here the same on every run (one torch thread
    comes from tests/conftest.py)."""
    torch.manual_seed(0)


def _params(cfg: ModelConfig, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """K agents' parameters: common init plus per-agent noise, so routers are not all-zero."""
    g = torch.Generator().manual_seed(seed)
    row = init_flat(cfg, OBS, N_CLASSES, seed=1)
    flat = row.expand(K, -1) + 0.3 * torch.randn(K, row.numel(), generator=g)
    return unflatten(flat, param_specs(cfg, OBS, N_CLASSES))


# ---- k = G is the dense FFN ------------------------------------------------------------------


@pytest.mark.numerics
def test_all_groups_selected_equals_the_dense_model_exactly_in_outputs_and_gradients():
    # Prepare: a selective model with k = G and a nonzero, noisy router, and the dense model
    # holding the same weights minus the router
    sel_cfg = ModelConfig(**SHAPE, ffn_groups=4, ffn_top_k=4)
    dense_cfg = ModelConfig(**SHAPE)
    sel = {n: p.detach().clone().requires_grad_(True) for n, p in _params(sel_cfg, 2).items()}
    dense = {n: p.detach().clone().requires_grad_(True) for n, p in sel.items() if n in
             dict(param_specs(dense_cfg, OBS, N_CLASSES))}  # fmt: skip
    x = torch.randn(2, 3, 9, OBS)
    r = torch.randn(2, 3, 9, N_CLASSES)
    routing = Routing(noise_scale=torch.ones(2), generator=torch.Generator().manual_seed(0))
    # Execute
    out_sel = forward_parallel(sel_cfg, sel, x, routing)
    out_dense = forward_parallel(dense_cfg, dense, x)
    (out_sel * r).sum().backward()
    (out_dense * r).sum().backward()
    # Assert: bit-identical logits and gradients of every dense parameter; the router learns.
    # Bits, on any machine: both run the same matmuls on the same shapes, and the selective
    # path only adds exact operations (a gate of exactly 1.0, s - s = 0, a multiply by 1).
    assert torch.equal(out_sel, out_dense)
    for name, p in dense.items():
        if p.grad is None:  # the next-step head: classification does not read it
            assert sel[name].grad is None, name
            continue
        assert torch.equal(sel[name].grad, p.grad), name
    assert sel["blocks.0.ffn.w_gate"].grad.abs().sum() > 0


@pytest.mark.numerics
def test_all_groups_selected_recurrent_step_equals_the_dense_step():
    # Prepare
    sel_cfg = ModelConfig(**SHAPE, ffn_groups=4, ffn_top_k=4)
    dense_cfg = ModelConfig(**SHAPE)
    sel = _params(sel_cfg, 2)
    dense = {n: sel[n] for n, _ in param_specs(dense_cfg, OBS, N_CLASSES)}
    x = torch.randn(2, 3, OBS, generator=torch.Generator().manual_seed(0))
    # Execute
    a, _ = forward_step(sel_cfg, sel, x, init_state(sel_cfg, 2, 3))
    b, _ = forward_step(dense_cfg, dense, x, init_state(dense_cfg, 2, 3))
    # Assert: equal up to float32 summation order (the gathered groups come in score order;
    # measured up to 2.4e-6 over 200 random inputs): twice one path's forward bound
    rel = 2 * chain_bound(model_stages(dense_cfg), model_terms(dense_cfg, 1))
    assert_close_rel(a, b, rel, "all groups gathered vs dense step")


# ---- density, gather, agreement of the forms -------------------------------------------------


@pytest.mark.parametrize(("G", "k"), [(4, 1), (4, 2), (8, 3), (2, 2)])
def test_measured_activation_density_is_k_over_G(G, k):
    # Prepare
    cfg = ModelConfig(**SHAPE, ffn_groups=G, ffn_top_k=k)
    routing = Routing(noise_scale=torch.ones(3), generator=torch.Generator().manual_seed(1))
    # Execute
    forward_parallel(cfg, _params(cfg, 3), torch.randn(3, 4, 10, OBS), routing)
    stats = selective_stats(cfg, routing.records)
    # Assert: one record per layer, each token uses exactly k groups of F / G neurons
    assert len(routing.records) == cfg.layers
    torch.testing.assert_close(stats["select/density"], torch.full((3,), k / G))
    assert ((torch.stack([r.selected.sum(1) for r in routing.records])) == k).all()
    torch.testing.assert_close(stats["select/load"].sum(-1), torch.ones(3))


def test_gather_reads_only_the_selected_groups():
    # Prepare: 3 agents, 5 tokens, 4 groups of 8 neurons, 2 chosen per token
    K, D, Fw, G, k = 3, 16, 32, 4, 2
    w1, b1, w2 = torch.randn(K, Fw, D), torch.randn(K, Fw), torch.randn(K, D, Fw)
    top = torch.stack([torch.randperm(G)[:k] for _ in range(K * 5)]).view(K, 5, k).transpose(1, 2)
    # Execute
    w1g, b1g, w2g = gather_groups(w1, b1, w2, top, G)
    # Assert: only k blocks of Fg rows per token, and they are the chosen ones
    assert w1g.shape == (K, 5, k, Fw // G, D) and w2g.shape == (K, 5, k, Fw // G, D)
    assert b1g.shape == (K, 5, k, Fw // G)
    a, t, j = 2, 4, 1
    g = int(top[a, j, t])
    assert torch.equal(w1g[a, t, j], w1[a, g * 8 : (g + 1) * 8])
    assert torch.equal(w2g[a, t, j], w2[a, :, g * 8 : (g + 1) * 8].T)


@pytest.mark.numerics
def test_recurrent_ffn_never_reads_unselected_weights_and_agrees_with_parallel_ffn():
    # Prepare: per agent one token; poison every group it does not select with NaN (a
    # multiply-by-zero implementation would turn the output into NaN)
    cfg = ModelConfig(**SHAPE, ffn_groups=4, ffn_top_k=2)
    ffn = as_model(_params(cfg, 3)).blocks[1].ffn
    x = torch.randn(3, cfg.d_model, 1)
    top, _ = route(*selective.router(ffn), x, 2, None)
    poisoned = {}
    Fg = 8
    for name in ("w1", "b1", "w2"):
        w = getattr(ffn, name).detach().clone()
        for a in range(3):
            for g in set(range(4)) - set(top[a, :, 0].tolist()):
                rows = slice(g * Fg, (g + 1) * Fg)
                if name == "w2":
                    w[a, :, rows] = float("nan")
                else:
                    w[a, rows] = float("nan")
        poisoned[name] = w
    # Execute
    with torch.no_grad():
        step = selective.ffn_step(replace(ffn, **poisoned), x, 2)
        parallel = selective.ffn_parallel(ffn, x, 2, None)
    # Assert
    assert torch.isfinite(step).all()
    # two roundings stages (w1, w2) of sums over D and F terms, twice (both paths)
    rel = 2 * chain_bound(2, cfg.ffn_mult * cfg.d_model)
    assert_close_rel(step, parallel, rel, "gathered vs masked FFN")


@pytest.mark.numerics
def test_noise_free_selective_model_forms_agree():
    # Prepare (gradients are compared in tests/test_agents_model.py; here the selections)
    cfg = ModelConfig(**SHAPE, ffn_groups=4, ffn_top_k=2)
    params = _params(cfg, 2)
    x = torch.randn(2, 2, 12, OBS)
    # Execute
    parallel = forward_parallel(cfg, params, x)
    chunkwise, _ = forward_chunkwise(cfg, params, x, chunk=5)
    state, steps = init_state(cfg, 2, 2), []
    for t in range(12):
        logits, state = forward_step(cfg, params, x[:, :, t], state)
        steps.append(logits)
    # Assert: within twice one path's forward bound (tests/float_bounds.py). The forms pick
    # the same groups: the k-th and (k+1)-th gate scores of any token here are at least 5e-3
    # of their scale apart, far above the scores' rounding.
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 12))
    assert_close_rel(chunkwise, parallel, rel, "chunkwise vs parallel")
    assert_close_rel(torch.stack(steps, 2), parallel, rel, "recurrent vs parallel")


# ---- load balance, annealing, costs ----------------------------------------------------------


def test_load_balance_loss_equals_hand_computed_value():
    # Prepare: 1 agent, G = 2 groups, k = 1, 2 tokens, both routed to group 0:
    # f = (1, 0), P = mean((0.7, 0.3), (0.6, 0.4)) = (0.65, 0.35)
    # loss = alpha * G * (1 * 0.65 + 0 * 0.35) = 0.01 * 2 * 0.65 = 0.013
    skewed = RouteRecord(
        selected=torch.tensor([[[True, True], [False, False]]]),  # (K=1, G=2, N=2)
        probs=torch.tensor([[[0.7, 0.6], [0.3, 0.4]]]),
    )
    # 1 agent, G = 4, k = 2, 2 tokens using groups {0, 1} and {0, 2}: f = (2, 1, 1, 0) / 4;
    # uniform P = 1/4: loss = 0.01 * 4 * (1/4) * (2 + 1 + 1 + 0) / 4 = 0.01 (the balanced value)
    sel = torch.zeros(1, 4, 2, dtype=torch.bool)
    sel[0, [0, 1], 0] = True
    sel[0, [0, 2], 1] = True
    topk = RouteRecord(selected=sel, probs=torch.full((1, 4, 2), 0.25))
    # Execute / Assert: per record, and summed over layers
    assert LOAD_BALANCE_ALPHA == 1e-2
    torch.testing.assert_close(load_balance_loss([skewed]), torch.tensor([0.013]))
    torch.testing.assert_close(load_balance_loss([topk]), torch.tensor([0.01]))
    torch.testing.assert_close(load_balance_loss([skewed, topk]), torch.tensor([0.023]))


def test_noise_scale_anneals_from_one_to_zero_over_each_agents_steps():
    steps = torch.tensor([0.0, 125.0, 250.0, 500.0, 900.0])
    torch.testing.assert_close(noise_scale(steps, 500), torch.tensor([1.0, 0.75, 0.5, 0.0, 0.0]))
    assert (noise_scale(steps, 0) == 0).all()


def test_untrained_router_picks_randomly_under_noise_and_deterministically_without():
    # Prepare: an all-zero router (its init) over 2000 tokens of 2 agents, G = 4, k = 2;
    # agent 0 at noise scale 1 (first step), agent 1 at 0 (annealed)
    K, D, G, N = 2, 16, 4, 2000
    zeros = torch.zeros(K, G, D)
    x = torch.randn(K, D, N)
    routing = Routing(noise_scale=torch.tensor([1.0, 0.0]), generator=torch.Generator())
    # Execute
    top, _ = route(zeros, zeros, x, 2, routing)
    sel = torch.zeros(K, G, N, dtype=torch.bool).scatter_(1, top, True)
    load = sel.float().mean(-1)  # (K, G) fraction of tokens using each group
    # Assert: random at first (every group about half the tokens), ties to groups 0, 1 after
    assert ((load[0] - 0.5).abs() < 0.05).all()
    assert torch.equal(load[1], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_cost_per_token_hand_computed():
    # D = 32, F = 64, 2 layers, G = 4, k = 2: 32 active neurons of 64 per layer
    cost = cost_per_token(ModelConfig(ffn_groups=4, ffn_top_k=2))
    # dense: 2 layers * (4 D F + F + D) FLOPs = 2 * (8192 + 96); weights 2 * (2 D F + F + D)
    assert cost["select/ffn_flops_per_token_dense"] == 2 * (4 * 32 * 64 + 64 + 32)
    assert cost["select/ffn_weight_bytes_per_token_dense"] == 4 * 2 * (2 * 32 * 64 + 64 + 32)
    # selective: router 2 D G FLOPs (W_gate, G D weights read) + the dense cost of 32 neurons
    assert cost["select/ffn_flops_per_token"] == 2 * (2 * 32 * 4 + 4 * 32 * 32 + 32 + 32)
    assert cost["select/ffn_weight_bytes_per_token"] == 4 * 2 * (4 * 32 + 2 * 32 * 32 + 32 + 32)


def test_config_validates_groups_and_top_k():
    with pytest.raises(pydantic.ValidationError, match="ffn_top_k"):
        ModelConfig(ffn_groups=4, ffn_top_k=5)
    with pytest.raises(pydantic.ValidationError, match="ffn_groups"):
        ModelConfig(ffn_groups=3)  # F = 64 is not divisible by 3
    assert len(param_specs(ModelConfig(), OBS, N_CLASSES)) + 2 * 2 == len(
        param_specs(ModelConfig(ffn_groups=4, ffn_top_k=2), OBS, N_CLASSES)
    )  # W_gate and W_noise per layer, nothing else


# ---- Population ------------------------------------------------------------------------------


@pytest.mark.numerics
def test_population_train_step_adds_the_load_balance_loss_and_keeps_stats():
    # Prepare: noise off (anneal 0) so the routing of train_step can be recomputed by hand
    cfg = ModelConfig(ffn_groups=4, ffn_top_k=2, router_noise_anneal_steps=0)
    pop = Population(cfg, LearnConfig(), 3, OBS, N_CLASSES, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 8, OBS, generator=g), torch.randint(0, N_CLASSES, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    params = unflatten(pop.flat.detach().clone(), pop.specs)
    routing = Routing()
    logits = forward_last(cfg, params, x, routing)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, N_CLASSES), y.reshape(-1), reduction="none"
    ).view(3, 5)
    expected = ce.mean(1) + load_balance_loss(routing.records)
    gate_before = params["blocks.0.ffn.w_gate"].clone()
    # Execute
    loss = pop.train_step(x, y, mask)
    stats = pop.select_stats
    # Assert: loss = CE + balance (the balance loss is ~1e-2, the bound ~1e-4 of the loss:
    # twice one forward path's, tests/float_bounds.py); the zero-init router moved; per-agent
    # figures kept
    rel = 2 * chain_bound(model_stages(cfg), model_terms(cfg, 8))
    assert_close_rel(loss, expected.detach(), rel, "train_step loss vs CE + balance")
    after = unflatten(pop.flat.detach(), pop.specs)["blocks.0.ffn.w_gate"]
    assert not torch.equal(after, gate_before)
    assert stats["select/density"].shape == (3,)
    assert stats["select/load"].shape == (3, 4)
    assert stats["select/load_cv"].shape == (3,)
    assert (stats["select/density"] == 0.5).all()
    assert stats["select/ffn_flops_per_token"] < stats["select/ffn_flops_per_token_dense"]


def test_population_router_noise_uses_each_agents_own_step_count():
    # Prepare: anneal over 2 steps; agent 0 fresh (scale 1), agent 1 past its anneal (scale 0)
    cfg = ModelConfig(ffn_groups=4, ffn_top_k=2, router_noise_anneal_steps=2)
    pop = Population(cfg, LearnConfig(), 2, OBS, N_CLASSES, seed=0)
    pop.optimizer.t[1] = 5.0
    x = torch.randn(2, 64, 8, OBS)
    # Execute: one step from the zero-init router (every group scores 0 without noise)
    pop.train_step(x, torch.zeros(2, 64, dtype=torch.int64), torch.ones(2, 64, dtype=torch.bool))
    load = pop.select_stats["select/load"]  # (K, G)
    # Assert: agent 0 spread its picks at random, agent 1 took the tie-break groups 0 and 1
    assert (load[0] > 0.1).all()
    torch.testing.assert_close(torch.as_tensor(load[1]), torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_population_with_router_noise_is_deterministic_given_the_seed():
    cfg = ModelConfig(ffn_groups=4, ffn_top_k=2)
    x = torch.randn(2, 4, 8, OBS)
    y, m = torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.bool)
    a, b = (Population(cfg, LearnConfig(), 2, OBS, N_CLASSES, seed=3) for _ in range(2))
    for _ in range(3):
        a.train_step(x, y, m)
    b.train_step(x, y, m)
    sd = b.state_dict()  # the router's generator travels with the checkpoint
    c = Population(cfg, LearnConfig(), 2, OBS, N_CLASSES, seed=99)
    c.load_state_dict(sd)
    for _ in range(2):
        b.train_step(x, y, m)
        c.train_step(x, y, m)
    assert torch.equal(a.flat, b.flat)
    assert torch.equal(b.flat, c.flat)
