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


def test_warmup_per_step_then_cosine_over_the_rest():
    """optim.warmup_epochs=w: lr = init x (s+1)/(w x steps) at global step s of the first w epochs, for every
    group (the predictor's fixed lr too); then the cosine over the remaining epochs, starting at init."""
    m = SimSiam("resnet18", dim=16, pred_dim=4, proj_layers=2)
    cfg = config.resolve(PretrainConfig(), overrides=["optim.warmup_epochs=2", "train.epochs=6"])
    opt = build_optimizer(m, cfg.optim, 0.4)
    seen = []
    for epoch in range(2):
        for step in range(5):
            lr = adjust_learning_rate(opt, 0.4, epoch, 6, "cosine", 2, step, 5)
            seen.append(lr)
            assert [g["lr"] for g in opt.param_groups] == [lr, lr]
    assert seen == pytest.approx([0.4 * (s + 1) / 10 for s in range(10)], rel=1e-15)
    after = [adjust_learning_rate(opt, 0.4, e, 6, "cosine", 2) for e in range(2, 6)]
    assert after == pytest.approx([0.4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)], rel=1e-15)
    assert after[0] == 0.4 and opt.param_groups[1]["lr"] == 0.4      # fix_pred_lr: back at init
    assert adjust_learning_rate(opt, 0.4, 3, 6, "constant", 2) == 0.4


def test_no_warmup_is_the_old_schedule():
    """warmup_epochs=0 (default) gives init x 0.5 x (1 + cos(pi epoch / epochs)) exactly, every epoch."""
    assert PretrainConfig().optim.warmup_epochs == 0
    for epoch in range(100):
        assert scheduled_lr(0.1, epoch, 100) == 0.1 * 0.5 * (1.0 + math.cos(math.pi * epoch / 100))


def test_fixed_predictor_is_bit_identical_after_training(tmp_path):
    """model.predictor=fixed (Table 1b): the predictor is left out of the optimiser, so after real training
    steps (SGD with momentum and weight decay) its parameters are bit-identical to its random init, while its
    BN running statistics move and the encoder trains."""
    from pretrain.model import build_model
    from pretrain.train import run, seed_everything
    cfg = config.resolve(PretrainConfig(), ["test_tiny"], ["model.predictor=fixed", "train.epochs=1",
                         "train.max_steps_per_epoch=3", "monitor.knn=false", "monitor.tensorboard=false"],
                         kind="pretrain")
    opt = build_optimizer(build_model(cfg.model), cfg.optim, 0.1)
    assert opt.param_groups[1]["params"] == []
    seed_everything(cfg.train.seed)
    init = build_model(cfg.model).state_dict()   # what the run starts from (same seed, same order)
    run(cfg, tmp_path)
    trained = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    params = [k for k in init if k.startswith("predictor.") and not k.split(".")[-1].startswith(("running", "num"))]
    assert params and all(torch.equal(trained[k], init[k]) for k in params)
    assert not torch.equal(trained["predictor.1.running_mean"], init["predictor.1.running_mean"])
    assert not torch.equal(trained["encoder.conv1.weight"], init["encoder.conv1.weight"])
