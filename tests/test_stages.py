"""transfer.stages: the one stage registry behind `simsiam` and `simsiam submit`, parsing through each stage's
own parser, and writing a parsed command line back out."""
from __future__ import annotations

import importlib

import pytest

from transfer import cli, stages


def test_every_stage_once_with_its_parser():
    names = [s.name for s in stages.STAGES]
    assert len(names) == len(set(names))
    assert set(names) == {"pretrain", "convert", "knn", "linear", "detect", "table", "plot", "demo", "make-data"}
    for s in stages.STAGES:
        if s.name == "detect":
            continue  # imports detectron2 (seconds); its parser is covered below
        module = importlib.import_module(s.module)
        assert callable(module.main)
        p = s.parser()
        dests = {a.dest for a in p._actions}
        for declared in (s.output, s.weights):
            assert declared is None or declared in dests, (s.name, declared)
    assert stages.SUBMITTABLE == ("pretrain", "convert", "knn", "linear", "detect", "table")


def test_simsiam_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for s in stages.STAGES:
        assert f"  {s.name} " in text and f"python -m {s.module}" in text
    assert "python -m slurm.submit" in text
    assert list(cli.commands())[-1] == "submit"


@pytest.mark.parametrize("argv", [
    ["--config", "demo", "--output=runs/x", "train.epochs=1"],
    ["--config", "demo", "--output", "runs/x", "train.epochs=1"],
    ["-o", "runs/x", "data.root=/d/--output=elsewhere", "train.epochs=1"],
    ["--output", "runs/x", "data.root=/d/--output", "--config", "demo"],
])
def test_output_found_by_the_stage_parser(argv):
    ns = stages.parse("pretrain", argv)
    run, done = stages.get("pretrain").paths(ns)
    assert ns.output == "runs/x" and run.name == "x" and done == run / "results.json"
    assert ns.overrides == [a for a in argv if "=" in a and not a.startswith("-")]


def test_file_output_and_parse_errors():
    ns = stages.parse("convert", ["c.pth", "--to", "detectron2", "--output", "out/b.pkl"])
    run, done = stages.get("convert").paths(ns)
    assert done.name == "b.pkl" and run.name == "out"
    with pytest.raises(stages.StageArgError, match=r"^knn: the following arguments are required: --data"):
        stages.parse("knn", ["--weights", "w.pth", "--output", "o"])
    with pytest.raises(stages.StageArgError, match=r"^pretrain: unrecognized arguments: b=2"):
        stages.parse("pretrain", ["--output", "o", "a=1", "--config", "demo", "b=2"])
    with pytest.raises(stages.StageArgError, match="^bogus: unknown stage"):
        stages.get("bogus")


def test_format_argv_round_trip():
    for name, argv in [
        ("pretrain", ["-c", "demo", "--config", "x.yaml", "--allow-config-change", "-o", "r", "a=1", "b=-2"]),
        ("knn", ["--weights", "w", "--data", "/d", "--output", "o", "--cache-dir", "/c", "ks=[20]"]),
        ("linear", ["a=1", "--weights", "random", "--output", "o"]),
        ("convert", ["--to", "torchvision", "c.pth", "--output", "t.pth"]),
        ("table", ["runs/a", "runs/b", "--method", "x=SimSiam", "--format", "csv"]),
    ]:
        p = stages.parser(name)
        ns = stages.parse(name, argv)
        again = stages.format_argv(p, ns)
        assert stages.parse(name, again) == ns, (name, again)
