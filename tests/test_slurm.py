"""Real SLURM (the two-node cluster of slurm/local_cluster.sh: node1 and node2, each in its own network
namespace): jobs submitted with `simsiam submit`, on one node and across both.

Skipped only when SLURM is not installed and CI is unset; under CI these tests must run (and fail when the
cluster is not up). Every run is tiny (32 px, 2 steps per epoch) so the file stays within a few minutes.
Interruptions never race the clock: RUN/PAUSE holds a pretraining at an epoch boundary after its checkpoint
(pretrain.train.wait_while_paused), and every wait is on a state, a log line or a file, with a bound.
The helpers (submit_tiny, task_pid, kill_task, release, requeue_at_first_hold, wait_ended, assert_same_weights,
assert_clean_run, state_differences) are meant for further interruption tests.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain.frame import read_run_state
from slurm.jobs import PREEMPTION_MARK, read_events, slurm_states

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
NODES = ("node1", "node2")
NETNS = "slurm-{node}"   # the namespace slurm/local_cluster.sh runs each node's slurmd in
USABLE = ("idle", "mixed", "allocated", "completing")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if shutil.which("sinfo") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but SLURM is not installed: run `bash slurm/local_cluster.sh up` first")
        pytest.skip("SLURM is not installed (sinfo missing); `bash slurm/local_cluster.sh up` sets it up")
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    states = dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)
    usable = [n for n in NODES if states.get(n, "").rstrip("*~#") in USABLE]
    if r.returncode != 0 or len(usable) != len(NODES):
        pytest.fail(f"the two-node SLURM cluster is not usable (sinfo: rc {r.returncode}, {r.stdout.strip()} "
                    f"{r.stderr.strip()}): run `bash slurm/local_cluster.sh up`")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Embedded datasets generated once for all jobs of this file."""
    from pretrain.generated.embedded import ensure_embedded
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


def requeue_at_first_hold(run: Path, jid: str, unpause: bool = False) -> None:
    """`scontrol requeue` of job `jid` while it holds (RUN/PAUSE) after its first checkpoint; once its tasks
    are gone (and, with unpause, RUN/PAUSE removed: the next attempt runs through) the job is released."""
    wait_until(lambda: _pauses(run) == 1, 300, "the hold after the first checkpoint", poll=0.3)
    assert _ckpt_epoch(run) == 1
    subprocess.run(["scontrol", "requeue", jid], check=True, capture_output=True)
    wait_until(lambda: slurm_states([jid])[jid] == "PENDING", 60, f"job {jid} back in the queue")
    wait_until(lambda: not any(tasks(jid, n) for n in NODES), 60, f"the tasks of job {jid} to end")
    if unpause:
        (run / "PAUSE").unlink()
    release(jid)


def submit_tiny(run: Path, *flags: str, epochs: int, cache: Path, requeues: int = 3,
                settings: tuple[str, ...] = ()) -> str:
    """`simsiam submit pretrain --no-wait` of a tiny deterministic CPU run (one checkpoint per epoch); the job id.
    flags: options (submit's, or a pretraining --config before test_tiny); settings: more key=value overrides."""
    r = simsiam("submit", "pretrain", "--cpus-per-task", "1", "--time", "10", "--no-wait",
                "--max-requeues", str(requeues), *flags,
                *tiny(cache, f"train.epochs={epochs}", "train.deterministic=true", "train.save_freq=1", *settings),
                "--output", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    return job_id(r.stdout)


def tasks(jid: str, node: str) -> dict[int, int]:
    """{rank: process id} of the tasks of job `jid` running on `node` (in that node's network namespace)."""
    r = subprocess.run(["ip", "netns", "pids", NETNS.format(node=node)], capture_output=True, text=True, check=True)
    found = {}
    for pid in r.stdout.split():
        try:
            env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in x)
            cmd = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == jid and "submitit.core._submit" in cmd:
            found[int(env["SLURM_PROCID"])] = int(pid)
    return found


def task_pid(jid: str, node: str, rank: int) -> int:
    """The process id of rank `rank` of job `jid`, a task running on `node`."""
    pid = tasks(jid, node).get(rank)
    assert pid is not None, f"no task of rank {rank} of job {jid} runs on {node}"
    return pid


def kill_task(jid: str, node: str, rank: int) -> None:
    """A task dies by itself (SIGKILL: no handler, no checkpoint), the rest of the job goes on."""
    os.kill(task_pid(jid, node, rank), signal.SIGKILL)


def wait_ended(ids: list[str], timeout: float = 300) -> dict[str, str]:
    return wait_until(lambda: (lambda s: s if all(v in ENDED for v in s.values()) else None)(slurm_states(ids)),
                      timeout, f"jobs {ids} to end", poll=1)


def load_ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)


def assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = load_ckpt(a), load_ckpt(b)
    assert ca["epoch"] == cb["epoch"] and ca["model"].keys() == cb["model"].keys()
    differ = [k for k in ca["model"] if not torch.equal(ca["model"][k], cb["model"][k])]
    assert not differ, f"weights of {a} and {b} differ: {differ[:5]}"


def assert_clean_run(run: Path, epochs: int) -> None:
    """Every epoch once in metrics.jsonl, one snapshot per epoch, nothing else: none lost, none twice."""
    assert epochs_in_metrics(run) == list(range(1, epochs + 1))
    assert sorted(p.name for p in run.glob("checkpoint_*.pth")) == [f"checkpoint_{e:04d}.pth"
                                                                    for e in range(1, epochs + 1)]
    assert json.loads((run / "results.json").read_text())["epochs"] == epochs


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
    """Interrupted twice (scontrol requeue after epoch 1; USR2 = the preemption signal while it holds after epoch 2:
    training stops after the next step, in the middle of epoch 3, writes its position, then checkpoint() ->
    requeue) and still ends with exactly the weights of an uninterrupted run (deterministic CPU settings).

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
    requeue_at_first_hold(run, jid)
    # 2) the restarted job resumes, checkpoints epoch 2 and holds again: preemption signal, handled by
    #    submitit + StageCall.checkpoint
    wait_until(lambda: any(e["event"] == "restart" for e in read_events(run)), 300, "the restart record")
    wait_until(lambda: _pauses(run) == 2, 300, "the hold after the checkpoint of epoch 2", poll=0.3)
    assert pause.exists() and _ckpt_epoch(run) == 2
    subprocess.run(["scancel", "--signal=USR2", jid], check=True, capture_output=True)
    wait_until(lambda: _stop_seen(jid, run), 60, "the signal to reach the held job")
    pause.unlink()
    wait_until(lambda: any(e["event"] == "requeue" for e in read_events(run)), 120, "checkpoint() requeue record")
    mid = load_ckpt(run)
    assert (mid["epoch"], mid["epoch_step"], mid["step"]) == (2, 1, 5)   # one step into epoch 3, not an epoch lost
    assert "stopped on request after step 1 of epoch 3" in (run / "log.txt").read_text()
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


def _stop_seen(jid: str, run: Path) -> bool:
    """The job's rank 0 has received the preemption signal (StageCall prints it when it asks training to stop)."""
    return any(PREEMPTION_MARK in p.read_text(errors="replace") for p in (run / "slurm").glob(f"{jid}_0_log.out"))


# MoCo v2 (pretrain/methods/moco.py) on the tiny model, with the small head of tests/test_moco.py and a queue of
# three global batches: 4 steps of 16 keys leave its pointer at 16, after one wrap.
MOCO = ("model.dim=64", "model.proj_hidden_dim=256", "model.queue_size=48")


def state_differences(a, b, where: str = "") -> list[str]:
    """The entries of two nested checkpoint states (dicts, lists, tensors, numbers) that are not equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in state_differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and torch.equal(a, b) else [where]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def test_moco_requeued_across_two_nodes_resumes_to_same_weights_key_encoder_and_queue(tmp_path, cache):
    """MoCo v2 over two nodes (one rank each: the keys' BN shuffled across the ranks, every rank's keys in the
    queue), `scontrol requeue`d while it holds after epoch 1, ends with the weights, key encoder (weights, BN
    buffers, momentum updates) and queue (keys and pointer) of an uninterrupted two-node run, bit for bit."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    run.mkdir()
    (run / "PAUSE").touch()
    jid = submit_tiny(run, "--nodes", "2", "--config", "moco_v2", epochs=2, cache=cache, settings=MOCO)
    jref = submit_tiny(ref, "--nodes", "2", "--config", "moco_v2", epochs=2, cache=cache, settings=MOCO)
    requeue_at_first_hold(run, jid, unpause=True)
    assert wait_ended([jid, jref]) == {jid: "COMPLETED", jref: "COMPLETED"}

    assert [e["event"] for e in read_events(run)] == ["restart"] and not read_events(ref)
    for folder in (ref, run):
        assert "2 processes" in (folder / "log.txt").read_text()
        assert_clean_run(folder, 2)
    assert_same_weights(ref, run)
    a, b = load_ckpt(ref), load_ckpt(run)
    assert a["target"]["kind"] == "moco" and a["step"] == 4
    assert a["target"]["queue"]["ptr"] == 16 and a["target"]["key_encoder"]["updated_at"] == 4
    assert not (differ := state_differences(a["target"], b["target"], "target")), differ[:5]


def test_detection_trials_job_array(tmp_path, cache):
    """`submit detect --trials 2` = a 2-element job array (one trial per task, seeds S, S+1) spread over both
    nodes + a summary job."""
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "r50_torchvision.pth"
    torch.save(torchvision.models.resnet50().state_dict(), weights)  # untrained R50: the mechanism, not AP
    out = tmp_path / "detection"
    r = simsiam("submit", "detect", "--cpus-per-task", "1", "--time", "20", "--sbatch", "exclusive",
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
    # the array elements ran as separate SLURM jobs, one per node (--sbatch exclusive: a node each)
    hosts = [re.findall(r"hostname=(node\d)", (out / "slurm" / f"{ids.group(1)}_{i}_0_log.out").read_text())
             for i in range(2)]
    assert sorted(h[0] for h in hosts) == ["node1", "node2"], hosts


def test_failing_stage_stops_dependants(tmp_path, cache):
    """A failure that only the job can see (unreadable images in a well-formed tree; every submit-time check
    passes) stops the pipeline: SLURM cancels the dependants, status and the command name the reason."""
    from pretrain.generated.rehearsal import make_detection_like
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
           "--detect-args", f"--config tiny_r18 --data-root {det} --train-dataset voc_2007_trainval "
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
    assert st.returncode == 1 and "stage 'pretrain' failed" in st.stdout
    assert re.search(rf"failed step {pre}\.0 \(\S+\) on node\d: FAILED, exit code 1", st.stdout), st.stdout
    assert re.search(r"rank 0 ended with: \w+: .*cannot read image", st.stdout), st.stdout

    # the pipeline command itself (following its jobs) names the failed stage and why
    r = simsiam(*cmd, timeout=180)
    assert r.returncode == 1
    assert "stage 'pretrain' failed" in r.stderr
    assert re.search(r"rank 0 ended with: \w+: .*cannot read image", r.stderr), r.stderr[-3000:]


def test_tiny_sweep_into_its_table_and_its_status(tmp_path, cache):
    """`simsiam submit ablation fig2` shrunk as tests/test_ablation.py's local sweep (its stop-gradient variant,
    one trial, one epoch of two steps) on the cluster: pretraining, kNN and linear arrays, then the table job,
    whose table puts the paper's number beside the sweep's and says what differs. `simsiam submit status` of
    the sweep folder shows the run's stages: while the pretraining holds after its epoch (RUN/PAUSE), where it
    runs and its epoch, the evaluations queued after it; at the end every stage completed."""
    from test_ablation import TINY
    out = tmp_path / "fig2"
    run = out / "with_stop_gradient" / "trial_0"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "PAUSE").touch()
    r = simsiam("submit", "ablation", "fig2", "--output", str(out), "--data", "embedded", "--variants",
                "with_stop_gradient", "--cpus-per-task", "1", "--no-wait", *TINY,
                "--pretrain-args", f"data.cache_dir={cache}", "--knn-args", f"--cache-dir {cache}",
                "--linear-args", f"data.cache_dir={cache}")
    assert r.returncode == 0, r.stderr[-3000:]
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    ids = {name.removeprefix("simsiam-ablation-"): s["jobs"] for name, s in stages.items()}
    (pre,), (knn,), (linear,), (table,) = ids["pretrain"], ids["knn"], ids["linear"], ids["table"]

    wait_until(lambda: _pauses(run / "pretrain") == 1, 300, "the hold after the pretraining's epoch")
    st = simsiam("submit", "status", str(out))
    assert st.returncode == 0, st.stderr
    lines = st.stdout.splitlines()
    assert lines[:3] == [f"ablation fig2 (Fig. 2: stop-gradient): 1 run(s) in {out}", "with_stop_gradient/trial_0",
                         f"  pretrain  {pre} RUNNING   epoch 1/1"], st.stdout
    assert re.search(r"\n      ranks: 0 on node\d \(local 0, cpu\); world size 1\n      progress: epoch 1/1 done",
                     st.stdout), st.stdout
    assert f"\n  knn       {knn} PENDING\n  linear    {linear} PENDING\n" in st.stdout, st.stdout
    assert f"table     {table} PENDING   -> {out / 'table.md'}" in st.stdout
    (run / "pretrain" / "PAUSE").unlink()

    every = [pre, knn, linear, table]
    assert wait_ended(every) == dict.fromkeys(every, "COMPLETED")
    st = simsiam("submit", "status", str(out))
    assert st.returncode == 0, st.stderr
    assert st.stdout.splitlines()[1:] == [
        "with_stop_gradient/trial_0", f"  pretrain  {pre} COMPLETED   epoch 1/1", f"  knn       {knn} COMPLETED",
        f"  linear    {linear} COMPLETED   epoch 1/1", f"table     {table} COMPLETED   -> {out / 'table.md'}"]
    linear_top1, knn_top1 = (json.loads((run / s / "results.json").read_text())["metrics"]["top1"]
                             for s in ("linear", "knn"))
    table_md = (out / "table.md").read_text()
    assert table_md.startswith("**Fig. 2: stop-gradient")
    assert "variants left out of this sweep: without_stop_gradient" in table_md
    # the paper's number, the sweep's (mean over its one trial), and what differs from the paper's measurement
    yours = rf"{linear_top1:.1f} \(n=1\) +\| {knn_top1:.1f} \(n=1\)"
    assert re.search(rf"\n\| w/ stop-grad +\| 67\.7±0\.1 +\| {yours} +\| 1 trial\(s\) != 5; pretraining dataset "
                     r"embedded != imagenet; pretraining epochs 1 != 100; ", table_md), table_md


# ------------------------------------------------------------------------------------------------ two nodes

def test_two_nodes_in_their_own_namespaces():
    r = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True, check=True)
    addrs = dict(re.findall(r"NodeName=(\S+).*?NodeAddr=(\S+)", r.stdout, re.S))
    assert addrs == {"node1": "10.200.77.11", "node2": "10.200.77.12"}, addrs
    out = subprocess.run(["srun", "--nodes", "2", "--ntasks-per-node", "1", "--time", "1", "sh", "-c",
                          'echo "$SLURM_PROCID $(hostname)"'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:2]) == ["0 node1", "1 node2"], out.stdout


def test_check_across_two_nodes(tmp_path):
    r = simsiam("submit", "check", "--nodes", "2", "--time", "5", "--log-dir", str(tmp_path / "chk"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stdout.splitlines() if x.startswith("rank ")]
    assert lines == ["rank 0/2 (local 0) on node1: all_reduce 3 (expected 3)",
                     "rank 1/2 (local 0) on node2: all_reduce 3 (expected 3)"], r.stdout


def test_two_nodes_equal_one_node_and_survive_requeue_a_killed_task_and_preemption(tmp_path, cache):
    """2 nodes x 1 task == 1 node x 2 tasks (same global batch, seed, deterministic mode), bit for bit; and a
    2-node run interrupted three times ends with the same weights: `scontrol requeue` while it holds after
    epoch 1; the task on node2 killed while it holds after epoch 2 (the survivor on node1 requeues the job);
    the preemption signal while it holds after epoch 3 (both ranks stop after the next step, in the middle of
    epoch 4, write their data positions, and the job is requeued)."""
    one, two, run = tmp_path / "one_node", tmp_path / "two_nodes", tmp_path / "interrupted"
    run.mkdir()
    pause = run / "PAUSE"
    pause.touch()
    jid = submit_tiny(run, "--nodes", "2", epochs=4, cache=cache)
    jtwo = submit_tiny(two, "--nodes", "2", epochs=4, cache=cache)
    jone = submit_tiny(one, "--tasks-per-node", "2", epochs=4, cache=cache)

    requeue_at_first_hold(run, jid)
    wait_until(lambda: _pauses(run) == 2, 300, "the hold after the checkpoint of epoch 2", poll=0.3)
    st = simsiam("submit", "status", str(run))
    assert st.returncode == 0, st.stderr
    assert f"pretrain  {jid} RUNNING" in st.stdout
    assert "nodes: node[1-2] (2 node(s))" in st.stdout
    # where it runs and how far it is, from accounting (sacct) and the run record its rank 0 writes
    assert "ranks: 0 on node1 (local 0, cpu), 1 on node2 (local 0, cpu); world size 2" in st.stdout
    assert re.search(r"progress: epoch 2/4 done; [\d.]+ s per epoch, about \d+:\d\d left \(recorded \d+ s ago\)",
                     st.stdout), st.stdout
    kill_task(jid, "node2", 1)
    pause.unlink()
    wait_until(lambda: any(e["event"] == "retry" for e in read_events(run)), 120, "the survivor's retry")
    pause.touch()                     # the job is back in the queue: hold it again after epoch 3
    release(jid)
    wait_until(lambda: _pauses(run) == 3, 300, "the hold after the checkpoint of epoch 3", poll=0.3)
    subprocess.run(["scancel", "--signal=USR2", jid], check=True, capture_output=True)
    wait_until(lambda: _stop_seen(jid, run), 60, "the signal to reach the held job")
    pause.unlink()
    wait_until(lambda: any(e["event"] == "requeue" for e in read_events(run)), 120, "checkpoint() requeue record")
    mid = load_ckpt(run)
    assert (mid["epoch"], mid["epoch_step"], len(mid["positions"])) == (3, 1, 2)
    state = read_run_state(run)        # the run record of the stopped attempt: its last position, both ranks
    assert state["progress"] == {"epoch": 4, "epochs": 4, "step": 1, "steps": 2} and state["error"] is None
    assert [(r["rank"], r["host"]) for r in state["ranks"]] == [(0, "node1"), (1, "node2")] and state["ended"]
    release(jid)
    assert wait_ended([jid, jtwo, jone]) == {jid: "COMPLETED", jtwo: "COMPLETED", jone: "COMPLETED"}

    events = read_events(run)
    assert [e["event"] for e in events] == ["restart", "retry", "restart", "requeue", "restart"], events
    retry = events[1]
    assert (retry["rank"], retry["host"], retry["retry"]) == (0, "node1", 2), retry
    assert "RuntimeError" in retry["error"], retry
    assert "2 processes" in (two / "log.txt").read_text() and "2 processes" in (one / "log.txt").read_text()
    assert "stopped on request after step 1 of epoch 4" in (run / "log.txt").read_text()
    for folder in (one, two, run):
        assert_clean_run(folder, 4)
    assert_same_weights(one, two)
    assert_same_weights(two, run)
    st = simsiam("submit", "status", str(run))
    assert st.returncode == 0 and f"pretrain  {jid} COMPLETED" in st.stdout
    assert "history: restart 1 on node1; retry 2 by rank 0 on node1 (RuntimeError:" in st.stdout, st.stdout


def test_killed_task_beyond_the_requeue_budget_fails_and_status_names_it(tmp_path, cache):
    """With --max-requeues 0 a task that dies ends the job (no hang: the survivor's collective fails at once);
    status names the failed step (sacct), the task that ended without a result (the killed one, first) and
    the one that raised, each on its node (the run record), and shows the end of the killed task's log."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "PAUSE").touch()
    jid = submit_tiny(run, "--nodes", "2", epochs=2, cache=cache, requeues=0)
    wait_until(lambda: _pauses(run) == 1, 300, "the hold after the first checkpoint")
    kill_task(jid, "node2", 1)
    (run / "PAUSE").unlink()
    assert wait_ended([jid], 120) == {jid: "FAILED"}
    events = read_events(run)
    assert [e["event"] for e in events] == ["retry-refused"], events
    st = simsiam("submit", "status", str(run))
    assert st.returncode == 1
    assert f"stage 'pretrain' failed (job {jid}: FAILED)" in st.stdout
    assert re.search(rf"failed step {jid}\.0 \(\S+\) on node\[1-2\]: FAILED, exit code 1\n", st.stdout), st.stdout
    tasks = [x.strip() for x in st.stdout.splitlines() if x.strip().startswith("task ")]
    assert tasks == ["task 1 (rank 1 on node2): ended without a result (its process was killed or lost)",
                     "task 0 (rank 0 on node1): raised an error"], st.stdout
    assert f"{jid}_1_log.err (last 20 lines)" in st.stdout
    assert "[submit] start: rank 1/2 (local 0) on node2, attempt 1" in st.stdout
    assert _ckpt_epoch(run) == 1 and not (run / "results.json").exists()


def test_pipeline_on_two_nodes(tmp_path, cache):
    """The whole pipeline with pretraining, linear evaluation and the detection trial spread over both nodes
    (convert, kNN and the table on one)."""
    from pretrain.generated.rehearsal import make_detection_like
    det = tmp_path / "detectron2"
    make_detection_like(det)
    out = tmp_path / "pipe"
    r = simsiam("submit", "pipeline", "--nodes", "2", "--time", "10", "--output", str(out),
                "--pretrain-args", " ".join(tiny(cache, "train.epochs=1", "model.arch=resnet50", "model.dim=256",
                                                 "model.pred_dim=64")),
                "--detect-args", f"--config tiny --data-root {det} --train-dataset voc_2007_trainval "
                                 "--test-dataset voc_2007_test INPUT.MIN_SIZE_TRAIN (128,) SOLVER.MAX_ITER 2 "
                                 "SOLVER.STEPS () SOLVER.WARMUP_ITERS 1 SOLVER.IMS_PER_BATCH 2 "
                                 "SIMSIAM.MAX_TRAIN_IMAGES 8 SIMSIAM.MAX_TEST_IMAGES 2",
                "--knn-args", f"--cache-dir {cache} data.image_size=32",
                "--linear-args", f"data.cache_dir={cache} data.image_size=32 data.limit_per_class=8 data.workers=0 "
                                 "train.epochs=1 train.batch_size=32 train.eval_batch_size=32", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[submit] all jobs completed" in r.stdout
    for stage in ("pretrain", "linear"):
        log = (out / stage / "log.txt").read_text()
        assert "2 processes" in log or "over 2 processes" in log, (stage, log[-2000:])
        jid = json.loads((out / "pipeline.json").read_text())["stages"][stage]["jobs"][0]
        hosts = re.findall(r"hostname=(node\d)", "".join(p.read_text() for p in (out / stage / "slurm").glob(
            f"{jid}_*_log.out")))
        assert sorted(set(hosts)) == ["node1", "node2"], (stage, hosts)
    for stage in ("knn", "linear"):
        assert json.loads((out / stage / "results.json").read_text())["metrics"]
    assert (out / "convert" / "backbone_detectron2.pkl").is_file() and (out / "table.md").is_file()
    trial = json.loads((out / "detection" / "trial_0" / "results.json").read_text())
    assert trial["config"]["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"   # one trial over two CPU processes
    assert json.loads((out / "detection" / "results.json").read_text())["n_trials"] == 1
