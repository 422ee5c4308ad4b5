"""The embedded default dataset: one large shape per image, on a low-contrast textured background.

It makes every command runnable on a fresh machine without a download. The images are generated
deterministically (one seeded random stream per image), so the same call writes the same bytes on
every machine, and are written as a torchvision ImageFolder tree:

    <root>/train/<shape>/0000.png ...      <root>/val/<shape>/0000.png ...      <root>/dataset.json

Each class is one shape (see `SHAPES`); only the shape identifies the class. Everything else is a nuisance
drawn independently of the class: position (near the centre), size, aspect, small rotation, brightness,
whether the shape is lighter or darker than the background, the background texture and pixel noise. The
images are grey: what SimSiam's augmentations (crop, colour jitter, grayscale, blur, flip) leave shared between
two views of one image is then mostly the shape, so a self-supervised network has to learn it.

Why it looks like this (ResNet-18, 8 classes, kNN k=20 on frozen features, 50-100 images per class): the
first version drew small saturated shapes (on average 34 % of the image) anywhere on coloured, textured
backgrounds. A random crop (scale 0.2-1) kept 90 % of the shape only 37 % of the time, and the shape and
background colours survive the colour jitter (hue +-0.1), so colour was what two views agreed on: kNN stayed
at chance (15 % at random init, 11-18 % after 48-240 SimSiam steps, at 32 and 64 px, base lr 0.06-1.6), while
random-init features told bright from dark backgrounds at 100 %. Large centred shapes alone did not help
(12-15 %). Removing colour did: grey images learn (14 -> 22 % after 120 steps, 29 % after 360 at 32 px),
and a random tint of saturation up to 0.1 or 0.3 on the same images brought back the colour shortcut
(15-19 % and 14-15 %). Moving the shapes further (centres within +-20-30 % of the side) takes the kNN of a
random ResNet-18 with torchvision's init (every BN weight 1) from about 43 % down to 20-28 %, but 375 SimSiam
steps from that init then reach only 17-22 %: a short pretraining does not learn that much translation.
Raw pixels (mean-centred, cosine kNN at 32 px) reach 58 % (k=20) and 52 % (k=200) on this data, ahead of
both the random network (43 / 19 %) and 750 SimSiam steps from it (39 / 32 %): the large centred shapes are
template-separable. Widening a nuisance lowers the random network but also what 750 steps reach (seed 0,
k=20 / k=200, random -> SimSiam): sides 0.3-0.9 of the image 28 / 18 -> 33 / 23; shape contrast 0.2 on a
texture of 0.35 30 / 16 -> 26 / 26; centres +-22 % with sides 0.4-0.7 30 / 19 -> 21 / 18; and 400 images
per class instead of 100 (same steps) gives 34 / 24 after pretraining, below the 100-image set. From the
official init (the last BN of every residual block zeroed) the random ResNet-18 is at chance on this data (kNN
k=20 13.3 %, linear 14.2 %), and the demo's 750 steps from it reach 35.8 % and 36.7 % (README).

The drawing helpers `random_background`, `random_colour`, `draw_shape` (and `polygon_outline`, the exact
vertices `draw_shape` fills) are public, and so are `plain_background` and `contrast_colour`, which paint
the background and object colours of this dataset: the detection-data generator reuses them to paint
objects with known boxes (and polygons) into larger images.

Command line: `simsiam make-data OUT [--size 64] [--train-per-class 100] [--val-per-class 30] [--seed 0]`
(or `python -m pretrain.synthetic OUT ...`).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

# The classes, in label order (ImageFolder sorts class folders by name; this order is the drawing order).
SHAPES: tuple[str, ...] = ("circle", "cross", "diamond", "hexagon", "ring", "square", "star", "triangle")

VERSION = 2                      # bump when the generated content changes; part of the cache folder name
DEFAULT_SIZE = 64
DEFAULT_TRAIN_PER_CLASS = 100
DEFAULT_VAL_PER_CLASS = 30
DEFAULT_SEED = 0
MARKER = "dataset.json"          # written last inside the tree: its presence means "complete"

Box = tuple[float, float, float, float]
Colour = tuple[int, int, int]
_SPLIT_IDS = {"train": 0, "val": 1}

# ---------------------------------------------------------------------------------------------------
# Drawing helpers (public: reused by transfer/tooling/synthetic_det.py)
# ---------------------------------------------------------------------------------------------------


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
        raise ValueError(f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"draw_shape: box {tuple(box)} must have x1 > x0 and y1 > y0")
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
        raise ValueError(f"'{shape}' is not a polygon shape (polygon shapes: {', '.join(sorted(_OUTLINES))})")
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


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
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
        t = _smooth_noise(rng, w, h, int(rng.integers(2, 6)))
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


# Nuisance ranges of the embedded data (see the module docstring).
LEVEL_RANGE = (0.3, 0.7)         # background brightness (0..1)
TEXTURE_CONTRAST = 0.2           # peak-to-peak amplitude of the smooth background texture
NOISE_STD = 0.03                 # per-pixel Gaussian noise
SHAPE_CONTRAST = 0.35            # brightness step between object and background
SIDE_RANGE = (0.5, 0.85)         # object side as a fraction of the image side
CENTRE_JITTER = 0.12             # object centre: image centre +- this fraction of the side


def plain_background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, float]:
    """A grey low-contrast background of size w x h and its brightness level in [0, 1]: smooth random blotches
    (TEXTURE_CONTRAST peak to peak) around a random level in LEVEL_RANGE, plus pixel noise. Paint objects on
    it with `contrast_colour(rng, level)`. Grey on purpose: see the module docstring."""
    level = float(rng.uniform(*LEVEL_RANGE))
    t = _smooth_noise(rng, w, h, int(rng.integers(2, 5)))
    grey = level + TEXTURE_CONTRAST * (t - 0.5) + rng.normal(0.0, NOISE_STD, size=(h, w))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB"), level


def contrast_colour(rng: np.random.Generator, level: float) -> Colour:
    """The grey (r, g, b) ints of an object SHAPE_CONTRAST lighter or darker (at random) than a background of
    brightness `level`."""
    step = SHAPE_CONTRAST if rng.random() < 0.5 else -SHAPE_CONTRAST
    v = int(round(float(np.clip(level + step, 0.0, 1.0)) * 255))
    return (v, v, v)


def render_example(rng: np.random.Generator, shape: str, size: int = DEFAULT_SIZE) -> tuple[Image.Image, Box]:
    """One classification image: `shape`, large and near the centre (so that SimSiam's random crops keep
    most of it), at a random scale/aspect/rotation/brightness on a `plain_background`. Returns (image, box)."""
    img, level = plain_background(rng, size, size)
    side = rng.uniform(*SIDE_RANGE) * size
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
    cx, cy = (size / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * size for _ in range(2))
    rotation = rng.uniform(-15.0, 15.0)
    box = draw_shape(img, shape, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), contrast_colour(rng, level),
                     rotation=rotation)
    return img, box


# ---------------------------------------------------------------------------------------------------
# Writing the ImageFolder tree
# ---------------------------------------------------------------------------------------------------


def _params(n_train_per_class: int, n_val_per_class: int, size: int, seed: int) -> dict:
    return {"format": "simsiam-suite/embedded-shapes", "version": VERSION, "classes": list(SHAPES),
            "size": int(size), "train_per_class": int(n_train_per_class), "val_per_class": int(n_val_per_class),
            "seed": int(seed)}


def write_imagefolder(out_dir: Union[str, Path], n_train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                      n_val_per_class: int = DEFAULT_VAL_PER_CLASS, size: int = DEFAULT_SIZE,
                      seed: int = DEFAULT_SEED) -> Path:
    """Write <out_dir>/{train,val}/<shape>/NNNN.png and <out_dir>/dataset.json (written last); return out_dir.

    Image `i` of class `c` in split `s` is drawn from `numpy.random.default_rng([seed, s, c, i])`, so each
    image is independent of the counts and of the order of generation. PNG (lossless) keeps bytes identical.
    """
    for name, v, lo in (("n_train_per_class", n_train_per_class, 1), ("n_val_per_class", n_val_per_class, 0),
                        ("size", size, 16)):
        if int(v) != v or v < lo:
            raise ValueError(f"write_imagefolder: {name} must be an integer >= {lo}, got {v!r}")
    out = Path(out_dir).expanduser()
    for split, n in (("train", n_train_per_class), ("val", n_val_per_class)):
        for c, shape in enumerate(SHAPES):
            folder = out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLIT_IDS[split], c, i])
                img, _ = render_example(rng, shape, size)
                img.save(folder / f"{i:04d}.png", format="PNG", optimize=False, compress_level=6)
    (out / MARKER).write_text(json.dumps(_params(n_train_per_class, n_val_per_class, size, seed), indent=1) + "\n")
    return out


def read_marker(root: Union[str, Path]) -> dict | None:
    """The parameters a complete tree was written with, or None when `root` holds no complete tree."""
    p = Path(root) / MARKER
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict) -> bool:
    if read_marker(root) != params:
        return False
    for split, key in (("train", "train_per_class"), ("val", "val_per_class")):
        for shape in SHAPES:
            d = root / split / shape
            if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != params[key]:
                return False
    return True


def publish_tree(target: Path, write: Callable[[Path], object], is_complete: Callable[[], bool]) -> None:
    """write(tmp) into a temporary sibling folder, then rename it to `target`, so that a reader (or a
    concurrent process) never sees a partial tree. The first complete tree wins: if another process put a
    complete tree (is_complete()) in place while we were writing, ours is discarded, because that process
    may already be reading it. Only a damaged `target` is moved aside and deleted before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if is_complete():  # a concurrent writer finished first; its readers must never see it vanish
            return
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            try:
                os.replace(target, trash / "tree")  # rename is atomic; deleting can then take its time
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete():  # a concurrent process won the rename with the same data
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_atomically(target: Union[str, Path], n_train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
                     n_val_per_class: int = DEFAULT_VAL_PER_CLASS, size: int = DEFAULT_SIZE,
                     seed: int = DEFAULT_SEED, replace: bool = False) -> Path:
    """Make `target` hold a complete tree with these parameters, generating it in a temporary sibling
    folder and renaming it into place, so a reader (or a concurrent process) never sees a partial tree.

    A complete tree with the same parameters is reused as is. An existing `target` that is not such a
    tree is an error unless `replace` is True and it is one of our trees (has a dataset.json marker).
    """
    target = Path(target).expanduser().absolute()
    params = _params(n_train_per_class, n_val_per_class, size, seed)
    if _is_complete(target, params):
        return target
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder")
        if any(target.iterdir()):
            old = read_marker(target)
            if old is None or old.get("format") != params["format"]:
                raise FileExistsError(f"{target} is not empty and holds no embedded dataset ({MARKER} missing); "
                                      "choose another folder")
            damaged = old == params  # our marker and parameters, but files missing: rebuild it
            if not (replace or damaged):
                raise FileExistsError(f"{target} holds an embedded dataset written with other parameters "
                                      f"({old}); pass --force to replace it")
    publish_tree(target, lambda tmp: write_imagefolder(tmp, n_train_per_class, n_val_per_class, size, seed),
                 lambda: _is_complete(target, params))
    return target


def embedded_dir(cache_dir: Union[str, Path] = "~/.cache/simsiam", size: int = DEFAULT_SIZE) -> Path:
    """Where `ensure_embedded` keeps the tree: <cache_dir>/embedded-v<VERSION> (or embedded-v<VERSION>-<size>px)."""
    name = f"embedded-v{VERSION}" + ("" if size == DEFAULT_SIZE else f"-{size}px")
    return Path(cache_dir).expanduser().absolute() / name


def ensure_embedded(cache_dir: Union[str, Path] = "~/.cache/simsiam", size: int = DEFAULT_SIZE) -> Path:
    """Generate the embedded dataset once (atomically) and return its root, which holds train/ and val/.

    Safe to call from several processes at once (e.g. every rank of a distributed job): each builds in
    its own temporary folder and the first rename wins.
    """
    return build_atomically(embedded_dir(cache_dir, size), DEFAULT_TRAIN_PER_CLASS, DEFAULT_VAL_PER_CLASS,
                            size, DEFAULT_SEED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simsiam make-data",
                                     description="Write the embedded synthetic shapes dataset as an ImageFolder "
                                                 "tree (OUT/train/<class>/*.png, OUT/val/<class>/*.png).")
    parser.add_argument("out", help="output folder (created; must be empty or hold an embedded dataset)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels (default 64)")
    parser.add_argument("--train-per-class", type=int, default=DEFAULT_TRAIN_PER_CLASS)
    parser.add_argument("--val-per-class", type=int, default=DEFAULT_VAL_PER_CLASS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="replace an embedded dataset with other parameters")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        root = build_atomically(args.out, args.train_per_class, args.val_per_class, args.size, args.seed,
                                replace=args.force)
    except (ValueError, FileExistsError) as e:
        print(f"simsiam make-data: error: {e}", file=sys.stderr)
        return 2
    n = len(SHAPES) * (args.train_per_class + args.val_per_class)
    print(f"wrote {n} images of {len(SHAPES)} classes ({args.size}x{args.size}) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
