"""Pretraining checkpoints: atomic writes, resume, and loading of the official SimSiam format.

Our format (one dict, `torch.load(..., weights_only=True)`-safe):
    {"format": "simsiam-suite/pretrain", "version": 1, "epoch": <epochs completed>, "step": <optimizer
     steps so far>, "arch": str, "model": {encoder.*, predictor.*}, "optimizer": state_dict,
     "scaler": state_dict | None, "rng": {"torch", "cuda", "numpy", "python"},
     "config": to_dict(PretrainConfig), "dataset": str, "target": the target branch's state}
"target" (pretrain.target): None for the online encoder, the k-step copy's weights, or the whole per-image
moving-average store in image order.
pretrain.train adds "rng_ranks" (every rank's RNG states, multi-process runs) and "config_changes" (the
config changes accepted on resume with --allow-config-change: [{"epoch", "key", "old", "new"}]).
The official SimSiam file {"epoch", "arch", "state_dict", "optimizer"} with `module.encoder.*` and
`module.predictor.*` keys is recognised too (for `init_from`).

Reading files users hand in (checkpoints, weights) never runs code from them: `load_torch` is torch.load with
weights_only=True, `load_pickle` reads plain weight pickles (Detectron2/Caffe2/MoCo .pkl) with
`WeightsUnpickler`, which builds only containers, numbers, strings and numpy arrays. A file that asks for
anything else is refused with `UnsafeFileError` before any of it runs.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from torch import nn

from .errors import InputError

FORMAT = "simsiam-suite/pretrain"
VERSION = 1
OFFICIAL = "official-simsiam"
LATEST = "checkpoint.pth"


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that cannot be used for what was asked (wrong kind, missing keys, ...)."""


class UnsafeFileError(InputError, ValueError):
    """A file whose unpickling would import something outside what weights need (tensors, numpy arrays,
    plain containers), e.g. a function that runs a command: it is refused and nothing of it is run."""


def snapshot_name(epoch: int) -> str:
    return f"checkpoint_{epoch:04d}.pth"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], durable: bool = True) -> Path:
    """write(file) into a temporary file of its own in the same folder, then os.replace it onto `path`.

    A kill at any moment leaves either the old file or the new one, never a truncated file; several writers
    (processes or threads) of the same path never share a temporary file, and a reader sees one whole
    version. durable: fsync the file and the folder, so the rename survives a power loss (checkpoints);
    False for files that are cheap to write again (evaluation copies of annotations).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    return path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save, atomically (see atomic_write)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file (checkpoints are named by it in results.json)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's key array as a tensor so that the file loads with weights_only=True
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------ save/load
def make_checkpoint(model: nn.Module, optimizer, scaler, *, epoch: int, step: int, config: dict,
                    dataset: str, arch: str, target: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "step": int(step),
        "arch": arch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "config": config,
        "dataset": dataset,
        "target": target,
    }


def save_checkpoint(ckpt: dict, run_dir: str | Path, save_freq: int = 0) -> Path:
    """checkpoint.pth (latest) and, every `save_freq` epochs, checkpoint_{epoch:04d}.pth."""
    run_dir = Path(run_dir)
    latest = atomic_save(ckpt, run_dir / LATEST)
    if save_freq > 0 and ckpt["epoch"] % save_freq == 0:
        atomic_save(ckpt, run_dir / snapshot_name(ckpt["epoch"]))
    return latest


# ------------------------------------------------------------------------------------ safe reading
class RefusedGlobal(pickle.UnpicklingError):
    """WeightsUnpickler met a global outside its allowlist; `name` is module.name."""

    def __init__(self, name: str):
        super().__init__(f"refusing to load global {name} (not a weights file)")
        self.name = name


class WeightsUnpickler(pickle.Unpickler):
    """Plain pickles of weights (Detectron2/Caffe2/MoCo .pkl, Python 2 ones included): only containers,
    numbers, strings and numpy arrays may be built; any other global raises RefusedGlobal unimported."""

    ALLOWED = {("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("builtins", "set"), ("builtins", "frozenset"),
               ("_codecs", "encode")}  # bytes in Python 3 pickles of protocol 2 (numpy array data)

    def __init__(self, f: BinaryIO):
        super().__init__(f, encoding="latin1")

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def _refused(path: Path, names: list[str]) -> UnsafeFileError:
    return UnsafeFileError(f"{path}: refused: reading it would import {', '.join(names[:4])}"
                           f"{' ...' if len(names) > 4 else ''} (weights need only tensors, arrays and plain containers); "
                           "nothing of it was run")


def load_pickle(path: str | Path) -> Any:
    """A plain pickle of weights read with WeightsUnpickler; UnsafeFileError when it asks for any other
    global. Other failures (truncated or foreign files) raise what pickle raises."""
    with open(path, "rb") as f:
        try:
            return WeightsUnpickler(f).load()
        except RefusedGlobal as e:
            raise _refused(Path(path), [e.name]) from None


def unsafe_globals(path: str | Path) -> list[str]:
    """The globals of `path` that a weights reader refuses, found without running any of it: torch's
    weights_only allowlist for torch.save archives, WeightsUnpickler's for plain pickles; [] when there are
    none or the file is neither."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch.save archive: try it as a plain pickle
        pass
    try:
        with open(path, "rb") as f:
            WeightsUnpickler(f).load()
    except RefusedGlobal as e:
        return [e.name]
    except Exception:  # noqa: BLE001 - truncated or not a pickle: nothing to refuse
        pass
    return []


def load_torch(path: str | Path) -> Any:
    """torch.load(path, weights_only=True) onto the CPU; UnsafeFileError when it was refused for globals
    outside the weights-only allowlist (named in the message). Other failures raise what torch.load raises."""
    try:
        with warnings.catch_warnings():  # plain pickles of protocol > 2 make torch.load warn before it fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = unsafe_globals(path)
        if names:
            raise _refused(Path(path), names) from None
        raise


def read_checkpoint(path: str | Path) -> dict:
    """torch.load a checkpoint file (weights only) with a clear error for missing or non-PyTorch files;
    UnsafeFileError for a file that would import anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = load_torch(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling problem means: not a file we can use
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint this program can read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Expected a SimSiam pretraining checkpoint "
            f"(format '{FORMAT}' or the official SimSiam {{'epoch','arch','state_dict','optimizer'}} file); "
            "Detectron2 .pkl files and torchvision backbones are not pretraining checkpoints") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def checkpoint_kind(obj: dict) -> str | None:
    if obj.get("format") == FORMAT:
        return FORMAT
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any(k.startswith(("module.encoder.", "encoder.")) for k in sd):
        return OFFICIAL
    return None


def strip_prefix(state: Any, prefix: str = "module.") -> dict:
    """A state dict with `prefix` (DistributedDataParallel's "module.") removed from the keys that have it."""
    return {(k[len(prefix):] if isinstance(k, str) and k.startswith(prefix) else k): v for k, v in state.items()}


def model_state(obj: dict, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The SimSiam state dict (encoder.*, predictor.*) of either supported checkpoint kind."""
    kind = checkpoint_kind(obj)
    if kind == FORMAT:
        return dict(obj["model"])
    if kind == OFFICIAL:
        return strip_prefix(obj["state_dict"])
    keys = ", ".join(sorted(map(str, obj))[:12])
    raise CheckpointError(
        f"{path}: wrong kind of checkpoint for SimSiam pretraining (top-level keys: {keys}). Expected format "
        f"'{FORMAT}' or the official SimSiam file with 'state_dict' keys module.encoder.* / module.predictor.*")


def load_model_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "<checkpoint>") -> None:
    """Load every key; any missing, unexpected or mis-shaped key is an error listing exactly which."""
    parts = state_mismatches(model.state_dict(), state)
    if parts:
        raise CheckpointError(f"{source} does not match the model:\n  " + "\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def state_mismatches(expected: dict, state: dict, what: str = "checkpoint") -> list[str]:
    """The strict-load report, one line per kind: the keys `state` lacks, the keys it has beyond `expected`,
    and the tensors of another shape ("<key>: <what> (shape) vs model (shape)"); empty when they match."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: {what} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    return parts


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """init_from: load model weights (ours or official format) strictly; returns the checkpoint dict."""
    obj = read_checkpoint(path)
    load_model_strict(model, model_state(obj, path), str(path))
    return obj


def resume(run_dir: str | Path, model: nn.Module, optimizer=None, scaler=None,
           restore_rng: bool = True, state: dict | None = None) -> dict | None:
    """Load checkpoint.pth of `run_dir` (`state`: that file, already read) into model/optimizer/scaler (+ RNG
    states); None if absent."""
    path = Path(run_dir) / LATEST
    if state is None and not path.is_file():
        return None
    obj = read_checkpoint(path) if state is None else state
    if checkpoint_kind(obj) != FORMAT:
        raise CheckpointError(f"{path}: cannot resume from it: not a '{FORMAT}' checkpoint")
    load_model_strict(model, obj["model"], str(path))
    if optimizer is not None and obj.get("optimizer") is not None:
        optimizer.load_state_dict(obj["optimizer"])
    if scaler is not None and obj.get("scaler") is not None:
        scaler.load_state_dict(obj["scaler"])
    if restore_rng and obj.get("rng"):
        set_rng_state(obj["rng"])
    return obj
