"""The detection trainer, built from detectron2's public pieces: TrainerBase's loop and hooks running a
SimpleTrainer (AMPTrainer with SOLVER.AMP) step, as DefaultTrainer composes them, with its own construction:

- the model is wrapped for DDP here: detectron2's create_ddp_model with device_ids=None for a CPU model
  (DistributedDataParallel takes none there) and its default (the local rank's GPU) for a GPU model;
- the checkpointer is a SafeCheckpointer (resuming a trial reads its files without running code);
- our evaluators (VOC, COCO without the C++ evaluator when detectron2 has no compiled ops), data mapper that
  names a bad image, metrics.jsonl writer and a bounded number of periodic snapshots.

Checkpoints have DefaultTrainer's layout ("model", "trainer" with "iteration", "hooks" and "_trainer"), so a
trial folder written by either resumes with the other.
"""
from __future__ import annotations

import gc
import logging
import os
import time
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
from fvcore.nn.precise_bn import get_bn_modules

from pretrain.frame import run_log
from pretrain.logs import MetricsWriter
from transfer.evaluation import detection_data as dd

from .heads import zero_init_residual
from .shim import has_real_extension, import_detectron2
from .weights import SafeCheckpointer, load_pretrained

import_detectron2()
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks  # noqa: E402
from detectron2.engine import create_ddp_model, default_writers  # noqa: E402
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: E402
from detectron2.evaluation import inference_on_dataset, print_csv_format, verify_results  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_lr_scheduler, build_optimizer  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventWriter, get_event_storage  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

log = logging.getLogger("simsiam.detect")
LOGGERS = ("detectron2", "fvcore", "simsiam")  # fvcore: the checkpointer's report on loaded weights


def setup_process(distributed: bool) -> None:
    """Once per process: detectron2's local process group (a multi-process run) and its console set-up
    (ours is the stage frame's)."""
    if distributed:
        comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() or 1)))
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    setup_logger(distributed_rank=comm.get_rank(), name="fvcore")


class RobustMapper(DatasetMapper):
    """DatasetMapper that names the file when an image cannot be read. Training skips such an image with a
    warning (detectron2's MapDataset then draws another); evaluation stops with the file's name."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:  # noqa: BLE001 - PIL/numpy raise many kinds for a bad image
            msg = f"{dataset_dict.get('file_name')}: cannot be used ({type(e).__name__}: {e})"
            if self.is_train:
                log.warning(msg + "; skipped")
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


def wrap_for_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The model in DistributedDataParallel when there are several processes (detectron2's create_ddp_model):
    on its GPU for a CUDA model, without device_ids for a CPU model."""
    cpu = next(model.parameters()).device.type == "cpu"
    return create_ddp_model(model, broadcast_buffers=False, **({"device_ids": None} if cpu else {}))


class Trainer(TrainerBase):
    """Fine-tunes a detectron2 model on cfg.DATASETS.TRAIN and evaluates it on cfg.DATASETS.TEST (see the module
    docstring). `eval_results`: what the last evaluation returned ({dataset name: metrics}; {} on ranks > 0)."""

    def __init__(self, cfg):
        super().__init__()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())  # SOLVER.REFERENCE_WORLD_SIZE
        model = build_model(cfg)
        log.info("Model:\n%s", model)
        optimizer = build_optimizer(cfg, model)
        loader = self.build_train_loader(cfg)
        step = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = step(wrap_for_ddp(model), loader, optimizer)
        self.scheduler = build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.eval_results: dict = {}
        self.register_hooks(self.build_hooks())

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    def resume(self) -> None:
        """Continue from the last checkpoint of cfg.OUTPUT_DIR: model, optimizer, scheduler and iteration."""
        self.checkpointer.resume_or_load("", resume=True)
        if self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1  # the checkpoint stores the iteration that just finished

    def train(self) -> dict:
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, self.eval_results)
        return self.eval_results

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self):
        return {**super().state_dict(), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    def build_hooks(self) -> list:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model):
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                                       cfg.TEST.PRECISE_BN.NUM_ITER))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                                  max_to_keep=max(1, cfg.SIMSIAM.KEEP_CHECKPOINTS)))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self.evaluate))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=min(20, cfg.SOLVER.MAX_ITER)))
        return ret

    def build_writers(self) -> list:
        return [*default_writers(self.cfg.OUTPUT_DIR, self.max_iter),
                JsonlWriter(Path(self.cfg.OUTPUT_DIR) / "metrics.jsonl", lambda: self.start_iter)]

    def evaluate(self) -> dict:
        """Evaluate the model on every test dataset; {dataset name: evaluator results} (flat for one dataset,
        as EvalHook expects: it logs and stores them)."""
        results = OrderedDict()
        for name in self.cfg.DATASETS.TEST:
            results[name] = inference_on_dataset(self.model, self.build_test_loader(self.cfg, name),
                                                 self.build_evaluator(self.cfg, name))
            if comm.is_main_process():
                log.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        self.eval_results = results
        return results[name] if len(results) == 1 else results

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


def train_trial(base, trial_dir: Path, seed: int, weights: str) -> dict:
    """Train + evaluate one trial in trial_dir (resuming if it holds a checkpoint); returns {test dataset:
    evaluator results} (empty on ranks > 0)."""
    cfg = base.clone()
    cfg.OUTPUT_DIR = str(trial_dir)
    cfg.SEED = seed
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    trial_dir.mkdir(parents=True, exist_ok=True)
    if comm.is_main_process():
        (trial_dir / "config.yaml").write_text(cfg.dump())
    with run_log(trial_dir, comm.is_main_process(), LOGGERS):
        return _train(cfg, trial_dir, seed, weights)


def _train(cfg, trial_dir: Path, seed: int, weights: str) -> dict:
    seed_all_rng(seed + comm.get_rank())
    trainer = Trainer(cfg)
    if (trial_dir / "last_checkpoint").is_file():
        log.info("resuming %s from its last checkpoint", trial_dir)
        trainer.resume()
    elif weights:
        load_pretrained(trainer.model, weights)
    elif cfg.SIMSIAM.ZERO_INIT_RESIDUAL:
        n = zero_init_residual(trainer.model)
        log.info("random init: no weights loaded; detectron2's initialisation (seed %d) with the last norm of each "
                 "of the %d residual blocks zeroed (SIMSIAM.ZERO_INIT_RESIDUAL)", seed, n)
    else:
        log.info("random init: no weights loaded; the model keeps detectron2's initialisation (seed %d)", seed)
    t0 = time.time()
    results = trainer.train()
    elapsed = time.time() - t0
    done = cfg.SOLVER.MAX_ITER - trainer.start_iter
    log.info("trial %s: %d iterations in %.1f s (%.3f s/iter incl. evaluation)", trial_dir.name, done, elapsed,
             elapsed / max(done, 1))
    # the next trial builds its own model and loaders: release this one's (loader workers, GPU memory) now
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results
