"""Records of a run on rank 0: metrics.jsonl, TensorBoard, a tqdm progress bar, and the code version that
results.json carries (the text log and results.json: pretrain.frame; the results schema: pretrain.results).

Other ranks get no-op writers, so the training loop can call them unconditionally.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from .checkpoint import atomic_write

LOGGER_NAME = "simsiam"


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
        if enabled:
            self.drop_cut_off_line()
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

    def drop_cut_off_line(self) -> bool:
        """Remove an unterminated last line (a write cut short by a kill) so that the next record starts on a
        line of its own; atomic. Returns whether a line was removed."""
        if not self.path.is_file():
            return False
        text = self.path.read_bytes()
        if not text or text.endswith(b"\n"):
            return False
        kept = text[: text.rfind(b"\n") + 1]
        atomic_write(self.path, lambda f: f.write(kept))
        return True

    def drop_after(self, stage: str, epoch: int, key: str = "epoch") -> int:
        """Remove `stage` lines whose `key` (epoch, or iter for detection) is > `epoch`: written before a crash
        that lost their checkpoint, they will be written again. Returns how many were removed. Lines of other
        stages and unparsable lines are kept; the file is replaced atomically."""
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
            if rec.get("stage") == stage and isinstance(rec.get(key), int) and rec[key] > epoch:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            atomic_write(self.path, lambda f: f.write("".join(kept).encode()))
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


def read_metrics(path: str | Path, skip_bad: bool = False) -> list[dict]:
    """The records of a metrics.jsonl (or of the one in a run folder). An unterminated last line (a write cut
    short by a kill, or one still being written) is left out. Any other unparsable line is an error naming the
    file and line, or with skip_bad (plots of a damaged log) a warning, and the line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for n, line in enumerate(path.read_text().splitlines(keepends=True), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if not line.endswith("\n"):
                break
            if not skip_bad:
                raise ValueError(f"{path}:{n}: not a JSON record ({e})") from None
            warnings.warn(f"{path}:{n}: skipping a line that is not a JSON record", stacklevel=2)
    return records
