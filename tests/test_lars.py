"""transfer.lars: one and two LARS updates against hand computations (LARC semantics, no clipping)."""
from __future__ import annotations

import math

import pytest
import torch

from transfer.lars import LARS


def test_one_update_by_hand():
    # w = [[3, 4]] (norm 5), g = [[0.6, 0.8]] (norm 1); lr 2, wd 0.5, trust 0.001, eps 1e-8
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))  # 1-d: excluded
    w.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    b.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
    opt = LARS([w, b], lr=2.0, momentum=0.9, weight_decay=0.5, trust_coefficient=0.001, eps=1e-8)
    opt.step()
    # local_lr = 0.001 * 5 / (1 + 0.5 * 5 + 1e-8) = 0.005 / 3.50000001
    rate = 0.005 / (1.0 + 2.5 + 1e-8)
    # update = (g + wd * w) * rate = ([0.6, 0.8] + [1.5, 2.0]) * rate = [2.1, 2.8] * rate; w -= lr * update
    expected_w = [3.0 - 2.0 * 2.1 * rate, 4.0 - 2.0 * 2.8 * rate]
    assert w.detach().flatten().tolist() == pytest.approx(expected_w, rel=0, abs=1e-12)
    assert w.detach()[0, 0].item() == pytest.approx(2.994, abs=1e-9)  # 3 - 2 * 2.1 * 0.00142857
    # the bias: plain momentum SGD step, no adaptation and no weight decay
    assert b.detach().tolist() == pytest.approx([1.0 - 2.0 * 0.5, -1.0 - 2.0 * 0.25], abs=1e-12)


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
    LARS([w], lr=0.1, weight_decay=0.5).step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64))


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
