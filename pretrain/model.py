"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021), Section 3 and Fig. 1:
encoder f = backbone + projection MLP, predictor h, and a stop-gradient on the target branch.

    model = SimSiam("resnet50", dim=2048, pred_dim=512)
    p1, p2, z1, z2 = model(x1, x2)              # two augmented views of the same images
    loss = simsiam_loss(p1, p2, z1, z2)          # pretrain.loss: D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2

The paper's ablations of the architecture are constructor arguments (config keys model.predictor,
model.head_bn, model.proj_out_bn_affine): no predictor or a fixed random one (Section 4.2, Table 1) and BN in
the heads (Section 4.4, Table 3). The target branch's ablations (Section 5.2) live in pretrain.target, those of
the loss (Sections 4.5, 4.6) in pretrain.loss.

The module layout follows the official code: `encoder` is a torchvision ResNet whose `fc` is the
projector, `predictor` is the bottleneck MLP. So our state-dict keys are the official ones without the
DistributedDataParallel `module.` prefix, and converters treat both alike.
"""
from __future__ import annotations

import torch
from torch import nn
import torchvision

ARCHS = ("resnet50", "resnet18", "resnet18_cifar")


def build_backbone(arch: str, zero_init_residual: bool = True) -> nn.Module:
    """A torchvision ResNet with the last BN of each residual block zero-initialised (as in the official code:
    each block starts as the identity); `zero_init_residual=False` keeps torchvision's BN init (weights 1)."""
    if arch == "resnet50":
        return torchvision.models.resnet50(zero_init_residual=zero_init_residual)
    if arch in ("resnet18", "resnet18_cifar"):
        net = torchvision.models.resnet18(zero_init_residual=zero_init_residual)
        if arch == "resnet18_cifar":  # the paper's CIFAR variant: 3x3 stride-1 stem, no max-pool
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        return net
    raise ValueError(f"unknown arch '{arch}' (known: {', '.join(ARCHS)})")


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled backbone features (2048 for ResNet-50, 512 for ResNet-18)."""
    fc = backbone.fc
    return fc.in_features if isinstance(fc, nn.Linear) else fc[0].in_features


HEAD_BN = {  # Table 3: which of (projector hidden, projector output, predictor hidden, predictor output) have BN
    "none": (False, False, False, False),
    "hidden": (True, False, True, False),
    "hidden_proj_out": (True, True, True, False),   # the paper's default
    "all": (True, True, True, True),
}
PREDICTOR = ("trained", "none", "fixed")  # not on/off: YAML reads those as booleans


def _linear_bn(d_in: int, d_out: int, bn: bool, affine: bool = True) -> list[nn.Module]:
    """Linear followed by BN, or a Linear with a trainable bias where there is no BN. Before a BN the Linear has
    no bias in hidden layers; at an output it keeps the official code's bias, left untrained (a no-op)."""
    if not bn:
        return [nn.Linear(d_in, d_out)]
    return [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out, affine=affine)]


def projection_mlp(in_dim: int, dim: int, layers: int, hidden_bn: bool = True, out_bn: bool = True,
                   out_affine: bool = False, hidden_dim: int = 0) -> nn.Sequential:
    """The projection MLP (Section 4.4): Linear-BN-ReLU blocks, then Linear-BN(affine=False); the last
    Linear's bias is not trained (the BN after it would cancel it). Table 3's variants drop BNs (hidden_bn,
    out_bn: the Linear then trains a bias) or give the output BN its affine (out_affine). The hidden layers are
    `dim` wide unless `hidden_dim` says otherwise (the other methods' projectors, pretrain.methods)."""
    mods: list[nn.Module] = []
    d, hidden = in_dim, hidden_dim or dim
    for _ in range(layers - 1):
        mods += _linear_bn(d, hidden, hidden_bn) + [nn.ReLU(inplace=True)]
        d = hidden
    last = nn.Linear(d, dim)
    if out_bn:
        last.bias.requires_grad = False  # followed by BN: a bias would be a no-op
        mods += [last, nn.BatchNorm1d(dim, affine=out_affine)]
    else:
        mods += [last]
    return nn.Sequential(*mods)


def prediction_mlp(dim: int, pred_dim: int, hidden_bn: bool = True, out_bn: bool = False) -> nn.Sequential:
    """The prediction MLP h (Section 4.4): a bottleneck Linear(dim, pred_dim)-BN-ReLU-Linear(pred_dim, dim).
    Table 3: without the hidden BN its first Linear trains a bias; "all" adds a BN at its output (the
    Linear's bias then untrained, as at the projector's output)."""
    mods = _linear_bn(dim, pred_dim, hidden_bn) + [nn.ReLU(inplace=True), nn.Linear(pred_dim, dim)]
    if out_bn:
        mods[-1].bias.requires_grad = False
        mods.append(nn.BatchNorm1d(dim))
    return nn.Sequential(*mods)


class SimSiam(nn.Module):
    """f (backbone + projector) shared by both views, h (predictor); forward returns (p1, p2, z1, z2) with the
    targets z already behind the stop-gradient (Algorithm 1; `stop_gradient=False` is the ablation of
    Section 4.1, Fig. 2, which collapses).

    Ablations of Section 4.2 (Table 1): predictor="none" uses p = z (h is the identity), "fixed" keeps h at its
    random init (its parameters do not train; its BN still normalises with the batch statistics).
    head_bn / proj_out_affine: Table 3 (see HEAD_BN)."""

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512,
                 proj_layers: int = 3, stop_gradient: bool = True, zero_init_residual: bool = True,
                 predictor: str = "trained", head_bn: str = "hidden_proj_out", proj_out_affine: bool = False,
                 proj_hidden_dim: int = 0):
        super().__init__()
        if predictor not in PREDICTOR:
            raise ValueError(f"unknown predictor '{predictor}' (known: {', '.join(PREDICTOR)})")
        if head_bn not in HEAD_BN:
            raise ValueError(f"unknown head_bn '{head_bn}' (known: {', '.join(HEAD_BN)})")
        proj_hidden, proj_out, pred_hidden, pred_out = HEAD_BN[head_bn]
        self.arch = arch
        self.stop_gradient = stop_gradient
        self.encoder = build_backbone(arch, zero_init_residual)
        self.encoder.fc = projection_mlp(feature_dim(self.encoder), dim, proj_layers, proj_hidden, proj_out,
                                         proj_out_affine, proj_hidden_dim)
        if predictor == "none":
            self.predictor = nn.Identity()
        else:
            self.predictor = prediction_mlp(dim, pred_dim, pred_hidden, pred_out)
            if predictor == "fixed":
                self.predictor.requires_grad_(False)  # frozen at its random init, left out of the optimiser

    def stopgrad(self, z: torch.Tensor) -> torch.Tensor:
        """The paper's stop-gradient (Eq. 3): z is a constant target. Turning it off (model.stop_gradient=false)
        is the collapse ablation."""
        return z.detach() if self.stop_gradient else z

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *more: torch.Tensor, predict: tuple[int, ...] | None = None):
        """(p1, p2, stopgrad(z1), stopgrad(z2)) for two views of a batch (Algorithm 1).

        More views (x3, x4, ...) give (p1..pn, stopgrad(z1)..stopgrad(zn)). `predict`: the views whose
        prediction is needed (default: all); for the others p is None and, behind the stop-gradient, their z
        is computed without a graph (pure targets: the asymmetric loss of Section 4.6)."""
        if not more and predict is None:
            z1, z2 = self.encoder(x1), self.encoder(x2)    # projections, N x dim
            p1, p2 = self.predictor(z1), self.predictor(z2)  # predictions, N x dim
            return p1, p2, self.stopgrad(z1), self.stopgrad(z2)
        views = (x1, x2) + more
        wanted = range(len(views)) if predict is None else predict
        zs, ps = [], []
        for i, x in enumerate(views):
            if i in wanted or not self.stop_gradient:
                zs.append(self.encoder(x))
            else:
                with torch.no_grad():
                    zs.append(self.encoder(x))
            ps.append(self.predictor(zs[-1]) if i in wanted else None)
        return (*ps, *(self.stopgrad(z) for z in zs))

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (before the projector), as used by kNN / linear evaluation."""
        enc = self.encoder
        fc = enc.fc
        enc.fc = nn.Identity()
        try:
            return enc(x)
        finally:
            enc.fc = fc


def build_model(model_cfg) -> SimSiam:
    """The SimSiam of a `model:` config section (pretrain.defaults.ModelConfig)."""
    return SimSiam(model_cfg.arch, model_cfg.dim, model_cfg.pred_dim, model_cfg.proj_layers,
                   model_cfg.stop_gradient, model_cfg.zero_init_residual, model_cfg.predictor, model_cfg.head_bn,
                   model_cfg.proj_out_bn_affine, model_cfg.proj_hidden_dim)
