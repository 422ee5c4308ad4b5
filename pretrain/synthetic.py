"""The embedded default dataset: coloured geometric shapes on textured backgrounds.

It makes every command runnable on a fresh machine without a download. The images are generated
deterministically (one seeded random stream per image), so the same call writes the same bytes on
every machine, and are written as a torchvision ImageFolder tree:

    <root>/train/<shape>/0000.png ...      <root>/val/<shape>/0000.png ...      <root>/dataset.json

Each class is one shape (see `SHAPES`). Position, size, aspect, small rotation, colour and the
background texture are random, so only the shape identifies the class: self-supervised features that
capture shape give a kNN classifier well above chance, whereas colour or texture statistics do not.

The drawing helpers `random_background`, `random_colour`, `draw_shape` (and `polygon_outline`, the exact
vertices `draw_shape` fills) are public: the detection-data generator reuses them to paint objects with
known boxes (and polygons) into larger images.

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

VERSION = 1                      # bump when the generated content changes; part of the cache folder name
DEFAULT_SIZE = 64
DEFAULT_TRAIN_PER_CLASS = 100
DEFAULT_VAL_PER_CLASS = 30
DEFAULT_SEED = 0
MARKER = "dataset.json"          # written last inside the tree: its presence means "complete"

Box = tuple[float, float, float, float]
Colour = tuple[int, int, int]
_SPLIT_IDS = {"train": 0, "val": 1}

# ---------------------------------------------------------------------------------------------------
# Drawing helpers (public: reused by transfer/synthetic_det.py)
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


def render_example(rng: np.random.Generator, shape: str, size: int = DEFAULT_SIZE) -> tuple[Image.Image, Box]:
    """One classification image: `shape` at a random position/scale/aspect/rotation/colour on a random
    background. Returns (image, box)."""
    bright = bool(rng.random() < 0.5)
    img = random_background(rng, size, size, bright=bright)
    side = rng.uniform(0.35, 0.8) * size
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
    x0 = rng.uniform(0, size - bw)
    y0 = rng.uniform(0, size - bh)
    rotation = rng.uniform(-15.0, 15.0)
    box = draw_shape(img, shape, (x0, y0, x0 + bw, y0 + bh), random_colour(rng, dark=bright), rotation=rotation)
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
    """Where `ensure_embedded` keeps the tree: <cache_dir>/embedded-v1 (or embedded-v1-<size>px)."""
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
