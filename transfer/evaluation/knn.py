"""Offline kNN evaluation of a checkpoint's backbone (the monitor of the official CIFAR code, k=200 and k=20).

    simsiam knn --weights CKPT --data ROOT --output DIR [--config FILE] [key=value ...]
    simsiam knn --weights random --data ROOT --output DIR model.arch=ARCH [seed=S] [key=value ...]
    python -m transfer.evaluation.knn ...

Pooled backbone features of the training split form the memory bank; each held-out image is classified
by the weighted vote (weight exp(cos / t), t = 0.1) of its k nearest bank features (pretrain.monitor).
ROOT is an ImageFolder tree with train/ and val/ (or test/), or "embedded". Images are evaluated at the
pretraining resolution and normalisation stored in the checkpoint, or the one its layout implies (SimCLR v1
converted: pixels / 255, no mean / std); 224 px and ImageNet statistics when neither says; small images
(<= 64 px) are used whole. `model.branch=student` evaluates a DINO training checkpoint's student (default:
its teacher). `--weights random` evaluates the
randomly initialised backbone of `model.arch` (torch seed `seed`, the network pretraining starts from;
`model.zero_init_residual=false`: torchvision's init, every BN weight 1) as the random-init baseline; give
it the data settings of the run it is compared with. Writes config.yaml and results.json (task "knn",
metrics top1_k200, top5_k200, top1_k20, top5_k20 in percent). The old spelling `arch=ARCH` still works,
with a one-line deprecation notice. Exit codes: 0 done, 2 bad input (one line), 1 an internal error.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrain import config as config_mod
from pretrain.augment import eval_transform
from pretrain.data import dataset_name, eval_loader
from pretrain.defaults import ImageFolderData
from pretrain.frame import StageRun, guard
from pretrain.monitor import extract_features, knn_accuracy
from pretrain.protocol import knn_fingerprint
from transfer.evaluation.convert import EvalModelConfig
from transfer.evaluation.frozen import FrozenBackbone, Weights, labelled_folders


@dataclass(frozen=True)
class KnnDataConfig(ImageFolderData):
    """The shared data description; image size and normalisation default to the checkpoint's."""
    image_size: int = 0             # 0: the checkpoint's pretraining image size (224 if it does not say)
    mean: tuple[float, ...] = ()    # empty: the checkpoint's pretraining normalisation (else ImageNet)
    std: tuple[float, ...] = ()
    workers: int = 4
    crop_fraction: float = 0.0      # 0: 1.0 (whole image) up to 64 px, else 0.875 (Resize 256 / Crop 224)
    val_limit_per_class: int = 0    # >0 caps the held-out queries (images per class); limit_per_class: the bank


@dataclass(frozen=True)
class KnnConfig:
    weights: str = ""               # a checkpoint (any kind transfer.evaluation.convert reads) or "random"
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    seed: int = 0                   # --weights random: torch seed of the random initialisation
    ks: tuple[int, ...] = (200, 20)
    t: float = 0.1
    batch_size: int = 256           # per process
    data: KnnDataConfig = field(default_factory=KnnDataConfig)


def run(cfg: KnnConfig, output_dir: str | Path) -> dict:
    """Evaluate cfg.weights by kNN into output_dir (results.json); returns {"output_dir", "metrics"}."""
    w = Weights.load(cfg.weights, cfg.model, cfg.seed, cfg.data)  # bad weights: refused before anything is written
    cfg = dataclasses.replace(cfg, data=w.data)
    d = cfg.data
    tf = eval_transform(d.image_size, d.mean, d.std, crop_fraction=d.crop_fraction)
    _, _, bank, test = labelled_folders(d, (tf, tf), f"--data {d.root}", "kNN evaluation")
    with StageRun("knn", output_dir) as sr:
        sr.save_config(cfg)
        sr.log.info("inputs: %d px, mean %s, std %s (%s)", d.image_size, list(d.mean), list(d.std),
                    ", ".join(f"{k} from {v}" for k, v in w.normalisation["from"].items()))
        metrics = evaluate(FrozenBackbone(w.net, sr.info.device).features, bank, test, cfg, sr)
        name, src = dataset_name(d), w.source
        sr.results(task="knn", dataset=name, metrics=metrics, config=config_mod.to_dict(cfg), source=src,
                   epochs=src["pretrain"]["epochs"], batch_size=src["pretrain"]["batch_size"],
                   extra={"k": list(cfg.ks), "t": cfg.t, "bank_images": len(bank), "test_images": len(test),
                          "num_classes": len(bank.classes),
                          "protocol": knn_fingerprint(cfg, dataset=name, arch=src["pretrain"].get("arch"),
                                                      bank_images=len(bank), test_images=len(test),
                                                      classes=len(bank.classes))})
    return {"output_dir": str(output_dir), "metrics": metrics}


def evaluate(features, bank, test, cfg: KnnConfig, sr: StageRun) -> dict[str, float]:
    """Top-1/top-5 for every k of cfg.ks (`features`: images -> features; each rank embeds its shard, the
    features are gathered)."""
    info = sr.info
    loader = lambda ds: eval_loader(ds, info.rank, info.world_size, cfg.batch_size, cfg.data.workers,  # noqa: E731
                                    info.device.type == "cuda")
    t0 = time.time()
    fb, yb = extract_features(features, loader(bank), info.device)
    ft, yt = extract_features(features, loader(test), info.device)
    metrics: dict[str, float] = {}
    for k in cfg.ks:
        acc = knn_accuracy(fb, yb, ft, yt, k=k, t=cfg.t, num_classes=len(bank.classes))
        metrics[f"top1_k{k}"], metrics[f"top5_k{k}"] = acc["top1"], acc["top5"]
    metrics["top1"], metrics["top5"] = metrics[f"top1_k{cfg.ks[0]}"], metrics[f"top5_k{cfg.ks[0]}"]
    sr.log.info("kNN (t=%g) of %s on %s: %s (%d bank / %d held-out images, %.1f s)", cfg.t, cfg.weights,
                dataset_name(cfg.data), ", ".join(f"k={k} top-1 {metrics[f'top1_k{k}']:.2f}" for k in cfg.ks),
                len(bank), len(test), time.time() - t0)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam knn", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True,
                    help="checkpoint (any kind transfer.evaluation.convert reads), or 'random' (needs model.arch=...)")
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/ (or test/), or 'embedded'")
    ap.add_argument("--output", required=True, help="run folder")
    ap.add_argument("--config", action="append", default=[], help="YAML delta on the kNN defaults")
    ap.add_argument("--cache-dir", help="where 'embedded' data is generated (data.cache_dir)")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. ks=[200,20] data.image_size=32 model.arch=resnet50")
    return ap


DEPRECATED_KEYS = {"arch": "model.arch"}


def modern_overrides(overrides: list[str]) -> list[str]:
    """Old key spellings (`arch=`) rewritten to the shared vocabulary, with a one-line notice each."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key in DEPRECATED_KEYS:
            print(f"simsiam knn: note: '{key}=' is deprecated, use '{DEPRECATED_KEYS[key]}='", file=sys.stderr)
            o = f"{DEPRECATED_KEYS[key]}={value}"
        out.append(o)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guard("simsiam knn", lambda: _main(args))


def _main(args) -> int:
    extra = [f"data.root={args.data}"] + ([f"data.cache_dir={args.cache_dir}"] if args.cache_dir else [])
    cfg = config_mod.resolve(KnnConfig(), args.config, extra + modern_overrides(args.overrides))
    result = run(dataclasses.replace(cfg, weights=args.weights), args.output)
    print("kNN: " + ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) + f" -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
