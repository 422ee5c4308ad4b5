"""transfer.reporting.protocols: the paper's columns as data, the fingerprints the stages record (pretrain.protocol),
and the readable list of differences between them (presets and pretraining records of real configs and checkpoint
descriptions), the pretraining recipe among them."""
from __future__ import annotations

import pytest

from pretrain import config as config_mod
from pretrain import protocol as fp
from pretrain.results import PretrainInfo, Results
from transfer.reporting import protocols as P
from pretrain.defaults import PretrainConfig
from transfer.evaluation.convert import OFFICIAL_RECIPE, PRETRAIN_KEYS
from transfer.evaluation.linear import LinearConfig

IMAGENET = {"dataset": "imagenet", "train_images": 1_281_167, "val_images": 50_000, "classes": 1000}


def linear_doc(*overrides, presets=("imagenet_lars",), arch="resnet50", pretrain=None, **data) -> dict:
    """A linear results document as transfer.evaluation.linear writes it, from a real preset and overrides."""
    cfg = config_mod.resolve(LinearConfig(), list(presets), list(overrides), kind="linear")
    sizes = {**IMAGENET, **data}
    protocol = fp.linear_fingerprint(cfg, arch=arch, presets=presets, **sizes)
    return {"task": "linear", "dataset": sizes["dataset"], "protocol": protocol,
            "source": {"sha256": "ab" * 32, "pretrain": pretraining(arch=arch, **(pretrain or {}))}}


def pretraining(**kw) -> dict:
    """source.pretrain of one of our checkpoints: a finished 100-epoch ImageNet run at batch 512 with the
    paper's recipe."""
    base = dict.fromkeys(PRETRAIN_KEYS)
    base.update(method="SimSiam", arch="resnet50", epochs=100, batch_size=512, dataset="imagenet",
                scheduled_epochs=100, completed=True, image_size=224, limit_per_class=0, max_steps_per_epoch=0,
                recipe=fp.paper_recipe())
    base.update(kw)
    return base


def table4(doc: dict, **kw) -> list[str]:
    return P.table4_differences(Results.from_json(doc), **kw)


def table5(doc: dict, **kw) -> tuple:
    return P.table5_differences(Results.from_json(doc), **kw)


def detection_doc(preset, train, test, *overrides, pretrain=None) -> dict:
    from transfer.evaluation import detect
    cfg = detect.build_config(preset, list(overrides))
    return {"task": "detection", "dataset": detect.benchmark_name(cfg, list(train), list(test)),
            "protocol": fp.detection_fingerprint(cfg, train, test, preset),
            "source": {"pretrain": pretraining(**{"epochs": 200, "scheduled_epochs": 200, **(pretrain or {})})}}


def test_the_paper_linear_protocol_has_no_difference():
    assert table4(linear_doc()) == []
    assert P.differences(Results.from_json(linear_doc()), P.TABLE4[100]) == []
    assert table4(linear_doc(pretrain={"batch_size": 256})) == []  # 68.1 at both batches
    assert table4(linear_doc(dataset="ILSVRC2012")) == []  # another name of the same folder


@pytest.mark.parametrize("overrides, kw, expected", [
    (["train.epochs=1"], {}, ["linear epochs 1 != 90"]),
    (["data.limit_per_class=5"], {"train_images": 5000}, ["train images 5000 != 1281167"]),
    ([], {"presets": ("imagenet_sgd",)}, ["linear batch 256 != 4096", "linear optimizer sgd != lars",
                                            "linear lr 30 != 1.6"]),
    (["train.batch_size=1024"], {}, ["linear batch 1024 != 4096", "linear lr 0.4 != 1.6"]),  # the scaling rule
    ([], {"arch": "resnet18"}, ["backbone resnet18 != resnet50"]),
    (["data.image_size=112"], {}, ["train crop 112 != 224", "test resize 128 != 256", "test crop 112 != 224"]),
    (["train.max_steps_per_epoch=10"], {}, ["linear steps-per-epoch cap 10 != 0"]),
])
def test_each_linear_departure_is_named(overrides, kw, expected):
    assert table4(linear_doc(*overrides, **kw)) == expected


@pytest.mark.parametrize("pretrain, expected", [
    ({"epochs": 100, "scheduled_epochs": 200, "completed": False}, ["pretraining stopped at epoch 100 of 200"]),
    ({"completed": None, "scheduled_epochs": None},
     ["pretraining schedule not recorded (cannot tell whether it reached its end)"]),
    ({"batch_size": 1024}, ["pretraining batch 1024 != 256 or 512"]),
    ({"batch_size": None}, ["pretraining batch not recorded"]),
    ({"dataset": "cifar10-jpg"}, ["pretraining dataset cifar10-jpg != imagenet"]),
    ({"dataset": None}, ["pretraining dataset not recorded"]),
    ({"epochs": 50, "scheduled_epochs": 50}, ["pretraining epochs 50 != 100, 200, 400 or 800"]),
    ({"image_size": 64}, ["pretraining crop 64 != 224"]),
    ({"limit_per_class": 16}, ["pretraining on 16 images per class"]),
    ({"max_steps_per_epoch": 10}, ["pretraining epochs cut to 10 steps"]),
    ({"method": "random init", "epochs": 0}, ["random init: no pretraining"]),
    ({"epochs": 200, "scheduled_epochs": 200, "config_changes": [{"epoch": 100, "key": "train.epochs", "old": 100,
                                                                  "new": 200}]},
     ["pretraining train.epochs changed from 100 to 200 after epoch 100"]),  # a 100-epoch run extended
])
def test_each_pretraining_departure_is_named(pretrain, expected):
    assert table4(linear_doc(pretrain=pretrain)) == expected


def official_pretraining() -> dict:
    """What describe_source records of an official SimSiam file: method, arch, epoch, and the paper's recipe
    that its format stands for (test_convert reads a real file)."""
    return dict.fromkeys(PRETRAIN_KEYS) | {"method": "SimSiam", "arch": "resnet50", "epochs": 100,
                                           "recipe": fp.paper_recipe(), "recipe_from": OFFICIAL_RECIPE}


def test_official_checkpoints_without_schedule_records_are_not_assumed_finished():
    diffs = table4({**linear_doc(), "source": {"pretrain": official_pretraining()}})
    assert diffs == ["pretraining dataset not recorded",
                     "pretraining schedule not recorded (cannot tell whether it reached its end)",
                     "pretraining batch not recorded"]


def test_the_official_format_counts_as_the_papers_recipe():
    """Its recipe is the paper's: with its dataset, batch and schedule known it would be in the column, and a
    result on it is in the published checkpoints' table beside Table 4 (the evaluation settings alone)."""
    known = official_pretraining() | {"dataset": "imagenet", "batch_size": 512, "completed": True}
    assert P.pretraining_differences(PretrainInfo.from_json(known), P.TABLE4[100].recipe) == []
    doc = {**linear_doc(), "source": {"kind": "simsiam-official", "pretrain": official_pretraining()}}
    assert table4(doc, pretraining=False) == []


def recipe(*overrides: str) -> dict:
    """source.pretrain.recipe of a pretraining run with these overrides of the default (paper) config."""
    cfg = config_mod.resolve(PretrainConfig(), [], list(overrides), kind="pretrain")
    return fp.recipe_of(config_mod.to_dict(cfg))


@pytest.mark.parametrize("overrides, expected", [
    (["model.stop_gradient=false"], ["pretraining model.stop_gradient False != True"]),
    (["model.dim=256"], ["pretraining model.dim 256 != 2048"]),
    (["optim.base_lr=0.1"], ["pretraining optim.base_lr 0.1 != 0.05"]),
    (["loss.symmetrisation=asymmetric", "model.predictor=fixed"],
     ["pretraining loss.symmetrisation asymmetric != symmetric", "pretraining model.predictor fixed != trained"]),
    (["data.augmentation=byol"], ["pretraining data.augmentation byol != moco_v2"]),
])
def test_a_changed_recipe_keeps_the_run_out_of_the_column(overrides, expected):
    """A finished 100-epoch ImageNet run at batch 512 is Table 4's only with the paper's recipe."""
    assert table4(linear_doc(pretrain={"recipe": recipe(*overrides)})) == expected


def test_every_trajectory_key_of_the_heads_target_loss_and_schedule_is_in_the_recipe():
    keys = set(fp.paper_recipe())
    assert {"model.predictor", "model.head_bn", "model.proj_out_bn_affine", "model.target", "model.target_every",
            "model.target_momentum", "model.stop_gradient", "model.dim", "model.pred_dim", "model.proj_layers",
            "loss.similarity", "loss.symmetrisation", "optim.base_lr", "optim.weight_decay", "optim.momentum",
            "optim.fix_pred_lr", "optim.schedule", "optim.warmup_epochs", "data.min_scale", "data.blur",
            "data.mean", "data.std"} <= keys
    # compared on their own or not the recipe: data location and limits, epochs, batch, seed, speed, monitoring
    assert not keys & {"data.root", "data.limit_per_class", "data.image_size", "model.sync_bn"}
    assert not [k for k in keys if k.startswith(("train.", "monitor."))]
    changed = recipe("model.head_bn=none", "model.target=kstep", "optim.warmup_epochs=10")
    assert table4(linear_doc(pretrain={"recipe": changed})) == [
        "pretraining model.head_bn none != hidden_proj_out", "pretraining model.target kstep != online",
        "pretraining optim.warmup_epochs 10 != 0"]


def test_an_unrecorded_recipe_is_not_the_papers():
    """Results of version 1 (and other layouts) carry no recipe; a key a checkpoint predates counts with its
    default; a key this code does not know is named."""
    assert table4(linear_doc(pretrain={"recipe": None})) == [
        "pretraining recipe not recorded (model, loss, optimiser, schedule, augmentation)"]
    old = {k: v for k, v in recipe().items() if k != "optim.warmup_epochs"}
    assert fp.recipe_of({"optim": {"base_lr": 0.05}}) == fp.paper_recipe()
    assert table4(linear_doc(pretrain={"recipe": {**old, "optim.warmup_epochs": 0}})) == []
    assert table4(linear_doc(pretrain={"recipe": {**recipe(), "loss.margin": 0.5}})) == [
        "pretraining loss.margin 0.5 (not a key of this code's recipe)"]


def test_table5_tells_base_from_optimal_by_pretraining_lr_and_weight_decay():
    def doc(*overrides):
        return detection_doc("voc07", ["voc_2007_trainval"], ["voc_2007_test"],
                             pretrain={"recipe": recipe(*overrides)})

    base, optimal = doc(), doc("optim.base_lr=0.5", "optim.weight_decay=1e-5")
    assert [P.table5_variant(Results.from_json(d)) for d in (base, optimal)] == ["base", "optimal"]
    assert table5(base)[1] == table5(optimal)[1] == []
    mixed = doc("optim.base_lr=0.5")
    assert P.table5_variant(Results.from_json(mixed)) is None
    assert table5(mixed)[1] == ["pretraining optim.base_lr 0.5 != 0.05"]
    # Table 4 has one SimSiam recipe: the optimal detection one is not it
    assert table4(linear_doc(pretrain={"recipe": recipe("optim.base_lr=0.5", "optim.weight_decay=1e-5")})) == [
        "pretraining optim.base_lr 0.5 != 0.05", "pretraining optim.weight_decay 1e-05 != 0.0001"]


def test_evaluation_settings_alone_for_published_checkpoints():
    """pretraining=False compares the evaluation only: a published file's unrecorded pretraining is no difference,
    a changed evaluation setting still is."""
    doc = {**linear_doc(), "source": {"kind": "simsiam-official", "pretrain": official_pretraining()}}
    assert table4(doc, pretraining=False) == []
    doc["protocol"] = {**doc["protocol"], "batch": 256}
    assert table4(doc, pretraining=False) == ["linear batch 256 != 4096"]


def test_results_without_a_protocol_are_not_comparable():
    doc = {k: v for k, v in linear_doc().items() if k != "protocol"}
    assert table4(doc) == ["protocol not recorded in results.json"]
    knn = {**linear_doc(), "task": "knn"}
    knn["protocol"] = {**knn["protocol"], "stage": "knn"}
    assert table4(knn)[0] == "evaluation knn != linear"


@pytest.mark.parametrize("preset, train, test", [
    ("voc07", ["voc_2007_trainval"], ["voc_2007_test"]),
    ("voc0712", ["voc_2007_trainval", "voc_2012_trainval"], ["voc_2007_test"]),
    ("coco_1x", ["coco_2017_train"], ["coco_2017_val"]),
])
def test_the_detection_presets_are_the_paper_protocols(preset, train, test):
    bench, diffs = table5(detection_doc(preset, train, test))
    assert (bench, diffs) == ({"coco_1x": "coco"}.get(preset, preset), [])


def test_detection_departures_are_named():
    coco2x = detection_doc("coco_2x", ["coco_2017_train"], ["coco_2017_val"])
    assert table5(coco2x) == ("coco", ["iterations 180000 != 90000",
                                                     "lr steps 120000, 160000 != 60000, 80000"])
    # the CPU-sized preset on the real VOC07 sets, with the test set not cut
    tiny = detection_doc("tiny", ["voc_2007_trainval"], ["voc_2007_test"], "SIMSIAM.MAX_TEST_IMAGES", "0")
    bench, diffs = table5(tiny)
    assert tiny["dataset"] == "voc07" and bench == "voc07"
    assert diffs == ["iterations 20 != 24000", "lr steps 15 != 18000, 22000", "detection batch 2 != 16",
                     "detection base lr 0.0025 != 0.02", "train min sizes 128, 144, 160 != 480..800 step 32",
                     "test min size 128 != 800", "warm-up iterations 5 != 100"]
    cut = detection_doc("voc07", ["voc_2007_trainval"], ["voc_2007_test@16"])
    assert table5(cut) == ("voc07", ["test datasets voc_2007_test@16 != voc_2007_test"])
    short = detection_doc("voc07", ["voc_2007_trainval"], ["voc_2007_test"], pretrain={"epochs": 100,
                                                                                    "scheduled_epochs": 100})
    assert table5(short)[1] == ["pretraining epochs 100 != 200"]
    assert table5({"dataset": "bccd"}) == (None, ["dataset bccd != voc07, voc0712 or coco"])


def test_table5_needs_no_pretraining_batch():
    doc = detection_doc("voc07", ["voc_2007_trainval"], ["voc_2007_test"], pretrain={"batch_size": 4096})
    assert table5(doc)[1] == []


def test_values_are_shown_readably():
    assert P.show([480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]) == "480..800 step 32"
    assert P.show(["voc_2007_trainval", "voc_2012_trainval"]) == "voc_2007_trainval+voc_2012_trainval"
    assert P.show(0.1 * 4096 / 256) == "1.6" and P.show((128, 144, 160)) == "128, 144, 160"
    assert P.brief(["dataset cifar10-jpg != imagenet", "linear epochs 100 != 90", "classes 10 != 1000"]) == \
        "dataset cifar10-jpg != imagenet (and 2 other settings)"
    assert P.brief(["linear epochs 1 != 90", "linear batch 256 != 4096"]) == \
        "linear epochs 1 != 90; linear batch 256 != 4096"
    assert P.brief([f"setting {i}" for i in range(6)], limit=4) == \
        "setting 0; setting 1; setting 2; setting 3 (and 2 other settings)"


def test_numbers_compare_within_float_formatting_only():
    s = P.Setting("lr", "linear lr", 1.6)
    assert s.difference({"lr": 0.1 * 4096 / 256}) is None
    assert s.difference({"lr": 1.61}) == "linear lr 1.61 != 1.6"
    assert s.difference({}) == "linear lr not recorded"
    assert P.Setting("mask", "mask head", True).difference({"mask": False}) == "mask head False != True"


def test_the_projector_output_bn_affine_on_or_off_is_the_papers_simsiam_recipe():
    """The official code's output BN has no affine (the default, 68.2 in Table 3c); the paper's 68.1 (Tables 3c and
    4) was measured with it: both enter SimSiam's columns of Tables 4 and 5, base and optimal alike. Any other
    change beside it is still named, and the other methods' recipes accept no such alternative."""
    affine = "model.proj_out_bn_affine=true"
    assert table4(linear_doc(pretrain={"recipe": recipe(affine)})) == []
    assert table4(linear_doc(pretrain={"recipe": recipe(affine, "model.dim=256")})) == [
        "pretraining model.dim 256 != 2048"]
    for extra, variant in (((), "base"), (("optim.base_lr=0.5", "optim.weight_decay=1e-5"), "optimal")):
        doc = detection_doc("voc07", ["voc_2007_trainval"], ["voc_2007_test"],
                            pretrain={"recipe": recipe(affine, *extra)})
        assert table5(doc)[1] == [] and P.table5_variant(Results.from_json(doc)) == variant
    cfg = config_mod.resolve(PretrainConfig(), ["simclr"], [affine], kind="pretrain")
    simclr = {"method": "SimCLR", "batch_size": 4096, "recipe": fp.recipe_of(config_mod.to_dict(cfg))}
    assert table4(linear_doc(pretrain=simclr)) == ["pretraining model.proj_out_bn_affine True != False"]
