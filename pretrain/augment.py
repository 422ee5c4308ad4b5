"""Reference (PIL / torchvision) augmentations: the MoCo v2 pretraining views and the evaluation transforms.

- `moco_v2_transform`: RandomResizedCrop(scale=(min_scale, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8
  -> RandomGrayscale(p=0.2) -> Gaussian blur with sigma ~ U[0.1, 2.0] with p=0.5 (PIL ImageFilter, as in the
  official code) -> horizontal flip -> ToTensor -> Normalize. `blur=False` drops the blur (CIFAR recipe).
  Another `ViewRecipe` sets the jitter strengths and the probabilities, and adds a solarisation (threshold 128)
  after the blur: `AUGMENTATIONS` names the two views of each (data.augmentation): "moco_v2", the same view
  twice (SimSiam's), "byol", BYOL's asymmetric views (Grill et al. 2020, Table 6: jitter 0.4, 0.4, 0.2,
  0.1; blur with p 1.0 and 0.1; solarisation with p 0 and 0.2), and "simclr", SimCLR's view twice (Chen et al.
  2020, App. A: colour distortion of strength 1, jitter 0.8, 0.8, 0.8, 0.2; blur with p 0.5), which SwAV uses too.
- `TwoCropsTransform`: two independent views of one image, as a list [query, key].
- `eval_transform`: Resize(image_size * 256/224) + CenterCrop(image_size) (+ ToTensor + Normalize).
- `linear_train_transform`: RandomResizedCrop(image_size) + flip (+ ToTensor + Normalize), the official
  linear-evaluation training transform.

Every transform accepts PIL images of any mode (converted to RGB first). All randomness comes from
torch's generator, so seeding torch (per loader worker) makes the views reproducible.
The batched GPU version of the pretraining views is `pretrain.gpu_augment.GPUMoCoV2Augment`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

JITTER = (0.4, 0.4, 0.4, 0.1)    # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR = 0.8, 0.2, 0.5
BLUR_SIGMA = (0.1, 2.0)
CROP_RATIO = (3 / 4, 4 / 3)
SOLARIZE_THRESHOLD = 128


@dataclass(frozen=True)
class ViewRecipe:
    """One pretraining view's colour jitter strengths and the probabilities of its random ops."""
    jitter: tuple[float, float, float, float] = JITTER
    p_jitter: float = P_JITTER
    p_gray: float = P_GRAY
    p_blur: float = P_BLUR
    p_solarize: float = 0.0


MOCO_V2 = ViewRecipe()
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
_SIMCLR = ViewRecipe((0.8, 0.8, 0.8, 0.2))     # colour distortion of strength 1 (SimCLR App. A, data_util.py)
AUGMENTATIONS = {"moco_v2": (MOCO_V2, MOCO_V2),
                 "byol": (ViewRecipe(_BYOL_JITTER, p_blur=1.0), ViewRecipe(_BYOL_JITTER, p_blur=0.1, p_solarize=0.2)),
                 "simclr": (_SIMCLR, _SIMCLR)}


def view_recipes(name: str) -> tuple[ViewRecipe, ViewRecipe]:
    """The two views of data.augmentation `name` (ValueError naming the known ones)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"data.augmentation: '{name}' is not one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]


class ToRGB:
    """Convert a PIL image of any mode (L, P, RGBA, CMYK, ...) to RGB; RGB images pass unchanged."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PILGaussianBlur:
    """Blur a PIL image with `ImageFilter.GaussianBlur(radius=sigma)`, sigma ~ U[sigma_min, sigma_max]
    drawn from torch's random generator (the MoCo v2 blur)."""

    def __init__(self, sigma: Sequence[float] = BLUR_SIGMA):
        lo, hi = float(sigma[0]), float(sigma[1])
        if not 0 < lo <= hi:
            raise ValueError(f"PILGaussianBlur: need 0 < sigma_min <= sigma_max, got {tuple(sigma)}")
        self.sigma = (lo, hi)

    def __call__(self, img: Image.Image) -> Image.Image:
        s = torch.empty(()).uniform_(self.sigma[0], self.sigma[1]).item()
        return img.filter(ImageFilter.GaussianBlur(radius=s))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


def _finish(mean: Sequence[float], std: Sequence[float]) -> list:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean/std must be 3 values each with std > 0, got mean={tuple(mean)} std={tuple(std)}")
    return [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]


def moco_v2_transform(image_size: int = 224, min_scale: float = 0.2, blur: bool = True,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      recipe: ViewRecipe = MOCO_V2) -> T.Compose:
    """One MoCo v2 / SimSiam view (or another `recipe`'s): PIL image -> normalised float tensor (3, image_size,
    image_size)."""
    if not 0 < min_scale <= 1:
        raise ValueError(f"moco_v2_transform: min_scale must be in (0, 1], got {min_scale}")
    steps: list[Callable] = [
        ToRGB(),
        T.RandomResizedCrop(image_size, scale=(min_scale, 1.0), ratio=CROP_RATIO),
        T.RandomApply([T.ColorJitter(*recipe.jitter)], p=recipe.p_jitter),
        T.RandomGrayscale(p=recipe.p_gray),
    ]
    if blur:
        steps.append(T.RandomApply([PILGaussianBlur(BLUR_SIGMA)], p=recipe.p_blur))
    if recipe.p_solarize > 0:
        steps.append(T.RandomSolarize(SOLARIZE_THRESHOLD, p=recipe.p_solarize))
    steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + _finish(mean, std))


class TwoCropsTransform:
    """Two views of one image: [base(x), base(x)] (or [base(x), second(x)] when `second` is given); `pairs`
    > 1 draws that many independent pairs, [x1, x2, x3, x4, ...] (the asymmetric x2 loss uses two)."""

    def __init__(self, base: Callable, second: Callable | None = None, pairs: int = 1):
        self.base = base
        self.second = base if second is None else second
        self.pairs = int(pairs)

    def __call__(self, x):
        if self.pairs == 1:
            return [self.base(x), self.second(x)]
        return [view for _ in range(self.pairs) for view in (self.base(x), self.second(x))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self.base!r}, second={'same' if self.second is self.base else self.second!r})"


SMALL_IMAGE_SIDE = 64                # images up to this side (CIFAR, the embedded data) are evaluated whole


def eval_crop_fraction(image_size: int) -> float:
    """The evaluation view's crop fraction: 1.0 (the whole image) for small images (<= 64 px, as the CIFAR kNN
    monitor does), else 224/256 (Resize 256 + CenterCrop 224 at ImageNet scale). Every stage uses this rule."""
    return 1.0 if image_size <= SMALL_IMAGE_SIDE else 224 / 256


def eval_resize_size(image_size: int, crop_fraction: float = 224 / 256) -> int:
    """The Resize side before CenterCrop(image_size): int(image_size / crop_fraction) (256 for 224)."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return int(round(image_size / crop_fraction, 6))


def eval_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, crop_fraction: float = 224 / 256) -> T.Compose:
    """Deterministic evaluation view: Resize(int(image_size*256/224)) -> CenterCrop(image_size) -> tensor.

    `crop_fraction=1.0` keeps the whole image (Resize(image_size) + CenterCrop), e.g. for 32 px CIFAR images.
    """
    return T.Compose([ToRGB(), T.Resize(eval_resize_size(image_size, crop_fraction)), T.CenterCrop(image_size)]
                     + _finish(mean, std))


def linear_train_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """Official linear-evaluation training view: RandomResizedCrop(image_size) (default scale 0.08-1)
    -> RandomHorizontalFlip -> tensor."""
    return T.Compose([ToRGB(), T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + _finish(mean, std))
