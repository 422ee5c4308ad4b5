"""slurm.ablation: the presets of the paper's experiments, their expansion into runs, shrinking, the checks before
anything is queued (exit 2), the job arrays per resource shape, and one tiny sweep end to end with the local
executor (real submitit subprocesses) into its table."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain import config as config_mod
from pretrain.config import ConfigError
from pretrain.main import resolve_config
from slurm import ablation as A
from slurm import submit as S

PRESETS = ("fig2", "table1", "table2", "table3", "similarity", "symmetrisation", "kstep", "moving-average",
           "dimension", "fig3")
FIG3 = ["simclr", "simclr_predictor", "simclr_predictor_stop_gradient", "byol", "byol_no_momentum", "swav",
        "swav_predictor", "swav_no_stop_gradient"]


def resolved(exp: A.Experiment, name: str):
    v = next(v for v in exp.variants if v.name == name)
    return resolve_config(exp.configs(v), exp.overrides(v))


def test_every_preset_is_there():
    assert set(PRESETS) <= set(A.presets())


@pytest.mark.parametrize("name, variants, papers", [
    ("fig2", ["with_stop_gradient", "without_stop_gradient"], [67.7, 0.1]),
    ("table1", ["baseline", "no_predictor", "fixed_predictor", "constant_predictor_lr"], [67.7, 0.1, 1.5, 68.1]),
    ("table2", [f"batch_{b}" for b in (64, 128, 256, 512, 1024, 2048, 4096)], [66.1, 67.3, 68.1, 68.1, 68.0, 67.9, 64.0]),
    ("table3", ["none", "hidden", "default_affine", "default", "all"], [34.6, 67.4, 68.1, 68.2, "unstable"]),
    ("similarity", ["cosine", "cross_entropy"], [68.1, 63.2]),
    ("symmetrisation", ["symmetric", "asymmetric", "asymmetric_x2"], [68.1, 64.8, 67.3]),
    ("kstep", ["k1", "k10", "k100", "k_epoch"], [68.1, 68.7, 68.9, 67.0]),
    ("moving-average", ["moving_average", "online"], [55.0, 0.1]),
    ("dimension", ["d256", "d512", "d1024", "d2048"], [65.3, 67.2, 67.5, 68.1]),
    ("fig3", FIG3, [66.5, 66.4, 66.0, 66.5, 0.3, 66.5, 65.2, "diverges"]),
])
def test_preset_variants_and_paper_numbers(name, variants, papers):
    exp = A.load_experiment(name)
    assert [v.name for v in exp.variants] == variants
    assert [v.paper for v in exp.variants] == papers
    for v in exp.variants:                        # the paper's recipe: ResNet-50, 100 epochs, ImageNet-sized crops
        cfg = resolved(exp, v.name)
        assert (cfg.model.arch, cfg.train.epochs, cfg.data.image_size) == ("resnet50", 100, 224)
        if name == "fig3":                        # the other methods' own recipes (their presets)
            continue
        # fig2 and table1 keep the paper's decayed predictor lr for their baseline, later experiments the constant
        assert cfg.optim.fix_pred_lr is (name not in ("fig2", "table1") or v.name == "constant_predictor_lr")


def test_variant_settings_resolve_to_the_papers_switches():
    t1, t2, t3 = A.load_experiment("table1"), A.load_experiment("table2"), A.load_experiment("table3")
    assert resolved(t1, "no_predictor").model.predictor == "none"
    assert resolved(t1, "fixed_predictor").model.predictor == "fixed"
    assert not resolved(A.load_experiment("fig2"), "without_stop_gradient").model.stop_gradient
    for v in t2.variants:                          # 10-epoch warm-up for batch >= 1024, lr by the linear rule
        cfg = resolved(t2, v.name)
        assert cfg.optim.warmup_epochs == (10 if cfg.train.batch_size >= 1024 else 0)
        assert cfg.optim.base_lr == 0.05
    assert [v.nodes_factor for v in t2.variants] == [1] * 6 + [2]
    assert (resolved(t3, "none").model.head_bn, resolved(t3, "none").optim.warmup_epochs) == ("none", 10)
    assert resolved(t3, "default_affine").model.proj_out_bn_affine is True
    assert resolved(t3, "default").model.proj_out_bn_affine is False
    k = A.load_experiment("kstep")
    assert [(resolved(k, v.name).model.target, resolved(k, v.name).model.target_every) for v in k.variants] == \
        [("kstep", "1"), ("kstep", "10"), ("kstep", "100"), ("kstep", "epoch")]
    ma = resolved(A.load_experiment("moving-average"), "moving_average").model
    assert (ma.predictor, ma.target, ma.target_momentum) == ("none", "moving_average", 0.8)
    d = A.load_experiment("dimension")
    assert [(resolved(d, v.name).model.dim, resolved(d, v.name).model.pred_dim) for v in d.variants] == \
        [(256, 64), (512, 128), (1024, 256), (2048, 512)]
    assert A.load_experiment("fig2").trials_of(A.load_experiment("fig2").variants[0]) == 5


def test_fig3_variants_are_their_methods_presets_and_one_switch():
    """Sec. 6.2: each variant is its method's preset (the Table 4 recipe) with the switches the paper names and
    nothing else changed; BYOL's figures without momentum are labelled as BYOL's own."""
    exp = A.load_experiment("fig3")
    want = {"simclr": ("simclr", {}), "simclr_predictor": ("simclr", {"model.predictor": "trained"}),
            "simclr_predictor_stop_gradient": ("simclr", {"model.predictor": "trained", "model.stop_gradient": True}),
            "byol": ("byol", {}),
            "byol_no_momentum": ("byol", {"model.target_momentum": 0.0, "model.target_momentum_schedule": "constant"}),
            "swav": ("swav", {}), "swav_predictor": ("swav", {"model.predictor": "trained"}),
            "swav_no_stop_gradient": ("swav", {"model.stop_gradient": False})}
    for v in exp.variants:
        preset, changed = want[v.name]
        assert exp.configs(v) == (preset,) and v.nodes_factor == 2
        cfg = resolved(exp, v.name)
        assert (cfg.method, cfg.train.batch_size) == ({"simclr": "simclr", "byol": "byol", "swav": "swav"}[preset], 4096)
        mine = config_mod.flatten(config_mod.to_dict(cfg))
        base = config_mod.flatten(config_mod.to_dict(resolve_config([preset], [])))
        assert {k: x for k, x in mine.items() if base[k] != x} == {k: x for k, x in changed.items() if base[k] != x}
        assert all(mine[k] == x for k, x in changed.items())
    plain = resolved(exp, "simclr").model        # both SimCLR branches get gradients; + stop-gradient changes that
    assert not plain.stop_gradient and resolved(exp, "simclr_predictor").model.stop_gradient is False
    notes = {v.name: v.note for v in exp.variants}
    assert notes["byol_no_momentum"].startswith("BYOL's own figures, not the SimSiam paper's: 0.3, and 66.9")
    assert notes["swav_no_stop_gradient"] == "NaN"


def test_fig3_dry_run_starts_each_variant_from_its_method(tmp_path, capsys, no_submit):
    assert S.main(["ablation", "fig3", "--output", str(tmp_path), "--data", "embedded", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^\[submit\] (\S+)/trial_0 pretrain: simsiam pretrain (.*)$",
                                                          out, re.M)}
    assert list(lines) == FIG3
    out_of = {name: str(tmp_path / name / "trial_0" / "pretrain") for name in FIG3}
    assert lines["byol_no_momentum"] == (f"--output {out_of['byol_no_momentum']} --config byol model.target_momentum=0 "
                                         "model.target_momentum_schedule=constant train.seed=0 data.root=embedded")
    assert lines["simclr"] == f"--output {out_of['simclr']} --config simclr train.seed=0 data.root=embedded"
    assert lines["swav_no_stop_gradient"].startswith(f"--output {out_of['swav_no_stop_gradient']} --config swav "
                                                     "model.stop_gradient=false ")
    assert "[submit] dry run: 8 run(s) of fig3 checked, nothing submitted" in out
    a = args("fig3", "--output", str(tmp_path), "--data", "embedded", "--variants", "byol,swav")
    exp = A.load_experiment("fig3")
    doc = A.manifest(exp, A.plan(exp, a, tmp_path), a, tmp_path)
    assert [(v["name"], v["pretrain_config"]) for v in doc["variants"]] == [("byol", ["byol"]), ("swav", ["swav"])]


def test_a_variant_preset_list_is_checked(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("variants:\n  - {name: a, pretrain_config: [simclr, 3]}\n")
    with pytest.raises(ConfigError) as e:
        A.load_experiment(str(path))
    assert "variants[0]: key 'pretrain_config': expected a preset name or a list of them" in str(e.value)
    path.write_text("variants:\n  - {name: a, pretrain_config: nosuchpreset}\n")
    with pytest.raises(ConfigError) as e:
        A.load_experiment(str(path))
    assert "variant 'a': config 'nosuchpreset' is neither a file nor a preset" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("title: x\nvariant: []\n", "unknown key 'variant'"),
    ("variants: []\n", "'variants' must be a non-empty list"),
    ("variants:\n  - {name: a, colour: red}\n", "variants[0]: unknown key 'colour'"),
    ("variants:\n  - {name: a, set: {model.dims: 3}}\n", "variant 'a': override 'model.dims=3': unknown key"),
    ("variants:\n  - {name: a}\n  - {name: a}\n", "variant names repeat"),
    ("layout: diagonal\nvariants:\n  - {name: a}\n", "'layout' must be one of rows, columns"),
])
def test_preset_keys_are_strict(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        A.load_experiment(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


def args(*argv: str):
    return A.build_parser().parse_args(list(argv))


def test_shrinking_the_sweep(tmp_path):
    exp = A.load_experiment("table1")
    a = args("table1", "--output", str(tmp_path), "--data", "embedded", "--epochs", "3", "--trials", "2",
             "--variants", "no_predictor,baseline", "--pretrain-args", "--config test_tiny train.batch_size=8",
             "--linear-args", "train.epochs=1")
    runs = A.plan(exp, a, tmp_path)
    assert [r.key for r in runs] == ["baseline/trial_0", "baseline/trial_1", "no_predictor/trial_0",
                                     "no_predictor/trial_1"]                 # the preset's order
    pre = runs[3].argvs["pretrain"]
    assert pre[:2] == ["--output", str(tmp_path / "no_predictor" / "trial_1" / "pretrain")]
    # options first, then the variant's settings, the trial's seed, the shrinking (its last values win)
    assert pre[2:] == ["--config", "imagenet_r50_100ep", "--config", "test_tiny", "optim.fix_pred_lr=false",
                       "model.predictor=none", "train.seed=1", "data.root=embedded", "train.epochs=3",
                       "train.batch_size=8"]
    cfg = resolve_config(["imagenet_r50_100ep", "test_tiny"], pre[6:])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.predictor, cfg.train.seed) == (3, 8, "none", 1)
    ckpt = str(tmp_path / "no_predictor" / "trial_1" / "pretrain" / "checkpoint.pth")
    assert runs[3].argvs["knn"][:2] == ["--weights", ckpt] and "embedded" in runs[3].argvs["knn"]
    assert runs[3].argvs["linear"][-2:] == ["train.epochs=1", "data.root=embedded"]
    doc = A.manifest(exp, runs, a, tmp_path)
    assert [v["name"] for v in doc["variants"]] == ["baseline", "no_predictor"]
    assert doc["left_out"] == ["fixed_predictor", "constant_predictor_lr"]
    assert doc["variants"][1]["trials"] == ["no_predictor/trial_0", "no_predictor/trial_1"]
    assert doc["variants"][1]["settings"] == ["optim.fix_pred_lr=false", "model.predictor=none"]
    assert doc["shrunk"]["epochs"] == 3 and doc["shrunk"]["pretrain_args"][-1] == "train.batch_size=8"


@pytest.mark.parametrize("extra, message", [
    ([], "variant with_stop_gradient/trial_0: pretrain: data.root: not set"),
    (["--data", "/no/such/folder"], "pretrain: data.root /no/such/folder: dataset folder"),
    (["--data", "embedded", "--variants", "with,without"], "--variants: unknown variant(s) with, without"),
    (["--data", "embedded", "--trials", "0"], "--trials must be >= 1"),
    (["--data", "embedded", "--knn-args", "--output elsewhere"], "knn: --output is set by the sweep"),
    (["--data", "embedded", "--linear-args", "data.root=/no/where"], "linear: data.root /no/where"),
    (["--data", "embedded", "--pretrain-args", "model.colour=red"], "unknown key 'model.colour'"),
])
def test_refused_before_queueing(tmp_path, capsys, no_submit, extra, message):
    rc = S.main(["ablation", "fig2", "--output", str(tmp_path / "sweep"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("simsiam submit: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "sweep").exists()


def test_unknown_experiment_exit_2(capsys, no_submit, tmp_path):
    assert S.main(["ablation", "table9", "--output", str(tmp_path)]) == 2
    assert "known presets: dimension, fig2" in capsys.readouterr().err


def test_dry_run_prints_every_command(tmp_path, capsys, no_submit):
    assert S.main(["ablation", "symmetrisation", "--output", str(tmp_path), "--data", "embedded", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for v in ("symmetric", "asymmetric", "asymmetric_x2"):
        for stage in ("pretrain", "knn", "linear"):
            assert f"[submit] {v}/trial_0 {stage}: simsiam {stage} " in out
    assert "loss.symmetrisation=asymmetric_x2 train.seed=0" in out
    assert "[submit] dry run: 3 run(s) of symmetrisation checked, nothing submitted" in out
    assert not tmp_path.joinpath("ablation.json").exists()


class FakeExecutor:
    """Records what would be queued: (nodes, tasks, name, dependency, [stage calls]) per job array."""

    def __init__(self, log, res, name, dependency):
        self.entry = {"nodes": res.nodes, "tasks": res.tasks, "name": name, "dependency": dependency, "calls": []}
        log.append(self.entry)

    def batch(self):
        import contextlib
        return contextlib.nullcontext()

    def submit(self, call):
        self.entry["calls"].append(call)
        n = sum(len(e["calls"]) for e in FakeExecutor.log)
        return SimpleNamespace(job_id=f"{100 + n}", paths=SimpleNamespace(folder=Path("logs")))


def test_one_array_per_resource_shape(tmp_path, monkeypatch):
    log: list = []
    FakeExecutor.log = log
    monkeypatch.setattr(S, "make_executor", lambda res, folder, name, dependency=None:
                        FakeExecutor(log, res, name, dependency))
    exp = A.load_experiment("table2")
    a = args("table2", "--output", str(tmp_path), "--data", "embedded", "--variants", "batch_256,batch_4096",
             "--nodes", "2", "--gpus-per-node", "8", "--executor", "slurm")
    res = S.resources_from_args(a)
    runs = A.plan(exp, a, tmp_path)
    subs = A.submit_sweep(exp, runs, res, tmp_path)
    got = [(e["name"], e["nodes"], e["tasks"], e["dependency"], [c.output for c in e["calls"]]) for e in log]
    b256, b4096 = (str(tmp_path / f"batch_{b}" / "trial_0") for b in (256, 4096))
    assert got == [
        ("simsiam-ablation-pretrain", 2, 8, None, [b256 + "/pretrain"]),
        ("simsiam-ablation-knn", 1, 1, "afterok:101", [b256 + "/knn"]),
        ("simsiam-ablation-linear", 2, 8, "afterok:101", [b256 + "/linear"]),
        ("simsiam-ablation-pretrain-x2", 4, 8, None, [b4096 + "/pretrain"]),
        ("simsiam-ablation-knn-x2", 1, 1, "afterok:104", [b4096 + "/knn"]),
        ("simsiam-ablation-linear-x2", 2, 8, "afterok:104", [b4096 + "/linear"]),
        ("simsiam-ablation-table", 1, 1, "afterok:101:102:103:104:105:106", [str(tmp_path)]),
    ]
    assert all(c.module == m for e, m in zip(log, ["pretrain.main", "transfer.evaluation.knn",
                                                    "transfer.evaluation.linear"] * 2) for c in e["calls"])
    status = A.job_manifest(subs, res)
    assert status["executor"] == "slurm" and status["stages"]["simsiam-ablation-pretrain-x2"]["jobs"] == ["104"]
    assert status["stages"]["simsiam-ablation-linear"]["outputs"] == [b256 + "/linear"]   # each job's run


def test_status_of_a_sweep_lists_each_run_and_stage(tmp_path, capsys):
    """`simsiam submit status SWEEP`: per variant and trial (ablation.json), each stage's job (pipeline.json
    names each job's run folder), or finished before it, or not submitted; its epochs from the stage's folder."""
    (tmp_path / "ablation.json").write_text(json.dumps({
        "experiment": "fig2", "title": "Fig. 2", "variants": [{"trials": ["a/trial_0"]},
                                                             {"trials": ["b/trial_0", "b/trial_1"]}]}))
    done = tmp_path / "a" / "trial_0" / "pretrain"
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"train": {"epochs": 3}}))
    (done / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "time": 1.0}) + "\n" for e in (1, 2, 3)))
    (done / "results.json").write_text("{}")
    def array(stage, ids, runs):
        return {"output": str(tmp_path), "skipped": False, "jobs": ids, "logs": [],
                "outputs": [str(tmp_path / r / stage) for r in runs]}
    (tmp_path / "pipeline.json").write_text(json.dumps({"executor": "local", "stages": {
        "simsiam-ablation-pretrain": array("pretrain", ["7", "8"], ["b/trial_1", "b/trial_0"]),
        "simsiam-ablation-knn": array("knn", ["9"], ["b/trial_0"]),
        "table": {"output": str(tmp_path), "skipped": False, "jobs": ["10"], "outputs": [], "logs": []}}}))
    assert S.main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ablation fig2 (Fig. 2): 3 run(s) in {tmp_path}",
        "a/trial_0", "  pretrain  - finished   epoch 3/3", "  knn       - not submitted",
        "  linear    - not submitted",
        "b/trial_0", "  pretrain  8 ?", "  knn       9 ?", "  linear    - not submitted",
        "b/trial_1", "  pretrain  7 ?", "  knn       - not submitted", "  linear    - not submitted",
        f"table     10 ?   -> {tmp_path / 'table.md'}"]


TINY = ["--epochs", "1", "--trials", "1", "--time", "10",
        "--pretrain-args", "--config test_tiny train.max_steps_per_epoch=2 data.limit_per_class=4 "
                           "monitor.tensorboard=false monitor.knn=false",
        "--knn-args", "data.image_size=32 data.workers=0 data.limit_per_class=4 data.val_limit_per_class=2",
        "--linear-args", "train.epochs=1 train.max_steps_per_epoch=2 train.batch_size=8 data.image_size=32 "
                         "data.workers=0 data.limit_per_class=4 data.val_limit_per_class=2 train.tensorboard=false"]


def test_tiny_sweep_end_to_end_local(tmp_path, capsys, monkeypatch):
    """fig2 shrunk to one epoch of two steps, its stop-gradient variant (a trial of the 5), through the local
    executor into its table; then the same command again: every stage is finished, only the table runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "fig2"
    argv = ["ablation", "fig2", "--executor", "local", "--output", str(out), "--data", "embedded",
            "--variants", "with_stop_gradient", *TINY]
    assert S.main(argv) == 0
    said = capsys.readouterr().out
    assert "[submit] simsiam-ablation-pretrain: 1 job(s)" in said and "[submit] all jobs completed" in said
    for stage in ("pretrain", "knn", "linear"):
        doc = json.loads((out / "with_stop_gradient" / "trial_0" / stage / "results.json").read_text())
        assert doc["task"] == stage and doc.get("complete", True) is not False
    table = (out / "table.md").read_text()
    assert "**Fig. 2: stop-gradient" in table and "| w/ stop-grad " in table and "| 67.7±0.1 " in table
    assert "variants left out of this sweep: without_stop_gradient" in table
    assert "1 trial(s) != 5; pretraining dataset embedded != imagenet; pretraining epochs 1 != 100" in table
    assert "Table 4" not in table                   # the sweep's runs are its experiment's, not Table 4's rows
    assert json.loads((out / "pipeline.json").read_text())["executor"] == "local"
    assert S.main(["status", str(out)]) == 0       # a sweep's status: each run's stages, from their folders
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"ablation fig2 (Fig. 2: stop-gradient): 1 run(s) in {out}", "with_stop_gradient/trial_0"]
    assert [x.split()[0::2] for x in lines[2:5]] == [["pretrain", "finished", "1/1"], ["knn", "finished"],
                                                      ["linear", "finished", "1/1"]], lines
    assert S.main(argv) == 0
    again = capsys.readouterr().out
    assert "[submit] simsiam-ablation-pretrain: 0 job(s) [], 1 already finished" in again
    assert "simsiam-ablation-linear: 0 job(s) [], 1 already finished" in again and (out / "table.md").is_file()
