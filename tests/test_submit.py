"""slurm.submit / slurm.jobs without a SLURM cluster: sbatch options from the CLI flags, stage argv building,
requeue bookkeeping, and the local executor (real submitit LocalExecutor subprocesses)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from pretrain.errors import InputError
from slurm import jobs as J
from slurm import submit as S
from transfer import stages


def resources(*flags: str) -> S.Resources:
    ap = argparse.ArgumentParser()
    S.add_resource_args(ap)
    return S.resources_from_args(ap.parse_args(list(flags)))


def sbatch_lines(res: S.Resources, tmp_path: Path, dependency=None, array=None) -> set[str]:
    params = S.slurm_parameters(res, "simsiam-test", dependency)
    params["mem"] = None
    if "mem_gb" in params:  # the executor converts mem_gb the same way (submitit's _convert_mem)
        params["mem"] = f"{int(params.pop('mem_gb'))}GB"
    text = _make_sbatch_string(command="python -m x", folder=tmp_path, map_count=array,
                               **{k: v for k, v in params.items() if v is not None})
    return {line for line in text.splitlines() if line.startswith("#SBATCH")}


def test_eight_gpu_node_options(tmp_path):
    res = resources("--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem-gb", "400",
                    "--partition", "gpu", "--time", "4320", "--account", "proj", "--qos", "high",
                    "--constraint", "h100", "--sbatch", "mail-type=END", "--sbatch", "exclusive",
                    "--max-requeues", "5", "--signal-delay", "300")
    assert res.tasks == 8 and res.cpus == 10 and res.max_requeues == 5
    lines = sbatch_lines(res, tmp_path)
    for expected in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10",
                     "--mem=400GB", "--partition=gpu", "--time=4320", "--account=proj", "--qos=high",
                     "--constraint=h100", "--mail-type=END", "--exclusive", "--requeue", "--signal=USR2@300",
                     "--job-name=simsiam-test"):
        assert f"#SBATCH {expected}" in lines, (expected, sorted(lines))
    assert not any("dependency" in line for line in lines)


def test_cpu_defaults_and_tasks(tmp_path):
    res = resources()
    assert (res.tasks, res.cpus, res.gpus_per_node, res.time_min, res.executor) == (1, 1, 0, 1440, "auto")
    lines = sbatch_lines(res, tmp_path)
    assert "#SBATCH --ntasks-per-node=1" in lines and not any("gpus" in line for line in lines)
    assert not any("--mem" in line for line in lines), "no --mem unless asked: the partition default applies"
    two = resources("--tasks-per-node", "2")
    assert two.tasks == 2 and "#SBATCH --ntasks-per-node=2" in sbatch_lines(two, tmp_path)
    gpu = resources("--gpus-per-node", "4")
    assert (gpu.tasks, gpu.cpus) == (4, 8)
    light = gpu.light()
    assert (light.nodes, light.tasks, light.gpus_per_node) == (1, 1, 1)


def test_dependency_and_array_options(tmp_path):
    res = resources("--array-parallelism", "2")

    class FakeJob:  # only .job_id is read
        def __init__(self, jid):
            self.job_id = jid

    dep = S.dependency_string([FakeJob("17_0"), FakeJob("17_1"), FakeJob("12")])
    assert dep == "afterok:12:17"
    lines = sbatch_lines(res, tmp_path, dependency=dep, array=5)
    assert "#SBATCH --dependency=afterok:12:17" in lines
    assert "#SBATCH --kill-on-invalid-dep=yes" in lines
    assert "#SBATCH --array=0-4%2" in lines
    assert S.dependency_string([]) is None


@pytest.mark.parametrize("flags, message", [
    (["--nodes", "0"], "--nodes must be > 0"),
    (["--gpus-per-node", "-1"], "--gpus-per-node must be >= 0"),
    (["--gpus-per-node", "8", "--tasks-per-node", "4"], "one task per GPU"),
    (["--sbatch", "mail-type="], "--sbatch expects KEY=VALUE"),
    (["--mem-gb", "0"], "--mem-gb must be > 0"),
    (["--time", "0"], "--time must be > 0"),
])
def test_bad_flags_name_the_flag(flags, message):
    with pytest.raises(S.SubmitError, match=message):
        resources(*flags)


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "unknown stage 'bogus'"),
    (["plot", "runs/x"], "unknown stage 'plot'"),
    (["pretrain", "--executor", "local", "--config", "test_tiny"],
     "pretrain: the following arguments are required: --output"),
    (["pretrain", "--nodes", "two", "--output", "x"], "pretrain: argument --nodes: invalid int value: 'two'"),
    (["pipeline", "--output", "x", "--stages", "pretrain,nope"], "unknown stage(s) ['nope']"),
    (["pipeline", "--trials", "2"], "pipeline: the following arguments are required: --output"),
    (["check", "--time", "0"], "--time must be > 0"),
    (["check", "--bogus"], "check: unrecognized arguments: --bogus"),
    (["status", "/nonexistent/run"], "status: /nonexistent/run holds neither pipeline.json"),
    (["status", "a", "b"], "status: expects one run folder, got 2"),
])
def test_one_error_convention(argv, message, capsys, no_submit):
    """Every refusal of `simsiam submit` is one line `simsiam submit: error: ...` on stderr and exit code 2."""
    assert S.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simsiam submit: error: ") and message in err[0], err
    assert issubclass(S.SubmitError, InputError)


def test_stage_args_split():
    ap = S.build_parser("pretrain")
    a, extra = ap.parse_known_args(["--config", "demo", "--gpus-per-node", "8", "--output", "r", "train.epochs=3"])
    assert a.gpus_per_node == 8 and extra == ["--config", "demo", "--output", "r", "train.epochs=3"]
    # a stage's own flags pass through unchanged (also after `--`, which main() splits off first)
    a, extra = ap.parse_known_args(["--gpus-per-node", "8", "--output=r", "--allow-config-change"])
    assert extra == ["--output=r", "--allow-config-change"]
    ns, run, done = S.parse_stage("pretrain", extra)
    assert ns.output == "r" and ns.allow_config_change and done == run / "results.json" and run.name == "r"


def test_trial_argv(tmp_path):
    argv = ["--weights", "w.pkl", "--config", "tiny", "--trials", "5", "--seed", "3", "--output", str(tmp_path),
            "SOLVER.MAX_ITER", "4"]
    ns, _, _ = S.parse_stage("detect", argv)
    t2 = S.trial_argv(ns, 2)
    # options first: detect takes the trailing detectron2 KEY VALUE pairs as a remainder
    assert t2 == ["--weights", "w.pkl", "--config", "tiny", "--output", str(tmp_path), "--trials", "5",
                  "--seed", "3", "--trial-index", "2", "SOLVER.MAX_ITER", "4"]


def test_pipeline_argvs_and_order(tmp_path):
    ap = S.build_parser("pipeline")
    a = ap.parse_args(["--output", str(tmp_path), "--pretrain-args", "--config demo train.epochs=1",
                       "--trials", "3", "--seed", "7", "--detect-args", "--config tiny_r18"])
    a.stages = list(stages.CHAIN_STAGES)
    argvs = S.plan_pipeline(tmp_path, a)
    assert argvs["pretrain"] == ["--output", str(tmp_path / "pretrain"), "--config", "demo", "train.epochs=1"]
    assert argvs["convert"][:3] == [str(tmp_path / "pretrain" / "checkpoint.pth"), "--to", "detectron2"]
    parsed = {s: stages.parse(s, argv) for s, argv in argvs.items()}
    assert (parsed["detect"].trials, parsed["detect"].seed) == (3, 7)
    assert parsed["detect"].weights == parsed["convert"].output
    assert parsed["knn"].data == "embedded"  # the pretraining dataset (demo: embedded)
    table = argvs["table"]
    assert table[:4] == [str(tmp_path / "pretrain"), str(tmp_path / "knn"), str(tmp_path / "linear"),
                         str(tmp_path / "detection" / "results.json")]
    # the chain's arguments, then --STAGE-args
    chain = stages.Chain(tmp_path)
    assert S.pipeline_argvs(tmp_path, a)["detect"] == [*chain.argv("detect", trials=3, seed=7), "--config", "tiny_r18"]
    assert parsed["convert"].output == str(tmp_path / "convert" / "backbone_detectron2.pkl")


# ------------------------------------------------------------------ submit-time checks (nothing reaches submitit)

@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    from pretrain.generated.rehearsal import make_imagenet_like
    root = tmp_path_factory.mktemp("data") / "imagenet"
    make_imagenet_like(root, classes=3, train_per_class=2, val_per_class=1)
    return root


@pytest.fixture(scope="module")
def d2_root(tmp_path_factory) -> Path:
    from pretrain.generated.rehearsal import make_detection_like
    root = tmp_path_factory.mktemp("data") / "detectron2"
    make_detection_like(root)
    return root


def pipeline(out: Path, imagenet: Path, *extra: str) -> list[str]:
    """The README's pipeline example, its dataset pointing at `imagenet`."""
    return ["pipeline", "--output", str(out), "--pretrain-args", f"--config imagenet_r50_200ep data.root={imagenet}",
            "--gpus-per-node", "8", "--trials", "5", *extra]


def test_readme_pipeline_is_consistent(tmp_path, imagenet, d2_root, monkeypatch, no_submit, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root))
    assert S.main([*pipeline(tmp_path / "r50", imagenet), "--dry-run"]) == 0
    lines = {ln.split(":", 1)[0].split()[-1]: ln for ln in capsys.readouterr().out.splitlines() if ": simsiam " in ln}
    assert f"--data {imagenet} " in lines["knn"]
    assert lines["linear"].endswith(f"data.root={imagenet}")
    assert "--config voc07 " in lines["detect"] and f"--data-root {d2_root}" in lines["detect"]
    assert "--trials 5" in lines["detect"]


def test_pipeline_detection_must_build_the_pretrained_backbone(tmp_path):
    """A ResNet-18 pretraining with an R50-C4 detection config is refused before anything is queued."""
    ap = S.build_parser("pipeline")
    a = ap.parse_args(["--output", str(tmp_path), "--pretrain-args", "--config demo", "--detect-args", "--config tiny"])
    a.stages = list(stages.CHAIN_STAGES)
    with pytest.raises(S.SubmitError, match=r"detect: --config tiny builds a resnet50 backbone .* but the pipeline "
                                            r"pretrains a resnet18"):
        S.plan_pipeline(tmp_path, a)
    a.detect_args = "--config tiny_r18"
    argv = S.plan_pipeline(tmp_path, a)["detect"]  # the matching config plans
    assert argv[argv.index("--config") + 1] == "tiny_r18"


@pytest.mark.parametrize("extra, message", [
    (["--knn-args", "--data /no/such/folder"], "knn: --data /no/such/folder: dataset folder '/no/such/folder' does "
                                               "not exist"),
    (["--knn-args", "--data embedded"], "knn: --data: the stage would read the embedded synthetic data"),
    (["--linear-args", "--config demo"], "linear: data.root: the stage would read the embedded synthetic data"),
    (["--linear-args", "--output elsewhere"], "linear: --output is set by the pipeline"),
    (["--knn-args", "--bogus 1"], "knn: unrecognized arguments: --bogus"),
    ([], "detect: --config: no detection config and no datasets root"),
])
def test_pipeline_refused_before_queueing(tmp_path, imagenet, monkeypatch, no_submit, capsys, extra, message):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert S.main([*pipeline(tmp_path / "r50", imagenet), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simsiam submit: error: ") and message in err[0], err
    assert not (tmp_path / "r50").exists()


@pytest.mark.parametrize("argv", [
    ["pipeline", "--output", "{out}", "--pretrain-args", "--config imagenet_r50_200ep"],
    ["pipeline", "--output", "{out}"],                                     # the defaults: no dataset either
    ["pretrain", "--config", "cifar10_r18", "--output", "{out}"],
])
def test_no_data_root_refused_before_queueing(tmp_path, no_submit, capsys, argv):
    """A pipeline or a stage whose pretraining names no dataset is refused before anything is queued."""
    out = tmp_path / "run"
    assert S.main([a.format(out=out) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simsiam submit: error: pretrain: data.root: not set; "), err
    assert not out.exists()


def test_wrong_dataset_layouts_refused(tmp_path, imagenet, d2_root, monkeypatch, no_submit, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(imagenet, bad)
    shutil.rmtree(next(p for p in (bad / "val").iterdir() if p.is_dir()))  # one class fewer in val/
    assert S.main([*pipeline(tmp_path / "r1", bad), "--stages", "pretrain,knn"]) == 2
    err = capsys.readouterr().err
    assert f"pretrain: data.root {bad}: " in err and "has 3 class folders but" in err
    shutil.rmtree(bad / "val")  # no held-out split: pretraining may run, kNN may not
    assert S.main([*pipeline(tmp_path / "r2", imagenet), "--stages", "knn", "--knn-args", f"--data {bad}"]) == 2
    assert f"knn: --data {bad}: no held-out split" in capsys.readouterr().err
    (d2_root / "VOC2007" / "ImageSets" / "Main" / "test.txt").rename(d2_root / "test.txt.bak")
    try:
        monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root))
        assert S.main([*pipeline(tmp_path / "r3", imagenet), "--stages", "detect"]) == 2
        err = capsys.readouterr().err
        assert "detect: datasets of --config voc07:" in err and "test.txt not found" in err
    finally:
        (d2_root / "test.txt.bak").rename(d2_root / "VOC2007" / "ImageSets" / "Main" / "test.txt")


def test_single_stage_checked_before_queueing(tmp_path, imagenet, no_submit, capsys):
    assert S.main(["knn", "--weights", "w.pth", "--output", str(tmp_path / "k")]) == 2
    assert "knn: the following arguments are required: --data" in capsys.readouterr().err
    assert S.main(["linear", "--weights", "w.pth", "--output", str(tmp_path / "l"), "data.root=/nope"]) == 2
    assert "linear: data.root /nope: dataset folder" in capsys.readouterr().err
    assert S.main(["knn", "--weights", "w.pth", "--output", str(tmp_path / "k"), "--data", str(imagenet),
                   "--dry-run"]) == 0


def test_expand_array_ids():
    assert J._expand_ids("12") == ["12"]
    assert J._expand_ids("12_3") == ["12_3"]
    assert J._expand_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]


# ------------------------------------------------------------------------ StageCall (in-process, no scheduler)

def test_stage_call_failure_skip_and_requeue_bound(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    out = tmp_path / "run"
    bad = J.StageCall("pretrain", "pretrain.main", ["--config", "test_tiny", "--output", str(out),
                                                    "train.no_such_key=1"], out, max_requeues=2)
    with pytest.raises(J.StageFailed, match="stage 'pretrain' .* exited with code 2"):
        bad()
    # finished stage: skipped without importing the module
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text("{}")
    skip = J.StageCall("x", "no.such.module", [], out, max_requeues=2)
    assert skip() == {"stage": "x", "output": str(out), "skipped": True}
    # checkpoint(): requeue twice, then refuse; each decision logged in requeues.jsonl
    d1 = skip.checkpoint()
    assert d1 is not None and d1.function is skip and skip.requeues == 1
    assert skip.checkpoint() is not None and skip.requeues == 2
    assert skip.checkpoint() is None
    events = [e["event"] for e in J.read_events(out)]
    assert events == ["requeue", "requeue", "requeue-refused"]
    # a scheduler restart beyond the bound stops the job with a clear error
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    with pytest.raises(J.RequeueLimitError, match="requeued 3 times, more than --max-requeues 2"):
        skip()
    assert J.read_events(out)[-1]["event"] == "restart"


# ------------------------------------------------------------------------------------------ local executor

def test_local_executor_two_tasks_gloo(tmp_path):
    res = resources("--executor", "local", "--tasks-per-node", "2", "--time", "5")
    ex = S.make_executor(res, tmp_path / "logs", "gloo")
    job = ex.submit(J.CallFunction(J.distributed_check))
    assert S.wait_all({"gloo": S.Submitted("gloo", tmp_path, job=job)}, poll_s=0.5)
    got = sorted((r["rank"], r["world_size"], r["local_rank"], r["sum"]) for r in job.results())
    assert got == [(0, 2, 0, 3.0), (1, 2, 1, 3.0)]


def test_local_executor_failing_stage_reports(tmp_path, capsys):
    """A failure only the job can see (unreadable images in a well-formed tree) is reported with its reason."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            for i in range(8):
                (data / split / cls / f"{i}.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    rc = S.main(["pretrain", "--executor", "local", "--time", "5", "--config", "test_tiny", "--output", str(out),
                 f"data.root={data}"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "stage 'pretrain' failed" in err
    assert "cannot read image" in err, err[-2000:]
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------------ reports from records, not logs

def test_accounting_fields_in_words():
    """sacct's ExitCode, durations and steps as status shows them."""
    assert [J.exit_code_words(c) for c in ("1:0", "0:9", "0:15", "0:0")] == [
        "exit code 1", "signal 9 (SIGKILL)", "signal 15 (SIGTERM)", "exit code 0"]
    assert [J.sacct_seconds(t) for t in ("00:00:07", "1-02:03:04", "10:00", "UNLIMITED", "")] == [
        7, 93784, 600, None, None]
    record = {"steps": [{"step": "41.batch", "state": "FAILED"}, {"step": "41.extern", "state": "CANCELLED"},
                        {"step": "41.0", "state": "FAILED"}, {"step": "41.1", "state": "COMPLETED"}]}
    assert [s["step"] for s in J.failed_steps(record)] == ["41.0"]
    record["steps"][2]["state"] = "COMPLETED"     # the script failed without its srun: the batch step
    assert [s["step"] for s in J.failed_steps(record)] == ["41.batch"]


def test_task_outcomes_from_result_files(tmp_path):
    """Each task's result file (submitit's ("success" | "error", payload)) or its absence; a file older than the
    attempt belongs to an earlier one."""
    import os
    import pickle
    from submitit.core.utils import JobPaths
    for task, tag in ((0, "error"), (2, "success")):
        with open(JobPaths(tmp_path, job_id="41", task_id=task).result_pickle, "wb") as f:
            pickle.dump((tag, "payload"), f)
    assert J.task_outcomes(tmp_path, "41", 3, since=None) == ["error", "none", "success"]
    old = JobPaths(tmp_path, job_id="41", task_id=2).result_pickle
    os.utime(old, (1000.0, 1000.0))
    assert J.task_outcomes(tmp_path, "41", 3, since=2000.0) == ["error", "none", "none"]


def test_status_lines_from_the_run_record(tmp_path, capsys):
    """Placement and progress come from the run record a StageRun writes, the time per epoch from
    metrics.jsonl; a record older than the job's start is an earlier attempt's."""
    import re
    import socket
    from pretrain.frame import StageRun
    run = tmp_path / "run"
    with StageRun("pretrain", run, progress_every_s=0) as sr:
        sr.metrics.write({"stage": "pretrain", "epoch": 1, "time": 4.0})
        sr.metrics.write({"stage": "pretrain", "epoch": 2, "time": 4.0})
        sr.progress(epoch=3, epochs=3, step=1, steps=2)
    assert J.run_progress(run) == {"epochs_done": 2, "epochs": None, "seconds_per_epoch": 4.0}
    state = S.current_record(str(run), started=None)
    lines = S.record_lines(state, str(run))
    assert lines[0] == f"ranks: 0 on {socket.gethostname()} (local 0, cpu); world size 1"
    assert re.fullmatch(r"progress: epoch 3/3 at step 1/2; 4\.0 s per epoch, about 0:02 left \(recorded \d+ s ago\)",
                        lines[1]), lines[1]
    later = J.sacct_time("2999-01-01T00:00:00")
    assert S.current_record(str(run), started=later) is None
    assert S.running_report("41", None, str(tmp_path / "empty")) == [
        f"(no run record of this attempt in {tmp_path / 'empty'} yet: the stage has not started)"]
    (run / "slurm").mkdir()
    (run / "slurm" / "41_submission.sh").write_text("#SBATCH --job-name=simsiam-pretrain\n")
    assert S.submitted_stages(run)["stages"]["pretrain"]["jobs"] == ["41"]


def test_peer_failure_classification():
    import torch.distributed as tdist
    closed = RuntimeError("[/x/gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:4. This is "
                          "typically caused by a remote worker crashing.")
    assert J.peer_failure(closed) and J.first_line(closed) == "RuntimeError: Connection closed by peer [10.0.0.2]:4"
    assert J.peer_failure(tdist.DistBackendError("watchdog caught collective operation timeout"))
    assert not J.peer_failure(ValueError("bad config value"))
    assert not J.peer_failure(RuntimeError("CUDA out of memory"))


def test_trial_array_summary_without_detectron2(tmp_path):
    """The summary job of a detection job array: the mean and sample std of the trials' results.json, in the
    layout of `simsiam detect --trials N`, without importing detectron2."""
    import subprocess
    import sys
    from pretrain import results as R
    for i, ap in enumerate((10.0, 14.0)):
        R.write(tmp_path / f"trial_{i}", R.Results.new(task="detection", dataset="voc07", metrics={"AP": ap},
                config={"seed": i, "OUTPUT_DIR": "x", "MODEL": {}}, extra={"seed": i, "iterations": 2}), "test")
    code = ("import sys, json; from slurm.submit import summarize_trials; summarize_trials(sys.argv[1], 2); "
            "assert 'detectron2' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=Path(__file__).resolve().parents[1])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["metrics"] == {"AP": 12.0} and doc["std"]["AP"] == pytest.approx(2 ** 0.5 * 2)
    assert doc["n_trials"] == 2 and doc["job_array"] and [t["seed"] for t in doc["trials"]] == [0, 1]
