"""pretrain.train / pretrain.main: real short CPU runs.

The stop-gradient ablation, interrupt-and-resume equality, learning above random init, a two-process
gloo run, NaN handling and unreadable images, all through the real training loop.
"""
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain import config, distributed
from pretrain import data as data_mod
from pretrain.defaults import PretrainConfig
from pretrain.logs import read_metrics
from pretrain.main import main
from pretrain.model import build_model
from pretrain.protocol import recipe_of
from pretrain import train as train_mod
from pretrain.train import (RESUME_HARMLESS, NonFiniteLossError, amp_dtype, build_data, compile_model, knn_monitor,
                            run, seed_everything, trajectory_changes)

REPO = Path(__file__).resolve().parents[1]
CIFAR_MEAN_STD = ["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2023,0.1994,0.2010]"]


def tiny(*overrides):
    return config.resolve(PretrainConfig(), ["test_tiny"], list(overrides), kind="pretrain")


# The small run where collapse shows within 40 CPU steps (a high constant lr and weight decay, d = 64): the
# stop-gradient ablation and the claims of the paper's other ablations below are measured on it.
SMALL_RUN = ["data.limit_per_class=32", "train.batch_size=32", "train.epochs=5", "monitor.knn=false",
             "monitor.tensorboard=false", "train.save_freq=0", "train.deterministic=false",
             "model.dim=64", "model.pred_dim=16", "optim.base_lr=4.0", "optim.schedule=constant",
             "optim.weight_decay=0.05"]


@pytest.fixture(scope="module")
def paper_small_run(tmp_path_factory):
    """SMALL_RUN with the paper's defaults (stop-gradient, trained predictor, symmetric cosine loss)."""
    return run(tiny(*SMALL_RUN), tmp_path_factory.mktemp("paper_small_run") / "run")


def test_stop_gradient_ablation(paper_small_run, tmp_path):
    """The paper's central ablation: with stop-gradient the l2-normalised outputs stay spread out
    (collapse_std ~ 1/sqrt(d)); without it they collapse and collapse_std falls towards its floor.

    The floor: BN(affine=False) at the projector output centres every channel over the batch, so on training
    batches collapse_std cannot go below collapse_floor = 2 sqrt(B-1)/B/sqrt(d) (0.35/sqrt(d) for B=32;
    0.09/sqrt(d) at the paper's 512, which is the "0" of its Figure 2). A high constant lr and weight decay make
    the degeneration show within 40 CPU steps. At this lr the collapsed run oscillates above its floor from epoch
    to epoch, and the exact values differ between machines (floating-point kernels, thread counts), so the
    test compares means over epochs 3-5, never one epoch's value.

    Measured on the embedded data v2 (grey shapes) over seeds 0-2 with one thread and seed 0 with two (ref
    1/sqrt(64) = 0.125, floor 0.0435; the v1 figures, coloured shapes, in brackets):
    - with stop-gradient, mean collapse_std of epochs 1-5: 0.117-0.121 = 0.93-0.96 ref [0.118-0.123]
      (bound: > 0.85 ref = 0.106);
    - without, epoch 1: 0.105-0.107 = 0.84-0.86 ref (bound: > 0.75 ref);
    - without, mean of epochs 3-5: 0.068-0.080 = 0.55-0.64 ref [0.061-0.076] (bound: < 0.75 ref = 0.094),
      0.57-0.69 of the run with stop-gradient [at most 0.66] (bound: < 0.8);
    - mean loss of epochs 3-5: -0.67..-0.79 without, -0.13..-0.38 with, lower by 0.34-0.64 (bound: by more
      than 0.15).
    """
    with_sg = paper_small_run
    without = run(tiny(*SMALL_RUN, "model.stop_gradient=false"), tmp_path / "nosg")
    ref, floor = 1 / math.sqrt(64), 2 * math.sqrt(31) / 32 / math.sqrt(64)
    assert all(h["collapse_ref"] == pytest.approx(ref) and h["collapse_floor"] == pytest.approx(floor)
               for h in without["history"])

    def mean(values):
        return sum(values) / len(values)

    sg = [h["collapse_std"] for h in with_sg["history"]]
    nosg = [h["collapse_std"] for h in without["history"]]
    assert len(sg) == len(nosg) == 5 and nosg[0] > 0.75 * ref, (sg, nosg)   # both start healthy
    assert mean(sg) > 0.85 * ref, (sg, nosg)
    late_sg, late_nosg = mean(sg[2:]), mean(nosg[2:])
    assert floor < late_nosg < 0.75 * ref and late_nosg < 0.8 * late_sg, (sg, nosg, floor)
    # and the loss is driven towards its trivial minimum -1 much faster
    loss_sg = mean([h["loss"] for h in with_sg["history"][2:]])
    loss_nosg = mean([h["loss"] for h in without["history"][2:]])
    assert loss_nosg < loss_sg - 0.15, (loss_sg, loss_nosg)


def _weights(path):
    return torch.load(path, weights_only=True)


def test_interrupt_and_resume_is_exact(tmp_path, capsys):
    common = ["train.max_steps_per_epoch=2", "monitor.knn_max_val=4", "monitor.knn_max_train=4",
              f"data.cache_dir={os.path.expanduser('~/.cache/simsiam')}"]
    full = run(tiny(*common), tmp_path / "full")
    assert full["complete"] and full["epoch"] == 2 and full["step"] == 4

    # the same command twice; the first stops cleanly after one epoch, the second resumes by itself
    argv = ["--config", "test_tiny", "--output", str(tmp_path / "split"), *common, "train.stop_after_epochs=1"]
    assert main(argv) == 0
    first = _weights(tmp_path / "split" / "checkpoint.pth")
    assert first["epoch"] == 1 and first["step"] == 2
    assert not json.loads((tmp_path / "split" / "results.json").read_text())["complete"]
    pre = json.loads((tmp_path / "split" / "results.json").read_text())["source"]["pretrain"]
    assert pre["completed"] is False and pre["recipe"] == recipe_of(first["config"])  # what an evaluation records
    assert main(argv) == 0
    assert "resumed" in (tmp_path / "split" / "log.txt").read_text()

    a, b = _weights(tmp_path / "full" / "checkpoint.pth"), _weights(tmp_path / "split" / "checkpoint.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 4)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weights differ after resume: {k}"
    bufs = lambda o: [s["momentum_buffer"] for s in o["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(bufs(a), bufs(b)))
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]
    assert [m["knn_top1"] for m in ma] == [m["knn_top1"] for m in mb]

    # the run folder: resolved config, snapshots, metrics with the required keys, TensorBoard, results.json
    run_dir = tmp_path / "full"
    assert config.from_dict(PretrainConfig, config.load_yaml(run_dir / "config.yaml")) == tiny(*common)
    assert (run_dir / "checkpoint_0001.pth").is_file() and (run_dir / "checkpoint_0002.pth").is_file()
    for m in ma:
        assert m["stage"] == "pretrain" and {"epoch", "loss", "lr", "collapse_std", "knn_top1", "time",
                                              "images_per_s"} <= set(m)
    assert ma[1]["lr"] == pytest.approx(0.05 * 16 / 256 * 0.5) and ma[1]["pred_lr"] == pytest.approx(0.05 * 16 / 256)
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tb").iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    assert (res["schema"], res["task"], res["dataset"], res["epochs"], res["batch_size"]) == \
        ("simsiam-suite/results/v1", "pretrain", "embedded", 2, 16)
    assert {"knn_top1", "loss", "collapse_std"} <= set(res["metrics"]) and res["code_version"]
    assert res["source"]["sha256"] == hashlib.sha256((run_dir / "checkpoint.pth").read_bytes()).hexdigest()
    assert (res["protocol"]["epochs"], res["protocol"]["completed"], res["protocol"]["batch"]) == (2, True, 16)

    # resuming with a different batch is refused unless allowed
    capsys.readouterr()
    assert main(["--config", "test_tiny", "--output", str(run_dir), *common, "train.batch_size=32"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: 16 in the checkpoint, 32 now; pass --allow-config-change" in err



def test_trajectory_keys():
    """Every config key blocks a resume when it changes, except those of RESUME_HARMLESS (all real keys)."""
    stored = config.to_dict(tiny())
    assert trajectory_changes(stored, tiny()) == []
    harmless = tiny("monitor.knn=false", "monitor.knn_k=20", "data.workers=3", "data.prefetch=2",
                    "data.cache_dir=/elsewhere",
                    "train.save_freq=0", "train.stop_after_epochs=1", "train.print_freq=5", "init_from=x.pth")
    assert trajectory_changes(stored, harmless) == []
    changed = tiny("train.epochs=200", "optim.base_lr=0.1", "optim.schedule=constant", "optim.momentum=0.8",
                   "optim.weight_decay=0.001", "optim.fix_pred_lr=false", "train.seed=1", "data.min_scale=0.1",
                   "model.dim=128", "data.mean=[0.5,0.5,0.5]")
    assert {c["key"]: (c["old"], c["new"]) for c in trajectory_changes(stored, changed)} == {
        "train.epochs": (2, 200), "optim.base_lr": (0.05, 0.1), "optim.schedule": ("cosine", "constant"),
        "optim.momentum": (0.9, 0.8), "optim.weight_decay": (1e-4, 0.001), "optim.fix_pred_lr": (True, False),
        "train.seed": (0, 1), "data.min_scale": (0.2, 0.1), "model.dim": (256, 128),
        "data.mean": ([0.485, 0.456, 0.406], [0.5, 0.5, 0.5])}
    del stored["optim"]["fix_pred_lr"]  # a checkpoint older than a key: its default applies
    assert trajectory_changes(stored, tiny()) == []
    for key in RESUME_HARMLESS:
        node = config.to_dict(PretrainConfig())
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]


def test_resume_refuses_a_changed_trajectory(tmp_path, capsys):
    """Resuming with another value of a trajectory key: one line naming it, exit 2, the run folder as it was;
    --allow-config-change resumes, logs the change and records it in results.json and the checkpoint; a key
    that does not change the trajectory resumes without the flag."""
    out = tmp_path / "run"
    base = ["--config", "test_tiny", "--output", str(out), "train.max_steps_per_epoch=1",
            "monitor.knn_max_train=2", "monitor.knn_max_val=2", "monitor.tensorboard=false", "train.save_freq=0"]
    assert main(base + ["train.stop_after_epochs=1"]) == 0
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    capsys.readouterr()
    assert main(base + ["train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / "checkpoint.pth") in err
    assert err.endswith("train.epochs: 2 in the checkpoint, 3 now; pass --allow-config-change to resume anyway")
    assert files() == before

    assert main(base + ["monitor.knn=false"]) == 0  # a key that does not change the trajectory: resumes
    assert _weights(out / "checkpoint.pth")["epoch"] == 2

    allowed = ["--allow-config-change", *base, "train.epochs=3", "optim.base_lr=0.1"]
    assert main(allowed) == 0
    changes = [{"epoch": 2, "key": "optim.base_lr", "old": 0.05, "new": 0.1},
               {"epoch": 2, "key": "train.epochs", "old": 2, "new": 3}]
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["epochs"] == 3 and res["config_changes"] == changes
    assert _weights(out / "checkpoint.pth")["config_changes"] == changes
    assert "config changed on resume after epoch 2 (--allow-config-change): train.epochs: 2 in the checkpoint, " \
           "3 now" in (out / "log.txt").read_text()
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    assert main(allowed) == 0  # the finished run again: the same config now, the recorded change kept
    assert json.loads((out / "results.json").read_text())["config_changes"] == changes


@pytest.mark.parametrize("args, named", [
    ([], "data.root is not set"),                                       # the defaults: the ImageNet recipe
    (["--config", "imagenet_r50_100ep"], "data.root is not set"),
    (["--config", "imagenet_r50_200ep"], "data.root is not set"),
    (["--config", "cifar10_r18"], "data.root is not set"),
    (["--config", "cifar10_r18_fast"], "data.root is not set"),
    (["--config", "cifar10_r18", "data.root=/no/such/cifar"], "data.root: dataset folder '/no/such/cifar' does not"),
])
def test_refuses_to_start_without_its_dataset(tmp_path, capsys, args, named):
    """The defaults and every preset of a real dataset need data.root: one line naming it, exit 2, and the
    output folder is left as it was (not created; an existing empty one stays empty)."""
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for out in (absent, empty):
        assert main([*args, "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"simsiam pretrain: error: {named}"), err
    assert not absent.exists() and list(empty.iterdir()) == []


def test_short_cifar_run_learns(cifar_root, tmp_path):
    """A short run on a CIFAR-10 slice (5000 images, 624 steps of 32, the CIFAR recipe with a higher lr) raises
    kNN top-1 (k=200, 5000-image bank, 2000 held-out test images) clearly above the same network at random
    init.

    Measured (the device data path on CPU): gains of +4.5 / +7.4 / +4.3 / +5.1 points for seeds 0-3 with one
    thread and +3.0 for seed 0 with two (19-20 % at random init -> 23-26 %), 90-150 s on 2 cores. With 312
    steps the gain was +1.1 to +6.6 across seeds, too close to noise for a test. Bound: +1.5 points.
    """
    cfg = tiny(f"data.root={cifar_root}", *CIFAR_MEAN_STD, "data.limit_per_class=500", "monitor.knn_max_train=500",
               "monitor.knn_max_val=200", "monitor.knn_every=2", "train.epochs=4", "train.batch_size=32",
               "optim.base_lr=1.6", "train.gpu_augment=true", "train.save_freq=0", "monitor.tensorboard=false")
    # the baseline: the network run() starts from (same seed), through the same kNN monitor and data
    info = distributed.init_distributed("cpu")
    seed_everything(cfg.train.seed)
    random_init = build_model(cfg.model)
    _, knn_loaders = build_data(cfg, *data_mod.resolve_roots(cfg.data), info)
    before = knn_monitor(random_init, *knn_loaders, cfg, info, None)["top1"]

    result = run(cfg, tmp_path / "run")
    hist = result["history"]
    assert [h["steps"] for h in hist] == [156] * 4               # 5000 images / batch 32, drop_last
    assert hist[-1]["loss"] < -0.5, [h["loss"] for h in hist]
    after = hist[-1]["knn_top1"]
    assert before > 12.0                                         # 10 classes: chance is 10%
    assert after > before + 1.5, (before, after)
    assert abs(hist[-1]["collapse_std"] - 1 / math.sqrt(256)) < 0.2 / math.sqrt(256)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run(tmp_path):
    """torchrun with two CPU processes: env:// set-up, gloo, the global batch split in two."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pretrain.main", "--config", "test_tiny", "--output", str(out),
           "train.epochs=1", "train.max_steps_per_epoch=2", "monitor.knn_max_train=4", "monitor.knn_max_val=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m,) = read_metrics(out)
    assert m["world_size"] == 2 and m["batch_per_rank"] == 8 == 16 // 2 and m["steps"] == 2
    assert math.isfinite(m["loss"]) and "knn_top1" in m and 0 <= m["data_wait"] <= 1
    log = (out / "log.txt").read_text()
    assert "2 processes, global batch 16 (8 per process)" in log and f"data_wait {100 * m['data_wait']:.0f}%" in log
    ckpt = _weights(out / "checkpoint.pth")
    assert ckpt["epoch"] == 1 and len(ckpt["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--config", "test_tiny", "--output", str(out), "train.max_steps_per_epoch=2", "monitor.knn=false",
            "monitor.tensorboard=false"]
    assert main(base + ["train.stop_after_epochs=1"]) == 0
    good = _weights(out / "checkpoint.pth")
    capsys.readouterr()
    # an absurd learning rate drives the weights to inf within a step or two; the loss becomes NaN
    assert main(["--allow-config-change", *base, "optim.base_lr=1e30"]) == 2
    err = capsys.readouterr().err
    assert "epoch 2" in err and "last good checkpoint is kept" in err and str(out / "checkpoint.pth") in err
    kept = _weights(out / "checkpoint.pth")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert all(torch.equal(v, good["model"][k]) for k, v in kept["model"].items())
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+/2"):
        run(tiny("train.max_steps_per_epoch=2", "monitor.knn=false", "optim.base_lr=1e30"), out,
            allow_config_change=True)


def test_optimizer_step_runs_before_update_on_unscaled_gradients():
    """optimizer_step calls before_update between the backward pass and the update: through a GradScaler it
    sees the unscaled gradients (those of the plain path), and a gradient it drops leaves its parameter unmoved,
    weight decay and momentum included, while the others take the plain path's update."""
    seen = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        bias = net.bias.detach().clone()

        def drop_bias():
            seen[scaled] = net.weight.grad.clone()
            net.bias.grad = None

        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
        train_mod.optimizer_step(net(torch.ones(4, 3)).square().mean(), opt, scaler, drop_bias)
        assert torch.equal(net.bias, bias) and net.bias not in opt.state
        seen[f"weight{scaled}"] = net.weight.detach().clone()
    assert seen[False].abs().min() > 0
    assert torch.allclose(seen[True], seen[False], rtol=1e-6, atol=0)
    assert torch.allclose(seen["weightTrue"], seen["weightFalse"], rtol=1e-6, atol=0)


def test_unreadable_image_fails_the_run_with_its_path(cifar_root, tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls in ("bird", "ship"):
        (root / cls).mkdir(parents=True)
        for src in sorted((cifar_root / "train" / cls).iterdir())[:8]:
            shutil.copy(src, root / cls / src.name)
    bad = root / "ship" / sorted(os.listdir(root / "ship"))[3]
    bad.write_bytes(b"garbage")
    argv = ["--config", "test_tiny", "--output", str(tmp_path / "run"), f"data.root={root}", "train.epochs=1",
            "monitor.knn=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "Traceback" not in err
    # skip mode: the run finishes
    assert main(argv[:3] + [str(tmp_path / "run2")] + argv[4:] + ["data.on_corrupt=skip"]) == 0


def test_gpu_augment_path_trains_on_any_device(tmp_path):
    """train.gpu_augment=true (decode + MoCo v2 views on the device, pretrain.fastdata) runs the same loop:
    finite loss, the kNN monitor on device-resident splits, and the per-rank batch of the config."""
    out = tmp_path / "fast"
    result = run(tiny("train.gpu_augment=true", "train.epochs=1", "train.max_steps_per_epoch=2"), out)
    rec = read_metrics(out / "metrics.jsonl")[-1]
    assert rec["steps"] == 2 and rec["batch_per_rank"] == 16
    assert math.isfinite(rec["loss"]) and rec["collapse_std"] > 0.5 * rec["collapse_ref"]
    assert 0.0 <= rec["knn_top1"] <= 100.0 and result["complete"]


def test_metrics_lines_of_an_uncheckpointed_epoch_are_redone(tmp_path):
    """A kill after an epoch's metrics line but before its checkpoint: the resumed run drops that line and
    writes it again, so metrics.jsonl ends with exactly one line per epoch."""
    out = tmp_path / "r"
    run(tiny("train.epochs=2", "train.stop_after_epochs=1", "train.max_steps_per_epoch=1"), out)
    with open(out / "metrics.jsonl", "a") as f:  # the line of an epoch 2 whose checkpoint never landed
        f.write(json.dumps({"stage": "pretrain", "epoch": 2, "loss": 123.0}) + "\n")
        f.write('{"stage": "pretr')                  # and a partial line of a killed write
    run(tiny("train.epochs=2", "train.max_steps_per_epoch=1"), out)
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2] and recs[1]["loss"] != 123.0


SHORT = ["train.epochs=1", "train.max_steps_per_epoch=2", "monitor.knn=false", "monitor.tensorboard=false",
         "train.save_freq=0"]


def test_bf16_and_channels_last_apply_on_cpu(tmp_path):
    """train.amp=bf16 and train.channels_last=true take effect on the CPU as on CUDA: the run and its
    results.json record bf16 autocast and channels-last convolution weights, and the loss stays that of the
    fp32 contiguous run of the same config.

    Measured (tiny preset, 1 epoch x 2 steps, seeds 0-2, 2 threads): the epoch losses differ by 4e-5 to 1.5e-3
    (never 0: bf16 ran), collapse_std by at most 1e-5. Bounds: 1e-2 and 1e-3."""
    ref = run(tiny(*SHORT), tmp_path / "fp32")
    fast = run(tiny(*SHORT, "train.amp=bf16", "train.channels_last=true"), tmp_path / "bf16")
    assert ref["applied"] == {"amp": "none", "channels_last": False, "compiled": False}
    assert fast["applied"] == {"amp": "bf16", "channels_last": True, "compiled": False}
    assert json.loads((tmp_path / "bf16" / "results.json").read_text())["applied"] == fast["applied"]
    a, b = ref["metrics"], fast["metrics"]
    assert a["loss"] != b["loss"] and abs(a["loss"] - b["loss"]) < 1e-2, (a, b)
    assert abs(a["collapse_std"] - b["collapse_std"]) < 1e-3, (a, b)


def test_knn_monitor_autocasts_on_the_model_device():
    """The kNN monitor's feature forward runs under the training autocast on the model's device (here bf16 on
    the CPU), and gives the fp32 accuracy within one query image."""
    cfg = tiny("data.limit_per_class=4", "monitor.knn_max_val=4")
    info = distributed.init_distributed("cpu")
    seed_everything(0)
    model = build_model(cfg.model)
    _, knn_loaders = build_data(cfg, *data_mod.resolve_roots(cfg.data), info)
    real, seen = model.backbone_features, []

    def probe(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(x)

    model.backbone_features = probe
    ref = knn_monitor(model, *knn_loaders, cfg, info, None)
    assert seen and not any(on for on, _ in seen)
    seen.clear()
    fast = knn_monitor(model, *knn_loaders, cfg, info, torch.bfloat16)
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    queries = len(knn_loaders[1].dataset)
    assert abs(fast["top1"] - ref["top1"]) <= 100.0 / queries + 1e-6, (ref, fast)


def test_speed_switches_that_do_not_apply_on_cpu(monkeypatch, caplog):
    """fp16 needs CUDA's GradScaler: on the CPU train.amp=fp16 trains in fp32, bf16 in bf16. TorchInductor
    builds C++ kernels on the CPU: without a C++ compiler train.compile=true leaves the model eager, logged."""
    cpu = torch.device("cpu")
    assert amp_dtype(tiny("train.amp=fp16"), cpu) is None and amp_dtype(tiny("train.amp=none"), cpu) is None
    assert amp_dtype(tiny("train.amp=bf16"), cpu) is torch.bfloat16
    monkeypatch.setattr(train_mod, "cpp_compiler", lambda: None)
    model = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING):
        assert compile_model(model, cpu, logging.getLogger("simsiam-test")) is model
    assert "no C++ compiler" in caplog.text


@pytest.mark.slow
def test_fast_mode_with_compile_runs_on_cpu(tmp_path):
    """The pretraining fast mode, train.compile=true included, runs on the CPU: the stepped model is
    torch.compile's (inductor, C++ kernels) and the loss stays that of the fp32 eager run.

    Measured (tiny preset, 1 epoch x 2 steps, seeds 0-2, 2 threads): the epoch losses differ by 1.4e-4 to
    2.2e-3, collapse_std by at most 1e-5. Bounds: 1e-2 and 1e-3. Compiling takes about 2 min with an empty
    inductor cache on 2 busy cores, 7-25 s with a warm one."""
    if train_mod.cpp_compiler() is None:
        pytest.skip("TorchInductor needs a C++ compiler for its CPU kernels (set CXX or install g++)")
    ref = run(tiny(*SHORT), tmp_path / "fp32")
    fast = run(tiny(*SHORT, "train.amp=bf16", "train.channels_last=true", "train.compile=true"), tmp_path / "fast")
    assert fast["applied"] == {"amp": "bf16", "channels_last": True, "compiled": True}
    assert json.loads((tmp_path / "fast" / "results.json").read_text())["applied"] == fast["applied"]
    a, b = ref["metrics"], fast["metrics"]
    assert a["loss"] != b["loss"] and abs(a["loss"] - b["loss"]) < 1e-2, (a, b)
    assert abs(a["collapse_std"] - b["collapse_std"]) < 1e-3, (a, b)


# ------------------------------------------------------------------------------------- mid-epoch stop
MID = ["train.epochs=2", "train.max_steps_per_epoch=3", "monitor.knn=false", "monitor.tensorboard=false",
       "train.save_freq=1"]


def _stop_resume_equal(full_dir: Path, split_dir: Path) -> None:
    a, b = _weights(full_dir / "checkpoint.pth"), _weights(split_dir / "checkpoint.pth")
    assert (a["epoch"], a["step"], b["epoch"], b["step"]) == (2, 6, 2, 6)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"weights differ after a mid-epoch stop: {k}"
    bufs = lambda o: [s["momentum_buffer"] for s in o["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(bufs(a), bufs(b)))
    ma, mb = read_metrics(full_dir), read_metrics(split_dir)
    assert [m["epoch"] for m in mb] == [1, 2] and [m["steps"] for m in mb] == [3, 3]
    assert [m["loss"] for m in ma] == [m["loss"] for m in mb]
    assert [m["collapse_std"] for m in ma] == [m["collapse_std"] for m in mb]
    assert sorted(p.name for p in split_dir.glob("checkpoint_*.pth")) == ["checkpoint_0001.pth", "checkpoint_0002.pth"]


@pytest.mark.parametrize("path", ["pil", "device"])
def test_stop_mid_epoch_resumes_to_same_weights(tmp_path, path, capsys):
    """A stop request (the STOP file, or SIGUSR1 through pretrain.main's handler) ends training after the current
    step with a checkpoint holding the data position; resuming continues at the next step with the same data
    order and views, so the weights, optimiser state and metrics equal an uninterrupted run's."""
    extra = MID + (["train.gpu_augment=true"] if path == "device" else [])
    run(tiny(*extra), tmp_path / "full")
    split = tmp_path / "split"
    argv = ["--config", "test_tiny", "--output", str(split), *extra]
    (split).mkdir()
    (split / train_mod.STOP_FILE).touch()           # asked before it starts: stops after step 1 of epoch 1
    assert main(argv) == 0
    ck = _weights(split / "checkpoint.pth")
    assert (ck["epoch"], ck["epoch_step"], ck["step"]) == (0, 1, 1)
    assert not (split / train_mod.STOP_FILE).exists() and not list(split.glob("checkpoint_*.pth"))
    assert not (split / "metrics.jsonl").exists() or read_metrics(split) == []
    assert "stopped (run the same command to resume)" in capsys.readouterr().out
    # the second request comes as a signal, once main has installed its handler: stops after step 2
    import signal
    assert signal.getsignal(signal.SIGUSR1) is train_mod.request_stop
    os.kill(os.getpid(), signal.SIGUSR1)
    assert main(argv) == 0
    ck = _weights(split / "checkpoint.pth")
    assert (ck["epoch"], ck["epoch_step"], ck["step"]) == (0, 2, 2)
    assert main(argv) == 0
    _stop_resume_equal(tmp_path / "full", split)
    assert "step 2 of the epoch" in (split / "log.txt").read_text()


def test_stop_mid_epoch_two_processes(tmp_path):
    """torchrun, two CPU processes: the STOP file stops both ranks after the same step; the resumed run restores
    every rank's data position and RNG and ends with the weights of an uninterrupted two-process run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def torchrun(out: Path) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "pretrain.main", "--config", "test_tiny", "--output",
               str(out), *MID, "train.batch_size=8"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(tmp_path / "full")
    split = tmp_path / "split"
    split.mkdir()
    (split / train_mod.STOP_FILE).touch()
    torchrun(split)
    ck = _weights(split / "checkpoint.pth")
    assert (ck["epoch"], ck["epoch_step"]) == (0, 1) and len(ck["positions"]) == len(ck["rng_ranks"]) == 2
    torchrun(split)
    _stop_resume_equal(tmp_path / "full", split)


def test_views_do_not_depend_on_loader_workers(tmp_path):
    """The reference loader seeds each image's views from (seed, epoch, index): two loader processes give the
    very batches of none, and skipping the first batches of an epoch (a resume) gives its remaining ones."""
    cfg = tiny("data.workers=0")
    train_dir, _ = data_mod.resolve_roots(cfg.data)
    first = data_mod.build_pretrain_loader(cfg, train_dir)
    first.set_epoch(1)
    ref = [x for (x, _), _ in first]
    other = data_mod.build_pretrain_loader(tiny("data.workers=2"), train_dir)
    other.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(ref, [x for (x, _), _ in other]))
    other.set_epoch(1, start_step=2)
    rest = [x for (x, _), _ in other]
    assert len(rest) == len(ref) - 2 and all(torch.equal(a, b) for a, b in zip(ref[2:], rest))
    assert len(other) == len(ref)


@pytest.mark.parametrize("switch", [["model.predictor=fixed"], ["loss.similarity=cross_entropy"],
                                    ["loss.symmetrisation=asymmetric"], ["model.target=kstep", "model.target_every=10"],
                                    ["model.target=moving_average", "model.predictor=none"]], ids=lambda s: s[0])
def test_ablations_that_do_not_collapse(paper_small_run, tmp_path, switch):
    """The paper's claims that hold in SMALL_RUN: a predictor fixed at its random init (Table 1b), the
    cross-entropy similarity (Sec. 4.5), the asymmetric loss (Sec. 4.6), a target copy refreshed every 10 steps
    and the moving-average target without predictor (Sec. 5.2) do not collapse. Without stop-gradient
    the same run's late collapse_std is 0.55-0.64 of 1/sqrt(d) (test_stop_gradient_ablation).

    Measured (embedded data, seeds 0-2 with one thread and seed 0 with two, 2026-12-03, AMD EPYC), mean
    collapse_std of epochs 1-5 over 1/sqrt(64): fixed predictor 0.92-0.98, cross-entropy 0.90-0.93, asymmetric
    0.93-0.97, 10-step copy 0.93-0.96, moving average 0.87-0.96 (bound: > 0.8; the paper-default run: 0.93-0.97). A fixed predictor's parameters are the ones it started with, to the bit.

    What SMALL_RUN cannot show (measured on the same seeds): without a predictor (Table 1a) the loss falls towards
    -1 as without stop-gradient (-0.60..-0.71 over epochs 8-10 of a 10-epoch run), but collapse_std drifts down
    with wide oscillations (0.65-0.79 of 1/sqrt(d) over epochs 8-10) instead of settling on its floor; without BN in the heads (Table 3a) the
    run collapses to collapse_std 0 within two epochs at this lr and at base lr 1.0 with warm-up, where the paper's
    100-epoch run at lr 0.05 does not collapse (34.6 %); a fixed predictor's loss stays above the trained one's
    (Table 1b: "the loss remains high") but not far above it on every seed (last-epoch loss -0.03..-0.11 against
    -0.13..-0.38), too close for a bound that holds on another CPU."""
    out = run(tiny(*SMALL_RUN, *switch), tmp_path / "run")
    ref = 1 / math.sqrt(64)
    stds = [h["collapse_std"] for h in out["history"]]
    assert len(stds) == 5 and sum(stds) / 5 > 0.8 * ref, stds
    assert sum(stds) / 5 > 0.8 * sum(h["collapse_std"] for h in paper_small_run["history"]) / 5, stds
    if switch == ["model.predictor=fixed"]:
        seed_everything(0)
        start = build_model(tiny(*SMALL_RUN, *switch).model).predictor.state_dict()
        end = _weights(tmp_path / "run" / "checkpoint.pth")["model"]
        params = [k for k, v in start.items() if "running_" not in k and "num_batches" not in k]
        assert params and all(torch.equal(end[f"predictor.{k}"], start[k]) for k in params)
