"""Pretraining data: where the images are, a loader that reports bad files by path, and the loaders.

Roots: "embedded" (the built-in generated ImageFolder, see pretrain.generated.embedded), an ImageFolder tree
(<root>/<class>/<image>), or its parent holding train/ and a held-out val/ (or test/, as in the
CIFAR-10 JPEG tree). The global batch is split evenly over the ranks; each epoch reshuffles with
set_epoch; augmentation randomness is seeded per rank (and per worker).
"""
from __future__ import annotations

import os
import random
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision.datasets import ImageFolder

from .augment import (TwoCropsTransform, eval_crop_fraction, eval_transform, moco_v2_transform,  # noqa: F401
                      view_recipes)
from .config import ConfigError
from .errors import InputError

EMBEDDED = "embedded"
HELD_OUT_FALLBACKS = ("val", "test")


class DataError(InputError, RuntimeError):
    """Missing dataset folders, empty class folders and the like."""


class CorruptImageError(InputError, OSError):
    """An image file that cannot be read; the message names the file.

    DataLoader workers re-raise exceptions as `type(msg)` with the whole worker traceback as message;
    this class keeps only its own line, so the user sees 'cannot read image <path>: <reason>'.
    """

    def __init__(self, message: str = ""):
        message = str(message)
        if "Traceback" in message:
            lines = [ln for ln in message.strip().splitlines() if "CorruptImageError:" in ln]
            if lines:
                message = lines[-1].split("CorruptImageError:", 1)[1].strip()
        super().__init__(message)


def dataset_name(data_cfg) -> str:
    return EMBEDDED if data_cfg.root == EMBEDDED else Path(os.path.expanduser(data_cfg.root)).resolve().name


def _has_class_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def resolve_roots(data_cfg) -> tuple[Path, Path | None]:
    """(train folder, held-out folder or None) for data.root."""
    if data_cfg.root == EMBEDDED:
        from .generated.embedded import ensure_embedded
        root = Path(ensure_embedded(Path(os.path.expanduser(data_cfg.cache_dir))))
    else:
        root = Path(os.path.expanduser(str(data_cfg.root)))
        if not root.is_dir():
            raise DataError(f"data.root: dataset folder '{root}' does not exist (set data.root=<folder> to an "
                            "ImageFolder tree, or to its parent holding train/ and val/, or 'embedded')")
    train = root / data_cfg.train_split if data_cfg.train_split else root
    if data_cfg.train_split and not train.is_dir():
        train = root  # the root itself is the ImageFolder (<root>/<class>/<image>)
        held_out = None
    else:
        held_out = None
        if data_cfg.val_split:
            for name in (data_cfg.val_split,) + tuple(n for n in HELD_OUT_FALLBACKS if n != data_cfg.val_split):
                if (root / name).is_dir() and root / name != train:
                    held_out = root / name
                    break
    if not _has_class_folders(train):
        raise DataError(f"data.root: '{train}' has no class sub-folders (expected <root>/<class>/<image> "
                        f"or <root>/{data_cfg.train_split or 'train'}/<class>/<image>)")
    return train, held_out


class RobustImageFolder(ImageFolder):
    """ImageFolder whose unreadable images are an error naming the file, or skipped with a warning.

    on_corrupt="error": raise CorruptImageError('cannot read image <path>: <reason>').
    on_corrupt="skip":  warn once per file and return another (readable) sample instead.
    limit_per_class > 0 keeps the first N images (sorted by path) of each class.
    """

    def __init__(self, root, transform=None, on_corrupt: str = "error", limit_per_class: int = 0):
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"data.on_corrupt: '{on_corrupt}' is not one of error, skip")
        if not Path(root).is_dir():
            raise DataError(f"image folder '{root}' does not exist")
        super().__init__(str(root), transform=transform)
        self.on_corrupt = on_corrupt
        if limit_per_class > 0:
            per_class: dict[int, int] = defaultdict(int)
            kept = []
            for path, target in self.samples:
                if per_class[target] < limit_per_class:
                    per_class[target] += 1
                    kept.append((path, target))
            self.samples = self.imgs = kept
            self.targets = [t for _, t in kept]
        self._warned: set[str] = set()

    @staticmethod
    def read_image(path: str) -> Image.Image:
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                return img.convert("RGB")  # forces decoding: truncated / corrupt data fails here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None

    def __getitem__(self, index: int):
        for attempt in range(min(len(self.samples), 100)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self.read_image(path)
            except CorruptImageError as e:
                if self.on_corrupt == "error":
                    raise
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f"skipping unreadable image (data.on_corrupt=skip): {e}", stacklevel=2)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target
        raise CorruptImageError(f"no readable image found near index {index} in {self.root}")


# --------------------------------------------------------------------------------------------- loaders
def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each loader worker from its torch seed (distinct per rank/worker/epoch)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 2_000_003 + index) % (2**63 - 1)


class PerSampleSeed(torch.utils.data.Dataset):
    """A dataset whose item `i` is drawn with torch's generator seeded from (seed, epoch, i), and the caller's
    generator state restored afterwards.

    The augmented views of an image then depend only on the run's seed, the epoch and the image, not on
    which loader worker or rank reads it, nor on how many images were read before: a run resumed in the
    middle of an epoch, or with another `data.workers`, sees exactly the views an uninterrupted run sees.
    (Every random choice of pretrain.augment comes from torch's generator.)"""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, int(index)))
            return self.dataset[index]

    @property
    def classes(self):
        return self.dataset.classes


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch after its first `start` indices (a mid-epoch resume)."""

    start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return super().__len__() - self.start


class EpochLoader:
    """A DataLoader plus its sampler: `set_epoch(e, start_step)` reshuffles, reseeds the views (see
    PerSampleSeed) and skips the first `start_step` batches of the epoch."""

    def __init__(self, loader: DataLoader, sampler: ResumableSampler, seed: int, rank: int):
        self.loader, self.sampler, self.seed, self.rank = loader, sampler, seed, rank
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)
        self.sampler.set_epoch(epoch)
        self.sampler.start = self.start_step * self.loader.batch_size
        self.loader.dataset.epoch = self.epoch

    def state(self) -> dict:
        """The data position to store in a checkpoint (the views need no generator state: per-sample seeds)."""
        return {"epoch": self.epoch}

    def load_state(self, state: dict) -> None:
        """Nothing to restore beyond (epoch, step): the views are seeded per sample."""

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        """Batches of a whole epoch (independent of a mid-epoch start)."""
        return (len(self.sampler) + self.sampler.start) // self.loader.batch_size

    @property
    def dataset(self):
        return self.loader.dataset.dataset


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise DataError(f"train.batch_size={global_batch} is not divisible by the {world_size} processes")
    return global_batch // world_size


def check_views(cfg) -> None:
    """ConfigError (one line) for a data.augmentation that is not known."""
    try:
        view_recipes(cfg.data.augmentation)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_pretrain_loader(cfg, train_dir: Path, rank: int = 0, world_size: int = 1,
                          pin_memory: bool = False, pairs: int = 1) -> EpochLoader:
    """Two views per image, data.augmentation's first and second (`pairs` pairs of them); global batch split
    over ranks; drop_last; reshuffled per epoch. data.pipeline: "fast" (pretrain.cpu_augment, uint8
    views) or "reference" (PIL, float views)."""
    d = cfg.data
    recipes = view_recipes(d.augmentation)
    if d.pipeline == "fast":   # uint8 views, normalised on the device (pretrain.cpu_augment.device_views)
        from .cpu_augment import EncodedImageFolder, FastTwoCrops
        views = FastTwoCrops(d.image_size, d.min_scale, d.blur, pairs=pairs, recipes=recipes)
        dataset = EncodedImageFolder(train_dir, views, d.on_corrupt, d.limit_per_class)
    elif d.pipeline == "reference":
        first, second = (moco_v2_transform(d.image_size, d.min_scale, d.blur, d.mean, d.std, r) for r in recipes)
        dataset = RobustImageFolder(train_dir, TwoCropsTransform(first, second if recipes[1] != recipes[0] else None,
                                                                 pairs=pairs), d.on_corrupt, d.limit_per_class)
    else:
        raise DataError(f"data.pipeline: '{d.pipeline}' is not one of fast, reference")
    batch = per_rank_batch(cfg.train.batch_size, world_size)
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                               seed=cfg.train.seed, drop_last=True)
    if len(sampler) < batch:
        raise DataError(f"{train_dir}: {len(dataset)} images give {len(sampler)} per process, fewer than the "
                        f"per-process batch {batch} (train.batch_size={cfg.train.batch_size} over {world_size} "
                        "processes): lower train.batch_size or use more data")
    loader = DataLoader(PerSampleSeed(dataset, cfg.train.seed), batch_size=batch, sampler=sampler,
                        num_workers=d.workers, pin_memory=pin_memory, drop_last=True, worker_init_fn=seed_worker,
                        persistent_workers=False, prefetch_factor=d.prefetch if d.workers > 0 else None)
    out = EpochLoader(loader, sampler, cfg.train.seed, rank)
    out.set_epoch(0)
    return out


def shard(dataset, rank: int, world_size: int):
    """Rank `rank`'s share of an evaluation split: every world_size-th image from `rank` (disjoint, no padding;
    features are gathered afterwards, so every image counts once)."""
    return dataset if world_size == 1 else Subset(dataset, list(range(rank, len(dataset), world_size)))


def knn_bank_limit(cfg) -> int:
    """Images per class of the kNN memory bank: the smaller of monitor.knn_max_train and data.limit_per_class
    (the bank never holds images that training does not see); 0 = all."""
    caps = [c for c in (cfg.monitor.knn_max_train, cfg.data.limit_per_class) if c > 0]
    return min(caps) if caps else 0


def labelled_splits(train_dir: Path, val_dir: Path, transforms: tuple, on_corrupt: str,
                    limits: tuple[int, int] = (0, 0), what: str = "") -> tuple[RobustImageFolder, RobustImageFolder]:
    """(training, held-out) RobustImageFolders with their `transforms` and per-class `limits`; DataError when
    their classes differ (`what` names the task in the message)."""
    train = RobustImageFolder(train_dir, transforms[0], on_corrupt, limits[0])
    held = RobustImageFolder(val_dir, transforms[1], on_corrupt, limits[1])
    if train.classes != held.classes:
        raise DataError(f"{what}classes of {train_dir} ({len(train.classes)}) and {val_dir} ({len(held.classes)}) "
                        "differ")
    return train, held


def eval_loader(dataset, rank: int, world_size: int, batch_size: int, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """In-order batches of rank `rank`'s shard of an evaluation split (features are gathered afterwards)."""
    return DataLoader(shard(dataset, rank, world_size), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=seed_worker)


def build_knn_loaders(cfg, train_dir: Path, val_dir: Path, rank: int = 0, world_size: int = 1,
                      batch_size: int | None = None, pin_memory: bool = False):
    """Memory bank (train, eval transform, knn_max_train images per class) and held-out loaders.

    Each rank reads a disjoint shard (no padding); features are gathered afterwards.
    """
    d = cfg.data
    tf = eval_transform(d.image_size, d.mean, d.std, crop_fraction=eval_crop_fraction(d.image_size))
    bank, test = labelled_splits(train_dir, val_dir, (tf, tf), d.on_corrupt,
                                 (knn_bank_limit(cfg), cfg.monitor.knn_max_val), "kNN monitor: ")
    bs = batch_size or max(32, per_rank_batch(cfg.train.batch_size, world_size))
    return (eval_loader(bank, rank, world_size, bs, d.workers, pin_memory),
            eval_loader(test, rank, world_size, bs, d.workers, pin_memory), len(bank.classes))
