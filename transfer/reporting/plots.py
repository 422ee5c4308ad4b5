"""PNG plots of a run folder's metrics.jsonl files.

`simsiam plot RUN_DIR [--output DIR]` writes, next to the metrics (or into --output):
  pretrain.png   loss, collapse monitor (std of l2-normalised z, with the 1/sqrt(d) level) and kNN top-1 per epoch
  linear.png     linear-evaluation top-1 / top-5 and training loss per epoch
  linear_grid.png  grid mode of `simsiam linear`: top-1 against base lr (log scale) of every head after the last
                 evaluated epoch, held-out slice and validation split, one line per weight decay, the picked
                 head marked
  detection.png  detection losses per iteration and AP per trial
  <experiment>.png  a sweep of the paper's experiments (`simsiam submit ablation`): loss, output std and kNN
                 top-1 per epoch of each variant; fig2.png is the paper's Fig. 2 (with / without stop-gradient)
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.errors import InputError  # noqa: E402
from pretrain.frame import guard  # noqa: E402
from pretrain.logs import read_metrics  # noqa: E402


class PlotError(InputError, FileNotFoundError):
    """A run folder `simsiam plot` cannot plot: one line naming it, exit code 2."""


def _series(rows: list[dict], x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in rows if x in r and isinstance(r.get(y), (int, float))
           and not math.isnan(r[y])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panel(ax, rows, x, ys, title, ylabel, label_prefix=""):
    drawn = False
    for y in ys:
        xs, vs = _series(rows, x, y)
        if xs:
            ax.plot(xs, vs, marker="o" if len(xs) < 40 else None, ms=3, label=f"{label_prefix}{y}")
            drawn = True
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drawn


def plot_pretrain(rows: list[dict], out: Path, dim: int | None = None) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _panel(axes[0], rows, "epoch", ["loss"], "SimSiam loss (min -1)", "loss")
    _panel(axes[1], rows, "epoch", ["collapse_std"], "collapse monitor: std of l2-normalised z", "std")
    ref = 1 / math.sqrt(dim) if dim else next((r["collapse_ref"] for r in rows if "collapse_ref" in r), None)
    if ref:
        axes[1].axhline(ref, ls="--", color="grey", label=f"healthy: 1/sqrt(d) = {ref:.4f}")
        axes[1].legend(fontsize=8)
    top = max([ref or 0.0] + _series(rows, "epoch", "collapse_std")[1])
    axes[1].set_ylim(0, 1.3 * top if top > 0 else None)
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _panel(axes[2], rows, "epoch", ["knn_top1"], "kNN top-1 (held-out split)", "top-1 (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_linear(rows: list[dict], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _panel(axes[0], rows, "epoch", ["top1", "top5", "val_top1", "val_top5"], "linear evaluation accuracy",
           "accuracy (%)")
    _panel(axes[1], rows, "epoch", ["loss", "train_loss"], "linear head training loss", "loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_linear_grid(rows: list[dict], out: Path) -> Path | None:
    """Top-1 against base lr of every head of a linear grid run (its last evaluated epoch); None without one."""
    last = next((r for r in reversed(rows) if isinstance(r.get("grid"), dict) and "top1" in r["grid"]), None)
    if last is None:
        return None
    g = last["grid"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for wd in sorted(set(g["weight_decay"])):
        idx = [i for i, w in enumerate(g["weight_decay"]) if w == wd]
        for key, style, what in (("holdout_top1", "--", "held-out"), ("top1", "-", "validation")):
            pts = [(g["base_lr"][i], g[key][i]) for i in idx if isinstance(g[key][i], (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{what}, weight decay {wd:g}")
    p = last.get("picked")
    if isinstance(p, int) and isinstance(g["top1"][p], (int, float)):
        ax.plot([g["base_lr"][p]], [g["top1"][p]], "k*", ms=12,
                label=f"picked on the held-out slice: {g['top1'][p]:.1f}")
    ax.set_xscale("log")
    ax.set_xlabel("base lr (lr = base lr x batch / 256)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"linear heads of the grid after epoch {last.get('epoch')}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_detection(rows_by_trial: dict[str, list[dict]], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    loss_keys = sorted({k for rows in rows_by_trial.values() for r in rows for k in r
                        if k.startswith("loss") or k == "total_loss"})
    drawn = False
    for trial, rows in sorted(rows_by_trial.items()):
        for k in loss_keys:
            xs, vs = _series(rows, "iter", k)
            if xs:
                axes[0].plot(xs, vs, label=f"{Path(trial).name} {k}" if len(rows_by_trial) > 1 else k, lw=1)
                drawn = True
    axes[0].set_title("detection fine-tuning losses")
    axes[0].set_xlabel("iteration")
    axes[0].grid(alpha=0.3)
    if drawn:
        axes[0].legend(fontsize=7)
    names, aps = [], defaultdict(list)
    for trial, rows in sorted(rows_by_trial.items()):
        evals = [r for r in rows if "AP" in r or "bbox/AP" in r]
        if evals:
            last = evals[-1]
            names.append(Path(trial).name)
            for k in ("AP50", "AP", "AP75"):
                aps[k].append(last.get(k, last.get(f"bbox/{k}", math.nan)))
    if names:
        width = 0.25
        for j, k in enumerate(("AP50", "AP", "AP75")):
            axes[1].bar([i + (j - 1) * width for i in range(len(names))], aps[k], width, label=k)
        axes[1].set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_title("box AP per trial")
    axes[1].set_ylabel("AP (%)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> list[Path]:
    """Plot every stage found in the run folder's metrics.jsonl files; return the PNG paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"no such run folder: {run_dir}")
    stages: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        where = str(path.parent.relative_to(run_dir)) or "."
        for r in read_metrics(path, skip_bad=True):
            stages[r.get("stage", "unknown")][where].append(r)
    written = []
    for stage, by_folder in stages.items():
        for where, rows in by_folder.items():
            out_dir = Path(output) if output else run_dir / where
            out_dir.mkdir(parents=True, exist_ok=True)
            if stage == "pretrain":
                dim = next((r["dim"] for r in rows if "dim" in r), None)
                written.append(plot_pretrain(rows, out_dir / "pretrain.png", dim))
            elif stage == "linear":
                written.append(plot_linear(rows, out_dir / "linear.png"))
                grid = plot_linear_grid(rows, out_dir / "linear_grid.png")
                written += [grid] if grid else []
        if stage == "detection":
            out_dir = Path(output) if output else run_dir / _common_parent(list(by_folder))
            out_dir.mkdir(parents=True, exist_ok=True)
            written.append(plot_detection(dict(by_folder), out_dir / "detection.png"))
    from transfer.reporting.ablations import plot_sweeps
    return written + plot_sweeps(run_dir, output)


def _common_parent(folders: list[str]) -> str:
    """The deepest folder that holds all the given (relative) folders."""
    common = Path(folders[0])
    for f in folders[1:]:
        while common != Path(".") and common not in Path(f).parents and common != Path(f):
            common = common.parent
    return str(common)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--output", help="folder for the PNGs (default: next to each metrics.jsonl)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guard("simsiam plot", lambda: _main(args))


def _main(args) -> int:
    paths = plot_run(args.run_dir, args.output)
    if not paths:
        raise PlotError(f"no metrics.jsonl under {args.run_dir}")
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
