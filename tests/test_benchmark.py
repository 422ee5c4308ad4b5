"""transfer.tooling.benchmark and transfer.tooling.cifar_bench: real tiny CPU runs.

The throughput benchmark writes its JPEG folder, measures the six rows, checks that the fast mode's views look
like the PIL reference's and prints/appends the table; the CIFAR
benchmark's --short version pretrains on a slice of the real CIFAR-10 JPEGs, evaluates, and writes its summary.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from transfer.tooling import benchmark, cifar_bench


def test_jpeg_folder_is_imagenet_like_and_reused(tmp_path):
    root = benchmark.write_jpeg_folder(tmp_path / "d", 12, classes=3)
    files = sorted((root / "train").rglob("*.jpg"))
    assert len(files) == 12 and len({f.parent.name for f in files}) == 3
    for f in files[:4]:
        with Image.open(f) as im:
            assert im.format == "JPEG" and 330 <= im.size[0] < 470 and 290 <= im.size[1] < 410
    stamp = files[0].stat().st_mtime_ns
    benchmark.write_jpeg_folder(tmp_path / "d", 12, classes=3)
    assert files[0].stat().st_mtime_ns == stamp          # same parameters: kept


def test_tiny_cpu_benchmark_prints_all_rows(tmp_path, capsys):
    out = tmp_path / "bench.md"
    js = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--images", "24", "--classes", "3", "--steps", "1", "--warmup", "1", "--batch", "4",
            "--linear-batch", "8", "--workers", "0", "--gen-workers", "1", "--arch", "resnet18", "--size", "32",
            "--data", str(tmp_path / "jpg"), "--out", str(out), "--json", str(js)]
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads(js.read_text())
    rows = doc["rows"]
    assert [(r["stage"], r["mode"]) for r in rows] == list(benchmark.ROWS)
    assert all(r["images_per_s"] > 0 and r["s_per_step"] > 0 for r in rows)
    assert rows[0]["vs_reference"] == pytest.approx(1.0) and rows[3]["vs_reference"] == pytest.approx(1.0)
    text = out.read_text()
    assert text in printed
    for stage, mode in benchmark.ROWS:
        assert re.search(rf"\|\s*{stage}\s*\|\s*{mode}\s*\|[^\n]*\|\s*[0-9.]+\s*\|", text), (stage, mode)
    assert "device: CPU" in text and "torch " in text and "python -m transfer.tooling.benchmark --device cpu" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "applied fp32" in text                         # bf16 / channels_last / compile: CUDA only
    # what the fast mode fed its step: real normalised MoCo v2 views, statistically like the PIL reference's
    # (measured: channel means -0.45..-0.05 vs -0.53..-0.10, stds 1.07-1.16 vs 1.09-1.20, views differ 0.89
    # vs 0.86, smallest image std 0.08-0.19)
    assert "output check of the fast mode against the reference: pretrain ok; linear ok" in text
    assert all(("output_check" in r) == (r["mode"] != "ceiling") for r in rows)
    for r, batch in ((rows[1], 4), (rows[4], 8)):
        c = r["output_check"]
        ref = rows[0 if r["stage"] == "pretrain" else 3]["output_check"]
        assert r["check_fast"] == {"ok": True, "failed": []}
        assert c["images"] >= benchmark.CHECK_IMAGES and c["shape"] == [batch, 3, 32, 32] and c["finite"]
        assert all(abs(m) < 1.2 and 0.7 < s < 1.6 for m, s in zip(c["mean"], c["std"])), c
        assert all(abs(m - rm) < 0.4 for m, rm in zip(c["mean"], ref["mean"])), (c, ref)
        assert c["min_image_std"] > 0.02
    assert rows[1]["output_check"]["views_differ"] > 0.5 and rows[1]["output_check"]["labels_ok"] is None
    assert rows[4]["output_check"]["labels_ok"] is True and rows[4]["output_check"]["views_differ"] is None


def test_output_check_flags_broken_views():
    """compare_checks rejects constant, unnormalised, non-finite, wrongly sized and identical views and bad
    labels, and accepts views like the reference's."""
    g = torch.Generator().manual_seed(0)

    def views(n=4, size=8, scale=1.0, shift=0.0):
        return [(torch.randn(n, 3, size, size, generator=g) * scale + shift,
                 torch.randn(n, 3, size, size, generator=g) * scale + shift) for _ in range(3)]

    ref = benchmark.output_check(views(), True, 3)
    assert ref["images"] == 12 and ref["shape"] == [4, 3, 8, 8] and ref["views_differ"] == pytest.approx(1.13, abs=0.1)

    def failed(batches, pretrain=True):
        reference = ref if pretrain else benchmark.output_check([(x, torch.zeros(4)) for x, _ in views()], False, 3)
        return benchmark.compare_checks(benchmark.output_check(batches, pretrain, 3), reference, 4, 8)["failed"]

    assert failed(views()) == []
    zeros = torch.zeros(4, 3, 8, 8)
    assert failed([(zeros, zeros)] * 3) == ["std", "constant_image", "views_differ"]
    assert failed([(zeros - 2.1, zeros - 2.1)] * 3) == ["mean", "std", "constant_image", "views_differ"]
    assert {"std", "views_differ"} <= set(failed(views(scale=0.25, shift=0.45)))  # [0, 1] pixels, not normalised
    assert failed([(x, x) for x, _ in views()]) == ["views_differ"]
    nan = views()
    nan[1][0][0, 0, 0, 0] = float("nan")
    assert failed(nan) == ["finite"]
    assert failed(views(size=16)) == ["shape"]
    assert failed([(x, torch.tensor([0, 1, 2, 3])) for x, _ in views()], pretrain=False) == ["labels"]
    assert failed([(x, torch.tensor([0, 1, 2, 2])) for x, _ in views()], pretrain=False) == []


def test_cifar_short_run_learns_and_writes_summary(cifar_root, tmp_path):
    from pretrain.config import ConfigError
    kw = dict(short=True, device="cpu", limit_per_class=10, batch=32, command="cifar_bench --short (test)")
    try:
        s = cifar_bench.run_bench(str(cifar_root), tmp_path / "b", **kw)
    except ConfigError as e:   # this build's pretrain.train does not take train.gpu_augment yet
        assert "gpu_augment" in str(e)
        s = cifar_bench.run_bench(str(cifar_root), tmp_path / "b2", overrides=["train.gpu_augment=false"], **kw)
    out = tmp_path / ("b" if (tmp_path / "b" / "summary.json").is_file() else "b2")
    assert s["epochs"] == 2 and len(s["knn_per_epoch"]) == 2
    assert all(r["knn_top1"] is not None for r in s["knn_per_epoch"])
    assert s["final_knn_top1"] > cifar_bench.CHANCE          # above chance (10 classes)
    assert s["linear_top1"] > 0 and s["wall_time_s"] > 0 and s["stop_gradient"] is True
    assert json.loads((out / "summary.json").read_text())["final_knn_top1"] == s["final_knn_top1"]
    md = (out / "summary.md").read_text()
    for field in ("device:", "command:", "final kNN top-1", "linear top-1", "wall time", "kNN top-1 per epoch"):
        assert field in md, field
    assert re.search(r"\|\s*epoch\s*\|\s*kNN top-1\s*\|", md) and re.search(r"\|\s*2\s*\|\s*[0-9.]+\s*\|", md)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", md)
    assert (out / "curves" / "pretrain.png").stat().st_size > 0 and (out / "curves" / "linear.png").is_file()
    assert (out / "pretrain" / "checkpoint.pth").is_file() and (out / "linear" / "results.json").is_file()
