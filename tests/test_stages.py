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


def test_the_chain_wires_each_stage_from_its_parents(tmp_path):
    chain = stages.Chain(tmp_path)
    order = stages.CHAIN_STAGES
    assert order == ("pretrain", "convert", "knn", "linear", "detect", "table")
    for link in stages.LINKS:  # every stage comes after the stages it reads
        assert all(order.index(p) < order.index(link.stage) for p in link.after), link
    data = {"knn": ["--data", "embedded"]}  # the pipeline gives kNN the pretraining dataset (transfer.preflight)
    parsed = {s: stages.parse(s, chain.argv(s) + data.get(s, [])) for s in order if s != "detect"}  # detectron2
    assert parsed["pretrain"].output == str(tmp_path / "pretrain")
    assert parsed["convert"].src == parsed["knn"].weights == parsed["linear"].weights == \
        str(tmp_path / "pretrain" / "checkpoint.pth")
    assert (parsed["convert"].to, parsed["convert"].output) == \
        ("detectron2", str(tmp_path / "convert" / "backbone_detectron2.pkl"))
    assert chain.argv("detect", trials=3, seed=7) == ["--weights", parsed["convert"].output, "--output",
                                                      str(tmp_path / "detection"), "--trials", "3", "--seed", "7"]
    assert parsed["table"].runs == [str(tmp_path / f) for f in ("pretrain", "knn", "linear", "detection/results.json")]
    assert (parsed["table"].format, parsed["table"].output) == ("markdown", str(tmp_path / "table.md"))
    assert chain.argv("table", rows=("knn",))[:2] == [str(tmp_path / "knn"), "--format"]
    baseline = stages.parse("knn", chain.argv("knn", baseline=True) + ["--data", "embedded"])
    assert (baseline.weights, baseline.output) == ("random", str(tmp_path / "knn_random"))
    assert chain.argv("convert", to="torchvision")[-1] == str(tmp_path / "convert" / "backbone_torchvision.pth")


def test_the_cluster_guide_names_the_chains_files():
    """slurm/README.md's list of a pipeline's folders is the chain's."""
    from pathlib import Path
    guide = " ".join((Path(__file__).resolve().parents[1] / "slurm" / "README.md").read_text().split())
    chain = stages.Chain(Path("RUN"))
    for path in (chain.folder("pretrain"), chain.converted(), chain.folder("knn"), chain.folder("linear"),
                 chain.folder("detect") / "results.json", chain.table):
        assert f"`{path.as_posix()}`" in guide, path
