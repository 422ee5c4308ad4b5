"""The `simsiam linear` command: parse, resolve the config, run, print one summary line."""
from __future__ import annotations

import argparse
import dataclasses

from pretrain import config as config_mod
from pretrain.frame import guard

from .config import LinearConfig
from .evaluation import run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam linear", description="Linear evaluation on frozen features (the "
                                 "ImageNet protocol of the SimSiam paper / official code).")
    ap.add_argument("--weights", required=True, help="checkpoint to evaluate, or 'random' (needs model.arch=...)")
    ap.add_argument("--output", required=True, help="run folder (resumes when it holds checkpoint.pth)")
    ap.add_argument("--config", action="append", default=[],
                    help="preset under eval_configs/linear/ (imagenet_lars, imagenet_sgd, cifar10, demo, grid) or "
                         "a YAML")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. data.root=/data/imagenet train.epochs=10 "
                                                 "grid.enabled=true grid.base_lrs=[0.1,1,10]; data.root is "
                                                 "required (a folder, or 'embedded')")
    return ap


def summary(result: dict, output: str) -> str:
    m = result["metrics"]
    state = "" if result["complete"] else ", incomplete: run again to continue"
    tail = f"({result['epoch']} epochs{state}) -> {output}"
    if "grid" not in result:
        return f"linear evaluation: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  {tail}"
    g = result["grid"]
    edge = "".join(f"; {e['advice']}" for e in g["at_edge"])
    return (f"linear evaluation, {g['label']}: top-1 {m['top1']:.2f}  top-5 {m['top5']:.2f}  (head "
            f"{g['picked']} of {len(g['heads'])}: base lr {m['picked_base_lr']:g}, weight decay "
            f"{m['picked_weight_decay']:g}, held-out top-1 {m['holdout_top1']:.2f}{edge})  {tail}")


def main(argv: list[str] | None = None) -> int:
    """`simsiam linear`: 0 when done, 2 for bad input (one line on stderr), 1 for an internal error."""
    args = build_parser().parse_args(argv)

    def _main() -> int:
        cfg = config_mod.resolve(LinearConfig(), args.config, args.overrides, kind="linear")
        print(summary(run(dataclasses.replace(cfg, weights=args.weights), args.output, presets=args.config),
                      args.output))
        return 0
    return guard("simsiam linear", _main)
