"""Checkpoint conversion: any supported pretrained checkpoint -> torchvision ResNet or Detectron2 weights.

    simsiam convert SRC --to torchvision|detectron2 --output FILE [--arch resnet50|resnet18|resnet18_cifar]
    python -m transfer.evaluation.convert ...

Inputs, recognised from their content (never from the file name):
  simsiam-suite     this project's pretraining checkpoint ({"format": "simsiam-suite/pretrain", "model":
                    {encoder.*, predictor.*}}); encoder.fc.* is the projector
  simsiam-official  the official SimSiam file ({"state_dict": {module.encoder.*, module.predictor.*}})
  moco              MoCo v1/v2 ({"state_dict": {module.encoder_q.*, module.encoder_k.*, module.queue, ...}})
  torchvision       a plain torchvision ResNet state dict (conv1.*, bn1.*, layer1.* ..., fc.* optional), e.g.
                    the output of `--to torchvision`
Everything else (Detectron2 weights, truncated or non-checkpoint files, another architecture than the one
asked) is an error that says what was found. Files are read without running code from them (torch.load
weights_only, or an unpickler that builds only containers and numpy arrays): a file that asks for anything
else is refused (exit code 2).

Every key of the source is either converted or dropped on purpose, and the returned report counts both
(projector, predictor, momentum encoder, queue, classifier, BN batch counters). A key that fits none of
these is an error listing it: nothing is lost silently.

Outputs:
  torchvision  a ResNet state dict without fc (load it with `load_backbone` or `resnet50().load_state_dict(
               sd, strict=False)`, which then reports only fc.weight/fc.bias missing)
  detectron2   a pickle {"model": {name: numpy array}, "__author__": "simsiam-suite", "matching_heuristics":
               True} with MoCo's detection naming (stem.conv1, stem.conv1.norm.*, res2.0.conv1,
               res2.0.conv1.norm.*, res2.0.shortcut(.norm), ..., res5.*). Detectron2's DetectionCheckpointer
               reads it (the file must end in .pkl) and matches res5.* to the C4 ROI head's res5 stage.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pretrain.config import ConfigError
from pretrain.errors import InputError
from pretrain.frame import guard
from pretrain.checkpoint import (UnsafeFileError, atomic_save, atomic_write, load_pickle, load_torch,
                                 state_mismatches, strip_prefix)
from pretrain.model import ARCHS, build_backbone

SUITE_FORMAT = "simsiam-suite/pretrain"
D2_AUTHOR = "simsiam-suite"
KINDS = ("simsiam-suite", "simsiam-official", "moco", "torchvision")
TARGETS = ("torchvision", "detectron2")

# Block counts per stage and block type of the ResNets we can recognise (to name what was found).
_RESNETS = {
    ("BasicBlock", (2, 2, 2, 2)): "ResNet-18",
    ("BasicBlock", (3, 4, 6, 3)): "ResNet-34",
    ("Bottleneck", (3, 4, 6, 3)): "ResNet-50",
    ("Bottleneck", (3, 4, 23, 3)): "ResNet-101",
    ("Bottleneck", (3, 8, 36, 3)): "ResNet-152",
}
_ARCH_NAMES = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "resnet18_cifar": "ResNet-18 (CIFAR 3x3 stem)"}


class ConvertError(InputError, ValueError):
    """A checkpoint that cannot be converted; the message says what was found and what was expected."""


# --------------------------------------------------------------------------------------------- reading
def _read_file(path: Path) -> Any:
    """torch.load (weights only), else a plain pickle (.pkl weights) with only containers and numpy arrays;
    UnsafeFileError for a file that would import anything else, a clear error for anything unreadable."""
    if not path.is_file():
        raise ConvertError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ConvertError(f"{path}: empty file (0 bytes), not a checkpoint")
    errors = []
    try:
        with warnings.catch_warnings():  # plain pickles (.pkl) make torch.load warn before it fails
            warnings.simplefilter("ignore")
            return load_torch(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure: try the next reader, report all at the end
        errors.append(f"torch.load: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    try:
        return load_pickle(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001
        errors.append(f"pickle: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    raise ConvertError(f"{path}: cannot be read as a PyTorch checkpoint or a weights pickle; the file is "
                       f"truncated or not a checkpoint ({'; '.join(errors)})")


def _tensor_keys(d: Mapping) -> list[str]:
    return [k for k, v in d.items() if isinstance(k, str) and isinstance(v, (torch.Tensor, np.ndarray))]


def _looks_detectron2(keys: list[str]) -> str | None:
    for pat in ("backbone.bottom_up.res", "backbone.res", "roi_heads.res5", "stem.conv1", "res2.", "res5."):
        hit = [k for k in keys if k.startswith(pat)]
        if hit:
            return f"found detectron2 weights (keys like {', '.join(hit[:2])}); convert the pretraining " \
                   "checkpoint instead, Detectron2 files are outputs of this tool, not inputs"
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in obj.keys()]
        more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
        return f"a dict with keys {', '.join(keys[:8])}{more}"
    return f"a {type(obj).__name__}"


def _strip(prefix: str, sd: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _suite_schedule(epoch: Any, cfg: Mapping) -> dict[str, Any]:
    """What our checkpoint records of its pretraining schedule: the configured epochs, whether the checkpoint
    is the end of that schedule (its epoch equals them), the crop size and the image / step limits."""
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    scheduled = train.get("epochs")
    completed = None if epoch is None or scheduled is None else int(epoch) == int(scheduled)
    return {"scheduled_epochs": scheduled, "completed": completed, "image_size": data.get("image_size"),
            "limit_per_class": data.get("limit_per_class"), "max_steps_per_epoch": train.get("max_steps_per_epoch")}


def _split_source(obj: Any, where: str) -> tuple[str, dict[str, torch.Tensor], dict[str, list[str]], dict]:
    """(kind, backbone state dict in torchvision names incl. fc if present, dropped keys by reason, meta)."""
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{where}: not a checkpoint: found {_describe(obj)}")
    _refuse_detectron2(obj, where)
    kind, sd, encoder, meta = _identify(obj, where)
    backbone, dropped = _account(kind, sd, encoder, where)
    meta["source_keys"] = len(sd)
    return kind, backbone, dropped, meta


def _refuse_detectron2(obj: Mapping, where: str) -> None:
    """Detectron2 / Caffe2 weights (with or without the {"model": ...} wrapper) are an output, not a source."""
    for cand in (obj, obj.get("model"), obj.get("blobs")):
        if isinstance(cand, Mapping):
            msg = _looks_detectron2([str(k) for k in cand.keys()])
            if msg:
                raise ConvertError(f"{where}: {msg}")


def _identify(obj: Mapping, where: str) -> tuple[str, dict, str, dict]:
    """(kind, state dict, prefix of the backbone's keys in it, what the file says of its pretraining)."""
    if obj.get("format") == SUITE_FORMAT:
        sd = obj.get("model")
        if not isinstance(sd, Mapping):
            raise ConvertError(f"{where}: a '{SUITE_FORMAT}' checkpoint without a 'model' state dict")
        return "simsiam-suite", strip_prefix(sd), "encoder.", _suite_meta(obj)
    if isinstance(obj.get("state_dict"), Mapping):
        return _identify_official(obj, where)
    if "conv1.weight" in obj and any(str(k).startswith("layer1.") for k in obj):
        return "torchvision", dict(obj), "", {"method": "torchvision"}  # the file does not say how it was trained
    raise ConvertError(
        f"{where}: not a checkpoint this tool knows: found {_describe(obj)}. Expected a simsiam-suite "
        "pretraining checkpoint, an official SimSiam or MoCo checkpoint ({'state_dict': module.encoder.* / "
        "module.encoder_q.*}) or a torchvision ResNet state dict (conv1.weight, layer1.* ...)")


def _suite_meta(obj: Mapping) -> dict:
    cfg = obj.get("config") or {}
    return {"method": "SimSiam", "arch": obj.get("arch"), "epochs": obj.get("epoch"),
            "batch_size": (cfg.get("train") or {}).get("batch_size"), "dataset": obj.get("dataset"),
            **_suite_schedule(obj.get("epoch"), cfg), "config_changes": obj.get("config_changes"),
            "pretrain_data": {k: v for k, v in (cfg.get("data") or {}).items() if k in ("image_size", "mean", "std")}}


def _identify_official(obj: Mapping, where: str) -> tuple[str, dict, str, dict]:
    """{"state_dict": ...} files: the official SimSiam and MoCo checkpoints, or a wrapped torchvision ResNet."""
    sd = dict(obj["state_dict"])
    keys = list(sd)
    for kind, method, enc in (("moco", "MoCo", "encoder_q."), ("simsiam-official", "SimSiam", "encoder.")):
        if any(k.startswith(("module." + enc, enc)) for k in keys):
            encoder = "module." + enc if any(k.startswith("module." + enc) for k in keys) else enc
            return kind, sd, encoder, {"method": method, "arch": obj.get("arch"), "epochs": obj.get("epoch")}
    stripped = strip_prefix(sd)
    if "conv1.weight" in stripped and "layer1.0.conv1.weight" in stripped:
        return "torchvision", stripped, "", {"method": "torchvision"}
    raise ConvertError(f"{where}: unrecognised 'state_dict' (keys like {', '.join(keys[:4])}); expected "
                       "SimSiam (module.encoder.*), MoCo (module.encoder_q.*) or torchvision ResNet keys")


def _key_role(kind: str, encoder: str, key: str) -> tuple[str | None, str | None]:
    """(backbone name, None) for a key that is converted, (None, reason) for one dropped on purpose,
    (None, None) for a key nobody expects."""
    if encoder and key.startswith(encoder):
        name = key[len(encoder):]
        if name.startswith("fc."):
            return None, "projector (encoder fc.*)" if kind != "moco" else "projection head (encoder_q fc.*)"
        return name, None
    if not encoder and key.startswith("fc."):
        return None, "classifier (fc.*)"
    if not encoder and re.match(r"^(conv1|bn1|layer[1-4])\.", key):
        return key, None
    if kind in ("simsiam-suite", "simsiam-official") and key.startswith(("predictor.", "module.predictor.")):
        return None, "predictor"
    if kind == "moco" and key.startswith(("module.encoder_k.", "encoder_k.")):
        return None, "momentum encoder (encoder_k.*)"
    if kind == "moco" and key in ("module.queue", "module.queue_ptr", "queue", "queue_ptr"):
        return None, "queue"
    return None, None


def _account(kind: str, sd: Mapping, encoder: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Every key of `sd` is converted, or dropped for a named reason; any other key is an error."""
    backbone: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        name, reason = _key_role(kind, encoder, key) if isinstance(key, str) else (None, None)
        if name is not None:
            backbone[name] = value
        elif reason is not None:
            dropped.setdefault(reason, []).append(key)
        else:
            unknown.append(key if isinstance(key, str) else repr(key))
    if unknown:
        raise ConvertError(f"{where}: {len(unknown)} unexpected key(s) in a {kind} checkpoint, neither converted "
                           f"nor known to be droppable: {', '.join(unknown)}")
    backbone = {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v) for k, v in backbone.items()}
    bad = [k for k, v in backbone.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{where}: values that are not tensors: {', '.join(bad[:8])}")
    return backbone, dropped


# ---------------------------------------------------------------------------------------- architecture
def describe_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[str | None, str]:
    """(arch in ARCHS or None, words naming what the weights are) from the backbone keys and shapes."""
    if "layer1.0.conv1.weight" not in sd or "conv1.weight" not in sd:
        return None, "not a ResNet (no conv1.weight / layer1.0.conv1.weight)"
    if "layer1.0.conv3.weight" in sd:
        block, probe = "Bottleneck", "layer1.0.conv3"
    else:
        block, probe = "BasicBlock", "layer1.0.conv2"
    w = sd[f"{probe}.weight"]
    detail = f"{block}, {probe} {w.shape[-2]}x{w.shape[-1]} {w.shape[0]}"
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in sd for m in [re.match(rf"^layer{stage}\.(\d+)\.", k)] if m}
        counts.append(max(idx) + 1 if idx else 0)
    name = _RESNETS.get((block, tuple(counts)), f"an unknown ResNet (blocks per stage {counts})")
    stem = sd["conv1.weight"]
    cifar = tuple(stem.shape[-2:]) == (3, 3)
    if cifar:
        name += " with a 3x3 stem"
    width_ok = stem.shape[0] == 64
    arch = None
    if width_ok and name == "ResNet-50":
        arch = "resnet50"
    elif width_ok and name == "ResNet-18":
        arch = "resnet18"
    elif width_ok and name == "ResNet-18 with a 3x3 stem":
        arch = "resnet18_cifar"
    return arch, f"{name} ({detail})"


def _check_arch(sd: Mapping[str, torch.Tensor], arch: str | None, where: str) -> str:
    found, words = describe_resnet(sd)
    if arch is not None and arch not in ARCHS:
        raise ConvertError(f"unknown --arch '{arch}' (known: {', '.join(ARCHS)})")
    if found is None:
        raise ConvertError(f"{where}: found {words}, which is not a supported backbone ({', '.join(ARCHS)})")
    if arch is not None and arch != found:
        raise ConvertError(f"{where}: found {words} but --arch {arch} was asked")
    own = {k: v for k, v in build_backbone(found).state_dict().items() if not k.startswith("fc.")}
    parts = state_mismatches(own, dict(sd), "weights")
    if parts:
        raise ConvertError(f"{where}: the {words} backbone does not match torchvision {found}: " + "; ".join(parts))
    return found


# ------------------------------------------------------------------------------------------ public API
def load_any_checkpoint(path_or_obj: str | Path | Mapping, arch: str | None = None
                        ) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(kind, backbone state dict in torchvision names without fc, info).

    info: {"kind", "arch", "path", "method", "epochs", "batch_size", "dataset", and for our checkpoints
    "scheduled_epochs", "completed", "image_size", "limit_per_class", "max_steps_per_epoch", "config_changes"
    (when the checkpoint says), "source_keys", "kept", "dropped": {reason: [keys]}}. `arch` None accepts any supported ResNet;
    otherwise weights of another architecture are an error naming what was found.
    """
    if isinstance(path_or_obj, (str, Path)):
        where = str(path_or_obj)
        obj = _read_file(Path(path_or_obj))
    else:
        where, obj = "<state dict>", path_or_obj
    kind, sd, dropped, meta = _split_source(obj, where)
    found = _check_arch(sd, arch, where)
    kept = len(sd)
    n_dropped = sum(len(v) for v in dropped.values())
    if kept + n_dropped != meta["source_keys"]:  # accounting must close: every key converted or dropped
        raise ConvertError(f"{where}: key accounting failed: {meta['source_keys']} keys, {kept} kept, "
                           f"{n_dropped} dropped")
    info = {"kind": kind, "path": where if isinstance(path_or_obj, (str, Path)) else None, **meta,
            "arch": found, "kept": kept, "dropped": dropped}
    return kind, {k: v.detach().clone() for k, v in sd.items()}, info


def torchvision_to_detectron2_name(key: str) -> str | None:
    """MoCo's detection naming; None for keys that Detectron2 does not have (BN batch counters)."""
    if key.endswith("num_batches_tracked"):
        return None
    if not key.startswith("layer"):
        key = "stem." + key                       # conv1 / bn1 of the stem
    key = re.sub(r"^layer([1-4])\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
    key = re.sub(r"bn([1-3])\.", r"conv\1.norm.", key)  # bnK -> convK.norm
    key = key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return key


def _report(kind: str, info: dict, target: str, output: str | None, converted: int,
            extra_dropped: dict[str, list[str]] | None = None) -> dict:
    dropped = {**info["dropped"], **(extra_dropped or {})}
    counts = {reason: len(keys) for reason, keys in dropped.items()}
    total = converted + sum(counts.values())
    if total != info["source_keys"]:
        raise ConvertError(f"{info.get('path')}: key accounting failed for {target}: {info['source_keys']} source "
                           f"keys, {converted} converted, {sum(counts.values())} dropped")
    return {"source": info.get("path"), "kind": kind, "arch": info["arch"], "target": target, "output": output,
            "source_keys": info["source_keys"], "converted": converted, "dropped": counts,
            "dropped_keys": dropped,
            "note": "projector/predictor/momentum encoder/classifier are dropped on purpose: only the backbone "
                    "transfers"}


def _load(src, arch):
    if isinstance(src, tuple) and len(src) == 3:  # already the output of load_any_checkpoint
        return src
    return load_any_checkpoint(src, arch)


def to_torchvision(src, output: str | Path | None = None, arch: str | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    """(torchvision ResNet state dict without fc, report); written to `output` when given."""
    kind, sd, info = _load(src, arch)
    if output is not None:
        atomic_save(OrderedDict(sd), output)
    return sd, _report(kind, info, "torchvision", str(output) if output else None, len(sd))


def to_detectron2(src, output: str | Path | None = None, arch: str | None = None) -> tuple[dict, dict]:
    """({"model": {d2 name: ndarray}, "__author__", "matching_heuristics": True}, report); pickled to output."""
    kind, sd, info = _load(src, arch)
    if info["arch"] == "resnet18_cifar":
        raise ConvertError(f"{info.get('path')}: a ResNet-18 with a 3x3 stem cannot become Detectron2 weights "
                           "(Detectron2's stem is a 7x7 conv + max-pool)")
    if output is not None and not str(output).endswith(".pkl"):
        raise ConvertError(f"--output {output}: Detectron2 weights must be written to a .pkl file (Detectron2 "
                           "only applies its name matching to .pkl files)")
    model: dict[str, np.ndarray] = OrderedDict()
    counters: list[str] = []
    for key, value in sd.items():
        new = torchvision_to_detectron2_name(key)
        if new is None:
            counters.append(key)
            continue
        if new in model:
            raise ConvertError(f"two keys map to the Detectron2 name {new}")
        model[new] = value.detach().cpu().numpy()
    # names refer to the source checkpoint's keys, prefixed as they were there
    extra = {"BN batch counters (num_batches_tracked)": counters} if counters else {}
    obj = {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}
    if isinstance(src, (str, Path)):  # where the weights came from, for results.json (read by simsiam detect)
        obj["source"] = describe_source(src, info)
    if output is not None:
        _atomic_pickle(obj, Path(output))
    return obj, _report(kind, info, "detectron2", str(output) if output else None, len(model), extra)


def _atomic_pickle(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_backbone(path_or_state, arch: str | None = None) -> nn.Module:
    """A torchvision ResNet (fc = Identity, so forward gives pooled features) with the backbone weights of any
    supported checkpoint (path, loaded dict, or a torchvision state dict). Strict: missing keys are listed."""
    _, sd, info = load_any_checkpoint(path_or_state, arch)
    net = build_backbone(info["arch"])
    net.fc = nn.Identity()
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ConvertError(f"{info.get('path') or '<state dict>'}: cannot load the {info['arch']} backbone: "
                           f"missing keys ({len(missing)}): {', '.join(missing) or '-'}; "
                           f"unexpected keys ({len(unexpected)}): {', '.join(unexpected) or '-'}")
    net.load_state_dict(sd, strict=True)
    return net


PRETRAIN_KEYS = ("method", "arch", "epochs", "batch_size", "dataset", "scheduled_epochs", "completed", "image_size",
                 "limit_per_class", "max_steps_per_epoch", "config_changes")


def describe_source(path: str | Path, info: dict | None = None) -> dict:
    """results.json `source`: {"checkpoint", "sha256", "kind", "pretrain": {PRETRAIN_KEYS}} for a checkpoint
    file (info from load_any_checkpoint, read here when not given). "method" is the recognised format's
    (SimSiam, MoCo, torchvision); what the file does not record is null, e.g. "completed" (the checkpoint is
    the end of its configured schedule) for anything but our own checkpoints."""
    from transfer.reporting.results import sha256_file
    path = Path(path)
    if info is None:
        _, _, info = load_any_checkpoint(path)
    pre = {k: info.get(k) for k in PRETRAIN_KEYS}
    return {"checkpoint": str(path.resolve()), "sha256": sha256_file(path), "kind": info.get("kind"),
            "pretrain": pre}


# ------------------------------------------------------------------------------------ random-init baseline
RANDOM = "random"  # `--weights random` of kNN, linear and detection: the same protocol without pretraining


def random_backbone(arch: str, seed: int, zero_init_residual: bool = True) -> nn.Module:
    """The backbone pretraining starts from (pretrain.model.build_backbone under torch seed `seed`), fc =
    Identity; the caller's random state is left as it was. The same seed gives the same network.
    `zero_init_residual=False`: torchvision's init instead (every BN weight 1, no block starts as the identity)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_backbone(arch, zero_init_residual)
    net.fc = nn.Identity()
    return net


def random_source(arch: str, zero_init_residual: bool = True) -> dict:
    """results.json `source` of a randomly initialised backbone: describe_source's fields, "checkpoint"
    "random" and null where no pretraining exists (0 pretraining epochs); "zero_init_residual" says which init."""
    return {"checkpoint": RANDOM, "sha256": None, "kind": "random-init",
            "pretrain": {"method": "random init", "arch": arch, "epochs": 0, "batch_size": None, "dataset": None,
                         "zero_init_residual": zero_init_residual}}


# ------------------------------------------------------------------ the backbone an evaluation stage reads
@dataclass(frozen=True)
class EvalModelConfig:
    """The `model:` section of kNN and linear evaluation."""
    arch: str = "auto"               # expected backbone (resnet50 | resnet18 | resnet18_cifar); auto: the checkpoint's
    zero_init_residual: bool = True  # --weights random only: false = torchvision's init (every BN weight 1)


def check_eval_model(weights: str, model: EvalModelConfig) -> None:
    """ConfigError (one line, exit 2) for `weights` + `model` that name no backbone to build."""
    if not weights:
        raise ConfigError("no weights to evaluate: pass --weights CKPT (or --weights random)")
    if model.arch != "auto" and model.arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown arch '{model.arch}' (known: auto, {', '.join(ARCHS)})")
    if weights == RANDOM and model.arch == "auto":
        raise ConfigError("--weights random needs model.arch=<arch> (nothing to read it from)")


def eval_backbone(weights: str, model: EvalModelConfig, seed: int) -> tuple[nn.Module, dict, dict]:
    """(backbone with fc = Identity, results.json `source`, what the checkpoint says of itself) for an
    evaluation stage: `weights` is a checkpoint of any kind load_any_checkpoint reads, loaded strictly as
    `model.arch` (auto: whatever it is), or RANDOM, the random-init baseline under torch seed `seed`."""
    check_eval_model(weights, model)
    if weights == RANDOM:
        return (random_backbone(model.arch, seed, model.zero_init_residual),
                random_source(model.arch, model.zero_init_residual), {})
    path = Path(weights).expanduser()
    _, sd, info = load_any_checkpoint(path, None if model.arch == "auto" else model.arch)
    return load_backbone(sd, info["arch"]), describe_source(path, info), info


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="checkpoint to convert (simsiam-suite, official SimSiam, MoCo, torchvision)")
    ap.add_argument("--to", required=True, choices=TARGETS)
    ap.add_argument("--output", required=True, help="file to write (.pkl for detectron2)")
    ap.add_argument("--arch", default=None, choices=ARCHS,
                    help="expected backbone; default: whatever supported ResNet the weights are (printed)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guard("simsiam convert", lambda: _main(args))


def _main(args) -> int:
    fn = to_torchvision if args.to == "torchvision" else to_detectron2
    _, report = fn(args.src, args.output, args.arch)
    brief = {k: v for k, v in report.items() if k != "dropped_keys"}
    print(json.dumps(brief, indent=2))
    print(f"[convert] {report['kind']} {report['arch']} -> {args.to}: {report['converted']} tensors written to "
          f"{args.output}; dropped on purpose: "
          + (", ".join(f"{n} {r}" for r, n in report["dropped"].items()) or "nothing"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
