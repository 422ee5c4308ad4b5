"""Training monitors: the collapse indicator and the weighted kNN classifier.

collapse_std: std over the batch of l2-normalised z, per channel, averaged over channels. A healthy
representation gives about 1/sqrt(d); a collapsed one (every image mapped to the same vector) gives 0.
Measured on training batches, with SimSiam's BatchNorm (affine=False) at the projector output, it cannot
reach 0: BN centres every channel over the batch, so not all B vectors can point one way. The lowest value
(B-1 images on one vector, one opposite, which outweighs them) is collapse_floor(B, d) = 2 sqrt(B-1) / B
/ sqrt(d): 0.35/sqrt(d) for a batch of 32, 0.09/sqrt(d) for the paper's 512. A collapsed run approaches this
floor; read "near 0" as "near collapse_floor" for small batches.

kNN (InstDisc / official SimSiam CIFAR monitor): l2-normalised pooled backbone features, cosine
similarity to the memory bank, the k nearest vote with weight exp(sim / t).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import distributed


@torch.no_grad()
def collapse_std(z: torch.Tensor) -> float:
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean().item()


def collapse_floor(batch: int, dim: int) -> float:
    """The smallest collapse_std a batch of `batch` BN-centred (zero-mean per channel) outputs can have."""
    if batch < 2:
        raise ValueError(f"collapse_floor needs a batch of at least 2, got {batch}")
    return 2.0 * math.sqrt(batch - 1) / batch / math.sqrt(dim)


@torch.no_grad()
def knn_predict(feats: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1) -> torch.Tensor:
    """Class ranking (B x C, best first) for l2-normalised `feats` (B x D) against `bank` (N x D)."""
    k = min(k, bank.shape[0])
    sim = feats @ bank.T                              # B x N cosine similarities
    sim_w, idx = sim.topk(k, dim=1)                   # B x k
    labels = bank_labels[idx]                         # B x k
    weights = (sim_w / t).exp()
    scores = torch.zeros(feats.shape[0], num_classes, device=feats.device, dtype=weights.dtype)
    scores.scatter_add_(1, labels, weights)
    return scores.argsort(dim=1, descending=True)


@torch.no_grad()
def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 200, t: float = 0.1, num_classes: int | None = None,
                 chunk: int = 512) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of the weighted kNN classifier."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max()).item()) + 1
    bank = F.normalize(train_feats.float(), dim=1)
    bank_labels = train_labels.long()
    test = F.normalize(test_feats.float(), dim=1)
    test_labels = test_labels.long().to(test.device)
    top1 = top5 = 0
    for i in range(0, test.shape[0], chunk):
        ranking = knn_predict(test[i:i + chunk], bank, bank_labels, num_classes, k, t)
        y = test_labels[i:i + chunk, None]
        top1 += (ranking[:, :1] == y).any(dim=1).sum().item()
        top5 += (ranking[:, :min(5, num_classes)] == y).any(dim=1).sum().item()
    n = max(test.shape[0], 1)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


@torch.no_grad()
def extract_features(fn, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(images) -> features for every batch of `loader`, gathered over ranks (features, labels)."""
    feats, labels = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        feats.append(fn(images).float())
        labels.append(targets.to(device))
    dim_probe = feats[0] if feats else None
    if dim_probe is None:
        raise RuntimeError("extract_features: the loader yielded no images")
    f = distributed.all_gather(torch.cat(feats))
    y = distributed.all_gather(torch.cat(labels))
    return f, y
