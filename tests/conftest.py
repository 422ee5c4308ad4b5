"""Shared fixtures: the real data in ../shared/data, unpacked once into a cache folder (never committed)."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIMSIAM_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SIMSIAM_TEST_CACHE", REPO / ".cache" / "test-data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def unpack(name: str) -> Path:
    """Unpack ../shared/data/<name>.tgz into the test cache once; return the folder it makes."""
    archive = SHARED / f"{name}.tgz"
    if not archive.is_file():
        pytest.skip(f"real data archive {archive} is not present") if not os.environ.get("CI") else None
        raise FileNotFoundError(f"real data archive missing: {archive}")
    out = CACHE / name
    done = CACHE / f".{name}.done"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tf:
            tf.extractall(CACHE, filter="data")
        done.touch()
    return out


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """cifar10-jpg/{train,test}/<class>/*.jpg"""
    return unpack("cifar10-jpg")


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """bccd-voc/BCCD/{Annotations,JPEGImages,ImageSets/Main}"""
    return unpack("bccd-voc") / "BCCD"


@pytest.fixture(scope="session")
def coco_tiny_root() -> Path:
    """coco-tiny/annotations/instances_{train,val}2017.json, coco-tiny/{train,val}2017/"""
    return unpack("coco-tiny")


class _Command:
    """Unpickling it runs a shell command: what a crafted weights file can do to a plain pickle.load."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CraftedFiles:
    """Weights files whose unpickling would create `marker` (a shell command), and the checks that a reader
    refused them: exit code 2, one line on stderr naming the file, and the command never ran."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.marker = folder / "code_ran"

    def write(self, name: str, fmt: str = "pickle") -> Path:
        """fmt "pickle": a plain pickle (numpy arrays and the command, like a .pkl); "torch": torch.save."""
        import pickle
        import shlex

        import numpy as np

        path = self.folder / name
        command = _Command(f"touch {shlex.quote(str(self.marker))}")
        if fmt == "torch":
            torch.save({"format": "simsiam-suite/pretrain", "model": {"w": torch.zeros(2)}, "x": command}, path)
        else:
            path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "__author__": "x", "x": command}))
        return path

    def assert_refused(self, code: int, err: str, path: Path) -> None:
        assert not self.marker.exists(), "the crafted file's command ran"
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and f"{os.system.__module__}.system" in lines[0], err


@pytest.fixture
def crafted(tmp_path) -> CraftedFiles:
    """Crafted weights files in tmp_path (see CraftedFiles)."""
    return CraftedFiles(tmp_path)


@pytest.fixture
def no_submit(monkeypatch):
    """Any attempt to create an executor (the first step of queueing a job) fails the test."""
    from slurm import submit

    def refuse(*args, **kwargs):
        raise AssertionError("a job was about to be submitted")
    monkeypatch.setattr(submit, "make_executor", refuse)
    monkeypatch.setattr(submit, "active_jobs", lambda out: [])
