"""The SimSiam loss (Chen & He, CVPR 2021, Section 3, Eq. 1-4): the symmetrised negative cosine similarity
between the predictions and the stop-gradiented targets.

    p1, p2, z1, z2 = model(x1, x2)          # pretrain.model.SimSiam: z1, z2 are already detached
    loss = simsiam_loss(p1, p2, z1, z2)     # in [-1, 1]; -1 when every prediction matches its target

The paper's ablations of the loss (the `loss:` config section) and of the target branch (pretrain.target)
meet in `Objective`, the one call the training step makes:
- similarity (Sec. 4.5): "cosine" (default) | "cross_entropy", D(p, z) = -softmax(z) . log softmax(p);
- symmetrisation (Sec. 4.6): "symmetric" (default) | "asymmetric", D(p1, z2): one pair per image, the second
  view only a target | "asymmetric_x2", (D(p1, z2) + D(p3, z4)) / 2: two pairs per image (four views), the
  symmetric loss's number of predictions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ConfigError

SIMILARITIES = ("cosine", "cross_entropy")
SYMMETRISATIONS = ("symmetric", "asymmetric", "asymmetric_x2")
# (online view, target view) of each loss term; the terms are averaged
PAIRS = {"symmetric": ((0, 1), (1, 0)), "asymmetric": ((0, 1),), "asymmetric_x2": ((0, 1), (2, 3))}


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch. z arrives already stop-gradiented by the model."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def cross_entropy_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -softmax(z) . log softmax(p), averaged over the batch (Sec. 4.5; z already stop-gradiented)."""
    return -(F.softmax(z, dim=-1) * F.log_softmax(p, dim=-1)).sum(dim=-1).mean()


SIMILARITY = {"cosine": negative_cosine, "cross_entropy": cross_entropy_similarity}


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L = D(p1, z2)/2 + D(p2, z1)/2; minimum -1."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def pair_loss(ps, zs, symmetrisation: str = "symmetric", similarity: str = "cosine") -> torch.Tensor:
    """The mean of D(p_i, z_j) over the (i, j) pairs of `symmetrisation` (PAIRS)."""
    d = SIMILARITY[similarity]
    pairs = PAIRS[symmetrisation]
    return sum(d(ps[i], zs[j]) for i, j in pairs) / len(pairs)


def views_per_image(loss_cfg) -> int:
    """Augmented views the loader makes of each image: four for asymmetric_x2 (two pairs), else two."""
    return 4 if loss_cfg.symmetrisation == "asymmetric_x2" else 2


def check_switches(cfg) -> None:
    """Refuse a combination of the ablation switches that has no meaning (ConfigError naming the keys)."""
    m, lo, o = cfg.model, cfg.loss, cfg.optim
    from .model import HEAD_BN, PREDICTOR
    from .target import TARGETS, parse_every
    for key, value, known in (("model.predictor", m.predictor, PREDICTOR), ("model.head_bn", m.head_bn, HEAD_BN),
                              ("model.target", m.target, TARGETS), ("loss.similarity", lo.similarity, SIMILARITIES),
                              ("loss.symmetrisation", lo.symmetrisation, SYMMETRISATIONS)):
        if value not in known:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(known)}")
    parse_every(m.target_every)
    if m.target == "moving_average" and m.predictor != "none":
        raise ConfigError("model.target=moving_average is the paper's variant without predictor (Sec. 5.2): "
                          f"set model.predictor=none (now '{m.predictor}')")
    if m.target == "moving_average" and lo.symmetrisation == "asymmetric_x2":
        raise ConfigError("model.target=moving_average updates each image's target once per step: use "
                          "loss.symmetrisation=symmetric or asymmetric, not asymmetric_x2")
    if m.target != "online" and not m.stop_gradient:
        raise ConfigError(f"model.stop_gradient=false with model.target={m.target}: that target never carries "
                          "a gradient; model.stop_gradient=false needs model.target=online")
    if m.target != "kstep" and m.target_every != "1":
        raise ConfigError(f"model.target_every={m.target_every} is read by model.target=kstep only "
                          f"(now '{m.target}')")
    if not 0.0 <= m.target_momentum < 1.0:
        raise ConfigError(f"model.target_momentum={m.target_momentum} must be in [0, 1)")
    if m.head_bn == "all" and m.predictor == "none":
        raise ConfigError("model.head_bn=all puts a BN at the predictor's output, but model.predictor=none")
    if not 0 <= o.warmup_epochs < cfg.train.epochs:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} must be >= 0 and below "
                          f"train.epochs={cfg.train.epochs}")


class Objective:
    """The loss of one training step under the `loss:` and `model.target` switches.

    objective(model, views, batch_indices) -> (loss, z1): z1 (the first view's projection, detached) feeds the
    collapse monitor; the caller sets the autocast. The default (two views, cosine, symmetric, online target)
    is exactly `simsiam_loss(*model(x1, x2))`; the other settings ask the model only for the predictions the
    pairs use and take the targets from `target` (pretrain.target)."""

    def __init__(self, loss_cfg, target):
        self.symmetrisation, self.similarity = loss_cfg.symmetrisation, loss_cfg.similarity
        self.target = target
        self.default = (self.symmetrisation, self.similarity, target.kind) == ("symmetric", "cosine", "online")
        self.pairs = PAIRS[self.symmetrisation]
        self.online = tuple(sorted({i for i, _ in self.pairs}))  # views whose prediction a term uses
        self.needed = tuple(sorted({j for _, j in self.pairs}))  # views whose target a term uses

    # The objective protocol every method's objective follows (pretrain.methods): before and after each step,
    # and what a checkpoint keeps of it (the target branch's state: a copy, a store, a queue; None: nothing).
    def before_step(self, model, loader, *, epoch: int, step_in_epoch: int, step: int):
        """Work before a step (a k-step copy's refresh); returns the batch's image indices when the target needs
        them (the moving average), else None."""
        self.target.before_step(model, step, step_in_epoch)
        return self.target.batch_indices(loader, epoch, step_in_epoch)

    def before_optimizer_step(self, model, step: int) -> None:
        """Work on the gradients of global step `step` (0-based), after the backward pass (unscaled under fp16)
        and before the optimiser's update, e.g. dropping a frozen parameter's gradient; nothing here."""

    def after_step(self, model, step: int) -> None:
        """Work after the update that made global step `step` (a momentum encoder's EMA)."""
        self.target.after_step(model, step)

    @property
    def stateful(self) -> bool:
        return self.target.kind != "online"

    def state_dict(self):
        return self.target.state_dict()

    def load_state_dict(self, state) -> None:
        self.target.load_state_dict(state)

    def __call__(self, model, views, batch_indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.default:
            p1, p2, z1, z2 = model(*views)
            return simsiam_loss(p1, p2, z1, z2), z1
        out = model(*views, predict=self.online)
        ps, zs = out[:len(views)], list(out[len(views):])
        targets = self.target.targets(views, zs, batch_indices, self.needed)
        return pair_loss(ps, targets, self.symmetrisation, self.similarity), zs[0].detach()
