"""pretrain.loss: D = negative cosine similarity, symmetrised; minimum -1."""
import pytest
import torch

from pretrain.loss import negative_cosine, simsiam_loss


def test_identical_vectors_give_minus_one():
    torch.manual_seed(0)
    p = torch.randn(8, 16)
    assert negative_cosine(p, p.clone()).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(p, p, p, p).item() == pytest.approx(-1.0, abs=1e-6)


def test_opposite_orthogonal_and_scale_invariant():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert negative_cosine(p, -3 * p).item() == pytest.approx(1.0, abs=1e-6)
    assert negative_cosine(p, torch.tensor([[0.0, 5.0], [7.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.randn(4, 10)
    z = torch.randn(4, 10)
    assert negative_cosine(q, z).item() == pytest.approx(negative_cosine(10 * q, 0.1 * z).item(), abs=1e-6)


def test_mean_over_batch_and_symmetry():
    torch.manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(6, 32) for _ in range(4))
    expected = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected.item(), abs=1e-6)
    # swapping the two views gives the same loss
    assert simsiam_loss(p2, p1, z2, z1).item() == pytest.approx(simsiam_loss(p1, p2, z1, z2).item(), abs=1e-6)
    # mean over the batch: per-row cosines averaged
    rows = [-torch.nn.functional.cosine_similarity(p1[i:i + 1], z2[i:i + 1]).item() for i in range(6)]
    assert negative_cosine(p1, z2).item() == pytest.approx(sum(rows) / 6, abs=1e-6)
    # D(p1, z2) pairs prediction of view 1 with the target of view 2, not of view 1
    assert simsiam_loss(p1, p2, z1, z2).item() != pytest.approx(
        (0.5 * negative_cosine(p1, z1) + 0.5 * negative_cosine(p2, z2)).item(), abs=1e-4)
