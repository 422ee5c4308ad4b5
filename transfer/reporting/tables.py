"""The paper's comparison tables with the user's own rows beside the published ones.

`simsiam table RUN_DIR... [--format terminal|markdown|latex|csv] [--output FILE] [--method [SHA_PREFIX=]NAME]`

Table 4 (ImageNet linear top-1 by pretraining epochs) and Table 5 (VOC07, VOC07+12, COCO box / mask,
AP50 / AP / AP75) are printed with the published rows of Chen & He (2021) and one row per pretrained
checkpoint found in the given run folders' results.json files. A user's number lands in a paper column
only when the protocol its results.json records, and the pretraining its checkpoint records, equal that
column's (transfer.reporting.protocols: dataset and split sizes, schedule, batch, optimizer, image sizes, pretraining
epochs run to the end of their schedule with the recipe of the method's row). Each method's rows (SimCLR, MoCo v2,
BYOL, SwAV, SimSiam) get yours below them: a run pretrained here with that method (`simsiam pretrain --config byol`,
...) is compared with the recipe of the method's preset in eval_configs/pretrain/ (BYOL's by the epochs column),
SimSiam's with the paper's, the projector output BN with or without its affine (the paper measured with it, the
official code runs without; a row with it says "projector output BN affine"). A Table 5 row of yours is named for
the paper's SimSiam row whose recipe it ran: "SimSiam, base" or "SimSiam, optimal" (pretraining lr 0.5, weight decay 1e-5), or
for its method. Every other result (another dataset, a shortened or changed
protocol, an unfinished or unknown pretraining, a random-init backbone) goes into a "not comparable" table
that says what differs. The runs of a sweep of the paper's experiments (`simsiam submit ablation`) are
laid out as that experiment's table instead (transfer.reporting.ablations). A linear result whose head was picked from a grid (`simsiam linear` grid mode) is
always there, its evaluation labelled "best of grid (held-out N images, seed S)", beside the protocol's
single-head result of the same checkpoint.
Row labels name the method the checkpoint records (SimSiam, MoCo, MoCo v3, DINO, SwAV, SimCLR, torchvision,
random init, else "unknown method"; --method names the ones it leaves open), and the negative-pairs and
momentum-encoder columns follow that method. Cells show mean +- std over trials with n; missing cells are
marked "-", never filled in.

Published checkpoints evaluated here (any file but this suite's own pretraining checkpoints: official SimSiam,
MoCo, MoCo v3, DINO, SwAV, solo-learn, mmpretrain, VISSL, SimCLR, torchvision / hub files) are rows of their own,
"METHOD (published, evaluated here: ...)", never in the paper's columns: most do not record their pretraining,
several used multi-crop. A result measured with the column's evaluation protocol goes into the table below
Table 4 (or 5) for published checkpoints, the methods of the paper's rows first, in its order, then the
methods it lacks (MoCo v3, DINO, Barlow Twins, VICReg, ...); any other result into "not comparable".
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from pretrain.errors import InputError
from pretrain.frame import guard
from transfer.evaluation.trials import mean_std
from pretrain.results import Results, read
from transfer.reporting.protocols import (TABLE4_EPOCHS, brief, table4_differences, table5_differences,
                                          table5_variant)
from transfer.reporting.results import find_results

MISSING = "-"
EPOCHS = TABLE4_EPOCHS
# Paper Table 4: method, batch, negative pairs, momentum encoder, top-1 at 100/200/400/800 epochs.
PAPER_TABLE4 = [
    ("SimCLR (repro.+)", 4096, "yes", "no", (66.5, 68.3, 69.8, 70.4)),
    ("MoCo v2 (repro.+)", 256, "yes", "yes", (67.4, 69.9, 71.0, 72.2)),
    ("BYOL (repro.)", 4096, "no", "yes", (66.5, 70.6, 73.2, 74.3)),
    ("SwAV (repro.+)", 4096, "no", "no", (66.5, 69.1, 70.7, 71.8)),
    ("SimSiam", 256, "no", "no", (68.1, 70.0, 70.8, 71.3)),
]
BENCHMARKS = ("voc07", "voc0712", "coco_box", "coco_mask")
BENCHMARK_TITLES = {"voc07": "VOC 07 det.", "voc0712": "VOC 07+12 det.", "coco_box": "COCO det.",
                    "coco_mask": "COCO inst. seg."}
# Paper Table 5 (200-epoch pretraining, C4 backbones): AP50 / AP / AP75 per benchmark.
PAPER_TABLE5 = [
    ("scratch", (35.9, 16.8, 13.0), (60.2, 33.8, 33.1), (44.0, 26.4, 27.8), (46.9, 29.3, 30.8)),
    ("ImageNet supervised", (74.4, 42.4, 42.7), (81.3, 53.5, 58.8), (58.2, 38.2, 41.2), (54.7, 33.3, 35.2)),
    ("SimCLR (repro.+)", (75.9, 46.8, 50.1), (81.8, 55.5, 61.4), (57.7, 37.9, 40.9), (54.6, 33.3, 35.3)),
    ("MoCo v2 (repro.+)", (77.1, 48.5, 52.5), (82.3, 57.0, 63.3), (58.8, 39.2, 42.5), (55.5, 34.3, 36.6)),
    ("BYOL (repro.)", (77.1, 47.0, 49.9), (81.4, 55.3, 61.1), (57.8, 37.9, 40.9), (54.3, 33.2, 35.0)),
    ("SwAV (repro.+)", (75.5, 46.5, 49.6), (81.5, 55.4, 61.4), (57.6, 37.6, 40.3), (54.2, 33.1, 35.1)),
    ("SimSiam, base", (75.5, 47.0, 50.2), (82.0, 56.4, 62.8), (57.5, 37.9, 40.9), (54.2, 33.2, 35.2)),
    ("SimSiam, optimal", (77.3, 48.5, 52.5), (82.4, 57.0, 63.7), (59.3, 39.2, 42.1), (56.0, 34.4, 36.7)),
]
# Negative pairs / momentum encoder of a method, by the first word of its name ("-" for anything else:
# supervised, random init, unknown).
METHOD_COLUMNS = {"simsiam": ("no", "no"), "moco": ("yes", "yes"), "simclr": ("yes", "no"),
                  "byol": ("no", "yes"), "swav": ("no", "no"), "dino": ("no", "yes"), "barlow": ("no", "no"),
                  "vicreg": ("no", "no")}
UNKNOWN_METHOD = "unknown method"
UNNAMED = (None, "torchvision")  # methods a checkpoint leaves open: --method may name them
OWN_KINDS = ("simsiam-suite", "random-init")  # checkpoints this suite made; every other kind is published
# The methods of the paper's rows, in their order (first word of a method name); MoCo v3 is not MoCo v2's row.
PAPER_METHODS = ("simclr", "moco", "byol", "swav", "simsiam")
NOT_PAPER_METHODS = ("moco v3", "mocov3")


class TableError(InputError, ValueError):
    """Bad input to `simsiam table`: one line naming the option or folder, exit code 2."""


# ----------------------------------------------------------------------------------------- statistics
def fmt_stat(values: list[float] | None, digits: int = 1, with_n: bool = False) -> str:
    if not values:
        return MISSING
    m, s, n = mean_std(values)
    if n == 0:
        return MISSING
    text = f"{m:.{digits}f}" if s is None else f"{m:.{digits}f}±{s:.{digits}f}"
    return f"{text} (n={n})" if with_n else text


def fmt_triple(triple: tuple[list[float], list[float], list[float]] | None) -> str:
    """'AP50 / AP / AP75' with mean±std each, and the trial count once."""
    if triple is None or not any(triple):
        return MISSING
    n = max(len(t) for t in triple)
    return " / ".join(fmt_stat(t) for t in triple) + f" (n={n})"


# ----------------------------------------------------------------------------------------- reading
def recorded_method(doc: Results) -> str | None:
    """The pretraining method the evaluated checkpoint records (SimSiam, MoCo, torchvision, random init), or
    None when the results do not say."""
    return "random init" if doc.source.is_random else doc.source.pretrain.method


def is_published(doc: Results) -> bool:
    """The evaluated checkpoint is someone else's published file (its kind is not one this suite writes)."""
    src = doc.source
    return src.kind is not None and src.kind not in OWN_KINDS and not src.is_random


def paper_rank(method: str) -> int:
    """Position of a method among the paper's rows; len(PAPER_METHODS) for the methods the paper lacks."""
    name = method.lower()
    if name.startswith(NOT_PAPER_METHODS):
        return len(PAPER_METHODS)
    return next((i for i, m in enumerate(PAPER_METHODS) if name.startswith(m)), len(PAPER_METHODS))


def parse_method_names(specs: Iterable[str]) -> dict[str | None, str]:
    """--method values: 'NAME' (every checkpoint that does not name its method) or 'SHA_PREFIX=NAME' (the
    checkpoint whose sha256 starts with SHA_PREFIX) -> {prefix or None: name}."""
    names: dict[str | None, str] = {}
    for spec in specs:
        prefix, sep, name = spec.partition("=")
        if not sep:
            prefix, name = None, spec
        if not name.strip() or (prefix is not None and not prefix.strip()):
            raise TableError(f"--method {spec!r}: expected NAME or SHA_PREFIX=NAME")
        names[prefix.strip().lower() if prefix else None] = name.strip()
    return names


def method_name(doc: Results, names: dict[str | None, str] | None = None) -> str:
    """The row's method: the checkpoint's own, else a --method name for it, else 'torchvision' or
    'unknown method'."""
    method = recorded_method(doc)
    if method not in UNNAMED:
        return method
    sha = (doc.source.sha256 or "").lower()
    for prefix, name in (names or {}).items():
        if prefix is not None and sha.startswith(prefix):
            return name
    return (names or {}).get(None) or method or UNKNOWN_METHOD


def beside_paper_rows(paper: list[list[str]], mine: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The paper's rows, the last of each method followed by your rows of that method (method, row) in the order
    given; rows of a method the paper's rows lack come last."""
    ranks = [paper_rank(row[0]) for row in paper]
    groups: list[list[list[str]]] = [[row] for row in paper] + [[]]
    for method, row in mine:
        rank = paper_rank(method)
        at = max((i for i, r in enumerate(ranks) if r == rank and rank < len(PAPER_METHODS)), default=len(paper))
        groups[at].append(row)
    return [row for group in groups for row in group]


def method_columns(method: str) -> tuple[str, str]:
    """(negative pairs, momentum encoder) of a method name, as in Table 4; '-' when the name is none of its
    methods (supervised, random init, unknown)."""
    word = "".join(c for c in method.lower().split(" ")[0] if c.isalnum())
    for key, cols in METHOD_COLUMNS.items():
        if word.startswith(key):
            return cols
    return MISSING, MISSING


GRID_LABEL = "best of grid"


def grid_label(holdout_images: int | str, seed: int | str) -> str:
    """How a linear result picked from a grid of heads on a held-out slice is named (its results.json's
    grid.label and its row here)."""
    return f"{GRID_LABEL} (held-out {holdout_images} images, seed {seed})"


def picked_from_grid(doc: Results) -> str | None:
    """The grid_label of a linear result picked from a grid of heads (transfer.evaluation.linear's grid mode),
    None for any other result. Such a result never enters a paper column."""
    if doc.grid is None:
        return None
    held = doc.grid.get("holdout") or {}
    return grid_label(held.get("images", "?"), held.get("seed", "?"))


def row_key(doc: Results) -> tuple:
    """Results from the same pretrained checkpoint form one row."""
    src, info = doc.source, doc.source.pretrain
    return (src.sha256 or src.checkpoint or "unknown", info.arch, info.epochs, info.batch_size, info.dataset,
            info.zero_init_residual, info.branch)


def row_label(doc: Results, method: str) -> str:
    info, src = doc.source.pretrain, doc.source
    bits = [str(b) for b in (info.arch, info.branch) if b]
    if method == "random init" and info.zero_init_residual is False:
        bits.append("every BN weight 1")
    if info.dataset:
        bits.append(f"pretrained on {info.dataset}")
    if info.epochs is not None and method != "random init":
        bits.append(f"{info.epochs} ep")
    if info.batch_size:
        bits.append(f"bs {info.batch_size}")
    if (info.recipe or {}).get("model.proj_out_bn_affine") is True:
        bits.append("projector output BN affine")   # the paper's 68.1; the official code's default is without
    if src.sha256:
        bits.append(src.sha256[:8])
    whose = "published, evaluated here" if is_published(doc) else "yours"
    return f"{method} ({whose}" + (": " + ", ".join(bits) if bits else "") + ")"


def _detection_trials(doc: Results) -> list[dict]:
    """Per-trial metric dicts of a detection results.json (a summary lists its trials)."""
    return [t.get("metrics", t) for t in doc.trials] or [doc.metrics]


def _ap_triple(m: dict) -> tuple[float | None, float | None, float | None]:
    return m.get("AP50"), m.get("AP"), m.get("AP75")


def load_docs(paths: list[str | Path]) -> list[Results]:
    """results.json documents; a detection summary hides the trial files in its sub-folders."""
    docs = [read(p) for p in find_results(paths)]
    summaries = [d.folder for d in docs if d.task == "detection" and d.trials]
    return [d for d in docs if not (d.task == "detection" and not d.trials
                                    and any(s != d.folder and s in d.folder.parents for s in summaries))]


# ----------------------------------------------------------------------------------------- tables
class Tables:
    """Collects user rows from results.json documents and renders the comparison tables.

    A result enters a paper column only when transfer.reporting.protocols finds no difference between its recorded
    protocol and the column's; every other result is kept in a "not comparable" table with the differences.
    `method_names`: parse_method_names' output (labels for checkpoints that do not name their method)."""

    def __init__(self, docs: list[Results], method_names: dict[str | None, str] | None = None):
        self.method_names = method_names or {}
        self.labels: dict[tuple, str] = {}
        self.methods: dict[tuple, str] = {}
        # Table 4: key -> epochs -> [top1...]
        self.linear: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.linear_batch: dict[tuple, Any] = {}
        # not comparable with Table 4: (key, task, dataset, epochs, differences) -> {"top1": [...], "top5": [...]}
        self.other_cls: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        # Table 5: key -> benchmark -> ([AP50], [AP], [AP75])
        self.det: dict[tuple, dict[str, tuple[list, list, list]]] = defaultdict(dict)
        # not comparable with Table 5: (key, dataset, differences) -> {"bbox": triple, "segm": triple}
        self.other_det: dict[tuple, dict[str, tuple[list, list, list]]] = defaultdict(dict)
        # published checkpoints under Table 4's / 5's evaluation protocol: key -> [top1...], key -> benchmark -> triple
        self.published_linear: dict[tuple, list[float]] = defaultdict(list)
        self.published_det: dict[tuple, dict[str, tuple[list, list, list]]] = defaultdict(dict)
        self.det_labels: dict[tuple, str] = {}   # Table 5 rows name the paper's row they ran ("SimSiam, base")
        self.epochs: dict[tuple, Any] = {}
        for d in docs:
            self.add(d)

    @staticmethod
    def _append(store: dict, name: str, triple_vals):
        lists = store.setdefault(name, ([], [], []))
        for lst, v in zip(lists, triple_vals):
            if v is not None:
                lst.append(float(v))

    def add(self, doc: Results) -> None:
        if doc.task not in ("linear", "knn", "detection"):
            return
        key = row_key(doc)
        method = method_name(doc, self.method_names)
        self.methods.setdefault(key, method)
        self.labels.setdefault(key, row_label(doc, method))
        self.epochs.setdefault(key, doc.source.pretrain.epochs)
        if doc.task == "detection":
            self._add_detection(doc, key)
        else:
            self._add_classification(doc, key)

    def _add_classification(self, doc: Results, key: tuple) -> None:
        m, info = doc.metrics, doc.source.pretrain
        published = is_published(doc)
        diffs = table4_differences(doc, pretraining=not published)
        grid = picked_from_grid(doc)
        if not diffs and "top1" in m and grid is None:
            if published:
                self.published_linear[key].append(float(m["top1"]))
            else:
                self.linear[key][info.epochs].append(float(m["top1"]))
                self.linear_batch[key] = info.batch_size
            return
        reason = brief(diffs) or ("lr picked from a grid on held-out training images" if grid else "no top-1 metric")
        task = doc.task if grid is None else f"{doc.task}, {grid}"
        row = self.other_cls[(key, task, doc.dataset, info.epochs, reason)]
        for metric, value in m.items():
            if isinstance(value, (int, float)):
                row[metric].append(float(value))

    def _add_detection(self, doc: Results, key: tuple) -> None:
        published = is_published(doc)
        bench, diffs = table5_differences(doc, pretraining=not published)
        if diffs:
            store = self.other_det[(key, doc.dataset, brief(diffs))]
        elif published:
            store = self.published_det[key]
        else:
            store = self.det[key]
            variant = table5_variant(doc)   # the SimSiam row of Table 5 whose recipe it ran: base or optimal
            name = self.methods[key] + (f", {variant}" if variant else "")
            self.det_labels.setdefault(key, row_label(doc, name))
        for tm in _detection_trials(doc):
            box, segm = tm.get("bbox", tm), tm.get("segm")
            if diffs:
                self._append(store, "bbox", _ap_triple(box))
                if segm:
                    self._append(store, "segm", _ap_triple(segm))
            elif bench == "coco":
                self._append(store, "coco_box", _ap_triple(box))
                if segm:
                    self._append(store, "coco_mask", _ap_triple(segm))
            else:
                self._append(store, bench, _ap_triple(box))

    # -- Table 4
    def table4(self) -> tuple[list[str], list[list[str]]]:
        headers = ["method", "batch", "neg. pairs", "momentum enc.", *[f"{e} ep" for e in EPOCHS]]
        paper = [[name, str(bs), neg, mom, *[f"{v:.1f}" for v in vals]]
                 for name, bs, neg, mom, vals in PAPER_TABLE4]
        mine = [(self.methods[key], [self.labels[key], str(self.linear_batch.get(key) or MISSING),
                                     *method_columns(self.methods[key]),
                                     *[fmt_stat(by_ep.get(e), with_n=True) for e in EPOCHS]])
                for key, by_ep in self.linear.items()]
        return headers, beside_paper_rows(paper, mine)

    def other_classification(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pretrained model", "neg. pairs", "momentum enc.", "evaluation", "dataset", "pretrain epochs",
                   "top-1", "top-5", "differs from Table 4's protocol"]
        rows = []
        for (key, task, dataset, ep, reason), metrics in self.other_cls.items():
            top1 = metrics.get("top1") or metrics.get("knn_top1")
            rows.append([self.labels[key], *method_columns(self.methods[key]), task, dataset or MISSING,
                         str(ep) if ep is not None else MISSING, fmt_stat(top1, with_n=True),
                         fmt_stat(metrics.get("top5"), with_n=True), reason])
        return headers, rows

    def _published_order(self, keys: Iterable[tuple]) -> list[tuple]:
        """The paper's methods first, in its rows' order, then the methods it lacks; stable otherwise."""
        return sorted(keys, key=lambda k: paper_rank(self.methods[k]))

    def published_table4(self) -> tuple[list[str], list[list[str]]]:
        headers = ["published checkpoint", "neg. pairs", "momentum enc.", "pretrain epochs", "top-1"]
        rows = [[self.labels[k], *method_columns(self.methods[k]), _show(self.epochs.get(k)),
                 fmt_stat(self.published_linear[k], with_n=True)] for k in self._published_order(self.published_linear)]
        return headers, rows

    def published_table5(self) -> tuple[list[str], list[list[str]]]:
        headers = ["published checkpoint", *[f"{BENCHMARK_TITLES[b]} AP50 / AP / AP75" for b in BENCHMARKS]]
        rows = [[self.labels[k], *[fmt_triple(self.published_det[k].get(b)) for b in BENCHMARKS]]
                for k in self._published_order(self.published_det)]
        return headers, rows

    # -- Table 5
    def table5(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pre-train", *[f"{BENCHMARK_TITLES[b]} AP50 / AP / AP75" for b in BENCHMARKS]]
        paper = [[name, *[" / ".join(f"{v:.1f}" for v in t) for t in triples]]
                 for name, *triples in PAPER_TABLE5]
        mine = [(self.methods[key], [self.det_labels[key], *[fmt_triple(per.get(b)) for b in BENCHMARKS]])
                for key, per in self.det.items()]
        return headers, beside_paper_rows(paper, mine)

    def other_detection(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pre-train", "dataset", "box AP50 / AP / AP75", "mask AP50 / AP / AP75",
                   "differs from Table 5's protocol"]
        rows = [[self.labels[key], dataset or MISSING, fmt_triple(per.get("bbox")), fmt_triple(per.get("segm")),
                 reason] for (key, dataset, reason), per in self.other_det.items()]
        return headers, rows

    def sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        out = [("Table 4: ImageNet linear evaluation, top-1 (%) by pretraining epochs", *self.table4())]
        h, r = self.published_table4()
        if r:
            out.append(("Published checkpoints evaluated here with Table 4's linear protocol, top-1 (%) (rows of "
                        "their own: their pretraining is not the paper's)", h, r))
        h, r = self.other_classification()
        if r:
            out.append(("Your classification results not comparable with Table 4 (other dataset or protocol)", h, r))
        out.append(("Table 5: transfer to detection (C4 backbones), AP50 / AP / AP75 (%)", *self.table5()))
        h, r = self.published_table5()
        if r:
            out.append(("Published checkpoints evaluated here with Table 5's detection protocol, AP50 / AP / AP75 "
                        "(%) (rows of their own: their pretraining is not the paper's)", h, r))
        h, r = self.other_detection()
        if r:
            out.append(("Your detection results not comparable with Table 5 (other dataset or protocol)", h, r))
        return out


def _show(value: Any) -> str:
    return MISSING if value is None else str(value)


def render(tables: Tables, fmt: str = "terminal") -> str:
    return render_sections(tables.sections(), fmt, [NOTE])


def render_sections(sections: list[tuple[str, list[str], list[list[str]]]], fmt: str, notes: list[str]) -> str:
    """Titled tables in one format (terminal, markdown, latex, csv), each note below them."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        for title, headers, rows in sections:
            w.writerow([title])
            w.writerow(headers)
            w.writerows(rows)
            w.writerow([])
        return buf.getvalue()
    tablefmt = {"terminal": "simple", "markdown": "github", "latex": "latex_booktabs"}[fmt]
    parts = []
    for title, headers, rows in sections:
        body = tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
        if fmt == "markdown":
            parts.append(f"**{title}**\n\n{body}\n")
        elif fmt == "latex":
            parts.append(f"% {title}\n{body}\n")
        else:
            parts.append(f"{title}\n{body}\n")
    parts += [note if fmt != "latex" else f"% {note}" for note in notes]
    return "\n".join(parts)


NOTE = ("Published rows: Chen & He, CVPR 2021 (Tables 4 and 5). Yours: mean±std over trials (n); "
        f"'{MISSING}' = not measured. A result of yours is in a paper column only when its recorded protocol "
        "and pretraining match the column's (transfer/reporting/protocols.py); the others are listed as not comparable "
        "with what differs.")


METHOD_HELP = ("label for checkpoints that do not name their pretraining method (torchvision state dicts, "
               "among them DINO's, Barlow Twins' and VICReg's hub files; solo-learn, mmpretrain and VISSL files; "
               "results without a method): NAME for all of them, or SHA_PREFIX=NAME for the checkpoint whose "
               "sha256 starts with SHA_PREFIX (see the row label); repeatable. The name also sets the "
               "negative-pairs / momentum-encoder columns (SimSiam, MoCo, SimCLR, BYOL, SwAV; '-' otherwise). "
               "It never makes a row comparable: that takes the recorded protocol.")


def _unmatched_prefixes(docs: list[Results], names: dict[str | None, str]) -> list[str]:
    shas = [(d.source.sha256 or "").lower() for d in docs if recorded_method(d) in UNNAMED]
    return [p for p in names if p is not None and not any(s.startswith(p) for s in shas)]


def render_with_sweeps(runs: list[str], docs: list[dict], names: dict, fmt: str) -> str:
    """The paper's experiments of the sweeps among the runs (transfer.reporting.ablations), then Tables 4 and 5
    of the other results (left out when every result belongs to a sweep)."""
    from transfer.reporting import ablations
    sweeps = ablations.find_sweeps(runs)
    own = [d for d in docs if not ablations.in_sweep(d, sweeps)]
    if not sweeps:
        return render(Tables(docs, names), fmt)
    parts = ablations.sections(sweeps) + (Tables(own, names).sections() if own else [])
    return render_sections(parts, fmt, [ablations.NOTE] + ([NOTE] if own else []))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simsiam table", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (searched recursively) or results.json files")
    ap.add_argument("--format", default="terminal", choices=["terminal", "markdown", "latex", "csv"])
    ap.add_argument("--output", help="also write the tables to this file")
    ap.add_argument("--method", action="append", default=[], metavar="[SHA_PREFIX=]NAME", help=METHOD_HELP)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guard("simsiam table", lambda: _main(args))


def _main(args) -> int:
    names = parse_method_names(args.method)
    docs = load_docs(args.runs)
    if not docs:
        raise TableError(f"no results.json under {', '.join(args.runs)}")
    unmatched = _unmatched_prefixes(docs, names)
    if unmatched:
        raise TableError(f"--method {', '.join(unmatched)}: no checkpoint without a recorded method has a sha256 "
                         "starting so")
    text = render_with_sweeps(args.runs, docs, names, args.format)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise TableError(f"--output {args.output}: cannot write it ({e.strerror or e})") from None
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
