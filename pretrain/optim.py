"""SGD with the paper's schedule: lr = base_lr x batch / 256, cosine decay per epoch to 0, no warm-up.

Two parameter groups, as in the official code: the encoder follows the schedule, the predictor keeps
the initial lr when `fix_pred_lr` is set (paper: 68.1 vs 67.7). Parameters that are not trained (the
projector's last bias, which is followed by BN, and a predictor fixed at its random init, Table 1b) are left
out of the optimizer (the predictor group is then empty).

Warm-up (optim.warmup_epochs = w > 0; the paper uses 10 for batch >= 1024 and for Table 3a): linear and per
step, lr = init_lr x (s + 1) / (w x steps_per_epoch) at step s of the first w epochs, for EVERY group (a
predictor at a fixed lr warms up too); from epoch w on, the schedule runs over the remaining epochs, per epoch as
without warm-up: cosine lr = init_lr x 0.5 x (1 + cos(pi x (epoch - w) / (epochs - w))), so it starts at
init_lr where the warm-up ends and reaches 0 after the last epoch; fixed-lr groups are back at init_lr.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .distributed import unwrap


def param_groups(model: nn.Module, lr: float, fix_pred_lr: bool) -> list[dict]:
    """The "encoder" group (every trained parameter outside the predictor: backbone, projector and what a method
    trains besides, such as SwAV's prototypes) and the "predictor" group."""
    m = unwrap(model)
    predictor = {id(p) for p in m.predictor.parameters()}
    return [
        {"name": "encoder", "params": [p for p in m.parameters() if p.requires_grad and id(p) not in predictor],
         "lr": lr, "fix_lr": False},
        {"name": "predictor", "params": [p for p in m.predictor.parameters() if p.requires_grad],
         "lr": lr, "fix_lr": bool(fix_pred_lr)},
    ]


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.SGD:
    """SGD(momentum, weight decay) over the encoder and predictor groups at the initial lr."""
    return torch.optim.SGD(param_groups(model, lr, optim_cfg.fix_pred_lr), lr=lr,
                           momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)


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
