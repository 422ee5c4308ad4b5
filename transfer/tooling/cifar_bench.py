"""The CIFAR-10 benchmark: the paper's CIFAR recipe pretrained in the fast mode, kNN top-1 (k=200)
on the test split after every epoch, then a linear evaluation; curves and a markdown summary.

    python -m transfer.tooling.cifar_bench --data /path/cifar10-jpg --output DIR [--epochs 200] [--device cuda]
                                   [--short] [--ablation] [key=value ...]

Pretraining: `pretrain.train.run` with eval_configs/pretrain/cifar10_r18_fast.yaml (a delta over
cifar10_r18.yaml: ResNet-18 with 3x3 stem, 2-layer projector, batch 512, lr 0.06, wd 5e-4, cosine, no blur,
32 px, CIFAR mean/std; GPU augmentation, bf16, channels_last, 200 epochs, kNN every epoch) into DIR/pretrain.
Linear evaluation: `transfer.evaluation.linear.main` with the cifar10 preset into DIR/linear, by default on features
computed once (data.augment=false, train.cache_features=true) so that it takes seconds; --linear-augment uses
the preset's augmented training instead. DIR/curves/{pretrain,linear}.png (transfer.reporting.plots), DIR/summary.md and
DIR/summary.json: kNN top-1 per epoch, final kNN, linear top-1, wall times, device, date, command.

--short shrinks the same command for a CPU (CI): --limit-per-class images per class (train, kNN bank, test),
2 epochs, batch 64, 30 linear epochs (on cached features: seconds), no loader workers. --ablation runs the same with model.stop_gradient=false
(the paper's collapse: kNN accuracy at chance, collapse monitor ~0). Extra key=value arguments override the
pretraining config (e.g. train.gpu_augment=false).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

PRESET = "cifar10_r18_fast"
LINEAR_PRESET = "cifar10"
CHANCE = 10.0


def pretrain_config(data: str, epochs: int | None, short: bool, ablation: bool, overrides=(),
                    limit_per_class: int = 50, batch: int | None = None):
    from pretrain import config as config_mod
    from pretrain.defaults import PretrainConfig
    ov = [f"data.root={data}"]
    if short:
        ov += [f"data.limit_per_class={limit_per_class}", f"monitor.knn_max_val={limit_per_class}",
               "train.epochs=2", "train.batch_size=64", "data.workers=0", "train.save_freq=0",
               "train.print_freq=1", "monitor.tensorboard=false"]
    if epochs is not None:
        ov.append(f"train.epochs={epochs}")
    if batch is not None:
        ov.append(f"train.batch_size={batch}")
    if ablation:
        ov.append("model.stop_gradient=false")
    ov += list(overrides)
    return config_mod.resolve(PretrainConfig(), [PRESET], ov, kind="pretrain")


def linear_args(checkpoint: Path, out: Path, data: str, cfg, short: bool, epochs: int | None,
                augment: bool, limit_per_class: int) -> list[str]:
    args = ["--weights", str(checkpoint), "--output", str(out), "--config", LINEAR_PRESET, f"data.root={data}",
            f"data.mean={list(cfg.data.mean)}", f"data.std={list(cfg.data.std)}",
            f"train.amp={'bf16' if cfg.train.amp == 'bf16' else 'none'}",
            f"train.channels_last={str(cfg.train.channels_last).lower()}"]
    if not augment:
        args += ["data.augment=false", "train.cache_features=true"]
    if short:
        args += [f"data.limit_per_class={limit_per_class}", f"data.val_limit_per_class={limit_per_class}",
                 "train.batch_size=64", "train.eval_batch_size=64", "data.workers=0", "train.tensorboard=false",
                 "train.print_freq=0"]
    n = epochs if epochs is not None else (30 if short else None)
    if n is not None:
        args.append(f"train.epochs={n}")
    return [a.replace(" ", "") if a.startswith(("data.mean", "data.std")) else a for a in args]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def bench_figures(cfg, history: list[dict], summary_pre: dict, lin_results: dict, linear_augment: bool) -> dict:
    """The measured part of the summary: the recipe run, kNN per epoch, the final kNN, collapse and linear."""
    knn = [{"epoch": r["epoch"], "knn_top1": r.get("knn_top1"), "loss": r.get("loss"),
            "collapse_std": r.get("collapse_std"), "images_per_s": r.get("images_per_s"), "time": r.get("time")}
           for r in history]
    return {"stop_gradient": cfg.model.stop_gradient, "epochs": summary_pre["epoch"],
            "batch_size": cfg.train.batch_size, "arch": cfg.model.arch, "gpu_augment": cfg.train.gpu_augment,
            "amp": cfg.train.amp, "channels_last": cfg.train.channels_last, "knn_k": cfg.monitor.knn_k,
            "knn_per_epoch": knn, "final_knn_top1": summary_pre["metrics"]["knn_top1"],
            "final_collapse_std": summary_pre["metrics"]["collapse_std"], "collapse_ref": 1 / math.sqrt(cfg.model.dim),
            "linear_top1": lin_results["metrics"]["top1"], "linear_top5": lin_results["metrics"]["top5"],
            "linear_epochs": lin_results.get("epochs"), "linear_cached_features": not linear_augment,
            "chance_top1": CHANCE}


def run_bench(data: str, output: str | Path, *, epochs: int | None = None, device: str | None = None,
              short: bool = False, ablation: bool = False, overrides=(), limit_per_class: int = 50,
              batch: int | None = None, linear_epochs: int | None = None, linear_augment: bool = False,
              command: str = "") -> dict:
    """Pretrain + linear evaluation + curves + summary; returns the summary dict."""
    from pretrain.logs import read_metrics
    from pretrain.train import run as pretrain_run
    from transfer.evaluation import linear
    from transfer.reporting.plots import plot_linear, plot_pretrain

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""   # pretrain/linear pick CUDA whenever it is visible
    elif device and device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
    cfg = pretrain_config(data, epochs, short, ablation, overrides, limit_per_class, batch)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.time()
    summary_pre = pretrain_run(cfg, out / "pretrain")
    t_pre = time.time() - t0
    history = read_metrics(out / "pretrain" / "metrics.jsonl")
    history = [r for r in history if r.get("stage") == "pretrain"]

    t1 = time.time()
    lin_dir = out / "linear"
    rc = linear.main(linear_args(Path(summary_pre["checkpoint"]), lin_dir, data, cfg, short, linear_epochs,
                                 linear_augment, limit_per_class))
    if rc != 0:
        raise RuntimeError(f"linear evaluation failed (exit status {rc}); see {lin_dir}/log.txt")
    t_lin = time.time() - t1
    lin_rows = [r for r in read_metrics(lin_dir / "metrics.jsonl") if r.get("stage") == "linear"]
    lin_results = json.loads((lin_dir / "results.json").read_text())

    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    plot_pretrain(history, curves / "pretrain.png", cfg.model.dim)
    plot_linear(lin_rows, curves / "linear.png")

    summary = {"benchmark": "cifar10 SimSiam" + (" - stop-gradient ablation" if ablation else ""),
               "date": started.strftime("%Y-%m-%d %H:%M UTC"),
               "device": device_name() if device != "cpu" else
               f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
               "torch": torch.__version__, "command": command or "python -m transfer.tooling.cifar_bench", "short": short,
               **bench_figures(cfg, history, summary_pre, lin_results, linear_augment),
               "wall_time_s": t_pre + t_lin, "pretrain_time_s": t_pre, "linear_time_s": t_lin,
               "runs": {"pretrain": str(out / "pretrain"), "linear": str(lin_dir)},
               "curves": [str(curves / "pretrain.png"), str(curves / "linear.png")]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(format_summary(summary))
    return summary


def _f(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def format_summary(s: dict) -> str:
    from tabulate import tabulate
    lines = [f"### {s['benchmark']}, {s['date']}", "",
             f"- device: {s['device']}; torch {s['torch']}",
             f"- command: `{s['command']}`",
             f"- recipe: {s['arch']}, batch {s['batch_size']}, {s['epochs']} epochs, stop-gradient "
             f"{'on' if s['stop_gradient'] else 'OFF (ablation)'}, gpu_augment {s['gpu_augment']}, amp {s['amp']}, "
             f"channels_last {s['channels_last']} (amp and channels_last act on CUDA only)"
             f"{', short CPU version' if s['short'] else ''}",
             f"- final kNN top-1 (k={s['knn_k']}, test split): {_f(s['final_knn_top1'])} % (chance {s['chance_top1']:.0f} %)",
             f"- final collapse std: {_f(s['final_collapse_std'], 4)} (healthy ~ 1/sqrt(d) = {s['collapse_ref']:.4f}, "
             "collapsed 0)",
             f"- linear top-1: {_f(s['linear_top1'])} % (top-5 {_f(s['linear_top5'])} %, {s['linear_epochs']} epochs"
             f"{', cached features' if s['linear_cached_features'] else ''})",
             f"- wall time: {s['wall_time_s']:.1f} s (pretraining {s['pretrain_time_s']:.1f} s, linear "
             f"{s['linear_time_s']:.1f} s)",
             f"- curves: {', '.join(s['curves'])}", "",
             "kNN top-1 per epoch:", ""]
    rows = [[r["epoch"], _f(r["knn_top1"]), _f(r["loss"], 4), _f(r["collapse_std"], 4), _f(r["images_per_s"], 0),
             _f(r["time"], 1)] for r in s["knn_per_epoch"]]
    lines.append(tabulate(rows, headers=["epoch", "kNN top-1", "loss", "collapse std", "images/s", "s"],
                          tablefmt="github"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.cifar_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="cifar10-jpg folder (train/<class>/*.jpg, test/<class>/*.jpg)")
    ap.add_argument("--output", required=True, help="benchmark folder (pretrain/, linear/, curves/, summary.md)")
    ap.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the preset's 200)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--short", action="store_true", help="the same command shrunk for a CPU (CI)")
    ap.add_argument("--limit-per-class", type=int, default=50, help="--short: images per class")
    ap.add_argument("--batch", type=int, default=None, help="override the global batch size")
    ap.add_argument("--ablation", action="store_true", help="model.stop_gradient=false (collapse)")
    ap.add_argument("--linear-epochs", type=int, default=None, help="default: the cifar10 preset's (100)")
    ap.add_argument("--linear-augment", action="store_true",
                    help="train the linear head on augmented images (slow) instead of cached features")
    ap.add_argument("--append", default=None, help="also append summary.md to this markdown file")
    ap.add_argument("overrides", nargs="*", help="pretraining config key=value overrides")
    args = ap.parse_args(argv)
    from pretrain.config import ConfigError
    from pretrain.data import CorruptImageError, DataError
    command = "python -m transfer.tooling.cifar_bench " + " ".join(shlex.quote(a) for a in argv)
    try:
        run_bench(args.data, args.output, epochs=args.epochs, device=args.device, short=args.short,
                  ablation=args.ablation, overrides=args.overrides, limit_per_class=args.limit_per_class,
                  batch=args.batch, linear_epochs=args.linear_epochs, linear_augment=args.linear_augment,
                  command=command)
    except (ConfigError, DataError, CorruptImageError, RuntimeError) as e:
        print(f"cifar_bench: error: {e}", file=sys.stderr)
        return 2
    text = (Path(args.output) / "summary.md").read_text()
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
