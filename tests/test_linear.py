"""transfer.evaluation.linear: linear evaluation of a (short) SimSiam pretraining run on real CIFAR-10 images beats the
same protocol on a random-init backbone; the frozen-backbone check catches a backbone that trains; results,
metrics and resume follow the contracts; config mistakes are errors. Grid mode: the heads trained together
equal heads trained alone (in memory and through whole runs on augmented images), resume, two processes,
the device data path and bf16 work as for one head, and the head picked on the held-out slice beats the
grid's worst head on real data; transfer.tooling.grid_bench measures one head against the grid."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain import config as config_mod
from pretrain.defaults import PretrainConfig, init_lr
from pretrain.errors import InputError
from pretrain.frame import StageRun
from pretrain.lars import LARS
from pretrain.logs import read_metrics
from pretrain.model import SimSiam
from pretrain.generated.embedded import embedded_dir
from transfer.evaluation import linear
from transfer.evaluation.convert import EvalModelConfig, load_backbone
from transfer.evaluation.frozen import BackboneChangedError, state_checksum
from transfer.evaluation.linear import LinearConfig, heads
from transfer.evaluation.linear.evaluation import LinearEvaluation, prepare
from transfer.reporting.results import read_results, sha256_file


def _linear_cfg(weights, root, *overrides) -> LinearConfig:
    base = ["model.arch=resnet18_cifar", f"data.root={root}", "data.workers=0", "train.tensorboard=false",
            "train.print_freq=0"]
    cfg = config_mod.resolve(LinearConfig(), ["cifar10"], base + list(overrides), kind="linear")
    return dataclasses.replace(cfg, weights=str(weights))


@pytest.fixture(scope="module")
def pretrained(cifar_root, tmp_path_factory):
    """A short SimSiam pretraining run (pretrain.train.run) on a slice of CIFAR-10."""
    from pretrain.train import run
    out = tmp_path_factory.mktemp("pretrain")
    cfg = config_mod.resolve(PretrainConfig(), ["cifar10_r18"], [
        f"data.root={cifar_root}", "data.limit_per_class=16", "data.workers=0", "train.epochs=2",
        "train.batch_size=32", "monitor.knn=false", "monitor.tensorboard=false", "train.save_freq=0",
    ], kind="pretrain")
    run(cfg, out)
    return out / "checkpoint.pth"


# Linear protocol of the comparison: the cifar10 preset (LARS), on cached features of a CIFAR-10 slice.
SLICE = ["data.limit_per_class=50", "data.val_limit_per_class=20", "data.augment=false", "train.cache_features=true",
         "train.epochs=30", "train.batch_size=128", "train.eval_batch_size=256"]


def test_pretrained_beats_random_init(pretrained, cifar_root, tmp_path):
    res = {}
    for name, weights in (("pretrained", pretrained), ("random", "random")):
        res[name] = linear.run(_linear_cfg(weights, cifar_root, *SLICE), tmp_path / name)
    top_pre, top_rand = res["pretrained"]["metrics"]["top1"], res["random"]["metrics"]["top1"]
    print(f"linear top-1: pretrained {top_pre:.1f}  random init {top_rand:.1f}")
    assert top_pre > top_rand
    assert top_pre > 15.0  # chance is 10 %

    doc = read_results(tmp_path / "pretrained")
    assert doc["task"] == "linear" and doc["dataset"] == "cifar10-jpg"
    assert doc["metrics"]["top1"] == pytest.approx(top_pre) and 0 <= doc["metrics"]["top5"] <= 100
    assert doc["metrics"]["top5"] >= doc["metrics"]["top1"] and doc["epochs"] == 30 and doc["batch_size"] == 128
    assert doc["source"]["sha256"] == sha256_file(pretrained)
    assert doc["source"]["pretrain"].items() >= {"method": "SimSiam", "arch": "resnet18_cifar", "epochs": 2,
                                                 "batch_size": 32, "dataset": "cifar10-jpg", "completed": True}.items()
    p = doc["protocol"]  # the protocol actually measured (transfer.reporting.protocols)
    assert (p["stage"], p["train_images"], p["val_images"], p["classes"], p["epochs"]) == ("linear", 500, 200, 10, 30)
    assert doc["config"]["optim"]["optimizer"] == "lars" and doc["config"]["weights"] == str(pretrained)
    # the checksum proving the frozen backbone is the one of the checkpoint's backbone
    assert doc["backbone_checksum"] == state_checksum(load_backbone(pretrained)) and doc["backbone_unchanged"]
    lines = [json.loads(x) for x in (tmp_path / "pretrained" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 31)) and {x["stage"] for x in lines} == {"linear"}
    assert all({"loss", "lr", "top1", "top5", "train_top1"} <= set(x) for x in lines)
    assert lines[0]["loss"] > lines[-1]["loss"] and lines[-1]["lr"] < lines[0]["lr"]
    assert read_results(tmp_path / "random")["source"]["pretrain"]["method"] == "random init"


def test_a_training_backbone_is_caught(cifar_root, tmp_path):
    # augmented images through the backbone (no feature cache); a forward pre-hook puts the backbone in train
    # mode at every forward, so its BN statistics move: the check after training must catch it
    cfg = _linear_cfg("random", cifar_root, "data.limit_per_class=2", "data.val_limit_per_class=1",
                      "train.epochs=1", "train.batch_size=20")
    with StageRun("linear", tmp_path / "bad") as sr:
        evaluation = LinearEvaluation(prepare(cfg), sr)
        evaluation.backbone.net.register_forward_pre_hook(lambda module, args: module.train() and None)
        evaluation.fit()
        with pytest.raises(BackboneChangedError, match="backbone changed during linear evaluation") as e:
            evaluation.finish()
    assert "running_mean" in str(e.value)
    assert not (tmp_path / "bad" / "results.json").exists()
    # the same run with the backbone frozen passes the check
    out = linear.run(cfg, tmp_path / "good")
    assert out["complete"] and (tmp_path / "good" / "results.json").is_file()


def test_resume_and_cli(pretrained, cifar_root, tmp_path, capsys):
    args = ["--weights", str(pretrained), "--output", str(tmp_path / "run"), "--config", "cifar10",
            f"data.root={cifar_root}", "data.workers=0", "train.tensorboard=false", "data.limit_per_class=3",
            "data.val_limit_per_class=2", "data.augment=false", "train.cache_features=true", "train.epochs=3",
            "train.batch_size=10"]
    assert linear.main(args + ["train.stop_after_epochs=2"]) == 0
    assert "incomplete" in capsys.readouterr().out
    assert not (tmp_path / "run" / "results.json").exists()
    state = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert state["epoch"] == 2 and state["format"] == "simsiam-suite/linear"
    assert linear.main(args) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert read_results(tmp_path / "run")["epochs"] == 3
    assert (tmp_path / "run" / "config.yaml").is_file()
    # another checkpoint in the same folder is refused: one line, exit 2, the folder's run untouched
    config = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert linear.main(["--weights", "random", *args[2:], "model.arch=resnet18_cifar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a linear evaluation of other weights" in err[0], err
    assert (tmp_path / "run" / "config.yaml").read_text() == config
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_crafted_weights_are_refused(crafted, tmp_path, capsys, fmt):
    path = crafted.write(f"crafted.{'pkl' if fmt == 'pickle' else 'pth'}", fmt)
    code = linear.main(["--weights", str(path), "--output", str(tmp_path / "run"), "train.tensorboard=false"])
    crafted.assert_refused(code, capsys.readouterr().err, path)


def test_config_presets_and_errors(tmp_path):
    d = LinearConfig()
    assert (d.optim.optimizer, d.optim.base_lr, d.train.batch_size, d.train.epochs, d.optim.weight_decay,
            d.optim.momentum, d.optim.trust_coefficient, d.data.image_size) == ("lars", 0.1, 4096, 90, 0.0, 0.9,
                                                                                 0.001, 224)
    assert init_lr(d) == pytest.approx(1.6)
    sgd = config_mod.resolve(LinearConfig(), ["imagenet_sgd"], kind="linear")
    assert (sgd.optim.optimizer, init_lr(sgd), sgd.train.batch_size) == ("sgd", 30.0, 256)
    for preset in ("imagenet_lars", "cifar10", "demo", "grid"):
        config_mod.resolve(LinearConfig(), [preset], kind="linear")
    with pytest.raises(config_mod.ConfigError, match="unknown key 'optim.lr'"):
        config_mod.resolve(LinearConfig(), [], ["optim.lr=3"], kind="linear")
    assert linear.main(["--weights", "x.pth", "--output", str(tmp_path), "train.nope=1"]) == 2
    with pytest.raises(config_mod.ConfigError, match="cache_features=true needs data.augment=false"):
        linear.run(dataclasses.replace(LinearConfig(), weights="random",
                                       model=EvalModelConfig("resnet18"),
                                       train=linear.LinearTrainConfig(cache_features=True)), tmp_path / "x")
    with pytest.raises(config_mod.ConfigError, match="needs model.arch"):
        linear.run(dataclasses.replace(LinearConfig(), weights="random"), tmp_path / "y")
    # the protocol's head (a grid of one): N(0, 0.01) weights, zero bias
    head = heads.HeadGrid(2048, 1000, 1)
    assert head.weights[0].std().item() == pytest.approx(0.01, rel=0.02) and head.biases[0].abs().sum() == 0


def test_data_root_is_required_and_embedded_is_named(tmp_path, capsys):
    """Linear evaluation has no default data: a run without data.root is refused (one line naming data.root,
    exit 2, no output folder made); data.root=embedded selects the built-in generated data by name; the
    presets carry no placeholder path (the demo's names the embedded data)."""
    out = tmp_path / "run"
    assert linear.main(["--weights", "random", "--output", str(out), "model.arch=resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.root: not given" in err[0] and "data.root=embedded" in err[0], err
    assert not out.exists()
    for preset in ("imagenet_lars", "imagenet_sgd", "cifar10", "grid"):
        assert config_mod.resolve(LinearConfig(), [preset], kind="linear").data.root == "", preset
    demo = config_mod.resolve(LinearConfig(), ["demo"], ["model.arch=resnet18"], kind="linear")
    assert demo.data.root == "embedded"
    inputs = prepare(dataclasses.replace(demo, weights="random"))
    assert inputs.data.name == "embedded" and inputs.data.train_dir == embedded_dir(demo.data.cache_dir) / "train"


# pixels / 255 (no mean/std), as a converted SimCLR checkpoint records it
PIXELS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def test_the_checkpoint_normalisation_is_used_unless_given(cifar_root, tmp_path):
    """A checkpoint whose info records another input normalisation is evaluated with it when data.mean /
    data.std are not given, and results.json's protocol records what was used and where it came from; given
    values win. With a head that does not train (lr 0) the validation loss of the run on the checkpoint's
    normalisation equals that of the run given the same values, and differs from the run given ImageNet's.

    Measured (random-init ResNet-18 CIFAR with data-like BN statistics, 20 validation images): the validation
    losses on the two normalisations differ by 4e-5; equal runs are equal to the last bit. Bound: 1e-6."""
    torch.manual_seed(0)
    model = SimSiam("resnet18_cifar", dim=128, pred_dim=32, proj_layers=2)
    for m in model.encoder.modules():  # data-like BN statistics, so the features are not degenerate
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(4.0)
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"format": "simsiam-suite/pretrain", "version": 1, "epoch": 5, "step": 50, "arch": "resnet18_cifar",
                "model": model.state_dict(), "optimizer": None, "scaler": None, "rng": {},
                "config": {"data": {"image_size": 32, **PIXELS}, "train": {"batch_size": 64}},
                "dataset": "cifar10-jpg"}, ckpt)
    base = ["model.arch=resnet18_cifar", f"data.root={cifar_root}", "data.image_size=32", "data.workers=0",
            "data.limit_per_class=2", "data.val_limit_per_class=2", "data.augment=false", "train.cache_features=true",
            "train.epochs=1", "train.batch_size=20", "optim.base_lr=0.0", "train.tensorboard=false"]
    runs = {"stored": [], "given": ["data.mean=[0,0,0]", "data.std=[1,1,1]"],
            "imagenet": ["data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]"]}
    for name, extra in runs.items():
        cfg = config_mod.resolve(LinearConfig(), [], base + extra, kind="linear")
        linear.run(dataclasses.replace(cfg, weights=str(ckpt)), tmp_path / name)
    doc = {name: read_results(tmp_path / name) for name in runs}
    assert doc["stored"]["protocol"]["normalisation"] == {**PIXELS, "from": {"mean": "checkpoint", "std": "checkpoint"}}
    assert doc["stored"]["config"]["data"]["mean"] == PIXELS["mean"]
    assert doc["given"]["protocol"]["normalisation"] == {**PIXELS, "from": {"mean": "data.mean", "std": "data.std"}}
    assert doc["imagenet"]["protocol"]["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    loss = {name: read_metrics(tmp_path / name / "metrics.jsonl")[-1]["val_loss"] for name in runs}
    print("validation loss by normalisation", loss)
    assert loss["stored"] == loss["given"] and abs(loss["stored"] - loss["imagenet"]) > 1e-6, loss


def test_gpu_augment_path_gives_the_reference_evaluation(cifar_root, tmp_path):
    """train.gpu_augment=true (device decode + linear crop/flip, held-out split in device memory) runs on any
    device; with a head that never trains (lr 0) its held-out accuracy equals the PIL reference path's."""
    common = ["data.limit_per_class=4", "data.val_limit_per_class=3", "train.epochs=1", "train.batch_size=20",
              "optim.base_lr=0.0"]
    ref = linear.run(_linear_cfg("random", cifar_root, *common), tmp_path / "ref")
    fast = linear.run(_linear_cfg("random", cifar_root, *common, "train.gpu_augment=true"), tmp_path / "fast")
    assert fast["complete"] and fast["backbone_checksum"] == ref["backbone_checksum"]
    assert fast["metrics"]["val_images"] == ref["metrics"]["val_images"] == 30
    assert fast["metrics"]["top1"] == pytest.approx(ref["metrics"]["top1"], abs=1e-6)


def test_gpu_augment_path_trains_the_head_like_the_reference(cifar_root, tmp_path):
    """The device training view trains the head as the PIL path does: same data, same protocol, the training loss
    falls from ln(10) ~ 2.30 on both paths and ends at the same level.

    Measured (random-init ResNet-18, 200 CIFAR images, SGD, 8 epochs; seeds 0-2, 1 and 2 threads): the loss falls
    by 0.10-0.17 (device path) and 0.17-0.19 (PIL path) from its first epoch to the mean of its last two, and
    those means differ by 0.007-0.058 between the paths (different random crops). Bounds: a fall of at least
    0.04, a gap of at most 0.15."""
    common = ["model.arch=resnet18", "data.limit_per_class=20", "data.val_limit_per_class=10", "train.epochs=8",
              "train.batch_size=50", "optim.optimizer=sgd", "optim.base_lr=3.0"]
    losses = {}
    for name, extra in (("ref", []), ("fast", ["train.gpu_augment=true"])):
        linear.run(_linear_cfg("random", cifar_root, *common, *extra), tmp_path / name)
        lines = [m for m in read_metrics(tmp_path / name / "metrics.jsonl") if m.get("stage") == "linear"]
        assert [m["epoch"] for m in lines] == list(range(1, 9)), lines
        losses[name] = [m["loss"] for m in lines]
    end = {k: (v[-1] + v[-2]) / 2 for k, v in losses.items()}
    for name, v in losses.items():
        assert v[0] > 2.2 and end[name] < v[0] - 0.04, (name, losses)
    assert abs(end["fast"] - end["ref"]) < 0.15, losses


@pytest.mark.parametrize("path", ["images", "cached_features"])
def test_bf16_and_channels_last_apply_on_cpu(cifar_root, tmp_path, path):
    """train.amp=bf16 and train.channels_last=true take effect on the CPU as on CUDA, for the backbone forward on
    images and for the feature extraction of train.cache_features: the run and results.json record bf16 autocast
    and channels-last backbone weights, the backbone checksum is the fp32 run's, and the losses stay the fp32 run's.

    Measured (random-init ResNet-18 CIFAR, 40 train / 30 held-out images, 2 steps; seeds 0-2, 2 threads): the
    training and held-out losses differ by 3e-6 to 3e-5 on both paths (never 0: bf16 ran), held-out top-1 is
    equal. Bounds: 3e-4 for the losses, one image for top-1."""
    common = ["data.limit_per_class=4", "data.val_limit_per_class=3", "train.epochs=1", "train.batch_size=20"]
    if path == "cached_features":
        common += ["data.augment=false", "train.cache_features=true"]
    ref = linear.run(_linear_cfg("random", cifar_root, *common), tmp_path / "fp32")
    fast = linear.run(_linear_cfg("random", cifar_root, *common, "train.amp=bf16", "train.channels_last=true"),
                      tmp_path / "bf16")
    assert ref["applied"] == {"amp": "none", "channels_last": False}
    assert fast["applied"] == {"amp": "bf16", "channels_last": True}
    assert read_results(tmp_path / "bf16")["applied"] == fast["applied"]
    assert fast["backbone_checksum"] == ref["backbone_checksum"]
    a, b = (read_metrics(tmp_path / name / "metrics.jsonl")[-1] for name in ("fp32", "bf16"))
    assert a["loss"] != b["loss"] and abs(a["loss"] - b["loss"]) < 3e-4, (a, b)
    assert abs(a["val_loss"] - b["val_loss"]) < 3e-4, (a, b)
    assert abs(a["top1"] - b["top1"]) <= 100.0 / a["val_images"] + 1e-6, (a, b)


# ---------------------------------------------------------------------------------------------- grid mode
GRID = ["grid.enabled=true"]


def _grid_weights(out) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every head in a grid run's checkpoint."""
    head = torch.load(out / "checkpoint.pth", weights_only=True)["head"]
    n = len([k for k in head if k.startswith("weights.")])
    return [(head[f"weights.{i}"], head[f"biases.{i}"]) for i in range(n)]


def test_default_grid_holdout_split_and_config_errors(tmp_path, capsys):
    lars = LinearConfig()
    lrs, wds = heads.default_grid(lars)
    # LARS: base lr x 10^(k/4), k = -4..8: 13 values from /10 to x100 (4 per decade), the protocol's wd
    assert len(lrs) == 13 and lrs[0] == pytest.approx(0.01) and lrs[4] == 0.1 and lrs[-1] == pytest.approx(10.0)
    assert lrs[5] == pytest.approx(0.1778) and wds == (0.0,)
    sgd = config_mod.resolve(LinearConfig(), ["imagenet_sgd", "grid"], kind="linear")
    lrs, wds = heads.default_grid(sgd)
    assert len(lrs) == 9 and (lrs[0], lrs[4], lrs[-1]) == (3.0, 30.0, 300.0) and wds == (0.0, 1e-5, 1e-4)
    assert len(heads.grid_heads(sgd)) == 27 and heads.grid_heads(sgd)[:2] == [(3.0, 0.0), (3.0, 1e-5)]
    assert heads.grid_heads(lars) == [(0.1, 0.0)]  # the protocol: one head
    own = config_mod.resolve(LinearConfig(), [], GRID + ["grid.base_lrs=[0.5,2]", "grid.weight_decays=[0,1e-4]"],
                             kind="linear")
    assert heads.grid_heads(own) == [(0.5, 0.0), (0.5, 1e-4), (2.0, 0.0), (2.0, 1e-4)]
    # the held-out slice: 10 % (at most holdout_max_images), disjoint from training, fixed by its seed
    g = own.grid
    train, held = heads.holdout_split(500, g)
    assert len(held) == 50 and len(train) == 450 and not set(train) & set(held) and held == sorted(held)
    other_seed = heads.holdout_split(500, dataclasses.replace(g, holdout_seed=1))
    assert heads.holdout_split(500, g) == (train, held) != other_seed
    assert len(heads.holdout_split(200_000, g)[1]) == 10_000
    # bad input: one line, exit 2
    base = ["--weights", "random", "--output", str(tmp_path / "x"), "model.arch=resnet18"]
    for bad, msg in ((["grid.base_lrs=[1,2]"], "need grid.enabled=true"),
                     (GRID + ["grid.holdout_fraction=1.0"], "holdout_fraction: 1.0 is not between 0 and 1"),
                     (GRID + ["grid.base_lrs=[1,1]"], "a value is repeated"),
                     (GRID + ["grid.base_lrs=[-1]"], "finite and >= 0"),
                     (["grid.lrs=[1]"], "unknown key 'grid.lrs'")):
        assert linear.main(base + bad) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (bad, err)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_head_grid_trains_like_separate_heads(optimizer):
    """All heads at once (one matmul, one backward of the summed losses, per-head param groups) equal every
    head trained alone by its own nn.Linear and optimizer, step for step."""
    cfg = config_mod.resolve(LinearConfig(), [], [f"optim.optimizer={optimizer}", "train.batch_size=256"],
                             kind="linear")
    lr, wd = (0.1, 0.05) if optimizer == "sgd" else (1.0, 0.5)
    specs = [(lr, 0.0), (lr, wd), (10 * lr, 0.0), (10 * lr, wd)]
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 24, generator=gen), torch.randint(0, 5, (32,), generator=gen)) for _ in range(6)]
    grid = heads.HeadGrid(24, 5, len(specs), seed=3)
    opt, lrs = heads.build_grid_optimizer(grid, specs, cfg)
    assert lrs == [lr for lr, _ in specs]  # batch 256: lr = base lr
    solo = []
    for i, (_, wd) in enumerate(specs):
        head = torch.nn.Linear(24, 5)
        head.load_state_dict({"weight": grid.weights[i].detach().clone(), "bias": grid.biases[i].detach().clone()})
        o = cfg.optim
        solo.append((head, LARS(head.parameters(), lr=lrs[i], momentum=o.momentum, weight_decay=wd,
                                trust_coefficient=o.trust_coefficient, eps=o.eps) if optimizer == "lars" else
                     torch.optim.SGD(head.parameters(), lr=lrs[i], momentum=o.momentum, weight_decay=wd)))
    for f, y in batches:
        for g in opt.param_groups:
            g["lr"] *= 0.8  # a schedule, applied per group
        opt.zero_grad()
        heads.head_losses(grid(f), y).sum().backward()
        opt.step()
        for head, o in solo:
            o.param_groups[0]["lr"] *= 0.8
            o.zero_grad()
            torch.nn.functional.cross_entropy(head(f), y).backward()
            o.step()
    with torch.no_grad():
        gap = max(float(((a - b).abs() / (b.abs() + 1e-3)).max()) for i, (head, _) in enumerate(solo)
                  for a, b in ((grid.weights[i], head.weight), (grid.biases[i], head.bias)))
        apart = min(float((grid.weights[i] - grid.weights[0]).abs().max() / grid.weights[0].abs().max())
                    for i in range(1, 4))
    print(optimizer, "largest relative difference grid vs alone", gap, "smallest between heads", apart)
    # measured (1 and 2 threads): relative differences grid vs alone 9e-6 to 1.1e-5 (SGD) and 5e-7 (LARS), float32
    # rounding of a matmul of another shape; heads of the grid differ by 2e-2 (SGD) and 5e-4 (LARS: the
    # weight decay's effect over 6 steps of relative size lr x trust)
    assert gap < 1e-4 and apart > 100 * gap, (gap, apart)


# a small grid run: 60 CIFAR images (6 held out), augmented crops through the backbone, SGD
SMALL_GRID = ["model.arch=resnet18", "data.limit_per_class=6", "data.val_limit_per_class=2", "train.epochs=2",
              "train.batch_size=18", "optim.optimizer=sgd", *GRID, "grid.holdout_fraction=0.1"]


def test_grid_heads_train_as_separate_runs_would(cifar_root, tmp_path):
    """One run of 2 lrs x 2 weight decays equals four runs of one head each: the same held-out slice, data order
    and random crops for every head; then results.json and metrics.jsonl hold every head and the pick."""
    lrs, wds = [0.3, 3.0], [0.0, 0.01]
    both = _linear_cfg("random", cifar_root, *SMALL_GRID, f"grid.base_lrs={lrs}", f"grid.weight_decays={wds}")
    res = linear.run(both, tmp_path / "grid")
    together = _grid_weights(tmp_path / "grid")
    gaps = []
    for i, (lr, wd) in enumerate((lr, wd) for lr in lrs for wd in wds):
        one = _linear_cfg("random", cifar_root, *SMALL_GRID, f"grid.base_lrs=[{lr}]", f"grid.weight_decays=[{wd}]")
        linear.run(one, tmp_path / f"alone{i}")
        (w, b), = _grid_weights(tmp_path / f"alone{i}")
        gaps += [float((together[i][0] - w).abs().max() / w.abs().max()),
                 float((together[i][1] - b).abs().max() / b.abs().max())]
    apart = min(float((together[i][0] - together[0][0]).abs().max() / together[0][0].abs().max()) for i in (1, 2, 3))
    print("relative difference together vs alone", max(gaps), "between heads", apart)
    # measured (1 and 2 threads): relative difference together vs alone 3.5e-7, between heads 2.4e-3
    assert max(gaps) < 1e-4 and apart > 100 * max(gaps), (gaps, apart)

    doc = read_results(tmp_path / "grid")
    g = doc["grid"]
    assert [(h["base_lr"], h["weight_decay"]) for h in g["heads"]] == [(0.3, 0.0), (0.3, 0.01), (3.0, 0.0), (3.0, 0.01)]
    assert g["holdout"] == {"images": 6, "fraction": 0.1, "max_images": 10000, "seed": 0} and g["train_images"] == 54
    held = [h["holdout_top1"] for h in g["heads"]]
    assert g["picked"] == res["grid"]["picked"] and held[g["picked"]] == max(held)
    picked = g["heads"][g["picked"]]
    assert doc["metrics"]["top1"] == picked["top1"] and doc["metrics"]["top5"] == picked["top5"]
    assert doc["metrics"]["holdout_images"] == 6 and doc["metrics"]["val_images"] == 20
    assert doc["train_images"] == 54 and doc["protocol"]["train_images"] == 54
    assert doc["protocol"]["base_lr"] == picked["base_lr"] and doc["protocol"]["selection"]["heads"] == 4
    assert g["label"] == "best of grid (held-out 6 images, seed 0)"
    lines = read_metrics(tmp_path / "grid" / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2] and len(lines[-1]["grid"]["holdout_top1"]) == 4
    assert lines[-1]["top1"] == picked["top1"] and lines[-1]["grid"]["base_lr"] == [0.3, 0.3, 3.0, 3.0]


def test_grid_resume_and_two_processes(cifar_root, tmp_path, capsys):
    """A grid run stopped after 2 of 4 epochs and resumed ends with exactly the heads of an uninterrupted run;
    resuming with other heads is refused; two processes (the heads' gradients all-reduced together by DDP,
    each process half of every batch) train the heads one process does, within float tolerance."""
    args = ["--weights", "random", "--config", "cifar10", "model.arch=resnet18_cifar", f"data.root={cifar_root}",
            "data.workers=0", "train.tensorboard=false", "train.print_freq=0", "data.limit_per_class=10",
            "data.val_limit_per_class=2", "data.augment=false", "train.cache_features=true", "train.epochs=4",
            "train.batch_size=30", *GRID, "grid.base_lrs=[2,20,200]"]
    assert linear.main(["--output", str(tmp_path / "full"), *args]) == 0
    assert linear.main(["--output", str(tmp_path / "part"), *args, "train.stop_after_epochs=2"]) == 0
    assert not (tmp_path / "part" / "results.json").exists()
    assert linear.main(["--output", str(tmp_path / "part"), *args, "grid.base_lrs=[2,20]"]) == 2
    assert "holds a linear evaluation with other heads" in capsys.readouterr().err
    assert linear.main(["--output", str(tmp_path / "part"), *args]) == 0
    full, part = _grid_weights(tmp_path / "full"), _grid_weights(tmp_path / "part")
    assert all(torch.equal(a, b) for x, y in zip(full, part) for a, b in zip(x, y))
    assert read_results(tmp_path / "part")["grid"] == read_results(tmp_path / "full")["grid"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = str(Path(linear.__file__).resolve().parents[3])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "transfer.evaluation.linear", "--output", str(tmp_path / "ddp"), *args]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo), capture_output=True,
                          text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _grid_weights(tmp_path / "ddp")
    gap = max(float((a - b).abs().max() / b.abs().max()) for x, y in zip(ddp, full) for a, b in zip(x, y))
    print("relative difference two processes vs one", gap)
    # measured (2 processes of 1 thread vs 1 process of 2): 2.5e-7
    assert gap < 1e-4
    one, two = read_results(tmp_path / "full"), read_results(tmp_path / "ddp")
    assert two["grid"]["holdout"] == one["grid"]["holdout"] and two["grid"]["train_images"] == 90
    assert [h["holdout_top1"] for h in two["grid"]["heads"]] == [h["holdout_top1"] for h in one["grid"]["heads"]]


def test_grid_on_the_device_data_path_with_bf16(cifar_root, tmp_path):
    """train.gpu_augment=true (training crops made on the device, the held-out slice and the validation split in
    device memory) with bf16 autocast and channels-last: with heads that do not train (lr 0) every head's
    held-out and validation accuracy equals the PIL path's in fp32 up to bf16 rounding (one image)."""
    common = [*SMALL_GRID, "grid.base_lrs=[0.0]", "grid.weight_decays=[0,0.1]", "train.epochs=1"]
    ref = linear.run(_linear_cfg("random", cifar_root, *common), tmp_path / "ref")
    fast = linear.run(_linear_cfg("random", cifar_root, *common, "train.gpu_augment=true", "train.amp=bf16",
                                  "train.channels_last=true"), tmp_path / "fast")
    assert fast["applied"] == {"amp": "bf16", "channels_last": True}
    a, b = ref["grid"], fast["grid"]
    assert a["holdout"] == b["holdout"] and a["train_images"] == b["train_images"] == 54
    for x, y in zip(a["heads"], b["heads"]):
        for k, n in (("holdout_top1", 6), ("top1", 20), ("top5", 20)):
            assert abs(x[k] - y[k]) <= 100.0 / n + 1e-6, (k, a, b)


def test_grid_edges_name_the_direction_to_extend():
    specs = [(lr, wd) for lr in (0.1, 1.0, 10.0) for wd in (0.0, 1e-4)]
    at = {s: i for i, s in enumerate(specs)}
    assert heads.grid_edges(specs, at[(1.0, 0.0)]) == []  # inside the grid
    assert heads.grid_edges(specs, at[(10.0, 0.0)]) == [
        {"key": "grid.base_lrs", "edge": "highest", "value": 10.0, "advice": "extend the grid above base lr 10.0"}]
    assert [e["advice"] for e in heads.grid_edges(specs, at[(0.1, 1e-4)])] == [
        "extend the grid below base lr 0.1", "extend the grid above weight decay 0.0001"]
    assert heads.grid_edges([(0.1, 0.0)], 0) == []  # the protocol's one head: no grid to extend
    assert heads.grid_edges([(0.1, 0.0), (1.0, 0.0), (10.0, 0.0)], 1) == []  # one weight decay: not an edge
    assert heads.grid_edges([(0.0, 0.0), (1.0, 0.0)], 0) == []  # base lr 0 cannot be extended below


def test_the_pick_skips_diverged_heads_and_all_diverged_is_an_input_error():
    held = {"top1": [50.0, 60.0, 60.0], "loss": [1.0, 0.9, 0.8]}
    assert heads.pick_head(held, [True, True, True]) == 2  # best top-1, then the lower loss
    assert heads.pick_head(held, [True, False, False]) == 0  # a diverged head is never picked
    assert heads.pick_head(None, [True]) == 0  # the protocol's one head
    with pytest.raises(InputError, match="every head diverged"):
        heads.pick_head(held, [False, False, False])


def test_a_pick_at_the_edge_of_the_grid_is_logged_and_recorded(cifar_root, tmp_path, capsys):
    """With two base lrs every pick sits at the lowest or the highest one, and with two weight decays a pick at
    the larger is at that edge too: the log, results.json's grid.at_edge and the printed summary say in which
    direction to extend the grid."""
    out = tmp_path / "grid"
    args = ["--weights", "random", "--output", str(out), "--config", "cifar10", "model.arch=resnet18_cifar",
            f"data.root={cifar_root}", "data.workers=0", "train.tensorboard=false", "train.print_freq=0",
            "data.limit_per_class=6", "data.val_limit_per_class=2", "data.augment=false", "train.cache_features=true",
            "train.epochs=2", "train.batch_size=20", *GRID, "grid.base_lrs=[1,10]", "grid.weight_decays=[0,0.001]"]
    assert linear.main(args) == 0
    printed = capsys.readouterr().out
    g = read_results(out)["grid"]
    lr, wd = g["heads"][g["picked"]]["base_lr"], g["heads"][g["picked"]]["weight_decay"]
    expect = ["extend the grid below base lr 1.0" if lr == 1.0 else "extend the grid above base lr 10.0"]
    expect += ["extend the grid above weight decay 0.001"] if wd == 0.001 else []
    assert [e["advice"] for e in g["at_edge"]] == expect, g
    log = (out / "log.txt").read_text()
    for advice in expect:
        assert advice in log and advice in printed, (advice, printed)


def test_best_of_grid_beats_the_worst_head_on_cifar(cifar_root, tmp_path, capsys):
    """The default LARS grid of the cifar10 preset (13 base lrs, 0.2 to 200) on cached features of a random-init
    ResNet-18 (500 CIFAR-10 training images, 50 of them held out, 200 validation images, 30 epochs): the head
    picked on the held-out slice is far better on the validation split than the grid's worst head and close
    to its best.

    Measured (train.seed = grid.holdout_seed = 0, 1, 2; 1 and 2 threads, identical): picked head's validation
    top-1 24.0 / 25.0 / 21.5 %, worst head 10.0 / 10.0 / 10.5 % (margins 14.0 / 15.0 / 11.0 points), best
    head 24.0 / 26.0 / 24.0 %. Bounds: a margin of at least 5 points, at most 8 below the best head."""
    out = tmp_path / "grid"
    args = ["--weights", "random", "--output", str(out), "--config", "cifar10", "--config", "grid",
            "model.arch=resnet18_cifar", f"data.root={cifar_root}", "data.workers=0", "train.tensorboard=false",
            "train.print_freq=0", *SLICE]
    assert linear.main(args) == 0
    printed = capsys.readouterr().out
    g = read_results(out)["grid"]
    top1 = [h["top1"] for h in g["heads"]]
    picked = top1[g["picked"]]
    print(f"best of grid {picked:.1f}, worst head {min(top1):.1f}, best head {max(top1):.1f}")
    assert len(top1) == 13 and g["holdout"]["images"] == 50 and g["train_images"] == 450
    assert picked - min(top1) >= 5.0 and picked >= max(top1) - 8.0, top1
    assert "best of grid (held-out 50 images, seed 0): top-1" in printed
    assert g["at_edge"] == heads.grid_edges([(h["base_lr"], h["weight_decay"]) for h in g["heads"]], g["picked"])


def test_grid_benchmark_measures_one_head_and_the_grid_side_by_side(capsys):
    from transfer.tooling import grid_bench
    argv = ["--device", "cpu", "--arch", "resnet18", "--size", "32", "--batch", "8", "--classes", "10", "--steps", "1",
            "--warmup", "0", "--rounds", "1"]
    assert grid_bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\|\s*(images|cached features)\s*\|\s*(\d+)\s*\|\s*([0-9.]+)\s*\|\s*([0-9.]+)\s*\|$", out, re.M)
    assert [(w, int(h)) for w, h, _, _ in rows] == [("images", 1), ("images", 13), ("cached features", 1),
                                                   ("cached features", 13)]
    assert all(float(r[2]) > 0 for r in rows) and rows[0][3] == rows[2][3] == "1.000"
    assert "median of 1 alternating rounds" in out
    assert grid_bench.main(["--device", "cpu", "--batch", "0"]) == 2
