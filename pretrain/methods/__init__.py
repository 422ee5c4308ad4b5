"""The pretraining methods of the paper's comparison tables (Tables 4, 5; Sec. 6.2, Fig. 3) on one pretrainer.

    method=simsiam (default) | byol | simclr | moco | swav       (pretrain.defaults.PretrainConfig.method)

The backbone, the projector and predictor builders (pretrain.model), the data, the stage frame, checkpoints,
resume, requeue and the SLURM paths are shared. A method's module (pretrain/methods/<name>.py) holds only what
truly differs, behind three functions:

    check(cfg)                                  refuse a combination without meaning (ConfigError, one line)
    build_model(cfg) -> nn.Module               the online network: .encoder (backbone + projector) and
                                                .predictor as pretrain.model.SimSiam, plus what the method trains
                                                besides (SwAV's prototypes)
    build_objective(cfg, model, context) -> objective

An objective is called once per step, objective(model, views, batch_indices) -> (loss, z1) (z1: the first
view's projection, detached, for the collapse monitor), and follows the protocol of pretrain.loss.Objective:
before_step(model, loader, epoch=, step_in_epoch=, step=) -> batch indices or None,
before_optimizer_step(model, step) (after the backward pass, the gradients unscaled under fp16, before the
optimiser's update: SwAV drops its frozen prototypes' gradient; a no-op elsewhere), after_step(model, step),
stateful, state_dict() / load_state_dict(state) (what the checkpoint's "target" keeps: a target copy, a queue).

Keys that only some methods read (OWN_KEYS) are refused, with a non-default value, under a method that does not
read them; `DISPLAY` is the name results.json and the tables give the method.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from ..config import ConfigError, flatten, to_dict
from ..defaults import PretrainConfig

METHODS = ("simsiam", "byol", "simclr", "moco", "swav")
DISPLAY = {"simsiam": "SimSiam", "byol": "BYOL", "simclr": "SimCLR", "moco": "MoCo v2", "swav": "SwAV"}

# key -> the methods that read it; every other key is read by every method
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "model.target_every": ("simsiam",),
    "model.target_momentum": ("simsiam", "byol", "moco"),
    "model.target_momentum_schedule": ("byol", "moco"),
    "model.queue_size": ("moco",),
    "model.prototypes": ("swav",),
    "loss.similarity": ("simsiam",),
    "loss.symmetrisation": ("simsiam", "moco"),
    "loss.temperature": ("simclr", "moco", "swav"),
    "loss.sinkhorn_iters": ("swav",),
    "loss.sinkhorn_epsilon": ("swav",),
    "optim.freeze_prototypes_steps": ("swav",),
}


@dataclasses.dataclass(frozen=True)
class Context:
    """What an objective may need from the run: training images (a per-image store), the per-rank batch, the
    run's number of SGD steps (a momentum schedule) and the training device."""
    num_images: int | None = None
    batch_per_rank: int = 0
    total_steps: int = 1
    device: Any = None


def method_module(name: str):
    """The module of method `name` (ConfigError naming the key for an unknown one)."""
    if name not in METHODS:
        raise ConfigError(f"method: '{name}' is not one of {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")


def foreign_keys(cfg: PretrainConfig) -> list[str]:
    """The OWN_KEYS set to a non-default value although cfg.method does not read them."""
    now, default = flatten(to_dict(cfg)), flatten(to_dict(PretrainConfig()))
    return [k for k, readers in OWN_KEYS.items() if cfg.method not in readers and now[k] != default[k]]


def check(cfg: PretrainConfig) -> None:
    """Refuse an unknown method, a key its method does not read, and what the method's own check refuses."""
    module = method_module(cfg.method)
    foreign = foreign_keys(cfg)
    if foreign:
        raise ConfigError(f"method={cfg.method} does not read {', '.join(f'{k}={flatten(to_dict(cfg))[k]}' for k in foreign)}"
                          f": remove {'it' if len(foreign) == 1 else 'them'} (or choose the method that reads "
                          f"{'it' if len(foreign) == 1 else 'them'})")
    module.check(cfg)


def build_model(cfg: PretrainConfig):
    return method_module(cfg.method).build_model(cfg)


def build_objective(cfg: PretrainConfig, model, context: Context = Context()):
    return method_module(cfg.method).build_objective(cfg, model, context)


def display_name(method: str) -> str:
    return DISPLAY.get(method, method)
