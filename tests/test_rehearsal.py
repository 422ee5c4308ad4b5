"""pretrain.generated.rehearsal: the generated ImageNet-shaped and detection-shaped rehearsal datasets.

Layout as torchvision's ImageFolder and detectron2's builtin dataset names read it, image sizes, the real
set's file quirks, determinism, the command line, and a real pretraining run reading the tree.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from pretrain import config
from pretrain.data import RobustImageFolder
from pretrain.defaults import PretrainConfig
from pretrain.generated import rehearsal
from pretrain.train import run

REPO = Path(__file__).resolve().parents[1]
WNID = re.compile(r"^n\d{8}$")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal") / "imagenet"
    return rehearsal.make_imagenet_like(root, classes=20, train_per_class=3, val_per_class=2, seed=0)


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return rehearsal.make_detection_like(tmp_path_factory.mktemp("rehearsal") / "detection", seed=0)


def test_layout_reads_as_imagefolder(small):
    from torchvision.datasets import ImageFolder
    root = Path(small["root"])
    assert (root / "README.txt").is_file() and json.loads((root / "manifest.json").read_text())["classes"] == 20
    assert small["splits"] == {"train": 60, "val": 40} and small["wnids"] == rehearsal.wnids(20)
    for split, n, pattern in (("train", 3, r"^(n\d{8})_\d+\.JPEG$"), ("val", 2, r"^ILSVRC2012_val_\d{8}\.JPEG$")):
        ds = ImageFolder(root / split)
        assert ds.classes == small["wnids"] and len(ds) == 20 * n
        for path, label in ds.samples:
            p = Path(path)
            m = re.match(pattern, p.name)
            assert m and p.parent.name == ds.classes[label] and (split == "val" or m.group(1) == p.parent.name)
    numbers = sorted(int(p.stem[-8:]) for p in (root / "val").rglob("*.JPEG"))
    assert numbers == list(range(1, 41))                      # ILSVRC2012_val_00000001 .. 00000040


def test_thousand_classes_one_image_each(tmp_path):
    from torchvision.datasets import ImageFolder
    s = rehearsal.make_imagenet_like(tmp_path / "in1k", classes=1000, train_per_class=1, val_per_class=0)
    ids = sorted(p.name for p in (tmp_path / "in1k" / "train").iterdir())
    assert len(ids) == len(set(ids)) == 1000 and all(WNID.match(i) for i in ids)
    assert ids == s["wnids"] == rehearsal.wnids(1000) and ids[0] == "n01440764"
    assert rehearsal.wnids(1001)[:1000] == ids and not (tmp_path / "in1k" / "val").exists()
    ds = ImageFolder(tmp_path / "in1k" / "train")
    assert len(ds.classes) == 1000 and len(ds) == 1000 and s["splits"] == {"train": 1000}


def test_sizes_and_aspect_ratios(small):
    sizes = [Image.open(p).size for p in Path(small["root"]).rglob("*.JPEG")]
    assert len(sizes) == 100
    for w, h in sizes:
        assert 60 <= min(w, h) <= 500 and max(w, h) <= 3 * min(w, h), (w, h)
    assert len(set(sizes)) > 90                                   # varied
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert min(min(s) for s in sizes) < 100 and max(min(s) for s in sizes) > 300
    assert max(max(s) / min(s) for s in sizes) > 2


def test_quirks_present_and_readable(small):
    from torchvision.datasets.folder import default_loader
    root, q = Path(small["root"]), small["quirks"]
    for quirk in rehearsal.QUIRKS:
        assert {p.split("/")[0] for p in q[quirk]} == {"train", "val"}, quirk
    for p in q["grayscale"]:
        im = Image.open(root / p)
        assert (im.format, im.mode) == ("JPEG", "L") and im.convert("RGB").mode == "RGB"
    for p in q["cmyk"]:
        im = Image.open(root / p)
        assert (im.format, im.mode) == ("JPEG", "CMYK") and im.convert("RGB").getextrema()[0][1] > 0
    for p in q["png_as_jpeg"]:
        im = Image.open(root / p)
        assert p.endswith(".JPEG") and im.format == "PNG" and im.mode == "RGB"
    for p in q["exif_rotated"]:
        im = Image.open(root / p)
        assert im.format == "JPEG" and im.getexif().get(0x0112) == rehearsal.EXIF_ORIENTATION != 1
        assert ImageOps.exif_transpose(im).size == im.size[::-1]
    plain = {str(p.relative_to(root)) for p in root.rglob("*.JPEG")} - {p for v in q.values() for p in v}
    assert {Image.open(root / p).mode for p in plain} == {"RGB"}
    for p in (p for v in q.values() for p in v):                 # both loaders the project may use
        assert RobustImageFolder.read_image(str(root / p)).mode == "RGB" == default_loader(str(root / p)).mode


def test_deterministic_bytes(tmp_path):
    a = rehearsal.make_imagenet_like(tmp_path / "a", classes=6, train_per_class=2, val_per_class=1, seed=3)
    b = rehearsal.make_imagenet_like(tmp_path / "b", classes=6, train_per_class=2, val_per_class=1, seed=3)
    c = rehearsal.make_imagenet_like(tmp_path / "c", classes=6, train_per_class=2, val_per_class=1, seed=4)
    ha, hb, hc = (tree_hashes(Path(s["root"])) for s in (a, b, c))
    assert ha == hb and len(ha) == 6 * 3 + 2
    images = [k for k in ha if k.endswith(".JPEG")]
    assert all(ha[k] != hc.get(k) for k in images if k.startswith("train"))
    assert len({ha[k] for k in images}) == len(images)


def test_images_are_pinned():
    """The class images and the detection scenes with their objects, pinned (measured runs used these)."""
    import numpy as np

    h = hashlib.sha256()
    for img in (rehearsal.render_class_image(np.random.default_rng([0, s, c, 0]), c) for s in (0, 1)
                for c in (0, 1, 9, 999)):
        h.update(str(np.asarray(img).shape).encode() + np.asarray(img).tobytes())
    assert h.hexdigest()[:16] == "7938351b46df63e6"
    h = hashlib.sha256()
    scenes = [rehearsal.render_scene(np.random.default_rng([0, 11, y, 0, i]), n) for y, n in ((2007, 20), (2017, 80))
              for i in range(3)]
    for img, _ in scenes:
        h.update(str(np.asarray(img).shape).encode() + np.asarray(img).tobytes())
    h.update(json.dumps([objects for _, objects in scenes], sort_keys=True).encode())
    assert h.hexdigest()[:16] == "f335ccab5500396a"


def test_reuse_replace_and_refuse(tmp_path):
    root = tmp_path / "in"
    assert not rehearsal.make_imagenet_like(root, classes=3, train_per_class=1, val_per_class=1)["reused"]
    assert rehearsal.make_imagenet_like(root, classes=3, train_per_class=1, val_per_class=1)["reused"]
    s = rehearsal.make_imagenet_like(root, classes=4, train_per_class=1, val_per_class=1)   # ours: replaced
    assert not s["reused"] and len(list((root / "train").iterdir())) == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="manifest.json missing"):
        rehearsal.make_imagenet_like(tmp_path / "other", classes=3)
    for bad in ({"classes": 0}, {"classes": 21842}, {"train_per_class": 0}, {"val_per_class": -1}, {"classes": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rehearsal.make_imagenet_like(tmp_path / "bad", **bad)
    with pytest.raises(ValueError, match="coco_val must be an integer >= 2"):
        rehearsal.make_detection_like(tmp_path / "bad", coco_val=1)
    assert not (tmp_path / "bad").exists()


def test_command_line(tmp_path, capsys):
    assert rehearsal.main([str(tmp_path / "out"), "--classes", "4", "--train-per-class", "1", "--detection"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("imagenet: 4 classes, 4 train, 4 val images (")
    assert lines[1].startswith("detection: coco_2017_train 8, coco_2017_val 6, ") and " s -> " in lines[1]
    assert (tmp_path / "out" / "imagenet" / "train").is_dir() and (tmp_path / "out" / "detection" / "coco").is_dir()
    for argv in (["--classes", "x", str(tmp_path)], [str(tmp_path / "o2"), "--classes", "0"], []):
        proc = subprocess.run([sys.executable, "-m", "pretrain.generated.rehearsal", *argv], capture_output=True,
                              text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, argv
        assert proc.stderr.startswith("python -m pretrain.generated.rehearsal: error: ")


def test_detection_voc_layout(det):
    root = Path(det["root"])
    expected = {("VOC2007", "trainval"): 8, ("VOC2007", "test"): 6, ("VOC2012", "trainval"): 8,
                ("VOC2007", "train"): 4, ("VOC2007", "val"): 4, ("VOC2012", "train"): 4, ("VOC2012", "val"): 4}
    sizes = set()
    for (year, split), n in expected.items():
        ids = (root / year / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert len(ids) == n and det["datasets"][f"voc_{year[3:]}_{split}"] == n
        for i in ids:
            im = Image.open(root / year / "JPEGImages" / f"{i}.jpg")
            sizes.add(im.size)
            xml = (root / year / "Annotations" / f"{i}.xml").read_text()
            assert f"<width>{im.width}</width><height>{im.height}</height>" in xml
            assert set(re.findall(r"<name>(.*?)</name>", xml)) <= set(rehearsal.VOC_CLASSES) and "<object>" in xml
    trainval = (root / "VOC2007/ImageSets/Main/trainval.txt").read_text().split()
    assert set(trainval).isdisjoint((root / "VOC2007/ImageSets/Main/test.txt").read_text().split())
    assert len(sizes) > 10 and det["voc_2007_test_difficult"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_detection_coco_json(det):
    from pycocotools.coco import COCO
    root = Path(det["root"]) / "coco"
    for split, n in (("train", 8), ("val", 6)):
        coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert len(cats) == 80 and cats[0] == {"id": 1, "name": "person", "supercategory": "person"}
        assert cats[-1]["id"] == 90 and 12 not in coco.getCatIds()     # COCO's non-contiguous ids
        assert len(coco.getImgIds()) == n and len(coco.getAnnIds()) == det["coco_annotations"][split] > 0
        for img in coco.loadImgs(coco.getImgIds()):
            assert Image.open(root / f"{split}2017" / img["file_name"]).size == (img["width"], img["height"])
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and a["area"] > 0
                assert coco.annToMask(a).sum() > 0.5 * a["area"]
    doc = json.loads((root / "annotations/instances_train2017.json").read_text())
    annotated = {a["image_id"] for a in doc["annotations"]}
    assert [im["id"] for im in doc["images"] if im["id"] not in annotated] == [doc["images"][-1]["id"]]


D2_CHECK = """
import json
from transfer.evaluation.detection.shim import import_detectron2
import_detectron2()
from detectron2.data import DatasetCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
names = ["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval", "voc_2007_train", "voc_2012_val",
         "coco_2017_train", "coco_2017_val"]
out = {n: [len(d), sum(len(r["annotations"]) for r in d), all(__import__("os").path.isfile(r["file_name"]) for r in d)]
       for n in names for d in [DatasetCatalog.get(n)]}
out["coco_ids"] = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]
print(json.dumps(out))
"""


def test_detectron2_builtin_names_resolve(det):
    env = dict(os.environ, DETECTRON2_DATASETS=det["root"], PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", D2_CHECK], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("coco_ids") == [c["id"] for c in rehearsal.COCO_CATEGORIES]
    for name, (n_images, n_boxes, files_exist) in out.items():
        assert n_images == det["datasets"][name] and n_boxes > 0 and files_exist, name
    assert out["coco_2017_val"][1] == det["coco_annotations"]["val"]


def test_pretraining_reads_rehearsal_tree(tmp_path, monkeypatch):
    """The real pretraining (PIL path) on varied sizes, grayscale, CMYK, PNG-as-JPEG and EXIF files: with these
    caps the kNN memory bank reads every train image and the held-out set every val image."""
    s = rehearsal.make_imagenet_like(tmp_path / "data", classes=10, train_per_class=4, val_per_class=2)
    read, original = set(), RobustImageFolder.read_image

    def recording(path):
        read.add(str(Path(path).relative_to(s["root"])))
        return original(path)

    monkeypatch.setattr(RobustImageFolder, "read_image", staticmethod(recording))  # data.workers=0: in-process
    cfg = config.resolve(PretrainConfig(), ["test_tiny"],
                         [f"data.root={s['root']}", "train.epochs=1", "train.max_steps_per_epoch=2",
                          "monitor.knn=true", "monitor.knn_max_train=4", "monitor.knn_max_val=2",
                          "monitor.tensorboard=false", "train.save_freq=0"], kind="pretrain")
    result = run(cfg, tmp_path / "run")
    assert result["complete"] and result["epoch"] == 1 and result["step"] == 2
    (m,) = result["history"]
    assert "knn_top1" in m and 0 <= m["knn_top1"] <= 100
    quirky = {p for v in s["quirks"].values() for p in v}
    assert len(quirky) == 8 and quirky <= read and len(read) == 60
