"""pretrain.frame: the run frame every stage uses (run folder, per-run log, metrics, results, exit codes)."""
import json
import logging
import os
import socket
from pathlib import Path

import pytest

from pretrain import config
from pretrain.defaults import PretrainConfig
from pretrain.errors import InputError
from pretrain.frame import RUN_STATE, StageRun, guard, read_run_state, run_log
from pretrain.logs import LOGGER_NAME, read_metrics
from pretrain.train import run as pretrain_run
from transfer.evaluation import knn


def _file_handlers() -> list:
    return [h for h in logging.getLogger(LOGGER_NAME).handlers if isinstance(h, logging.FileHandler)]


def test_two_stages_in_one_process_keep_their_own_logs(tmp_path, capsys):
    """Pretraining then kNN in one process (as `simsiam demo` runs them): each run folder's log.txt holds its
    own stage's lines only, every console line is printed once, and no handler outlives its run."""
    cfg = config.resolve(PretrainConfig(), ["test_tiny"], ["train.epochs=1", "train.max_steps_per_epoch=1",
                                                          "monitor.knn=false", "monitor.tensorboard=false"],
                         kind="pretrain")
    pretrain_run(cfg, tmp_path / "pre")
    assert knn.main(["--weights", str(tmp_path / "pre" / "checkpoint.pth"), "--data", "embedded", "--output",
                     str(tmp_path / "knn"), "data.limit_per_class=4", "data.val_limit_per_class=2",
                     "data.workers=0"]) == 0
    pre, ev = (tmp_path / "pre" / "log.txt").read_text(), (tmp_path / "knn" / "log.txt").read_text()
    assert "SimSiam resnet18" in pre and "epoch 1/1" in pre and "kNN (t=" not in pre
    assert "kNN (t=" in ev and "SimSiam" not in ev and "epoch 1/1" not in ev
    pre_state, knn_state = read_run_state(tmp_path / "pre"), read_run_state(tmp_path / "knn")
    assert pre_state["progress"] == {"epoch": 1, "epochs": 1, "step": 1, "steps": 1}   # the training loop's report
    assert (pre_state["stage"], knn_state["stage"], knn_state["progress"]) == ("pretrain", "knn", None)
    out = capsys.readouterr().out
    assert out.count("kNN (t=0.1) of") == 1 and out.count("epoch 1/1: loss") == 1
    assert _file_handlers() == []
    console = [h for h in logging.getLogger(LOGGER_NAME).handlers if getattr(h, "_simsiam_console", False)]
    assert len(console) == 1


def test_stage_run_owns_folder_metrics_results(tmp_path):
    with StageRun("knn", tmp_path / "r") as sr:
        sr.save_config({"a": 1})
        sr.metrics.write({"stage": "knn", "epoch": 1, "top1": 10.0})
        sr.log.info("inside the run")
        path = sr.results(task="knn", dataset="d", metrics={"top1": 10.0}, config={"a": 1})
    assert json.loads(path.read_text())["metrics"] == {"top1": 10.0}
    assert (tmp_path / "r" / "config.yaml").read_text() == "a: 1\n"
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"a": 1}
    assert read_metrics(tmp_path / "r") == [{"stage": "knn", "epoch": 1, "top1": 10.0}]
    assert "inside the run" in (tmp_path / "r" / "log.txt").read_text()
    logging.getLogger(LOGGER_NAME).info("after the run")
    assert "after the run" not in (tmp_path / "r" / "log.txt").read_text()


def test_resume_after_a_cut_off_metrics_line(tmp_path):
    """A run killed in the middle of a metrics write: the next run of the stage (any stage: the frame's writer)
    starts its first record on a line of its own."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"stage": "linear", "epoch": 1, "loss": 2.0}\n{"stage": "lin')
    with StageRun("linear", run_dir) as sr:
        sr.metrics.write({"stage": "linear", "epoch": 2, "loss": 1.0})
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]


def test_nested_run_logs_write_both_files(tmp_path):
    """A trial folder inside a run folder (detection): the trial's records go to both log files."""
    with run_log(tmp_path / "run") as log:
        with run_log(tmp_path / "run" / "trial_0"):
            log.info("a trial line")
        log.info("a summary line")
    assert "a trial line" in (tmp_path / "run" / "trial_0" / "log.txt").read_text()
    assert "a summary line" not in (tmp_path / "run" / "trial_0" / "log.txt").read_text()
    assert (tmp_path / "run" / "log.txt").read_text().count("line") == 2


def test_text_log_on_rank_zero_only(tmp_path, capsys):
    """Other ranks write no log file and print warnings only."""
    with run_log(tmp_path / "r1", main=False) as log:
        log.info("not shown")
        log.warning("a warning is")
    out = capsys.readouterr().out
    assert "not shown" not in out and "a warning is" in out and not (tmp_path / "r1").exists()
    with run_log(tmp_path / "r0", main=True) as log:
        log.info("epoch 1 done")
    assert "epoch 1 done" in (tmp_path / "r0" / "log.txt").read_text()


def test_exit_codes(capsys):
    """Bad input: one line on stderr and 2; success: the body's code; an internal error keeps its traceback."""
    class Missing(InputError):
        pass

    def bad():
        raise Missing("data.root: dataset folder '/nowhere' does not exist")

    assert guard("simsiam x", bad) == 2
    assert capsys.readouterr().err == "simsiam x: error: data.root: dataset folder '/nowhere' does not exist\n"
    assert guard("simsiam x", lambda: 0) == 0

    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        guard("simsiam x", broken)
    assert issubclass(config.ConfigError, InputError) and issubclass(config.ConfigError, ValueError)


@pytest.mark.parametrize("stage", ["pretrain", "knn", "detect"])
def test_every_stage_refuses_bad_input_with_exit_2(stage, tmp_path, capsys):
    """The same convention in every command: an unreadable checkpoint or unknown key is one line, exit 2."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    if stage == "pretrain":
        from pretrain.main import main
        code = main(["--config", "test_tiny", "--output", str(tmp_path / "o"), "train.no_such_key=1"])
        what = "unknown key 'train.no_such_key'"
    elif stage == "knn":
        code = knn.main(["--weights", str(junk), "--data", "embedded", "--output", str(tmp_path / "o")])
        what = str(junk)
    else:
        from transfer.evaluation import detect
        code = detect.main(["--weights", str(tmp_path / "missing.pkl"), "--config", "tiny", "--output",
                            str(tmp_path / "o")])
        what = "missing.pkl: no such file"
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"simsiam {stage}: error: ") and what in err[0]


def test_run_record_placement_progress_and_end(tmp_path):
    """run_state.json: this process's placement on entry; progress written at most every progress_every_s
    (here: far longer than the test) and always at an epoch's last step; how the run ended."""
    run = tmp_path / "r"
    with StageRun("pretrain", run, progress_every_s=3600) as sr:
        doc = read_run_state(run)
        assert doc["stage"] == "pretrain" and doc["world_size"] == 1 and doc["progress"] is None
        assert doc["ranks"] == [{"rank": 0, "local_rank": 0, "host": socket.gethostname(), "device": "cpu",
                                 "pid": os.getpid()}]
        sr.progress(epoch=1, epochs=2, step=1, steps=3)      # the first report is written at once
        assert read_run_state(run)["progress"] == {"epoch": 1, "epochs": 2, "step": 1, "steps": 3}
        sr.progress(epoch=1, epochs=2, step=2, steps=3)      # within progress_every_s: not written
        assert read_run_state(run)["progress"]["step"] == 1
        sr.progress(epoch=1, epochs=2, step=3, steps=3)      # the epoch's last step: written
        assert read_run_state(run)["progress"]["step"] == 3 and read_run_state(run)["ended"] is None
    doc = read_run_state(run)
    assert doc["ended"] and doc["error"] is None and doc["progress"]["step"] == 3
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []   # no temporary file left
    # the next invocation keeps the last known position until it reports its own; an error is recorded
    with pytest.raises(InputError):
        with StageRun("pretrain", run, progress_every_s=3600):
            assert read_run_state(run)["progress"]["step"] == 3 and read_run_state(run)["ended"] is None
            raise InputError("data.root /x: cannot read image /x/a/0.jpg\n(more detail)")
    doc = read_run_state(run)
    assert doc["error"] == "InputError: data.root /x: cannot read image /x/a/0.jpg" and doc["ended"]
    (run / RUN_STATE).write_text('{"version": 1, "sta')          # unreadable: no record rather than an error
    assert read_run_state(run) is None


RANK_REPORTS = """
import os, sys
from pathlib import Path
from pretrain.frame import StageRun
rank, out = int(sys.argv[1]), Path(sys.argv[2])
with StageRun("pretrain", out / "run", device="cpu", progress_every_s=0) as sr:
    sr.progress(epoch=1, epochs=1, step=10 + rank, steps=20)          # a rank-specific position
    sr.results(task="pretrain", dataset="d", metrics={}, config={})   # a barrier: both ranks have reported
    if rank == 1:
        sr.progress(epoch=1, epochs=1, step=20, steps=20)             # an epoch end on rank 1 only
"""


def test_run_record_written_by_rank_zero_only(tmp_path):
    """Two processes: the record lists both ranks (gathered on entry) and holds rank 0's reports only."""
    import subprocess
    import sys
    from test_distributed import free_port
    port, repo = free_port(), Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", RANK_REPORTS, str(rank), str(tmp_path)], cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo), "RANK": str(rank), "WORLD_SIZE": "2",
                                   "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    doc = read_run_state(tmp_path / "run")
    assert doc["world_size"] == 2
    assert [(r["rank"], r["local_rank"], r["device"]) for r in doc["ranks"]] == [(0, 0, "cpu"), (1, 1, "cpu")]
    assert [r["pid"] for r in doc["ranks"]] == [p.pid for p in procs]
    assert doc["progress"] == {"epoch": 1, "epochs": 1, "step": 10, "steps": 20}
    assert doc["ended"] and doc["error"] is None
