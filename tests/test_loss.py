"""pretrain.loss: D = negative cosine similarity, symmetrised; minimum -1."""
import math

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


def test_cross_entropy_equals_the_formula():
    """D(p, z) = -softmax(z) . log softmax(p), batch mean (Sec. 4.5), written out element by element."""
    from pretrain.loss import cross_entropy_similarity
    torch.manual_seed(0)
    p, z = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    rows = []
    for pi, zi in zip(p.tolist(), z.tolist()):
        ez = [math.exp(v) for v in zi]
        lp = [v - math.log(sum(math.exp(u) for u in pi)) for v in pi]
        rows.append(-sum(e / sum(ez) * l for e, l in zip(ez, lp)))
    assert cross_entropy_similarity(p, z).item() == pytest.approx(sum(rows) / 3, rel=1e-12)
    # minimal over p when p's softmax equals z's (Gibbs), e.g. p = z + c
    assert cross_entropy_similarity(z + 2.0, z).item() < cross_entropy_similarity(p, z).item()


def test_pair_loss_terms():
    """symmetric: (D(p1,z2) + D(p2,z1))/2, the paper's loss; asymmetric: D(p1,z2); asymmetric_x2:
    (D(p1,z2) + D(p3,z4))/2."""
    from pretrain.loss import pair_loss
    torch.manual_seed(1)
    p = [torch.randn(4, 8) for _ in range(4)]
    z = [torch.randn(4, 8) for _ in range(4)]
    assert torch.equal(pair_loss(p, z), simsiam_loss(p[0], p[1], z[0], z[1]))
    assert torch.equal(pair_loss(p, z, "asymmetric"), negative_cosine(p[0], z[1]))
    assert pair_loss(p, z, "asymmetric_x2").item() == pytest.approx(
        0.5 * (negative_cosine(p[0], z[1]) + negative_cosine(p[2], z[3])).item(), abs=1e-7)


class _Counting(torch.nn.Module):
    """A tiny SimSiam whose encoder and predictor count their forward calls and whether they built a graph."""

    def __init__(self):
        super().__init__()
        from pretrain.model import SimSiam
        torch.manual_seed(0)
        self.inner = SimSiam("resnet18", dim=16, pred_dim=4, proj_layers=2)
        self.calls = {"encoder": [], "predictor": 0}
        self.inner.encoder.register_forward_hook(lambda m, i, o: self.calls["encoder"].append(o.requires_grad))
        self.inner.predictor.register_forward_hook(lambda m, i, o: self.calls.__setitem__(
            "predictor", self.calls["predictor"] + 1))

    def forward(self, *views, **kw):
        return self.inner(*views, **kw)


@pytest.mark.parametrize("symmetrisation,views,encoder,predictions", [
    ("symmetric", 2, [True, True], 2),
    ("asymmetric", 2, [True, False], 1),          # one pair: the second view is only a target (no graph)
    ("asymmetric_x2", 4, [True, False, True, False], 2),  # two pairs of four views
])
def test_objective_computes_the_pairs_it_names(symmetrisation, views, encoder, predictions):
    from pretrain.defaults import LossConfig
    from pretrain.loss import Objective, views_per_image
    from pretrain.target import OnlineTarget
    cfg = LossConfig(symmetrisation=symmetrisation)
    assert views_per_image(cfg) == views
    model = _Counting()
    xs = [torch.randn(4, 3, 32, 32) for _ in range(views)]
    loss, z1 = Objective(cfg, OnlineTarget())(model, xs)
    assert model.calls == {"encoder": encoder, "predictor": predictions}
    assert loss.requires_grad and not z1.requires_grad and z1.shape == (4, 16)


def test_objective_default_is_the_paper_loss():
    """The default objective is simsiam_loss(*model(x1, x2)), bit for bit."""
    from pretrain.defaults import LossConfig
    from pretrain.loss import Objective
    from pretrain.target import OnlineTarget
    model = _Counting().inner.eval()
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loss, z1 = Objective(LossConfig(), OnlineTarget())(model, [x1, x2])
    p1, p2, y1, y2 = model(x1, x2)
    assert torch.equal(loss, simsiam_loss(p1, p2, y1, y2)) and torch.equal(z1, y1)


@pytest.mark.parametrize("overrides,words", [
    (["model.target=moving_average"], ["model.target=moving_average", "model.predictor=none"]),
    (["model.target=moving_average", "model.predictor=none", "loss.symmetrisation=asymmetric_x2"],
     ["model.target=moving_average", "asymmetric_x2"]),
    (["model.target=kstep", "model.stop_gradient=false"], ["model.stop_gradient=false", "model.target=kstep"]),
    (["model.target_every=10"], ["model.target_every=10", "model.target=kstep"]),
    (["model.target=kstep", "model.target_every=ten"], ["model.target_every", "'ten'"]),
    (["model.head_bn=all", "model.predictor=none"], ["model.head_bn=all", "model.predictor=none"]),
    (["optim.warmup_epochs=100"], ["optim.warmup_epochs=100", "train.epochs=100"]),
    (["loss.similarity=l2"], ["loss.similarity", "'l2'"]),
    (["model.predictor=on"], ["model.predictor", "'True'"]),
])
def test_meaningless_combinations_are_refused(overrides, words):
    from pretrain import config
    from pretrain.defaults import PretrainConfig
    from pretrain.errors import InputError
    from pretrain.loss import check_switches
    cfg = config.resolve(PretrainConfig(), overrides=overrides)
    with pytest.raises(config.ConfigError) as err:
        check_switches(cfg)
    assert isinstance(err.value, InputError) and "\n" not in str(err.value)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_refusal_exits_2_before_writing(tmp_path, capsys):
    from pretrain.main import main
    out = tmp_path / "run"
    code = main(["--config", "test_tiny", "--output", str(out), "model.target=moving_average"])
    assert code == 2 and not (out / "checkpoint.pth").exists()
    assert "model.predictor=none" in capsys.readouterr().err
