"""results.json: the one contract between evaluations and the comparison tables.

Every evaluation (kNN, linear, detection trial, detection summary) writes one `results.json` into its
run folder with `write_results`. `simsiam table` reads nothing else.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from pretrain.checkpoint import sha256_file  # noqa: F401 - part of this module's API
from pretrain.logs import code_version

SCHEMA = "simsiam-suite/results/v1"
TASKS = ("pretrain", "knn", "linear", "detection")


def write_results(run_dir: str | Path, *, task: str, dataset: str, metrics: dict[str, Any],
                  config: dict[str, Any], source: dict[str, Any] | None = None, epochs: int | None = None,
                  batch_size: int | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write <run_dir>/results.json atomically and return its path.

    source: {"checkpoint": path, "sha256": ..., "pretrain": {"method", "arch", "epochs", "batch_size",
    "dataset"}} describing the pretrained weights that were evaluated (see `describe_source`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    doc = {
        "schema": SCHEMA,
        "task": task,
        "dataset": dataset,
        "metrics": metrics,
        "epochs": epochs,
        "batch_size": batch_size,
        "source": source or {},
        "config": config,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if extra:
        doc.update(extra)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no results.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    doc["_path"] = str(path)
    return doc


def find_results(paths: list[str | Path]) -> list[Path]:
    """Every results.json under the given run folders (recursively) or the files themselves."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.json")))
        else:
            raise FileNotFoundError(f"no such run folder or file: {p}")
    return found
