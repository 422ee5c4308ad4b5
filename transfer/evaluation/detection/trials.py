"""A detection run's trials: trial i (seed S+i) in DIR/trial_{i}/, skipped when its results.json exists; each
trial's results.json and metrics line; DIR/results.json summarising them (mean, sample std, the list; see
transfer.evaluation.trials). Importing this module imports no detectron2 (training a trial does)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from pretrain.frame import StageRun
from pretrain.logs import MetricsWriter
from pretrain.protocol import detection_fingerprint
from pretrain.results import Results, read
from transfer.evaluation.trials import aggregate, finite_or_none, summary_extra, trial_entry

log = logging.getLogger("simsiam.detect")


def extract_metrics(results: dict, kind: str, mask_on: bool) -> dict:
    """detectron2 evaluator output -> our metrics ({AP50, AP, AP75} for VOC; {"bbox": ..., "segm": ...})."""
    def triple(d):
        keys = ("AP50", "AP", "AP75")
        return dict(zip(keys, finite_or_none(d.get(k) for k in keys)))

    if kind == "voc":
        return triple(results["bbox"])
    out = {"bbox": triple(results["bbox"])}
    if mask_on:
        out["segm"] = triple(results["segm"])
    return out


def benchmark_name(cfg, train_names: list[str], test_names: list[str]) -> str:
    """results.json "dataset": SIMSIAM.BENCHMARK, else the paper's benchmark (voc07, voc0712, coco) when the
    run uses all of its data, else the test set's display name."""
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
    from transfer.evaluation import detection_data as dd

    return dd.display_name(test_names[0])


class TrialPlan:
    """What every trial of one run shares: the config, datasets, benchmark name, protocol and source."""

    def __init__(self, cfg, train: list[str], test: list[str], preset: str, source: dict):
        from transfer.evaluation import detection_data as dd

        self.cfg, self.train, self.test, self.source = cfg, train, test, source
        self.kind = dd.dataset_kind(test[0])
        self.bench = benchmark_name(cfg, train, test)
        self.resolved = yaml.safe_load(cfg.dump())
        self.protocol = detection_fingerprint(cfg, train, test, preset)

    def fields(self) -> dict:
        """results.json fields every trial and the summary share."""
        return {"iterations": self.cfg.SOLVER.MAX_ITER, "test_datasets": self.test, "train_datasets": self.train,
                "protocol": self.protocol}


def run_or_read_trial(sr: StageRun, plan: TrialPlan, tdir: Path, i: int, seed: int, weights: str) -> dict | None:
    """Trial i: its results.json when it already exists, else train + evaluate it and write that file (through
    the stage's frame `sr`). Returns its summary entry on rank 0 (None elsewhere)."""
    if (tdir / "results.json").is_file():
        log.info("trial %d already finished (%s): skipped", i, tdir / "results.json")
    else:
        from .trainer import train_trial

        results = train_trial(plan.cfg, tdir, seed, weights)
        sr.results(trial_results(plan, tdir, i, seed, results) if sr.is_main else None, folder=tdir)
    if not sr.is_main:
        return None
    doc = read(tdir)
    return trial_entry(i, doc.seed if doc.seed is not None else seed, doc.metrics, str(doc.path))


def trial_results(plan: TrialPlan, tdir: Path, i: int, seed: int, results: dict) -> Results:
    """The trial's metrics line (its evaluation), and its results.json document."""
    if not results.get(plan.test[0]):
        raise RuntimeError(f"trial {i}: the evaluator returned no results ({results})")
    metrics = extract_metrics(results[plan.test[0]], plan.kind, plan.cfg.MODEL.MASK_ON)
    pairs = metrics.items() if plan.kind == "coco" else [("bbox", metrics)]
    flat = {f"{t}/{k}" if plan.kind == "coco" else k: v for t, d in pairs for k, v in d.items()}
    MetricsWriter(tdir, tensorboard=False).write({"stage": "detection", "iter": plan.cfg.SOLVER.MAX_ITER,
                                                  "trial": i, **flat})
    return Results.new(task="detection", dataset=plan.bench, metrics=metrics,
                       config={**plan.resolved, "seed": seed, "OUTPUT_DIR": str(tdir)}, source=plan.source,
                       batch_size=plan.cfg.SOLVER.IMS_PER_BATCH, extra={"trial": i, "seed": seed, **plan.fields()})


def write_summary(sr: StageRun, plan: TrialPlan, trials: list[dict | None]) -> None:
    """DIR/results.json (through the stage's frame `sr`): the mean over trials, their sample std and the
    per-trial list (`trials`: the entries on rank 0)."""
    doc = None
    if sr.is_main:
        mean, std = aggregate([t["metrics"] for t in trials])
        doc = Results.new(task="detection", dataset=plan.bench, metrics=mean, config=plan.resolved,
                          source=plan.source, batch_size=plan.cfg.SOLVER.IMS_PER_BATCH,
                          extra={**summary_extra(trials, std), **plan.fields()})
    path = sr.results(doc)
    if sr.is_main:
        print(f"simsiam detect: {len(trials)} trial(s) on {plan.bench}: mean {json.dumps(doc.metrics)}; "
              f"std {json.dumps(doc.extra['std'])}")
        print(f"results: {path}")
