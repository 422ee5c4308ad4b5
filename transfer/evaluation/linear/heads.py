"""The heads: a grid of (base lr, weight decay), the protocol's one head being the grid of one. Each head has
its own tensors and param group (LARS's trust ratio, lr and weight decay per head) and the loss is the sum of
the heads' mean losses, so each trains exactly as it would alone."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.train import NonFiniteLossError
from pretrain.defaults import scaled_lr
from pretrain.lars import LARS

from .config import ConfigError, LinearConfig, LinearGridConfig


def default_grid(cfg: LinearConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(base lrs, weight decays): base_lr x 10^(k/4) to 4 digits, for LARS k = -4..8 (/10 to x100: its relative
    step is lr x trust, so runs shorter than ImageNet's need a larger lr) with optim.weight_decay; for SGD
    k = -4..4 with weight decays 0, 1e-5, 1e-4 (and optim.weight_decay)."""
    o, lars = cfg.optim, cfg.optim.optimizer == "lars"
    lrs = tuple(float(f"{o.base_lr * 10 ** (k / 4):.4g}") for k in range(-4, 9 if lars else 5))
    return lrs, (o.weight_decay,) if lars else tuple(sorted({o.weight_decay, 0.0, 1e-5, 1e-4}))


def grid_heads(cfg: LinearConfig) -> list[tuple[float, float]]:
    """(base lr, weight decay) of every head: the protocol's one head, or the grid's (lr-major order)."""
    if not cfg.grid.enabled:
        return [(cfg.optim.base_lr, cfg.optim.weight_decay)]
    lrs, wds = default_grid(cfg)
    return [(float(lr), float(wd)) for lr in cfg.grid.base_lrs or lrs for wd in cfg.grid.weight_decays or wds]


def holdout_split(n: int, grid: LinearGridConfig) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of a training split of n images, both sorted: a random slice of
    round(holdout_fraction x n) images (at least 1, at most holdout_max_images) drawn with holdout_seed."""
    k = min(max(1, round(grid.holdout_fraction * n)), grid.holdout_max_images)
    if k >= n:
        raise ConfigError(f"grid.holdout_fraction={grid.holdout_fraction}: holding out {k} of {n} training images "
                          "leaves none to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(grid.holdout_seed)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


class HeadGrid(nn.Module):
    """H linear heads initialised alike (N(0, 0.01) from `seed`, bias 0), each with its own tensors (for LARS and
    its param group); the forward is one matmul over their concatenation: logits (B, H, C)."""

    def __init__(self, in_dim: int, num_classes: int, num_heads: int, seed: int = 0):
        super().__init__()
        w = torch.empty(num_classes, in_dim).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for _ in range(num_heads)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_classes)) for _ in range(num_heads)])

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = torch.cat(list(self.weights))
        b = torch.cat(list(self.biases))
        return F.linear(f, w, b).view(f.shape[0], len(self.weights), -1)

    def head_params(self, i: int) -> list[nn.Parameter]:
        return [self.weights[i], self.biases[i]]

    @torch.no_grad()
    def finite(self) -> list[bool]:
        """Per head: are all its weights finite (False: it diverged)."""
        flags = torch.stack([torch.isfinite(w).all() & torch.isfinite(b).all()
                             for w, b in zip(self.weights, self.biases)])
        return [bool(x) for x in flags.tolist()]


def build_grid_optimizer(grid: HeadGrid, heads: list[tuple[float, float]], cfg: LinearConfig):
    """(LARS or SGD with one param group per head: its lr, base lr x batch / 256, and weight decay; the lrs)."""
    o = cfg.optim
    lrs = [scaled_lr(lr, cfg.train.batch_size) for lr, _ in heads]
    groups = [{"params": grid.head_params(i), "lr": lr, "weight_decay": wd}
              for i, (lr, (_, wd)) in enumerate(zip(lrs, heads))]
    if o.optimizer == "lars":
        return LARS(groups, lr=lrs[0], momentum=o.momentum, trust_coefficient=o.trust_coefficient, eps=o.eps), lrs
    return torch.optim.SGD(groups, lr=lrs[0], momentum=o.momentum), lrs


def head_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-head mean cross-entropy (H,) of logits (B, H, C): their sum's gradient is each head's own."""
    b, h, c = logits.shape
    if h == 1:
        return F.cross_entropy(logits[:, 0], y).reshape(1)
    return F.cross_entropy(logits.reshape(b * h, c), y.repeat_interleave(h), reduction="none").view(b, h).mean(0)


@torch.no_grad()
def head_counts(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(3, H) float64: per head the top-1 and top-5 hits and the summed loss over a batch of logits (B, H, C)."""
    b, h, c = logits.shape
    hit = logits.topk(min(5, c), dim=2).indices == y[:, None, None]
    loss = F.cross_entropy(logits.reshape(b * h, c), y.repeat_interleave(h), reduction="none").view(b, h)
    return torch.stack([hit[..., 0].sum(0).double(), hit.any(2).sum(0).double(), loss.sum(0).double()])


def pick_head(holdout: dict | None, finite: list[bool]) -> int:
    """The head with the best held-out top-1 (then lower loss, then first) among those that did not diverge;
    without a held-out slice the first that did not."""
    ok = [i for i, f in enumerate(finite) if f]
    if not ok:
        raise NonFiniteLossError("linear evaluation: every head diverged (weights inf/NaN): lower optim.base_lr "
                                 "(grid.base_lrs in grid mode)")
    if holdout is None:
        return ok[0]
    return min(ok, key=lambda i: (-holdout["top1"][i], holdout["loss"][i], i))


def grid_edges(specs: list[tuple[float, float]], picked: int) -> list[dict]:
    """The grid edges (lowest / highest base lr, largest weight decay, of an axis of several values) the picked
    head sits on, each with the direction in which to extend the grid: a better head may lie beyond them."""
    lr, wd = specs[picked]
    lrs, wds = sorted({s[0] for s in specs}), sorted({s[1] for s in specs})
    found = [("grid.base_lrs", "lowest", lr, "below base lr") if len(lrs) > 1 and lr == lrs[0] and lr > 0 else None,
             ("grid.base_lrs", "highest", lr, "above base lr") if len(lrs) > 1 and lr == lrs[-1] else None,
             ("grid.weight_decays", "highest", wd, "above weight decay") if len(wds) > 1 and wd == wds[-1] else None]
    return [{"key": k, "edge": e, "value": v, "advice": f"extend the grid {where} {v}"}
            for k, e, v, where in filter(None, found)]
