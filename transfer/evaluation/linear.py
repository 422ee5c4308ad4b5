"""Linear evaluation on frozen features (the ImageNet protocol of the SimSiam paper / official code).

    simsiam linear --weights CKPT --output DIR [--config PRESET] [key=value ...]
    python -m transfer.evaluation.linear ...

The backbone (any checkpoint `transfer.evaluation.convert` reads, or `--weights random` for a random-init baseline of
`model.arch`, with `model.zero_init_residual`) is frozen and kept in eval mode for the whole run, also under DDP (only the linear head is
wrapped). A linear classifier (fc init N(0, 0.01), bias 0) on the pooled features (2048-d for ResNet-50,
512-d for ResNet-18) is trained with LARS (transfer.evaluation.lars: LARC semantics, trust 0.001, no clipping), batch
4096, lr = 0.1 x batch / 256, weight decay 0, momentum 0.9, cosine decay over 90 epochs;
RandomResizedCrop + flip for training, Resize(256) + CenterCrop(224) for validation. Presets in
eval_configs/linear/ change what differs (imagenet_sgd: SGD lr 30 at batch 256; cifar10; demo).

Grid mode (`grid.enabled=true`, preset `grid`) trains many heads in the same pass instead: one head per
(base lr, weight decay) of `grid.base_lrs` x `grid.weight_decays`, all from the same initial weights, all on
the same features of the same augmented batch (the backbone runs once per batch; the heads are one matmul,
each head its own weight and bias tensors in its own optimizer param group, so LARS's trust ratio and the
lr / weight decay are per head). The loss is the sum of the heads' mean losses, so each head's gradient is
the one it would get alone. The heads train on the training split minus a held-out slice (`grid.
holdout_fraction` of it, at most `grid.holdout_max_images`, drawn with `grid.holdout_seed`); the head with
the best held-out top-1 after the last epoch is picked and its validation top-1/top-5 reported as "best of
grid". Default grid (`default_grid`): base lrs optim.base_lr x 10^(k/4), for LARS k = -4..8 (13 values,
/10 to x100: LARS's relative step per iteration is lr x trust, so runs with fewer steps than ImageNet's
need a larger lr, never a much smaller one) and weight decay optim.weight_decay; for SGD k = -4..4 (9 values,
/10 to x10) x weight decays 0, 1e-5, 1e-4. A head whose weights become inf/NaN is marked diverged and never
picked. The paper's protocol is the single-head run; a grid result never enters a paper column.

After training, a checksum of the backbone's state dict (weights and BN statistics) is compared with the
one taken before: any change is an error (`BackboneChangedError`). The run folder holds config.yaml,
metrics.jsonl (stage "linear", one line per epoch: loss, lr, train top-1, val top-1/top-5, time, images/s;
in grid mode those of the picked head plus a "grid" entry with every head's), checkpoint.pth (head(s) +
optimizer, for resume: rerunning the same command continues) and results.json (task "linear", top-1/top-5
in percent; in grid mode a "grid" section: every head's lr, weight decay, held-out and validation accuracy,
the picked index and the held-out slice's size and seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from pretrain import config as config_mod
from pretrain import distributed
from pretrain.augment import eval_crop_fraction, eval_transform, linear_train_transform
from pretrain.checkpoint import CheckpointError, atomic_save, load_torch
from pretrain.data import shard
from pretrain.defaults import ImageFolderData
from pretrain.frame import StageRun, guard
from pretrain.optim import scheduled_lr
from transfer.evaluation.convert import EvalModelConfig, check_eval_model, eval_backbone
from transfer.evaluation.lars import LARS
from transfer.reporting.protocols import linear_fingerprint
from transfer.reporting.results import write_results

FORMAT = "simsiam-suite/linear"
GRID_LABEL = "best of grid"
LARS_LR_STEPS = tuple(range(-4, 9))   # default grid: base lr x 10^(k/4), k in these (LARS: /10 .. x100)
SGD_LR_STEPS = tuple(range(-4, 5))    # SGD: /10 .. x10
SGD_WEIGHT_DECAYS = (0.0, 1e-5, 1e-4)


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class LinearDataConfig(ImageFolderData):
    """The shared data description (pretrain.defaults.ImageFolderData) plus the evaluation views."""
    crop_fraction: float = 0.0      # validation: Resize(image_size / crop_fraction) + CenterCrop(image_size);
    #                                 0: the shared rule (pretrain.augment.eval_crop_fraction: 1.0 up to 64 px, else 0.875)
    augment: bool = True            # training: RandomResizedCrop + flip; false: the validation transform
    val_limit_per_class: int = 0    # >0: first N held-out images of each class


@dataclass(frozen=True)
class LinearOptimConfig:
    optimizer: str = "lars"         # lars (LARC semantics) | sgd
    base_lr: float = 0.1            # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"        # cosine (per epoch, to 0) | constant
    trust_coefficient: float = 0.001
    eps: float = 1e-8


@dataclass(frozen=True)
class LinearTrainConfig:
    epochs: int = 90
    batch_size: int = 4096          # global batch, split evenly across ranks
    eval_batch_size: int = 256      # per rank
    seed: int = 0
    cache_features: bool = False    # needs data.augment=false: extract features once, train the head on them
    amp: str = "none"               # none | bf16 (autocast of the backbone forward, on CUDA and CPU)
    channels_last: bool = False
    gpu_augment: bool = False       # decode + augment on the device (pretrain.fastdata, task "linear")
    print_freq: int = 50
    eval_every: int = 1             # validate every N epochs (and after the last)
    max_steps_per_epoch: int = 0    # >0 truncates epochs (smoke runs)
    stop_after_epochs: int = 0      # >0 stops cleanly after this many epochs in this invocation (tests)
    tensorboard: bool = True


@dataclass(frozen=True)
class LinearGridConfig:
    enabled: bool = False           # true: one head per (base lr, weight decay), picked on a held-out slice
    base_lrs: tuple[float, ...] = ()        # lr = base_lr * batch_size / 256; empty: the default grid
    weight_decays: tuple[float, ...] = ()   # empty: optim.weight_decay (LARS), 0, 1e-5, 1e-4 (SGD)
    holdout_fraction: float = 0.1   # of the training split, held out to pick the head ...
    holdout_max_images: int = 10000  # ... at most this many images
    holdout_seed: int = 0           # which images are held out


@dataclass(frozen=True)
class LinearConfig:
    weights: str = ""               # checkpoint to evaluate (any kind transfer.evaluation.convert reads) or "random"
    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    optim: LinearOptimConfig = field(default_factory=LinearOptimConfig)
    train: LinearTrainConfig = field(default_factory=LinearTrainConfig)
    grid: LinearGridConfig = field(default_factory=LinearGridConfig)


def init_lr(cfg: LinearConfig) -> float:
    """The protocol's initial lr: base_lr x batch / 256."""
    return cfg.optim.base_lr * cfg.train.batch_size / 256


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or BN statistics changed during linear evaluation."""


# ----------------------------------------------------------------------------------------------- the grid
def _round(x: float) -> float:
    """x to 4 significant digits (readable grid values)."""
    return float(f"{x:.4g}")


def default_grid(cfg: LinearConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(base lrs, weight decays) of the default grid around the protocol's base lr (see the module doc)."""
    o = cfg.optim
    steps = LARS_LR_STEPS if o.optimizer == "lars" else SGD_LR_STEPS
    lrs = tuple(_round(o.base_lr * 10 ** (k / 4)) for k in steps)
    wds = (o.weight_decay,) if o.optimizer == "lars" else tuple(sorted({o.weight_decay, *SGD_WEIGHT_DECAYS}))
    return lrs, wds


def grid_heads(cfg: LinearConfig) -> list[tuple[float, float]]:
    """(base lr, weight decay) of every head: the protocol's one head, or the grid's (lr-major order)."""
    if not cfg.grid.enabled:
        return [(cfg.optim.base_lr, cfg.optim.weight_decay)]
    lrs, wds = default_grid(cfg)
    lrs = tuple(cfg.grid.base_lrs) or lrs
    wds = tuple(cfg.grid.weight_decays) or wds
    return [(float(lr), float(wd)) for lr in lrs for wd in wds]


def holdout_split(n: int, grid: LinearGridConfig) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of a training split of n images, both sorted: a random slice of
    round(holdout_fraction x n) images (at least 1, at most holdout_max_images) drawn with holdout_seed."""
    k = min(max(1, round(grid.holdout_fraction * n)), grid.holdout_max_images)
    if k >= n:
        raise config_mod.ConfigError(f"grid.holdout_fraction={grid.holdout_fraction}: holding out {k} of {n} "
                                     "training images leaves none to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(grid.holdout_seed)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


class HeadGrid(nn.Module):
    """H linear heads on the same features, all initialised alike (N(0, 0.01) from `seed`, bias 0). Each head
    has its own weight and bias tensors (per-tensor LARS and per-head param groups see one head each); the
    forward is one matmul over their concatenation and returns logits (B, H, C)."""

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


def head_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-head mean cross-entropy (H,) of logits (B, H, C); the gradient of their sum with respect to a
    head's weights is that head's gradient when trained alone."""
    b, h, c = logits.shape
    if h == 1:
        return F.cross_entropy(logits[:, 0], y).reshape(1)
    return F.cross_entropy(logits.reshape(b * h, c), y.repeat_interleave(h), reduction="none").view(b, h).mean(0)


def pick_head(holdout: dict, finite: list[bool]) -> int:
    """Index of the head with the best held-out top-1 (then the lower held-out loss, then the first) among
    those that did not diverge."""
    ok = [i for i, f in enumerate(finite) if f]
    if not ok:
        raise FloatingPointError("linear evaluation: every head of the grid diverged (weights inf/NaN): lower "
                                 "grid.base_lrs")
    return min(ok, key=lambda i: (-holdout["top1"][i], holdout["loss"][i], i))


# --------------------------------------------------------------------------------------------- helpers
def state_checksum(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def build_head(in_dim: int, num_classes: int) -> nn.Linear:
    """The protocol's head: nn.Linear with weights N(0, 0.01) and bias 0."""
    head = nn.Linear(in_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def build_optimizer(params, cfg: LinearConfig, lr: float) -> torch.optim.Optimizer:
    """LARS or SGD of the config over `params` (tensors or param groups; a group's lr / weight_decay win)."""
    o = cfg.optim
    if o.optimizer == "lars":
        return LARS(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                    trust_coefficient=o.trust_coefficient, eps=o.eps)
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    raise config_mod.ConfigError(f"optim.optimizer: unknown optimizer '{o.optimizer}' (known: lars, sgd)")


def build_grid_optimizer(grid: HeadGrid, heads: list[tuple[float, float]], cfg: LinearConfig):
    """One param group per head (its weight and bias) with the head's lr (base lr x batch / 256) and weight
    decay; returns (optimizer, initial lr per group)."""
    scale = cfg.train.batch_size / 256
    groups = [{"params": grid.head_params(i), "lr": lr * scale, "weight_decay": wd}
              for i, (lr, wd) in enumerate(heads)]
    return build_optimizer(groups, cfg, heads[0][0] * scale), [lr * scale for lr, _ in heads]


def _check_grid(cfg: LinearConfig) -> None:
    """Grid keys only with grid.enabled, a held-out fraction in (0, 1), no negative or repeated values."""
    g = cfg.grid
    if not g.enabled:
        if g.base_lrs or g.weight_decays:
            raise config_mod.ConfigError("grid.base_lrs / grid.weight_decays need grid.enabled=true")
        return
    if not 0.0 < g.holdout_fraction < 1.0:
        raise config_mod.ConfigError(f"grid.holdout_fraction: {g.holdout_fraction} is not between 0 and 1")
    if g.holdout_max_images < 1:
        raise config_mod.ConfigError(f"grid.holdout_max_images: {g.holdout_max_images} is not positive")
    if any(not math.isfinite(v) or v < 0 for v in (*g.base_lrs, *g.weight_decays)):
        raise config_mod.ConfigError("grid.base_lrs and grid.weight_decays must be finite and >= 0")
    heads = grid_heads(cfg)
    if len(set(heads)) != len(heads):
        raise config_mod.ConfigError("grid.base_lrs / grid.weight_decays: a value is repeated")


def _check_config(cfg: LinearConfig) -> None:
    """ConfigError (one line, exit 2 from the CLI) for a config that cannot run."""
    check_eval_model(cfg.weights, cfg.model)
    if cfg.train.cache_features and cfg.data.augment:
        raise config_mod.ConfigError("train.cache_features=true needs data.augment=false (cached features are "
                                     "computed once, without random crops)")
    if cfg.train.amp not in ("none", "bf16"):
        raise config_mod.ConfigError(f"train.amp: '{cfg.train.amp}' is not one of none, bf16")
    if cfg.optim.schedule not in ("cosine", "constant"):
        raise config_mod.ConfigError(f"optim.schedule: unknown schedule '{cfg.optim.schedule}'")
    if cfg.optim.optimizer not in ("lars", "sgd"):
        raise config_mod.ConfigError(f"optim.optimizer: unknown optimizer '{cfg.optim.optimizer}' (known: lars, sgd)")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise config_mod.ConfigError("train.epochs and train.batch_size must be positive")
    _check_grid(cfg)


def load_frozen_backbone(cfg: LinearConfig) -> tuple[nn.Module, dict]:
    """(backbone with fc=Identity, results.json `source`); train.seed: the same random backbone on every rank
    and every call."""
    net, source, _ = eval_backbone(cfg.weights, cfg.model, cfg.train.seed)
    return net, source


def feature_dim_of(backbone: nn.Module, cfg: LinearConfig) -> int:
    """Pooled feature width: the in_features of the final block's last BN (2048 for R50, 512 for R18)."""
    last = backbone.layer4[-1]
    bn = getattr(last, "bn3", None) or last.bn2
    return int(bn.num_features)


def _changed_tensors(backbone: nn.Module, cfg: LinearConfig) -> list[str]:
    """Names of the backbone's tensors that differ from a freshly loaded copy."""
    ref, _ = load_frozen_backbone(cfg)
    now = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    return [k for k, v in ref.state_dict().items() if not torch.equal(v, now[k])]


class _ImageData:
    """Training and held-out datasets (image folders) of the config."""

    def __init__(self, cfg: LinearConfig):
        from pretrain.data import DataError, RobustImageFolder, dataset_name, resolve_roots
        d = cfg.data
        train_dir, val_dir = resolve_roots(d)
        if val_dir is None:
            raise DataError(f"data.root: '{d.root}' has no held-out split (looked for '{d.val_split}', val, test "
                            "next to the training folder): linear evaluation needs one")
        self.name = dataset_name(d)
        self.eval_tf = eval_transform(d.image_size, d.mean, d.std, crop_fraction=d.crop_fraction)
        tr = linear_train_transform(d.image_size, d.mean, d.std) if d.augment else self.eval_tf
        self.train = RobustImageFolder(train_dir, tr, d.on_corrupt, d.limit_per_class)
        self.val = RobustImageFolder(val_dir, self.eval_tf, d.on_corrupt, d.val_limit_per_class)
        if self.train.classes != self.val.classes:
            raise DataError(f"classes of {train_dir} ({len(self.train.classes)}) and {val_dir} "
                            f"({len(self.val.classes)}) differ")
        self.num_classes = len(self.train.classes)
        self.train_dir, self.val_dir = train_dir, val_dir
        self.on_corrupt, self.limit_per_class = d.on_corrupt, d.limit_per_class

    def train_folder(self, transform):
        """The training split again, with another transform (None: file paths only), in the same order."""
        from pretrain.data import RobustImageFolder
        return RobustImageFolder(self.train_dir, transform, self.on_corrupt, self.limit_per_class)


@torch.no_grad()
def _accuracy_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) of logits (B, C)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top[:, :1] == y[:, None]).sum()), int((top == y[:, None]).any(dim=1).sum())


@torch.no_grad()
def _head_counts(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(3, H) float64: per head the top-1 and top-5 hits and the summed loss over a batch of logits (B, H, C)."""
    b, h, c = logits.shape
    top = logits.topk(min(5, c), dim=2).indices
    hit = top == y[:, None, None]
    loss = F.cross_entropy(logits.reshape(b * h, c), y.repeat_interleave(h), reduction="none").view(b, h)
    return torch.stack([hit[..., 0].sum(0).double(), hit.any(2).sum(0).double(), loss.sum(0).double()])


# ----------------------------------------------------------------------------------------------- frame
def run(cfg: LinearConfig, output_dir: str | Path, *, presets: tuple[str, ...] = (),
        _test_train_backbone: bool = False) -> dict:
    """Linear evaluation (or its resume) into output_dir; returns {"top1", "top5", ...}. `presets`: the
    --config names the config came from (recorded in results.json's protocol).

    `_test_train_backbone` exists for the test of the frozen-backbone check only: it lets the backbone
    train (train mode, gradients, in the optimizer), which the final check must catch.
    """
    _check_config(cfg)
    d = cfg.data
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, crop_fraction=d.crop_fraction
                                                            or eval_crop_fraction(d.image_size)))
    with StageRun("linear", output_dir, tensorboard=cfg.train.tensorboard) as sr:
        return _run(cfg, _Frame(sr), sr.info, _test_train_backbone, tuple(presets))


class _Frame:
    """Linear evaluation's own files on top of the stage frame (pretrain.frame.StageRun, which owns the process
    group, the run folder, log.txt, metrics.jsonl and the config files): checkpoint.pth with the heads and
    their optimiser, results.json, barriers and sums over processes."""

    def __init__(self, sr: StageRun):
        self.sr, self.out, self.info, self.log = sr, sr.dir, sr.info, sr.log
        self.ckpt_path = sr.dir / "checkpoint.pth"

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over processes (in place)."""
        if self.info.distributed:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        distributed.barrier()

    def load_checkpoint(self) -> dict | None:
        if not self.ckpt_path.is_file():
            return None
        state = load_torch(self.ckpt_path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{self.ckpt_path}: not a linear-evaluation checkpoint (format "
                                  f"{state.get('format')!r}); use another --output")
        return state

    def save_config(self, cfg: LinearConfig) -> None:
        self.sr.save_config(cfg)

    def write_epoch(self, record: dict, state: dict) -> None:
        """One metrics line and the checkpoint after an epoch (main process)."""
        if self.info.is_main:
            self.sr.metrics.write(record)
            atomic_save({"format": FORMAT, "version": 1, **state}, self.ckpt_path)

    def write_results(self, **kwargs) -> None:
        if self.info.is_main:
            write_results(self.out, task="linear", **kwargs)


# ---------------------------------------------------------------------------------------------- set-up
@dataclass
class _Backbone:
    """The frozen backbone on its device and how its forward runs (precision, memory format)."""
    net: nn.Module
    source: dict
    checksum: str
    dim: int
    device: torch.device
    amp_dtype: Any
    channels_last: bool
    applied: dict

    def features(self, x: torch.Tensor) -> torch.Tensor:
        from pretrain.train import autocast
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device.type, self.amp_dtype):
            return self.net(x).float()


def _setup_backbone(cfg: LinearConfig, dev: torch.device, train_backbone: bool) -> _Backbone:
    """Load the backbone, freeze it (eval mode, no gradients) and take its checksum."""
    from pretrain.train import weights_channels_last
    net, source = load_frozen_backbone(cfg)
    net = net.to(dev)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(train_backbone)
    net.eval()
    amp = torch.bfloat16 if cfg.train.amp == "bf16" and torch.amp.is_autocast_available(dev.type) else None
    applied = {"amp": "bf16" if amp is not None else "none", "channels_last": weights_channels_last(net)}
    return _Backbone(net, source, state_checksum(net), feature_dim_of(net, cfg), dev, amp,
                     cfg.train.channels_last, applied)


@dataclass
class _Heads:
    """The head(s) being trained: the protocol's nn.Linear, or a HeadGrid; their optimizer and lrs."""
    module: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    specs: list          # (base lr, weight decay) per head
    lrs: list            # initial lr per param group (= per head)
    grid: bool

    def logits(self, f: torch.Tensor, train: bool = True) -> torch.Tensor:
        """(B, H, C) logits of every head."""
        out = (self.ddp if train else self.module)(f)
        return out if self.grid else out.unsqueeze(1)

    def finite(self) -> list[bool]:
        if self.grid:
            return self.module.finite()
        return [all(bool(torch.isfinite(p).all()) for p in self.module.parameters())]


def _build_heads(cfg: LinearConfig, bb: _Backbone, num_classes: int, info, train_backbone: bool) -> _Heads:
    """The protocol's head and optimizer (with the backbone's parameters for the test hook), or the grid."""
    specs = grid_heads(cfg)
    dev = bb.device
    if cfg.grid.enabled:
        module = HeadGrid(bb.dim, num_classes, len(specs), cfg.train.seed).to(dev)
        optimizer, lrs = build_grid_optimizer(module, specs, cfg)
    else:
        module = build_head(bb.dim, num_classes).to(dev)
        params = list(module.parameters()) + (list(bb.net.parameters()) if train_backbone else [])
        lrs = [init_lr(cfg)]
        optimizer = build_optimizer(params, cfg, lrs[0])
    ddp = nn.parallel.DistributedDataParallel(
        module, device_ids=[dev.index] if dev.type == "cuda" else None) if info.distributed else module
    return _Heads(module, ddp, optimizer, specs, lrs, cfg.grid.enabled)


def _grid_identity(cfg: LinearConfig, heads: _Heads, split) -> dict | None:
    """What a grid checkpoint must match on resume: the heads and the held-out slice."""
    if not heads.grid:
        return None
    return {"heads": [list(h) for h in heads.specs], "holdout_seed": cfg.grid.holdout_seed,
            "holdout": hashlib.sha256(repr(split[1]).encode()).hexdigest()}


def _resume(frame: _Frame, cfg: LinearConfig, bb: _Backbone, heads: _Heads, grid_id) -> "_Progress":
    """Where the folder's checkpoint left off (epochs done, best so far, picked head), loading the heads and
    the optimizer; a fresh start without one."""
    best = {"top1": None, "top5": None, "epoch": None}
    state = frame.load_checkpoint()
    if state is None:
        return _Progress(0, best)
    if state.get("backbone_checksum") != bb.checksum:
        raise RuntimeError(f"{frame.ckpt_path}: this output folder holds a linear evaluation of other weights "
                           f"(backbone checksum differs from {cfg.weights}); use a new --output")
    if state.get("grid") != grid_id:
        raise RuntimeError(f"{frame.ckpt_path}: this output folder holds a linear evaluation with other heads "
                           "(grid.enabled, grid.base_lrs, grid.weight_decays or the held-out slice differ); use "
                           "a new --output")
    heads.module.load_state_dict(state["head"], strict=True)
    heads.optimizer.load_state_dict(state["optimizer"])
    frame.log.info("resumed from %s after epoch %d", frame.ckpt_path, int(state["epoch"]))
    return _Progress(int(state["epoch"]), state.get("best", best), picked=int(state.get("picked", 0)))


# ------------------------------------------------------------------------------------------------ data
@dataclass
class _Loaders:
    """What the epochs read: training batches (and the object to set_epoch on), the validation split, the
    grid's held-out slice (None for the protocol), how a batch becomes features, and split sizes."""
    train: Any
    sampler: Any
    val: Any
    holdout: Any
    to_features: Callable
    train_images: int
    holdout_images: int


def _eval_loader(cfg: LinearConfig, info, dataset) -> DataLoader:
    """In-order batches of this process's share of an evaluation split."""
    return DataLoader(shard(dataset, info.rank, info.world_size), batch_size=cfg.train.eval_batch_size,
                      shuffle=False, num_workers=cfg.data.workers, pin_memory=info.device.type == "cuda")


def _cached_features(cfg, info, bb: _Backbone, data: _ImageData, log):
    """Features of both splits, once, in dataset order: (train features, labels, val features, labels)."""
    from pretrain.monitor import extract_features
    t0 = time.time()
    bb.net.eval()

    def in_order(dataset):
        f, y = extract_features(bb.features, _eval_loader(cfg, info, dataset), info.device)
        order = torch.tensor([i for r in range(info.world_size) for i in range(r, len(dataset), info.world_size)])
        return f.cpu()[order.argsort()], y.cpu()[order.argsort()]  # the ranks' shards back into dataset order

    (ftr, ytr), (fva, yva) = in_order(data.train), in_order(data.val)
    log.info("cached features: %d train, %d held-out (%d-d) in %.1f s", len(ftr), len(fva), bb.dim,
             time.time() - t0)
    return ftr, ytr, fva, yva


def _feature_loaders(cfg, info, bb: _Backbone, data: _ImageData, split, log) -> _Loaders:
    """Training on cached features (train.cache_features)."""
    ftr, ytr, fva, yva = _cached_features(cfg, info, bb, data, log)
    def ev(ds):
        return DataLoader(shard(ds, info.rank, info.world_size), batch_size=cfg.train.eval_batch_size)
    holdout = None
    if split is not None:
        keep, hold = torch.tensor(split[0]), torch.tensor(split[1])
        holdout = ev(TensorDataset(ftr[hold], ytr[hold]))
        ftr, ytr = ftr[keep], ytr[keep]
    train_set = TensorDataset(ftr, ytr)
    sampler, loader = _train_sampler_loader(cfg, info, train_set, workers=0, pin=False)
    return _Loaders(loader, sampler, ev(TensorDataset(fva, yva)), holdout, lambda x: x.to(info.device),
                    len(train_set), len(split[1]) if split else 0)


def _train_sampler_loader(cfg, info, train_set, workers: int, pin: bool):
    """(sampler, loader) of this process's shuffled share of the training set (seeded per epoch)."""
    per_rank = cfg.train.batch_size // info.world_size
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=False)
    return sampler, DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=workers,
                               pin_memory=pin, drop_last=False)


def _image_loaders(cfg, info, bb: _Backbone, data: _ImageData, split) -> _Loaders:
    """Training on images through the backbone, PIL transforms in loader workers."""
    train_set, holdout = data.train, None
    if split is not None:
        train_set = Subset(data.train, split[0])
        holdout = _eval_loader(cfg, info, Subset(data.train_folder(data.eval_tf), split[1]))
    sampler, loader = _train_sampler_loader(cfg, info, train_set, cfg.data.workers, info.device.type == "cuda")
    return _Loaders(loader, sampler, _eval_loader(cfg, info, data.val), holdout, bb.features, len(train_set),
                    len(split[1]) if split else 0)


def _device_loaders(cfg, info, bb: _Backbone, data: _ImageData, split) -> _Loaders:
    """The fast path (train.gpu_augment): JPEG decode + RandomResizedCrop/flip on the device, the validation
    split (and the grid's held-out slice) in device memory."""
    from pretrain import fastdata
    from pretrain.data import DataError
    d, t, cl = cfg.data, cfg.train, cfg.train.channels_last
    source = fastdata.build_gpu_batches(d, t.batch_size // info.world_size, info.rank, info.world_size, t.seed,
                                        info.device, task="linear", channels_last=cl)
    val = fastdata.build_gpu_eval_batches(data.val_dir, d, info.device, limit_per_class=d.val_limit_per_class,
                                          batch_size=t.eval_batch_size, crop_fraction=d.crop_fraction,
                                          rank=info.rank, world_size=info.world_size, channels_last=cl)
    holdout = None
    if split is not None:
        if source.num_images != len(data.train):
            raise DataError(f"{data.train_dir}: {source.num_images} of {len(data.train)} training images readable; "
                            "the grid's held-out slice needs them all (or train.gpu_augment=false)")
        source.subset(split[0])
        folder = data.train_folder(None)
        folder.samples = [folder.samples[i] for i in split[1]]
        held = fastdata.load_eval_memory(folder, info.device, d.image_size, d.crop_fraction)
        holdout = fastdata.DeviceEvalLoader(held, d.mean, d.std, t.eval_batch_size, info.rank, info.world_size, cl)
    return _Loaders(_OneView(source), source, val, holdout, bb.features, source.num_images,
                    len(split[1]) if split else 0)


class _OneView:
    """The device source's batches ((x,), labels) as (x, labels), like the other training loaders."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        return ((views[0], y) for views, y in self.source)


def _build_loaders(cfg, info, bb: _Backbone, data: _ImageData, split, log) -> _Loaders:
    """The loaders of the config's data path; `split`: the grid's (training, held-out) indices or None."""
    if cfg.train.batch_size % info.world_size:
        raise config_mod.ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                                     f"{info.world_size} processes")
    if cfg.train.cache_features:
        return _feature_loaders(cfg, info, bb, data, split, log)
    if cfg.train.gpu_augment:
        return _device_loaders(cfg, info, bb, data, split)
    return _image_loaders(cfg, info, bb, data, split)


# --------------------------------------------------------------------------------------------- epochs
def _train_epoch(cfg: LinearConfig, frame: _Frame, bb: _Backbone, heads: _Heads, loaders: _Loaders, epoch: int,
                 train_backbone: bool) -> dict:
    """One epoch over the training batches: every head's step on the same features; per-head sums."""
    for g, lr0 in zip(heads.optimizer.param_groups, heads.lrs):
        g["lr"] = scheduled_lr(lr0, epoch, cfg.train.epochs, cfg.optim.schedule)
    loaders.sampler.set_epoch(epoch)
    heads.ddp.train()
    bb.net.train(train_backbone)  # frozen: eval mode, always (BN statistics must not move)
    dev, n_heads = bb.device, len(heads.specs)
    sums = torch.zeros(2, n_heads, dtype=torch.float64, device=dev)  # loss x images, correct
    seen, steps, t0 = 0, 0, time.time()
    for i, (x, y) in enumerate(loaders.train):
        if cfg.train.max_steps_per_epoch and i >= cfg.train.max_steps_per_epoch:
            break
        y = y.to(dev, non_blocking=True)
        with torch.set_grad_enabled(train_backbone):
            f = loaders.to_features(x)
        logits = heads.logits(f)
        losses = head_losses(logits, y)
        _check_finite(losses, heads.grid, cfg, epoch, i)
        heads.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        heads.optimizer.step()
        sums[0] += losses.detach().double() * y.shape[0]
        sums[1] += (logits.detach().argmax(2) == y[:, None]).sum(0).double()
        seen, steps = seen + y.shape[0], steps + 1
        if frame.info.is_main and cfg.train.print_freq and steps % cfg.train.print_freq == 0:
            frame.log.info("epoch %d step %d/%d loss %.4f", epoch + 1, steps, len(loaders.train),
                           float(losses.min() if heads.grid else losses[0]))
    elapsed = time.time() - t0
    seen_t = frame.sum(torch.tensor([float(seen)], dtype=torch.float64, device=dev))
    sums, seen = frame.sum(sums), max(float(seen_t.item()), 1.0)
    return {"lr": [g["lr"] for g in heads.optimizer.param_groups], "loss": (sums[0] / seen).tolist(),
            "train_top1": (100.0 * sums[1] / seen).tolist(), "time": elapsed, "images_per_s": seen / max(elapsed, 1e-9)}


def _check_finite(losses: torch.Tensor, grid: bool, cfg: LinearConfig, epoch: int, step: int) -> None:
    """The protocol's head stops the run at a non-finite loss; a grid only when every head's is."""
    if bool(torch.isfinite(losses).any()):
        return
    what = "grid.base_lrs (every head of the grid diverged)" if grid else f"optim.base_lr (now {cfg.optim.base_lr})"
    raise FloatingPointError(f"linear evaluation: loss is {losses.min().item()} at epoch {epoch + 1}, step "
                             f"{step}: lower {what}")


@torch.no_grad()
def _evaluate(frame: _Frame, bb: _Backbone, heads: _Heads, loader, to_features) -> dict:
    """Per-head top-1 / top-5 (percent) and mean loss over a split, summed over processes."""
    heads.ddp.eval()
    bb.net.eval()
    counts = torch.zeros(3, len(heads.specs), dtype=torch.float64, device=bb.device)
    n = 0
    for x, y in loader:
        y = y.to(bb.device)
        counts += _head_counts(heads.logits(to_features(x), train=False), y)
        n += y.shape[0]
    counts = frame.sum(counts)
    n = int(frame.sum(torch.tensor([float(n)], dtype=torch.float64, device=bb.device)).item())
    c = (counts / max(n, 1)).tolist()
    return {"top1": [100.0 * v for v in c[0]], "top5": [100.0 * v for v in c[1]], "loss": c[2], "images": n}


def _clean(values: list) -> list:
    """Non-finite numbers as None (JSON has no NaN)."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _epoch_record(epoch: int, heads: _Heads, tr: dict, ev: dict | None, hold: dict | None, picked: int) -> dict:
    """The metrics line of an epoch: the protocol's keys for its head (in grid mode the picked head's) and,
    in grid mode, a "grid" entry with every head's values."""
    p = picked
    record = {"stage": "linear", "epoch": epoch + 1, "lr": tr["lr"][p], "loss": tr["loss"][p],
              "train_top1": tr["train_top1"][p], "time": tr["time"], "images_per_s": tr["images_per_s"]}
    if ev is not None:
        record.update(top1=ev["top1"][p], top5=ev["top5"][p], val_loss=ev["loss"][p], val_images=ev["images"])
    if not heads.grid:
        return record
    grid = {"base_lr": [h[0] for h in heads.specs], "weight_decay": [h[1] for h in heads.specs],
            "loss": _clean(tr["loss"]), "train_top1": tr["train_top1"]}
    if ev is not None:
        finite = heads.finite()
        keep = lambda vals: [v if ok else None for v, ok in zip(vals, finite)]  # noqa: E731
        grid.update(holdout_top1=keep(hold["top1"]), holdout_loss=_clean(keep(hold["loss"])),
                    top1=keep(ev["top1"]), top5=keep(ev["top5"]), diverged=[not f for f in finite])
        record.update(holdout_top1=hold["top1"][p], holdout_images=hold["images"])
    record.update(picked=p, grid=grid)
    return record


@dataclass
class _Progress:
    """Where the run stands: epochs done, best validation top-1 of the protocol's head, the last
    evaluations and the head picked on the held-out slice."""
    epoch: int
    best: dict
    ran: int = 0
    last_eval: dict | None = None
    last_holdout: dict | None = None
    picked: int = 0


def _evaluate_all(frame, bb, heads, loaders, prog: _Progress, epoch: int | None) -> None:
    """Validation (and the held-out slice in grid mode): updates the pick and the protocol's best."""
    prog.last_eval = _evaluate(frame, bb, heads, loaders.val, loaders.to_features)
    if heads.grid:
        prog.last_holdout = _evaluate(frame, bb, heads, loaders.holdout, loaders.to_features)
        prog.picked = pick_head(prog.last_holdout, heads.finite())
    top1 = prog.last_eval["top1"][prog.picked]
    if epoch is not None and (prog.best["top1"] is None or top1 > prog.best["top1"]):
        prog.best = {"top1": top1, "top5": prog.last_eval["top5"][prog.picked], "epoch": epoch + 1}


def _train(cfg, frame: _Frame, bb: _Backbone, heads: _Heads, loaders: _Loaders, prog: _Progress,
           train_backbone: bool, grid_id) -> _Progress:
    """The epochs from prog.epoch on, each followed by its metrics line and checkpoint."""
    for epoch in range(prog.epoch, cfg.train.epochs):
        tr = _train_epoch(cfg, frame, bb, heads, loaders, epoch, train_backbone)
        evaluated = (epoch + 1) % max(cfg.train.eval_every, 1) == 0 or epoch + 1 == cfg.train.epochs
        if evaluated:
            _evaluate_all(frame, bb, heads, loaders, prog, epoch)
        record = _epoch_record(epoch, heads, tr, prog.last_eval if evaluated else None, prog.last_holdout,
                               prog.picked)
        prog.epoch, prog.ran = epoch + 1, prog.ran + 1
        frame.write_epoch(record, {"epoch": prog.epoch, "head": heads.module.state_dict(),
                                   "optimizer": heads.optimizer.state_dict(), "best": prog.best,
                                   "backbone_checksum": bb.checksum, "weights": cfg.weights,
                                   "config": config_mod.to_dict(cfg), "grid": grid_id, "picked": prog.picked})
        if frame.info.is_main:
            frame.log.info("epoch %d/%d: loss %.4f train top-1 %.2f%s lr %.4g %.0f img/s%s", prog.epoch,
                           cfg.train.epochs, record["loss"], record["train_top1"],
                           f" val top-1 {record['top1']:.2f} top-5 {record['top5']:.2f}" if "top1" in record else "",
                           record["lr"], record["images_per_s"],
                           f" (head {prog.picked} of {len(heads.specs)}, picked on the held-out slice)"
                           if heads.grid else "")
        frame.barrier()
        if cfg.train.stop_after_epochs and prog.ran >= cfg.train.stop_after_epochs:
            frame.log.info("stopping after %d epoch(s) in this invocation (train.stop_after_epochs); run the same "
                           "command again to resume", prog.ran)
            break
    return prog


def _check_backbone(cfg: LinearConfig, bb: _Backbone) -> None:
    """The backbone must be exactly what was loaded."""
    after = state_checksum(bb.net)
    if after != bb.checksum:
        changed = _changed_tensors(bb.net, cfg)
        raise BackboneChangedError(
            f"the backbone changed during linear evaluation (state-dict sha256 {bb.checksum[:12]} -> {after[:12]}); "
            f"changed tensors: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}. The result would "
            "not be a linear evaluation of frozen features; nothing was written to results.json")


def _grid_section(cfg: LinearConfig, heads: _Heads, prog: _Progress, loaders: _Loaders) -> dict:
    """results.json "grid": every head's lr, weight decay, held-out and validation accuracy; the pick."""
    finite, ev, hold = heads.finite(), prog.last_eval, prog.last_holdout
    rows = []
    for i, ((base_lr, wd), lr, ok) in enumerate(zip(heads.specs, heads.lrs, finite)):
        acc = {"holdout_top1": hold["top1"][i], "holdout_top5": hold["top5"][i], "top1": ev["top1"][i],
               "top5": ev["top5"][i]} if ok else dict.fromkeys(("holdout_top1", "holdout_top5", "top1", "top5"))
        rows.append({"base_lr": base_lr, "lr": lr, "weight_decay": wd, **acc, "diverged": not ok})
    g = cfg.grid
    return {"heads": rows, "picked": prog.picked, "selected_by": "held-out top-1 after the last epoch",
            "holdout": {"images": loaders.holdout_images, "fraction": g.holdout_fraction,
                        "max_images": g.holdout_max_images, "seed": g.holdout_seed},
            "train_images": loaders.train_images, "label": grid_label(loaders.holdout_images, g.holdout_seed)}


def grid_label(holdout_images: int, seed: int) -> str:
    """How tables name a grid result."""
    return f"{GRID_LABEL} (held-out {holdout_images} images, seed {seed})"


def _metrics(heads: _Heads, prog: _Progress) -> dict:
    """results.json "metrics": the protocol's head, or the picked head of the grid with its held-out top-1."""
    m = {"top1": prog.last_eval["top1"][prog.picked], "top5": prog.last_eval["top5"][prog.picked],
         "best_top1": prog.best["top1"], "best_epoch": prog.best["epoch"], "val_images": prog.last_eval["images"]}
    if heads.grid:  # no best-over-epochs: that would pick on the validation split
        base_lr, wd = heads.specs[prog.picked]
        del m["best_top1"], m["best_epoch"]
        m.update(holdout_top1=prog.last_holdout["top1"][prog.picked], holdout_images=prog.last_holdout["images"],
                 picked_base_lr=base_lr, picked_weight_decay=wd, heads=len(heads.specs))
    return m


def _finish(cfg, frame: _Frame, bb: _Backbone, data: _ImageData, heads: _Heads, loaders: _Loaders,
            prog: _Progress, presets: tuple[str, ...]) -> dict:
    """Backbone check, a final evaluation when nothing ran, results.json when the schedule is complete."""
    _check_backbone(cfg, bb)
    complete = prog.epoch >= cfg.train.epochs
    if prog.last_eval is None:  # a finished run restarted: measure again
        _evaluate_all(frame, bb, heads, loaders, prog, None)
    metrics = _metrics(heads, prog)
    if complete:
        extra = {"backbone_checksum": bb.checksum, "backbone_unchanged": True, "optimizer": cfg.optim.optimizer,
                 "num_classes": data.num_classes, "applied": bb.applied}
        pcfg, train_images = cfg, len(data.train)
        if heads.grid:
            base_lr, wd = heads.specs[prog.picked]
            pcfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, base_lr=base_lr, weight_decay=wd))
            train_images = loaders.train_images
            extra["grid"] = _grid_section(cfg, heads, prog, loaders)
        protocol = linear_fingerprint(pcfg, dataset=data.name, arch=bb.source["pretrain"].get("arch"),
                                      train_images=train_images, val_images=len(data.val),
                                      classes=data.num_classes, presets=presets)
        if heads.grid:
            protocol["selection"] = {"method": GRID_LABEL, "heads": len(heads.specs),
                                     "holdout_images": loaders.holdout_images, "holdout_seed": cfg.grid.holdout_seed}
        frame.write_results(dataset=data.name, metrics=metrics, config=config_mod.to_dict(cfg), source=bb.source,
                            epochs=prog.epoch, batch_size=cfg.train.batch_size,
                            extra={**extra, "train_images": train_images, "protocol": protocol})
    frame.barrier()
    out = {"output_dir": str(frame.out), "epoch": prog.epoch, "complete": complete, "metrics": metrics,
           "backbone_checksum": bb.checksum, "applied": bb.applied}
    if heads.grid:
        out["grid"] = _grid_section(cfg, heads, prog, loaders)
    return out


def _run(cfg: LinearConfig, frame: _Frame, info, train_backbone: bool, presets: tuple[str, ...] = ()) -> dict:
    """Set-up, data, epochs, finish (see the functions it calls)."""
    torch.manual_seed(cfg.train.seed)
    bb = _setup_backbone(cfg, info.device, train_backbone)
    data = _ImageData(cfg)
    split = holdout_split(len(data.train), cfg.grid) if cfg.grid.enabled else None
    heads = _build_heads(cfg, bb, data.num_classes, info, train_backbone)
    grid_id = _grid_identity(cfg, heads, split)
    prog = _resume(frame, cfg, bb, heads, grid_id)
    frame.save_config(cfg)
    loaders = _build_loaders(cfg, info, bb, data, split, frame.log)
    _log_start(cfg, frame, bb, data, heads, loaders, info)
    prog = _train(cfg, frame, bb, heads, loaders, prog, train_backbone, grid_id)
    return _finish(cfg, frame, bb, data, heads, loaders, prog, presets)


def _log_start(cfg, frame: _Frame, bb: _Backbone, data: _ImageData, heads: _Heads, loaders: _Loaders, info) -> None:
    """What is evaluated, on what, how (log.txt)."""
    frame.log.info("linear evaluation of %s (%s, %d-d features) on %s: %d classes, %d train / %d held-out images, "
                   "%s lr %.4g, global batch %d over %d processes, %d epochs%s", cfg.weights,
                   bb.source["pretrain"].get("arch"), bb.dim, data.name, data.num_classes, loaders.train_images,
                   len(data.val), cfg.optim.optimizer.upper(), heads.lrs[0], cfg.train.batch_size, info.world_size,
                   cfg.train.epochs, ", cached features" if cfg.train.cache_features else "")
    if heads.grid:
        frame.log.info("grid of %d heads: base lrs %s x weight decays %s; the head is picked on %d training images "
                       "held out (seed %d), not on the validation split", len(heads.specs),
                       sorted({h[0] for h in heads.specs}), sorted({h[1] for h in heads.specs}),
                       loaders.holdout_images, cfg.grid.holdout_seed)
    frame.log.info("precision and memory format of the backbone forward: amp %s, channels_last %s",
                   bb.applied["amp"], bb.applied["channels_last"])


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The `simsiam linear` command line."""
    ap = argparse.ArgumentParser(prog="simsiam linear", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="checkpoint to evaluate, or 'random' (needs model.arch=...)")
    ap.add_argument("--output", required=True, help="run folder (resumes when it holds checkpoint.pth)")
    ap.add_argument("--config", action="append", default=[],
                    help="preset under eval_configs/linear/ (imagenet_lars, imagenet_sgd, cifar10, demo, grid) or "
                         "a YAML")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=10 data.root=/data/imagenet "
                                                 "grid.enabled=true grid.base_lrs=[0.1,1,10]")
    return ap


def _summary(result: dict, output: str) -> str:
    """The line printed at the end of a run."""
    m = result["metrics"]
    state = "" if result["complete"] else ", incomplete: run again to continue"
    tail = f"({result['epoch']} epochs{state}) -> {output}"
    if "grid" not in result:
        return f"linear evaluation: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  {tail}"
    g = result["grid"]
    return (f"linear evaluation, {g['label']}: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  (head "
            f"{g['picked']} of {len(g['heads'])}: base lr {m['picked_base_lr']:g}, weight decay "
            f"{m['picked_weight_decay']:g}, held-out top-1 {m['holdout_top1']:.2f})  {tail}")


def main(argv: list[str] | None = None) -> int:
    """`simsiam linear`: 0 when done, 2 for bad input (one line on stderr), 1 for an internal error."""
    args = build_parser().parse_args(argv)
    return guard("simsiam linear", lambda: _main(args))


def _main(args) -> int:
    cfg = config_mod.resolve(LinearConfig(), args.config, args.overrides, kind="linear")
    result = run(dataclasses.replace(cfg, weights=args.weights), args.output, presets=args.config)
    print(_summary(result, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
