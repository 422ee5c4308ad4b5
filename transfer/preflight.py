"""Check a stage's command line and the datasets it will read before it is queued (`simsiam submit`).

`plan(stage, argv, reference)` parses argv with the stage's own parser (transfer.stages), resolves its config
the way the stage does, fills in defaults, refuses what cannot run and returns the command line to submit.
In a pipeline, `reference` is the pretraining dataset (the data.root of the resolved pretrain config):

* kNN (`--data`) and linear (`data.root`) read the pretraining dataset unless their arguments name one;
* a stage whose dataset is not named (pretraining without data.root, a linear evaluation without data.root
  outside a pipeline) is refused, so is a stage that would read the embedded data while pretraining reads a
  real dataset;
* detection without `--config` runs `voc07` when a datasets root is known (`--data-root` or
  $DETECTRON2_DATASETS, written into the command line as `--data-root`), and is refused otherwise.

Datasets are checked as the stage will open them: ImageFolder roots through pretrain.data.resolve_roots
(train/ with class folders, a held-out split with the same classes where the stage needs one, no empty class
folder); detection datasets through transfer.evaluation.detect.setup_datasets (VOC folders with their split files,
COCO JSON files read whole, the same classes in training and test sets). The embedded data is not checked:
it is generated where the job runs. Every refusal is an InputError whose one-line message starts with the
stage and names the argument.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from pretrain import errors
from transfer import stages

EMBEDDED = "embedded"
UNSET = "<unset>"                  # a value no user writes: "this argument was not given"
DEFAULT_DETECTION = "voc07"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class InputError(errors.InputError, ValueError):
    """A stage that cannot run as submitted; the message is '<stage>: <argument>: <reason>'."""


@dataclass
class Planned:
    stage: str
    argv: list[str]               # the command line to submit
    ns: argparse.Namespace        # argv parsed by the stage's parser
    data_root: Optional[str] = None  # the ImageFolder root it reads (pretrain, knn, linear)
    arch: Optional[str] = None       # the backbone it pretrains (pretrain) or builds (detect)


def plan(stage: str, argv: list[str], reference: Optional[str] = None, pipeline: bool = False) -> Planned:
    """The checked command line of `stage`; `pipeline` turns on the defaults described in the module doc."""
    try:
        if stage == "pretrain":
            return _plan_pretrain(argv)
        if stage == "knn":
            return _plan_knn(argv, reference, pipeline)
        if stage == "linear":
            return _plan_linear(argv, reference, pipeline)
        if stage == "detect":
            return _plan_detect(argv, reference, pipeline)
        return Planned(stage, list(argv), stages.parse(stage, argv))
    except stages.StageArgError as e:
        raise InputError(str(e)) from None


def _config_error(stage: str, e: Exception) -> InputError:
    return InputError(f"{stage}: --config / key=value: {e}")


def _plan_pretrain(argv: list[str]) -> Planned:
    from pretrain.config import ConfigError
    from pretrain.main import resolve_config
    ns = stages.parse("pretrain", argv)
    try:
        cfg = resolve_config(ns.config, ns.overrides)
    except ConfigError as e:
        raise _config_error("pretrain", e) from None
    check_imagefolder("pretrain", "data.root", cfg.data, held_out=False)
    return Planned("pretrain", list(argv), ns, cfg.data.root, cfg.model.arch)


def _plan_knn(argv: list[str], reference: Optional[str], pipeline: bool) -> Planned:
    from pretrain import config as config_mod
    from transfer.evaluation.knn import KnnConfig
    p = stages.parser("knn")
    ns = stages.parse("knn", ["--data", UNSET, *argv] if pipeline else argv)
    cache = [f"data.cache_dir={ns.cache_dir}"] if ns.cache_dir else []
    try:  # as transfer.evaluation.knn.main resolves it: --data, then --cache-dir, then the overrides
        d = config_mod.resolve(KnnConfig(), ns.config, [f"data.root={ns.data}", *cache, *ns.overrides]).data
    except config_mod.ConfigError as e:
        raise _config_error("knn", e) from None
    if d.root == UNSET:
        ns.data = reference or EMBEDDED
        d = dataclasses.replace(d, root=ns.data)
    refuse_embedded("knn", "--data", d.root, reference)
    check_imagefolder("knn", "--data", d, held_out=True)
    return Planned("knn", stages.format_argv(p, ns), ns, d.root)


def _plan_linear(argv: list[str], reference: Optional[str], pipeline: bool) -> Planned:
    from pretrain import config as config_mod
    from transfer.evaluation.linear import LinearConfig
    p = stages.parser("linear")
    ns = stages.parse("linear", argv)
    probe = LinearConfig()
    if pipeline:  # tells whether a preset or an override sets data.root
        probe = dataclasses.replace(probe, data=dataclasses.replace(probe.data, root=UNSET))
    try:
        d = config_mod.resolve(probe, ns.config, ns.overrides, kind="linear").data
    except config_mod.ConfigError as e:
        raise _config_error("linear", e) from None
    if d.root == UNSET:
        ns.overrides = [*ns.overrides, f"data.root={reference or EMBEDDED}"]
        d = dataclasses.replace(d, root=reference or EMBEDDED)
    refuse_embedded("linear", "data.root", d.root, reference)
    check_imagefolder("linear", "data.root", d, held_out=True)
    return Planned("linear", stages.format_argv(p, ns), ns, d.root)


def refuse_embedded(stage: str, arg: str, root: str, reference: Optional[str]) -> None:
    if root == EMBEDDED and reference not in (None, EMBEDDED):
        raise InputError(f"{stage}: {arg}: the stage would read the embedded synthetic data while pretraining "
                         f"reads {reference}; leave {arg} out to use the pretraining dataset, or name a real one")


def check_imagefolder(stage: str, arg: str, d, held_out: bool) -> None:
    """Refuse an ImageFolder root (d.root, d.train_split, d.val_split) that the stage cannot read, or none."""
    from pretrain.data import DataError, resolve_roots
    if not d.root:
        raise InputError(f"{stage}: {arg}: not set; name the dataset folder (an ImageFolder with train/ and val/), "
                         f"or 'embedded' for the generated demo data")
    if d.root == EMBEDDED:
        return
    where = f"{stage}: {arg} {d.root}"
    try:
        train, val = resolve_roots(SimpleNamespace(root=d.root, train_split=d.train_split,
                                                   val_split=d.val_split, cache_dir=d.cache_dir))
    except DataError as e:
        raise InputError(f"{where}: {str(e).removeprefix('data.root: ')}") from None
    if held_out and val is None:
        raise InputError(f"{where}: no held-out split next to {train} (looked for "
                         f"'{d.val_split or 'val'}', val, test; expected <root>/train/<class>/ and <root>/val/<class>/)")
    classes = _class_folders(train, where)
    if val is not None:
        other = _class_folders(val, where)
        if other != classes:
            missing = sorted(set(classes) ^ set(other))[:3]
            raise InputError(f"{where}: {train} has {len(classes)} class folders but {val} has {len(other)} "
                             f"(not in both: {', '.join(missing)})")


def _class_folders(folder: Path, where: str) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise InputError(f"{where}: {folder} has no class folders (expected {folder}/<class>/<image>)")
    for name in names:
        with os.scandir(folder / name) as it:
            if not any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in it):
                raise InputError(f"{where}: class folder {folder / name} holds no image")
    return names


def _plan_detect(argv: list[str], reference: Optional[str], pipeline: bool) -> Planned:
    p = stages.parser("detect")
    ns = stages.parse("detect", ["--config", UNSET, *argv] if pipeline else argv)
    if ns.data_root is None and os.environ.get("DETECTRON2_DATASETS"):
        ns.data_root = os.environ["DETECTRON2_DATASETS"]  # the job then reads what was checked here
    if ns.config == UNSET:
        if not ns.data_root:
            raise InputError("detect: --config: no detection config and no datasets root; give --detect-args "
                             "'--config voc07 --data-root DIR' (DIR holds VOC2007/, VOC2012/, coco/) or set "
                             "DETECTRON2_DATASETS")
        ns.config = DEFAULT_DETECTION
    if ns.data_root:
        ns.data_root = str(Path(ns.data_root).expanduser().resolve())
    arch, train, test = check_detection(ns)
    if any(n.startswith("embedded_") for n in train + test):
        refuse_embedded("detect", f"--config {ns.config}", EMBEDDED, reference)
    return Planned("detect", stages.format_argv(p, ns), ns, arch=arch)


def check_detection(ns: argparse.Namespace) -> tuple[str, list[str], list[str]]:
    """Resolve the detection config and register its datasets exactly as transfer.evaluation.detect does;
    (the backbone the config builds, train datasets, test datasets)."""
    from pretrain.config import ConfigError
    from transfer.evaluation import detect as D
    from transfer.evaluation.detection_data import DatasetError
    try:
        cfg = D.build_config(ns.config, ns.opts, ns.caffe_weights)
    except ConfigError as e:
        raise InputError(f"detect: --config {ns.config}: {e}") from None
    try:
        return (D.config_arch(cfg), *D.setup_datasets(cfg, ns))
    except (ConfigError, DatasetError) as e:
        raise InputError(f"detect: datasets of --config {ns.config}: {e}") from None


def check_same_backbone(pretrain: Planned, detect: Planned) -> None:
    """A pipeline's detection config must build the backbone its pretraining trains."""
    if pretrain.arch != detect.arch:
        raise InputError(f"detect: --config {detect.ns.config} builds a {detect.arch} backbone (MODEL.RESNETS.DEPTH), "
                         f"but the pipeline pretrains a {pretrain.arch}; give --detect-args a config for "
                         f"{pretrain.arch} (e.g. tiny_r18 for a resnet18) or pretrain the other backbone")
