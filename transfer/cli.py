"""`simsiam <command> ...`: one console command; each subcommand lives in its own module.

Modules are imported lazily, so `simsiam pretrain` never imports detectron2 or submitit.
Each subcommand has a `python -m` equivalent (listed in `simsiam --help`).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (module with main(argv), one-line help)
    "pretrain": ("pretrain.main", "SimSiam pretraining (auto-resumes in its output folder)"),
    "knn": ("transfer.knn", "offline kNN evaluation of a checkpoint (k=200 and k=20)"),
    "convert": ("transfer.convert", "convert a checkpoint to torchvision or Detectron2 weights"),
    "linear": ("transfer.linear", "linear evaluation on frozen features (ImageNet protocol)"),
    "detect": ("transfer.detect", "Detectron2 fine-tuning and evaluation (VOC / COCO), N trials"),
    "table": ("transfer.tables", "comparison tables (paper Tables 4 and 5) from results.json files"),
    "plot": ("transfer.plots", "PNG plots of a run folder's metrics"),
    "demo": ("transfer.demo", "the whole chain on the embedded data, in one run folder"),
    "submit": ("slurm.submit", "submit a stage or the whole pipeline to SLURM (submitit)"),
    "make-data": ("pretrain.synthetic", "write the embedded synthetic datasets to a folder"),
}


def usage() -> str:
    lines = ["usage: simsiam <command> [args...]", "", "commands:"]
    for name, (mod, text) in COMMANDS.items():
        lines.append(f"  {name:<10} {text}   (python -m {mod})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"simsiam: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
