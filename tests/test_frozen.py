"""transfer.evaluation.frozen: the data settings the weights are read at (given, the checkpoint's, ImageNet's),
the two labelled folders, the checksum and the frozen backbone that kNN and linear evaluation share."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data import DataError
from pretrain.model import SimSiam, build_backbone
from transfer.evaluation.convert import EvalModelConfig
from transfer.evaluation.frozen import (BackboneChangedError, FrozenBackbone, Weights, labelled_folders,
                                        state_checksum)
from transfer.evaluation.knn import KnnDataConfig
from transfer.evaluation.linear import LinearDataConfig

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pretraining checkpoint that records its 32 px inputs and their normalisation."""
    torch.manual_seed(0)
    model = SimSiam("resnet18_cifar", dim=64, pred_dim=16, proj_layers=2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    torch.save({"format": "simsiam-suite/pretrain", "version": 1, "epoch": 1, "step": 1, "arch": "resnet18_cifar",
                "model": model.state_dict(), "optimizer": None, "scaler": None, "rng": {},
                "config": {"data": {"image_size": 32, "mean": list(MEAN), "std": list(STD)},
                           "train": {"batch_size": 8}}, "dataset": "cifar10-jpg"}, path)
    return path


def test_data_settings_come_from_the_checkpoint_unless_given(checkpoint):
    w = Weights.load(str(checkpoint), EvalModelConfig(), 0, KnnDataConfig())
    assert (w.data.image_size, w.data.mean, w.data.std, w.data.crop_fraction) == (32, MEAN, STD, 1.0)
    assert w.normalisation == {"mean": list(MEAN), "std": list(STD), "from": {"mean": "checkpoint", "std": "checkpoint"}}
    given = Weights.load(str(checkpoint), EvalModelConfig(), 0, KnnDataConfig(mean=(0.0, 0.0, 0.0), image_size=64))
    assert given.data.mean == (0.0, 0.0, 0.0) and given.data.std == STD and given.data.image_size == 64
    assert given.normalisation["from"] == {"mean": "data.mean", "std": "checkpoint"}
    assert w.source["pretrain"]["arch"] == "resnet18_cifar" and isinstance(w.net.fc, nn.Identity)


def test_random_weights_read_imagenet_settings():
    w = Weights.load("random", EvalModelConfig(arch="resnet18"), 3, LinearDataConfig(root="embedded"))
    assert (w.data.image_size, w.data.crop_fraction) == (224, 0.875)  # linear's default size, the 224 px crop
    assert w.normalisation == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                               "from": {"mean": "ImageNet", "std": "ImageNet"}}
    again = Weights.load("random", EvalModelConfig(arch="resnet18"), 3, LinearDataConfig(root="embedded"))
    assert state_checksum(w.net) == state_checksum(again.net)  # the seed fixes the random network
    other = Weights.load("random", EvalModelConfig(arch="resnet18"), 4, LinearDataConfig(root="embedded"))
    assert state_checksum(other.net) != state_checksum(w.net)


def test_labelled_folders_share_classes_and_need_a_held_out_split(cifar_root, tmp_path):
    d = KnnDataConfig(root=str(cifar_root), limit_per_class=3, val_limit_per_class=2)
    train_dir, val_dir, train, val = labelled_folders(d, (None, None), "--data x", "kNN evaluation")
    assert train_dir.name == "train" and val_dir.name == "test"  # no val/: test/ is the held-out split
    assert train.classes == val.classes and (len(train), len(val)) == (30, 20)
    only_train = tmp_path / "only_train"
    shutil.copytree(cifar_root / "train" / train.classes[0], only_train / "train" / train.classes[0])
    with pytest.raises(DataError, match=r"^data.root=\S+: no held-out split next to .*linear evaluation needs one"):
        labelled_folders(LinearDataConfig(root=str(only_train)), (None, None), f"data.root={only_train}",
                         "linear evaluation")


def test_checksum_sees_every_tensor():
    net = build_backbone("resnet18")
    before = state_checksum(net)
    assert state_checksum(net) == before
    with torch.no_grad():
        net.layer4[1].bn2.running_mean[0] += 1e-6  # a buffer, not a parameter
    assert state_checksum(net) != before
    half = build_backbone("resnet18").to(torch.bfloat16)
    assert len(state_checksum(half)) == 64


def test_frozen_backbone_stays_frozen_and_names_what_changed():
    torch.manual_seed(0)
    net = build_backbone("resnet18")
    net.fc = nn.Identity()
    bb = FrozenBackbone(net, torch.device("cpu"))
    assert bb.dim == 512 and not any(p.requires_grad for p in net.parameters())
    assert bb.applied == {"amp": "none", "channels_last": False}
    x = torch.randn(4, 3, 32, 32)
    net.train()  # features() evaluates in eval mode whatever the module's mode: BN statistics never move
    f = bb.features(x)
    assert f.shape == (4, 512) and f.dtype == torch.float32 and not f.requires_grad
    bb.check_unchanged(lambda: pytest.fail("the reference is built only when the weights changed"), "kNN")
    reference = build_backbone("resnet18")
    reference.fc = nn.Identity()
    reference.load_state_dict(net.state_dict())
    with torch.no_grad():
        net.layer1[0].conv1.weight.mul_(2.0)
    with pytest.raises(BackboneChangedError, match=r"changed during kNN .*changed tensors: layer1\.0\.conv1\.weight\."):
        bb.check_unchanged(lambda: reference, "kNN")


def test_channels_last_and_bf16_are_reported_as_applied():
    net = build_backbone("resnet18")
    net.fc = nn.Identity()
    bb = FrozenBackbone(net, torch.device("cpu"), amp="bf16", channels_last=True)
    assert bb.applied == {"amp": "bf16", "channels_last": True}
    assert bb.features(torch.randn(2, 3, 32, 32)).dtype == torch.float32
