"""transfer.reporting.results: the reading side of results.json (read_results, find_results) and its clear errors."""
from __future__ import annotations

import json

import pytest

from pretrain.errors import InputError
from transfer.reporting.results import SCHEMA, ResultsError, find_results, read_results, write_results


def _run(d, task="linear", **kw):
    return write_results(d, task=task, dataset="cifar10-jpg", metrics={"top1": 50.0}, config={}, **kw)


def test_round_trip_by_file_or_folder(tmp_path):
    p = _run(tmp_path / "lin", epochs=90, batch_size=4096)
    by_file, by_dir = read_results(p), read_results(tmp_path / "lin")
    assert by_file == by_dir and by_file["_path"] == str(p)
    assert (by_file["schema"], by_file["task"], by_file["epochs"], by_file["batch_size"]) == (
        SCHEMA, "linear", 90, 4096)


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
