"""The docs are tested: every shell command in the fenced code blocks of README.md, slurm/README.md and every
page of docs/ runs.

The commands are read from those files when the tests are collected (never copied here). A command runs as
written, in a shell (bash -c) whose working directory is a fresh work folder (so `runs/...`, `r50_d2.pkl`
land there), after the rewrites of REWRITES (real datasets -> generated trees of the same layout, a GPU
cluster's resources -> the two-node CPU test cluster, ...), each with its reason, and with the size overrides of
SHRINK appended (`key=value` for our stages, `KEY VALUE` for detectron2: the last value of a key wins, so the
command is otherwise unchanged). What it must print or write is in EXPECT (keyed by command prefix, longest
prefix wins). A command that cannot run here is in SKIP with its reason. test_every_command_has_a_rule fails
for a command of the docs that none of these tables covers, naming the file and line, and for a rule that no
longer matches any command.

Commands run in the order of the docs; a command first runs the earlier commands of its file (and, on another
page, those of README.md) that write what it reads (its path arguments under the work folder), once per module,
so `-k README.md:127` or `-k docs/evaluation.md` also works.
The SLURM commands (`simsiam submit ...`) run on the local cluster of slurm/local_cluster.sh and are skipped
only where SLURM is not installed and CI is unset.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from transfer import stages

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "slurm/README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")))
BIN = Path(sys.executable).parent

# A plain ``` block holds commands when its first line starts with one of these; ```bash blocks always do.
PROGRAMS = ("simsiam", "make", "python", "python3", "bash", "sh", "sudo", "pip", "git", "sbatch", "squeue",
            "scancel", "scontrol", "sinfo", "srun", "salloc", "sacct", "torchrun", "./install.sh", "export", "cd",
            "ls", "cat", "touch", "rm", "mkdir", "kill", "tensorboard", "nvidia-smi")
SHELL_LANGS = ("bash", "sh", "shell", "console")


# ------------------------------------------------------------------------------------------------- extraction

@dataclass(frozen=True)
class DocCommand:
    doc: str        # file, relative to the repository
    line: int       # 1-based line of the command's first line
    text: str       # continuation lines joined, comment dropped

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def strip_comment(line: str) -> str:
    """The line without a shell comment (`#` at the start or after a blank, outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def is_command(text: str) -> bool:
    words = text.split()
    return bool(words) and (words[0] in PROGRAMS or re.match(r"^[A-Za-z_]\w*=", words[0]) is not None)


def extract(doc: str) -> list[DocCommand]:
    """The commands of the fenced shell blocks of `doc`: ```bash blocks, and plain ``` blocks whose first command
    line starts with a known program (the others are output listings, layouts and diagrams)."""
    lines = (REPO / doc).read_text().splitlines()
    out: list[DocCommand] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, j = m.group(1).lower(), i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        block: list[DocCommand] = []
        k = i + 1
        while k < j:
            start, text = k, strip_comment(lines[k])
            while text.endswith("\\") and k + 1 < j:
                k += 1
                text = text[:-1].rstrip() + " " + strip_comment(lines[k]).strip()
            k += 1
            if text.strip():
                block.append(DocCommand(doc, start + 1, " ".join(text.split())))
        if lang in SHELL_LANGS or (lang == "" and block and is_command(block[0].text)):
            out += block
        i = j + 1
    return out


COMMANDS = [c for doc in DOCS for c in extract(doc)]


# ------------------------------------------------------------------------------------------------ the tables

# Sizes. Pretraining: one epoch of two steps of 8 images at 32 px (ResNet-50 stays, so that its checkpoint goes on
# to convert and detection), no monitors. Detection: the R50-C4 model at 128 px, one iteration, 4 training and 2
# test images, the RoI/proposal sizes of eval_configs/detection/tiny.yaml, no precise BN.
PRETRAIN_TINY = ("train.epochs=1 train.max_steps_per_epoch=2 train.batch_size=8 data.image_size=32 data.workers=0 "
                 "data.limit_per_class=4 monitor.knn=false monitor.tensorboard=false")
LINEAR_TINY = ("train.epochs=1 train.max_steps_per_epoch=2 train.batch_size=8 data.image_size=32 data.workers=0 "
               "data.limit_per_class=4 data.val_limit_per_class=2 train.tensorboard=false")
KNN_TINY = "data.image_size=32 data.workers=0 data.limit_per_class=4 data.val_limit_per_class=2"
DETECT_TINY = ("INPUT.MIN_SIZE_TRAIN '(128,)' INPUT.MAX_SIZE_TRAIN 256 INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 256 "
               "SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 1 SOLVER.STEPS '()' SOLVER.WARMUP_ITERS 1 "
               "MODEL.RPN.PRE_NMS_TOPK_TRAIN 300 MODEL.RPN.POST_NMS_TOPK_TRAIN 50 MODEL.RPN.PRE_NMS_TOPK_TEST 300 "
               "MODEL.RPN.POST_NMS_TOPK_TEST 50 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 "
               "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 8 TEST.DETECTIONS_PER_IMAGE 20 TEST.PRECISE_BN.ENABLED False "
               "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 SIMSIAM.MAX_TRAIN_IMAGES 4 SIMSIAM.MAX_TEST_IMAGES 2 "
               "DATALOADER.NUM_WORKERS 0")
REHEARSAL_SMALL = "--classes 4 --train-per-class 4 --val-per-class 2"
STAGE_TINY = {"pretrain": PRETRAIN_TINY, "linear": LINEAR_TINY, "knn": KNN_TINY, "detect": DETECT_TINY}
# A sweep's stages get the tiny sizes as extra arguments (repeatable options, after the documented ones).
ABLATION_TINY = ('--pretrain-args "train.max_steps_per_epoch=2 data.limit_per_class=4 monitor.tensorboard=false" '
                 f'--knn-args "{KNN_TINY}" --linear-args "{LINEAR_TINY}"')


def _pipeline_sizes(text: str) -> str:
    """Inside each `--STAGE-args "..."` of a pipeline the stage's tiny sizes are appended; stages without one get
    `--STAGE-args "<tiny sizes>"`."""
    for stage, tiny in STAGE_TINY.items():
        opt = f"--{stage}-args"
        quoted = re.search(rf'{opt} "([^"]*)"', text)
        if quoted:
            text = text[:quoted.start()] + f'{opt} "{quoted.group(1)} {tiny}"' + text[quoted.end():]
        else:
            text += f' {opt} "{tiny}"'
    return text


@dataclass(frozen=True)
class Rewrite:
    pattern: str                            # regex on the command text
    replacement: str | Callable[[str], str]  # re.sub replacement ({imagenet}, {detection}, {cifar}, {work} are
    reason: str                             # filled in later) or a function of the whole text (pattern: a filter)

    def apply(self, text: str) -> tuple[str, bool]:
        if callable(self.replacement):
            return (self.replacement(text), True) if re.search(self.pattern, text) else (text, False)
        new = re.sub(self.pattern, self.replacement, text)
        return new, new != text


ABS = r"(?<![\w./$}])"   # an absolute path starts a word
REWRITES: tuple[Rewrite, ...] = (
    Rewrite(r"^make demo$", "simsiam demo --quick --output runs/demo --cache-dir {work}/cache",
            "`make demo` is ./install.sh (done: this suite runs in its .venv) then `simsiam demo`; the full-size demo "
            "is timed separately (docs/measured.md), --quick is its CI size, same stages and folders"),
    Rewrite(ABS + r"/datasets/imagenet\b", "{imagenet}",
            "ImageNet is not here: the ImageNet-shaped rehearsal tree (python -m pretrain.generated.rehearsal DIR "
            f"--detection {REHEARSAL_SMALL}: same layout and file quirks, 4 classes)"),
    Rewrite(ABS + r"/data/imagenet\b", "{imagenet}", "as /datasets/imagenet"),
    Rewrite(ABS + r"/datasets/cifar10-jpg\b", "{cifar}",
            "the real CIFAR-10 JPEG subset of ../shared/data/cifar10-jpg.tgz (train/ and test/, as documented)"),
    Rewrite(ABS + r"/datasets(?=\s|$)", "{detection}",
            "$DETECTRON2_DATASETS: the rehearsal detection twin (VOC2007/, VOC2012/, coco/; --detection)"),
    Rewrite(ABS + r"/data/detectron2\b", "{detection}", "as $DETECTRON2_DATASETS"),
    Rewrite(ABS + r"/checkpoint/", "{work}/checkpoint/", "a cluster's checkpoint file system: a folder of the work dir"),
    Rewrite(ABS + r"/tmp/", "{work}/tmp/", "scratch paths kept inside the work dir"),
    Rewrite(r"--nodes ([3-9]|\d\d+)\b", "--nodes 2", "the test cluster has two nodes (node1, node2)"),
    Rewrite(r" --gpus-per-node [1-9]\d*", "", "no GPU here: one CPU task per node (the default without GPUs)"),
    Rewrite(r"--cpus-per-task \d+", "--cpus-per-task 1", "two CPU cores on this machine"),
    Rewrite(r" --mem-gb \d+", "", "the test nodes have half this machine's memory: the partition default"),
    Rewrite(r"--partition [\w-]+", "--partition local", "the test cluster's partition"),
    Rewrite(r"--time \d+", "--time 10", "a bounded test job: 10 minutes"),
    Rewrite(r"^simsiam submit (pretrain|linear|knn|detect|convert|table|pipeline|check|ablation)\b(?!.*--time )",
            r"simsiam submit \1 --time 10", "a bounded test job: 10 minutes"),
    Rewrite(r"--trials ([3-9]|\d\d+)\b", "--trials 2",
            "trials differ only in their seed: two give the per-trial folders (an array on SLURM), the mean and the "
            "sample std"),
    Rewrite(r"^simsiam submit pipeline --output runs/r50_200ep\b", lambda t: t + " --dry-run",
            "the same chain as README.md's `simsiam submit pipeline --output runs/r50` (which runs for real), at "
            "8-GPU sizes: every stage's arguments and datasets are checked, nothing is submitted (a second real "
            "chain would add 2-3 minutes)"),
    Rewrite(r"^simsiam submit pipeline\b", _pipeline_sizes,
            "tiny sizes appended inside each --STAGE-args (added where the command has none)"),
    Rewrite(r"^simsiam pretrain --config (byol|simclr|swav)\b", lambda t: t + " optim.warmup_epochs=0",
            "the preset's 10-epoch warm-up needs more than the one epoch of the tiny sizes: no warm-up"),
)

# Appended `key=value` / `KEY VALUE` overrides, by command prefix (longest prefix wins).
SHRINK: dict[str, str] = {
    "python -m pretrain.generated.rehearsal": REHEARSAL_SMALL,
    "simsiam pretrain": PRETRAIN_TINY,
    "simsiam submit pretrain": PRETRAIN_TINY,
    "simsiam linear": LINEAR_TINY,
    "simsiam knn": KNN_TINY,
    "simsiam detect": DETECT_TINY,
    "simsiam submit detect": DETECT_TINY,
    "simsiam submit ablation": ABLATION_TINY,
    "python -m transfer.tooling.grid_bench": "--batch 16 --steps 1 --warmup 0 --rounds 1",
    "python -m transfer.tooling.loader_bench": "--count 24 --size 32 --rounds 1 --workers 1 --batch 8",
    # the rehearsal lines are CPU-sized already (on the small tree): as written
    "simsiam pretrain --config test_tiny": "",
    "simsiam detect --weights random --config tiny": "",
}

SKIP: dict[str, str] = {
    "make test": "the test suite itself (this file is part of it)",
    "python -m pip install 'git+https://github.com/facebookresearch/detectron2.git'":
        "builds detectron2's CUDA/C++ extension from GitHub: needs the network and nvcc, and would replace the "
        "detectron2 of the shared .venv",
    "python -m transfer.tooling.benchmark --device cuda": "needs a CUDA GPU (--device cuda)",
    "python -m transfer.tooling.cifar_bench": "needs a CUDA GPU (--device cuda) and CIFAR-10 in full",
    "simsiam submit <stage>": "usage synopsis (placeholders); its forms run through the concrete commands",
    "simsiam submit pipeline --output RUN [": "usage synopsis (placeholders)",
    "[--detect-args": "usage synopsis, continuation line",
    "simsiam submit status RUN": "usage synopsis; README.md runs `simsiam submit status runs/r50`",
    "simsiam submit check [resources]": "usage synopsis; the concrete `simsiam submit check --nodes 2 ...` runs",
}


# ------------------------------------------------------------------------------------------------- assertions

@dataclass
class Ran:
    cmd: DocCommand
    text: str                     # the command as run
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    work: Path
    env: dict

    def opt(self, name: str) -> Optional[str]:
        return next((self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == name), None)

    def path(self, value: str) -> Path:
        return (self.work / value).resolve()

    def output(self) -> Path:
        out = self.opt("--output")
        assert out, f"{self.cmd.where}: no --output in {self.text}"
        return self.path(out)

    def results(self, folder: Optional[Path] = None) -> dict:
        f = (folder or self.output()) / "results.json"
        assert f.is_file(), f"{self.cmd.where}: {f} missing"
        return json.loads(f.read_text())


def _check_rehearsal(r: Ran) -> None:
    root = r.path(r.argv[r.argv.index("pretrain.generated.rehearsal") + 1])
    lines = r.stdout.splitlines()
    assert any(x.startswith("imagenet: 4 classes, 16 train, 8 val images") for x in lines), r.stdout
    assert json.loads((root / "imagenet" / "manifest.json").read_text())["classes"] == 4
    if "--detection" in r.argv:
        assert any(x.startswith("detection: coco_2017_train 8, ") for x in lines), r.stdout
        assert (root / "detection" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()


def _check_pretrain(r: Ran) -> None:
    import torch
    res = r.results()
    assert res["task"] == "pretrain" and res["epochs"] == 1 and res["complete"], res
    ckpt = torch.load(r.output() / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["format"] == "simsiam-suite/pretrain" and ckpt["epoch"] == 1
    if "simsiam submit" not in r.text:
        assert "pretraining complete: epoch 1, step " in r.stdout, r.stdout[-2000:]


def _submitted(r: Ran, stage: str) -> str:
    assert "[submit] all jobs completed" in r.stdout, r.stdout[-3000:]
    m = re.search(rf"\[submit\] {stage}: job (\d+)", r.stdout)
    assert m, r.stdout[-3000:]
    return m.group(1)


def _check_submit_pretrain(r: Ran) -> None:
    _submitted(r, "pretrain")
    nodes = int(r.opt("--nodes") or 1)
    assert re.search(rf"\[submit\] pretrain: job \d+ \(slurm, {nodes} node\(s\)", r.stdout), r.stdout
    _check_pretrain(r)
    assert f"{nodes} processes" in (r.output() / "log.txt").read_text()


def _check_pipeline(r: Ran) -> None:
    run = r.output()
    assert "[submit] pipeline submitted" in r.stdout and "[submit] all jobs completed" in r.stdout, r.stdout[-3000:]
    submitted = json.loads((run / "pipeline.json").read_text())["stages"]
    assert tuple(submitted) == stages.CHAIN_STAGES, submitted
    files = stages.Chain(run)
    for stage in ("pretrain", "knn", "linear", "detect"):
        assert r.results(files.folder(stage))["task"] == {"detect": "detection"}.get(stage, stage), stage
    trials = int(r.opt("--trials") or 1)
    assert r.results(files.folder("detect"))["n_trials"] == trials
    assert files.converted().stat().st_size > 1_000_000
    assert "SimSiam (yours" in files.table.read_text()


def _check_dry_run(r: Ran) -> None:
    assert "[submit] dry run: every stage checked, nothing submitted" in r.stdout, r.stdout[-3000:]
    for stage in stages.CHAIN_STAGES:
        assert re.search(rf"^\[submit\] {stage}: simsiam {stage} ", r.stdout, re.M), (stage, r.stdout)
    assert not (r.output() / "pipeline.json").exists()


def _check_status(r: Ran) -> None:
    run = r.path(r.argv[-1])
    submitted = json.loads((run / "pipeline.json").read_text())["stages"]
    for stage, s in submitted.items():           # e.g. "detect    202 COMPLETED, 201_0 COMPLETED, 201_1 COMPLETED"
        line = re.search(rf"^{stage}\s+(.*)$", r.stdout, re.M)
        assert line, (stage, r.stdout)
        states = dict(re.findall(r"(\d+(?:_\d+)?) ([A-Z_]+)", line.group(1)))
        assert states == {job: "COMPLETED" for job in s["jobs"]}, (stage, line.group(0))


def _check_convert(r: Ran) -> None:
    out, to = r.opt("--output"), r.opt("--to")
    assert r.path(out).stat().st_size > 1_000_000
    kind = "simsiam-official" if "official" in r.argv[2] else "simsiam-suite"
    said = r.stdout + r.stderr
    m = re.search(rf"\[convert\] {kind} resnet50 -> {to}: (\d+) tensors written to {re.escape(out)}", said)
    # a ResNet-50 backbone: 265 tensors (+ 53 BN counters for torchvision); projector and predictor dropped
    assert m and int(m.group(1)) == {"torchvision": 318, "detectron2": 265}[to], said
    report = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert report["kind"] == kind and report["converted"] == int(m.group(1)), report
    assert report["dropped"]["projector (encoder fc.*)"] == 17 and report["dropped"]["predictor"] == 8, report


def _check_simclr_file(r: Ran) -> None:
    sd = __import__("torch").load(r.path("resnet50-1x.pth"), weights_only=True)["state_dict"]
    assert len(sd) == 320 and "fc.weight" in sd, len(sd)   # a torchvision ResNet-50 with its fc


def _check_convert_simclr(r: Ran) -> None:
    said = r.stdout + r.stderr
    out = r.opt("--output")
    m = re.search(rf"\[convert\] simclr-v1 resnet50 -> detectron2: (\d+) tensors written to {re.escape(out)}", said)
    assert m and int(m.group(1)) == 265, said
    source = load_pickle_source(r.path(out))
    assert source["normalisation"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}, source


def load_pickle_source(path: Path) -> dict:
    from transfer.evaluation.convert import load_pickle
    return load_pickle(path)["source"]


def _check_classification(task: str, key: str) -> Callable[[Ran], None]:
    def check(r: Ran) -> None:
        res = r.results()
        assert res["task"] == task and 0 <= res["metrics"][key] <= 100, res.get("metrics")
        root = r.opt("--data") or next((a.split("=", 1)[1] for a in r.argv if a.startswith("data.root=")), None)
        if root:
            assert res["dataset"] == Path(root).name, (res["dataset"], root)
        if "grid" in r.argv:                 # --config grid: one head picked on the held-out slice
            assert res["grid"]["heads"] and "picked_base_lr" in res["metrics"], res["metrics"]
        if r.opt("--weights") == "random":
            assert res["source"]["checkpoint"] == "random" and res["source"]["pretrain"]["arch"] == "resnet50"
        else:
            assert (r.work / res["source"]["checkpoint"]).resolve() == r.path(r.opt("--weights")), res["source"]
    return check


def _check_export(r: Ran) -> None:
    name, _, value = r.argv[1].partition("=")
    assert r.env[name] == value and Path(value).is_dir(), (name, value)


def _check_detect(r: Ran) -> None:
    res = r.results()
    trials = int(r.opt("--trials") or 1)
    iters = [r.argv[i + 1] for i, a in enumerate(r.argv[:-1]) if a == "SOLVER.MAX_ITER"]
    assert res["task"] == "detection" and res["n_trials"] == trials and res["iterations"] == int(iters[-1]), res
    # VOC: {AP50, AP, AP75}; COCO: {"bbox": {...}, "segm": {...}} (segm with a mask head)
    tasks = res["metrics"] if "bbox" in res["metrics"] else {"bbox": res["metrics"]}
    assert len(res["trials"]) == trials and tasks["bbox"], res["metrics"]
    for m in tasks.values():
        assert {"AP50", "AP", "AP75"} <= set(m) and all(0 <= v <= 100 for v in m.values()), res["metrics"]
    for i in range(trials):
        assert (r.output() / f"trial_{i}" / "results.json").is_file(), i
    if "simsiam submit" in r.text:
        assert f"[submit] detect: {trials} trial job(s)" in r.stdout and "[submit] detect summary: job" in r.stdout
        assert "[submit] all jobs completed" in r.stdout, r.stdout[-3000:]
    else:
        assert f"simsiam detect: {trials} trial(s) on " in r.stdout, r.stdout[-2000:]


def _check_table(r: Ran) -> None:
    assert "Table 4" in r.stdout and "Table 5" in r.stdout, r.stdout[-2000:]
    if r.opt("--format") == "markdown":
        assert "**Table 4" in r.stdout and "| SimSiam " in r.stdout, r.stdout[-2000:]
    assert "SimSiam (yours" in r.stdout and "random init" in r.stdout, r.stdout
    if "--method" in r.argv:
        assert r.opt("--method") in r.stdout


def _check_method_table(r: Ran) -> None:
    """The tables of one method's run: its row is labelled with the method its checkpoint records (BYOL, ...)."""
    assert "Table 4" in r.stdout and "Table 5" in r.stdout, r.stdout[-2000:]
    assert "BYOL (yours: resnet50" in r.stdout, r.stdout


def _check_ablation(r: Ran) -> None:
    name, out = re.search(r"submit ablation (?:--time \d+ )?(\S+)", r.text).group(1), r.output()
    if "--dry-run" in r.argv:
        assert re.search(rf"^\[submit\] dry run: \d+ run\(s\) of {name} checked, nothing submitted$", r.stdout, re.M), \
            r.stdout[-2000:]
        assert not (out / "ablation.json").exists()
        return
    assert "[submit] all jobs completed" in r.stdout, r.stdout[-3000:]
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["experiment"] == name
    for v in doc["variants"]:
        for t in v["trials"]:
            assert r.results(out / t / "linear")["task"] == "linear", t
    table = (out / "table.md").read_text()
    assert all(f"| {v['label']} " in table for v in doc["variants"]), table


def _check_ablation_table(r: Ran) -> None:
    assert "Fig. 2: stop-gradient" in r.stdout and "67.7±0.1" in r.stdout and "0.1 (collapse)" in r.stdout, r.stdout
    assert "Table 4" not in r.stdout, r.stdout


def _check_ablation_plot(r: Ran) -> None:
    _check_plot(r)
    assert "fig2.png" in {Path(p).name for p in r.stdout.split()}, r.stdout


def _check_d2(r: Ran) -> None:
    assert "detectron2" in r.stdout, r.stdout


def _check_cluster(r: Ran) -> None:
    found = re.findall(r"^rank (\d+)/(\d+) \(local (\d+)\) on (\S+): all_reduce (\S+) \(expected (\S+)\)$",
                       r.stdout, re.M)
    nodes = int(r.opt("--nodes") or 1)
    assert sorted(int(f[0]) for f in found) == list(range(nodes)), r.stdout
    assert {f[3] for f in found} == {f"node{i + 1}" for i in range(nodes)}, r.stdout
    assert all(int(f[1]) == nodes and f[4] == f[5] for f in found), r.stdout
    assert (r.path(r.opt("--log-dir"))).is_dir()


def _check_plot(r: Ran) -> None:
    pngs = [Path(line) for line in r.stdout.split() if line.endswith(".png")]
    assert pngs and all(r.path(str(p)).stat().st_size > 10_000 for p in pngs), r.stdout
    if "grid" in r.argv[2]:
        assert "linear_grid.png" in {p.name for p in pngs}, r.stdout


def _check_grid_bench(r: Ran) -> None:
    rows = re.findall(r"^\| (images|cached features)[^|]*\| +(\d+) +\| +([\d.,]+) +\|", r.stdout, re.M)
    assert len(rows) == 4 and {int(h) for _, h, _ in rows} == {1, 13}, r.stdout
    assert all(float(v.replace(",", "")) > 0 for _, _, v in rows), r.stdout
    assert f"{r.opt('--arch')} {r.opt('--size')} px" in r.stdout, r.stdout


def _check_loader_bench(r: Ran) -> None:
    """Both pipelines' images/s per core and their ratio, then the same with the DataLoader's workers."""
    per_core = dict(re.findall(r"^  (reference|fast) +([\d.]+) images/s per core$", r.stdout, re.M))
    workers = dict(re.findall(r"^  (reference|fast) +([\d.]+) images/s$", r.stdout, re.M))
    ratios = [float(v) for v in re.findall(r"^  ratio +([\d.]+) x$", r.stdout, re.M)]
    assert set(per_core) == set(workers) == {"reference", "fast"} and len(ratios) == 2, r.stdout
    assert all(float(v) > 0 for v in [*per_core.values(), *workers.values(), *ratios]), r.stdout
    assert f"DataLoader, {r.opt('--workers')} workers" in r.stdout, r.stdout


def demo_promises() -> tuple[list[str], list[str]]:
    """(folders, files) that docs/demo.md says `make demo` writes into runs/demo/: the backticked names of its
    paragraph "`make demo` writes everything into `runs/demo/`: ...", names in parentheses belonging to the
    folder before them (`pretrain/` (..., `metrics.jsonl`, ...) -> pretrain/metrics.jsonl)."""
    text = (REPO / "docs" / "demo.md").read_text()
    m = re.search(r"^`make demo` writes everything into `runs/demo/`:(.*?)(?:\n\s*\n)", text, re.M | re.S)
    assert m, "docs/demo.md: the paragraph saying what `make demo` writes is gone"
    folders, files, depth, last = [], [], 0, ""
    for tok in re.findall(r"`([^`]+)`|(\()|(\))", m.group(1)):
        name, opening, closing = tok
        depth += bool(opening) - bool(closing)
        if not name or name.startswith("-") or " " in name:
            continue
        if depth == 0 and name.endswith("/"):
            folders.append(name.rstrip("/"))
            last = name
        elif depth > 0 and last:
            files.append(last + name)
        elif depth == 0 and name != "results.json":
            files.append(name)
    return folders, files


def _check_demo(r: Ran) -> None:
    out = r.output()
    folders, files = demo_promises()
    assert {"pretrain", "knn", "linear"} <= set(folders), folders
    missing = [f + "/" for f in folders if not (out / f).is_dir()] + [f for f in files if not (out / f).is_file()]
    assert not missing, (f"docs/demo.md says `make demo` writes these into runs/demo/, the demo did not: {missing}; "
                         f"it wrote {sorted(p.name for p in out.iterdir())}; its output ends: {r.stdout[-600:]}")
    for stage in folders:
        if stage != "convert":
            assert r.results(out / stage)["task"] in ("pretrain", "knn", "linear", "detection"), stage
    table = (out / "table.md").read_text()
    assert "SimSiam (yours" in table and "random init" in table, table


@dataclass(frozen=True)
class Expect:
    check: Callable[[Ran], None]
    rc: int = 0
    timeout: float = 300


EXPECT: dict[str, Expect] = {
    "make demo": Expect(_check_demo, timeout=900),
    "python -m pretrain.generated.rehearsal": Expect(_check_rehearsal),
    "python -m transfer.tooling.d2compat check": Expect(_check_d2),
    "export DETECTRON2_DATASETS=": Expect(_check_export),
    "simsiam pretrain": Expect(_check_pretrain),
    "simsiam submit pretrain": Expect(_check_submit_pretrain),
    "simsiam submit pipeline": Expect(_check_pipeline, timeout=900),
    "simsiam submit pipeline --output runs/r50_200ep": Expect(_check_dry_run),
    "simsiam submit status": Expect(_check_status),
    "simsiam submit detect": Expect(_check_detect, timeout=600),
    "simsiam submit check": Expect(_check_cluster),
    "simsiam convert": Expect(_check_convert),
    "python -c \"import torch, torchvision; torch.save({'state_dict'": Expect(_check_simclr_file),
    "simsiam convert resnet50-1x.pth": Expect(_check_convert_simclr),
    "simsiam linear": Expect(_check_classification("linear", "top1")),
    "simsiam knn": Expect(_check_classification("knn", "top1_k200")),
    "simsiam detect": Expect(_check_detect, timeout=600),
    "simsiam table": Expect(_check_table),
    "simsiam plot": Expect(_check_plot),
    "simsiam submit ablation": Expect(_check_ablation, timeout=600),
    "simsiam table runs/fig2": Expect(_check_ablation_table),
    "simsiam table runs/byol_linear": Expect(_check_method_table),
    "simsiam plot runs/fig2": Expect(_check_ablation_plot),
    "python -m transfer.tooling.grid_bench": Expect(_check_grid_bench),
    "python -m transfer.tooling.loader_bench": Expect(_check_loader_bench),
}


def _write_official(work: Path, name: str, source: str) -> None:
    """A file in the official SimSiam layout ({"epoch", "arch", "state_dict": module.encoder.*/module.predictor.*,
    "optimizer"}) holding the weights of our checkpoint `source`."""
    import torch
    ckpt = torch.load(work / source, map_location="cpu", weights_only=True)
    torch.save({"epoch": 100, "arch": "resnet50", "optimizer": {},
                "state_dict": {f"module.{k}": v for k, v in ckpt["model"].items()}}, work / name)


# Inputs a command reads that only exist elsewhere, made in the work dir before it runs: {prefix: (path it reads
# first, writer(work), reason)}.
PREPARED: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "simsiam convert official_simsiam_checkpoint_0099.pth.tar": (
        "checkpoint/{user}/simsiam_r50/checkpoint.pth",
        lambda work: _write_official(work, "official_simsiam_checkpoint_0099.pth.tar",
                                     f"checkpoint/{_user()}/simsiam_r50/checkpoint.pth"),
        "the official file is a download: one in its layout is written from the checkpoint of README.md's "
        "`simsiam submit pretrain ... --output /checkpoint/$USER/simsiam_r50`"),
}


# ------------------------------------------------------------------------------------------------ planning

def _rule(table: dict, text: str):
    keys = [k for k in table if text.startswith(k)]
    return max(keys, key=len) if keys else None


def _user() -> str:
    return os.environ.get("USER") or __import__("getpass").getuser()


@dataclass
class Plan:
    cmd: DocCommand
    skip: Optional[str] = None      # reason
    expect: Optional[Expect] = None
    text: str = ""                  # with placeholders {imagenet} {detection} {cifar} {work}
    reasons: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)   # keys of the tables used (stale-rule check)

    @property
    def slurm(self) -> bool:
        return self.text.startswith("simsiam submit") and "--dry-run" not in self.text \
            and "--executor local" not in self.text

    def render(self, roots: dict) -> str:
        return self.text.replace("{imagenet}", roots["imagenet"]).replace("{detection}", roots["detection"]) \
            .replace("{cifar}", roots["cifar"]).replace("{work}", roots["work"])


def plan(cmd: DocCommand) -> Plan:
    p = Plan(cmd)
    skip = _rule(SKIP, cmd.text)
    if skip:
        p.skip, p.rules = SKIP[skip], [f"SKIP {skip!r}"]
        return p
    exp = _rule(EXPECT, cmd.text)
    if exp is None:
        return p
    p.expect, p.rules = EXPECT[exp], [f"EXPECT {exp!r}"]
    text = cmd.text
    for i, rw in enumerate(REWRITES):
        text, used = rw.apply(text)
        if used:
            p.reasons.append(rw.reason)
            p.rules.append(f"REWRITE {i} {rw.pattern!r}")
    shrink = _rule(SHRINK, text)
    if shrink:
        p.rules.append(f"SHRINK {shrink!r}")
        if SHRINK[shrink]:
            text += " " + SHRINK[shrink]
            p.reasons.append(f"sizes appended: {SHRINK[shrink]}")
    prep = _rule(PREPARED, cmd.text)
    if prep:
        p.reasons.append(PREPARED[prep][2])
        p.rules.append(f"PREPARED {prep!r}")
    p.text = text
    return p


PLANS = {c.where: plan(c) for c in COMMANDS}


def _expand(text: str, env: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), text)


def _paths(text: str, env: dict, work: Path) -> tuple[set[Path], set[Path]]:
    """(paths the command writes: --output, --log-dir, the rehearsal folder; paths it reads: every other argument
    that names a file or folder), resolved in the work dir."""
    try:
        argv = shlex.split(_expand(text, env))
    except ValueError:
        return set(), set()
    writes, reads = set(), set()
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        value = a.split("=", 1)[1] if re.match(r"^[\w.]+=", a) else a
        if prev in ("--output", "--log-dir") or prev == "pretrain.generated.rehearsal":
            writes.add((work / a).resolve())
        elif ("/" in value or re.search(r"\.(pth|pkl|tar|json)$", value)) and not value.startswith(("-", "(")) \
                and " " not in value:
            reads.add((work / value).resolve())
    return writes, reads


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


# ------------------------------------------------------------------------------------------------ the runner

def cluster_problem() -> Optional[str]:
    """None when the two-node test cluster is usable; else why not (a skip outside CI, a failure under CI)."""
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (sinfo missing); `bash slurm/local_cluster.sh up` sets it up"
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30)
    states = dict(line.split()[:2] for line in r.stdout.splitlines() if len(line.split()) >= 2)
    usable = [n for n in ("node1", "node2")
              if states.get(n, "").rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if r.returncode != 0 or len(usable) != 2:
        return f"the two-node SLURM cluster is not usable (sinfo: {r.stdout.strip()} {r.stderr.strip()})"
    return None


class Runner:
    """Runs the planned commands of the docs once each, in a shared work dir with a shared environment."""

    def __init__(self, work: Path, roots: dict, env: dict):
        self.work, self.roots, self.env = work, roots, env
        self.done: dict[str, Ran] = {}
        self.failed: dict[str, str] = {}
        self.upstream: dict[str, str] = {}
        self.cluster: Optional[str] = "unchecked"
        self.resolve_cifar: Callable[[], Path] = lambda: pytest.fail("no cifar_root fixture")

    def need_cluster(self) -> None:
        if self.cluster == "unchecked":
            self.cluster = cluster_problem()
        if self.cluster:
            if os.environ.get("CI"):
                pytest.fail(f"CI is set but {self.cluster}")
            pytest.skip(self.cluster)

    def _earlier(self, where: str) -> list[Plan]:
        """The commands before `where` in its file; on another page, README.md's first (the user flows)."""
        p = PLANS[where]
        return [q for w, q in PLANS.items() if (q.cmd.doc == p.cmd.doc and q.cmd.line < p.cmd.line)
                or (q.cmd.doc == "README.md" != p.cmd.doc)]

    def run(self, where: str) -> Ran:
        if where in self.failed:
            pytest.fail(f"{where} failed before: {self.failed[where]}")
        if where in self.done:
            return self.done[where]
        p = PLANS[where]
        text = p.render(self.roots)
        earlier = [q for q in self._earlier(where) if q.expect]
        for q in earlier:                                   # exports hold for the rest of the file
            if q.cmd.text.startswith("export "):
                self.run(q.cmd.where)
        writes, reads = _paths(text, self.env, self.work)
        prep = _rule(PREPARED, p.cmd.text)
        if prep:
            reads.add((self.work / PREPARED[prep][0].format(user=_user())).resolve())
        not_run = {}
        for q in earlier:                                   # what it reads, written by an earlier command
            q_writes, _ = _paths(q.render(self.roots), self.env, self.work)
            if any(_related(r, w) for r in reads for w in q_writes) and q.cmd.where not in self.done:
                try:
                    self.run(q.cmd.where)
                except pytest.skip.Exception as e:
                    not_run[q.cmd.where] = f"skipped: {e}"
                except BaseException as e:      # its checks may fail (its own test says so): it ran
                    if q.cmd.where not in self.done:
                        not_run[q.cmd.where] = str(e)[:300]
        missing = [r for r in reads if self.work in r.parents and not r.exists()]
        if missing and not_run:
            msg = f"{where} reads {[str(m.relative_to(self.work)) for m in missing]}, not written: {not_run}"
            pytest.skip(msg) if all(v.startswith("skipped") for v in not_run.values()) else pytest.fail(msg)
        self.upstream = {w: v for w, v in not_run.items() if not v.startswith("skipped")}
        if p.slurm:
            self.need_cluster()
        if "{cifar}" in p.text and not self.roots["cifar"]:
            self.roots["cifar"] = str(self.resolve_cifar())
        text = p.render(self.roots)             # with the roots an earlier command may have resolved
        if prep:
            PREPARED[prep][1](self.work)
        try:
            return self._execute(p, text)     # records done (it ran as documented) or failed (it did not)
        except subprocess.TimeoutExpired as e:
            self.failed[where] = f"timed out after {e.timeout:.0f} s"
            raise

    def _execute(self, p: Plan, text: str) -> Ran:
        t0 = time.time()
        if text.startswith("export "):
            name, _, value = text.split(None, 1)[1].partition("=")
            self.env[name] = _expand(value, self.env)
            ran = Ran(p.cmd, text, ["export", f"{name}={self.env[name]}"], 0, "", "", self.work, self.env)
        else:
            proc = subprocess.run(["bash", "-c", text], cwd=self.work, env=self.env, capture_output=True, text=True,
                                  timeout=p.expect.timeout)
            ran = Ran(p.cmd, text, shlex.split(_expand(text, self.env)), proc.returncode, proc.stdout, proc.stderr,
                      self.work, self.env)
        print(f"{p.cmd.where}: {text}\n  exit {ran.rc} in {time.time() - t0:.1f} s")
        if ran.rc != p.expect.rc:
            self.failed[p.cmd.where] = f"`{p.cmd.text}` exited {ran.rc}: {ran.stderr.strip()[-300:]}"
            pytest.fail(f"{p.cmd.where}: `{p.cmd.text}` exited {ran.rc} (expected {p.expect.rc}); ran as `{text}`"
                        + (f"\nearlier commands whose outputs it reads failed: {self.upstream}" if self.upstream else "")
                        + f"\nstdout: {ran.stdout[-3000:]}\nstderr: {ran.stderr[-4000:]}")
        self.done[p.cmd.where] = ran     # later commands may read what it wrote, whatever the checks below say
        p.expect.check(ran)
        return ran


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    """The work dir (the commands' working directory), the rehearsal trees made by the rehearsal command of the
    README with the sizes of SHRINK, and the environment: PATH starting with the .venv's bin (simsiam, python),
    USER set."""
    work = tmp_path_factory.mktemp("readme")
    rehearsal = work / "tmp" / "rehearsal"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", USER=_user(),
               PYTHONUNBUFFERED="1")
    env.pop("DETECTRON2_DATASETS", None)
    proc = subprocess.run([sys.executable, "-m", "pretrain.generated.rehearsal", str(rehearsal), "--detection",
                           *REHEARSAL_SMALL.split()], capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    roots = {"work": str(work), "imagenet": str(rehearsal / "imagenet"), "detection": str(rehearsal / "detection"),
             "cifar": ""}
    return Runner(work, roots, env)


def _params():
    out = []
    for where, p in PLANS.items():
        marks = [pytest.mark.slurm] if p.slurm else []
        out.append(pytest.param(where, marks=marks, id=where))
    return out


@pytest.mark.parametrize("where", _params())
def test_command(where, runner, request):
    p = PLANS[where]
    if p.skip:
        pytest.skip(f"{where} `{p.cmd.text}`: {p.skip}")
    assert p.expect, f"{where}: `{p.cmd.text}` has no rule (see test_every_command_has_a_rule)"
    runner.resolve_cifar = lambda: request.getfixturevalue("cifar_root")
    runner.run(where)


# ------------------------------------------------------------------------------------------------ the guard

FAKE_ROOTS = {"work": "/WORK", "imagenet": "/WORK/tmp/rehearsal/imagenet", "detection": "/WORK/tmp/rehearsal/detection",
              "cifar": "/SHARED/cifar10-jpg"}


def test_every_command_has_a_rule():
    """Each command of the docs is run (EXPECT, after REWRITES and SHRINK) or skipped with a reason (SKIP); a run
    command reads no absolute path outside the work dir and the generated data; every rule still matches."""
    assert len(COMMANDS) >= 20, [c.where for c in COMMANDS]
    problems = []
    for where, p in PLANS.items():
        if not p.skip and not p.expect:
            problems.append(f"{where}: `{p.cmd.text}`: no rule: add it to EXPECT (with REWRITES/SHRINK so that it "
                            f"runs here in seconds) or to SKIP with a reason")
            continue
        if p.skip:
            continue
        text = p.render(FAKE_ROOTS)
        for path in re.findall(r"(?<![\w.:/])/[\w.$-]+(?:/[\w.$-]*)*", text):
            if not path.startswith(("/WORK", "/SHARED")):
                problems.append(f"{where}: `{p.cmd.text}` would use {path} as written: add a rewrite")
        if text.startswith("simsiam submit") and "--dry-run" not in text and "status" not in text.split()[2:3]:
            if "--gpus-per-node" in text or not re.search(r"--time 10\b", text):
                problems.append(f"{where}: `{text}` asks for GPUs or no time limit on the test cluster")
    used = {r for p in PLANS.values() for r in p.rules}
    tables = ([f"SKIP {k!r}" for k in SKIP] + [f"EXPECT {k!r}" for k in EXPECT] + [f"SHRINK {k!r}" for k in SHRINK]
              + [f"PREPARED {k!r}" for k in PREPARED] + [f"REWRITE {i} {rw.pattern!r}" for i, rw in enumerate(REWRITES)])
    problems += [f"stale rule (matches no command of {', '.join(DOCS)}): {t}" for t in tables if t not in used]
    assert not problems, "\n".join(problems)


def test_extraction_rules():
    """How blocks and lines are read: comments go, continuation lines join, output listings are not commands."""
    assert strip_comment('make demo   # set-up, then "x"') == "make demo"
    assert strip_comment("a --args \"x # y\" # z") == 'a --args "x # y"'
    assert strip_comment("echo a#b") == "echo a#b"
    by_where = {c.where: c.text for c in COMMANDS}
    for doc in DOCS:
        text = (REPO / doc).read_text()
        n_fences = sum(1 for line in text.splitlines() if line.strip().startswith("```"))
        assert n_fences % 2 == 0, f"{doc}: an unclosed code block"
    # no continuation line is left dangling and no output listing line is read as a command
    for where, text in by_where.items():
        assert not text.endswith("\\"), where
        assert not re.match(r"^(pretrain|convert|knn|linear|rank|\.\.\.|/datasets|\$DETECTRON2)\b", text), where


def test_rewrite_table(capsys):
    """The tables in words (shown with SIMSIAM_README_TABLE=1): what runs as written, what is rewritten and why,
    what is skipped and why. A command that does not run as written has a reason for each change."""
    lines = []
    for where, p in PLANS.items():
        if p.skip:
            lines.append(f"SKIP  {where}  {p.cmd.text}\n      {p.skip}")
        elif p.expect:
            ran = p.render(FAKE_ROOTS)
            assert ran == p.cmd.text or p.reasons, where
            lines.append(f"RUN   {where}  {p.cmd.text}" + (f"\n   as {ran}" if ran != p.cmd.text else "")
                         + "".join(f"\n      - {r}" for r in p.reasons))
    assert len(lines) == len(PLANS)
    if os.environ.get("SIMSIAM_README_TABLE"):
        with capsys.disabled():
            print("\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------------ the pages

def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, blanks -> '-'."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_readme_is_a_short_guide():
    """README.md: the two commands on its first screen (40 lines), about 200 lines in all, every page of docs/
    linked from it."""
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, len(lines)
    assert re.search(r"^make demo\b", "\n".join(lines[:40]), re.M), "`make demo` is not on the first screen"
    assert re.search(r"^make test\b", "\n".join(lines[:40]), re.M), "`make test` is not on the first screen"
    pages = [d for d in DOCS if d.startswith("docs/")]
    assert pages and not [p for p in pages if f"]({p}" not in text], "pages of docs/ the README does not link"


def test_links_resolve():
    """Every relative link of the docs names a file of the repository and, with #anchor, one of its headings."""
    problems = []
    for doc in DOCS:
        here = (REPO / doc).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", (REPO / doc).read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (here / path).resolve() if path else REPO / doc
            if not file.exists():
                problems.append(f"{doc}: link {target}: no such file")
            elif anchor and file.suffix == ".md":
                heads = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", file.read_text(), re.M)}
                if anchor not in heads:
                    problems.append(f"{doc}: link {target}: no heading '{anchor}' in {file.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


REPO_PATH = re.compile(r"^((?:pretrain|transfer|slurm|eval_configs|tests|docs)/[\w./-]*?)(?:::?\w+)?$")


def test_named_paths_exist():
    """Every repository path the docs name in backticks (`transfer/stages.py`, `eval_configs/linear/`, with an
    optional `:name` or `::name`) exists; placeholders (`<name>`, `*`) are left alone."""
    named, missing = 0, []
    for doc in DOCS:
        for token in re.findall(r"`([^`\s]+)`", (REPO / doc).read_text()):
            m = REPO_PATH.match(token)
            if m and "<" not in token and "*" not in token:
                named += 1
                if not (REPO / m.group(1)).exists():
                    missing.append(f"{doc}: `{token}`")
    assert named > 50 and not missing, (named, missing)
