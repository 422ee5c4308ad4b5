"""What the heads read: one interface (`DataSource`) over the three data paths: images (PIL transforms in
loader workers, each batch through the backbone), the device (train.gpu_augment: decode + crop/flip on the
device, pretrain.fastdata) and cached features (train.cache_features: both splits through the backbone once)."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from pretrain import fastdata
from pretrain.augment import eval_transform, linear_train_transform
from pretrain.data import DataError, RobustImageFolder, dataset_name, eval_loader
from pretrain.logs import LOGGER_NAME
from pretrain.monitor import extract_features
from transfer.evaluation.frozen import FrozenBackbone, labelled_folders

from .config import ConfigError, LinearConfig
from .heads import holdout_split


class ImageData:
    """The training and validation image folders with their transforms, and the grid's (training, held-out)
    indices of the training split (`split`; None for the protocol's one head)."""

    def __init__(self, cfg: LinearConfig):
        d, self.cfg, self.name = cfg.data, cfg, dataset_name(cfg.data)
        self.eval_tf = eval_transform(d.image_size, d.mean, d.std, crop_fraction=d.crop_fraction)
        train_tf = linear_train_transform(d.image_size, d.mean, d.std) if d.augment else self.eval_tf
        self.train_dir, self.val_dir, self.train, self.val = labelled_folders(
            d, (train_tf, self.eval_tf), f"data.root={d.root}", "linear evaluation")
        self.num_classes = len(self.train.classes)
        self.split = holdout_split(len(self.train), cfg.grid) if cfg.grid.enabled else None
        self.holdout_images = len(self.split[1]) if self.split else 0

    def held_out(self, transform) -> RobustImageFolder:
        """The grid's held-out slice of the training split with `transform` (None: file paths only)."""
        folder = copy.copy(self.train)
        folder.transform, folder.samples = transform, [self.train.samples[i] for i in self.split[1]]
        return folder


@dataclass
class DataSource:
    """Training batches (x, labels) and the object to set_epoch on, the batches of each split the heads are
    evaluated on ("val", and with a grid "holdout"), how a batch becomes features, and the training images."""
    train: Any
    sampler: Any
    splits: dict
    to_features: Callable
    train_images: int

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return self.train


def build_source(data: ImageData, bb: FrozenBackbone, info) -> DataSource:
    """The source of the config's data path, for this process (`info`: pretrain.distributed.DistInfo)."""
    t = data.cfg.train
    if t.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the {info.world_size} processes")
    build = _feature_source if t.cache_features else _device_source if t.gpu_augment else _image_source
    return build(data, bb, info)


def _eval_loader(data: ImageData, info, dataset, workers: int | None = None) -> DataLoader:
    """In-order batches of this process's share of an evaluation split (workers=0: tensors in memory)."""
    return eval_loader(dataset, info.rank, info.world_size, data.cfg.train.eval_batch_size,
                       data.cfg.data.workers if workers is None else workers,
                       workers is None and info.device.type == "cuda")


def _train_loader(data: ImageData, info, train_set, workers: int, pin: bool):
    """(sampler, loader) of this process's shuffled share of the training set (seeded per epoch)."""
    t = data.cfg.train
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=t.seed, drop_last=False)
    return sampler, DataLoader(train_set, batch_size=t.batch_size // info.world_size, sampler=sampler,
                               num_workers=workers, pin_memory=pin, drop_last=False)


def _image_source(data: ImageData, bb: FrozenBackbone, info) -> DataSource:
    train_set, splits = data.train, {"val": _eval_loader(data, info, data.val)}
    if data.split is not None:
        train_set = Subset(data.train, data.split[0])
        splits["holdout"] = _eval_loader(data, info, data.held_out(data.eval_tf))
    sampler, loader = _train_loader(data, info, train_set, data.cfg.data.workers, info.device.type == "cuda")
    return DataSource(loader, sampler, splits, bb.features, len(train_set))


def _feature_source(data: ImageData, bb: FrozenBackbone, info) -> DataSource:
    """Both splits through the backbone once, in dataset order (the ranks' shards put back), on the CPU."""
    t0, cached = time.time(), []
    for ds in (data.train, data.val):
        f, y = extract_features(bb.features, _eval_loader(data, info, ds), info.device)
        order = torch.tensor([i for r in range(info.world_size) for i in range(r, len(ds), info.world_size)])
        cached.append((f.cpu()[order.argsort()], y.cpu()[order.argsort()]))
    (ftr, ytr), (fva, yva) = cached
    logging.getLogger(LOGGER_NAME).info("cached features: %d train, %d held-out (%d-d) in %.1f s", len(ftr),
                                        len(fva), bb.dim, time.time() - t0)
    splits = {"val": _eval_loader(data, info, TensorDataset(fva, yva), workers=0)}
    if data.split is not None:
        keep, hold = torch.tensor(data.split[0]), torch.tensor(data.split[1])
        splits["holdout"] = _eval_loader(data, info, TensorDataset(ftr[hold], ytr[hold]), workers=0)
        ftr, ytr = ftr[keep], ytr[keep]
    sampler, loader = _train_loader(data, info, TensorDataset(ftr, ytr), workers=0, pin=False)
    return DataSource(loader, sampler, splits, lambda x: x.to(info.device), len(ftr))


def _device_source(data: ImageData, bb: FrozenBackbone, info) -> DataSource:
    d, t, cl, split = data.cfg.data, data.cfg.train, data.cfg.train.channels_last, data.split
    source = fastdata.build_gpu_batches(d, t.batch_size // info.world_size, info.rank, info.world_size, t.seed,
                                        info.device, task="linear", channels_last=cl)
    memory = lambda folder: fastdata.DeviceEvalLoader(  # noqa: E731  (a folder's evaluation views in memory)
        fastdata.load_eval_memory(folder, info.device, d.image_size, d.crop_fraction), d.mean, d.std,
        t.eval_batch_size, info.rank, info.world_size, cl)
    splits = {"val": memory(data.val)}
    if split is not None:
        if source.num_images != len(data.train):
            raise DataError(f"{data.train_dir}: {source.num_images} of {len(data.train)} training images readable; "
                            "the grid's held-out slice needs them all (or train.gpu_augment=false)")
        source.subset(split[0])
        splits["holdout"] = memory(data.held_out(None))
    return DataSource(_OneView(source), source, splits, bb.features, source.num_images)


@dataclass
class _OneView:
    """The device source's batches ((x,), labels) as (x, labels), like the other training loaders."""
    source: Any

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        return ((views[0], y) for views, y in self.source)
