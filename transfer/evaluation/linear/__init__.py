"""Linear evaluation on frozen features (the ImageNet protocol of the SimSiam paper / official code).

    simsiam linear --weights CKPT --output DIR data.root=ROOT [--config PRESET] [key=value ...]
    python -m transfer.evaluation.linear ...

The backbone (a checkpoint `transfer.evaluation.convert` reads, or `--weights random` with `model.arch`) is
frozen in eval mode; linear heads (N(0, 0.01), bias 0) on its pooled features are trained with LARS
(transfer.evaluation.lars), batch 4096, lr 0.1 x batch / 256, weight decay 0, momentum 0.9, cosine over 90
epochs, RandomResizedCrop + flip / Resize(256) + CenterCrop(224). data.root is required (a folder, or
`embedded`); the normalisation is data.mean / data.std, else the checkpoint's, else ImageNet's. Presets:
eval_configs/linear/. The protocol trains one head; grid mode (`grid.enabled=true`) one per (base lr, weight
decay), the protocol's head being the grid of one, picked on a held-out slice of the training split ("best of
grid", never a paper column); a pick at the grid's edge is logged and in results.json's grid.at_edge. A change
of the backbone's state dict during the run is an error (BackboneChangedError). The run folder: config.yaml,
metrics.jsonl, checkpoint.pth (rerunning the same command resumes) and results.json.

Modules: `config` (keys, checks, data resolution), `heads` (grid, optimizer, losses, pick, edges), `backbone`
(freezing, checksum), `sources` (the three data paths behind one interface), `evaluation` (`run` and the run
state `LinearEvaluation`), `records` (metrics lines, results.json sections), `cli` (the command).
"""
from __future__ import annotations

from .backbone import BackboneChangedError, state_checksum
from .cli import build_parser, main
from .config import (LinearConfig, LinearDataConfig, LinearGridConfig, LinearOptimConfig, LinearTrainConfig,
                     init_lr)
from .evaluation import run

__all__ = ["BackboneChangedError", "LinearConfig", "LinearDataConfig", "LinearGridConfig", "LinearOptimConfig",
           "LinearTrainConfig", "build_parser", "init_lr", "main", "run", "state_checksum"]
