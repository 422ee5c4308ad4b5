"""pretrain.methods.simclr: NT-Xent over the global batch equals a plain float64 reference, each rank's share
(its rows against every key) adds up to the one-process loss, two gloo processes give the one-process loss and
gradients; the preset resolves and passes the checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain import config, distributed, methods
from pretrain.defaults import PretrainConfig
from pretrain.methods.simclr import InfoNCE, info_nce
from test_distributed import run_ranks
from test_embedded import knn_before_and_after

N, T = 8, 0.2   # the global batch of the two-process test, and its temperature


def reference(z1, z2, t):
    """SimCLR's NT-Xent written out: 2N x 2N cosine similarities, the diagonal masked, the other view positive."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / t
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target) * 2


def test_loss_equals_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    got = info_nce((z1, z2), (z1, z2), 0.1)
    assert torch.allclose(got.double(), reference(z1, z2, 0.1), rtol=1e-5)


def test_rank_shares_add_up_to_the_global_loss():
    """Two 'ranks' of 6 rows each, each against all 12 keys at its offset: their mean is the one-process loss."""
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    whole = info_nce((z1, z2), (z1, z2), 0.2)
    parts = [info_nce((z1[a:a + 6], z2[a:a + 6]), (z1, z2), 0.2, offset=a) for a in (0, 6)]
    assert torch.allclose(sum(parts) / 2, whole, rtol=1e-6)


def test_preset_resolves_and_passes_the_checks():
    c = config.resolve(PretrainConfig(), ["simclr"], ["data.root=embedded"], kind="pretrain")
    methods.check(c)
    assert (c.method, c.model.stop_gradient, c.optim.optimizer) == ("simclr", False, "lars")
    assert (c.data.augmentation, c.data.min_scale) == ("simclr", 0.08)  # SimCLR's views and crops


class Projector(nn.Module):
    """A small network without BN in the place of SimCLR's (p = z for both views, keys with gradients)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x1, x2):
        z1, z2 = self.net(x1), self.net(x2)
        return z1, z2, z1, z2


def global_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(N, 6, generator=g), torch.randn(N, 6, generator=g)


def projector() -> Projector:
    torch.manual_seed(0)
    return Projector()


def _rank(info) -> dict:
    """This rank's half of the global batch through InfoNCE under DistributedDataParallel: the loss averaged over
    the ranks and the gradients of the parameters after backward."""
    model = distributed.prepare_model(projector(), info)
    rows = slice(info.rank * N // 2, (info.rank + 1) * N // 2)
    loss, _ = InfoNCE(T)(model, tuple(x[rows] for x in global_views()))
    loss.backward()
    return {"ddp": isinstance(model, nn.parallel.DistributedDataParallel), "own": loss.item(),
            "loss": distributed.all_reduce_mean(loss.detach()).item(),
            "grads": [p.grad.flatten().tolist() for p in model.parameters()]}


def one_process_grads(detach_keys: bool = False) -> tuple[float, list[torch.Tensor]]:
    """The loss of the whole global batch in one process and its gradients (keys detached: their share left out)."""
    model = projector()
    z1, z2, _, _ = model(*global_views())
    keys = (z1.detach(), z2.detach()) if detach_keys else (z1, z2)
    loss = info_nce((z1, z2), keys, T)
    loss.backward()
    return loss.item(), [p.grad.flatten() for p in model.parameters()]


def test_two_processes_equal_one(tmp_path):
    """Two gloo processes, each with half of the global batch of 8, its keys gathered from both ranks with their
    gradients: a small model wrapped in DistributedDataParallel, whose gradient is the mean over the ranks of the
    gradients of their losses, i.e. the gradient of the mean of the ranks' losses. That mean is the one-process
    loss of the whole batch, so the losses and the parameters' gradients equal one process's (rtol 1e-5); with
    the keys' gradients left out the one-process gradient differs, so the gather's backward counts."""
    got = run_ranks(_rank, tmp_path)
    loss, grads = one_process_grads()
    assert got[0]["ddp"] and got[1]["ddp"] and got[0]["own"] != got[1]["own"]
    for g in got:
        assert g["loss"] == pytest.approx(loss, rel=1e-5)
        for mine, one in zip(g["grads"], grads):
            assert torch.allclose(torch.tensor(mine), one, rtol=1e-5, atol=1e-7)
    assert got[0]["grads"] == got[1]["grads"]
    _, without_keys = one_process_grads(detach_keys=True)
    assert not all(torch.allclose(a, b, rtol=1e-2) for a, b in zip(without_keys, grads))


# LEARN_OVERRIDES (tests/test_embedded.py) shortened to 10 epochs (120 steps of 32 images) with a small SimCLR:
# the 2-layer projector of 256 hidden units to 64-d of the suite's heads, no predictor, no stop-gradient, SGD (the
# suite's tests never use LARS), temperature 0.2 for the short run, SimCLR's views (its preset's).
LEARN = ["method=simclr", "model.predictor=none", "model.stop_gradient=false", "model.dim=64",
         "model.proj_hidden_dim=256", "optim.optimizer=sgd", "loss.temperature=0.2", "optim.base_lr=0.8",
         "train.epochs=10", "data.augmentation=simclr"]


def test_short_pretraining_beats_random_init(tmp_path):
    """A short SimCLR run on the embedded data beats the same network at random init in kNN top-1 (k=20, 240
    held-out images; chance 12.5 %).

    Measured (kNN top-1 %, random init -> after 120 steps; embedded data v2, 2026-12-04, AMD EPYC):
      one thread:  seed 0 13.75 -> 29.17 (+15.4), seed 1 13.33 -> 31.25 (+17.9), seed 2 12.92 -> 27.08 (+14.2);
      two threads: seed 0 13.75 -> 25.83 (+12.1).
    With MoCo v2's views instead: +15.8 / +12.5 / +13.8, two threads +11.2; at 240 steps +21.7 / +17.9 / +20.0
    (one thread). Bounds well inside the smallest gain: random init below
    20 %, a gain of more than 5 points."""
    before, after = knn_before_and_after(tmp_path / "run", 0, tuple(LEARN))
    assert before < 20.0, (before, after)
    assert after - before > 5.0, (before, after)
