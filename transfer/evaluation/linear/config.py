"""The config of `simsiam linear` (defaults in code, deltas in eval_configs/linear/*.yaml) and its checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pretrain import config as config_mod
from pretrain.data import EMBEDDED
from pretrain.defaults import ImageFolderData
from transfer.evaluation.convert import EvalModelConfig, check_eval_model

ConfigError = config_mod.ConfigError


@dataclass(frozen=True)
class LinearDataConfig(ImageFolderData):
    """The shared data description (pretrain.defaults.ImageFolderData) plus the evaluation views."""
    root: str = ""                  # an ImageFolder tree (train/ + val/ or test/), or "embedded"; required
    mean: tuple[float, ...] = ()    # empty: the checkpoint's pretraining normalisation (else ImageNet's)
    std: tuple[float, ...] = ()
    crop_fraction: float = 0.0      # validation: Resize(size / crop_fraction) + CenterCrop(size); 0: the shared
    #                                 rule (pretrain.augment.eval_crop_fraction: 1.0 up to 64 px, else 0.875)
    augment: bool = True            # training: RandomResizedCrop + flip; false: the validation transform
    val_limit_per_class: int = 0    # >0: first N held-out images of each class


@dataclass(frozen=True)
class LinearOptimConfig:
    optimizer: str = "lars"         # lars (LARC semantics) | sgd
    base_lr: float = 0.1            # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"        # cosine (per epoch, to 0) | constant
    trust_coefficient: float = 0.001
    eps: float = 1e-8


@dataclass(frozen=True)
class LinearTrainConfig:
    epochs: int = 90
    batch_size: int = 4096          # global batch, split evenly across ranks
    eval_batch_size: int = 256      # per rank
    seed: int = 0
    cache_features: bool = False    # needs data.augment=false: extract features once, train the head on them
    amp: str = "none"               # none | bf16 (autocast of the backbone forward, on CUDA and CPU)
    channels_last: bool = False
    gpu_augment: bool = False       # decode + augment on the device (pretrain.fastdata, task "linear")
    print_freq: int = 50
    eval_every: int = 1             # validate every N epochs (and after the last)
    max_steps_per_epoch: int = 0    # >0 truncates epochs (smoke runs)
    stop_after_epochs: int = 0      # >0 stops cleanly after this many epochs in this invocation (tests)
    tensorboard: bool = True


@dataclass(frozen=True)
class LinearGridConfig:
    enabled: bool = False           # true: one head per (base lr, weight decay), picked on a held-out slice
    base_lrs: tuple[float, ...] = ()        # lr = base_lr * batch_size / 256; empty: the default grid
    weight_decays: tuple[float, ...] = ()   # empty: optim.weight_decay (LARS), 0, 1e-5, 1e-4 (SGD)
    holdout_fraction: float = 0.1   # of the training split, held out to pick the head ...
    holdout_max_images: int = 10000  # ... at most this many images
    holdout_seed: int = 0           # which images are held out


@dataclass(frozen=True)
class LinearConfig:
    weights: str = ""               # checkpoint to evaluate (any kind transfer.evaluation.convert reads) or "random"
    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    optim: LinearOptimConfig = field(default_factory=LinearOptimConfig)
    train: LinearTrainConfig = field(default_factory=LinearTrainConfig)
    grid: LinearGridConfig = field(default_factory=LinearGridConfig)


def check_config(cfg: LinearConfig) -> None:
    """ConfigError (one line, exit 2) for a config that cannot run."""
    check_eval_model(cfg.weights, cfg.model)
    o, t = cfg.optim, cfg.train
    if t.cache_features and cfg.data.augment:
        raise ConfigError("train.cache_features=true needs data.augment=false (cached features are computed once, "
                          "without random crops)")
    for key, value, known in (("train.amp", t.amp, ("none", "bf16")), ("optim.schedule", o.schedule,
                              ("cosine", "constant")), ("optim.optimizer", o.optimizer, ("lars", "sgd"))):
        if value not in known:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(known)}")
    if t.epochs < 1 or t.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be positive")
    _check_grid(cfg.grid)


def _check_grid(g: LinearGridConfig) -> None:
    if not g.enabled:
        if g.base_lrs or g.weight_decays:
            raise ConfigError("grid.base_lrs / grid.weight_decays need grid.enabled=true")
        return
    if not 0.0 < g.holdout_fraction < 1.0:
        raise ConfigError(f"grid.holdout_fraction: {g.holdout_fraction} is not between 0 and 1")
    if g.holdout_max_images < 1:
        raise ConfigError(f"grid.holdout_max_images: {g.holdout_max_images} is not positive")
    if any(not math.isfinite(v) or v < 0 for v in (*g.base_lrs, *g.weight_decays)):
        raise ConfigError("grid.base_lrs and grid.weight_decays must be finite and >= 0")
    if len(set(g.base_lrs)) != len(g.base_lrs) or len(set(g.weight_decays)) != len(g.weight_decays):
        raise ConfigError("grid.base_lrs / grid.weight_decays: a value is repeated")


def require_root(cfg: LinearConfig) -> None:
    """ConfigError when data.root is not given (linear evaluation has no default data)."""
    if not str(cfg.data.root).strip():
        raise ConfigError(f"data.root: not given; set data.root=<folder> (an ImageFolder tree with train/ and val/ "
                          f"or test/), or data.root={EMBEDDED} for the built-in generated data")
