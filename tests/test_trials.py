"""transfer.evaluation.trials: the summary of N trials, shared by the detection stage and the SLURM summary job."""
import math
import subprocess
import sys

import pytest

from transfer.evaluation.trials import STD_NOTE, aggregate, finite_or_none, mean_std, summary_extra, trial_entry


def test_mean_std_uses_sample_std_of_the_finite_values():
    m, s, n = mean_std([56.0, 56.4, 56.8])
    assert m == pytest.approx(56.4) and s == pytest.approx(0.4) and n == 3
    assert mean_std([3.0, None, float("nan"), float("inf")]) == (3.0, None, 1)
    assert mean_std([]) == (None, None, 0)
    assert finite_or_none([1, 2.5, None, float("nan"), float("-inf"), "x"]) == [1.0, 2.5, None, None, None, None]


def test_aggregate_mean_and_sample_std():
    mean, std = aggregate([{"AP50": 1.0, "AP": 2.0, "AP75": 4.0}, {"AP50": 2.0, "AP": 2.0, "AP75": 6.0},
                           {"AP50": 3.0, "AP": 2.0, "AP75": 8.0}])
    assert mean == {"AP50": 2.0, "AP": 2.0, "AP75": 6.0}
    assert std == {"AP50": pytest.approx(1.0), "AP": 0.0, "AP75": pytest.approx(2.0)}  # ddof=1
    nested = [{"bbox": {"AP": 10.0}, "segm": {"AP": 1.0}}, {"bbox": {"AP": 20.0}, "segm": {"AP": None}}]
    mean, std = aggregate(nested)
    assert mean == {"bbox": {"AP": 15.0}, "segm": {"AP": 1.0}}
    assert std["bbox"]["AP"] == pytest.approx(math.sqrt(50.0)) and std["segm"]["AP"] is None
    mean, std = aggregate([{"AP": 3.5}])
    assert mean == {"AP": 3.5} and std == {"AP": None}  # one trial: no spread
    mean, _ = aggregate([{"AP": float("nan")}, {"AP": 4.0}])
    assert mean == {"AP": 4.0}
    with pytest.raises(ValueError, match="no trial metrics"):
        aggregate([])


def test_summary_fields():
    trials = [trial_entry(0, 5, {"AP": 1.0}, "/r/trial_0/results.json")]
    assert summary_extra(trials, {"AP": None}) == {"std": {"AP": None}, "std_note": STD_NOTE, "n_trials": 1,
                                                   "trials": [{"trial": 0, "seed": 5, "metrics": {"AP": 1.0},
                                                               "path": "/r/trial_0/results.json"}]}


def test_needs_no_detectron2():
    code = "import sys, transfer.evaluation.trials; assert 'detectron2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
