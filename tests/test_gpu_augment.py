"""pretrain.gpu_augment on CPU tensors: parameter distributions against torchvision, op semantics against
torchvision.transforms.functional, decoding, and the on-device dataset."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from pretrain.gpu_augment import (AugmentParams, DeviceImageDataset, GPUMoCoV2Augment, adjust_brightness,
                                  adjust_contrast, adjust_hue, adjust_saturation, blur_kernel_size, crop_resize,
                                  decode_jpeg_batch, gaussian_blur, sample_crop_boxes)

N = 4000


def binomial_ok(mask: torch.Tensor, p: float, z: float = 4.5) -> bool:
    n = mask.numel()
    return abs(mask.float().mean().item() - p) < z * math.sqrt(p * (1 - p) / n)


def torchvision_boxes(h: int, w: int, scale, n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    img = torch.empty(3, h, w)
    rows = []
    for _ in range(n):
        i, j, hh, ww = T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
        rows.append([j, i, j + ww, i + hh])
    return torch.tensor(rows, dtype=torch.float32)


def box_stats(boxes: torch.Tensor, h: int, w: int):
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = bw * bh / (h * w)
    return area, torch.log(bw / bh), (boxes[:, 0] + boxes[:, 2]) / 2 / w


def test_crop_boxes_bounds_and_distribution_match_torchvision():
    h, w = 60, 80
    g = torch.Generator().manual_seed(0)
    ours = sample_crop_boxes(torch.tensor([[h, w]] * N), (0.2, 1.0), (3 / 4, 4 / 3), g)
    assert ours.shape == (N, 4) and torch.equal(ours, ours.round())
    assert (ours[:, 0] >= 0).all() and (ours[:, 1] >= 0).all() and (ours[:, 2] <= w).all() and (ours[:, 3] <= h).all()
    assert (ours[:, 2] > ours[:, 0]).all() and (ours[:, 3] > ours[:, 1]).all()
    area, log_ratio, cx = box_stats(ours, h, w)
    bw, bh = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    slack = (bw + bh + 1) / (h * w) / 2          # width and height are rounded to integers
    assert (area >= 0.2 - slack).all() and (area <= 1).all()
    assert (log_ratio.abs() <= math.log(4 / 3) + 1 / bh.clamp(min=1)).all()
    ref_area, ref_ratio, ref_cx = box_stats(torchvision_boxes(h, w, (0.2, 1.0), N), h, w)
    for a, b in ((area, ref_area), (log_ratio, ref_ratio), (cx, ref_cx)):
        assert abs(a.mean() - b.mean()) < 0.02
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            assert abs(torch.quantile(a, q) - torch.quantile(b, q)) < 0.03, q
    # large tries often do not fit (aspect ratio), so both favour smaller crops than U[0.2, 1] would
    assert area.mean() < 0.55 and ref_area.mean() < 0.55


def test_crop_fallback_matches_torchvision():
    # a very elongated image: no try can fit, torchvision returns the centred crop at ratio 4/3
    g = torch.Generator().manual_seed(1)
    ours = sample_crop_boxes(torch.tensor([[10, 200]] * 50), (0.2, 1.0), (3 / 4, 4 / 3), g)
    ref = torchvision_boxes(10, 200, (0.2, 1.0), 50)
    assert torch.equal(ours, ref)
    assert ours[0].tolist() == [93.0, 0.0, 106.0, 10.0]
    tall = sample_crop_boxes(torch.tensor([[200, 10]] * 5), (0.2, 1.0), (3 / 4, 4 / 3), g)
    assert torch.equal(tall, torchvision_boxes(200, 10, (0.2, 1.0), 5))
    # a moderately elongated image: some rows fall back; the rate matches torchvision's
    h, w = 24, 64
    ours = sample_crop_boxes(torch.tensor([[h, w]] * N), (0.2, 1.0), (3 / 4, 4 / 3), g)
    ref = torchvision_boxes(h, w, (0.2, 1.0), N, seed=3)
    fb = torch.tensor([16.0, 0.0, 48.0, 24.0])   # w = round(24 * 4/3) = 32, centred
    ours_rate = (ours == fb).all(1).float().mean()
    ref_rate = (ref == fb).all(1).float().mean()
    assert ref_rate > 0.005
    assert abs(ours_rate - ref_rate) < 4.5 * math.sqrt(ref_rate * (1 - ref_rate) / N) + 0.005


def test_sample_params_probabilities_and_ranges():
    aug = GPUMoCoV2Augment(64)
    p = aug.sample_params(N, torch.Generator().manual_seed(0), sizes=(80, 96))
    assert len(p) == N
    assert binomial_ok(p.jitter, 0.8) and binomial_ok(p.gray, 0.2) and binomial_ok(p.blur, 0.5)
    assert binomial_ok(p.flip, 0.5)
    assert p.factors[:, :3].min() >= 0.6 and p.factors[:, :3].max() <= 1.4
    assert p.factors[:, 3].min() >= -0.1 and p.factors[:, 3].max() <= 0.1
    assert torch.allclose(p.factors.mean(0), torch.tensor([1.0, 1.0, 1.0, 0.0]), atol=0.02)
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0 and abs(p.sigma.mean() - 1.05) < 0.03
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(N, 4))
    for op in range(4):  # each op comes first a quarter of the time
        assert binomial_ok(p.order[:, 0] == op, 0.25)
    assert (p.boxes[:, 2] <= 96).all() and (p.boxes[:, 3] <= 80).all()
    # blur disabled: never blurred; same generator seed: same parameters
    q = GPUMoCoV2Augment(32, blur=False).sample_params(N, torch.Generator().manual_seed(0))
    assert not q.blur.any()
    r = aug.sample_params(10, torch.Generator().manual_seed(5))
    s = aug.sample_params(10, torch.Generator().manual_seed(5))
    assert all(torch.equal(getattr(r, k), getattr(s, k)) for k in ("boxes", "factors", "order", "sigma", "flip"))
    with pytest.raises(ValueError, match="sizes"):
        aug.sample_params(3, sizes=[(10, 10)] * 2)


def colourful(n=4, h=20, w=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[0, :, :4] = 0.5                                 # grey pixels (zero chroma)
    x[0, :, 4:6] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    x[0, :, 6:8] = torch.tensor([0.2, 0.9, 0.9]).view(3, 1, 1)  # ties in the max channel
    x[1, :, :2] = 0.0
    x[1, :, 2:4] = 1.0
    return x


@pytest.mark.parametrize("op,ref,values", [
    (adjust_brightness, TF.adjust_brightness, (0.6, 1.0, 1.37)),
    (adjust_contrast, TF.adjust_contrast, (0.6, 0.93, 1.4)),
    (adjust_saturation, TF.adjust_saturation, (0.6, 1.21, 1.4)),
    (adjust_hue, TF.adjust_hue, (-0.1, -0.03, 0.0, 0.07, 0.1, 0.5)),
])
def test_colour_ops_match_torchvision(op, ref, values):
    x = colourful()
    for v in values:
        ours = op(x.clone(), torch.full((x.shape[0],), v))
        theirs = torch.stack([ref(xi, v) for xi in x])
        assert (ours - theirs).abs().max() < 2e-6, v
    # per-sample factors
    f = torch.tensor(values[:x.shape[0]] + values[:1] * (x.shape[0] - len(values[:x.shape[0]])))
    ours = op(x.clone(), f)
    theirs = torch.stack([ref(xi, float(fi)) for xi, fi in zip(x, f)])
    assert (ours - theirs).abs().max() < 2e-6


def identity_params(n: int, size: int, **kw) -> AugmentParams:
    p = AugmentParams(boxes=torch.tensor([[0.0, 0.0, size, size]]).repeat(n, 1),
                      jitter=torch.zeros(n, dtype=torch.bool), factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(n, 1),
                      order=torch.arange(4).repeat(n, 1), gray=torch.zeros(n, dtype=torch.bool),
                      blur=torch.zeros(n, dtype=torch.bool), sigma=torch.ones(n), flip=torch.zeros(n, dtype=torch.bool))
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_apply_equals_torchvision_chain():
    size = 24
    x = colourful(6, size, size, seed=2)
    aug = GPUMoCoV2Augment(size, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    p = identity_params(6, size,
                        jitter=torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool),
                        factors=torch.tensor([[1.3, 0.7, 1.2, 0.05], [0.8, 1.4, 0.6, -0.08], [1.1, 1.1, 0.9, 0.1],
                                              [1.4, 1.4, 1.4, 0.1], [0.6, 0.6, 1.4, -0.1], [1.0, 1.2, 0.7, 0.02]]),
                        order=torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [0, 1, 2, 3], [2, 0, 3, 1],
                                            [3, 0, 2, 1]]),
                        gray=torch.tensor([0, 1, 0, 0, 0, 1], dtype=torch.bool),
                        blur=torch.tensor([1, 0, 0, 1, 1, 1], dtype=torch.bool),
                        sigma=torch.tensor([0.3, 1.0, 2.0, 1.7, 0.9, 0.1]),
                        flip=torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool))
    ours = aug.apply(x, p)
    k = blur_kernel_size(size)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(6):
        y = x[i]
        if p.flip[i]:
            y = TF.hflip(y)
        if p.jitter[i]:
            for op in p.order[i].tolist():
                y = fns[op](y, float(p.factors[i, op]))
        if p.gray[i]:
            y = TF.rgb_to_grayscale(y, num_output_channels=3)
        if p.blur[i]:
            y = TF.gaussian_blur(y, [k, k], [float(p.sigma[i])] * 2)
        y = TF.normalize(y, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
        assert (ours[i] - y).abs().max() < 2e-5, i
    # uint8 input gives the same as float input of the same pixels
    x8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(aug.apply(x8, p), aug.apply(x8.float() / 255, p), atol=1e-6)


def test_grayscale_flip_and_normalisation():
    size = 16
    x = colourful(3, size, size)
    aug = GPUMoCoV2Augment(size, mean=(0, 0, 0), std=(1, 1, 1))
    gray = aug.apply(x, identity_params(3, size, gray=torch.tensor([1, 0, 1], dtype=torch.bool)))
    assert torch.equal(gray[0, 0], gray[0, 1]) and torch.equal(gray[0, 1], gray[0, 2])
    assert torch.equal(gray[2, 0], gray[2, 2]) and torch.equal(gray[1], x[1])   # untouched row unchanged
    assert torch.allclose(gray[0, 0], 0.2989 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2], atol=1e-6)
    flip = aug.apply(x, identity_params(3, size, flip=torch.tensor([1, 1, 0], dtype=torch.bool)))
    assert torch.equal(flip[:2], x[:2].flip(-1)) and torch.equal(flip[2], x[2])
    norm = GPUMoCoV2Augment(size).apply(x, identity_params(3, size))
    expect = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(norm, expect, atol=1e-6)


def test_blur_of_a_delta_has_sigma_spread():
    size = 224
    assert blur_kernel_size(224) == 23 and blur_kernel_size(64) == 7 and blur_kernel_size(32) == 3
    delta = torch.zeros(3, 3, size, size)
    delta[:, :, 112, 100] = 1.0
    sigmas = torch.tensor([0.5, 1.0, 2.0])
    offsets = torch.arange(-11, 12, dtype=torch.float32)
    aug = GPUMoCoV2Augment(size, mean=(0, 0, 0), std=(1, 1, 1))
    out = aug.apply(delta, identity_params(3, size, blur=torch.ones(3, dtype=torch.bool), sigma=sigmas))
    t = torch.arange(size, dtype=torch.float32)
    for i, s in enumerate(sigmas.tolist()):
        img = out[i, 0]
        assert img.sum().item() == pytest.approx(1.0, abs=1e-5)
        px, py = img.sum(0), img.sum(1)
        assert (px * t).sum().item() == pytest.approx(100.0, abs=1e-4)
        # the variance of the sampled 23-tap kernel: s^2 for s >= 1, a little less for narrow kernels
        pdf = torch.exp(-0.5 * (offsets / s) ** 2)
        discrete = ((pdf / pdf.sum()) * offsets ** 2).sum().item()
        assert discrete == pytest.approx(s * s, rel=0.02) if s >= 1 else 0.8 * s * s < discrete < s * s
        assert (px * (t - 100) ** 2).sum().item() == pytest.approx(discrete, rel=1e-4)
        assert (py * (t - 112) ** 2).sum().item() == pytest.approx(discrete, rel=1e-4)
        assert (img > 1e-12).sum(0).max() <= 23  # support within the kernel
    # per-sample sigmas, equal to torchvision's blur
    x = colourful(3, 32, 32)
    ours = gaussian_blur(x, torch.tensor([0.1, 0.8, 2.0]), 7)
    theirs = torch.stack([TF.gaussian_blur(xi, [7, 7], [s, s]) for xi, s in zip(x, (0.1, 0.8, 2.0))])
    assert (ours - theirs).abs().max() < 1e-6


def test_crop_resize_matches_torchvision_inside_the_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 50, generator=g)
    # whole image at the same size: identity
    same = crop_resize(x, torch.tensor([[0.0, 0, 40, 40], [10, 0, 50, 40]]), 40)
    assert torch.allclose(same[0], x[0, :, :, :40], atol=1e-6) and torch.allclose(same[1], x[1, :, :, 10:], atol=1e-6)
    # enlarging a box: bilinear, equal to torchvision's crop + resize away from the box border
    boxes = torch.tensor([[5.0, 3, 25, 23], [0, 0, 20, 20]])
    ours = crop_resize(x, boxes, 48)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(x[i], y0, x0, y1 - y0, x1 - x0, [48, 48], antialias=False)
        assert (ours[i, :, 2:-2, 2:-2] - ref[:, 2:-2, 2:-2]).abs().max() < 1e-5
    # shrinking a smooth image: close to torchvision's antialiased resize
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    smooth = (torch.stack([torch.sin(xx / 5), torch.cos(yy / 4), torch.sin((xx + yy) / 7)]) * 0.5 + 0.5)[None]
    ours = crop_resize(smooth, torch.tensor([[2.0, 1, 47, 39]]), 16)[0]
    ref = TF.resized_crop(smooth[0], 1, 2, 38, 45, [16, 16], antialias=True)
    assert (ours - ref).abs().mean() < 0.01
    # a list of images of different sizes gives the same as each image alone
    imgs = [torch.randint(0, 256, (3, 30 + 5 * (i % 2), 40), dtype=torch.uint8, generator=g) for i in range(4)]
    boxes = torch.tensor([[0.0, 0, 30, 30], [5, 5, 35, 30], [10, 2, 40, 22], [3, 3, 13, 13]])
    listed = crop_resize(imgs, boxes, 16)
    for i in range(4):
        assert torch.allclose(listed[i], crop_resize(imgs[i][None], boxes[i:i + 1], 16)[0], atol=1e-6)


def test_call_batches_lists_and_generators():
    g = torch.Generator()
    x = torch.randint(0, 256, (8, 3, 48, 40), dtype=torch.uint8, generator=g.manual_seed(0))
    aug = GPUMoCoV2Augment(32)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    v1, v2 = aug.two_views(x, torch.Generator().manual_seed(3))
    assert (v1 - v2).abs().mean() > 0.1
    listed = aug([x[i] for i in range(8)], torch.Generator().manual_seed(1))
    assert torch.allclose(listed, a, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        aug(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="image 1"):
        aug([torch.zeros(3, 8, 8), torch.zeros(8, 8)])
    with pytest.raises(ValueError, match="int64"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="min_scale"):
        GPUMoCoV2Augment(32, min_scale=1.5)


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_jpeg_batch_cpu():
    rng = np.random.default_rng(0)
    arrs = [np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8) for h, w in ((20, 30), (33, 17))]
    datas = [encode(a, "JPEG", quality=95) for a in arrs]
    grey = encode(arrs[0][..., 0], "JPEG", quality=95)
    png = encode(arrs[1], "PNG")
    out = decode_jpeg_batch(datas + [grey, png], device="cpu")
    assert [tuple(o.shape) for o in out] == [(3, 20, 30), (3, 33, 17), (3, 20, 30), (3, 33, 17)]
    assert all(o.dtype == torch.uint8 for o in out)
    for o, d in zip(out[:2], datas):  # same pixels as PIL's decoder (both libjpeg)
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1)
        assert (o.int() - pil.int()).abs().max() <= 1
    assert torch.equal(out[2][0], out[2][1])               # grayscale JPEG expanded to RGB
    assert torch.equal(out[3], torch.from_numpy(arrs[1]).permute(2, 0, 1))  # PNG decoded losslessly
    bad = datas[0][:200]
    with pytest.raises(ValueError, match="broken.jpg"):
        decode_jpeg_batch([datas[0], bad], names=["ok.jpg", "broken.jpg"])


def test_device_image_dataset_batches():
    images = torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 3, 32, 32).contiguous()
    ds = DeviceImageDataset(images, torch.arange(24) // 3, [f"c{i}" for i in range(8)])
    assert len(ds) == 24 and ds.device == torch.device("cpu") and ds.labels.dtype == torch.long
    batches = list(ds.batches(10, torch.Generator().manual_seed(0)))
    assert [b[0].shape[0] for b in batches] == [10, 10]
    for x, y in batches:                      # images and labels stay paired
        assert torch.equal(x[:, 0, 0, 0].long() // 3, y)
    seen = torch.cat([b[1] for b in ds.batches(10, torch.Generator().manual_seed(0), drop_last=False)])
    assert sorted(seen.tolist()) == sorted(ds.labels.tolist())
    out = GPUMoCoV2Augment(32, blur=False)(batches[0][0], torch.Generator().manual_seed(0))
    assert out.shape == (10, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        DeviceImageDataset(images.float(), ds.labels, ds.classes)
    with pytest.raises(ValueError, match="23 labels for 24 images"):
        DeviceImageDataset(images, ds.labels[:23], ds.classes)
