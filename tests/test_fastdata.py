"""pretrain.fastdata on CPU: the in-memory and streaming GPU batch sources (run here on the CPU device),
rank sharding against DistributedSampler, per-epoch reshuffling, corrupt files, evaluation views."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from pretrain.augment import CIFAR_MEAN, CIFAR_STD, eval_transform
from pretrain.data import CorruptImageError, DataError, RobustImageFolder
from pretrain.defaults import DataConfig
from pretrain.fastdata import (GPUBatchSource, build_gpu_batches, build_gpu_eval_batches, load_memory,
                               pad_to_batch, rank_indices)
from pretrain.gpu_augment import GPUMoCoV2Augment


def cifar_cfg(root, **kw) -> DataConfig:
    base = dict(root=str(root), val_split="test", image_size=32, blur=False, mean=CIFAR_MEAN, std=CIFAR_STD,
                workers=0, limit_per_class=12)
    base.update(kw)
    return DataConfig(**base)


def write_jpegs(root, n_per_class=6, classes=("a", "b"), sizes=((40, 30), (37, 52), (48, 48))):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            w, h = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i:03d}.jpg",
                                                                                  quality=90)
    return root


def unnormalise(x, mean, std):
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_views_shape_dtype_normalisation(cifar_root, mode):
    src = build_gpu_batches(cifar_cfg(cifar_root), 16, 0, 1, 0, "cpu", mode=mode, channels_last=True)
    assert isinstance(src, GPUBatchSource) and src.mode == mode
    assert src.num_images == 120 and len(src) == 120 // 16
    batches = list(src)
    assert len(batches) == len(src)
    x1, x2 = batches[0]
    for x in (x1, x2):
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
        assert x.is_contiguous(memory_format=torch.channels_last)
        pix = unnormalise(x, CIFAR_MEAN, CIFAR_STD)
        assert pix.min() >= -1e-4 and pix.max() <= 1 + 1e-4   # normalised from [0, 1] pixels
        assert 0.2 < pix.mean() < 0.8
    assert (x1 - x2).abs().mean() > 0.1                        # two independent views


def test_memory_and_stream_agree_and_auto_picks_memory(cifar_root):
    cfg = cifar_cfg(cifar_root, limit_per_class=4)
    auto = build_gpu_batches(cfg, 8, 1, 2, 3, "cpu")
    stream = build_gpu_batches(cfg, 8, 1, 2, 3, "cpu", mode="stream")
    assert auto.mode == "memory"
    for e in (0, 1):
        auto.set_epoch(e)
        stream.set_epoch(e)
        for (a1, a2), (s1, s2) in zip(auto, stream):
            assert torch.allclose(a1, s1, atol=1e-5) and torch.allclose(a2, s2, atol=1e-5)


def test_ranks_partition_like_distributed_sampler():
    n, world = 103, 4
    parts = [rank_indices(n, r, world, seed=5, epoch=2) for r in range(world)]
    ref = []
    for r in range(world):
        s = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=5, drop_last=True)
        s.set_epoch(2)
        ref.append(list(s))
    assert parts == ref
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == world * (n // world)   # disjoint, drop_last
    assert set(range(n)) - set(flat) and len(set(range(n)) - set(flat)) == n % world


def test_sources_of_all_ranks_cover_the_dataset_and_reshuffle(cifar_root):
    cfg = cifar_cfg(cifar_root, limit_per_class=4)                  # 40 images
    world = 2
    srcs = [build_gpu_batches(cfg, 4, r, world, 0, "cpu", mode="memory", with_labels=True) for r in range(world)]
    idx = [s.indices() for s in srcs]
    assert not set(idx[0]) & set(idx[1]) and sorted(idx[0] + idx[1]) == list(range(40))
    # labels of the batches are those of the indices read
    labels = torch.cat([y for (_, y) in srcs[0]])
    assert labels.tolist() == srcs[0].memory.labels[torch.tensor(idx[0])].tolist()
    # same epoch: identical batches; another epoch: another order and other views
    s = srcs[0]
    s.set_epoch(0)
    a = [x1 for (x1, _), _ in s]
    s.set_epoch(0)
    b = [x1 for (x1, _), _ in s]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    e0 = s.indices()
    s.set_epoch(1)
    assert s.indices() != e0 and sorted(s.indices()) != sorted(srcs[1].indices())
    c = [x1 for (x1, _), _ in s]
    assert not torch.equal(a[0], c[0])


def test_stream_variable_sizes_and_padding_is_exact(tmp_path):
    root = write_jpegs(tmp_path / "jpg")
    cfg = DataConfig(root=str(root), image_size=24, workers=1, val_split="")
    src = build_gpu_batches(cfg, 4, 0, 1, 0, "cpu")
    assert src.mode == "stream" and len(src) == 3
    x1, x2 = next(iter(src))
    assert x1.shape == x2.shape == (4, 3, 24, 24) and not torch.equal(x1, x2)
    # padding into one tensor gives exactly the crops of the separate images
    rng = torch.Generator().manual_seed(0)
    ims = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=rng) for h, w in ((20, 31), (27, 18), (9, 9))]
    aug = GPUMoCoV2Augment(16, 0.2, True)
    params = aug.sample_params(3, torch.Generator().manual_seed(1), [im.shape[1:] for im in ims])
    padded, sizes = pad_to_batch(ims)
    assert padded.shape == (3, 3, 27, 31) and sizes.tolist() == [[20, 31], [27, 18], [9, 9]]
    assert torch.allclose(aug.apply(padded, params), aug.apply(ims, params), atol=1e-5)


def test_linear_task_yields_images_and_labels(tmp_path):
    root = write_jpegs(tmp_path / "jpg")
    cfg = DataConfig(root=str(root), image_size=16, workers=0, val_split="")
    src = build_gpu_batches(cfg, 5, 0, 1, 0, "cpu", task="linear")
    x, y = next(iter(src))
    assert x.shape == (5, 3, 16, 16) and y.dtype == torch.long and set(y.tolist()) <= {0, 1}


@pytest.mark.parametrize("mode", ["memory", "stream", "auto"])
def test_corrupt_jpeg_names_the_file(tmp_path, mode):
    root = write_jpegs(tmp_path / "jpg", sizes=((32, 32),))
    bad = root / "train" / "b" / "002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    cfg = DataConfig(root=str(root), image_size=16, workers=0, val_split="")
    with pytest.raises(CorruptImageError, match="002.jpg"):
        src = build_gpu_batches(cfg, 12, 0, 1, 0, "cpu", mode=mode)
        list(src)
    skip = dataclasses.replace(cfg, on_corrupt="skip")
    with pytest.warns(UserWarning, match="002.jpg"):
        src = build_gpu_batches(skip, 4, 0, 1, 0, "cpu", mode=mode)
        batches = list(src)
    assert all(x1.shape == (4, 3, 16, 16) for x1, _ in batches)


def test_eval_loader_matches_reference_transform(cifar_root):
    cfg = cifar_cfg(cifar_root)
    loader = build_gpu_eval_batches(cifar_root / "test", cfg, "cpu", limit_per_class=2, batch_size=8)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == sorted(y.tolist())
    first = sorted((cifar_root / "test" / "airplane").iterdir())[0]
    ref = eval_transform(32, CIFAR_MEAN, CIFAR_STD, crop_fraction=1.0)(Image.open(first))
    assert torch.allclose(x[0], ref, atol=2e-2)   # same pixels up to JPEG decoder rounding


def test_load_memory_keeps_pixels_labels_and_names_a_wrong_size(tmp_path):
    from pretrain.synthetic import SHAPES, write_imagefolder
    root = write_imagefolder(tmp_path / "shapes", n_train_per_class=3, n_val_per_class=0, size=32, seed=0)
    ds = load_memory(RobustImageFolder(root / "train", None), "cpu")
    assert len(ds) == 3 * len(SHAPES) and ds.images.shape == (24, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes == sorted(SHAPES) and ds.labels.tolist() == [i // 3 for i in range(24)]
    png = np.array(Image.open(root / "train" / sorted(SHAPES)[1] / "0002.png"))
    assert torch.equal(ds.images[5], torch.from_numpy(png).permute(2, 0, 1))   # PNG decoded losslessly
    assert load_memory(RobustImageFolder(root / "train", None, limit_per_class=1), "cpu").images.shape == \
        (8, 3, 32, 32)
    Image.new("RGB", (20, 20)).save(root / "train" / "star" / "9999.png")
    with pytest.raises(DataError, match="9999.png"):
        load_memory(RobustImageFolder(root / "train", None), "cpu")


def test_load_memory_real_cifar(cifar_root):
    ds = load_memory(RobustImageFolder(cifar_root / "train", None, limit_per_class=5), "cpu")
    assert ds.images.shape == (50, 3, 32, 32) and len(ds.classes) == 10
    assert ds.images.float().std() > 20  # real photos, not blank
    out = GPUMoCoV2Augment(32, blur=False, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616))(ds.images)
    assert out.shape == (50, 3, 32, 32) and abs(out.mean().item()) < 0.6
