"""Logging on rank 0: text log, metrics.jsonl, TensorBoard and a tqdm progress bar.

Other ranks get no-op writers, so the training loop can call them unconditionally.
"""
from __future__ import annotations

import json
import os
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

LOGGER_NAME = "simsiam"


def setup_logger(output_dir: str | Path | None, main: bool = True) -> logging.Logger:
    """'simsiam' logger: INFO to stderr and <output_dir>/log.txt on rank 0, warnings only elsewhere."""
    log = logging.getLogger(LOGGER_NAME)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if main and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return v


def code_version() -> str:
    """`git describe` of this checkout when available, else the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version
        return version("simsiam-suite")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only) and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))

    def write(self, record: dict[str, Any], tb_step: int | None = None) -> None:
        if not self.enabled:
            return
        if "stage" not in record or not ({"epoch", "iter"} & set(record)):
            raise ValueError(f"metrics record needs 'stage' and 'epoch' or 'iter': {record}")
        record = {k: _jsonable(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = tb_step if tb_step is not None else record.get("epoch", record.get("iter"))
            for k, v in record.items():
                if k not in ("stage", "epoch", "iter") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{record['stage']}/{k}", v, step)
            self.tb.flush()

    def drop_after(self, stage: str, epoch: int) -> int:
        """Remove `stage` lines with epoch > `epoch` (written before a crash that lost their checkpoint);
        returns how many were removed. Lines of other stages and unparsable lines are kept."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):  # a partial last line of a killed write
                    dropped += 1
                    continue
                kept.append(line)
                continue
            if rec.get("stage") == stage and isinstance(rec.get("epoch"), int) and rec["epoch"] > epoch:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        return dropped

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def progress(iterable: Iterable, total: int | None, enabled: bool, desc: str = ""):
    """tqdm bar on the terminal of rank 0 (silent elsewhere)."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                file=sys.stderr)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
