"""Loading a run's config: a preset or YAML file, then ``KEY=VALUE`` overrides, then validation.

``load_config(ref, overrides, presets_dir=...)`` reads a preset (``<presets_dir>/<name>.yaml``) or a
YAML file, applies the overrides in order, and returns a validated :class:`~collapse.config.RunConfig`.
The caller says where the presets are: the ``collapse`` command's are ``jobs/presets/*.yaml``, loaded
through :func:`jobs.presets.load_config`. A preset may start from another: a top-level
``base: <preset name or path>`` is read first, then the file's mappings merge into it key by key
(lists, ``strategies`` included, are replaced whole).

Overrides, ``KEY=VALUE`` with VALUE parsed by ``yaml.safe_load`` (a float written ``1e-4`` is
taken as a float too, although YAML 1.1 reads it as a string):

    run.generations=8                    a field of a section
    train.betas=[0.9,0.999]              a YAML flow list
    paradigm=accumulate                  short for paradigm.name=accumulate
    strategies=vanilla,tdf               these strategies, in this order: a NAME already configured
                                         keeps its settings, a new NAME is a new entry of kind NAME,
                                         NAME:KIND a new entry of that kind (defaults for the rest)
    strategies=[{name: g5, kind: greedy, pool_factor: 5}]   the whole list, as YAML
    strategies.greedy.pool_factor=5      a field of the strategy named greedy
    strategies.greedy={features: dinov2, tau0: 60}          several fields of it

The schema is :mod:`collapse.config`, the checks :mod:`collapse.config_checks`; this module imports
both, and neither imports it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import typing

import yaml

from collapse.config import (
    DataSection, ExtractorsSection, RunConfig, RunSection, Strategy, TrackersSection, hint_members, section_fields,
    to_dict,
)
from collapse.config_checks import validate
from collapse.errors import ConfigError


# -- reading presets and overrides (plain dicts until the end)

def list_presets(presets_dir: str | os.PathLike) -> list[str]:
    """The names of the presets in ``presets_dir`` (its ``*.yaml`` files), sorted."""
    return sorted(p.stem for p in pathlib.Path(presets_dir).glob("*.yaml"))


def _read_yaml(ref: str, presets_dir, relative_to: pathlib.Path | None = None, seen: tuple = ()) -> dict:
    """A preset name (``<presets_dir>/<name>.yaml``) or a YAML path, with its ``base`` merged under it."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = pathlib.Path(ref)
        path = path if path.is_absolute() or relative_to is None or path.exists() else relative_to / path
        if not path.is_file():
            raise ConfigError(f"config file {ref!r} not found")
    else:
        path = pathlib.Path(presets_dir) / f"{ref}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {ref!r}; known presets: {', '.join(list_presets(presets_dir))} "
                              "(or give the path of a YAML file)")
    if path.resolve() in seen:
        raise ConfigError(f"base: preset {ref!r} includes itself ({' -> '.join(map(str, seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(_read_yaml(str(base), presets_dir, path.parent, seen + (path.resolve(),)), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(path: str, key, allowed) -> ConfigError:
    where = f"{path}.{key}" if path else str(key)
    return ConfigError(f"{where}: unknown key{_suggest(str(key), allowed)}; allowed: {', '.join(allowed)}")


def apply_override(data: dict, item: str) -> dict:
    """``data`` (a config as plain dicts) with one ``KEY=VALUE`` override applied (module docstring)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=200 or strategies.tdf.tau0=60")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: {key.strip()}: the value is not valid YAML ({e.problem})") from None
    if parts[0] == "strategies":
        return dict(data, strategies=_override_strategies(list(data.get("strategies") or []), parts[1:], value, item))
    if parts == ["paradigm"] and isinstance(value, str):
        parts, value = ["paradigm", "name"], value
    out = node = dict(data)          # unknown keys and wrong types are refused when the config is built
    for p in parts[:-1]:
        node[p] = dict(node[p]) if isinstance(node.get(p), dict) else {}
        node = node[p]
    node[parts[-1]] = value
    return out


def _override_strategies(entries: list, rest: list, value, item: str) -> list:
    by_name = {e.get("name"): e for e in entries if isinstance(e, dict)}
    if not rest:                                          # strategies=a,b,c | [..] (the whole list)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ConfigError(f"override {item!r}: strategies: allowed: NAME[:KIND],... or a YAML list of mappings")
        return [_strategy_item(it, by_name, item) for it in items]
    name, *fields = rest
    if name not in by_name:
        raise ConfigError(f"override {item!r}: strategies.{name}: no strategy of that name; "
                          f"configured: {', '.join(map(str, by_name))}")
    if len(fields) > 1 or (not fields and not isinstance(value, dict)):
        raise ConfigError(f"override {item!r}: use strategies.NAME.FIELD=VALUE or strategies.NAME={{FIELD: VALUE}}")
    update = {fields[0]: value} if fields else value
    for k in update:
        if k not in section_fields(Strategy):
            raise _unknown(f"strategies.{name}", k, section_fields(Strategy))
    return [dict(e, **update) if e is by_name[name] else e for e in entries]


def _strategy_item(it, by_name: dict, item: str) -> dict:
    if isinstance(it, dict):
        return it
    if not isinstance(it, str) or not it.strip():
        raise ConfigError(f"override {item!r}: a strategy is NAME, NAME:KIND or a mapping, got {it!r}")
    name, _, kind = (s.strip() for s in it.partition(":"))
    if not kind and name in by_name:
        return by_name[name]
    return {"name": name, "kind": kind or name}


# -- building the typed config

def _build(cls, data, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(section_fields(cls))}, got {data!r}")
    fields = section_fields(cls)
    for k in data:
        if k not in fields:
            raise _unknown(path, k, fields)
    kwargs = {}
    for k, v in data.items():
        key = f"{path}.{k}" if path else k
        hint = fields[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = _build(hint, v, key)
        elif k == "strategies" and cls is RunConfig:
            if not isinstance(v, list):
                raise ConfigError(f"strategies: expected a list of mappings (name, kind, ...), got {v!r}")
            kwargs[k] = tuple(_build(Strategy, e, f"strategies[{i}]") for i, e in enumerate(v))
        else:
            kwargs[k] = _coerce(v, hint)
    if cls is Strategy and "name" not in kwargs:
        raise ConfigError(f"{path}.name: every strategy needs a name")
    return cls(**kwargs)


def _coerce(value, hint):
    """YAML lists -> tuples; in a float field an int or a float written 1e-4 (a string to YAML 1.1) -> float."""
    if isinstance(value, list):
        return tuple(_coerce(v, typing.get_args(hint)[0]) if typing.get_origin(hint) is tuple else v for v in value)
    if float in hint_members(hint) and (type(value) is int or isinstance(value, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(ref: str | None = None, overrides: list[str] | tuple = (), *,
                presets_dir: str | os.PathLike) -> RunConfig:
    """A validated RunConfig: defaults < preset or YAML file (and its bases) < overrides, in order.

    ``ref`` is a preset name (``<presets_dir>/<name>.yaml``), the path of a YAML file, or None (the
    defaults); ``presets_dir`` is where preset names (``ref``'s and every ``base:``) are looked up."""
    data = _merge(to_dict(RunConfig()), _read_yaml(ref, presets_dir) if ref else {})
    for item in overrides:
        data = apply_override(data, item)
    cfg = _build(RunConfig, data, "")
    if not cfg.run.run_dir and isinstance(cfg.run.name, str):
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=f"runs/{cfg.run.name}"))
    cfg = absolute_paths(cfg)
    validate(cfg)
    return cfg


def absolute_paths(cfg: RunConfig, cwd: str | None = None) -> RunConfig:
    """``run.run_dir``, ``data.source``, the ``extractors`` paths and an MLflow store given as a path
    (``trackers.mlflow``) with relative or ``~`` local paths made absolute (against ``cwd``, default
    this process's), so that no worker, whatever its working directory, reads another place. Done
    once, as the entry point loads the config; remote URLs and hub ids (``extractors.dinov2`` that is
    neither a path nor an existing directory) are unchanged."""
    from collapse.data.urls import absolute_source, absolute_url
    run, data, ex, tr = cfg.run, cfg.data, cfg.extractors, cfg.trackers
    if isinstance(run, RunSection) and isinstance(run.run_dir, str):
        run = dataclasses.replace(run, run_dir=absolute_url(run.run_dir, cwd))
    if isinstance(data, DataSection) and isinstance(data.source, str):
        data = dataclasses.replace(data, source=absolute_source(data.source, cwd))
    if isinstance(ex, ExtractorsSection) and isinstance(ex.dinov2, str) and isinstance(ex.inception, str):
        ex = dataclasses.replace(ex, dinov2=_absolute_model_ref(ex.dinov2, cwd), inception=absolute_url(ex.inception, cwd))
    if isinstance(tr, TrackersSection) and isinstance(tr.mlflow, str) and tr.mlflow.startswith((".", "~")):
        tr = dataclasses.replace(tr, mlflow=absolute_url(tr.mlflow, cwd))
    return dataclasses.replace(cfg, run=run, data=data, extractors=ex, trackers=tr)


def _absolute_model_ref(ref: str, cwd: str | None) -> str:
    """A local directory made absolute; a hub id ("org/name", no such directory) unchanged."""
    from collapse.data.urls import absolute_url
    local = ref.startswith(("/", ".", "~")) or os.path.isdir(os.path.join(cwd or os.getcwd(), ref))
    return absolute_url(ref, cwd) if local and "://" not in ref else ref
