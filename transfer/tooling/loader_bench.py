"""The pretraining loader's CPU cost: the reference (PIL) and fast (OpenCV) two-view pipelines side by side.

    python -m transfer.tooling.loader_bench [--images DIR] [--count 300] [--size 224] [--rounds 3] [--workers 2]
                                            [--batch 32] [--no-reduce]

1. One process, one thread: every image of the set read from disk, decoded and turned into two MoCo v2 views
   by each pipeline in turn (the same images, the same per-image seeds, so the same crops and jitter), in
   `--rounds` alternating rounds; the best round of each gives images per CPU second (images/s per core),
   and their ratio.
   Reference: RobustImageFolder.read_image + TwoCropsTransform(moco_v2_transform) (float views, normalised);
   fast: pretrain.cpu_augment (uint8 views; the normalisation runs on the device in training, not here).
   `--no-reduce` decodes every JPEG at full size (what reduced-scale decoding gives is the difference).
2. The DataLoader of training (pretrain.data.build_pretrain_loader's settings: `--workers` processes,
   `--batch`, data.prefetch) over the same images for both pipelines: images/s with N workers on N cores.

--images: a folder of images (searched recursively); default: the COCO images of the shared test data
(coco-tiny.tgz in $SIMSIAM_SHARED_DATA or ../shared/data beside the repository), unpacked to a temp folder,
repeated to --count.
"""
from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from pretrain import cpu_augment
from pretrain.augment import TwoCropsTransform, moco_v2_transform
from pretrain.data import RobustImageFolder, sample_seed, seed_worker
from pretrain.defaults import DataConfig

REPO = Path(__file__).resolve().parents[2]
SUFFIXES = (".jpg", ".jpeg", ".png")


def default_images() -> Path:
    shared = Path(os.environ.get("SIMSIAM_SHARED_DATA", REPO.parent / "shared" / "data"))
    archive = shared / "coco-tiny.tgz"
    if not archive.is_file():
        raise SystemExit(f"loader_bench: no --images given and {archive} is missing")
    out = Path(tempfile.mkdtemp(prefix="loader_bench_"))
    with tarfile.open(archive) as tf:
        tf.extractall(out, filter="data")
    return out


def image_paths(folder: Path, count: int) -> list[str]:
    found = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not found:
        raise SystemExit(f"loader_bench: no images under {folder}")
    return [found[i % len(found)] for i in range(count)]


class Views(Dataset):
    """Item i: the two views of image i, seeded from i as the training loader seeds them."""

    def __init__(self, paths: list[str], read, views):
        self.paths, self.read, self.views = paths, read, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(0, 0, i))
            return self.views(self.read(self.paths[i])), 0


def pipelines(size: int, reduce: bool) -> dict[str, tuple]:
    return {"reference": (RobustImageFolder.read_image, TwoCropsTransform(moco_v2_transform(size))),
            "fast": (cpu_augment.EncodedImageFolder.read_image, cpu_augment.FastTwoCrops(size, reduce=reduce))}


def one_process(paths, size: int, rounds: int, reduce: bool) -> dict[str, float]:
    """Best-round images per CPU second of each pipeline in this process (one thread), rounds alternating:
    CPU time, so that other processes on the machine change the figures less than wall time would."""
    best = {}
    for _ in range(rounds):
        for name, (read, views) in pipelines(size, reduce).items():
            ds = Views(paths, read, views)
            t0 = time.process_time()
            for i in range(len(ds)):
                ds[i]
            best[name] = max(best.get(name, 0.0), len(ds) / (time.process_time() - t0))
    return best


def with_workers(paths, size: int, workers: int, reduce: bool, batch: int = 32) -> dict[str, float]:
    """images/s of the training DataLoader settings with `workers` processes (after its first batch)."""
    out = {}
    for name, (read, views) in pipelines(size, reduce).items():
        loader = DataLoader(Views(paths, read, views), batch_size=batch, num_workers=workers, drop_last=True,
                            worker_init_fn=seed_worker, prefetch_factor=DataConfig.prefetch if workers else None)
        it = iter(loader)
        next(it)
        t0, n = time.perf_counter(), 0
        for x, _ in it:
            n += x[0].shape[0]
        out[name] = n / (time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m transfer.tooling.loader_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-reduce", action="store_true", help="decode every JPEG at full size")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    paths = image_paths(a.images or default_images(), a.count)
    reduce = not a.no_reduce
    print(f"{len(paths)} images, {a.size} px views, two views per image, reduced-scale decoding "
          f"{'on' if reduce else 'off'}")
    one = one_process(paths, a.size, a.rounds, reduce)
    print(f"one process, one thread (best of {a.rounds} rounds, per CPU second):")
    for name, v in one.items():
        print(f"  {name:9s} {v:8.1f} images/s per core")
    print(f"  ratio     {one['fast'] / one['reference']:8.2f} x")
    if a.workers > 0:
        many = with_workers(paths, a.size, a.workers, reduce, a.batch)
        print(f"DataLoader, {a.workers} workers, batch {a.batch}, prefetch {DataConfig.prefetch}:")
        for name, v in many.items():
            print(f"  {name:9s} {v:8.1f} images/s")
        print(f"  ratio     {many['fast'] / many['reference']:8.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
