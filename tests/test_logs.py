"""pretrain.logs: metrics.jsonl records (written, trimmed on resume, read back after a kill), TensorBoard
scalars, the rank-0-only rule and the text log (results.json: tests/test_results.py)."""
from __future__ import annotations

import json

import pytest
import torch

from pretrain.logs import MetricsWriter, read_metrics


def test_records_are_json_lines_with_plain_numbers(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"stage": "pretrain", "epoch": 1, "loss": torch.tensor(-0.5), "lr": 0.1})
    w.write({"stage": "pretrain", "epoch": 2, "loss": float("nan"), "knn_top1": 31.5})
    w.write({"stage": "linear", "iter": 10, "top1": 12.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == read_metrics(tmp_path) == [
        {"stage": "pretrain", "epoch": 1, "loss": -0.5, "lr": 0.1},
        {"stage": "pretrain", "epoch": 2, "loss": "nan", "knn_top1": 31.5},  # strict JSON: no bare NaN
        {"stage": "linear", "iter": 10, "top1": 12.0}]
    with pytest.raises(ValueError, match="needs 'stage' and 'epoch' or 'iter'"):
        w.write({"epoch": 3, "loss": 1.0})
    with pytest.raises(ValueError, match="needs 'stage'"):
        w.write({"stage": "pretrain", "loss": 1.0})


def test_other_ranks_write_nothing(tmp_path):
    w = MetricsWriter(tmp_path, enabled=False)
    w.write({"stage": "pretrain", "epoch": 1, "loss": 0.0})
    w.scalar("x", 1.0, 1)
    assert w.drop_after("pretrain", 0) == 0 and w.tb is None
    assert list(tmp_path.iterdir()) == []


def test_drop_after_trims_epochs_a_crash_lost(tmp_path):
    """On resume from epoch 2, the lines of epochs > 2 (written before the crash lost their checkpoint) and a
    half-written last line go; other stages and earlier epochs stay, in order."""
    path = tmp_path / "metrics.jsonl"
    recs = [{"stage": "pretrain", "epoch": e, "loss": -e / 10} for e in (1, 2, 3, 4)]
    recs.insert(2, {"stage": "linear", "epoch": 7, "top1": 50.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"stage": "pretrain", "epo')
    w = MetricsWriter(tmp_path, tensorboard=False)   # opening it drops the half-written line
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 5
    assert w.drop_after("pretrain", 2) == 2
    assert read_metrics(path) == [recs[0], recs[1], recs[2]]
    assert path.read_text().endswith("\n") and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert w.drop_after("pretrain", 2) == 0


def test_a_record_after_a_cut_off_line_starts_its_own_line(tmp_path):
    """A kill in the middle of a write leaves a partial last line; the next writer (any stage, on resume)
    removes it before appending, so the file stays one JSON record per line."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "detection", "iter": 20, "total_loss": 1.5}\n{"stage": "detection", "it')
    MetricsWriter(tmp_path, tensorboard=False).write({"stage": "detection", "iter": 40, "total_loss": 1.2})
    assert read_metrics(path) == [{"stage": "detection", "iter": 20, "total_loss": 1.5},
                                  {"stage": "detection", "iter": 40, "total_loss": 1.2}]
    assert MetricsWriter(tmp_path, enabled=False).drop_cut_off_line() is False


def test_read_metrics_skips_only_an_unfinished_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "pretrain", "epoch": 1}\n\n{"stage": "pretrain", "epoch": 2}\n{"stage": "pre')
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"stage": "pretrain", "epoch": 1}\nnot json\n{"stage": "pretrain", "epoch": 2}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON record"):
        read_metrics(path)
    with pytest.warns(UserWarning, match=rf"{path}:2: skipping"):
        assert [r["epoch"] for r in read_metrics(path, skip_bad=True)] == [1, 2]
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nowhere")


def test_tensorboard_gets_the_numeric_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    w = MetricsWriter(tmp_path)
    w.write({"stage": "pretrain", "epoch": 1, "loss": -0.25, "note": "text", "complete": True})
    w.write({"stage": "pretrain", "epoch": 2, "loss": -0.5}, tb_step=100)
    w.scalar("pretrain/lr_step", 0.05, 7)
    w.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["pretrain/loss", "pretrain/lr_step"]  # no text, no booleans
    assert [(e.step, e.value) for e in acc.Scalars("pretrain/loss")] == [(1, -0.25), (100, -0.5)]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("pretrain/lr_step")] == [(7, 0.05)]
