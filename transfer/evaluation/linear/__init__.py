"""Linear evaluation on frozen features (the ImageNet protocol of the SimSiam paper / official code).

    simsiam linear --weights CKPT --output DIR data.root=ROOT [--config PRESET] [key=value ...]

Linear heads (N(0, 0.01), bias 0) on the frozen backbone's pooled features, trained with LARS (pretrain.lars),
batch 4096, lr 0.1 x batch / 256, cosine over 90 epochs. The protocol's one head is a grid of one; grid mode
(`grid.enabled=true`) trains one head per (base lr, weight decay) and picks on a held-out slice of the training
split; a pick at the grid's edge is logged and in results.json's grid.at_edge. Presets: eval_configs/linear/.

Modules: `config` (keys, checks), `heads` (grid, optimizer, losses, pick, edges), `sources` (the three data
paths behind one interface), `evaluation` (`run` and the run state `LinearEvaluation`), `records` (metrics lines,
results.json sections), `cli` (the command). The frozen backbone, the weights' data settings and the labelled
folders are transfer.evaluation.frozen's, shared with kNN.
"""
from __future__ import annotations

from .cli import build_parser, main
from .config import LinearConfig, LinearDataConfig, LinearGridConfig, LinearOptimConfig, LinearTrainConfig
from .evaluation import run

__all__ = ["LinearConfig", "LinearDataConfig", "LinearGridConfig", "LinearOptimConfig", "LinearTrainConfig",
           "build_parser", "main", "run"]
