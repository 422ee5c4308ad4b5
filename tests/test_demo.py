"""The main job end to end (quick sizes): every stage runs on the embedded data, each evaluation also on a
random-init backbone with the same data and protocol, and the tables hold the measured rows of the checkpoint
and of that baseline side by side, beside the paper's, never inside the paper's columns. The ResNet-50 path
(`--arch resnet50`, R50-C4 detection) and the default ResNet-18 path (R18-C4 detection)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from slurm import submit
from transfer import stages
from transfer.tooling import demo
from transfer.tooling.demo import run_demo

REPO = Path(__file__).resolve().parents[1]

EVALUATIONS = ("knn", "linear", "detection")


def without_init(config: dict) -> dict:
    """A detection run's resolved config without SIMSIAM.ZERO_INIT_RESIDUAL, the one key its random-init twin sets."""
    return {**config, "SIMSIAM": {k: v for k, v in config["SIMSIAM"].items() if k != "ZERO_INIT_RESIDUAL"}}


def test_demo_runs_end_to_end(tmp_path):
    out = run_demo(tmp_path / "demo", quick=True, cache_dir=str(tmp_path / "cache"), arch="resnet50")
    for stage in ("pretrain", *EVALUATIONS, *(f"{e}_random" for e in EVALUATIONS)):
        assert (out / stage / "results.json").is_file(), stage
    assert (out / "convert" / "backbone_detectron2.pkl").is_file()
    for png in ("pretrain/pretrain.png", "linear/linear.png", "detection/trial_0/detection.png",
                "linear_random/linear.png", "detection_random/trial_0/detection.png"):
        assert (out / png).stat().st_size > 10_000, png

    read = lambda stage: json.loads((out / stage / "results.json").read_text())  # noqa: E731
    knn, linear, det = (read(e) for e in EVALUATIONS)
    # one checkpoint: the detection row (through the converted .pkl) joins the classification rows
    assert linear["source"]["sha256"] == knn["source"]["sha256"] == det["source"]["sha256"]
    # the random-init baseline: same data and protocol, no weights
    rand = {e: read(f"{e}_random") for e in EVALUATIONS}
    for doc in rand.values():
        assert doc["source"]["checkpoint"] == "random" and doc["source"]["sha256"] is None
        assert doc["source"]["pretrain"]["method"] == "random init" and doc["source"]["pretrain"]["arch"] == "resnet50"
    assert rand["knn"]["config"]["data"] == knn["config"]["data"]
    assert rand["linear"]["config"]["model"]["arch"] == "resnet50"
    assert {k: v for k, v in rand["linear"]["config"].items() if k not in ("weights", "model")} == \
        {k: v for k, v in linear["config"].items() if k not in ("weights", "model")}
    assert without_init(rand["detection"]["config"]) == without_init(det["config"])
    # the network the pretraining started from: the official init (every residual block zero-initialised), the
    # detector's backbone and ROI head included
    started = json.loads((out / "pretrain" / "config.json").read_text())["model"]["zero_init_residual"]
    assert started is True
    for e in EVALUATIONS:
        assert rand[e]["source"]["pretrain"]["zero_init_residual"] is started, e
    assert rand["detection"]["config"]["SIMSIAM"]["ZERO_INIT_RESIDUAL"] is True
    assert "residual blocks zeroed" in (out / "detection_random" / "trial_0" / "log.txt").read_text()
    assert not list(out.glob("*_random_bn1")), sorted(p.name for p in out.iterdir())

    table = (out / "table.md").read_text()
    lines = table.splitlines()
    ours = [line for line in lines if "SimSiam (yours" in line]
    assert len(ours) == 3, table  # kNN, linear (other-datasets classification table) and detection
    assert sum("random init" in line for line in lines) == 3, table  # kNN, linear, detection

    def row(*parts: str) -> int:  # the one table line holding every part
        found = [i for i, line in enumerate(lines) if all(p in line for p in parts)]
        assert len(found) == 1, (parts, table)
        return found[0]

    def box(doc: dict) -> str:
        m = doc["metrics"]
        return f"{m['AP50']:.1f} / {m['AP']:.1f} / {m['AP75']:.1f} (n=1)"

    baseline = "random init (yours: resnet50)"
    pairs = [(row("SimSiam (yours", f"| {e} ", f"{pre['metrics']['top1']:.1f} (n=1)"),
              row(baseline, f"| {e} ", f"{rand[e]['metrics']['top1']:.1f} (n=1)"))
             for e, pre in (("knn", knn), ("linear", linear))]
    pairs.append((row("SimSiam (yours", box(det)), row("random init", box(rand["detection"]))))
    for i, j in pairs:  # each baseline row sits in the same table as its pretrained row
        assert all(lines[k].startswith("|") for k in range(min(i, j), max(i, j) + 1)), table
    # the demo data is not ImageNet/VOC: Table 4 / Table 5 keep only the published rows
    t4 = table.split("**Table 4")[1].split("**")[1]
    assert "yours" not in t4
    assert "embedded" in table

    # a second run finds every stage done and only redraws the report
    again = run_demo(out, quick=True, cache_dir=str(tmp_path / "cache"), arch="resnet50")
    assert json.loads((again / "linear" / "results.json").read_text())["created"] == linear["created"]
    assert json.loads((again / "linear_random" / "results.json").read_text())["created"] == rand["linear"]["created"]


def assert_the_pipelines_chain(out: Path, printed: str) -> None:
    """The demo's stage calls (its `$ simsiam STAGE ...` lines) hold the arguments that `simsiam submit pipeline
    --output OUT` gives the same stages: one chain (transfer.stages.Chain), the same folders and file names."""
    calls: dict[str, list] = {}
    for line in re.findall(r"^\$ simsiam (.*)$", printed, re.M):
        stage, *argv = shlex.split(line)
        calls.setdefault(stage, []).append(stages.parse(stage, argv))
    a = submit.build_parser("pipeline").parse_args(["--output", str(out), "--pretrain-args", "--config demo",
                                                    "--detect-args", "--config demo_r18"])
    a.stages = list(stages.CHAIN_STAGES)
    pipeline = {s: stages.parse(s, argv) for s, argv in submit.plan_pipeline(out, a).items()}
    for stage in ("pretrain", "convert", "knn", "linear", "detect"):
        ours = next(ns for ns in calls[stage] if getattr(ns, "to", "detectron2") == "detectron2" and
                    getattr(ns, "weights", None) != stages.BASELINE)
        fixed = stages.Chain(out).fixed(stage)
        assert {d: str(getattr(ours, d)) for d in fixed} == {d: str(getattr(pipeline[stage], d)) for d in fixed} \
            == fixed, stage
    assert pipeline["table"].output == str(out / "table.md") and (out / "table.md").is_file()


def test_default_demo_is_resnet18_with_r18_c4_detection(tmp_path, capsys):
    out = run_demo(tmp_path / "demo", quick=True, cache_dir=str(tmp_path / "cache"))
    printed = capsys.readouterr().out
    read = lambda stage: json.loads((out / stage / "results.json").read_text())  # noqa: E731
    for e in EVALUATIONS:
        pre, rand = read(e), read(f"{e}_random")
        assert pre["source"]["pretrain"]["arch"] == rand["source"]["pretrain"]["arch"] == "resnet18", e
        assert rand["source"]["checkpoint"] == "random"
    assert read("knn")["config"]["data"]["image_size"] == 32 and read("linear")["config"]["data"]["image_size"] == 32
    det = read("detection")
    assert det["config"]["MODEL"]["RESNETS"]["DEPTH"] == 18 and det["config"]["MODEL"]["ROI_HEADS"]["NAME"] == \
        "Res5ROIHeadsExtraNorm"
    assert without_init(read("detection_random")["config"]) == without_init(det["config"])
    assert det["source"]["sha256"] == read("knn")["source"]["sha256"]  # the same checkpoint, through the .pkl
    assert (out / "convert" / "backbone_torchvision.pth").is_file()
    assert (out / "convert" / "backbone_detectron2.pkl").is_file()
    assert_the_pipelines_chain(out, printed)
    table = (out / "table.md").read_text()
    assert sum("SimSiam (yours" in line for line in table.splitlines()) == 3, table
    assert sum("random init" in line for line in table.splitlines()) == 3, table

    # beside its table, each measurement of this run with the full demo's range (not expected inside it: --quick)
    assert "not meant to fall inside these ranges" in printed and demo.RANGES_MEASURED in printed
    for label, folder, key, rand, pre in demo.RANGES:
        got = [read(f)["metrics"][key] for f in (f"{folder}_random", folder)]
        line = re.search(rf"^  {re.escape(label)} +random init +(\S+) \(expected (\S+)\), SimSiam +(\S+) "
                         rf"\(expected (\S+)\)$", printed, re.M)
        assert line, (label, printed[-3000:])
        assert line.groups() == (f"{got[0]:.1f}", demo.span(*rand), f"{got[1]:.1f}", demo.span(*pre)), line.group(0)


def test_the_demo_page_shows_the_ranges_the_demo_prints():
    """docs/demo.md holds the ranges table of transfer.tooling.demo.RANGES line for line, and names the runs."""
    page = (REPO / "docs" / "demo.md").read_text()
    for line in demo.ranges_markdown().splitlines():
        assert line in page.splitlines(), line
    assert " ".join(demo.RANGES_MEASURED.split()) in " ".join(page.split())
    for label, _, _, rand, pre in demo.RANGES:
        assert rand[0] <= rand[1] and pre[0] <= pre[1], label
