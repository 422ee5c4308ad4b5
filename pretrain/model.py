"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021), Section 3 and Fig. 1:
encoder f = backbone + projection MLP, predictor h, and a stop-gradient on the target branch.

    model = SimSiam("resnet50", dim=2048, pred_dim=512)
    p1, p2, z1, z2 = model(x1, x2)              # two augmented views of the same images
    loss = simsiam_loss(p1, p2, z1, z2)          # pretrain.loss: D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2

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


def projection_mlp(in_dim: int, dim: int, layers: int) -> nn.Sequential:
    """The projection MLP (Section 4.4): Linear-BN-ReLU blocks, then Linear-BN(affine=False); the last
    Linear's bias is not trained (the BN after it would cancel it)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        d = dim
    last = nn.Linear(d, dim)
    last.bias.requires_grad = False  # followed by BN: a bias would be a no-op
    mods += [last, nn.BatchNorm1d(dim, affine=False)]
    return nn.Sequential(*mods)


def prediction_mlp(dim: int, pred_dim: int) -> nn.Sequential:
    """The prediction MLP h (Section 4.4): a bottleneck Linear(dim, pred_dim)-BN-ReLU-Linear(pred_dim, dim)."""
    return nn.Sequential(
        nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
        nn.Linear(pred_dim, dim),
    )


class SimSiam(nn.Module):
    """f (backbone + projector) shared by both views, h (predictor); forward returns (p1, p2, z1, z2) with the
    targets z already behind the stop-gradient (Algorithm 1; `stop_gradient=False` is the ablation of
    Section 4.1, Fig. 2, which collapses)."""

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512,
                 proj_layers: int = 3, stop_gradient: bool = True, zero_init_residual: bool = True):
        super().__init__()
        self.arch = arch
        self.stop_gradient = stop_gradient
        self.encoder = build_backbone(arch, zero_init_residual)
        self.encoder.fc = projection_mlp(feature_dim(self.encoder), dim, proj_layers)
        self.predictor = prediction_mlp(dim, pred_dim)

    def stopgrad(self, z: torch.Tensor) -> torch.Tensor:
        """The paper's stop-gradient (Eq. 3): z is a constant target. Turning it off (model.stop_gradient=false)
        is the collapse ablation."""
        return z.detach() if self.stop_gradient else z

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """(p1, p2, stopgrad(z1), stopgrad(z2)) for two views of a batch (Algorithm 1)."""
        z1, z2 = self.encoder(x1), self.encoder(x2)    # projections, N x dim
        p1, p2 = self.predictor(z1), self.predictor(z2)  # predictions, N x dim
        return p1, p2, self.stopgrad(z1), self.stopgrad(z2)

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
                   model_cfg.stop_gradient, model_cfg.zero_init_residual)
