"""The embedded detection dataset: shapes painted into small images, with exact boxes and polygons.

Deterministic (image `i` of split `s` comes from `numpy.random.default_rng([seed, 7, s, i])`), generated once
into a cache folder, in both formats our detection loaders read:

    <root>/JPEGImages/<id>.jpg                       the images (160 x 128 px)
    <root>/Annotations/<id>.xml                      Pascal VOC boxes (1-based inclusive pixel coordinates)
    <root>/ImageSets/Main/{train,val,trainval}.txt   VOC split files
    <root>/annotations/instances_{train,val}.json    COCO instances: boxes and polygons, image root JPEGImages/
    <root>/dataset.json                              the generation parameters (written last = complete)

Each image has 1-4 objects, one of `pretrain.synthetic.SHAPES` each (the class), painted with
`pretrain.synthetic.draw_shape` in a `contrast_colour` on a `plain_background`: the same look and nuisances as
the classification images, so a backbone pretrained on those transfers to these. Rings are annotated as one "keyhole" polygon (outer
ellipse, a zero-width cut, inner ellipse backwards), which rasterises to the ring.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from pretrain import synthetic as shapes

VERSION = 3
WIDTH, HEIGHT = 160, 128
N_TRAIN, N_VAL = 160, 40
SEED = 0
CLASSES = tuple(shapes.SHAPES)
MARKER = "dataset.json"
_SPLITS = {"train": 0, "val": 1}
_ELLIPSE_POINTS = 32


def shape_polygon(shape: str, box, rotation: float = 0.0, ring_width: float = 0.25) -> list[float]:
    """The outline (flat [x0, y0, x1, y1, ...]) of what `draw_shape(img, shape, box, ..., rotation)` paints."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if shape in ("circle", "ring"):
        t = np.linspace(0, 2 * math.pi, _ELLIPSE_POINTS, endpoint=False)
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        outer = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
        if shape == "circle":
            pts = outer
        else:
            w = max(1, int(round(ring_width * min(x1 - x0, y1 - y0))))
            inner = np.stack([cx + max(rx - w, 0.5) * np.cos(t), cy + max(ry - w, 0.5) * np.sin(t)], 1)
            # outer loop, back to its start, the inner loop the other way round, back across the cut
            pts = np.concatenate([outer, outer[:1], inner[:1], inner[::-1], inner[:1]], 0)
    else:
        # same construction as pretrain.synthetic.draw_shape: rotate the outline, then stretch it to the box
        outline = shapes._OUTLINES[shape]  # noqa: SLF001 - the shared geometry of the drawing helper
        a = math.radians(rotation)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        p = outline @ rot.T
        lo, hi = p.min(0), p.max(0)
        unit = (p - lo) / (hi - lo)
        pts = np.stack([x0 + unit[:, 0] * (x1 - x0), y0 + unit[:, 1] * (y1 - y0)], 1)
    pts[:, 0] = np.clip(pts[:, 0], 0, WIDTH)
    pts[:, 1] = np.clip(pts[:, 1], 0, HEIGHT)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image with 1-4 non-overlapping shapes; objects as {"class", "box" (x0,y0,x1,y1 float), "polygon"}."""
    img, level = shapes.plain_background(rng, WIDTH, HEIGHT)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            side = rng.uniform(24, 64)
            aspect = math.exp(rng.uniform(math.log(2 / 3), math.log(3 / 2)))
            bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
            x0, y0 = rng.uniform(0, WIDTH - bw), rng.uniform(0, HEIGHT - bh)
            box = tuple(round(v, 2) for v in (x0, y0, x0 + bw, y0 + bh))  # exact in both VOC and COCO files
            if all(_iou(box, o["box"]) < 0.05 for o in objects):
                break
        else:
            continue
        shape = CLASSES[int(rng.integers(len(CLASSES)))]
        rotation = float(rng.uniform(-15, 15))
        shapes.draw_shape(img, shape, box, shapes.contrast_colour(rng, level), rotation=rotation)
        objects.append({"class": shape, "box": box, "polygon": shape_polygon(shape, box, rotation)})
    return img, objects


def _voc_box(box) -> tuple[int, int, int, int]:
    """Float pixel box -> VOC 1-based inclusive integer coordinates inside the image."""
    x0, y0, x1, y1 = box
    return (max(1, int(math.floor(x0)) + 1), max(1, int(math.floor(y0)) + 1),
            min(WIDTH, int(math.ceil(x1))), min(HEIGHT, int(math.ceil(y1))))


def _voc_xml(image_id: str, objects: list[dict]) -> str:
    parts = [f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             f"\t<source><database>simsiam-suite embedded shapes v{VERSION}</database></source>\n"
             f"\t<size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>\n"
             f"\t<segmented>0</segmented>\n"]
    for o in objects:
        x0, y0, x1, y1 = _voc_box(o["box"])
        parts.append(f"\t<object>\n\t\t<name>{o['class']}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
                     f"\t\t<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>\n"
                     f"\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _params(n_train: int, n_val: int, seed: int) -> dict:
    return {"format": "simsiam-suite/embedded-detection", "version": VERSION, "classes": list(CLASSES),
            "width": WIDTH, "height": HEIGHT, "train": n_train, "val": n_val, "seed": seed}


def write_dataset(out: Union[str, Path], n_train: int = N_TRAIN, n_val: int = N_VAL, seed: int = SEED) -> Path:
    """Write the dataset (both formats) into `out`; the marker is written last."""
    out = Path(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    ids_by_split = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images, annotations, ids = [], [], []
        for i in range(n):
            image_id = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, 7, _SPLITS[split], i])
            img, objects = render_scene(rng)
            img.save(out / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=95)
            (out / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, objects))
            ids.append(image_id)
            num = len(images) + 1
            images.append({"id": num, "file_name": f"{image_id}.jpg", "width": WIDTH, "height": HEIGHT})
            for o in objects:
                x0, y0, x1, y1 = (min(max(v, 0.0), lim) for v, lim in zip(o["box"], (WIDTH, HEIGHT) * 2))
                poly = o["polygon"]
                area = abs(_shoelace(poly))
                annotations.append({"id": len(annotations) + 1, "image_id": num,
                                    "category_id": CLASSES.index(o["class"]) + 1,
                                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                    "segmentation": [poly], "area": round(area, 2), "iscrowd": 0})
        ids_by_split[split] = ids
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        doc = {"info": {"description": f"simsiam-suite embedded detection shapes v{VERSION} ({split})"},
               "images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    (out / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids_by_split["train"] + ids_by_split["val"]) + "\n")
    (out / MARKER).write_text(json.dumps(_params(n_train, n_val, seed), indent=1) + "\n")
    return out


def _shoelace(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def embedded_detection_dir(cache_dir: Union[str, Path] = "~/.cache/simsiam") -> Path:
    return Path(cache_dir).expanduser().absolute() / f"embedded-detection-v{VERSION}"


def _complete(root: Path, params: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == params
    except (OSError, ValueError):
        return False


def ensure_embedded_detection(cache_dir: Union[str, Path] = "~/.cache/simsiam", n_train: int = N_TRAIN,
                              n_val: int = N_VAL, seed: int = SEED) -> dict[str, Path]:
    """Generate the dataset once (atomically: temporary sibling folder, then rename) and return its paths:
    {"root" (the VOC folder), "coco_train_json", "coco_val_json", "image_root"}."""
    target = embedded_detection_dir(cache_dir)
    if (n_train, n_val, seed) != (N_TRAIN, N_VAL, SEED):
        target = target.with_name(f"{target.name}-{n_train}-{n_val}-s{seed}")
    params = _params(n_train, n_val, seed)
    if not _complete(target, params):
        if target.exists() and any(target.iterdir()) and not (target / MARKER).exists() and not any(
                target.glob("Annotations")):
            raise FileExistsError(f"{target} exists, is not empty and is no embedded detection dataset")
        shapes.publish_tree(target, lambda tmp: write_dataset(tmp, n_train, n_val, seed),
                            lambda: _complete(target, params))
    return {"root": target, "image_root": target / "JPEGImages",
            "coco_train_json": target / "annotations" / "instances_train.json",
            "coco_val_json": target / "annotations" / "instances_val.json"}
