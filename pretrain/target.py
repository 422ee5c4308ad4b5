"""The target branch of the loss D(p, stopgrad(target)): one interface, three kinds (`model.target`).

- "online" (default, Algorithm 1): the target of a view is the online encoder's own z, behind the
  stop-gradient.
- "kstep" (Sec. 5.2, k-step alternation): targets come from a copy of the encoder (backbone + projector)
  whose weights are refreshed from the online encoder every `model.target_every` SGD steps ("epoch": at the
  first step of every epoch), before that step; in between its weights are fixed. Its BN normalises with the
  current batch (the copy runs in training mode; its running statistics are never read). The predictor and
  the symmetric loss are kept. k = 1 gives the online targets.
- "momentum": targets from an exponential moving average of the encoder (backbone + projector), updated after
  every SGD step, w_t <- m w_t + (1 - m) w (parameters only; the copy's BN buffers are its own, and like the
  k-step copy it normalises with the current batch). m is `model.target_momentum` ("constant"), or rises from it
  to 1 over the run by BYOL's per-step cosine, m_k = 1 - (1 - m0) (cos(pi k / K) + 1) / 2 ("cosine", K the
  run's steps). BYOL's target network and MoCo's key encoder (pretrain.methods); m = 0 gives a copy of the
  online encoder at every step (BYOL without momentum, Sec. 6.2).
- "moving_average" (Sec. 5.2, without predictor): a stored per-image target eta_x, updated at every visit of
  image x by eta_x <- m eta_x + (1 - m) z_x (m = model.target_momentum, 0.8), where z_x is the online
  projection of the SECOND view (detached), computed at this step before the update; the loss then pulls the
  views towards the updated eta_x. The store starts at zero, so an image's first target points along its second
  view's z (the online target's direction; the cosine ignores the scale).

The moving-average store (images x dim, fp32; 1,281,167 x 2048 = 10.5 GB for ImageNet) is sharded by image
index: rank r of W holds the rows of images i with i % W == r (local row i // W), on the training device. Each
step all-gathers the batch's indices and z (global batch x dim), each rank updates the rows it owns, and one
all-reduce (sum; every row is non-zero on its owner only, so the sum is exact) gives every rank the new targets
of its images: the store equals a one-process run's with the same global batch, bit for bit. The checkpoint
holds the whole store in image order (gathered in chunks on rank 0), so a resume, with any number of
processes, continues bit-exactly.

Every target has targets(views, zs, batch_indices, needed) -> list (the target of each view in `needed`),
before_step(model, global_step, step_in_epoch), after_step(model, global_step) (after the update that made
global_step), batch_indices(loader, epoch, step_in_epoch),
state_dict() (None: nothing to store) / load_state_dict(state) and `describe()` (what a checkpoint records).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError
from .distributed import unwrap, world_size, rank as dist_rank

TARGETS = ("online", "kstep", "moving_average", "momentum")
MOMENTUM_SCHEDULES = ("constant", "cosine")
GATHER_CHUNK_BYTES = 64 << 20


def parse_every(value: str) -> int | None:
    """model.target_every: a positive number of SGD steps, or None for "epoch"."""
    text = str(value).strip().lower()
    if text == "epoch":
        return None
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1 or str(k) != text:
        raise ConfigError(f"model.target_every: '{value}' is neither a positive number of steps nor 'epoch'")
    return k


class OnlineTarget:
    """Algorithm 1: the online encoder's z (already behind the model's stop-gradient)."""

    kind = "online"

    def targets(self, views, zs, batch_indices=None, needed=None) -> list:
        return list(zs)

    def before_step(self, model, global_step: int, step_in_epoch: int) -> None:
        pass

    def after_step(self, model, global_step: int) -> None:
        pass

    def batch_indices(self, loader, epoch: int, step_in_epoch: int):
        return None

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": self.kind}


class KStepTarget(OnlineTarget):
    """Targets from a copy of the encoder refreshed every `every` steps (None: at each epoch's first step)."""

    kind = "kstep"

    def __init__(self, model: nn.Module, every: int | None):
        self.every = every
        self.copy = copy.deepcopy(unwrap(model).encoder).requires_grad_(False)
        self.refreshed_at = -1

    def due(self, global_step: int, step_in_epoch: int) -> bool:
        return step_in_epoch == 0 if self.every is None else global_step % self.every == 0

    def before_step(self, model, global_step: int, step_in_epoch: int) -> None:
        if self.due(global_step, step_in_epoch):
            self.refresh(model)
            self.refreshed_at = global_step

    @torch.no_grad()
    def refresh(self, model) -> None:
        """The copy's weights (and BN buffers) <- the online encoder's."""
        self.copy.load_state_dict(unwrap(model).encoder.state_dict())

    @torch.no_grad()
    def targets(self, views, zs, batch_indices=None, needed=None) -> list:
        self.copy.train()  # BN with the current batch's statistics
        needed = range(len(views)) if needed is None else needed
        return [self.copy(x) if i in needed else None for i, x in enumerate(views)]

    def state_dict(self) -> dict:
        return {**self.describe(), "refreshed_at": self.refreshed_at,
                "weights": {k: v.detach().cpu().clone() for k, v in self.copy.state_dict().items()}}

    def load_state_dict(self, state) -> None:
        if not state or state.get("kind") != self.kind:
            raise ConfigError(f"the checkpoint holds no k-step target copy (found {describe_state(state)}); "
                              "model.target must be the one it was trained with")
        self.copy.load_state_dict(state["weights"])
        self.refreshed_at = int(state["refreshed_at"])

    def describe(self) -> dict:
        return {"kind": self.kind, "every": "epoch" if self.every is None else self.every}


class MomentumTarget(KStepTarget):
    """Targets from an EMA of the encoder, updated after every step (see the module docstring)."""

    kind = "momentum"

    def __init__(self, model: nn.Module, momentum: float, schedule: str = "constant", total_steps: int = 1):
        super().__init__(model, every=None)
        self.base, self.schedule, self.total = float(momentum), schedule, max(int(total_steps), 1)
        self.updated_at = 0

    def before_step(self, model, global_step: int, step_in_epoch: int) -> None:
        pass  # the copy starts equal to the online encoder and moves only in after_step

    def momentum(self, global_step: int) -> float:
        """m for the update after `global_step` steps (constant, or BYOL's cosine from the base to 1)."""
        if self.schedule == "constant":
            return self.base
        return 1.0 - (1.0 - self.base) * (math.cos(math.pi * global_step / self.total) + 1.0) / 2.0

    @torch.no_grad()
    def after_step(self, model, global_step: int) -> None:
        m = self.momentum(global_step - 1)
        online = dict(unwrap(model).encoder.named_parameters())
        for name, w in self.copy.named_parameters():
            w.mul_(m).add_(online[name].detach(), alpha=1.0 - m)
        self.updated_at = global_step

    def state_dict(self) -> dict:
        return {**self.describe(), "updated_at": self.updated_at,
                "weights": {k: v.detach().cpu().clone() for k, v in self.copy.state_dict().items()}}

    def load_state_dict(self, state) -> None:
        if not state or state.get("kind") != self.kind:
            raise ConfigError(f"the checkpoint holds no momentum target encoder (found {describe_state(state)}); "
                              "model.target must be the one it was trained with")
        self.copy.load_state_dict(state["weights"])
        self.updated_at = int(state["updated_at"])

    def describe(self) -> dict:
        return {"kind": self.kind, "momentum": self.base, "schedule": self.schedule, "total_steps": self.total}


def describe_state(state) -> str:
    return "nothing" if not state else f"a '{state.get('kind')}' target"


def epoch_indices(loader, epoch: int) -> list[int]:
    """Dataset indices this rank reads in `epoch`, in order: the device loader's own list, or the
    DistributedSampler partition of the PIL loader."""
    if hasattr(loader, "indices"):
        return loader.indices(epoch)
    from .fastdata import rank_indices
    s = loader.sampler
    return rank_indices(len(s.dataset), s.rank, s.num_replicas, s.seed, epoch)


class MovingAverageTarget(OnlineTarget):
    """eta_x <- m eta_x + (1 - m) z_x per image x (see the module docstring for the view, the initial value and
    the sharding)."""

    kind = "moving_average"
    UPDATE_VIEW = 2
    INITIAL = "zeros"

    def __init__(self, num_images: int, dim: int, momentum: float, device, batch_per_rank: int):
        self.n, self.dim, self.m = int(num_images), int(dim), float(momentum)
        self.world, self.rank = world_size(), dist_rank()
        self.rows = math.ceil(self.n / self.world)  # local rows (the last ranks may hold one unused row)
        self.store = torch.zeros(self.rows, self.dim, dtype=torch.float32, device=device)
        self.batch = int(batch_per_rank)
        self._epoch, self._indices = None, None

    def batch_indices(self, loader, epoch: int, step_in_epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            self._epoch, self._indices = epoch, torch.tensor(epoch_indices(loader, epoch), dtype=torch.long)
        part = self._indices[step_in_epoch * self.batch:(step_in_epoch + 1) * self.batch]
        return part.to(self.store.device)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Update the rows of `indices` with z (this rank's batch); returns their new values (fp32)."""
        z = z.detach().float()
        if self.world == 1:
            new = self.m * self.store[indices] + (1 - self.m) * z
            self.store[indices] = new
            return new
        all_idx = [torch.empty_like(indices) for _ in range(self.world)]
        all_z = [torch.empty_like(z) for _ in range(self.world)]
        dist.all_gather(all_idx, indices.contiguous())
        dist.all_gather(all_z, z.contiguous())
        idx, zz = torch.cat(all_idx), torch.cat(all_z)
        mine = idx % self.world == self.rank
        rows = idx[mine] // self.world
        new = torch.zeros_like(zz)
        owned = self.m * self.store[rows] + (1 - self.m) * zz[mine]
        self.store[rows] = owned
        new[mine] = owned
        dist.all_reduce(new)  # each row is non-zero on its owner only: the sum is that row, exactly
        b = indices.shape[0]
        return new[self.rank * b:(self.rank + 1) * b]

    def targets(self, views, zs, batch_indices=None, needed=None) -> list:
        if batch_indices is None:
            raise ValueError("the moving-average target needs the batch's image indices")
        z = zs[self.UPDATE_VIEW - 1]
        eta = self.update(batch_indices, z).to(z.dtype)
        needed = range(len(views)) if needed is None else needed
        return [eta if i in needed else None for i in range(len(views))]

    @torch.no_grad()
    def full_store(self) -> torch.Tensor | None:
        """The whole store in image order on rank 0 (CPU; None on the other ranks), gathered in chunks."""
        if self.world == 1:
            return self.store[:self.n].cpu().clone()
        full = torch.zeros(self.rows, self.world, self.dim) if self.rank == 0 else None
        chunk = max(1, GATHER_CHUNK_BYTES // (4 * self.dim * self.world))
        for a in range(0, self.rows, chunk):
            part = self.store[a:a + chunk].contiguous()
            got = [torch.empty_like(part) for _ in range(self.world)]
            dist.all_gather(got, part)
            if full is not None:
                full[a:a + chunk] = torch.stack([g.cpu() for g in got], dim=1)
        return None if full is None else full.reshape(-1, self.dim)[:self.n].clone()

    def state_dict(self) -> dict:
        """Collective: every rank calls it; the store is in the result on rank 0 only."""
        return {**self.describe(), "store": self.full_store()}

    @torch.no_grad()
    def load_state_dict(self, state) -> None:
        if not state or state.get("kind") != self.kind or state.get("store") is None:
            raise ConfigError(f"the checkpoint holds no moving-average target store (found "
                              f"{describe_state(state)}); model.target must be the one it was trained with")
        full = state["store"]
        if tuple(full.shape) != (self.n, self.dim):
            raise ConfigError(f"the checkpoint's moving-average store is {tuple(full.shape)}, this run needs "
                              f"{(self.n, self.dim)} (images x model.dim)")
        mine = full[self.rank::self.world]
        self.store.zero_()
        self.store[:mine.shape[0]] = mine.to(self.store.device)

    def describe(self) -> dict:
        return {"kind": self.kind, "momentum": self.m, "initial": self.INITIAL, "update_view": self.UPDATE_VIEW,
                "images": self.n, "dim": self.dim}


def build_target(model_cfg, model: nn.Module, num_images: int | None = None, device=None,
                 batch_per_rank: int = 0, total_steps: int = 1):
    """The target branch of `model_cfg.target` for `model` (the moving average needs the number of training
    images and the per-rank batch, the momentum encoder's cosine the run's number of steps)."""
    if model_cfg.target == "online":
        return OnlineTarget()
    if model_cfg.target == "kstep":
        return KStepTarget(model, parse_every(model_cfg.target_every))
    if model_cfg.target == "moving_average":
        return MovingAverageTarget(num_images, model_cfg.dim, model_cfg.target_momentum, device, batch_per_rank)
    if model_cfg.target == "momentum":
        return MomentumTarget(model, model_cfg.target_momentum, model_cfg.target_momentum_schedule, total_steps)
    raise ConfigError(f"model.target: '{model_cfg.target}' is not one of {', '.join(TARGETS)}")
