"""Plots from metrics.jsonl files: the PNGs exist, are real images, and skip broken lines."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from transfer.reporting.plots import main, plot_run, read_metrics


def _jsonl(path, rows, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_plots_for_every_stage(tmp_path):
    _jsonl(tmp_path / "pretrain" / "metrics.jsonl",
           [{"stage": "pretrain", "epoch": e, "loss": -0.5 - 0.1 * e, "collapse_std": 0.02, "knn_top1": 30 + e,
             "dim": 2048} for e in range(5)], tail='{"stage": "pretr')  # killed mid-write
    _jsonl(tmp_path / "linear" / "metrics.jsonl",
           [{"stage": "linear", "epoch": e, "top1": 40 + e, "top5": 80 + e, "loss": 1.0 / (e + 1)} for e in range(3)])
    for t in range(2):
        _jsonl(tmp_path / "det" / f"trial_{t}" / "metrics.jsonl",
               [{"stage": "detection", "iter": i, "total_loss": 3.0 - i * 0.1, "loss_cls": 1.0} for i in range(10)]
               + [{"stage": "detection", "iter": 10, "AP50": 50.0 + t, "AP": 25.0, "AP75": 20.0}])
    assert len(read_metrics(tmp_path / "pretrain" / "metrics.jsonl")) == 5
    paths = plot_run(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == ["det/detection.png", "linear/linear.png", "pretrain/pretrain.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 400


def test_cli_reports_missing(tmp_path, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_linear_grid_plot_draws_accuracy_against_lr(tmp_path, capsys):
    """A grid run's metrics.jsonl (every head's held-out and validation top-1 per evaluated epoch) gives
    linear_grid.png next to linear.png; a diverged head (None) is left out; a single-head run draws none."""
    lrs = [0.01, 0.1, 1.0, 10.0]
    grid = {"base_lr": lrs * 2, "weight_decay": [0.0] * 4 + [1e-4] * 4, "holdout_top1": [10, 20, 30, None] * 2,
            "top1": [11, 21, 31, None] * 2, "top5": [50, 60, 70, None] * 2}
    _jsonl(tmp_path / "grid" / "metrics.jsonl",
           [{"stage": "linear", "epoch": e, "top1": 31, "top5": 70, "loss": 1.0, "picked": 2, "grid": grid}
            for e in (1, 2)])
    _jsonl(tmp_path / "single" / "metrics.jsonl", [{"stage": "linear", "epoch": 1, "top1": 40, "loss": 1.0}])
    assert main([str(tmp_path)]) == 0
    names = sorted(p.relative_to(tmp_path).as_posix() for p in map(Path, capsys.readouterr().out.split()))
    assert names == ["grid/linear.png", "grid/linear_grid.png", "single/linear.png"]
    with Image.open(tmp_path / "grid" / "linear_grid.png") as im:
        assert im.format == "PNG" and im.size[0] >= 700
