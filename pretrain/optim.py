"""SGD with the paper's schedule: lr = base_lr x batch / 256, cosine decay per epoch to 0, no warm-up.

Two parameter groups, as in the official code: the encoder follows the schedule, the predictor keeps
the initial lr when `fix_pred_lr` is set (paper: 68.1 vs 67.7). Parameters that are not trained (the
projector's last bias, which is followed by BN) are left out of the optimizer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .distributed import unwrap


def param_groups(model: nn.Module, lr: float, fix_pred_lr: bool) -> list[dict]:
    m = unwrap(model)
    return [
        {"name": "encoder", "params": [p for p in m.encoder.parameters() if p.requires_grad],
         "lr": lr, "fix_lr": False},
        {"name": "predictor", "params": [p for p in m.predictor.parameters() if p.requires_grad],
         "lr": lr, "fix_lr": bool(fix_pred_lr)},
    ]


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.SGD:
    """SGD(momentum, weight decay) over the encoder and predictor groups at the initial lr."""
    return torch.optim.SGD(param_groups(model, lr, optim_cfg.fix_pred_lr), lr=lr,
                           momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)


def scheduled_lr(init_lr: float, epoch: int, epochs: int, schedule: str = "cosine") -> float:
    """lr for `epoch` (0-based): init_lr * 0.5 * (1 + cos(pi * epoch / epochs)), or constant."""
    if schedule == "cosine":
        return init_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "constant":
        return init_lr
    raise ValueError(f"optim.schedule: unknown schedule '{schedule}' (known: cosine, constant)")


def adjust_learning_rate(optimizer: torch.optim.Optimizer, init_lr: float, epoch: int, epochs: int,
                         schedule: str = "cosine") -> float:
    """Set each group's lr for this epoch; groups with fix_lr keep init_lr. Returns the scheduled lr."""
    lr = scheduled_lr(init_lr, epoch, epochs, schedule)
    for group in optimizer.param_groups:
        group["lr"] = init_lr if group.get("fix_lr", False) else lr
    return lr
