"""Model parts: the C4 ROI head with a norm after res5 (registered in detectron2's ROI_HEADS_REGISTRY when this
module is imported, as detectron2 registers its own heads) and the zero-init of residual blocks."""
from __future__ import annotations

import torch
from torch import nn

from .shim import import_detectron2

import_detectron2()
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet  # noqa: E402
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads  # noqa: E402

BASIC_BLOCKS = {18: 2, 34: 3}  # res5 blocks of the ResNets built from basic (two 3x3 conv) blocks


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """The C4 ROI head with a normalisation layer after res5 (MoCo's detection recipe): with BN in every
    block of a fine-tuned backbone, the res5 output feeding the box/mask predictors is normalised too.

    For MODEL.RESNETS.DEPTH 18 or 34 the head's res5 is made of basic blocks, as in that ResNet (detectron2's
    own C4 head always builds bottleneck blocks), so the whole of a ResNet-18 transfers: R18-C4."""

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        if r.DEPTH in BASIC_BLOCKS:
            out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
            n = BASIC_BLOCKS[r.DEPTH]
            seq = nn.Sequential(*ResNet.make_stage(BasicBlock, n, stride_per_block=[2] + [1] * (n - 1),
                                                   in_channels=out_channels // 2, out_channels=out_channels,
                                                   norm=r.NORM))
        else:
            seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(r.NORM, out_channels))
        return seq, out_channels


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last norm of every residual block (conv2 of a basic block, conv3 of a bottleneck),
    in the backbone and in the ROI head's res5, so that each block starts as the identity: torchvision's
    `zero_init_residual`, the init of the official SimSiam pretraining. Returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    with torch.no_grad():
        for b in blocks:
            (b.conv3 if isinstance(b, BottleneckBlock) else b.conv2).norm.weight.zero_()
    return len(blocks)
