"""The paper's evaluation protocols (Tables 4 and 5) as data, and the comparison of a result with them.

Every results.json (pretrain.results) records under "protocol" the settings it was measured with (the
fingerprint: data actually used, schedule, batch, optimizer, image sizes; built for every stage by
pretrain.protocol) and under "source.pretrain" what the evaluated checkpoint says about its pretraining
(transfer.evaluation.convert.describe_source), its recipe among it: every config key that changes the
pretraining trajectory (model and heads, target branch, loss, optimiser and schedule, augmentation; see
pretrain.protocol.recipe_of). `differences(doc, protocol)` lists, as readable strings, every setting where a
result departs from one column of the paper; a result belongs in that column only when the list is empty.
Unknown counts as different: a results.json without "protocol", or a checkpoint that does not record its
pretraining epochs, dataset, batch (Table 4), recipe or whether its schedule ended, is not comparable, and the
list says what is missing. A pretraining whose config was changed on resume (our checkpoints list such
changes) is not the column's either.

The column's recipe is that of the method the checkpoint records (its recipe's "method", else its method's name):
for SimSiam the paper's (pretrain.protocol.paper_recipe: the defaults of pretrain.defaults), for SimCLR, MoCo v2,
BYOL and SwAV the recipe of the method's preset in eval_configs/pretrain/ (METHOD_PRESETS; BYOL's depends on the
epochs: byol for 100, byol_200ep for 200 and 400, byol_800ep for 800, the paper's three recipes), compared key by
key, and the pretraining batch of the method's Table 4 row. A checkpoint in the official SimSiam code's format records no recipe and counts as the paper's (the
converter records it so). Table 5 has two SimSiam rows: "base" (the paper's recipe: base lr 0.05, weight decay
1e-4) and "optimal" (pretraining lr 0.5 and weight decay 1e-5, read as the base lr of the same scaling rule
lr = base lr x batch / 256); a detection result enters Table 5 under the one its recipe equals.

Not compared on purpose: the number of GPUs or processes, mixed precision, channels-last, feature caching,
device-side augmentation, the kind of BN synchronisation (it follows the number of GPUs), the seed, and preset names
(their values are compared instead; the name is recorded for the reader). Recorded but not compared, as the
reference does not state them: detection max sizes, weight decay and input format, the COCO warm-up.
Detection train / test sets are compared by catalog name, which carries an image limit as 'name@N'.

Decisions where the paper leaves room:
- Linear batch. The paper reports one linear setting: LARS, batch 4096, lr 0.1 x 4096 / 256 = 1.6. A run at
  another batch, even with the lr scaled by the same rule, is a different measurement: it is listed with
  its difference, not assumed equivalent.
- Pretraining batch, Table 4: SimSiam's 100-epoch result is reported at batch 256 and at 512 (68.1 both), so
  either is accepted; another batch is a point of the paper's batch ablation. The other methods' rows state one
  batch each (SimCLR, BYOL, SwAV 4096; MoCo v2 256). Table 5 does not state the
  pretraining batch and none is required.
- Pretraining crop size and image or step limits are options of this project's code; a checkpoint that does
  not record them (official SimSiam, MoCo) is taken to have run the official code's full 224-px epochs.
- A pretraining whose epochs are none of Table 4's is compared with its method's recipe of the nearest column
  (the first on a tie), and its epochs are named as a difference.
- The projector output BN's affine, SimSiam's rows of Tables 4 and 5: the official code has it off (the default
  here, `model.proj_out_bn_affine=false`), the paper's numbers were measured with it on (68.1 at 100 epochs,
  Tables 3c and 4; 68.2 with it off, Table 3c). Both are the paper's recipe: either enters SimSiam's columns
  (PAPER_ALSO), and the row label of a run with the affine on says so (transfer.reporting.tables.row_label).
- Numbers compare with a relative tolerance of 1e-6 (float formatting only); everything else is exact.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pretrain import config as config_mod
from pretrain.defaults import PretrainConfig
from pretrain.methods import DISPLAY
from pretrain.protocol import paper_recipe, recipe_of
from pretrain.results import PretrainInfo, Results

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


@functools.lru_cache(maxsize=None)
def preset_recipe(presets: tuple[str, ...]) -> dict[str, Any]:
    """The recipe of pretraining presets (eval_configs/pretrain/ names, resolved as `simsiam pretrain --config`
    resolves them); no preset: the paper's."""
    if not presets:
        return paper_recipe()
    cfg = config_mod.resolve(PretrainConfig(), list(presets), kind="pretrain")
    return recipe_of(config_mod.to_dict(cfg))


@dataclass(frozen=True)
class Recipe:
    """What a column needs of the evaluated checkpoint's pretraining (results.json source.pretrain): its epochs,
    batch (empty: any) and crop, and the trajectory keys of one of `variants` (name, the keys where the variant
    departs from the recipe of `presets`: pretraining presets, none for the paper's SimSiam recipe); `also`:
    (key, values) accepted besides the variant's value of that key."""
    epochs: tuple[int, ...]
    batches: tuple[int, ...] = ()
    image_size: int = 224
    variants: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (("paper", ()),)
    presets: tuple[str, ...] = ()
    also: tuple[tuple[str, tuple], ...] = ()

    def expected(self, variant: str) -> dict[str, Any]:
        """The recipe {"section.key": value} of one variant."""
        return {**preset_recipe(self.presets), **dict(dict(self.variants)[variant])}


@dataclass(frozen=True)
class Protocol:
    """One column (or group of columns) of the paper's tables."""
    name: str
    settings: tuple[Setting, ...]
    recipe: Recipe


def _either(values: Sequence[Any]) -> str:
    vals = [show(v) for v in values]
    return vals[0] if len(vals) == 1 else ", ".join(vals[:-1]) + " or " + vals[-1]


def _recipe_diffs(found: Mapping[str, Any], want: Mapping[str, Any],
                  also: Mapping[str, tuple] | None = None) -> list[str]:
    """Each key where `found` departs from `want` (or from every value `also` accepts besides for that key)."""
    out, also = [], also or {}
    for key in sorted(set(found) | set(want)):
        if key not in want:
            out.append(f"pretraining {key} {show(found[key])} (not a key of this code's recipe)")
        elif key not in found or not any(_same(found[key], v) for v in (want[key], *also.get(key, ()))):
            out.append(f"pretraining {key} {show(found.get(key))} != {show(want[key])}")
    return out


def recipe_match(info: PretrainInfo, need: Recipe) -> tuple[str | None, list[str]]:
    """(the variant of the column that the checkpoint's recipe equals, or None; the differences from the
    nearest variant, the first on a tie)."""
    if info.recipe is None:
        return None, ["pretraining recipe not recorded (model, loss, optimiser, schedule, augmentation)"]
    tried = [(name, _recipe_diffs(info.recipe, need.expected(name), dict(need.also))) for name, _ in need.variants]
    name, diffs = min(tried, key=lambda t: len(t[1]))
    return (name if not diffs else None), diffs


def pretraining_differences(info: PretrainInfo, need: Recipe) -> list[str]:
    """How the checkpoint's recorded pretraining departs from a column's (empty: it matches)."""
    if str(info.method or "").lower() == "random init":
        return ["random init: no pretraining"]
    out = []
    if info.dataset is None:
        out.append("pretraining dataset not recorded")
    elif info.dataset.lower() not in IMAGENET_NAMES:
        out.append(f"pretraining dataset {info.dataset} != imagenet")
    if info.epochs is None:
        out.append("pretraining epochs not recorded")
    elif info.epochs not in need.epochs:
        out.append(f"pretraining epochs {info.epochs} != {_either(need.epochs)}")
    if info.completed is None:
        out.append("pretraining schedule not recorded (cannot tell whether it reached its end)")
    elif not info.completed:
        out.append(f"pretraining stopped at epoch {info.epochs} of {info.scheduled_epochs}")
    if need.batches and info.batch_size is None:
        out.append("pretraining batch not recorded")
    elif need.batches and info.batch_size not in need.batches:
        out.append(f"pretraining batch {info.batch_size} != {_either(need.batches)}")
    if info.image_size not in (None, need.image_size):
        out.append(f"pretraining crop {info.image_size} != {need.image_size}")
    if (info.limit_per_class or 0) > 0:
        out.append(f"pretraining on {info.limit_per_class} images per class")
    if (info.max_steps_per_epoch or 0) > 0:
        out.append(f"pretraining epochs cut to {info.max_steps_per_epoch} steps")
    out += recipe_match(info, need)[1]
    for c in info.config_changes or []:
        out.append(f"pretraining {c.get('key')} changed from {show(c.get('old'))} to {show(c.get('new'))} "
                   f"after epoch {c.get('epoch')}")
    return out


def differences(doc: Results, protocol: Protocol, pretraining: bool = True) -> list[str]:
    """Every way the results document departs from the protocol, as readable strings (empty: comparable).
    pretraining=False: the evaluation's settings only (a published checkpoint's own pretraining is not the
    column's in any case; its rows say so)."""
    if doc.protocol is not None:
        out = [d for d in (s.difference(doc.protocol) for s in protocol.settings) if d]
    else:
        out = ["protocol not recorded in results.json"]
    if not pretraining:
        return out
    return out + pretraining_differences(doc.source.pretrain, protocol.recipe)


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
# SimSiam's recipe as the paper measured it or as its official code runs it: the projector output BN with its
# learnable affine (the paper's 68.1, Tables 3c and 4) or without (the official code and the default; 68.2).
PAPER_ALSO = (("model.proj_out_bn_affine", (True,)),)
TABLE4 = {e: Protocol(f"Table 4, {e} ep", LINEAR_IMAGENET, Recipe((e,), (256, 512), also=PAPER_ALSO))
          for e in TABLE4_EPOCHS}
TABLE4_ANY = Protocol("Table 4", LINEAR_IMAGENET, Recipe(TABLE4_EPOCHS, (256, 512), also=PAPER_ALSO))

# The rows of the other methods (Table 4, its footnotes and App. C): per Table 4 column, the pretraining preset
# of the method's recipe as the paper reproduced it, and the batch of its row.
METHOD_PRESETS: dict[str, dict[int, str]] = {
    "simclr": dict.fromkeys(TABLE4_EPOCHS, "simclr"),
    "moco": dict.fromkeys(TABLE4_EPOCHS, "moco_v2"),
    "byol": {100: "byol", 200: "byol_200ep", 400: "byol_200ep", 800: "byol_800ep"},
    "swav": dict.fromkeys(TABLE4_EPOCHS, "swav"),
}
METHOD_BATCHES = {"simsiam": (256, 512), "simclr": (4096,), "moco": (256,), "byol": (4096,), "swav": (4096,)}


def column_method(info: PretrainInfo) -> str:
    """The method (a pretrain.methods key) whose row a pretraining is compared with: its recipe's "method",
    else the one its recorded name is the display name of (pretrain.methods.DISPLAY), else simsiam."""
    method = (info.recipe or {}).get("method")
    if method in METHOD_BATCHES:
        return method
    by_name = {name.lower(): key for key, name in DISPLAY.items()}
    return by_name.get(str(info.method or "").lower(), "simsiam")


def _nearest(epochs: int | None) -> int:
    return min(TABLE4_EPOCHS, key=lambda e: abs(e - epochs)) if epochs is not None else TABLE4_EPOCHS[0]


def method_recipe(method: str, epochs: int | None, columns: tuple[int, ...], batches: tuple[int, ...] = (),
                  variants: tuple = (("paper", ()),)) -> Recipe:
    """The recipe of `method`'s row in the columns of `columns` epochs, for a pretraining of `epochs` epochs."""
    presets = (METHOD_PRESETS[method][_nearest(epochs)],) if method in METHOD_PRESETS else ()
    return Recipe(columns, batches, variants=variants, presets=presets)


def table4_protocol(method: str, epochs: int | None) -> Protocol:
    """Table 4's column of `epochs` for `method`'s row (any column, with the recipe of the nearest, when
    `epochs` is none of them)."""
    if method not in METHOD_PRESETS:
        return TABLE4.get(epochs, TABLE4_ANY)
    columns = (epochs,) if epochs in TABLE4_EPOCHS else TABLE4_EPOCHS
    name = f"Table 4, {DISPLAY[method]}" + (f", {epochs} ep" if epochs in TABLE4_EPOCHS else "")
    return Protocol(name, LINEAR_IMAGENET, method_recipe(method, epochs, columns, METHOD_BATCHES[method]))


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
# Table 5's SimSiam rows: "base" is the paper's recipe, "optimal" its pretraining lr and weight decay tuned for
# detection (lr 0.5, wd 1e-5).
TABLE5_VARIANTS = (("base", ()), ("optimal", (("optim.base_lr", 0.5), ("optim.weight_decay", 1e-5))))
TABLE5_RECIPE = Recipe((200,), variants=TABLE5_VARIANTS, also=PAPER_ALSO)
TABLE5 = {
    "voc07": Protocol("Table 5, VOC 07", _detection(
        ("voc_2007_trainval",), ("voc_2007_test",), 24_000, (18_000, 22_000), _VOC_TRAIN_SIZES, False,
        _VOC_WARMUP), TABLE5_RECIPE),
    "voc0712": Protocol("Table 5, VOC 07+12", _detection(
        ("voc_2007_trainval", "voc_2012_trainval"), ("voc_2007_test",), 24_000, (18_000, 22_000),
        _VOC_TRAIN_SIZES, False, _VOC_WARMUP), TABLE5_RECIPE),
    "coco": Protocol("Table 5, COCO 1x", _detection(
        ("coco_2017_train",), ("coco_2017_val",), 90_000, (60_000, 80_000), tuple(range(640, 801, 32)),
        True), TABLE5_RECIPE),
}


def table4_differences(doc: Results, pretraining: bool = True) -> list[str]:
    """Differences from the Table 4 column of the checkpoint's pretraining epochs (any column when none fits),
    in the row of the method it records."""
    info = doc.source.pretrain
    return differences(doc, table4_protocol(column_method(info), info.epochs), pretraining)


def table5_benchmark(dataset: str | None) -> str | None:
    """The Table 5 benchmark a detection result names (voc07, voc0712, coco; a '-subset' too), else None."""
    name = str(dataset or "").lower().removesuffix("-subset")
    return name if name in TABLE5 else None


def table5_recipe(method: str) -> Recipe:
    """The pretraining of `method`'s Table 5 row(s): 200 epochs with its 200-epoch recipe (SimSiam: base or
    optimal)."""
    return TABLE5_RECIPE if method not in METHOD_PRESETS else method_recipe(method, 200, (200,))


def table5_differences(doc: Results, pretraining: bool = True) -> tuple[str | None, list[str]]:
    """(benchmark or None, differences from that benchmark's Table 5 protocol, in the row of the method the
    checkpoint records)."""
    bench = table5_benchmark(doc.dataset)
    if bench is None:
        return None, [f"dataset {doc.dataset} != {_either(TABLE5_BENCHMARKS)}"]
    protocol = TABLE5[bench]
    protocol = Protocol(protocol.name, protocol.settings, table5_recipe(column_method(doc.source.pretrain)))
    return bench, differences(doc, protocol, pretraining)


def table5_variant(doc: Results) -> str | None:
    """The Table 5 SimSiam row ("base" or "optimal") whose pretraining recipe the checkpoint's equals; None for
    another recipe and for the other methods (one row each)."""
    if column_method(doc.source.pretrain) in METHOD_PRESETS:
        return None
    return recipe_match(doc.source.pretrain, TABLE5_RECIPE)[0]


def brief(diffs: Sequence[str], limit: int = 4) -> str:
    """The differences for a table cell. When the evaluation or the dataset differs, only that (the rest then
    hardly matters); otherwise the first `limit`. Either way with the number of further differences."""
    head = [d for d in diffs if d.startswith(("evaluation ", "dataset "))] or list(diffs[:limit])
    rest = len(diffs) - len(head)
    more = f" (and {rest} other setting{'s' if rest > 1 else ''})" if rest else ""
    return "; ".join(head) + more
