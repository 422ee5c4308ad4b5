"""The main job end to end (quick sizes): every stage runs on the embedded data and the tables hold the
measured rows of one checkpoint, beside the paper's, never inside the paper's columns."""
from __future__ import annotations

import json

from transfer.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    out = run_demo(tmp_path / "demo", quick=True, cache_dir=str(tmp_path / "cache"))
    for stage in ("pretrain", "knn", "linear", "detection"):
        assert (out / stage / "results.json").is_file(), stage
    assert (out / "convert" / "resnet50_detectron2.pkl").is_file()
    for png in ("pretrain/pretrain.png", "linear/linear.png", "detection/trial_0/detection.png"):
        assert (out / png).stat().st_size > 10_000, png

    linear = json.loads((out / "linear" / "results.json").read_text())
    knn = json.loads((out / "knn" / "results.json").read_text())
    det = json.loads((out / "detection" / "results.json").read_text())
    # one checkpoint: the detection row (through the converted .pkl) joins the classification rows
    assert linear["source"]["sha256"] == knn["source"]["sha256"] == det["source"]["sha256"]

    table = (out / "table.md").read_text()
    ours = [line for line in table.splitlines() if "SimSiam (yours" in line]
    assert len(ours) == 3, table  # kNN, linear (other-datasets classification table) and detection
    assert f"{linear['metrics']['top1']:.1f} (n=1)" in table
    assert f"{knn['metrics']['top1']:.1f} (n=1)" in table
    box = det["metrics"]
    assert f"{box['AP50']:.1f} / {box['AP']:.1f} / {box['AP75']:.1f} (n=1)" in table
    # the demo data is not ImageNet/VOC: Table 4 / Table 5 keep only the published rows
    t4 = table.split("**Table 4")[1].split("**")[1]
    assert "yours" not in t4
    assert "embedded" in table

    # a second run finds every stage done and only redraws the report
    again = run_demo(out, quick=True, cache_dir=str(tmp_path / "cache"))
    assert json.loads((again / "linear" / "results.json").read_text())["created"] == linear["created"]
