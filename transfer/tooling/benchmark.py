"""Throughput benchmark of the reference and fast data/compute paths.

    python -m transfer.tooling.benchmark [--device cuda] [--images N] [--steps K] [--batch B] [--workers W]
                                 [--arch resnet50] [--size 224] [--out docs/benchmarks.md]

Writes an ImageNet-like JPEG folder (N images of about 400x350 px, quality 90: shapes on textures from
pretrain.generated.embedded, one class per shape) unless --data points at one, then measures images/s, in one run:

pretraining (a SimSiam step: two views, forward, loss, backward, SGD step)
  reference  PIL loader (moco_v2_transform + TwoCropsTransform, W workers), fp32
  fast       pretrain.fastdata streaming: file bytes from W workers, JPEG decode + MoCo v2 augmentation on the
             device, bf16 autocast + channels_last + torch.compile (each a switch; CUDA only)
  ceiling    the fast step on tensors already on the device (no data path)
linear evaluation (frozen trunk in eval mode + linear head, LARS step)
  reference  PIL loader (linear_train_transform, W workers), fp32
  fast       GPU decode + RandomResizedCrop/flip on the device, bf16 + channels_last
  ceiling    the fast step on device tensors

Warm-up steps are not timed; CUDA is synchronised around the timers. The table (tabulate) gives images/s
and the ratio to the reference row, with the device, torch version, date and the exact command; --out
appends it as markdown. On CPU the switches are no-ops (reported as such) and tiny sizes are meant for tests.

Output check: after timing, the reference and the fast mode each hand over at least CHECK_IMAGES more
images (whole batches) exactly as their step receives them, and `output_check` summarises them into the row
("output_check" in --json): shape, finite values, per-channel mean and std of the normalised pixels, the
smallest per-image std, the mean |x1 - x2| between the two views (pretraining) and whether the labels are in
range (linear). The fast row also holds `check_fast`, its comparison with the reference's statistics; when
that fails the table says so and the command exits with 1, so a fast path that returns garbage, constant or
unnormalised images cannot pass as a speed-up.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pretrain.augment import TwoCropsTransform, linear_train_transform, moco_v2_transform
from pretrain.data import RobustImageFolder
from pretrain.defaults import DataConfig, ModelConfig, OptimConfig
from pretrain.fastdata import build_gpu_batches
from pretrain.model import build_backbone, build_model
from pretrain.optim import build_optimizer as build_pretrain_optimizer
from pretrain.train import forward_loss, optimizer_step

DATA_MARKER = "benchmark-data.json"
CHECK_IMAGES = 64            # images per mode that the output check summarises (whole batches, at least one)
CHECK_MEAN_DIFF = 0.5        # fast vs reference: largest |difference| of a channel's mean (normalised units)
CHECK_STD_RATIO = (0.6, 1.6) # fast vs reference: allowed range of std_fast / std_ref per channel
CHECK_VIEWS_RATIO = 0.5      # fast vs reference: mean |x1 - x2| at least this fraction of the reference's
ROWS = (("pretrain", "reference"), ("pretrain", "fast"), ("pretrain", "ceiling"),
        ("linear", "reference"), ("linear", "fast"), ("linear", "ceiling"))


# --------------------------------------------------------------------------------------------- the data
def _write_one(args) -> None:
    path, seed, shape, w, h = args
    from pretrain.generated.shapes import draw_shape, random_background, random_colour
    rng = np.random.default_rng(seed)
    bright = bool(rng.random() < 0.5)
    img = random_background(rng, w, h, bright=bright)
    for _ in range(int(rng.integers(1, 4))):
        side = rng.uniform(0.2, 0.6) * min(w, h)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        draw_shape(img, shape, (x0, y0, x0 + side * rng.uniform(0.75, 1.33), y0 + side),
                   random_colour(rng, dark=bright), rotation=float(rng.uniform(-20, 20)))
    img.save(path, "JPEG", quality=90)


def write_jpeg_folder(root: Path, n_images: int, classes: int = 10, seed: int = 0, workers: int = 0) -> Path:
    """An ImageFolder root/train/<class>/*.jpg of `n_images` JPEGs (q90) of about 400x350 px; kept and reused
    when root already holds the same set (a marker file records its parameters)."""
    from pretrain.generated.shapes import SHAPES
    root = Path(root)
    params = {"images": n_images, "classes": classes, "seed": seed, "version": 1}
    marker = root / DATA_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    names = [SHAPES[i % len(SHAPES)] + (f"_{i // len(SHAPES)}" if i >= len(SHAPES) else "") for i in range(classes)]
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n_images):
        c = i % classes
        folder = root / "train" / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(330, 470)), int(rng.integers(290, 410))
        jobs.append((folder / f"{i:07d}.jpg", seed * 10_000_019 + i, SHAPES[c % len(SHAPES)], w, h))
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=64)
    else:
        for j in jobs:
            _write_one(j)
    marker.write_text(json.dumps(params))
    return root


# ------------------------------------------------------------------------------------------- the steps
@dataclass(frozen=True)
class Switches:
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def active(self, device: torch.device) -> "Switches":
        """What is really applied: bf16 / channels_last / compile only on CUDA."""
        cuda = device.type == "cuda"
        return Switches(self.bf16 and cuda, self.channels_last and cuda, self.compile and cuda)

    def describe(self) -> str:
        on = [n for n, v in (("bf16", self.bf16), ("channels_last", self.channels_last), ("compile", self.compile)) if v]
        return " + ".join(on) if on else "fp32"


def _autocast(device: torch.device, sw: Switches):
    return torch.autocast("cuda", dtype=torch.bfloat16) if sw.bf16 else contextlib.nullcontext()


def make_pretrain_step(arch: str, device: torch.device, sw: Switches, dim: int | None = None,
                       pred_dim: int | None = None, proj_layers: int | None = None) -> Callable:
    """One SimSiam SGD step (x1, x2) -> loss: the training loop's own forward_loss / optimizer_step on a model
    and optimiser built with the paper's settings."""
    mc = ModelConfig(arch=arch)
    if arch == "resnet18_cifar":
        mc = ModelConfig(arch=arch, proj_layers=2)
    if dim or pred_dim or proj_layers:
        mc = ModelConfig(arch=arch, dim=dim or mc.dim, pred_dim=pred_dim or mc.pred_dim,
                         proj_layers=proj_layers or mc.proj_layers)
    model = build_model(mc).to(device)
    if sw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_pretrain_optimizer(model, OptimConfig(), 0.05)
    run = torch.compile(model) if sw.compile else model
    model.train()

    def step(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if sw.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        loss, _ = forward_loss(run, x1, x2, torch.bfloat16 if sw.bf16 else None)
        optimizer_step(loss, optimizer, None)
        return loss.detach()

    return step


def make_linear_step(arch: str, device: torch.device, sw: Switches, num_classes: int) -> Callable:
    """Frozen trunk (eval mode, no grad) + the protocol's linear head (a grid of one, N(0, 0.01) init) with the
    LARS of transfer.evaluation.linear."""
    from transfer.evaluation.linear import LinearConfig
    from transfer.evaluation.linear.heads import HeadGrid, build_grid_optimizer, grid_heads, head_losses
    trunk = build_backbone(arch)
    dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    trunk = trunk.to(device).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    if sw.channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    run = torch.compile(trunk) if sw.compile else trunk
    head = HeadGrid(dim, num_classes, 1).to(device)
    optimizer, _ = build_grid_optimizer(head, grid_heads(LinearConfig()), LinearConfig())

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if sw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), _autocast(device, sw):
            f = run(x)
        loss = head_losses(head(f.float()), y).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# ------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(batches: Iterator, step: Callable, batch: int, warmup: int, steps: int,
               device: torch.device) -> dict:
    """Run `warmup` untimed then `steps` timed steps, each `step(*next(batches))`; images/s of the timed part."""
    for _ in range(warmup):
        step(*next(batches))
    _sync(device)
    t0 = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = step(*next(batches))
    _sync(device)
    elapsed = time.perf_counter() - t0
    if loss is not None and not math.isfinite(float(loss)):
        raise FloatingPointError(f"benchmark: the loss became {float(loss)}")
    return {"images_per_s": steps * batch / elapsed, "s_per_step": elapsed / steps, "steps": steps}


def _cycle(make_iter: Callable[[int], Iterator]) -> Iterator:
    """Endless batches: a new epoch (reshuffled) whenever one ends."""
    epoch = 0
    while True:
        for b in make_iter(epoch):
            yield b
        epoch += 1


def _to_device(it: Iterator, device: torch.device, pretrain: bool) -> Iterator:
    for a, b in it:
        if pretrain:
            x1, x2 = a
            yield x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        else:
            yield a.to(device, non_blocking=True), b.to(device, non_blocking=True)


def reference_loader(train_dir: Path, transform, batch: int, workers: int, device: torch.device) -> Callable:
    ds = RobustImageFolder(train_dir, transform)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    if len(loader) < 1:
        raise ValueError(f"benchmark: {len(ds)} images are fewer than one batch of {batch}")
    return lambda epoch: iter(loader)


def fast_source(data_cfg: DataConfig, batch: int, device: torch.device, task: str, workers: int) -> Callable:
    src = build_gpu_batches(data_cfg, batch, 0, 1, 0, device, mode="stream", task=task, workers=workers)

    def make(epoch: int):  # the step functions take (x1, x2) for pretraining, (x, labels) for linear
        src.set_epoch(epoch)
        if task == "pretrain":
            return (views for views, _ in src)
        return ((views[0], y) for views, y in src)
    return make


# ------------------------------------------------------------------------------------- output check
def take_batches(it: Iterator, batch: int, images: int = CHECK_IMAGES) -> list:
    """The next ceil(images / batch) batches (at least one) of an endless batch iterator."""
    return [next(it) for _ in range(max(1, math.ceil(images / batch)))]


def output_check(batches: list, pretrain: bool, classes: int) -> dict:
    """Statistics of what a mode feeds its step: batches of (x1, x2) views (pretrain) or (x, labels) (linear).

    shape: one batch's x; finite: every value; mean / std: per channel over all images, views and pixels;
    min_image_std: the smallest std of one image (0 for a constant image); views_differ: mean |x1 - x2| over
    all pixels (pretrain; None for linear); labels_ok: every label in [0, classes) (linear; None for pretrain)."""
    views = [torch.cat([b[v].detach().float().cpu() for b in batches]) for v in ((0, 1) if pretrain else (0,))]
    x = torch.stack(views)                                                      # (V, N, 3, S, S)
    finite = bool(torch.isfinite(x).all())
    x = torch.nan_to_num(x)
    labels_ok = None
    if not pretrain:
        y = torch.cat([b[1].cpu() for b in batches])
        labels_ok = bool(((y >= 0) & (y < classes)).all())
    return {"images": int(x.shape[1]), "shape": list(batches[0][0].shape), "finite": finite,
            "mean": [round(float(v), 4) for v in x.mean(dim=(0, 1, 3, 4))],
            "std": [round(float(v), 4) for v in x.transpose(0, 2).reshape(3, -1).std(dim=1)],
            "min_image_std": round(float(x.flatten(2).std(dim=2).min()), 4),
            "views_differ": round(float((x[0] - x[1]).abs().mean()), 4) if pretrain else None,
            "labels_ok": labels_ok}


def compare_checks(fast: dict, ref: dict, batch: int, size: int) -> dict:
    """Whether the fast mode's output looks like the reference's: same shape (batch, 3, size, size), finite,
    channel means within CHECK_MEAN_DIFF, channel stds within CHECK_STD_RATIO of the reference's, no constant
    image, the two views at least CHECK_VIEWS_RATIO as different as the reference's (pretrain), labels in
    range (linear). A constant image fails only when the reference has none. Returns {"ok": bool, "failed":
    [names of the failed conditions]}."""
    conditions = {
        "shape": fast["shape"] == [batch, 3, size, size],
        "finite": fast["finite"],
        "mean": all(abs(f - r) <= CHECK_MEAN_DIFF for f, r in zip(fast["mean"], ref["mean"])),
        "std": all(r > 0 and CHECK_STD_RATIO[0] <= f / r <= CHECK_STD_RATIO[1]
                   for f, r in zip(fast["std"], ref["std"])),
        "constant_image": fast["min_image_std"] > 0 or ref["min_image_std"] == 0,
    }
    if fast["views_differ"] is not None:
        floor = CHECK_VIEWS_RATIO * (ref["views_differ"] or 0.0)
        conditions["views_differ"] = fast["views_differ"] > 0 and fast["views_differ"] >= floor
    if fast["labels_ok"] is not None:
        conditions["labels"] = fast["labels_ok"]
    failed = [k for k, v in conditions.items() if not v]
    return {"ok": not failed, "failed": failed}


# -------------------------------------------------------------------------------------------- the run
def run_benchmark(args) -> tuple[list[dict], dict]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False   # the reference is plain fp32 as shipped
        torch.backends.cudnn.allow_tf32 = False
    fast = Switches(args.bf16, args.channels_last, args.compile).active(device)
    ref = Switches()
    root = write_jpeg_folder(Path(args.data), args.images, args.classes, workers=args.gen_workers)
    train_dir = root / "train"
    data_cfg = DataConfig(root=str(root), val_split="", image_size=args.size, workers=args.workers)
    rows = []

    def add(stage, mode, setting, res):
        rows.append({"stage": stage, "mode": mode, "setting": setting, **res})
        print(f"  {stage:8s} {mode:9s} {res['images_per_s']:10.1f} images/s  ({setting})", flush=True)

    def three_modes(stage: str, make_step: Callable, batch: int, ref_batches: Callable[[], Iterator], sw: Switches):
        """reference (PIL loader, plain fp32), fast (GPU decode + augment, switches `sw`) and ceiling (one batch
        already on the device, `sw`), timed one after the other in this process. Each loader is dropped before
        the next mode starts, so its worker processes do not compete with it."""
        pretrain = stage == "pretrain"
        step, it = make_step(ref), ref_batches()
        add(stage, "reference", f"PIL loader, {args.workers} workers, {ref.describe()}",
            time_steps(it, step, batch, args.warmup, args.steps, device))
        ref_check = rows[-1]["output_check"] = output_check(take_batches(it, batch), pretrain, args.classes)
        del step, it
        step = make_step(sw)
        it = _cycle(fast_source(data_cfg, batch, device, stage, args.workers))
        add(stage, "fast", f"GPU decode + augment, {args.workers} workers, {sw.describe()}",
            time_steps(it, step, batch, args.warmup, args.steps, device))
        fast_batches = take_batches(it, batch)
        first = fast_batches[0]
        rows[-1]["output_check"] = output_check(fast_batches, pretrain, args.classes)
        verdict = rows[-1]["check_fast"] = compare_checks(rows[-1]["output_check"], ref_check, batch, args.size)
        print(f"  {stage:8s} output check: fast {_describe_check(rows[-1]['output_check'])}; reference "
              f"{_describe_check(ref_check)}: {_verdict(verdict)}", flush=True)
        del it, fast_batches
        add(stage, "ceiling", f"device tensors, {sw.describe()}",
            time_steps(_repeat(first), step, batch, args.warmup, args.steps, device))

    def reference_batches(transform, batch: int, pretrain: bool) -> Callable[[], Iterator]:
        return lambda: _to_device(_cycle(reference_loader(train_dir, transform, batch, args.workers, device)),
                                  device, pretrain)

    torch.manual_seed(0)
    B, LB = args.batch, args.linear_batch
    if not args.skip_pretrain:
        three_modes("pretrain", lambda sw: make_pretrain_step(args.arch, device, sw), B,
                    reference_batches(TwoCropsTransform(moco_v2_transform(args.size)), B, True), fast)
    if not args.skip_linear:
        lin = Switches(fast.bf16, fast.channels_last, False)   # the head step is not compiled
        three_modes("linear", lambda sw: make_linear_step(args.arch, device, sw, args.classes), LB,
                    reference_batches(linear_train_transform(args.size), LB, False), lin)
    relative_to_reference(rows)
    return rows, run_meta(args, device, fast)


def relative_to_reference(rows: list[dict]) -> None:
    """Each row's images/s as a multiple of its stage's reference row ("vs_reference")."""
    for stage in ("pretrain", "linear"):
        base = next((r["images_per_s"] for r in rows if r["stage"] == stage and r["mode"] == "reference"), None)
        for r in rows:
            if r["stage"] == stage and base:
                r["vs_reference"] = r["images_per_s"] / base


def run_meta(args, device: torch.device, fast: Switches) -> dict:
    """What the figures were measured with: date, device, versions, the command and its sizes and switches."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "command": "python -m transfer.tooling.benchmark " + " ".join(shlex.quote(a) for a in args.argv),
            "arch": args.arch, "size": args.size, "batch": args.batch, "linear_batch": args.linear_batch,
            "workers": args.workers, "images": args.images, "steps": args.steps, "warmup": args.warmup,
            "switches_requested": Switches(args.bf16, args.channels_last, args.compile).describe(),
            "switches_applied": fast.describe()}


def _describe_check(c: dict) -> str:
    text = f"mean {c['mean']} std {c['std']}"
    return text + (f" views differ {c['views_differ']}" if c["views_differ"] is not None else "")


def _verdict(check: dict) -> str:
    return "ok" if check["ok"] else f"FAILED ({', '.join(check['failed'])})"


def checks_passed(rows: list[dict]) -> bool:
    return all(r["check_fast"]["ok"] for r in rows if "check_fast" in r)


def _repeat(batch: tuple) -> Iterator:
    while True:
        yield batch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(rows: list[dict], meta: dict, fmt: str = "github") -> str:
    from tabulate import tabulate
    table = [[r["stage"], r["mode"], r["setting"], f"{r['images_per_s']:.1f}", f"{r['s_per_step']:.4f}",
              f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"] for r in rows]
    body = tabulate(table, headers=["stage", "mode", "setting", "images/s", "s/step", "vs reference"], tablefmt=fmt)
    head = (f"### Throughput, {meta['date']}\n\n"
            f"- device: {meta['device']}; torch {meta['torch']}; python {meta['python']}\n"
            f"- command: `{meta['command']}`\n"
            f"- {meta['arch']} at {meta['size']} px, pretraining batch {meta['batch']}, linear batch "
            f"{meta['linear_batch']}, {meta['workers']} loader workers, {meta['images']} JPEGs, "
            f"{meta['warmup']} warm-up + {meta['steps']} timed steps; fast switches requested "
            f"{meta['switches_requested']}, applied {meta['switches_applied']}\n")
    checks = [f"{r['stage']} {_verdict(r['check_fast'])}" for r in rows if "check_fast" in r]
    if checks:
        head += f"- output check of the fast mode against the reference: {'; '.join(checks)}\n"
    return head + "\n" + body + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=10240, help="JPEGs to write (default 10240)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--data", default=None, help="folder for the JPEGs (kept and reused; default: a temp folder)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    ap.add_argument("--batch", type=int, default=256, help="pretraining batch")
    ap.add_argument("--linear-batch", type=int, default=1024, help="linear-evaluation batch")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1, help="processes writing the JPEGs")
    ap.add_argument("--arch", default="resnet50", choices=("resnet50", "resnet18", "resnet18_cifar"))
    ap.add_argument("--size", type=int, default=224)
    for name in ("bf16", "channels_last", "compile"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction, default=True,
                        help=f"fast mode: {name} (CUDA only)")
    ap.add_argument("--skip-pretrain", action="store_true")
    ap.add_argument("--skip-linear", action="store_true")
    ap.add_argument("--out", default=None, help="markdown file to append the table to")
    ap.add_argument("--json", default=None, help="also write rows + meta as JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with contextlib.ExitStack() as stack:
        if args.data is None:
            args.data = stack.enter_context(tempfile.TemporaryDirectory(prefix="simsiam-bench-"))
        print(f"benchmark on {device_name(torch.device(args.device))}, data {args.data}", flush=True)
        rows, meta = run_benchmark(args)
    text = format_table(rows, meta)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    if not checks_passed(rows):
        print("benchmark: the fast mode's output does not look like the reference's (see 'output check')",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
