"""pretrain.generated.shapes: the shapes fill their boxes, outlines are what is painted, the backgrounds."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pretrain.generated import shapes
from pretrain.generated.shapes import SHAPES, draw_shape, random_background


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        draw_shape(Image.new("RGB", (10, 10)), "blob", (1, 1, 5, 5), (255, 0, 0))
    with pytest.raises(ValueError, match="x1 > x0"):
        draw_shape(Image.new("RGB", (10, 10)), "circle", (5, 1, 5, 5), (255, 0, 0))


@pytest.mark.parametrize("shape", SHAPES)
def test_draw_shape_fills_its_box(shape):
    img = Image.new("RGB", (80, 60), (0, 0, 0))
    box = draw_shape(ImageDraw.Draw(img), shape, (10, 5, 61, 45), (255, 255, 255), rotation=10.0)
    assert box == (10.0, 5.0, 61.0, 45.0)
    a = np.asarray(img)[..., 0] > 0
    ys, xs = np.nonzero(a)
    # the painted pixels span the box (within a pixel of rasterisation) and nothing is outside it
    assert abs(xs.min() - 10) <= 1 and abs(xs.max() - 61) <= 1
    assert abs(ys.min() - 5) <= 1 and abs(ys.max() - 45) <= 1
    fill = a.mean() / ((52 * 41) / (80 * 60))
    assert 0.15 < fill < 1.01, fill  # a real filled shape (ring/star/cross are sparser than a square)
    if shape == "ring":
        assert not a[25, 35]  # the hole in the middle


def test_polygon_outline_is_what_draw_shape_fills():
    box, rot = (4.5, 6.0, 50.25, 40.0), -12.0
    for shape in SHAPES:
        if shape in ("circle", "ring"):
            with pytest.raises(ValueError, match="not a polygon shape"):
                shapes.polygon_outline(shape, box)
            continue
        pts = shapes.polygon_outline(shape, box, rot)
        assert pts[:, 0].min() == pytest.approx(4.5) and pts[:, 0].max() == pytest.approx(50.25)
        assert pts[:, 1].min() == pytest.approx(6.0) and pts[:, 1].max() == pytest.approx(40.0)
        a, b = Image.new("RGB", (60, 50)), Image.new("RGB", (60, 50))
        draw_shape(a, shape, box, (255, 255, 255), rotation=rot)
        ImageDraw.Draw(b).polygon([tuple(p) for p in pts.tolist()], fill=(255, 255, 255))
        assert a.tobytes() == b.tobytes()


def test_random_background_deterministic_and_textured():
    a = random_background(np.random.default_rng(7), 50, 30)
    b = random_background(np.random.default_rng(7), 50, 30)
    assert a.size == (50, 30) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    arr = np.asarray(a, dtype=float)
    assert arr.std() > 1.0  # noisy / textured, not flat
    assert np.asarray(random_background(np.random.default_rng(8), 50, 30)).tobytes() != a.tobytes()
    assert np.asarray(random_background(np.random.default_rng(1), 40, 40, bright=True), dtype=float).mean() > \
        np.asarray(random_background(np.random.default_rng(1), 40, 40, bright=False), dtype=float).mean() + 60


def test_plain_background_and_contrast_colour():
    """The embedded images are grey (no per-image colour for two views to agree on), the background has a weak
    texture, and the object differs from it by SHAPE_CONTRAST in brightness, lighter or darker."""
    img, level = shapes.plain_background(np.random.default_rng(3), 40, 30)
    arr = np.asarray(img, dtype=float)
    assert img.size == (40, 30) and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert shapes.LEVEL_RANGE[0] <= level <= shapes.LEVEL_RANGE[1]
    assert abs(arr.mean() / 255 - level) < 0.1 and 1.0 < arr.std() < 0.2 * 255
    assert img.tobytes() == shapes.plain_background(np.random.default_rng(3), 40, 30)[0].tobytes()
    steps = set()
    for i in range(40):
        r, g, b = shapes.contrast_colour(np.random.default_rng(i), 0.5)
        assert r == g == b
        steps.add(round(r / 255 - 0.5, 2))
    assert steps == {-shapes.SHAPE_CONTRAST, shapes.SHAPE_CONTRAST}


def test_scatter_objects_keeps_boxes_apart_and_inside():
    """Boxes stay inside the image at 0.01 px and overlap no earlier box; an object whose tries all overlap is
    left out, and the painter sees each accepted box once, in order."""
    painted = []

    def paint(rng, box):
        painted.append(box)
        return {"box": box, "n": len(painted)}

    objects = shapes.scatter_objects(np.random.default_rng(0), (100, 80), 30, lambda rng: (30.0, 25.0), 5, paint)
    assert 1 < len(objects) < 30 and [o["box"] for o in objects] == painted
    assert [o["n"] for o in objects] == list(range(1, len(objects) + 1))
    for j, o in enumerate(objects):
        x0, y0, x1, y1 = o["box"]
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 80 and all(round(v, 2) == v for v in o["box"])
        assert all(shapes.iou(o["box"], p["box"]) <= 0.05 for p in objects[:j])
    assert shapes.scatter_objects(np.random.default_rng(0), (100, 80), 3, lambda rng: (100.0, 80.0), 9, paint) \
        == [{"box": (0.0, 0.0, 100.0, 80.0), "n": len(painted)}]


def test_flat_outline_is_clipped_and_rounded():
    poly = shapes.flat_outline("square", (-5.123, 10.0, 30.0, 90.0), 0.0, (40, 60))
    assert poly == [0.0, 10.0, 30.0, 10.0, 30.0, 60.0, 0.0, 60.0]
    ring = shapes.flat_outline("ring", (2.0, 3.0, 22.0, 33.0), 0.0, (40, 60))
    assert len(ring) == 2 * len(shapes.shape_outline("ring", (2.0, 3.0, 22.0, 33.0)))
    assert all(round(v, 2) == v for v in ring)
