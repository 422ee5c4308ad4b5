"""Detection datasets for detectron2: the standard benchmarks, any VOC-format folder, any COCO JSON.

A dataset is named on the command line (`--train-dataset`, `--test-dataset`) by one of:

* a standard detectron2 name under the datasets root (`--data-root`, else $DETECTRON2_DATASETS, else
  ./datasets), laid out as detectron2 expects: `voc_2007_{trainval,train,val,test}` -> VOC2007/,
  `voc_2012_{trainval,train,val}` -> VOC2012/, `coco_2017_{train,val}` -> coco/{train2017,val2017} and
  coco/annotations/instances_{train,val}2017.json;
* `PATH[:SPLIT]` of a VOC-format folder (Annotations/, JPEGImages/, ImageSets/Main/<SPLIT>.txt; default
  split "trainval"); classes are discovered from its XML files (sorted), or given with `classes=`;
* `FILE.json[:IMAGE_DIR]` of a COCO instances file (image folder default: for .../annotations/instances_X.json
  the sibling folder X, else the JSON's folder);
* `embedded_voc_{train,val}` / `embedded_coco_{train,val}`: the generated shapes data (pretrain.generated.embedded_detection,
  imported only when an embedded dataset is asked for);
* a name already registered in detectron2's DatasetCatalog.

Bad input: a missing dataset folder, split file or JSON, or an unreadable JSON, raises `DatasetError` naming the
path. Per-image defects (malformed XML, missing or unreadable image, unknown class) drop the image or box with
a warning naming the file; zero-area boxes are dropped with a warning; a dataset left empty is an error.

VOC evaluation: detectron2's PascalVOCDetectionEvaluator re-reads `<meta.dirname>/Annotations/<id>.xml` and
`<meta.dirname>/ImageSets/Main/<meta.split>.txt` itself and needs every object to have integer coordinates
and pose/truncated/difficult fields. So `meta.dirname` of our VOC datasets points at an evaluation copy
(`<cache>/voc-eval/<name>-<hash>/`) that `prepare_voc_evaluation(name)` writes from the loaded (cleaned) dicts
just before evaluation: exactly the images and boxes the model is tested on, the original coordinates, the
difficult flags. `meta.year` picks the metric: 2007 = the 11-point VOC07 AP (our default for custom folders,
as for voc_2007_test), 2012 = area under the curve.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

from pretrain.checkpoint import atomic_write
from pretrain.errors import InputError
from transfer.evaluation.detection.config import DEFAULT_CACHE
from transfer.evaluation.detection.shim import import_detectron2

import_detectron2()
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

log = logging.getLogger("simsiam.detection_data")

COCO_CLASSES = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]  # the 80 detection classes, in id order
STANDARD_VOC = {f"voc_{y}_{s}": (f"VOC{y}", s, y) for y in (2007, 2012) for s in ("trainval", "train", "val")}
STANDARD_VOC["voc_2007_test"] = ("VOC2007", "test", 2007)
STANDARD_COCO = {f"coco_2017_{s}": (f"coco/{s}2017", f"coco/annotations/instances_{s}2017.json")
                 for s in ("train", "val")}
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class DatasetError(InputError, ValueError):
    """A dataset that cannot be used; the message names the file or folder."""


def datasets_root(data_root: str | os.PathLike | None = None) -> Path:
    return Path(data_root or os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


# ------------------------------------------------------------------------------------------------- VOC
def _text(node, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{path}: <{tag}> is missing or empty")
    return child.text.strip()


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size  # (w, h); reads the header only


@lru_cache(maxsize=None)
def _parse_voc_xml(xml_path: str, mtime: float) -> dict:
    """{"width","height","objects": [{"name","bbox" (1-based inclusive floats),"difficult","truncated","pose"}]}.
    Raises DatasetError for a file that is not usable as a whole."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    size = root.find("size")
    width = height = 0
    if size is not None:
        try:
            width, height = int(float(_text(size, "width", path))), int(float(_text(size, "height", path)))
        except (DatasetError, ValueError):
            width = height = 0
    objects = []
    for k, obj in enumerate(root.findall("object")):
        try:
            name = _text(obj, "name", path)
            bb = obj.find("bndbox")
            if bb is None:
                raise DatasetError(f"{path}: object {k} ({name}) has no <bndbox>")
            try:
                box = [float(_text(bb, t, path)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError as e:
                raise DatasetError(f"{path}: object {k} ({name}) has a non-numeric box coordinate ({e})") from None
        except DatasetError as e:
            objects.append({"error": str(e)})
            continue

        def flag(tag: str) -> int:
            node = obj.find(tag)
            try:
                return int(float(node.text)) if node is not None and node.text else 0
            except ValueError:
                return 0

        pose = obj.find("pose")
        objects.append({"name": name, "bbox": box, "difficult": flag("difficult"), "truncated": flag("truncated"),
                        "pose": pose.text.strip() if pose is not None and pose.text else "Unspecified"})
    return {"width": width, "height": height, "objects": objects}


def _split_ids(dirname: Path, split: str) -> list[str]:
    split_file = dirname / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (dirname / "ImageSets" / "Main").glob("*.txt"))
        raise DatasetError(f"VOC split file {split_file} not found"
                           + (f" (splits there: {', '.join(have)})" if have else ""))
    ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    if not ids:
        raise DatasetError(f"VOC split file {split_file} lists no images")
    return ids


def check_voc_folder(dirname: str | os.PathLike) -> Path:
    d = Path(dirname).expanduser()
    if not d.is_dir():
        raise DatasetError(f"VOC dataset folder {d} does not exist")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (d / sub).is_dir():
            raise DatasetError(f"{d} is not a VOC-format folder: {d / sub} is missing "
                               f"(expected Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)")
    return d


def discover_voc_classes(dirname: str | os.PathLike) -> list[str]:
    """Sorted class names found in the XML files of every split of the folder."""
    d = check_voc_folder(dirname)
    ids = sorted({i for f in (d / "ImageSets" / "Main").glob("*.txt") for i in
                  (ln.split()[0] for ln in f.read_text().splitlines() if ln.strip())})
    names = set()
    for i in ids:
        p = d / "Annotations" / f"{i}.xml"
        if not p.is_file():
            continue
        try:
            rec = _parse_voc_xml(str(p), p.stat().st_mtime)
        except DatasetError:
            continue
        names.update(o["name"] for o in rec["objects"] if "name" in o)
    if not names:
        raise DatasetError(f"{d}: no object classes found in Annotations/*.xml")
    return sorted(names)


def _find_image(d: Path, image_id: str) -> Path | None:
    for ext in IMAGE_EXTS:
        p = d / "JPEGImages" / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def load_voc(dirname: str | os.PathLike, split: str, class_names, name: str = "") -> list[dict]:
    """detectron2 dataset dicts of a VOC folder (same box convention as detectron2's loader: xmin/ymin - 1),
    with defects dropped and reported. Each annotation also carries "difficult" (used for evaluation)."""
    d = check_voc_folder(dirname)
    class_names = list(class_names)
    dicts, problems = [], []
    for image_id in _split_ids(d, split):
        xml = d / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            problems.append(f"{xml}: annotation file missing; image dropped")
            continue
        try:
            rec = _parse_voc_xml(str(xml), xml.stat().st_mtime)
        except DatasetError as e:
            problems.append(f"{e}; image dropped")
            continue
        img = _find_image(d, image_id)
        if img is None:
            problems.append(f"{d / 'JPEGImages' / (image_id + '.jpg')}: image missing; dropped")
            continue
        try:
            w, h = _image_size(img)
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
            problems.append(f"{img}: unreadable image ({type(e).__name__}: {e}); dropped")
            continue
        if (rec["width"], rec["height"]) != (w, h) and rec["width"]:
            problems.append(f"{xml}: <size> {rec['width']}x{rec['height']} differs from the image {w}x{h}; "
                            f"using the image size")
        annos = []
        for k, o in enumerate(rec["objects"]):
            if "error" in o:
                problems.append(o["error"] + "; box dropped")
                continue
            if o["name"] not in class_names:
                problems.append(f"{xml}: object {k} has unknown class '{o['name']}' "
                                f"(classes: {', '.join(class_names)}); box dropped")
                continue
            x0, y0, x1, y1 = o["bbox"]
            # zero area as written (xmax <= xmin or ymax <= ymin: a point or a line, e.g. BCCD's two defects)
            degenerate = not (x1 > x0 and y1 > y0) or not all(map(math.isfinite, (x0, y0, x1, y1)))
            x0, y0 = x0 - 1.0, y0 - 1.0
            x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
            y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
            if degenerate or not (x1 > x0 and y1 > y0):
                problems.append(f"{xml}: object {k} ({o['name']}) has zero area {tuple(o['bbox'])}; box dropped")
                continue
            annos.append({"category_id": class_names.index(o["name"]), "bbox": [x0, y0, x1, y1],
                          "bbox_mode": BoxMode.XYXY_ABS, "difficult": o["difficult"],
                          "truncated": o["truncated"], "pose": o["pose"]})
        dicts.append({"file_name": str(img), "image_id": image_id, "height": h, "width": w, "annotations": annos})
    _report(name or f"{d}:{split}", problems, len(dicts))
    if not dicts:
        raise DatasetError(f"VOC dataset {d} split '{split}': no usable images")
    return dicts


def _report(name: str, problems: list[str], kept: int) -> None:
    if not problems:
        return
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    log.warning("dataset %s: %d problem(s), %d images kept:\n  %s%s", name, len(problems), kept,
                "\n  ".join(shown), more)


def _eval_dir(name: str, dirname: Path, split: str, classes, cache_dir) -> Path:
    key = hashlib.sha1(json.dumps([str(dirname.absolute()), split, list(classes)]).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(cache_dir).expanduser().absolute() / "voc-eval" / f"{safe}-{key}"


def register_voc(name: str, dirname, split: str, class_names=None, year: int = 2007,
                 cache_dir=DEFAULT_CACHE) -> str:
    d = check_voc_folder(dirname)
    _split_ids(d, split)  # fail now, naming the file, rather than inside the data loader
    classes = list(class_names) if class_names else discover_voc_classes(d)
    if year not in (2007, 2012):
        raise DatasetError(f"VOC metric year must be 2007 or 2012, got {year}")
    _unregister(name)
    DatasetCatalog.register(name, lambda: load_voc(d, split, classes, name))
    MetadataCatalog.get(name).set(thing_classes=classes, dirname=str(_eval_dir(name, d, split, classes, cache_dir)),
                                  source_dirname=str(d), year=year, split=split, evaluator_type="pascal_voc")
    return name


def prepare_voc_evaluation(name: str) -> Path:
    """Write the evaluation copy (Annotations + ImageSets/Main/<split>.txt) that PascalVOCDetectionEvaluator
    reads for dataset `name`, from the dicts the model is tested on. Returns the folder."""
    meta = MetadataCatalog.get(name)
    out = Path(meta.dirname)
    dicts = DatasetCatalog.get(name)
    ann = out / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for r in dicts:
        objs = []
        for a in r.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            objs.append(f"<object><name>{meta.thing_classes[a['category_id']]}</name>"
                        f"<pose>{a.get('pose', 'Unspecified')}</pose><truncated>{int(a.get('truncated', 0))}</truncated>"
                        f"<difficult>{int(a.get('difficult', 0))}</difficult><bndbox>"
                        f"<xmin>{int(round(x0 + 1))}</xmin><ymin>{int(round(y0 + 1))}</ymin>"
                        f"<xmax>{int(round(x1))}</xmax><ymax>{int(round(y1))}</ymax></bndbox></object>")
        text = (f"<annotation><filename>{Path(r['file_name']).name}</filename><size><width>{r['width']}</width>"
                f"<height>{r['height']}</height><depth>3</depth></size>{''.join(objs)}</annotation>\n")
        _write_if_changed(ann / f"{r['image_id']}.xml", text)
    ids = "\n".join(str(r["image_id"]) for r in dicts) + "\n"
    _write_if_changed(out / "ImageSets" / "Main" / f"{meta.split}.txt", ids)
    return out


def _write_if_changed(path: Path, text: str) -> None:
    """The evaluation copy lives in a shared cache: trials of a job array write it at the same time and
    read it while another writes, so every file is replaced whole (its own temporary file, then rename)."""
    if path.is_file() and path.read_text() == text:
        return
    atomic_write(path, lambda f: f.write(text.encode()), durable=False)


# ------------------------------------------------------------------------------------------------ COCO
def _read_coco_json(json_file: Path) -> dict:
    if not json_file.is_file():
        raise DatasetError(f"COCO annotation file {json_file} not found")
    try:
        doc = json.loads(json_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{json_file}: not a COCO instances file (the top level is a {type(doc).__name__}, "
                           f"expected an object with images/annotations/categories)")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)]
    if missing:
        raise DatasetError(f"{json_file}: not a COCO instances file (no list '{missing[0]}')")
    if not doc["categories"]:
        raise DatasetError(f"{json_file}: 'categories' is empty")
    return doc


def load_coco(json_file, image_root, name: str) -> list[dict]:
    from detectron2.data.datasets.coco import load_coco_json

    json_file, image_root = Path(json_file), Path(image_root)
    _read_coco_json(json_file)
    try:
        dicts = load_coco_json(str(json_file), str(image_root), name, extra_annotation_keys=["id"])
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise DatasetError(f"{json_file}: cannot be loaded as COCO instances ({type(e).__name__}: {e})") from None
    kept, problems = [], []
    for r in dicts:
        if not os.path.isfile(r["file_name"]):
            problems.append(f"{r['file_name']}: image missing; dropped")
            continue
        annos = []
        for a in r.get("annotations", []):
            x, y, w, h = a["bbox"]
            if not (w > 0 and h > 0):
                problems.append(f"{json_file}: annotation {a.get('id', '?')} of image {r['image_id']} has zero area "
                                f"bbox {a['bbox']}; dropped")
                continue
            annos.append(a)
        r["annotations"] = annos
        kept.append(r)
    _report(name, problems, len(kept))
    if not kept:
        raise DatasetError(f"COCO dataset {json_file}: no usable images under {image_root}")
    return kept


def register_coco(name: str, json_file, image_root=None) -> str:
    json_file = Path(json_file).expanduser()
    if image_root is None:
        stem = json_file.stem
        guess = json_file.parent.parent / stem.split("_", 1)[1] if stem.startswith("instances_") else None
        image_root = guess if guess is not None and guess.is_dir() else json_file.parent
    image_root = Path(image_root).expanduser()
    doc = _read_coco_json(json_file)
    if not image_root.is_dir():
        raise DatasetError(f"COCO image folder {image_root} (for {json_file}) does not exist")
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    _unregister(name)
    DatasetCatalog.register(name, lambda: load_coco(json_file, image_root, name))
    MetadataCatalog.get(name).set(thing_classes=[c["name"] for c in cats],
                                  thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(cats)},
                                  json_file=str(json_file), image_root=str(image_root), evaluator_type="coco")
    return name


# -------------------------------------------------------------------------------------------- helpers
def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def limit_dataset(name: str, n: int) -> str:
    """Register `name@n`: the first n images of `name` (its VOC evaluation copy lists only those; its COCO
    ground truth is converted from the kept dicts by COCOEvaluator). Returns the new name."""
    if n <= 0:
        return name
    new = f"{name}@{n}"
    meta = MetadataCatalog.get(name)
    _unregister(new)
    DatasetCatalog.register(new, lambda: DatasetCatalog.get(name)[:n])
    fields = {k: v for k, v in meta.as_dict().items() if k not in ("name", "json_file")}
    if fields.get("evaluator_type") == "pascal_voc":
        fields["dirname"] = fields["dirname"] + f"@{n}"
    MetadataCatalog.get(new).set(**fields)
    return new


def dataset_kind(name: str) -> str:
    """'voc' or 'coco' (decides the evaluator)."""
    meta = MetadataCatalog.get(name)
    kind = getattr(meta, "evaluator_type", None)
    if kind == "pascal_voc":
        return "voc"
    if kind == "coco" or hasattr(meta, "json_file") or hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        return "coco"
    raise DatasetError(f"dataset '{name}': unknown evaluator type {kind!r} (expected a VOC or COCO dataset)")


def thing_classes(name: str) -> list[str]:
    """The class names of a registered dataset, in label order."""
    return list(MetadataCatalog.get(name).thing_classes)


def display_name(name: str) -> str:
    """A short dataset name for results.json ('bccd', 'coco-tiny', 'embedded', ...)."""
    return str(getattr(MetadataCatalog.get(name), "display_name", name.split("@")[0]))


def register_embedded(cache_dir=DEFAULT_CACHE) -> list[str]:
    from pretrain.generated.embedded_detection import CLASSES, ensure_embedded_detection

    paths = ensure_embedded_detection(cache_dir)
    names = []
    for split in ("train", "val"):
        names.append(register_voc(f"embedded_voc_{split}", paths["root"], split, CLASSES, 2007, cache_dir))
        names.append(register_coco(f"embedded_coco_{split}", paths[f"coco_{split}_json"], paths["image_root"]))
    for n in names:
        MetadataCatalog.get(n).set(display_name="embedded")
    return names


def resolve_dataset(spec: str, data_root=None, cache_dir=DEFAULT_CACHE, classes=None, year: int = 2007) -> str:
    """Register the dataset named by `spec` (see the module docstring) and return its catalog name."""
    spec = str(spec)
    if spec.startswith("embedded_"):
        register_embedded(cache_dir)
        if spec not in DatasetCatalog.list():
            raise DatasetError(f"unknown embedded dataset '{spec}' (have: embedded_voc_train, embedded_voc_val, "
                               f"embedded_coco_train, embedded_coco_val)")
        return spec
    root = datasets_root(data_root)
    if spec in STANDARD_VOC:
        sub, split, y = STANDARD_VOC[spec]
        d = root / sub
        if not d.is_dir():
            raise DatasetError(f"dataset {spec}: folder {d} not found (set --data-root or DETECTRON2_DATASETS to the "
                               f"folder holding VOC2007/, VOC2012/, coco/)")
        register_voc(spec, d, split, VOC_CLASSES, y, cache_dir)
        MetadataCatalog.get(spec).set(display_name=spec)  # the benchmark name (voc07/voc0712) is decided by detect
        return spec
    if spec in STANDARD_COCO:
        images, js = STANDARD_COCO[spec]
        if not (root / js).is_file():
            raise DatasetError(f"dataset {spec}: {root / js} not found (set --data-root or DETECTRON2_DATASETS "
                               f"to the folder holding coco/)")
        register_coco(spec, root / js, root / images)
        if [c for c in MetadataCatalog.get(spec).thing_classes] != COCO_CLASSES:
            raise DatasetError(f"{root / js}: categories differ from the 80 COCO classes")
        MetadataCatalog.get(spec).set(display_name=spec)
        return spec
    path_part, _, extra = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    p = Path(path_part).expanduser()
    if p.suffix == ".json":
        name = _path_name(p.parent.parent.name if p.parent.name == "annotations" else p.parent.name, p.stem)
        register_coco(name, p, extra or None)
        MetadataCatalog.get(name).set(display_name=(p.parent.parent if p.parent.name == "annotations"
                                                    else p.parent).name.lower())
        return name
    if p.is_dir() or (p.suffix == "" and os.sep in path_part):
        split = extra or "trainval"
        name = _path_name(p.name, split)
        register_voc(name, p, split, classes, year, cache_dir)
        MetadataCatalog.get(name).set(display_name=p.name.lower())
        return name
    if spec in DatasetCatalog.list():
        return spec
    raise DatasetError(f"unknown dataset '{spec}': not a standard name ({', '.join(list(STANDARD_VOC) + list(STANDARD_COCO))}), "
                       f"not an existing VOC folder or COCO .json, and not registered")


def _path_name(base: str, split: str) -> str:
    return f"{base.lower()}_{split}"
