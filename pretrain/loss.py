"""The SimSiam loss (Chen & He, CVPR 2021, Section 3, Eq. 1-4): the symmetrised negative cosine similarity
between the predictions and the stop-gradiented targets.

    p1, p2, z1, z2 = model(x1, x2)          # pretrain.model.SimSiam: z1, z2 are already detached
    loss = simsiam_loss(p1, p2, z1, z2)     # in [-1, 1]; -1 when every prediction matches its target
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, z), averaged over the batch. z arrives already stop-gradiented by the model."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L = D(p1, z2)/2 + D(p2, z1)/2; minimum -1."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
