"""transfer.evaluation.detect and its parts (transfer.evaluation.detection): protocol configs, norm choice, input
normalisation, trial statistics, weight loading, two CPU processes, and short real fine-tuning
runs (R50-C4, detectron2 on CPU) on real data: a BCCD slice (VOC evaluation) and coco-tiny (Mask R-CNN, COCO
evaluation), from weights made by our converter."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pretrain.config import ConfigError, find_preset
from transfer.evaluation import convert, detect
from transfer.evaluation.detection import config as dconfig, heads, trials
from transfer.evaluation.detection import trainer as dtrainer, weights as dweights
from transfer.evaluation.detection.shim import has_real_extension
from transfer.reporting.results import read_results

REPO = Path(__file__).resolve().parents[1]

# A fast variant of the tiny preset for the tests: 2 iterations, fixed 128 px short side, 2 test images.
FAST = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1", "SIMSIAM.MAX_TRAIN_IMAGES", "8", "SIMSIAM.MAX_TEST_IMAGES", "2"]


@pytest.fixture(scope="module")
def tv_resnet50(tmp_path_factory) -> tuple[Path, dict]:
    """A randomly initialised torchvision ResNet-50 saved as a plain state dict."""
    torch.manual_seed(0)
    sd = torchvision.models.resnet50().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def d2_weights(tv_resnet50, tmp_path_factory) -> Path:
    path, _ = tv_resnet50
    out = tmp_path_factory.mktemp("weights") / "resnet50_random.pkl"
    convert.to_detectron2(path, out, arch="resnet50")
    return out


# ------------------------------------------------------------------------------------------------ configs
def _cfg(preset, *overrides):
    return detect.build_config(preset, list(overrides))


def test_voc_presets_resolve_to_the_protocol():
    cfg = _cfg("voc07")
    assert cfg.SOLVER.MAX_ITER == 24000 and tuple(cfg.SOLVER.STEPS) == (18000, 22000)
    assert cfg.SOLVER.WARMUP_ITERS == 100
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == pytest.approx(0.02)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32)) and cfg.INPUT.MIN_SIZE_TEST == 800
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval",) and tuple(cfg.DATASETS.TEST) == ("voc_2007_test",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20 and not cfg.MODEL.MASK_ON
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "naiveSyncBN"  # MoCo's choice
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and cfg.MODEL.RESNETS.OUT_FEATURES == ["res4"]
    # the torchvision overlay is merged after the preset
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert detect.build_config("voc07", caffe_weights=True).INPUT.FORMAT == "BGR"
    c12 = _cfg("voc0712")
    assert tuple(c12.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval")
    assert c12.SOLVER.MAX_ITER == 24000 and tuple(c12.DATASETS.TEST) == ("voc_2007_test",)


def test_coco_presets_resolve_to_the_protocol():
    c1, c2 = _cfg("coco_1x"), _cfg("coco_2x")
    assert c1.MODEL.MASK_ON and c1.MODEL.ROI_HEADS.NUM_CLASSES == 80
    assert c1.SOLVER.MAX_ITER == 90000 and tuple(c1.SOLVER.STEPS) == (60000, 80000)
    assert c2.SOLVER.MAX_ITER == 180000 and tuple(c2.SOLVER.STEPS) == (120000, 160000)
    for c in (c1, c2):
        assert tuple(c.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
        assert c.SOLVER.IMS_PER_BATCH == 16 and c.SOLVER.BASE_LR == pytest.approx(0.02)
        assert tuple(c.DATASETS.TRAIN) == ("coco_2017_train",) and tuple(c.DATASETS.TEST) == ("coco_2017_val",)
    tiny = _cfg("tiny")
    assert tiny.SOLVER.IMS_PER_BATCH == 2 and tiny.SOLVER.MAX_ITER == 20 and max(tiny.INPUT.MIN_SIZE_TRAIN) <= 160


def test_unknown_keys_and_bad_overrides_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "%s"\nSOLVER:\n  MAX_ITERS: 5\n' % (find_preset("voc07", "detection")))
    with pytest.raises(ConfigError, match="bad.yaml.*MAX_ITERS"):
        detect.build_config(str(bad))
    with pytest.raises(ConfigError, match="SOLVER.NOPE"):
        detect.build_config("tiny", ["SOLVER.NOPE", "1"])
    with pytest.raises(ConfigError, match="odd"):
        detect.build_config("tiny", ["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match="no-such-preset"):
        detect.build_config("no-such-preset")


def test_norm_choice():
    # the default (every preset: SIMSIAM.NORM auto over MODEL.RESNETS.NORM naiveSyncBN, as MoCo's configs)
    for preset in ("voc07", "voc0712", "coco_1x", "coco_2x", "tiny", "tiny_coco"):
        cfg = _cfg(preset)
        assert (cfg.SIMSIAM.NORM, cfg.MODEL.RESNETS.NORM) == ("auto", "naiveSyncBN"), preset
        resolved = [dconfig.resolve_norm(cfg.SIMSIAM.NORM, cfg.MODEL.RESNETS.NORM, world, cuda)
                    for world, cuda in ((8, True), (2, True), (2, False), (1, True), (1, False))]
        assert resolved == ["naiveSyncBN", "naiveSyncBN", "naiveSyncBN", "BN", "BN"], preset
    # SyncBN stays available: from the config on several GPUs, or asked for explicitly
    assert dconfig.resolve_norm("auto", "SyncBN", 8, cuda=True) == "SyncBN"
    assert dconfig.resolve_norm("auto", "SyncBN", 2, cuda=False) == "naiveSyncBN"  # SyncBN needs CUDA
    assert dconfig.resolve_norm("auto", "SyncBN", 1, cuda=True) == "BN"
    assert _cfg("voc07", "MODEL.RESNETS.NORM", "SyncBN").MODEL.RESNETS.NORM == "SyncBN"
    assert dconfig.resolve_norm("SyncBN", "naiveSyncBN", 8, cuda=True) == "SyncBN"
    assert dconfig.resolve_norm("naiveSyncBN", "SyncBN", 1, cuda=False) == "naiveSyncBN"
    assert dconfig.resolve_norm("BN", "naiveSyncBN", 8, cuda=True) == "BN"
    # auto leaves norms that do not synchronise alone
    assert dconfig.resolve_norm("auto", "FrozenBN", 1, cuda=False) == "FrozenBN"
    assert dconfig.resolve_norm("auto", "GN", 8, cuda=True) == "GN"
    assert dconfig.resolve_norm("auto", "BN", 2, cuda=False) == "BN"


# ------------------------------------------------------------------------------------------------- trials
def test_benchmark_names():
    cfg = _cfg("tiny")
    assert detect.benchmark_name(cfg, ["voc_2007_trainval"], ["voc_2007_test"]) == "voc07"
    assert detect.benchmark_name(cfg, ["voc_2007_trainval", "voc_2012_trainval"], ["voc_2007_test"]) == "voc0712"
    assert detect.benchmark_name(cfg, ["coco_2017_train"], ["coco_2017_val"]) == "coco"
    # part of a benchmark is not the benchmark (kept out of the paper's table)
    assert detect.benchmark_name(cfg, ["voc_2007_trainval"], ["voc_2007_test@16"]) == "voc07-subset"
    assert detect.benchmark_name(_cfg("tiny", "SIMSIAM.BENCHMARK", "mine"), ["a"], ["b"]) == "mine"


def test_extract_metrics_shapes():
    voc = trials.extract_metrics({"bbox": {"AP": 40.0, "AP50": 70.0, "AP75": 41.0}}, "voc", False)
    assert voc == {"AP50": 70.0, "AP": 40.0, "AP75": 41.0}
    coco = trials.extract_metrics({"bbox": {"AP": 1.0, "AP50": 2.0, "AP75": float("nan"), "APs": 0.0},
                                   "segm": {"AP": 0.5, "AP50": 1.5, "AP75": 0.1}}, "coco", True)
    assert coco == {"bbox": {"AP50": 2.0, "AP": 1.0, "AP75": None}, "segm": {"AP50": 1.5, "AP": 0.5, "AP75": 0.1}}


# ------------------------------------------------------------------------------------------------ weights
def test_converted_weights_are_really_loaded(tv_resnet50, d2_weights, tmp_path):
    from detectron2.modeling import build_model

    _, sd = tv_resnet50
    cfg = _cfg("tiny", "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    assert torch.count_nonzero(model.backbone.stem.conv1.weight - sd["conv1.weight"]) > 0  # not yet loaded
    summary = dweights.load_pretrained(model, str(d2_weights))
    assert summary["backbone_tensors_loaded"] == 265 and summary["unexpected"] == []
    assert torch.equal(model.backbone.stem.conv1.weight, sd["conv1.weight"])
    assert torch.equal(model.backbone.res4[5].conv3.norm.running_var, sd["layer3.5.bn3.running_var"])
    assert torch.equal(model.roi_heads.res5[0].shortcut.weight, sd["layer4.0.downsample.0.weight"])
    assert torch.equal(model.roi_heads.res5[2].conv2.norm.weight, sd["layer4.2.bn2.weight"])
    assert isinstance(model.roi_heads.res5.norm, torch.nn.BatchNorm2d)  # MoCo's extra norm after res5
    assert any(k.startswith("roi_heads.res5.norm.") for k in summary["new_tensors"])
    # weights without res3 are refused, naming what is missing
    obj = pickle.loads(d2_weights.read_bytes())
    obj["model"] = {k: v for k, v in obj["model"].items() if not k.startswith("res3.")}
    broken = tmp_path / "no_res3.pkl"
    broken.write_bytes(pickle.dumps(obj))
    with pytest.raises(ConfigError, match=r"backbone tensors missing \(backbone\.res3"):
        dweights.load_pretrained(build_model(cfg), str(broken))


def test_r18_c4_is_the_whole_resnet18_with_equal_features(d2_weights, tmp_path):
    """tiny_r18 builds R18-C4: every tensor of a ResNet-18 (res5 of basic blocks in the ROI head) is loaded, and
    the backbone and head compute what torchvision's layers compute. Weights of another backbone are refused."""
    from detectron2.modeling import build_model

    torch.manual_seed(5)
    tv = torchvision.models.resnet18()
    for m in tv.modules():  # BN statistics away from 0/1, so a norm layer that is skipped or misnamed shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, tmp_path / "r18.pth")
    convert.to_detectron2(tmp_path / "r18.pth", tmp_path / "r18.pkl", arch="resnet18")
    cfg = _cfg("tiny_r18", "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu")
    assert dconfig.config_arch(cfg) == "resnet18"
    path, source = dweights.prepare_weights(str(tmp_path / "r18.pkl"), tmp_path, "resnet18")
    assert source["pretrain"]["arch"] == "resnet18"
    model = build_model(cfg).eval()
    summary = dweights.load_pretrained(model, path)
    assert summary["backbone_tensors_loaded"] == sum(not k.endswith("num_batches_tracked") for k in sd) == 100
    assert summary["unexpected"] == []
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    tv.eval()
    with torch.no_grad():
        res4_tv = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        res5_tv = tv.layer4(res4_tv)
        res4 = model.backbone(x)["res4"]
        res5 = model.roi_heads.res5[:-1](res4)  # the last module is MoCo's extra norm, not part of the ResNet
    for a, b in ((res4, res4_tv), (res5, res5_tv)):
        assert a.shape == b.shape and b.abs().max() > 0
        assert (a - b).abs().max() / b.abs().max() < 1e-4
    with pytest.raises(ConfigError, match="resnet50 weights, but the config builds a resnet18 backbone"):
        dweights.prepare_weights(str(d2_weights), tmp_path, "resnet18")
    assert dweights.prepare_weights("random", tmp_path, "resnet18")[1]["pretrain"]["arch"] == "resnet18"


def test_pretraining_checkpoint_is_converted_on_the_fly(tmp_path):
    """--weights may be a pretraining checkpoint: it becomes DIR/weights_detectron2.pkl via transfer.evaluation.convert,
    and results.json's source describes the pretraining run."""
    from detectron2.modeling import build_model

    from pretrain.defaults import ModelConfig
    from pretrain.model import build_model as build_simsiam

    torch.manual_seed(1)
    net = build_simsiam(ModelConfig())
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"format": "simsiam-suite/pretrain", "version": 1, "epoch": 7, "step": 70, "arch": "resnet50",
                "model": net.state_dict(), "optimizer": None, "scaler": None, "rng": {},
                "config": {"train": {"batch_size": 64}}, "dataset": "embedded"}, ckpt)
    path, source = dweights.prepare_weights(str(ckpt), tmp_path)
    assert Path(path) == tmp_path / "weights_detectron2.pkl"
    assert source["pretrain"]["epochs"] == 7 and source["pretrain"]["batch_size"] == 64
    assert source["pretrain"]["dataset"] == "embedded" and len(source["sha256"]) == 64
    model = build_model(_cfg("tiny", "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu"))
    dweights.load_pretrained(model, path)
    assert torch.equal(model.roi_heads.res5[1].conv1.weight, net.encoder.layer4[1].conv1.weight.detach())


def _load_with(checkpointer_cls, cfg, weights):
    from detectron2.modeling import build_model

    model = build_model(cfg)
    ckp = checkpointer_cls(model)
    incompatible = ckp._load_model(ckp._load_file(str(weights)))  # noqa: SLF001
    return model.state_dict(), incompatible


def test_safe_checkpointer_loads_what_detectron2_loads(d2_weights, tmp_path):
    """Our converter's .pkl read with the weights-only unpickler gives the model exactly what detectron2's own
    reader (pickle.load) gives it; a Caffe2-style pickle of blobs is read the same way too."""
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = _cfg("tiny", "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu")
    ours, ours_inc = _load_with(dweights.SafeCheckpointer, cfg, d2_weights)
    theirs, theirs_inc = _load_with(DetectionCheckpointer, cfg, d2_weights)
    assert sorted(ours_inc.missing_keys) == sorted(theirs_inc.missing_keys)
    assert ours_inc.unexpected_keys == theirs_inc.unexpected_keys == []
    loaded = [k for k in ours if k not in ours_inc.missing_keys]
    assert len(loaded) >= 265 and all(torch.equal(ours[k], theirs[k]) for k in loaded)
    blobs = tmp_path / "c2.pkl"
    blobs.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.zeros(2)}}, protocol=2))
    a, b = dweights.SafeCheckpointer(None)._load_file(str(blobs)), DetectionCheckpointer(None)._load_file(str(blobs))
    assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items() if k != "model"}
    assert a["model"].keys() == b["model"].keys() == {"conv1_w"}


@pytest.fixture
def stale_handlers_quiet(monkeypatch):
    """Console handlers made by an earlier test's detect.main write to that test's closed capture stream;
    logging would report each failure on this test's stderr, which must hold only what the CLI prints."""
    monkeypatch.setattr(logging, "raiseExceptions", False)


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_crafted_weights_are_refused(bccd_root, crafted, tmp_path, capsys, stale_handlers_quiet, fmt):
    path = crafted.write(f"crafted.{'pkl' if fmt == 'pickle' else 'pth'}", fmt)
    code = detect.main(["--weights", str(path), "--config", "tiny", "--output", str(tmp_path / "out"),
                        "--cache-dir", str(tmp_path / "cache"), "--train-dataset", f"{bccd_root}:train",
                        "--test-dataset", f"{bccd_root}:test", *FAST])
    crafted.assert_refused(code, capsys.readouterr().err, path)


def test_trial_resume_reads_checkpoints_safely(bccd_root, crafted, tmp_path):
    """The trainer's checkpointer (resume of an interrupted trial) is a SafeCheckpointer too."""
    from pretrain.checkpoint import UnsafeFileError

    args = argparse.Namespace(config="tiny", opts=FAST, caffe_weights=False, norm=None, amp=False, data_root=None,
                              cache_dir=str(tmp_path / "cache"), train_dataset=[f"{bccd_root}:train"],
                              test_dataset=[f"{bccd_root}:test"])
    cfg = detect.setup(args)[0]
    cfg.OUTPUT_DIR = str(tmp_path)
    crafted.write("model_0000001.pth", "torch")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    trainer = dtrainer.Trainer(cfg)
    assert isinstance(trainer.checkpointer, dweights.SafeCheckpointer)
    with pytest.raises(UnsafeFileError, match="model_0000001.pth: refused"):
        trainer.resume()
    assert not crafted.marker.exists()


def test_crafted_trial_checkpoint_is_one_line_and_exit_2(bccd_root, crafted, tmp_path, capsys, stale_handlers_quiet):
    """`simsiam detect` resuming a trial folder that holds a crafted checkpoint: refused, one line, exit 2."""
    out = tmp_path / "out"
    (out / "trial_0").mkdir(parents=True)
    path = crafted.write("out/trial_0/model_0000001.pth", "torch")
    (out / "trial_0" / "last_checkpoint").write_text("model_0000001.pth")
    code = detect.main(["--weights", "random", "--config", "tiny", "--output", str(out), "--cache-dir",
                        str(tmp_path / "cache"), "--train-dataset", f"{bccd_root}:train", "--test-dataset",
                        f"{bccd_root}:test", *FAST])
    crafted.assert_refused(code, capsys.readouterr().err, path)


def test_crafted_yaml_is_refused(tmp_path, capsys, stale_handlers_quiet):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'SOLVER:\n  MAX_ITER: !!python/object/apply:os.system ["touch {marker}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "evil.yaml"\nSOLVER:\n  BASE_LR: 0.1\n')
    for config in (evil, child):
        code = detect.main(["--weights", "random", "--config", str(config), "--output", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert f"{evil}:2" in lines[0] and "refused" in lines[0] and "python/object/apply:os.system" in lines[0]
        assert config == evil or f"a _BASE_ of {child}" in lines[0]
        assert not marker.exists()
    assert detect.build_config("voc0712").SOLVER.MAX_ITER == 24000  # our presets' _BASE_ chains still resolve


def test_coco_evaluator_uses_the_official_implementation_without_C(coco_tiny_root, tmp_path):
    from transfer.evaluation import detection_data as dd

    name = dd.resolve_dataset(str(coco_tiny_root / "annotations" / "instances_val2017.json"))
    cfg = _cfg("tiny", "MODEL.MASK_ON", "True", "OUTPUT_DIR", str(tmp_path))
    ev = dtrainer.Trainer.build_evaluator(cfg, name)
    assert ev._use_fast_impl == has_real_extension()  # noqa: SLF001
    assert ev._tasks == ("bbox", "segm")  # noqa: SLF001


# -------------------------------------------------------------------------------------------- end to end
def _finite_losses(trial: Path, n: int) -> list[dict]:
    rows = [json.loads(ln) for ln in (trial / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "total_loss" in r]
    assert [r["iter"] for r in losses] == list(range(1, n + 1))
    for r in losses:
        assert r["stage"] == "detection"
        assert all(math.isfinite(v) for k, v in r.items() if k.startswith("loss") or k == "total_loss")
    return rows


def test_finetune_bccd_voc_with_resume(bccd_root, d2_weights, tmp_path, caplog):
    out = tmp_path / "bccd"
    argv = ["--weights", str(d2_weights), "--config", "tiny", "--output", str(out), "--seed", "3",
            "--cache-dir", str(tmp_path / "cache"), "--train-dataset", f"{bccd_root}:train",
            "--test-dataset", f"{bccd_root}:test", *FAST]
    assert detect.main(argv) == 0
    trial = out / "trial_0"
    doc = read_results(trial)
    assert doc["task"] == "detection" and doc["dataset"] == "bccd" and doc["seed"] == 3
    assert set(doc["metrics"]) == {"AP50", "AP", "AP75"}
    assert all(v is not None and 0.0 <= v <= 100.0 for v in doc["metrics"].values())
    assert doc["config"]["MODEL"]["RESNETS"]["NORM"] == "BN"  # auto: one CPU process
    assert doc["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3
    rows = _finite_losses(trial, 2)
    assert rows[-1]["AP50"] == doc["metrics"]["AP50"]
    summary = read_results(out)
    assert summary["n_trials"] == 1 and summary["metrics"] == doc["metrics"]
    assert summary["std"] == {"AP50": None, "AP": None, "AP75": None}
    assert summary["trials"][0]["seed"] == 3
    assert (doc["protocol"]["iterations"], doc["protocol"]["batch"], doc["protocol"]["preset"]) == (2, 2, "tiny")
    assert summary["protocol"] == doc["protocol"]
    # a finished trial is skipped
    assert detect.main(argv) == 0
    assert read_results(trial)["created"] == doc["created"]
    # an interrupted trial resumes from its last checkpoint: pretend iteration 3 was still to run
    (trial / "results.json").unlink()
    assert detect.main(argv + ["SOLVER.MAX_ITER", "3"]) == 0
    assert "resuming" in (trial / "log.txt").read_text()
    _finite_losses(trial, 3)
    assert read_results(trial)["iterations"] == 3


def test_finetune_coco_tiny_mask_rcnn(coco_tiny_root, d2_weights, tmp_path):
    ann = coco_tiny_root / "annotations"
    out = tmp_path / "coco"
    argv = ["--weights", str(d2_weights), "--config", "tiny", "--output", str(out), "--cache-dir", str(tmp_path),
            "--train-dataset", str(ann / "instances_train2017.json"),
            "--test-dataset", str(ann / "instances_val2017.json"), *FAST, "MODEL.MASK_ON", "True"]
    assert detect.main(argv) == 0
    doc = read_results(out / "trial_0")
    assert doc["dataset"] == "coco-tiny"
    assert set(doc["metrics"]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(doc["metrics"][task]) == {"AP50", "AP", "AP75"}
        assert all(v is not None and 0.0 <= v <= 100.0 for v in doc["metrics"][task].values())
    assert doc["config"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 80
    rows = _finite_losses(out / "trial_0", 2)
    assert "loss_mask" in rows[0] and "bbox/AP" in rows[-1]



@pytest.mark.parametrize("preset, blocks", [("tiny_r18", 2 + 2 + 2 + 2), ("tiny", 3 + 4 + 6 + 3)])
def test_zero_init_residual_starts_every_block_as_the_identity(preset, blocks):
    """SIMSIAM.ZERO_INIT_RESIDUAL's init: the last norm of every block, backbone and ROI head, gets scale 0, so a
    block without a projection passes a non-negative input through unchanged; the other norms keep scale 1."""
    from detectron2.modeling import build_model
    from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    torch.manual_seed(0)
    model = build_model(_cfg(preset, "MODEL.RESNETS.NORM", "BN", "MODEL.DEVICE", "cpu")).eval()
    assert heads.zero_init_residual(model) == blocks
    found = [m for m in model.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    for b in found:
        last = b.conv3 if isinstance(b, BottleneckBlock) else b.conv2
        assert torch.all(last.norm.weight == 0) and torch.all(b.conv1.norm.weight == 1)
    plain = [b for b in found if b.shortcut is None]
    assert plain
    for b in plain:
        x = torch.rand(2, b.in_channels, 6, 6)
        with torch.no_grad():
            assert torch.equal(b(x), x)


def test_random_init_baseline(bccd_root, tmp_path):
    """--weights random: the same config and data with nothing loaded (detectron2's initialisation, drawn from
    the trial seed); results.json says so in its source."""
    out = tmp_path / "random"
    argv = ["--weights", "random", "--config", "tiny", "--output", str(out), "--seed", "5",
            "--cache-dir", str(tmp_path / "cache"), "--train-dataset", f"{bccd_root}:train",
            "--test-dataset", f"{bccd_root}:test", *FAST, "SOLVER.MAX_ITER", "1"]
    assert detect.main(argv) == 0
    for doc in (read_results(out / "trial_0"), read_results(out)):
        assert doc["source"]["checkpoint"] == "random" and doc["source"]["weights"] is None
        assert doc["source"]["pretrain"] == {"method": "random init", "arch": "resnet50", "epochs": 0,
                                             "batch_size": None, "dataset": None, "zero_init_residual": False}
        assert all(v is not None for v in doc["metrics"].values())
    assert doc["config"]["MODEL"]["WEIGHTS"] == "" and doc["iterations"] == 1
    log = (out / "trial_0" / "log.txt").read_text()
    assert "random init: no weights loaded" in log and "seed 5" in log and "pretrained weights" not in log
    assert "zeroed" not in log
    # the network an official-init pretraining starts from: every residual block zero-initialised
    zero = tmp_path / "random_zero"
    assert detect.main([*argv[:5], str(zero), *argv[6:], "SIMSIAM.ZERO_INIT_RESIDUAL", "True"]) == 0
    assert read_results(zero)["source"]["pretrain"]["zero_init_residual"] is True
    assert "last norm of each of the 16 residual blocks zeroed" in (zero / "trial_0" / "log.txt").read_text()

def test_bad_input_is_a_clear_error(d2_weights, tmp_path, capsys):
    base = ["--config", "tiny", "--output", str(tmp_path / "x"), "--cache-dir", str(tmp_path)]
    assert detect.main(["--weights", str(tmp_path / "missing.pkl"), *base]) == 2
    assert "missing.pkl" in capsys.readouterr().err
    assert detect.main(["--weights", str(d2_weights), *base, "--test-dataset", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert detect.main(["--weights", str(d2_weights), *base, "SIMSIAM.ZERO_INIT_RESIDUAL", "True"]) == 2
    assert "SIMSIAM.ZERO_INIT_RESIDUAL True applies to --weights random only" in capsys.readouterr().err
    assert detect.main(["--weights", "random", *base, "SIMSIAM.ZERO_INIT_RESIDUAL", "1"]) == 2
    assert "override SIMSIAM.ZERO_INIT_RESIDUAL 1: Type mismatch" in capsys.readouterr().err


def test_amp_needs_cuda(d2_weights, tmp_path, capsys):
    def args(amp):
        return argparse.Namespace(config="tiny", opts=[], caffe_weights=False, norm=None, amp=amp, data_root=None,
                                  cache_dir=str(tmp_path / "cache"), train_dataset=None, test_dataset=None)

    assert detect.setup(args(False))[0].SOLVER.AMP.ENABLED is False
    if torch.cuda.is_available():
        cfg = detect.setup(args(True))[0]  # --amp turns on detectron2's AMP on the GPU
        assert cfg.SOLVER.AMP.ENABLED is True and cfg.MODEL.DEVICE == "cuda"
        return
    # a CPU-only host: refused before any work, with one line naming the reason
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        detect.setup(args(True))
    capsys.readouterr()
    argv = ["--weights", str(d2_weights), "--config", "tiny", "--output", str(tmp_path / "x"),
            "--cache-dir", str(tmp_path / "cache"), "--amp"]
    assert detect.main(argv) == 2
    # (stderr may also hold logging's own complaints about handlers bound to an earlier test's captured streams)
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("simsiam detect")]
    assert ours == [
        "simsiam detect: error: --amp / SOLVER.AMP.ENABLED needs a CUDA GPU (detectron2's AMPTrainer is CUDA-only)"]
    assert not (tmp_path / "x" / "trial_0").exists()


def test_two_cpu_processes(tmp_path):
    """torchrun with two CPU processes (gloo): the stage's trainer wraps the CPU model in DDP without
    device_ids, the norm resolves to naiveSyncBN, and the trial and its summary are written once."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = tmp_path / "two"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "transfer.evaluation.detect", "--weights", "random", "--config", "tiny", "--output",
           str(out), "--cache-dir", str(tmp_path / "cache"), *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = read_results(out / "trial_0")
    assert doc["config"]["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    assert read_results(out)["n_trials"] == 1
    assert proc.stdout.count("simsiam detect: 1 trial(s)") == 1


def test_importing_the_stage_imports_no_detectron2():
    """The entry point, its config and trials modules and its parser import no detectron2 and patch nothing."""
    code = ("import sys, numpy, transfer.evaluation.detect as d, transfer.evaluation.detection.config, "
            "transfer.evaluation.detection.trials; d.build_parser(); "
            "assert 'detectron2' not in sys.modules, 'detectron2 imported'; assert 'float' not in vars(numpy)")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


# --------------------------------------------------------------------------------- input normalisation
def _with_normalisation(src: Path, dst: Path, mean, std) -> Path:
    """A converted .pkl whose source records the pretraining's input normalisation (as a SimCLR layout does)."""
    obj = pickle.loads(src.read_bytes())
    obj["source"] = {**obj.get("source", {}), "normalisation": {"mean": mean, "std": std}}
    dst.write_bytes(pickle.dumps(obj))
    return dst


def test_normalisation_of_the_weights_sets_the_pixel_mean_and_std(d2_weights, tmp_path, caplog):
    pkl = _with_normalisation(d2_weights, tmp_path / "simclr.pkl", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    _, source = dweights.prepare_weights(str(pkl), tmp_path)
    assert source["normalisation"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    caplog.set_level(logging.INFO, logger="simsiam.detect")
    cfg = _cfg("tiny")
    assert dconfig.apply_input_normalisation(cfg, source["normalisation"], [], "w.pkl") == {
        "MODEL.PIXEL_MEAN": [0.0, 0.0, 0.0], "MODEL.PIXEL_STD": [255.0, 255.0, 255.0]}
    assert (list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)) == ([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])
    assert "input normalisation of w.pkl" in caplog.text and "MODEL.PIXEL_STD [255.0, 255.0, 255.0]" in caplog.text
    # a key given on the command line keeps its value; BGR input gets the channels in BGR order
    over = ["MODEL.PIXEL_MEAN", "[1.0, 2.0, 3.0]"]
    cfg = _cfg("tiny", *over, "INPUT.FORMAT", "BGR")
    norm = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 1.0]}
    assert dconfig.apply_input_normalisation(cfg, norm, over, "w.pkl") == {
        "MODEL.PIXEL_STD": [255.0, 63.75, 127.5]}
    assert list(cfg.MODEL.PIXEL_MEAN) == [1.0, 2.0, 3.0] and "MODEL.PIXEL_MEAN kept from the command line" in caplog.text
    # weights that record none leave the config alone; a malformed record is one clear error
    cfg = _cfg("tiny")
    assert dconfig.apply_input_normalisation(cfg, None, [], "w.pkl") is None
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    with pytest.raises(ConfigError, match=r"w.pkl: source normalisation std \[1.0, 0.0, 1.0\]: expected 3 numbers > 0"):
        dconfig.apply_input_normalisation(cfg, {"mean": [0, 0, 0], "std": [1.0, 0.0, 1.0]}, [], "w.pkl")


def test_normalisation_lands_in_the_run_config(bccd_root, tmp_path):
    """End to end: a hand-written R18 .pkl recording pixels / 255 (mean 0, std 1) is fine-tuned with
    MODEL.PIXEL_MEAN 0 and MODEL.PIXEL_STD 255; the trial's config, results.json and log say so."""
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    convert.to_detectron2(tmp_path / "r18.pth", tmp_path / "r18.pkl", arch="resnet18")
    pkl = _with_normalisation(tmp_path / "r18.pkl", tmp_path / "r18_simclr.pkl", [0, 0, 0], [1, 1, 1])
    out = tmp_path / "out"
    assert detect.main(["--weights", str(pkl), "--config", "tiny_r18", "--output", str(out), "--cache-dir",
                        str(tmp_path / "cache"), "--train-dataset", f"{bccd_root}:train", "--test-dataset",
                        f"{bccd_root}:test", *FAST, "SOLVER.MAX_ITER", "1"]) == 0
    doc = read_results(out / "trial_0")
    assert doc["config"]["MODEL"]["PIXEL_MEAN"] == [0.0, 0.0, 0.0]
    assert doc["config"]["MODEL"]["PIXEL_STD"] == [255.0, 255.0, 255.0]
    import yaml

    assert yaml.safe_load((out / "trial_0" / "config.yaml").read_text())["MODEL"]["PIXEL_STD"] == [255.0] * 3
    assert "MODEL.PIXEL_STD [255.0, 255.0, 255.0]" in (out / "log.txt").read_text()
    assert doc["source"]["normalisation"] == {"mean": [0, 0, 0], "std": [1, 1, 1]}


# ------------------------------------------------------------------------------- two CPU processes
def _two_rank_trainer(rank: int, port: int, out_dir: str, voc_root: str) -> None:
    """One rank of a two-process gloo group (env://) training R18-C4 for 2 iterations on a BCCD slice with the
    stage's Trainer; writes what it saw to <out_dir>/rank<rank>.json."""
    import hashlib
    import traceback

    result: dict = {}
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        torch.set_num_threads(1)
        from pretrain import distributed

        distributed.init_distributed("cpu")
        out = Path(out_dir)
        args = argparse.Namespace(config="tiny_r18", opts=FAST, caffe_weights=False, norm=None, amp=False,
                                  data_root=None, cache_dir=str(out / "cache"), train_dataset=[f"{voc_root}:train"],
                                  test_dataset=[f"{voc_root}:test"])
        cfg = detect.setup(args)[0]
        cfg.OUTPUT_DIR = str(out / "trial")
        torch.manual_seed(100 + rank)  # each rank draws its own init: DDP's broadcast must make them one
        trainer = dtrainer.Trainer(cfg)

        def digest() -> str:
            h = hashlib.sha256()
            for k, v in sorted(trainer.model.module.state_dict().items()):
                h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
            return h.hexdigest()

        result.update(ddp=type(trainer.model).__name__, device_ids=trainer.model.device_ids, norm=cfg.MODEL.RESNETS.NORM,
                      bn=sorted({type(m).__name__ for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}),
                      start=digest())
        results = trainer.train()
        result.update(end=digest(), eval={k: sorted(v) for k, v in results.items()})
        distributed.barrier()  # rank 0 has written model_final.pth
        final = torch.load(out / "trial" / "model_final.pth", weights_only=True)["model"]
        mine = trainer.model.module.state_dict()
        result["final_file_equal"] = final.keys() == mine.keys() and all(torch.equal(final[k], mine[k]) for k in mine)
        distributed.barrier()
        distributed.cleanup()
    except BaseException:  # noqa: BLE001 - reported to the parent test
        result["error"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_processes_train_as_one(bccd_root, tmp_path):
    """Two CPU processes (gloo, env://) through the Trainer: the CPU model is in DDP without device_ids, the norm
    is naiveSyncBN, both ranks start from and end at the same weights (which training changed), rank 0 alone
    evaluates to a result, and its model_final.pth holds exactly those weights."""
    from multiprocessing import get_context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_two_rank_trainer, args=(r, port, str(tmp_path), str(bccd_root))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"workers {hung} did not finish within 600 s"
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for got in res:
        assert "error" not in got, got["error"]
        assert (got["ddp"], got["device_ids"], got["norm"]) == ("DistributedDataParallel", None, "naiveSyncBN")
        assert got["bn"] == ["NaiveSyncBatchNorm"] and got["final_file_equal"] is True
    assert res[0]["start"] == res[1]["start"] and res[0]["end"] == res[1]["end"] != res[0]["start"]
    assert res[0]["eval"] == {"bccd_test@2": ["bbox"]} and res[1]["eval"] == {"bccd_test@2": []}
    assert [p.exitcode for p in procs] == [0, 0]
