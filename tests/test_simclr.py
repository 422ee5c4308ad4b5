"""pretrain.methods.simclr: NT-Xent over the global batch equals a plain float64 reference, and each rank's share
(its rows against every key) adds up to the one-process loss; the preset resolves and passes the checks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain import config, methods
from pretrain.defaults import PretrainConfig
from pretrain.methods.simclr import info_nce


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
