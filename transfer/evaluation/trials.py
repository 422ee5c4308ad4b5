"""Trials of one evaluation, summarised: the mean and the sample standard deviation of every metric.

Detection is reported as the mean over N fine-tuning trials (the paper: 5 on VOC). Both the detection stage
(transfer.evaluation.detect, all trials in one process) and the SLURM summary job of a trial array
(slurm.submit, one job per trial) write the same summary with `aggregate`; it needs no detectron2.
"""
from __future__ import annotations

import math
import numbers
import statistics
from typing import Any, Iterable

STD_NOTE = "sample std (ddof=1); null for a single trial"


def finite_or_none(values: Iterable) -> list[float | None]:
    """Each value as a float, None where it is missing or not a finite number (JSON has no NaN)."""
    return [float(v) if isinstance(v, numbers.Real) and math.isfinite(v) else None for v in values]


def mean_std(values: Iterable) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (ddof=1), count) of the finite values; the mean is None without any,
    the std None with fewer than two."""
    vals = [v for v in finite_or_none(values) if v is not None]
    mean = statistics.fmean(vals) if vals else None
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std, len(vals)


def aggregate(trial_metrics: list[dict]) -> tuple[dict, dict]:
    """(mean, std) with the nesting of the per-trial metrics ({"AP50": ..} or {"bbox": {"AP50": ..}, ..});
    std is the sample standard deviation (ddof=1), None for one trial. Missing, None and non-finite values are
    left out of a key's statistics."""
    if not trial_metrics:
        raise ValueError("no trial metrics to aggregate")

    def walk(items: list) -> tuple[Any, Any]:
        if isinstance(items[0], dict):
            pairs = {k: walk([it.get(k) if isinstance(it, dict) else None for it in items]) for k in items[0]}
            return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
        return mean_std(items)[:2]

    return walk(trial_metrics)


def trial_entry(index: int, seed: int, metrics: dict, path: str) -> dict:
    """One element of a summary's "trials" list."""
    return {"trial": index, "seed": seed, "metrics": metrics, "path": path}


def summary_extra(trials: list[dict], std: dict) -> dict:
    """The summary's fields besides the mean metrics: std, its note, the number of trials and the list."""
    return {"std": std, "std_note": STD_NOTE, "n_trials": len(trials), "trials": trials}
