"""The GPU data path of one rank: batches of augmented views made on the training device.

    source = build_gpu_batches(cfg.data, batch_per_rank, rank, world_size, seed, device)
    for epoch in ...:
        source.set_epoch(epoch)
        for (x1, x2), labels in source:   # float32 (B, 3, S, S) on `device`, normalised, two MoCo v2 views
            ...

Two modes (`mode="auto"` picks one):

- "memory": the whole training set as one uint8 tensor on the device (`pretrain.gpu_augment.DeviceImageDataset`),
  for small images of one size (CIFAR: 50k x 3 x 32 x 32 = 150 MB). A step is an index gather + the batched
  augmentation; no loader processes. Images of different sizes cannot be held this way: "auto" then uses
  "stream" (also when its probe of a few files missed them and loading finds them), an explicit "memory"
  is an error naming the first file of another size.
- "stream": a torch DataLoader whose workers only read the files' bytes; the main process decodes the batch on
  the device (`decode_jpeg_batch`: nvJPEG on CUDA) and augments it there (`GPUMoCoV2Augment`). Images of any
  sizes work: they are padded into one batch tensor (unless that would more than double the pixels; then
  they are cropped group by group of equal size), so a view costs one crop kernel for the whole batch;
  `crop_resize` reads only pixels inside each crop box, so the padding is never read.

Both modes shard the file list per rank exactly like `DistributedSampler(shuffle=True, drop_last=True,
seed=seed)` with `set_epoch(epoch)`, i.e. the ranks see disjoint parts of one permutation that changes each
epoch; the augmentation randomness comes from a generator on the device seeded from (seed, epoch, rank), so an
epoch is reproducible. Unreadable files follow `data.on_corrupt` ("error": `pretrain.data.CorruptImageError`
naming the file; "skip": a warning per file and another image of the batch takes its place).

`task="linear"` gives the linear-evaluation training view instead (RandomResizedCrop(scale 0.08-1) + flip +
normalisation): batches are ((x,), labels), the same shape with one view. The two modes are two classes,
MemoryBatches and StreamBatches, on one BatchSource base (data order, views, mid-epoch resume).

`build_gpu_eval_batches` is the deterministic evaluation view of a split (kNN bank and queries, linear
validation) as a loader of (x, labels): the reference `pretrain.augment.eval_transform` (Resize of the short
side to image_size / crop_fraction, CenterCrop(image_size)) is applied once per image on the device while the
split is loaded (`load_eval_memory`), so images of any sizes end up as one uint8 (N, 3, S, S) tensor that
stays in device memory (S^2 bytes x 3 per image: 150 KB at 224 px); each batch is then only normalised.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .augment import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, view_recipes
from .data import CorruptImageError, DataError, ResumableSampler, RobustImageFolder, resolve_roots
from .gpu_augment import (DeviceImageDataset, GPUMoCoV2Augment, crop_resize, decode_jpeg_batch, resize_taps,
                          sample_crop_boxes)

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

    Each image sits at the top-left and its last row/column is repeated into the padding. `crop_resize` never
    reads the padding (it reads only pixels inside each crop box); repeating the edge keeps the values finite
    and plausible for any other consumer."""
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
    """`n_views` augmented views of a batch tensor or of a list of variable-size images; `augment` is one
    augmentation or a tuple of them, view k made by augment[k % len(augment)] (a method's first and second
    views)."""
    augments = augment if isinstance(augment, tuple) else (augment,)
    each = [augments[k % len(augments)] for k in range(n_views)]
    if isinstance(batch, Tensor) or not _padding_pays(batch):
        return [a(batch, generator) for a in each]
    padded, sizes = pad_to_batch(batch)
    return [a.apply(padded, a.sample_params(len(batch), generator, sizes)) if isinstance(a, GPUMoCoV2Augment)
            else a(padded, generator, sizes=sizes) for a in each]


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
            return decode_images(datas, device, names), list(range(len(datas)))
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
            images.append(decode_images([d], device, [name])[0])
            kept.append(i)
        except ValueError as e:
            if warned is not None and name not in warned:
                warned.add(name)
                warnings.warn(f"skipping unreadable image (data.on_corrupt=skip): {e}", stacklevel=2)
    return images, kept


SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # JPEG frame headers (not DHT, JPG, DAC)


def jpeg_components(data: Tensor) -> int:
    """Colour components of a JPEG (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK), read from its frame header; 0 for
    other formats (a PNG named .JPEG, say) or when no frame header is found."""
    b = data.numpy() if isinstance(data, Tensor) else memoryview(bytes(data))
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return 0
    i = 2
    while i + 4 <= n and b[i] == 0xFF:
        marker = int(b[i + 1])
        if marker == 0xFF:                                   # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:      # markers without a length
            i += 2
        elif marker in SOF_MARKERS:
            return int(b[i + 9]) if i + 9 < n else 0
        else:
            i += 2 + (int(b[i + 2]) << 8 | int(b[i + 3]))
    return 0


def decode_images(datas: Sequence[Tensor], device: Device, names: Sequence[str]) -> list[Tensor]:
    """`decode_jpeg_batch` (RGB uint8 (3, H, W) on `device`; nvJPEG on CUDA, torchvision's libjpeg on the CPU,
    PNG and other formats by torchvision one by one, PIL for what torchvision cannot read), except that on CUDA
    4-component (CMYK/YCCK) JPEGs are decoded on the CPU and moved: on CMYK, greyscale and PNG files written by
    PIL, torchvision's CPU decoders give exactly the pixels of PIL's `convert("RGB")`; nvJPEG's CMYK handling
    is not documented to. Like PIL's reference loader, no decoder applies the EXIF orientation."""
    device = torch.device(device)
    on_cpu = [i for i, d in enumerate(datas) if jpeg_components(d) == 4] if device.type == "cuda" else []
    if not on_cpu:
        return decode_jpeg_batch(datas, device, names)
    out: list[Tensor | None] = [None] * len(datas)
    rest = [i for i in range(len(datas)) if i not in set(on_cpu)]
    for part, dev in ((rest, device), (on_cpu, torch.device("cpu"))):
        if part:
            for i, im in zip(part, decode_jpeg_batch([datas[i] for i in part], dev, [names[i] for i in part])):
                out[i] = im.to(device)
    return out  # type: ignore[return-value]


def _name_in(err: Exception, names: Sequence[str]) -> str:
    msg = str(err)
    for n in names:
        if msg.startswith(f"{n}:"):
            return n
    return "(in this batch)"


# -------------------------------------------------------------------------------------------- the sources
@dataclass(frozen=True)
class SourceSpec:
    """What both batch sources share: the task and its augmentation, the per-rank batch, the rank, the seed of
    the data order and of the views, the device, and where the files came from (for messages)."""
    task: str
    device: torch.device
    batch_per_rank: int
    rank: int
    world_size: int
    seed: int
    augment: object
    channels_last: bool = False
    classes: tuple[str, ...] = ()
    on_corrupt: str = "error"
    root: Path | None = None
    pairs: int = 1                  # pretraining: pairs of views per image

    @property
    def n_views(self) -> int:
        return 1 if self.task == "linear" else 2 * self.pairs


class BatchSource:
    """Per-rank iterable of augmented batches made on the device (see the module docstring): each item is
    (views, labels), views a tuple of two (B, 3, S, S) tensors for pretraining and of one for the linear task.
    `len()` is the number of full batches per epoch (drop_last). Two cases: MemoryBatches (the split as one
    uint8 tensor on the device) and StreamBatches (file bytes from loader processes, decoded on the device)."""

    mode = ""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.epoch = self.start_step = 0
        self._resume_generator: Tensor | None = None
        self._g: torch.Generator | None = None
        self._warned: set[str] = set()
        if len(self) < 1:
            raise DataError(f"{spec.root}: {self.num_images} images give {self.num_images // spec.world_size} per "
                            f"process, fewer than the per-process batch {spec.batch_per_rank} ({spec.world_size} "
                            "processes): lower the batch size or use more data")

    @property
    def num_images(self) -> int:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    def __len__(self) -> int:
        per_rank = self.num_images // self.spec.world_size  # DistributedSampler(drop_last=True)
        return per_rank // self.spec.batch_per_rank

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Start `epoch` (after its first `start_step` batches: a mid-epoch resume, see load_state)."""
        self.epoch, self.start_step = int(epoch), int(start_step)
        self._resume_generator = None

    def state(self) -> dict:
        """The data position to store in a checkpoint: the epoch and the augmentation generator's state after
        the last batch yielded (with set_epoch(epoch, step) + load_state, the next batch is the one an
        uninterrupted epoch would yield)."""
        return {"epoch": self.epoch, "generator": self._g.get_state().cpu() if self._g is not None else None}

    def load_state(self, state: dict) -> None:
        """Continue the augmentation stream of a checkpoint (call after set_epoch(epoch, step))."""
        if state.get("generator") is not None and int(state.get("epoch", -1)) == self.epoch:
            self._resume_generator = state["generator"]

    def indices(self, epoch: int | None = None) -> list[int]:
        """Dataset indices this rank reads in `epoch` (default: the current one), in order."""
        s = self.spec
        return rank_indices(self.num_images, s.rank, s.world_size, s.seed, self.epoch if epoch is None else epoch)

    def _generator(self) -> torch.Generator:
        s = self.spec
        g = torch.Generator(device=s.device)
        g.manual_seed(augment_seed(s.seed, self.epoch, s.rank))
        if self._resume_generator is not None:
            g.set_state(self._resume_generator)
        self._g = g
        return g

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
        g = self._generator()
        for images, labels in self._batches():
            views = _views(self.spec.augment, images, g, self.spec.n_views)
            if self.spec.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            yield tuple(views), labels.to(self.spec.device, non_blocking=True)

    def _batches(self) -> Iterator[tuple[Union[Tensor, list[Tensor]], Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        s = self.spec
        return (f"{type(self).__name__}(task={s.task}, device={s.device}, images={self.num_images}, "
                f"batch_per_rank={s.batch_per_rank}, rank={s.rank}/{s.world_size}, steps={len(self)})")


class MemoryBatches(BatchSource):
    """The training split as one uint8 tensor on the device (images of one size): a batch is an index gather."""

    mode = "memory"

    def __init__(self, spec: SourceSpec, memory: DeviceImageDataset):
        self.memory = memory
        super().__init__(spec)

    @property
    def num_images(self) -> int:
        return len(self.memory)

    def subset(self, keep: Sequence[int]) -> None:
        """Keep only these images (e.g. the training part of a held-out split), in this order."""
        idx = torch.tensor(list(keep), device=self.memory.device)
        self.memory = DeviceImageDataset(self.memory.images[idx], self.memory.labels[idx], self.memory.classes)

    def _batches(self):
        b = self.spec.batch_per_rank
        order = torch.tensor(self.indices(), dtype=torch.long, device=self.spec.device)
        for i in range(self.start_step, len(self)):
            idx = order[i * b:(i + 1) * b]
            yield self.memory.images[idx], self.memory.labels[idx]


class StreamBatches(BatchSource):
    """Files read by loader processes (bytes only), decoded and augmented on the device; any image sizes."""

    mode = "stream"

    def __init__(self, spec: SourceSpec, samples: Sequence[tuple[str, int]], workers: int = 0):
        self.samples, self.workers = list(samples), int(workers)
        super().__init__(spec)

    @property
    def num_images(self) -> int:
        return len(self.samples)

    def subset(self, keep: Sequence[int]) -> None:
        """Keep only these files (e.g. the training part of a held-out split), in this order."""
        self.samples = [self.samples[i] for i in keep]

    def _batches(self):
        for datas, labels, index in self._loader():
            names = [self.samples[i][0] for i in index]
            images, kept = decode_batch(datas, names, self.spec.device, self.spec.on_corrupt, self._warned)
            if not images:
                raise CorruptImageError(f"no readable image in a batch of {len(names)} under {self.spec.root} "
                                        f"(first: {names[0]})")
            if len(kept) < len(names):  # on_corrupt=skip: readable images of the batch fill the gaps
                fill = [kept[j % len(kept)] for j in range(len(names) - len(kept))]
                images = images + [images[kept.index(k)] for k in fill]
                labels = torch.cat([labels[kept], labels[fill]])
            yield images, labels

    def _loader(self) -> DataLoader:
        s = self.spec
        sampler = ResumableSampler(range(len(self.samples)), num_replicas=s.world_size, rank=s.rank, shuffle=True,
                                   seed=s.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        sampler.start = self.start_step * s.batch_per_rank
        return DataLoader(EncodedFiles(self.samples, s.on_corrupt), batch_size=s.batch_per_rank, sampler=sampler,
                          num_workers=self.workers, collate_fn=collate_encoded, drop_last=True,
                          persistent_workers=False, prefetch_factor=4 if self.workers > 0 else None)


# ------------------------------------------------------------------------------------------------- build
def _files(train_dir: Path, data_cfg) -> RobustImageFolder:
    return RobustImageFolder(train_dir, None, data_cfg.on_corrupt, data_cfg.limit_per_class)


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
                      channels_last: bool = False, workers: int | None = None, pairs: int = 1) -> BatchSource:
    """The GPU batch source of one rank for the training split of `data_cfg` (pretrain.defaults.ImageFolderData;
    for pretraining a DataConfig, whose augmentation, min_scale and blur shape the views).

    mode: "auto" | "memory" | "stream". task: "pretrain" (two views of data.augmentation) | "linear" (one
    linear-training view); either way batches are (views, labels). workers: loader processes reading bytes in
    "stream" mode (default data_cfg.workers). pairs: pairs of pretraining views per image (two for the
    asymmetric x2 loss)."""
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
    auto = mode == "auto"
    if auto:
        mode = choose_mode(folder, data_cfg.image_size)
    if task == "pretrain":  # the first and second views of data.augmentation (one object when they are alike)
        first, second = (GPUMoCoV2Augment(data_cfg.image_size, data_cfg.min_scale, data_cfg.blur, data_cfg.mean,
                                          data_cfg.std, recipe) for recipe in view_recipes(data_cfg.augmentation))
        augment = first if first.recipe == second.recipe else (first, second)
    else:
        augment = GPULinearTrainAugment(data_cfg.image_size, data_cfg.mean, data_cfg.std)
    spec = SourceSpec(task, device, batch_per_rank, rank, world_size, seed, augment, channels_last,
                      tuple(folder.classes), folder.on_corrupt, train_dir, pairs)
    if mode == "memory":
        try:
            return MemoryBatches(spec, load_memory(folder, device))
        except MixedSizesError:
            if not auto:
                raise
            # the probe saw one size but the folder holds others: stream it (any sizes work there)
    return StreamBatches(spec, folder.samples, data_cfg.workers if workers is None else workers)


class MixedSizesError(DataError):
    """Images of different sizes where one size is needed (the in-memory training set)."""


def _decoded_chunks(folder: RobustImageFolder, device: Device, chunk: int) -> Iterator[tuple[list, list]]:
    """(decoded images, their (path, label)) of `folder`, `chunk` files at a time, on `device`. Unreadable
    files: CorruptImageError naming the file, or left out with a warning when folder.on_corrupt="skip"."""
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
        yield decoded, [part[k] for k in kept]


def load_memory(folder: RobustImageFolder, device: Device, chunk: int = 1024) -> DeviceImageDataset:
    """Decode every sample of `folder` (one size) into a DeviceImageDataset on `device`, `chunk` files at a
    time (nvJPEG on CUDA). A file of another size than the first raises MixedSizesError naming both.
    Unreadable files: error naming the file, or skipped with a warning when on_corrupt="skip"."""
    images, labels, first = [], [], None
    for decoded, part in _decoded_chunks(folder, device, chunk):
        for im, (path, label) in zip(decoded, part):
            if first is None:
                first = (tuple(im.shape), path)
            elif tuple(im.shape) != first[0]:
                raise MixedSizesError(f"{path}: size {tuple(im.shape[1:])} differs from {tuple(first[0][1:])} of "
                                      f"{first[1]}: the in-memory GPU path needs images of one size "
                                      "(use mode='stream' or 'auto')")
            images.append(im)
            labels.append(label)
    if not images:
        raise DataError(f"no readable images in {folder.root}")
    return DeviceImageDataset(torch.stack(images), torch.tensor(labels), folder.classes)


# -------------------------------------------------------------------------------------- evaluation views
def eval_geometry(height: int, width: int, image_size: int, resize: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of the reference evaluation view of an image:
    torchvision's Resize(resize) (short side to `resize`, long side int(resize * long / short)) and
    CenterCrop(image_size) (offsets int(round((resized - image_size) / 2))). Needs resize >= image_size."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    nh, nw = (new_long, resize) if width <= height else (resize, new_long)
    return nh, nw, int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))


def _axis_matrix(length: int, resized: int, start: int, size: int) -> Tensor:
    """(size, length) float64: rows start..start + size - 1 of PIL's bilinear resize of `length` pixels to
    `resized` (`pretrain.gpu_augment.resize_taps`: triangle filter widened by the shrink factor)."""
    index, weight = resize_taps(torch.zeros(1), torch.tensor([float(length)]), resized)
    index, weight = index[0, start:start + size], weight[0, start:start + size].double()
    return torch.zeros(size, length, dtype=torch.float64).scatter_add_(1, index, weight)


def eval_view(images: Sequence[Tensor], image_size: int, resize: int, batch: int = 64) -> Tensor:
    """The reference evaluation view (Resize(resize) + CenterCrop(image_size), PIL bilinear with antialias)
    of uint8 (3, H_i, W_i) images of any sizes: uint8 (N, 3, image_size, image_size) on their device.

    Per size, each axis is one matrix of PIL's resize weights restricted to the cropped rows/columns, so a
    view is two matrix products (in float64, immune to TF32 settings) rounded to uint8 as PIL rounds its
    output; images of equal size share them, `batch` at a time. An image whose view is itself (already
    image_size square, nothing to resize) is copied unchanged."""
    if resize < image_size:
        raise ValueError(f"eval_view: resize {resize} is smaller than the crop {image_size}")
    dev = images[0].device
    out = torch.empty(len(images), 3, image_size, image_size, dtype=torch.uint8, device=dev)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((im.shape[1], im.shape[2]), []).append(i)
    for (h, w), members in groups.items():
        nh, nw, top, left = eval_geometry(h, w, image_size, resize)
        if (nh, nw, top, left) == (h, w, 0, 0) and h == w == image_size:
            for i in members:
                out[i] = images[i]
            continue
        my = _axis_matrix(h, nh, top, image_size).to(dev)
        mxt = _axis_matrix(w, nw, left, image_size).t().to(dev)
        for start in range(0, len(members), batch):
            idx = members[start:start + batch]
            x = torch.stack([images[i] for i in idx]).double()
            out[torch.tensor(idx, device=dev)] = (my @ x @ mxt).round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_eval_memory(folder: RobustImageFolder, device: Device, image_size: int, crop_fraction: float = 1.0,
                     chunk: int = 256) -> DeviceImageDataset:
    """Every sample of `folder` (any sizes) as its evaluation view (`eval_view`), one uint8 (N, 3, S, S)
    DeviceImageDataset on `device`. Decoding and the view run `chunk` files at a time, so only a chunk's
    full-size images are in memory at once. Unreadable files: as `load_memory`."""
    resize = eval_resize_size(image_size, crop_fraction)
    views, labels = [], []
    for decoded, part in _decoded_chunks(folder, device, chunk):
        if decoded:
            views.append(eval_view(decoded, image_size, resize))
            labels += [label for _, label in part]
    if not views:
        raise DataError(f"no readable images in {folder.root}")
    return DeviceImageDataset(torch.cat(views), torch.tensor(labels), folder.classes)


class DeviceEvalLoader:
    """(x, labels) batches of an in-memory split of evaluation views (`load_eval_memory`: uint8, image_size
    square), in order, normalised (float32). Shards by rank like pretrain.data's kNN loaders (every
    world_size-th image)."""

    def __init__(self, dataset: DeviceImageDataset, mean, std, batch_size: int = 512, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.mean = torch.tensor(list(mean), device=dataset.device).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), device=dataset.device).view(1, 3, 1, 1)
        self.index = torch.arange(rank, len(dataset), world_size, device=dataset.device)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.index) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.index), self.batch_size):
            idx = self.index[start:start + self.batch_size]
            x = (self.dataset.images[idx].float().div_(255.0) - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.dataset.labels[idx]


def build_gpu_eval_batches(folder_dir: Union[str, Path], data_cfg, device: Device = "cuda", limit_per_class: int = 0,
                           batch_size: int = 512, crop_fraction: float = 1.0, rank: int = 0, world_size: int = 1,
                           channels_last: bool = False) -> DeviceEvalLoader:
    """An in-memory evaluation loader of an ImageFolder split of images of any sizes (e.g. the kNN bank and
    queries, the linear held-out split): the reference eval_transform(data_cfg.image_size, crop_fraction)
    computed on `device`, then normalised with data_cfg.mean / std."""
    folder = RobustImageFolder(folder_dir, None, data_cfg.on_corrupt, limit_per_class)
    dataset = load_eval_memory(folder, device, data_cfg.image_size, crop_fraction)
    return DeviceEvalLoader(dataset, data_cfg.mean, data_cfg.std, batch_size, rank, world_size, channels_last)
