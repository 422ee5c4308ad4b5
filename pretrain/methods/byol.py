"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020) as the SimSiam paper reproduced it (Table 4,
"BYOL (repro.)"; Sec. 6.2, Fig. 3).

The online network is SimSiam's (pretrain.model) with BYOL's heads, set by config keys (BYOL Sec. 3.3, J.1):
projector g = Linear(2048, 4096)-BN-ReLU-Linear(4096, 256) (model.proj_layers=2, proj_hidden_dim=4096, dim=256,
head_bn=hidden: no BN at the output) and predictor q = Linear(256, 4096)-BN-ReLU-Linear(4096, 256)
(pred_dim=4096). The target network xi is an exponential moving average of the online encoder (backbone +
projector; pretrain.target.MomentumTarget, model.target=momentum), updated after every step,
xi <- tau xi + (1 - tau) theta, with tau raised from model.target_momentum to 1 by BYOL's per-step cosine
(model.target_momentum_schedule=cosine). The loss (BYOL Eq. 2 and 4; the official code's regression_loss) is
the squared distance of the l2-normalised vectors, 2 - 2 cos, summed over both directions and averaged over
the batch:

    L = mean_b [2 - 2 cos(q(z1), z2')] + mean_b [2 - 2 cos(q(z2), z1')]      z' = the target's projection

so L = 4 + 4 L_SimSiam when the targets equal the online z: BYOL with tau = 0 (Sec. 6.2, "BYOL without
momentum": model.target_momentum=0, model.target_momentum_schedule=constant) is SimSiam with four times its
gradient. LARS and the warm-up are the shared optimiser's (optim.optimizer=lars, optim.exclude_bn_bias,
optim.warmup_epochs); the recipes are the presets eval_configs/pretrain/byol*.yaml.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..loss import Objective, check_switches
from ..model import build_model as build_siamese
from ..target import MOMENTUM_SCHEDULES, MomentumTarget


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z), averaged over the batch (BYOL Eq. 2; z is a constant target)."""
    return (2.0 - 2.0 * F.cosine_similarity(p, z, dim=-1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetrised loss (Eq. 4): view 1's prediction regresses view 2's target and vice versa; in [0, 8]."""
    return regression_loss(p1, t2) + regression_loss(p2, t1)


def check(cfg) -> None:
    """BYOL's target is the momentum encoder and its predictor trains; the loss switches of SimSiam's ablations
    (loss.similarity, loss.symmetrisation) are refused by pretrain.methods.OWN_KEYS, the rest by the ablations'
    own check (e.g. model.stop_gradient=false: the momentum target never carries a gradient)."""
    m = cfg.model
    if m.target != "momentum":
        raise ConfigError(f"model.target={m.target}: method=byol learns from its momentum target encoder; "
                          "set model.target=momentum (BYOL without momentum: model.target_momentum=0, "
                          "model.target_momentum_schedule=constant)")
    if m.predictor != "trained":
        raise ConfigError(f"model.predictor={m.predictor}: method=byol trains its predictor (BYOL Sec. 3.1); "
                          "set model.predictor=trained")
    if m.target_momentum_schedule not in MOMENTUM_SCHEDULES:
        raise ConfigError(f"model.target_momentum_schedule: '{m.target_momentum_schedule}' is not one of "
                          f"{', '.join(MOMENTUM_SCHEDULES)}")
    check_switches(cfg)


def build_model(cfg):
    """The online network: SimSiam's encoder and predictor with the heads of cfg.model (BYOL's in the presets)."""
    return build_siamese(cfg.model)


class ByolObjective(Objective):
    """One BYOL step: the online predictions of both views, the momentum encoder's projections as targets, and
    after the update the target's EMA (the Objective protocol; the checkpoint keeps the target's weights)."""

    def __call__(self, model, views, batch_indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        p1, p2, z1, z2 = model(*views)
        t1, t2 = self.target.targets(views, (z1, z2))
        return byol_loss(p1, p2, t1, t2), z1


def build_objective(cfg, model, context):
    target = MomentumTarget(model, cfg.model.target_momentum, cfg.model.target_momentum_schedule,
                            context.total_steps)
    return ByolObjective(cfg.loss, target)
