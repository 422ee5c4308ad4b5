"""pretrain.generated.publish: a tree appears complete or not at all, and the first complete tree is kept."""
from __future__ import annotations

from pathlib import Path

from pretrain.generated.publish import publish_tree, read_marker


def test_publish_tree_keeps_the_first_complete_tree(tmp_path):
    # Two writers race (as two array tasks of one SLURM job did): the first renames its tree into place and
    # starts reading it; the second, finishing later, must not move that tree aside (its reader would find
    # the folder gone) but discard its own copy.
    target = tmp_path / "tree"
    is_complete = lambda: (target / "done").is_file()

    def write(who: str):
        def _write(tmp: Path):
            (tmp / "who").write_text(who)
            (tmp / "done").write_text("")
        return _write

    def slow_second_writer(tmp: Path):
        publish_tree(target, write("first"), is_complete)  # finishes while we are still writing
        inode = target.stat().st_ino
        write("second")(tmp)
        seen.append(inode)

    seen: list[int] = []
    publish_tree(target, slow_second_writer, is_complete)
    assert (target / "who").read_text() == "first" and target.stat().st_ino == seen[0]
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # the discarded copy is gone too

    # a damaged target (not complete) is still replaced
    (target / "done").unlink()
    publish_tree(target, write("third"), is_complete)
    assert (target / "who").read_text() == "third" and is_complete()
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_read_marker(tmp_path):
    (tmp_path / "ok.json").write_text('{"seed": 3}')
    (tmp_path / "bad.json").write_text("{")
    assert read_marker(tmp_path / "ok.json") == {"seed": 3}
    assert read_marker(tmp_path / "bad.json") is None and read_marker(tmp_path / "missing.json") is None
