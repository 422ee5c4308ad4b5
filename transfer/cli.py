"""`simsiam <command> ...`: one console command; each subcommand lives in its own module.

The stages come from the registry in transfer/stages.py; `submit` is the one command that lives in slurm/
(SUBMIT below). Modules are imported lazily, so `simsiam pretrain` never imports detectron2 or submitit.
Each subcommand has a `python -m` equivalent (listed in `simsiam --help`).
"""
from __future__ import annotations

import importlib
import sys

from transfer import stages

# The console command's only reach into slurm/: `simsiam submit` runs slurm.submit.main.
SUBMIT = ("slurm.submit", "submit a stage or the whole pipeline to SLURM (submitit)")


def commands() -> dict[str, tuple[str, str]]:
    """name -> (module with main(argv), one-line help): every registered stage, then submit."""
    table = {s.name: (s.module, s.help) for s in stages.STAGES}
    table["submit"] = SUBMIT
    return table


def usage() -> str:
    lines = ["usage: simsiam <command> [args...]", "", "commands:"]
    for name, (mod, text) in commands().items():
        lines.append(f"  {name:<10} {text}   (python -m {mod})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    table = commands()
    if name not in table:
        print(f"simsiam: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
