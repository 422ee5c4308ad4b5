"""What a run was measured with: each stage's protocol fingerprint (results.json "protocol") and the recipe of a
pretraining (results.json source.pretrain.recipe), built here for every stage.

transfer.reporting.protocols compares both with the paper's columns. The fingerprints take the stage's resolved
config (duck-typed: this package never imports the evaluations) and the sizes of the data actually used.

The recipe is every pretraining config key that changes the trajectory, flattened ("optim.base_lr": 0.05):
the method, the model and its heads, the target branch, the loss, the optimiser and its schedule, the augmentation, and
any key added to those sections later. Left out: where the data is and how it is read (the CPU views of
data.pipeline make the same random draws as the PIL ones), the dataset, epochs,
batch, crop size and image or step limits (recorded and compared on their own), the kind of BN
synchronisation (it follows the number of GPUs), and the train / monitor sections (precision, speed switches,
seed, logging, monitoring). A key a stored config lacks (a checkpoint older than the key) counts with its
default, as on resume.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .augment import eval_crop_fraction, eval_resize_size
from .config import flatten, to_dict
from .defaults import PretrainConfig, init_lr, scaled_lr

RECIPE_SECTIONS = ("method", "model", "loss", "optim", "data")  # "method": the top-level key (pretrain.methods)
NOT_RECIPE = ("model.sync_bn", "data.root", "data.train_split", "data.val_split", "data.workers",
              "data.pipeline", "data.prefetch", "data.on_corrupt", "data.limit_per_class", "data.cache_dir", "data.image_size")


def recipe_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe ({"section.key": value}) of a pretraining config dict (a checkpoint's "config", or
    pretrain.config.to_dict of a PretrainConfig); missing keys take their defaults."""
    merged = {**flatten(to_dict(PretrainConfig())), **flatten(config)}
    return {k: v for k, v in merged.items() if k.split(".")[0] in RECIPE_SECTIONS and k not in NOT_RECIPE}


def paper_recipe() -> dict[str, Any]:
    """The paper's ImageNet recipe: the defaults of pretrain.defaults."""
    return recipe_of({})


# ------------------------------------------------------------------------------------------- fingerprints
def pretrain_fingerprint(cfg, *, dataset: str, train_images: int | None, classes: int | None,
                         epochs_done: int) -> dict[str, Any]:
    """results.json "protocol" of a pretraining run (cfg: pretrain.defaults.PretrainConfig)."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    return {"stage": "pretrain", "dataset": dataset, "arch": cfg.model.arch, "train_images": train_images,
            "classes": classes, "epochs": t.epochs, "epochs_done": epochs_done, "completed": epochs_done == t.epochs,
            "max_steps_per_epoch": t.max_steps_per_epoch, "limit_per_class": d.limit_per_class,
            "batch": t.batch_size, "optimizer": "sgd", "lr": init_lr(cfg), "base_lr": o.base_lr,
            "weight_decay": o.weight_decay, "momentum": o.momentum, "schedule": o.schedule,
            "fix_pred_lr": o.fix_pred_lr, "train_crop": d.image_size, "min_scale": d.min_scale}


def _test_resize(d) -> int:
    return eval_resize_size(d.image_size, d.crop_fraction or eval_crop_fraction(d.image_size))


def linear_fingerprint(cfg, *, dataset: str, arch: str | None, train_images: int, val_images: int,
                       classes: int, presets: Sequence[str] = (), head: tuple[float, float] | None = None,
                       normalisation: dict | None = None, selection: dict | None = None) -> dict[str, Any]:
    """results.json "protocol" of a linear evaluation (cfg: transfer.evaluation.linear.LinearConfig). `head`: the
    (base lr, weight decay) of the head reported (a grid's pick; default optim's); `normalisation`: the input
    normalisation used; `selection`: how a grid picked its head."""
    d, o, t = cfg.data, cfg.optim, cfg.train
    base_lr, wd = head or (o.base_lr, o.weight_decay)
    out = {"stage": "linear", "dataset": dataset, "arch": arch, "train_images": train_images,
           "val_images": val_images, "classes": classes, "epochs": t.epochs,
           "max_steps_per_epoch": t.max_steps_per_epoch, "batch": t.batch_size, "optimizer": o.optimizer,
           "lr": scaled_lr(base_lr, t.batch_size), "base_lr": base_lr, "weight_decay": wd,
           "momentum": o.momentum, "schedule": o.schedule, "lars_trust": o.trust_coefficient,
           "train_augment": "RandomResizedCrop+flip" if d.augment else "none (test transform)",
           "train_crop": d.image_size, "test_resize": _test_resize(d), "test_crop": d.image_size,
           "preset": "+".join(map(str, presets)) or None}
    extra = {"normalisation": normalisation, "selection": selection}
    return {**out, **{k: v for k, v in extra.items() if v is not None}}


def knn_fingerprint(cfg, *, dataset: str, arch: str | None, bank_images: int, test_images: int,
                    classes: int) -> dict[str, Any]:
    """results.json "protocol" of a kNN evaluation (cfg: transfer.evaluation.knn.KnnConfig with its data resolved)."""
    return {"stage": "knn", "dataset": dataset, "arch": arch, "train_images": bank_images,
            "val_images": test_images, "classes": classes, "k": list(cfg.ks), "t": cfg.t,
            "test_resize": _test_resize(cfg.data), "test_crop": cfg.data.image_size}


def detection_fingerprint(cfg, train: Sequence[str], test: Sequence[str], preset: str | None) -> dict[str, Any]:
    """results.json "protocol" of a detection run (cfg: the resolved detectron2 config; train / test: the
    catalog names used, 'name@N' when limited to the first N images)."""
    m, s, i = cfg.MODEL, cfg.SOLVER, cfg.INPUT
    features = list(m.RESNETS.OUT_FEATURES)
    arch = f"R{m.RESNETS.DEPTH}-C4" if features == ["res4"] else f"R{m.RESNETS.DEPTH}-{'+'.join(features)}"
    return {"stage": "detection", "train_datasets": list(train), "test_datasets": list(test), "arch": arch,
            "roi_heads": m.ROI_HEADS.NAME, "mask": bool(m.MASK_ON), "iterations": int(s.MAX_ITER),
            "steps": [int(x) for x in s.STEPS], "batch": int(s.IMS_PER_BATCH), "optimizer": "sgd",
            "base_lr": float(s.BASE_LR), "weight_decay": float(s.WEIGHT_DECAY), "warmup_iters": int(s.WARMUP_ITERS),
            "min_size_train": [int(x) for x in i.MIN_SIZE_TRAIN], "max_size_train": int(i.MAX_SIZE_TRAIN),
            "min_size_test": int(i.MIN_SIZE_TEST), "max_size_test": int(i.MAX_SIZE_TEST),
            "freeze_at": int(m.BACKBONE.FREEZE_AT), "norm": m.RESNETS.NORM, "input_format": i.FORMAT,
            "preset": preset}
