"""A linear evaluation run: `prepare` checks what it reads, then one `LinearEvaluation` inside the stage frame
builds the heads, resumes, trains the epochs and writes the results."""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain import config as config_mod
from pretrain import distributed
from pretrain.checkpoint import CheckpointError, atomic_save, load_torch
from pretrain.frame import StageRun
from pretrain.optim import scheduled_lr
from pretrain.train import NonFiniteLossError
from transfer.evaluation.convert import eval_backbone
from transfer.evaluation.frozen import FrozenBackbone, Weights

from . import records
from .config import LinearConfig, check_config, require_root
from .heads import HeadGrid, build_grid_optimizer, grid_edges, grid_heads, head_counts, head_losses, pick_head
from .sources import ImageData, build_source

FORMAT = "simsiam-suite/linear"


@dataclass
class Inputs:
    """What a run reads, checked before its folder is made: cfg with its data resolved, the weights, the images."""
    cfg: LinearConfig
    weights: Weights
    data: ImageData


def prepare(cfg: LinearConfig) -> Inputs:
    """Check the config, load the weights (train.seed: the same random backbone on every rank), resolve the data."""
    check_config(cfg)
    weights = Weights.load(cfg.weights, cfg.model, cfg.train.seed, cfg.data)
    require_root(cfg)
    cfg = dataclasses.replace(cfg, data=weights.data)
    return Inputs(cfg, weights, ImageData(cfg))


def run(cfg: LinearConfig, output_dir: str | Path, *, presets: tuple[str, ...] = ()) -> dict:
    """Linear evaluation (or its resume) into output_dir; `presets`: the --config names (for the protocol)."""
    inputs = prepare(cfg)
    with StageRun("linear", output_dir, tensorboard=cfg.train.tensorboard) as sr:
        evaluation = LinearEvaluation(inputs, sr, tuple(presets))
        evaluation.fit()
        return evaluation.finish()


class LinearEvaluation:
    """One invocation of a linear evaluation in its StageRun: the frozen backbone, the heads (the protocol's one
    head is a grid of one) and their optimizer, and where the run stands (epochs done, the last evaluation of
    each split, the picked head, the best validation top-1)."""

    def __init__(self, inputs: Inputs, sr: StageRun, presets: tuple[str, ...] = ()):
        cfg, t = self.cfg, self.t = inputs.cfg, inputs.cfg.train
        self.sr, self.log, self.info, self.presets = sr, sr.log, sr.info, presets
        self.data, self.weights, self.grid = inputs.data, inputs.weights, cfg.grid.enabled
        self.ckpt_path = sr.dir / "checkpoint.pth"
        torch.manual_seed(t.seed)
        self.backbone = FrozenBackbone(self.weights.net, self.info.device, t.amp, t.channels_last)
        self.specs = grid_heads(cfg)
        self.heads = HeadGrid(self.backbone.dim, self.data.num_classes, len(self.specs), t.seed).to(self.info.device)
        self.optimizer, self.lrs = build_grid_optimizer(self.heads, self.specs, cfg)
        self.ddp = distributed.prepare_model(self.heads, self.info, sync_bn=False)  # DDP with several processes
        self.epoch, self.ran, self.picked, self.last, self.edges = 0, 0, 0, {}, []
        self.best = {"top1": None, "top5": None, "epoch": None}
        self.resume()
        sr.save_config(cfg)
        self.batches = build_source(self.data, self.backbone, self.info)
        self._describe()

    def identity(self) -> dict | None:
        """What a grid checkpoint must match on resume: the heads and the held-out slice."""
        if not self.grid:
            return None
        return {"heads": [list(h) for h in self.specs], "holdout_seed": self.cfg.grid.holdout_seed,
                "holdout": hashlib.sha256(repr(self.data.split[1]).encode()).hexdigest()}

    def resume(self) -> None:
        """Continue from the folder's checkpoint; one of another kind, other weights or other heads is refused."""
        if not self.ckpt_path.is_file():
            return
        state = load_torch(self.ckpt_path)
        for ok, what in ((state.get("format") == FORMAT, f"no linear evaluation (format {state.get('format')!r})"),
                         (state.get("backbone_checksum") == self.backbone.checksum, "a linear evaluation of other "
                          f"weights (backbone checksum differs from {self.cfg.weights})"),
                         (state.get("grid") == self.identity(), "a linear evaluation with other heads (grid.enabled, "
                          "grid.base_lrs, grid.weight_decays or the held-out slice differ)")):
            if not ok:
                raise CheckpointError(f"{self.ckpt_path}: this output folder holds {what}; use a new --output")
        head = state["head"]
        if set(head) == {"weight", "bias"}:  # the protocol's head saved as one nn.Linear
            head = {"weights.0": head["weight"], "biases.0": head["bias"]}
        self.heads.load_state_dict(head, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.picked = int(state["epoch"]), int(state.get("picked", 0))
        self.best = state.get("best", self.best)
        self.log.info("resumed from %s after epoch %d", self.ckpt_path, self.epoch)

    def _describe(self) -> None:
        cfg, b, n, specs = self.cfg, self.batches, self.weights.normalisation, self.specs
        grid = (f"; {len(specs)} heads (base lrs {sorted({h[0] for h in specs})} x weight decays "
                f"{sorted({h[1] for h in specs})}) picked on {self.data.holdout_images} training images held out (seed "
                f"{cfg.grid.holdout_seed}), not on the validation split" if self.grid else "")
        self.log.info("linear evaluation of %s (%s, %d-d features) on %s: %d classes, %d train / %d held-out images, "
                      "%s lr %.4g, global batch %d over %d processes, %d epochs%s%s; input mean %s std %s (%s); "
                      "backbone forward: %s", cfg.weights, self.weights.source["pretrain"].get("arch"),
                      self.backbone.dim, self.data.name, self.data.num_classes, b.train_images, len(self.data.val),
                      cfg.optim.optimizer.upper(), self.lrs[0], self.t.batch_size, self.info.world_size,
                      self.t.epochs, ", cached features" if self.t.cache_features else "", grid, n["mean"], n["std"],
                      ", ".join(f"{k} from {v}" for k, v in n["from"].items()), self.backbone.applied)

    def fit(self) -> None:
        t = self.t
        for epoch in range(self.epoch, t.epochs):
            tr = self.train_epoch(epoch)
            evaluated = (epoch + 1) % max(t.eval_every, 1) == 0 or epoch + 1 == t.epochs
            if evaluated:
                self.evaluate(epoch)
            self.epoch, self.ran = epoch + 1, self.ran + 1
            self._save(records.epoch_record(self, tr, evaluated))
            if t.stop_after_epochs and self.ran >= t.stop_after_epochs:
                self.log.info("stopping after %d epoch(s) in this invocation (train.stop_after_epochs); run the "
                              "same command again to resume", self.ran)
                break

    def train_epoch(self, epoch: int) -> dict:
        """One epoch: every head's step on the same features; per-head means over all processes."""
        t, dev = self.t, self.info.device
        for g, lr0 in zip(self.optimizer.param_groups, self.lrs):
            g["lr"] = scheduled_lr(lr0, epoch, t.epochs, self.cfg.optim.schedule)
        self.ddp.train()
        sums = torch.zeros(3, len(self.specs), dtype=torch.float64, device=dev)  # loss x images, correct, images
        t0, batches = time.time(), self.batches.epoch(epoch)
        for step, (x, y) in enumerate(batches):
            if t.max_steps_per_epoch and step >= t.max_steps_per_epoch:
                break
            y = y.to(dev, non_blocking=True)
            logits = self.ddp(self.batches.to_features(x))
            losses = head_losses(logits, y)
            if not bool(torch.isfinite(losses).any()):  # a grid goes on while one head's loss is finite
                raise NonFiniteLossError(f"linear evaluation: the loss of every head is {losses.min().item()} at "
                                         f"epoch {epoch + 1}, step {step}: lower optim.base_lr (grid.base_lrs in "
                                         "grid mode)")
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.optimizer.step()
            sums += torch.stack([losses.detach().double() * y.shape[0],
                                 (logits.detach().argmax(2) == y[:, None]).sum(0).double(),
                                 torch.full_like(sums[2], y.shape[0])])
            if self.info.is_main and t.print_freq and (step + 1) % t.print_freq == 0:
                self.log.info("epoch %d step %d/%d loss %.4f", epoch + 1, step + 1, len(batches), float(losses.min()))
        elapsed, sums = time.time() - t0, distributed.all_reduce_sum(sums)
        seen = max(float(sums[2, 0]), 1.0)
        return {"lr": [g["lr"] for g in self.optimizer.param_groups], "loss": (sums[0] / seen).tolist(),
                "train_top1": (100.0 * sums[1] / seen).tolist(), "time": elapsed,
                "images_per_s": seen / max(elapsed, 1e-9)}

    @torch.no_grad()
    def _evaluate_split(self, loader) -> dict:
        """Per-head top-1 / top-5 (percent) and mean loss over a split, over all processes."""
        self.heads.eval()
        counts = torch.zeros(4, len(self.specs), dtype=torch.float64, device=self.info.device)
        for x, y in loader:
            y = y.to(self.info.device)
            counts += torch.cat([head_counts(self.heads(self.batches.to_features(x)), y),
                                 torch.full_like(counts[:1], y.shape[0])])
        counts = distributed.all_reduce_sum(counts)
        n = int(counts[3, 0])
        c = (counts[:3] / max(n, 1)).tolist()
        return {"top1": [100.0 * v for v in c[0]], "top5": [100.0 * v for v in c[1]], "loss": c[2], "images": n}

    def evaluate(self, epoch: int | None) -> None:
        """Every split, the pick (on the held-out slice) and the best validation top-1 over epochs."""
        self.last = {name: self._evaluate_split(loader) for name, loader in self.batches.splits.items()}
        self.picked = pick_head(self.last.get("holdout"), self.heads.finite())
        top1 = self.last["val"]["top1"][self.picked]
        if epoch is not None and (self.best["top1"] is None or top1 > self.best["top1"]):
            self.best = {"top1": top1, "top5": self.last["val"]["top5"][self.picked], "epoch": epoch + 1}

    def _save(self, record: dict) -> None:
        """The epoch's metrics line, checkpoint and log line (main process), then a barrier."""
        if self.info.is_main:
            self.sr.metrics.write(record)
            atomic_save({"format": FORMAT, "version": 1, "epoch": self.epoch, "head": self.heads.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "best": self.best,
                         "backbone_checksum": self.backbone.checksum, "weights": self.cfg.weights,
                         "config": config_mod.to_dict(self.cfg), "grid": self.identity(), "picked": self.picked},
                        self.ckpt_path)
            val = f" val top-1 {record['top1']:.2f} top-5 {record['top5']:.2f}" if "top1" in record else ""
            pick = f" (head {self.picked} of {len(self.specs)}, picked on the held-out slice)" if self.grid else ""
            self.log.info("epoch %d/%d: loss %.4f train top-1 %.2f%s lr %.4g %.0f img/s%s", self.epoch,
                          self.t.epochs, record["loss"], record["train_top1"], val, record["lr"],
                          record["images_per_s"], pick)
        distributed.barrier()

    def finish(self) -> dict:
        """Backbone check, a final evaluation when nothing ran, results.json when the schedule is complete."""
        cfg = self.cfg
        self.backbone.check_unchanged(lambda: eval_backbone(cfg.weights, cfg.model, self.t.seed)[0],
                                      "linear evaluation")
        complete = self.epoch >= self.t.epochs
        if not self.last:  # a finished run restarted: measure again
            self.evaluate(None)
        self.edges = grid_edges(self.specs, self.picked)
        for edge in self.edges:
            self.log.warning("the picked head (base lr %s, weight decay %s) sits at the %s value of %s: a better "
                             "head may lie outside the grid; %s", *self.specs[self.picked], edge["edge"],
                             edge["key"], edge["advice"])
        if complete:
            self.sr.results(task="linear", **records.results_fields(self, self.presets))
        else:
            distributed.barrier()
        out = {"output_dir": str(self.sr.dir), "epoch": self.epoch, "complete": complete,
               "metrics": records.metrics(self), "backbone_checksum": self.backbone.checksum,
               "applied": self.backbone.applied}
        if self.grid:
            out["grid"] = records.grid_section(self)
        return out
