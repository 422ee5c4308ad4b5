"""Comparison tables on known results.json inputs: placement, mean±std, missing cells, labels, formats."""
from __future__ import annotations

import csv
import io
import json

import pytest

from transfer.results import write_results
from transfer.tables import Tables, load_docs, main, mean_std, render

SRC = {"checkpoint": "/runs/a/checkpoint.pth", "sha256": "abcdef1234567890",
       "pretrain": {"method": "SimSiam", "arch": "resnet50", "epochs": 100, "batch_size": 512,
                    "dataset": "imagenet"}}


def _write(d, **kw):
    kw.setdefault("config", {})
    kw.setdefault("source", SRC)
    return write_results(d, **kw)


def test_mean_std_uses_sample_std():
    m, s, n = mean_std([56.0, 56.4, 56.8])
    assert m == pytest.approx(56.4) and s == pytest.approx(0.4) and n == 3
    assert mean_std([3.0]) == (3.0, None, 1)
    assert mean_std([])[2] == 0


def test_rows_land_in_the_right_columns(tmp_path):
    _write(tmp_path / "lin", task="linear", dataset="imagenet", metrics={"top1": 68.0, "top5": 88.0})
    _write(tmp_path / "lin2", task="linear", dataset="imagenet", metrics={"top1": 68.4, "top5": 88.2})
    _write(tmp_path / "cifar", task="linear", dataset="cifar10-jpg", metrics={"top1": 90.1, "top5": 99.0})
    det = tmp_path / "voc"
    trials = [{"AP50": 82.0, "AP": 56.0, "AP75": 62.0}, {"AP50": 82.4, "AP": 56.4, "AP75": 63.0}]
    for i, t in enumerate(trials):
        _write(det / f"trial_{i}", task="detection", dataset="voc0712", metrics=t)
    _write(det, task="detection", dataset="voc0712", metrics={"AP50": 82.2, "AP": 56.2, "AP75": 62.5},
           extra={"trials": [{"metrics": t} for t in trials]})
    _write(tmp_path / "bccd", task="detection", dataset="bccd", metrics={"AP50": 50.0, "AP": 25.0, "AP75": 20.0})

    docs = load_docs([tmp_path])
    assert len(docs) == 5  # trial files under the summary are hidden
    t = Tables(docs)
    h4, r4 = t.table4()
    ours = [r for r in r4 if r[0].startswith("SimSiam (yours")]
    assert len(ours) == 1
    assert ours[0][h4.index("100 ep")] == "68.2±0.3 (n=2)"
    assert ours[0][h4.index("200 ep")] == "-"  # missing, not invented
    # the CIFAR number never enters the ImageNet columns
    assert not any("90.1" in c for r in r4 for c in r)
    _, other = t.other_classification()
    assert other[0][2] == "cifar10-jpg" and other[0][4] == "90.1 (n=1)"

    h5, r5 = t.table5()
    row = [r for r in r5 if r[0].startswith("SimSiam (yours")][0]
    assert row[2] == "82.2±0.3 / 56.2±0.3 / 62.5±0.7 (n=2)"
    assert row[1] == "-" and row[3] == "-" and row[4] == "-"
    _, odet = t.other_detection()
    assert odet[0][1] == "bccd" and odet[0][2] == "50.0 / 25.0 / 20.0 (n=1)"
    # paper rows are present verbatim
    assert ["SimSiam", "256", "no", "no", "68.1", "70.0", "70.8", "71.3"] in r4
    assert any(r[0] == "SimSiam, optimal" and r[2] == "82.4 / 57.0 / 63.7" for r in r5)


def test_coco_box_and_mask(tmp_path):
    _write(tmp_path, task="detection", dataset="coco",
           metrics={"bbox": {"AP50": 57.0, "AP": 37.5, "AP75": 40.0}, "segm": {"AP50": 54.0, "AP": 33.0, "AP75": 35.0}})
    _, rows = Tables(load_docs([tmp_path])).table5()
    row = rows[-1]
    assert row[3] == "57.0 / 37.5 / 40.0 (n=1)" and row[4] == "54.0 / 33.0 / 35.0 (n=1)"


@pytest.mark.parametrize("fmt", ["terminal", "markdown", "latex", "csv"])
def test_formats(tmp_path, fmt):
    _write(tmp_path, task="linear", dataset="imagenet", metrics={"top1": 68.0})
    text = render(Tables(load_docs([tmp_path])), fmt)
    assert "68.0 (n=1)" in text and "71.3" in text
    if fmt == "markdown":
        assert "| method" in text
    if fmt == "latex":
        assert "\\toprule" in text
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert ["method", "batch", "neg. pairs", "momentum enc.", "100 ep", "200 ep", "400 ep", "800 ep"] in rows


def test_cli_errors_and_output(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"schema": "other"}))
    assert main([str(bad)]) == 2
    assert "schema" in capsys.readouterr().err
    good = tmp_path / "good"
    _write(good, task="linear", dataset="imagenet", metrics={"top1": 70.0})
    out = tmp_path / "t.md"
    assert main([str(good), "--format", "markdown", "--output", str(out)]) == 0
    assert "70.0 (n=1)" in out.read_text()
