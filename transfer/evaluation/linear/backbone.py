"""The frozen backbone: eval mode and no gradients for the whole run, a checksum before and after."""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from pretrain.train import autocast, weights_channels_last
from transfer.evaluation.convert import eval_backbone

from .config import LinearConfig


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or BN statistics changed during linear evaluation."""


def state_checksum(module: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class FrozenBackbone:
    """The backbone (fc = Identity) on its device, frozen, and how its forward runs (precision, memory format).
    `applied`: the amp / channels_last in effect; `checksum`: of its state dict as loaded."""

    def __init__(self, net: nn.Module, cfg: LinearConfig, device: torch.device):
        self.net = net.to(device)
        if cfg.train.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.requires_grad_(False).eval()
        self.device, self.channels_last, self.cfg = device, cfg.train.channels_last, cfg
        use_bf16 = cfg.train.amp == "bf16" and torch.amp.is_autocast_available(device.type)
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        self.applied = {"amp": "bf16" if use_bf16 else "none", "channels_last": weights_channels_last(self.net)}
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

    def check_unchanged(self) -> None:
        """BackboneChangedError when the state dict differs from the one loaded, naming the changed tensors."""
        after = state_checksum(self.net)
        if after == self.checksum:
            return
        ref, _, _ = eval_backbone(self.cfg.weights, self.cfg.model, self.cfg.train.seed)
        now = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        changed = [k for k, v in ref.state_dict().items() if not torch.equal(v, now[k].to(v.dtype))]
        raise BackboneChangedError(
            f"the backbone changed during linear evaluation (state-dict sha256 {self.checksum[:12]} -> {after[:12]}); "
            f"changed tensors: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}. The result would "
            "not be a linear evaluation of frozen features; nothing was written to results.json")
