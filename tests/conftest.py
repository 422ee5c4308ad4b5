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
