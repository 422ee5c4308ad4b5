"""The GPU data path of one rank: batches of augmented views made on the training device.

    source = build_gpu_batches(cfg.data, batch_per_rank, rank, world_size, seed, device)
    for epoch in ...:
        source.set_epoch(epoch)
        for x1, x2 in source:          # float32 (B, 3, S, S) on `device`, normalised, two MoCo v2 views
            ...

Two modes (`mode="auto"` picks one):

- "memory": the whole training set as one uint8 tensor on the device (`pretrain.gpu_augment.DeviceImageDataset`),
  for small images of one size (CIFAR: 50k x 3 x 32 x 32 = 150 MB). A step is an index gather + the batched
  augmentation; no loader processes.
- "stream": a torch DataLoader whose workers only read the files' bytes; the main process decodes the batch on
  the device (`decode_jpeg_batch`: nvJPEG on CUDA) and augments it there (`GPUMoCoV2Augment`). Images of
  different sizes are padded into one batch tensor by repeating their last row/column (which reproduces
  `roi_align`'s clamping at the border exactly), so a view costs one crop kernel for the whole batch.

Both modes shard the file list per rank exactly like `DistributedSampler(shuffle=True, drop_last=True,
seed=seed)` with `set_epoch(epoch)`, i.e. the ranks see disjoint parts of one permutation that changes each
epoch; the augmentation randomness comes from a generator on the device seeded from (seed, epoch, rank), so an
epoch is reproducible. Unreadable files follow `data.on_corrupt` ("error": `pretrain.data.CorruptImageError`
naming the file; "skip": a warning per file and another image of the batch takes its place).

`task="linear"` gives the linear-evaluation training view instead (RandomResizedCrop(scale 0.08-1) + flip +
normalisation, one view) and yields (x, labels). `build_gpu_eval_batches` is the deterministic evaluation view
of an in-memory split (kNN monitor, linear validation) as a loader of (x, labels).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .augment import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from .data import CorruptImageError, DataError, RobustImageFolder, resolve_roots
from .gpu_augment import DeviceImageDataset, GPUMoCoV2Augment, crop_resize, decode_jpeg_batch, sample_crop_boxes

MODES = ("auto", "memory", "stream")
TASKS = ("pretrain", "linear")
MEMORY_MAX_SIDE = 96              # auto: in-memory only for images up to this side ...
MEMORY_MAX_BYTES = 4 << 30        # ... and datasets up to this size (uint8 on the device)
PROBE_PER_CLASS = 3               # auto: files per class whose size is read to decide
LINEAR_MIN_SCALE = 0.08           # torchvision RandomResizedCrop default (official linear-evaluation view)

Device = Union[str, torch.device]


# ------------------------------------------------------------------------------------------------ helpers
def rank_indices(n: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool = True,
                 drop_last: bool = True) -> list[int]:
    """The indices rank `rank` reads in `epoch`: exactly `DistributedSampler`'s partition (no process group
    needed)."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    sampler.set_epoch(epoch)
    return list(sampler)


def augment_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank * 7919 + 17) % (2**63 - 1)


def pad_to_batch(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Variable-size (3, H_i, W_i) images -> one (N, 3, Hmax, Wmax) tensor and their sizes (N, 2) (H, W).

    Each image sits at the top-left and its last row/column is repeated into the padding, so bilinear
    sampling at the border reads the same values as on the image alone (roi_align clamps there)."""
    n = len(images)
    sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.long)
    hmax, wmax = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    dev = images[0].device
    out = torch.empty(n, 3, hmax, wmax, dtype=images[0].dtype, device=dev)
    rows_all = torch.arange(hmax, device=dev)
    cols_all = torch.arange(wmax, device=dev)
    for i, im in enumerate(images):
        h, w = im.shape[1], im.shape[2]
        if h == hmax and w == wmax:
            out[i] = im
            continue
        rows = rows_all.clamp(max=h - 1)
        cols = cols_all.clamp(max=w - 1)
        out[i] = im.index_select(1, rows).index_select(2, cols)
    return out, sizes


def _padding_pays(images: Sequence[Tensor], max_overhead: float = 2.0) -> bool:
    """Padding is worth it unless it would more than double the pixels (one huge image among small ones)."""
    pixels = sum(im.shape[1] * im.shape[2] for im in images)
    hmax = max(im.shape[1] for im in images)
    wmax = max(im.shape[2] for im in images)
    return len(images) * hmax * wmax <= max_overhead * pixels


class GPULinearTrainAugment:
    """The linear-evaluation training view on a batch: RandomResizedCrop(image_size, scale (0.08, 1), ratio
    (3/4, 4/3)) + horizontal flip (p=0.5) + normalisation; the crop boxes are drawn like torchvision's."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, min_scale: float = LINEAR_MIN_SCALE):
        self.image_size, self.scale = int(image_size), (float(min_scale), 1.0)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, batch: Union[Tensor, Sequence[Tensor]], generator: torch.Generator | None = None,
                 sizes: Tensor | None = None) -> Tensor:
        if isinstance(batch, Tensor):
            n, dev = batch.shape[0], batch.device
            if sizes is None:
                sizes = torch.tensor([[batch.shape[2], batch.shape[3]]] * n)
        else:
            n, dev = len(batch), batch[0].device
            sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in batch])
        gdev = generator.device if generator is not None else torch.device("cpu")
        boxes = sample_crop_boxes(sizes, self.scale, CROP_RATIO, generator)
        flip = torch.rand(n, generator=generator, device=gdev) < 0.5
        x = crop_resize(batch, boxes, self.image_size)
        x = torch.where(flip.to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        return (x - mean) / std


def _views(augment, batch: Union[Tensor, Sequence[Tensor]], generator, n_views: int) -> list[Tensor]:
    """`n_views` augmented views of a batch tensor or of a list of variable-size images."""
    if isinstance(batch, Tensor) or not _padding_pays(batch):
        return [augment(batch, generator) for _ in range(n_views)]
    padded, sizes = pad_to_batch(batch)
    if isinstance(augment, GPUMoCoV2Augment):
        return [augment.apply(padded, augment.sample_params(len(batch), generator, sizes)) for _ in range(n_views)]
    return [augment(padded, generator, sizes=sizes) for _ in range(n_views)]


# ---------------------------------------------------------------------------------------- streaming files
class EncodedFiles(Dataset):
    """(bytes as a 1-D uint8 tensor, label, index) of each (path, label) sample: what the loader workers do.

    A file that cannot be read raises CorruptImageError naming it (on_corrupt="error") or comes back as an
    empty tensor for the main process to skip."""

    def __init__(self, samples: Sequence[tuple[str, int]], on_corrupt: str = "error"):
        self.samples, self.on_corrupt = list(samples), on_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            if self.on_corrupt == "error":
                raise CorruptImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
            data = b""
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8), \
            label, index


def collate_encoded(batch):
    datas, labels, index = zip(*batch)
    return list(datas), torch.tensor(labels, dtype=torch.long), list(index)


def decode_batch(datas: Sequence[Tensor], names: Sequence[str], device: Device, on_corrupt: str = "error",
                 warned: set | None = None) -> tuple[list[Tensor], list[int]]:
    """Decode encoded images on `device`. Returns (images, kept positions). An unreadable image raises
    CorruptImageError naming the file (on_corrupt="error"), or is warned about once and left out ("skip")."""
    bad = [i for i, d in enumerate(datas) if d.numel() == 0]
    if not bad:
        try:
            return decode_jpeg_batch(datas, device, names), list(range(len(datas)))
        except ValueError as e:
            if on_corrupt == "error":
                raise CorruptImageError(f"cannot read image {_name_in(e, names)}: {e}") from None
    elif on_corrupt == "error":
        raise CorruptImageError(f"cannot read image {names[bad[0]]}: empty or unreadable file")
    images, kept = [], []
    for i, (d, name) in enumerate(zip(datas, names)):
        try:
            if d.numel() == 0:
                raise ValueError(f"{name}: empty or unreadable file")
            images.append(decode_jpeg_batch([d], device, [name])[0])
            kept.append(i)
        except ValueError as e:
            if warned is not None and name not in warned:
                warned.add(name)
                warnings.warn(f"skipping unreadable image (data.on_corrupt=skip): {e}", stacklevel=2)
    return images, kept


def _name_in(err: Exception, names: Sequence[str]) -> str:
    msg = str(err)
    for n in names:
        if msg.startswith(f"{n}:"):
            return n
    return "(in this batch)"


# -------------------------------------------------------------------------------------------- the source
class GPUBatchSource:
    """Per-rank iterable of augmented batches made on the device; see the module docstring.

    Yields (x1, x2) for task "pretrain" (or ((x1, x2), labels) when with_labels), (x, labels) for "linear".
    `len()` is the number of full batches per epoch (drop_last)."""

    def __init__(self, mode: str, task: str, device: torch.device, batch_per_rank: int, rank: int,
                 world_size: int, seed: int, augment, channels_last: bool = False, with_labels: bool = False,
                 memory: DeviceImageDataset | None = None, samples: Sequence[tuple[str, int]] | None = None,
                 classes: Sequence[str] = (), workers: int = 0, on_corrupt: str = "error", root: Path | None = None):
        self.mode, self.task, self.device = mode, task, torch.device(device)
        self.batch, self.rank, self.world_size, self.seed = int(batch_per_rank), rank, world_size, seed
        self.augment, self.channels_last, self.with_labels = augment, channels_last, with_labels
        self.memory, self.samples, self.classes = memory, list(samples or []), list(classes)
        self.workers, self.on_corrupt, self.root = workers, on_corrupt, root
        self.epoch = 0
        self._warned: set[str] = set()
        n = len(self)
        if n < 1:
            raise DataError(f"{root}: {self.num_images} images give {self.num_images // world_size} per process, "
                            f"fewer than the per-process batch {self.batch} ({world_size} processes): lower the "
                            "batch size or use more data")

    # -- sizes
    @property
    def num_images(self) -> int:
        return len(self.memory) if self.memory is not None else len(self.samples)

    def __len__(self) -> int:
        n, w = self.num_images, self.world_size
        per_rank = n // w  # DistributedSampler(drop_last=True)
        return per_rank // self.batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> list[int]:
        """Dataset indices this rank reads in `epoch` (default: the current one), in order."""
        e = self.epoch if epoch is None else epoch
        return rank_indices(self.num_images, self.rank, self.world_size, self.seed, e)

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(augment_seed(self.seed, self.epoch, self.rank))
        return g

    def _finish(self, views: list[Tensor], labels: Tensor):
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        labels = labels.to(self.device, non_blocking=True)
        if self.task == "linear":
            return views[0], labels
        pair = (views[0], views[1])
        return (pair, labels) if self.with_labels else pair

    def __iter__(self) -> Iterator:
        g = self._generator()
        n_views = 1 if self.task == "linear" else 2
        if self.mode == "memory":
            order = torch.tensor(self.indices(), dtype=torch.long, device=self.device)
            for b in range(len(self)):
                idx = order[b * self.batch:(b + 1) * self.batch]
                yield self._finish(_views(self.augment, self.memory.images[idx], g, n_views),
                                   self.memory.labels[idx])
            return
        loader = self._loader()
        for datas, labels, index in loader:
            names = [self.samples[i][0] for i in index]
            images, kept = decode_batch(datas, names, self.device, self.on_corrupt, self._warned)
            if not images:
                raise CorruptImageError(f"no readable image in a batch of {len(names)} under {self.root} "
                                        f"(first: {names[0]})")
            if len(kept) < len(names):  # on_corrupt=skip: readable images of the batch fill the gaps
                fill = [kept[j % len(kept)] for j in range(len(names) - len(kept))]
                images = images + [images[kept.index(k)] for k in fill]
                labels = torch.cat([labels[kept], labels[fill]])
            yield self._finish(_views(self.augment, images, g, n_views), labels)

    def _loader(self) -> DataLoader:
        sampler = DistributedSampler(range(len(self.samples)), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        return DataLoader(EncodedFiles(self.samples, self.on_corrupt), batch_size=self.batch, sampler=sampler,
                          num_workers=self.workers, collate_fn=collate_encoded, drop_last=True,
                          persistent_workers=False, prefetch_factor=4 if self.workers > 0 else None)

    def __repr__(self) -> str:
        return (f"GPUBatchSource(mode={self.mode}, task={self.task}, device={self.device}, images={self.num_images}, "
                f"batch_per_rank={self.batch}, rank={self.rank}/{self.world_size}, steps={len(self)})")


# ------------------------------------------------------------------------------------------------- build
def _files(train_dir: Path, data_cfg) -> RobustImageFolder:
    return RobustImageFolder(train_dir, None, getattr(data_cfg, "on_corrupt", "error"),
                             getattr(data_cfg, "limit_per_class", 0))


def choose_mode(folder: RobustImageFolder, image_size: int) -> str:
    """"memory" when a probe of a few files per class finds one small size and the set fits the budget."""
    from PIL import Image

    seen: dict[int, int] = {}
    sizes = set()
    for path, label in folder.samples:
        if seen.get(label, 0) >= PROBE_PER_CLASS:
            continue
        seen[label] = seen.get(label, 0) + 1
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except (OSError, ValueError, SyntaxError) as e:
            if folder.on_corrupt == "error":
                raise CorruptImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if len(sizes) != 1:
        return "stream"
    w, h = sizes.pop()
    nbytes = len(folder.samples) * 3 * w * h
    return "memory" if max(w, h) <= max(MEMORY_MAX_SIDE, image_size) and nbytes <= MEMORY_MAX_BYTES else "stream"


def build_gpu_batches(data_cfg, batch_per_rank: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                      device: Device = "cuda", *, mode: str = "auto", task: str = "pretrain",
                      channels_last: bool = False, with_labels: bool = False,
                      workers: int | None = None) -> GPUBatchSource:
    """The GPU batch source of one rank for the training split of `data_cfg` (a pretrain DataConfig or a
    linear LinearDataConfig: root, train_split, image_size, mean, std, workers, on_corrupt, limit_per_class,
    and for pretraining min_scale and blur).

    mode: "auto" | "memory" | "stream". task: "pretrain" (two MoCo v2 views) | "linear" (one linear-training
    view, yields (x, labels)). workers: loader processes reading bytes in "stream" mode (default
    data_cfg.workers)."""
    if mode not in MODES:
        raise ValueError(f"build_gpu_batches: mode '{mode}' is not one of {', '.join(MODES)}")
    if task not in TASKS:
        raise ValueError(f"build_gpu_batches: task '{task}' is not one of {', '.join(TASKS)}")
    if not 0 <= rank < world_size:
        raise ValueError(f"build_gpu_batches: rank {rank} outside 0..{world_size - 1}")
    if batch_per_rank < 1:
        raise ValueError(f"build_gpu_batches: batch_per_rank must be positive, got {batch_per_rank}")
    device = torch.device(device)
    train_dir, _ = resolve_roots(data_cfg)
    folder = _files(train_dir, data_cfg)
    if mode == "auto":
        mode = choose_mode(folder, data_cfg.image_size)
    if task == "pretrain":
        augment = GPUMoCoV2Augment(data_cfg.image_size, getattr(data_cfg, "min_scale", 0.2),
                                   getattr(data_cfg, "blur", True), data_cfg.mean, data_cfg.std)
    else:
        augment = GPULinearTrainAugment(data_cfg.image_size, data_cfg.mean, data_cfg.std)
    common = dict(task=task, device=device, batch_per_rank=batch_per_rank, rank=rank, world_size=world_size,
                  seed=seed, augment=augment, channels_last=channels_last, with_labels=with_labels,
                  classes=folder.classes, on_corrupt=folder.on_corrupt, root=train_dir)
    if mode == "memory":
        return GPUBatchSource("memory", memory=load_memory(folder, device), **common)
    return GPUBatchSource("stream", samples=folder.samples,
                          workers=data_cfg.workers if workers is None else workers, **common)


def load_memory(folder: RobustImageFolder, device: Device, chunk: int = 1024) -> DeviceImageDataset:
    """Decode every sample of `folder` (one size) into a DeviceImageDataset on `device`, `chunk` files at a
    time (nvJPEG on CUDA). Unreadable files: error naming the file, or skipped with a warning when
    on_corrupt="skip"."""
    images, labels, first = [], [], None
    warned: set[str] = set()
    samples = folder.samples
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        datas = []
        for path, _ in part:
            try:
                data = Path(path).read_bytes()
            except OSError:
                data = b""
            datas.append(torch.frombuffer(bytearray(data), dtype=torch.uint8) if data
                         else torch.empty(0, dtype=torch.uint8))
        decoded, kept = decode_batch(datas, [p for p, _ in part], device, folder.on_corrupt, warned)
        for im, k in zip(decoded, kept):
            path, label = part[k]
            if first is None:
                first = (tuple(im.shape), path)
            elif tuple(im.shape) != first[0]:
                raise DataError(f"{path}: size {tuple(im.shape[1:])} differs from {tuple(first[0][1:])} of "
                                f"{first[1]}: the in-memory GPU path needs images of one size (use mode='stream')")
            images.append(im)
            labels.append(label)
    if not images:
        raise DataError(f"no readable images in {folder.root}")
    return DeviceImageDataset(torch.stack(images), torch.tensor(labels), folder.classes)


# -------------------------------------------------------------------------------------- evaluation views
class DeviceEvalLoader:
    """(x, labels) batches of an in-memory split, in order, with the deterministic evaluation view
    (Resize(short side to image_size / crop_fraction) + CenterCrop(image_size) + normalisation; for images
    already image_size square with crop_fraction 1 only the normalisation). Shards by rank like
    pretrain.data's kNN loaders (every world_size-th image)."""

    def __init__(self, dataset: DeviceImageDataset, image_size: int, mean, std, batch_size: int = 512,
                 crop_fraction: float = 1.0, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.dataset, self.image_size, self.batch_size = dataset, int(image_size), int(batch_size)
        self.resize = int(round(image_size / crop_fraction, 6))
        self.mean = torch.tensor(list(mean), device=dataset.device).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), device=dataset.device).view(1, 3, 1, 1)
        self.index = torch.arange(rank, len(dataset), world_size, device=dataset.device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self):
        from torchvision.transforms.functional import center_crop, resize

        for start in range(0, len(self.index), self.batch_size):
            idx = self.index[start:start + self.batch_size]
            x = self.dataset.images[idx]
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size or self.resize != self.image_size:
                x = center_crop(resize(x, [self.resize], antialias=True), [self.image_size, self.image_size])
            x = (x.float().div_(255.0) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.dataset.labels[idx]


def build_gpu_eval_batches(folder_dir: Union[str, Path], data_cfg, device: Device = "cuda", limit_per_class: int = 0,
                           batch_size: int = 512, crop_fraction: float = 1.0, rank: int = 0, world_size: int = 1,
                           channels_last: bool = False) -> DeviceEvalLoader:
    """An in-memory evaluation loader of an ImageFolder split (e.g. the kNN bank and held-out split)."""
    folder = RobustImageFolder(folder_dir, None, getattr(data_cfg, "on_corrupt", "error"), limit_per_class)
    return DeviceEvalLoader(load_memory(folder, device), data_cfg.image_size, data_cfg.mean, data_cfg.std,
                            batch_size, crop_fraction, rank, world_size, channels_last)
