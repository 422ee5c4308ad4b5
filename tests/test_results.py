"""results.json: the typed, versioned schema (pretrain.results: written through the stage frame, read as
Results) and the reading side of the tables (transfer.reporting.results: read_results, find_results), with
their clear errors."""
from __future__ import annotations

import json

import pytest

from pretrain import results as R
from pretrain.errors import InputError
from pretrain.frame import StageRun
from transfer.reporting.results import SCHEMA, ResultsError, find_results, read_results


def _run(d, task="linear", **kw):
    return R.write(d, R.Results.new(task=task, dataset="cifar10-jpg", metrics={"top1": 50.0}, config={}, **kw), "v")


def test_the_frame_writes_the_current_version(tmp_path):
    with StageRun("knn", tmp_path / "run", device="cpu") as sr:
        path = sr.results(task="knn", dataset="cifar10-jpg", metrics={"top1": 81.5}, config={"k": 200},
                          batch_size=256, extra={"n_trials": 1, "protocol": {"stage": "knn"}})
        sub = sr.results(R.Results.new(task="detection", dataset="voc07", metrics={"AP": 1.0}),
                         folder=tmp_path / "run" / "trial_0")
    doc = json.loads(path.read_text())
    assert path == tmp_path / "run" / "results.json" and sub == tmp_path / "run" / "trial_0" / "results.json"
    assert (doc["schema"], doc["version"]) == ("simsiam-suite/results/v1", R.VERSION) == (SCHEMA, 2)
    assert (doc["task"], doc["dataset"], doc["metrics"], doc["config"], doc["batch_size"], doc["n_trials"],
            doc["protocol"]) == ("knn", "cifar10-jpg", {"top1": 81.5}, {"k": 200}, 256, 1, {"stage": "knn"})
    assert doc["source"] == {} and doc["code_version"] and doc["created"].endswith("+00:00")
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        R.Results.new(task="segmentation", dataset="x", metrics={})


def test_version_1_files_read_with_typed_fields(tmp_path):
    """A file written before "version" existed (no version, no recipe) reads as version 1; the fields the
    tables use are typed, the stage's own are kept, and writing it again keeps every field."""
    v1 = {"schema": SCHEMA, "task": "detection", "dataset": "voc07", "metrics": {"AP": 50.0}, "epochs": None,
          "batch_size": 16, "config": {"SOLVER": {}}, "code_version": "abc", "created": "2026-01-01T00:00:00+00:00",
          "source": {"checkpoint": "/x/checkpoint.pth", "sha256": "ab" * 32, "kind": "simsiam-suite",
                     "weights": "/x/w.pkl",
                     "pretrain": {"method": "SimSiam", "arch": "resnet50", "epochs": 200, "batch_size": 512,
                                  "dataset": "imagenet", "completed": True, "scheduled_epochs": None,
                                  "config_changes": []}},
          "protocol": {"stage": "detection"}, "n_trials": 2, "std": {"AP": 1.0},
          "trials": [{"trial": 0, "seed": 0, "metrics": {"AP": 49.0}, "path": "t0"}, {"trial": 1, "seed": 1,
                     "metrics": {"AP": 51.0}, "path": "t1"}]}
    (tmp_path / "results.json").write_text(json.dumps(v1))
    doc = R.read(tmp_path)
    assert (doc.version, doc.task, doc.batch_size, doc.path) == (1, "detection", 16, tmp_path / "results.json")
    pre = doc.source.pretrain
    assert (pre.method, pre.epochs, pre.completed, pre.recipe) == ("SimSiam", 200, True, None)
    assert doc.source.other == {"weights": "/x/w.pkl"} and [t["seed"] for t in doc.trials] == [0, 1]
    assert doc.complete is None and doc.grid is None and doc.extra["n_trials"] == 2
    assert doc.to_json() == {**v1, "version": 1}


def test_round_trip_by_file_or_folder(tmp_path):
    p = _run(tmp_path / "lin", epochs=90, batch_size=4096)
    by_file, by_dir = read_results(p), read_results(tmp_path / "lin")
    assert by_file == by_dir and by_file["_path"] == str(p)
    assert (by_file["schema"], by_file["version"], by_file["task"], by_file["epochs"], by_file["batch_size"]) == (
        SCHEMA, 2, "linear", 90, 4096)


def test_find_results_walks_folders_in_order(tmp_path):
    a = _run(tmp_path / "runs" / "b" / "trial_1", task="detection")
    b = _run(tmp_path / "runs" / "a")
    c = _run(tmp_path / "runs" / "b", task="detection")
    (tmp_path / "runs" / "a" / "metrics.jsonl").write_text("{}\n")
    assert find_results([tmp_path / "runs"]) == sorted([a, b, c])
    assert find_results([c, tmp_path / "runs" / "a"]) == [c, b]
    with pytest.raises(FileNotFoundError, match="no such run folder or file: .*nowhere"):
        find_results([tmp_path / "nowhere"])
    assert find_results([tmp_path / "runs" / "a" / "metrics.jsonl"]) == [tmp_path / "runs" / "a" / "metrics.jsonl"]


def test_bad_files_are_named(tmp_path):
    """Each is an input error (one line, exit 2 in every command) and keeps its builtin type."""
    with pytest.raises(FileNotFoundError, match=f"no results.json at {tmp_path / 'results.json'}") as e:
        read_results(tmp_path)
    assert isinstance(e.value, InputError)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="list.json: schema is 'a JSON list'"):
        read_results(tmp_path / "list.json")
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"schema": "simsiam-suite/results/v1", "task": ')
    with pytest.raises(ValueError, match=f"{bad}: not valid JSON"):
        read_results(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "someone-else/v3", "task": "linear"}))
    with pytest.raises(ValueError, match=r"other.json: schema is 'someone-else/v3', expected 'simsiam-suite/results/v1'"):
        read_results(other)
    later = tmp_path / "later.json"
    later.write_text(json.dumps({"schema": SCHEMA, "version": 3, "task": "linear"}))
    with pytest.raises(ResultsError, match=r"later.json: version 3 of .*; this code reads versions 1 to 2"):
        read_results(later)
