"""Adapters, routers and router losses: identities, invariants and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mol import fusion
from mol.fusion import (
    BottleneckAdapter,
    LinearAdapter,
    SimpleRouter,
    TokenLevelRouter,
    load_balancing_loss,
    router_entropy,
    router_z_loss,
)


def test_linear_adapter_identity_for_equal_widths():
    x = torch.randn(2, 5, 16)
    assert torch.equal(LinearAdapter(16, 16)(x), x)


def test_widening_adapter_is_an_isometry_and_narrowing_keeps_the_expected_norm():
    x = torch.randn(4000, 24, dtype=torch.float64)
    wide = LinearAdapter(24, 40).double()
    torch.testing.assert_close(wide(x).norm(dim=-1), x.norm(dim=-1))
    w = wide.proj.weight
    torch.testing.assert_close(w.T @ w, torch.eye(24, dtype=torch.float64))  # orthonormal columns
    narrow = LinearAdapter(40, 24).double()
    y = torch.randn(4000, 40, dtype=torch.float64)
    ratio = narrow(y).norm(dim=-1).pow(2).mean() / y.norm(dim=-1).pow(2).mean()
    assert ratio.item() == pytest.approx(1.0, rel=0.05)
    v = narrow.proj.weight
    torch.testing.assert_close(v @ v.T, torch.eye(24, dtype=torch.float64) * 40 / 24)


def test_adapter_init_is_seeded_and_default_init_is_not_identity():
    assert torch.equal(
        LinearAdapter(8, 12, seed=3).proj.weight, LinearAdapter(8, 12, seed=3).proj.weight
    )
    assert not torch.equal(
        LinearAdapter(8, 12, seed=3).proj.weight, LinearAdapter(8, 12, seed=4).proj.weight
    )
    x = torch.randn(3, 8)
    assert not torch.allclose(LinearAdapter(8, 8, init_identity=False)(x), x)


def test_zero_initialised_residual_adapter_is_the_identity_then_learns():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(16, 16, bottleneck_dim=4)
    x = torch.randn(3, 7, 16)
    assert torch.equal(adapter(x), x)
    loss = (adapter(x) - 2 * x).pow(2).mean()
    loss.backward()
    assert adapter.up.weight.grad.abs().sum() > 0  # the residual path receives gradient
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    opt.step()
    assert not torch.equal(adapter(x), x)


def test_bottleneck_between_widths_starts_as_its_projection():
    adapter = BottleneckAdapter(12, 20, bottleneck_dim=5)
    x = torch.randn(6, 12)
    torch.testing.assert_close(adapter(x), adapter.base(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "router",
    [
        SimpleRouter(8, 3),
        SimpleRouter(8, 3, pooling_type="max"),
        TokenLevelRouter(8, 3, top_k=2),
        TokenLevelRouter(8, 3, top_k=None),
    ],
)
def test_weights_sum_to_one_on_real_tokens_and_zero_on_padding(router):
    torch.manual_seed(0)
    router.gate.weight.data.normal_()  # a decisive router
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    out = router.eval()(hidden, mask)
    torch.testing.assert_close(out.weights[mask].sum(-1), torch.ones(int(mask.sum())))
    assert torch.equal(out.weights[~mask], torch.zeros(int((~mask).sum()), 3))
    if router.top_k is not None and router.top_k < 3:
        assert ((out.weights[mask] > 0).sum(-1) == router.top_k).all()


@pytest.mark.parametrize(
    "router", [SimpleRouter(8, 3), SimpleRouter(8, 3, pooling_type="max"), TokenLevelRouter(8, 3)]
)
def test_routing_is_causal(router):
    torch.manual_seed(1)
    router.gate.weight.data.normal_()
    hidden = torch.randn(1, 8, 8)
    changed = hidden.clone()
    changed[:, 5:] = torch.randn(1, 3, 8)  # only positions >= 5 differ
    a, b = router.eval()(hidden).weights, router(changed).weights
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.equal(a[:, 5:], b[:, 5:])


def test_simple_router_mean_pools_the_prefix_of_real_tokens():
    router = SimpleRouter(2, 2)
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(2))
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 3.0]]])
    mask = torch.tensor([[False, True, True]])
    out = router(hidden, mask)
    # position 2 sees the mean of positions 1..2 (padding skipped): (0.5, 1.5)
    torch.testing.assert_close(out.logits[0, 2], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(out.weights[0, 2], torch.softmax(torch.tensor([0.5, 1.5]), -1))


def test_token_noise_only_in_training_and_temperature_flattens():
    router = TokenLevelRouter(4, 3, top_k=None, noise_std=1.0)
    hidden = torch.randn(2, 5, 4)
    router.eval()
    assert torch.equal(router(hidden).weights, router(hidden).weights)
    router.train()
    assert not torch.equal(router(hidden).weights, router(hidden).weights)
    sharp, flat = (
        TokenLevelRouter(4, 3, top_k=None),
        TokenLevelRouter(4, 3, top_k=None, temperature=10),
    )
    flat.load_state_dict(sharp.state_dict())
    sharp.gate.weight.data.normal_()
    flat.gate.weight.data.copy_(sharp.gate.weight.data)
    assert router_entropy(flat.eval()(hidden).probs) > router_entropy(sharp.eval()(hidden).probs)


def test_load_balancing_loss_known_values_and_gradient():
    uniform = torch.full((2, 4, 4), 0.25)
    # perfectly balanced assignment (argmax of uniform is expert 0, so build a balanced case)
    balanced = torch.eye(4).repeat(2, 1).reshape(2, 4, 4) * 0.7 + 0.075
    assert load_balancing_loss(balanced).item() == pytest.approx(1.0)
    collapsed = torch.zeros(2, 4, 4)
    collapsed[..., 1] = 1.0
    assert load_balancing_loss(collapsed).item() == pytest.approx(4.0)
    assert load_balancing_loss(uniform).item() == pytest.approx(1.0)  # f = (1,0,0,0), P = 1/4
    logits = torch.randn(2, 4, 4, requires_grad=True)
    load_balancing_loss(torch.softmax(logits, -1)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_entropy_and_z_loss_known_values_and_masking():
    probs = torch.full((1, 3, 4), 0.25)
    assert router_entropy(probs).item() == pytest.approx(math.log(4))
    logits = torch.zeros(1, 2, 4)
    assert router_z_loss(logits).item() == pytest.approx(math.log(4) ** 2)
    mask = torch.tensor([[True, False]])
    logits[0, 1] = 100.0  # a padding position with huge logits does not count
    assert router_z_loss(logits, mask).item() == pytest.approx(math.log(4) ** 2)
    x = torch.randn(1, 2, 4, requires_grad=True)
    (router_z_loss(x) + router_entropy(torch.softmax(x, -1))).backward()
    assert x.grad.abs().sum() > 0


def test_router_output_losses_reach_the_router_parameters():
    router = SimpleRouter(8, 3)
    out = router(torch.randn(2, 5, 8))
    (out.load_balancing_loss() + out.entropy() + out.z_loss()).backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert out.expert_weights().shape == (3,)
    torch.testing.assert_close(out.expert_weights().sum(), torch.tensor(1.0))


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="pooling_type"):
        SimpleRouter(4, 2, pooling_type="median")
    with pytest.raises(ValueError, match="top_k must be in 1..2"):
        SimpleRouter(4, 2, top_k=3)
    with pytest.raises(ValueError, match="temperature"):
        TokenLevelRouter(4, 2, temperature=0)
    with pytest.raises(ValueError, match="mask shape"):
        SimpleRouter(4, 2)(torch.randn(1, 3, 4), torch.ones(1, 2, dtype=torch.bool))
    assert set(fusion.__all__) >= {
        "LinearAdapter",
        "BottleneckAdapter",
        "SimpleRouter",
        "TokenLevelRouter",
    }
