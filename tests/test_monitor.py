"""pretrain.monitor: collapse indicator and the temperature-weighted kNN classifier."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pretrain.monitor import collapse_floor, collapse_std, extract_features, knn_accuracy, knn_predict


def test_collapse_std_healthy_and_collapsed():
    torch.manual_seed(0)
    d = 256
    healthy = collapse_std(torch.randn(4096, d))
    assert healthy == pytest.approx(1 / math.sqrt(d), rel=0.05)
    collapsed = torch.randn(1, d).repeat(512, 1) * torch.rand(512, 1)  # same direction, any scale
    assert collapse_std(collapsed) < 1e-5
    # scale-invariant: l2-normalised before the std
    z = torch.randn(64, d)
    assert collapse_std(z) == pytest.approx(collapse_std(5 * z), rel=1e-5)


def _bn(x):
    return torch.nn.functional.batch_norm(x, None, None, training=True)  # SimSiam's BN(affine=False) output


@pytest.mark.parametrize("batch", [32, 512])
def test_collapse_floor_of_bn_centred_outputs(batch):
    """With BN at the projector output no batch gets below collapse_floor, and the outlier batch reaches it."""
    torch.manual_seed(0)
    d = 64
    u = torch.randn(d)
    worst = u.repeat(batch, 1)
    worst[-1] = -(batch - 1) * u
    floor = collapse_floor(batch, d)
    assert collapse_std(_bn(worst + 1e-4 * torch.randn(batch, d))) == pytest.approx(floor, rel=0.02)
    assert floor == pytest.approx({32: 0.348, 512: 0.088}[batch] / math.sqrt(d), rel=0.01)
    # other collapsed shapes (a few images opposite the rest, low-rank outputs) stay above it
    for k in (2, 4, batch // 4):
        two = u.repeat(batch, 1) + 0.01 * torch.randn(batch, d)
        two[:k] = -u
        assert floor < collapse_std(_bn(two)) < 1 / math.sqrt(d)
    low_rank = torch.randn(batch, 2) @ torch.randn(2, d)
    assert collapse_std(_bn(low_rank)) > floor
    with pytest.raises(ValueError, match="at least 2"):
        collapse_floor(1, d)


def test_knn_weighted_votes():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=1)
    b = torch.nn.functional.normalize(bank, dim=1)
    # k=5: three votes for class 1 but far away; temperature 0.1 weights favour the close class-0 neighbours
    assert knn_predict(q, b, labels, 2, k=5, t=0.1)[0, 0].item() == 0
    # a very high temperature turns it into a plain majority vote
    assert knn_predict(q, b, labels, 2, k=5, t=1e6)[0, 0].item() == 1


def test_knn_accuracy_on_separable_clusters():
    torch.manual_seed(0)
    centers = torch.randn(5, 32) * 5
    ytr = torch.arange(5).repeat_interleave(40)
    yte = torch.arange(5).repeat_interleave(10)
    xtr = centers[ytr] + torch.randn(200, 32)
    xte = centers[yte] + torch.randn(50, 32)
    acc = knn_accuracy(xtr, ytr, xte, yte, k=20, t=0.1, num_classes=5, chunk=7)
    assert acc["top1"] == 100.0 and acc["top5"] == 100.0
    # random labels on the bank: top-1 near chance, top-5 of 5 classes always 100
    acc = knn_accuracy(xtr, ytr[torch.randperm(200)], xte, yte, k=200, t=0.1, num_classes=5)
    assert acc["top1"] < 60 and acc["top5"] == 100.0


def test_extract_features_single_process():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    f, lab = extract_features(lambda t: t * 2, DataLoader(TensorDataset(x, y), batch_size=4), torch.device("cpu"))
    assert torch.equal(f, x * 2) and torch.equal(lab, y)
