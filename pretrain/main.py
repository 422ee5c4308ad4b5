"""`simsiam pretrain [--config PRESET_OR_YAML ...] --output DIR [key=value ...]` (= `python -m pretrain.main`).

Defaults are the paper's ImageNet ResNet-50 recipe (pretrain/defaults.py); each --config applies a YAML
delta (a preset name under eval_configs/pretrain/ or a path); key=value overrides win. Running the same
command again with the same --output resumes from DIR/checkpoint.pth; the stored config must agree on
the model and the batch size unless --allow-config-change is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import checkpoint as ckpt_io
from . import config as config_mod
from .defaults import PretrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simsiam pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", action="append", default=[],
                   help="preset name (eval_configs/pretrain/<name>.yaml) or YAML path; repeatable")
    p.add_argument("--output", "-o", required=True, help="run folder (resumes when it holds checkpoint.pth)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if model/batch settings differ from the checkpoint's config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=200 data.root=/data/in1k")
    return p


def resolve_config(files, overrides) -> PretrainConfig:
    return config_mod.resolve(PretrainConfig(), files=files, overrides=overrides, kind="pretrain")


def check_resume(output: Path, cfg: PretrainConfig, allow_change: bool) -> None:
    from .train import ResumeConfigError, config_differences
    latest = output / ckpt_io.LATEST
    if not latest.is_file():
        return
    stored = ckpt_io.read_checkpoint(latest)
    if ckpt_io.checkpoint_kind(stored) != ckpt_io.FORMAT:
        raise ckpt_io.CheckpointError(f"{latest}: not a '{ckpt_io.FORMAT}' checkpoint; cannot resume from it")
    diffs = config_differences(stored.get("config") or {}, cfg)
    if diffs and not allow_change:
        raise ResumeConfigError(
            f"{output} holds a checkpoint (epoch {stored.get('epoch')}) trained with a different config:\n  "
            + "\n  ".join(diffs) + "\nuse the same settings, another --output, or --allow-config-change")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from .checkpoint import CheckpointError
    from .data import CorruptImageError, DataError
    from .train import NonFiniteLossError, ResumeConfigError, run
    try:
        cfg = resolve_config(args.config, args.overrides)
        if args.print_config:
            import yaml
            print(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False))
            return 0
        output = Path(args.output)
        check_resume(output, cfg, args.allow_config_change)
        summary = run(cfg, output)
    except (config_mod.ConfigError, DataError, CorruptImageError, CheckpointError, NonFiniteLossError,
            ResumeConfigError) as e:
        print(f"simsiam pretrain: error: {e}", file=sys.stderr)
        return 1
    m = summary["metrics"]
    state = "complete" if summary["complete"] else "stopped (run the same command to resume)"
    print(f"pretraining {state}: epoch {summary['epoch']}, loss {m['loss']}, collapse_std {m['collapse_std']}, "
          f"kNN top-1 {m['knn_top1']}; run folder {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
