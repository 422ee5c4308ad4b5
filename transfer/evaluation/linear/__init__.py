"""Linear evaluation on frozen features (the ImageNet protocol of the SimSiam paper / official code).

    simsiam linear --weights CKPT --output DIR data.root=ROOT [--config PRESET] [key=value ...]
    python -m transfer.evaluation.linear ...

The backbone (any checkpoint `transfer.evaluation.convert` reads, or `--weights random` for a random-init baseline
of `model.arch`, with `model.zero_init_residual`) is frozen and kept in eval mode for the whole run, also under
DDP (only the heads are wrapped). A linear classifier (fc init N(0, 0.01), bias 0) on the pooled features
(2048-d for ResNet-50, 512-d for ResNet-18) is trained with LARS (transfer.evaluation.lars: LARC semantics,
trust 0.001, no clipping), batch 4096, lr = 0.1 x batch / 256, weight decay 0, momentum 0.9, cosine decay over
90 epochs; RandomResizedCrop + flip for training, Resize(256) + CenterCrop(224) for validation. data.root is
required (an ImageFolder tree, or `embedded` for the built-in generated data); the input normalisation is
data.mean / data.std when given, else the one the checkpoint records, else ImageNet's. Presets in
eval_configs/linear/ change what differs (imagenet_sgd: SGD lr 30 at batch 256; cifar10; demo; grid).

Grid mode (`grid.enabled=true`, preset `grid`) trains one head per (base lr, weight decay) of `grid.base_lrs` x
`grid.weight_decays` in the same pass (default: `heads.default_grid`); the protocol's single head is the grid of
one. The heads train on the training split minus a held-out slice (`grid.holdout_fraction` of it, at most
`grid.holdout_max_images`, drawn with `grid.holdout_seed`); the head with the best held-out top-1 after the last
epoch is picked and its validation top-1/top-5 reported as "best of grid". A head whose weights become inf/NaN
is never picked. A pick at the lowest or highest base lr, or at the largest weight decay, is logged and listed
in results.json's grid.at_edge with the direction in which to extend the grid. A grid result never enters a
paper column.

After training, a checksum of the backbone's state dict (weights and BN statistics) is compared with the one
taken before: any change is an error (`BackboneChangedError`). The run folder holds config.yaml, metrics.jsonl
(stage "linear", one line per epoch: loss, lr, train top-1, val top-1/top-5, time, images/s; in grid mode those
of the picked head plus a "grid" entry with every head's), checkpoint.pth (heads + optimizer, for resume:
rerunning the same command continues) and results.json (task "linear", top-1/top-5 in percent, the protocol
with the normalisation used; in grid mode a "grid" section: every head's lr, weight decay, held-out and
validation accuracy, the pick, its edges and the held-out slice's size and seed).

Where what is: `config` (keys, defaults, checks, data resolution), `heads` (the grid, its optimizer, losses,
the pick, the edges), `backbone` (freezing, checksum), `sources` (the three data paths behind one interface),
`evaluation` (`run` and the `LinearEvaluation` run state), `records` (metrics lines, results.json sections),
`cli` (the command).
"""
from __future__ import annotations

from .backbone import BackboneChangedError, state_checksum
from .cli import build_parser, main
from .config import (LinearConfig, LinearDataConfig, LinearGridConfig, LinearOptimConfig, LinearTrainConfig,
                     init_lr)
from .evaluation import run

__all__ = ["BackboneChangedError", "LinearConfig", "LinearDataConfig", "LinearGridConfig", "LinearOptimConfig",
           "LinearTrainConfig", "build_parser", "init_lr", "main", "run", "state_checksum"]
