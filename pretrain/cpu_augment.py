"""Fast CPU pretraining views: the MoCo v2 augmentation of `pretrain.augment` in OpenCV and numpy, uint8 out.

The same random draws, in the same order, from torch's generator as `TwoCropsTransform(moco_v2_transform(..))`
(torchvision's own `RandomResizedCrop.get_params` and `ColorJitter.get_params`, the RandomApply / grayscale /
flip coin flips), so a seeded image gets the very parameters the reference path gives it (`sample_view`).
The pixels differ from PIL's only by rounding, op by op (tests/test_cpu_augment.py states the tolerances):

- decode: OpenCV's libjpeg, at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when every view's crop still
  has at least `image_size` pixels on each side at that scale; EXIF orientation ignored, as PIL does;
- crop + resize: a Gaussian of the variance that PIL's shrink-widened triangle filter adds, then OpenCV's
  bilinear interpolation (PIL resamples the crop in one antialiased pass);
- brightness and contrast: a 256-entry table made by PIL's own blend, so they equal PIL's exactly;
- saturation: PIL's blend formula (float32, truncated) against its luma, exact as well;
- hue: OpenCV's 0..255 HSV (the scale PIL's HSV uses) with the hue byte shifted as torchvision shifts it;
- grayscale: PIL's integer luma (exact);
- blur: PIL's three extended box filters per axis (`pil_box_radius`, as in pretrain.gpu_augment), composed into one
  separable kernel, the edge pixel repeated beyond the border (PIL rounds after each box, this once);
- solarisation (a `ViewRecipe` with p_solarize, BYOL's second view): PIL's table, exact;
- flip: exact.

The views come out as uint8 (3, H, W) tensors; `device_views` moves a batch to the device and normalises it
there (ToTensor's /255, then mean and std), so the loader neither converts nor ships float images.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from .augment import BLUR_SIGMA, CROP_RATIO, MOCO_V2, SOLARIZE_THRESHOLD, ViewRecipe
from .data import CorruptImageError, RobustImageFolder

cv2.setNumThreads(0)           # one thread per loader process: forked workers never wait on OpenCV's pool
cv2.ocl.setUseOpenCL(False)

PIPELINES = ("fast", "reference")
_SOLARIZE = np.array([v if v < SOLARIZE_THRESHOLD else 255 - v for v in range(256)], np.uint8)
_DECODE_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


# --------------------------------------------------------------------------------------------- parameters
@dataclass
class ViewParams:
    """One view's random choices: crop (top, left, height, width) in the full image; colour jitter (order of
    the four ops, brightness, contrast, saturation, hue factors) or None; grayscale; blur sigma or None; flip;
    solarisation."""
    crop: tuple[int, int, int, int]
    jitter: tuple[list[int], float, float, float, float] | None
    gray: bool
    sigma: float | None
    flip: bool
    solarize: bool = False


@functools.lru_cache(maxsize=8)
def _jitter_ranges(strengths: tuple[float, float, float, float]) -> tuple:
    cj = T.ColorJitter(*strengths)
    return cj.brightness, cj.contrast, cj.saturation, cj.hue


def sample_view(height: int, width: int, min_scale: float, blur: bool, recipe: ViewRecipe = MOCO_V2) -> ViewParams:
    """The draws of one `moco_v2_transform(.., recipe=recipe)` view on a height x width image, in its order, from
    torch's generator."""
    crop = T.RandomResizedCrop.get_params(torch.empty(()).expand(3, height, width), [min_scale, 1.0],
                                          list(CROP_RATIO))
    jitter = None
    if not recipe.p_jitter < torch.rand(1):                       # RandomApply: skipped when p < u
        order, b, c, s, h = T.ColorJitter.get_params(*_jitter_ranges(recipe.jitter))
        jitter = (order.tolist(), b, c, s, h)
    gray = bool(torch.rand(1) < recipe.p_gray)
    sigma = None
    if blur and not recipe.p_blur < torch.rand(1):
        sigma = torch.empty(()).uniform_(BLUR_SIGMA[0], BLUR_SIGMA[1]).item()
    solarize = recipe.p_solarize > 0 and bool(torch.rand(1).item() < recipe.p_solarize)
    flip = bool(torch.rand(1) < 0.5)
    return ViewParams(tuple(int(v) for v in crop), jitter, gray, sigma, flip, solarize)


def decode_scale(views: Sequence[ViewParams], image_size: int, is_jpeg: bool) -> int:
    """The largest libjpeg scale-down (1, 2, 4, 8) at which every view's crop keeps >= image_size px a side."""
    if not is_jpeg:
        return 1
    side = min(min(v.crop[2], v.crop[3]) for v in views)
    scale = 1
    while scale < 8 and side // (scale * 2) >= image_size:
        scale *= 2
    return scale


# --------------------------------------------------------------------------------------------- pixel ops
_LUMA = np.array([[19595, 38470, 7471]], np.float32)


def luma_float(img: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L, (19595 R + 38470 G + 7471 B + 2^15) >> 16, as float32 (H, W). Exact: every partial sum
    is an integer below 2^24, and the division is by a power of two."""
    return np.floor((cv2.transform(img.astype(np.float32), _LUMA) + 32768.0) * (1.0 / 65536))


def luma(img: np.ndarray) -> np.ndarray:
    return luma_float(img).astype(np.uint8)


@functools.lru_cache(maxsize=4096)
def _blend_table(base: int, factor: float) -> np.ndarray:
    """PIL's Image.blend(constant `base`, v, factor) for every v in 0..255 (computed by PIL itself)."""
    ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
    return np.frombuffer(Image.blend(Image.new("L", (256, 1), base), ramp, factor).tobytes(), np.uint8).copy()


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return cv2.LUT(img, _blend_table(0, float(factor)))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = int(cv2.mean(luma_float(img))[0] + 0.5)       # ImageStat's mean of the L image, rounded
    return cv2.LUT(img, _blend_table(mean, float(factor)))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """PIL's blend of the image with its grey version: trunc(clip(g + f (v - g))), in float32 as PIL does."""
    g = luma_float(img)[..., None]
    out = img.astype(np.float32)
    out -= g
    out *= np.float32(factor)                     # float32 products and sums, in PIL's order
    out += g
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """Shift the hue byte (0..255 scale) by int(factor * 255), wrapping around, as torchvision does on PIL."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    shift = np.uint8(np.int32(factor * 255) & 0xFF)
    if shift:
        h = hsv[..., 0]
        np.add(h, shift, out=h, casting="unsafe")
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def to_grayscale(img: np.ndarray) -> np.ndarray:
    return np.repeat(luma(img)[..., None], 3, axis=2)


def pil_box_radius(sigma: float, passes: int = 3) -> float:
    """Pillow's extended box radius for a Gaussian of `sigma` made of `passes` boxes (as
    pretrain.gpu_augment.pil_box_radius, in plain floats)."""
    s2 = sigma * sigma / passes
    whole = np.floor((np.sqrt(12.0 * s2 + 1.0) - 1.0) / 2.0)
    return float(whole + (2 * whole + 1) * (whole * (whole + 1) - 3 * s2) / (6 * (s2 - (whole + 1) ** 2)))


def blur_kernel(sigma: float, passes: int = 3) -> np.ndarray:
    """PIL's Gaussian of `sigma`: `passes` extended boxes (1 / (2r + 1) on the 2 floor(r) + 1 central taps, the
    rest split over the two next to them) composed into one 1-D kernel."""
    r = pil_box_radius(sigma, passes)
    whole = int(np.floor(r))
    box = np.full(2 * whole + 3, 1.0 / (2 * r + 1))
    box[0] = box[-1] = (1.0 - (2 * whole + 1) / (2 * r + 1)) / 2
    k = box
    for _ in range(passes - 1):
        k = np.convolve(k, box)
    return k.astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    k = blur_kernel(float(sigma))
    return cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REPLICATE)


def crop_resize(img: np.ndarray, crop: tuple[int, int, int, int], size: int, scale: int = 1) -> np.ndarray:
    """The crop (top, left, height, width) of the full-size image, from `img` decoded at 1/scale, resized to
    size x size. PIL (torchvision's resized_crop) resamples with a triangle filter widened by the shrink
    factor f (variance f^2 / 6); this blurs each shrunk axis with a Gaussian of the missing variance
    (f^2 - 1) / 4 (slightly more than (f^2 - 1) / 6, which measured closer to PIL) and then interpolates
    bilinearly (variance 1 / 6)."""
    i, j, h, w = crop
    fx, fy = w / scale / size, h / scale / size                 # shrink factors in decoded pixels
    if scale == 1:
        patch, i0, j0 = img[i:i + h, j:j + w], i, j
    else:                                                       # the box is fractional at 1/scale
        i0, j0 = int(i / scale), int(j / scale)
        patch = img[i0:int(np.ceil((i + h) / scale)) + 1, j0:int(np.ceil((j + w) / scale)) + 1]
    sx, sy = (np.sqrt(max(f * f - 1.0, 0.0) / 4) for f in (fx, fy))
    if max(sx, sy) > 0.25:
        patch = cv2.GaussianBlur(patch, (0, 0), sigmaX=max(sx, 1e-3), sigmaY=max(sy, 1e-3),
                                 borderType=cv2.BORDER_REPLICATE)
    if scale == 1:
        return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    # output pixel centre x + 0.5 samples the box at j / scale + (x + 0.5) fx, as cv2.resize maps pixel centres
    m = np.array([[fx, 0, j / scale - j0 + 0.5 * fx - 0.5], [0, fy, i / scale - i0 + 0.5 * fy - 0.5]], np.float64)
    return cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_view(img: np.ndarray, p: ViewParams, size: int, scale: int = 1) -> np.ndarray:
    """One view (uint8 RGB H x W x 3 -> size x size x 3) in the reference order: crop, jitter, gray, blur,
    solarisation, flip."""
    out = crop_resize(img, p.crop, size, scale)
    if p.jitter is not None:
        order, *factors = p.jitter
        for k in order:
            out = _JITTER_OPS[k](out, factors[k])
    if p.gray:
        out = to_grayscale(out)
    if p.sigma is not None:
        out = gaussian_blur(out, p.sigma)
    if p.solarize:
        out = cv2.LUT(out, _SOLARIZE)
    if p.flip:
        out = cv2.flip(out, 1)
    return out


# --------------------------------------------------------------------------------------------- decoding
@dataclass
class EncodedImage:
    """An image file read but not decoded: its bytes, full size (width, height) and whether it is a JPEG;
    `pixels`: the RGB array already decoded by PIL (files other than complete JPEGs)."""
    path: str
    data: bytes
    size: tuple[int, int]
    is_jpeg: bool
    pixels: np.ndarray | None = None


def read_encoded(path: str) -> EncodedImage:
    """A JPEG's bytes and header (decoded later, at the scale the views allow); any other file, a CMYK JPEG
    (PIL's own conversion to RGB) and a JPEG without its end marker (truncated) are decoded by PIL here, which
    names the fault of a broken file (OSError)."""
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG" and im.mode in ("RGB", "L") and data.rstrip(b"\0").endswith(b"\xff\xd9"):
            return EncodedImage(path, data, im.size, True)
        pixels = np.asarray(im.convert("RGB"))    # raises for truncated or corrupt data
        return EncodedImage(path, data, im.size, False, pixels)


def decode(enc: EncodedImage, scale: int = 1) -> np.ndarray:
    """RGB uint8 (H, W, 3) at 1/scale (libjpeg's scaling; files other than JPEGs at full size); EXIF
    orientation ignored, as PIL ignores it."""
    if enc.pixels is not None:
        return enc.pixels
    bgr = cv2.imdecode(np.frombuffer(enc.data, np.uint8), _DECODE_FLAGS[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:                               # a JPEG variant OpenCV cannot read: PIL's decoder
        with Image.open(io.BytesIO(enc.data)) as im:
            return np.asarray(im.convert("RGB"))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------- transform
def _chw(view: np.ndarray) -> torch.Tensor:
    """uint8 (3, S, S) tensor view of an (S, S, 3) array (copied only when read-only or flipped)."""
    if not (view.flags.writeable and view.flags.c_contiguous):
        view = np.array(view)
    return torch.from_numpy(view).permute(2, 0, 1)


class FastTwoCrops:
    """`pairs` pairs of views of one EncodedImage (or PIL image / uint8 array), as uint8 (3, S, S) tensors:
    [x1, x2] for pairs=1, [x1, x2, x3, x4] for 2, exactly as `TwoCropsTransform(first, second, pairs=pairs)`
    with `recipes` (first, second; MoCo v2's twice by default). All views' parameters are drawn first (the
    reference order), then the image is decoded once, at the smallest scale all crops allow (`reduce=False`:
    always full size)."""

    def __init__(self, image_size: int = 224, min_scale: float = 0.2, blur: bool = True, pairs: int = 1,
                 reduce: bool = True, recipes: tuple[ViewRecipe, ViewRecipe] = (MOCO_V2, MOCO_V2)):
        if not 0 < min_scale <= 1:
            raise ValueError(f"FastTwoCrops: min_scale must be in (0, 1], got {min_scale}")
        self.image_size, self.min_scale, self.blur = int(image_size), float(min_scale), bool(blur)
        self.pairs, self.reduce, self.recipes = int(pairs), bool(reduce), tuple(recipes)

    def __call__(self, img) -> list[torch.Tensor]:
        if isinstance(img, Image.Image):
            img = np.asarray(img.convert("RGB"))
        width, height = img.size if isinstance(img, EncodedImage) else (img.shape[1], img.shape[0])
        views = [sample_view(height, width, self.min_scale, self.blur, self.recipes[k % 2])
                 for k in range(2 * self.pairs)]
        scale = 1
        if isinstance(img, EncodedImage):
            scale = decode_scale(views, self.image_size, img.is_jpeg) if self.reduce else 1
            full = img.size[0]
            img = decode(img, scale)
            scale = scale if img.shape[1] < full else 1       # PIL's fallback decodes at full size
        return [_chw(apply_view(img, v, self.image_size, scale)) for v in views]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_size={self.image_size}, min_scale={self.min_scale}, "
                f"blur={self.blur}, pairs={self.pairs}, reduce={self.reduce}, recipes={self.recipes})")


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return m, s


def device_views(views, device: torch.device, memory_format, mean: Sequence[float], std: Sequence[float]) -> list:
    """A batch's views on the device: uint8 views (the fast pipeline) become (x / 255 - mean) / std there;
    float views (already normalised) are only moved."""
    out = []
    for x in views:
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        if x.dtype == torch.uint8:
            m, s = _mean_std(torch.device(device), tuple(mean), tuple(std))
            x = x.float().div_(255).sub_(m).div_(s).contiguous(memory_format=memory_format)
        out.append(x)
    return out



class EncodedImageFolder(RobustImageFolder):
    """RobustImageFolder whose items are EncodedImage (read, header checked, not yet decoded): the views decide
    the decoding scale. Unreadable files fail here, named, as in the reference folder (data.on_corrupt)."""

    @staticmethod
    def read_image(path: str) -> EncodedImage:
        try:
            return read_encoded(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
