"""Checkpoint conversion: any supported pretrained checkpoint -> torchvision ResNet or Detectron2 weights.

    simsiam convert SRC --to torchvision|detectron2 --output FILE [--arch resnet50|resnet18|resnet18_cifar]
    python -m transfer.evaluation.convert ...

    simsiam convert DINO_CKPT --branch student ...   # DINO's student (default: the teacher, as DINO evaluates)

Inputs, recognised from their content (never from the file name): this project's pretraining checkpoints,
official SimSiam, MoCo v1/v2, MoCo v3, DINO training checkpoints, SwAV, solo-learn, mmpretrain / mmselfsup,
VISSL, SimCLR v1 converted to PyTorch, and torchvision ResNet state dicts (which DINO's, Barlow Twins' and
VICReg's hub files are); transfer/evaluation/layouts.py describes each layout and the code that writes it.
Everything else (Detectron2 weights, truncated or non-checkpoint files, another architecture than the one
asked) is an error that says what was found. Files are read without running code from them (torch.load
weights_only, with argparse.Namespace allowed besides, for DINO's `args`; or an unpickler that builds only
containers and numpy arrays): a file that asks for anything else is refused (exit code 2).

A layout whose network expects another input normalisation than ImageNet's mean / std (SimCLR v1: pixels
/ 255 only) records it: info["pretrain_data"] (kNN and linear evaluation use it when not told otherwise) and
describe_source's "normalisation" (results.json and the Detectron2 file's `source`, read by detection).

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
from pretrain.frame import guard
from pretrain.checkpoint import (UnsafeFileError, atomic_save, atomic_write, load_pickle, load_torch,
                                 state_mismatches)
from pretrain.model import ARCHS, build_backbone
from pretrain.protocol import paper_recipe
from transfer.evaluation.layouts import (BRANCHES, SUITE_FORMAT, ConvertError, Layout, describe,  # noqa: F401
                                        identify)

D2_AUTHOR = "simsiam-suite"
# Types a checkpoint may hold besides weights and containers: DINO's main_dino.py saves its argparse.Namespace.
SAFE_TYPES = (argparse.Namespace,)
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
            with torch.serialization.safe_globals(list(SAFE_TYPES)):
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


def _looks_detectron2(keys: list[str]) -> str | None:
    for pat in ("backbone.bottom_up.res", "backbone.res", "roi_heads.res5", "stem.conv1", "res2.", "res5."):
        hit = [k for k in keys if k.startswith(pat)]
        if hit:
            return f"found detectron2 weights (keys like {', '.join(hit[:2])}); convert the pretraining " \
                   "checkpoint instead, Detectron2 files are outputs of this tool, not inputs"
    return None


def _split_source(obj: Any, where: str, branch: str | None
                  ) -> tuple[Layout, dict[str, torch.Tensor], dict[str, list[str]], dict]:
    """(layout, backbone state dict in torchvision names incl. fc if present, dropped keys by reason, meta)."""
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{where}: not a checkpoint: found {describe(obj)}")
    _refuse_detectron2(obj, where)
    found = identify(obj, where, branch)
    backbone, dropped = _account(found.layout, found.state, where)
    meta = {"method": found.layout.method, **found.meta, "source_keys": len(found.state)}
    if found.layout.normalisation is not None:
        meta["normalisation"] = {k: list(v) for k, v in found.layout.normalisation.items()}
        meta["pretrain_data"] = {**meta.get("pretrain_data", {}), **meta["normalisation"]}
    return found.layout, backbone, dropped, meta


def _refuse_detectron2(obj: Mapping, where: str) -> None:
    """Detectron2 / Caffe2 weights (with or without the {"model": ...} wrapper) are an output, not a source."""
    for cand in (obj, obj.get("model"), obj.get("blobs")):
        if isinstance(cand, Mapping):
            msg = _looks_detectron2([str(k) for k in cand.keys()])
            if msg:
                raise ConvertError(f"{where}: {msg}")


def _account(layout: Layout, sd: Mapping, where: str) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Every key of `sd` is converted, or dropped for a named reason; any other key is an error."""
    backbone: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        name, reason = layout.role(key) if isinstance(key, str) else (None, None)
        if name is not None:
            backbone[name] = value
        elif reason is not None:
            dropped.setdefault(reason, []).append(key)
        else:
            unknown.append(key if isinstance(key, str) else repr(key))
    if unknown:
        raise ConvertError(f"{where}: {len(unknown)} unexpected key(s) in a {layout.kind} checkpoint, neither "
                           f"converted nor known to be droppable: {', '.join(unknown)}")
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
    with torch.device("meta"):  # names and shapes only: nothing is allocated or initialised
        own = {k: v for k, v in build_backbone(found).state_dict().items() if not k.startswith("fc.")}
    parts = state_mismatches(own, dict(sd), "weights")
    if parts:
        raise ConvertError(f"{where}: the {words} backbone does not match torchvision {found}: " + "; ".join(parts))
    return found


# ------------------------------------------------------------------------------------------ public API
def load_any_checkpoint(path_or_obj: str | Path | Mapping, arch: str | None = None, branch: str | None = None
                        ) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(kind, backbone state dict in torchvision names without fc, info).

    info: {"kind", "arch", "path", "method" (None when the file does not say), "epochs", "batch_size",
    "dataset", and where the file says "scheduled_epochs", "completed", "image_size", "limit_per_class",
    "max_steps_per_epoch", "config_changes", "branch" (DINO), "pretrain_data" (image size / mean / std),
    "normalisation" (a layout's own mean / std); "source_keys", "kept", "dropped": {reason: [keys]}}.
    `arch` None accepts any supported ResNet; otherwise weights of another architecture are an error naming
    what was found. `branch`: DINO's "teacher" (default) or "student"; an error for any other file.
    """
    if isinstance(path_or_obj, (str, Path)):
        where = str(path_or_obj)
        obj = _read_file(Path(path_or_obj))
    else:
        where, obj = "<state dict>", path_or_obj
    layout, sd, dropped, meta = _split_source(obj, where, branch)
    kind = layout.kind
    found = _check_arch(sd, arch, where)
    kept = len(sd)
    n_dropped = sum(len(v) for v in dropped.values())
    if kept + n_dropped != meta["source_keys"]:  # accounting must close: every key converted or dropped
        raise ConvertError(f"{where}: key accounting failed: {meta['source_keys']} keys, {kept} kept, "
                           f"{n_dropped} dropped")
    info = {"kind": kind, "path": where if isinstance(path_or_obj, (str, Path)) else None, **meta,
            "arch": found, "kept": kept, "dropped": dropped}
    if not isinstance(path_or_obj, (str, Path)):  # the caller's tensors are never shared with the result
        sd = {k: v.detach().clone() for k, v in sd.items()}
    return kind, sd, info


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
    extra = {k: info[k] for k in ("branch", "normalisation") if info.get(k)}
    return {"source": info.get("path"), "kind": kind, "method": info.get("method"), **extra, "arch": info["arch"],
            "target": target, "output": output, "source_keys": info["source_keys"], "converted": converted,
            "dropped": counts,
            "dropped_keys": dropped,
            "note": "projector/predictor/momentum encoder/classifier are dropped on purpose: only the backbone "
                    "transfers"}


def _load(src, arch, branch=None):
    if isinstance(src, tuple) and len(src) == 3:  # already the output of load_any_checkpoint
        return src
    return load_any_checkpoint(src, arch, branch)


def to_torchvision(src, output: str | Path | None = None, arch: str | None = None, branch: str | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    """(torchvision ResNet state dict without fc, report); written to `output` when given."""
    kind, sd, info = _load(src, arch, branch)
    if output is not None:
        atomic_save(OrderedDict(sd), output)
    return sd, _report(kind, info, "torchvision", str(output) if output else None, len(sd))


def to_detectron2(src, output: str | Path | None = None, arch: str | None = None, branch: str | None = None
                  ) -> tuple[dict, dict]:
    """({"model": {d2 name: ndarray}, "__author__", "matching_heuristics": True, "source"}, report); pickled to
    output. "source" (describe_source) carries the layout's input normalisation, which detection applies."""
    kind, sd, info = _load(src, arch, branch)
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


def load_backbone(path_or_state, arch: str | None = None, branch: str | None = None) -> nn.Module:
    """A torchvision ResNet (fc = Identity, so forward gives pooled features) with the backbone weights of any
    supported checkpoint (path, loaded dict, or a torchvision state dict). Strict: missing keys are listed."""
    _, sd, info = load_any_checkpoint(path_or_state, arch, branch)
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
                 "limit_per_class", "max_steps_per_epoch", "config_changes", "recipe")
# The official SimSiam code writes no config into its checkpoints: its format is taken to be the paper's recipe.
OFFICIAL_RECIPE = "simsiam-official format: taken to be the paper's recipe (the file records none)"


def describe_source(path: str | Path, info: dict | None = None) -> dict:
    """results.json `source`: {"checkpoint", "sha256", "kind", "pretrain": {PRETRAIN_KEYS}} for a checkpoint
    file (info from load_any_checkpoint, read here when not given). "method" is the recognised layout's
    (SimSiam, MoCo, MoCo v3, DINO, SwAV, SimCLR, torchvision; null when the file does not say); what the file
    does not record is null, e.g. "completed" (the checkpoint is the end of its configured schedule).
    "recipe": the pretraining's trajectory keys (pretrain.protocol.recipe_of of the config our checkpoints hold;
    the paper's for the official SimSiam format, with "recipe_from" saying so; null for other layouts).
    pretrain["branch"]: DINO's branch that was read. "normalisation" {"mean", "std"} (0-1 scale, RGB): the input
    normalisation the layout's network expects, when it is not ImageNet's; absent otherwise."""
    from transfer.reporting.results import sha256_file
    path = Path(path)
    if info is None:
        _, _, info = load_any_checkpoint(path)
    pre = {k: info.get(k) for k in PRETRAIN_KEYS}
    if info.get("kind") == "simsiam-official" and pre["recipe"] is None:
        pre.update(recipe=paper_recipe(), recipe_from=OFFICIAL_RECIPE)
    if info.get("branch"):
        pre["branch"] = info["branch"]
    out = {"checkpoint": str(path.resolve()), "sha256": sha256_file(path), "kind": info.get("kind"), "pretrain": pre}
    if info.get("normalisation"):
        out["normalisation"] = {k: list(info["normalisation"][k]) for k in ("mean", "std")}
    return out


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
    branch: str = ""                 # DINO training checkpoints: teacher (""; as DINO evaluates) or student


def check_eval_model(weights: str, model: EvalModelConfig) -> None:
    """ConfigError (one line, exit 2) for `weights` + `model` that name no backbone to build."""
    if not weights:
        raise ConfigError("no weights to evaluate: pass --weights CKPT (or --weights random)")
    if model.arch != "auto" and model.arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown arch '{model.arch}' (known: auto, {', '.join(ARCHS)})")
    if weights == RANDOM and model.arch == "auto":
        raise ConfigError("--weights random needs model.arch=<arch> (nothing to read it from)")
    if model.branch and model.branch not in BRANCHES:
        raise ConfigError(f"model.branch: unknown branch '{model.branch}' (known: {', '.join(BRANCHES)})")


def eval_backbone(weights: str, model: EvalModelConfig, seed: int) -> tuple[nn.Module, dict, dict]:
    """(backbone with fc = Identity, results.json `source`, what the checkpoint says of itself) for an
    evaluation stage: `weights` is a checkpoint of any kind load_any_checkpoint reads, loaded strictly as
    `model.arch` (auto: whatever it is), or RANDOM, the random-init baseline under torch seed `seed`."""
    check_eval_model(weights, model)
    if weights == RANDOM:
        return (random_backbone(model.arch, seed, model.zero_init_residual),
                random_source(model.arch, model.zero_init_residual), {})
    path = Path(weights).expanduser()
    _, sd, info = load_any_checkpoint(path, None if model.arch == "auto" else model.arch, model.branch or None)
    return load_backbone(sd, info["arch"]), describe_source(path, info), info


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="checkpoint to convert (any layout of transfer/evaluation/layouts.py)")
    ap.add_argument("--to", required=True, choices=TARGETS)
    ap.add_argument("--output", required=True, help="file to write (.pkl for detectron2)")
    ap.add_argument("--arch", default=None, choices=ARCHS,
                    help="expected backbone; default: whatever supported ResNet the weights are (printed)")
    ap.add_argument("--branch", default=None, choices=BRANCHES,
                    help="DINO training checkpoints: the network to convert (default: teacher, as DINO evaluates)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guard("simsiam convert", lambda: _main(args))


def _main(args) -> int:
    fn = to_torchvision if args.to == "torchvision" else to_detectron2
    _, report = fn(args.src, args.output, args.arch, args.branch)
    brief = {k: v for k, v in report.items() if k != "dropped_keys"}
    print(json.dumps(brief, indent=2))
    print(f"[convert] {report['kind']} {report['arch']} -> {args.to}: {report['converted']} tensors written to "
          f"{args.output}; dropped on purpose: "
          + (", ".join(f"{n} {r}" for r, n in report["dropped"].items()) or "nothing"), file=sys.stderr)
    if report.get("normalisation"):
        norm = report["normalisation"]
        print(f"[convert] {report['kind']} expects inputs normalised with mean {norm['mean']} std {norm['std']} "
              "(0-1 scale, RGB); recorded for kNN, linear evaluation and detection", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
