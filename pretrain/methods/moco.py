"""MoCo v2 (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020; Chen et al.,
"Improved Baselines with Momentum Contrastive Learning", arXiv 2003.04297) as the SimSiam paper reproduced it
(Table 4, "MoCo v2 (repro.+)": batch 256, a symmetrised loss).

    q = normalize(f_q(x))        f_q: the online encoder (backbone + 2-layer MLP head without BN; no predictor)
    k = normalize(f_k(x'))       f_k: its momentum copy, the key encoder (pretrain.target.MomentumTarget):
                                 w_k <- m w_k + (1 - m) w_q after every step, m = model.target_momentum (0.999)
    ctr(q, k) = CE([q.k, q.queue^T] / T, 0)      InfoNCE: the positive key against the K queued keys
    L = ctr(q1, k2) / 2 + ctr(q2, k1) / 2        loss.symmetrisation=symmetric (the paper's "repro.+")
    L = ctr(q1, k2)                              loss.symmetrisation=asymmetric (MoCo v2 as published)

The queue (model.queue_size keys x model.dim, fp32, l2-normalised random rows at the start, drawn from
train.seed) is first in, first out: after each step the keys of the second view, k2, of the WHOLE global batch
enter it (every rank's keys, gathered in rank order, i.e. in the order of the global batch), replacing the oldest
ones. So the queue grows by one global batch per step, as in the official code (which asserts that the queue
size is a multiple of the batch, as `check` does), and both terms of the symmetrised loss take their negatives
from it: the two views are drawn from one augmentation, so the keys of either view are alike as negatives, and
one queue of K keys keeps the official memory and turn-over (K / batch steps). Every rank enqueues the same
gathered keys, so the queue is identical on every rank. A step's keys enter after its update (after_step): the
loss of a step uses the queue of the steps before it, never its own keys as negatives.

BN in the key encoder: per-process BN lets a query and its positive key see the same batch statistics, a
shortcut the model can exploit (MoCo, Sec. 3.3); the official code shuffles BN across GPUs. So does this
module, with several processes and per-process BN (model.sync_bn=false, the preset): each view's images of the
global batch are all-gathered, rank 0 draws a permutation of the global batch (from train.seed, the step and
the view, so a resumed run redraws it) and broadcasts it, each rank runs the key encoder on its slice of the
permuted batch (train mode: BN normalises with that slice) and the keys are gathered and put back in the
order of the images. Under SyncBN (model.sync_bn=true on GPUs) every BN normalises over the whole global batch
and a shuffle changes nothing, so none is done; in one process the key encoder normalises over the one batch
(no shuffle possible: the official code refuses to run without DDP). The queries' BN is never shuffled.

The objective's state (the checkpoint's "target" entry) is the key encoder's weights and BN buffers, the queue
and its pointer: a resume continues bit-exactly. The online network is pretrain.model.SimSiam without predictor
(model.predictor=none: p = z), whose encoder is what the converters and evaluations read.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..distributed import rank as dist_rank, world_size
from ..loss import check_switches
from ..model import HEAD_BN, build_model as build_online
from ..target import MomentumTarget, describe_state


def check(cfg) -> None:
    """What MoCo v2 reads and refuses (one line naming the key and its value)."""
    check_switches(cfg)
    m, lo, t = cfg.model, cfg.loss, cfg.train
    if m.predictor != "none":
        raise ConfigError(f"method=moco: model.predictor={m.predictor}; MoCo has no predictor (its queries are the "
                          "projections): set model.predictor=none")
    if m.target != "momentum":
        raise ConfigError(f"method=moco: model.target={m.target}; MoCo's keys come from a momentum key encoder: "
                          "set model.target=momentum")
    if m.head_bn == "all":
        raise ConfigError("method=moco: model.head_bn=all puts a BN at the predictor's output, and MoCo has no "
                          "predictor: use none (MoCo v2's head), hidden or hidden_proj_out")
    if m.proj_out_bn_affine and not HEAD_BN[m.head_bn][1]:
        raise ConfigError(f"method=moco: model.proj_out_bn_affine=true, but model.head_bn={m.head_bn} puts no BN "
                          "at the projector's output: remove it")
    if lo.symmetrisation == "asymmetric_x2":
        raise ConfigError("method=moco: loss.symmetrisation=asymmetric_x2 is SimSiam's four-view ablation: use "
                          "symmetric (the paper's MoCo v2 repro.+) or asymmetric (MoCo v2 as published)")
    if lo.temperature <= 0:
        raise ConfigError(f"method=moco: loss.temperature={lo.temperature} must be > 0")
    if m.queue_size <= 0 or m.queue_size % t.batch_size:
        raise ConfigError(f"method=moco: model.queue_size={m.queue_size} must be a positive multiple of "
                          f"train.batch_size={t.batch_size} (each step enqueues one global batch of keys)")


def build_model(cfg):
    """The query encoder: backbone + MoCo v2's MLP head (model.proj_layers, proj_hidden_dim, head_bn) and no
    predictor (model.predictor=none, the only value `check` lets through)."""
    return build_online(cfg.model)


def build_objective(cfg, model, context):
    return MoCoObjective(model, queue_size=cfg.model.queue_size, dim=cfg.model.dim,
                         temperature=cfg.loss.temperature, symmetric=cfg.loss.symmetrisation == "symmetric",
                         momentum=cfg.model.target_momentum, schedule=cfg.model.target_momentum_schedule,
                         total_steps=context.total_steps, seed=cfg.train.seed, device=context.device)


# ------------------------------------------------------------------------------------------------ the loss
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """ctr(q, k): cross-entropy of the logits [q.k, q.queue^T] / T to index 0 (the positive key), averaged over
    the batch; q, k l2-normalised (N x d), queue K x d. In fp32."""
    q, k = q.float(), k.float()
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ queue.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def moco_loss(q1, q2, k1, k2, queue: torch.Tensor, temperature: float, symmetric: bool = True) -> torch.Tensor:
    """ctr(q1, k2)/2 + ctr(q2, k1)/2 (symmetric), or ctr(q1, k2)."""
    if symmetric:
        return 0.5 * info_nce(q1, k2, queue, temperature) + 0.5 * info_nce(q2, k1, queue, temperature)
    return info_nce(q1, k2, queue, temperature)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Equal-sized tensors of every rank, concatenated in rank order (no gradient)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class KeyQueue:
    """K keys (rows, fp32) in a ring: enqueue writes a global batch at the pointer and moves it on, mod K."""

    def __init__(self, size: int, dim: int, seed: int = 0, device=None):
        g = torch.Generator().manual_seed(int(seed))
        self.keys = F.normalize(torch.randn(int(size), int(dim), generator=g), dim=1).to(device)
        self.ptr = 0

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Gather `keys` (this rank's, N x dim) from every rank in rank order and replace the oldest rows."""
        keys = gather(keys.detach().float())
        n, size = keys.shape[0], self.keys.shape[0]
        if size % n:
            raise ValueError(f"a queue of {size} keys cannot take batches of {n} (not a multiple)")
        self.keys[self.ptr:self.ptr + n] = keys
        self.ptr = (self.ptr + n) % size

    def state_dict(self) -> dict:
        return {"keys": self.keys.detach().cpu().clone(), "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        keys = state["keys"]
        if tuple(keys.shape) != tuple(self.keys.shape):
            raise ConfigError(f"the checkpoint's MoCo queue is {tuple(keys.shape)}, this run needs "
                              f"{tuple(self.keys.shape)} (model.queue_size x model.dim)")
        self.keys.copy_(keys.to(self.keys.device))
        self.ptr = int(state["ptr"])


# ------------------------------------------------------------------------------------ shuffled BN (keys)
def shuffle_permutation(n: int, seed: int, step: int, view: int, device=None) -> torch.Tensor:
    """The permutation of the global batch of `view` at `step`: drawn on rank 0, broadcast to every rank."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 2 + int(view)) % (2**63 - 1))
    perm = torch.randperm(n, generator=g).to(device)
    if world_size() > 1:
        dist.broadcast(perm, src=0)
    return perm


def has_sync_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


@torch.no_grad()
def shuffled_keys(encoder: nn.Module, x: torch.Tensor, seed: int, step: int, view: int) -> torch.Tensor:
    """normalize(encoder(x)) for this rank's images x, the encoder's BN seeing a random slice of the global
    batch instead of this rank's own images (see the module docstring); plain forward in one process or under
    SyncBN."""
    encoder.train()
    if world_size() == 1 or has_sync_bn(encoder):
        return F.normalize(encoder(x), dim=1)
    w, r, b = world_size(), dist_rank(), x.shape[0]
    images = gather(x.contiguous())
    perm = shuffle_permutation(images.shape[0], seed, step, view, images.device)
    mine = perm.view(w, b)[r]                                   # global batch positions this rank encodes
    part = images[mine]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        part = part.contiguous(memory_format=torch.channels_last)
    keys = gather(F.normalize(encoder(part), dim=1))            # keys of images perm[0], perm[1], ...
    restored = keys[torch.argsort(perm)]                        # keys of images 0, 1, ... (global order)
    return restored[r * b:(r + 1) * b]


# -------------------------------------------------------------------------------------------- objective
class MoCoObjective:
    """The step's MoCo loss (the objective protocol of pretrain.methods); state: key encoder, queue, pointer."""

    kind = "moco"
    stateful = True

    def __init__(self, model: nn.Module, *, queue_size: int, dim: int, temperature: float, symmetric: bool,
                 momentum: float, schedule: str = "constant", total_steps: int = 1, seed: int = 0, device=None):
        self.key = MomentumTarget(model, momentum, schedule, total_steps)
        self.queue = KeyQueue(queue_size, dim, seed, device)
        self.temperature, self.symmetric, self.seed = float(temperature), bool(symmetric), int(seed)
        self.step, self.pending = 0, None

    def before_step(self, model, loader, *, epoch: int, step_in_epoch: int, step: int):
        self.step = step
        return None

    def before_optimizer_step(self, model, step: int) -> None:
        pass

    def __call__(self, model, views, batch_indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = views
        if self.symmetric:
            p1, p2, z1, _ = model(x1, x2)               # predictor none: p = z, with its gradient
            q1, q2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
            k1 = shuffled_keys(self.key.copy, x1, self.seed, self.step, 0)
        else:
            p1, _, z1, _ = model(x1, x2, predict=(0,))  # the second view's query is not used
            q1, q2, k1 = F.normalize(p1, dim=1), None, None
        k2 = shuffled_keys(self.key.copy, x2, self.seed, self.step, 1)
        self.pending = k2
        return moco_loss(q1, q2, k1, k2, self.queue.keys, self.temperature, self.symmetric), z1

    def after_step(self, model, step: int) -> None:
        """The key encoder's momentum update, then the step's second-view keys (every rank's) enter the queue."""
        self.key.after_step(model, step)
        if self.pending is not None:
            self.queue.enqueue(self.pending)
            self.pending = None

    def state_dict(self) -> dict:
        return {"kind": self.kind, "key_encoder": self.key.state_dict(), "queue": self.queue.state_dict(),
                "temperature": self.temperature, "symmetric": self.symmetric}

    def load_state_dict(self, state) -> None:
        if not state or state.get("kind") != self.kind:
            raise ConfigError(f"the checkpoint holds no MoCo key encoder and queue (found {describe_state(state)});"
                              " resume with the method it was trained with")
        self.key.load_state_dict(state["key_encoder"])
        self.queue.load_state_dict(state["queue"])
