"""torch.distributed set-up from the env:// variables only.

Training never knows how it was launched: torchrun, the SLURM launcher and a plain `python` call all
end up here. RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT describe the job; without
WORLD_SIZE (or with WORLD_SIZE=1) the run is a single process and no process group is created.
Backend: NCCL when CUDA is available, gloo on CPU.

Every collective is bounded: DIST_TIMEOUT_S (seconds, default 600) is the process group's timeout, so when a
rank dies (its node fails, its task is killed) the others raise instead of waiting for ever; the launcher then
decides what happens (slurm/jobs.py requeues the job within its requeue budget). A peer whose process is gone
is usually noticed at once (gloo: "connection closed by peer"); the timeout covers a peer that hangs or whose
node vanished from the network.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> datetime.timedelta:
    """How long a collective (and the rendezvous) may wait for the other ranks: DIST_TIMEOUT_S, default 600 s."""
    raw = os.environ.get("DIST_TIMEOUT_S", "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"environment variable DIST_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"environment variable DIST_TIMEOUT_S={raw!r} must be > 0")
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by the env:// variables (or run as one process).

    device: "cpu" forces CPU (and gloo); None picks CUDA when available.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: a distributed "
                               "run needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                    rank=rank, world_size=world_size, timeout=collective_timeout(),
                                    **({"device_id": dev} if use_cuda else {}))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone)."""
    t = t.detach().clone()
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    t = all_reduce_sum(t)
    return t / world_size() if world_size() > 1 else t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over ranks along dim 0; ranks may hold different numbers of rows."""
    n = world_size()
    if n == 1:
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    biggest = max(sizes)
    padded = t.new_zeros((biggest,) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in range(n)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def prepare_model(model: nn.Module, info: DistInfo, sync_bn: bool = True) -> nn.Module:
    """Move to the device; SyncBN + DistributedDataParallel when several processes train together.

    SyncBatchNorm only runs on CUDA tensors, so on CPU (gloo) the model keeps plain BatchNorm:
    each process then normalises over its own share of the batch.
    """
    model = model.to(info.device)
    if info.distributed:
        if sync_bn and info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The SimSiam module inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
