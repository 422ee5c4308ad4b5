"""SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020), as the SimSiam paper reproduced it ("SimCLR (repro.+)", Table 4: batch 4096, LARS,
the 3-layer projector of SimCLR v2), and its Sec. 6.2 variants (Fig. 3).

The online network is pretrain.model.SimSiam: encoder = backbone + projector, and no predictor (model.predictor=
none: p = z). The loss is InfoNCE (NT-Xent, SimCLR Sec. 2.1, Eq. 1) over the global batch. For the N images of
the global batch and their two views, with u = l2-normalise:

    row i of view a, query q = u(p_a,i), key of the positive k = u(z_b,i) (b the other view); negatives: the
    keys of the 2N - 2 other views in the batch, u(z_a,j) and u(z_b,j) for j != i; the query's own key
    u(z_a,i) is left out.
    loss = mean_i CE_a(i) + mean_i CE_b(i),   CE = -log softmax over the 2N - 1 keys / temperature

(the sum of the two views' mean cross-entropies, as the official code's `add_contrastive_loss`; its chance value
is 2 ln(2N - 1)). Plain SimCLR has q = k = z and model.stop_gradient=false: both sides of every similarity get
gradients. Sec. 6.2: model.predictor=trained makes the queries the predictions p = h(z), the keys staying the
projections z ("SimCLR w/ predictor", 66.4 vs 66.5); with model.stop_gradient=true as well the keys are constants
("w/ pred. & stop-grad", 66.0).

Across processes each rank holds its share of the batch: it gathers the keys of every rank with their gradients
(torch.distributed.nn.functional.all_gather: the backward pass returns each rank the gradients that every rank's
loss sends to its keys), and computes the loss of its own rows against all 2N keys. DistributedDataParallel
averages the ranks' gradients, which is the gradient of the mean of the ranks' losses, the one-process loss of the
global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..distributed import rank, world_size
from ..loss import check_switches
from ..model import build_model as build_siamese
from ..optim import check as check_optimizer


def check(cfg) -> None:
    """The shared switches (pretrain.loss.check_switches, pretrain.optim.check), then what SimCLR gives no
    meaning to."""
    check_switches(cfg)
    check_optimizer(cfg.optim)
    m, lo = cfg.model, cfg.loss
    if m.target != "online":
        raise ConfigError(f"model.target={m.target}: SimCLR's keys are the online encoder's own projections "
                          "(model.target=online)")
    if not lo.temperature > 0:
        raise ConfigError(f"loss.temperature={lo.temperature} must be > 0")


def build_model(cfg):
    return build_siamese(cfg.model)


def build_objective(cfg, model, context):
    return InfoNCE(cfg.loss.temperature)


def gather_keys(k: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `k`, in rank order, with their gradients (one process: k itself)."""
    if world_size() == 1:
        return k
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(k))


def info_nce(queries, keys, temperature: float, offset: int = 0) -> torch.Tensor:
    """SimCLR's loss of this rank's rows: queries (q1, q2), n x d each, its own images' two views; keys (k1, k2),
    N x d each, the global batch's (this rank's images at rows offset .. offset + n). Module doc."""
    n, big_n = queries[0].shape[0], keys[0].shape[0]
    q = F.normalize(torch.cat(queries), dim=1)                      # 2n x d: view 1, then view 2
    k = F.normalize(torch.cat(keys), dim=1)                         # 2N x d
    logits = q @ k.t() / temperature                                # 2n x 2N
    view = torch.arange(2 * n, device=q.device) // n
    image = offset + torch.arange(2 * n, device=q.device) % n
    own = view * big_n + image                                      # the query's own key: left out
    positive = (1 - view) * big_n + image                           # the other view of its image
    logits = logits.masked_fill(F.one_hot(own, 2 * big_n).bool(), float("-inf"))
    return 2 * F.cross_entropy(logits, positive)    # mean over 2n rows = (CE_a + CE_b) / 2; fp32 under autocast


class InfoNCE:
    """The step objective (pretrain.methods protocol): no target branch, nothing to keep in a checkpoint."""

    stateful = False

    def __init__(self, temperature: float):
        self.temperature = temperature

    def before_step(self, model, loader, *, epoch: int, step_in_epoch: int, step: int):
        return None

    def before_optimizer_step(self, model, step: int) -> None:
        pass

    def after_step(self, model, step: int) -> None:
        pass

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass

    def __call__(self, model, views, batch_indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        p1, p2, z1, z2 = model(*views)        # p = z without predictor; z behind model.stop_gradient
        n = p1.shape[0]
        keys = (gather_keys(z1), gather_keys(z2))
        return info_nce((p1, p2), keys, self.temperature, offset=rank() * n), z1.detach()
