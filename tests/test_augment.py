"""pretrain.augment: the reference PIL/torchvision MoCo v2 views and evaluation transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pretrain.augment import (IMAGENET_MEAN, IMAGENET_STD, PILGaussianBlur, TwoCropsTransform, eval_resize_size,
                              eval_transform, linear_train_transform, moco_v2_transform)


def textured(w=80, h=60, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 / w, yy * 255 / h, 128 + 60 * np.sin(xx / 3.0)], -1) + rng.normal(0, 10, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("size,blur", [(224, True), (64, True), (32, False)])
def test_moco_view_shapes_and_modes(size, blur):
    tf = moco_v2_transform(size, blur=blur)
    assert any(isinstance(t, T.RandomApply) and isinstance(t.transforms[0], PILGaussianBlur)
               for t in tf.transforms) == blur
    for mode in ("RGB", "L", "RGBA", "P"):
        x = tf(textured().convert(mode))
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert torch.isfinite(x).all()


def test_moco_components_match_recipe():
    tf = moco_v2_transform(96, min_scale=0.3)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["ToRGB", "RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply",
                     "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop, jit, gray, blur = tf.transforms[1], tf.transforms[2], tf.transforms[3], tf.transforms[4]
    assert crop.size == (96, 96) and crop.scale == (0.3, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
    cj = jit.transforms[0]
    assert jit.p == 0.8 and cj.brightness == pytest.approx((0.6, 1.4)) and cj.hue == pytest.approx((-0.1, 0.1))
    assert cj.contrast == pytest.approx((0.6, 1.4)) and cj.saturation == pytest.approx((0.6, 1.4))
    assert gray.p == 0.2 and blur.p == 0.5 and blur.transforms[0].sigma == (0.1, 2.0)
    assert tf.transforms[-1].mean == list(IMAGENET_MEAN) and tf.transforms[-1].std == list(IMAGENET_STD)
    with pytest.raises(ValueError, match="min_scale"):
        moco_v2_transform(32, min_scale=0.0)
    with pytest.raises(ValueError, match="std"):
        moco_v2_transform(32, std=(0.2, 0.0, 0.2))


def test_normalisation_values():
    grey = Image.new("RGB", (50, 40), (128, 64, 200))
    x = eval_transform(32)(grey)
    expect = (torch.tensor([128, 64, 200]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x, expect[:, None, None].expand(3, 32, 32), atol=1e-6)
    y = linear_train_transform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(grey)
    assert torch.allclose(y, (torch.tensor([128, 64, 200]) / 255 * 2 - 1)[:, None, None].expand(3, 32, 32), atol=1e-6)


def test_two_crops_differ_and_are_reproducible():
    tf = TwoCropsTransform(moco_v2_transform(64))
    img = textured()
    torch.manual_seed(0)
    q, k = tf(img)
    assert q.shape == k.shape == (3, 64, 64)
    assert (q - k).abs().mean() > 0.05
    torch.manual_seed(0)
    q2, k2 = tf(img)
    assert torch.equal(q, q2) and torch.equal(k, k2)
    two = TwoCropsTransform(eval_transform(32), eval_transform(16))
    a, b = two(img)
    assert a.shape == (3, 32, 32) and b.shape == (3, 16, 16)


def test_two_pairs_are_four_independent_views():
    """pairs=2 (the asymmetric x2 loss): four views, the first pair exactly the one pairs=1 draws."""
    img = textured()
    torch.manual_seed(0)
    one = TwoCropsTransform(moco_v2_transform(64))(img)
    torch.manual_seed(0)
    four = TwoCropsTransform(moco_v2_transform(64), pairs=2)(img)
    assert len(four) == 4 and torch.equal(four[0], one[0]) and torch.equal(four[1], one[1])
    assert min((four[i] - four[j]).abs().mean() for i in range(4) for j in range(i)) > 0.05


def test_eval_transform_deterministic_and_sizes():
    assert eval_resize_size(224) == 256 and eval_resize_size(32) == 36 and eval_resize_size(64) == 73
    assert eval_resize_size(32, crop_fraction=1.0) == 32
    tf = eval_transform(224)
    assert [type(t).__name__ for t in tf.transforms] == ["ToRGB", "Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert tf.transforms[1].size == 256 and tf.transforms[2].size == (224, 224)
    img = textured(100, 70)
    a, b = tf(img), tf(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b)
    # crop_fraction=1 on an image already at the target size only converts and normalises
    small = textured(32, 32)
    x = eval_transform(32, mean=(0, 0, 0), std=(1, 1, 1), crop_fraction=1.0)(small)
    assert torch.allclose(x, T.functional.to_tensor(small))


def test_linear_train_transform_random_crop_and_flip():
    tf = linear_train_transform(32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["ToRGB", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert tf.transforms[1].scale == (0.08, 1.0)
    torch.manual_seed(1)
    outs = [tf(textured()) for _ in range(4)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_grayscale_and_jitter_rates():
    # over 600 views of a colourful image: ~20% grey (channels equal) and ~80% colour-jittered
    tf = moco_v2_transform(16, min_scale=1.0, blur=False, mean=(0, 0, 0), std=(1, 1, 1))
    img = Image.new("RGB", (16, 16), (200, 80, 40))
    torch.manual_seed(0)
    n, grey, changed = 600, 0, 0
    for _ in range(n):
        x = tf(img)
        is_grey = torch.allclose(x[0], x[1], atol=1e-6) and torch.allclose(x[1], x[2], atol=1e-6)
        grey += is_grey
        changed += not torch.allclose(x, T.functional.to_tensor(img), atol=1e-6) and not is_grey
    sd = (0.2 * 0.8 / n) ** 0.5
    assert abs(grey / n - 0.2) < 4.5 * sd
    # not grey and changed by jitter: 0.8 * 0.8
    assert abs(changed / n - 0.64) < 4.5 * (0.64 * 0.36 / n) ** 0.5


def test_pil_blur_spreads_a_delta():
    a = np.zeros((41, 41, 3), np.uint8)
    a[20, 20] = 255
    img = Image.fromarray(a)
    blur = PILGaussianBlur((2.0, 2.0))
    out = np.asarray(blur(img), dtype=float)[..., 0]
    assert out[20, 20] < 255 and out.sum() == pytest.approx(255, rel=0.15)
    xs = np.arange(41) - 20
    var = (out.sum(0) * xs ** 2).sum() / out.sum()
    assert 2.0 < var < 6.0  # PIL's box-filter approximation of sigma=2 (variance 4)
    with pytest.raises(ValueError, match="sigma"):
        PILGaussianBlur((0.0, 1.0))
