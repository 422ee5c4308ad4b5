"""transfer.evaluation.convert: every input kind round-trips, every key is accounted for, bad inputs fail clearly,
and the Detectron2 file gives detectron2's own ResNet-50 (C4: res4 backbone + res5 ROI stage) the same
features as torchvision's ResNet-50."""
from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pretrain.model import SimSiam
from pretrain.protocol import paper_recipe, recipe_of
from transfer.evaluation import convert
from transfer.evaluation.convert import ConvertError, load_any_checkpoint, load_backbone, to_detectron2, to_torchvision


def _randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters (zero-init residual gammas would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.num_batches_tracked.fill_(7)


def _simsiam(arch: str = "resnet18", seed: int = 0) -> SimSiam:
    torch.manual_seed(seed)
    m = SimSiam(arch, dim=128, pred_dim=32, proj_layers=2 if arch != "resnet50" else 3)
    _randomise_bn(m.encoder, seed)
    return m.eval()


def _suite_ckpt(model: SimSiam) -> dict:
    return {"format": "simsiam-suite/pretrain", "version": 1, "epoch": 3, "step": 30, "arch": model.arch,
            "model": model.state_dict(), "optimizer": None, "scaler": None, "rng": {},
            "config": {"data": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
                       "train": {"batch_size": 64}}, "dataset": "cifar10-jpg"}


def _official_ckpt(model: SimSiam) -> dict:
    return {"epoch": 100, "arch": model.arch, "optimizer": {},
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}


def _moco_ckpt(arch: str = "resnet18", v2: bool = True, seed: int = 1) -> tuple[dict, nn.Module]:
    torch.manual_seed(seed)
    q = getattr(torchvision.models, arch)(num_classes=128)
    if v2:
        d = q.fc.in_features
        q.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))
    _randomise_bn(q, seed)
    k = copy.deepcopy(q)
    sd = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items()}
    sd.update({f"module.encoder_k.{n}": v for n, v in k.state_dict().items()})
    sd["module.queue"] = torch.randn(128, 4096)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    q.fc = nn.Identity()
    return {"epoch": 200, "arch": arch, "state_dict": sd, "optimizer": {}}, q.eval()


def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def _encoder_features(model: SimSiam, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().backbone_features(x)


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["simsiam-suite", "simsiam-official"])
def test_simsiam_round_trip_and_accounting(tmp_path, kind):
    model = _simsiam()
    obj = _suite_ckpt(model) if kind == "simsiam-suite" else _official_ckpt(model)
    src = tmp_path / "ckpt.pth"
    torch.save(obj, src)
    found, sd, info = load_any_checkpoint(src)
    assert found == kind and info["arch"] == "resnet18"
    expected = {k[len("encoder."):]: v for k, v in model.state_dict().items()
                if k.startswith("encoder.") and not k.startswith("encoder.fc.")}
    assert set(sd) == set(expected)
    assert all(torch.equal(sd[k], expected[k]) for k in sd)

    out = tmp_path / "tv.pth"
    _, report = to_torchvision(src, out)
    n_proj = sum(k.startswith("encoder.fc.") for k in model.state_dict())
    n_pred = sum(k.startswith("predictor.") for k in model.state_dict())
    assert report["converted"] == len(expected)
    assert report["dropped"] == {"projector (encoder fc.*)": n_proj, "predictor": n_pred}
    assert report["converted"] + sum(report["dropped"].values()) == len(model.state_dict()) == report["source_keys"]

    # a plain torchvision model takes the file; only the classifier is missing
    tv = torchvision.models.resnet18()
    res = tv.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    # same features as the SimSiam encoder, from the file and from the original checkpoint
    ref = _encoder_features(model, X)
    assert torch.allclose(_features(load_backbone(out), X), ref, atol=1e-6)
    assert torch.allclose(_features(load_backbone(src, "resnet18"), X), ref, atol=1e-6)
    if kind == "simsiam-suite":
        assert info["epochs"] == 3 and info["batch_size"] == 64 and info["dataset"] == "cifar10-jpg"
        assert info["pretrain_data"]["image_size"] == 32
        src_desc = convert.describe_source(src, info)
        assert src_desc["pretrain"] == {"method": "SimSiam", "arch": "resnet18", "epochs": 3, "batch_size": 64,
                                        "dataset": "cifar10-jpg", "scheduled_epochs": None, "completed": None,
                                        "image_size": 32, "limit_per_class": None, "max_steps_per_epoch": None,
                                        "config_changes": None, "recipe": recipe_of(obj["config"])}
        assert src_desc["pretrain"]["recipe"]["data.mean"] == [0.5] * 3  # the checkpoint's, not the default
        assert len(src_desc["sha256"]) == 64


def test_source_records_whether_pretraining_reached_its_schedule_end(tmp_path):
    model = _simsiam()
    cfg = {"data": {"image_size": 224, "limit_per_class": 0}, "train": {"batch_size": 512, "epochs": 200,
                                                                        "max_steps_per_epoch": 0}}
    for epoch, completed in ((100, False), (200, True)):  # checkpoint_0100.pth and the end of a 200-epoch run
        src = tmp_path / f"checkpoint_{epoch:04d}.pth"
        torch.save({**_suite_ckpt(model), "epoch": epoch, "config": cfg}, src)
        pre = convert.describe_source(src)["pretrain"]
        assert (pre["epochs"], pre["scheduled_epochs"], pre["completed"]) == (epoch, 200, completed)
        assert (pre["image_size"], pre["limit_per_class"], pre["max_steps_per_epoch"]) == (224, 0, 0)
    torch.save(_official_ckpt(model), tmp_path / "official.pth.tar")  # the official file does not say
    pre = convert.describe_source(tmp_path / "official.pth.tar")["pretrain"]
    assert (pre["method"], pre["epochs"], pre["scheduled_epochs"], pre["completed"]) == ("SimSiam", 100, None, None)
    assert pre["recipe"] == paper_recipe() and pre["recipe_from"] == convert.OFFICIAL_RECIPE


def test_source_carries_the_pretraining_recipe(tmp_path):
    """Every trajectory key of our checkpoint's config reaches source.pretrain.recipe; a checkpoint without a
    config records none, and so does any other layout than the official SimSiam one."""
    model = _simsiam()
    cfg = {"model": {"stop_gradient": False, "dim": 256, "target": "kstep", "target_every": "10"},
           "optim": {"base_lr": 0.1, "warmup_epochs": 10}, "loss": {"symmetrisation": "asymmetric"},
           "train": {"batch_size": 512, "epochs": 100, "seed": 3}}
    torch.save({**_suite_ckpt(model), "config": cfg}, tmp_path / "ablation.pth")
    pre = convert.describe_source(tmp_path / "ablation.pth")["pretrain"]
    changed = {k: v for k, v in pre["recipe"].items() if paper_recipe()[k] != v}
    assert changed == {"model.stop_gradient": False, "model.dim": 256, "model.target": "kstep",
                       "model.target_every": "10", "optim.base_lr": 0.1, "optim.warmup_epochs": 10,
                       "loss.symmetrisation": "asymmetric"}
    torch.save({**_suite_ckpt(model), "config": {}}, tmp_path / "bare.pth")
    assert convert.describe_source(tmp_path / "bare.pth")["pretrain"]["recipe"] is None
    flat = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("fc.")}  # a torchvision file
    torch.save(flat, tmp_path / "resnet18.pth")
    assert convert.describe_source(tmp_path / "resnet18.pth")["pretrain"]["recipe"] is None


def test_another_methods_checkpoint_records_its_method_and_drops_its_prototypes(tmp_path):
    """A checkpoint of this code's pretrainer under another method (pretrain.methods) names that method in its
    source and recipe; what the method trains besides the encoder (SwAV's prototypes) is dropped by name."""
    model = _simsiam()
    model.prototypes = nn.Linear(128, 10, bias=False)
    torch.save({**_suite_ckpt(model), "config": {"method": "swav", "train": {"batch_size": 64}}}, tmp_path / "swav.pth")
    source = convert.describe_source(tmp_path / "swav.pth")
    assert source["pretrain"]["method"] == "SwAV" and source["pretrain"]["recipe"]["method"] == "swav"
    _, _, info = load_any_checkpoint(str(tmp_path / "swav.pth"))
    assert info["dropped"]["prototypes"] == ["prototypes.weight"]
    assert convert.describe_source(_write_suite(tmp_path, model))["pretrain"]["method"] == "SimSiam"


def _write_suite(tmp_path, model) -> str:
    path = tmp_path / "simsiam.pth"
    torch.save(_suite_ckpt(model), path)
    return str(path)


def test_eval_backbone_reads_a_checkpoint_or_builds_the_random_baseline(tmp_path):
    """The one loader of kNN and linear evaluation: a checkpoint strictly as model.arch, or the seeded random init."""
    from pretrain.config import ConfigError
    from transfer.evaluation.convert import EvalModelConfig, eval_backbone

    model = _simsiam()
    torch.save(_suite_ckpt(model), tmp_path / "ckpt.pth")
    x = torch.randn(2, 3, 32, 32)
    net, source, info = eval_backbone(str(tmp_path / "ckpt.pth"), EvalModelConfig(), seed=5)
    assert torch.equal(_features(net, x), _encoder_features(model, x))
    assert (source["kind"], info["arch"], source["pretrain"]["epochs"]) == ("simsiam-suite", "resnet18", 3)
    with pytest.raises(ConvertError, match="resnet50"):
        eval_backbone(str(tmp_path / "ckpt.pth"), EvalModelConfig("resnet50"), seed=5)
    for zero in (True, False):
        net, source, info = eval_backbone(convert.RANDOM, EvalModelConfig("resnet18", zero), seed=5)
        ref = convert.random_backbone("resnet18", 5, zero)
        assert torch.equal(_features(net.eval(), x), _features(ref.eval(), x)) and info == {}
        assert source["pretrain"]["zero_init_residual"] is zero
        # the last BN of each residual block starts at 0 (official init) or at 1 (torchvision's)
        assert float(net.layer1[0].bn2.weight.detach().abs().max()) == (0.0 if zero else 1.0)
    for weights, model_cfg, message in (("", EvalModelConfig(), "no weights to evaluate"),
                                        (convert.RANDOM, EvalModelConfig(), "needs model.arch"),
                                        ("x.pth", EvalModelConfig("vgg16"), "model.arch: unknown arch 'vgg16'")):
        with pytest.raises(ConfigError, match=message):
            eval_backbone(weights, model_cfg, seed=0)


@pytest.mark.parametrize("v2", [True, False], ids=["mocov2", "mocov1"])
def test_moco_round_trip(tmp_path, v2):
    obj, q = _moco_ckpt(v2=v2)
    src = tmp_path / "moco.pth.tar"
    torch.save(obj, src)
    kind, sd, info = load_any_checkpoint(src)
    assert kind == "moco" and info["method"] == "MoCo"
    _, report = to_torchvision(src, tmp_path / "tv.pth")
    n_fc = 4 if v2 else 2
    n_k = sum(k.startswith("module.encoder_k.") for k in obj["state_dict"])
    assert report["dropped"] == {"projection head (encoder_q fc.*)": n_fc,
                                 "momentum encoder (encoder_k.*)": n_k, "queue": 2}
    assert report["converted"] + sum(report["dropped"].values()) == len(obj["state_dict"])
    assert torch.allclose(_features(load_backbone(tmp_path / "tv.pth"), X), _features(q, X), atol=1e-6)


@pytest.mark.parametrize("with_fc", [True, False])
def test_torchvision_round_trip(tmp_path, with_fc):
    torch.manual_seed(5)
    net = torchvision.models.resnet18()
    _randomise_bn(net)
    sd = net.state_dict()
    if not with_fc:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    src = tmp_path / "r18.pth"
    torch.save(sd, src)
    kind, _, info = load_any_checkpoint(src)
    assert kind == "torchvision" and info["method"] == "torchvision"
    _, report = to_torchvision(src, tmp_path / "again.pth")
    assert report["dropped"] == ({"classifier (fc.*)": 2} if with_fc else {})
    net.fc = nn.Identity()
    assert torch.allclose(_features(load_backbone(tmp_path / "again.pth"), X), _features(net, X), atol=1e-6)
    # a state dict in memory works as well
    assert torch.allclose(_features(load_backbone(sd), X), _features(net, X), atol=1e-6)


def test_detectron2_naming_and_every_key(tmp_path):
    model = _simsiam("resnet50")
    src = tmp_path / "ckpt.pth"
    torch.save(_suite_ckpt(model), src)
    obj, report = to_detectron2(src, tmp_path / "d2.pkl")
    with open(tmp_path / "d2.pkl", "rb") as f:
        loaded = pickle.load(f)
    assert loaded["__author__"] == "simsiam-suite" and loaded["matching_heuristics"] is True
    names = set(loaded["model"])
    for key in ("stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.running_var",
                "res2.0.conv1.weight", "res2.0.conv1.norm.bias", "res2.0.conv3.norm.running_mean",
                "res2.0.shortcut.weight", "res2.0.shortcut.norm.weight", "res3.3.conv2.weight",
                "res4.5.conv3.norm.weight", "res5.0.shortcut.norm.running_var", "res5.2.conv3.weight"):
        assert key in names, key
    assert not any("num_batches_tracked" in n or n.startswith(("layer", "fc", "bn")) for n in names)
    n_bn = sum(k.endswith("num_batches_tracked") for k in model.state_dict() if k.startswith("encoder.")
               and not k.startswith("encoder.fc."))
    assert report["dropped"]["BN batch counters (num_batches_tracked)"] == n_bn
    assert report["converted"] == len(names) == 265
    assert report["converted"] + sum(report["dropped"].values()) == len(model.state_dict())
    sd = model.state_dict()
    assert (loaded["model"]["res4.5.conv3.norm.running_mean"] ==
            sd["encoder.layer3.5.bn3.running_mean"].numpy()).all()
    assert convert.torchvision_to_detectron2_name("layer1.0.downsample.1.running_var") == \
        "res2.0.shortcut.norm.running_var"
    assert convert.torchvision_to_detectron2_name("bn1.bias") == "stem.conv1.norm.bias"
    assert convert.torchvision_to_detectron2_name("layer2.1.bn2.num_batches_tracked") is None


# ------------------------------------------------------------------------------------------- failures
def _err(src, **kw) -> str:
    with pytest.raises(ConvertError) as e:
        load_any_checkpoint(src, **kw)
    return str(e.value)


def test_detectron2_inputs_are_refused(tmp_path):
    model = _simsiam("resnet50")
    torch.save(_suite_ckpt(model), tmp_path / "c.pth")
    to_detectron2(tmp_path / "c.pth", tmp_path / "d2.pkl")
    msg = _err(tmp_path / "d2.pkl")
    assert "found detectron2 weights" in msg and "stem.conv1" in msg
    torch.save({"model": {"backbone.res2.0.conv1.weight": torch.zeros(1),
                          "roi_heads.res5.0.conv1.weight": torch.zeros(1)}, "iteration": 10}, tmp_path / "final.pth")
    msg = _err(tmp_path / "final.pth")
    assert "found detectron2 weights (keys like backbone.res2.0.conv1.weight" in msg


def test_truncated_and_foreign_files(tmp_path):
    model = _simsiam()
    torch.save(_suite_ckpt(model), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert "truncated or not a checkpoint" in _err(tmp_path / "cut.pth")
    (tmp_path / "notes.txt").write_text("hello, not weights\n")
    assert "truncated or not a checkpoint" in _err(tmp_path / "notes.txt")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty file" in _err(tmp_path / "empty.pth")
    assert "checkpoint not found" in _err(tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "found a list" in _err(tmp_path / "list.pth")
    torch.save({"epoch": 1, "weights": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    assert "found a dict with keys epoch, weights" in _err(tmp_path / "other.pth")


def test_wrong_arch_and_broken_state(tmp_path):
    model = _simsiam("resnet18")
    torch.save(_suite_ckpt(model), tmp_path / "r18.pth")
    msg = _err(tmp_path / "r18.pth", arch="resnet50")
    assert "ResNet-18 (BasicBlock, layer1.0.conv2 3x3 64) but --arch resnet50 was asked" in msg
    cifar = _simsiam("resnet18_cifar")
    torch.save(_suite_ckpt(cifar), tmp_path / "r18c.pth")
    assert "ResNet-18 with a 3x3 stem" in _err(tmp_path / "r18c.pth", arch="resnet18")
    assert load_any_checkpoint(tmp_path / "r18c.pth")[2]["arch"] == "resnet18_cifar"
    with pytest.raises(ConvertError, match="3x3 stem cannot become Detectron2"):
        to_detectron2(tmp_path / "r18c.pth", tmp_path / "x.pkl")

    # an unexpected key is an error naming it (not silently dropped)
    obj = _official_ckpt(model)
    obj["state_dict"]["module.encoder.extra.weight"] = torch.zeros(3)
    obj["state_dict"]["module.momentum"] = torch.zeros(1)
    torch.save(obj, tmp_path / "extra.pth")
    msg = _err(tmp_path / "extra.pth")
    assert "module.momentum" in msg and "unexpected key" in msg
    del obj["state_dict"]["module.momentum"]
    torch.save(obj, tmp_path / "extra2.pth")
    assert "unexpected keys (1): extra.weight" in _err(tmp_path / "extra2.pth")

    # a missing backbone key is listed exactly, by load_any_checkpoint and by load_backbone
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items()
          if k not in ("layer4.1.bn2.running_var", "fc.weight", "fc.bias")}
    msg = _err(sd)
    assert "missing keys (1): layer4.1.bn2.running_var" in msg
    with pytest.raises(ConvertError, match=r"missing keys \(1\): layer4.1.bn2.running_var"):
        load_backbone(sd)


def test_cli(tmp_path, capsys):
    model = _simsiam()
    torch.save(_official_ckpt(model), tmp_path / "c.pth.tar")
    assert convert.main([str(tmp_path / "c.pth.tar"), "--to", "torchvision", "--output", str(tmp_path / "o.pth"),
                         "--arch", "resnet18"]) == 0
    out = capsys.readouterr()
    assert '"converted": 120' in out.out and "dropped on purpose" in out.err
    assert (tmp_path / "o.pth").is_file()
    assert convert.main([str(tmp_path / "c.pth.tar"), "--to", "torchvision", "--output", str(tmp_path / "p.pth"),
                         "--arch", "resnet50"]) == 2
    assert "but --arch resnet50 was asked" in capsys.readouterr().err
    assert not (tmp_path / "p.pth").exists()
    assert convert.main([str(tmp_path / "c.pth.tar"), "--to", "detectron2", "--output",
                         str(tmp_path / "d2.pth")]) == 2
    assert ".pkl" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_cli_refuses_a_crafted_file(crafted, tmp_path, capsys, fmt):
    src = crafted.write(f"crafted.{'pkl' if fmt == 'pickle' else 'pth'}", fmt)
    for to, out in (("torchvision", "o.pth"), ("detectron2", "o.pkl")):
        code = convert.main([str(src), "--to", to, "--output", str(tmp_path / out)])
        crafted.assert_refused(code, capsys.readouterr().err, src)
        assert not (tmp_path / out).exists()


def test_detectron2_output_reads_back_with_the_weights_only_unpickler(tmp_path):
    from pretrain.checkpoint import load_pickle

    model = _simsiam("resnet50", seed=3)
    torch.save(_suite_ckpt(model), tmp_path / "c.pth")
    obj, _ = to_detectron2(tmp_path / "c.pth", tmp_path / "d2.pkl")
    back = load_pickle(tmp_path / "d2.pkl")
    assert back.keys() == obj.keys() and back["model"].keys() == obj["model"].keys()
    assert all(np.array_equal(back["model"][k], v) for k, v in obj["model"].items())


# ---------------------------------------------------------------------- detectron2 feature equivalence
def _import_detectron2():
    try:
        from transfer.tooling.d2compat import import_detectron2
        import_detectron2()
        import detectron2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        if not os.environ.get("CI"):
            pytest.skip(f"detectron2 cannot be imported ({type(e).__name__}: {e})")
        raise


def test_detectron2_features_equal_torchvision(tmp_path):
    _import_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone
    from detectron2.modeling.roi_heads import Res5ROIHeads

    model = _simsiam("resnet50", seed=11)
    src = tmp_path / "ckpt.pth"
    torch.save(_suite_ckpt(model), src)
    to_detectron2(src, tmp_path / "r50.pkl")

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0

    class C4(nn.Module):  # the parameter names of GeneralizedRCNN with Res5ROIHeads
        def __init__(self):
            super().__init__()
            self.backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
            self.roi_heads = nn.Module()
            self.roi_heads.res5, _ = Res5ROIHeads._build_res5_block(cfg)

    net = C4()
    ckp = DetectionCheckpointer(net)
    loaded = ckp._load_file(str(tmp_path / "r50.pkl"))
    incompatible = ckp._load_model(loaded)
    missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
    assert missing == [] and list(incompatible.unexpected_keys) == []
    assert not incompatible.incorrect_shapes
    assert any(k.startswith("roi_heads.res5.") for k in net.state_dict())
    assert torch.equal(net.roi_heads.res5[2].conv3.norm.running_var,
                       model.state_dict()["encoder.layer4.2.bn3.running_var"])

    net.eval()
    tv = model.encoder.eval()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        res4_tv = tv.layer3(tv.layer2(tv.layer1(h)))
        res5_tv = tv.layer4(res4_tv)
        res4_d2 = net.backbone(x)["res4"]
        res5_d2 = net.roi_heads.res5(res4_d2)
    for a, b in ((res4_d2, res4_tv), (res5_d2, res5_tv)):
        assert a.shape == b.shape
        assert b.abs().max() > 0
        assert (a - b).abs().max() / b.abs().max() < 1e-4


def test_detectron2_file_names_its_source(tmp_path):
    """The .pkl carries where its weights came from, so detection rows join the same checkpoint's other rows."""
    import pickle

    import torchvision

    from transfer.evaluation.convert import describe_source, to_detectron2

    src = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50().state_dict(), src)
    to_detectron2(src, tmp_path / "w.pkl")
    with open(tmp_path / "w.pkl", "rb") as f:
        obj = pickle.load(f)
    assert obj["source"]["sha256"] == describe_source(src)["sha256"]
    assert obj["source"]["pretrain"]["arch"] == "resnet50"
