"""The checkpoint layouts the converter reads, each as its project's own saving code writes it.

A layout says where the backbone's keys sit in a file, which other keys are dropped on purpose and why,
the pretraining method the file implies, what the file records of its pretraining, and the input
normalisation its network expects when that is not ImageNet's mean / std. `identify(obj)` picks the layout
from the file's content (never from its name); transfer.evaluation.convert does the key accounting.

  kind              file (as written by)                                      backbone keys
  simsiam-suite     {"format": "simsiam-suite/pretrain", "model"} (pretrain/checkpoint.py)  encoder.*
  simsiam-official  {"state_dict": module.encoder.*, module.predictor.*}      module.encoder.*
                    (facebookresearch/simsiam main_simsiam.py save_checkpoint)
  moco              {"state_dict": module.encoder_q.*, encoder_k.*, queue}    module.encoder_q.*
                    (facebookresearch/moco main_moco.py)
  mocov3            {"epoch", "arch", "state_dict", "optimizer", "scaler"}    module.base_encoder.*
                    (facebookresearch/moco-v3 main_moco.py save_checkpoint; moco/builder.py: base_encoder,
                    momentum_encoder, predictor, the encoders' fc replaced by the projector MLP;
                    main_lincls.py keeps module.base_encoder.* without fc)
  dino              {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"[, "fp16_scaler"]}
                    (facebookresearch/dino main_dino.py save_dict; both wrapped in DDP for a ResNet, so
                    module.backbone.* / module.head.*; utils.MultiCropWrapper sets backbone.fc = Identity;
                    eval_linear.py / eval_knn.py take checkpoint_key "teacher" by default)
  swav              flat module.* with projection_head.* and prototypes*.weight (facebookresearch/swav
                    hubconf.py loads swav_800ep_pretrain.pth.tar after removing "module."; src/resnet50.py
                    defines projection_head and prototypes); main_swav.py's {"epoch", "state_dict", ...} too
  solo-learn        Lightning {"state_dict": backbone.*, ..., "pytorch-lightning_version", ...}; older
                    files encoder.* (vturrisi/solo-learn main_linear.py: keys with "backbone" kept,
                    "encoder" read as "backbone"; solo/methods/base.py: backbone (fc = Identity),
                    classifier, momentum_backbone, momentum_classifier; the methods' heads beside them)
  mmpretrain        {"meta", "state_dict": backbone.*, neck.*, head.*} (open-mmlab mmpretrain / mmselfsup:
                    mmengine's CheckpointHook; models/selfsup/*.py: momentum_encoder / target_net =
                    CosineEMA(backbone + neck), MoCo's queue)
  vissl             {"classy_state_dict": {"base_model": {"model": {"trunk": _feature_blocks.*, "heads"}}}}
                    (facebookresearch/vissl extra_scripts/convert_vissl_to_torchvision.py reads that trunk
                    and removes "_feature_blocks.")
  simclr-v1         {"state_dict": torchvision keys with fc} and nothing else (tonylins/simclr-converter
                    convert.py: torch.save({'state_dict': model.state_dict()}); its fc is SimCLR's supervised
                    head). Its network expects pixels / 255 without mean / std (the TF model's input):
                    recorded as normalisation mean 0, std 1.
  torchvision       a flat torchvision ResNet state dict, fc optional: torchvision's own weights, the output
                    of `--to torchvision`, and the hub files of DINO (hubconf.py dino_resnet50: resnet50 with
                    fc = Identity), Barlow Twins (hubconf.py / main.py: model.module.backbone.state_dict())
                    and VICReg (main_vicreg.py: the same; resnet.py pads by 1 then convolves with padding 2,
                    the same zeros as torchvision's padding 3). These files do not say their method: `simsiam
                    table --method` names them.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pretrain.checkpoint import strip_prefix
from pretrain.errors import InputError
from pretrain.methods import display_name
from pretrain.protocol import recipe_of

SUITE_FORMAT = "simsiam-suite/pretrain"
RAW_PIXELS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # pixels / 255 only, RGB
BRANCHES = ("teacher", "student")
_TORCHVISION_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")
_FLAT = ("", "module.")  # prefixes under which only torchvision ResNet names count as the backbone


class ConvertError(InputError, ValueError):
    """A checkpoint that cannot be converted (a layout none of those above, a file that lacks what was asked);
    the message says what was found and what was expected."""


@dataclass(frozen=True)
class Layout:
    """Where one kind of file keeps its backbone and what else it holds."""
    kind: str
    method: str | None                    # the pretraining method the layout implies; None: the file does not say
    backbone: str                         # prefix of the backbone's keys ("" or "module.": flat torchvision names)
    fc: str = "classifier (fc.*)"         # why the backbone's own fc.* is dropped
    drops: tuple[tuple[str, str], ...] = ()  # (exact key, or prefix ending in ".", reason), checked first
    normalisation: Mapping[str, list[float]] | None = None  # 0-1 scale, RGB; None: ImageNet's (the default)

    def role(self, key: str) -> tuple[str | None, str | None]:
        """(backbone name, None) for a converted key, (None, reason) for one dropped on purpose, (None, None)
        for a key this layout does not expect."""
        for prefix, reason in self.drops:
            if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
                return None, reason
        if not key.startswith(self.backbone):
            return None, None
        name = key[len(self.backbone):]
        if name.startswith("fc."):
            return None, self.fc
        if self.backbone in _FLAT and not _TORCHVISION_KEY.match(name):
            return None, None
        return name, None


@dataclass
class Found:
    """A file's layout, the state dict whose every key is accounted for, and what the file says of itself."""
    layout: Layout
    state: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def _either(keys, *prefixes: str) -> str:
    """The first of `prefixes` that some key starts with ('' when none)."""
    return next((p for p in prefixes if any(k.startswith(p) for k in keys)), "")


def _both(prefix: str, reason: str) -> tuple[tuple[str, str], ...]:
    return ((prefix, reason), ("module." + prefix, reason))


# ---------------------------------------------------------------------------------------- the layouts
def simsiam_suite() -> Layout:
    return Layout("simsiam-suite", None, "encoder.", "projector (encoder fc.*)",
                  _both("predictor.", "predictor") + _both("prototypes.", "prototypes"))


def simsiam_official(module: str) -> Layout:
    return Layout("simsiam-official", "SimSiam", module + "encoder.", "projector (encoder fc.*)",
                  _both("predictor.", "predictor"))


def moco(module: str) -> Layout:
    return Layout("moco", "MoCo", module + "encoder_q.", "projection head (encoder_q fc.*)",
                  _both("encoder_k.", "momentum encoder (encoder_k.*)") + _both("queue", "queue")
                  + _both("queue_ptr", "queue"))


def mocov3(module: str) -> Layout:
    return Layout("mocov3", "MoCo v3", module + "base_encoder.", "projector (base_encoder fc.*)",
                  _both("momentum_encoder.", "momentum encoder (momentum_encoder.*)")
                  + _both("predictor.", "predictor"))


def swav(module: str) -> Layout:
    return Layout("swav", "SwAV", module, drops=((module + "projection_head.", "projection head"),
                                                  (module + "prototypes.", "prototypes")))


def dino(branch: str, module: str) -> Layout:
    other = BRANCHES[1 - BRANCHES.index(branch)]
    return Layout("dino", "DINO", f"{branch}.{module}backbone.",
                  drops=((f"{branch}.{module}head.", f"DINO head ({branch})"),
                         (f"{other}.", f"the {other} (the {branch} is converted)")))


SOLO_HEADS = ("projector.", "predictor.", "classifier.", "momentum_backbone.", "momentum_projector.",
              "momentum_classifier.", "head.", "momentum_head.", "prototypes.", "dino_loss_func.")
SOLO_BUFFERS = ("queue", "queue_ptr", "queue_y")


def solo_learn(backbone: str) -> Layout:
    drops = tuple((p, f"{p[:-1]} (solo-learn head / momentum copy)") for p in SOLO_HEADS)
    return Layout("solo-learn", None, backbone, drops=drops + tuple((b, "queue") for b in SOLO_BUFFERS))


def mmpretrain() -> Layout:
    return Layout("mmpretrain", None, "backbone.", drops=(
        ("neck.", "neck"), ("head.", "head"), ("momentum_encoder.", "momentum encoder (backbone + neck)"),
        ("target_net.", "target network (backbone + neck)"), ("queue", "queue"), ("queue_ptr", "queue")))


def vissl() -> Layout:
    return Layout("vissl", None, "trunk._feature_blocks.", drops=(("heads.", "heads"),))


def simclr_v1() -> Layout:
    return Layout("simclr-v1", "SimCLR", "", "supervised head (fc.*)", normalisation=RAW_PIXELS)


def torchvision_flat(module: str = "") -> Layout:
    return Layout("torchvision", "torchvision", module)


# --------------------------------------------------------------------------------------- recognising
def identify(obj: Mapping, where: str, branch: str | None = None) -> Found:
    """The layout of a loaded checkpoint; ConvertError naming what was found when it is none of them.
    `branch` picks DINO's teacher (default) or student; any other file refuses it."""
    if branch is not None and branch not in BRANCHES:
        raise ConvertError(f"--branch {branch}: expected one of {', '.join(BRANCHES)}")
    found = _identify(obj, where, branch)
    if branch is not None and found.layout.kind != "dino":
        raise ConvertError(f"{where}: --branch {branch} applies to DINO training checkpoints (student / teacher); "
                           f"this is a {found.layout.kind} checkpoint with one backbone")
    return found


def _identify(obj: Mapping, where: str, branch: str | None) -> Found:
    if obj.get("format") == SUITE_FORMAT:
        sd = obj.get("model")
        if not isinstance(sd, Mapping):
            raise ConvertError(f"{where}: a '{SUITE_FORMAT}' checkpoint without a 'model' state dict")
        return Found(simsiam_suite(), strip_prefix(sd), suite_meta(obj))
    if isinstance(obj.get("teacher"), Mapping) and isinstance(obj.get("student"), Mapping):
        return _dino(obj, where, branch or "teacher")
    if isinstance(obj.get("classy_state_dict"), Mapping):
        return _vissl(obj, where)
    if isinstance(obj.get("state_dict"), Mapping):
        return _wrapped(obj, where)
    keys = [k for k in obj if isinstance(k, str)]
    module = _either(keys, "module.")
    if any(k.startswith((module + "prototypes", module + "projection_head.")) for k in keys):
        return Found(swav(module), dict(obj))
    if "conv1.weight" in obj and any(k.startswith("layer1.") for k in keys):
        return Found(torchvision_flat(), dict(obj))
    raise ConvertError(
        f"{where}: not a checkpoint this tool knows: found {describe(obj)}. Expected one of: a simsiam-suite "
        "pretraining checkpoint, official SimSiam / MoCo v1-v3 ({'state_dict': module.encoder.* / "
        "module.encoder_q.* / module.base_encoder.*}), DINO ({'teacher', 'student'}), SwAV, solo-learn, "
        "mmpretrain ({'state_dict': backbone.*}), VISSL ({'classy_state_dict'}), SimCLR v1 converted, or a "
        "torchvision ResNet state dict (conv1.weight, layer1.* ...)")


def _wrapped(obj: Mapping, where: str) -> Found:
    """{"state_dict": ...} files."""
    sd = dict(obj["state_dict"])
    keys = [k for k in sd if isinstance(k, str)]
    epochs = {"arch": obj.get("arch"), "epochs": obj.get("epoch")}
    if "pytorch-lightning_version" in obj or "global_step" in obj:
        backbone = _either(keys, "backbone.", "encoder.")
        if backbone:
            return Found(solo_learn(backbone), sd)
    for enc, make in (("base_encoder.", mocov3), ("encoder_q.", moco), ("encoder.", simsiam_official)):
        module = _either(keys, "module." + enc, enc)
        if module:
            layout = make(module[: -len(enc)])
            return Found(layout, sd, {**epochs, "method": layout.method})
    if _either(keys, "backbone.") and not _either(keys, "module."):
        return Found(mmpretrain(), sd)
    module = _either(keys, "module.")
    if any(k.startswith((module + "prototypes", module + "projection_head.")) for k in keys):
        return Found(swav(module), sd, {"epochs": obj.get("epoch")})
    if set(obj) == {"state_dict"} and not module and "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
        return Found(simclr_v1(), sd)
    stripped = strip_prefix(sd)
    if "conv1.weight" in stripped and "layer1.0.conv1.weight" in stripped:
        return Found(torchvision_flat(), stripped)
    raise ConvertError(f"{where}: unrecognised 'state_dict' (keys like {', '.join(keys[:4])}); expected SimSiam "
                       "(module.encoder.*), MoCo (module.encoder_q.*), MoCo v3 (module.base_encoder.*), solo-learn "
                       "or mmpretrain (backbone.*), SwAV (projection_head.*, prototypes) or torchvision ResNet keys")


def _dino(obj: Mapping, where: str, branch: str) -> Found:
    """Both branches in one namespace ("teacher.module.backbone.conv1.weight"), so the other is accounted for."""
    args = obj.get("args")
    if args is not None and not isinstance(args, argparse.Namespace):
        raise ConvertError(f"{where}: 'args' is a {type(args).__name__}; DINO's main_dino.py saves its parsed "
                           "arguments, an argparse.Namespace")
    state = {f"{b}.{k}": v for b in BRANCHES for k, v in obj[b].items()}
    module = _either(state, f"{branch}.module.backbone.") and "module."
    if not _either(state, f"{branch}.{module}backbone."):
        raise ConvertError(f"{where}: a DINO checkpoint whose {branch} has no backbone.* / module.backbone.* keys "
                           f"(keys like {', '.join(list(obj[branch])[:3])})")
    return Found(dino(branch, module), state, {"method": "DINO", "branch": branch, **_dino_args(obj, args)})


def _dino_args(obj: Mapping, args: argparse.Namespace | None) -> dict:
    """What main_dino.py's arguments say of the run: arch, the scheduled epochs, the global batch, the crops."""
    a = vars(args) if args is not None else {}
    epoch, scheduled = obj.get("epoch"), _int(a, "epochs")
    per_gpu, world = _int(a, "batch_size_per_gpu"), _int(a, "world_size")
    return {"arch": a.get("arch") if isinstance(a.get("arch"), str) else None, "epochs": epoch,
            "scheduled_epochs": scheduled,
            "completed": None if epoch is None or scheduled is None else int(epoch) == scheduled,
            "batch_size": per_gpu * world if per_gpu and world else None, "local_crops": _int(a, "local_crops_number")}


def _int(values: Mapping, key: str) -> int | None:
    value = values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _vissl(obj: Mapping, where: str) -> Found:
    try:
        model = obj["classy_state_dict"]["base_model"]["model"]
        trunk = model["trunk"]
    except (KeyError, TypeError):
        raise ConvertError(f"{where}: a VISSL checkpoint without classy_state_dict -> base_model -> model -> "
                           f"trunk (found {describe(obj['classy_state_dict'])})") from None
    heads = model.get("heads") or {}
    state = {f"trunk.{k}": v for k, v in trunk.items()} | {f"heads.{k}": v for k, v in heads.items()}
    extra = [k for k in model if k not in ("trunk", "heads")]
    if extra:
        raise ConvertError(f"{where}: VISSL base_model.model holds {', '.join(map(str, extra))} besides trunk / heads")
    return Found(vissl(), state)


def suite_meta(obj: Mapping) -> dict:
    """What our checkpoint records of its pretraining: the configured epochs, whether the checkpoint is the end
    of that schedule (its epoch equals them), batch, dataset, crop size, image / step limits, the recipe
    (pretrain.protocol.recipe_of its config; None without one), data settings."""
    cfg = obj.get("config") or {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    epoch, scheduled = obj.get("epoch"), train.get("epochs")
    return {"method": display_name(cfg.get("method") or "simsiam"), "arch": obj.get("arch"), "epochs": epoch, "batch_size": train.get("batch_size"),
            "dataset": obj.get("dataset"), "scheduled_epochs": scheduled,
            "completed": None if epoch is None or scheduled is None else int(epoch) == int(scheduled),
            "image_size": data.get("image_size"), "limit_per_class": data.get("limit_per_class"),
            "max_steps_per_epoch": train.get("max_steps_per_epoch"), "config_changes": obj.get("config_changes"),
            "recipe": recipe_of(cfg) if isinstance(cfg, Mapping) and cfg else None,
            "pretrain_data": {k: v for k, v in data.items() if k in ("image_size", "mean", "std")}}


def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj.keys()]
        more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
        return f"a dict with keys {', '.join(keys[:8])}{more}"
    return f"a {type(obj).__name__}"
