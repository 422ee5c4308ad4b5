"""results.json: the one contract between evaluations and the comparison tables (the schema: pretrain.results).

Every stage writes one `results.json` into its run folder through its frame (pretrain.frame.StageRun.results).
`simsiam table` reads nothing else: `find_results` finds the files, pretrain.results.read reads each as a
typed document (Results); `read_results` gives one as its JSON mapping (scripts and tests). A
missing, broken or foreign file is a ResultsError (pretrain.errors.InputError: one line naming the file, exit
code 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.checkpoint import sha256_file  # noqa: F401 - part of this module's API
from pretrain.results import SCHEMA, TASKS, VERSION, MissingResults, Results, ResultsError, read  # noqa: F401


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json as its JSON mapping, with "_path" (the file read) added."""
    doc = read(path)
    return {**doc.to_json(), "_path": str(doc.path)}


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
