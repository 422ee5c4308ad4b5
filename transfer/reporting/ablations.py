"""The paper's experiments (Fig. 2, Tables 1-3, Sec. 4.5, 4.6, 5.2, 6.2 / Fig. 3, App. B) as tables and plots of a sweep.

A sweep is the folder `simsiam submit ablation NAME --output DIR` writes: DIR/ablation.json (the experiment,
its variants with the paper's numbers and settings, and how the sweep was shrunk) and, per variant and trial,
DIR/<variant>/trial_<t>/{pretrain,knn,linear}/results.json. `simsiam table DIR` prints each experiment in the
paper's layout (one row per variant, or one column for Table 2, the k-step alternation and App. B): the
paper's ImageNet linear top-1 beside yours (mean ± std over the trials, n) and your kNN top-1, then the
protocol check: per variant what differs from the paper's measurement, i.e. from the pretraining recipe of
the variant at full scale (the preset's settings on the recipe it starts from: the paper's, or for Sec. 6.2 the
method's preset, resolved as pretraining resolves them; compared as Tables 4 and 5 compare a pretraining, with
transfer.reporting.protocols.pretraining_differences) and from the paper's linear protocol (Table 4's 100-epoch
column). A variant without differences matches the paper's measurement. `simsiam plot DIR` draws, for every sweep, the
training loss, the output std (collapse monitor) and the kNN accuracy per epoch of each variant (trial 0):
for the fig2 sweep that is the paper's Fig. 2 (with and without stop-gradient), DIR/fig2.png.

The ablation runs are not rows of Tables 4 and 5: `simsiam table` leaves the results inside a sweep to its
experiment's table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pretrain.config import to_dict
from pretrain.errors import InputError
from pretrain.protocol import recipe_of
from transfer.evaluation.trials import mean_std
from transfer.reporting.protocols import TABLE4, Recipe, differences, pretraining_differences
from transfer.reporting.results import MissingResults, Results, ResultsError, read_results

MANIFEST = "ablation.json"
SCHEMA = "simsiam-suite/ablation/v1"
MISSING = "-"


class AblationError(InputError, ValueError):
    """An ablation.json that cannot be read: one line naming the file."""


# ------------------------------------------------------------------------------------------------- reading
def read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AblationError(f"{path}: not a readable sweep manifest ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise AblationError(f"{path}: schema is {doc.get('schema') if isinstance(doc, dict) else doc!r}, "
                            f"expected {SCHEMA!r}")
    doc["_dir"] = str(path.parent.resolve())
    return doc


def find_sweeps(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The sweep manifests in or under the given folders."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for m in sorted(p.rglob(MANIFEST)):
                found[m.resolve()] = None
        elif p.name == MANIFEST and p.is_file():
            found[p.resolve()] = None
    return [read_manifest(m) for m in found]


def in_sweep(doc: Results, sweeps: list[dict]) -> bool:
    """Does the results document lie inside one of the sweeps' folders?"""
    where = Path(doc.path).resolve()
    return any(Path(s["_dir"]) in where.parents for s in sweeps)


def _result(folder: Path) -> dict | None:
    try:
        return read_results(folder)
    except MissingResults:
        return None
    except ResultsError:
        raise


def trial_results(sweep: dict, variant: dict) -> list[dict[str, dict | None]]:
    """Per trial {"pretrain", "knn", "linear"}: its results.json, or None where the stage has not finished."""
    base = Path(sweep["_dir"])
    return [{stage: _result(base / t / stage) for stage in ("pretrain", "knn", "linear")} for t in variant["trials"]]


# ----------------------------------------------------------------------------------------- protocol check
def paper_recipe(sweep: dict, variant: dict) -> Recipe:
    """The variant's pretraining at the paper's scale, as a column of transfer.reporting.protocols: its epochs,
    batch and crop, and the recipe of its settings on its presets (the variant's, else the sweep's), resolved as
    pretraining resolves them."""
    from pretrain.main import resolve_config
    cfg = resolve_config(variant.get("pretrain_config") or sweep.get("pretrain_config") or [],
                         variant.get("settings") or [])
    return Recipe((cfg.train.epochs,), (cfg.train.batch_size,), cfg.data.image_size,
                  variants=(("paper", tuple(recipe_of(to_dict(cfg)).items())),))


def recipe_differences(expected: Recipe, pretrain: dict) -> list[str]:
    """How a pretraining run (its results.json) departs from the variant's pretraining at the paper's scale
    (transfer.reporting.protocols.pretraining_differences, as Tables 4 and 5 compare)."""
    return pretraining_differences(Results.from_json(pretrain).source.pretrain, expected)


def evaluation_differences(linear: dict) -> list[str]:
    """How a linear result departs from the paper's linear protocol (its settings only; the pretraining is
    compared with the variant's recipe instead)."""
    doc = Results.from_json(linear)
    return [d for d in differences(doc, TABLE4[100], pretraining=False) if not d.startswith("dataset ")]


def variant_differences(sweep: dict, variant: dict, trials: list[dict]) -> list[str]:
    """Every difference from the paper's measurement of the variant over its finished trials (each once)."""
    if not any(t["pretrain"] for t in trials):
        return ["not run yet"]
    expected = paper_recipe(sweep, variant)
    out: list[str] = []
    paper_trials = variant.get("paper_trials")
    if paper_trials and len(trials) != paper_trials:
        out.append(f"{len(trials)} trial(s) != {paper_trials}")
    for t in trials:
        found = recipe_differences(expected, t["pretrain"]) if t["pretrain"] else []
        found += evaluation_differences(t["linear"]) if t["linear"] else []
        out += [d for d in found if d not in out]
    return out


def brief(diffs: list[str], limit: int = 6) -> str:
    if not diffs:
        return "none: the paper's measurement"
    rest = len(diffs) - limit
    return "; ".join(diffs[:limit]) + (f" (and {rest} other setting{'s' if rest > 1 else ''})" if rest > 0 else "")


# ----------------------------------------------------------------------------------------------- the table
def mean_std_cell(values: list[float]) -> str:
    """'mean±std (n=N)' (sample std; no std for one value); '-' for none."""
    m, sd, n = mean_std(values)
    if m is None:
        return MISSING
    return f"{m:.1f} (n=1)" if sd is None else f"{m:.1f}±{sd:.1f} (n={n})"


def paper_cell(variant: dict) -> str:
    value, std, note = variant.get("paper"), variant.get("paper_std"), variant.get("note")
    if value is None:
        return MISSING
    text = f"{value:.1f}" if isinstance(value, (int, float)) else str(value)
    text += f"±{std:.1f}" if isinstance(std, (int, float)) else ""
    return f"{text} ({note})" if note else text


def _metric(trials: list[dict], stage: str, key: str) -> list[float]:
    return [t[stage]["metrics"][key] for t in trials if t[stage] and key in (t[stage].get("metrics") or {})]


def variant_row(sweep: dict, variant: dict) -> list[str]:
    trials = trial_results(sweep, variant)
    return [variant.get("label") or variant["name"], paper_cell(variant), mean_std_cell(_metric(trials, "linear", "top1")),
            mean_std_cell(_metric(trials, "knn", "top1")), brief(variant_differences(sweep, variant, trials))]


HEADERS = ("paper: linear top-1", "yours: linear top-1", "yours: kNN top-1", "differs from the paper's measurement")


def sweep_sections(sweep: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The experiment in the paper's layout: one row per variant, or (layout "columns") one column per
    variant with the protocol check below it."""
    rows = [variant_row(sweep, v) for v in sweep["variants"]]
    title = f"{sweep['title']}: ImageNet linear top-1 (%), 100-epoch pretraining ({sweep['_dir']})"
    left = sweep.get("left_out") or []
    if left:
        title += f"; variants left out of this sweep: {', '.join(left)}"
    axis = sweep.get("axis") or "variant"
    if sweep.get("layout") != "columns":
        return [(title, [axis, *HEADERS], rows)]
    grid = [[HEADERS[i], *[r[i + 1] for r in rows]] for i in range(3)]
    check = [[r[0], r[4]] for r in rows]
    return [(title, [axis, *[r[0] for r in rows]], grid),
            (f"{sweep['title']}: protocol check", [axis, HEADERS[3]], check)]


def sections(sweeps: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    return [s for sweep in sweeps for s in sweep_sections(sweep)]


NOTE = ("Paper: Chen & He, CVPR 2021 (ImageNet, ResNet-50, 100-epoch pretraining, linear top-1). Yours: mean±std "
        "over trials (n); '-' = not measured. The protocol check lists what differs from the paper's measurement "
        "of each variant (its pretraining recipe at full scale, the linear protocol); kNN top-1 has no paper "
        "number.")


# ------------------------------------------------------------------------------------------------ the plot
def plot_sweep(sweep: dict, out: Path) -> Path:
    """Training loss, output std (l2-normalised z, with the 1/sqrt(d) level) and kNN top-1 per epoch of each
    variant's trial 0, one line per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pretrain.logs import read_metrics
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    refs = set()
    for v in sweep["variants"]:
        path = Path(sweep["_dir"]) / v["trials"][0] / "pretrain" / "metrics.jsonl"
        rows = [r for r in read_metrics(path, skip_bad=True) if r.get("stage") == "pretrain"] if path.is_file() else []
        for ax, key in zip(axes, ("loss", "collapse_std", "knn_top1")):
            pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 40 else None, ms=3, label=v.get("label") or v["name"])
        refs |= {r["collapse_ref"] for r in rows if isinstance(r.get("collapse_ref"), (int, float))}
    axes[1].set_ylim(bottom=0)
    for ref in sorted(refs):
        axes[1].axhline(ref, ls="--", color="grey", lw=1, label=f"1/sqrt(d) = {ref:.4f}")
    for ax, (title, ylabel) in zip(axes, (("training loss (min -1)", "loss"),
                                          ("output std (std of l2-normalised z)", "std"),
                                          ("kNN top-1 (held-out split)", "top-1 (%)"))):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(sweep["title"])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_sweeps(run_dir: str | Path, output: str | Path | None = None) -> list[Path]:
    """<experiment>.png of every sweep under run_dir (fig2.png: the paper's Fig. 2), next to its ablation.json
    or into `output`."""
    written = []
    for sweep in find_sweeps([run_dir]):
        folder = Path(output) if output else Path(sweep["_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        written.append(plot_sweep(sweep, folder / f"{sweep['experiment']}.png"))
    return written
