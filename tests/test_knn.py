"""transfer.evaluation.knn: offline kNN (k=200 and k=20, t=0.1) of a checkpoint on real CIFAR-10 images, checked against
an independent computation; results.json contract; clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.augment import eval_transform
from pretrain.data import RobustImageFolder
from pretrain.model import SimSiam, build_backbone
from transfer.evaluation import knn
from transfer.reporting.results import read_results, sha256_file

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = SimSiam("resnet18_cifar", dim=128, pred_dim=32, proj_layers=2)
    for m in model.encoder.modules():  # data-like BN statistics, so the features are not degenerate
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(4.0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"format": "simsiam-suite/pretrain", "version": 1, "epoch": 5, "step": 50, "arch": "resnet18_cifar",
                "model": model.state_dict(), "optimizer": None, "scaler": None, "rng": {},
                "config": {"data": {"image_size": 32, "mean": MEAN, "std": STD}, "train": {"batch_size": 64}},
                "dataset": "cifar10-jpg"}, path)
    return path, model


def _manual_knn(features, root, k, t=0.1, mean=MEAN, std=STD):
    """Independent reference: plain loops, explicit cosine similarities and weighted votes over
    features(images), the pooled backbone features of the network under test."""
    tf = eval_transform(32, mean, std, crop_fraction=1.0)
    bank = RobustImageFolder(root / "train", tf, limit_per_class=20)
    test = RobustImageFolder(root / "test", tf, limit_per_class=8)

    def feats(ds):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            return F.normalize(features(x), dim=1), torch.tensor(ds.targets)

    fb, yb = feats(bank)
    ft, yt = feats(test)
    correct = 0
    for f, y in zip(ft, yt):
        sim = fb @ f
        top = sim.topk(min(k, len(fb)))
        votes = torch.zeros(10)
        for s, i in zip(top.values, top.indices):
            votes[yb[i]] += torch.exp(s / t)
        correct += int(votes.argmax() == y)
    return 100.0 * correct / len(yt)


def test_knn_matches_reference_and_writes_results(checkpoint, cifar_root, tmp_path, capsys):
    path, model = checkpoint
    rc = knn.main(["--weights", str(path), "--data", str(cifar_root), "--output", str(tmp_path / "knn"),
                   "data.limit_per_class=20", "data.val_limit_per_class=8", "data.workers=0"])
    assert rc == 0 and "top1_k200" in capsys.readouterr().out
    doc = read_results(tmp_path / "knn")
    assert doc["task"] == "knn" and doc["dataset"] == "cifar10-jpg"
    m = doc["metrics"]
    assert set(m) >= {"top1_k200", "top5_k200", "top1_k20", "top5_k20", "top1", "top5"}
    assert doc["k"] == [200, 20] and doc["t"] == 0.1 and doc["bank_images"] == 200 and doc["test_images"] == 80
    # the resolution and normalisation come from the checkpoint's pretraining config
    assert doc["config"]["data"]["image_size"] == 32 and doc["config"]["data"]["crop_fraction"] == 1.0
    assert list(doc["config"]["data"]["mean"]) == MEAN
    assert doc["source"]["sha256"] == sha256_file(path)
    assert doc["source"]["pretrain"].items() >= {"method": "SimSiam", "arch": "resnet18_cifar", "epochs": 5,
                                                 "batch_size": 64, "dataset": "cifar10-jpg", "completed": None}.items()
    assert (doc["protocol"]["stage"], doc["protocol"]["train_images"], doc["protocol"]["test_crop"]) == ("knn", 200, 32)
    for k in (200, 20):
        assert m[f"top1_k{k}"] == pytest.approx(_manual_knn(model.eval().backbone_features, cifar_root, k), abs=1e-6)
        assert m[f"top1_k{k}"] <= m[f"top5_k{k}"] <= 100.0
    assert m["top1"] == m["top1_k200"]



def test_knn_random_init_baseline(cifar_root, tmp_path):
    """--weights random: the backbone pretraining starts from (build_backbone under torch seed `seed`), on the
    data settings given; its accuracy is the reference computation's on that same network."""
    argv = ["--weights", "random", "--data", str(cifar_root), "--output", str(tmp_path / "rand"),
            "model.arch=resnet18_cifar", "seed=3", "data.image_size=32", f"data.mean={MEAN}", f"data.std={STD}",
            "data.limit_per_class=20", "data.val_limit_per_class=8", "data.workers=0"]
    assert knn.main(argv) == 0
    doc = read_results(tmp_path / "rand")
    assert doc["source"]["checkpoint"] == "random" and doc["source"]["sha256"] is None
    assert doc["source"]["pretrain"] == {"method": "random init", "arch": "resnet18_cifar", "epochs": 0,
                                         "batch_size": None, "dataset": None, "zero_init_residual": True}
    assert doc["config"]["seed"] == 3 and doc["config"]["data"]["crop_fraction"] == 1.0
    torch.manual_seed(3)
    net = build_backbone("resnet18_cifar").eval()
    net.fc = nn.Identity()
    for k in (200, 20):
        assert doc["metrics"][f"top1_k{k}"] == pytest.approx(_manual_knn(net, cifar_root, k), abs=1e-6)
    assert knn.main(argv[:5] + [str(tmp_path / "no_arch")] + argv[7:]) == 2  # without model.arch: nothing to build
    # model.zero_init_residual=false: torchvision's init (every BN weight 1), recorded, and a different network
    assert knn.main(argv[:5] + [str(tmp_path / "bn1"), *argv[6:], "model.zero_init_residual=false"]) == 0
    bn1 = read_results(tmp_path / "bn1")
    assert bn1["source"]["pretrain"]["zero_init_residual"] is False
    torch.manual_seed(3)
    net = build_backbone("resnet18_cifar", zero_init_residual=False).eval()
    net.fc = nn.Identity()
    assert bn1["metrics"]["top1_k20"] == pytest.approx(_manual_knn(net, cifar_root, 20), abs=1e-6)

def test_knn_errors(checkpoint, cifar_root, tmp_path, capsys):
    """Bad input: one line naming the folder, key or value, exit code 2, nothing written."""
    path, _ = checkpoint
    base = ["--weights", str(path), "--output", str(tmp_path / "o")]
    assert knn.main(base + ["--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    only_train = tmp_path / "only"
    (only_train / "train").mkdir(parents=True)
    (only_train / "train" / "cat").symlink_to(cifar_root / "train" / "cat")
    assert knn.main(base + ["--data", str(only_train)]) == 2
    assert "no held-out split" in capsys.readouterr().err
    assert knn.main(base + ["--data", str(cifar_root), "bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    # the old spelling arch= still works, with a one-line deprecation notice
    assert knn.main(base + ["--data", str(cifar_root), "arch=resnet50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "simsiam knn: note: 'arch=' is deprecated, use 'model.arch='"
    assert len(err) == 2 and err[1].startswith("simsiam knn: error: ") and "but --arch resnet50 was asked" in err[1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_knn_refuses_crafted_weights(crafted, cifar_root, tmp_path, capsys, fmt):
    path = crafted.write(f"crafted.{'pkl' if fmt == 'pickle' else 'pth'}", fmt)
    code = knn.main(["--weights", str(path), "--data", str(cifar_root), "--output", str(tmp_path / "o")])
    crafted.assert_refused(code, capsys.readouterr().err, path)


def test_knn_applies_the_normalisation_a_layout_records(cifar_root, tmp_path):
    """SimCLR v1 converted to PyTorch expects pixels / 255 without mean / std: kNN uses that when not told
    otherwise, records it, and its accuracy is the reference computation's on raw pixels."""
    import torchvision

    torch.manual_seed(4)
    net = torchvision.models.resnet50()
    path = tmp_path / "resnet50-1x.pth"
    torch.save({"state_dict": net.state_dict()}, path)  # simclr-converter's file: torchvision keys, its fc
    argv = ["--weights", str(path), "--data", str(cifar_root), "--output", str(tmp_path / "knn"), "ks=[20]",
            "data.image_size=32", "data.limit_per_class=20", "data.val_limit_per_class=8", "data.workers=0"]
    assert knn.main(argv) == 0
    doc = read_results(tmp_path / "knn")
    raw = {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert (list(doc["config"]["data"]["mean"]), list(doc["config"]["data"]["std"])) == (raw["mean"], raw["std"])
    assert doc["source"]["normalisation"] == raw and doc["source"]["pretrain"]["method"] == "SimCLR"
    net.fc = nn.Identity()
    net.eval()
    assert doc["metrics"]["top1_k20"] == pytest.approx(_manual_knn(net, cifar_root, 20, mean=raw["mean"],
                                                                    std=raw["std"]), abs=1e-6)
