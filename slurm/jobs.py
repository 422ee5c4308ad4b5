"""What runs inside a submitted job, and how the submitting side follows jobs.

`StageCall` is the callable submitit pickles: it exports the env:// variables of torch.distributed
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and calls `<module>.main(argv)`, the same entry
point as `simsiam <stage>`. The training code therefore never knows it runs under SLURM.

Preemption / time limit: SLURM sends USR2 (`--signal=USR2@<delay>`); submitit calls `StageCall.checkpoint()`,
which returns a DelayedSubmission of the same call, so the job is requeued and reruns the same command; the
stage resumes from the checkpoint in its output folder. Pretraining loses a few steps, not an epoch: for it the
signal first asks training to stop after its current step and write a checkpoint with its position in the
epoch (StageCall.defer_preemption); the requeue follows once it has. Requeues are bounded (`max_requeues`)
and every one is logged to `<output>/requeues.jsonl`. A job requeued by the scheduler itself (`scontrol requeue`, node
failure) is counted and logged the same way when it starts again.

A task that dies by itself (killed, out of memory, its process gone) is requeued by neither SLURM nor submitit.
Policy: the other ranks of a multi-task stage see their next collective fail (at once when the peer's process
is gone, else after the bounded collective timeout of pretrain.distributed), and the first of them to notice
requeues the whole job (`scontrol requeue`, recorded as a `retry` event with the rank, host and error it saw),
within the same --max-requeues budget; the job then resumes from its last checkpoint like after a preemption.
A stage that ends with its own error code (bad input: exit 2) is not retried: it would fail the same way.

Following jobs (`simsiam submit status`, and `simsiam submit` while it waits) reads records only: the state,
nodes, time and failed steps of a job from SLURM's accounting (sacct; squeue for a job too new for it); the
ranks and the position of a run from the run record its rank 0 writes (pretrain.frame.RunRecord,
<output>/run_state.json); which tasks ended with an error or without any result from submitit's result file of
each task. sacct keeps no per-task exit codes (a step's ExitCode is the largest of its tasks'), hence the
result files. The end of a task's log is shown as it is, never parsed.

Only this package reads SLURM variables (SLURM_RESTART_COUNT, SLURM_JOB_ID) or imports submitit.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import submitit
from submitit.core.utils import JobPaths

REQUEUE_LOG = "requeues.jsonl"
ATTEMPT_MARK = "[submit] start:"


class StageFailed(RuntimeError):
    """A stage's main() returned a non-zero exit code (the job fails, its dependants do not start)."""


class RequeueLimitError(RuntimeError):
    """The job was requeued more often than allowed."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def append_event(run_dir: Path, event: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / REQUEUE_LOG, "a") as f:
        f.write(json.dumps({"time": _now(), **event}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / REQUEUE_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def export_distributed_env() -> dict[str, str]:
    """Inside a submitit job (SLURM or local executor): export the env:// variables of this task.

    CUDA_VISIBLE_DEVICES is left as the scheduler set it: every task sees its node's GPUs and picks
    cuda:LOCAL_RANK, as under torchrun. Outside a submitit job nothing is exported (single process).
    """
    try:
        dist = submitit.helpers.TorchDistributedEnvironment()
    except RuntimeError:  # not started by submitit: a plain single process
        return {}
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: os.environ[k] for k in keys}


def scheduler_restarts() -> int:
    """How often SLURM restarted this job (requeue by submitit, by `scontrol requeue`, or a node failure)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def finished(done: str | Path) -> bool:
    """Is a stage finished? Its results.json (or the `done` file it names) exists and does not say
    `"complete": false` (pretraining writes results.json also when it stops early, to be resumed)."""
    from pretrain.results import ResultsError, read as read_results

    path = Path(done)
    if not path.is_file():
        return False
    try:
        doc = read_results(path)
    except (OSError, ResultsError):
        return True  # not a results document: a marker file whose presence is the whole message
    return doc.complete is not False


PREEMPTION_MARK = "[submit] preemption signal"
STOPPABLE = ("pretrain.main",)   # stages that stop after their current step on request (a mid-epoch checkpoint)


class StageCall(submitit.helpers.Checkpointable):
    """`<module>.main(argv)` as a requeueable job.

    module: "pretrain.main", "transfer.evaluation.linear", ... (the module behind `simsiam <stage>`)
    output: the stage's run folder (requeues.jsonl goes there; the stage is skipped when `done` says so)
    done: optional path whose existence means the stage is finished (default: <output>/results.json)
    """

    def __init__(self, stage: str, module: str, argv: list[str], output: str | Path, *,
                 max_requeues: int = 3, threads: int = 0, done: str | Path | None = None) -> None:
        self.stage = stage
        self.module = module
        self.argv = [str(a) for a in argv]
        self.output = str(output)
        self.max_requeues = int(max_requeues)
        self.threads = int(threads)
        self.done = str(done) if done else str(Path(output) / "results.json")
        self.requeues = 0  # requeues asked for by checkpoint(); carried in the pickled callable

    def __repr__(self) -> str:
        return f"StageCall({self.stage}: {self.module} {' '.join(self.argv)})"

    def attempts(self) -> int:
        return max(self.requeues, scheduler_restarts())

    def __call__(self) -> dict[str, Any]:
        dist = export_distributed_env()
        rank = int(dist.get("RANK", "0"))
        out = Path(self.output)
        restarts = self.attempts()
        if restarts and rank == 0:
            append_event(out, {"event": "restart", "stage": self.stage, "restart": restarts,
                               "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
                               "host": socket.gethostname()})
        if restarts > self.max_requeues:
            raise RequeueLimitError(f"stage '{self.stage}' was requeued {restarts} times, more than "
                                    f"--max-requeues {self.max_requeues}; see {out / REQUEUE_LOG}")
        if finished(self.done):
            print(f"[submit] stage '{self.stage}' already finished ({self.done}); nothing to do", flush=True)
            return {"stage": self.stage, "output": self.output, "skipped": True}
        if self.threads > 0:
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
            import torch
            torch.set_num_threads(self.threads)
        world = int(dist.get("WORLD_SIZE", "1"))
        started = (f"{ATTEMPT_MARK} rank {rank}/{world} (local {dist.get('LOCAL_RANK', '0')}) on "
                   f"{socket.gethostname()}, attempt {restarts + 1}: {self.module}.main({self.argv})")
        print(started, flush=True)
        print(started, file=sys.stderr, flush=True)  # separates the attempts in the appended stderr log
        deferred = self.defer_preemption()
        try:
            rc = importlib.import_module(self.module).main(list(self.argv))
        except Exception as e:
            if world > 1 and peer_failure(e):
                self.retry_after_peer_failure(rank, e)
            raise
        if rc:
            raise StageFailed(f"stage '{self.stage}' ({self.module}) exited with code {rc}")
        if deferred.get("signal") is not None and not finished(self.done):
            # the stage stopped after its current step and wrote its checkpoint: now submitit's requeue
            print(f"[submit] rank {rank}: stopped for the preemption signal; checkpoint written", flush=True)
            deferred["handler"](deferred["signal"], None)
        return {"stage": self.stage, "output": self.output, "skipped": False}

    def defer_preemption(self) -> dict[str, Any]:
        """Pretraining stops mid-epoch on SLURM's preemption / time-limit signal (USR2): the signal only asks
        training to stop after its current step (pretrain.train.request_stop, which writes a checkpoint with
        its data position and returns), and submitit's own handler (checkpoint() + requeue) runs once the
        stage has returned. Other stages keep submitit's immediate requeue (they resume from their last
        checkpoint). Returns the record the handler fills in: {"handler", "signal"}."""
        deferred: dict[str, Any] = {"handler": None, "signal": None}
        sig = signal.SIGUSR2
        handler = signal.getsignal(sig)
        if self.module not in STOPPABLE or not callable(handler):
            return deferred
        from pretrain.train import request_stop

        def on_signal(signum: int, frame: Any) -> None:
            deferred.update(handler=handler, signal=signum)
            request_stop()
            print(f"{PREEMPTION_MARK} {signal.Signals(signum).name}: training stops after its current step",
                  flush=True)

        signal.signal(sig, on_signal)
        return deferred

    def retry_after_peer_failure(self, rank: int, error: BaseException) -> bool:
        """Another rank is gone (see the module doc): requeue the whole job within --max-requeues. Only the first
        surviving rank to get here acts (an exclusive marker file next to submitit's logs). True when requeued."""
        out = Path(self.output)
        job_id = own_job_id()
        done_so_far = self.attempts()
        if not job_id or not claim_retry(job_id, done_so_far):
            return False
        event = {"stage": self.stage, "rank": rank, "host": socket.gethostname(), "job_id": job_id,
                 "error": first_line(error), "max_requeues": self.max_requeues}
        if done_so_far >= self.max_requeues:
            append_event(out, {"event": "retry-refused", "requeues": done_so_far, **event})
            return False
        append_event(out, {"event": "retry", "retry": done_so_far + 1, **event})
        r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if r.returncode > 0:  # the scheduler refused; a negative code is scontrol killed by the step's own
            # teardown (the dead task ends the step) after its request went out: the job is being requeued
            append_event(out, {"event": "retry-failed", "reason": r.stderr.strip()[:300], **event})
            return False
        print(f"[submit] rank {rank}: another task of this job is gone ({first_line(error)}); job {job_id} "
              f"requeued (attempt {done_so_far + 1} of --max-requeues {self.max_requeues})", flush=True)
        return True

    def checkpoint(self, *args: Any, **kwargs: Any) -> Optional[submitit.helpers.DelayedSubmission]:
        """Called by submitit on rank 0 when the job is preempted or reaches its time limit."""
        out = Path(self.output)
        done_so_far = self.attempts()
        if done_so_far >= self.max_requeues:
            append_event(out, {"event": "requeue-refused", "stage": self.stage, "requeues": done_so_far,
                               "max_requeues": self.max_requeues, "job_id": os.environ.get("SLURM_JOB_ID")})
            return None
        self.requeues = done_so_far + 1
        append_event(out, {"event": "requeue", "stage": self.stage, "requeue": self.requeues,
                           "max_requeues": self.max_requeues, "job_id": os.environ.get("SLURM_JOB_ID")})
        return submitit.helpers.DelayedSubmission(self)


PEER_FAILURE_WORDS = ("closed by peer", "reset by peer", "broken pipe", "connection refused", "timed out",
                      "timeout", "gloo", "nccl", "socket", "collective", "watchdog")


def peer_failure(error: BaseException) -> bool:
    """Does this exception say that the collective failed because another rank is gone (rather than that the
    stage itself broke)? torch.distributed's own error classes, or a RuntimeError naming the transport."""
    import torch.distributed as tdist
    if isinstance(error, getattr(tdist, "DistError", ())):
        return True
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, RuntimeError) and any(w in text for w in PEER_FAILURE_WORDS)


def first_line(error: BaseException) -> str:
    """'Type: first sentence' of an exception, without a C++ source location prefix ('[.../pair.cc:561] ')."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    text = re.sub(r"^\[[^\]]+\.(?:cc|cpp|h|hpp):\d+\]\s*", "", lines[0] if lines else "")
    text = re.split(r"(?<=\S)\. (?=[A-Z])", text)[0]
    return f"{type(error).__name__}: {text}"[:300]


def own_job_id() -> Optional[str]:
    """This job's SLURM id as scontrol names it ('123', or '123_4' for an array element); None outside SLURM."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID") or None


def claim_retry(job_id: str, attempt: int) -> bool:
    """True for the first caller per (job, attempt): an O_EXCL marker in submitit's log folder."""
    try:
        folder = submitit.JobEnvironment().paths.folder
    except RuntimeError:
        return False
    try:
        fd = os.open(Path(folder) / f"{job_id}_retry_{attempt}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    os.close(fd)
    return True


class CallFunction(submitit.helpers.Checkpointable):
    """A plain Python function as a job (used by the trial summary and by tests)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self) -> Any:
        export_distributed_env()
        return self.fn(*self.args, **self.kwargs)


def distributed_check() -> dict[str, Any]:
    """A gloo all_reduce over all tasks of the job (`simsiam submit check`): each rank adds rank+1, so every
    rank must see world*(world+1)/2. Returns what this rank saw."""
    import torch
    import torch.distributed as dist
    env = export_distributed_env()
    world = int(env.get("WORLD_SIZE", "1"))
    if world > 1:
        from pretrain.distributed import collective_timeout
        dist.init_process_group("gloo", timeout=collective_timeout())
    t = torch.tensor([float(int(env.get("RANK", "0")) + 1)])
    if world > 1:
        dist.all_reduce(t)
        dist.destroy_process_group()
    return {"rank": int(env.get("RANK", "0")), "world_size": world, "local_rank": int(env.get("LOCAL_RANK", "0")),
            "host": socket.gethostname(), "sum": t.item(), "expected": world * (world + 1) / 2}


# ---------------------------------------------------------------------------------------------- following jobs

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED_FINAL", "GONE", "FINISHED", "INTERRUPTED", "DONE"}


def _expand_ids(field: str) -> list[str]:
    """'12' -> ['12']; '12_3' -> ['12_3']; '12_[0-2,5%2]' -> ['12_0', '12_1', '12_2', '12_5']."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", field)
    if not m:
        return [field]
    ids = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids.extend(f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return ids


SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "NodeList", "NNodes", "NTasks", "Elapsed", "Timelimit",
                "Start")


def sacct_records(job_ids: Iterable[str]) -> Optional[dict[str, dict[str, Any]]]:
    """SLURM's accounting of each job (also array elements '123_4') and of its steps, from one sacct call:
    {job_id: {"state", "exit_code", "nodes", "node_count", "elapsed", "time_limit", "start",
    "steps": [{"step", "name", "state", "exit_code", "nodes", "tasks"}]}}. None when the cluster keeps no accounting
    (sacct missing, or it refuses: "Slurm accounting storage is disabled")."""
    mains = sorted({str(j).split("_")[0] for j in job_ids})
    if not mains:
        return {}
    if not shutil.which("sacct"):
        return None
    r = subprocess.run(["sacct", "-n", "-P", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(mains)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    jobs: dict[str, dict[str, Any]] = {}
    for line in r.stdout.splitlines():
        row = dict(zip(SACCT_FIELDS, line.split("|")))
        if len(row) != len(SACCT_FIELDS):
            continue
        jid, _, step = row["JobID"].partition(".")
        state = (row["State"].split() or ["UNKNOWN"])[0].upper()  # "CANCELLED by 0" -> CANCELLED
        if step:
            for one in _expand_ids(jid):
                jobs.setdefault(one, {"steps": []})["steps"].append(
                    {"step": row["JobID"], "name": row["JobName"], "state": state,
                     "exit_code": row["ExitCode"], "nodes": row["NodeList"],
                     "tasks": int(row["NTasks"]) if row["NTasks"].isdigit() else None})
            continue
        for one in _expand_ids(jid):
            jobs.setdefault(one, {"steps": []}).update(
                state=state, exit_code=row["ExitCode"], nodes=row["NodeList"], node_count=row["NNodes"],
                elapsed=row["Elapsed"], time_limit=row["Timelimit"], start=row["Start"])
    return {j: d for j, d in jobs.items() if "state" in d}


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """State of each SLURM job id (also array elements '123_4'): sacct; for the ids it does not know (no
    accounting, or a job submitted a moment ago whose record has not reached the database yet) squeue, which
    knows finished jobs for MinJobAge seconds. Ids neither knows are reported as 'GONE'."""
    ids = [str(j) for j in job_ids]
    records = sacct_records(ids) or {}
    found = {j: records[j]["state"] for j in ids if j in records}
    missing = sorted({j.split("_")[0] for j in ids if j not in found})
    if missing and shutil.which("squeue"):
        r = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(missing)],
                           capture_output=True, text=True)
        for line in (r.stdout if r.returncode == 0 else "").splitlines():
            jid, _, state = line.partition("|")
            for one in _expand_ids(jid.strip()):
                found.setdefault(one, (state.split() or ["UNKNOWN"])[0].upper())
    return {j: found.get(j, "GONE") for j in ids}


def job_state(job: submitit.Job) -> str:
    """State of a submitit job: COMPLETED/FAILED/... for SLURM; for local jobs from the process and result."""
    if isinstance(job, submitit.SlurmJob):
        return slurm_states([job.job_id])[job.job_id]
    if not job.done():
        return "RUNNING"
    return "COMPLETED" if job.exception() is None else "FAILED"


def tail_of(paths: JobPaths, lines: int = 30) -> str:
    """The last lines of a task's stderr (else stdout), shown as they are."""
    for path in (paths.stderr, paths.stdout):
        if path.is_file():
            body = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            return f"{path} (last {lines} lines):\n{body}"
    return f"(no log yet under {paths.folder})"


# ------------------------------------------------------------------------------------- multi-node job reports

def exit_code_words(code: str) -> str:
    """sacct's ExitCode 'R:S' (return code : signal) in words: 'exit code 1', 'signal 9 (SIGKILL)'."""
    ret, _, sig = code.partition(":")
    if sig.isdigit() and int(sig):
        try:
            return f"signal {sig} ({signal.Signals(int(sig)).name})"
        except ValueError:
            return f"signal {sig}"
    return f"exit code {ret}" if ret else "no exit code"


def failed_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps of a job (sacct_records) that did not complete: its task steps (srun: '<job>.0', ...), or its
    batch script when no task step failed (it failed before or without srun); 'extern' steps are left out."""
    bad = [s for s in record.get("steps", []) if s["state"] not in ("COMPLETED", "RUNNING", "PENDING")
           and not s["step"].endswith((".extern", ".batch"))]
    return bad or [s for s in record.get("steps", []) if s["step"].endswith(".batch")
                   and s["state"] not in ("COMPLETED", "RUNNING", "PENDING")]


def sacct_time(text: str) -> Optional[float]:
    """sacct's Start ('2026-01-02T03:04:05', the cluster's local time) as a Unix time; None when unknown."""
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def sacct_seconds(text: str) -> Optional[int]:
    """sacct's durations ('[D-]HH:MM:SS', 'MM:SS'; 'UNLIMITED') in seconds; None when not a duration."""
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds + 86400 * int(days or 0)


def task_outcomes(folder: str | Path, job_id: str, tasks: int, since: Optional[float]) -> list[str]:
    """What each task of a job left as its result (submitit's <job>_<task>_result.pkl, whose tag says
    'success' or 'error'): 'success', 'error', or 'none' (the process ended without writing one: killed or
    lost). Result files older than `since` (this attempt's start) belong to an earlier attempt: 'none'."""
    import pickle
    out = []
    for task in range(tasks):
        path = JobPaths(Path(folder), job_id=job_id, task_id=task).result_pickle
        tag = "none"
        try:
            if since is None or path.stat().st_mtime >= since - 1:
                with open(path, "rb") as f:
                    tag = str(pickle.load(f)[0])
        except (OSError, EOFError, pickle.UnpicklingError, IndexError, TypeError, AttributeError, ImportError):
            pass
        out.append(tag)
    return out


def run_progress(output: str | Path) -> dict[str, Any]:
    """{epochs_done, epochs, seconds_per_epoch} of a stage's run folder: its metrics.jsonl epoch lines (the
    last one per epoch) and the epoch count of its config.json ('train.epochs' or 'epochs')."""
    out = Path(output)
    done: dict[int, float] = {}
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("epoch"), int):
                done[rec["epoch"]] = float(rec.get("time") or 0.0)
    total = None
    config = out / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
            total = (cfg.get("train") or {}).get("epochs", cfg.get("epochs"))
        except ValueError:
            pass
    times = [t for t in done.values() if t > 0]
    return {"epochs_done": max(done, default=0), "epochs": total,
            "seconds_per_epoch": sum(times) / len(times) if times else None}
