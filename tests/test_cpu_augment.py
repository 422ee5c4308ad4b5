"""pretrain.cpu_augment: the fast CPU views against the PIL reference (pretrain.augment) on real images.

Parameters: the fast views make torchvision's very draws (same calls, same order, same generator), checked by
the generator's state after each image and by the pixels of whole seeded views. Pixels: differences to PIL in
0..255 units, op by op, on COCO photos and CIFAR-10 images from ../shared/data. Brightness, contrast,
saturation, grayscale and JPEG decoding compute what PIL computes (integer or float32 arithmetic in the same
order): equal. Hue, blur and crop + resize round differently (OpenCV's HSV, one rounding for the three
boxes, a Gaussian + bilinear for PIL's antialiased triangle filter); their tolerances stand well above what
was measured (each test says both). Every figure is integer or float32 arithmetic that gives the same result
on every x86 CPU."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from pretrain import config
from pretrain import cpu_augment as ca
from pretrain import data as data_mod
from pretrain.augment import TwoCropsTransform, moco_v2_transform, view_recipes
from pretrain.defaults import PretrainConfig


@pytest.fixture(scope="module")
def coco(coco_tiny_root) -> list[Path]:
    return sorted((coco_tiny_root / "train2017").glob("*.jpg"))[:10]


@pytest.fixture(scope="module")
def cifar(cifar_root) -> list[Path]:
    return sorted((cifar_root / "train").glob("*/*.jpg"))[::1000][:40]


def rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def diff(a: np.ndarray, b) -> np.ndarray:
    return np.abs(np.asarray(a).astype(np.int32) - np.asarray(b).astype(np.int32))


def reference_views(img: Image.Image, size: int, blur: bool, pairs: int, seed: int,
                    augmentation: str = "moco_v2") -> list[torch.Tensor]:
    """The reference pipeline's views in 0..255 (ToTensor's /255 undone), seeded."""
    torch.manual_seed(seed)
    first, second = (moco_v2_transform(size, blur=blur, mean=(0, 0, 0), std=(1, 1, 1), recipe=r)
                     for r in view_recipes(augmentation))
    return [v * 255 for v in TwoCropsTransform(first, second, pairs=pairs)(img)]


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize("shape", [(120, 160), (32, 32), (10, 200), (300, 120)])
@pytest.mark.parametrize("blur,pairs,augmentation", [(True, 1, "moco_v2"), (False, 2, "moco_v2"),
                                                     (True, 1, "byol"), (True, 2, "byol"), (True, 1, "simclr")])
def test_same_draws_as_torchvision(shape, blur, pairs, augmentation):
    """After the views of an image the generator is exactly where the reference leaves it (same number and
    kind of draws; (10, 200) is the elongated image where every crop try fails and the fallback runs)."""
    h, w = shape
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    for seed in range(8):
        reference_views(img, 16, blur, pairs, seed, augmentation)
        after_ref = torch.get_rng_state()
        torch.manual_seed(seed)
        views = ca.FastTwoCrops(16, blur=blur, pairs=pairs, recipes=view_recipes(augmentation))(np.asarray(img))
        assert torch.equal(torch.get_rng_state(), after_ref), seed
        assert len(views) == 2 * pairs and all(v.shape == (3, 16, 16) and v.dtype == torch.uint8 for v in views)


def test_probabilities_and_ranges():
    torch.manual_seed(0)
    views = [ca.sample_view(480, 640, 0.2, True) for _ in range(2500)]
    n = len(views)

    def rate_ok(k: int, p: float) -> bool:
        return abs(k / n - p) < 4.5 * math.sqrt(p * (1 - p) / n)

    jit = [v.jitter for v in views if v.jitter is not None]
    assert rate_ok(len(jit), 0.8) and rate_ok(sum(v.gray for v in views), 0.2)
    assert rate_ok(sum(v.sigma is not None for v in views), 0.5) and rate_ok(sum(v.flip for v in views), 0.5)
    factors = np.array([j[1:] for j in jit])
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4
    assert factors[:, 3].min() >= -0.1 and factors[:, 3].max() <= 0.1
    assert all(sorted(j[0]) == [0, 1, 2, 3] for j in jit)
    sig = [v.sigma for v in views if v.sigma is not None]
    assert 0.1 <= min(sig) and max(sig) <= 2.0
    assert all(0 <= v.crop[0] and v.crop[0] + v.crop[2] <= 480 and v.crop[1] + v.crop[3] <= 640 for v in views)


def test_byol_views_probabilities_and_ranges():
    """BYOL's first view is always blurred and never solarised, its second blurred with p 0.1 and solarised
    with p 0.2; both jitter saturation within 0.8-1.2 (strength 0.2) with p 0.8 (BYOL Table 6)."""
    torch.manual_seed(0)
    first, second = view_recipes("byol")
    n = 2500
    views = [(ca.sample_view(480, 640, 0.08, True, first), ca.sample_view(480, 640, 0.08, True, second))
             for _ in range(n)]

    def rate_ok(k: int, p: float) -> bool:
        return abs(k / n - p) < 4.5 * math.sqrt(p * (1 - p) / n)

    one, two = zip(*views)
    assert all(v.sigma is not None and not v.solarize for v in one)
    assert rate_ok(sum(v.sigma is not None for v in two), 0.1) and rate_ok(sum(v.solarize for v in two), 0.2)
    for side in (one, two):
        jit = [v.jitter for v in side if v.jitter is not None]
        assert rate_ok(len(jit), 0.8) and rate_ok(sum(v.gray for v in side), 0.2)
        sat = np.array([j[3] for j in jit])
        assert 0.8 <= sat.min() < 0.82 and 1.18 < sat.max() <= 1.2


def test_solarize_equals_pil(coco, cifar):
    """Solarisation (threshold 128) is PIL's table: equal, and a view with it equals the view without it
    solarised."""
    for p in coco[:3] + cifar[:5]:
        img = rgb(p)
        plain = ca.ViewParams((0, 0, img.height, img.width), None, False, None, False)
        solar = ca.ViewParams((0, 0, img.height, img.width), None, False, None, False, True)
        out = ca.apply_view(np.asarray(img), solar, 32)
        assert diff(out, TF.solarize(Image.fromarray(ca.apply_view(np.asarray(img), plain, 32)), 128)).max() == 0


def test_decode_scale_keeps_every_crop_at_full_resolution():
    def view(h, w):
        return ca.ViewParams((0, 0, h, w), None, False, None, False)
    assert ca.decode_scale([view(460, 500), view(900, 900)], 224, True) == 2
    assert ca.decode_scale([view(447, 600)], 224, True) == 1
    assert ca.decode_scale([view(2000, 2000)], 224, True) == 8
    assert ca.decode_scale([view(2000, 2000)], 224, False) == 1          # PNG & co: no scaled decoding


# ------------------------------------------------------------------------------------------ pixels, exact
def test_decode_equals_pil(coco, cifar, tmp_path):
    for p in coco[:5] + cifar[:10]:
        assert diff(ca.decode(ca.read_encoded(str(p))), rgb(p)).max() == 0, p
    photo = rgb(coco[0])
    for mode in ("L", "CMYK"):                      # grayscale via OpenCV, CMYK via PIL's own conversion
        path = tmp_path / f"{mode}.jpg"
        photo.convert(mode).save(path, "JPEG", quality=90)
        assert diff(ca.decode(ca.read_encoded(str(path))), rgb(path)).max() == 0, mode


@pytest.mark.parametrize("op,ref,lo,hi", [
    (ca.adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
    (ca.adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
    (ca.adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
])
def test_brightness_contrast_saturation_equal_pil(coco, cifar, op, ref, lo, hi):
    rng = np.random.default_rng(1)
    for p in coco[:4] + cifar[:20]:
        img = rgb(p)
        for f in (lo, hi, *rng.uniform(lo, hi, 2)):
            assert diff(op(np.asarray(img), float(f)), ref(img, float(f))).max() == 0, (p, f)


def test_grayscale_and_flip_equal_pil(coco, cifar):
    for p in coco[:4] + cifar[:10]:
        img = rgb(p)
        assert diff(ca.to_grayscale(np.asarray(img)), TF.to_grayscale(img, 3)).max() == 0
    arr = np.asarray(rgb(coco[0]))
    plain = ca.ViewParams((10, 20, 300, 400), None, False, None, False)
    flipped = ca.ViewParams((10, 20, 300, 400), None, False, None, True)
    assert np.array_equal(ca.apply_view(arr, flipped, 64), ca.apply_view(arr, plain, 64)[:, ::-1])


# ------------------------------------------------------------------------------------------ pixels, rounding
def stats(diffs: list[np.ndarray]) -> tuple[float, float, float]:
    """(mean over all pixels, worst image's mean, 99.9th percentile)."""
    flat = np.concatenate([d.ravel() for d in diffs])
    return float(flat.mean()), max(float(d.mean()) for d in diffs), float(np.percentile(flat, 99.9))


def test_hue_within_rounding_of_pil(coco, cifar):
    """Measured: COCO (224 px) mean 0.29, worst image 0.48, p99.9 5; CIFAR mean 0.25, worst 0.85, p99.9 4.
    PIL truncates h, s (and v) to bytes, OpenCV rounds them."""
    for paths, size in ((coco, 224), (cifar, 32)):
        g = torch.Generator().manual_seed(0)
        ds = []
        for p in paths[:10]:
            img = rgb(p).resize((size, size))
            for f in (torch.rand(2, generator=g) * 0.2 - 0.1).tolist():
                ds.append(diff(ca.adjust_hue(np.asarray(img), f), TF.adjust_hue(img, f)))
        mean, worst, p999 = stats(ds)
        assert mean < 0.6 and worst < 1.6 and p999 <= 10, (size, mean, worst, p999)


def test_blur_within_rounding_of_pil(coco, cifar):
    """Measured: COCO (224 px) mean 0.30, worst image 0.60, p99.9 3; CIFAR (32 px) mean 0.47, worst 1.48,
    p99.9 12. PIL rounds to bytes after each of its six box passes, this once."""
    for paths, size in ((coco, 224), (cifar, 32)):
        g = torch.Generator().manual_seed(0)
        ds = []
        for p in paths[:10]:
            img = rgb(p).resize((size, size))
            for s in (torch.rand(2, generator=g) * 1.9 + 0.1).tolist():
                ds.append(diff(ca.gaussian_blur(np.asarray(img), s), img.filter(ImageFilter.GaussianBlur(s))))
        mean, worst, p999 = stats(ds)
        assert mean < 1.0 and worst < 3.0 and p999 <= 24, (size, mean, worst, p999)


def test_crop_resize_within_rounding_of_pil(coco, cifar):
    """Measured: COCO to 224 px mean 1.05, worst image 2.14, p99.9 13; to 32 px mean 1.73, worst 2.47, p99.9 14;
    CIFAR to 32 px (mostly enlarging) mean 0.21, worst 0.32, p99.9 1."""
    for paths, size, bounds in ((coco, 224, (2.0, 4.0, 26)), (coco, 32, (3.0, 5.0, 28)), (cifar, 32, (0.5, 1.0, 4))):
        ds = []
        for k, p in enumerate(paths[:10]):
            img = rgb(p)
            torch.manual_seed(k)
            for _ in range(2):
                i, j, h, w = ca.sample_view(img.height, img.width, 0.2, True).crop
                ds.append(diff(ca.crop_resize(np.asarray(img), (i, j, h, w), size),
                               TF.resized_crop(img, i, j, h, w, [size, size])))
        mean, worst, p999 = stats(ds)
        assert mean < bounds[0] and worst < bounds[1] and p999 <= bounds[2], (size, mean, worst, p999)


@pytest.mark.parametrize("size,blur,bounds,augmentation", [
    (224, True, (2.0, 4.0, 26), "moco_v2"), (64, True, (3.0, 7.0, 36), "moco_v2"), (32, False, (1.0, 2.3, 12), "moco_v2"),
    (64, True, (3.0, 7.0, 36), "byol"), (64, True, (3.0, 7.0, 36), "simclr")])
def test_whole_views_match_the_reference(coco, cifar, size, blur, bounds, augmentation):
    """The seeded views of the two pipelines, each op in its turn (and scaled decoding where the crops allow it:
    most COCO views at 64 px). Measured: 224 px mean 0.99, worst view 2.0, p99.9 13; 64 px mean 1.43, worst
    3.4, p99.9 18; CIFAR at 32 px mean 0.48, worst 1.14, p99.9 6; BYOL's views at 64 px (10 images, two of
    the second views solarised) mean 1.41, worst 3.3, p99.9 17; SimCLR's (hue up to 0.2) mean 1.83, worst 4.0,
    p99.9 26 (AMD EPYC, 2026-12-04)."""
    paths = cifar[:20] if size == 32 else coco[:10] if augmentation == "byol" else coco[:6]
    ds = []
    for k, p in enumerate(paths):
        ref = reference_views(rgb(p), size, blur, 1, k, augmentation)
        torch.manual_seed(k)
        fast = ca.FastTwoCrops(size, blur=blur, recipes=view_recipes(augmentation))(ca.read_encoded(str(p)))
        ds += [np.abs(f.numpy().astype(np.float64) - r.numpy().astype(np.float64)) for f, r in zip(fast, ref)]
    mean, worst, p999 = stats(ds)
    assert mean < bounds[0] and worst < bounds[1] and p999 <= bounds[2], (size, mean, worst, p999)


# ------------------------------------------------------------------------------------------ the loader
def cfg_for(root, *overrides):
    """A pretraining config with the fast views (overrides come after and may change that)."""
    return config.resolve(PretrainConfig(), [], [f"data.root={root}", "data.pipeline=fast", "data.workers=0",
                                                 "data.image_size=32", "data.blur=false", "train.batch_size=8", *overrides],
                          kind="pretrain")


def test_loader_yields_uint8_views_that_normalise_like_the_reference(cifar_root):
    cfg = cfg_for(cifar_root, "data.limit_per_class=2")
    assert cfg.data.pipeline == "fast" and PretrainConfig().data.pipeline == "fast"
    loader = data_mod.build_pretrain_loader(cfg, cifar_root / "train", pairs=2)
    views, _ = next(iter(loader))
    assert len(views) == 4 and all(v.dtype == torch.uint8 and v.shape == (8, 3, 32, 32) for v in views)
    out = ca.device_views(views, torch.device("cpu"), torch.contiguous_format, cfg.data.mean, cfg.data.std)
    ref = TF.normalize(views[0].float() / 255, list(cfg.data.mean), list(cfg.data.std))
    assert torch.allclose(out[0], ref, atol=1e-6)
    floats = [torch.zeros(2, 3, 4, 4)]
    assert ca.device_views(floats, torch.device("cpu"), torch.contiguous_format, (0.5,) * 3, (1.0,) * 3)[0] is floats[0]
    ref_cfg = cfg_for(cifar_root, "data.limit_per_class=2", "data.pipeline=reference")
    (r1, _), _ = next(iter(data_mod.build_pretrain_loader(ref_cfg, cifar_root / "train")))
    assert r1.dtype == torch.float32
    with pytest.raises(data_mod.DataError, match="data.pipeline: 'pil' is not one of fast, reference"):
        data_mod.build_pretrain_loader(cfg_for(cifar_root, "data.pipeline=pil"), cifar_root / "train")


def test_views_do_not_depend_on_loader_workers(cifar_root):
    """Seeded per image, as the reference loader: two worker processes give the batches of none."""
    cfg = cfg_for(cifar_root, "data.limit_per_class=2")
    first = data_mod.build_pretrain_loader(cfg, cifar_root / "train")
    other = data_mod.build_pretrain_loader(cfg_for(cifar_root, "data.limit_per_class=2", "data.workers=2"),
                                           cifar_root / "train")
    for loader in (first, other):
        loader.set_epoch(1)
    a = [x for (x, _), _ in first]
    b = [x for (x, _), _ in other]
    assert len(a) == len(b) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_unreadable_images_are_named(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:200])
    (folder / "text.jpg").write_bytes(b"not an image")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(folder / "fine.png")
    ds = ca.EncodedImageFolder(tmp_path, ca.FastTwoCrops(16, blur=False))
    names = {Path(p).name: i for i, (p, _) in enumerate(ds.samples)}
    for bad in ("cut.jpg", "text.jpg"):
        with pytest.raises(data_mod.CorruptImageError, match=f"cannot read image .*{bad}"):
            ds[names[bad]]
    views, _ = ds[names["fine.png"]]
    assert views[0].shape == (3, 16, 16) and int(views[0][0].max()) <= 1
