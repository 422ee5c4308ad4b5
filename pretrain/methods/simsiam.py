"""SimSiam itself (Chen & He, CVPR 2021): the model of pretrain.model, the loss and its ablations of
pretrain.loss, the target branches of pretrain.target. Nothing here beyond wiring: the paper's path reads in
those three modules."""
from __future__ import annotations

from ..loss import Objective, check_switches
from ..model import build_model as build_simsiam
from ..target import build_target


def check(cfg) -> None:
    check_switches(cfg)


def build_model(cfg):
    return build_simsiam(cfg.model)


def build_objective(cfg, model, context):
    return Objective(cfg.loss, build_target(cfg.model, model, context.num_images, context.device,
                                            context.batch_per_rank, context.total_steps))
