"""Offline kNN evaluation of a checkpoint's backbone (the monitor of the official CIFAR code, k=200 and k=20).

    simsiam knn --weights CKPT --data ROOT --output DIR [--config FILE] [key=value ...]
    simsiam knn --weights random --data ROOT --output DIR arch=ARCH [seed=S] [key=value ...]
    python -m transfer.knn ...

Pooled backbone features of the training split form the memory bank; each held-out image is classified
by the weighted vote (weight exp(cos / t), t = 0.1) of its k nearest bank features (pretrain.monitor).
ROOT is an ImageFolder tree with train/ and val/ (or test/), or "embedded". Images are evaluated at the
pretraining resolution and normalisation stored in the checkpoint (224 px and ImageNet statistics when the
checkpoint does not say); small images (<= 64 px) are used whole. `--weights random` evaluates the
randomly initialised backbone of `arch` (torch seed `seed`, the network pretraining starts from) as the
random-init baseline; give it the data settings of the run it is compared with. Writes config.yaml and
results.json (task "knn", metrics top1_k200, top5_k200, top1_k20, top5_k20 in percent).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from pretrain import config as config_mod
from pretrain import distributed
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from pretrain.checkpoint import UnsafeFileError
from pretrain.model import ARCHS
from pretrain.monitor import extract_features, knn_accuracy
from transfer.convert import RANDOM, describe_source, load_any_checkpoint, load_backbone, random_backbone, random_source
from transfer.protocols import knn_fingerprint
from transfer.results import write_results


@dataclass(frozen=True)
class KnnDataConfig:
    root: str = "embedded"
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 0             # 0: the checkpoint's pretraining image size (224 if it does not say)
    crop_fraction: float = 0.0      # 0: 1.0 (whole image) up to 64 px, else 0.875 (Resize 256 / Crop 224)
    mean: tuple[float, ...] = ()    # empty: the checkpoint's pretraining normalisation (else ImageNet)
    std: tuple[float, ...] = ()
    workers: int = 4
    on_corrupt: str = "error"
    limit_per_class: int = 0        # >0 caps the memory bank (images per class)
    val_limit_per_class: int = 0
    cache_dir: str = "~/.cache/simsiam"


@dataclass(frozen=True)
class KnnConfig:
    weights: str = ""               # a checkpoint (any kind transfer.convert reads) or "random"
    arch: str = "auto"              # expected backbone; auto: the checkpoint's (--weights random needs one)
    seed: int = 0                   # --weights random: torch seed of the random initialisation
    ks: tuple[int, ...] = (200, 20)
    t: float = 0.1
    batch_size: int = 256           # per process
    data: KnnDataConfig = field(default_factory=KnnDataConfig)


def resolve_data(cfg: KnnConfig, stored: dict) -> KnnDataConfig:
    d = cfg.data
    size = d.image_size or int(stored.get("image_size") or 224)
    mean = tuple(d.mean) or tuple(stored.get("mean") or IMAGENET_MEAN)
    std = tuple(d.std) or tuple(stored.get("std") or IMAGENET_STD)
    crop = d.crop_fraction or (1.0 if size <= 64 else 224 / 256)
    return dataclasses.replace(d, image_size=size, mean=mean, std=std, crop_fraction=crop)


def load_eval_backbone(cfg: KnnConfig) -> tuple[torch.nn.Module, dict, dict]:
    """(backbone with fc = Identity, results.json `source`, the pretraining data settings it stores)."""
    if cfg.weights == RANDOM:
        if cfg.arch == "auto":
            raise config_mod.ConfigError("--weights random needs arch=<arch> (nothing to read it from)")
        return random_backbone(cfg.arch, cfg.seed), random_source(cfg.arch), {}
    path = Path(os.path.expanduser(cfg.weights))
    _, sd, src_info = load_any_checkpoint(path, None if cfg.arch == "auto" else cfg.arch)
    return load_backbone(sd, src_info["arch"]), describe_source(path, src_info), src_info.get("pretrain_data") or {}


def run(cfg: KnnConfig, output_dir: str | Path) -> dict:
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = distributed.init_distributed()
    try:
        return _run(cfg, Path(output_dir), info)
    finally:
        if owns_group:
            distributed.cleanup()


def _run(cfg: KnnConfig, out: Path, info) -> dict:
    from pretrain.data import DataError, RobustImageFolder, dataset_name, resolve_roots
    from pretrain.logs import setup_logger
    if not cfg.weights:
        raise config_mod.ConfigError("no weights to evaluate: pass --weights CKPT")
    if cfg.arch != "auto" and cfg.arch not in ARCHS:
        raise config_mod.ConfigError(f"arch: unknown arch '{cfg.arch}' (known: auto, {', '.join(ARCHS)})")
    backbone, source, stored = load_eval_backbone(cfg)
    d = resolve_data(cfg, stored)
    cfg = dataclasses.replace(cfg, data=d)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    log = setup_logger(out, info.is_main)
    if info.is_main:
        config_mod.save(cfg, out / "config.yaml")

    backbone = backbone.to(info.device).eval()
    train_dir, val_dir = resolve_roots(d)
    if val_dir is None:
        raise DataError(f"--data {d.root}: no held-out split next to {train_dir} (looked for '{d.val_split}', "
                        "val, test): kNN evaluation needs one")
    tf = eval_transform(d.image_size, d.mean, d.std, crop_fraction=d.crop_fraction)
    bank = RobustImageFolder(train_dir, tf, d.on_corrupt, d.limit_per_class)
    test = RobustImageFolder(val_dir, tf, d.on_corrupt, d.val_limit_per_class)
    if bank.classes != test.classes:
        raise DataError(f"classes of {train_dir} and {val_dir} differ")
    shard = lambda ds: ds if info.world_size == 1 else Subset(  # noqa: E731
        ds, list(range(info.rank, len(ds), info.world_size)))
    loader = lambda ds: DataLoader(shard(ds), batch_size=cfg.batch_size, shuffle=False,  # noqa: E731
                                   num_workers=d.workers, pin_memory=info.device.type == "cuda")
    t0 = time.time()
    with torch.no_grad():
        fb, yb = extract_features(backbone, loader(bank), info.device)
        ft, yt = extract_features(backbone, loader(test), info.device)
    metrics: dict[str, float] = {}
    for k in cfg.ks:
        acc = knn_accuracy(fb, yb, ft, yt, k=k, t=cfg.t, num_classes=len(bank.classes))
        metrics[f"top1_k{k}"], metrics[f"top5_k{k}"] = acc["top1"], acc["top5"]
    metrics["top1"], metrics["top5"] = metrics[f"top1_k{cfg.ks[0]}"], metrics[f"top5_k{cfg.ks[0]}"]
    name = dataset_name(d)
    log.info("kNN (t=%g) of %s on %s: %s (%d bank / %d held-out images, %.1f s)", cfg.t, cfg.weights, name,
             ", ".join(f"k={k} top-1 {metrics[f'top1_k{k}']:.2f}" for k in cfg.ks), len(bank), len(test),
             time.time() - t0)
    if info.is_main:
        write_results(out, task="knn", dataset=name, metrics=metrics, config=config_mod.to_dict(cfg),
                      source=source, epochs=source["pretrain"]["epochs"],
                      batch_size=source["pretrain"]["batch_size"],
                      extra={"k": list(cfg.ks), "t": cfg.t, "bank_images": len(bank), "test_images": len(test),
                             "num_classes": len(bank.classes),
                             "protocol": knn_fingerprint(cfg, dataset=name, arch=source["pretrain"].get("arch"),
                                                         bank_images=len(bank), test_images=len(test),
                                                         classes=len(bank.classes))})
    distributed.barrier()
    return {"output_dir": str(out), "metrics": metrics}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam knn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True,
                    help="checkpoint (any kind transfer.convert reads), or 'random' (needs arch=...)")
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/ (or test/), or 'embedded'")
    ap.add_argument("--output", required=True, help="run folder")
    ap.add_argument("--config", action="append", default=[], help="YAML delta on the kNN defaults")
    ap.add_argument("--cache-dir", help="where 'embedded' data is generated (data.cache_dir)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. ks=[200,20] data.image_size=32")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = [f"data.root={args.data}"] + ([f"data.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    try:
        cfg = config_mod.resolve(KnnConfig(), args.config, extra + args.overrides)
        cfg = dataclasses.replace(cfg, weights=args.weights)
        result = run(cfg, args.output)
    except (config_mod.ConfigError, UnsafeFileError) as e:
        print(f"simsiam knn: error: {e}", file=sys.stderr)
        return 2
    print("kNN: " + ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) + f" -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
