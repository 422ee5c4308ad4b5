"""SimSiam pretraining: setup -> build -> (resume) -> epochs -> summary.

`run(cfg, output_dir)` is the whole job. It reads only the env:// variables for distribution, writes
everything under output_dir (config.yaml/json, checkpoint.pth + snapshots, metrics.jsonl, tb/, log.txt,
results.json) and resumes by itself when output_dir already holds checkpoint.pth.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt_io
from . import config as config_mod
from . import data as data_mod
from . import distributed
from .defaults import PretrainConfig, init_lr
from .logs import MetricsWriter, progress, setup_logger, write_results
from .loss import simsiam_loss
from .model import build_model
from .monitor import collapse_floor, collapse_std, extract_features, knn_accuracy
from .optim import adjust_learning_rate, build_optimizer


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the run stops and the last good checkpoint is kept."""


class ResumeConfigError(ValueError):
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
RESUME_HARMLESS = ("monitor", "init_from", "data.val_split", "data.workers", "data.cache_dir", "data.on_corrupt",
                   "train.print_freq", "train.save_freq", "train.stop_after_epochs", "train.deterministic",
                   "train.channels_last", "train.compile", "train.gpu_augment")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} of a nested config dict (tuples as lists)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def trajectory_changes(stored: dict, cfg: PretrainConfig) -> list[dict]:
    """[{"key", "old", "new"}] for each config key outside RESUME_HARMLESS whose value in `stored` (the config
    a checkpoint holds) differs from cfg's. A key the stored config lacks counts with its default value."""
    old = {**_flat(config_mod.to_dict(PretrainConfig())), **_flat(stored)}
    harmless = lambda key: any(key == h or key.startswith(h + ".") for h in RESUME_HARMLESS)  # noqa: E731
    return [{"key": k, "old": old.get(k), "new": v} for k, v in _flat(config_mod.to_dict(cfg)).items()
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


def write_summary(output_dir: Path, cfg: PretrainConfig, dataset: str, metrics: dict, epochs_done: int,
                  complete: bool, loader=None, config_changes: list | None = None,
                  applied: dict | None = None) -> Path:
    """results.json of the pretraining run (same schema as every evaluation's results.json), with the
    protocol it ran (transfer.protocols' vocabulary; `loader` gives the number of training images used),
    the config changes accepted on resume (`config_changes`, see config_history) and the precision and speed
    switches in effect in the last invocation (`applied`, see applied_switches)."""
    latest = output_dir / ckpt_io.LATEST
    d, o, t = cfg.data, cfg.optim, cfg.train
    source = {"checkpoint": str(latest.resolve()), "sha256": ckpt_io.sha256_file(latest) if latest.is_file() else None,
              "pretrain": {"method": "SimSiam", "arch": cfg.model.arch, "epochs": epochs_done,
                           "batch_size": t.batch_size, "dataset": dataset, "scheduled_epochs": t.epochs,
                           "completed": epochs_done == t.epochs, "image_size": d.image_size,
                           "limit_per_class": d.limit_per_class, "max_steps_per_epoch": t.max_steps_per_epoch,
                           "config_changes": config_changes or []}}
    images, classes = _train_set_size(loader)
    protocol = {"stage": "pretrain", "dataset": dataset, "arch": cfg.model.arch, "train_images": images,
                "classes": classes, "epochs": t.epochs, "epochs_done": epochs_done,
                "completed": epochs_done == t.epochs,
                "max_steps_per_epoch": t.max_steps_per_epoch, "limit_per_class": d.limit_per_class,
                "batch": t.batch_size, "optimizer": "sgd", "lr": init_lr(cfg), "base_lr": o.base_lr,
                "weight_decay": o.weight_decay, "momentum": o.momentum, "schedule": o.schedule,
                "fix_pred_lr": o.fix_pred_lr, "train_crop": d.image_size, "min_scale": d.min_scale}
    return write_results(output_dir, task="pretrain", dataset=dataset, metrics=metrics,
                         config=config_mod.to_dict(cfg), source=source, epochs=epochs_done,
                         batch_size=t.batch_size,
                         extra={"complete": complete, "planned_epochs": t.epochs, "protocol": protocol,
                                "config_changes": config_changes or [], "applied": applied})


# ------------------------------------------------------------------------------------------- one step
def forward_loss(model, x1: torch.Tensor, x2: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """SimSiam forward on two views (autocast to `dtype` on the views' device when given): (loss, z1)."""
    with autocast(x1.device.type, dtype):
        p1, p2, z1, z2 = model(x1, x2)
        loss = simsiam_loss(p1, p2, z1, z2)
    return loss, z1


def optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    """Backward and update (through the GradScaler for fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


# ------------------------------------------------------------------------------------------- one epoch
def train_one_epoch(model, loader, optimizer, scaler, *, epoch: int, step: int, cfg: PretrainConfig,
                    info: distributed.DistInfo, dtype, last_good: str) -> tuple[dict, int]:
    model.train()
    loader.set_epoch(epoch)
    n_steps = len(loader) if cfg.train.max_steps_per_epoch <= 0 else min(len(loader), cfg.train.max_steps_per_epoch)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    loss_sum = col_sum = 0.0
    n = batch_per_rank = 0
    t0 = time.time()
    bar = progress(loader, total=n_steps, enabled=info.is_main, desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
    for i, ((x1, x2), _) in enumerate(bar):
        if i >= n_steps:
            break
        x1 = x1.to(info.device, non_blocking=True, memory_format=memory_format)
        x2 = x2.to(info.device, non_blocking=True, memory_format=memory_format)
        loss, z1 = forward_loss(model, x1, x2, dtype)
        loss_val = distributed.all_reduce_mean(loss.detach().float()).item()
        if not math.isfinite(loss_val):  # every rank sees the same reduced value and stops together
            raise NonFiniteLossError(
                f"loss is {loss_val} at epoch {epoch + 1}, step {i + 1}/{n_steps} (global step {step + 1}): "
                f"training stopped before this update; the last good checkpoint is kept: {last_good}")
        optimizer_step(loss, optimizer, scaler)
        step += 1
        n += 1
        batch_per_rank = x1.shape[0]
        loss_sum += loss_val
        if cfg.monitor.collapse:
            col_sum += collapse_std(z1)
        if info.is_main and hasattr(bar, "set_postfix") and (i % max(cfg.train.print_freq, 1) == 0):
            bar.set_postfix(loss=f"{loss_val:.4f}")
    elapsed = time.time() - t0
    stats = {"loss": loss_sum / max(n, 1), "steps": n, "time": elapsed, "world_size": info.world_size,
             "batch_per_rank": batch_per_rank,
             "images_per_s": n * cfg.train.batch_size / max(elapsed, 1e-9)}
    if cfg.monitor.collapse:
        stats["collapse_std"] = distributed.all_reduce_mean(
            torch.tensor(col_sum / max(n, 1), device=info.device)).item()
    return stats, step


def build_data(cfg: PretrainConfig, train_dir: Path, val_dir, info: distributed.DistInfo):
    """(training batches, kNN monitor loaders or None). train.gpu_augment: JPEG decode + MoCo v2 augmentation
    on the device (pretrain.fastdata; the whole split in device memory for small images), else the PIL
    reference pipeline. Both yield ((x1, x2), labels) batches with the same augmentation distributions."""
    pin = info.device.type == "cuda"
    want_knn = cfg.monitor.knn and val_dir is not None
    if not cfg.train.gpu_augment:
        loader = data_mod.build_pretrain_loader(cfg, train_dir, info.rank, info.world_size, pin_memory=pin)
        knn = data_mod.build_knn_loaders(cfg, train_dir, val_dir, info.rank, info.world_size,
                                         pin_memory=pin) if want_knn else None
        return loader, knn
    from . import fastdata

    per_rank = data_mod.per_rank_batch(cfg.train.batch_size, info.world_size)
    cl = cfg.train.channels_last
    loader = fastdata.build_gpu_batches(cfg.data, per_rank, info.rank, info.world_size, cfg.train.seed,
                                        info.device, channels_last=cl, with_labels=True)
    if not want_knn:
        return loader, None
    d = cfg.data
    crop = 1.0 if d.image_size <= 64 else 224 / 256  # as the PIL kNN loaders: small images are used whole
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


# ------------------------------------------------------------------------------------------------- run
PAUSE_FILE = "PAUSE"


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


def run(cfg: PretrainConfig, output_dir: str | Path, allow_config_change: bool = False) -> dict:
    """Pretrain (or resume) into output_dir; returns a summary of this invocation.

    Resuming with a config that changes the trajectory (see RESUME_HARMLESS) is a ResumeConfigError, raised
    before anything is written, unless allow_config_change: the change is then logged and listed in
    results.json and in the checkpoints ("config_changes": {epoch, key, old, new})."""
    output_dir = Path(output_dir)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = distributed.init_distributed()
    try:
        return _run(cfg, output_dir, info, allow_config_change)
    finally:
        if owns_group:
            distributed.cleanup()


def _run(cfg: PretrainConfig, output_dir: Path, info: distributed.DistInfo, allow_config_change: bool) -> dict:
    latest = output_dir / ckpt_io.LATEST
    state, changes = read_resume_state(latest, cfg, allow_config_change)  # before anything is written
    # ---- setup
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    log = setup_logger(output_dir, info.is_main)
    config_changes = config_history(state, changes, log)
    set_deterministic(cfg.train.deterministic)
    dtype = amp_dtype(cfg, info.device)
    if info.is_main:
        config_mod.save(cfg, output_dir / "config.yaml")
    writer = MetricsWriter(output_dir, enabled=info.is_main, tensorboard=cfg.monitor.tensorboard)

    # ---- build
    train_dir, val_dir = data_mod.resolve_roots(cfg.data)
    dataset = data_mod.dataset_name(cfg.data)
    seed_everything(cfg.train.seed)            # same initial weights on every rank
    model = build_model(cfg.model)
    if cfg.init_from and not latest.is_file():
        ckpt_io.load_weights(model, os.path.expanduser(cfg.init_from))
        log.info("initialised weights from %s", cfg.init_from)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = distributed.prepare_model(model, info, sync_bn=cfg.model.sync_bn)
    lr0 = init_lr(cfg)
    optimizer = build_optimizer(model, cfg.optim, lr0)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    seed_everything(cfg.train.seed + info.rank)  # augmentation randomness differs per rank
    loader, knn_loaders = build_data(cfg, train_dir, val_dir, info)

    # ---- resume
    start_epoch, step = 0, 0
    if state is not None:
        ckpt_io.resume(output_dir, distributed.unwrap(model), optimizer, scaler, state=state)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        per_rank = state.get("rng_ranks") or []
        if len(per_rank) == info.world_size and info.world_size > 1:
            ckpt_io.set_rng_state(per_rank[info.rank])
        log.info("resumed from %s at epoch %d (step %d)", latest, start_epoch, step)
    writer.drop_after("pretrain", start_epoch)  # lines of an epoch that was not checkpointed are redone

    # the batch each BN normalises over (SyncBN: the global batch), which sets the collapse monitor's floor
    synced = any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    bn_batch = cfg.train.batch_size if synced else data_mod.per_rank_batch(cfg.train.batch_size, info.world_size)
    run_model = compile_model(model, info.device, log) if cfg.train.compile else model
    applied = applied_switches(model, run_model, dtype)

    log.info("SimSiam %s on %s (%s): %d processes, global batch %d (%d per process), lr %.4g, %d epochs; "
             "train %s, held-out %s", cfg.model.arch, dataset, info.device, info.world_size,
             cfg.train.batch_size, cfg.train.batch_size // info.world_size, lr0, cfg.train.epochs,
             train_dir, val_dir)
    log.info("precision and speed switches in effect: amp %s, channels_last %s, compiled %s",
             applied["amp"], applied["channels_last"], applied["compiled"])
    if applied["amp"] != cfg.train.amp:
        log.warning("train.amp=%s does not apply on %s (fp16 needs CUDA's GradScaler): training in fp32",
                    cfg.train.amp, info.device)

    # ---- epochs
    history: list[dict] = []
    last = {"loss": float("nan")}
    knn = None
    ran = 0
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            lr = adjust_learning_rate(optimizer, lr0, epoch, cfg.train.epochs, cfg.optim.schedule)
            good = str(latest) if latest.is_file() else "none (no epoch finished yet)"
            stats, step = train_one_epoch(run_model, loader, optimizer, scaler, epoch=epoch, step=step, cfg=cfg,
                                          info=info, dtype=dtype, last_good=good)
            if not parameters_finite(distributed.unwrap(model)):
                raise NonFiniteLossError(f"weights became NaN/inf during epoch {epoch + 1}: training stopped; "
                                         f"the last good checkpoint is kept: {good}")
            record = {"stage": "pretrain", "epoch": epoch + 1, "step": step, "lr": lr,
                      "pred_lr": optimizer.param_groups[1]["lr"], **stats}
            if cfg.monitor.collapse:
                record["collapse_ref"] = 1.0 / math.sqrt(cfg.model.dim)
                record["collapse_floor"] = collapse_floor(bn_batch, cfg.model.dim)
            if knn_loaders is not None and ((epoch + 1) % max(cfg.monitor.knn_every, 1) == 0
                                            or epoch + 1 == cfg.train.epochs):
                knn = knn_monitor(model, *knn_loaders, cfg, info, dtype)
                record["knn_top1"], record["knn_top5"] = knn["top1"], knn["top5"]

            # checkpoint: RNG states of every rank so that a resumed multi-process run continues exactly
            rng_all = None
            if info.distributed:
                rng_all = [None] * info.world_size
                dist.all_gather_object(rng_all, ckpt_io.rng_state())
            if info.is_main:
                ck = ckpt_io.make_checkpoint(distributed.unwrap(model), optimizer, scaler, epoch=epoch + 1,
                                             step=step, config=config_mod.to_dict(cfg), dataset=dataset,
                                             arch=cfg.model.arch)
                if rng_all is not None:
                    ck["rng_ranks"] = rng_all
                ck["config_changes"] = config_changes
                writer.write(record)  # first: a kill between the two repeats this epoch, never loses its line
                ckpt_io.save_checkpoint(ck, output_dir, cfg.train.save_freq)
                log.info("epoch %d/%d: loss %.4f  collapse_std %s  kNN top-1 %s  lr %.4g  %.1f img/s",
                         epoch + 1, cfg.train.epochs, stats["loss"],
                         f"{stats['collapse_std']:.4f}" if "collapse_std" in stats else "-",
                         f"{record['knn_top1']:.2f}" if "knn_top1" in record else "-", lr, stats["images_per_s"])
            distributed.barrier()
            wait_while_paused(output_dir, log)
            history.append(record)
            last = record
            ran += 1
            if cfg.train.stop_after_epochs and ran >= cfg.train.stop_after_epochs:
                log.info("stopping after %d epoch(s) in this invocation (train.stop_after_epochs); run the "
                         "same command again to resume", ran)
                break
    except NonFiniteLossError as e:
        log.error("%s", e)
        writer.close()
        raise

    epochs_done = start_epoch + ran
    complete = epochs_done >= cfg.train.epochs
    if state is not None and ran == 0 and knn_loaders is not None:  # finished run restarted: re-measure kNN
        knn = knn_monitor(model, *knn_loaders, cfg, info, dtype)
    metrics = {"loss": last.get("loss"), "collapse_std": last.get("collapse_std"),
               "knn_top1": knn["top1"] if knn else None, "knn_top5": knn["top5"] if knn else None}
    if info.is_main:
        write_summary(output_dir, cfg, dataset, metrics, epochs_done, complete, loader, config_changes, applied)
    writer.close()
    distributed.barrier()
    return {"output_dir": str(output_dir), "checkpoint": str(latest), "epoch": epochs_done, "step": step,
            "complete": complete, "resumed_from": start_epoch if state is not None else None,
            "per_rank_batch": cfg.train.batch_size // info.world_size, "world_size": info.world_size,
            "metrics": metrics, "history": history, "applied": applied}
