"""`simsiam pretrain [--config PRESET_OR_YAML ...] --output DIR [key=value ...]` (= `python -m pretrain.main`).

Defaults are the paper's ImageNet ResNet-50 recipe (pretrain/defaults.py); each --config applies a YAML
delta (a preset name under eval_configs/pretrain/ or a path); key=value overrides win. The dataset is always
named: data.root=DIR (an ImageFolder tree, or its parent holding train/ and val/), or data.root=embedded for
the generated demo data (the demo and test_tiny presets set it); without it, or when DIR is not there, the
run is refused before its folder is made.

Running the same command again with the same --output resumes from DIR/checkpoint.pth. The config stored in
the checkpoint must agree on every key that changes the optimisation trajectory (model, optim, data and
augmentation, epochs, batch, seed, ...; pretrain.train.RESUME_HARMLESS lists the keys that may change):
otherwise the run stops before writing anything, with one line naming each differing key and exit code 2.
--allow-config-change resumes anyway; the change is then logged and listed in results.json
("config_changes").

Stopping in the middle of an epoch: `touch DIR/STOP` or `kill -USR1 <pid>` (each process of a torchrun job).
Training finishes its current step, writes DIR/checkpoint.pth with its position in the epoch and exits with
code 0; the same command continues at the next step with the data and augmentations an uninterrupted run
would have used. Exit codes: 0 done or stopped, 2 bad input (one line naming the file, key or value),
1 an internal error (with its traceback).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from . import config as config_mod
from .data import EMBEDDED, DataError, resolve_roots
from .defaults import PretrainConfig
from .frame import guard

NO_DATA_ROOT = ("data.root is not set: name the dataset, e.g. data.root=/path/to/imagenet (an ImageFolder with "
                "train/ and val/), or data.root=embedded for the generated demo data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simsiam pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", action="append", default=[],
                   help="preset name (eval_configs/pretrain/<name>.yaml) or YAML path; repeatable")
    p.add_argument("--output", "-o", required=True, help="run folder (resumes when it holds checkpoint.pth)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if settings that change the training trajectory differ from the "
                        "checkpoint's config (the change is logged and recorded in results.json)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=200 data.root=/data/in1k")
    return p


def resolve_config(files, overrides) -> PretrainConfig:
    return config_mod.resolve(PretrainConfig(), files=files, overrides=overrides, kind="pretrain")


def check_data(cfg: PretrainConfig) -> None:
    """Refuse a pretraining whose dataset is not named or not there (a DataError naming data.root), before
    anything is written."""
    if not cfg.data.root:
        raise DataError(NO_DATA_ROOT)
    if cfg.data.root != EMBEDDED:
        resolve_roots(cfg.data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return guard("simsiam pretrain", lambda: _main(args))


def _main(args) -> int:
    from .train import request_stop, run
    cfg = resolve_config(args.config, args.overrides)
    if args.print_config:
        import yaml
        print(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
        return 0
    check_data(cfg)
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # a launcher's own handler is kept
        signal.signal(signal.SIGUSR1, request_stop)
    summary = run(cfg, Path(args.output), allow_config_change=args.allow_config_change)
    m = summary["metrics"]
    state = "complete" if summary["complete"] else "stopped (run the same command to resume)"
    print(f"pretraining {state}: epoch {summary['epoch']}, step {summary['step']}, loss {m['loss']}, "
          f"collapse_std {m['collapse_std']}, kNN top-1 {m['knn_top1']}; run folder {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
