"""The detectron2 config of a detection run: defaults, our SIMSIAM keys, the preset or YAML file, the
torchvision overlay, KEY VALUE overrides; the norm policy (SIMSIAM.NORM); the input normalisation that the
weights' pretraining recorded. Importing this module imports no detectron2 (build_config does, when called).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import yaml

from pretrain.config import ConfigError, find_preset

log = logging.getLogger("simsiam.detect")
OVERLAY = "torchvision.yaml"
NORMS = ("auto", "BN", "SyncBN", "naiveSyncBN")
SYNC_NORMS = ("SyncBN", "naiveSyncBN")
DEPTH_ARCH = {18: "resnet18", 50: "resnet50"}  # MODEL.RESNETS.DEPTH -> the backbone our converters write
DEFAULT_CACHE = "~/.cache/simsiam"  # embedded data and VOC evaluation copies
PIXEL_KEYS = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")


def add_simsiam_config(cfg):
    """Our keys, all under SIMSIAM; a preset, a YAML file or a KEY VALUE override may set them."""
    from detectron2.config import CfgNode as CN

    cfg.SIMSIAM = CN()
    cfg.SIMSIAM.NORM = "auto"             # auto | BN | SyncBN | naiveSyncBN (see resolve_norm)
    cfg.SIMSIAM.MAX_TRAIN_IMAGES = 0      # >0: train on the first N images of each training set only
    cfg.SIMSIAM.MAX_TEST_IMAGES = 0       # >0: evaluate on the first N test images only
    cfg.SIMSIAM.VOC_YEAR = 2007           # metric of custom VOC folders: 2007 = 11-point AP, 2012 = area
    cfg.SIMSIAM.CLASSES = []              # class names of custom VOC folders ([] = discovered from the XML)
    cfg.SIMSIAM.BENCHMARK = ""            # dataset name in results.json ("" = derived from the datasets)
    cfg.SIMSIAM.KEEP_CHECKPOINTS = 1      # periodic snapshots kept per trial (besides model_final.pth)
    cfg.SIMSIAM.ZERO_INIT_RESIDUAL = False  # --weights random only: every residual block starts as the identity
    return cfg


def _merge_file(cfg, path: Path) -> None:
    """Merge a detectron2 YAML file and its _BASE_ chain, read with yaml.safe_load only: a tag that builds a
    Python object (!!python/object/apply:...) is a ConfigError naming the file that holds it, and nothing of
    it runs (detectron2's merge_from_file falls back to yaml.unsafe_load unless allow_unsafe=False)."""
    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(path, e)) from None
    except KeyError as e:
        raise ConfigError(f"{path}: unknown config key ({e.args[0] if e.args else e})") from None
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """One line naming the file (a _BASE_ of `path` when the problem is there), the line and the problem."""
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}:{mark.line + 1}" if mark is not None else str(path)
    if mark is not None and Path(mark.name) != Path(path):
        where += f" (a _BASE_ of {path})"
    if isinstance(e, yaml.constructor.ConstructorError):
        return f"{where}: refused: YAML tags that build Python objects are not allowed ({e.problem})"
    return f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})"


def build_config(config: str, overrides: Sequence[str] = (), caffe_weights: bool = False):
    """detectron2 defaults + our SIMSIAM keys + the preset/YAML + the torchvision overlay + KEY VALUE overrides."""
    from .shim import import_detectron2

    import_detectron2()
    from detectron2.config import get_cfg

    from . import heads  # noqa: F401 - registers Res5ROIHeadsExtraNorm, the ROI head our presets name

    cfg = add_simsiam_config(get_cfg())
    _merge_file(cfg, find_preset(config, "detection"))
    if not caffe_weights:
        _merge_file(cfg, find_preset(OVERLAY, "detection"))
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number: {' '.join(overrides)}")
    for key, value in zip(overrides[0::2], overrides[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except KeyError:
            raise ConfigError(f"override {key}: unknown config key") from None
        except (ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"override {key} {value}: {e}") from None
    if cfg.SIMSIAM.NORM not in NORMS:
        raise ConfigError(f"SIMSIAM.NORM={cfg.SIMSIAM.NORM!r}: expected one of {', '.join(NORMS)}")
    return cfg


def resolve_norm(requested: str, configured: str, world_size: int, cuda: bool) -> str:
    """The normalisation actually used for MODEL.RESNETS.NORM.

    requested: SIMSIAM.NORM or --norm; anything but "auto" is used as it is.
    configured: MODEL.RESNETS.NORM of the config, "naiveSyncBN" in the presets (MoCo's choice: "SyncBN seems
    to cause larger variance"). "auto" only adapts the synchronised norms (SyncBN, naiveSyncBN); any other
    configured norm (BN, FrozenBN, GN, ...) is kept.
      - one process: "BN". A synchronised BN over one process normalises with that process's batch, as BN
        does (detectron2's NaiveSyncBatchNorm runs BatchNorm2d's forward when the world size is 1).
      - several CUDA processes (multi-GPU): the configured norm, so naiveSyncBN by default and SyncBN when
        the config asks for it.
      - several CPU processes: "naiveSyncBN" (its all-reduce works with any backend; SyncBN needs CUDA).
    """
    if requested != "auto":
        return requested
    if configured not in SYNC_NORMS:
        return configured
    if world_size == 1:
        return "BN"
    return configured if cuda else "naiveSyncBN"


def config_arch(cfg) -> str:
    """The backbone the config builds, in our converters' names (resnet50 for R50-C4, resnet18 for R18-C4)."""
    depth = cfg.MODEL.RESNETS.DEPTH
    return DEPTH_ARCH.get(depth, f"resnet{depth}")


def apply_input_normalisation(cfg, normalisation, overrides: Sequence[str], where: str) -> dict | None:
    """Weights whose pretraining recorded its input normalisation (source["normalisation"]: {"mean", "std"},
    RGB, 0-1 scale) set MODEL.PIXEL_MEAN = 255*mean and MODEL.PIXEL_STD = 255*std, in the channel order of
    INPUT.FORMAT; a key given as a KEY VALUE override keeps its value. Logs the values used; returns
    {key: value} of what it set (None when the weights record nothing). `where` names the weights."""
    if not normalisation:
        return None
    given = set(overrides[0::2])
    pixel = {key: _pixel_values(normalisation, name, where)
             for key, name in zip(PIXEL_KEYS, ("mean", "std"))}
    if cfg.INPUT.FORMAT == "BGR":
        pixel = {k: v[::-1] for k, v in pixel.items()}
    applied = {k: v for k, v in pixel.items() if k not in given}
    for key, value in applied.items():
        setattr(cfg.MODEL, key.split(".")[1], value)
    log.info("input normalisation of %s (its pretraining's mean/std x255, %s): MODEL.PIXEL_MEAN %s, "
             "MODEL.PIXEL_STD %s%s", where, cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD),
             "".join(f"; {k} kept from the command line" for k in PIXEL_KEYS if k in given))
    return applied


def _pixel_values(normalisation, name: str, where: str) -> list[float]:
    values = normalisation.get(name) if isinstance(normalisation, dict) else None
    ok = isinstance(values, (list, tuple)) and len(values) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or (name == "std" and min(values) <= 0):
        raise ConfigError(f"{where}: source normalisation {name} {values!r}: expected 3 numbers"
                          f"{' > 0' if name == 'std' else ''} (0-1 scale, RGB)")
    return [255.0 * float(v) for v in values]
