"""Comparison tables on results.json files written by the real writer with the contents the stages record:
a row enters a paper column only with the paper's protocol, every other row is listed as not comparable with
what differs; labels and method columns come from the checkpoint; the published rows match the reference."""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision

from pretrain import config as config_mod
from transfer.evaluation import detect
from transfer.evaluation.convert import PRETRAIN_KEYS, describe_source
from transfer.evaluation.linear import LinearConfig
from pretrain import results as R
from pretrain.protocol import detection_fingerprint, linear_fingerprint, paper_recipe
from transfer.reporting.tables import PAPER_TABLE4, PAPER_TABLE5, Tables, load_docs, main, render

SHA = "abcdef1234567890" * 4
IMAGENET = {"dataset": "imagenet", "train_images": 1_281_167, "val_images": 50_000, "classes": 1000}
VOC07 = (["voc_2007_trainval"], ["voc_2007_test"])
VOC0712 = (["voc_2007_trainval", "voc_2012_trainval"], ["voc_2007_test"])
COCO = (["coco_2017_train"], ["coco_2017_val"])


def write_results(d, **fields) -> Path:
    """results.json as a stage's frame writes it (pretrain.frame.StageRun.results)."""
    return R.write(d, R.Results.new(**fields), "test")


def source(sha=SHA, kind="simsiam-suite", **pretrain) -> dict:
    """results.json `source` as describe_source writes it for one of our checkpoints: by default a finished
    100-epoch ImageNet ResNet-50 pretraining at batch 512 with the paper's recipe."""
    pre = dict.fromkeys(PRETRAIN_KEYS)
    pre.update(method="SimSiam", arch="resnet50", epochs=100, batch_size=512, dataset="imagenet",
               scheduled_epochs=100, completed=True, image_size=224, limit_per_class=0, max_steps_per_epoch=0,
               recipe=paper_recipe() if kind == "simsiam-suite" else None)
    pre.update(pretrain)
    return {"checkpoint": f"/runs/{sha[:6]}/checkpoint.pth", "sha256": sha, "kind": kind, "pretrain": pre}


def write_linear(d, top1, *overrides, presets=("imagenet_lars",), src=None, **data) -> Path:
    """What transfer.evaluation.linear writes for a finished run of the preset(s) and overrides on `data`."""
    cfg = config_mod.resolve(LinearConfig(), list(presets), list(overrides), kind="linear")
    src = src or source()
    sizes = {**IMAGENET, **data}
    protocol = linear_fingerprint(cfg, arch=src["pretrain"]["arch"], presets=presets, **sizes)
    return write_results(d, task="linear", dataset=sizes["dataset"], metrics={"top1": top1, "top5": top1 + 20},
                         config=config_mod.to_dict(cfg), source=src, epochs=cfg.train.epochs,
                         batch_size=cfg.train.batch_size, extra={"protocol": protocol})


def write_detection(d, preset, datasets, trials, *overrides, src=None) -> Path:
    """What transfer.evaluation.detect writes: one results.json per trial and the summary listing them."""
    train, test = datasets
    cfg = detect.build_config(preset, list(overrides))
    bench = detect.benchmark_name(cfg, train, test)
    extra = {"protocol": detection_fingerprint(cfg, train, test, preset), "train_datasets": train,
             "test_datasets": test, "iterations": cfg.SOLVER.MAX_ITER}
    src = src or source(epochs=200, scheduled_epochs=200)
    for i, m in enumerate(trials):
        write_results(d / f"trial_{i}", task="detection", dataset=bench, metrics=m, config={}, source=src,
                      batch_size=cfg.SOLVER.IMS_PER_BATCH, extra={**extra, "trial": i})
    mean = {k: sum(t[k] for t in trials) / len(trials) for k in trials[0]} if "AP" in trials[0] else trials[0]
    return write_results(d, task="detection", dataset=bench, metrics=mean, config={}, source=src,
                         batch_size=cfg.SOLVER.IMS_PER_BATCH,
                         extra={**extra, "trials": [{"trial": i, "metrics": t} for i, t in enumerate(trials)]})


def tables(path, names=None) -> Tables:
    return Tables(load_docs([path]), names)


def yours(rows, prefix="SimSiam (yours") -> list[list[str]]:
    return [r for r in rows if r[0].startswith(prefix)]


def not_comparable(t: Tables) -> list[list[str]]:
    return t.other_classification()[1]


# ------------------------------------------------------------------------------------ rows that belong
def test_rows_measured_with_the_paper_protocol_enter_the_columns(tmp_path):
    write_linear(tmp_path / "lin", 68.0)
    write_linear(tmp_path / "lin2", 68.4)
    write_linear(tmp_path / "lin256", 67.9, src=source(sha="12" * 32, batch_size=256))
    voc = [{"AP50": 82.0, "AP": 56.0, "AP75": 62.0}, {"AP50": 82.4, "AP": 56.4, "AP75": 63.0}]
    write_detection(tmp_path / "voc0712", "voc0712", VOC0712, voc)
    write_detection(tmp_path / "voc07", "voc07", VOC07, [{"AP50": 75.0, "AP": 47.0, "AP75": 50.0}])
    write_detection(tmp_path / "coco", "coco_1x", COCO, [{"bbox": {"AP50": 57.0, "AP": 37.5, "AP75": 40.0},
                                                          "segm": {"AP50": 54.0, "AP": 33.0, "AP75": 35.0}}])
    docs = load_docs([tmp_path])
    assert len(docs) == 6  # trial files under a summary are hidden
    t = Tables(docs)
    h4, r4 = t.table4()
    ours = yours(r4)
    assert len(ours) == 2 and not not_comparable(t)
    assert ours[0][1:4] == ["512", "no", "no"] and ours[0][h4.index("100 ep")] == "68.2±0.3 (n=2)"
    assert ours[0][h4.index("200 ep")] == "-"  # missing, not invented
    assert ours[1][1] == "256" and ours[1][h4.index("100 ep")] == "67.9 (n=1)"
    _, r5 = t.table5()
    (row,) = yours(r5, "SimSiam, base (yours")   # the paper's recipe: Table 5's "base" row
    assert row[1] == "75.0 / 47.0 / 50.0 (n=1)" and row[2] == "82.2±0.3 / 56.2±0.3 / 62.5±0.7 (n=2)"
    assert row[3] == "57.0 / 37.5 / 40.0 (n=1)" and row[4] == "54.0 / 33.0 / 35.0 (n=1)"
    assert not t.other_detection()[1]


def test_table5_tells_the_base_recipe_from_the_optimal_one(tmp_path):
    """Table 5's SimSiam rows differ in the pretraining lr and weight decay: each checkpoint lands in the row its
    recipe equals; one with the optimal lr but the base weight decay is in neither."""
    voc = [{"AP50": 77.0, "AP": 48.0, "AP75": 52.0}]
    recipes = {"base": {}, "optimal": {"optim.base_lr": 0.5, "optim.weight_decay": 1e-5},
               "mixed": {"optim.base_lr": 0.5}}
    for i, (name, delta) in enumerate(recipes.items()):
        src = source(sha=f"{i}" * 64, epochs=200, scheduled_epochs=200, recipe={**paper_recipe(), **delta})
        write_detection(tmp_path / name, "voc07", VOC07, voc, src=src)
    t = tables(tmp_path)
    rows = [r for r in t.table5()[1] if "(yours" in r[0]]
    assert [r[0].split(" (")[0] for r in rows] == ["SimSiam, base", "SimSiam, optimal"]
    assert rows[1][0].endswith("bs 512, 11111111)") and rows[1][1] == "77.0 / 48.0 / 52.0 (n=1)"
    (other,) = t.other_detection()[1]
    assert other[0].startswith("SimSiam (yours") and other[0].endswith("22222222)")
    assert other[4] == "pretraining optim.base_lr 0.5 != 0.05"


def test_a_simsiam_row_says_when_its_projector_output_bn_had_the_affine(tmp_path):
    """Both settings are SimSiam's recipe in Table 4 (the paper's 68.1 with the affine, the official code without
    it): each run is in the column, the one with the affine labelled so."""
    write_linear(tmp_path / "off", 68.2, src=source(sha="0f" * 32))
    write_linear(tmp_path / "on", 68.1, src=source(sha="1e" * 32, recipe={**paper_recipe(),
                                                                          "model.proj_out_bn_affine": True}))
    t = tables(tmp_path)
    h4, r4 = t.table4()
    rows = {r[0]: r[h4.index("100 ep")] for r in yours(r4)}
    assert rows == {"SimSiam (yours: resnet50, pretrained on imagenet, 100 ep, bs 512, 0f0f0f0f)": "68.2 (n=1)",
                    "SimSiam (yours: resnet50, pretrained on imagenet, 100 ep, bs 512, projector output BN affine, "
                    "1e1e1e1e)": "68.1 (n=1)"}
    assert not not_comparable(t)


def test_other_datasets_are_listed_with_their_dataset(tmp_path):
    cifar = source(arch="resnet18_cifar", dataset="cifar10-jpg", epochs=800, scheduled_epochs=800)
    write_linear(tmp_path / "cifar", 90.1, presets=("cifar10",), src=cifar, dataset="cifar10-jpg",
                 train_images=50_000, val_images=10_000, classes=10)
    write_detection(tmp_path / "bccd", "tiny", (["bccd_train"], ["bccd_test"]), [{"AP50": 50.0, "AP": 25.0,
                                                                                   "AP75": 20.0}],
                    "SIMSIAM.BENCHMARK", "bccd")
    t = tables(tmp_path)
    assert not yours(t.table4()[1]) and not [r for r in t.table5()[1] if "(yours" in r[0]]
    (row,) = not_comparable(t)
    assert row[4:8] == ["cifar10-jpg", "800", "90.1 (n=1)", "110.1 (n=1)"]
    assert re.fullmatch(r"dataset cifar10-jpg != imagenet \(and \d+ other settings\)", row[8])
    (det,) = t.other_detection()[1]
    assert det[1:4] == ["bccd", "50.0 / 25.0 / 20.0 (n=1)", "-"]
    assert det[4] == "dataset bccd != voc07, voc0712 or coco"


# ------------------------------------------------------------------------- rows that do not belong
def _only_not_comparable(tmp_path) -> str:
    """The single row is in no paper column; returns its stated differences."""
    t = tables(tmp_path)
    assert not [r for r in t.table4()[1] + t.table5()[1] if "(yours" in r[0]]
    rows = not_comparable(t) + t.other_detection()[1]
    assert len(rows) == 1
    return rows[0][-1]


def test_one_linear_epoch_is_not_table4(tmp_path):
    write_linear(tmp_path, 12.0, "train.epochs=1")
    assert _only_not_comparable(tmp_path) == "linear epochs 1 != 90"


def test_limit_per_class_is_not_table4(tmp_path):
    write_linear(tmp_path, 30.0, "data.limit_per_class=5", train_images=5000)
    assert _only_not_comparable(tmp_path) == "train images 5000 != 1281167"


def test_the_sgd_preset_is_not_table4(tmp_path):
    write_linear(tmp_path, 67.0, presets=("imagenet_sgd",))
    assert _only_not_comparable(tmp_path) == \
        "linear batch 256 != 4096; linear optimizer sgd != lars; linear lr 30 != 1.6"


def test_a_resnet18_is_not_table4(tmp_path):
    write_linear(tmp_path, 55.0, "model.arch=resnet18", src=source(arch="resnet18"))
    assert _only_not_comparable(tmp_path) == "backbone resnet18 != resnet50"


def test_an_unfinished_pretraining_snapshot_is_not_its_epoch_column(tmp_path):
    # checkpoint_0100.pth of a 200-epoch run: its lr was never annealed
    write_linear(tmp_path, 66.0, src=source(epochs=100, scheduled_epochs=200, completed=False))
    assert _only_not_comparable(tmp_path) == "pretraining stopped at epoch 100 of 200"


def test_the_tiny_detection_config_on_voc07_is_not_table5(tmp_path):
    write_detection(tmp_path, "tiny", VOC07, [{"AP50": 1.0, "AP": 0.3, "AP75": 0.1}], "SIMSIAM.MAX_TEST_IMAGES", "0")
    reason = _only_not_comparable(tmp_path)
    assert reason == ("iterations 20 != 24000; lr steps 15 != 18000, 22000; detection batch 2 != 16; "
                      "detection base lr 0.0025 != 0.02 (and 3 other settings)")


def test_a_coco_2x_run_is_not_the_1x_column(tmp_path):
    write_detection(tmp_path, "coco_2x", COCO, [{"bbox": {"AP50": 60.0, "AP": 40.0, "AP75": 43.0},
                                                  "segm": {"AP50": 57.0, "AP": 35.0, "AP75": 37.0}}])
    assert _only_not_comparable(tmp_path) == "iterations 180000 != 90000; lr steps 120000, 160000 != 60000, 80000"


def test_results_written_before_fingerprints_are_not_comparable(tmp_path):
    write_results(tmp_path, task="linear", dataset="imagenet", metrics={"top1": 68.0}, config={}, source=source())
    assert _only_not_comparable(tmp_path) == "protocol not recorded in results.json"


# ------------------------------------------------------------------------------- labels and methods
def test_a_torchvision_checkpoint_is_not_labelled_simsiam(tmp_path):
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    src = describe_source(weights)
    write_linear(tmp_path / "lin", 60.0, "model.arch=resnet18", src=src)
    (row,) = not_comparable(tables(tmp_path / "lin"))
    assert row[0].startswith("torchvision (published, evaluated here: resnet18") and row[1:3] == ["-", "-"]
    # named on the command line, by sha256 prefix or for every unnamed checkpoint
    for names in ({src["sha256"][:10]: "ImageNet supervised"}, {None: "ImageNet supervised"}):
        (row,) = not_comparable(tables(tmp_path / "lin", names))
        assert row[0].startswith("ImageNet supervised (published, evaluated here") and row[1:3] == ["-", "-"]
    # a name never relabels a checkpoint that records its method, nor makes a row comparable
    write_linear(tmp_path / "ours", 68.0)
    t = tables(tmp_path, {None: "MoCo v2"})
    assert [r[2:4] for r in yours(t.table4()[1])] == [["no", "no"]]
    assert [(r[0].split(" (")[0], r[1], r[2]) for r in not_comparable(t)] == [("MoCo v2", "yes", "yes")]


def test_method_option_on_the_command_line(tmp_path, capsys):
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    src = describe_source(weights)
    write_linear(tmp_path / "lin", 60.0, "model.arch=resnet18", src=src)
    assert main([str(tmp_path / "lin"), "--method", f"{src['sha256'][:8]}=supervised"]) == 0
    assert "supervised (published, evaluated here: resnet18" in capsys.readouterr().out
    assert main([str(tmp_path / "lin"), "--method", "0000=supervised"]) == 2
    assert "--method 0000" in capsys.readouterr().err
    assert main([str(tmp_path / "lin"), "--method", "abc="]) == 2


def test_moco_rows_have_negatives_and_a_momentum_encoder(tmp_path):
    # what describe_source records of a MoCo file (method, arch, epoch; no dataset, batch or schedule)
    moco = {**dict.fromkeys(PRETRAIN_KEYS), "method": "MoCo", "arch": "resnet50", "epochs": 200}
    write_linear(tmp_path / "real", 67.5, src={**source(sha="cd" * 32, kind="moco"), "pretrain": moco})
    t = tables(tmp_path / "real")
    assert not not_comparable(t)  # measured with Table 4's protocol: a row of its own, whatever its pretraining
    (row,) = t.published_table4()[1]
    assert row == ["MoCo (published, evaluated here: resnet50, 200 ep, cdcdcdcd)", "yes", "yes", "200", "67.5 (n=1)"]
    # a MoCo file, even recording everything Table 4 needs, never enters the paper's columns
    write_linear(tmp_path / "full", 69.0, src=source(sha="ef" * 32, kind="moco", method="MoCo", batch_size=256,
                                                     epochs=200, scheduled_epochs=200))
    t = tables(tmp_path / "full")
    assert not [r for r in t.table4()[1] if "MoCo (" in r[0]]
    assert [r[1:] for r in t.published_table4()[1]] == [["yes", "yes", "200", "69.0 (n=1)"]]


def test_random_init_rows_stay_out_of_the_paper_columns(tmp_path):
    rnd = {"checkpoint": "random", "sha256": None, "kind": "random-init",
           "pretrain": {"method": "random init", "arch": "resnet50", "epochs": 0, "batch_size": None, "dataset": None}}
    write_linear(tmp_path / "lin", 4.0, src=rnd)
    write_detection(tmp_path / "voc", "voc07", VOC07, [{"AP50": 35.9, "AP": 16.8, "AP75": 13.0}], src=rnd)
    t = tables(tmp_path)
    assert not [r for r in t.table4()[1] + t.table5()[1] if "(yours" in r[0]]
    (cls,) = not_comparable(t)
    (det,) = t.other_detection()[1]
    assert cls[0] == det[0] == "random init (yours: resnet50)"
    assert cls[1:3] == ["-", "-"] and cls[-1] == det[-1] == "random init: no pretraining"


def test_random_inits_are_separate_rows(tmp_path):
    """The network pretraining starts from (zero-init residual) and torchvision's init are two baselines."""
    base = {"checkpoint": "random", "sha256": None, "kind": "random-init"}
    info = {"method": "random init", "arch": "resnet18", "epochs": 0, "batch_size": None, "dataset": None}
    write_linear(tmp_path / "zero", 4.0, src={**base, "pretrain": {**info, "zero_init_residual": True}})
    write_linear(tmp_path / "bn1", 9.0, src={**base, "pretrain": {**info, "zero_init_residual": False}})
    rows = sorted(not_comparable(tables(tmp_path)))
    assert [r[0] for r in rows] == ["random init (yours: resnet18)", "random init (yours: resnet18, every BN weight 1)"]


# ----------------------------------------------------------------------------- published checkpoints
def published(sha: str, kind: str, method: str | None, **pretrain) -> dict:
    """results.json `source` as describe_source writes it for a published file: what its layout records."""
    pre = {**dict.fromkeys(PRETRAIN_KEYS), "method": method, "arch": "resnet50", **pretrain}
    return {"checkpoint": f"/downloads/{kind}.pth", "sha256": sha, "kind": kind, "pretrain": pre}


def test_published_checkpoints_get_rows_of_their_own(tmp_path, capsys):
    """Measured with Table 4's (5's) evaluation protocol, a published checkpoint is a row below the paper's rows:
    methods of the paper's rows first in their order, then those it lacks; never in the paper's columns."""
    runs = [("1_dino_teacher", published("d1" * 32, "dino", "DINO", epochs=800, branch="teacher")),
            ("2_dino_student", published("d1" * 32, "dino", "DINO", epochs=800, branch="student")),
            ("3_mocov3", published("a3" * 32, "mocov3", "MoCo v3", epochs=300)),
            ("4_barlow", published("b7" * 32, "torchvision", "torchvision")),
            ("5_swav", published("5a" * 32, "swav", "SwAV")),
            ("6_simclr", published("c1" * 32, "simclr-v1", "SimCLR")),
            ("7_vicreg", published("7e" * 32, "torchvision", "torchvision"))]
    for name, src in runs:
        write_linear(tmp_path / name, 70.0 + len(name) / 10, src=src)
    names = {"b7b7": "Barlow Twins", "7e7e": "VICReg"}
    t = tables(tmp_path, names)
    assert not [r for r in t.table4()[1] if "evaluated here" in r[0]] and not not_comparable(t)
    headers, rows = t.published_table4()
    assert headers == ["published checkpoint", "neg. pairs", "momentum enc.", "pretrain epochs", "top-1"]
    assert [r[0] for r in rows] == [
        "SimCLR (published, evaluated here: resnet50, c1c1c1c1)", "SwAV (published, evaluated here: resnet50, 5a5a5a5a)",
        "DINO (published, evaluated here: resnet50, teacher, 800 ep, d1d1d1d1)",
        "DINO (published, evaluated here: resnet50, student, 800 ep, d1d1d1d1)",
        "MoCo v3 (published, evaluated here: resnet50, 300 ep, a3a3a3a3)",
        "Barlow Twins (published, evaluated here: resnet50, b7b7b7b7)",
        "VICReg (published, evaluated here: resnet50, 7e7e7e7e)"]
    assert [r[1:3] for r in rows] == [["yes", "no"], ["no", "no"], ["no", "yes"], ["no", "yes"], ["yes", "yes"],
                                      ["no", "no"], ["no", "no"]]
    assert rows[2][3:] == ["800", "71.4 (n=1)"] and rows[0][3] == "-"  # 70 + len("1_dino_teacher") / 10

    # detection: the Table 5 protocol gives a published row; another dataset is not comparable, labelled alike
    dino = published("d1" * 32, "dino", "DINO", epochs=800, branch="teacher")
    write_detection(tmp_path / "det" / "voc07", "voc07", VOC07, [{"AP50": 80.0, "AP": 52.0, "AP75": 56.0}], src=dino)
    write_detection(tmp_path / "det" / "bccd", "tiny", (["bccd_train"], ["bccd_test"]),
                    [{"AP50": 50.0, "AP": 25.0, "AP75": 20.0}], src=dino)
    t = tables(tmp_path / "det")
    assert not [r for r in t.table5()[1] if "evaluated here" in r[0]]
    assert t.published_table5()[1] == [["DINO (published, evaluated here: resnet50, teacher, 800 ep, d1d1d1d1)",
                                        "80.0 / 52.0 / 56.0 (n=1)", "-", "-", "-"]]
    (other,) = t.other_detection()[1]
    assert other[0].startswith("DINO (published, evaluated here") and other[-1].startswith("dataset bccd")

    assert main([str(tmp_path), "--method", "b7b7=Barlow Twins", "--method", "7e7e=VICReg"]) == 0
    out = capsys.readouterr().out
    order = [out.index(title) for title in ("Table 4:", "Published checkpoints evaluated here with Table 4",
                                            "Table 5:", "Published checkpoints evaluated here with Table 5")]
    assert order == sorted(order)


def test_table_errors_are_one_line_and_exit_2(tmp_path, capsys):
    """simsiam table follows the one error convention (pretrain.frame.guard): bad input is one line naming the
    folder, file or option, exit code 2, and no table is printed."""
    write_linear(tmp_path / "lin", 68.0)
    broken = tmp_path / "broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text('{"schema": ')
    (tmp_path / "empty").mkdir()
    for argv, says in (([str(tmp_path / "nowhere")], f"no such run folder or file: {tmp_path / 'nowhere'}"),
                       ([str(tmp_path / "broken")], f"{broken}: not valid JSON"),
                       ([str(tmp_path / "empty")], f"no results.json under {tmp_path / 'empty'}"),
                       ([str(tmp_path / "lin"), "--method", "=x"], "--method '=x': expected NAME or SHA_PREFIX=NAME"),
                       ([str(tmp_path / "lin"), "--output", str(tmp_path / "no" / "dir" / "t.md")],
                        f"--output {tmp_path / 'no' / 'dir' / 't.md'}: cannot write it")):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("simsiam table: error: ") and says in err, err


# ------------------------------------------------------------------------------------- the paper's rows
def _reference() -> Path:
    env = os.environ.get("SIMSIAM_SHARED_DATA")
    path = Path(env).parent / "REFERENCE.md" if env else Path(__file__).resolve().parents[2] / "shared" / "REFERENCE.md"
    if not path.is_file():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"reference missing: {path}")
        pytest.skip(f"{path} is not present")
    return path


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of the text as rows of cells (header included, separator rows left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_paper_rows_match_the_reference():
    found = _markdown_tables(_reference().read_text())
    t4 = next(t for t in found if t[0][:2] == ["method", "batch"])
    t5 = next(t for t in found if t[0][0] == "pre-train")
    assert t4[0][4:] == ["100", "200", "400", "800"]
    ref4 = [(name, int(bs), neg, mom, tuple(float(v) for v in vals)) for name, bs, neg, mom, *vals in t4[1:]]
    assert PAPER_TABLE4 == ref4
    assert t5[0][1:] == ["VOC07", "VOC07+12", "COCO box", "COCO mask"]
    ref5 = [(name, *(tuple(float(v) for v in cell.split(" / ")) for cell in cells)) for name, *cells in t5[1:]]
    assert PAPER_TABLE5 == ref5
    # and they are printed verbatim
    t = Tables([])
    assert ["SimSiam", "256", "no", "no", "68.1", "70.0", "70.8", "71.3"] in t.table4()[1]
    assert ["SimSiam, optimal", "77.3 / 48.5 / 52.5", "82.4 / 57.0 / 63.7", "59.3 / 39.2 / 42.1",
            "56.0 / 34.4 / 36.7"] in t.table5()[1]


# ------------------------------------------------------------------------------------- output and CLI
@pytest.mark.parametrize("fmt", ["terminal", "markdown", "latex", "csv"])
def test_formats(tmp_path, fmt):
    write_linear(tmp_path / "lin", 68.0)
    write_linear(tmp_path / "short", 12.0, "train.epochs=1")
    text = render(tables(tmp_path), fmt)
    assert "68.0 (n=1)" in text and "71.3" in text and "linear epochs 1 != 90" in text
    if fmt == "markdown":
        assert "| method" in text
    if fmt == "latex":
        assert "\\toprule" in text
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert ["method", "batch", "neg. pairs", "momentum enc.", "100 ep", "200 ep", "400 ep", "800 ep"] in rows


def test_cli_errors_and_output(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"schema": "other"}))
    assert main([str(bad)]) == 2
    assert "schema" in capsys.readouterr().err
    good = tmp_path / "good"
    write_linear(good, 70.0)
    out = tmp_path / "t.md"
    assert main([str(good), "--format", "markdown", "--output", str(out)]) == 0
    assert "70.0 (n=1)" in out.read_text()


def write_grid_linear(d, top1, train_images, holdout=10_000, seed=0) -> Path:
    """What transfer.evaluation.linear's grid mode writes: the picked head's top-1, the protocol it was measured with (on
    the training split minus the held-out slice) and the "grid" section."""
    cfg = config_mod.resolve(LinearConfig(), ["imagenet_lars", "grid"], kind="linear")
    protocol = linear_fingerprint(cfg, arch="resnet50", presets=("imagenet_lars", "grid"),
                                  **{**IMAGENET, "train_images": train_images})
    protocol["selection"] = {"method": "best of grid", "heads": 13, "holdout_images": holdout, "holdout_seed": seed}
    grid = {"heads": [{"base_lr": 0.1, "weight_decay": 0.0, "holdout_top1": top1, "top1": top1}], "picked": 0,
            "holdout": {"images": holdout, "fraction": 0.1, "max_images": 10_000, "seed": seed}}
    return write_results(d, task="linear", dataset="imagenet", metrics={"top1": top1, "top5": top1 + 20},
                         config=config_mod.to_dict(cfg), source=source(), epochs=90, batch_size=4096,
                         extra={"protocol": protocol, "grid": grid})


def test_best_of_grid_sits_beside_the_protocol_row_never_in_a_paper_column(tmp_path):
    write_linear(tmp_path / "lin", 68.0)
    write_grid_linear(tmp_path / "grid", 68.9, train_images=1_271_167)
    # even a grid document whose recorded protocol matched the column's stays out of it
    write_grid_linear(tmp_path / "grid_seed1", 69.3, train_images=1_281_167, seed=1)
    t = tables(tmp_path)
    h4, r4 = t.table4()
    (ours,) = yours(r4)
    assert ours[h4.index("100 ep")] == "68.0 (n=1)"  # the protocol's single head only
    rows = {r[3]: r for r in not_comparable(t)}
    assert set(rows) == {"linear, best of grid (held-out 10000 images, seed 0)",
                         "linear, best of grid (held-out 10000 images, seed 1)"}
    row = rows["linear, best of grid (held-out 10000 images, seed 0)"]
    assert row[0] == ours[0] and row[4:8] == ["imagenet", "100", "68.9 (n=1)", "88.9 (n=1)"]
    assert row[8] == "train images 1271167 != 1281167"
    assert rows["linear, best of grid (held-out 10000 images, seed 1)"][8] == \
        "lr picked from a grid on held-out training images"
    assert "best of grid (held-out 10000 images, seed 0)" in render(t, "markdown")


# ------------------------------------------------------------------------------ the other methods' rows
def method_source(sha: str, presets: tuple[str, ...], *overrides: str, epochs: int = 100, batch: int = 4096) -> dict:
    """results.json `source` of a finished ImageNet pretraining of the suite run with `presets` and `overrides`:
    its method's display name and the recipe its checkpoint records (pretrain.protocol.recipe_of of the config)."""
    from pretrain.defaults import PretrainConfig
    from pretrain.methods import display_name
    from pretrain.protocol import recipe_of
    cfg = config_mod.resolve(PretrainConfig(), list(presets), list(overrides), kind="pretrain")
    return source(sha=sha, method=display_name(cfg.method), epochs=epochs, scheduled_epochs=epochs,
                  batch_size=batch, recipe=recipe_of(config_mod.to_dict(cfg)))


# (method's paper row, its Table 4 preset, its 200-epoch preset, its row's batch, one recipe key changed, the
# difference that names it)
METHOD_ROWS = [
    ("BYOL (repro.)", "byol", "byol_200ep", 4096, "model.target_momentum=0.996",
     "pretraining model.target_momentum 0.996 != 0.99"),
    ("SimCLR (repro.+)", "simclr", "simclr", 4096, "loss.temperature=0.2", "pretraining loss.temperature 0.2 != 0.1"),
    ("MoCo v2 (repro.+)", "moco_v2", "moco_v2", 256, "model.queue_size=16384",
     "pretraining model.queue_size 16384 != 65536"),
    ("SwAV (repro.+)", "swav", "swav", 4096, "model.prototypes=1000", "pretraining model.prototypes 1000 != 3000"),
]


def _right_below(rows: list[list[str]], paper_row: str) -> list[str]:
    """The labels of the rows between `paper_row` and the next paper row (the user rows of that method)."""
    labels = [r[0] for r in rows]
    below = []
    for label in labels[labels.index(paper_row) + 1:]:
        if "(yours" not in label:
            break
        below.append(label)
    return below


@pytest.mark.parametrize("paper_row, preset, preset_200, batch, changed, difference", METHOD_ROWS,
                         ids=[m[1] for m in METHOD_ROWS])
def test_a_method_run_with_its_presets_recipe_is_yours_in_its_rows(tmp_path, paper_row, preset, preset_200, batch,
                                                                   changed, difference):
    """A 100-epoch run of the method's preset enters its Table 4 row (right below the paper's), a 200-epoch run of
    its 200-epoch recipe its Table 5 row; the same runs with one recipe key changed enter neither and say which."""
    name = paper_row.split(" (")[0]
    write_linear(tmp_path / "lin", 66.0, src=method_source("a1" * 32, (preset,), batch=batch))
    write_linear(tmp_path / "lin_changed", 65.0, src=method_source("b2" * 32, (preset,), changed, batch=batch))
    voc = [{"AP50": 77.0, "AP": 47.0, "AP75": 50.0}]
    write_detection(tmp_path / "voc", "voc07", VOC07, voc, src=method_source("c3" * 32, (preset_200,), epochs=200))
    write_detection(tmp_path / "voc_changed", "voc07", VOC07, voc,
                    src=method_source("d4" * 32, (preset_200,), changed, epochs=200))
    t = tables(tmp_path)
    h4, r4 = t.table4()
    (mine,) = [r for r in r4 if "(yours" in r[0]]
    assert _right_below(r4, paper_row) == [mine[0]]
    assert mine[0] == f"{name} (yours: resnet50, pretrained on imagenet, 100 ep, bs {batch}, a1a1a1a1)"
    assert mine[1] == str(batch) and mine[h4.index("100 ep")] == "66.0 (n=1)" and mine[h4.index("200 ep")] == "-"
    (other,) = not_comparable(t)
    assert other[0].endswith("b2b2b2b2)") and other[-1] == difference
    _, r5 = t.table5()
    (mine5,) = [r for r in r5 if "(yours" in r[0]]
    assert _right_below(r5, paper_row) == [mine5[0]]
    assert mine5[0].startswith(f"{name} (yours: resnet50, pretrained on imagenet, 200 ep")
    assert mine5[1] == "77.0 / 47.0 / 50.0 (n=1)"
    (other5,) = t.other_detection()[1]
    assert other5[0].endswith("d4d4d4d4)") and other5[-1] == difference


def test_a_method_row_takes_its_methods_batch_and_byols_recipe_of_its_epochs(tmp_path):
    """The other methods' rows state one batch each (MoCo v2 256, the others 4096); BYOL has a recipe per epochs
    (lr 0.45 / 0.3 / 0.2, weight decay 1e-6 / 1e-6 / 1.5e-6, base momentum 0.99 / 0.99 / 0.996)."""
    write_linear(tmp_path / "moco512", 67.0, src=method_source("e5" * 32, ("moco_v2",),
                                                               batch=512))
    write_linear(tmp_path / "byol800", 74.0, src=method_source("f6" * 32, ("byol_800ep",), epochs=800))
    write_linear(tmp_path / "byol800_100ep_recipe", 73.0, src=method_source("07" * 32, ("byol",), epochs=800))
    t = tables(tmp_path)
    h4, r4 = t.table4()
    (byol,) = [r for r in r4 if "(yours" in r[0]]
    assert byol[0].endswith("800 ep, bs 4096, f6f6f6f6)") and byol[h4.index("800 ep")] == "74.0 (n=1)"
    reasons = {r[0][-9:-1]: r[-1] for r in not_comparable(t)}
    assert reasons == {
        "e5e5e5e5": "pretraining batch 512 != 256",
        "07070707": "pretraining model.target_momentum 0.99 != 0.996; pretraining optim.base_lr 0.45 != 0.2; "
                    "pretraining optim.weight_decay 1e-06 != 1.5e-06"}


def test_a_simsiam_run_never_enters_another_methods_row(tmp_path):
    """Rows follow the method the checkpoint's recipe records: a SimSiam run at batch 4096 is compared with
    SimSiam's row (and refused for its batch), not accepted as a BYOL one."""
    write_linear(tmp_path / "simsiam4096", 64.0, src=source(sha="18" * 32, batch_size=4096))
    t = tables(tmp_path)
    assert not [r for r in t.table4()[1] if "(yours" in r[0]]
    (row,) = not_comparable(t)
    assert row[0].startswith("SimSiam (yours") and row[-1] == "pretraining batch 4096 != 256 or 512"
