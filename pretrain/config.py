"""Configs: defaults live in dataclasses, YAML presets are deltas, `key=value` overrides win.

Every stage (pretraining, linear evaluation, ...) describes its settings as a tree of dataclasses.
`resolve()` applies YAML deltas and command-line overrides on top of the defaults. A key that the
dataclass does not have is an error naming the file (or the override) and the key, so a typo can
never silently fall back to a default. The resolved config is written into every run folder.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
import json
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .errors import InputError

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "eval_configs"


class ConfigError(InputError, ValueError):
    """A config file or override that cannot be applied."""


def find_preset(name_or_path: str | Path, kind: str) -> Path:
    """A preset given as a path, or by name under eval_configs/<kind>/ (with or without .yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_ROOT / kind / f"{name_or_path}.yaml", CONFIG_ROOT / kind / str(name_or_path)):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a preset in {CONFIG_ROOT / kind} "
                      f"(known presets: {', '.join(known) or 'none'})")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the declared field type; raise with `where` on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X] / X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, tuple, Sequence):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, where) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, delta: dict, source: str, prefix: str = "") -> Any:
    if not isinstance(delta, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {delta!r}")
    types = _field_types(type(obj))
    changes = {}
    for key, val in delta.items():
        dotted = f"{prefix}{key}"
        if key not in types:
            raise ConfigError(f"{source}: unknown key '{dotted}' (known at this level: {', '.join(types)})")
        cur = getattr(obj, key)
        if dataclasses.is_dataclass(cur):
            changes[key] = _apply(cur, val, source, dotted + ".")
        else:
            changes[key] = _coerce(val, types[key], f"{source}: key '{dotted}'")
    return dataclasses.replace(obj, **changes)


def _dotted_to_nested(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def resolve(defaults: Any, files: Iterable[str | Path] = (), overrides: Iterable[str] = (),
            kind: str | None = None) -> Any:
    """defaults <- each YAML delta in order <- each `a.b=value` override."""
    cfg = defaults
    for f in files:
        path = find_preset(f, kind) if kind else Path(f)
        delta = load_yaml(path)
        base = delta.pop("_base_", None)
        if base:  # a preset may build on another preset of the same kind
            cfg = resolve(cfg, [path.parent / base], kind=None)
        cfg = _apply(cfg, delta, str(path))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
        key, raw = ov.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        cfg = _apply(cfg, _dotted_to_nested(key.strip(), value), f"override '{ov}'")
    return cfg


def to_dict(cfg: Any) -> dict:
    """A config dataclass as a plain dict (a dict is returned as a copy)."""
    return dict(cfg) if isinstance(cfg, dict) else dataclasses.asdict(cfg)


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"a.b": value} of a nested config dict (sequences as lists): the dotted keys of the overrides."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def from_dict(cls, data: dict, source: str = "dict") -> Any:
    """Rebuild a config from `to_dict` output (e.g. the config stored in a checkpoint)."""
    return _apply(cls(), data, source)


def save(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (and JSON next to it for programs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = to_dict(cfg)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    path.with_suffix(".json").write_text(json.dumps(d, indent=2))
