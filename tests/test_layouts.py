"""transfer.evaluation.layouts: one file per published layout, written as that project's saving code writes it
(transfer/evaluation/layouts.py cites the code) from one torchvision ResNet-50 with seeded random weights; each
converts with every key accounted for, its method (and input normalisation) recorded, and gives the features of
the ResNet-50 it was made from. DINO's `args` is read through an allow-list of argparse.Namespace alone."""
from __future__ import annotations

import argparse
import copy
import os
import pickle

import pytest
import torch
import torchvision
from torch import nn

from transfer.evaluation import convert
from transfer.evaluation.convert import ConvertError, describe_source, load_any_checkpoint, load_backbone

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def r50():
    """(torchvision ResNet-50 with fc = Identity and seeded weights, its state dict with fc, its features of X)."""
    torch.manual_seed(29)
    net = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(29)
    for m in net.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    net.fc = nn.Identity()
    with torch.no_grad():
        ref = net.eval()(X)
    return net, sd, ref


def _backbone(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _prefixed(prefix: str, sd: dict) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def _mlp(*dims: int, last_bn_affine: bool = True) -> dict:
    """Linear (no bias) + BN1d (+ ReLU) per layer, the last BN without affine when asked: the MLPs of MoCo v3."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        last = i == len(dims) - 2
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b, affine=not last or last_bn_affine)]
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).state_dict()


def _features(path, **kw) -> torch.Tensor:
    with torch.no_grad():
        return load_backbone(path, **kw).eval()(X)


def _check(path, r50, kind: str, method: str | None, dropped: dict[str, int], **kw) -> dict:
    """The file converts as `kind` with exactly `dropped` set aside, and gives the ResNet-50's features."""
    found, sd, info = load_any_checkpoint(path, **kw)
    assert (found, info["method"], info["arch"]) == (kind, method, "resnet50")
    assert {r: len(keys) for r, keys in info["dropped"].items()} == dropped
    assert info["kept"] == len(_backbone(r50[1])) and info["kept"] + sum(dropped.values()) == info["source_keys"]
    assert all(torch.equal(sd[k], v) for k, v in _backbone(r50[1]).items())
    assert torch.allclose(_features(sd), r50[2], atol=1e-5)
    return info


# ------------------------------------------------------------------------------------------- the layouts
def test_mocov3(tmp_path, r50):
    """main_moco.py's checkpoint; builder.py replaces both encoders' fc by a 2-layer MLP, adds a predictor."""
    proj, pred = _mlp(2048, 32, 16, last_bn_affine=False), _mlp(16, 32, 16, last_bn_affine=False)
    enc = {**_backbone(r50[1]), **_prefixed("fc.", proj)}
    sd = {**_prefixed("module.base_encoder.", enc), **_prefixed("module.momentum_encoder.", enc),
          **_prefixed("module.predictor.", pred)}
    torch.save({"epoch": 300, "arch": "resnet50", "state_dict": sd, "optimizer": {}, "scaler": {}},
               tmp_path / "checkpoint_0299.pth.tar")
    info = _check(tmp_path / "checkpoint_0299.pth.tar", r50, "mocov3", "MoCo v3",
                  {"projector (base_encoder fc.*)": len(proj), "momentum encoder (momentum_encoder.*)": len(enc),
                   "predictor": len(pred)})
    assert info["epochs"] == 300


def test_swav_hub_and_training_files(tmp_path, r50):
    """The hub file: flat module.* with the projection head and prototypes (one or several); main_swav.py's."""
    head = nn.Sequential(nn.Linear(2048, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8)).state_dict()
    common = {**_prefixed("module.", _backbone(r50[1])), **_prefixed("module.projection_head.", head)}
    hub = {**common, "module.prototypes.weight": torch.randn(30, 8)}
    torch.save(hub, tmp_path / "swav_800ep_pretrain.pth.tar")
    _check(tmp_path / "swav_800ep_pretrain.pth.tar", r50, "swav", "SwAV",
           {"projection head": len(head), "prototypes": 1})
    multi = {**common, "module.prototypes.prototypes0.weight": torch.randn(30, 8),
             "module.prototypes.prototypes1.weight": torch.randn(20, 8)}
    torch.save({"epoch": 400, "state_dict": multi, "optimizer": {}}, tmp_path / "checkpoint.pth.tar")
    info = _check(tmp_path / "checkpoint.pth.tar", r50, "swav", "SwAV", {"projection head": len(head), "prototypes": 2})
    assert info["epochs"] == 400


def test_dino_barlow_twins_vicreg_hub_files(tmp_path, r50):
    """hubconf.py / main.py / main_vicreg.py: the backbone's state dict, fc = Identity (no fc keys). The file
    does not say its method: it converts as torchvision, and `simsiam table --method` names it."""
    torch.save(_backbone(r50[1]), tmp_path / "resnet50.pth")
    _check(tmp_path / "resnet50.pth", r50, "torchvision", "torchvision", {})


def _dino_ckpt(r50, args) -> tuple[dict, dict]:
    """main_dino.py's save_dict for a ResNet-50: both networks in DDP (module.backbone.*, module.head.*); the
    student differs from the teacher, so the branch read can be told apart. Returns (file, student backbone)."""
    head = {"mlp.0.weight": torch.randn(32, 2048), "mlp.0.bias": torch.zeros(32), "mlp.2.weight": torch.randn(32, 32),
            "mlp.2.bias": torch.zeros(32), "mlp.4.weight": torch.randn(8, 32), "mlp.4.bias": torch.zeros(8),
            "last_layer.weight_g": torch.ones(64, 1), "last_layer.weight_v": torch.randn(64, 8)}
    teacher = _backbone(r50[1])
    student = {k: (v * 1.5 if k.endswith("bn1.weight") else v) for k, v in teacher.items()}
    obj = {"student": {**_prefixed("module.backbone.", student), **_prefixed("module.head.", head)},
           "teacher": {**_prefixed("module.backbone.", teacher), **_prefixed("module.head.", head)},
           "optimizer": {}, "epoch": 800, "args": args, "dino_loss": {"center": torch.zeros(1, 64)}}
    return obj, student


DINO_ARGS = argparse.Namespace(arch="resnet50", epochs=800, batch_size_per_gpu=51, world_size=32, local_crops_number=6,
                               global_crops_scale=(0.14, 1.0), lr=0.3, optimizer="lars", data_path="/datasets/imagenet",
                               output_dir=".", use_fp16=False, dist_url="env://")


def test_dino_training_checkpoint_teacher_by_default_student_on_request(tmp_path, r50, capsys):
    obj, student = _dino_ckpt(r50, DINO_ARGS)
    path = tmp_path / "checkpoint.pth"
    torch.save(obj, path)
    n_head, n_student = 8, len(obj["student"])
    info = _check(path, r50, "dino", "DINO", {"DINO head (teacher)": n_head,
                                              "the student (the teacher is converted)": n_student})
    assert (info["branch"], info["epochs"], info["scheduled_epochs"], info["completed"]) == ("teacher", 800, 800, True)
    assert (info["batch_size"], info["local_crops"]) == (51 * 32, 6)
    assert describe_source(path, info)["pretrain"]["branch"] == "teacher"

    # the student: `--branch student` on the command line, model.branch=student in kNN / linear evaluation
    out = tmp_path / "student.pth"
    assert convert.main([str(path), "--to", "torchvision", "--output", str(out), "--branch", "student"]) == 0
    assert '"branch": "student"' in capsys.readouterr().out
    sd = torch.load(out, weights_only=True)
    assert sd.keys() == student.keys() and all(torch.equal(sd[k], v) for k, v in student.items())
    net = copy.deepcopy(r50[0])
    net.load_state_dict(student, strict=False)
    with torch.no_grad():
        want = net.eval()(X)
    assert not torch.allclose(want, r50[2], atol=1e-3)
    net, source, info = convert.eval_backbone(str(path), convert.EvalModelConfig(branch="student"), seed=0)
    assert source["pretrain"]["branch"] == "student" and info["dropped"]["DINO head (student)"] == [
        f"student.module.head.{k}" for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                                              "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g",
                                              "last_layer.weight_v")]
    with torch.no_grad():
        assert torch.allclose(net.eval()(X), want, atol=1e-5)
    # a file with one backbone has no branch to pick
    with pytest.raises(ConvertError, match="--branch student applies to DINO training checkpoints"):
        load_any_checkpoint(_backbone(r50[1]), branch="student")


class _Command:
    """Unpickling it would run a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_dino_args_holding_anything_but_a_namespace_are_refused(tmp_path, crafted, capsys):
    """Only argparse.Namespace is allowed beside weights: a Namespace holding a command is refused unrun (exit
    2, one line naming the file and the global); `args` of another (harmless) type is refused by name."""
    net = {"module.backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}
    obj = {"student": net, "teacher": net, "optimizer": {}, "epoch": 1, "dino_loss": {},
           "args": argparse.Namespace(arch="resnet50", hook=_Command(f"touch {crafted.marker}"))}
    path = tmp_path / "crafted_dino.pth"
    torch.save(obj, path)
    code = convert.main([str(path), "--to", "torchvision", "--output", str(tmp_path / "o.pth")])
    crafted.assert_refused(code, capsys.readouterr().err, path)
    assert not (tmp_path / "o.pth").exists()
    obj["args"] = {"arch": "resnet50"}
    torch.save(obj, tmp_path / "dict_args.pth")
    with pytest.raises(ConvertError, match="'args' is a dict; DINO's main_dino.py saves .* argparse.Namespace"):
        load_any_checkpoint(tmp_path / "dict_args.pth")


@pytest.mark.parametrize("prefix", ["backbone.", "encoder."], ids=["solo-learn", "solo-learn-older"])
def test_solo_learn(tmp_path, r50, prefix):
    """A Lightning checkpoint of a momentum method: backbone (fc = Identity), projector, predictor, momentum
    copies, the online classifier; older files name the backbone encoder.*."""
    proj = nn.Sequential(nn.Linear(2048, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16)).state_dict()
    sd = {**_prefixed(prefix, _backbone(r50[1])), **_prefixed("projector.", proj),
          **_prefixed("momentum_backbone.", _backbone(r50[1])), **_prefixed("momentum_projector.", proj),
          "predictor.0.weight": torch.randn(16, 16), "classifier.weight": torch.randn(10, 2048),
          "classifier.bias": torch.zeros(10)}
    torch.save({"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "2.0.2", "state_dict": sd,
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, tmp_path / "byol.ckpt")
    n = len(_backbone(r50[1]))
    _check(tmp_path / "byol.ckpt", r50, "solo-learn", None,
           {"projector (solo-learn head / momentum copy)": len(proj),
            "momentum_backbone (solo-learn head / momentum copy)": n,
            "momentum_projector (solo-learn head / momentum copy)": len(proj),
            "predictor (solo-learn head / momentum copy)": 1, "classifier (solo-learn head / momentum copy)": 2})


def test_mmpretrain(tmp_path, r50):
    """mmengine's checkpoint of a MoCo v3-style model: backbone (ResNet names as torchvision's), neck, head, and
    the CosineEMA momentum copy of backbone + neck."""
    neck = _mlp(2048, 32, 16)
    sd = {**_prefixed("backbone.", _backbone(r50[1])), **_prefixed("neck.mlp.", neck),
          "head.predictor.0.weight": torch.randn(16, 16), "momentum_encoder.steps": torch.tensor(5),
          **_prefixed("momentum_encoder.module.0.", _backbone(r50[1])), **_prefixed("momentum_encoder.module.1.mlp.", neck)}
    torch.save({"meta": {"epoch": 300, "mmengine_version": "0.10.1"}, "state_dict": sd}, tmp_path / "mocov3.pth")
    _check(tmp_path / "mocov3.pth", r50, "mmpretrain", None,
           {"neck": len(neck), "head": 1, "momentum encoder (backbone + neck)": 1 + len(neck) + len(_backbone(r50[1]))})


def test_vissl(tmp_path, r50):
    """classy_state_dict -> base_model -> model -> trunk (_feature_blocks.*) and heads."""
    heads = {"0.projection_head.0.weight": torch.randn(16, 2048), "0.projection_head.0.bias": torch.zeros(16)}
    model = {"trunk": _prefixed("_feature_blocks.", _backbone(r50[1])), "heads": heads}
    torch.save({"phase_idx": 199, "iteration": 1000, "type": "consolidated",
                "classy_state_dict": {"train": True, "base_model": {"model": model, "meta": {}}, "loss": {},
                                      "optimizer": {}}}, tmp_path / "model_final_checkpoint_phase199.torch")
    _check(tmp_path / "model_final_checkpoint_phase199.torch", r50, "vissl", None, {"heads": 2})


def test_simclr_v1_converted_records_raw_pixels(tmp_path, r50):
    """simclr-converter's {'state_dict': resnet50x1 with the supervised fc}; inputs / 255 only, recorded for
    kNN / linear (info["pretrain_data"]) and for detection (the .pkl's source["normalisation"])."""
    path = tmp_path / "resnet50-1x.pth"
    torch.save({"state_dict": r50[1]}, path)
    info = _check(path, r50, "simclr-v1", "SimCLR", {"supervised head (fc.*)": 2})
    raw = {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert info["pretrain_data"] == raw and info["normalisation"] == raw
    assert describe_source(path, info)["normalisation"] == raw
    convert.to_detectron2(path, tmp_path / "simclr.pkl")
    with open(tmp_path / "simclr.pkl", "rb") as f:
        source = pickle.load(f)["source"]
    assert source["normalisation"] == raw and source["pretrain"]["method"] == "SimCLR"
    # any other layout records none: detection keeps its ImageNet defaults
    torch.save(_backbone(r50[1]), tmp_path / "plain.pth")
    assert "normalisation" not in describe_source(tmp_path / "plain.pth")


def test_unknown_layout_names_what_was_found(tmp_path, r50):
    torch.save({"epoch": 3, "state_dict": {"online_network.conv1.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(ConvertError, match=r"unrecognised 'state_dict' \(keys like online_network.conv1.weight\)"):
        load_any_checkpoint(tmp_path / "x.pth")
    torch.save({"classy_state_dict": {"base_model": {}}}, tmp_path / "v.torch")
    with pytest.raises(ConvertError, match="VISSL checkpoint without classy_state_dict -> base_model -> model"):
        load_any_checkpoint(tmp_path / "v.torch")
