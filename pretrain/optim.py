"""SGD with the paper's schedule: lr = base_lr x batch / 256, cosine decay per epoch to 0, no warm-up; or LARS.

Two parameter groups, as in the official code: the encoder follows the schedule, the predictor keeps
the initial lr when `fix_pred_lr` is set (paper: 68.1 vs 67.7). Parameters that are not trained (the
projector's last bias, which is followed by BN, and a predictor fixed at its random init, Table 1b) are left
out of the optimizer (the predictor group is then empty).

Warm-up (optim.warmup_epochs = w > 0; the paper uses 10 for batch >= 1024 and for Table 3a): linear and per
step, lr = init_lr x (s + 1) / (w x steps_per_epoch) at step s of the first w epochs, for EVERY group (a
predictor at a fixed lr warms up too); from epoch w on, the schedule runs over the remaining epochs, per epoch as
without warm-up: cosine lr = init_lr x 0.5 x (1 + cos(pi x (epoch - w) / (epochs - w))), so it starts at
init_lr where the warm-up ends and reaches 0 after the last epoch; fixed-lr groups are back at init_lr.

The optimizer (optim.optimizer): "sgd" (the paper's), or "lars" (pretrain.lars, LARC's rule with
optim.trust_coefficient; SimCLR, BYOL and SwAV at batch 4096). optim.exclude_bn_bias takes the BN parameters and
every bias out of the weight decay and, under LARS, out of the adaptation, as SimCLR's and BYOL's official LARS
do: each of the two groups then has a companion ("encoder_bn_bias", "predictor_bn_bias": weight decay 0,
adapt=False, the lr schedule of its group), so the optimizer has four groups, the first two as before.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConfigError
from .defaults import OptimConfig
from .distributed import unwrap
from .lars import LARS

OPTIMIZERS = ("sgd", "lars")


def check(optim_cfg) -> None:
    """Refuse an unknown optimizer, a trust coefficient that is not positive, and one set without LARS."""
    o = optim_cfg
    if o.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer: '{o.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if not o.trust_coefficient > 0:
        raise ConfigError(f"optim.trust_coefficient={o.trust_coefficient} must be > 0")
    if o.optimizer != "lars" and o.trust_coefficient != OptimConfig.trust_coefficient:
        raise ConfigError(f"optim.trust_coefficient={o.trust_coefficient} is read by optim.optimizer=lars only "
                          f"(now '{o.optimizer}')")


def bn_and_bias(model: nn.Module) -> set[int]:
    """ids of the BN parameters (weight and bias of every BatchNorm) and of every other bias."""
    bn = {id(p) for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
          for p in mod.parameters(recurse=False)}
    return bn | {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}


def param_groups(model: nn.Module, lr: float, fix_pred_lr: bool, exclude_bn_bias: bool = False) -> list[dict]:
    """The "encoder" group (every trained parameter outside the predictor: backbone, projector and what a method
    trains besides, such as SwAV's prototypes) and the "predictor" group; with `exclude_bn_bias`, their BN and
    bias parameters move to "encoder_bn_bias" and "predictor_bn_bias" (weight decay 0, no LARS adaptation)."""
    m = unwrap(model)
    predictor = {id(p) for p in m.predictor.parameters()}
    trained = {"encoder": [p for p in m.parameters() if p.requires_grad and id(p) not in predictor],
               "predictor": [p for p in m.predictor.parameters() if p.requires_grad]}
    fixed = {"encoder": False, "predictor": bool(fix_pred_lr)}
    if not exclude_bn_bias:
        return [{"name": k, "params": trained[k], "lr": lr, "fix_lr": fixed[k]} for k in ("encoder", "predictor")]
    excluded = bn_and_bias(m)
    return ([{"name": k, "params": [p for p in trained[k] if id(p) not in excluded], "lr": lr, "fix_lr": fixed[k]}
             for k in ("encoder", "predictor")]
            + [{"name": f"{k}_bn_bias", "params": [p for p in trained[k] if id(p) in excluded], "lr": lr,
                "fix_lr": fixed[k], "weight_decay": 0.0, "adapt": False} for k in ("encoder", "predictor")])


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.Optimizer:
    """SGD(momentum, weight decay), or LARS (optim.optimizer=lars) with the trust coefficient, over the encoder and
    predictor groups (and their BN/bias companions with optim.exclude_bn_bias) at the initial lr."""
    check(optim_cfg)
    o = optim_cfg
    groups = param_groups(model, lr, o.fix_pred_lr, o.exclude_bn_bias)
    if o.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                    trust_coefficient=o.trust_coefficient)
    return torch.optim.SGD([{k: v for k, v in g.items() if k != "adapt"} for g in groups], lr=lr,
                           momentum=o.momentum, weight_decay=o.weight_decay)


def group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    """The lr of the param group called `name` ("encoder", "predictor", ...)."""
    return next(g["lr"] for g in optimizer.param_groups if g.get("name") == name)


def in_warmup(epoch: int, warmup_epochs: int) -> bool:
    return epoch < warmup_epochs


def warmup_lr(init_lr: float, epoch: int, warmup_epochs: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The linear warm-up's lr at step `step_in_epoch` of `epoch` (< warmup_epochs): init_lr x (s+1) / total."""
    return init_lr * (epoch * steps_per_epoch + step_in_epoch + 1) / (warmup_epochs * steps_per_epoch)


def scheduled_lr(init_lr: float, epoch: int, epochs: int, schedule: str = "cosine", warmup_epochs: int = 0) -> float:
    """lr for `epoch` (0-based) after any warm-up: init_lr * 0.5 * (1 + cos(pi * e / n)), e and n the epoch and
    the number of epochs counted from the warm-up's end; or constant."""
    e, n = epoch - warmup_epochs, epochs - warmup_epochs
    if schedule == "cosine":
        return init_lr * 0.5 * (1.0 + math.cos(math.pi * e / n))
    if schedule == "constant":
        return init_lr
    raise ValueError(f"optim.schedule: unknown schedule '{schedule}' (known: cosine, constant)")


def adjust_learning_rate(optimizer: torch.optim.Optimizer, init_lr: float, epoch: int, epochs: int,
                         schedule: str = "cosine", warmup_epochs: int = 0, step_in_epoch: int = 0,
                         steps_per_epoch: int = 1) -> float:
    """Set each group's lr for this epoch (in a warm-up epoch: for this step); after the warm-up, groups with
    fix_lr keep init_lr. Returns the encoder's lr."""
    if in_warmup(epoch, warmup_epochs):
        lr = warmup_lr(init_lr, epoch, warmup_epochs, step_in_epoch, steps_per_epoch)
        fixed = lr
    else:
        lr, fixed = scheduled_lr(init_lr, epoch, epochs, schedule, warmup_epochs), init_lr
    for group in optimizer.param_groups:
        group["lr"] = fixed if group.get("fix_lr", False) else lr
    return lr
