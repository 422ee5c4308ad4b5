"""SimSiam pretraining: setup -> build -> (resume) -> epochs -> summary.

`run(cfg, output_dir)` is the whole job. It reads only the env:// variables for distribution, writes
everything under output_dir (config.yaml/json, checkpoint.pth + snapshots, metrics.jsonl, tb/, log.txt,
results.json) and resumes by itself when output_dir already holds checkpoint.pth.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt_io
from . import config as config_mod
from . import data as data_mod
from . import distributed
from . import methods
from .augment import eval_crop_fraction
from .cpu_augment import device_views
from .defaults import PretrainConfig, init_lr
from .errors import InputError
from .frame import StageRun
from .logs import progress
from .loss import simsiam_loss, views_per_image
from .monitor import collapse_floor, collapse_std, extract_features, knn_accuracy
from .optim import adjust_learning_rate, build_optimizer, group_lr, in_warmup
from .protocol import pretrain_fingerprint, recipe_of
from .results import PretrainInfo, Results, Source


class NonFiniteLossError(InputError, FloatingPointError):
    """The loss became NaN/inf: the run stops and the last good checkpoint is kept."""


class ResumeConfigError(InputError, ValueError):
    """The config of a run folder's checkpoint disagrees with the config given for resuming."""


# ------------------------------------------------------------------------------------------------ setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(flag: bool) -> None:
    torch.backends.cudnn.deterministic = flag
    torch.backends.cudnn.benchmark = not flag
    torch.use_deterministic_algorithms(flag, warn_only=True)
    if flag:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def amp_dtype(cfg: PretrainConfig, device: torch.device):
    """The autocast dtype that train.amp gives on `device`, or None (fp32).

    bf16 applies on every device type whose autocast supports it (CUDA and CPU); fp16 only on CUDA, where the
    GradScaler guards its small exponent range, so fp16 on another device is None."""
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise config_mod.ConfigError(f"train.amp: '{cfg.train.amp}' is not one of none, bf16, fp16")
    if cfg.train.amp == "none" or not torch.amp.is_autocast_available(device.type):
        return None
    if cfg.train.amp == "fp16":
        return torch.float16 if device.type == "cuda" else None
    return torch.bfloat16


AMP_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast(device_type: str, dtype):
    """torch.autocast(device_type, dtype) when dtype is given, else a no-op context."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def weights_channels_last(model: torch.nn.Module) -> bool:
    """True when every 4-d weight of `model` (the convolutions) is stored in channels-last memory format."""
    convs = [p for p in model.parameters() if p.dim() == 4]
    return bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor builds its CPU kernels with (CXX / g++ / clang++ ...), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception:  # torch raises its own error types when none is found
        return None


def compile_model(model, device: torch.device, log):
    """torch.compile(model) with the default (inductor) backend on any device. Inductor builds C++ kernels on
    CPU: without a C++ compiler the model stays eager (a warning is logged) instead of failing at step 1."""
    if device.type == "cpu" and cpp_compiler() is None:
        log.warning("train.compile=true: no C++ compiler found for TorchInductor's CPU kernels (set CXX or "
                    "install g++); training without torch.compile")
        return model
    return torch.compile(model)


def applied_switches(model, run_model, dtype) -> dict:
    """The speed switches in effect, read from what the loop uses: the autocast dtype, the memory format of the
    model's convolution weights, and whether the stepped model is a torch.compile wrapper."""
    return {"amp": AMP_NAMES[dtype], "channels_last": weights_channels_last(model),
            "compiled": hasattr(run_model, "_orig_mod")}


# Config keys that may differ between the run that wrote a checkpoint and the run resuming from it, because
# they do not change the optimisation trajectory: monitoring (kNN monitor, its held-out split, TensorBoard),
# logging, checkpoint snapshots, where this invocation stops, loader processes, the folder of the generated
# data, corrupt-image handling, speed switches that keep the maths (channels-last, compile, deterministic
# kernels, device augmentation with the same distributions) and init_from (read only when no checkpoint
# exists). Every other key is compared on resume: model, optim, data content and augmentation, epochs, batch,
# seed, steps per epoch, precision, and any key added later.
RESUME_HARMLESS = ("monitor", "init_from", "data.val_split", "data.workers", "data.prefetch", "data.cache_dir",
                   "data.on_corrupt",
                   "train.print_freq", "train.save_freq", "train.stop_after_epochs", "train.deterministic",
                   "train.channels_last", "train.compile", "train.gpu_augment")


def trajectory_changes(stored: dict, cfg: PretrainConfig) -> list[dict]:
    """[{"key", "old", "new"}] for each config key outside RESUME_HARMLESS whose value in `stored` (the config
    a checkpoint holds) differs from cfg's. A key the stored config lacks counts with its default value."""
    old = {**config_mod.flatten(config_mod.to_dict(PretrainConfig())), **config_mod.flatten(stored)}
    harmless = lambda key: any(key == h or key.startswith(h + ".") for h in RESUME_HARMLESS)  # noqa: E731
    return [{"key": k, "old": old.get(k), "new": v} for k, v in config_mod.flatten(config_mod.to_dict(cfg)).items()
            if not harmless(k) and old.get(k) != v]


def describe_changes(changes: list[dict]) -> str:
    """'train.epochs: 100 in the checkpoint, 200 now; ...' (values as JSON)."""
    return "; ".join(f"{c['key']}: {json.dumps(c['old'])} in the checkpoint, {json.dumps(c['new'])} now"
                     for c in changes)


def read_resume_state(latest: Path, cfg: PretrainConfig, allow_change: bool) -> tuple[dict | None, list[dict]]:
    """(checkpoint to resume from or None, its trajectory changes to cfg as {"epoch", "key", "old", "new"}).

    Reads only: a change is a ResumeConfigError (one line naming each key and both values) unless allowed."""
    if not latest.is_file():
        return None, []
    state = ckpt_io.read_checkpoint(latest)
    if ckpt_io.checkpoint_kind(state) != ckpt_io.FORMAT:
        raise ckpt_io.CheckpointError(f"{latest}: not a '{ckpt_io.FORMAT}' checkpoint; cannot resume from it")
    epoch = int(state.get("epoch", 0))
    changes = [{"epoch": epoch, **c} for c in trajectory_changes(state.get("config") or {}, cfg)]
    if changes and not allow_change:
        raise ResumeConfigError(f"{latest} (epoch {epoch}) was written with another config: "
                                f"{describe_changes(changes)}; pass --allow-config-change to resume anyway")
    return state, changes


def config_history(state: dict | None, changes: list[dict], log) -> list[dict]:
    """The run's config changes: those its checkpoint lists, then this resume's (each logged as a warning)."""
    for c in changes:
        log.warning("config changed on resume after epoch %d (--allow-config-change): %s", c["epoch"],
                    describe_changes([c]))
    return list((state or {}).get("config_changes") or []) + changes


def _train_set_size(loader) -> tuple[int | None, int | None]:
    """(training images, classes) behind a pretraining loader: the PIL loader's image folder, or the device
    loader (pretrain.fastdata) itself."""
    if loader is None:
        return None, None
    if hasattr(loader, "num_images"):
        return loader.num_images, len(loader.classes)
    return len(loader.dataset), len(loader.dataset.classes)


def summary_results(output_dir: Path, cfg: PretrainConfig, dataset: str, metrics: dict, epochs_done: int,
                    complete: bool, loader=None, config_changes: list | None = None,
                    applied: dict | None = None) -> Results:
    """results.json of the pretraining run (the schema of every stage, pretrain.results), with its checkpoint
    and recipe as an evaluation of it records them (source), the protocol it ran (pretrain.protocol; `loader`
    gives the number of training images used), the config changes accepted on resume (`config_changes`, see
    config_history) and the precision and speed switches in effect in the last invocation (`applied`, see
    applied_switches)."""
    latest = output_dir / ckpt_io.LATEST
    d, t = cfg.data, cfg.train
    pre = PretrainInfo(method=methods.display_name(cfg.method), arch=cfg.model.arch, epochs=epochs_done, batch_size=t.batch_size,
                       dataset=dataset, scheduled_epochs=t.epochs, completed=epochs_done == t.epochs,
                       image_size=d.image_size, limit_per_class=d.limit_per_class,
                       max_steps_per_epoch=t.max_steps_per_epoch, config_changes=config_changes or [],
                       recipe=recipe_of(config_mod.to_dict(cfg)))
    source = Source(checkpoint=str(latest.resolve()), kind="simsiam-suite",
                    sha256=ckpt_io.sha256_file(latest) if latest.is_file() else None, pretrain=pre)
    images, classes = _train_set_size(loader)
    protocol = pretrain_fingerprint(cfg, dataset=dataset, train_images=images, classes=classes,
                                    epochs_done=epochs_done)
    return Results.new(task="pretrain", dataset=dataset, metrics=metrics, config=config_mod.to_dict(cfg),
                       source=source, epochs=epochs_done, batch_size=t.batch_size,
                       extra={"complete": complete, "planned_epochs": t.epochs, "protocol": protocol,
                              "config_changes": config_changes or [], "applied": applied})


# ------------------------------------------------------------------------------------------- one step
def forward_loss(model, x1: torch.Tensor, x2: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """SimSiam forward on two views (autocast to `dtype` on the views' device when given): (loss, z1)."""
    with autocast(x1.device.type, dtype):
        p1, p2, z1, z2 = model(x1, x2)
        loss = simsiam_loss(p1, p2, z1, z2)
    return loss, z1


def step_loss(objective, model, views, loader, *, epoch: int, step_in_epoch: int, step: int,
              dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's (loss, z1) of the method's objective (pretrain.methods; SimSiam's: pretrain.loss.Objective under
    the loss and target switches), after its work before a step (a k-step copy's refresh); SimSiam's default is
    exactly forward_loss."""
    indices = objective.before_step(model, loader, epoch=epoch, step_in_epoch=step_in_epoch, step=step)
    with autocast(views[0].device.type, dtype):
        return objective(model, views, indices)


def optimizer_step(loss: torch.Tensor, optimizer, scaler, before_update=None) -> None:
    """Backward and update (through the GradScaler for fp16). `before_update()`, when given, runs between the
    two on the gradients (unscaled under fp16): the objective's before_optimizer_step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if before_update is not None:
            scaler.unscale_(optimizer)
            before_update()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if before_update is not None:
            before_update()
        optimizer.step()


# ------------------------------------------------------------------------------------------- one epoch
@dataclasses.dataclass
class EpochTally:
    """Running sums of one epoch on one rank. A mid-epoch checkpoint keeps them, so an epoch resumed in its
    middle reports the same loss, collapse and step count as an uninterrupted one."""
    steps: int = 0
    loss_sum: float = 0.0
    collapse_sum: float = 0.0
    seconds: float = 0.0
    batch_per_rank: int = 0
    data_wait: float = 0.0          # seconds of `seconds` spent waiting for the next batch

    def add(self, batch_per_rank: int, loss: float, collapse: float | None) -> None:
        """One step's batch size, reduced loss and (when monitored) collapse std."""
        self.steps += 1
        self.batch_per_rank = batch_per_rank
        self.loss_sum += loss
        self.collapse_sum += collapse or 0.0


def steps_per_epoch(loader, cfg: PretrainConfig) -> int:
    """Training steps in one epoch: the loader's batches, capped by train.max_steps_per_epoch."""
    cap = cfg.train.max_steps_per_epoch
    return len(loader) if cap <= 0 else min(len(loader), cap)


def reduce_step(loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """One collective per step: the loss averaged over ranks, and whether any rank was asked to stop (so every
    rank stops after the same step)."""
    both = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    mean = distributed.all_reduce_mean(both)
    return mean[0].item(), mean[1].item() > 0


def epoch_stats(tally: EpochTally, cfg: PretrainConfig, info: distributed.DistInfo) -> dict:
    """The epoch's metrics (the collapse monitor averaged over ranks)."""
    n = max(tally.steps, 1)
    stats = {"loss": tally.loss_sum / n, "steps": tally.steps, "time": tally.seconds,
             "world_size": info.world_size, "batch_per_rank": tally.batch_per_rank,
             "images_per_s": tally.steps * cfg.train.batch_size / max(tally.seconds, 1e-9),
             "data_wait": tally.data_wait / max(tally.seconds, 1e-9)}   # share of the epoch spent waiting for data
    if cfg.monitor.collapse:
        stats["collapse_std"] = distributed.all_reduce_mean(
            torch.tensor(tally.collapse_sum / n, device=info.device)).item()
    return stats


def train_one_epoch(model, loader, optimizer, scaler, *, epoch: int, step: int, cfg: PretrainConfig,
                    info: distributed.DistInfo, dtype, last_good: str, tally: EpochTally | None = None,
                    stop: "StopRequest | None" = None, objective=None, report=None
                    ) -> tuple[dict | None, int, EpochTally]:
    """Train on the rest of epoch `epoch` (the loader is set to it, after `tally.steps` batches when resumed).

    Returns (stats, global step, tally); stats is None when a stop request ended the epoch early: the tally
    then holds the steps done so far, for a mid-epoch checkpoint. `objective`: the step's loss (default: the
    method's with this model, pretrain.methods); a warm-up epoch sets the lr at every step.
    `report` (StageRun.progress) is told the position after every step."""
    model.train()
    objective = objective or methods.build_objective(cfg, model)
    warm = in_warmup(epoch, cfg.optim.warmup_epochs)
    tally = tally or EpochTally()
    n_steps = steps_per_epoch(loader, cfg)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    t0 = time.time()
    bar = progress(loader, total=n_steps - tally.steps, enabled=info.is_main,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
    ready = time.time()
    for i, (views, _) in enumerate(bar, start=tally.steps):
        if i >= n_steps:
            break
        tally.data_wait += time.time() - ready
        views = device_views(views, info.device, memory_format, cfg.data.mean, cfg.data.std)
        if warm:
            adjust_learning_rate(optimizer, init_lr(cfg), epoch, cfg.train.epochs, cfg.optim.schedule,
                                 cfg.optim.warmup_epochs, i, n_steps)
        loss, z1 = step_loss(objective, model, views, loader, epoch=epoch, step_in_epoch=i, step=step, dtype=dtype)
        loss_val, stopping = reduce_step(loss, stop is not None and stop.requested())
        if not math.isfinite(loss_val):  # every rank sees the same reduced value and stops together
            raise NonFiniteLossError(
                f"loss is {loss_val} at epoch {epoch + 1}, step {i + 1}/{n_steps} (global step {step + 1}): "
                f"training stopped before this update; the last good checkpoint is kept: {last_good}")
        optimizer_step(loss, optimizer, scaler, functools.partial(objective.before_optimizer_step, model, step))
        step += 1
        objective.after_step(model, step)
        tally.add(views[0].shape[0], loss_val, collapse_std(z1) if cfg.monitor.collapse else None)
        if report is not None:
            report(epoch=epoch + 1, epochs=cfg.train.epochs, step=tally.steps, steps=n_steps)
        if info.is_main and hasattr(bar, "set_postfix") and (i % max(cfg.train.print_freq, 1) == 0):
            bar.set_postfix(loss=f"{loss_val:.4f}")
        if stopping and tally.steps < n_steps:
            tally.seconds += time.time() - t0
            return None, step, tally
        ready = time.time()
    tally.seconds += time.time() - t0
    return epoch_stats(tally, cfg, info), step, tally


def build_data(cfg: PretrainConfig, train_dir: Path, val_dir, info: distributed.DistInfo):
    """(training batches, kNN monitor loaders or None). train.gpu_augment: JPEG decode + the views of
    data.augmentation on the device (pretrain.fastdata; the whole split in device memory for small images), else the PIL
    reference pipeline. Both yield ((x1, x2), labels) batches with the same augmentation distributions
    (((x1, x2, x3, x4), labels), two pairs of views, for loss.symmetrisation=asymmetric_x2)."""
    pin = info.device.type == "cuda"
    want_knn = cfg.monitor.knn and val_dir is not None
    pairs = views_per_image(cfg.loss) // 2
    if not cfg.train.gpu_augment:
        loader = data_mod.build_pretrain_loader(cfg, train_dir, info.rank, info.world_size, pin_memory=pin,
                                                pairs=pairs)
        knn = data_mod.build_knn_loaders(cfg, train_dir, val_dir, info.rank, info.world_size,
                                         pin_memory=pin) if want_knn else None
        return loader, knn
    from . import fastdata

    per_rank = data_mod.per_rank_batch(cfg.train.batch_size, info.world_size)
    cl = cfg.train.channels_last
    loader = fastdata.build_gpu_batches(cfg.data, per_rank, info.rank, info.world_size, cfg.train.seed,
                                        info.device, channels_last=cl, pairs=pairs)
    if not want_knn:
        return loader, None
    d = cfg.data
    crop = eval_crop_fraction(d.image_size)
    mk = lambda folder, limit: fastdata.build_gpu_eval_batches(  # noqa: E731
        folder, d, info.device, limit_per_class=limit, batch_size=max(256, per_rank), crop_fraction=crop,
        rank=info.rank, world_size=info.world_size, channels_last=cl)
    bank = mk(train_dir, data_mod.knn_bank_limit(cfg))
    test = mk(val_dir, cfg.monitor.knn_max_val)
    return loader, (bank, test, len(data_mod.RobustImageFolder(train_dir, None, d.on_corrupt, 1).classes))


def parameters_finite(model) -> bool:
    return all(torch.isfinite(p).all().item() for p in model.parameters())


@torch.no_grad()
def knn_monitor(model, bank_loader, test_loader, num_classes: int, cfg: PretrainConfig,
                info: distributed.DistInfo, dtype) -> dict:
    net = distributed.unwrap(model)
    was_training = net.training
    net.eval()
    try:
        with autocast(info.device.type, dtype):
            bank, bank_y = extract_features(net.backbone_features, bank_loader, info.device)
            test, test_y = extract_features(net.backbone_features, test_loader, info.device)
    finally:
        net.train(was_training)
    return knn_accuracy(bank, bank_y, test, test_y, cfg.monitor.knn_k, cfg.monitor.knn_t, num_classes)


# ------------------------------------------------------------------------------------- pause and stop
PAUSE_FILE = "PAUSE"
STOP_FILE = "STOP"
_signalled = threading.Event()


def wait_while_paused(output_dir: Path, log, poll: float = 0.2) -> None:
    """Hold training at an epoch boundary, after its checkpoint is written, while `<output_dir>/PAUSE` exists.

    Any launcher (or a person) can stop a run at a known, checkpointed point with `touch RUN/PAUSE` and let
    it go on with `rm RUN/PAUSE`; the SLURM tests use it to interrupt jobs at a chosen epoch instead of
    racing them. Every rank polls the file itself (the run folder is on a shared file system).
    """
    flag = output_dir / PAUSE_FILE
    if not flag.exists():
        return
    log.info("paused after a checkpoint while %s exists; remove it to continue", flag)
    while flag.exists():
        time.sleep(poll)
    log.info("%s removed: continuing", flag)


def request_stop(*_signal_args) -> None:
    """Ask the training of this process to stop after its current step: it writes a checkpoint with its data
    position and returns (resume with the same command). Usable as a signal handler: pretrain.main installs
    it for SIGUSR1, and a launcher that has its own preemption signal calls it from its handler."""
    _signalled.set()


class StopRequest:
    """Whether this run was asked to stop mid-epoch: request_stop() in this process, or a `<run>/STOP` file
    (any launcher, or a person: `touch RUN/STOP`). Every rank checks at every step; the ranks agree through
    the step's all-reduce. The request is used up when the stop's checkpoint is written."""

    def __init__(self, output_dir: Path):
        self.file = Path(output_dir) / STOP_FILE

    def requested(self) -> bool:
        return _signalled.is_set() or self.file.exists()

    def consume(self, is_main: bool) -> None:
        _signalled.clear()
        if is_main:
            self.file.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- run
def run(cfg: PretrainConfig, output_dir: str | Path, allow_config_change: bool = False) -> dict:
    """Pretrain (or resume) into output_dir; returns a summary of this invocation.

    Resuming with a config that changes the trajectory (see RESUME_HARMLESS) is a ResumeConfigError, raised
    before anything is written, unless allow_config_change: the change is then logged and listed in
    results.json and in the checkpoints ("config_changes": {epoch, key, old, new})."""
    output_dir = Path(output_dir)
    methods.check(cfg)
    data_mod.check_views(cfg)
    state, changes = read_resume_state(output_dir / ckpt_io.LATEST, cfg, allow_config_change)
    with StageRun("pretrain", output_dir, tensorboard=cfg.monitor.tensorboard) as sr:
        trainer = Pretraining(cfg, sr, config_history(state, changes, sr.log))
        trainer.resume(state)
        return trainer.fit()


class Pretraining:
    """One invocation of a pretraining run inside its StageRun: build, resume, train epochs, summarise."""

    def __init__(self, cfg: PretrainConfig, sr: StageRun, config_changes: list[dict]):
        """Build the model, optimiser and data of `cfg` (same initial weights on every rank)."""
        self.cfg, self.sr, self.log, self.info = cfg, sr, sr.log, sr.info
        self.config_changes = config_changes
        self.latest = sr.dir / ckpt_io.LATEST
        set_deterministic(cfg.train.deterministic)
        self.dtype = amp_dtype(cfg, self.info.device)
        sr.save_config(cfg)
        train_dir, val_dir = data_mod.resolve_roots(cfg.data)
        self.dataset = data_mod.dataset_name(cfg.data)
        seed_everything(cfg.train.seed)            # same initial weights on every rank
        model = methods.build_model(cfg)
        if cfg.init_from and not self.latest.is_file():
            ckpt_io.load_weights(model, os.path.expanduser(cfg.init_from))
            self.log.info("initialised weights from %s", cfg.init_from)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = distributed.prepare_model(model, self.info, sync_bn=cfg.model.sync_bn)
        self.lr0 = init_lr(cfg)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr0)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        seed_everything(cfg.train.seed + self.info.rank)  # any other randomness differs per rank
        self.loader, self.knn_loaders = build_data(cfg, train_dir, val_dir, self.info)
        self.run_model = compile_model(self.model, self.info.device, self.log) if cfg.train.compile else self.model
        self.objective = methods.build_objective(cfg, self.model, methods.Context(
            num_images=_train_set_size(self.loader)[0], device=self.info.device,
            batch_per_rank=data_mod.per_rank_batch(cfg.train.batch_size, self.info.world_size),
            total_steps=cfg.train.epochs * steps_per_epoch(self.loader, cfg)))
        self.applied = applied_switches(self.model, self.run_model, self.dtype)
        self.start_epoch, self.step, self.tally, self.resumed = 0, 0, None, False
        self.stop = StopRequest(sr.dir)
        self._describe(train_dir, val_dir)

    def _describe(self, train_dir, val_dir) -> None:
        cfg, info, applied = self.cfg, self.info, self.applied
        self.log.info("%s %s on %s (%s): %d processes, global batch %d (%d per process), lr %.4g, "
                      "%d epochs; train %s, held-out %s", methods.display_name(cfg.method), cfg.model.arch, self.dataset, info.device,
                      info.world_size, cfg.train.batch_size, cfg.train.batch_size // info.world_size, self.lr0,
                      cfg.train.epochs, train_dir, val_dir)
        self.log.info("precision and speed switches in effect: amp %s, channels_last %s, compiled %s",
                      applied["amp"], applied["channels_last"], applied["compiled"])
        if applied["amp"] != cfg.train.amp:
            self.log.warning("train.amp=%s does not apply on %s (fp16 needs CUDA's GradScaler): training in "
                             "fp32", cfg.train.amp, info.device)

    def resume(self, state: dict | None) -> None:
        """Continue from a checkpoint (its weights, optimiser, RNG of every rank; mid-epoch: the data
        position and the epoch's running sums). Metrics lines of epochs it does not hold are dropped."""
        if state is not None:
            ckpt_io.resume(self.sr.dir, distributed.unwrap(self.model), self.optimizer, self.scaler, state=state)
            if self.objective.stateful:
                self.objective.load_state_dict(state.get("target"))
            self.start_epoch, self.step, self.resumed = int(state["epoch"]), int(state["step"]), True
            per_rank = state.get("rng_ranks") or []
            if len(per_rank) == self.info.world_size and self.info.distributed:
                ckpt_io.set_rng_state(per_rank[self.info.rank])
            self._resume_position(state)
            self.log.info("resumed from %s at epoch %d, step %d of the epoch (global step %d)", self.latest,
                          self.start_epoch, self.tally.steps if self.tally else 0, self.step)
        self.sr.metrics.drop_after("pretrain", self.start_epoch)  # an epoch without its checkpoint is redone

    def _resume_position(self, state: dict) -> None:
        positions = state.get("positions") or []
        if not int(state.get("epoch_step", 0)):
            return
        if len(positions) != self.info.world_size:
            self.log.warning("the checkpoint stopped inside epoch %d with %d processes, this run has %d: the "
                             "epoch restarts from its first batch", self.start_epoch + 1, len(positions),
                             self.info.world_size)
            return
        mine = positions[self.info.rank]
        self.tally = EpochTally(**mine["tally"])
        self.loader.set_epoch(self.start_epoch, self.tally.steps)
        self.loader.load_state(mine["data"])

    def fit(self) -> dict:
        """Train the remaining epochs (until done, train.stop_after_epochs, or a stop request); summarise."""
        cfg, history, ran, stopped = self.cfg, [], 0, False
        last, knn = {"loss": float("nan")}, None
        for epoch in range(self.start_epoch, cfg.train.epochs):
            record, knn_now = self.train_epoch(epoch)
            if record is None:
                stopped = True
                break
            knn = knn_now or knn
            history.append(record)
            last, ran = record, ran + 1
            if self.stop.requested() or (cfg.train.stop_after_epochs and ran >= cfg.train.stop_after_epochs):
                stopped = self.stop.requested()
                self.stop.consume(self.info.is_main)
                self.log.info("stopping after %d epoch(s) in this invocation; run the same command again to "
                              "resume", ran)
                break
            wait_while_paused(self.sr.dir, self.log)  # a stop asked for while held ends the next step
        return self.finish(history, last, knn, ran, stopped)

    def train_epoch(self, epoch: int) -> tuple[dict | None, dict | None]:
        """One epoch (or its rest) and its checkpoint; (metrics record, kNN result), or (None, None) when a
        stop request ended it early (a mid-epoch checkpoint is then written)."""
        cfg = self.cfg
        lr = adjust_learning_rate(self.optimizer, self.lr0, epoch, cfg.train.epochs, cfg.optim.schedule,
                                  cfg.optim.warmup_epochs, self.tally.steps if self.tally else 0,
                                  steps_per_epoch(self.loader, cfg))
        if self.tally is None:
            self.loader.set_epoch(epoch)
        good = str(self.latest) if self.latest.is_file() else "none (no epoch finished yet)"
        stats, self.step, tally = train_one_epoch(
            self.run_model, self.loader, self.optimizer, self.scaler, epoch=epoch, step=self.step, cfg=cfg,
            info=self.info, dtype=self.dtype, last_good=good, tally=self.tally, stop=self.stop,
            objective=self.objective, report=self.sr.progress)
        self.tally = None
        if stats is None:
            self.save(epoch, tally)
            self.stop.consume(self.info.is_main)
            self.log.info("stopped on request after step %d of epoch %d (global step %d); checkpoint with the "
                          "data position written: run the same command to resume", tally.steps, epoch + 1,
                          self.step)
            return None, None
        if not parameters_finite(distributed.unwrap(self.model)):
            raise NonFiniteLossError(f"weights became NaN/inf during epoch {epoch + 1}: training stopped; "
                                     f"the last good checkpoint is kept: {good}")
        record = self._record(epoch, lr, stats)
        knn = None
        if self.knn_loaders is not None and ((epoch + 1) % max(cfg.monitor.knn_every, 1) == 0
                                             or epoch + 1 == cfg.train.epochs):
            knn = knn_monitor(self.model, *self.knn_loaders, cfg, self.info, self.dtype)
            record["knn_top1"], record["knn_top5"] = knn["top1"], knn["top5"]
        self.save(epoch + 1, None, record)
        distributed.barrier()
        return record, knn

    def _record(self, epoch: int, lr: float, stats: dict) -> dict:
        record = {"stage": "pretrain", "epoch": epoch + 1, "step": self.step, "lr": lr,
                  "pred_lr": group_lr(self.optimizer, "predictor"), **stats}
        if self.cfg.monitor.collapse:
            # the batch each BN normalises over (SyncBN: the global batch) sets the collapse monitor's floor
            synced = any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules())
            bn_batch = self.cfg.train.batch_size if synced else data_mod.per_rank_batch(
                self.cfg.train.batch_size, self.info.world_size)
            record["collapse_ref"] = 1.0 / math.sqrt(self.cfg.model.dim)
            record["collapse_floor"] = collapse_floor(bn_batch, self.cfg.model.dim)
        return record

    def save(self, epochs_done: int, tally: EpochTally | None, record: dict | None = None) -> None:
        """checkpoint.pth after `epochs_done` whole epochs (+ `tally.steps` batches of the next one when
        stopping mid-epoch): weights, optimiser, every rank's RNG and, mid-epoch, every rank's data position.
        The epoch's metrics line goes first: a kill between the two repeats the epoch, never loses its line."""
        mine = {"rng": ckpt_io.rng_state(), "data": self.loader.state(),
                "tally": dataclasses.asdict(tally) if tally else None}
        ranks = [mine]
        if self.info.distributed:
            ranks = [None] * self.info.world_size
            dist.all_gather_object(ranks, mine)
        target = self.objective.state_dict()  # e.g. the moving-average store: gathered from every rank
        if not self.info.is_main:
            return
        ck = ckpt_io.make_checkpoint(distributed.unwrap(self.model), self.optimizer, self.scaler,
                                     epoch=epochs_done, step=self.step, config=config_mod.to_dict(self.cfg),
                                     dataset=self.dataset, arch=self.cfg.model.arch, target=target)
        if self.info.distributed:
            ck["rng_ranks"] = [r["rng"] for r in ranks]
        ck["config_changes"] = self.config_changes
        ck["epoch_step"] = tally.steps if tally else 0
        if tally:
            ck["positions"] = [{"data": r["data"], "tally": r["tally"]} for r in ranks]
        if record is not None:
            self.sr.metrics.write(record)
            self._log_epoch(record)
        ckpt_io.save_checkpoint(ck, self.sr.dir, 0 if tally else self.cfg.train.save_freq)

    def _log_epoch(self, r: dict) -> None:
        self.log.info("epoch %d/%d: loss %.4f  collapse_std %s  kNN top-1 %s  lr %.4g  %.1f img/s  data_wait %.0f%%",
                      r["epoch"], self.cfg.train.epochs, r["loss"],
                      f"{r['collapse_std']:.4f}" if "collapse_std" in r else "-",
                      f"{r['knn_top1']:.2f}" if "knn_top1" in r else "-", r["lr"], r["images_per_s"],
                      100 * r["data_wait"])

    def finish(self, history: list[dict], last: dict, knn: dict | None, ran: int, stopped: bool) -> dict:
        """results.json of the run so far, and this invocation's summary."""
        cfg, info = self.cfg, self.info
        epochs_done = self.start_epoch + ran
        complete = epochs_done >= cfg.train.epochs
        if self.resumed and ran == 0 and not stopped and self.knn_loaders is not None:
            knn = knn_monitor(self.model, *self.knn_loaders, cfg, info, self.dtype)  # finished run restarted
        metrics = {"loss": last.get("loss"), "collapse_std": last.get("collapse_std"),
                   "knn_top1": knn["top1"] if knn else None, "knn_top5": knn["top5"] if knn else None}
        self.sr.results(summary_results(self.sr.dir, cfg, self.dataset, metrics, epochs_done, complete, self.loader,
                                        self.config_changes, self.applied) if info.is_main else None)
        return {"output_dir": str(self.sr.dir), "checkpoint": str(self.latest), "epoch": epochs_done,
                "step": self.step, "complete": complete, "stopped_on_request": stopped,
                "resumed_from": self.start_epoch if self.resumed else None,
                "per_rank_batch": cfg.train.batch_size // info.world_size, "world_size": info.world_size,
                "metrics": metrics, "history": history, "applied": self.applied}
