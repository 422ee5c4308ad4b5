"""What a run writes: the metrics line of an epoch, results.json's metrics, protocol and grid sections."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pretrain import config as config_mod
from pretrain.protocol import linear_fingerprint
from transfer.evaluation.trials import finite_or_none
from transfer.reporting.tables import GRID_LABEL, grid_label

if TYPE_CHECKING:
    from .evaluation import LinearEvaluation


def epoch_record(ev: LinearEvaluation, tr: dict, evaluated: bool) -> dict:
    """The metrics line of an epoch: the protocol's keys for its head (in grid mode the picked head's) and,
    in grid mode, a "grid" entry with every head's values."""
    p, val, hold = ev.picked, ev.last.get("val"), ev.last.get("holdout")
    record = {"stage": "linear", "epoch": ev.epoch, "lr": tr["lr"][p], "loss": tr["loss"][p],
              "train_top1": tr["train_top1"][p], "time": tr["time"], "images_per_s": tr["images_per_s"]}
    if evaluated:
        record.update(top1=val["top1"][p], top5=val["top5"][p], val_loss=val["loss"][p], val_images=val["images"])
    if not ev.grid:
        return record
    grid = {"base_lr": [h[0] for h in ev.specs], "weight_decay": [h[1] for h in ev.specs],
            "loss": finite_or_none(tr["loss"]), "train_top1": tr["train_top1"]}
    if evaluated:
        finite = ev.heads.finite()
        keep = lambda vals: [v if ok else None for v, ok in zip(vals, finite)]  # noqa: E731
        grid.update(holdout_top1=keep(hold["top1"]), holdout_loss=finite_or_none(keep(hold["loss"])),
                    top1=keep(val["top1"]), top5=keep(val["top5"]), diverged=[not f for f in finite])
        record.update(holdout_top1=hold["top1"][p], holdout_images=hold["images"])
    record.update(picked=p, grid=grid)
    return record


def metrics(ev: LinearEvaluation) -> dict:
    """results.json "metrics": the protocol's head (with its best epoch), or the grid's picked head with its
    held-out top-1 (no best over epochs: that would pick on the validation split)."""
    p, val, hold = ev.picked, ev.last["val"], ev.last.get("holdout")
    m = {"top1": val["top1"][p], "top5": val["top5"][p]}
    if not ev.grid:
        return {**m, "best_top1": ev.best["top1"], "best_epoch": ev.best["epoch"], "val_images": val["images"]}
    return {**m, "val_images": val["images"], "holdout_top1": hold["top1"][p], "holdout_images": hold["images"],
            "picked_base_lr": ev.specs[p][0], "picked_weight_decay": ev.specs[p][1], "heads": len(ev.specs)}


def grid_section(ev: LinearEvaluation) -> dict:
    """results.json "grid": every head's lr, weight decay, held-out and validation accuracy; the pick and the
    edges of the grid it sits on ("at_edge", each with the direction in which to extend the grid)."""
    val, hold, g, src = ev.last["val"], ev.last["holdout"], ev.cfg.grid, ev.batches
    rows = []
    for i, ((base_lr, wd), lr, ok) in enumerate(zip(ev.specs, ev.lrs, ev.heads.finite())):
        acc = {"holdout_top1": hold["top1"][i], "holdout_top5": hold["top5"][i], "top1": val["top1"][i],
               "top5": val["top5"][i]} if ok else dict.fromkeys(("holdout_top1", "holdout_top5", "top1", "top5"))
        rows.append({"base_lr": base_lr, "lr": lr, "weight_decay": wd, **acc, "diverged": not ok})
    return {"heads": rows, "picked": ev.picked, "selected_by": "held-out top-1 after the last epoch",
            "holdout": {"images": ev.data.holdout_images, "fraction": g.holdout_fraction,
                        "max_images": g.holdout_max_images, "seed": g.holdout_seed},
            "train_images": src.train_images, "label": grid_label(ev.data.holdout_images, g.holdout_seed),
            "at_edge": ev.edges}


def protocol(ev: LinearEvaluation, presets) -> dict:
    """results.json "protocol": the fingerprint of the head reported (in grid mode the picked head, and how it
    was picked) with the input normalisation used."""
    data, g = ev.data, ev.cfg.grid
    selection = {"method": GRID_LABEL, "heads": len(ev.specs), "holdout_images": data.holdout_images,
                 "holdout_seed": g.holdout_seed} if ev.grid else None
    return linear_fingerprint(ev.cfg, dataset=data.name, arch=ev.weights.source["pretrain"].get("arch"),
                              train_images=ev.batches.train_images, val_images=len(data.val),
                              classes=data.num_classes, presets=presets, head=ev.specs[ev.picked],
                              normalisation=ev.weights.normalisation, selection=selection)


def results_fields(ev: LinearEvaluation, presets) -> dict:
    """Everything results.json holds besides what pretrain.results.write adds itself (its version, code version, time)."""
    cfg = ev.cfg
    extra = {"backbone_checksum": ev.backbone.checksum, "backbone_unchanged": True, "optimizer": cfg.optim.optimizer,
             "num_classes": ev.data.num_classes, "applied": ev.backbone.applied,
             **({"grid": grid_section(ev)} if ev.grid else {}),
             "train_images": ev.batches.train_images, "protocol": protocol(ev, presets)}
    return {"dataset": ev.data.name, "metrics": metrics(ev), "config": config_mod.to_dict(cfg),
            "source": ev.weights.source,
            "epochs": ev.epoch, "batch_size": cfg.train.batch_size, "extra": extra}
