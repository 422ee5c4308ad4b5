"""The embedded detection dataset: shapes painted into small images, with exact boxes and polygons.

Deterministic (image `i` of split `s` comes from `numpy.random.default_rng([seed, 7, s, i])`), generated once
into a cache folder, in both formats our detection loaders read:

    <root>/JPEGImages/<id>.jpg                       the images (160 x 128 px)
    <root>/Annotations/<id>.xml                      Pascal VOC boxes (1-based inclusive pixel coordinates)
    <root>/ImageSets/Main/{train,val,trainval}.txt   VOC split files
    <root>/annotations/instances_{train,val}.json    COCO instances: boxes and polygons, image root JPEGImages/
    <root>/dataset.json                              the generation parameters (written last = complete)

Each image has 1-4 objects, one of `shapes.SHAPES` each (the class), painted with `shapes.draw_shape` in a
`contrast_colour` on a `plain_background`: the same look and nuisances as the classification images
(`pretrain.generated.embedded`), so a backbone pretrained on those transfers to these. Polygons are
`shapes.shape_outline` (a ring is one "keyhole" polygon).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from . import shapes
from .publish import publish_tree, read_marker
from . import TargetExistsError

VERSION = 3
WIDTH, HEIGHT = 160, 128
N_TRAIN, N_VAL = 160, 40
SEED = 0
CLASSES = tuple(shapes.SHAPES)
MARKER = "dataset.json"
_SPLITS = {"train": 0, "val": 1}


def shape_polygon(shape: str, box, rotation: float = 0.0) -> list[float]:
    """The outline (flat [x0, y0, x1, y1, ...], inside the image) of what `draw_shape(img, shape, box, ...,
    rotation)` paints."""
    return shapes.flat_outline(shape, box, rotation, (WIDTH, HEIGHT))


def _box_size(rng: np.random.Generator) -> tuple[float, float]:
    side = rng.uniform(24, 64)
    aspect = math.exp(rng.uniform(math.log(2 / 3), math.log(3 / 2)))
    return side * math.sqrt(aspect), side / math.sqrt(aspect)


def render_scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image with 1-4 non-overlapping shapes; objects as {"class", "box" (x0,y0,x1,y1 float), "polygon"}."""
    img, level = shapes.plain_background(rng, WIDTH, HEIGHT)

    def paint(rng: np.random.Generator, box: shapes.Box) -> dict:
        shape = CLASSES[int(rng.integers(len(CLASSES)))]
        rotation = float(rng.uniform(-15, 15))
        shapes.draw_shape(img, shape, box, shapes.contrast_colour(rng, level), rotation=rotation)
        return {"class": shape, "box": box, "polygon": shape_polygon(shape, box, rotation)}

    return img, shapes.scatter_objects(rng, (WIDTH, HEIGHT), int(rng.integers(1, 5)), _box_size, 20, paint)


def _voc_xml(image_id: str, objects: list[dict]) -> str:
    return shapes.voc_annotation(image_id, (WIDTH, HEIGHT), [(o["class"], o["box"], False) for o in objects],
                                 f"simsiam-suite embedded shapes v{VERSION}")


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
                area = shapes.polygon_area(poly)
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


def embedded_detection_dir(cache_dir: Union[str, Path] = "~/.cache/simsiam") -> Path:
    return Path(cache_dir).expanduser().absolute() / f"embedded-detection-v{VERSION}"


def _complete(root: Path, params: dict) -> bool:
    return read_marker(root / MARKER) == params


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
            raise TargetExistsError(f"{target} exists, is not empty and is no embedded detection dataset")
        publish_tree(target, lambda tmp: write_dataset(tmp, n_train, n_val, seed),
                            lambda: _complete(target, params))
    return {"root": target, "image_root": target / "JPEGImages",
            "coco_train_json": target / "annotations" / "instances_train.json",
            "coco_val_json": target / "annotations" / "instances_val.json"}
