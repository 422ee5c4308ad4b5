"""Real SLURM (the one-node cluster of slurm/local_cluster.sh): jobs submitted with `simsiam submit`.

Skipped only when SLURM is not installed and CI is unset; under CI these tests must run (and fail when the
cluster is not up). Every run is tiny (32 px, 2-3 steps per epoch) so the file stays within a few minutes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slurm.jobs import read_events, slurm_states

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if shutil.which("sinfo") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but SLURM is not installed: run `bash slurm/local_cluster.sh up` first")
        pytest.skip("SLURM is not installed (sinfo missing); `bash slurm/local_cluster.sh up` sets it up")
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    states = r.stdout.split()
    if r.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        pytest.fail(f"the SLURM cluster is not usable (sinfo: rc {r.returncode}, {r.stdout.strip()} "
                    f"{r.stderr.strip()}): run `bash slurm/local_cluster.sh up`")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Embedded datasets generated once for all jobs of this file."""
    from pretrain.synthetic import ensure_embedded
    root = tmp_path_factory.mktemp("slurm-cache")
    ensure_embedded(root)
    return root


def simsiam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The project's command line, as a user runs it."""
    exe = Path(sys.executable).with_name("simsiam")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "transfer.cli"]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    print(r.stdout[-3000:], r.stderr[-3000:])
    return r


def job_id(stdout: str, stage: str = "pretrain") -> str:
    m = re.search(rf"\[submit\] {stage}: job (\d+)", stdout)
    assert m, stdout
    return m.group(1)


def tiny(cache: Path, *extra: str) -> list[str]:
    return ["--config", "test_tiny", "train.max_steps_per_epoch=2", "monitor.knn=false", "monitor.tensorboard=false",
            f"data.cache_dir={cache}", *extra]


def wait_until(cond, timeout: float, what: str, poll: float = 0.2):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def release(jid: str) -> None:
    """A requeued job waits ~2 minutes (SLURM's requeue BeginTime); let it start now."""
    wait_until(lambda: slurm_states([jid])[jid] == "PENDING", 60, f"job {jid} back in the queue")
    subprocess.run(["scontrol", "update", f"jobid={jid}", "StartTime=now"], check=True, capture_output=True)


def epochs_in_metrics(run: Path) -> list[int]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [d["epoch"] for d in lines if d.get("stage") == "pretrain"]


def test_two_task_cpu_pretraining(tmp_path, cache):
    out = tmp_path / "pre2"
    t0 = time.time()
    r = simsiam("submit", "pretrain", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "10",
                *tiny(cache, "train.epochs=2"), "--output", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    jid = job_id(r.stdout)
    assert "[submit] all jobs completed" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "pretrain" and res["epochs"] == 2
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["format"] == "simsiam-suite/pretrain"
    assert "2 processes" in (out / "log.txt").read_text()  # world size 2 via the env:// variables
    assert epochs_in_metrics(out) == [1, 2]
    # both tasks ran and returned (submitit result per task), logs in <run>/slurm
    assert (out / "slurm" / f"{jid}_0_result.pkl").is_file() and (out / "slurm" / f"{jid}_1_result.pkl").is_file()
    assert slurm_states([jid])[jid] == "COMPLETED"
    print(f"two-task job: {time.time() - t0:.0f} s")


def _ckpt_epoch(run: Path) -> int:
    path = run / "checkpoint.pth"
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"] if path.is_file() else 0


def _pauses(run: Path) -> int:
    """How often the run has held at RUN/PAUSE (after all of that epoch's files were written): its log says so."""
    log = run / "log.txt"
    return log.read_text().count("paused after a checkpoint") if log.is_file() else 0


def test_requeued_job_resumes_to_same_weights(tmp_path, cache):
    """Interrupted twice (scontrol requeue after epoch 1; USR2 = preemption signal -> checkpoint() -> requeue after
    epoch 2) and still ends with exactly the weights of an uninterrupted run (deterministic CPU settings).

    The interruptions do not race the job: RUN/PAUSE holds training at the epoch boundary right after each
    checkpoint (pretrain.train.wait_while_paused), so on a fast machine or a slow one the job is killed at
    the same point, with the same files on disk."""
    args = tiny(cache, "train.epochs=5", "train.deterministic=true", "train.save_freq=1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    run.mkdir()
    pause = run / "PAUSE"
    pause.touch()
    common = ["--cpus-per-task", "1", "--time", "10", "--no-wait", "--max-requeues", "3"]
    r_ref = simsiam("submit", "pretrain", *common, *args, "--output", str(ref))
    r_run = simsiam("submit", "pretrain", *common, *args, "--output", str(run))
    assert r_ref.returncode == 0 and r_run.returncode == 0
    jref, jid = job_id(r_ref.stdout), job_id(r_run.stdout)

    # 1) scheduler requeue while the job holds after its first checkpoint
    wait_until(lambda: _pauses(run) == 1, 300, "the hold after the first checkpoint")
    assert _ckpt_epoch(run) == 1
    subprocess.run(["scontrol", "requeue", jid], check=True, capture_output=True)
    release(jid)
    # 2) the restarted job resumes, checkpoints epoch 2 and holds again: preemption signal, handled by
    #    submitit + StageCall.checkpoint
    wait_until(lambda: any(e["event"] == "restart" for e in read_events(run)), 300, "the restart record")
    wait_until(lambda: _pauses(run) == 2, 300, "the hold after the checkpoint of epoch 2", poll=0.3)
    assert pause.exists() and _ckpt_epoch(run) == 2
    subprocess.run(["scancel", "--signal=USR2", jid], check=True, capture_output=True)
    wait_until(lambda: any(e["event"] == "requeue" for e in read_events(run)), 120, "checkpoint() requeue record")
    pause.unlink()
    release(jid)

    done = wait_until(lambda: (lambda s: s if all(v in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for v in
                                                  s.values()) else None)(slurm_states([jref, jid])),
                      300, "both jobs to finish", poll=1)
    assert done == {jref: "COMPLETED", jid: "COMPLETED"}, done

    events = read_events(run)
    kinds = [e["event"] for e in events]
    assert kinds.count("requeue") == 1, events           # the signal path
    assert [e["restart"] for e in events if e["event"] == "restart"] == [1, 2], events
    assert not read_events(ref)

    a = torch.load(ref / "checkpoint.pth", map_location="cpu", weights_only=False)
    b = torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == 5
    assert a["model"].keys() == b["model"].keys()
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"weights differ after requeue: {differ[:5]}"
    assert epochs_in_metrics(run) == [1, 2, 3, 4, 5] == epochs_in_metrics(ref)   # none lost, none twice
    assert sorted(p.name for p in run.glob("checkpoint_*.pth")) == [f"checkpoint_{e:04d}.pth" for e in range(1, 6)]


def test_detection_trials_job_array(tmp_path, cache):
    """`submit detect --trials 2` = a 2-element job array (one trial per task, seeds S, S+1) + a summary job."""
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "r50_torchvision.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)  # untrained R50: the mechanism, not AP
    out = tmp_path / "detection"
    r = simsiam("submit", "detect", "--cpus-per-task", "1", "--time", "20",
                "--weights", str(weights), "--config", "tiny", "--output", str(out), "--trials", "2", "--seed", "5",
                "--cache-dir", str(cache),
                "SOLVER.MAX_ITER", "1", "SOLVER.WARMUP_ITERS", "0", "SIMSIAM.MAX_TEST_IMAGES", "1",
                "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
                "INPUT.MAX_SIZE_TEST", "96", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = re.search(r"detect: 2 trial job\(s\) \['(\d+)_0', '\1_1'\]", r.stdout)
    assert ids, r.stdout
    for i in range(2):
        doc = json.loads((out / f"trial_{i}" / "results.json").read_text())
        assert doc["task"] == "detection" and doc["seed"] == 5 + i
        assert set(doc["metrics"]) == {"AP50", "AP", "AP75"}
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_trials"] == 2 and [t["seed"] for t in summary["trials"]] == [5, 6]
    assert summary["job_array"] is True
    # the array elements ran as separate SLURM jobs
    assert (out / "slurm" / f"{ids.group(1)}_0_0_log.out").is_file()
    assert (out / "slurm" / f"{ids.group(1)}_1_0_log.out").is_file()


def test_failing_stage_stops_dependants(tmp_path, cache):
    """A failure that only the job can see (unreadable images in a well-formed tree; every submit-time check
    passes) stops the pipeline: SLURM cancels the dependants, status and the command name the reason."""
    from pretrain.rehearsal import make_detection_like
    data, det = tmp_path / "data", tmp_path / "detectron2"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            for i in range(8):
                (data / split / cls / f"{i}.jpg").write_bytes(b"not a jpeg")
    make_detection_like(det)
    out = tmp_path / "pipe"
    cmd = ["submit", "pipeline", "--output", str(out), "--time", "5",
           "--pretrain-args", f"--config test_tiny data.cache_dir={cache} data.root={data}",
           "--detect-args", f"--config tiny --data-root {det} --train-dataset voc_2007_trainval "
                            "--test-dataset voc_2007_test"]
    r0 = simsiam(*cmd, "--no-wait")
    assert r0.returncode == 0, r0.stderr[-2000:]
    busy = simsiam(*cmd, "--no-wait")  # the first submission is still queued: no second copy
    assert busy.returncode == 2 and "already has jobs queued or running" in busy.stderr

    manifest = json.loads((out / "pipeline.json").read_text())["stages"]
    assert list(manifest) == ["pretrain", "convert", "knn", "linear", "detect", "table"]
    assert manifest["convert"]["depends_on"] == ["pretrain"]
    assert manifest["table"]["depends_on"] == ["knn", "linear", "detect"]
    ids = [j for s in manifest.values() for j in s["jobs"]]
    pre = manifest["pretrain"]["jobs"][0]
    # nobody cancels anything here: SLURM itself drops the dependants of the failed stage (afterok)
    states = wait_until(lambda: (lambda st: st if all(v not in ("PENDING", "RUNNING", "COMPLETING")
                                                      for v in st.values()) else None)(slurm_states(ids)),
                        120, "the pipeline's jobs to end", poll=1)
    assert states.pop(pre) == "FAILED"
    assert set(states.values()) == {"CANCELLED"}, states
    for stage in ("knn", "linear", "detection"):
        assert not (out / stage / "results.json").exists()
    assert not (out / "table.md").exists()
    st = simsiam("submit", "status", str(out))
    assert st.returncode == 1 and "stage 'pretrain' failed" in st.stdout and "cannot read image" in st.stdout

    # the pipeline command itself (following its jobs) names the failed stage and why
    r = simsiam(*cmd, timeout=180)
    assert r.returncode == 1
    assert "stage 'pretrain' failed" in r.stderr
    assert "reason: simsiam pretrain: error:" in r.stderr and "cannot read image" in r.stderr
