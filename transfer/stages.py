"""The stage registry: every stage of `simsiam` declared once, with its module, its argument parser and the
arguments that name its output and inputs.

`simsiam <stage>` (transfer/cli.py) and `simsiam submit <stage>` / `simsiam submit pipeline` (slurm/submit.py)
both read this table. A stage's parser is built by its module's `build_parser()`, the same parser its `main`
uses, so a command line that `simsiam submit` accepts is one the stage accepts when the job starts.
Modules are imported only when a parser is asked for: `simsiam --help` imports none of them.

Below the registry, the chain pretrain -> convert -> kNN, linear, detection -> table (LINKS, Chain): which stage
reads which stage's output, the folders and file names under one run folder, and the arguments that wire them.
`simsiam demo` and `simsiam submit pipeline` build their stage calls from it.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pretrain.errors import InputError


@dataclass(frozen=True)
class Stage:
    name: str
    module: str                    # has main(argv) and build_parser()
    help: str
    output: Optional[str] = None   # dest of the argument naming where the stage writes
    output_is_file: bool = False   # that argument names a file; the run folder is its parent
    weights: Optional[str] = None  # dest of its weights / checkpoint input
    data: Optional[str] = None     # its dataset input: "--data", "data.root" (a key=value override) or
    #                                "detectron2" (--config, --data-root, --train-dataset, --test-dataset)
    submit: bool = False           # `simsiam submit <name>` runs it as a SLURM job

    def parser(self) -> argparse.ArgumentParser:
        return importlib.import_module(self.module).build_parser()

    def paths(self, ns: argparse.Namespace) -> tuple[Path, Path]:
        """(run folder, file whose existence means the stage is finished) of a parsed command line."""
        value = getattr(ns, self.output, None) if self.output else None
        if not value:
            raise StageArgError(self.name, f"--{self.output or 'output'} is needed (its run folder; logs and "
                                           "requeue records go there)")
        out = Path(value).resolve()
        return (out.parent, out) if self.output_is_file else (out, out / "results.json")


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", "pretrain.main", "SimSiam pretraining (auto-resumes in its output folder)",
          output="output", data="data.root", submit=True),
    Stage("convert", "transfer.evaluation.convert", "convert a checkpoint to torchvision or Detectron2 weights",
          output="output", output_is_file=True, weights="src", submit=True),
    Stage("knn", "transfer.evaluation.knn", "offline kNN evaluation of a checkpoint (k=200 and k=20)",
          output="output", weights="weights", data="--data", submit=True),
    Stage("linear", "transfer.evaluation.linear", "linear evaluation on frozen features (ImageNet protocol)",
          output="output", weights="weights", data="data.root", submit=True),
    Stage("detect", "transfer.evaluation.detect", "Detectron2 fine-tuning and evaluation (VOC / COCO), N trials",
          output="output", weights="weights", data="detectron2", submit=True),
    Stage("table", "transfer.reporting.tables", "comparison tables (paper Tables 4 and 5) from results.json files",
          output="output", output_is_file=True, submit=True),
    Stage("plot", "transfer.reporting.plots", "PNG plots of a run folder's metrics", output="output"),
    Stage("demo", "transfer.tooling.demo", "the whole chain on the embedded data, in one run folder", output="output"),
    Stage("make-data", "pretrain.generated.embedded", "write the embedded synthetic datasets to a folder", output="out"),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
SUBMITTABLE: tuple[str, ...] = tuple(s.name for s in STAGES if s.submit)


class StageArgError(InputError, ValueError):
    """A stage's command line that its parser rejects; the message starts with the stage's name."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def get(name: str) -> Stage:
    if name not in BY_NAME:
        raise StageArgError(name, f"unknown stage (known: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def parser(name: str) -> argparse.ArgumentParser:
    """The stage's own parser, raising StageArgError instead of printing usage and exiting."""
    return one_line_errors(get(name).parser(), name)


def one_line_errors(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """`p` reporting a parse error as a StageArgError ('<name>: <argparse's message>', one line, exit code 2
    through pretrain.frame.guard) instead of printing its usage and exiting."""
    def fail(message: str):
        raise StageArgError(name, message)

    p.error = fail  # argparse reports every parse error through self.error
    return p


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """argv parsed exactly as `simsiam <name>` parses it (parse_args: unknown arguments are errors)."""
    return parser(name).parse_args([str(a) for a in argv])


def format_argv(p: argparse.ArgumentParser, ns: argparse.Namespace) -> list[str]:
    """A command line that `p` parses back into `ns`: options first (long names; options equal to their
    default are left out), then the positionals in their declared order."""
    opts: list[str] = []
    positionals: list[str] = []
    for act in p._actions:
        if isinstance(act, argparse._HelpAction) or act.dest == argparse.SUPPRESS:
            continue
        value = getattr(ns, act.dest, act.default)
        if not act.option_strings:
            positionals += [str(v) for v in value] if isinstance(value, list) else \
                ([] if value is None else [str(value)])
            continue
        if value == act.default and not act.required:
            continue
        flag = next((s for s in act.option_strings if s.startswith("--")), act.option_strings[0])
        if isinstance(act, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            opts.append(flag)
        elif isinstance(act, argparse._AppendAction):
            for v in value or []:
                opts += _option(flag, v)
        elif value is not None:
            opts += _option(flag, value)
    return opts + positionals


def _option(flag: str, value) -> list[str]:
    text = str(value)
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


# ------------------------------------------------------------------------------------------------ the chain
# pretrain -> convert -> detect, pretrain -> knn, linear; knn, linear, detect -> table. `simsiam demo`
# (transfer/tooling/demo.py) and `simsiam submit pipeline` (slurm/submit.py) both wire their stages with Chain:
# the same folders, the same file names, the same arguments.

@dataclass(frozen=True)
class Link:
    stage: str                     # a registered stage
    folder: str                    # its run folder under the chain's folder
    after: tuple[str, ...] = ()    # the stages whose outputs it reads
    full: bool = False             # on SLURM it gets the whole allocation (otherwise one task, at most one GPU)
    row: bool = False              # its results.json is a row of the chain's table


LINKS: tuple[Link, ...] = (  # in submission order: every stage after the stages it reads
    Link("pretrain", "pretrain", full=True, row=True),
    Link("convert", "convert", ("pretrain",)),
    Link("knn", "knn", ("pretrain",), row=True),
    Link("linear", "linear", ("pretrain",), full=True, row=True),
    Link("detect", "detection", ("convert",), full=True, row=True),
    Link("table", ".", ("knn", "linear", "detect")),
)
CHAIN_STAGES: tuple[str, ...] = tuple(link.stage for link in LINKS)
LINK: dict[str, Link] = {link.stage: link for link in LINKS}
CONVERTED = {"detectron2": "backbone_detectron2.pkl", "torchvision": "backbone_torchvision.pth"}
CHECKPOINT = "checkpoint.pth"       # what pretraining writes into its run folder
TABLE = "table.md"
TABLE_FORMAT = "markdown"
BASELINE = "random"                 # --weights of the random-init baseline; its folder is <folder>_random
DETECTION_TRIALS = 1                # `simsiam submit pipeline --trials`
DETECTION_SEED = 0                  # `simsiam submit pipeline --seed`: seed of trial 0 (trial i: seed + i)


@dataclass(frozen=True)
class Chain:
    """The chain's stages under one run folder: where each writes and the arguments that feed it its inputs."""
    out: Path

    def folder(self, stage: str, baseline: bool = False) -> Path:
        return self.out / (LINK[stage].folder + (f"_{BASELINE}" if baseline else ""))

    @property
    def checkpoint(self) -> Path:
        return self.folder("pretrain") / CHECKPOINT

    def converted(self, to: str = "detectron2") -> Path:
        return self.folder("convert") / CONVERTED[to]

    @property
    def table(self) -> Path:
        return self.out / TABLE

    def fixed(self, stage: str, *, baseline: bool = False, to: str = "detectron2", trials: int = DETECTION_TRIALS,
              seed: int = DETECTION_SEED) -> dict[str, str]:
        """The arguments the chain sets for `stage` (parser dest -> value); a `baseline` evaluates the
        random-init network into <folder>_random."""
        weights = {"knn": self.checkpoint, "linear": self.checkpoint, "detect": self.converted()}.get(stage)
        fixed = {
            "pretrain": {"output": self.folder("pretrain")},
            "convert": {"src": self.checkpoint, "to": to, "output": self.converted(to)},
            "knn": {"weights": BASELINE if baseline else weights, "output": self.folder("knn", baseline)},
            "linear": {"weights": BASELINE if baseline else weights, "output": self.folder("linear", baseline)},
            "detect": {"weights": BASELINE if baseline else weights, "output": self.folder("detect", baseline),
                       "trials": trials, "seed": seed},
            "table": {"format": TABLE_FORMAT, "output": self.table},
        }[stage]
        return {dest: str(value) for dest, value in fixed.items()}

    def argv(self, stage: str, *, rows: tuple[str, ...] = CHAIN_STAGES, **fixed) -> list[str]:
        """`stage`'s command line of the chain's arguments (fixed's keywords); a table reads the results of the
        `rows` stages."""
        args = self.fixed(stage, **fixed)
        head = [args.pop("src")] if "src" in args else self.table_inputs(rows) if stage == "table" else []
        return head + [part for dest, value in args.items() for part in (f"--{dest}", value)]

    def table_inputs(self, rows: tuple[str, ...] = CHAIN_STAGES) -> list[str]:
        """The results the chain's table reads: each row stage's run folder (detection's summary file, not its
        trials)."""
        where = {"detect": self.folder("detect") / "results.json"}
        return [str(where.get(link.stage, self.folder(link.stage))) for link in LINKS
                if link.row and link.stage in rows]
