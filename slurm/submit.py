"""`simsiam submit <stage> [stage args...] [resources...]`: run a stage, or the whole pipeline, as SLURM jobs.

  simsiam submit pretrain --config imagenet_r50_100ep --output runs/r50 data.root=/data/in1k \\
      --nodes 1 --gpus-per-node 8 --cpus-per-task 10 --mem-gb 400 --partition gpu --time 4320
  simsiam submit detect --weights runs/r50/convert/backbone_detectron2.pkl --config voc0712 \\
      --output runs/r50/detection --trials 5 --seed 0 --gpus-per-node 8        # a job array, one trial per task
  DETECTRON2_DATASETS=/data/d2 simsiam submit pipeline --output runs/r50 --gpus-per-node 8 --trials 5 \\
      --pretrain-args "--config imagenet_r50_200ep data.root=/data/in1k"   # pretrain -> convert -> knn, linear,
                                                                           # detection (voc07) -> table
  simsiam submit status runs/r50        # each stage (or one stage's run folder): nodes, ranks, progress, failures
                                        # (from sacct and each run folder's run_state.json)
  simsiam submit check --nodes 2 --gpus-per-node 8 --log-dir /tmp/chk    # all_reduce across the allocation
  simsiam submit ablation table1 --output runs/table1 --data /data/in1k --gpus-per-node 8   # a paper experiment

Everything that is not one of the options below is passed to the stage unchanged (put stage arguments
after `--` if one collides with an option name). One task per GPU; each task gets the env:// variables of
torch.distributed and calls the stage's `main(argv)` (see slurm/jobs.py). Logs: <run folder>/slurm/.

Nothing is queued until every stage's command line has passed its own parser (transfer/stages.py) and the
datasets it reads have been checked (transfer/preflight.py); otherwise one line names the stage and the
argument, and the exit code is 2. In a pipeline, kNN and linear read the pretraining dataset unless
--knn-args / --linear-args name one, and detection without --config runs voc07 on --data-root or
$DETECTRON2_DATASETS. `--dry-run` checks and prints the command lines without submitting. Every refusal of
`simsiam submit` (a bad option, a stage that cannot run, a status folder with nothing submitted) is one line
`simsiam submit: error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pretrain.errors import InputError
from pretrain.frame import guard
from transfer import preflight, stages


class SubmitError(InputError, RuntimeError):
    """What the user gave `simsiam submit` cannot be submitted: one line, exit code 2 (pretrain.frame.guard)."""


# ------------------------------------------------------------------------------------------ resources / options

@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None     # default: one per GPU, or 1 on CPU
    cpus_per_task: Optional[int] = None      # default: 8 with GPUs, else 1
    mem_gb: Optional[float] = None
    partition: Optional[str] = None
    time_min: int = 1440
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    sbatch: tuple[tuple[str, Any], ...] = ()  # extra `#SBATCH --key=value` lines
    setup: tuple[str, ...] = ()               # shell lines run before srun (module load ..., source venv)
    array_parallelism: Optional[int] = None
    max_requeues: int = 3
    signal_delay_s: int = 120
    executor: str = "auto"                   # auto | slurm | local
    log_dir: Optional[str] = None

    @property
    def tasks(self) -> int:
        if self.tasks_per_node:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def cpus(self) -> int:
        if self.cpus_per_task:
            return self.cpus_per_task
        return 8 if self.gpus_per_node > 0 else 1

    def light(self) -> "Resources":
        """The same allocation cut to one task on one node (convert, kNN, tables)."""
        from dataclasses import replace
        return replace(self, nodes=1, tasks_per_node=1, gpus_per_node=min(1, self.gpus_per_node))


def _positive(name: str, value: Optional[int], zero_ok: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SubmitError(f"--{name.replace('_', '-')} must be {'>= 0' if zero_ok else '> 0'}, got {value}")


def parse_sbatch(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """--sbatch KEY=VALUE (or a bare KEY for a flag) -> ((key, value), ...), e.g. mail-type=END, exclusive."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or (eq and not value):
            raise SubmitError(f"--sbatch expects KEY=VALUE or KEY, got '{item}'")
        out.append((key, value if eq else True))
    return tuple(out)


def add_resource_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("resources (sbatch)")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one task per GPU")
    g.add_argument("--tasks-per-node", type=int, default=None,
                   help="tasks (processes) per node; default = --gpus-per-node, or 1 without GPUs "
                        "(set 2+ for multi-process CPU runs with gloo)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="default 8 with GPUs, else 1")
    g.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default: the partition's)")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", type=int, default=1440, help="time limit in minutes per job (default 1440)")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable, e.g. --sbatch mail-type=END --sbatch exclusive")
    g.add_argument("--setup", action="append", default=[], metavar="SHELL",
                   help="shell line run in the batch script before the tasks start (module load ...)")
    g.add_argument("--array-parallelism", type=int, default=None, help="max array tasks running at once")
    g.add_argument("--max-requeues", type=int, default=3, help="bound on preemption/time-limit requeues")
    g.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which the job checkpoints and requeues")
    g.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                   help="slurm, local (subprocesses on this machine), auto = slurm when sbatch exists")
    g.add_argument("--log-dir", default=None, help="submitit folder (default: <run folder>/slurm)")


def resources_from_args(a: argparse.Namespace) -> Resources:
    _positive("nodes", a.nodes)
    _positive("gpus_per_node", a.gpus_per_node, zero_ok=True)
    _positive("tasks_per_node", a.tasks_per_node)
    _positive("cpus_per_task", a.cpus_per_task)
    _positive("time", a.time)
    _positive("array_parallelism", a.array_parallelism)
    _positive("max_requeues", a.max_requeues, zero_ok=True)
    if a.mem_gb is not None and a.mem_gb <= 0:
        raise SubmitError(f"--mem-gb must be > 0, got {a.mem_gb}")
    if a.tasks_per_node and a.gpus_per_node and a.tasks_per_node != a.gpus_per_node:
        raise SubmitError(f"--tasks-per-node {a.tasks_per_node} differs from --gpus-per-node {a.gpus_per_node}: "
                          "the stages run one task per GPU")
    return Resources(nodes=a.nodes, gpus_per_node=a.gpus_per_node, tasks_per_node=a.tasks_per_node,
                     cpus_per_task=a.cpus_per_task, mem_gb=a.mem_gb, partition=a.partition, time_min=a.time,
                     account=a.account, qos=a.qos, constraint=a.constraint, sbatch=parse_sbatch(a.sbatch),
                     setup=tuple(a.setup), array_parallelism=a.array_parallelism, max_requeues=a.max_requeues,
                     signal_delay_s=a.signal_delay, executor=a.executor, log_dir=a.log_dir)


def slurm_parameters(res: Resources, name: str, dependency: Optional[str] = None) -> dict[str, Any]:
    """The parameters of submitit's SlurmExecutor.update_parameters for one job (or job array)."""
    p: dict[str, Any] = {
        "job_name": name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks,
        "cpus_per_task": res.cpus,
        "signal_delay_s": res.signal_delay_s,
    }
    if res.gpus_per_node:
        p["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        p["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key):
            p[key] = getattr(res, key)
    if res.array_parallelism:
        p["array_parallelism"] = res.array_parallelism
    if res.setup:
        p["setup"] = list(res.setup)
    extra: dict[str, Any] = {"requeue": True}
    if dependency:
        extra["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"  # a failed parent cancels its dependants instead of leaving them pending
    extra.update(dict(res.sbatch))
    p["additional_parameters"] = extra
    return p


def executor_kind(res: Resources) -> str:
    if res.executor != "auto":
        return res.executor
    return "slurm" if shutil.which("sbatch") else "local"


def make_executor(res: Resources, folder: Path, name: str, dependency: Optional[str] = None):
    import submitit
    kind = executor_kind(res)
    if kind == "slurm":
        if not shutil.which("sbatch"):
            raise SubmitError("--executor slurm: sbatch is not on PATH (no SLURM here; use --executor local)")
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_requeues)
        ex.update_parameters(**slurm_parameters(res, name, dependency))
        return ex
    if res.nodes != 1:
        raise SubmitError(f"--executor local runs on this machine only: --nodes must be 1, got {res.nodes}")
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=res.max_requeues)
    ex.update_parameters(timeout_min=res.time_min, tasks_per_node=res.tasks, gpus_per_node=res.gpus_per_node,
                         signal_delay_s=min(res.signal_delay_s, 30))
    return ex


def dependency_string(jobs: list) -> Optional[str]:
    ids = sorted({j.job_id.split("_")[0] for j in jobs if j is not None})
    return ("afterok:" + ":".join(ids)) if ids else None


# ------------------------------------------------------------------------------------------------ one stage

def parse_stage(stage: str, argv: list[str]) -> tuple[argparse.Namespace, Path, Path]:
    """(argv parsed by the stage's own parser, run folder, file whose existence means the stage is finished)."""
    try:
        spec = stages.get(stage)
        ns = stages.parse(stage, argv)
        run_dir, done = spec.paths(ns)
    except stages.StageArgError as e:
        raise SubmitError(str(e)) from None
    return ns, run_dir, done


@dataclass
class Submitted:
    stage: str
    output: Path
    job: Any = None                     # submitit Job (None when skipped)
    jobs: list = field(default_factory=list)  # array elements (detection trials)
    skipped: bool = False
    outputs: list = field(default_factory=list)  # the run folder of each array element (a sweep's arrays)

    @property
    def all_jobs(self) -> list:
        return [j for j in ([self.job] if self.job is not None else []) + self.jobs]


def submit_stage(stage: str, argv: list[str], res: Resources, dependency: Optional[str] = None,
                 name: Optional[str] = None) -> Submitted:
    from .jobs import StageCall
    if stage not in stages.SUBMITTABLE:
        raise SubmitError(f"unknown stage '{stage}' (known: {', '.join(stages.SUBMITTABLE)}, pipeline)")
    ns, run_dir, done = parse_stage(stage, argv)
    if done.exists():
        print(f"[submit] {stage}: already finished ({done}); not submitted")
        return Submitted(stage, run_dir, skipped=True)
    if stage == "detect" and ns.trials > 1:
        return submit_trials(ns, res, dependency, name)
    folder = Path(res.log_dir) if res.log_dir else run_dir / "slurm"
    ex = make_executor(res, folder, name or f"simsiam-{stage}", dependency)
    call = StageCall(stage, stages.get(stage).module, argv, run_dir, max_requeues=res.max_requeues,
                     threads=res.cpus, done=done)
    job = ex.submit(call)
    print(f"[submit] {stage}: job {job.job_id} ({executor_kind(res)}, {res.nodes} node(s) x {res.tasks} task(s)); "
          f"logs {folder}")
    return Submitted(stage, run_dir, job=job)


# ------------------------------------------------------------------------------------ detection trial arrays

def trial_argv(ns: argparse.Namespace, index: int) -> list[str]:
    """The detect command of trial `index` (`--trial-index I`: seed S+I, folder DIR/trial_I), written from the
    parsed detect command by its own parser: options first, detectron2 KEY VALUE pairs last."""
    one = argparse.Namespace(**{**vars(ns), "trial_index": index})
    return stages.format_argv(stages.parser("detect"), one)


def submit_trials(ns: argparse.Namespace, res: Resources, dependency: Optional[str] = None,
                  name: Optional[str] = None) -> Submitted:
    """A parsed `detect --trials N --seed S --output DIR` as a job array of N one-trial jobs
    (seed S+i, folder DIR/trial_i), then a summary job (afterok) writing DIR/results.json."""
    from .jobs import CallFunction, StageCall, finished
    run_dir, _ = stages.get("detect").paths(ns)
    n = ns.trials
    folder = Path(res.log_dir) if res.log_dir else run_dir / "slurm"
    calls = [StageCall("detect", stages.get("detect").module, trial_argv(ns, i), run_dir / f"trial_{i}",
                       max_requeues=res.max_requeues, threads=res.cpus) for i in range(n)]
    ex = make_executor(res, folder, name or "simsiam-detect", dependency)
    todo = [c for c in calls if not finished(c.done)]
    trial_jobs = []
    if todo:
        with ex.batch():
            for c in todo:
                trial_jobs.append(ex.submit(c))
    print(f"[submit] detect: {len(trial_jobs)} trial job(s) {[j.job_id for j in trial_jobs]}, "
          f"{n - len(todo)} already finished; logs {folder}")
    if executor_kind(res) == "local":  # no scheduler dependencies: let the trials finish first
        wait_all({"detect": Submitted("detect", run_dir, jobs=trial_jobs)}, quiet=True)
        dep = None
    else:
        dep = dependency_string(trial_jobs) or dependency
    sex = make_executor(res.light(), folder, "simsiam-detect-summary", dep)
    summary = sex.submit(CallFunction(summarize_trials, str(run_dir), n))
    print(f"[submit] detect summary: job {summary.job_id} (after the trials)")
    return Submitted("detect", run_dir, job=summary, jobs=trial_jobs)


def trial_results(run_dir: Path, index: int) -> Path:
    """results.json of array trial `index`: `detect --trials N --trial-index i --output DIR` writes
    DIR/trial_i/results.json, the same layout as `simsiam detect --trials N`."""
    return run_dir / f"trial_{index}" / "results.json"


def summarize_trials(run_dir: str, n: int) -> str:
    """DIR/results.json over the array's trials, in the layout of `simsiam detect --trials N`: "metrics" = mean,
    "std" = sample std, "trials" = per-trial list (transfer.evaluation.trials, shared with the detection stage; no
    detectron2 import here); written through the detection stage's frame in DIR."""
    from pretrain.frame import StageRun
    from pretrain.results import Results, read
    from transfer.evaluation.trials import aggregate, summary_extra, trial_entry
    run = Path(run_dir)
    docs = []
    for i in range(n):
        path = trial_results(run, i)
        if not path.is_file():
            raise FileNotFoundError(f"detection trial {i} has no results: {path}")
        docs.append(read(path))
    trials = [trial_entry(i, d.seed, d.metrics, str(d.path)) for i, d in enumerate(docs)]
    first = docs[0]
    mean, std = aggregate([t["metrics"] for t in trials])
    shared = {k: first.extra[k] for k in ("iterations", "test_datasets", "train_datasets") if k in first.extra}
    doc = Results.new(task="detection", dataset=first.dataset, metrics=mean,
                      config={k: v for k, v in first.config.items() if k not in ("seed", "OUTPUT_DIR")},
                      source=first.source, batch_size=first.batch_size,
                      extra={**summary_extra(trials, std), "job_array": True, **shared, "protocol": first.protocol})
    with StageRun("detect", run, device="cpu") as sr:
        path = sr.results(doc)
    print(f"detection summary over {n} trial(s): mean {json.dumps(mean)}; std {json.dumps(std)}; {path}")
    return str(path)


# ------------------------------------------------------------------------------------------------- pipeline

def pipeline_argvs(out: Path, a: argparse.Namespace) -> dict[str, list[str]]:
    """Each stage's command line as the pipeline writes it, before any check (see plan_pipeline): the chain's
    arguments (transfer.stages.Chain), then --STAGE-args."""
    chain = stages.Chain(out)
    # explicit table inputs: only the stages of this pipeline become rows
    return {s: [*chain.argv(s, rows=tuple(a.stages), **_chain_options(s, a)), *shlex.split(getattr(a, f"{s}_args"))]
            for s in stages.CHAIN_STAGES}


def _chain_options(stage: str, a: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's options that reach the chain's arguments of `stage` (its trials and seed)."""
    return {"trials": a.trials, "seed": a.seed} if stage == "detect" else {}


def plan_pipeline(out: Path, a: argparse.Namespace) -> dict[str, list[str]]:
    """The command line of every selected stage, parsed by the stage's own parser, its config resolved and
    the datasets it reads checked (transfer.preflight), before anything is queued. The pretraining dataset
    (data.root of the resolved pretrain config) is the default dataset of kNN and linear. Raises
    SubmitError (one line: stage, argument, reason) on the first stage that cannot run."""
    raw = pipeline_argvs(out, a)
    chain = stages.Chain(out)
    planned: dict[str, preflight.Planned] = {}
    try:
        pre = preflight.plan("pretrain", raw["pretrain"], pipeline=True)
        reference = pre.data_root
        for stage in (s for s in stages.CHAIN_STAGES if s in a.stages):
            planned[stage] = p = preflight.plan(stage, raw[stage], reference, pipeline=True)
            for dest, value in chain.fixed(stage, **_chain_options(stage, a)).items():
                if str(getattr(p.ns, dest)) != value:
                    what = "the checkpoint" if dest == "src" else f"--{dest.replace('_', '-')}"
                    raise SubmitError(f"{stage}: {what} is set by the pipeline ({value}); "
                                      f"remove it from --{stage}-args")
        if "detect" in planned:
            preflight.check_same_backbone(pre, planned["detect"])
    except preflight.InputError as e:
        raise SubmitError(str(e)) from None
    return {s: p.argv for s, p in planned.items()}


def active_jobs(out: Path) -> list[str]:
    """Jobs of an earlier submission of this pipeline (RUN/pipeline.json) that are still queued or running."""
    from .jobs import TERMINAL, slurm_states
    path = out / "pipeline.json"
    if not path.is_file() or not shutil.which("squeue"):
        return []
    doc = json.loads(path.read_text())
    if doc.get("executor") != "slurm":
        return []
    ids = [j for s in doc["stages"].values() for j in s["jobs"]]
    return [j for j, st in slurm_states(ids).items() if st not in TERMINAL]


def submit_pipeline(out: Path, argvs: dict[str, list[str]], res: Resources) -> dict[str, Submitted]:
    """Submit the planned stages (plan_pipeline) in order, each depending on its parents (afterok)."""
    local = executor_kind(res) == "local"
    subs: dict[str, Submitted] = {}
    for stage in argvs:
        parents = [subs[p] for p in stages.LINK[stage].after if p in subs]
        if local:  # no scheduler dependencies: run the parents to completion first
            for p in parents:
                if not wait_all({p.stage: p}, quiet=True):
                    return subs
        dep = None if local else dependency_string([j for p in parents for j in p.all_jobs])
        r = res if stages.LINK[stage].full else res.light()
        subs[stage] = submit_stage(stage, argvs[stage], r, dependency=dep, name=f"simsiam-{stage}")
    manifest = {s: {"output": str(v.output), "skipped": v.skipped,
                    "jobs": [j.job_id for j in v.all_jobs],
                    "logs": [str(j.paths.folder) for j in v.all_jobs][:1],
                    "depends_on": [p for p in stages.LINK[s].after if p in subs]} for s, v in subs.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps({"executor": executor_kind(res), "stages": manifest}, indent=2))
    return subs


def _job_states(jobs: list) -> dict[str, str]:
    from .jobs import job_state, slurm_states
    import submitit
    slurm = [j for j in jobs if isinstance(j, submitit.SlurmJob)]
    states = slurm_states([j.job_id for j in slurm]) if slurm else {}
    for j in jobs:
        if j.job_id not in states:
            states[j.job_id] = job_state(j)
    return states


def wait_all(subs: dict[str, Submitted], poll_s: float = 3.0, quiet: bool = False) -> bool:
    """Follow the jobs until all finished; on the first failure report the stage, why it failed (see
    failure_report) and cancel the jobs that can no longer run. True when everything completed."""
    from .jobs import TERMINAL, sacct_records
    jobs = {j.job_id: (s, j) for s in subs.values() for j in s.all_jobs}
    last: dict[str, str] = {}
    while True:
        states = _job_states([j for _, j in jobs.values()])
        for jid, st in states.items():
            if not quiet and last.get(jid) != st:
                print(f"[submit] {jobs[jid][0].stage:<9} job {jid}: {st}", flush=True)
        last = states
        failed = [(jid, st) for jid, st in states.items() if st in TERMINAL and st != "COMPLETED"]
        # a job of the scheduler that vanished without a result counts as failed
        if failed:
            jid, st = failed[0]
            sub, job = jobs[jid]
            acct = (sacct_records([jid]) or {}).get(jid) if executor_kind_of(job) == "slurm" else None
            report = "\n".join(failure_report(jid, str(job.paths.folder), str(sub.output), acct, 30))
            print(f"\n[submit] stage '{sub.stage}' failed (job {jid}: {st}):\n{report}\n", file=sys.stderr,
                  flush=True)
            pending = [j for j, s in states.items() if s not in TERMINAL]
            if pending:
                cancel([jobs[j][1] for j in pending])
                names = sorted({jobs[j][0].stage for j in pending})
                print(f"[submit] cancelled the stages that depend on it: {', '.join(names)}", file=sys.stderr)
            return False
        if all(st == "COMPLETED" for st in states.values()):
            return True
        time.sleep(poll_s)


def executor_kind_of(job) -> str:
    import submitit
    return "slurm" if isinstance(job, submitit.SlurmJob) else "local"


def cancel(jobs: list) -> None:
    import submitit
    ids = [j.job_id for j in jobs if isinstance(j, submitit.SlurmJob)]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)
    for j in jobs:
        if not isinstance(j, submitit.SlurmJob):
            j.cancel(check=False)


def submitted_stages(out: Path) -> Optional[dict[str, Any]]:
    """What `status` reports on: RUN/pipeline.json of a pipeline, else the jobs of a single stage found in
    RUN/slurm/ (the latest `<jobid>_submission.sh`; its `--job-name=simsiam-<stage>`). None when neither."""
    path = out / "pipeline.json"
    if path.is_file():
        return json.loads(path.read_text())
    folder = out / "slurm"
    scripts = sorted(folder.glob("*_submission.sh"), key=lambda p: int(p.name.split("_")[0]))
    if not scripts:
        return None
    latest = scripts[-1]
    m = re.search(r"--job-name=simsiam-(\S+)", latest.read_text())
    stage = m.group(1) if m else "job"
    return {"executor": "slurm", "stages": {stage: {"output": str(out), "skipped": False,
                                                    "jobs": [latest.name.split("_")[0]], "logs": [str(folder)]}}}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _since(iso: Optional[str]) -> str:
    """'12 s ago' for an ISO time of the run record."""
    import datetime as dt
    try:
        seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso or "")).total_seconds()
    except (TypeError, ValueError):
        return "at an unknown time"
    return f"{_duration(max(seconds, 0))} ago" if seconds >= 60 else f"{max(int(seconds), 0)} s ago"


def current_record(output: str, started: Optional[float]) -> Optional[dict[str, Any]]:
    """The run record (pretrain.frame.read_run_state) of this attempt of the job: None when there is none or
    it was written before the job started (by an earlier attempt, or an earlier job in the same folder)."""
    import datetime as dt
    from pretrain.frame import read_run_state
    state = read_run_state(output)
    if state is None or started is None:
        return state
    try:
        written = dt.datetime.fromisoformat(state["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
    return state if written >= started - 1 else None


def record_lines(state: Optional[dict[str, Any]], output: str) -> list[str]:
    """The ranks (placement) and the position of a run, from its run record and metrics.jsonl."""
    from .jobs import run_progress
    if state is None:
        return []
    ranks = state.get("ranks") or []
    lines = ["ranks: " + ", ".join(f"{r['rank']} on {r['host']} (local {r['local_rank']}, {r['device']})"
                                   for r in ranks) + f"; world size {state.get('world_size')}"] if ranks else []
    prog = state.get("progress")
    if prog:
        e, total, step, steps = prog["epoch"], prog["epochs"], prog["step"], prog["steps"]
        done = step >= steps
        where = f"epoch {e}/{total} done" if done else f"epoch {e}/{total} at step {step}/{steps}"
        per_epoch = run_progress(output)["seconds_per_epoch"]
        if per_epoch:
            left = (total - e + (0 if done else 1 - step / max(steps, 1))) * per_epoch
            where += f"; {per_epoch:.1f} s per epoch, about {_duration(max(left, 0))} left"
        lines.append(f"progress: {where} (recorded {_since(state.get('updated'))})")
    return lines


def running_report(job_id: str, acct: Optional[dict[str, Any]], output: str) -> list[str]:
    """Lines about a running job: its nodes and time (sacct), its ranks and how far it is (the run record)."""
    from .jobs import sacct_seconds, sacct_time
    lines = []
    if acct:
        used, limit = sacct_seconds(acct["elapsed"]), sacct_seconds(acct["time_limit"])
        left = f", time limit in {_duration(limit - used)}" if used is not None and limit is not None else ""
        lines.append(f"nodes: {acct['nodes']} ({acct['node_count']} node(s)); running for "
                     f"{_duration(used or 0)}{left}")
    state = current_record(output, sacct_time(acct["start"]) if acct else None)
    if state is None:
        lines.append(f"(no run record of this attempt in {output} yet: the stage has not started)")
    return lines + record_lines(state, output)


def failure_report(job_id: str, folder: str, output: str, acct: Optional[dict[str, Any]],
                   lines: int = 20) -> list[str]:
    """Why a job failed: its failed steps (sacct), which of their tasks ended without a result (killed or
    lost; listed first, usually the cause) or with an error (submitit's result file of each task), rank 0's
    error (the run record), and the end of the log of the first of those tasks."""
    from submitit.core.utils import JobPaths
    from .jobs import exit_code_words, failed_steps, sacct_time, tail_of, task_outcomes
    out: list[str] = []
    steps = failed_steps(acct) if acct else []
    for st in steps:
        out.append(f"failed step {st['step']} ({st['name']}) on {st['nodes']}: {st['state']}, "
                   f"{exit_code_words(st['exit_code'])}")
    started = sacct_time(acct["start"]) if acct else None
    state = current_record(output, started)
    hosts = {r["rank"]: r["host"] for r in (state or {}).get("ranks") or []}
    n = next((st["tasks"] for st in steps if st["tasks"] and not st["step"].endswith(".batch")), None)
    n = n or (state or {}).get("world_size") or 1
    outcomes = task_outcomes(folder, job_id, n, started)
    order = [t for t, o in enumerate(outcomes) if o == "none"] + [t for t, o in enumerate(outcomes) if o == "error"]
    words = {"none": "ended without a result (its process was killed or lost)", "error": "raised an error"}
    for t in order:
        out.append(f"task {t} (rank {t}{' on ' + hosts[t] if t in hosts else ''}): {words[outcomes[t]]}")
    if state and state.get("error"):
        out.append(f"rank 0 ended with: {state['error']}")
    out.extend(tail_of(JobPaths(folder, job_id=job_id, task_id=order[0] if order else 0), lines).splitlines())
    return out


def history_report(output: str) -> list[str]:
    """The requeues, restarts and retries recorded in the stage's requeues.jsonl."""
    from .jobs import read_events
    words = []
    for e in read_events(output):
        kind = e.get("event")
        if kind == "retry":
            words.append(f"retry {e.get('retry')} by rank {e.get('rank')} on {e.get('host')} ({e.get('error')})")
        elif kind == "restart":
            words.append(f"restart {e.get('restart')} on {e.get('host')}")
        elif kind:
            words.append(str(kind))
    return [f"history: {'; '.join(words)}"] if words else []


def status(out: Path) -> int:
    """`simsiam submit status RUN`: state of each stage of a submitted pipeline (or of the single stage whose
    run folder RUN is), from SLURM's accounting (sacct); for a running job its nodes and time (sacct), its
    ranks and how far it is (the run record, run_state.json, written by the stage's rank 0); for a failed
    one its failed steps and tasks and the end of that task's log; for a sweep (RUN/ablation.json) each
    variant's and trial's stages (slurm.ablation.status). Exit code 1 when a stage failed."""
    doc = submitted_stages(out)
    if doc is None:
        raise SubmitError(f"status: {out} holds neither pipeline.json nor slurm/*_submission.sh "
                          "(submit something there first)")
    from .ablation import MANIFEST, status as sweep_status
    if (out / MANIFEST).is_file():   # a sweep (slurm/ablation.py): its runs' stages
        return sweep_status(out, doc)
    states, acct = job_records(doc)
    failed = False
    for stage, s in doc["stages"].items():
        if s["skipped"]:
            print(f"{stage:<9} skipped (already finished) {s['output']}")
            continue
        folder = (s["logs"] or [""])[0]
        st = ", ".join(f"{j} {states.get(j, '?')}" for j in s["jobs"])
        print(f"{stage:<9} {st}   logs: {folder or '-'}")
        for j in s["jobs"]:
            failed = print_job_report(stage, j, states.get(j, "?"), folder, s["output"], acct.get(j)) or failed
        for line in history_report(s["output"]):
            print(f"  {line}")
    return 1 if failed else 0


def job_records(doc: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(state, sacct record) of every job of a pipeline.json; empty without SLURM (the local executor)."""
    from .jobs import sacct_records, slurm_states
    ids = [j for s in doc["stages"].values() for j in s["jobs"]]
    if doc.get("executor") != "slurm":
        return {}, {}
    return slurm_states(ids), sacct_records(ids) or {}


def print_job_report(stage: str, job_id: str, state: str, folder: str, output: str,
                     acct: Optional[dict[str, Any]], indent: str = "  ") -> bool:
    """The lines under a job's state: where a running job runs and how far it is, why a failed one failed.
    True when the job failed or was cancelled."""
    from .jobs import TERMINAL
    if state in ("RUNNING", "COMPLETING"):
        detail = running_report(job_id, acct, output)
    elif state in TERMINAL and state not in ("COMPLETED", "CANCELLED") and folder:
        print(f"{indent}stage '{stage}' failed (job {job_id}: {state}).")
        detail = failure_report(job_id, folder, output, acct)
    else:
        return state == "CANCELLED"
    for line in detail:
        print(f"{indent}  {line}")
    return state not in ("RUNNING", "COMPLETING")


def check(argv: list[str]) -> int:
    """`simsiam submit check [resources] --log-dir DIR`: a gloo all_reduce across the tasks of one job, to test
    an allocation (and the env:// set-up) before submitting real work."""
    from .jobs import CallFunction, distributed_check
    ap = stages.one_line_errors(argparse.ArgumentParser(prog="simsiam submit check", allow_abbrev=False), "check")
    add_resource_args(ap)
    res = resources_from_args(ap.parse_args(argv))
    folder = Path(res.log_dir or "slurm-check")
    job = make_executor(res, folder, "simsiam-check").submit(CallFunction(distributed_check))
    print(f"[submit] check: job {job.job_id}; logs {folder}")
    if not wait_all({"check": Submitted("check", folder, job=job)}):
        return 1
    results = job.results()
    for r in results:
        print(f"rank {r['rank']}/{r['world_size']} (local {r['local_rank']}) on {r['host']}: "
              f"all_reduce {r['sum']:g} (expected {r['expected']:g})")
    return 0 if all(r["sum"] == r["expected"] for r in results) else 1


# ---------------------------------------------------------------------------------------------------------- cli

def build_parser(stage: str) -> argparse.ArgumentParser:
    ap = stages.one_line_errors(argparse.ArgumentParser(prog=f"simsiam submit {stage}", allow_abbrev=False,
                                                        description=__doc__.split("\n\n")[0],
                                                        formatter_class=argparse.RawDescriptionHelpFormatter), stage)
    add_resource_args(ap)
    ap.add_argument("--no-wait", action="store_true",
                    help="return after submitting (default: follow the jobs and report failures)")
    ap.add_argument("--dry-run", action="store_true",
                    help="check every stage's arguments and datasets, print the command lines, submit nothing")
    if stage == "pipeline":
        g = ap.add_argument_group("pipeline")
        g.add_argument("--output", required=True, help="run folder of the whole chain")
        g.add_argument("--stages", default=",".join(stages.CHAIN_STAGES),
                       help=f"comma-separated subset of {','.join(stages.CHAIN_STAGES)}")
        g.add_argument("--trials", type=int, default=stages.DETECTION_TRIALS, help="detection trials (a job array)")
        g.add_argument("--seed", type=int, default=stages.DETECTION_SEED,
                       help="seed of detection trial 0 (trial i: seed+i)")
        for s in stages.CHAIN_STAGES:
            g.add_argument(f"--{s}-args", default="", metavar="ARGS",
                           help=f"extra arguments of `simsiam {s}` (one quoted string)")
    return ap


def split_args(stage: str, rest: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(submit options, the stage's own arguments): everything that is not a submit option, or all after `--`."""
    ap = build_parser(stage)
    if "--" in rest:
        i = rest.index("--")
        return ap.parse_args(rest[:i]), rest[i + 1:]
    if stage == "pipeline":
        return ap.parse_args(rest), []
    return ap.parse_known_args(rest)


def refuse_busy(out: Path, res: Resources) -> None:
    busy = active_jobs(out) if executor_kind(res) == "slurm" else []
    if busy:
        raise SubmitError(f"{out} already has jobs queued or running ({', '.join(busy)}): wait for them "
                          f"(`simsiam submit status {out}`) or cancel them (`scancel {' '.join(busy)}`) first")


def plan(stage: str, a: argparse.Namespace, extra: list[str],
         res: Resources) -> tuple[Optional[Path], dict[str, list[str]]]:
    """(pipeline run folder or None, {stage: checked command line}); raises SubmitError before any job exists:
    a pipeline whose earlier submission still has jobs queued, or any stage that cannot run."""
    if stage != "pipeline":
        if stage not in stages.SUBMITTABLE:
            raise SubmitError(f"unknown stage '{stage}' (known: {', '.join(stages.SUBMITTABLE)}, pipeline, "
                              "status, check)")
        try:
            argv = preflight.plan(stage, extra).argv
        except preflight.InputError as e:
            raise SubmitError(str(e)) from None
        parse_stage(stage, argv)  # the run folder must be known
        return None, {stage: argv}
    a.stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = sorted(set(a.stages) - set(stages.CHAIN_STAGES))
    if unknown:
        raise SubmitError(f"--stages: unknown stage(s) {unknown} (known: {', '.join(stages.CHAIN_STAGES)})")
    if a.trials < 1:
        raise SubmitError(f"--trials must be >= 1, got {a.trials}")
    out = Path(a.output).resolve()
    refuse_busy(out, res)
    return out, plan_pipeline(out, a)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return guard("simsiam submit", lambda: _main(argv[0], argv[1:]))


def _main(stage: str, rest: list[str]) -> int:
    if stage == "status":
        if len(rest) > 1:
            raise SubmitError(f"status: expects one run folder, got {len(rest)}: {' '.join(rest)}")
        return status(Path(rest[0]) if rest else Path("."))
    if stage == "check":
        return check(rest)
    if stage == "ablation":  # one of the paper's experiments as a sweep (slurm/ablation.py)
        from .ablation import main as ablation
        return ablation(rest)
    a, extra = split_args(stage, rest)
    res = resources_from_args(a)
    out, argvs = plan(stage, a, extra, res)
    if a.dry_run:
        for s, line in argvs.items():
            print(f"[submit] {s}: simsiam {s} {shlex.join(line)}")
        print("[submit] dry run: every stage checked, nothing submitted")
        return 0
    if out is not None:
        subs = submit_pipeline(out, argvs, res)
        print(f"[submit] pipeline submitted; `simsiam submit status {out}` shows its state")
    else:
        subs = {stage: submit_stage(stage, argvs[stage], res)}
    if a.no_wait or all(s.skipped for s in subs.values()):
        return 0
    if not wait_all(subs):
        return 1
    print("[submit] all jobs completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
