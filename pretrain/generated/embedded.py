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

It is drawn with the shared shape generator (`pretrain.generated.shapes`: `plain_background`,
`contrast_colour`, `draw_shape`), as is its detection twin (`pretrain.generated.embedded_detection`).

Command line: `simsiam make-data OUT [--size 64] [--train-per-class 100] [--val-per-class 30] [--seed 0]`
(or `python -m pretrain.generated.embedded OUT ...`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from .publish import publish_tree, read_marker
from .shapes import SHAPES, Box, contrast_colour, draw_shape, plain_background
from . import GeneratedDataError, TargetExistsError
from ..frame import guard

VERSION = 2                      # bump when the generated content changes; part of the cache folder name
DEFAULT_SIZE = 64
DEFAULT_TRAIN_PER_CLASS = 100
DEFAULT_VAL_PER_CLASS = 30
DEFAULT_SEED = 0
MARKER = "dataset.json"          # written last inside the tree: its presence means "complete"

_SPLIT_IDS = {"train": 0, "val": 1}
SIDE_RANGE = (0.5, 0.85)         # object side as a fraction of the image side
CENTRE_JITTER = 0.12             # object centre: image centre +- this fraction of the side


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
            raise GeneratedDataError(f"write_imagefolder: {name} must be an integer >= {lo}, got {v!r}")
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


def _is_complete(root: Path, params: dict) -> bool:
    if read_marker(root / MARKER) != params:
        return False
    for split, key in (("train", "train_per_class"), ("val", "val_per_class")):
        for shape in SHAPES:
            d = root / split / shape
            if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != params[key]:
                return False
    return True


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
            raise TargetExistsError(f"{target} exists and is not a folder")
        if any(target.iterdir()):
            old = read_marker(target / MARKER)
            if old is None or old.get("format") != params["format"]:
                raise TargetExistsError(f"{target} is not empty and holds no embedded dataset ({MARKER} missing); "
                                      "choose another folder")
            damaged = old == params  # our marker and parameters, but files missing: rebuild it
            if not (replace or damaged):
                raise TargetExistsError(f"{target} holds an embedded dataset written with other parameters "
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
    return guard("simsiam make-data", lambda: _make_data(args))


def _make_data(args) -> int:
    root = build_atomically(args.out, args.train_per_class, args.val_per_class, args.size, args.seed,
                            replace=args.force)
    n = len(SHAPES) * (args.train_per_class + args.val_per_class)
    print(f"wrote {n} images of {len(SHAPES)} classes ({args.size}x{args.size}) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
