"""pretrain.model: the paper's architecture, shapes, and the stop-gradient."""
import pytest
import torch
from torch import nn

from pretrain.defaults import ModelConfig
from pretrain.loss import simsiam_loss
from pretrain.model import SimSiam, build_model


def test_resnet50_shapes_and_paper_layout():
    torch.manual_seed(0)
    m = build_model(ModelConfig())  # the paper's defaults
    fc = m.encoder.fc
    linears = [x for x in fc if isinstance(x, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 2048)] * 3
    assert [l.bias is None for l in linears] == [True, True, False]
    assert linears[-1].bias.requires_grad is False          # followed by BN: not trained
    assert isinstance(fc[-1], nn.BatchNorm1d) and fc[-1].affine is False
    pl = [x for x in m.predictor if isinstance(x, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in pl] == [(2048, 512), (512, 2048)]
    # zero-initialised last BN in each residual block
    assert all(torch.all(b.bn3.weight == 0) for layer in (m.encoder.layer1, m.encoder.layer4) for b in layer)
    keys = m.state_dict().keys()
    assert all(k.startswith(("encoder.", "predictor.")) for k in keys)
    assert "encoder.fc.6.weight" in keys and "predictor.3.bias" in keys
    m.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        p1, p2, z1, z2 = m(x, x)
        assert p1.shape == p2.shape == z1.shape == z2.shape == (2, 2048)
        assert m.backbone_features(x).shape == (2, 2048)
        assert isinstance(m.encoder.fc, nn.Sequential)  # restored after backbone_features


def test_cifar_resnet18_variant():
    m = SimSiam("resnet18_cifar", dim=2048, pred_dim=512, proj_layers=2)
    assert m.encoder.conv1.kernel_size == (3, 3) and m.encoder.conv1.stride == (1, 1)
    assert isinstance(m.encoder.maxpool, nn.Identity)
    assert len([x for x in m.encoder.fc if isinstance(x, nn.Linear)]) == 2
    m.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert m.backbone_features(x).shape == (2, 512)
        assert m(x, x)[0].shape == (2, 2048)
    with pytest.raises(ValueError, match="unknown arch 'resnet34'"):
        SimSiam("resnet34")


def _grads(stop_gradient: bool):
    torch.manual_seed(0)
    m = SimSiam("resnet18", dim=64, pred_dim=16, proj_layers=2, stop_gradient=stop_gradient)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    captured = []
    m.encoder.register_forward_hook(lambda mod, inp, out: captured.append(out))
    p1, p2, z1, z2 = m(x1, x2)
    loss = simsiam_loss(p1, p2, z1, z2)
    # gradient reaching the projections z (encoder outputs) directly through the target path
    z_enc = captured  # [z1 (undetached encoder output), z2]
    return m, loss, z1, z2, z_enc, p1, p2


def test_stop_gradient_blocks_the_target_path():
    m, loss, z1, z2, z_enc, p1, p2 = _grads(True)
    assert not z1.requires_grad and z1.grad_fn is None and not z2.requires_grad
    # the only way from the loss to the encoder output is through the predictor: d loss / d z_enc equals
    # the gradient through p alone
    g_total = torch.autograd.grad(loss, z_enc[0], retain_graph=True)[0]
    g_via_p = torch.autograd.grad(0.5 * (-torch.nn.functional.cosine_similarity(p1, z2.detach()).mean()),
                                  z_enc[0], retain_graph=True)[0]
    assert torch.allclose(g_total, g_via_p, atol=1e-7)
    loss.backward()
    assert m.encoder.conv1.weight.grad is not None and m.predictor[0].weight.grad is not None


def test_without_stop_gradient_the_target_receives_gradient():
    m, loss, z1, z2, z_enc, p1, p2 = _grads(False)
    assert z1.requires_grad and z1.grad_fn is not None
    g_z1 = torch.autograd.grad(loss, z1, retain_graph=True)[0]
    assert g_z1.abs().sum() > 0
    g_total = torch.autograd.grad(loss, z_enc[0], retain_graph=True)[0]
    g_via_p = torch.autograd.grad(0.5 * (-torch.nn.functional.cosine_similarity(p1, z2.detach()).mean()),
                                  z_enc[0], retain_graph=True)[0]
    assert not torch.allclose(g_total, g_via_p, atol=1e-7)


@pytest.mark.parametrize("zero", [True, False])
def test_zero_init_residual_is_a_model_key(zero):
    """model.zero_init_residual (default true, the official code's init): each residual block's last BN weight
    starts at 0, so every block starts as the identity; false keeps torchvision's BN init (weights 1)."""
    assert ModelConfig().zero_init_residual is True
    net = build_model(ModelConfig(arch="resnet18", dim=64, pred_dim=16, zero_init_residual=zero))
    last = [m.bn2.weight for layer in ("layer1", "layer2", "layer3", "layer4") for m in getattr(net.encoder, layer)]
    assert len(last) == 8
    assert all(torch.equal(w, torch.zeros_like(w) if zero else torch.ones_like(w)) for w in last)
    assert torch.equal(net.encoder.layer1[0].bn1.weight, torch.ones(64))  # the other BNs: weight 1 either way


def _bn_layout(head):
    """[(Linear has bias, bias trained, followed by BN, that BN's affine)] of an MLP head."""
    mods = list(head)
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            bn = isinstance(nxt, nn.BatchNorm1d)
            out.append((m.bias is not None, m.bias is not None and m.bias.requires_grad, bn, bn and nxt.affine))
    return out


@pytest.mark.parametrize("head_bn,affine,proj,pred", [
    # (bias, bias trained, BN after, BN affine) per Linear: 3-layer projector, 2-layer predictor (Table 3)
    ("none", False, [(True, True, False, False)] * 3, [(True, True, False, False)] * 2),
    ("hidden", False, [(False, False, True, True)] * 2 + [(True, True, False, False)],
     [(False, False, True, True), (True, True, False, False)]),
    ("hidden_proj_out", False, [(False, False, True, True)] * 2 + [(True, False, True, False)],
     [(False, False, True, True), (True, True, False, False)]),
    ("hidden_proj_out", True, [(False, False, True, True)] * 2 + [(True, False, True, True)],
     [(False, False, True, True), (True, True, False, False)]),
    ("all", False, [(False, False, True, True)] * 2 + [(True, False, True, False)],
     [(False, False, True, True), (True, False, True, True)]),
])
def test_head_bn_variants_have_the_right_modules_and_biases(head_bn, affine, proj, pred):
    """model.head_bn / model.proj_out_bn_affine (Table 3): where a BN is removed the Linear before it trains a
    bias; before a BN a hidden Linear has none and an output Linear's bias is kept but untrained."""
    m = build_model(ModelConfig(arch="resnet18", dim=32, pred_dim=8, proj_layers=3, head_bn=head_bn,
                                proj_out_bn_affine=affine))
    assert _bn_layout(m.encoder.fc) == proj
    assert _bn_layout(m.predictor) == pred
    n_bn = sum(isinstance(x, nn.BatchNorm1d) for x in (*m.encoder.fc, *m.predictor))
    assert n_bn == {"none": 0, "hidden": 3, "hidden_proj_out": 4, "all": 5}[head_bn]
    with torch.no_grad():
        assert m(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))[0].shape == (4, 32)


def test_default_heads_are_the_official_ones():
    """The defaults are the paper's heads: the same modules and, from one seed, the same initial weights as the
    explicit default keys."""
    torch.manual_seed(3)
    a = build_model(ModelConfig(arch="resnet18", dim=32, pred_dim=8))
    torch.manual_seed(3)
    b = build_model(ModelConfig(arch="resnet18", dim=32, pred_dim=8, predictor="trained",
                                head_bn="hidden_proj_out", proj_out_bn_affine=False))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "encoder.fc.6.weight" in sa and "encoder.fc.7.running_mean" in sa and "encoder.fc.7.weight" not in sa


def test_predictor_none_and_fixed():
    """model.predictor: "none" (Table 1a) makes p = z with no predictor weights; "fixed" (Table 1b) keeps h at
    its random init, no parameter of it trainable."""
    torch.manual_seed(0)
    none = build_model(ModelConfig(arch="resnet18", dim=32, pred_dim=8, predictor="none"))
    assert isinstance(none.predictor, nn.Identity)
    assert not any(k.startswith("predictor.") for k in none.state_dict())
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    p1, p2, z1, z2 = none(x1, x2)
    assert torch.equal(p1, z1) and p1.requires_grad and not z1.requires_grad
    fixed = build_model(ModelConfig(arch="resnet18", dim=32, pred_dim=8, predictor="fixed"))
    assert all(not p.requires_grad for p in fixed.predictor.parameters())
    assert all(p.requires_grad for p in fixed.encoder.layer1.parameters())
    with pytest.raises(ValueError, match="unknown predictor 'on'"):
        SimSiam("resnet18", predictor="on")


def test_forward_predicts_only_the_views_asked_for():
    """`predict`: the views without a prediction are pure targets: p is None, z has no graph; more views give
    more outputs. The default call equals the explicit all-views one."""
    torch.manual_seed(0)
    m = SimSiam("resnet18", dim=32, pred_dim=8, proj_layers=2).eval()
    xs = [torch.randn(3, 3, 32, 32) for _ in range(4)]
    p1, p2, z1, z2 = m(xs[0], xs[1])
    q1, q2, y1, y2 = m(xs[0], xs[1], predict=(0, 1))
    assert all(torch.equal(a, b) for a, b in ((p1, q1), (p2, q2), (z1, y1), (z2, y2)))
    out = m(*xs, predict=(0, 2))
    assert len(out) == 8 and out[1] is None and out[3] is None
    assert out[0].requires_grad and out[2].requires_grad
    assert out[5].grad_fn is None and torch.equal(out[4], z1)
