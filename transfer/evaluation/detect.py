"""Detection transfer with detectron2: fine-tune Faster/Mask R-CNN C4 (R50, or R18) from converted weights, N trials.

    simsiam detect --weights FILE --config PRESET_OR_YAML --output DIR [--trials N] [--seed S] [--amp]
                   [--data-root DIR] [--cache-dir DIR] [--train-dataset SPEC ...] [--test-dataset SPEC ...]
                   [--norm auto|BN|SyncBN|naiveSyncBN] [--caffe-weights] [KEY VALUE ...]
    python -m transfer.evaluation.detect ...

--weights: detectron2 weights written by `simsiam convert --to detectron2` (.pkl), or any pretraining
checkpoint that transfer.evaluation.convert reads (converted on the fly into DIR/weights_detectron2.pkl), or `random`:
nothing is loaded and the backbone keeps detectron2's own initialisation, drawn from the trial's seed (the
random-init baseline on the same config and data); with SIMSIAM.ZERO_INIT_RESIDUAL True the last norm of every
residual block is then zeroed, as the official SimSiam pretraining initialises its network. Weights and
checkpoints are read without running code from them (.pkl: only containers and numpy arrays; others:
torch.load weights_only); a file that asks for more is refused with exit code 2.
--config: a preset of eval_configs/detection (voc07, voc0712, coco_1x, coco_2x, tiny, tiny_coco, tiny_r18,
demo_r18, demo_r50) or a YAML
file (detectron2 format, `_BASE_` allowed, read with yaml.safe_load only: a tag that builds a Python object
is refused with exit code 2). Our weights come from torchvision ResNets, so the overlay
eval_configs/detection/torchvision.yaml (RGB input, ImageNet mean/std x255, STRIDE_IN_1X1 False) is merged
after the preset (--caffe-weights skips it). KEY VALUE pairs are detectron2 overrides, applied last.
The backbone is MODEL.RESNETS.DEPTH: 50 (the paper's R50-C4) or 18 (R18-C4, res5 of basic blocks in the ROI
head); weights converted for another backbone are refused with one line.
Datasets: see transfer.evaluation.detection_data (standard names under --data-root, VOC folders, COCO JSON files).

Each trial i (seed S+i) runs in DIR/trial_{i}/ (detectron2 checkpoints, config.yaml, log.txt, metrics.json,
TensorBoard events, our metrics.jsonl with stage "detection", results.json). A finished trial (results.json
present) is skipped; an interrupted one resumes from its last checkpoint. DIR/results.json then summarises:
"metrics" = mean over trials, "std" = sample standard deviation (ddof=1; null with one trial), "trials" =
the per-trial list. Metrics: VOC evaluation -> {AP50, AP, AP75}; COCO -> {"bbox": {...}, "segm": {...}}.

Norm (SIMSIAM.NORM, --norm): the presets normalise with naiveSyncBN (MODEL.RESNETS.NORM), as MoCo's
detection configs do; SyncBN and BN can be chosen with --norm. "auto" keeps the configured norm for a
multi-GPU run, uses BN for one process (where a synchronised BN computes exactly what BN computes) and
naiveSyncBN instead of SyncBN for a multi-process CPU run (SyncBN needs CUDA). See resolve_norm.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from transfer.tooling.d2compat import has_real_extension, import_detectron2

import_detectron2()
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data import build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.engine import DefaultTrainer, hooks  # noqa: E402
from detectron2.engine import defaults as d2_defaults  # noqa: E402
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: E402
from detectron2.layers import get_norm  # noqa: E402
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet  # noqa: E402
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.events import EventWriter, get_event_storage  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from pretrain.config import ConfigError, find_preset  # noqa: E402
from pretrain.checkpoint import UnsafeFileError, load_pickle, load_torch  # noqa: E402
from pretrain.frame import StageRun, guard, run_log  # noqa: E402
from pretrain.logs import MetricsWriter  # noqa: E402
from transfer.evaluation import detection_data as dd  # noqa: E402
from transfer.evaluation.convert import RANDOM, random_source  # noqa: E402
from transfer.reporting.protocols import detection_fingerprint  # noqa: E402
from transfer.reporting.results import read_results, sha256_file, write_results  # noqa: E402
from transfer.evaluation.trials import aggregate, summary_extra, trial_entry  # noqa: E402

log = logging.getLogger("simsiam.detect")
OVERLAY = "torchvision.yaml"
NORMS = ("auto", "BN", "SyncBN", "naiveSyncBN")


# ------------------------------------------------------------------------------------------ model parts
BASIC_BLOCKS = {18: 2, 34: 3}  # res5 blocks of the ResNets built from basic (two 3x3 conv) blocks
DEPTH_ARCH = {18: "resnet18", 50: "resnet50"}  # MODEL.RESNETS.DEPTH -> the backbone our converters write


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """The C4 ROI head with a normalisation layer after res5 (MoCo's detection recipe): with BN in every
    block of a fine-tuned backbone, the res5 output feeding the box/mask predictors is normalised too.

    For MODEL.RESNETS.DEPTH 18 or 34 the head's res5 is made of basic blocks, as in that ResNet (detectron2's
    own C4 head always builds bottleneck blocks), so the whole of a ResNet-18 transfers: R18-C4."""

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        if r.DEPTH in BASIC_BLOCKS:
            out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
            n = BASIC_BLOCKS[r.DEPTH]
            seq = nn.Sequential(*ResNet.make_stage(BasicBlock, n, stride_per_block=[2] + [1] * (n - 1),
                                                   in_channels=out_channels // 2, out_channels=out_channels,
                                                   norm=r.NORM))
        else:
            seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(r.NORM, out_channels))
        return seq, out_channels


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


def zero_init_residual(model: nn.Module) -> int:
    """Zero the scale of the last norm of every residual block (conv2 of a basic block, conv3 of a bottleneck),
    in the backbone and in the ROI head's res5, so that each block starts as the identity: torchvision's
    `zero_init_residual`, the init of the official SimSiam pretraining. Returns the number of blocks."""
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    with torch.no_grad():
        for b in blocks:
            (b.conv3 if isinstance(b, BottleneckBlock) else b.conv2).norm.weight.zero_()
    return len(blocks)


# ----------------------------------------------------------------------------------------------- config
def add_simsiam_config(cfg: CN) -> CN:
    """Our keys, all under SIMSIAM; a preset, a YAML file or a KEY VALUE override may set them."""
    cfg.SIMSIAM = CN()
    cfg.SIMSIAM.NORM = "auto"             # auto | BN | SyncBN | naiveSyncBN (see module docstring)
    cfg.SIMSIAM.MAX_TRAIN_IMAGES = 0      # >0: train on the first N images of each training set only
    cfg.SIMSIAM.MAX_TEST_IMAGES = 0       # >0: evaluate on the first N test images only
    cfg.SIMSIAM.VOC_YEAR = 2007           # metric of custom VOC folders: 2007 = 11-point AP, 2012 = area
    cfg.SIMSIAM.CLASSES = []              # class names of custom VOC folders ([] = discovered from the XML)
    cfg.SIMSIAM.BENCHMARK = ""            # dataset name in results.json ("" = derived from the datasets)
    cfg.SIMSIAM.KEEP_CHECKPOINTS = 1      # periodic snapshots kept per trial (besides model_final.pth)
    cfg.SIMSIAM.ZERO_INIT_RESIDUAL = False  # --weights random only: every residual block starts as the identity
    return cfg


def _merge_file(cfg: CN, path: Path) -> None:
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


def build_config(config: str, overrides: list[str] = (), caffe_weights: bool = False) -> CN:
    """detectron2 defaults + our SIMSIAM keys + the preset/YAML + the torchvision overlay + KEY VALUE overrides."""
    cfg = add_simsiam_config(get_cfg())
    preset = find_preset(config, "detection")
    _merge_file(cfg, preset)
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


SYNC_NORMS = ("SyncBN", "naiveSyncBN")


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


# ----------------------------------------------------------------------------------------------- trainer
class RobustMapper(DatasetMapper):
    """DatasetMapper that names the file when an image cannot be read. Training skips such an image with a
    warning (detectron2's MapDataset then draws another); evaluation stops with the file's name."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:  # noqa: BLE001 - PIL/numpy raise many kinds for a bad image
            msg = f"{dataset_dict.get('file_name')}: cannot be used ({type(e).__name__}: {e})"
            if self.is_train:
                logging.getLogger("simsiam.detect").warning(msg + "; skipped")
                return None
            raise dd.DatasetError(msg) from e


class JsonlWriter(EventWriter):
    """metrics.jsonl: one line per iteration (stage "detection", iter = iterations done, losses, lr, time),
    through pretrain.logs.MetricsWriter (a cut-off last line of a killed write is dropped when it opens).

    `start_iter()` gives the first iteration of this run: on a resumed trial, lines of iterations that will be
    run again are dropped first (atomically)."""

    def __init__(self, path: Path, start_iter):
        self.folder = Path(path).parent
        self._start_iter = start_iter
        self._last: int | None = None
        self._writer: MetricsWriter | None = None

    def write(self):
        storage = get_event_storage()
        if self._writer is None:
            self._last = int(self._start_iter())
            self._writer = MetricsWriter(self.folder, tensorboard=False)
            self._writer.drop_after("detection", self._last, key="iter")
        rows: dict[int, dict] = {}
        for name, hist in storage.histories().items():
            if name.startswith("loss") or name in ("total_loss", "lr", "time", "data_time"):
                for value, it in hist.values():
                    if it >= self._last:
                        rows.setdefault(int(it), {})[name] = float(value)
        for it in sorted(rows):
            if "total_loss" in rows[it]:
                self._writer.write({"stage": "detection", "iter": it + 1, **rows[it]})
        self._last = storage.iter + 1


@contextlib.contextmanager
def ddp_on_the_model_device():
    """While a Trainer is built: DefaultTrainer wraps its model with detectron2's create_ddp_model, which passes
    device_ids=[local rank], right for a GPU model and an error for a CPU one (DistributedDataParallel takes no
    device_ids there). A CPU model is wrapped without device_ids; a GPU model exactly as detectron2 does."""
    original = d2_defaults.create_ddp_model

    def wrap(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = wrap
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """DefaultTrainer with our evaluators, robust data loading, metrics.jsonl and bounded checkpoints."""

    def __init__(self, cfg: CN):
        with ddp_on_the_model_device():
            super().__init__(cfg)

    @property
    def checkpointer(self) -> DetectionCheckpointer:
        """The DetectionCheckpointer DefaultTrainer builds, made a SafeCheckpointer (same model, folder and
        checkpointables) when it is assigned: resuming a trial reads its files without running code."""
        return self._checkpointer

    @checkpointer.setter
    def checkpointer(self, ckp: DetectionCheckpointer) -> None:
        self._checkpointer = SafeCheckpointer(ckp.model, ckp.save_dir, save_to_disk=ckp.save_to_disk,
                                              **ckp.checkpointables)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if dd.dataset_kind(dataset_name) == "voc":
            if comm.is_main_process():  # only rank 0 reads it (the evaluator gathers predictions there)
                dd.prepare_voc_evaluation(dataset_name)
            return PascalVOCDetectionEvaluator(dataset_name)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                             output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"),
                             use_fast_impl=has_real_extension())

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=RobustMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=RobustMapper(cfg, is_train=False))

    def build_hooks(self):
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model):
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                                       cfg.TEST.PRECISE_BN.NUM_ITER))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                                  max_to_keep=max(1, cfg.SIMSIAM.KEEP_CHECKPOINTS)))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=min(20, cfg.SOLVER.MAX_ITER)))
        return ret

    def build_writers(self):
        from detectron2.engine.defaults import default_writers

        return [*default_writers(self.cfg.OUTPUT_DIR, self.max_iter),
                JsonlWriter(Path(self.cfg.OUTPUT_DIR) / "metrics.jsonl", lambda: self.start_iter)]


# ----------------------------------------------------------------------------------------------- weights
class SafeCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads files without running code from them: .pkl weights with
    pretrain.checkpoint.load_pickle (containers and numpy arrays only), everything else with
    torch.load(weights_only=True); a file that asks for more raises UnsafeFileError. What is done with the
    loaded weights (name matching, Caffe2 renaming, the report) is detectron2's."""

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return self._pickle_weights(load_pickle(filename), filename)
        if filename.endswith(".pyth"):  # pycls
            state = load_torch(filename)["model_state"]
            return {"model": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")},
                    "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f):
        return load_torch(f)

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


BACKBONE_PREFIXES = ("backbone.", "roi_heads.res5.")
NEW_LAYERS = ("roi_heads.res5.norm.",)  # the extra norm is not part of a ResNet


def load_pretrained(model: torch.nn.Module, weights: str) -> dict:
    """Load converted weights into the model, log detectron2's report, and fail when a backbone tensor
    (stem, res2-res5) is missing or has the wrong shape. Returns a summary."""
    model = getattr(model, "module", model)  # DDP
    ckp = SafeCheckpointer(model)
    ckpt = ckp._load_file(weights)  # noqa: SLF001 - .pkl read safely; name matching as detectron2 does
    src = dict(ckpt["model"])
    incompatible = ckp._load_model(ckpt)  # noqa: SLF001
    ckp._log_incompatible_keys(incompatible)  # noqa: SLF001 - detectron2's own report, in our log
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
    summary = {"weights": str(weights), "source_tensors": len(src), "backbone_tensors_loaded": len(backbone_keys),
               "new_tensors": sorted(k for k in incompatible.missing_keys if k not in backbone_keys),
               "unexpected": list(incompatible.unexpected_keys)}
    log.info("pretrained weights %s: %d backbone tensors loaded (stem, res2-res5); %d tensors start from "
             "scratch (RPN, box/mask predictors, extra norm, BN counters); %d unexpected", weights,
             len(backbone_keys), len(summary["new_tensors"]), len(summary["unexpected"]))
    return summary


def config_arch(cfg: CN) -> str:
    """The backbone the config builds, in our converters' names (resnet50 for R50-C4, resnet18 for R18-C4)."""
    depth = cfg.MODEL.RESNETS.DEPTH
    return DEPTH_ARCH.get(depth, f"resnet{depth}")


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
    from transfer.evaluation import convert

    if arch not in DEPTH_ARCH.values():
        raise ConfigError(f"--weights {p}: MODEL.RESNETS.DEPTH {arch.removeprefix('resnet')} has no converter; "
                          f"convert for depth {' or '.join(str(d) for d in DEPTH_ARCH)}, or pass detectron2 .pkl weights")
    out = output / "weights_detectron2.pkl"
    _, _, info = convert.load_any_checkpoint(p, arch)
    if comm.is_main_process() and not out.exists():
        _, report = convert.to_detectron2(p, out, arch=arch)
        log.info("converted %s -> %s (%d tensors; dropped %s)", p, out, report["converted"], report["dropped"])
    comm.synchronize()
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


# ------------------------------------------------------------------------------------------------ trials
def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def extract_metrics(results: dict, kind: str, mask_on: bool) -> dict:
    """detectron2 evaluator output -> our metrics ({AP50, AP, AP75} for VOC; {"bbox": ..., "segm": ...})."""
    def triple(d):
        return {k: _finite(d.get(k)) for k in ("AP50", "AP", "AP75")}

    if kind == "voc":
        return triple(results["bbox"])
    out = {"bbox": triple(results["bbox"])}
    if mask_on:
        out["segm"] = triple(results["segm"])
    return out


def benchmark_name(cfg: CN, train_names: list[str], test_names: list[str]) -> str:
    if cfg.SIMSIAM.BENCHMARK:
        return cfg.SIMSIAM.BENCHMARK
    base = [n.split("@")[0] for n in train_names]
    test = test_names[0].split("@")[0]
    # a run on part of a benchmark's data is not that benchmark (it must not land in the paper's table)
    subset = "-subset" if any("@" in n for n in train_names + test_names) else ""
    if test == "voc_2007_test" and set(base) <= {"voc_2007_trainval", "voc_2012_trainval"}:
        return ("voc0712" if "voc_2012_trainval" in base else "voc07") + subset
    if test == "coco_2017_val" and base == ["coco_2017_train"]:
        return "coco" + subset
    return dd.display_name(test_names[0])


def setup_datasets(cfg: CN, args) -> tuple[list[str], list[str]]:
    train_specs = args.train_dataset or list(cfg.DATASETS.TRAIN)
    test_specs = args.test_dataset or list(cfg.DATASETS.TEST)
    if not train_specs or not test_specs:
        raise ConfigError("no training or test dataset: set DATASETS.TRAIN/TEST or --train-dataset/--test-dataset")
    kw = dict(data_root=args.data_root, cache_dir=args.cache_dir, classes=list(cfg.SIMSIAM.CLASSES) or None,
              year=int(cfg.SIMSIAM.VOC_YEAR))
    train = [dd.resolve_dataset(s, **kw) for s in train_specs]
    test = [dd.resolve_dataset(s, **kw) for s in test_specs]
    train = [dd.limit_dataset(n, cfg.SIMSIAM.MAX_TRAIN_IMAGES) for n in train]
    test = [dd.limit_dataset(n, cfg.SIMSIAM.MAX_TEST_IMAGES) for n in test]
    classes = [list(MetadataCatalog.get(n).thing_classes) for n in train + test]
    if any(c != classes[0] for c in classes):
        raise dd.DatasetError("training and test datasets have different classes: " + "; ".join(
            f"{n}: {', '.join(c[:6])}{' ...' if len(c) > 6 else ''}" for n, c in zip(train + test, classes)))
    return train, test


def setup(args) -> tuple[CN, list[str], list[str]]:
    cfg = build_config(args.config, args.opts, args.caffe_weights)
    if args.norm:
        cfg.SIMSIAM.NORM = args.norm
    world = comm.get_world_size()
    cuda = torch.cuda.is_available()
    cfg.MODEL.DEVICE = "cuda" if cuda else "cpu"
    cfg.MODEL.RESNETS.NORM = resolve_norm(cfg.SIMSIAM.NORM, cfg.MODEL.RESNETS.NORM, world, cuda)
    if args.amp:
        cfg.SOLVER.AMP.ENABLED = True
    if cfg.SOLVER.AMP.ENABLED and not cuda:
        raise ConfigError("--amp / SOLVER.AMP.ENABLED needs a CUDA GPU (detectron2's AMPTrainer is CUDA-only)")
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    train, test = setup_datasets(cfg, args)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    n_classes = len(MetadataCatalog.get(train[0]).thing_classes)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != n_classes:
        log.info("MODEL.ROI_HEADS.NUM_CLASSES: %d -> %d (the classes of %s)", cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                 n_classes, train[0])
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = n_classes
    return cfg, train, test


def run_trial(base: CN, trial_dir: Path, seed: int, weights: str) -> dict:
    """Train + evaluate one trial in trial_dir (resuming if it holds a checkpoint); returns evaluator results."""
    cfg = base.clone()
    cfg.OUTPUT_DIR = str(trial_dir)
    cfg.SEED = seed
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    trial_dir.mkdir(parents=True, exist_ok=True)
    if comm.is_main_process():
        (trial_dir / "config.yaml").write_text(cfg.dump())
    with run_log(trial_dir, comm.is_main_process(), LOGGERS):
        return _run_trial(cfg, trial_dir, seed, weights)


LOGGERS = ("detectron2", "fvcore", "simsiam")  # fvcore: the checkpointer's report on loaded weights


def _detectron2_console() -> None:
    """detectron2's own console set-up (once per process; ours is the stage frame's)."""
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    setup_logger(distributed_rank=comm.get_rank(), name="fvcore")


def _run_trial(cfg: CN, trial_dir: Path, seed: int, weights: str) -> dict:
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(seed + comm.get_rank())
    resume = (trial_dir / "last_checkpoint").is_file()
    trainer = Trainer(cfg)
    if resume:
        log.info("resuming %s from its last checkpoint", trial_dir)
        trainer.resume_or_load(resume=True)
    elif weights:
        load_pretrained(trainer.model, weights)
    elif cfg.SIMSIAM.ZERO_INIT_RESIDUAL:
        n = zero_init_residual(trainer.model)
        log.info("random init: no weights loaded; detectron2's initialisation (seed %d) with the last norm of each "
                 "of the %d residual blocks zeroed (SIMSIAM.ZERO_INIT_RESIDUAL)", seed, n)
    else:
        log.info("random init: no weights loaded; the model keeps detectron2's initialisation (seed %d)", seed)
    t0 = time.time()
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    elapsed = time.time() - t0
    done = cfg.SOLVER.MAX_ITER - trainer.start_iter
    log.info("trial %s: %d iterations in %.1f s (%.3f s/iter incl. evaluation)", trial_dir.name, done, elapsed,
             elapsed / max(done, 1))
    # the next trial builds its own model and loaders: release this one's (loader workers, GPU memory) now
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results or {}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam detect", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--weights", required=True,
                    help="detectron2 .pkl (simsiam convert), a pretraining checkpoint, or 'random' (no weights)")
    ap.add_argument("--config", required=True, help="preset name (eval_configs/detection) or YAML file")
    ap.add_argument("--output", required=True, help="run folder (trials in trial_<i>/)")
    ap.add_argument("--trials", type=int, default=1, help="number of trials (the paper reports 5 on VOC)")
    ap.add_argument("--seed", type=int, default=0, help="seed of trial 0; trial i uses seed+i")
    ap.add_argument("--trial-index", type=int, help="run only trial I of --trials N (seed+I, DIR/trial_I) and "
                    "write no summary: one element of a job array (simsiam submit detect)")
    ap.add_argument("--amp", action="store_true", help="mixed precision (SOLVER.AMP.ENABLED; CUDA only)")
    ap.add_argument("--data-root", help="folder with VOC2007/, VOC2012/, coco/ (default $DETECTRON2_DATASETS or ./datasets)")
    ap.add_argument("--cache-dir", default=dd.DEFAULT_CACHE, help="embedded data and VOC evaluation copies")
    ap.add_argument("--train-dataset", action="append", help="dataset name/path (repeatable); default from config")
    ap.add_argument("--test-dataset", action="append", help="dataset name/path (repeatable); default from config")
    ap.add_argument("--norm", choices=NORMS, help="normalisation (default SIMSIAM.NORM = auto)")
    ap.add_argument("--caffe-weights", action="store_true", help="do not merge the torchvision overlay (BGR weights)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="detectron2 KEY VALUE overrides")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.trials < 1:
        ap.error("--trials must be >= 1")
    if args.trial_index is not None and not 0 <= args.trial_index < args.trials:
        ap.error(f"--trial-index {args.trial_index} is not in 0..{args.trials - 1}")
    return guard("simsiam detect", lambda: run(args))


def run(args) -> int:
    """Set up, then the trials (skipping finished ones), then the summary, inside the stage frame."""
    with StageRun("detect", args.output, loggers=LOGGERS) as sr:
        if sr.info.distributed:
            comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE",
                                                               torch.cuda.device_count() or 1)))
        _detectron2_console()
        cfg, train, test = setup(args)
        weights, source = prepare_weights(args.weights, sr.dir, config_arch(cfg), cfg.SIMSIAM.ZERO_INIT_RESIDUAL)
        plan = TrialPlan(cfg, train, test, args.config, source)
        indices = range(args.trials) if args.trial_index is None else [args.trial_index]
        trials = [run_or_read_trial(plan, sr.dir / f"trial_{i}", i, args.seed + i, weights) for i in indices]
        if args.trial_index is None and sr.is_main:  # one array element: the summary comes once all exist
            write_summary(plan, sr, trials)
    return 0


class TrialPlan:
    """What every trial of one run shares: the config, datasets, benchmark name, protocol and source."""

    def __init__(self, cfg: CN, train: list[str], test: list[str], preset: str, source: dict):
        self.cfg, self.train, self.test, self.source = cfg, train, test, source
        self.kind = dd.dataset_kind(test[0])
        self.bench = benchmark_name(cfg, train, test)
        self.resolved = yaml_dict(cfg)
        self.protocol = detection_fingerprint(cfg, train, test, preset)

    def fields(self) -> dict:
        """results.json fields every trial and the summary share."""
        return {"iterations": self.cfg.SOLVER.MAX_ITER, "test_datasets": self.test, "train_datasets": self.train,
                "protocol": self.protocol}


def run_or_read_trial(plan: TrialPlan, tdir: Path, i: int, seed: int, weights: str) -> dict | None:
    """Trial i: its results.json when it already exists, else train + evaluate it and write that file.
    Returns its summary entry on rank 0 (None elsewhere)."""
    if (tdir / "results.json").is_file():
        log.info("trial %d already finished (%s): skipped", i, tdir / "results.json")
    else:
        results = run_trial(plan.cfg, tdir, seed, weights)
        if comm.is_main_process():
            write_trial(plan, tdir, i, seed, results)
        comm.synchronize()
    if not comm.is_main_process():
        return None
    doc = read_results(tdir)
    return trial_entry(i, doc.get("seed", seed), doc["metrics"], str(tdir / "results.json"))


def write_trial(plan: TrialPlan, tdir: Path, i: int, seed: int, results: dict) -> None:
    """The trial's metrics line (its evaluation) and results.json."""
    if plan.test[0] not in results and "bbox" not in results:
        raise RuntimeError(f"trial {i}: the evaluator returned no results ({results})")
    res = results.get(plan.test[0], results)
    metrics = extract_metrics(res, plan.kind, plan.cfg.MODEL.MASK_ON)
    pairs = metrics.items() if plan.kind == "coco" else [("bbox", metrics)]
    flat = {f"{t}/{k}" if plan.kind == "coco" else k: v for t, d in pairs for k, v in d.items()}
    MetricsWriter(tdir, tensorboard=False).write({"stage": "detection", "iter": plan.cfg.SOLVER.MAX_ITER,
                                                  "trial": i, **flat})
    write_results(tdir, task="detection", dataset=plan.bench, metrics=metrics,
                  config={**plan.resolved, "seed": seed, "OUTPUT_DIR": str(tdir)}, source=plan.source,
                  batch_size=plan.cfg.SOLVER.IMS_PER_BATCH, extra={"trial": i, "seed": seed, **plan.fields()})


def write_summary(plan: TrialPlan, sr: StageRun, trials: list[dict]) -> None:
    """DIR/results.json: the mean over trials, their sample std and the per-trial list."""
    mean, std = aggregate([t["metrics"] for t in trials])
    path = write_results(sr.dir, task="detection", dataset=plan.bench, metrics=mean, config=plan.resolved,
                         source=plan.source, batch_size=plan.cfg.SOLVER.IMS_PER_BATCH,
                         extra={**summary_extra(trials, std), **plan.fields()})
    print(f"simsiam detect: {len(trials)} trial(s) on {plan.bench}: mean {json.dumps(mean)}; "
          f"std {json.dumps(std)}")
    print(f"results: {path}")


def yaml_dict(cfg: CN) -> dict:
    import yaml

    return yaml.safe_load(cfg.dump())


if __name__ == "__main__":
    sys.exit(main())
