"""pretrain.checkpoint: atomic writes survive a kill, strict loading, official format, wrong kinds, and files
that would run code when unpickled are refused unread (the reader itself and `simsiam pretrain`)."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pretrain import checkpoint as ck
from pretrain.model import SimSiam


def tiny():
    torch.manual_seed(0)
    return SimSiam("resnet18", dim=32, pred_dim=8, proj_layers=2)


def test_atomic_save_survives_kill(tmp_path):
    """A writer killed (SIGKILL) at random moments mid-save never leaves a broken checkpoint.pth."""
    path = tmp_path / "checkpoint.pth"
    ck.atomic_save({"epoch": -1, "w": torch.zeros(10)}, path)
    script = (
        "import sys, torch; from pretrain.checkpoint import atomic_save\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_save({'epoch': i, 'w': torch.full((3_000_000,), float(i))}, sys.argv[1]); i += 1\n")
    for delay in (0.8, 1.3, 1.9):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        obj = torch.load(path, weights_only=True)
        e = obj["epoch"]
        assert obj["w"].numel() in (10, 3_000_000)
        assert torch.all(obj["w"] == (0.0 if e == -1 else float(e)))
    # only the completed file remains besides possible temp files of killed writers; none is named checkpoint.pth
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["checkpoint.pth"]


def test_atomic_write_concurrent_writers_of_one_path(tmp_path):
    """Two writers of the same file interleave (a second one starts and finishes while the first is still
    writing, as two trials of a job array do in a shared cache): both succeed, each rename publishes one
    whole version, no temporary file is left, and the file gets the mode a plain open() would give it."""
    import os
    path = tmp_path / "shared.txt"
    seen = []

    def outer(f):
        f.write(b"first half, ")
        ck.atomic_write(path, lambda g: g.write(b"the other writer's whole file"), durable=False)
        seen.append(path.read_bytes())
        f.write(b"second half")

    ck.atomic_write(path, outer)
    assert seen == [b"the other writer's whole file"]
    assert path.read_bytes() == b"first half, second half"
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode
    # a failing writer leaves the old version and no temporary file
    with pytest.raises(RuntimeError):
        ck.atomic_write(path, lambda f: (f.write(b"partial"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert path.read_bytes() == b"first half, second half"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "shared.txt"]
    assert os.access(path, os.R_OK)


def test_save_and_resume_roundtrip(tmp_path):
    m = tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))[0].sum().backward()
    opt.step()
    torch.manual_seed(123); np.random.seed(5); random.seed(7)
    obj = ck.make_checkpoint(m, opt, None, epoch=3, step=30, config={"a": 1}, dataset="embedded", arch="resnet18")
    ck.save_checkpoint(obj, tmp_path, save_freq=3)
    assert (tmp_path / "checkpoint.pth").is_file() and (tmp_path / "checkpoint_0003.pth").is_file()
    expect = (torch.rand(3), np.random.rand(2), random.random())
    loaded = torch.load(tmp_path / "checkpoint.pth", weights_only=True)  # plain weights_only load works
    assert loaded["format"] == "simsiam-suite/pretrain" and loaded["version"] == 1
    assert (loaded["epoch"], loaded["step"], loaded["arch"], loaded["dataset"]) == (3, 30, "resnet18", "embedded")
    assert set(loaded["rng"]) == {"torch", "cuda", "numpy", "python"} and loaded["scaler"] is None
    assert all(k.startswith(("encoder.", "predictor.")) for k in loaded["model"])
    m2 = SimSiam("resnet18", dim=32, pred_dim=8, proj_layers=2)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    state = ck.resume(tmp_path, m2, opt2)
    assert state["epoch"] == 3
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert opt2.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]
    assert ck.resume(tmp_path / "empty", m2) is None


def test_official_checkpoint_loads(tmp_path):
    m = tiny()
    official = {"epoch": 100, "arch": "resnet18",
                "state_dict": {"module." + k: v for k, v in m.state_dict().items()}, "optimizer": {}}
    torch.save(official, tmp_path / "checkpoint_0099.pth.tar")
    m2 = SimSiam("resnet18", dim=32, pred_dim=8, proj_layers=2)
    obj = ck.load_weights(m2, tmp_path / "checkpoint_0099.pth.tar")
    assert ck.checkpoint_kind(obj) == ck.OFFICIAL
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())


def test_strict_loading_lists_keys(tmp_path):
    m = tiny()
    sd = dict(m.state_dict())
    sd.pop("predictor.3.bias")
    sd["predictor.9.weight"] = torch.zeros(1)
    with pytest.raises(ck.CheckpointError) as e:
        ck.load_model_strict(m, sd, "x.pth")
    msg = str(e.value)
    assert "missing keys (1): predictor.3.bias" in msg and "unexpected keys (1): predictor.9.weight" in msg
    other = SimSiam("resnet18", dim=64, pred_dim=8, proj_layers=2).state_dict()
    with pytest.raises(ck.CheckpointError, match=r"shape mismatches .*encoder.fc.0.weight: checkpoint \(64, 512\)"):
        ck.load_model_strict(m, other, "y.pth")


def test_wrong_kind_files_are_named(tmp_path):
    m = tiny()
    tv = tmp_path / "resnet18_torchvision.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, tv)
    with pytest.raises(ck.CheckpointError, match="resnet18_torchvision.pth: wrong kind of checkpoint"):
        ck.load_weights(m, tv)
    junk = tmp_path / "model_final.pkl"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ck.CheckpointError, match="model_final.pkl: not a PyTorch checkpoint"):
        ck.load_weights(m, junk)
    with pytest.raises(ck.CheckpointError, match="checkpoint not found: .*nothing.pth"):
        ck.load_weights(m, tmp_path / "nothing.pth")


# ------------------------------------------------------------------------------------ crafted files
def test_crafted_files_are_refused_unread(crafted):
    for fmt in ("pickle", "torch"):
        path = crafted.write(f"crafted_{fmt}.pth", fmt)
        for read in (ck.load_torch, ck.read_checkpoint):
            with pytest.raises(ck.UnsafeFileError, match=f"{path}: refused: .*{os.system.__module__}.system"):
                read(path)
    with pytest.raises(ck.UnsafeFileError, match="crafted_pickle.pth: refused"):
        ck.load_pickle(crafted.folder / "crafted_pickle.pth")
    with pytest.raises(ck.UnsafeFileError, match="crafted_torch.pth: refused"):
        ck.load_weights(tiny(), crafted.folder / "crafted_torch.pth")
    assert not crafted.marker.exists()


def test_weight_pickles_of_every_protocol_load(tmp_path):
    """Detectron2/MoCo .pkl files: numpy arrays and scalars, any pickle protocol, numpy 1 module names."""
    obj = {"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(1.5)},
           "__author__": "x", "matching_heuristics": True}
    blobs = {f"p{p}.pkl": pickle.dumps(obj, protocol=p) for p in range(2, pickle.HIGHEST_PROTOCOL + 1)}
    blobs["numpy1.pkl"] = blobs["p2.pkl"].replace(b"numpy._core.", b"numpy.core.")
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
        got = ck.load_pickle(tmp_path / name)
        assert got["__author__"] == "x" and got["model"]["s"] == np.float32(1.5), name
        assert np.array_equal(got["model"]["a"], obj["model"]["a"]) and got["model"]["a"].dtype == np.float32, name


def _pretrain(argv, capsys) -> tuple[int, str]:
    from pretrain.main import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_pretrain_refuses_crafted_init_from(crafted, cifar_root, tmp_path, capsys):
    path = crafted.write("init.pth", "torch")
    code, err = _pretrain(["--config", "test_tiny", "--output", str(tmp_path / "run"), f"init_from={path}",
                           f"data.root={cifar_root}"], capsys)
    crafted.assert_refused(code, err, path)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_pretrain_refuses_a_crafted_checkpoint_to_resume(crafted, tmp_path, capsys, fmt):
    run = tmp_path / "run"
    run.mkdir()
    path = crafted.write("run/checkpoint.pth", fmt)
    code, err = _pretrain(["--config", "test_tiny", "--output", str(run), "data.root=embedded",
                           f"data.cache_dir={tmp_path / 'cache'}"], capsys)
    crafted.assert_refused(code, err, path)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pth"]  # the run folder is left as it was
