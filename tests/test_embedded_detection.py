"""pretrain.generated.embedded_detection: the embedded detection data is deterministic and pinned, consistent
between its VOC and COCO forms, its polygons match what is painted, and our loaders read both forms."""
from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pretrain.generated import embedded_detection as sd
from pretrain.generated import shapes


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_images_are_pinned():
    """The images and their objects, pinned (the demo's detection numbers were measured on exactly these)."""
    scenes = [sd.render_scene(np.random.default_rng([0, 7, s, i])) for s in (0, 1) for i in range(3)]
    h = hashlib.sha256()
    for img, _ in scenes:
        a = np.asarray(img)
        h.update(str(a.shape).encode() + a.tobytes())
    h.update(json.dumps([objects for _, objects in scenes], sort_keys=True).encode())
    assert h.hexdigest()[:16] == "441e12fe50b46256"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return sd.ensure_embedded_detection(cache, n_train=12, n_val=6)


def test_deterministic_and_cached(small, tmp_path):
    again = sd.ensure_embedded_detection(tmp_path, n_train=12, n_val=6)
    assert _digest(small["root"]) == _digest(again["root"])
    stamp = (again["root"] / sd.MARKER).stat().st_mtime_ns
    assert sd.ensure_embedded_detection(tmp_path, n_train=12, n_val=6)["root"] == again["root"]
    assert (again["root"] / sd.MARKER).stat().st_mtime_ns == stamp  # reused, not rewritten


def test_voc_and_coco_agree(small):
    root = small["root"]
    ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert len(ids) == 12 and len((root / "ImageSets" / "Main" / "trainval.txt").read_text().split()) == 18
    coco = json.loads(small["coco_train_json"].read_text())
    assert [c["name"] for c in coco["categories"]] == list(shapes.SHAPES)
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img in coco["images"]:
        image_id = img["file_name"][:-4]
        assert image_id in ids and (img["width"], img["height"]) == (sd.WIDTH, sd.HEIGHT)
        with Image.open(small["image_root"] / img["file_name"]) as im:
            assert im.size == (sd.WIDTH, sd.HEIGHT)
        objs = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().findall("object")
        anns = by_image[img["id"]]
        assert 1 <= len(objs) == len(anns) <= 4
        for o, a in zip(objs, anns):
            assert o.find("name").text == coco["categories"][a["category_id"] - 1]["name"]
            voc = [int(o.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
            x, y, w, h = a["bbox"]
            # VOC: 1-based inclusive integers around the float box
            assert voc[0] - 1 <= x < voc[0] and voc[1] - 1 <= y < voc[1]
            assert voc[2] - 1 < x + w - 1e-6 and x + w <= voc[2] + 1e-6
            assert voc[3] - 1 < y + h - 1e-6 and y + h <= voc[3] + 1e-6
            assert w > 8 and h > 8 and a["iscrowd"] == 0 and a["area"] > 0


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_polygon_matches_the_painted_shape(shape):
    box, rot = (20.3, 15.7, 90.2, 70.9), 10.0
    img = Image.new("RGB", (sd.WIDTH, sd.HEIGHT))
    shapes.draw_shape(img, shape, box, (255, 255, 255), rotation=rot)
    painted = np.asarray(img)[..., 0] > 127
    rle = mask_utils.merge(mask_utils.frPyObjects([sd.shape_polygon(shape, box, rot)], sd.HEIGHT, sd.WIDTH))
    poly = mask_utils.decode(rle).astype(bool)
    iou = (painted & poly).sum() / (painted | poly).sum()
    assert iou > 0.9, f"{shape}: polygon/painted IoU {iou:.3f}"


def test_loaders_read_both_forms(small, tmp_path):
    from detectron2.data import DatasetCatalog

    from transfer.evaluation import detection_data as dd

    voc = dd.register_voc("syn_voc_val", small["root"], "val", list(sd.CLASSES), cache_dir=tmp_path)
    coco = dd.register_coco("syn_coco_val", small["coco_val_json"], small["image_root"])
    v, c = DatasetCatalog.get(voc), DatasetCatalog.get(coco)
    assert len(v) == len(c) == 6
    for rv, rc in zip(v, c):
        assert [a["category_id"] for a in rv["annotations"]] == [a["category_id"] for a in rc["annotations"]]
        assert all(isinstance(a["segmentation"], list) for a in rc["annotations"])
