"""Linear evaluation on frozen features (the ImageNet protocol of the SimSiam paper / official code).

    simsiam linear --weights CKPT --output DIR [--config PRESET] [key=value ...]
    python -m transfer.linear ...

The backbone (any checkpoint `transfer.convert` reads, or `--weights random` for a random-init baseline of
`model.arch`) is frozen and kept in eval mode for the whole run, also under DDP (only the linear head is
wrapped). A linear classifier (fc init N(0, 0.01), bias 0) on the pooled features (2048-d for ResNet-50,
512-d for ResNet-18) is trained with LARS (transfer.lars: LARC semantics, trust 0.001, no clipping), batch
4096, lr = 0.1 x batch / 256, weight decay 0, momentum 0.9, cosine decay over 90 epochs;
RandomResizedCrop + flip for training, Resize(256) + CenterCrop(224) for validation. Presets in
eval_configs/linear/ change what differs (imagenet_sgd: SGD lr 30 at batch 256; cifar10; demo).

After training, a checksum of the backbone's state dict (weights and BN statistics) is compared with the
one taken before: any change is an error (`BackboneChangedError`). The run folder holds config.yaml,
metrics.jsonl (stage "linear", one line per epoch: loss, lr, train top-1, val top-1/top-5, time, images/s),
checkpoint.pth (head + optimizer, for resume: rerunning the same command continues) and results.json
(task "linear", top-1/top-5 in percent).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from pretrain import config as config_mod
from pretrain import distributed
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform, linear_train_transform
from pretrain.checkpoint import UnsafeFileError, atomic_save, load_torch
from pretrain.model import ARCHS
from pretrain.optim import scheduled_lr
from transfer.convert import RANDOM, describe_source, load_any_checkpoint, load_backbone, random_backbone, random_source
from transfer.lars import LARS
from transfer.protocols import linear_fingerprint
from transfer.results import write_results

FORMAT = "simsiam-suite/linear"


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class LinearDataConfig:
    # an ImageFolder tree with train/ and a held-out val/ (or test/), or "embedded" (the built-in data)
    root: str = "embedded"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224
    crop_fraction: float = 0.875    # validation: Resize(image_size / crop_fraction) + CenterCrop(image_size)
    augment: bool = True            # training: RandomResizedCrop + flip; false: the validation transform
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    workers: int = 8
    on_corrupt: str = "error"       # error | skip (see pretrain.data.RobustImageFolder)
    limit_per_class: int = 0        # >0: first N training images of each class (quick runs, tests)
    val_limit_per_class: int = 0    # >0: first N held-out images of each class
    cache_dir: str = "~/.cache/simsiam"


@dataclass(frozen=True)
class LinearModelConfig:
    arch: str = "auto"              # expected backbone (resnet50 | resnet18 | resnet18_cifar); auto: the checkpoint's


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
class LinearConfig:
    weights: str = ""               # checkpoint to evaluate (any kind transfer.convert reads) or "random"
    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    model: LinearModelConfig = field(default_factory=LinearModelConfig)
    optim: LinearOptimConfig = field(default_factory=LinearOptimConfig)
    train: LinearTrainConfig = field(default_factory=LinearTrainConfig)


def init_lr(cfg: LinearConfig) -> float:
    return cfg.optim.base_lr * cfg.train.batch_size / 256


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or BN statistics changed during linear evaluation."""


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
    head = nn.Linear(in_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def build_optimizer(params, cfg: LinearConfig, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "lars":
        return LARS(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                    trust_coefficient=o.trust_coefficient, eps=o.eps)
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    raise config_mod.ConfigError(f"optim.optimizer: unknown optimizer '{o.optimizer}' (known: lars, sgd)")


def _check_config(cfg: LinearConfig) -> None:
    if not cfg.weights:
        raise config_mod.ConfigError("no weights to evaluate: pass --weights CKPT (or --weights random)")
    if cfg.model.arch != "auto" and cfg.model.arch not in ARCHS:
        raise config_mod.ConfigError(f"model.arch: unknown arch '{cfg.model.arch}' (known: auto, {', '.join(ARCHS)})")
    if cfg.weights == RANDOM and cfg.model.arch == "auto":
        raise config_mod.ConfigError("--weights random needs model.arch=<arch> (nothing to read it from)")
    if cfg.train.cache_features and cfg.data.augment:
        raise config_mod.ConfigError("train.cache_features=true needs data.augment=false (cached features are "
                                     "computed once, without random crops)")
    if cfg.train.amp not in ("none", "bf16"):
        raise config_mod.ConfigError(f"train.amp: '{cfg.train.amp}' is not one of none, bf16")
    if cfg.optim.schedule not in ("cosine", "constant"):
        raise config_mod.ConfigError(f"optim.schedule: unknown schedule '{cfg.optim.schedule}'")
    if cfg.train.epochs < 1 or cfg.train.batch_size < 1:
        raise config_mod.ConfigError("train.epochs and train.batch_size must be positive")


def load_frozen_backbone(cfg: LinearConfig) -> tuple[nn.Module, dict]:
    """(backbone with fc=Identity, results.json `source`)."""
    if cfg.weights == RANDOM:  # train.seed: the same random backbone on every rank and every call
        return random_backbone(cfg.model.arch, cfg.train.seed), random_source(cfg.model.arch)
    path = Path(os.path.expanduser(cfg.weights))
    arch = None if cfg.model.arch == "auto" else cfg.model.arch
    _, sd, info = load_any_checkpoint(path, arch)
    net = load_backbone(sd, info["arch"])
    return net, describe_source(path, info)


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
        ev = eval_transform(d.image_size, d.mean, d.std, crop_fraction=d.crop_fraction)
        tr = linear_train_transform(d.image_size, d.mean, d.std) if d.augment else ev
        self.train = RobustImageFolder(train_dir, tr, d.on_corrupt, d.limit_per_class)
        self.val = RobustImageFolder(val_dir, ev, d.on_corrupt, d.val_limit_per_class)
        if self.train.classes != self.val.classes:
            raise DataError(f"classes of {train_dir} ({len(self.train.classes)}) and {val_dir} "
                            f"({len(self.val.classes)}) differ")
        self.num_classes = len(self.train.classes)
        self.train_dir, self.val_dir = train_dir, val_dir


def _shard(dataset, rank: int, world: int):
    return dataset if world == 1 else Subset(dataset, list(range(rank, len(dataset), world)))


@torch.no_grad()
def _accuracy_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top[:, :1] == y[:, None]).sum()), int((top == y[:, None]).any(dim=1).sum())


# ------------------------------------------------------------------------------------------------- run
def run(cfg: LinearConfig, output_dir: str | Path, *, presets: tuple[str, ...] = (),
        _test_train_backbone: bool = False) -> dict:
    """Linear evaluation (or its resume) into output_dir; returns {"top1", "top5", ...}. `presets`: the
    --config names the config came from (recorded in results.json's protocol).

    `_test_train_backbone` exists for the test of the frozen-backbone check only: it lets the backbone
    train (train mode, gradients, in the optimizer), which the final check must catch.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = distributed.init_distributed()
    try:
        return _run(cfg, Path(output_dir), info, _test_train_backbone, tuple(presets))
    finally:
        if owns_group:
            distributed.cleanup()


def _run(cfg: LinearConfig, out: Path, info, train_backbone: bool, presets: tuple[str, ...] = ()) -> dict:
    from pretrain.logs import MetricsWriter, setup_logger
    from pretrain.train import autocast, weights_channels_last
    _check_config(cfg)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    log = setup_logger(out, info.is_main)
    dev = info.device
    torch.manual_seed(cfg.train.seed)

    # ---- backbone (frozen, eval mode) and data
    backbone, source = load_frozen_backbone(cfg)
    backbone = backbone.to(dev)
    if cfg.train.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    for p in backbone.parameters():
        p.requires_grad_(train_backbone)
    backbone.eval()
    before = state_checksum(backbone)
    dim = feature_dim_of(backbone, cfg)
    data = _ImageData(cfg)
    amp_dtype = torch.bfloat16 if cfg.train.amp == "bf16" and torch.amp.is_autocast_available(dev.type) else None
    applied = {"amp": "bf16" if amp_dtype is not None else "none",
               "channels_last": weights_channels_last(backbone)}

    def features(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev, non_blocking=True)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device.type, amp_dtype):
            return backbone(x).float()

    # ---- head, optimizer, resume
    head = build_head(dim, data.num_classes).to(dev)
    params = list(head.parameters()) + ([p for p in backbone.parameters()] if train_backbone else [])
    lr0 = init_lr(cfg)
    optimizer = build_optimizer(params, cfg, lr0)
    ddp_head = nn.parallel.DistributedDataParallel(
        head, device_ids=[dev.index] if dev.type == "cuda" else None) if info.distributed else head
    start_epoch, best = 0, {"top1": None, "top5": None, "epoch": None}
    ckpt_path = out / "checkpoint.pth"
    if ckpt_path.is_file():
        state = load_torch(ckpt_path)
        if state.get("format") != FORMAT:
            raise RuntimeError(f"{ckpt_path}: not a linear-evaluation checkpoint (format {state.get('format')!r})")
        if state.get("backbone_checksum") != before:
            raise RuntimeError(f"{ckpt_path}: this output folder holds a linear evaluation of other weights "
                               f"(backbone checksum differs from {cfg.weights}); use a new --output")
        head.load_state_dict(state["head"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]), state.get("best", best)
        log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)
    if info.is_main:
        config_mod.save(cfg, out / "config.yaml")

    # ---- loaders (cached features when asked)
    per_rank = cfg.train.batch_size // info.world_size
    if cfg.train.batch_size % info.world_size:
        raise config_mod.ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                                     f"{info.world_size} processes")
    pin = dev.type == "cuda"
    eval_loader = lambda ds: DataLoader(_shard(ds, info.rank, info.world_size),  # noqa: E731
                                        batch_size=cfg.train.eval_batch_size, shuffle=False,
                                        num_workers=cfg.data.workers, pin_memory=pin)
    if cfg.train.cache_features:
        from pretrain.monitor import extract_features
        t0 = time.time()
        was_training = backbone.training
        backbone.eval()
        ftr, ytr = extract_features(features, eval_loader(data.train), dev)
        fva, yva = extract_features(features, eval_loader(data.val), dev)
        backbone.train(was_training)
        log.info("cached features: %d train, %d held-out (%d-d) in %.1f s", len(ftr), len(fva), dim,
                 time.time() - t0)
        train_set, val_set = TensorDataset(ftr.cpu(), ytr.cpu()), TensorDataset(fva.cpu(), yva.cpu())
        to_features = lambda x: x.to(dev)  # noqa: E731
        workers = 0
        val_loader = DataLoader(_shard(val_set, info.rank, info.world_size), batch_size=cfg.train.eval_batch_size)
    else:
        train_set, to_features, workers = data.train, features, cfg.data.workers
        val_loader = eval_loader(data.val)
    if cfg.train.gpu_augment and not cfg.train.cache_features:
        # the fast path: JPEG decode + RandomResizedCrop/flip on the device, the held-out split in device memory
        from pretrain import fastdata
        cl = cfg.train.channels_last
        train_loader = sampler = fastdata.build_gpu_batches(
            cfg.data, per_rank, info.rank, info.world_size, cfg.train.seed, dev, task="linear", channels_last=cl)
        val_loader = fastdata.build_gpu_eval_batches(
            data.val_dir, cfg.data, dev, limit_per_class=cfg.data.val_limit_per_class,
            batch_size=cfg.train.eval_batch_size, crop_fraction=cfg.data.crop_fraction, rank=info.rank,
            world_size=info.world_size, channels_last=cl)
    else:
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.train.seed, drop_last=False)
        train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=workers,
                                  pin_memory=pin and not cfg.train.cache_features, drop_last=False)

    writer = MetricsWriter(out, enabled=info.is_main, tensorboard=cfg.train.tensorboard)
    log.info("linear evaluation of %s (%s, %d-d features) on %s: %d classes, %d train / %d held-out images, "
             "%s lr %.4g, global batch %d over %d processes, %d epochs%s", cfg.weights,
             source["pretrain"].get("arch"), dim, data.name, data.num_classes, len(data.train), len(data.val),
             cfg.optim.optimizer.upper(), lr0, cfg.train.batch_size, info.world_size, cfg.train.epochs,
             ", cached features" if cfg.train.cache_features else "")
    log.info("precision and memory format of the backbone forward: amp %s, channels_last %s", applied["amp"],
             applied["channels_last"])

    def evaluate() -> dict:
        ddp_head.eval()
        backbone.eval()
        n = top1 = top5 = 0
        loss_sum = 0.0
        with torch.no_grad():
            for x, y in val_loader:
                y = y.to(dev)
                logits = head(to_features(x))
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                c1, c5 = _accuracy_counts(logits, y)
                top1, top5, n = top1 + c1, top5 + c5, n + y.shape[0]
        t = torch.tensor([top1, top5, n, loss_sum], dtype=torch.float64, device=dev)
        if info.distributed:
            dist.all_reduce(t)
        top1, top5, n, loss_sum = t.tolist()
        n = max(n, 1)
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "val_loss": loss_sum / n, "val_images": int(n)}

    # ---- epochs
    last_eval = None
    ran = 0
    for epoch in range(start_epoch, cfg.train.epochs):
        lr = scheduled_lr(lr0, epoch, cfg.train.epochs, cfg.optim.schedule)
        for g in optimizer.param_groups:
            g["lr"] = lr
        sampler.set_epoch(epoch)
        ddp_head.train()
        backbone.train(train_backbone)  # frozen: eval mode, always (BN statistics must not move)
        t0 = time.time()
        seen, correct, loss_sum, steps = 0, 0, 0.0, 0
        for i, (x, y) in enumerate(train_loader):
            if cfg.train.max_steps_per_epoch and i >= cfg.train.max_steps_per_epoch:
                break
            y = y.to(dev, non_blocking=True)
            if train_backbone:
                f = to_features(x)
            else:
                with torch.no_grad():
                    f = to_features(x)
            logits = ddp_head(f)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"linear evaluation: loss is {loss.item()} at epoch {epoch + 1}, step "
                                         f"{i}: lower optim.base_lr (now {cfg.optim.base_lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            seen += y.shape[0]
            steps += 1
            if info.is_main and cfg.train.print_freq and steps % cfg.train.print_freq == 0:
                log.info("epoch %d step %d/%d loss %.4f", epoch + 1, steps, len(train_loader), loss.item())
        stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=dev)
        if info.distributed:
            dist.all_reduce(stats)
        loss_sum, correct, seen = stats.tolist()
        elapsed = time.time() - t0
        record = {"stage": "linear", "epoch": epoch + 1, "lr": lr, "loss": loss_sum / max(seen, 1),
                  "train_top1": 100.0 * correct / max(seen, 1), "time": elapsed,
                  "images_per_s": seen / max(elapsed, 1e-9)}
        if (epoch + 1) % max(cfg.train.eval_every, 1) == 0 or epoch + 1 == cfg.train.epochs:
            last_eval = evaluate()
            record.update(last_eval)
            if best["top1"] is None or last_eval["top1"] > best["top1"]:
                best = {"top1": last_eval["top1"], "top5": last_eval["top5"], "epoch": epoch + 1}
        if info.is_main:
            writer.write(record)
            atomic_save({"format": FORMAT, "version": 1, "epoch": epoch + 1, "head": head.state_dict(),
                         "optimizer": optimizer.state_dict(), "best": best, "backbone_checksum": before,
                         "weights": cfg.weights, "config": config_mod.to_dict(cfg)}, ckpt_path)
            log.info("epoch %d/%d: loss %.4f train top-1 %.2f%s lr %.4g %.0f img/s", epoch + 1, cfg.train.epochs,
                     record["loss"], record["train_top1"],
                     f" val top-1 {record['top1']:.2f} top-5 {record['top5']:.2f}" if "top1" in record else "",
                     lr, record["images_per_s"])
        distributed.barrier()
        ran += 1
        if cfg.train.stop_after_epochs and ran >= cfg.train.stop_after_epochs:
            log.info("stopping after %d epoch(s) in this invocation (train.stop_after_epochs); run the same "
                     "command again to resume", ran)
            break
    writer.close()

    # ---- the backbone must be exactly what was loaded
    after = state_checksum(backbone)
    if after != before:
        changed = _changed_tensors(backbone, cfg)
        raise BackboneChangedError(
            f"the backbone changed during linear evaluation (state-dict sha256 {before[:12]} -> {after[:12]}); "
            f"changed tensors: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}. The result would "
            "not be a linear evaluation of frozen features; nothing was written to results.json")

    epochs_done = start_epoch + ran
    complete = epochs_done >= cfg.train.epochs
    if last_eval is None:  # a finished run restarted: measure again
        last_eval = evaluate()
    metrics = {"top1": last_eval["top1"], "top5": last_eval["top5"], "best_top1": best["top1"],
               "best_epoch": best["epoch"], "val_images": last_eval["val_images"]}
    if info.is_main and complete:
        write_results(out, task="linear", dataset=data.name, metrics=metrics, config=config_mod.to_dict(cfg),
                      source=source, epochs=epochs_done, batch_size=cfg.train.batch_size,
                      extra={"backbone_checksum": before, "backbone_unchanged": True,
                             "optimizer": cfg.optim.optimizer, "num_classes": data.num_classes,
                             "train_images": len(data.train), "applied": applied,
                             "protocol": linear_fingerprint(
                                 cfg, dataset=data.name, arch=source["pretrain"].get("arch"),
                                 train_images=len(data.train), val_images=len(data.val),
                                 classes=data.num_classes, presets=presets)})
    distributed.barrier()
    return {"output_dir": str(out), "epoch": epochs_done, "complete": complete, "metrics": metrics,
            "backbone_checksum": before, "applied": applied}


def feature_dim_of(backbone: nn.Module, cfg: LinearConfig) -> int:
    """Pooled feature width: the in_features of the final block's last BN (2048 for R50, 512 for R18)."""
    last = backbone.layer4[-1]
    bn = getattr(last, "bn3", None) or last.bn2
    return int(bn.num_features)


def _changed_tensors(backbone: nn.Module, cfg: LinearConfig) -> list[str]:
    ref, _ = load_frozen_backbone(cfg)
    now = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    return [k for k, v in ref.state_dict().items() if not torch.equal(v, now[k])]


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam linear", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="checkpoint to evaluate, or 'random' (needs model.arch=...)")
    ap.add_argument("--output", required=True, help="run folder (resumes when it holds checkpoint.pth)")
    ap.add_argument("--config", action="append", default=[],
                    help="preset under eval_configs/linear/ (imagenet_lars, imagenet_sgd, cifar10, demo) or a YAML")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=10 data.root=/data/imagenet")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.resolve(LinearConfig(), args.config, args.overrides, kind="linear")
        cfg = dataclasses.replace(cfg, weights=args.weights)
    except config_mod.ConfigError as e:
        print(f"simsiam linear: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run(cfg, args.output, presets=args.config)
    except UnsafeFileError as e:
        print(f"simsiam linear: error: {e}", file=sys.stderr)
        return 2
    m = result["metrics"]
    print(f"linear evaluation: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  ({result['epoch']} epochs"
          f"{'' if result['complete'] else ', incomplete: run again to continue'}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
