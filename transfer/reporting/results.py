"""results.json: the one contract between evaluations and the comparison tables.

Every stage (pretraining, kNN, linear, detection trial, detection summary) writes one `results.json` into its
run folder with `write_results` (defined in pretrain.logs, which pretraining shares). `simsiam table` reads
nothing else: `read_results` and `find_results` are its side. A missing, broken or foreign file is a
ResultsError (pretrain.errors.InputError: one line naming the file, exit code 2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.checkpoint import sha256_file  # noqa: F401 - part of this module's API
from pretrain.errors import InputError
from pretrain.logs import RESULTS_SCHEMA, RESULTS_TASKS, write_results  # noqa: F401 - part of this module's API

SCHEMA, TASKS = RESULTS_SCHEMA, RESULTS_TASKS


class ResultsError(InputError, ValueError):
    """A results.json that cannot be read: not valid JSON, or another schema."""


class MissingResults(ResultsError, FileNotFoundError):
    """No results.json (or run folder) where one was named."""


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingResults(f"no results.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise ResultsError(f"{path}: schema is {found!r}, expected {SCHEMA!r}")
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
            raise MissingResults(f"no such run folder or file: {p}")
    return found
