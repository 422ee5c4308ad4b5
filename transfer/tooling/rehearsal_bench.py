"""What a real-scale run costs, measured on the rehearsal data, and projected to full ImageNet.

    python -m transfer.tooling.rehearsal_bench [--dir /tmp/rehearsal_bench] [--size 224] [--batch 8] [--json FILE]

1. Runs the chain a user runs, each stage as its own `simsiam` process on the ImageNet-shaped rehearsal tree
   (`python -m pretrain.generated.rehearsal`, 1000 classes, images of varied sizes): generate, pretrain (reference
   loader and fast mode), convert, kNN, linear (fast mode), detection. Prints each stage's wall time and peak
   resident memory (the process's own maximum RSS, from wait4).
2. Measures per-image costs of ResNet-50 at `--size` on this machine, one after the other in this process:
   a SimSiam training step (two views, forward + backward + SGD) and an evaluation forward pass.
3. Projects them to ImageNet (1,281,167 training and 50,000 validation images, 1000 classes): the kNN
   monitor's share of a pretraining epoch with its defaults (bank of monitor.knn_max_train images per class,
   monitor.knn_max_val queries per class), its feature memory, and each stage's images processed in units of
   pretraining epochs. The ratios carry over to a GPU as far as forward and backward passes scale alike there;
   absolute CPU times are for this machine only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
FEATURE_DIM = 2048


def run_stage(name: str, argv: list[str], env: dict) -> dict:
    """Run one command; its wall time, exit code and peak RSS (wait4 reports the child's own maximum)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    row = {"stage": name, "command": " ".join(shlex.quote(a) for a in argv), "wall_s": round(wall, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "exit": proc.returncode}
    print(f"  {name:22s} {wall:7.1f} s  {row['peak_rss_mb']:6d} MB  exit {proc.returncode}", flush=True)
    if proc.returncode != 0:
        print(out[-3000:], file=sys.stderr)
        raise SystemExit(f"rehearsal stage '{name}' failed (exit {proc.returncode}): {row['command']}")
    return row


def chain(root: Path) -> list[tuple[str, list[str]]]:
    """The commands of a real-scale chain, shrunk only in steps and epochs (the data is the rehearsal tree)."""
    sim = [str(Path(sys.executable).with_name("simsiam"))]
    data, det = root / "imagenet", root / "detection"
    small = ["train.epochs=1", "train.max_steps_per_epoch=4", "train.batch_size=16", "model.arch=resnet18",
             "model.dim=512", "model.pred_dim=128", "data.image_size=96", "data.workers=2", "monitor.tensorboard=false"]
    ckpt = root / "pretrain" / "checkpoint.pth"
    return [
        ("generate", [sys.executable, "-m", "pretrain.generated.rehearsal", str(root), "--detection"]),
        ("pretrain (reference)", [*sim, "pretrain", "--output", str(root / "pretrain"), f"data.root={data}", *small]),
        ("pretrain (fast mode)", [*sim, "pretrain", "--output", str(root / "pretrain_fast"), f"data.root={data}",
                                  *small, "train.gpu_augment=true"]),
        ("convert", [*sim, "convert", str(ckpt), "--to", "torchvision", "--output", str(root / "backbone.pth")]),
        ("knn", [*sim, "knn", "--weights", str(ckpt), "--data", str(data), "--output", str(root / "knn"),
                 "data.workers=2"]),
        ("linear (fast mode)", [*sim, "linear", "--weights", str(ckpt), "--output", str(root / "linear"),
                                f"data.root={data}", "train.epochs=1", "train.batch_size=64", "data.workers=2",
                                "train.gpu_augment=true"]),
        ("detect", [*sim, "detect", "--weights", "random", "--config", "tiny", "--output", str(root / "detect"),
                    "--data-root", str(det), "--train-dataset", "voc_2007_trainval", "--test-dataset",
                    "voc_2007_test", "SOLVER.MAX_ITER", "2"]),
    ]


def per_image_costs(size: int, batch: int, repeats: int = 2) -> dict:
    """Seconds per image of a SimSiam ResNet-50 training step and of an evaluation forward, at `size` px."""
    from pretrain.defaults import ModelConfig
    from pretrain.loss import simsiam_loss
    from pretrain.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x1, x2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)

    def step():
        loss = simsiam_loss(*model(x1, x2))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            model.backbone_features(x1)

    def seconds_per_image(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats / batch

    model.train()
    train = seconds_per_image(step)
    model.eval()
    return {"size": size, "batch": batch, "train_step_s_per_image": train, "forward_s_per_image": seconds_per_image(forward)}


def projection(costs: dict, knn_max_train: int, knn_max_val: int) -> dict:
    """The kNN monitor and each stage at ImageNet scale, from the measured per-image costs."""
    fwd, train = costs["forward_s_per_image"], costs["train_step_s_per_image"]
    epoch = IMAGENET_TRAIN * train
    bank = min(knn_max_train, IMAGENET_TRAIN // IMAGENET_CLASSES + 1) * IMAGENET_CLASSES
    queries = min(knn_max_val, IMAGENET_VAL // IMAGENET_CLASSES) * IMAGENET_CLASSES
    monitor = (bank + queries) * fwd
    stages = {"pretrain epoch": epoch, "kNN monitor (per epoch)": monitor,
              "kNN evaluation (whole train bank + val)": (IMAGENET_TRAIN + IMAGENET_VAL) * fwd,
              "linear, cached features (one pass)": (IMAGENET_TRAIN + IMAGENET_VAL) * fwd,
              "linear, augmented (per epoch)": IMAGENET_TRAIN * fwd}
    return {"train_step_per_forward": train / fwd, "monitor_bank_images": bank, "monitor_query_images": queries,
            "monitor_share_of_epoch": monitor / epoch,
            "monitor_feature_mb_per_rank": (bank + queries) * FEATURE_DIM * 4 / 2**20,
            "stages_in_pretrain_epochs": {k: v / epoch for k, v in stages.items()},
            "stages_cpu_hours_here": {k: v / 3600 for k, v in stages.items()}}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.rehearsal_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/rehearsal_bench", help="working folder (rehearsal tree and runs)")
    ap.add_argument("--size", type=int, default=224, help="image side of the per-image cost measurement")
    ap.add_argument("--batch", type=int, default=8, help="batch of the per-image cost measurement")
    ap.add_argument("--skip-chain", action="store_true", help="only the per-image costs and the projection")
    ap.add_argument("--json", help="also write the figures to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pretrain.defaults import PretrainConfig

    root = Path(args.dir)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    print(f"rehearsal chain in {root} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores):")
    rows = [] if args.skip_chain else [run_stage(name, argv, env) for name, argv in chain(root)]
    costs = per_image_costs(args.size, args.batch)
    mon = PretrainConfig().monitor
    proj = projection(costs, mon.knn_max_train, mon.knn_max_val)
    print(f"ResNet-50 at {args.size} px on this CPU: training step {costs['train_step_s_per_image'] * 1e3:.0f} ms "
          f"per image, evaluation forward {costs['forward_s_per_image'] * 1e3:.0f} ms per image "
          f"(ratio {proj['train_step_per_forward']:.1f})")
    print(f"kNN monitor at ImageNet scale (defaults: {mon.knn_max_train} bank / {mon.knn_max_val} query images "
          f"per class): {proj['monitor_share_of_epoch'] * 100:.2f} % of a pretraining epoch; features "
          f"{proj['monitor_feature_mb_per_rank']:.0f} MB gathered per rank")
    for name, epochs in proj["stages_in_pretrain_epochs"].items():
        print(f"  {name:42s} {epochs:6.3f} pretraining epochs  ({proj['stages_cpu_hours_here'][name]:8.1f} CPU-hours here)")
    if args.json:
        Path(args.json).write_text(json.dumps({"chain": rows, "costs": costs, "projection": proj}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
