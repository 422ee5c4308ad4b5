"""Generated ImageNet-shaped and detection-shaped datasets for rehearsing real-scale runs on a CPU.

`make_imagenet_like(root)` writes the ILSVRC-2012 layout that torchvision's ImageFolder reads:

    <root>/train/<wnid>/<wnid>_<i>.JPEG
    <root>/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG     (val already sorted into class folders)
    <root>/manifest.json, <root>/README.txt             (written last: their presence means "complete")

with 1000 class folders named by WordNet-style ids (`n` + 8 digits), images of varied sizes (short side 60 to
500 px, aspect ratio 1:3 to 3:1) whose content depends on the class (a class-specific shape and hue painted
on smooth noise), and the quirks of the real set in both splits: some grayscale JPEGs, one CMYK JPEG, one PNG
file named `.JPEG`, one JPEG stored rotated with an EXIF orientation tag.

`make_detection_like(root)` writes a small detection twin in the `$DETECTRON2_DATASETS` layout, so that
detectron2's standard names (`voc_2007_trainval`, `voc_2007_test`, `voc_2012_trainval`, `coco_2017_train`,
`coco_2017_val`, ...) resolve:

    <root>/VOC2007/{Annotations,JPEGImages,ImageSets/Main/{train,val,trainval,test}.txt}
    <root>/VOC2012/{Annotations,JPEGImages,ImageSets/Main/{train,val,trainval}.txt}
    <root>/coco/{train2017,val2017,annotations/instances_{train,val}2017.json}

with the 20 VOC class names and the 80 COCO categories (COCO's own, non-contiguous ids), shapes with exact boxes
(and polygons in COCO) on images of varied sizes.

Everything is deterministic for a seed (image i of class c in a split comes from its own seeded generator)
and published atomically (`pretrain.generated.publish`). Shapes come from `pretrain.generated.shapes`.
Command line:

    python -m pretrain.generated.rehearsal DIR [--classes N] [--train-per-class N] [--val-per-class N]
                                               [--seed N] [--detection]

writes DIR/imagenet (and DIR/detection) and prints one line per dataset.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import sys
import time
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from .publish import publish_tree, read_marker
from .shapes import (SHAPES, Box, draw_shape, flat_outline, polygon_area, random_background, scatter_objects,
                     voc_annotation)
from . import GeneratedDataError, TargetExistsError
from ..frame import guard

VERSION = 1
IMAGENET_FORMAT = "simsiam-suite/rehearsal-imagenet"
DETECTION_FORMAT = "simsiam-suite/rehearsal-detection"
MANIFEST = "manifest.json"
SHORT_SIDE = (60, 500)          # pixels, log-uniform
MAX_RATIO = 3.0                 # long side / short side, log-uniform in [1/3, 3] for width / height
MAX_CLASSES = 21841             # ImageNet-21k; keeps every wnid at 8 digits
QUIRKS = ("grayscale", "cmyk", "png_as_jpeg", "exif_rotated")
GRAYSCALE_EVERY = 50            # every 50th image of a split (position 3, 53, ...) is a grayscale JPEG
EXIF_ORIENTATION = 6            # "rotate 90 degrees clockwise to display"
_SPLIT_IDS = {"train": 0, "val": 1}
PathLike = Union[str, Path]

# ---------------------------------------------------------------------------------------------- ImageNet-like


def wnids(n: int) -> list[str]:
    """`n` WordNet-style class ids (`n` + 8 digits), unique and already in sorted order; the first is ImageNet's
    first class id (n01440764). The list does not depend on the seed, and wnids(n) is a prefix of wnids(n + 1)."""
    return [f"n{1440764 + 997 * c:08d}" for c in range(n)]


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): short side log-uniform in SHORT_SIDE, width/height log-uniform in [1/3, 3] (the long side
    rounded down where rounding would pass MAX_RATIO)."""
    short = int(round(math.exp(rng.uniform(math.log(SHORT_SIDE[0]), math.log(SHORT_SIDE[1])))))
    ratio = math.exp(rng.uniform(-math.log(MAX_RATIO), math.log(MAX_RATIO)))
    long = min(int(round(short * max(ratio, 1 / ratio))), int(MAX_RATIO * short))
    return (long, short) if ratio >= 1 else (short, long)


def class_colour(c: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour of class `c`: the hue of its group c // 8 (groups golden-ratio spaced round the hue circle, so
    the 8 classes sharing a hue differ by shape), random saturation and brightness."""
    hue = (c // len(SHAPES) * 0.6180339887) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return tuple(int(round(v * 255)) for v in rgb)


def render_class_image(rng: np.random.Generator, c: int) -> Image.Image:
    """One RGB image of class `c`: 1-3 copies of shape SHAPES[c % 8] in the class hue on smooth colour noise
    plus pixel grain, at a random size from `_image_size`."""
    w, h = _image_size(rng)
    cells = rng.integers(40, 216, size=(int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(cells, "RGB").resize((w, h), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        side = rng.uniform(0.25, 0.7) * min(w, h)
        bw, bh = side * rng.uniform(0.8, 1.25), side * rng.uniform(0.8, 1.25)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        draw_shape(draw, SHAPES[c % len(SHAPES)], (x0, y0, x0 + bw, y0 + bh), class_colour(c, rng),
                   rotation=float(rng.uniform(-20, 20)))
    grain = rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + grain, 0, 255).astype(np.uint8), "RGB")


def quirk_plan(total: int) -> dict[int, str]:
    """Which image positions (class-major order within a split) carry which quirk.

    Grayscale: positions 3, 53, 103, ... (every GRAYSCALE_EVERY-th). CMYK, PNG-as-JPEG and EXIF-rotated: one
    each, near 1/4, 1/2 and 3/4 of the split, moved forward past positions already taken. Splits with fewer
    images get the quirks that fit (a split of 4 or more images gets all four)."""
    plan = {p: "grayscale" for p in range(3, total, GRAYSCALE_EVERY)}
    for k, quirk in enumerate(("cmyk", "png_as_jpeg", "exif_rotated"), start=1):
        p = k * total // 4
        while p in plan and p < total:
            p += 1
        if p >= total:
            p = next((q for q in range(total) if q not in plan), None)
        if p is not None:
            plan[p] = quirk
    return plan


def save_with_quirk(img: Image.Image, path: Path, quirk: str | None) -> None:
    """Write `img` (RGB) to `path` as ImageNet stores it: a baseline JPEG, or with the given quirk."""
    if quirk is None:
        img.save(path, format="JPEG", quality=85)
    elif quirk == "grayscale":
        img.convert("L").save(path, format="JPEG", quality=85)
    elif quirk == "cmyk":
        img.convert("CMYK").save(path, format="JPEG", quality=85)
    elif quirk == "png_as_jpeg":
        img.save(path, format="PNG", compress_level=6)
    elif quirk == "exif_rotated":
        # stored turned 90 degrees counter-clockwise; orientation 6 tells a viewer to turn it back
        exif = Image.Exif()
        exif[0x0112] = EXIF_ORIENTATION
        img.transpose(Image.Transpose.ROTATE_90).save(path, format="JPEG", quality=85, exif=exif.tobytes())
    else:
        raise GeneratedDataError(f"unknown quirk '{quirk}' (known: {', '.join(QUIRKS)})")


def _val_numbers(total: int, seed: int) -> list[int]:
    """ILSVRC2012_val numbers 1..total, shuffled, so a class folder holds scattered numbers as in the real set."""
    return [int(v) + 1 for v in np.random.default_rng([seed, 99]).permutation(total)]


def _write_split(root: Path, split: str, ids: list[str], per_class: int, seed: int) -> dict[str, list[str]]:
    """Write one split; return {quirk: [paths relative to root]}."""
    plan = quirk_plan(len(ids) * per_class)
    numbers = _val_numbers(len(ids) * per_class, seed) if split == "val" else None
    quirks: dict[str, list[str]] = {q: [] for q in QUIRKS}
    for c, wnid in enumerate(ids):
        folder = root / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pos = c * per_class + i
            name = f"{wnid}_{i}.JPEG" if numbers is None else f"ILSVRC2012_val_{numbers[pos]:08d}.JPEG"
            img = render_class_image(np.random.default_rng([seed, _SPLIT_IDS[split], c, i]), c)
            save_with_quirk(img, folder / name, plan.get(pos))
            if pos in plan:
                quirks[plan[pos]].append(f"{split}/{wnid}/{name}")
    return quirks


def _imagenet_params(classes: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    return {"format": IMAGENET_FORMAT, "version": VERSION, "classes": int(classes),
            "train_per_class": int(train_per_class), "val_per_class": int(val_per_class), "seed": int(seed)}


def _check_counts(classes: int, train_per_class: int, val_per_class: int) -> None:
    for name, v, lo, hi in (("classes", classes, 1, MAX_CLASSES), ("train_per_class", train_per_class, 1, None),
                            ("val_per_class", val_per_class, 0, None)):
        if isinstance(v, bool) or int(v) != v or v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise GeneratedDataError(f"{name} must be an integer {bound}, got {v!r}")


def write_imagenet_like(root: PathLike, classes: int = 1000, train_per_class: int = 2, val_per_class: int = 1,
                        seed: int = 0) -> dict:
    """Write the tree into `root` (no atomicity; see `make_imagenet_like`) and return its manifest."""
    _check_counts(classes, train_per_class, val_per_class)
    root = Path(root)
    ids = wnids(classes)
    splits = {"train": train_per_class, "val": val_per_class}
    quirks: dict[str, list[str]] = {q: [] for q in QUIRKS}
    for split, per_class in splits.items():
        if per_class > 0:
            for q, paths in _write_split(root, split, ids, per_class, seed).items():
                quirks[q] += paths
    manifest = {**_imagenet_params(classes, train_per_class, val_per_class, seed),
                "splits": {s: n * classes for s, n in splits.items() if n > 0},
                "short_side": list(SHORT_SIDE), "max_aspect_ratio": MAX_RATIO, "wnids": ids, "quirks": quirks}
    return _finish_tree(root, manifest, _imagenet_readme(manifest))


def _finish_tree(root: Path, manifest: dict, readme: str) -> dict:
    """Write README.txt and the manifest, the last files of a tree (their presence means complete)."""
    (root / "README.txt").write_text(readme)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _imagenet_readme(m: dict) -> str:
    q = m["quirks"]
    return (f"Generated ImageNet-shaped rehearsal dataset ({m['format']} v{m['version']}, seed {m['seed']}).\n"
            f"Not ImageNet: class-dependent shapes on noise, for rehearsing the data path at real scale.\n\n"
            f"train/<wnid>/<wnid>_<i>.JPEG: {m['classes']} classes x {m['train_per_class']} images\n"
            + (f"val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG: {m['classes']} classes x {m['val_per_class']} images\n"
               if m["val_per_class"] else "no val/ split\n")
            + f"Image sizes: short side {m['short_side'][0]}-{m['short_side'][1]} px, aspect ratio 1:3 to 3:1.\n"
            f"Quirks, as in the real set: {len(q['grayscale'])} grayscale JPEGs, {len(q['cmyk'])} CMYK JPEGs, "
            f"{len(q['png_as_jpeg'])} PNG files named .JPEG, {len(q['exif_rotated'])} JPEGs with EXIF "
            f"orientation {EXIF_ORIENTATION} (pixels stored rotated).\n"
            f"manifest.json lists the class ids and every quirky file.\n")


def _matches(root: Path, params: dict) -> bool:
    m = read_marker(root / MANIFEST)
    return m is not None and {k: m.get(k) for k in params} == params


def _publish(root: PathLike, params: dict, write) -> dict:
    """Reuse a complete tree with `params`, else write one atomically (replacing one of our own trees)."""
    target = Path(root).expanduser().absolute()
    reused = _matches(target, params)
    if not reused:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            old = read_marker(target / MANIFEST) if target.is_dir() else None
            if old is None or old.get("format") != params["format"]:
                raise TargetExistsError(f"{target} exists and holds no {params['format']} dataset "
                                      f"({MANIFEST} missing); choose another folder")
        publish_tree(target, write, lambda: _matches(target, params))
    return {"root": str(target), "reused": reused, **read_marker(target / MANIFEST)}


def make_imagenet_like(root: PathLike, classes: int = 1000, train_per_class: int = 2, val_per_class: int = 1,
                       seed: int = 0) -> dict:
    """Make `root` hold the ImageNet-shaped rehearsal tree; return its summary (the manifest, "root", "reused").

    The tree is written into a temporary sibling folder and renamed into place, so no reader sees a partial
    tree; a complete tree with the same parameters is reused as is; an earlier rehearsal tree with other
    parameters is replaced; any other non-empty `root` is a FileExistsError. Summary keys: root, classes,
    train_per_class, val_per_class, seed, splits ({split: image count}), wnids, quirks ({quirk: [paths
    relative to root]}), short_side, max_aspect_ratio, format, version.
    """
    _check_counts(classes, train_per_class, val_per_class)
    params = _imagenet_params(classes, train_per_class, val_per_class, seed)
    return _publish(root, params, lambda tmp: write_imagenet_like(tmp, classes, train_per_class, val_per_class,
                                                                  seed))


# --------------------------------------------------------------------------------------------- detection-like

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

# The 80 COCO "thing" categories with COCO's own ids (1..90, with gaps) and supercategories.
_COCO_GROUPS = (
    ("person", "1 person"),
    ("vehicle", "2 bicycle|3 car|4 motorcycle|5 airplane|6 bus|7 train|8 truck|9 boat"),
    ("outdoor", "10 traffic light|11 fire hydrant|13 stop sign|14 parking meter|15 bench"),
    ("animal", "16 bird|17 cat|18 dog|19 horse|20 sheep|21 cow|22 elephant|23 bear|24 zebra|25 giraffe"),
    ("accessory", "27 backpack|28 umbrella|31 handbag|32 tie|33 suitcase"),
    ("sports", "34 frisbee|35 skis|36 snowboard|37 sports ball|38 kite|39 baseball bat|40 baseball glove|"
               "41 skateboard|42 surfboard|43 tennis racket"),
    ("kitchen", "44 bottle|46 wine glass|47 cup|48 fork|49 knife|50 spoon|51 bowl"),
    ("food", "52 banana|53 apple|54 sandwich|55 orange|56 broccoli|57 carrot|58 hot dog|59 pizza|60 donut|61 cake"),
    ("furniture", "62 chair|63 couch|64 potted plant|65 bed|67 dining table|70 toilet"),
    ("electronic", "72 tv|73 laptop|74 mouse|75 remote|76 keyboard|77 cell phone"),
    ("appliance", "78 microwave|79 oven|80 toaster|81 sink|82 refrigerator"),
    ("indoor", "84 book|85 clock|86 vase|87 scissors|88 teddy bear|89 hair drier|90 toothbrush"),
)
COCO_CATEGORIES: tuple[dict, ...] = tuple(
    {"id": int(item.split(" ", 1)[0]), "name": item.split(" ", 1)[1], "supercategory": group}
    for group, items in _COCO_GROUPS for item in items.split("|"))
DET_SIZE = (160, 480)           # detection image width and height, each uniform in this range
_DET_SHAPES = tuple(s for s in SHAPES if s != "ring")   # shapes whose outline is one simple polygon


def render_scene(rng: np.random.Generator, n_classes: int, max_objects: int = 4) -> tuple[Image.Image, list[dict]]:
    """A random-size image with 1..max_objects non-overlapping objects (0 when max_objects is 0).

    Object label k is drawn as shape `_DET_SHAPES[k % 7]` in the hue of `class_colour(8 * k)`. Returns the RGB
    image and the objects as {"label": k, "box": (x0, y0, x1, y1) floats inside the image, "polygon": flat
    [x, y, ...] outline}."""
    w, h = (int(v) for v in rng.integers(DET_SIZE[0], DET_SIZE[1] + 1, size=2))
    img = random_background(rng, w, h)

    def box_size(rng: np.random.Generator) -> tuple[float, float]:
        side = rng.uniform(0.2, 0.45) * min(w, h)
        return side * rng.uniform(0.7, 1.4), side * rng.uniform(0.7, 1.4)

    def paint(rng: np.random.Generator, box: Box) -> dict:
        label = int(rng.integers(n_classes))
        shape, rotation = _DET_SHAPES[label % len(_DET_SHAPES)], float(rng.uniform(-15, 15))
        draw_shape(img, shape, box, class_colour(8 * label, rng), rotation=rotation)
        return {"label": label, "box": box, "polygon": flat_outline(shape, box, rotation, (w, h))}

    count = int(rng.integers(1, max_objects + 1)) if max_objects > 0 else 0
    return img, scatter_objects(rng, (w, h), count, box_size, 1, paint)


def _voc_xml(image_id: str, size: tuple[int, int], objects: list[dict], difficult: set[int]) -> str:
    return voc_annotation(image_id, size, [(VOC_CLASSES[o["label"]], o["box"], j in difficult)
                                           for j, o in enumerate(objects)], f"{DETECTION_FORMAT} v{VERSION}")


def _write_voc(folder: Path, year: int, counts: dict[str, int], seed: int) -> dict:
    """VOC<year>/: images, XML, split files (trainval also split into train = even, val = odd positions).
    In the test split the second object of every third image is marked difficult. Returns
    {"images": {split: n}, "difficult": [image ids]}."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    number, flagged = 1, []
    for split_id, (split, n) in enumerate(counts.items()):
        ids = []
        for i in range(n):
            image_id = f"{number:06d}" if year == 2007 else f"{year - 4}_{number:06d}"
            number += 1
            img, objects = render_scene(np.random.default_rng([seed, 11, year, split_id, i]), len(VOC_CLASSES))
            difficult = {1} if split == "test" and i % 3 == 0 and len(objects) > 1 else set()
            flagged += [image_id] if difficult else []
            img.save(folder / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=90)
            (folder / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, img.size, objects, difficult))
            ids.append(image_id)
        lists = {split: ids, **({"train": ids[0::2], "val": ids[1::2]} if split == "trainval" else {})}
        for name, part in lists.items():
            (folder / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(part) + "\n")
    return {"images": dict(counts), "difficult": flagged}


def _coco_split(folder: Path, split: str, split_id: int, n: int, seed: int, first_ann: int) -> dict:
    """coco/<split>2017/*.jpg and the instances document; the last train image has no objects (as some real
    COCO train images). Image ids are non-contiguous (9 + 13 i, offset per split)."""
    images, annotations = [], []
    (folder / f"{split}2017").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image_id = 9 + 13 * i + 1_000_000 * split_id
        empty = split == "train" and i == n - 1
        img, objects = render_scene(np.random.default_rng([seed, 11, 2017, split_id, i]), len(COCO_CATEGORIES),
                                    max_objects=0 if empty else 4)
        name = f"{image_id:012d}.jpg"
        img.save(folder / f"{split}2017" / name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": name, "width": img.width, "height": img.height})
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            annotations.append({"id": first_ann + len(annotations), "image_id": image_id,
                                "category_id": COCO_CATEGORIES[o["label"]]["id"],
                                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                                "segmentation": [o["polygon"]], "area": round(polygon_area(o["polygon"]), 2),
                                "iscrowd": 0})
    return {"info": {"description": f"{DETECTION_FORMAT} v{VERSION} ({split}2017)", "version": str(VERSION),
                     "year": 2017}, "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(c) for c in COCO_CATEGORIES]}


def _write_coco(folder: Path, counts: dict[str, int], seed: int) -> dict:
    """coco/{train2017,val2017,annotations/instances_{train,val}2017.json}; returns {"images", "annotations"}."""
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    n_ann, stats = 1, {"images": {}, "annotations": {}}
    for split_id, (split, n) in enumerate(counts.items()):
        doc = _coco_split(folder, split, split_id, n, seed, n_ann)
        n_ann += len(doc["annotations"])
        stats["images"][split], stats["annotations"][split] = n, len(doc["annotations"])
        (folder / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return stats


def _detection_params(seed: int, counts: dict[str, int]) -> dict:
    return {"format": DETECTION_FORMAT, "version": VERSION, "seed": int(seed), "counts": dict(counts)}


def write_detection_like(root: PathLike, seed: int = 0, voc2007_trainval: int = 8, voc2007_test: int = 6,
                         voc2012_trainval: int = 8, coco_train: int = 8, coco_val: int = 6) -> dict:
    """Write the detection twin into `root` (no atomicity; see `make_detection_like`); return its manifest."""
    counts = {"voc2007_trainval": voc2007_trainval, "voc2007_test": voc2007_test,
              "voc2012_trainval": voc2012_trainval, "coco_train": coco_train, "coco_val": coco_val}
    for name, v in counts.items():
        if isinstance(v, bool) or int(v) != v or v < 2:
            raise GeneratedDataError(f"{name} must be an integer >= 2, got {v!r}")
    root = Path(root)
    voc07 = _write_voc(root / "VOC2007", 2007, {"trainval": voc2007_trainval, "test": voc2007_test}, seed)
    voc12 = _write_voc(root / "VOC2012", 2012, {"trainval": voc2012_trainval}, seed)
    coco = _write_coco(root / "coco", {"train": coco_train, "val": coco_val}, seed)
    datasets = {f"voc_{y}_{s}": n for y, v in ((2007, voc07), (2012, voc12)) for s, n in v["images"].items()}
    for year, n in ((2007, voc2007_trainval), (2012, voc2012_trainval)):
        datasets.update({f"voc_{year}_train": (n + 1) // 2, f"voc_{year}_val": n // 2})
    datasets.update({f"coco_2017_{s}": n for s, n in coco["images"].items()})
    manifest = {**_detection_params(seed, counts), "datasets": dict(sorted(datasets.items())),
                "coco_annotations": coco["annotations"], "voc_2007_test_difficult": voc07["difficult"],
                "coco_train_empty_images": 1, "image_size": list(DET_SIZE)}
    return _finish_tree(root, manifest, _detection_readme(manifest))


def _detection_readme(m: dict) -> str:
    d = m["datasets"]
    return (f"Generated detection rehearsal datasets ({m['format']} v{m['version']}, seed {m['seed']}).\n"
            f"Not VOC or COCO: shapes with exact boxes, laid out as detectron2 expects its datasets root.\n"
            f"Use it with: export DETECTRON2_DATASETS=<this folder>\n\n"
            + "".join(f"{name}: {n} images\n" for name, n in d.items())
            + f"VOC2007/, VOC2012/: the 20 VOC classes; test objects marked difficult in images "
              f"{', '.join(m['voc_2007_test_difficult']) or '(none)'}.\n"
              f"coco/: the 80 COCO categories with COCO's ids; boxes and polygons; the last train image has no "
              f"objects.\nImage sizes: width and height {m['image_size'][0]}-{m['image_size'][1]} px.\n")


def make_detection_like(root: PathLike, seed: int = 0, voc2007_trainval: int = 8, voc2007_test: int = 6,
                        voc2012_trainval: int = 8, coco_train: int = 8, coco_val: int = 6) -> dict:
    """Make `root` hold the detection twin (VOC2007/, VOC2012/, coco/) and return its summary (the manifest
    plus "root" and "reused"). Every count must be >= 2. Published like `make_imagenet_like`: atomically,
    reused when complete with the same parameters. Summary keys: root, seed, counts, datasets ({detectron2 dataset name:
    image count}), coco_annotations ({split: count}), voc_2007_test_difficult (image ids), image_size."""
    counts = {"voc2007_trainval": voc2007_trainval, "voc2007_test": voc2007_test,
              "voc2012_trainval": voc2012_trainval, "coco_train": coco_train, "coco_val": coco_val}
    params = _detection_params(seed, counts)
    return _publish(root, params, lambda tmp: write_detection_like(tmp, seed, **counts))


# ------------------------------------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m pretrain.generated.rehearsal",
                     description="Write generated ImageNet-shaped (DIR/imagenet) and, with --detection, VOC/COCO-"
                                 "shaped (DIR/detection) rehearsal datasets.")
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=2)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detection", action="store_true", help="also write DIR/detection")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return guard(parser.prog, lambda: _write(args))


def _write(args) -> int:
    out = Path(args.dir)
    t = time.perf_counter()
    s = make_imagenet_like(out / "imagenet", args.classes, args.train_per_class, args.val_per_class, args.seed)
    quirks = ", ".join(f"{len(v)} {k}" for k, v in s["quirks"].items())
    splits = ", ".join(f"{n} {k}" for k, n in s["splits"].items())
    how = "reused" if s["reused"] else "written"
    print(f"imagenet: {s['classes']} classes, {splits} images ({quirks}) {how} in "
          f"{time.perf_counter() - t:.1f} s -> {s['root']}")
    if args.detection:
        t = time.perf_counter()
        d = make_detection_like(out / "detection", args.seed)
        sets = ", ".join(f"{k} {n}" for k, n in d["datasets"].items())
        how = "reused" if d["reused"] else "written"
        print(f"detection: {sets} images {how} in {time.perf_counter() - t:.1f} s -> {d['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
