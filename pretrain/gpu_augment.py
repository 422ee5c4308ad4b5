"""Batched MoCo v2 augmentation on tensors, on whatever device the images are (GPU in training, CPU in tests).

The same views as `pretrain.augment.moco_v2_transform`, computed for a whole batch at once:

1. random resized crop: boxes drawn exactly like torchvision's `RandomResizedCrop.get_params` (10 tries of
   area fraction ~ U[min_scale, 1] and log aspect ratio ~ U[log 3/4, log 4/3], integer width/height rounded,
   a uniform integer position; after 10 failures a centre crop of the whole image clamped to the ratio
   range), then resampled to image_size x image_size as PIL does it in the reference path (crop, then
   bilinear resize with a triangle filter widened by the shrink factor, i.e. antialiased; `crop_resize`);
2. horizontal flip with p=0.5 (done right after the crop; every later op is mirror-symmetric);
3. colour jitter with p=0.8: brightness, contrast, saturation ~ U[0.6, 1.4], hue ~ U[-0.1, 0.1], in a random
   order per sample, with the semantics of torchvision.transforms.functional.adjust_* on float images;
4. grayscale with p=0.2 (ITU-R 601 luma 0.2989 R + 0.587 G + 0.114 B, copied to the 3 channels);
5. Gaussian blur with p=0.5 (when enabled), sigma ~ U[0.1, 2.0], computed as PIL's
   `ImageFilter.GaussianBlur(radius=sigma)` computes it: three extended box blurs per axis whose variances add
   up to sigma^2, the edge pixel repeated beyond the border (`gaussian_blur`). Its width follows sigma only,
   whatever the image size;
6. solarisation (only a `recipe` with p_solarize > 0, BYOL's second view): pixels of 128/255 and above become
   1 - x, as PIL's `ImageOps.solarize(threshold=128)` on bytes;
7. normalisation with mean/std.

Another `recipe` (pretrain.augment.ViewRecipe: BYOL's or SimCLR's views) sets the jitter strengths and the
probabilities of steps 3-6.

Every random choice is per sample, drawn by `sample_params` (so tests can inspect them) and applied by
`apply`. Inputs: a uint8 (0..255) or float (0..1) batch (N, 3, H, W), or a list of (3, H_i, W_i) images of
different sizes (e.g. from `decode_jpeg_batch`). `DeviceImageDataset` keeps a small dataset (CIFAR-size)
as one uint8 tensor on the device (`pretrain.fastdata.load_memory` fills it from an image folder).

Agreement with the PIL reference path (`pretrain.augment`), op by op on the same uint8 natural images (COCO
photos at 32-224 px, CIFAR-10 images), in 0..255 units. The differences come from PIL computing in uint8
inside each op, which this module does not do. Measured mean / max, then the tolerance that
tests/test_gpu_augment.py enforces:

- crop + resize (any box, 32-224 px): 0.25-0.29 / 1.00 (PIL rounds after each axis); tolerance 0.5 / 1.5;
- brightness: 0.40 / 0.80 (PIL truncates the blend); tolerance 0.7 / 1.5;
- contrast, saturation: 0.42 / 1.19 (PIL blends with its integer luma); tolerance 0.7 / 2;
- hue: 0.38 / 11.3 (the PIL path converts to 8-bit HSV and shifts the hue by int(255 h) / 256 of a turn);
  tolerance 0.6 / 16;
- grayscale: 0.24 / 0.52 (PIL's rounded integer luma); tolerance 0.4 / 1;
- Gaussian blur, sigma 0.1-2 at 32, 64, 96 and 224 px: 0.11-0.63 / 2.67 (PIL rounds after each of its 6 box
  passes, which bounds the difference by 3); tolerance 1 / 3.1;
- flip: exact;
- a whole view (all ops, random parameters): 1.14-1.23 / 14.9, the roundings adding up; tolerance 2 / 24.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.augment import (BLUR_SIGMA, CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, MOCO_V2, SOLARIZE_THRESHOLD,
                              ViewRecipe)

P_FLIP = 0.5
BLUR_PASSES = 3          # box blurs per axis in Pillow's GaussianBlur
CROP_TRIES = 10
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
Images = Union[Tensor, Sequence[Tensor]]


# ---------------------------------------------------------------------------------------------------
# Per-sample colour operations on float images in [0, 1], shape (n, 3, H, W); factors shape (n,)
# ---------------------------------------------------------------------------------------------------


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """Luma of (n, 3, H, W) as (n, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def solarize(x: Tensor) -> Tensor:
    """1 - x where x is at or above the threshold (128 of 255, the byte it rounds to), else x."""
    return torch.where(x * 255 >= SOLARIZE_THRESHOLD - 0.5, 1.0 - x, x)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x * factor, clamped to [0, 1] (torchvision: blend with black)."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean luma (one grey level per image)."""
    f = _per_sample(factor, x)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel luma."""
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by `shift` (fraction of a turn, in [-0.5, 0.5]); S and V are kept."""
    maxc = x.max(dim=1).values
    minc = x.min(dim=1).values
    chroma = maxc - minc
    grey = chroma == 0
    safe = torch.where(grey, torch.ones_like(chroma), chroma)
    sat = chroma / torch.where(grey, torch.ones_like(maxc), maxc)
    r, g, b = x.unbind(1)
    # hue in sextants (0..6 from red), by the largest channel; ties go to red, then green
    h = torch.where(r == maxc, (g - b) / safe,
                    torch.where(g == maxc, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0 + _per_sample(shift, x).view(-1, 1, 1), 1.0)
    # back to RGB: channel n (5 for R, 3 for G, 1 for B) = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    v = maxc.unsqueeze(1)
    return (v - v * sat.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


_COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def pil_box_radius(sigma: Tensor, passes: int = BLUR_PASSES) -> Tensor:
    """Pillow's extended box radius l + a for a Gaussian of standard deviation `sigma` made of `passes` box
    blurs (`_gaussian_blur_radius` in Pillow's BoxBlur.c, after Gwosdek et al., SSVM 2011): each box has
    variance sigma^2 / passes, so `passes` of them have variance sigma^2. 0 for sigma = 0."""
    s2 = sigma.double() ** 2 / passes
    length = torch.sqrt(12.0 * s2 + 1.0)
    whole = torch.floor((length - 1.0) / 2.0)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * s2) / (6 * (s2 - (whole + 1) ** 2))
    return whole + frac


def box_weights(radius: Tensor) -> Tensor:
    """Taps of Pillow's extended box of (fractional) radius r, one row per radius: 1 / (2r + 1) on the
    2 floor(r) + 1 central pixels and the remainder (r - floor(r)) / (2r + 1) on the two pixels next to them.
    All rows have the width 2 R + 3 of the largest radius R (zeros outside a row's own box); each sums to 1."""
    radius = radius.double()
    whole = torch.floor(radius)
    half = int(whole.max().item()) + 1 if radius.numel() else 1
    t = torch.arange(-half, half + 1, device=radius.device, dtype=torch.float64).abs()
    inner = 1.0 / (2 * radius + 1)
    edge = (1.0 - (2 * whole + 1) * inner) / 2
    r = whole.view(-1, 1)
    return torch.where(t <= r, inner.view(-1, 1), torch.where(t == r + 1, edge.view(-1, 1), 0.0))


def gaussian_blur(x: Tensor, sigma: Tensor, passes: int = BLUR_PASSES) -> Tensor:
    """PIL's `ImageFilter.GaussianBlur(radius=sigma)` on float images (n, C, H, W), one sigma per sample.

    As Pillow: `passes` extended box blurs of radius r = `pil_box_radius(sigma)` along the rows, then as many
    along the columns, each pass repeating the edge pixel beyond the border. The support therefore follows
    sigma (3 (floor(r) + 1) pixels each side: 6 at sigma = 2, where r = 1.375) and never depends on the image
    size. The whole batch shares one kernel width (that of its largest sigma) with per-sample weights:
    2 * passes depthwise convolutions of at most 5 taps for sigma <= 2. Pillow rounds to uint8 after every
    pass; this keeps floats."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    k = box_weights(pil_box_radius(sigma.to(x.device), passes)).to(x.dtype)   # (n, 2R + 3)
    half = (k.shape[1] - 1) // 2
    k = k.repeat_interleave(c, dim=0)                                          # (n*c, taps)
    kx = k.view(n * c, 1, 1, -1)
    ky = k.view(n * c, 1, -1, 1)
    y = x.reshape(1, n * c, h, w)
    for _ in range(passes):
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="replicate"), kx, groups=n * c)
    for _ in range(passes):
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="replicate"), ky, groups=n * c)
    return y.view(n, c, h, w)


# ---------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------


@dataclass
class AugmentParams:
    """Per-sample random choices of one batch (all tensors have N rows).

    boxes:   (N, 4) float, crop boxes (x0, y0, x1, y1) in source pixels with integer values, i.e. torchvision's
             (top=y0, left=x0, height=y1-y0, width=x1-x0)
    jitter:  (N,) bool, colour jitter applied
    factors: (N, 4) float, brightness, contrast, saturation factors and hue shift
    order:   (N, 4) long, a permutation of 0..3: order[:, k] is the k-th op applied (0 brightness, 1 contrast,
             2 saturation, 3 hue)
    gray:    (N,) bool, converted to grayscale
    blur:    (N,) bool, blurred (all False when blur is disabled)
    sigma:   (N,) float, blur sigma (drawn for every sample, used where `blur`)
    flip:    (N,) bool, mirrored left-right
    solarize: (N,) bool, solarised (all False for a recipe without solarisation)
    """
    boxes: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    flip: Tensor
    solarize: Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def sample_crop_boxes(sizes: Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator | None = None) -> Tensor:
    """RandomResizedCrop boxes for images of `sizes` (N, 2) = (H, W): (N, 4) float (x0, y0, x1, y1).

    Same distribution as torchvision's `RandomResizedCrop.get_params`, vectorised: all 10 tries are drawn
    at once and the first one that fits is kept; rows where none fits fall back to the central crop.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    sizes = sizes.to(device=dev, dtype=torch.float64)
    n = sizes.shape[0]
    H, W = sizes[:, 0:1], sizes[:, 1:2]
    area = H * W
    u = torch.rand(n, CROP_TRIES, generator=generator, device=dev, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, CROP_TRIES, generator=generator, device=dev,
                                                   dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    ok = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    H, W = H.squeeze(1), W.squeeze(1)
    # uniform integer offsets in [0, H - h] and [0, W - w]
    ry = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    rx = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    y0 = torch.minimum(torch.floor(ry * (H - h + 1)), H - h)
    x0 = torch.minimum(torch.floor(rx * (W - w + 1)), W - w)
    # fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = W / H
    fw = torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W)
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    fy0 = torch.floor((H - fh) / 2)
    fx0 = torch.floor((W - fw) / 2)
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    x0, y0 = torch.where(ok, x0, fx0), torch.where(ok, y0, fy0)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1).float()


# ---------------------------------------------------------------------------------------------------
# The augmentation
# ---------------------------------------------------------------------------------------------------


class GPUMoCoV2Augment:
    """MoCo v2 views of a batch on its own device. `aug(batch)` returns (N, 3, image_size, image_size) float32,
    normalised; call it twice for the two SimSiam views.

    Args:
        image_size: output side.
        min_scale: lower bound of the crop's area fraction (upper bound 1).
        blur: apply the Gaussian blur with p=0.5 (False for CIFAR).
        mean, std: normalisation.
        recipe: the view's jitter strengths and probabilities (default MoCo v2's).
    """

    def __init__(self, image_size: int = 224, min_scale: float = 0.2, blur: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 recipe: ViewRecipe = MOCO_V2):
        if not 0 < min_scale <= 1:
            raise ValueError(f"GPUMoCoV2Augment: min_scale must be in (0, 1], got {min_scale}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"GPUMoCoV2Augment: mean/std must be 3 values with std > 0, got {mean}, {std}")
        self.image_size = int(image_size)
        self.scale = (float(min_scale), 1.0)
        self.ratio = CROP_RATIO
        self.blur = bool(blur)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.recipe = recipe
        b, c, s, h = recipe.jitter
        self.jitter_ranges = ((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_size={self.image_size}, min_scale={self.scale[0]}, blur={self.blur}, "
                f"mean={self.mean}, std={self.std}, recipe={self.recipe})")

    # -- randomness -------------------------------------------------------------------------------
    def sample_params(self, n: int, generator: torch.Generator | None = None,
                      sizes: Tensor | Sequence[Sequence[int]] | tuple[int, int] | None = None) -> AugmentParams:
        """Draw the random choices for `n` samples whose source images have `sizes`: one (H, W) for all, a
        list / (n, 2) tensor of (H, W), or None for image_size x image_size. Tensors live on the generator's
        device (CPU when no generator is given; the global torch RNG is used then)."""
        dev = generator.device if generator is not None else torch.device("cpu")
        if sizes is None:
            sizes = (self.image_size, self.image_size)
        sizes = torch.as_tensor(sizes, dtype=torch.float64)
        if sizes.ndim == 1:
            sizes = sizes.view(1, 2).expand(n, 2)
        if sizes.shape != (n, 2):
            raise ValueError(f"sample_params: sizes must be (H, W) or ({n}, 2), got shape {tuple(sizes.shape)}")

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=dev)

        boxes = sample_crop_boxes(sizes, self.scale, self.ratio, generator)
        r = self.recipe
        jitter = rand(n) < r.p_jitter
        u = rand(n, 4)
        lo = torch.tensor([low for low, _ in self.jitter_ranges], device=dev)
        hi = torch.tensor([high for _, high in self.jitter_ranges], device=dev)
        factors = lo + (hi - lo) * u
        order = torch.argsort(rand(n, 4), dim=1)
        gray = rand(n) < r.p_gray
        blur = rand(n) < r.p_blur
        if not self.blur:
            blur = torch.zeros_like(blur)
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * rand(n)
        flip = rand(n) < P_FLIP
        # drawn only when the recipe solarises, so MoCo v2's stream of draws is what it was
        solarize = rand(n) < r.p_solarize if r.p_solarize > 0 else torch.zeros_like(flip)
        return AugmentParams(boxes=boxes, jitter=jitter, factors=factors, order=order, gray=gray, blur=blur,
                             sigma=sigma, flip=flip, solarize=solarize)

    # -- application ------------------------------------------------------------------------------
    def __call__(self, batch: Images, generator: torch.Generator | None = None) -> Tensor:
        """One augmented view of every image: (N, 3, image_size, image_size) float32 on the images' device."""
        n, sizes, _ = _describe(batch)
        return self.apply(batch, self.sample_params(n, generator, sizes))

    def crop(self, batch: Images, boxes: Tensor) -> Tensor:
        """Resample each box to image_size x image_size: float32 in [0, 1]."""
        return crop_resize(batch, boxes, self.image_size)

    def apply(self, batch: Images, params: AugmentParams) -> Tensor:
        """Apply given per-sample parameters (deterministic)."""
        n, _, device = _describe(batch)
        if len(params) != n:
            raise ValueError(f"apply: {len(params)} parameter rows for {n} images")
        p = params.to(device)
        x = self.crop(batch, p.boxes)
        x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(-1), x)
        for step in range(4):
            for op in range(4):
                idx = torch.nonzero(p.jitter & (p.order[:, step] == op)).squeeze(1)
                if idx.numel():
                    x[idx] = _COLOUR_OPS[op](x[idx], p.factors[idx, op])
        idx = torch.nonzero(p.gray).squeeze(1)
        if idx.numel():
            x[idx] = grayscale(x[idx]).expand(-1, 3, -1, -1)
        idx = torch.nonzero(p.blur).squeeze(1)
        if idx.numel():
            x[idx] = gaussian_blur(x[idx], p.sigma[idx])
        idx = torch.nonzero(p.solarize).squeeze(1)
        if idx.numel():
            x[idx] = solarize(x[idx])
        mean = torch.tensor(self.mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def _describe(batch: Images) -> tuple[int, list[tuple[int, int]] | tuple[int, int], torch.device]:
    """(count, sizes, device) of a batch tensor or a list of images; checks shapes and dtypes."""
    if isinstance(batch, Tensor):
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an image batch (N, 3, H, W), got shape {tuple(batch.shape)}")
        _check_dtype(batch, "batch")
        return batch.shape[0], (batch.shape[2], batch.shape[3]), batch.device
    if len(batch) == 0:
        raise ValueError("empty list of images")
    sizes = []
    for i, im in enumerate(batch):
        if not isinstance(im, Tensor) or im.ndim != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"image {i}: expected a (3, H, W) tensor, got {shape}")
        _check_dtype(im, f"image {i}")
        sizes.append((im.shape[1], im.shape[2]))
    return len(batch), sizes, batch[0].device


def _check_dtype(t: Tensor, what: str) -> None:
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise ValueError(f"{what}: expected uint8 (0..255) or float (0..1) pixels, got {t.dtype}")


def resize_taps(start: Tensor, length: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """PIL's bilinear resampling of the spans [start, start + length) of N images to `size` pixels, along one
    axis, as `Image.crop(...).resize(..., BILINEAR)` computes it (`precompute_coeffs` in Pillow's Resample.c):
    output pixel i is centred at c = (i + 0.5) * length / size inside the span and averages the span's pixels
    j with the triangle weights max(0, 1 - |j + 0.5 - c| / s), s = max(length / size, 1), normalised over the
    pixels inside the span (so shrinking is antialiased and nothing outside the span is read).

    Returns (index, weight), both (N, size, K): absolute pixel indices and their weights (0 where unused);
    K = 2 ceil(largest s) + 1."""
    start, length = start.double(), length.double()
    scale = length / size
    fscale = scale.clamp(min=1.0)
    centre = (torch.arange(size, device=start.device, dtype=torch.float64) + 0.5) * scale.view(-1, 1)   # (N, S)
    support = fscale.view(-1, 1)
    lo = torch.floor(centre - support + 0.5).clamp(min=0.0)
    hi = torch.minimum(torch.floor(centre + support + 0.5), length.view(-1, 1))
    taps = 2 * int(math.ceil(float(fscale.max()))) + 1
    j = lo.unsqueeze(-1) + torch.arange(taps, device=start.device, dtype=torch.float64)                   # (N, S, K)
    w = (1.0 - ((j - centre.unsqueeze(-1) + 0.5) / support.unsqueeze(-1)).abs()).clamp(min=0.0)
    w = torch.where(j < hi.unsqueeze(-1), w, 0.0)
    w = w / w.sum(-1, keepdim=True)
    index = (start.view(-1, 1, 1) + torch.minimum(j, length.view(-1, 1, 1) - 1)).long()
    return index, w.float()


def _resample(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """crop_resize of one batch tensor (N, 3, H, W): a pass along the rows, then along the columns."""
    n, c, h, w = x.shape
    yi, yw = resize_taps(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size)     # (n, S, Ky)
    xi, xw = resize_taps(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size)     # (n, S, Kx)
    if x.dtype == torch.uint8:
        yw = yw / 255.0
    rows = torch.zeros(n, c, size, w, device=x.device)
    for k in range(yi.shape[2]):
        picked = x.gather(2, yi[:, :, k].view(n, 1, size, 1).expand(n, c, size, w))
        rows.addcmul_(picked.float(), yw[:, :, k].view(n, 1, size, 1))
    out = torch.zeros(n, c, size, size, device=x.device)
    for k in range(xi.shape[2]):
        picked = rows.gather(3, xi[:, :, k].view(n, 1, 1, size).expand(n, c, size, size))
        out.addcmul_(picked, xw[:, :, k].view(n, 1, 1, size))
    return out


def crop_resize(batch: Images, boxes: Tensor, size: int) -> Tensor:
    """Crop boxes (N, 4) (x0, y0, x1, y1) out of a batch (N, 3, H, W) or a list of (3, H_i, W_i) images and
    resample them to size x size: float32 in [0, 1].

    The result is torchvision's `resized_crop(img, y0, x0, y1 - y0, x1 - x0, size, BILINEAR, antialias=True)`
    on the PIL image (PIL crop, then PIL's bilinear resize, see `resize_taps`), computed in float instead of
    PIL's uint8 after each axis. Box coordinates are pixel edges and are rounded to integers (PIL crops whole
    pixels); only pixels inside a box are read, so whatever pads an image beyond its own size is never used.
    Images of equal size are processed together."""
    n, _, device = _describe(batch)
    boxes = boxes.to(device=device, dtype=torch.float64).round()
    if isinstance(batch, Tensor):
        return _resample(batch, boxes, size)
    out = torch.empty(n, 3, size, size, device=device)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(batch):
        groups.setdefault(tuple(im.shape), []).append(i)
    for members in groups.values():
        index = torch.tensor(members, device=device)
        out[index] = _resample(torch.stack([batch[i] for i in members]), boxes[index], size)
    return out


# ---------------------------------------------------------------------------------------------------
# Decoding and on-device datasets
# ---------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_torchvision_io():
    """torchvision >= 0.29 warns on every decode that its image codecs are deprecated (TorchCodec supersedes
    them); they still work, and this module depends on them, so the warning is silenced around our calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision.*",
                                category=DeprecationWarning)
        yield


def decode_jpeg_batch(datas: Sequence[Union[bytes, bytearray, memoryview, Tensor]], device: Union[str, torch.device] = "cpu",
                      names: Sequence[str] | None = None) -> list[Tensor]:
    """Decode encoded images (JPEG bytes, or 1-D uint8 tensors) to RGB uint8 tensors (3, H, W) on `device`.

    JPEGs are decoded together with `torchvision.io.decode_jpeg` (nvJPEG on CUDA). Other formats (PNG...)
    and files the batched decoder rejects are decoded one by one (torchvision on the CPU, then PIL); an
    image nothing can decode raises ValueError naming it (`names[i]` when given, else its index).
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(datas))]
    if len(names) != len(datas):
        raise ValueError(f"decode_jpeg_batch: {len(names)} names for {len(datas)} images")
    raw = []
    for d, name in zip(datas, names):
        t = d if isinstance(d, Tensor) else torch.frombuffer(bytearray(d), dtype=torch.uint8)
        if t.dtype != torch.uint8 or t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"{name}: expected non-empty encoded bytes, got {t.dtype} tensor of shape {tuple(t.shape)}")
        raw.append(t.cpu())
    out: list[Tensor | None] = [None] * len(raw)
    jpeg = [i for i, t in enumerate(raw) if t.numel() > 2 and int(t[0]) == 0xFF and int(t[1]) == 0xD8]
    if jpeg:
        try:
            with _quiet_torchvision_io():
                decoded = decode_jpeg([raw[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            for i, im in zip(jpeg, decoded):
                out[i] = im
        except RuntimeError:
            pass  # one bad file spoils the batch: decode one by one below to find it
    for i, t in enumerate(raw):
        if out[i] is not None:
            continue
        try:
            with _quiet_torchvision_io():
                out[i] = decode_image(t, mode=ImageReadMode.RGB).to(device)
        except RuntimeError:
            out[i] = _decode_pil(t, names[i]).to(device)
    return out  # type: ignore[return-value]


def _decode_pil(t: Tensor, name: str) -> Tensor:
    import io

    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(t.numpy().tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many kinds for broken files
        raise ValueError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class DeviceImageDataset:
    """A small labelled image set held as one uint8 tensor (N, 3, H, W) on a device (e.g. CIFAR: 150 MB).

    Attributes: images (uint8), labels (long), classes (names, label order).
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str]):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DeviceImageDataset: images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"DeviceImageDataset: {labels.shape[0]} labels for {images.shape[0]} images")
        self.images, self.labels, self.classes = images, labels.to(images.device, torch.long), list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (uint8 images, labels) batches, in a random order drawn from `generator` when `shuffle`."""
        n = len(self)
        if shuffle:
            dev = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=dev).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]
