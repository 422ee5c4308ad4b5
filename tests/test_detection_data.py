"""transfer.evaluation.detection_data on real data (BCCD VOC folder, coco-tiny JSON) and on damaged copies of it."""
from __future__ import annotations

import json
import logging
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer.evaluation import detection_data as dd
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402 (imported after the shim, via dd)


def _copy_voc(src: Path, dst: Path, ids: list[str], split: str = "test") -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(src / "Annotations" / f"{i}.xml", dst / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
    (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return dst


def test_bccd_loads_and_drops_its_zero_area_boxes(bccd_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="simsiam.detection_data")
    name = dd.resolve_dataset(f"{bccd_root}:trainval", cache_dir=tmp_path)
    assert name == "bccd_trainval" and dd.dataset_kind(name) == "voc" and dd.display_name(name) == "bccd"
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert len(dicts) == 292 and meta.thing_classes == ["Platelets", "RBC", "WBC"] and meta.year == 2007
    assert "BloodImage_00338.xml: object 12 (RBC) has zero area" in caplog.text
    assert "BloodImage_00343.xml" in caplog.text
    boxes = np.array([a["bbox"] for r in dicts for a in r["annotations"]])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    first = next(r for r in dicts if r["image_id"] == "BloodImage_00000")
    # detectron2's convention: VOC's 1-based xmin/ymin minus 1 (first WBC box is 260 177 491 376 in the XML)
    assert first["annotations"][0]["bbox"] == [259.0, 176.0, 491.0, 376.0]
    assert (first["width"], first["height"]) == (640, 480)


def test_voc_evaluator_reads_our_evaluation_copy(bccd_root, tmp_path):
    """PascalVOCDetectionEvaluator on the (cleaned, limited) BCCD test set: ground truth as predictions gives
    AP50 = 100, and the copy lists exactly the evaluated images."""
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    name = dd.limit_dataset(dd.resolve_dataset(f"{bccd_root}:test", cache_dir=tmp_path), 6)
    folder = dd.prepare_voc_evaluation(name)
    assert folder.is_relative_to(tmp_path)
    dicts = DatasetCatalog.get(name)
    ids = (folder / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert ids == [r["image_id"] for r in dicts] and len(ids) == 6
    ev = PascalVOCDetectionEvaluator(name)
    ev.reset()
    for r in dicts:
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in r["annotations"]], dtype=torch.float32))
        inst.scores = torch.ones(len(r["annotations"]))
        inst.pred_classes = torch.tensor([a["category_id"] for a in r["annotations"]])
        ev.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()["bbox"]
    assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == pytest.approx(100.0)


def test_voc_evaluation_copy_written_by_two_trials_at_once(bccd_root, tmp_path, monkeypatch):
    """Trials of a job array share the evaluation copy (it lives in the cache): a second trial writing it
    while the first is half-way must leave both with a complete copy, and an unchanged copy is not rewritten."""
    name = dd.limit_dataset(dd.resolve_dataset(f"{bccd_root}:test", cache_dir=tmp_path), 4)
    real = dd.atomic_write
    calls = []

    def interleaved(path, write, **kw):
        calls.append(path.name)
        if len(calls) == 2:  # the other trial runs its whole preparation between our first and second file
            monkeypatch.setattr(dd, "atomic_write", real)
            dd.prepare_voc_evaluation(name)
            monkeypatch.setattr(dd, "atomic_write", interleaved)
        return real(path, write, **kw)

    monkeypatch.setattr(dd, "atomic_write", interleaved)
    folder = dd.prepare_voc_evaluation(name)
    ids = [r["image_id"] for r in DatasetCatalog.get(name)]
    assert (folder / "ImageSets" / "Main" / "test.txt").read_text().split() == ids
    assert sorted(p.name for p in (folder / "Annotations").iterdir()) == sorted(f"{i}.xml" for i in ids)
    assert not [p for p in folder.rglob(".*")]                      # no temporary file left behind
    src = {i: ET.parse(bccd_root / "Annotations" / f"{i}.xml").getroot() for i in ids}
    for i in ids:  # same objects as the source (minus zero-area boxes)
        ours = ET.parse(folder / "Annotations" / f"{i}.xml").getroot()
        assert {o.findtext("name") for o in ours.iter("object")} <= {o.findtext("name") for o in src[i].iter("object")}
    calls.clear()
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    dd.prepare_voc_evaluation(name)
    assert calls == [] and before == {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_damaged_voc_folder(bccd_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="simsiam.detection_data")
    ids = [f"BloodImage_{i:05d}" for i in range(0, 6)]
    voc = _copy_voc(bccd_root, tmp_path / "voc", ids)
    (voc / "Annotations" / f"{ids[1]}.xml").write_text("<annotation><size><width>640</width>")  # truncated
    (voc / "JPEGImages" / f"{ids[2]}.jpg").unlink()
    (voc / "Annotations" / f"{ids[3]}.xml").unlink()
    (voc / "JPEGImages" / f"{ids[4]}.jpg").write_bytes(b"not a jpeg")
    name = dd.register_voc("damaged_test", voc, "test", ["Platelets", "RBC", "WBC"], cache_dir=tmp_path)
    dicts = DatasetCatalog.get(name)
    assert [r["image_id"] for r in dicts] == [ids[0], ids[5]]
    assert f"{ids[1]}.xml: malformed XML" in caplog.text
    assert f"{ids[2]}.jpg: image missing" in caplog.text
    assert f"{ids[3]}.xml: annotation file missing" in caplog.text
    assert f"{ids[4]}.jpg: unreadable image" in caplog.text
    # unknown classes are dropped with a warning too
    dd.register_voc("only_rbc", voc, "test", ["RBC"], cache_dir=tmp_path)
    assert all(a["category_id"] == 0 for r in DatasetCatalog.get("only_rbc") for a in r["annotations"])
    assert "unknown class 'WBC'" in caplog.text


def test_missing_things_are_errors_naming_the_path(bccd_root, tmp_path):
    with pytest.raises(dd.DatasetError, match="does not exist"):
        dd.resolve_dataset(str(tmp_path / "no_such_voc") + ":train")
    half = tmp_path / "half"
    (half / "Annotations").mkdir(parents=True)
    with pytest.raises(dd.DatasetError, match="JPEGImages is missing"):
        dd.register_voc("half", half, "train", ["a"])
    with pytest.raises(dd.DatasetError, match=r"test2\.txt not found \(splits there: test, train, trainval, val\)"):
        dd.resolve_dataset(f"{bccd_root}:test2")
    with pytest.raises(dd.DatasetError, match="VOC2007 not found .*--data-root"):
        dd.resolve_dataset("voc_2007_test", data_root=tmp_path)
    with pytest.raises(dd.DatasetError, match="instances_val2017.json not found"):
        dd.resolve_dataset("coco_2017_val", data_root=tmp_path)
    with pytest.raises(dd.DatasetError, match="unknown dataset 'nonsense'"):
        dd.resolve_dataset("nonsense")


def test_standard_voc_name_under_a_datasets_root(bccd_root, tmp_path):
    """voc_2007_test resolves under --data-root (VOC2007/ laid out as detectron2 expects) with the 20 classes."""
    ids = ["BloodImage_00000", "BloodImage_00001"]
    _copy_voc(bccd_root, tmp_path / "VOC2007", ids)
    name = dd.resolve_dataset("voc_2007_test", data_root=tmp_path, cache_dir=tmp_path)
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == 20 and meta.year == 2007 and meta.split == "test"
    assert meta.source_dirname == str(tmp_path / "VOC2007")
    # BCCD's classes are not VOC classes: every box is dropped with a warning, the images stay
    assert [len(r["annotations"]) for r in DatasetCatalog.get(name)] == [0, 0]


def test_coco_tiny_and_damaged_json(coco_tiny_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="simsiam.detection_data")
    js = coco_tiny_root / "annotations" / "instances_train2017.json"
    name = dd.resolve_dataset(str(js))
    assert dd.dataset_kind(name) == "coco" and dd.display_name(name) == "coco-tiny"
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    assert len(dicts) == 80 and len(meta.thing_classes) == 80 and meta.image_root.endswith("train2017")
    assert any(isinstance(a.get("segmentation"), list) for r in dicts for a in r["annotations"])
    # malformed JSON
    bad = tmp_path / "bad.json"
    bad.write_text(js.read_text()[:500])
    with pytest.raises(dd.DatasetError, match="bad.json: not valid JSON"):
        dd.register_coco("bad", bad, coco_tiny_root / "train2017")
    # not a COCO file
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(dd.DatasetError, match="list.json"):
        dd.register_coco("lst", tmp_path / "list.json", coco_tiny_root / "train2017")
    # a zero-area box and a missing image are dropped with warnings naming them
    doc = json.loads(js.read_text())
    doc["annotations"][0]["bbox"][2] = 0.0
    victim = doc["annotations"][0]["id"]
    doc["images"][1]["file_name"] = "missing.jpg"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    dd.register_coco("edited", edited, coco_tiny_root / "train2017")
    kept = DatasetCatalog.get("edited")
    assert len(kept) == 79
    assert f"annotation {victim} " in caplog.text and "zero area" in caplog.text
    assert "missing.jpg: image missing" in caplog.text
    assert victim not in {a.get("id") for r in kept for a in r["annotations"]}
