"""pretrain.lars: LARS updates against apex LARC's rule (clip=False) around momentum SGD.

LARC adapts every parameter, the bias included: a parameter takes the plain momentum step only while its
norm or its gradient's norm is zero, and then without weight decay.
"""
from __future__ import annotations

import math

import pytest
import torch

from pretrain.lars import LARS


def larc_sgd_reference(params, grads_per_step, lrs, momentum, weight_decay, trust=0.001, eps=1e-8):
    """LARC(clip=False) over SGD(momentum, dampening 0, no nesterov), from its definition, in float64.

    params: list of float64 tensors (copied); grads_per_step: one list of float64 gradients per step.
    Returns the parameters after every step and, per step, which parameters were adapted.
    """
    ws = [p.detach().clone().double() for p in params]
    bufs = [None] * len(ws)
    history, adapted = [], []
    for grads, lr in zip(grads_per_step, lrs):
        step_adapted = []
        for i, (w, g) in enumerate(zip(ws, grads)):
            w_norm = math.sqrt(float((w * w).sum()))
            g_norm = math.sqrt(float((g * g).sum()))
            if w_norm != 0.0 and g_norm != 0.0:
                rate = trust * w_norm / (g_norm + weight_decay * w_norm + eps)
                d = (g + weight_decay * w) * rate
                step_adapted.append(True)
            else:
                d = g.clone()  # untouched, and no weight decay: the inner SGD runs with weight_decay 0
                step_adapted.append(False)
            bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
            ws[i] = w - lr * bufs[i]
        history.append([w.clone() for w in ws])
        adapted.append(step_adapted)
    return history, adapted


def test_matches_larc_reference_over_several_steps():
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(10, 16, generator=gen, dtype=torch.float64) * 0.01)
    bias = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))  # starts at norm 0, as the head's bias
    conv = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64))
    params = [weight, bias, conv]
    steps, momentum, wd = 6, 0.9, 0.05
    lrs = [1.6 * (1 + math.cos(math.pi * k / steps)) / 2 for k in range(steps)]  # cosine, as the protocol
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10 ** (k % 3) for p in params]
             for k in range(steps)]
    grads[3][1] = torch.zeros(10, dtype=torch.float64)  # a zero gradient: plain momentum step, no decay
    expected, adapted = larc_sgd_reference(params, grads, lrs, momentum, wd)
    # the cases the test is about do occur: the bias is plain at step 0, adapted later, plain at step 3
    assert [a[1] for a in adapted] == [False, True, True, False, True, True]
    assert all(a[0] and a[2] for a in adapted)

    opt = LARS(params, lr=lrs[0], momentum=momentum, weight_decay=wd, trust_coefficient=0.001, eps=1e-8)
    for k in range(steps):
        opt.param_groups[0]["lr"] = lrs[k]
        for p, g in zip(params, grads[k]):
            p.grad = g.clone()
        opt.step()
        for name, p, e in zip(("weight", "bias", "conv"), params, expected[k]):
            assert torch.allclose(p.detach(), e, rtol=0, atol=1e-12), (k, name, (p.detach() - e).abs().max())


def test_bias_is_adapted_once_its_norm_is_non_zero():
    # would fail if 1-d parameters were excluded: after the first step the bias is adapted like a weight
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = LARS([b], lr=2.0, momentum=0.9, weight_decay=0.5, trust_coefficient=0.001, eps=1e-8)
    b.grad = torch.tensor([0.3, 0.4], dtype=torch.float64)
    opt.step()
    # norm 0: no adaptation, no decay; b = -lr * g
    assert b.detach().tolist() == pytest.approx([-0.6, -0.8], rel=0, abs=1e-15)
    b.grad = torch.tensor([0.0, 0.5], dtype=torch.float64)
    opt.step()
    # ||b|| = 1, ||g|| = 0.5: rate = 0.001 * 1 / (0.5 + 0.5 * 1 + 1e-8)
    rate = 0.001 / (1.0 + 1e-8)
    # (g + wd * b) * rate = ([0, 0.5] + [-0.3, -0.4]) * rate = [-0.3, 0.1] * rate
    buf = [0.9 * 0.3 - 0.3 * rate, 0.9 * 0.4 + 0.1 * rate]
    expected = [-0.6 - 2.0 * buf[0], -0.8 - 2.0 * buf[1]]
    assert b.detach().tolist() == pytest.approx(expected, rel=0, abs=1e-14)
    assert b.detach().tolist() == pytest.approx([-1.1394, -1.5202], abs=1e-3)  # not the plain [-1.14, -2.52]


def test_one_update_by_hand():
    # w = [[3, 4]] (norm 5), g = [[0.6, 0.8]] (norm 1); lr 2, wd 0.5, trust 0.001, eps 1e-8
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))  # 1-d, norm 5: adapted too
    w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    b.grad = torch.tensor([0.3, 0.4], dtype=torch.float64)  # norm 0.5
    opt = LARS([w, b], lr=2.0, momentum=0.9, weight_decay=0.5, trust_coefficient=0.001, eps=1e-8)
    opt.step()
    # local_lr = 0.001 * 5 / (1 + 0.5 * 5 + 1e-8) = 0.005 / 3.50000001
    rate = 0.005 / (1.0 + 2.5 + 1e-8)
    # update = (g + wd * w) * rate = ([0.6, 0.8] + [1.5, 2.0]) * rate = [2.1, 2.8] * rate; w -= lr * update
    expected_w = [3.0 - 2.0 * 2.1 * rate, 4.0 - 2.0 * 2.8 * rate]
    assert w.detach().flatten().tolist() == pytest.approx(expected_w, rel=0, abs=1e-12)
    assert w.detach()[0, 0].item() == pytest.approx(2.994, abs=1e-9)  # 3 - 2 * 2.1 * 0.00142857
    # the bias: local_lr = 0.001 * 5 / (0.5 + 0.5 * 5 + 1e-8); (g + wd * b) = [1.8, -1.6]
    rate_b = 0.005 / (0.5 + 2.5 + 1e-8)
    expected_b = [3.0 - 2.0 * 1.8 * rate_b, -4.0 + 2.0 * 1.6 * rate_b]
    assert b.detach().tolist() == pytest.approx(expected_b, rel=0, abs=1e-12)
    assert b.detach().tolist() == pytest.approx([2.994, -3.99467], abs=1e-5)


def test_second_update_uses_momentum_and_new_norms():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    opt = LARS([w], lr=1.0, momentum=0.9, weight_decay=0.0)
    w.grad = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    opt.step()
    r1 = 0.001 * 5.0 / (2.0 + 1e-8)
    buf = [0.0, 2.0 * r1]
    w1 = [3.0, 4.0 - buf[1]]
    assert w.detach().flatten().tolist() == pytest.approx(w1, abs=1e-12)
    w.grad = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    opt.step()
    r2 = 0.001 * math.hypot(*w1) / (1.0 + 1e-8)
    buf = [0.9 * buf[0] + 1.0 * r2, 0.9 * buf[1]]
    assert w.detach().flatten().tolist() == pytest.approx([w1[0] - buf[0], w1[1] - buf[1]], abs=1e-12)


def test_zero_norms_leave_the_gradient_alone():
    # LARC: no adaptation (and no weight decay) when the weight or the gradient is zero
    w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64), rtol=0, atol=1e-15)
    # now ||w|| = 0.2 but the gradient is zero: buf = 0.9 * 1, no decay term
    w.grad = torch.zeros(2, 2, dtype=torch.float64)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.19, dtype=torch.float64), rtol=0, atol=1e-15)


def test_effective_step_is_trust_times_lr_relative_to_the_weight():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 64))
    w0 = w.detach().clone()
    w.grad = torch.randn(10, 64) * 1e3  # the gradient's scale does not matter
    LARS([w], lr=1.6).step()
    ratio = (w.detach() - w0).norm() / w0.norm()
    assert ratio.item() == pytest.approx(1.6 * 0.001, rel=1e-5)


def test_invalid_arguments():
    p = [torch.nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match="learning rate"):
        LARS(p, lr=-1)
    with pytest.raises(ValueError, match="momentum"):
        LARS(p, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        LARS(p, lr=0.1, weight_decay=-1e-4)


def test_pretraining_groups_bn_and_bias_take_plain_momentum_steps():
    """optim.optimizer=lars with optim.exclude_bn_bias (SimCLR, BYOL): a BN weight and a bias take the plain
    momentum-SGD step without weight decay (w - lr g, then the momentum buffer), a conv weight the LARC step."""
    from torch import nn
    from pretrain.defaults import OptimConfig
    from pretrain.model import SimSiam
    from pretrain.optim import build_optimizer
    model = SimSiam("resnet18", dim=8, pred_dim=4, proj_layers=2)
    cfg = OptimConfig(optimizer="lars", exclude_bn_bias=True, weight_decay=0.1)
    opt = build_optimizer(model, cfg, lr=2.0)
    assert isinstance(opt, LARS)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "predictor", "encoder_bn_bias", "predictor_bn_bias"]
    bn_w, bias, conv = model.encoder.bn1.weight, model.predictor[-1].bias, model.encoder.conv1.weight
    assert isinstance(model.encoder.bn1, nn.BatchNorm2d)
    start = {id(p): p.detach().clone() for p in (bn_w, bias, conv)}
    grads = {}
    for step in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p) if p.requires_grad else None
        grads[step] = {id(p): p.grad.clone() for p in (bn_w, bias, conv)}
        opt.step()
    for p in (bn_w, bias):      # buf = g0, then 0.9 g0 + g1; no decay, no trust ratio
        g0, g1 = grads[0][id(p)], grads[1][id(p)]
        expected = start[id(p)] - 2.0 * g0 - 2.0 * (0.9 * g0 + g1)
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-5)
    w0, g0 = start[id(conv)].double(), grads[0][id(conv)].double()
    rate = 0.001 * w0.norm() / (g0.norm() + 0.1 * w0.norm() + 1e-8)
    w1 = w0 - 2.0 * (g0 + 0.1 * w0) * rate
    buf = (g0 + 0.1 * w0) * rate
    g1 = grads[1][id(conv)].double()
    rate1 = 0.001 * w1.norm() / (g1.norm() + 0.1 * w1.norm() + 1e-8)
    w2 = w1 - 2.0 * (0.9 * buf + (g1 + 0.1 * w1) * rate1)
    assert torch.allclose(conv.detach().double(), w2, rtol=0, atol=1e-6)
    assert (conv.detach() - start[id(conv)]).norm() < 0.01 * start[id(conv)].norm()  # the trust ratio's size


def test_without_exclusion_every_group_adapts():
    from pretrain.defaults import OptimConfig
    from pretrain.model import SimSiam
    from pretrain.optim import build_optimizer
    opt = build_optimizer(SimSiam("resnet18", dim=8, pred_dim=4, proj_layers=2), OptimConfig(optimizer="lars"), 0.5)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "predictor"]
    assert all(g["adapt"] and g["weight_decay"] == 1e-4 for g in opt.param_groups)
