"""pretrain.fastdata on CPU: the in-memory and streaming GPU batch sources (run here on the CPU device),
rank sharding against DistributedSampler, per-epoch reshuffling, corrupt files, evaluation views of images of
any sizes against the PIL reference, and pretraining / linear evaluation runs on a folder of varied sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from pretrain.augment import CIFAR_MEAN, CIFAR_STD, eval_transform, view_recipes
from pretrain.data import CorruptImageError, DataError, RobustImageFolder
from pretrain.defaults import DataConfig
from pretrain.fastdata import (BatchSource, MemoryBatches, MixedSizesError, StreamBatches, build_gpu_batches, build_gpu_eval_batches,
                               jpeg_components, load_memory, pad_to_batch, rank_indices)
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
    assert isinstance(src, BatchSource) and src.mode == mode
    assert isinstance(src, MemoryBatches if mode == "memory" else StreamBatches)
    assert src.num_images == 120 and len(src) == 120 // 16
    batches = list(src)
    assert len(batches) == len(src)
    (x1, x2), y = batches[0]
    assert y.shape == (16,) and y.dtype == torch.long
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
        for ((a1, a2), ya), ((s1, s2), ys) in zip(auto, stream):
            assert torch.equal(ya, ys)
            assert torch.allclose(a1, s1, atol=1e-5) and torch.allclose(a2, s2, atol=1e-5)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_byols_views_are_made_by_their_own_augmentations(cifar_root, mode):
    """data.augmentation=byol: view 1 comes from BYOL's first recipe, view 2 from its second (solarised with
    p 0.2), in memory and in stream mode (stream pads variable sizes through apply / sample_params); MoCo v2's
    views share one augmentation."""
    byol = dataclasses.replace(cifar_cfg(cifar_root, limit_per_class=4), augmentation="byol")
    src = build_gpu_batches(byol, 8, 0, 1, 0, "cpu", mode=mode, pairs=2)
    first, second = src.spec.augment
    assert (first.recipe, second.recipe) == view_recipes("byol")
    (x1, x2, x3, x4), _ = next(iter(src))
    assert all(x.shape == (8, 3, 32, 32) for x in (x1, x2, x3, x4)) and (x1 - x2).abs().mean() > 0.1
    moco = build_gpu_batches(cifar_cfg(cifar_root, limit_per_class=4), 8, 0, 1, 0, "cpu", mode=mode)
    assert isinstance(moco.spec.augment, GPUMoCoV2Augment) and moco.spec.augment.recipe == view_recipes("moco_v2")[0]


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
    srcs = [build_gpu_batches(cfg, 4, r, world, 0, "cpu", mode="memory") for r in range(world)]
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
    (x1, x2), _ = next(iter(src))
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
    views, y = next(iter(src))
    assert len(views) == 1 and views[0].shape == (5, 3, 16, 16) and y.dtype == torch.long and set(y.tolist()) <= {0, 1}


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
    assert all(x1.shape == (4, 3, 16, 16) for (x1, _), _ in batches)


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
    from pretrain.generated.embedded import SHAPES, write_imagefolder
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


# ------------------------------------------------------------------------------------ images of varied sizes
def photo(h, w, seed):
    """A smooth, textured RGB picture with noise (closer to a photo than pure noise for resize tests)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / (7 + seed % 5) + c) * np.cos(yy / (5 + c)) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def write_varied(folder, n=12, seed=0, extras=True):
    """`n` JPEGs with short side 40..200 and aspect ratios 1:3..3:1, then (extras) a grayscale JPEG, a CMYK
    JPEG, a PNG named .JPEG and a JPEG with an EXIF rotation tag; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        short, ratio = int(rng.integers(40, 201)), float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        h, w = (short, max(short, int(short * ratio))) if ratio >= 1 else (max(short, int(short / ratio)), short)
        paths.append(folder / f"{seed:02d}_{i:03d}.JPEG")
        Image.fromarray(photo(h, w, seed * 100 + i)).save(paths[-1], "JPEG", quality=90)
    if extras:
        extra = [("gray", Image.fromarray(photo(90, 150, seed + 1)[..., 0]), "JPEG"),
                 ("cmyk", Image.fromarray(photo(130, 70, seed + 2)).convert("CMYK"), "JPEG"),
                 ("png", Image.fromarray(photo(64, 64, seed + 3)).convert("P"), "PNG")]
        for name, im, fmt in extra:
            paths.append(folder / f"{seed:02d}_{name}.JPEG")
            im.save(paths[-1], fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        exif = Image.Exif()
        exif[0x0112] = 6                              # "rotate 90 CW": neither path applies it
        paths.append(folder / f"{seed:02d}_exif.JPEG")
        Image.fromarray(photo(60, 110, seed + 4)).save(paths[-1], "JPEG", quality=90, exif=exif.tobytes())
    return paths


def test_jpeg_components_reads_the_frame_header(tmp_path):
    paths = write_varied(tmp_path / "v", n=1)
    comps = {p.name.split("_", 1)[1]: jpeg_components(torch.from_numpy(np.fromfile(p, dtype=np.uint8)))
             for p in paths}
    assert comps == {"000.JPEG": 3, "gray.JPEG": 1, "cmyk.JPEG": 4, "png.JPEG": 0, "exif.JPEG": 3}
    assert Image.open(paths[2]).mode == "CMYK" and Image.open(paths[3]).format == "PNG"


# measured on the 16 images of write_varied (mean / largest per-image mean / max, 0..255 units):
# 64 px whole: 0.14 / 0.19 / 1; 32 px whole: 0.11 / 0.17 / 1; 112 px at 0.875: 0.19 / 0.26 / 1;
# 224 px at 0.875: 0.20 / 0.22 / 1 (PIL rounds to uint8 after each axis, the device view once at the end)
EVAL_TOL = dict(mean=0.35, image_mean=0.5, max=1.5)


@pytest.mark.parametrize("size, crop_fraction", [(64, 1.0), (112, 0.875), (32, 1.0)])
def test_eval_views_of_any_size_match_the_reference(tmp_path, size, crop_fraction):
    paths = write_varied(tmp_path / "val" / "a")
    cfg = DataConfig(root=str(tmp_path), image_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), workers=0)
    loader = build_gpu_eval_batches(tmp_path / "val", cfg, "cpu", batch_size=5, crop_fraction=crop_fraction)
    x = torch.cat([xb for xb, _ in loader]) * 255
    assert x.shape == (len(paths), 3, size, size) and len(loader) == 4
    tf = eval_transform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), crop_fraction=crop_fraction)
    ref = torch.stack([tf(RobustImageFolder.read_image(str(p))) for p in sorted(paths)]) * 255
    diff = (x - ref).abs()
    print(f"eval view {size} px, crop {crop_fraction}: mean {diff.mean():.3f}, per-image mean "
          f"{diff.mean(dim=(1, 2, 3)).max():.3f}, max {diff.max():.2f}")
    assert diff.mean() < EVAL_TOL["mean"] and diff.mean(dim=(1, 2, 3)).max() < EVAL_TOL["image_mean"]
    assert diff.max() <= EVAL_TOL["max"]


def test_eval_view_keeps_an_image_of_the_crop_size_whole(tmp_path):
    folder = tmp_path / "val" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(photo(32, 32, 0)).save(folder / "x.png")
    cfg = DataConfig(root=str(tmp_path), image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), workers=0)
    x = next(iter(build_gpu_eval_batches(tmp_path / "val", cfg, "cpu", crop_fraction=1.0)))[0] * 255
    assert torch.equal(x[0].round().to(torch.uint8), torch.from_numpy(photo(32, 32, 0)).permute(2, 0, 1))


def test_auto_streams_when_sizes_differ_beyond_the_probe(tmp_path):
    root = write_jpegs(tmp_path / "jpg", n_per_class=5, sizes=((32, 32),) * 4 + ((40, 24),))
    cfg = DataConfig(root=str(root), image_size=16, workers=0, val_split="")
    src = build_gpu_batches(cfg, 4, 0, 1, 0, "cpu")          # the probe (3 per class) sees only 32 x 32
    assert src.mode == "stream" and len(list(src)) == 2
    with pytest.raises(MixedSizesError, match="004.jpg"):
        build_gpu_batches(cfg, 4, 0, 1, 0, "cpu", mode="memory")


@pytest.fixture(scope="module")
def varied_root(tmp_path_factory):
    """train/ and val/ of 3 classes, JPEGs of varied sizes and aspect ratios plus the odd formats."""
    root = tmp_path_factory.mktemp("varied")
    for c, name in enumerate(("cat", "dog", "fox")):
        write_varied(root / "train" / name, n=12, seed=c, extras=c == 0)
        write_varied(root / "val" / name, n=4, seed=10 + c, extras=c == 1)
    return root


def test_pretraining_fast_mode_with_knn_on_varied_sizes(varied_root, tmp_path):
    from pretrain import config
    from pretrain.defaults import PretrainConfig
    from pretrain.logs import read_metrics
    from pretrain.train import run

    cfg = config.resolve(PretrainConfig(), ["test_tiny"], [
        f"data.root={varied_root}", "train.gpu_augment=true", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=8", "monitor.knn=true", "monitor.knn_max_train=6", "monitor.knn_max_val=4",
        "monitor.tensorboard=false", "train.save_freq=0"], kind="pretrain")
    result = run(cfg, tmp_path / "run")
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert result["complete"] and rec["steps"] == 2 and 0.0 <= rec["knn_top1"] <= 100.0


def test_linear_fast_mode_on_varied_sizes(varied_root, tmp_path):
    from pretrain import config
    from transfer.evaluation import linear
    from transfer.evaluation.linear import LinearConfig

    cfg = config.resolve(LinearConfig(), ["cifar10"], [
        "model.arch=resnet18_cifar", f"data.root={varied_root}", "data.val_split=val", "data.workers=0",
        "data.crop_fraction=0.875", "train.gpu_augment=true", "train.epochs=1", "train.batch_size=8",
        "train.eval_batch_size=8", "train.tensorboard=false", "train.print_freq=0"], kind="linear")
    result = linear.run(dataclasses.replace(cfg, weights="random"), tmp_path / "lin")
    assert result["complete"] and result["metrics"]["val_images"] == 3 * 4 + 4
