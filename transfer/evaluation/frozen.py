"""Frozen features, what kNN and linear evaluation share: the weights with the data they are read at (size,
crop and normalisation: as given, else the checkpoint's pretraining settings, else ImageNet's), the two
labelled folders, and the backbone held frozen (eval mode, no gradients, a checksum before and after)."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, eval_crop_fraction
from pretrain.data import DataError, labelled_splits, resolve_roots
from pretrain.train import autocast, weights_channels_last
from transfer.evaluation.convert import eval_backbone


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or BN statistics changed during an evaluation."""


@dataclass
class Weights:
    """The network to evaluate (fc = Identity), results.json's `source`, the data section resolved for it, and
    the normalisation with where each part came from ("from": data.mean / data.std, checkpoint or ImageNet)."""
    net: nn.Module
    source: dict
    data: Any
    normalisation: dict

    @classmethod
    def load(cls, weights: str, model, seed: int, data) -> "Weights":
        """`weights` (a checkpoint or "random", torch seed `seed`) as `model` says, and `data` resolved for them."""
        net, source, info = eval_backbone(weights, model, seed)
        stored = info.get("pretrain_data") or {}
        size = data.image_size or int(stored.get("image_size") or 224)
        mean = tuple(data.mean) or tuple(stored.get("mean") or IMAGENET_MEAN)
        std = tuple(data.std) or tuple(stored.get("std") or IMAGENET_STD)
        resolved = dataclasses.replace(data, image_size=size, mean=mean, std=std,
                                       crop_fraction=data.crop_fraction or eval_crop_fraction(size))
        origin = {k: f"data.{k}" if getattr(data, k) else "checkpoint" if stored.get(k) else "ImageNet"
                  for k in ("mean", "std")}
        return cls(net, source, resolved, {"mean": list(mean), "std": list(std), "from": origin})


def labelled_folders(d, transforms: tuple, key: str, stage: str):
    """(train dir, held-out dir, train set, held-out set) of data section `d` with (train, eval) transforms;
    a root without a held-out split is a DataError naming `key` (the setting that gave the root)."""
    train_dir, val_dir = resolve_roots(d)
    if val_dir is None:
        raise DataError(f"{key}: no held-out split next to {train_dir} (looked for '{d.val_split}', val, test): "
                        f"{stage} needs one")
    train, val = labelled_splits(train_dir, val_dir, transforms, d.on_corrupt,
                                 (d.limit_per_class, d.val_limit_per_class))
    return train_dir, val_dir, train, val


def state_checksum(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class FrozenBackbone:
    """The backbone on its device, frozen, and how its forward runs (`amp`: none | bf16; channels_last).
    `applied`: the amp / channels_last in effect; `checksum`: of its state dict as loaded; `dim`: its width."""

    def __init__(self, net: nn.Module, device: torch.device, amp: str = "none", channels_last: bool = False):
        self.net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
        self.net.requires_grad_(False).eval()
        self.device, self.channels_last = device, channels_last
        bf16 = amp == "bf16" and torch.amp.is_autocast_available(device.type)
        self.amp_dtype = torch.bfloat16 if bf16 else None
        self.applied = {"amp": "bf16" if bf16 else "none", "channels_last": weights_channels_last(self.net)}
        self.checksum = state_checksum(self.net)
        last = self.net.layer4[-1]  # the pooled width: the last BN's (2048 for R50, 512 for R18)
        self.dim = int((getattr(last, "bn3", None) or last.bn2).num_features)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled float32 features of a batch of images (eval mode: BN statistics never move)."""
        self.net.eval()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device.type, self.amp_dtype):
            return self.net(x).float()

    def check_unchanged(self, reference: Callable[[], nn.Module], what: str) -> None:
        """BackboneChangedError when the state dict differs from the one loaded, naming the tensors that differ
        from `reference()` (the network as loaded again); `what`: the evaluation, for the message."""
        after = state_checksum(self.net)
        if after == self.checksum:
            return
        now = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        changed = [k for k, v in reference().state_dict().items() if not torch.equal(v, now[k].to(v.dtype))]
        raise BackboneChangedError(
            f"the backbone changed during {what} (state-dict sha256 {self.checksum[:12]} -> {after[:12]}); changed "
            f"tensors: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}. The result would not be an "
            "evaluation of frozen features; nothing was written to results.json")
