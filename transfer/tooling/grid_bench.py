"""Throughput of `simsiam linear` with one head against its grid of heads, measured side by side in one run.

    python -m transfer.tooling.grid_bench [--device cpu|cuda] [--arch resnet50] [--size 224] [--batch 256]
                                  [--classes 1000] [--optimizer lars|sgd] [--steps 10] [--warmup 2] [--rounds 3]
                                  [--threads N]

Times the training step of transfer.evaluation.linear on tensors already on the device (the data path is the same for one
head and for the grid, so it is left out): the frozen backbone's forward (eval mode, no gradients), the heads'
logits, the summed loss, backward and the optimizer step, for the protocol's one head (a grid of one) and for the
default grid of the optimizer (transfer.evaluation.linear.heads.default_grid: 13 heads for LARS, 27 for SGD), each as one
matmul over its heads. Two workloads: "images" (a batch of images through the backbone every step, as with
augmentation) and "cached features" (train.cache_features: the heads alone). Rounds alternate between one
head and the grid, so both see the same machine state; the table gives the median images/s of the rounds
and the grid's cost relative to one head. On a CPU shared with other work, multi-threaded kernels stall
whenever a thread is descheduled: measure with --threads 1 there.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Callable

import torch
from tabulate import tabulate

from pretrain.model import build_backbone
from transfer.evaluation import linear
from transfer.evaluation.linear import heads as linear_heads


def make_step(trunk, dim: int, classes: int, cfg: linear.LinearConfig, device) -> Callable:
    """One training step of transfer.evaluation.linear: trunk (None: cached features) + the heads of `cfg` (the
    protocol's one head, a grid of one, or the default grid with grid.enabled=true)."""
    specs = linear_heads.grid_heads(cfg)
    heads = linear_heads.HeadGrid(dim, classes, len(specs)).to(device)
    optimizer, _ = linear_heads.build_grid_optimizer(heads, specs, cfg)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if trunk is not None:
            with torch.no_grad():
                x = trunk(x)
        loss = linear_heads.head_losses(heads(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step: Callable, x: torch.Tensor, y: torch.Tensor, warmup: int, steps: int) -> float:
    """Images per second of `steps` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step(x, y)
    _sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(x.device)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def run_bench(args) -> list[dict]:
    """The four rows (workload x one head / grid), each the median over alternating rounds."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    trunk = build_backbone(args.arch)
    dim = trunk.fc.in_features
    trunk.fc = torch.nn.Identity()
    trunk = trunk.to(device).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    cfg = linear.LinearConfig(optim=linear.LinearOptimConfig(optimizer=args.optimizer),
                              train=linear.LinearTrainConfig(batch_size=args.batch))
    grid_cfg = dataclasses.replace(cfg, grid=linear.LinearGridConfig(enabled=True))
    n_grid = len(linear_heads.grid_heads(grid_cfg))
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        feats = trunk(images)
    rows = []
    for workload, net, x in (("images", trunk, images), ("cached features", None, feats)):
        steps = {1: make_step(net, dim, args.classes, cfg, device),
                 n_grid: make_step(net, dim, args.classes, grid_cfg, device)}
        rates: dict[int, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for k, step in steps.items():
                rates[k].append(images_per_s(step, x, y, args.warmup, args.steps))
        base = statistics.median(rates[1])
        for k in steps:
            med = statistics.median(rates[k])
            rows.append({"workload": workload, "heads": k, "images_per_s": med, "vs_one_head": med / base,
                         "rounds": rates[k]})
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.grid_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256, help="images per step")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--optimizer", default="lars", choices=["lars", "sgd"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.size, args.batch, args.classes, args.steps, args.rounds) < 1 or args.warmup < 0:
        print("grid_bench: error: --size, --batch, --classes, --steps and --rounds must be positive", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = run_bench(args)
    table = [[r["workload"], r["heads"], f"{r['images_per_s']:.1f}", f"{r['vs_one_head']:.3f}"] for r in rows]
    print(tabulate(table, headers=["workload", "heads", "images/s", "vs one head"], tablefmt="github",
                   disable_numparse=True))
    print(f"\n{args.arch} {args.size} px, batch {args.batch}, {args.classes} classes, {args.optimizer}, device "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} "
          f"alternating rounds of {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
