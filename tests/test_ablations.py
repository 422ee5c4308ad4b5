"""transfer.reporting.ablations: the paper's experiments laid out from real small sweep folders (the stages run
in-process on the embedded data, with the command lines `simsiam submit ablation` plans), the paper's numbers
beside yours, the protocol check of a shrunken sweep, every format of `simsiam table`, and Fig. 2."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from pretrain import config as config_mod
from pretrain.main import resolve_config
from pretrain.protocol import recipe_of
from slurm import ablation as A
from transfer.reporting import ablations as R
from transfer.reporting import plots, tables

TINY_PRE = ("--config test_tiny train.max_steps_per_epoch=1 data.limit_per_class=2 monitor.tensorboard=false "
            "monitor.knn_every=1")
TINY_KNN = "data.image_size=32 data.workers=0 data.limit_per_class=4 data.val_limit_per_class=2"
TINY_LIN = ("train.epochs=1 train.max_steps_per_epoch=2 train.batch_size=8 data.image_size=32 data.workers=0 "
            "data.limit_per_class=4 data.val_limit_per_class=2 train.tensorboard=false")
STAGES = {"pretrain": "pretrain.main", "knn": "transfer.evaluation.knn", "linear": "transfer.evaluation.linear"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """fig2 at 2 epochs of 2 steps: both variants run for real (trial 0); trial 1 of the stop-gradient variant is
    trial 0's folder with its linear top-1 set to a known value (two trials to average)."""
    import importlib
    out = tmp_path_factory.mktemp("sweep") / "fig2"
    exp = A.load_experiment("fig2")
    a = A.build_parser().parse_args(["fig2", "--output", str(out), "--data", "embedded", "--epochs", "2",
                                     "--trials", "1", "--pretrain-args", TINY_PRE, "--knn-args", TINY_KNN,
                                     "--linear-args", TINY_LIN])
    runs = A.plan(exp, a, out)
    for run in runs:
        for stage, module in STAGES.items():
            assert importlib.import_module(module).main(run.argvs[stage]) in (0, None), (run.key, stage)
    doc = A.manifest(exp, runs, a, out)
    shutil.copytree(out / "with_stop_gradient" / "trial_0", out / "with_stop_gradient" / "trial_1")
    lin = out / "with_stop_gradient" / "trial_1" / "linear" / "results.json"
    res = json.loads(lin.read_text())
    res["metrics"]["top1"] = 40.0
    lin.write_text(json.dumps(res))
    doc["variants"][0]["trials"].append("with_stop_gradient/trial_1")
    (out / "ablation.json").write_text(json.dumps(doc))
    return out


def full_scale(cfg) -> dict:
    """source.pretrain of a finished ImageNet pretraining of config `cfg` (what pretrain.train records)."""
    return {"dataset": "imagenet", "epochs": cfg.train.epochs, "scheduled_epochs": cfg.train.epochs,
            "completed": True, "batch_size": cfg.train.batch_size, "image_size": cfg.data.image_size,
            "limit_per_class": 0, "max_steps_per_epoch": 0, "config_changes": [],
            "recipe": recipe_of(config_mod.to_dict(cfg))}


def top1(folder: Path, stage: str = "linear") -> float:
    return json.loads((folder / stage / "results.json").read_text())["metrics"]["top1"]


def test_table_puts_the_papers_numbers_beside_yours(sweep, capsys):
    assert tables.main([str(sweep), "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    mine = [top1(sweep / "with_stop_gradient" / "trial_0"), 40.0]
    mean = f"{statistics.fmean(mine):.1f}±{statistics.stdev(mine):.1f} (n=2)"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| w")}
    assert rows["w/ stop-grad"][:2] == ["67.7±0.1", mean]
    knn = top1(sweep / "with_stop_gradient" / "trial_0", "knn")
    assert rows["w/ stop-grad"][2] == f"{knn:.1f}±0.0 (n=2)"
    off = sweep / "without_stop_gradient" / "trial_0"
    assert rows["w/o stop-grad"][:3] == ["0.1 (collapse)", f"{top1(off):.1f} (n=1)", f"{top1(off, 'knn'):.1f} (n=1)"]
    # the protocol check of the shrunken sweep: what differs from the paper's measurement of the variant
    assert rows["w/ stop-grad"][3].startswith("2 trial(s) != 5; pretraining dataset embedded != imagenet; "
                                              "pretraining epochs 2 != 100; pretraining batch 16 != 512; "
                                              "pretraining crop 32 != 224; pretraining on 2 images per class ")
    assert rows["w/o stop-grad"][3].startswith("pretraining dataset embedded != imagenet; pretraining epochs 2 != 100")
    assert "**Fig. 2: stop-gradient: ImageNet linear top-1 (%), 100-epoch pretraining" in text
    assert "Table 4" not in text and "Table 5" not in text   # the sweep's runs are not rows of the paper's columns


def test_protocol_check_names_every_difference(sweep):
    doc = R.find_sweeps([sweep])[0]
    v = doc["variants"][1]
    diffs = R.variant_differences(doc, v, R.trial_results(doc, v))
    assert "model.stop_gradient" not in " ".join(diffs)      # the variant's own switch is its recipe
    for d in ("pretraining model.arch resnet18 != resnet50", "pretraining model.dim 256 != 2048",
              "pretraining batch 16 != 512", "pretraining crop 32 != 224", "pretraining epochs cut to 1 steps",
              "linear epochs 1 != 90", "linear batch 8 != 4096"):
        assert d in diffs, (d, diffs)
    assert "1 trial(s) != 5" in R.variant_differences(doc, doc["variants"][0],
                                                      R.trial_results(doc, doc["variants"][0])[:1])
    # the paper's recipe of the variant at full scale, on ImageNet: no difference left in the pretraining
    pre = json.loads((sweep / v["trials"][0] / "pretrain" / "results.json").read_text())
    full = resolve_config(["imagenet_r50_100ep"], v["settings"] + ["data.root=/data/imagenet"])
    pre["source"]["pretrain"].update(full_scale(full))
    assert R.recipe_differences(R.paper_recipe(doc, v), pre) == []
    assert R.brief([]) == "none: the paper's measurement"


def test_variant_not_run_yet_and_columns_layout(sweep):
    doc = R.find_sweeps([sweep])[0]
    doc = {**doc, "layout": "columns", "axis": "stop-gradient",
           "variants": doc["variants"] + [{"name": "later", "label": "later", "paper": 68.1, "trials": ["later/trial_0"],
                                           "settings": []}]}
    (grid_title, headers, grid), (check_title, _, check) = R.sweep_sections(doc)
    assert headers == ["stop-gradient", "w/ stop-grad", "w/o stop-grad", "later"]
    assert [r[0] for r in grid] == list(R.HEADERS[:3])
    assert grid[0][1:] == ["67.7±0.1", "0.1 (collapse)", "68.1"] and grid[1][3] == "-" and grid[2][3] == "-"
    assert check[2] == ["later", "not run yet"] and check_title.endswith("protocol check")


@pytest.mark.parametrize("fmt, marker", [("terminal", "w/ stop-grad     67.7±0.1"), ("latex", r"\toprule"),
                                         ("csv", "w/ stop-grad,67.7±0.1,"), ("markdown", "| w/ stop-grad ")])
def test_every_format(sweep, tmp_path, capsys, fmt, marker):
    out = tmp_path / f"table.{fmt}"
    assert tables.main([str(sweep), "--format", fmt, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert marker in text and out.read_text().strip() == text.replace("\r\n", "\n").strip()
    assert ("Paper: Chen & He, CVPR 2021 (ImageNet, ResNet-50, 100-epoch pretraining" in text) is (fmt != "csv")


def test_other_runs_keep_tables_4_and_5(sweep, capsys):
    """A run outside the sweep is a row of the comparison tables; the sweep's runs are not."""
    other = sweep.parent / "other"
    shutil.copytree(sweep / "with_stop_gradient" / "trial_0" / "linear", other / "linear")
    assert tables.main([str(sweep), str(other), "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "Fig. 2: stop-gradient" in text and "Table 4: ImageNet linear evaluation" in text
    assert text.count("| linear ") == 1, text     # one linear row of "not comparable": the other run


def test_broken_manifest_exit_2(sweep, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(sweep / "without_stop_gradient", bad / "without_stop_gradient")
    (bad / "ablation.json").write_text('{"schema": "something else"}')
    assert tables.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ablation.json: schema is 'something else'" in err and len(err.strip().splitlines()) == 1


def test_fig2_plot_is_written(sweep, tmp_path, capsys):
    assert plots.main([str(sweep), "--output", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    fig = tmp_path / "fig2.png"
    assert str(fig) in written and fig.stat().st_size > 10_000
    from PIL import Image
    assert Image.open(fig).size == (1650, 440)
    rows = [json.loads(x) for x in (sweep / "without_stop_gradient" / "trial_0" / "pretrain" / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["epoch"] for r in rows if "loss" in r and "knn_top1" in r and "collapse_std" in r] == [1, 2]
