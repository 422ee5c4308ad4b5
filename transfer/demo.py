"""The main job on the embedded default data, end to end, into one run folder.

`simsiam demo [--output runs/demo] [--quick]`

  1. pretrain   SimSiam ResNet-50 on the generated ImageFolder (eval_configs/pretrain/demo.yaml)
  2. convert    checkpoint -> torchvision state dict and Detectron2 weights
  3. knn        offline kNN (k=200, k=20) of the converted backbone
  4. linear     linear evaluation on frozen features (eval_configs/linear/demo.yaml)
  5. detect     Faster R-CNN R50-C4 fine-tuning + PascalVOC evaluation on the generated VOC data
                (eval_configs/detection/tiny.yaml)
  6. report     plots (PNG) and the comparison tables (table.md, table.txt)

Each stage is skipped when its results already exist, so an interrupted demo continues where it stopped.
Every stage here calls the same entry point as the corresponding `simsiam <command>`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Stage-size knobs for --quick (CI): same chain, fewer steps.
QUICK_PRETRAIN = ["train.epochs=2", "data.limit_per_class=12", "train.batch_size=32", "monitor.knn_max_train=12",
                  "monitor.knn_max_val=8"]
QUICK_KNN = ["data.limit_per_class=12", "data.val_limit_per_class=8"]
QUICK_LINEAR = ["train.epochs=2", "data.limit_per_class=12", "data.val_limit_per_class=8"]
QUICK_DETECT = ["SOLVER.MAX_ITER", "4", "SIMSIAM.MAX_TEST_IMAGES", "8"]


def _stage(name: str, index: int, total: int) -> float:
    print(f"\n=== [{index}/{total}] {name} " + "=" * max(3, 60 - len(name)), flush=True)
    return time.time()


def _done(t0: float, what: str) -> None:
    print(f"--- {what} ({time.time() - t0:.0f} s)", flush=True)


def _call(main, argv: list[str], stage: str) -> None:
    print("$ simsiam " + stage + " " + " ".join(argv), flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"simsiam demo: stage '{stage}' failed with exit code {rc}; "
                         f"rerun the demo to continue from the last finished stage")


def run_demo(out: Path, quick: bool = False, cache_dir: str | None = None) -> Path:
    from pretrain import main as pretrain_main
    from transfer import convert, detect, knn, linear, plots, tables

    out.mkdir(parents=True, exist_ok=True)
    total, t_all = 6, time.time()
    extra = [f"data.cache_dir={cache_dir}"] if cache_dir else []

    t0 = _stage("pretrain SimSiam (embedded ImageFolder)", 1, total)
    pre = out / "pretrain"
    if (pre / "results.json").exists():
        print("already done: " + str(pre / "results.json"))
    else:
        _call(pretrain_main.main, ["--config", "demo", "--output", str(pre), *extra,
                                   *(QUICK_PRETRAIN if quick else [])], "pretrain")
    _done(t0, "pretraining")
    ckpt = pre / "checkpoint.pth"

    t0 = _stage("convert checkpoint", 2, total)
    tv, d2 = out / "convert" / "resnet50_torchvision.pth", out / "convert" / "resnet50_detectron2.pkl"
    for to, path in (("torchvision", tv), ("detectron2", d2)):
        if not path.exists():
            _call(convert.main, [str(ckpt), "--to", to, "--output", str(path)], "convert")
    _done(t0, "conversion")

    t0 = _stage("kNN evaluation", 3, total)
    if not (out / "knn" / "results.json").exists():
        _call(knn.main, ["--weights", str(ckpt), "--data", "embedded", "--output", str(out / "knn"),
                         *([f"--cache-dir={cache_dir}"] if cache_dir else []), *(QUICK_KNN if quick else [])], "knn")
    _done(t0, "kNN")

    t0 = _stage("linear evaluation (frozen backbone)", 4, total)
    if not (out / "linear" / "results.json").exists():
        _call(linear.main, ["--weights", str(ckpt), "--config", "demo", "--output", str(out / "linear"), *extra,
                            *(QUICK_LINEAR if quick else [])], "linear")
    _done(t0, "linear evaluation")

    t0 = _stage("detection fine-tuning (R50-C4, embedded VOC)", 5, total)
    if not (out / "detection" / "results.json").exists():
        _call(detect.main, ["--weights", str(d2), "--config", "tiny", "--output", str(out / "detection"),
                            "--trials", "1", *(QUICK_DETECT if quick else [])], "detect")
    _done(t0, "detection")

    t0 = _stage("plots and comparison tables", 6, total)
    for p in plots.plot_run(out):
        print(f"plot: {p}")
    docs = tables.load_docs([out])
    t = tables.Tables(docs)
    (out / "table.md").write_text(tables.render(t, "markdown"))
    text = tables.render(t, "terminal")
    (out / "table.txt").write_text(text)
    print(text)
    _done(t0, "report")
    print(f"\nsimsiam demo: finished in {time.time() - t_all:.0f} s; everything is in {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="simsiam demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    ap.add_argument("--quick", action="store_true", help="fewer steps per stage (CI smoke run)")
    ap.add_argument("--cache-dir", help="where the embedded datasets are generated (default ~/.cache/simsiam)")
    args = ap.parse_args(argv)
    run_demo(Path(args.output), args.quick, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
