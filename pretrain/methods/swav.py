"""SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS
2020) as the SimSiam paper reproduced it (Table 4 "SwAV (repro.+)": two 224 crops, no multi-crop, no queue at
batch 4096, a 3-layer projector) and moved it toward SimSiam (Sec. 6.2, Fig. 3).

    z_t = f(x_t) / ||f(x_t)||                    # the encoder's projection, l2-normalised (SwAV Sec. 3.1)
    scores_t = C z_t                             # C: K prototypes, unit vectors (model.prototypes)
    q_t = sinkhorn(stopgrad(scores_t))           # codes: the batch's balanced soft assignment (Sec. 3.1, Eq. 3)
    L = l(scores_2, q_1)/2 + l(scores_1, q_2)/2  # swapped prediction, l = -sum_k q log softmax(scores / T)

The codes come from the same scores as the predictions, behind the stop-gradient (main_swav.py: the scores are
detached before Sinkhorn-Knopp, so neither the encoder nor the prototypes get a gradient through q).

Sec. 6.2 variants, as switches:
- model.predictor=trained: "SwAV + predictor". The SimSiam paper sees SwAV as a Siamese network whose target
  branch is the Sinkhorn-Knopp transform; the prediction MLP h goes on the other, online branch, as in SimSiam
  (p = h(z) predicts, the target is stopgrad(z)). So the softmax side scores h(z) / ||h(z)|| against the
  prototypes and the codes still come from z: q_s = SK(C z_s), L = l(C h(z_t), q_s) over both directions.
- model.stop_gradient=false: "SwAV without stop-gradient": the codes carry gradients (back through the
  Sinkhorn-Knopp iterations to the encoder and the prototypes). The paper reports that it diverges; a loss that
  turns NaN stops the run with pretrain.train's NonFiniteLossError, keeping the last good checkpoint.

The prototypes (main_swav.py): a Linear(dim, K, bias=False) named `prototypes` on the model, l2-normalised at
their init and after every optimiser step that moved them (after_step; the official code normalises before each
step, the same weights), and frozen for the first optim.freeze_prototypes_steps steps as the official code
freezes them: after the backward pass and before the optimiser step their gradient is dropped (`p.grad = None`,
before_optimizer_step), so SGD or LARS skips them, neither decaying them nor giving them a momentum buffer, and
they stay bit for bit as initialised.

Distributed: Sinkhorn-Knopp runs over the global batch, as main_swav.py's distributed_sinkhorn (the total and
the row sums are all-reduced, B is the global batch; the column sums are per sample, hence local). The
prototypes are an ordinary module of the model inside DistributedDataParallel: their gradient is averaged over
the ranks with every other one, also during the freeze, where it is then dropped on every rank alike.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..distributed import unwrap, world_size
from ..loss import check_switches
from ..model import HEAD_BN, build_model as build_simsiam

PREDICTORS = ("none", "trained")   # SwAV itself, and Sec. 6.2's "SwAV + predictor"


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(sum) whose backward is the all_reduce(sum) of the gradient (every rank's loss reads the sum)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks (a new tensor; differentiable when `t` carries a gradient)."""
    return t if world_size() == 1 else _SumOverRanks.apply(t)


def sinkhorn(scores: torch.Tensor, iters: int = 3, epsilon: float = 0.05) -> torch.Tensor:
    """SwAV's codes (Sec. 3.1, Eq. 3; App. A.1) of a batch's prototype scores (B x K, this rank's rows of the
    global batch): Q = exp(C^T Z / epsilon), K x B, scaled to total mass 1, then `iters` rounds of making each
    prototype's row sum 1/K and each sample's column sum 1/B (B: the global batch). Returns B x Q^T (B x K,
    each sample's code sums to 1). In fp32 whatever the autocast."""
    q = torch.exp(scores.float() / epsilon).t()   # K x B
    k, b = q.shape[0], q.shape[1] * world_size()
    q = q / global_sum(q.sum())
    for _ in range(iters):
        q = q / global_sum(q.sum(dim=1, keepdim=True)) / k   # rows: every prototype gets 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / b               # columns: every sample 1/B
    return (q * b).t()


def swapped_prediction(scores: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """l(z_t, q_s) = -sum_k q_s^k log softmax(C z_t / T)^k, averaged over the batch (SwAV Eq. 2)."""
    return -(codes * F.log_softmax(scores.float() / temperature, dim=1)).sum(dim=1).mean()


def check(cfg) -> None:
    """The ablation switches' own rules (pretrain.loss.check_switches), and what SwAV gives no meaning."""
    check_switches(cfg)
    m, lo, o = cfg.model, cfg.loss, cfg.optim
    if m.target != "online":
        raise ConfigError(f"model.target={m.target} means nothing for method=swav: its target is the "
                          "Sinkhorn-Knopp code of the online scores; use model.target=online")
    if m.predictor not in PREDICTORS:
        raise ConfigError(f"model.predictor={m.predictor} means nothing for method=swav: use none (SwAV) or "
                          "trained (SwAV + predictor, Sec. 6.2)")
    if m.proj_out_bn_affine and not HEAD_BN[m.head_bn][1]:
        raise ConfigError(f"model.proj_out_bn_affine=true with model.head_bn={m.head_bn}: the projector has no "
                          "output BN to give an affine")
    for key, value, ok in (("model.prototypes", m.prototypes, m.prototypes >= 2),
                           ("loss.temperature", lo.temperature, lo.temperature > 0),
                           ("loss.sinkhorn_iters", lo.sinkhorn_iters, lo.sinkhorn_iters >= 1),
                           ("loss.sinkhorn_epsilon", lo.sinkhorn_epsilon, lo.sinkhorn_epsilon > 0),
                           ("optim.freeze_prototypes_steps", o.freeze_prototypes_steps,
                            o.freeze_prototypes_steps >= 0)):
        if not ok:
            raise ConfigError(f"{key}={value} is out of range for method=swav (prototypes >= 2, temperature "
                              "> 0, sinkhorn_iters >= 1, sinkhorn_epsilon > 0, freeze_prototypes_steps >= 0)")


@torch.no_grad()
def normalise_prototypes(model) -> None:
    """Each prototype back to unit length (main_swav.py, before every step)."""
    w = unwrap(model).prototypes.weight
    w.copy_(F.normalize(w, dim=1, p=2))


def build_model(cfg):
    """The SimSiam network of cfg.model (backbone + projector, predictor or identity) plus the prototypes,
    unit vectors from their init."""
    model = build_simsiam(cfg.model)
    model.prototypes = nn.Linear(cfg.model.dim, cfg.model.prototypes, bias=False)
    normalise_prototypes(model)
    return model


def build_objective(cfg, model, context):
    return SwAVObjective(cfg, model)


class SwAVObjective:
    """The swapped prediction loss of one step, the prototypes' freeze before its update and their
    normalisation after it; stateless (the freeze follows from the global step, so a resume continues it exactly)."""

    stateful = False

    def __init__(self, cfg, model):
        self.temperature = cfg.loss.temperature
        self.iters, self.epsilon = cfg.loss.sinkhorn_iters, cfg.loss.sinkhorn_epsilon
        self.freeze_steps = cfg.optim.freeze_prototypes_steps
        self.stop_gradient = cfg.model.stop_gradient

    def before_step(self, model, loader, *, epoch: int, step_in_epoch: int, step: int):
        return None

    def before_optimizer_step(self, model, step: int) -> None:
        """Freeze the prototypes for global steps 0 .. freeze_prototypes_steps - 1: drop their gradient."""
        if step < self.freeze_steps:
            for p in unwrap(model).prototypes.parameters():
                p.grad = None

    def after_step(self, model, step: int) -> None:
        """Back to unit prototypes after an update that moved them (global step `step` > the freeze)."""
        if step > self.freeze_steps:
            normalise_prototypes(model)

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass

    def __call__(self, model, views, batch_indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        p1, p2, z1, z2 = model(*views)     # p = h(z) (p = z without predictor); z behind model.stop_gradient
        prototypes = unwrap(model).prototypes
        scores = lambda x: prototypes(F.normalize(x, dim=1))  # noqa: E731 - C x / ||x||
        s1, s2 = scores(p1), scores(p2)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.stop_gradient):
            q1, q2 = (sinkhorn(scores(z), self.iters, self.epsilon) for z in (z1, z2))
        loss = 0.5 * (swapped_prediction(s2, q1, self.temperature) + swapped_prediction(s1, q2, self.temperature))
        return loss, z1.detach()
