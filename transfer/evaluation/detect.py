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
naiveSyncBN instead of SyncBN for a multi-process CPU run (SyncBN needs CUDA). See
transfer.evaluation.detection.config.resolve_norm.

Input normalisation: weights whose pretraining recorded its own (the .pkl's source "normalisation", e.g. SimCLR's
pixels / 255) set MODEL.PIXEL_MEAN / MODEL.PIXEL_STD to 255 x its mean / std, unless those keys are given as
KEY VALUE overrides; the values used are logged and written into the run's config.

This module is the stage's entry point (parse, set up, run the trials); the parts live in
transfer.evaluation.detection. Importing it imports no detectron2.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from pretrain import distributed
from pretrain.config import ConfigError
from pretrain.frame import StageRun, guard
from transfer.evaluation.detection.config import (DEFAULT_CACHE, NORMS, apply_input_normalisation, build_config,
                                                  config_arch, resolve_norm)
from transfer.evaluation.detection.trials import TrialPlan, benchmark_name, run_or_read_trial, write_summary

log = logging.getLogger("simsiam.detect")
# besides the entry point: the config and dataset resolution that transfer.preflight and the tables share
__all__ = ["build_config", "benchmark_name", "build_parser", "config_arch", "main", "run", "setup", "setup_datasets"]


def setup_datasets(cfg, args) -> tuple[list[str], list[str]]:
    """Register the run's training and test datasets (--train-dataset / --test-dataset, else the config's);
    their catalog names, each limited to SIMSIAM.MAX_TRAIN_IMAGES / MAX_TEST_IMAGES when set."""
    from transfer.evaluation import detection_data as dd

    train_specs = args.train_dataset or list(cfg.DATASETS.TRAIN)
    test_specs = args.test_dataset or list(cfg.DATASETS.TEST)
    if not train_specs or not test_specs:
        raise ConfigError("no training or test dataset: set DATASETS.TRAIN/TEST or --train-dataset/--test-dataset")
    kw = dict(data_root=args.data_root, cache_dir=args.cache_dir, classes=list(cfg.SIMSIAM.CLASSES) or None,
              year=int(cfg.SIMSIAM.VOC_YEAR))
    train = [dd.limit_dataset(dd.resolve_dataset(s, **kw), cfg.SIMSIAM.MAX_TRAIN_IMAGES) for s in train_specs]
    test = [dd.limit_dataset(dd.resolve_dataset(s, **kw), cfg.SIMSIAM.MAX_TEST_IMAGES) for s in test_specs]
    classes = [dd.thing_classes(n) for n in train + test]
    if any(c != classes[0] for c in classes):
        raise dd.DatasetError("training and test datasets have different classes: " + "; ".join(
            f"{n}: {', '.join(c[:6])}{' ...' if len(c) > 6 else ''}" for n, c in zip(train + test, classes)))
    return train, test


def setup(args):
    """(config, train datasets, test datasets) of this run: the config with the norm, device, AMP and number
    of classes resolved for this process group, and the datasets registered."""
    cfg = build_config(args.config, args.opts, args.caffe_weights)
    if args.norm:
        cfg.SIMSIAM.NORM = args.norm
    world = distributed.world_size()
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
    from transfer.evaluation import detection_data as dd

    n_classes = len(dd.thing_classes(train[0]))
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != n_classes:
        log.info("MODEL.ROI_HEADS.NUM_CLASSES: %d -> %d (the classes of %s)", cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                 n_classes, train[0])
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = n_classes
    return cfg, train, test


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
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE, help="embedded data and VOC evaluation copies")
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
    from transfer.evaluation.detection import trainer, weights

    with StageRun("detect", args.output, loggers=trainer.LOGGERS) as sr:
        trainer.setup_process(sr.info.distributed)
        cfg, train, test = setup(args)
        path, source = weights.prepare_weights(args.weights, sr.dir, config_arch(cfg), cfg.SIMSIAM.ZERO_INIT_RESIDUAL)
        apply_input_normalisation(cfg, source.get("normalisation"), args.opts, f"--weights {args.weights}")
        plan = TrialPlan(cfg, train, test, args.config, source)
        indices = range(args.trials) if args.trial_index is None else [args.trial_index]
        trials = [run_or_read_trial(sr, plan, sr.dir / f"trial_{i}", i, args.seed + i, path) for i in indices]
        if args.trial_index is None:  # one array element: the summary comes once all exist
            write_summary(sr, plan, trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
