"""The weights a detection run starts from: detectron2 .pkl weights, a pretraining checkpoint converted on the
fly, or none (random init); read without running code from them, and loaded with a report that fails when a
backbone tensor is missing."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from pretrain import distributed
from pretrain.checkpoint import UnsafeFileError, load_pickle, load_torch
from pretrain.config import ConfigError
from transfer.evaluation.convert import RANDOM, random_source
from transfer.reporting.results import sha256_file

from .config import DEPTH_ARCH
from .shim import import_detectron2

import_detectron2()
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

log = logging.getLogger("simsiam.detect")
BACKBONE_PREFIXES = ("backbone.", "roi_heads.res5.")
NEW_LAYERS = ("roi_heads.res5.norm.",)  # the extra norm is not part of a ResNet


class SafeCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads files without running code from them: .pkl weights with
    pretrain.checkpoint.load_pickle (containers and numpy arrays only), everything else with
    torch.load(weights_only=True); a file that asks for more raises UnsafeFileError. What is done with the
    loaded weights (name matching, Caffe2 renaming, the report) is detectron2's.

    `_load_file` is the checkpointer's documented place for a file format; `_load_model` is extended only to
    keep what the last load found: `file_tensors` (tensors in the file) and `incompatible` (what it returns:
    missing, unexpected and wrongly shaped keys)."""

    file_tensors = 0
    incompatible = None

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return self._pickle_weights(load_pickle(filename), filename)
        data = load_torch(filename)
        if filename.endswith(".pyth"):  # pycls
            state = data["model_state"]
            return {"model": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
                    "__author__": "pycls", "matching_heuristics": True}
        return data if isinstance(data, dict) and "model" in data else {"model": data}

    def _load_model(self, checkpoint):
        self.file_tensors = len(checkpoint.get("model") or {})
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def _pickle_weights(self, data, filename: str) -> dict:
        """detectron2's reading of a .pkl: a dict with "model" and "__author__" (our converter's output, the
        model zoo) as it is; anything else as Caffe2/Detectron1 blobs, matched by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"{filename}: not detectron2 weights (found a {type(data).__name__})")
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        blobs = data.get("blobs", data)
        return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")},
                "__author__": "Caffe2", "matching_heuristics": True}


def load_pretrained(model: torch.nn.Module, weights: str) -> dict:
    """Load converted weights into the model (detectron2's checkpointer, its report in our log), and fail when
    a backbone tensor (stem, res2-res5) is missing or has the wrong shape. Returns a summary."""
    model = getattr(model, "module", model)  # DDP
    ckp = SafeCheckpointer(model)
    ckp.load(weights, checkpointables=[])
    incompatible = ckp.incompatible
    state = model.state_dict()
    backbone_keys = [k for k in state if k.startswith(BACKBONE_PREFIXES) and not k.startswith(NEW_LAYERS)
                     and not k.endswith("num_batches_tracked")]
    missing = sorted(set(incompatible.missing_keys) & set(backbone_keys))
    bad_shapes = [s for s in incompatible.incorrect_shapes if s[0].startswith(BACKBONE_PREFIXES)]
    if missing or bad_shapes:
        raise ConfigError(f"{weights}: the pretrained backbone was not fully loaded: {len(missing)} of "
                          f"{len(backbone_keys)} backbone tensors missing ({', '.join(missing[:8])}"
                          f"{' ...' if len(missing) > 8 else ''}); wrong shapes: {bad_shapes[:4]}. Are these "
                          f"weights of the config's backbone (MODEL.RESNETS.DEPTH), converted with "
                          f"`simsiam convert --to detectron2`?")
    summary = {"weights": str(weights), "source_tensors": ckp.file_tensors,
               "backbone_tensors_loaded": len(backbone_keys),
               "new_tensors": sorted(k for k in incompatible.missing_keys if k not in backbone_keys),
               "unexpected": list(incompatible.unexpected_keys)}
    log.info("pretrained weights %s: %d backbone tensors loaded (stem, res2-res5); %d tensors start from "
             "scratch (RPN, box/mask predictors, extra norm, BN counters); %d unexpected", weights,
             len(backbone_keys), len(summary["new_tensors"]), len(summary["unexpected"]))
    return summary


def prepare_weights(path: str, output: Path, arch: str = "resnet50",
                    zero_init: bool = False) -> tuple[str, dict]:
    """(detectron2 .pkl path, results.json `source`) for the config's backbone `arch`. A pretraining checkpoint
    is converted once; "random" gives no file ("") and the random-init source (`zero_init`: the config's
    SIMSIAM.ZERO_INIT_RESIDUAL, which only a random init may set)."""
    if path == RANDOM:
        return "", {**random_source(arch, zero_init_residual=zero_init), "weights": None}
    if zero_init:
        raise ConfigError(f"SIMSIAM.ZERO_INIT_RESIDUAL True applies to --weights random only, not to --weights {path} "
                          "(loaded weights replace every norm)")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--weights {p}: no such file")
    if p.suffix == ".pkl":
        return str(p), _pkl_source(p, arch)
    return _convert(p, output, arch)


def _convert(p: Path, output: Path, arch: str) -> tuple[str, dict]:
    """A pretraining checkpoint converted into output/weights_detectron2.pkl (by rank 0, once)."""
    from transfer.evaluation import convert

    if arch not in DEPTH_ARCH.values():
        raise ConfigError(f"--weights {p}: MODEL.RESNETS.DEPTH {arch.removeprefix('resnet')} has no converter; "
                          f"convert for depth {' or '.join(str(d) for d in DEPTH_ARCH)}, or pass detectron2 .pkl weights")
    out = output / "weights_detectron2.pkl"
    _, _, info = convert.load_any_checkpoint(p, arch)
    if distributed.is_main() and not out.exists():
        _, report = convert.to_detectron2(p, out, arch=arch)
        log.info("converted %s -> %s (%d tensors; dropped %s)", p, out, report["converted"], report["dropped"])
    distributed.barrier()
    source = convert.describe_source(p, info)
    source.update(weights=str(out.resolve()))
    return str(out), source


def _pkl_source(p: Path, arch: str) -> dict:
    """results.json `source` of detectron2 weights; weights converted by us for another backbone are refused."""
    try:
        obj = load_pickle(p)
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--weights {p}: not a readable detectron2 .pkl ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise ConfigError(f"--weights {p}: not detectron2 weights (expected a dict with 'model')")
    source = obj.get("source") if isinstance(obj.get("source"), dict) else {}
    pretrain = source.get("pretrain")
    found = pretrain.get("arch") if isinstance(pretrain, dict) else None
    if found and found != arch:
        raise ConfigError(f"--weights {p}: {found} weights, but the config builds a {arch} backbone "
                          f"(MODEL.RESNETS.DEPTH {arch.removeprefix('resnet')})")
    source = {**source, "weights": str(p.resolve()), "weights_sha256": sha256_file(p)}
    source.setdefault("checkpoint", str(p.resolve()))
    source.setdefault("sha256", source["weights_sha256"])
    return source
