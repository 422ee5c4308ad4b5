"""results.json: the one contract between every stage (pretraining, kNN, linear, detection) and the comparison
tables, as typed documents.

A stage writes its results.json through its frame (pretrain.frame.StageRun.results, rank 0, atomically); the
tables, plots and `simsiam submit status` read it with `read` and use the fields of `Results`, `Source` and
`PretrainInfo` below. The JSON field names are those of the first files:

    {"schema": "simsiam-suite/results/v1", "version": 2, "task": "linear", "dataset": "imagenet",
     "metrics": {...}, "epochs": 90, "batch_size": 4096, "protocol": {...} (pretrain.protocol),
     "source": {"checkpoint", "sha256", "kind", "normalisation", "pretrain": {"method", "arch", "epochs",
                "batch_size", "dataset", ..., "recipe"}},
     "config": {...}, "code_version": "...", "created": ISO, ...the stage's own fields (see Results.extra)}

"schema" names the kind of file and has not changed; "version" counts its revisions. Version 1: the files
written before "version" existed (they have none), without source.pretrain.recipe. Version 2: "version" and
source.pretrain.recipe (the pretraining's trajectory keys, pretrain.protocol.recipe_of). A file of a later
version than this code knows, or of another schema, is a ResultsError (one line naming the file, exit 2).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import atomic_write
from .errors import InputError

SCHEMA = "simsiam-suite/results/v1"
VERSION = 2
TASKS = ("pretrain", "knn", "linear", "detection")


class ResultsError(InputError, ValueError):
    """A results.json that cannot be read: not valid JSON, another schema, or a later version."""


class MissingResults(ResultsError, FileNotFoundError):
    """No results.json (or run folder) where one was named."""


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _map(value: Any) -> dict | None:
    return dict(value) if isinstance(value, Mapping) else None


def _json(obj: Any, always: tuple[str, ...]) -> dict:
    """A dataclass as JSON: its fields (when set, named in `always` or present in the file it was read from,
    so null stays null), then `other`."""
    keep = set(always) | set(obj.given)
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
           if f.name not in ("other", "given") and (f.name in keep or getattr(obj, f.name) is not None)}
    return {**out, **obj.other}


def _given(d: Mapping) -> tuple[str, ...]:
    return tuple(k for k in d if isinstance(k, str))


@dataclass(frozen=True)
class PretrainInfo:
    """source.pretrain: what the evaluated checkpoint records of its pretraining (None: not recorded)."""
    method: str | None = None             # SimSiam, MoCo, ..., "random init"; None: the file does not say
    arch: str | None = None
    epochs: int | None = None             # epochs run
    batch_size: int | None = None
    dataset: str | None = None
    scheduled_epochs: int | None = None
    completed: bool | None = None         # the checkpoint is the end of its configured schedule
    image_size: int | None = None
    limit_per_class: int | None = None
    max_steps_per_epoch: int | None = None
    config_changes: list | None = None    # changes accepted on resume: [{"epoch", "key", "old", "new"}]
    recipe: dict | None = None            # trajectory keys {"optim.base_lr": 0.05, ...} (pretrain.protocol)
    recipe_from: str | None = None        # how the recipe is known when the file does not hold it
    branch: str | None = None             # DINO: the branch read
    zero_init_residual: bool | None = None  # random init: which init
    other: dict = field(default_factory=dict)  # keys of later versions, kept as they are
    given: tuple = field(default=(), compare=False, repr=False)  # the keys of the file it was read from

    ALWAYS = ("method", "arch", "epochs", "batch_size", "dataset")

    @classmethod
    def from_json(cls, d: Any) -> "PretrainInfo":
        d = dict(d) if isinstance(d, Mapping) else {}
        known = {f.name for f in dataclasses.fields(cls)} - {"other", "given"}
        ints = ("epochs", "batch_size", "scheduled_epochs", "image_size", "limit_per_class", "max_steps_per_epoch")
        return cls(method=_str(d.get("method")), arch=_str(d.get("arch")), dataset=_str(d.get("dataset")),
                   **{k: _int(d.get(k)) for k in ints}, completed=_bool(d.get("completed")),
                   config_changes=list(d["config_changes"]) if isinstance(d.get("config_changes"), list) else None,
                   recipe=_map(d.get("recipe")), recipe_from=_str(d.get("recipe_from")), branch=_str(d.get("branch")),
                   zero_init_residual=_bool(d.get("zero_init_residual")),
                   other={k: v for k, v in d.items() if k not in known}, given=_given(d))

    def to_json(self) -> dict:
        return _json(self, self.ALWAYS)


@dataclass(frozen=True)
class Source:
    """results.json "source": the weights evaluated (transfer.evaluation.convert.describe_source)."""
    checkpoint: str | None = None         # path, or "random"
    sha256: str | None = None
    kind: str | None = None               # the checkpoint layout (simsiam-suite, simsiam-official, ..., random-init)
    pretrain: PretrainInfo = field(default_factory=PretrainInfo)
    normalisation: dict | None = None     # {"mean", "std"} the layout's network expects, when not ImageNet's
    other: dict = field(default_factory=dict)
    given: tuple = field(default=(), compare=False, repr=False)

    ALWAYS = ("checkpoint", "sha256", "kind")

    @classmethod
    def from_json(cls, d: Any) -> "Source":
        d = dict(d) if isinstance(d, Mapping) else {}
        known = ("checkpoint", "sha256", "kind", "pretrain", "normalisation")
        return cls(checkpoint=_str(d.get("checkpoint")), sha256=_str(d.get("sha256")), kind=_str(d.get("kind")),
                   pretrain=PretrainInfo.from_json(d.get("pretrain")), normalisation=_map(d.get("normalisation")),
                   other={k: v for k, v in d.items() if k not in known}, given=_given(d))

    def to_json(self) -> dict:
        if self == Source():
            return {}
        out = _json(self, self.ALWAYS)
        out["pretrain"] = self.pretrain.to_json()
        return out

    @property
    def is_random(self) -> bool:
        return self.checkpoint == "random" or self.kind == "random-init"


@dataclass(frozen=True)
class Results:
    """One results.json. `extra` holds the stage's own fields (a pretraining's complete / planned_epochs /
    config_changes / applied, a linear grid, a detection run's trials and std, ...), read with the accessors
    below."""
    task: str
    dataset: str | None
    metrics: dict
    config: dict = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    epochs: int | None = None
    batch_size: int | None = None
    protocol: dict | None = None          # the fingerprint of what was measured (pretrain.protocol)
    extra: dict = field(default_factory=dict)
    version: int = VERSION
    code_version: str | None = None
    created: str | None = None
    path: Path | None = None              # where it was read from

    @classmethod
    def new(cls, *, task: str, dataset: str | None, metrics: dict, config: Mapping | None = None,
            source: Source | Mapping | None = None, epochs: int | None = None, batch_size: int | None = None,
            extra: Mapping | None = None) -> "Results":
        """A document to write (the field names of the first write_results; `extra["protocol"]` becomes the
        protocol field)."""
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
        extra = dict(extra or {})
        protocol = extra.pop("protocol", None)
        src = source if isinstance(source, Source) else Source.from_json(source)
        return cls(task=task, dataset=dataset, metrics=dict(metrics), config=dict(config or {}), source=src,
                   epochs=epochs, batch_size=batch_size, protocol=protocol, extra=extra)

    @classmethod
    def from_json(cls, d: Mapping, path: Path | None = None) -> "Results":
        known = ("schema", "version", "task", "dataset", "metrics", "config", "source", "epochs", "batch_size",
                 "protocol", "code_version", "created", "_path")
        return cls(task=str(d.get("task")), dataset=_str(d.get("dataset")), metrics=_map(d.get("metrics")) or {},
                   config=_map(d.get("config")) or {}, source=Source.from_json(d.get("source")),
                   epochs=_int(d.get("epochs")), batch_size=_int(d.get("batch_size")),
                   protocol=_map(d.get("protocol")), extra={k: v for k, v in d.items() if k not in known},
                   version=_int(d.get("version")) or 1, code_version=_str(d.get("code_version")),
                   created=_str(d.get("created")), path=path)

    def to_json(self) -> dict:
        doc = {"schema": SCHEMA, "version": self.version, "task": self.task, "dataset": self.dataset,
               "metrics": self.metrics, "epochs": self.epochs, "batch_size": self.batch_size,
               "source": self.source.to_json(), "config": self.config, "code_version": self.code_version,
               "created": self.created}
        if self.protocol is not None:
            doc["protocol"] = self.protocol
        return {**doc, **self.extra}

    # -- the stage's own fields
    @property
    def complete(self) -> bool | None:
        """A pretraining's: whether it ran its schedule to the end (None for other stages)."""
        return _bool(self.extra.get("complete"))

    @property
    def grid(self) -> dict | None:
        """A linear evaluation's grid of heads (its pick never enters a paper column), else None."""
        return _map(self.extra.get("grid"))

    @property
    def trials(self) -> list[dict]:
        """A detection summary's per-trial entries ({"trial", "seed", "metrics", "path"}); [] otherwise."""
        trials = self.extra.get("trials")
        return [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []

    @property
    def seed(self) -> int | None:
        return _int(self.extra.get("seed"))

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path is not None else None


def write(folder: str | Path, doc: Results, code_version: str) -> Path:
    """<folder>/results.json of `doc` at the current VERSION, stamped with `code_version` and the time;
    atomic. Stages call it through their frame (StageRun.results)."""
    stamped = dataclasses.replace(doc, version=VERSION, code_version=code_version,
                                  created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(stamped.to_json(), indent=2, default=str)
    return atomic_write(Path(folder) / "results.json", lambda f: f.write(text.encode()))


def read(path: str | Path) -> Results:
    """The results.json at `path` (a file, or a run folder holding one); ResultsError when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingResults(f"no results.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise ResultsError(f"{path}: schema is {found!r}, expected {SCHEMA!r}")
    version = doc.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise ResultsError(f"{path}: version {version!r} of {SCHEMA!r}; this code reads versions 1 to {VERSION}")
    return Results.from_json(doc, path)
