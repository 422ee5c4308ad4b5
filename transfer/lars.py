"""LARS for linear evaluation, with the semantics the official SimSiam code gets from apex's LARC.

The official `main_lincls.py --lars` wraps SGD(momentum 0.9, weight decay 0) in
`LARC(trust_coefficient=0.001, clip=False)`. One step, for each parameter w with gradient g:

    if ||w|| > 0 and ||g|| > 0:
        local_lr = trust * ||w|| / (||g|| + weight_decay * ||w|| + eps)      (LARC, eps = 1e-8)
        g <- (g + weight_decay * w) * local_lr                                 (weight decay folded in)
    buf <- momentum * buf + g          (buf = g on the first step, as torch.optim.SGD)
    w   <- w - lr * buf

"No clipping" means local_lr is used as it is (LARC's `clip=True` would cap it at 1 relative to lr).
When a norm is zero LARC leaves the gradient untouched and applies no weight decay; we do the same.
Parameters with one dimension (biases, BN affine) are excluded from the adaptation and from weight
decay, as in the LARS of the official SimSiam/MoCo v3 code: they take the plain momentum step.
"""
from __future__ import annotations

from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, exclude_1d: bool = True):
        if lr < 0:
            raise ValueError(f"LARS: invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @staticmethod
    def local_lr(w: torch.Tensor, g: torch.Tensor, trust: float, weight_decay: float,
                 eps: float) -> torch.Tensor | None:
        """LARC's adaptive rate for one tensor, or None when a norm is zero (no adaptation)."""
        w_norm = torch.linalg.vector_norm(w)
        g_norm = torch.linalg.vector_norm(g)
        if w_norm.item() == 0.0 or g_norm.item() == 0.0:
            return None
        return trust * w_norm / (g_norm + weight_decay * w_norm + eps)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not (group["exclude_1d"] and p.ndim <= 1):
                    rate = self.local_lr(p, g, group["trust_coefficient"], group["weight_decay"], group["eps"])
                    if rate is not None:
                        g = g.add(p, alpha=group["weight_decay"]).mul_(rate)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
