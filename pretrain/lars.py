"""LARS with the semantics the official SimSiam code gets from apex's LARC: linear evaluation, and pretraining.

The official `main_lincls.py --lars` builds SGD(momentum 0.9) over the classifier's weight and bias and
wraps it in `apex.parallel.LARC(trust_coefficient=0.001, clip=False)`. LARC adapts every parameter it is
given, the bias included; nothing is excluded by shape. One step, for each parameter w with gradient g:

    if ||w|| != 0 and ||g|| != 0:
        local_lr = trust * ||w|| / (||g|| + weight_decay * ||w|| + eps)      (eps = 1e-8)
        g <- (g + weight_decay * w) * local_lr                                 (weight decay folded in)
    otherwise g is left as it is, without weight decay
    buf <- momentum * buf + g          (buf = g on the first step, as torch.optim.SGD)
    w   <- w - lr * buf

LARC folds the weight decay into the gradient itself and runs the inner SGD with weight decay 0, so a
parameter whose norm (or whose gradient's norm) is zero takes the plain momentum step with no decay. This
is what happens to the classifier's bias on the first step, since it is initialised to zero; from the
second step on its norm is non-zero and it is adapted like the weight. The rule is evaluated on the device
(`adapted_grad`), so a step never waits for the accelerator, however many parameters it updates.

The trust ratio is per parameter tensor and lr / weight decay per param group: a grid of linear heads
(transfer.evaluation.linear) gives each head its own weight and bias tensors and its own group, so every head is
updated exactly as it would be by an optimizer of its own. "No clipping" (`clip=False`) means
local_lr is used as it is; LARC's `clip=True` would cap it at 1 relative to lr.

Pretraining (pretrain.optim.build_optimizer, optim.optimizer=lars) uses the same rule, with one per-group switch:
a group with `adapt=False` takes the plain momentum-SGD step of torch.optim.SGD, g <- g + weight_decay * w, no
trust ratio. SimCLR's and BYOL's official LARS exclude the BN and bias parameters from both the weight decay
and the adaptation (optim.exclude_bn_bias): their group has adapt=False and weight decay 0. Every group adapts
unless it says otherwise, so linear evaluation, which never sets the switch, is updated as before.
"""
from __future__ import annotations

from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-parameter step is scaled as apex's LARC(clip=False) scales it; a param group
    with adapt=False takes the plain momentum-SGD step (with its own weight decay)."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, adapt: bool = True):
        if lr < 0:
            raise ValueError(f"LARS: invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: invalid momentum {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, adapt=adapt)
        super().__init__(params, defaults)

    @staticmethod
    def adapted_grad(w: torch.Tensor, g: torch.Tensor, trust: float, weight_decay: float,
                     eps: float) -> torch.Tensor:
        """(g + weight_decay * w) * local_lr, or g itself when a norm is zero: local_lr of the module doc computed
        on the device, without reading the norms back (no host synchronisation per parameter)."""
        w_norm = torch.linalg.vector_norm(w)
        g_norm = torch.linalg.vector_norm(g)
        rate = trust * w_norm / (g_norm + weight_decay * w_norm + eps)
        return torch.where((w_norm != 0) & (g_norm != 0), g.add(w, alpha=weight_decay).mul_(rate), g)

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
                if group.get("adapt", True):  # a group loaded from a state without the key adapts
                    g = self.adapted_grad(p, p.grad, group["trust_coefficient"], group["weight_decay"], group["eps"])
                else:
                    g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss
