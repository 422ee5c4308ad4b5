"""The run frame every stage shares: pretraining, kNN, linear evaluation and detection.

A stage's entry point reads like detectron2's tools/train_net.py: parse, set up, build, run. The frame is
the "set up" part and the exit code, written once:

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return guard("simsiam knn", lambda: _main(args))     # InputError -> one line, exit 2

    def run(cfg, output_dir) -> dict:
        with StageRun("knn", output_dir) as sr:              # process group, run folder, log.txt, metrics
            sr.save_config(cfg)                              # config.yaml + config.json (rank 0)
            sr.log.info("...")                               # console + <output_dir>/log.txt (rank 0)
            sr.metrics.write({"stage": "knn", "epoch": 1, ...})
            sr.results(task="knn", dataset=..., metrics=..., config=...)   # results.json (rank 0)

What it owns:
  - the process group (env:// only, see pretrain.distributed): joined on entry and left on exit when this
    run created it, so a caller that already holds one (tests, a launcher) keeps it;
  - the run folder, created by rank 0 before a barrier so every rank finds it;
  - logging: one console handler (stdout) per process on the 'simsiam' logger, and one <output_dir>/log.txt handler
    per run, removed on exit, so two stages run in one process (`simsiam demo`) never write into each
    other's log; `loggers` adds other libraries' loggers (detectron2's) to the same file;
  - the metrics writer (pretrain.logs.MetricsWriter: rank 0 only, a cut-off last line is dropped when the
    file is opened, atomic truncation on resume);
  - results.json, the only way a stage writes one (pretrain.results: a typed, versioned document; rank 0
    only, then a barrier), also for the sub-runs of a stage (detection trials in their own folders);
  - the run record <output_dir>/run_state.json (RunRecord, rank 0 only): where each rank runs (host, local
    rank, device, process id, gathered on entry), how far the run is (`sr.progress(...)`, written at most
    every few seconds and at the end of each epoch) and how the invocation ended; whoever follows a run
    (`simsiam submit status`) reads it with read_run_state, so the training code never knows who launched it;
  - the error convention (pretrain.errors): bad input -> one line naming the file, key or value, exit 2;
    anything else keeps its traceback and exits 1.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch.distributed as dist

from . import config as config_mod
from . import distributed
from .checkpoint import atomic_write
from .errors import EXIT_BAD_INPUT, InputError
from . import results as results_mod
from .logs import LOGGER_NAME, MetricsWriter, code_version

RUN_STATE = "run_state.json"
RUN_STATE_VERSION = 1

_CONSOLE_MARK = "_simsiam_console"
_FORMAT = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")


class _Console(logging.StreamHandler):
    """A handler writing to whatever sys.stdout is at the time of each record (a test's capture, a redirect
    made after the handler was added), not to the stream current when it was created. Standard error is left
    to the one-line errors, warnings and progress bars."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def console_logger(main: bool = True) -> logging.Logger:
    """The 'simsiam' logger with exactly one console (stdout) handler per process: INFO on rank 0, warnings
    only on the other ranks. Calling it again changes the level, never adds a second handler."""
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.propagate = False
    if not any(getattr(h, _CONSOLE_MARK, False) for h in log.handlers):
        handler = _Console()
        handler.setFormatter(_FORMAT)
        setattr(handler, _CONSOLE_MARK, True)
        log.addHandler(handler)
    return log


@contextlib.contextmanager
def run_log(folder: str | Path, main: bool = True, loggers: Sequence[str] = (LOGGER_NAME,)) -> Iterator[logging.Logger]:
    """While the block runs, the records of `loggers` are also written to <folder>/log.txt (rank 0 only;
    appended, so a resumed run keeps its earlier lines). The file handler is removed and closed on exit."""
    log = console_logger(main)
    handler: logging.Handler = logging.NullHandler()
    if main:
        Path(folder).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(folder) / "log.txt")
        handler.setFormatter(_FORMAT)
        handler.setLevel(logging.INFO)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        yield log
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_run_state(folder: str | Path) -> dict[str, Any] | None:
    """The run record of a run folder (see RunRecord), or None when there is none (yet) or it is unreadable."""
    try:
        doc = json.loads((Path(folder) / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == RUN_STATE_VERSION else None


class RunRecord:
    """<folder>/run_state.json, written by rank 0 only, atomically (a reader sees one whole version):

        {"version": 1, "stage": "pretrain", "started": ISO, "updated": ISO, "world_size": 2,
         "ranks": [{"rank": 0, "local_rank": 0, "host": "node1", "device": "cuda:0", "pid": 4242}, ...],
         "progress": {"epoch": 3, "epochs": 100, "step": 120, "steps": 1251} or null,
         "ended": ISO or null, "error": "DataError: ..." or null}

    `progress` is kept from the previous invocation until this one reports its own (a resumed run shows where
    it stands from its start). Progress is written at most every `every_s` seconds, always at an epoch's last
    step and when the invocation ends, so a reader's view is at most `every_s` old while the run is alive and
    exact once it has stopped."""

    def __init__(self, folder: Path, stage: str, info: distributed.DistInfo, every_s: float = 5.0):
        self.path = Path(folder) / RUN_STATE
        self.enabled = info.is_main
        self.every_s = float(every_s)
        self._last = float("-inf")
        self.doc: dict[str, Any] = {}
        here = {"rank": info.rank, "local_rank": info.local_rank, "host": socket.gethostname(),
                "device": str(info.device), "pid": os.getpid()}
        ranks = [here]
        if info.distributed:
            ranks = [None] * info.world_size
            dist.all_gather_object(ranks, here)
        if self.enabled:
            before = read_run_state(folder) or {}
            self.doc = {"version": RUN_STATE_VERSION, "stage": stage, "started": _utc_now(), "updated": None,
                        "world_size": info.world_size, "ranks": ranks,
                        "progress": before.get("progress") if before.get("stage") == stage else None,
                        "ended": None, "error": None}
            self._write()

    def _write(self) -> None:
        self.doc["updated"] = _utc_now()
        text = json.dumps(self.doc, indent=1)
        atomic_write(self.path, lambda f: f.write(text.encode()), durable=False)

    def progress(self, *, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Where the run is: `step` of `steps` done in epoch `epoch` of `epochs` (1-based; step == steps: the
        epoch is done). Cheap to call at every step: it writes at most every `every_s` seconds."""
        if not self.enabled:
            return
        now = time.monotonic()
        self.doc["progress"] = {"epoch": int(epoch), "epochs": int(epochs), "step": int(step), "steps": int(steps)}
        if step >= steps or now - self._last >= self.every_s:
            self._last = now
            self._write()

    def end(self, error: BaseException | None) -> None:
        """How this invocation ended: its error's first line ("Type: message"), or none."""
        if not self.enabled:
            return
        lines = str(error).strip().splitlines() if error is not None else []
        self.doc["ended"] = _utc_now()
        self.doc["error"] = (f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]
                             if error is not None else None)
        self._write()


class StageRun:
    """One run of a stage in one run folder (a context manager; see the module docstring).

    Attributes after entry: `info` (pretrain.distributed.DistInfo), `dir` (the run folder), `log` (the
    'simsiam' logger), `metrics` (MetricsWriter of <dir>/metrics.jsonl; TensorBoard when `tensorboard`),
    `record` (RunRecord of <dir>/run_state.json; `sr.progress(...)` reports the position in the run).
    """

    def __init__(self, stage: str, output_dir: str | Path, *, device: str | None = None,
                 loggers: Sequence[str] = (LOGGER_NAME,), tensorboard: bool = False,
                 progress_every_s: float = 5.0):
        self.stage = stage
        self.dir = Path(output_dir)
        self._device = device
        self._loggers = tuple(loggers)
        self._tensorboard = tensorboard
        self._progress_every_s = progress_every_s
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "StageRun":
        owns_group = not (dist.is_available() and dist.is_initialized())
        self.info = distributed.init_distributed(self._device)
        if owns_group:
            self._stack.callback(distributed.cleanup)
        try:
            if self.info.is_main:
                self.dir.mkdir(parents=True, exist_ok=True)
            distributed.barrier()
            self.log = self._stack.enter_context(run_log(self.dir, self.info.is_main, self._loggers))
            self.metrics = MetricsWriter(self.dir, enabled=self.info.is_main, tensorboard=self._tensorboard)
            self._stack.callback(self.metrics.close)
            self.record = RunRecord(self.dir, self.stage, self.info, self._progress_every_s)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.record.end(exc)
        finally:
            self._stack.close()
        return False

    def progress(self, *, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Report the position in the run (see RunRecord.progress); a no-op on ranks other than 0."""
        self.record.progress(epoch=epoch, epochs=epochs, step=step, steps=steps)

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def save_config(self, cfg: Any, name: str = "config.yaml") -> None:
        """The resolved config (a config dataclass or a plain dict) as YAML and JSON in the run folder."""
        if self.is_main:
            config_mod.save(cfg, self.dir / name)

    def results(self, doc: results_mod.Results | None = None, *, folder: str | Path | None = None,
                **fields: Any) -> Path | None:
        """results.json of this run (or of a sub-run's `folder`), written by rank 0: `doc`, or a document of
        `fields` (pretrain.results.Results.new's); other ranks may pass None. Then a barrier, so that no rank
        returns before the outcome is on disk."""
        path = None
        if self.is_main:
            doc = doc if doc is not None else results_mod.Results.new(**fields)
            path = results_mod.write(self.dir if folder is None else folder, doc, code_version())
        distributed.barrier()
        return path


def report_input_error(prog: str, error: BaseException) -> int:
    """Print the one line of a bad-input error (`prog: error: ...`) and return exit code 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


def guard(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body with the suite's exit-code convention: its own code on success, 2 with one line
    for an InputError; any other exception propagates with its traceback (exit code 1)."""
    try:
        return body()
    except InputError as e:
        return report_input_error(prog, e)
