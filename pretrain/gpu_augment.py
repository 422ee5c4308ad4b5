"""Batched MoCo v2 augmentation on tensors, on whatever device the images are (GPU in training, CPU in tests).

The same views as `pretrain.augment.moco_v2_transform`, computed for a whole batch at once:

1. random resized crop: boxes drawn exactly like torchvision's `RandomResizedCrop.get_params` (10 tries of
   area fraction ~ U[min_scale, 1] and log aspect ratio ~ U[log 3/4, log 4/3], integer width/height rounded,
   a uniform integer position; after 10 failures a centre crop of the whole image clamped to the ratio
   range), then resampled to image_size x image_size for all boxes at once with `torchvision.ops.roi_align`
   (bilinear, `aligned=True`, averaging ceil(box/out) samples per output pixel when shrinking). Inside the box
   this equals torchvision's crop + bilinear resize; along the border it interpolates with the pixels just
   outside the box instead of repeating the edge;
2. horizontal flip with p=0.5 (done right after the crop; every later op is mirror-symmetric);
3. colour jitter with p=0.8: brightness, contrast, saturation ~ U[0.6, 1.4], hue ~ U[-0.1, 0.1], in a random
   order per sample, with the semantics of torchvision.transforms.functional.adjust_* on float images;
4. grayscale with p=0.2 (ITU-R 601 luma 0.2989 R + 0.587 G + 0.114 B, copied to the 3 channels);
5. Gaussian blur with p=0.5 (when enabled), sigma ~ U[0.1, 2.0], an odd kernel of about 10% of the image
   side (23 at 224), reflect padding, as torchvision's `gaussian_blur`;
6. normalisation with mean/std.

Every random choice is per sample, drawn by `sample_params` (so tests can inspect them) and applied by
`apply`. Inputs: a uint8 (0..255) or float (0..1) batch (N, 3, H, W), or a list of (3, H_i, W_i) images of
different sizes (e.g. from `decode_jpeg_batch`). `DeviceImageDataset` keeps a small dataset (CIFAR-size)
as one uint8 tensor on the device (`pretrain.fastdata.load_memory` fills it from an image folder).
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

from pretrain.augment import BLUR_SIGMA, CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, JITTER, P_BLUR, P_GRAY, P_JITTER

P_FLIP = 0.5
CROP_TRIES = 10
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
Images = Union[Tensor, Sequence[Tensor]]

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


# ---------------------------------------------------------------------------------------------------
# Per-sample colour operations on float images in [0, 1], shape (n, 3, H, W); factors shape (n,)
# ---------------------------------------------------------------------------------------------------


def _per_sample(f: Tensor, x: Tensor) -> Tensor:
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """Luma of (n, 3, H, W) as (n, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


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


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel side of about 10% of the image: 23 at 224, 7 at 64, 3 at 32."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur of (n, C, H, W) with one sigma per sample and reflect padding
    (same kernel as torchvision: exp(-t^2 / 2 sigma^2) at integer offsets t, normalised to sum 1)."""
    n, c, h, w = x.shape
    half = kernel_size // 2
    if half >= min(h, w):
        raise ValueError(f"gaussian_blur: kernel {kernel_size} too large for {h}x{w} images")
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - (kernel_size - 1) / 2
    s = sigma.to(device=x.device, dtype=x.dtype).view(-1, 1)
    k1 = torch.exp(-0.5 * (t / s) ** 2)
    k1 = (k1 / k1.sum(1, keepdim=True)).repeat_interleave(c, dim=0)          # (n*c, k)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k1.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = F.conv2d(y, k1.view(n * c, 1, 1, kernel_size), groups=n * c)
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
    """
    boxes: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor
    blur: Tensor
    sigma: Tensor
    flip: Tensor

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
        kernel_size: blur kernel side (odd); default `blur_kernel_size(image_size)`.
    """

    def __init__(self, image_size: int = 224, min_scale: float = 0.2, blur: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 kernel_size: int | None = None):
        if not 0 < min_scale <= 1:
            raise ValueError(f"GPUMoCoV2Augment: min_scale must be in (0, 1], got {min_scale}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"GPUMoCoV2Augment: mean/std must be 3 values with std > 0, got {mean}, {std}")
        self.image_size = int(image_size)
        self.scale = (float(min_scale), 1.0)
        self.ratio = CROP_RATIO
        self.blur = bool(blur)
        self.kernel_size = blur_kernel_size(self.image_size) if kernel_size is None else int(kernel_size)
        if self.kernel_size % 2 != 1:
            raise ValueError(f"GPUMoCoV2Augment: kernel_size must be odd, got {self.kernel_size}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        b, c, s, h = JITTER
        self.jitter_ranges = ((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_size={self.image_size}, min_scale={self.scale[0]}, blur={self.blur}, "
                f"kernel_size={self.kernel_size}, mean={self.mean}, std={self.std})")

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
        jitter = rand(n) < P_JITTER
        u = rand(n, 4)
        lo = torch.tensor([r[0] for r in self.jitter_ranges], device=dev)
        hi = torch.tensor([r[1] for r in self.jitter_ranges], device=dev)
        factors = lo + (hi - lo) * u
        order = torch.argsort(rand(n, 4), dim=1)
        gray = rand(n) < P_GRAY
        blur = rand(n) < P_BLUR
        if not self.blur:
            blur = torch.zeros_like(blur)
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * rand(n)
        flip = rand(n) < P_FLIP
        return AugmentParams(boxes=boxes, jitter=jitter, factors=factors, order=order, gray=gray, blur=blur,
                             sigma=sigma, flip=flip)

    # -- application ------------------------------------------------------------------------------
    def __call__(self, batch: Images, generator: torch.Generator | None = None) -> Tensor:
        """One augmented view of every image: (N, 3, image_size, image_size) float32 on the images' device."""
        n, sizes, _ = _describe(batch)
        return self.apply(batch, self.sample_params(n, generator, sizes))

    def two_views(self, batch: Images, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Two independent views (x1, x2) of the same images."""
        return self(batch, generator), self(batch, generator)

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
            x[idx] = gaussian_blur(x[idx], p.sigma[idx], self.kernel_size)
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


def _to_float(t: Tensor) -> Tensor:
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def crop_resize(batch: Images, boxes: Tensor, size: int) -> Tensor:
    """Crop boxes (N, 4) (x0, y0, x1, y1) out of a batch (N, 3, H, W) or a list of (3, H_i, W_i) images and
    resample them to size x size with `roi_align` (images of equal size are processed together)."""
    from torchvision.ops import roi_align

    n, _, device = _describe(batch)
    boxes = boxes.to(device=device, dtype=torch.float32)
    if isinstance(batch, Tensor):
        rois = torch.cat([torch.arange(n, device=device, dtype=torch.float32).view(-1, 1), boxes], 1)
        return roi_align(_to_float(batch), rois, (size, size), 1.0, -1, True)
    out = torch.empty(n, 3, size, size, device=device)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(batch):
        groups.setdefault(tuple(im.shape), []).append(i)
    for members in groups.values():
        stack = _to_float(torch.stack([batch[i] for i in members]))
        index = torch.tensor(members, device=device)
        rois = torch.cat([torch.arange(len(members), device=device, dtype=torch.float32).view(-1, 1),
                          boxes[index]], 1)
        out[index] = roi_align(stack, rois, (size, size), 1.0, -1, True)
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
