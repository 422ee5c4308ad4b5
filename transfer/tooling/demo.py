"""The main job on the embedded default data, end to end, into one run folder.

`simsiam demo [--output runs/demo] [--arch resnet18|resnet50] [--seed S] [--quick]`

  1. pretrain   SimSiam on the generated ImageFolder (eval_configs/pretrain/demo.yaml: ResNet-18 at 32 px;
                `--arch resnet50` switches to the ResNet-50 and its 2048-d heads)
  2. convert    checkpoint -> torchvision state dict and Detectron2 weights
  3. knn        offline kNN (k=20, k=200) of the pretrained backbone
  4. linear     linear evaluation on frozen features (eval_configs/linear/demo.yaml)
  5. detect     Faster R-CNN C4 fine-tuning + PascalVOC evaluation on the generated VOC data, 2 trials
                (eval_configs/detection/demo_r18.yaml: R18-C4, res5 of basic blocks in the ROI head;
                demo_r50.yaml for the ResNet-50)
  6. report     plots (PNG) and the comparison tables (table.md, table.txt)

Stages 3-5 also evaluate a randomly initialised backbone (`--weights random`) on the same data and protocol,
into knn_random/, linear_random/ and detection_random/: the tables show that baseline next to the
pretrained rows. It is the network the pretraining started from, built the same way (the official init: the
last BN of every residual block zeroed, `model.zero_init_residual` of kNN and linear, SIMSIAM.ZERO_INIT_RESIDUAL
of detection), so each gain is what the pretraining added.
After the tables it prints, for each measurement, this run's number beside the range the full demo gave
over several pretraining seeds and machines (RANGES; docs/demo.md shows the same table).
Every run is skipped when its results.json already exists, so an interrupted demo continues where it
stopped. Every stage here calls the same entry point as the corresponding `simsiam <command>`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pretrain import results
from transfer import stages

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


def _once(folder: Path, main, argv: list[str], stage: str) -> None:
    """`simsiam <stage> argv`, unless `folder` already holds its results.json."""
    if (folder / "results.json").exists():
        print(f"already done: {folder / 'results.json'}")
    else:
        _call(main, argv, stage)


def pretrained_protocol(knn_dir: Path) -> tuple[str, list[str]]:
    """(arch, kNN data overrides) of the pretrained kNN run in knn_dir: the backbone and the resolved image
    size, crop and normalisation, which a random-init run cannot read from a checkpoint."""
    doc = results.read(knn_dir)
    d = doc.config["data"]
    return doc.source.pretrain.arch, [f"data.{k}={json.dumps(d[k], separators=(',', ':'))}"
                                               for k in ("image_size", "crop_fraction", "mean", "std")]


def pretraining_zero_init(pre_dir: Path) -> bool:
    """Whether the pretraining in pre_dir started with zero-initialised residual blocks (its config.json)."""
    return bool(json.loads((pre_dir / "config.json").read_text())["model"]["zero_init_residual"])


def pretraining_seed(pre_dir: Path) -> int:
    """The torch seed the pretraining in pre_dir built its network under (its config.json's train.seed)."""
    return int(json.loads((pre_dir / "config.json").read_text())["train"]["seed"])


def pretraining_init(pre_dir: Path) -> str:
    """The `model.zero_init_residual=...` override that builds the network the pretraining in pre_dir started
    from (kNN and linear evaluation; the seed is passed beside it)."""
    return f"model.zero_init_residual={'true' if pretraining_zero_init(pre_dir) else 'false'}"


ARCH_OVERRIDES = {"resnet18": [], "resnet50": ["model.arch=resnet50", "model.dim=2048", "model.pred_dim=512"]}
DETECTION_PRESETS = {"resnet18": "demo_r18", "resnet50": "demo_r50"}  # eval_configs/detection
DETECTION_NAMES = {"resnet18": "Faster R-CNN R18-C4", "resnet50": "Faster R-CNN R50-C4"}
CONVERSIONS = ("torchvision", "detectron2")  # the converted weights the demo writes (stages.CONVERTED)
DETECTION_TRIALS = 2  # per backbone: the table shows mean +- std, so the gain can be read against the spread
TOTAL = 6                    # stages, for the progress headers

# What the full demo (ResNet-18, the default sizes) gave over the runs of RANGES_MEASURED: (low, high) of each
# measurement for the random-init baseline and for SimSiam. docs/demo.md shows the same table (ranges_markdown).
RANGES_MEASURED = ("pretraining seeds 0-2 with one intra-op thread on two AMD EPYC machines, and seed 0 with two "
                   "threads on an AMD EPYC and on an Intel Xeon, 2 cores each, 2026-12-03 and 2026-12-04")
RANGES = (  # label, results folder (the baseline's: <folder>_random), metric, random init, SimSiam
    ("kNN top-1, k=20", "knn", "top1_k20", (12.9, 15.0), (33.3, 43.3)),
    ("linear top-1", "linear", "top1", (12.1, 15.0), (32.5, 41.2)),
    ("detection box AP50 (mean of the trials)", "detection", "AP50", (7.5, 9.2), (17.5, 26.8)),
)


def run_demo(out: Path, quick: bool = False, cache_dir: str | None = None, arch: str = "resnet18",
             seed: int = 0) -> Path:
    """Run every stage into `out` (finished stages are skipped); `arch` is the pretrained backbone, `seed` the
    pretraining's train.seed (the random-init baselines are built under the same seed)."""
    if arch not in ARCH_OVERRIDES:
        raise ValueError(f"unknown --arch '{arch}' (known: {', '.join(ARCH_OVERRIDES)})")
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    chain = stages.Chain(out)
    extra = [f"data.cache_dir={cache_dir}"] if cache_dir else []
    _pretrain_stage(chain, quick, [*extra, f"train.seed={seed}"], arch)
    _convert_stage(chain)
    _classification_stages(chain, quick, cache_dir, extra)
    _detection_stage(chain, arch, quick)
    t0 = _stage("plots and comparison tables", 6, TOTAL)
    report(out)
    print(expectations(out, quick, arch))
    _done(t0, "report")
    print(f"\nsimsiam demo: finished in {time.time() - t_all:.0f} s; everything is in {out}")
    return out



def _main(stage: str):
    """The entry point of `simsiam <stage>`."""
    from pretrain import main as pretrain_main
    from transfer.evaluation import convert, detect, knn, linear

    return {"pretrain": pretrain_main.main, "convert": convert.main, "knn": knn.main, "linear": linear.main,
            "detect": detect.main}[stage]


def _pretrain_stage(chain: stages.Chain, quick: bool, extra: list[str], arch: str) -> None:
    """Pretrain (or resume) into the chain's pretrain folder."""
    t0 = _stage(f"pretrain SimSiam {arch} (embedded ImageFolder)", 1, TOTAL)
    _once(chain.folder("pretrain"), _main("pretrain"), [*chain.argv("pretrain"), "--config", "demo", *extra,
                                                        *ARCH_OVERRIDES[arch], *(QUICK_PRETRAIN if quick else [])],
          "pretrain")
    _done(t0, "pretraining")


def _convert_stage(chain: stages.Chain) -> None:
    """The checkpoint as torchvision and Detectron2 weights, each converted once."""
    t0 = _stage("convert checkpoint", 2, TOTAL)
    for to in CONVERSIONS:
        if not chain.converted(to).exists():
            _call(_main("convert"), chain.argv("convert", to=to), "convert")
    _done(t0, "conversion")


def _detection_stage(chain: stages.Chain, arch: str, quick: bool) -> None:
    """Faster R-CNN C4 fine-tuning from the converted weights and from random init, DETECTION_TRIALS each."""
    preset = DETECTION_PRESETS[arch]
    t0 = _stage(f"detection fine-tuning ({preset}: {DETECTION_NAMES[arch]}, embedded VOC): pretrained, "
                f"random init", 5, TOTAL)
    trials = 1 if quick else DETECTION_TRIALS
    det = ["--config", preset, *(QUICK_DETECT if quick else [])]  # KEY VALUE pairs last
    init = ["SIMSIAM.ZERO_INIT_RESIDUAL", str(pretraining_zero_init(chain.folder("pretrain")))]
    for baseline, keys in ((False, []), (True, init)):
        _once(chain.folder("detect", baseline), _main("detect"),
              [*chain.argv("detect", baseline=baseline, trials=trials), *det, *keys], "detect")
    _done(t0, "detection")


def _classification_stages(chain: stages.Chain, quick: bool, cache_dir: str | None, extra: list[str]) -> None:
    """kNN and linear evaluation of the checkpoint and of the network its pretraining started from."""
    knn, linear = _main("knn"), _main("linear")
    t0 = _stage("kNN evaluation: pretrained, random init", 3, TOTAL)
    # a bank of 100 images per class: k=20 first (the reported top-1); k=200 would vote over a quarter of it
    data = ["--data", "embedded", *([f"--cache-dir={cache_dir}"] if cache_dir else []), "ks=[20,200]",
            *(QUICK_KNN if quick else [])]
    _once(chain.folder("knn"), knn, [*chain.argv("knn"), *data], "knn")
    arch, same_data = pretrained_protocol(chain.folder("knn"))
    pre = chain.folder("pretrain")
    init, seed = pretraining_init(pre), pretraining_seed(pre)
    _once(chain.folder("knn", True), knn, [*chain.argv("knn", baseline=True), *data, f"model.arch={arch}", init,
                                           f"seed={seed}", *same_data], "knn")
    _done(t0, "kNN")

    t0 = _stage("linear evaluation (frozen backbone): pretrained, random init", 4, TOTAL)
    lin = ["--config", "demo", *extra, *(QUICK_LINEAR if quick else [])]
    _once(chain.folder("linear"), linear, [*chain.argv("linear"), *lin], "linear")
    _once(chain.folder("linear", True), linear, [*chain.argv("linear", baseline=True), *lin, f"model.arch={arch}",
                                                 init, f"train.seed={seed}"], "linear")
    _done(t0, "linear evaluation")


def report(out: Path) -> None:
    """Plots of each stage folder (next to its metrics) and the tables of every results.json under out."""
    from transfer.reporting import plots, tables

    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        for png in plots.plot_run(folder):
            print(f"plot: {png}")
    t = tables.Tables(tables.load_docs([out]))
    stages.Chain(out).table.write_text(tables.render(t, stages.TABLE_FORMAT))
    text = tables.render(t, "terminal")
    (out / "table.txt").write_text(text)
    print(text)


def span(low: float, high: float) -> str:
    """A range as the page and the demo print it: '33.3-35.8', or one number when both ends agree."""
    return f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"


def ranges_markdown() -> str:
    """The table of RANGES as docs/demo.md shows it."""
    rows = [f"| {label} | {span(*rand)} | {span(*pre)} |" for label, _, _, rand, pre in RANGES]
    return "\n".join(["| full demo, embedded data | random init | SimSiam |", "|---|---|---|", *rows])


def expectations(out: Path, quick: bool, arch: str) -> str:
    """This run's numbers beside the full demo's ranges (RANGES), one line per measurement."""
    if arch != "resnet18":
        return f"expected ranges: measured for the default ResNet-18 demo only (docs/demo.md), not for {arch}"
    head = [f"this run beside the full demo's range (docs/demo.md: {RANGES_MEASURED}; exact numbers depend "
            f"on the machine's floating-point kernels):"]
    if quick:
        head.append("  (--quick trains a few steps only: its numbers are not meant to fall inside these ranges)")
    lines = []
    for label, folder, key, rand, pre in RANGES:
        got = [results.read(out / f).metrics[key] for f in (f"{folder}_random", folder)]
        lines.append(f"  {label:<40} random init {got[0]:5.1f} (expected {span(*rand)}),"
                     f" SimSiam {got[1]:5.1f} (expected {span(*pre)})")
    return "\n".join(head + lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    ap.add_argument("--quick", action="store_true", help="fewer steps per stage (CI smoke run)")
    ap.add_argument("--arch", choices=sorted(ARCH_OVERRIDES), default="resnet18",
                    help="backbone to pretrain and transfer (default resnet18, R18-C4 detection; resnet50: R50-C4)")
    ap.add_argument("--seed", type=int, default=0,
                    help="pretraining seed (train.seed; the random-init baselines use the same), default 0")
    ap.add_argument("--cache-dir", help="where the embedded datasets are generated (default ~/.cache/simsiam)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_demo(Path(args.output), args.quick, args.cache_dir, args.arch, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
