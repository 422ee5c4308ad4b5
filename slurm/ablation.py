"""`simsiam submit ablation NAME [options] [resources]`: one of the paper's experiments as SLURM jobs.

  simsiam submit ablation table1 --output runs/table1 --data /datasets/imagenet --gpus-per-node 8
  simsiam submit ablation fig2 --output runs/fig2 --data embedded --executor local --epochs 2 --trials 1 \\
      --pretrain-args "--config test_tiny"                       # a trial run of the sweep on this machine

NAME is a preset of eval_configs/ablation/ (fig2, table1, table2, table3, similarity, symmetrisation, kstep,
moving-average, dimension, fig3) or a YAML file of the same form: a title, `base` (pretraining key=value settings
of every variant), `pretrain_config` (pretraining presets, default imagenet_r50_100ep: the paper's recipe) and
`variants`, each with its name, label, settings (`set`), the paper's number (`paper`, `paper_std`, `note`),
`trials`, `nodes_factor` (it runs on that many times the nodes given; with the local executor on this
machine) and `pretrain_config` (the presets the variant starts from instead of the experiment's: fig3's
variants start from their method's, eval_configs/pretrain/simclr.yaml, ...). Unknown keys are errors.

Each variant and trial t (pretraining seed t) is a chain pretrain -> kNN and linear evaluation in
OUTPUT/<variant>/trial_<t>/{pretrain,knn,linear}; the pretrainings of one resource shape are one job array,
the evaluations of that shape a kNN array (one task) and a linear array (the resources given), after it
(afterok on the pretraining array); a last job writes OUTPUT/table.md (`simsiam table OUTPUT`). Every job is
a slurm.jobs.StageCall: requeue on preemption, resume from its run folder, a finished stage is skipped, so
the same command continues an interrupted sweep. OUTPUT/ablation.json records the experiment, its variants,
their folders and the paper's numbers (what the table reads); OUTPUT/pipeline.json the jobs
(`simsiam submit status OUTPUT`).

Shrinking a sweep for a trial run: --variants (a subset), --trials, --epochs (pretraining epochs), --data
(the pretraining dataset; kNN and linear read it too) and --pretrain-args / --knn-args / --linear-args
(extra arguments of each stage, after the variant's settings: they win). The table then lists, per variant,
what differs from the paper's recipe. Nothing is queued until every stage's command line has passed the
checks of `simsiam submit pipeline` (transfer/preflight.py); a refusal is one line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from pretrain import config as config_mod
from transfer import preflight, stages

from . import submit as S

KIND = "ablation"                     # presets under eval_configs/ablation/
MANIFEST = "ablation.json"
SCHEMA = "simsiam-suite/ablation/v1"
PAPER_RECIPE = ("imagenet_r50_100ep",)
EXPERIMENT_KEYS = ("title", "pretrain_config", "base", "trials", "layout", "axis", "variants")
LAYOUTS = ("rows", "columns")  # the paper's table: one row per variant, or one column (Tables 2, App. B)
VARIANT_KEYS = ("name", "label", "set", "paper", "paper_std", "note", "trials", "nodes_factor", "pretrain_config")


@dataclass(frozen=True)
class Variant:
    name: str
    label: str = ""
    set: tuple[tuple[str, Any], ...] = ()   # pretraining settings (dotted key, value)
    paper: Any = None                        # the paper's linear top-1 (%), or a word ("unstable")
    paper_std: Optional[float] = None
    note: str = ""                           # the paper's comment (collapse, does not converge)
    trials: int = 0                          # 0: the experiment's
    nodes_factor: int = 1                    # nodes = --nodes x nodes_factor
    pretrain_config: tuple[str, ...] = ()    # pretraining presets instead of the experiment's (empty: its)


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    title: str
    pretrain_config: tuple[str, ...] = PAPER_RECIPE
    base: tuple[tuple[str, Any], ...] = ()
    trials: int = 1
    layout: str = "rows"
    axis: str = "variant"            # what the variants are (the header of their row or column)
    variants: tuple[Variant, ...] = ()

    def overrides(self, v: Variant) -> list[str]:
        """The paper's settings of variant v as pretraining key=value overrides (base, then its own)."""
        return [f"{k}={_text(x)}" for k, x in (*self.base, *v.set)]

    def trials_of(self, v: Variant) -> int:
        return v.trials or self.trials

    def configs(self, v: Variant) -> tuple[str, ...]:
        """The pretraining presets variant v starts from: its own, else the experiment's."""
        return v.pretrain_config or self.pretrain_config


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _settings(raw: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(f"{where}: expected a mapping of pretraining key: value, got {raw!r}")
    return tuple((str(k), v) for k, v in raw.items())


def _known(raw: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(raw, dict):
        raise config_mod.ConfigError(f"{where}: expected a mapping, got {raw!r}")
    for key in raw:
        if key not in keys:
            raise config_mod.ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(keys)})")
    return raw


def _count(raw: dict, key: str, default: int, minimum: int, where: str) -> int:
    value = config_mod._coerce(raw.get(key, default), int, f"{where}: key '{key}'")
    if value < minimum:
        raise config_mod.ConfigError(f"{where}: key '{key}' must be >= {minimum}, got {value}")
    return value


def _presets(raw: Any, where: str) -> tuple[str, ...]:
    """A preset name or a list of them."""
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) and c for c in raw):
        raise config_mod.ConfigError(f"{where}: expected a preset name or a list of them, got {raw!r}")
    return tuple(raw)


def _variant(raw: Any, where: str) -> Variant:
    raw = _known(raw, VARIANT_KEYS, where)
    if not raw.get("name") or not str(raw["name"]).replace("_", "").replace("-", "").isalnum():
        raise config_mod.ConfigError(f"{where}: key 'name' must be a word (letters, digits, _ or -), "
                                     f"got {raw.get('name')!r}")
    std = raw.get("paper_std")
    return Variant(name=str(raw["name"]), label=str(raw.get("label") or raw["name"]),
                   set=_settings(raw.get("set"), f"{where}: key 'set'"), paper=raw.get("paper"),
                   paper_std=None if std is None else config_mod._coerce(std, float, f"{where}: key 'paper_std'"),
                   note=str(raw.get("note") or ""), trials=_count(raw, "trials", 0, 0, where),
                   nodes_factor=_count(raw, "nodes_factor", 1, 1, where),
                   pretrain_config=_presets(raw.get("pretrain_config", ()), f"{where}: key 'pretrain_config'"))


def load_experiment(name: str) -> Experiment:
    """The experiment of a preset name (eval_configs/ablation/<name>.yaml) or YAML path; every variant's
    settings resolved once against the pretraining config (an unknown key or a bad value is a ConfigError
    naming the file and the variant)."""
    path = config_mod.find_preset(name, KIND)
    raw = _known(config_mod.load_yaml(path), EXPERIMENT_KEYS, str(path))
    variants = raw.get("variants")
    if not isinstance(variants, list) or not variants:
        raise config_mod.ConfigError(f"{path}: key 'variants' must be a non-empty list")
    layout = str(raw.get("layout", "rows"))
    if layout not in LAYOUTS:
        raise config_mod.ConfigError(f"{path}: key 'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    exp = Experiment(name=path.stem, path=str(path), title=str(raw.get("title") or path.stem),
                     pretrain_config=_presets(raw.get("pretrain_config", PAPER_RECIPE),
                                              f"{path}: key 'pretrain_config'"),
                     base=_settings(raw.get("base"), f"{path}: key 'base'"), trials=_count(raw, "trials", 1, 1, str(path)),
                     layout=layout, axis=str(raw.get("axis") or "variant"),
                     variants=tuple(_variant(v, f"{path}: variants[{i}]") for i, v in enumerate(variants)))
    names = [v.name for v in exp.variants]
    if len(set(names)) != len(names):
        raise config_mod.ConfigError(f"{path}: variant names repeat: {', '.join(names)}")
    from pretrain.main import resolve_config
    for v in exp.variants:
        try:
            resolve_config(exp.configs(v), exp.overrides(v))
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"{path}: variant '{v.name}': {e}") from None
    return exp


def presets() -> list[str]:
    return sorted(p.stem for p in (config_mod.CONFIG_ROOT / KIND).glob("*.yaml"))


# ------------------------------------------------------------------------------------------------- planning

@dataclass
class Run:
    """One trial of one variant: its folder and the checked command line of each stage."""
    variant: Variant
    trial: int
    folder: Path
    argvs: dict[str, list[str]] = field(default_factory=dict)   # pretrain, knn, linear

    @property
    def key(self) -> str:
        return f"{self.variant.name}/trial_{self.trial}"


def select(exp: Experiment, names: str) -> list[Variant]:
    """--variants a,b: those variants in the preset's order (all without the option)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {v.name for v in exp.variants}]
    if unknown:
        raise S.SubmitError(f"ablation {exp.name}: --variants: unknown variant(s) {', '.join(unknown)} "
                            f"(known: {', '.join(v.name for v in exp.variants)})")
    return [v for v in exp.variants if not wanted or v.name in wanted]


def pretrain_argv(exp: Experiment, v: Variant, trial: int, folder: Path, a: argparse.Namespace) -> list[str]:
    """The paper's settings of the variant, the trial's seed, then what shrinks the sweep (its last values win)."""
    shrink = [f"data.root={a.data}"] if a.data else []
    shrink += [f"train.epochs={a.epochs}"] if a.epochs else []
    extra = _extra(a.pretrain_args)
    settings = [x for x in extra if "=" in x and not x.startswith("-")]   # key=value, after the variant's
    options = [x for x in extra if x not in settings]                       # --config ..., before them
    return [*stages.Chain(folder).argv("pretrain"), *[x for c in exp.configs(v) for x in ("--config", c)],
            *options, *exp.overrides(v), f"train.seed={trial}", *shrink, *settings]


def _extra(values: list[str]) -> list[str]:
    return [x for value in values for x in shlex.split(value)]


def plan_run(exp: Experiment, run: Run, a: argparse.Namespace) -> Run:
    """Each stage's command line, parsed and checked as `simsiam submit pipeline` checks its own
    (transfer.preflight: config resolved, datasets readable); kNN and linear read the pretraining dataset."""
    chain = stages.Chain(run.folder)
    raw = {"pretrain": pretrain_argv(exp, run.variant, run.trial, run.folder, a),
           "knn": [*chain.argv("knn"), *_extra(a.knn_args)],
           "linear": [*chain.argv("linear"), *_extra(a.linear_args)]}
    fixed = {stage: chain.fixed(stage) for stage in raw}
    try:
        pre = preflight.plan("pretrain", raw["pretrain"], pipeline=True)
        for stage in ("pretrain", "knn", "linear"):
            p = pre if stage == "pretrain" else preflight.plan(stage, raw[stage], pre.data_root, pipeline=True)
            for dest, value in fixed[stage].items():
                if str(getattr(p.ns, dest)) != str(value):
                    raise S.SubmitError(f"ablation {exp.name}: {stage}: --{dest} is set by the sweep ({value}); "
                                        f"remove it from --{stage}-args")
            run.argvs[stage] = p.argv
    except preflight.InputError as e:
        raise S.SubmitError(f"ablation {exp.name}, variant {run.key}: {e}") from None
    return run


def plan(exp: Experiment, a: argparse.Namespace, out: Path) -> list[Run]:
    if a.trials is not None and a.trials < 1:
        raise S.SubmitError(f"--trials must be >= 1, got {a.trials}")
    if a.epochs is not None and a.epochs < 1:
        raise S.SubmitError(f"--epochs must be >= 1, got {a.epochs}")
    runs = []
    for v in select(exp, a.variants):
        for t in range(a.trials or exp.trials_of(v)):
            runs.append(plan_run(exp, Run(v, t, out / v.name / f"trial_{t}"), a))
    return runs


def manifest(exp: Experiment, runs: list[Run], a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """OUTPUT/ablation.json: what `simsiam table` needs to lay the sweep out as the paper's table."""
    variants = []
    for v in exp.variants:
        mine = [r for r in runs if r.variant is v]
        if mine:
            variants.append({"name": v.name, "label": v.label, "paper": v.paper, "paper_std": v.paper_std,
                             "note": v.note, "paper_trials": exp.trials_of(v), "settings": exp.overrides(v), "nodes_factor": v.nodes_factor,
                             "pretrain_config": list(exp.configs(v)),
                             "trials": [str(r.folder.relative_to(out)) for r in mine]})
    return {"schema": SCHEMA, "experiment": exp.name, "title": exp.title, "preset": exp.path,
            "layout": exp.layout, "axis": exp.axis,
            "pretrain_config": list(exp.pretrain_config), "variants": variants,
            "left_out": [v.name for v in exp.variants if v.name not in {x["name"] for x in variants}],
            "shrunk": {"epochs": a.epochs, "data": a.data, "trials": a.trials,
                       "pretrain_args": _extra(a.pretrain_args), "knn_args": _extra(a.knn_args),
                       "linear_args": _extra(a.linear_args)}}


# ----------------------------------------------------------------------------------------------- submitting

def shapes(runs: list[Run]) -> dict[int, list[Run]]:
    """The runs by resource shape (the variant's nodes_factor), in order."""
    out: dict[int, list[Run]] = {}
    for r in runs:
        out.setdefault(r.variant.nodes_factor, []).append(r)
    return out


def submit_array(stage: str, runs: list[Run], res: S.Resources, folder: Path, dependency: Optional[str],
                 name: str) -> S.Submitted:
    """One job array of `stage` over the runs whose stage is not finished yet (a StageCall each)."""
    from .jobs import StageCall, finished
    calls = []
    for r in runs:
        ns = stages.parse(stage, r.argvs[stage])
        run_dir, done = stages.get(stage).paths(ns)
        calls.append(StageCall(stage, stages.get(stage).module, r.argvs[stage], run_dir,
                               max_requeues=res.max_requeues, threads=res.cpus, done=done))
    todo = [c for c in calls if not finished(c.done)]
    jobs = []
    if todo:
        ex = S.make_executor(res, folder, name, dependency)
        with ex.batch():
            jobs = [ex.submit(c) for c in todo]
    print(f"[submit] {name}: {len(jobs)} job(s) {[j.job_id for j in jobs]}, {len(calls) - len(todo)} already "
          f"finished ({S.executor_kind(res)}, {res.nodes} node(s) x {res.tasks} task(s)); logs {folder}", flush=True)
    return S.Submitted(name, runs[0].folder.parent.parent, jobs=jobs, skipped=not jobs,
                       outputs=[c.output for c in todo])


def _after(subs: list[S.Submitted], local: bool) -> Optional[str]:
    """The dependency on the given arrays: on SLURM afterok; locally they are run to completion first."""
    if local:
        for s in subs:
            if s.all_jobs and not S.wait_all({s.stage: s}, quiet=True):
                raise SweepFailed(s.stage)
        return None
    return S.dependency_string([j for s in subs for j in s.all_jobs])


class SweepFailed(RuntimeError):
    """An array failed under the local executor (its report is printed): the rest is not started."""


def submit_sweep(exp: Experiment, runs: list[Run], res: S.Resources, out: Path) -> dict[str, S.Submitted]:
    """Per resource shape: the pretraining array, then the kNN and linear arrays after it; then the table."""
    from .jobs import StageCall
    local = S.executor_kind(res) == "local"
    folder = Path(res.log_dir) if res.log_dir else out / "slurm"
    subs: dict[str, S.Submitted] = {}
    for factor, group in shapes(runs).items():
        shape = res if local else replace(res, nodes=res.nodes * factor)   # local: this machine, one node
        tag = f"-x{factor}" if factor > 1 else ""
        pre = submit_array("pretrain", group, shape, folder, None, f"simsiam-ablation-pretrain{tag}")
        dep = _after([pre], local)
        subs[pre.stage] = pre
        for stage, r in (("knn", res.light()), ("linear", res)):
            sub = submit_array(stage, group, r, folder, dep, f"simsiam-ablation-{stage}{tag}")
            subs[sub.stage] = sub
    dep = _after(list(subs.values()), local)
    (out / "table.md").unlink(missing_ok=True)
    call = StageCall("table", "transfer.reporting.tables", [str(out), "--format", "markdown", "--output",
                                                            str(out / "table.md")], out, done=out / "table.md")
    job = S.make_executor(res.light(), folder, "simsiam-ablation-table", dep).submit(call)
    print(f"[submit] table: job {job.job_id} -> {out / 'table.md'}", flush=True)
    subs["table"] = S.Submitted("table", out, job=job)
    return subs


def job_manifest(subs: dict[str, S.Submitted], res: S.Resources) -> dict[str, Any]:
    """OUTPUT/pipeline.json in the layout `simsiam submit status` reads (one entry per array)."""
    return {"executor": S.executor_kind(res),
            "stages": {name: {"output": str(s.output), "skipped": s.skipped, "jobs": [j.job_id for j in s.all_jobs],
                              "outputs": [str(o) for o in s.outputs],   # the run folder of each job
                              "logs": [str(j.paths.folder) for j in s.all_jobs][:1]} for name, s in subs.items()}}


RUN_STAGES = ("pretrain", "knn", "linear")   # the chain of each variant and trial


def status(out: Path, doc: dict[str, Any]) -> int:
    """`simsiam submit status OUTPUT` of a sweep: per variant and trial (OUTPUT/ablation.json), the state of
    each of its stages (its job in OUTPUT/pipeline.json, or finished before that submission) and its epochs
    (metrics.jsonl and config.json of the stage's run folder), with where a running job runs and why a failed
    one failed (as for a pipeline); then the table job. Exit code 1 when a job failed or was cancelled."""
    from .jobs import finished, run_progress
    sweep = json.loads((out / MANIFEST).read_text())
    states, acct = S.job_records(doc)
    jobs = {o: (j, (s["logs"] or [""])[0]) for s in doc["stages"].values()
            for j, o in zip(s["jobs"], s.get("outputs", []))}
    runs = [r for v in sweep["variants"] for r in v["trials"]]
    print(f"ablation {sweep['experiment']} ({sweep['title']}): {len(runs)} run(s) in {out}")
    failed = False
    for run in runs:
        print(run)
        for stage in RUN_STAGES:
            folder = str(stages.Chain(out / run).folder(stage))
            job, logs = jobs.get(folder, (None, ""))
            state = states.get(job) or ("finished" if finished(Path(folder) / "results.json") else
                                        "?" if job else "not submitted")   # no SLURM state: the local executor
            progress = run_progress(folder)
            epochs = f"   epoch {progress['epochs_done']}/{progress['epochs']}" if progress["epochs"] else ""
            print(f"  {stage:<9} {job or '-'} {state}{epochs}")
            if job:
                failed = S.print_job_report(stage, job, state, logs, folder, acct.get(job), "    ") or failed
            for line in S.history_report(folder):
                print(f"    {line}")
    table = doc["stages"].get("table")
    if table and table["jobs"]:
        job = table["jobs"][0]
        print(f"{'table':<9} {job} {states.get(job, '?')}   -> {out / 'table.md'}")
        failed = S.print_job_report("table", job, states.get(job, "?"), (table["logs"] or [""])[0],
                                    table["output"], acct.get(job)) or failed
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------- cli

def build_parser() -> argparse.ArgumentParser:
    ap = stages.one_line_errors(argparse.ArgumentParser(prog="simsiam submit ablation", allow_abbrev=False,
                                                   description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter),
                           "ablation")
    ap.add_argument("name", help=f"experiment: a preset of eval_configs/{KIND}/ ({', '.join(presets())}) or a YAML")
    S.add_resource_args(ap)
    ap.add_argument("--output", required=True, help="folder of the sweep (one sub-folder per variant and trial)")
    ap.add_argument("--no-wait", action="store_true", help="return after submitting")
    ap.add_argument("--dry-run", action="store_true", help="check every command line, print them, submit nothing")
    g = ap.add_argument_group("shrinking the sweep (a trial run; the table says what differs from the paper)")
    g.add_argument("--data", default=None, help="pretraining dataset (data.root); kNN and linear read it too")
    g.add_argument("--epochs", type=int, default=None, help="pretraining epochs (the paper's: 100)")
    g.add_argument("--variants", default="", help="comma-separated subset of the experiment's variants")
    g.add_argument("--trials", type=int, default=None, help="trials (pretraining seeds 0..N-1) of every variant")
    for stage in ("pretrain", "knn", "linear"):
        g.add_argument(f"--{stage}-args", action="append", default=[], metavar="ARGS",
                       help=f"extra arguments of `simsiam {stage}` (a quoted string; repeatable)")
    return ap


def main(argv: list[str]) -> int:
    """Called by `simsiam submit ablation ...` (slurm/submit.py, inside its one-line error guard)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    a = build_parser().parse_args(argv)
    res = S.resources_from_args(a)
    exp = load_experiment(a.name)
    out = Path(a.output).resolve()
    runs = plan(exp, a, out)
    if a.dry_run:
        for r in runs:
            for stage, line in r.argvs.items():
                print(f"[submit] {r.key} {stage}: simsiam {stage} {shlex.join(line)}")
        print(f"[submit] dry run: {len(runs)} run(s) of {exp.name} checked, nothing submitted")
        return 0
    S.refuse_busy(out, res)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest(exp, runs, a, out), indent=2))
    try:
        subs = submit_sweep(exp, runs, res, out)
    except SweepFailed as e:
        print(f"[submit] ablation {exp.name}: {e} failed; the later stages were not started")
        return 1
    (out / "pipeline.json").write_text(json.dumps(job_manifest(subs, res), indent=2))
    print(f"[submit] ablation {exp.name}: {len(runs)} run(s) submitted; `simsiam submit status {out}` shows them")
    if a.no_wait or not any(s.all_jobs for s in subs.values()):
        return 0
    if not S.wait_all({k: s for k, s in subs.items() if s.all_jobs}):
        return 1
    print("[submit] all jobs completed")
    return 0
