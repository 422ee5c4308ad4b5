"""pretrain.optim: the paper's lr rule, cosine schedule and parameter groups."""
import math

import pytest
import torch

from pretrain import config
from pretrain.defaults import PretrainConfig, init_lr
from pretrain.model import SimSiam
from pretrain.optim import adjust_learning_rate, build_optimizer, param_groups, scheduled_lr


@pytest.fixture(scope="module")
def small_model():
    return SimSiam("resnet18", dim=64, pred_dim=16, proj_layers=3)


def test_linear_scaling_rule():
    assert init_lr(PretrainConfig()) == pytest.approx(0.1)              # 0.05 x 512 / 256
    cfg = config.resolve(PretrainConfig(), overrides=["train.batch_size=256"])
    assert init_lr(cfg) == pytest.approx(0.05)
    cifar = config.resolve(PretrainConfig(), ["cifar10_r18"], kind="pretrain")
    assert init_lr(cifar) == pytest.approx(0.06)                         # 0.03 x 512 / 256


def test_cosine_values():
    assert scheduled_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert scheduled_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert scheduled_lr(0.1, 25, 100) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert scheduled_lr(0.1, 75, 100) == pytest.approx(0.1 * 0.5 * (1 - math.cos(math.pi / 4)))
    assert scheduled_lr(0.1, 99, 100) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert scheduled_lr(0.1, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(0.1, 70, 100, "constant") == 0.1
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        scheduled_lr(0.1, 1, 10, "step")


def test_groups_predictor_fixed_and_untrained_bias_excluded(small_model):
    cfg = PretrainConfig()
    opt = build_optimizer(small_model, cfg.optim, init_lr(cfg))
    assert isinstance(opt, torch.optim.SGD)
    enc, pred = opt.param_groups
    assert (enc["name"], pred["name"]) == ("encoder", "predictor")
    assert enc["momentum"] == 0.9 and enc["weight_decay"] == 1e-4
    last_bias = small_model.encoder.fc[-2].bias
    assert all(p is not last_bias for g in opt.param_groups for p in g["params"])
    n_trainable = sum(p.requires_grad for p in small_model.parameters())
    assert len(enc["params"]) + len(pred["params"]) == n_trainable == sum(1 for _ in small_model.parameters()) - 1
    assert len(pred["params"]) == len(list(small_model.predictor.parameters()))
    seen = []
    for epoch in (0, 25, 50, 99):
        lr = adjust_learning_rate(opt, 0.1, epoch, 100)
        seen.append((enc["lr"], pred["lr"]))
        assert enc["lr"] == pytest.approx(lr)
        assert pred["lr"] == pytest.approx(0.1)            # fix_pred_lr: constant
    assert seen[2][0] == pytest.approx(0.05)


def test_predictor_follows_schedule_without_fix(small_model):
    groups = param_groups(small_model, 0.1, fix_pred_lr=False)
    opt = torch.optim.SGD(groups, lr=0.1)
    adjust_learning_rate(opt, 0.1, 50, 100)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05])
