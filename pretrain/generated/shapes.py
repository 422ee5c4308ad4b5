"""The shape generator every generated dataset draws with: eight shapes painted so that their tight box is
a given box, their outlines as polygons, the backgrounds, and the boxes and annotations of painted objects.

The embedded classification set (`embedded`), its detection twin (`embedded_detection`) and the rehearsal trees
(`rehearsal`) all paint with `draw_shape`; the detection sets place objects with `scatter_objects`.
"""
from __future__ import annotations

import colorsys
import math
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw
from . import GeneratedDataError

# The classes of the embedded sets, in label order (ImageFolder sorts class folders by name).
SHAPES: tuple[str, ...] = ("circle", "cross", "diamond", "hexagon", "ring", "square", "star", "triangle")
ELLIPSE_POINTS = 32             # vertices of the polygon that annotates a circle or a ring

Box = tuple[float, float, float, float]
Colour = tuple[int, int, int]


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.arange(2 * points) * math.pi / points - math.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _regular(n: int, phase: float) -> np.ndarray:
    angles = np.arange(n) * 2 * math.pi / n + phase
    return np.stack([np.cos(angles), np.sin(angles)], 1)


# Polygon outlines in an arbitrary frame; they are rotated, then scaled to fill the requested box exactly.
_OUTLINES = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
    "diamond": np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float),
    "triangle": np.array([[0, -1], [1, 1], [-1, 1]], float),
    "hexagon": _regular(6, 0.0),
    "star": _star(5, 0.45),
    "cross": np.array([[-1, -.33], [-.33, -.33], [-.33, -1], [.33, -1], [.33, -.33], [1, -.33],
                       [1, .33], [.33, .33], [.33, 1], [-.33, 1], [-.33, .33], [-1, .33]], float),
}


def draw_shape(target: Union[Image.Image, ImageDraw.ImageDraw], shape: str, box: Sequence[float],
               colour: Sequence[int], rotation: float = 0.0, ring_width: float = 0.25) -> Box:
    """Paint one filled `shape` so that its tight bounding box is `box`.

    Args:
        target: a PIL RGB `Image` (drawn on in place) or an `ImageDraw.Draw` of one.
        shape: one of `SHAPES` ("circle", "cross", "diamond", "hexagon", "ring", "square", "star",
            "triangle").
        box: (x0, y0, x1, y1) in pixels, x1 > x0, y1 > y0 (PIL convention: the shape covers
            [x0, x1] x [y0, y1]); may extend beyond the image (the shape is clipped).
        colour: (r, g, b) integers 0..255.
        rotation: degrees, counter-clockwise, applied to polygon shapes *before* they are stretched to
            the box (so the box stays tight); ignored for "circle" and "ring" (ellipses, axis-aligned).
        ring_width: for "ring", the thickness as a fraction of the smaller box side.

    Returns:
        the box as floats (x0, y0, x1, y1): the object's ground-truth box (before clipping to the image).
    """
    if shape not in SHAPES:
        raise GeneratedDataError(f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise GeneratedDataError(f"draw_shape: box {tuple(box)} must have x1 > x0 and y1 > y0")
    draw = ImageDraw.Draw(target) if isinstance(target, Image.Image) else target
    fill = tuple(int(c) for c in colour)
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "ring":
        # PIL paints an ellipse outline of width t as the band between the box and the box inset by t
        t = max(1, int(round(ring_width * min(x1 - x0, y1 - y0))))
        draw.ellipse([x0, y0, x1, y1], outline=fill, width=t)
    else:
        draw.polygon([(float(px), float(py)) for px, py in polygon_outline(shape, (x0, y0, x1, y1), rotation)],
                     fill=fill)
    return (x0, y0, x1, y1)


def polygon_outline(shape: str, box: Sequence[float], rotation: float = 0.0) -> np.ndarray:
    """The vertices (K, 2) of the polygon `draw_shape` paints for a polygon shape (every shape but "circle"
    and "ring"): the shape's outline rotated by `rotation` degrees, then stretched to fill `box` exactly."""
    if shape not in _OUTLINES:
        raise GeneratedDataError(f"'{shape}' is not a polygon shape (polygon shapes: {', '.join(sorted(_OUTLINES))})")
    x0, y0, x1, y1 = (float(v) for v in box)
    a = math.radians(rotation)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # image y axis points down
    pts = _OUTLINES[shape] @ rot.T
    lo, hi = pts.min(0), pts.max(0)
    unit = (pts - lo) / (hi - lo)
    return np.stack([x0 + unit[:, 0] * (x1 - x0), y0 + unit[:, 1] * (y1 - y0)], 1)


def random_colour(rng: np.random.Generator, dark: bool | None = None) -> Colour:
    """A saturated random colour as (r, g, b) ints; `dark` picks a low (True) or high (False) brightness."""
    dark = bool(rng.random() < 0.5) if dark is None else dark
    h = rng.random()
    s = rng.uniform(0.55, 1.0)
    v = rng.uniform(0.15, 0.4) if dark else rng.uniform(0.75, 1.0)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Values in [0, 1]: a `cells` x `cells` random grid bilinearly upsampled to h x w."""
    grid = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, h)
    xs = np.linspace(0, cells, w)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)


def random_background(rng: np.random.Generator, w: int, h: int, bright: bool | None = None) -> Image.Image:
    """A random textured RGB background of size w x h (a new PIL Image).

    Args:
        rng: a `numpy.random.Generator` (all randomness comes from it, so a seeded one is reproducible).
        w, h: width and height in pixels.
        bright: True for a light background, False for a dark one, None to choose at random. Shapes
            drawn with `random_colour(rng, dark=bright)` then contrast with it.

    The texture is one of: smooth blotches, stripes at a random angle and frequency, or a checkerboard,
    between two random low-saturation colours, plus per-pixel Gaussian noise.
    """
    bright = bool(rng.random() < 0.5) if bright is None else bright
    kind = int(rng.integers(3))
    if kind == 0:
        t = smooth_noise(rng, w, h, int(rng.integers(2, 6)))
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(4.0, 16.0) * max(w, h) / 64.0
        yy, xx = np.mgrid[0:h, 0:w]
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period
                               + rng.uniform(0, 2 * math.pi))
    else:
        cell = max(2, int(rng.integers(4, 12) * max(w, h) / 64))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((xx + int(rng.integers(cell))) // cell + (yy + int(rng.integers(cell))) // cell) % 2).astype(float)
    # two colours of similar brightness (on the bright or the dark side), low saturation
    level = (0.6, 0.95) if bright else (0.05, 0.4)
    cols = []
    for _ in range(2):
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(*level))
        cols.append(np.array(rgb))
    img = cols[0][None, None, :] * (1 - t[..., None]) + cols[1][None, None, :] * t[..., None]
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.06), size=img.shape)
    return Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")


# The grey look shared by the embedded classification and detection sets (see pretrain.generated.embedded).
LEVEL_RANGE = (0.3, 0.7)         # background brightness (0..1)
TEXTURE_CONTRAST = 0.2           # peak-to-peak amplitude of the smooth background texture
NOISE_STD = 0.03                 # per-pixel Gaussian noise
SHAPE_CONTRAST = 0.35            # brightness step between object and background


def plain_background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, float]:
    """A grey low-contrast background of size w x h and its brightness level in [0, 1]: smooth random blotches
    (TEXTURE_CONTRAST peak to peak) around a random level in LEVEL_RANGE, plus pixel noise. Paint objects on
    it with `contrast_colour(rng, level)`. Grey on purpose: see pretrain.generated.embedded."""
    level = float(rng.uniform(*LEVEL_RANGE))
    t = smooth_noise(rng, w, h, int(rng.integers(2, 5)))
    grey = level + TEXTURE_CONTRAST * (t - 0.5) + rng.normal(0.0, NOISE_STD, size=(h, w))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB"), level


def contrast_colour(rng: np.random.Generator, level: float) -> Colour:
    """The grey (r, g, b) ints of an object SHAPE_CONTRAST lighter or darker (at random) than a background of
    brightness `level`."""
    step = SHAPE_CONTRAST if rng.random() < 0.5 else -SHAPE_CONTRAST
    v = int(round(float(np.clip(level + step, 0.0, 1.0)) * 255))
    return (v, v, v)


def shape_outline(shape: str, box: Sequence[float], rotation: float = 0.0, ring_width: float = 0.25) -> np.ndarray:
    """The vertices (K, 2) of what `draw_shape(img, shape, box, ..., rotation, ring_width)` paints: the polygon
    of a polygon shape, an ellipse of ELLIPSE_POINTS vertices for a circle, and for a ring one "keyhole" polygon
    (outer ellipse, a zero-width cut, the inner ellipse backwards), which rasterises to the ring."""
    if shape not in ("circle", "ring"):
        return polygon_outline(shape, box, rotation)
    x0, y0, x1, y1 = (float(v) for v in box)
    t = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    outer = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    if shape == "circle":
        return outer
    w = max(1, int(round(ring_width * min(x1 - x0, y1 - y0))))
    inner = np.stack([cx + max(rx - w, 0.5) * np.cos(t), cy + max(ry - w, 0.5) * np.sin(t)], 1)
    return np.concatenate([outer, outer[:1], inner[:1], inner[::-1], inner[:1]], 0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def flat_outline(shape: str, box: Sequence[float], rotation: float, size: tuple[int, int]) -> list[float]:
    """`shape_outline(shape, box, rotation)` clipped to an image of `size` (w, h), as a flat [x0, y0, x1, y1, ...]
    list rounded to 0.01 px."""
    return [round(float(v), 2) for v in np.clip(shape_outline(shape, box, rotation), 0, size).reshape(-1)]


def scatter_objects(rng: np.random.Generator, size: tuple[int, int], count: int, box_size: Callable,
                    attempts: int, paint: Callable) -> list[dict]:
    """Up to `count` objects in an image of `size` (w, h) whose boxes overlap no earlier one's by an IoU over 0.05.

    Each object tries up to `attempts` boxes, a width and height `box_size(rng)` placed uniformly inside the image
    with corners rounded to 0.01 px (exact in VOC and COCO files), and is left out when none fits; the first that
    fits goes to `paint(rng, box)`, which draws the object and returns its dict (holding the box as "box")."""
    objects: list[dict] = []
    for _ in range(count):
        for _attempt in range(attempts):
            bw, bh = box_size(rng)
            x0, y0 = rng.uniform(0, size[0] - bw), rng.uniform(0, size[1] - bh)
            box = tuple(round(v, 2) for v in (x0, y0, x0 + bw, y0 + bh))
            if all(iou(box, o["box"]) <= 0.05 for o in objects):
                objects.append(paint(rng, box))
                break
    return objects


def polygon_area(poly: Sequence[float]) -> float:
    """The area of a flat [x0, y0, x1, y1, ...] polygon (shoelace formula)."""
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def voc_annotation(image_id: str, size: tuple[int, int], objects: Sequence[tuple[str, Sequence[float], bool]],
                   database: str) -> str:
    """A Pascal VOC annotation of objects (name, float box, difficult): boxes as 1-based inclusive integer pixel
    coordinates inside the image."""
    w, h = size
    parts = [f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             f"\t<source><database>{database}</database></source>\n"
             f"\t<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n\t<segmented>0</segmented>\n"]
    for name, (x0, y0, x1, y1), difficult in objects:
        b = (max(1, math.floor(x0) + 1), max(1, math.floor(y0) + 1), min(w, math.ceil(x1)), min(h, math.ceil(y1)))
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(difficult)}</difficult>\n"
                     f"\t\t<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
                     f"</bndbox>\n\t</object>\n")
    return "".join(parts) + "</annotation>\n"
