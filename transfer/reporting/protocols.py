"""The paper's evaluation protocols (Tables 4 and 5) as data, and the comparison of a result with them.

Every results.json records under "protocol" the settings it was measured with (the fingerprint: data actually
used, schedule, batch, optimizer, image sizes; built by the functions at the end of this module for the
evaluations, by pretrain.train for pretraining) and under "source.pretrain" what the evaluated checkpoint
says about its pretraining (transfer.evaluation.convert.describe_source). `differences(doc, protocol)` lists, as readable
strings, every setting where a result departs from one column of the paper; a result belongs in that column
only when the list is empty. Unknown counts as different: a results.json without "protocol", or a checkpoint
that does not record its pretraining epochs, dataset, batch (Table 4) or whether its schedule ended, is not
comparable, and the list says what is missing. A pretraining whose config was changed on resume (our
checkpoints list such changes) is not the column's either.

Not compared on purpose: the number of GPUs or processes, mixed precision, channels-last, feature caching,
device-side augmentation, the kind of BN synchronisation (it follows the number of GPUs), and preset names
(their values are compared instead; the name is recorded for the reader). Recorded but not compared, as the
reference does not state them: detection max sizes, weight decay and input format, the COCO warm-up.
Detection train / test sets are compared by catalog name, which carries an image limit as 'name@N'.

Decisions where the paper leaves room:
- Linear batch. The paper reports one linear setting: LARS, batch 4096, lr 0.1 x 4096 / 256 = 1.6. A run at
  another batch, even with the lr scaled by the same rule, is a different measurement: it is listed with
  its difference, not assumed equivalent.
- Pretraining batch, Table 4: SimSiam's 100-epoch result is reported at batch 256 and at 512 (68.1 both), so
  either is accepted; another batch is a point of the paper's batch ablation. Table 5 does not state the
  pretraining batch and none is required.
- Pretraining crop size and image or step limits are options of this project's code; a checkpoint that does
  not record them (official SimSiam, MoCo) is taken to have run the official code's full 224-px epochs.
- Numbers compare with a relative tolerance of 1e-6 (float formatting only); everything else is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pretrain.augment import eval_crop_fraction, eval_resize_size

TABLE4_EPOCHS = (100, 200, 400, 800)
IMAGENET_NAMES = ("imagenet", "imagenet-1k", "ilsvrc2012", "in1k")  # folder names taken as ImageNet-1k
TABLE5_BENCHMARKS = ("voc07", "voc0712", "coco")
REL_TOL = 1e-6


# ------------------------------------------------------------------------------------------------ settings
def _plain(value: Any) -> Any:
    """Lists become tuples and strings lower case, so JSON values compare with the paper's."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value.lower() if isinstance(value, str) else value


def _same(found: Any, expected: Any) -> bool:
    found, expected = _plain(found), _plain(expected)
    if isinstance(found, bool) or isinstance(expected, bool):
        return found is expected
    if isinstance(found, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(found, expected, rel_tol=REL_TOL, abs_tol=0.0)
    if isinstance(found, tuple) and isinstance(expected, tuple):
        return len(found) == len(expected) and all(_same(a, b) for a, b in zip(found, expected))
    return found == expected


def show(value: Any) -> str:
    """A value as the differences print it: 480..800 step 32 for an even range of sizes, a+b for names."""
    if isinstance(value, (list, tuple)):
        vals = list(value)
        steps = {b - a for a, b in zip(vals, vals[1:])} if all(isinstance(v, int) for v in vals) else set()
        if len(vals) > 3 and len(steps) == 1:
            return f"{vals[0]}..{vals[-1]} step {steps.pop()}"
        return "+".join(map(str, vals)) if all(isinstance(v, str) for v in vals) else ", ".join(map(str, vals))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One setting of a column: results.json protocol[key] must equal `value` (or one of `also`)."""
    key: str
    label: str                      # how a difference names it
    value: Any                      # the paper's value
    also: tuple = ()                # other accepted values (other names of the same dataset)

    def difference(self, found: Mapping[str, Any]) -> str | None:
        if self.key not in found or found[self.key] is None:
            return f"{self.label} not recorded"
        value = found[self.key]
        if any(_same(value, ok) for ok in (self.value, *self.also)):
            return None
        return f"{self.label} {show(value)} != {show(self.value)}"


@dataclass(frozen=True)
class Pretraining:
    """What a column needs of the evaluated checkpoint's pretraining (results.json source.pretrain)."""
    epochs: tuple[int, ...]
    batches: tuple[int, ...] = ()   # empty: any batch
    image_size: int = 224


@dataclass(frozen=True)
class Protocol:
    """One column (or group of columns) of the paper's tables."""
    name: str
    settings: tuple[Setting, ...]
    pretraining: Pretraining


def _either(values: Sequence[Any]) -> str:
    vals = [show(v) for v in values]
    return vals[0] if len(vals) == 1 else ", ".join(vals[:-1]) + " or " + vals[-1]


def _number(info: Mapping[str, Any], key: str) -> int:
    value = info.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def pretraining_differences(info: Mapping[str, Any], need: Pretraining) -> list[str]:
    """How the checkpoint's recorded pretraining departs from a column's (empty: it matches)."""
    if str(info.get("method") or "").lower() == "random init":
        return ["random init: no pretraining"]
    out = []
    dataset, epochs = info.get("dataset"), info.get("epochs")
    if dataset is None:
        out.append("pretraining dataset not recorded")
    elif str(dataset).lower() not in IMAGENET_NAMES:
        out.append(f"pretraining dataset {dataset} != imagenet")
    if epochs is None:
        out.append("pretraining epochs not recorded")
    elif epochs not in need.epochs:
        out.append(f"pretraining epochs {epochs} != {_either(need.epochs)}")
    if info.get("completed") is None:
        out.append("pretraining schedule not recorded (cannot tell whether it reached its end)")
    elif not info["completed"]:
        out.append(f"pretraining stopped at epoch {epochs} of {info.get('scheduled_epochs')}")
    if need.batches and info.get("batch_size") is None:
        out.append("pretraining batch not recorded")
    elif need.batches and info["batch_size"] not in need.batches:
        out.append(f"pretraining batch {info['batch_size']} != {_either(need.batches)}")
    if info.get("image_size") not in (None, need.image_size):
        out.append(f"pretraining crop {info['image_size']} != {need.image_size}")
    if _number(info, "limit_per_class") > 0:
        out.append(f"pretraining on {info['limit_per_class']} images per class")
    if _number(info, "max_steps_per_epoch") > 0:
        out.append(f"pretraining epochs cut to {info['max_steps_per_epoch']} steps")
    for c in info.get("config_changes") or []:
        out.append(f"pretraining {c.get('key')} changed from {show(c.get('old'))} to {show(c.get('new'))} "
                   f"after epoch {c.get('epoch')}")
    return out


def differences(doc: Mapping[str, Any], protocol: Protocol, pretraining: bool = True) -> list[str]:
    """Every way the results document departs from the protocol, as readable strings (empty: comparable).
    pretraining=False: the evaluation's settings only (a published checkpoint's own pretraining is not the
    column's in any case; its rows say so)."""
    found = doc.get("protocol")
    if isinstance(found, Mapping):
        out = [d for d in (s.difference(found) for s in protocol.settings) if d]
    else:
        out = ["protocol not recorded in results.json"]
    if not pretraining:
        return out
    pre = (doc.get("source") or {}).get("pretrain") or {}
    return out + pretraining_differences(pre, protocol.pretraining)


# ------------------------------------------------------------------------------------- the paper's columns
LINEAR_IMAGENET = (
    Setting("stage", "evaluation", "linear"),
    Setting("dataset", "dataset", "imagenet", also=IMAGENET_NAMES),
    Setting("arch", "backbone", "resnet50"),
    Setting("train_images", "train images", 1_281_167),
    Setting("val_images", "val images", 50_000),
    Setting("classes", "classes", 1000),
    Setting("epochs", "linear epochs", 90),
    Setting("max_steps_per_epoch", "linear steps-per-epoch cap", 0),
    Setting("batch", "linear batch", 4096),
    Setting("optimizer", "linear optimizer", "lars"),
    Setting("lr", "linear lr", 1.6),
    Setting("weight_decay", "linear weight decay", 0.0),
    Setting("momentum", "linear momentum", 0.9),
    Setting("schedule", "linear lr schedule", "cosine"),
    Setting("lars_trust", "LARS trust coefficient", 0.001),
    Setting("train_augment", "linear train augmentation", "RandomResizedCrop+flip"),
    Setting("train_crop", "train crop", 224),
    Setting("test_resize", "test resize", 256),
    Setting("test_crop", "test crop", 224),
)
TABLE4 = {e: Protocol(f"Table 4, {e} ep", LINEAR_IMAGENET, Pretraining((e,), (256, 512))) for e in TABLE4_EPOCHS}
TABLE4_ANY = Protocol("Table 4", LINEAR_IMAGENET, Pretraining(TABLE4_EPOCHS, (256, 512)))


def _detection(train: tuple[str, ...], test: tuple[str, ...], iterations: int,
               steps: tuple[int, ...], min_train: tuple[int, ...], mask: bool,
               extra: tuple[Setting, ...] = ()) -> tuple[Setting, ...]:
    return (
        Setting("stage", "evaluation", "detection"),
        Setting("train_datasets", "train datasets", train),
        Setting("test_datasets", "test datasets", test),
        Setting("arch", "detector backbone", "R50-C4"),
        Setting("roi_heads", "ROI head", "Res5ROIHeadsExtraNorm"),
        Setting("freeze_at", "frozen backbone stages", 0),
        Setting("mask", "mask head", mask),
        Setting("iterations", "iterations", iterations),
        Setting("steps", "lr steps", steps),
        Setting("batch", "detection batch", 16),
        Setting("base_lr", "detection base lr", 0.02),
        Setting("min_size_train", "train min sizes", min_train),
        Setting("min_size_test", "test min size", 800),
        *extra,
    )


_VOC_TRAIN_SIZES = tuple(range(480, 801, 32))
_VOC_WARMUP = (Setting("warmup_iters", "warm-up iterations", 100),)
TABLE5 = {
    "voc07": Protocol("Table 5, VOC 07", _detection(
        ("voc_2007_trainval",), ("voc_2007_test",), 24_000, (18_000, 22_000), _VOC_TRAIN_SIZES, False,
        _VOC_WARMUP), Pretraining((200,))),
    "voc0712": Protocol("Table 5, VOC 07+12", _detection(
        ("voc_2007_trainval", "voc_2012_trainval"), ("voc_2007_test",), 24_000, (18_000, 22_000),
        _VOC_TRAIN_SIZES, False, _VOC_WARMUP), Pretraining((200,))),
    "coco": Protocol("Table 5, COCO 1x", _detection(
        ("coco_2017_train",), ("coco_2017_val",), 90_000, (60_000, 80_000), tuple(range(640, 801, 32)),
        True), Pretraining((200,))),
}


def table4_differences(doc: Mapping[str, Any], pretraining: bool = True) -> list[str]:
    """Differences from the Table 4 column of the checkpoint's pretraining epochs (any column when none fits)."""
    epochs = ((doc.get("source") or {}).get("pretrain") or {}).get("epochs")
    return differences(doc, TABLE4.get(epochs, TABLE4_ANY), pretraining)


def table5_benchmark(dataset: str | None) -> str | None:
    """The Table 5 benchmark a detection result names (voc07, voc0712, coco; a '-subset' too), else None."""
    name = str(dataset or "").lower().removesuffix("-subset")
    return name if name in TABLE5 else None


def table5_differences(doc: Mapping[str, Any], pretraining: bool = True) -> tuple[str | None, list[str]]:
    """(benchmark or None, differences from that benchmark's Table 5 protocol)."""
    bench = table5_benchmark(doc.get("dataset"))
    if bench is None:
        return None, [f"dataset {doc.get('dataset')} != {_either(TABLE5_BENCHMARKS)}"]
    return bench, differences(doc, TABLE5[bench], pretraining)


def brief(diffs: Sequence[str], limit: int = 4) -> str:
    """The differences for a table cell. When the evaluation or the dataset differs, only that (the rest then
    hardly matters); otherwise the first `limit`. Either way with the number of further differences."""
    head = [d for d in diffs if d.startswith(("evaluation ", "dataset "))] or list(diffs[:limit])
    rest = len(diffs) - len(head)
    more = f" (and {rest} other setting{'s' if rest > 1 else ''})" if rest else ""
    return "; ".join(head) + more


# ---------------------------------------------------------------------------------------- fingerprints
def linear_fingerprint(cfg, *, dataset: str, arch: str | None, train_images: int, val_images: int,
                       classes: int, presets: Sequence[str] = ()) -> dict[str, Any]:
    """results.json "protocol" of a linear evaluation (cfg: transfer.evaluation.linear.LinearConfig)."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    return {"stage": "linear", "dataset": dataset, "arch": arch, "train_images": train_images,
            "val_images": val_images, "classes": classes, "epochs": t.epochs,
            "max_steps_per_epoch": t.max_steps_per_epoch, "batch": t.batch_size, "optimizer": o.optimizer,
            "lr": o.base_lr * t.batch_size / 256, "base_lr": o.base_lr, "weight_decay": o.weight_decay,
            "momentum": o.momentum, "schedule": o.schedule, "lars_trust": o.trust_coefficient,
            "train_augment": "RandomResizedCrop+flip" if d.augment else "none (test transform)",
            "train_crop": d.image_size,
            "test_resize": eval_resize_size(d.image_size, d.crop_fraction or eval_crop_fraction(d.image_size)),
            "test_crop": d.image_size, "preset": "+".join(map(str, presets)) or None}


def knn_fingerprint(cfg, *, dataset: str, arch: str | None, bank_images: int, test_images: int,
                    classes: int) -> dict[str, Any]:
    """results.json "protocol" of a kNN evaluation (cfg: transfer.evaluation.knn.KnnConfig with its data resolved)."""
    d = cfg.data
    return {"stage": "knn", "dataset": dataset, "arch": arch, "train_images": bank_images,
            "val_images": test_images, "classes": classes, "k": list(cfg.ks), "t": cfg.t,
            "test_resize": eval_resize_size(d.image_size, d.crop_fraction or eval_crop_fraction(d.image_size)),
            "test_crop": d.image_size}


def detection_fingerprint(cfg, train: Sequence[str], test: Sequence[str], preset: str | None) -> dict[str, Any]:
    """results.json "protocol" of a detection run (cfg: the resolved detectron2 config; train / test: the
    catalog names used, 'name@N' when limited to the first N images)."""
    m, s, i = cfg.MODEL, cfg.SOLVER, cfg.INPUT
    features = list(m.RESNETS.OUT_FEATURES)
    arch = f"R{m.RESNETS.DEPTH}-C4" if features == ["res4"] else f"R{m.RESNETS.DEPTH}-{'+'.join(features)}"
    return {"stage": "detection", "train_datasets": list(train), "test_datasets": list(test), "arch": arch,
            "roi_heads": m.ROI_HEADS.NAME, "mask": bool(m.MASK_ON), "iterations": int(s.MAX_ITER),
            "steps": [int(x) for x in s.STEPS], "batch": int(s.IMS_PER_BATCH), "optimizer": "sgd",
            "base_lr": float(s.BASE_LR), "weight_decay": float(s.WEIGHT_DECAY), "warmup_iters": int(s.WARMUP_ITERS),
            "min_size_train": [int(x) for x in i.MIN_SIZE_TRAIN], "max_size_train": int(i.MAX_SIZE_TRAIN),
            "min_size_test": int(i.MIN_SIZE_TEST), "max_size_test": int(i.MAX_SIZE_TEST),
            "freeze_at": int(m.BACKBONE.FREEZE_AT), "norm": m.RESNETS.NORM, "input_format": i.FORMAT,
            "preset": preset}
