"""pretrain.data: dataset roots, unreadable images named by path, per-rank batches and shuffling."""
import dataclasses
import shutil
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from pretrain import config
from pretrain.data import (CorruptImageError, DataError, RobustImageFolder, build_knn_loaders,
                           build_pretrain_loader, resolve_roots)
from pretrain.defaults import PretrainConfig


def cfg_for(root, *overrides):
    return config.resolve(PretrainConfig(), overrides=[f"data.root={root}", "data.workers=0", "data.image_size=32",
                                                       "train.batch_size=8", *overrides])


def test_roots_embedded_cifar_and_plain_folder(cifar_root, tmp_path):
    train, val = resolve_roots(cfg_for("embedded").data)  # the embedded data, by name
    assert train.name == "train" and val.name == "val" and len(RobustImageFolder(train).classes) >= 4
    train, held = resolve_roots(cfg_for(cifar_root).data)  # val/ absent: test/ is the held-out split
    assert (train, held) == (cifar_root / "train", cifar_root / "test")
    train, held = resolve_roots(cfg_for(cifar_root / "train").data)  # an ImageFolder itself
    assert train == cifar_root / "train" and held is None
    train, held = resolve_roots(cfg_for(cifar_root, "data.val_split=").data)
    assert held is None
    with pytest.raises(DataError, match=f"'{tmp_path / 'nope'}' does not exist"):
        resolve_roots(cfg_for(tmp_path / "nope").data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        resolve_roots(cfg_for(tmp_path / "empty").data)


@pytest.fixture()
def folder_with_bad_files(cifar_root, tmp_path):
    root = tmp_path / "imgs"
    for cls in ("airplane", "cat"):
        (root / cls).mkdir(parents=True)
        for src in sorted((cifar_root / "train" / cls).iterdir())[:4]:
            shutil.copy(src, root / cls / src.name)
    bad = root / "cat" / "0000_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    good = sorted((root / "airplane").iterdir())[0]
    truncated = root / "airplane" / "zz_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    return root, bad, truncated


def test_corrupt_image_error_names_the_file(folder_with_bad_files):
    root, bad, truncated = folder_with_bad_files
    ds = RobustImageFolder(root)
    idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(CorruptImageError, match=f"cannot read image {bad}"):
        ds[idx]
    idx_t = [p for p, _ in ds.samples].index(str(truncated))
    with pytest.raises(CorruptImageError, match="zz_truncated.jpg"):
        ds[idx_t]
    # through a worker process: the same one-line message, not a worker traceback
    loader = DataLoader(RobustImageFolder(root, transform=lambda im: torch.zeros(1)), batch_size=20, num_workers=1)
    with pytest.raises(CorruptImageError) as e:
        next(iter(loader))
    assert str(e.value).startswith("cannot read image ") and "Traceback" not in str(e.value)
    assert str(bad) in str(e.value) or str(truncated) in str(e.value)


def test_skip_mode_warns_and_substitutes(folder_with_bad_files):
    root, bad, truncated = folder_with_bad_files
    ds = RobustImageFolder(root, transform=lambda im: im.size, on_corrupt="skip")
    idx = [p for p, _ in ds.samples].index(str(bad))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        size, target = ds[idx]
        ds[idx]  # warned once per file
    assert size == (32, 32)
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1 and str(bad) in msgs[0]
    sizes = [ds[i][0] for i in range(len(ds))]
    assert sizes == [(32, 32)] * 10
    with pytest.raises(ValueError, match="data.on_corrupt: 'ignore'"):
        RobustImageFolder(root, on_corrupt="ignore")


def test_limit_per_class(cifar_root):
    ds = RobustImageFolder(cifar_root / "test", limit_per_class=3)
    assert len(ds) == 30 and sorted(ds.targets) == sorted(list(range(10)) * 3)


def test_global_batch_split_over_ranks_and_epoch_shuffle(cifar_root):
    cfg = cfg_for(cifar_root, "data.limit_per_class=8", "train.batch_size=16")
    shards = []
    for rank in (0, 1):
        loader = build_pretrain_loader(cfg, cifar_root / "train", rank=rank, world_size=2)
        assert loader.loader.batch_size == 8 and len(loader) == 5  # 80 images / 2 ranks / 8
        shards.append(list(iter(loader.sampler)))
        (x1, x2), y = next(iter(loader))
        assert x1.shape == x2.shape == (8, 3, 32, 32) and not torch.equal(x1, x2)  # two different views
    assert not set(shards[0]) & set(shards[1]) and len(shards[0] + shards[1]) == 80
    loader = build_pretrain_loader(cfg, cifar_root / "train", rank=0, world_size=2)
    loader.set_epoch(1)
    e1 = list(iter(loader.sampler))
    loader.set_epoch(1)
    assert list(iter(loader.sampler)) == e1 != shards[0]
    with pytest.raises(DataError, match="batch_size=15 is not divisible by the 2 processes"):
        build_pretrain_loader(cfg_for(cifar_root, "train.batch_size=15"), cifar_root / "train", 0, 2)
    with pytest.raises(DataError, match="fewer than the per-process batch"):
        build_pretrain_loader(cfg_for(cifar_root, "data.limit_per_class=1", "train.batch_size=64"),
                              cifar_root / "train")


def test_knn_loaders_shard_without_overlap(cifar_root):
    cfg = cfg_for(cifar_root, "data.limit_per_class=3", "monitor.knn_max_val=2")
    sizes = []
    for rank in (0, 1):
        bank, test, n_cls = build_knn_loaders(cfg, cifar_root / "train", cifar_root / "test", rank, 2)
        sizes.append((len(bank.dataset), len(test.dataset)))
        x, _ = next(iter(test))
        assert x.shape[1:] == (3, 32, 32) and n_cls == 10
    assert sizes == [(15, 10), (15, 10)]


def test_knn_bank_is_capped_by_default_and_never_exceeds_training():
    from pretrain.data import knn_bank_limit
    cfg = PretrainConfig()
    assert (cfg.monitor.knn_max_train, cfg.monitor.knn_max_val) == (100, 10)   # ImageNet: 100k bank, 10k queries
    assert knn_bank_limit(cfg) == 100
    assert knn_bank_limit(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, limit_per_class=3))) == 3
    none = dataclasses.replace(cfg, monitor=dataclasses.replace(cfg.monitor, knn_max_train=0))
    assert knn_bank_limit(none) == 0
    cifar = config.resolve(PretrainConfig(), ["cifar10_r18"], kind="pretrain")
    assert (cifar.monitor.knn_max_train, cifar.monitor.knn_max_val) == (0, 0)  # the paper's CIFAR monitor: all


def test_views_follow_data_augmentation(cifar_root):
    """data.augmentation=byol gives both CPU pipelines BYOL's two views (the second alone solarises; the first
    always blurs); moco_v2 gives one view twice; an unknown name is refused by check_views (one line naming the
    key)."""
    from pretrain.augment import view_recipes
    from pretrain.config import ConfigError
    from pretrain.data import check_views
    byol = cfg_for(cifar_root, "data.augmentation=byol", "data.limit_per_class=2")
    check_views(byol)
    first, second = view_recipes("byol")
    assert (first.p_blur, first.p_solarize, second.p_blur, second.p_solarize) == (1.0, 0.0, 0.1, 0.2)
    fast = build_pretrain_loader(byol, cifar_root / "train").dataset.transform
    assert fast.recipes == (first, second)
    ref = build_pretrain_loader(dataclasses.replace(byol, data=dataclasses.replace(byol.data, pipeline="reference")),
                                cifar_root / "train").dataset.transform
    names = [[type(t).__name__ for t in view.transforms] for view in (ref.base, ref.second)]
    assert "RandomSolarize" not in names[0] and "RandomSolarize" in names[1]
    moco = build_pretrain_loader(cfg_for(cifar_root, "data.limit_per_class=2", "data.pipeline=reference"),
                                 cifar_root / "train").dataset.transform
    assert moco.second is moco.base
    with pytest.raises(ConfigError, match="data.augmentation: 'swav' is not one of moco_v2, byol, simclr"):
        check_views(cfg_for(cifar_root, "data.augmentation=swav"))
    check_views(cfg_for(cifar_root, "data.augmentation=byol", "train.gpu_augment=true"))  # the device makes them too
