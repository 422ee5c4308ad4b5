"""Publishing a generated tree: written into a temporary sibling folder and renamed into place, so that no
reader (nor a concurrent process) ever sees a partial tree; its marker file, written last, says it is complete."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def read_marker(path: Path) -> dict | None:
    """The JSON a tree's marker file holds (its generation parameters), or None when there is none."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def publish_tree(target: Path, write: Callable[[Path], object], is_complete: Callable[[], bool]) -> None:
    """write(tmp) into a temporary sibling folder, then rename it to `target`, so that a reader (or a
    concurrent process) never sees a partial tree. The first complete tree wins: if another process put a
    complete tree (is_complete()) in place while we were writing, ours is discarded, because that process
    may already be reading it. Only a damaged `target` is moved aside and deleted before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if is_complete():  # a concurrent writer finished first; its readers must never see it vanish
            return
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            try:
                os.replace(target, trash / "tree")  # rename is atomic; deleting can then take its time
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete():  # a concurrent process won the rename with the same data
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
