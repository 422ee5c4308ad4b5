"""The paper's comparison tables with the user's own rows beside the published ones.

`simsiam table RUN_DIR... [--format terminal|markdown|latex|csv] [--output FILE]`

Table 4 (ImageNet linear top-1 by pretraining epochs) and Table 5 (VOC07, VOC07+12, COCO box / mask,
AP50 / AP / AP75) are printed with the published rows of Chen & He (2021) and one row per pretrained
checkpoint found in the given run folders' results.json files. A user's number lands in a paper column
only when it was measured on the paper's dataset (ImageNet, VOC, COCO) with the paper's protocol; every
other result (CIFAR-10, the embedded demo data, BCCD, ...) goes into a separate table that states its
dataset, so nothing is mixed into the paper's columns. Cells show mean +- std over trials with n;
missing cells are marked "-", never filled in.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate

from transfer.results import find_results, read_results

MISSING = "-"
EPOCHS = (100, 200, 400, 800)
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
# Dataset names (as written in results.json) that are the paper's own benchmarks.
IMAGENET_NAMES = {"imagenet", "imagenet-1k", "ilsvrc2012", "in1k"}
VOC07_NAMES = {"voc07", "voc_2007", "voc2007"}
VOC0712_NAMES = {"voc0712", "voc07+12", "voc_2007_2012"}
COCO_NAMES = {"coco", "coco2017", "coco_2017"}


# ----------------------------------------------------------------------------------------- statistics
def mean_std(values: Iterable[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for a single value) and count."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, None, 0
    if len(vals) == 1:
        return vals[0], None, 1
    return statistics.fmean(vals), statistics.stdev(vals), len(vals)


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
def _norm(name: str | None) -> str:
    return (name or "").strip().lower()


def _pretrain_info(doc: dict) -> dict:
    return (doc.get("source") or {}).get("pretrain") or {}


def row_key(doc: dict) -> tuple:
    """Results from the same pretrained checkpoint form one row."""
    src = doc.get("source") or {}
    info = _pretrain_info(doc)
    return (src.get("sha256") or src.get("checkpoint") or "unknown",
            info.get("arch"), info.get("epochs"), info.get("batch_size"), info.get("dataset"))


def row_label(doc: dict) -> str:
    info = _pretrain_info(doc)
    src = doc.get("source") or {}
    parts = [info.get("method") or "SimSiam", "(yours"]
    bits = []
    if info.get("arch"):
        bits.append(str(info["arch"]))
    if info.get("dataset"):
        bits.append(f"pretrained on {info['dataset']}")
    if info.get("epochs") is not None:
        bits.append(f"{info['epochs']} ep")
    if info.get("batch_size"):
        bits.append(f"bs {info['batch_size']}")
    if src.get("sha256"):
        bits.append(str(src["sha256"])[:8])
    return " ".join(parts) + (": " + ", ".join(bits) if bits else "") + ")"


def _detection_trials(doc: dict) -> list[dict]:
    """Per-trial metric dicts of a detection results.json (a summary lists its trials)."""
    trials = doc.get("trials")
    if isinstance(trials, list) and trials:
        return [t.get("metrics", t) if isinstance(t, dict) else {} for t in trials]
    return [doc.get("metrics") or {}]


def _ap_triple(m: dict) -> tuple[float | None, float | None, float | None]:
    return m.get("AP50"), m.get("AP"), m.get("AP75")


def load_docs(paths: list[str | Path]) -> list[dict]:
    """results.json documents; a detection summary hides the trial files in its sub-folders."""
    docs = [read_results(p) for p in find_results(paths)]
    summaries = [Path(d["_path"]).parent for d in docs if d.get("task") == "detection" and d.get("trials")]
    kept = []
    for d in docs:
        here = Path(d["_path"]).parent
        if d.get("task") == "detection" and not d.get("trials") and any(
                s != here and s in here.parents for s in summaries):
            continue
        kept.append(d)
    return kept


# ----------------------------------------------------------------------------------------- tables
class Tables:
    """Collects user rows from results.json documents and renders the comparison tables."""

    def __init__(self, docs: list[dict]):
        self.labels: dict[tuple, str] = {}
        # Table 4: key -> epochs -> [top1...]
        self.linear: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.linear_batch: dict[tuple, Any] = {}
        # other-dataset classification rows: (key, task, dataset, epochs) -> {"top1": [...], "top5": [...]}
        self.other_cls: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        # Table 5: key -> benchmark -> ([AP50], [AP], [AP75])
        self.det: dict[tuple, dict[str, tuple[list, list, list]]] = defaultdict(dict)
        # other-dataset detection rows: (key, dataset) -> {"bbox": triple, "segm": triple}
        self.other_det: dict[tuple, dict[str, tuple[list, list, list]]] = defaultdict(dict)
        for d in docs:
            self.add(d)

    @staticmethod
    def _append(store: dict, name: str, triple_vals):
        lists = store.setdefault(name, ([], [], []))
        for lst, v in zip(lists, triple_vals):
            if v is not None:
                lst.append(float(v))

    def add(self, doc: dict) -> None:
        task = doc.get("task")
        key = row_key(doc)
        self.labels.setdefault(key, row_label(doc))
        dataset = _norm(doc.get("dataset"))
        info = _pretrain_info(doc)
        m = doc.get("metrics") or {}
        if task in ("linear", "knn"):
            pre_ep = info.get("epochs")
            if task == "linear" and dataset in IMAGENET_NAMES and pre_ep in EPOCHS and "top1" in m:
                self.linear[key][pre_ep].append(float(m["top1"]))
                self.linear_batch[key] = info.get("batch_size")
            else:
                row = self.other_cls[(key, task, doc.get("dataset"), pre_ep)]
                for metric, value in m.items():
                    if isinstance(value, (int, float)):
                        row[metric].append(float(value))
        elif task == "detection":
            for tm in _detection_trials(doc):
                box = tm.get("bbox", tm)
                segm = tm.get("segm")
                if dataset in VOC07_NAMES:
                    self._append(self.det[key], "voc07", _ap_triple(box))
                elif dataset in VOC0712_NAMES:
                    self._append(self.det[key], "voc0712", _ap_triple(box))
                elif dataset in COCO_NAMES:
                    self._append(self.det[key], "coco_box", _ap_triple(box))
                    if segm:
                        self._append(self.det[key], "coco_mask", _ap_triple(segm))
                else:
                    store = self.other_det[(key, doc.get("dataset"))]
                    self._append(store, "bbox", _ap_triple(box))
                    if segm:
                        self._append(store, "segm", _ap_triple(segm))

    # -- Table 4
    def table4(self) -> tuple[list[str], list[list[str]]]:
        headers = ["method", "batch", "neg. pairs", "momentum enc.", *[f"{e} ep" for e in EPOCHS]]
        rows = [[name, str(bs), neg, mom, *[f"{v:.1f}" for v in vals]]
                for name, bs, neg, mom, vals in PAPER_TABLE4]
        for key, by_ep in self.linear.items():
            rows.append([self.labels[key], str(self.linear_batch.get(key) or MISSING), "no", "no",
                         *[fmt_stat(by_ep.get(e), with_n=True) for e in EPOCHS]])
        return headers, rows

    def other_classification(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pretrained model", "evaluation", "dataset", "pretrain epochs", "top-1", "top-5"]
        rows = []
        for (key, task, dataset, ep), metrics in self.other_cls.items():
            top1 = metrics.get("top1") or metrics.get("knn_top1")
            rows.append([self.labels[key], task, dataset or MISSING, str(ep) if ep is not None else MISSING,
                         fmt_stat(top1, with_n=True), fmt_stat(metrics.get("top5"), with_n=True)])
        return headers, rows

    # -- Table 5
    def table5(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pre-train", *[f"{BENCHMARK_TITLES[b]} AP50 / AP / AP75" for b in BENCHMARKS]]
        rows = [[name, *[" / ".join(f"{v:.1f}" for v in t) for t in triples]]
                for name, *triples in PAPER_TABLE5]
        for key, per in self.det.items():
            rows.append([self.labels[key], *[fmt_triple(per.get(b)) for b in BENCHMARKS]])
        return headers, rows

    def other_detection(self) -> tuple[list[str], list[list[str]]]:
        headers = ["pre-train", "dataset", "box AP50 / AP / AP75", "mask AP50 / AP / AP75"]
        rows = [[self.labels[key], dataset or MISSING, fmt_triple(per.get("bbox")), fmt_triple(per.get("segm"))]
                for (key, dataset), per in self.other_det.items()]
        return headers, rows

    def sections(self) -> list[tuple[str, list[str], list[list[str]]]]:
        out = [("Table 4: ImageNet linear evaluation, top-1 (%) by pretraining epochs", *self.table4())]
        h, r = self.other_classification()
        if r:
            out.append(("Your classification results on other datasets (not comparable with Table 4)", h, r))
        out.append(("Table 5: transfer to detection (C4 backbones), AP50 / AP / AP75 (%)", *self.table5()))
        h, r = self.other_detection()
        if r:
            out.append(("Your detection results on other datasets (not comparable with Table 5)", h, r))
        return out


def render(tables: Tables, fmt: str = "terminal") -> str:
    sections = tables.sections()
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
    note = ("Published rows: Chen & He, CVPR 2021 (Tables 4 and 5). Yours: mean±std over trials (n); "
            f"'{MISSING}' = not measured.")
    parts.append(note if fmt != "latex" else f"% {note}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="simsiam table", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (searched recursively) or results.json files")
    ap.add_argument("--format", default="terminal", choices=["terminal", "markdown", "latex", "csv"])
    ap.add_argument("--output", help="also write the tables to this file")
    args = ap.parse_args(argv)
    try:
        docs = load_docs(args.runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"simsiam table: {e}", file=sys.stderr)
        return 2
    if not docs:
        print(f"simsiam table: no results.json under {', '.join(args.runs)}", file=sys.stderr)
        return 2
    text = render(Tables(docs), args.format)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
