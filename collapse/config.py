"""One typed config for a run: frozen sections with defaults, presets, overrides, validation.

``load_config(preset_or_path, overrides)`` reads a preset (``jobs/presets/<name>.yaml``) or a YAML
file, applies the overrides in order, and returns a validated :class:`RunConfig`. A preset may
start from another: a top-level ``base: <preset name or path>`` is read first, then the file's
mappings merge into it key by key (lists, ``strategies`` included, are replaced whole).

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

``config_hash`` and ``diff`` cover what a run computes, not where or on what it runs: they leave
out ``EXECUTION_KEYS`` (the run's name and directory, ``resources``: the seeding scheme makes
results independent of the number of workers; and ``extractors``: where the standard weights of
the pretrained feature spaces are, which moves with the cluster, like an endpoint URL, while what
``dinov2`` or ``inception`` computes is fixed by its name, collapse.features).
``extendable(old, new)``: only run.generations grew.

``validate`` (in :mod:`collapse.config_checks`, importable from here too) refuses a bad config,
naming the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import pathlib
import re
import types
import typing
from dataclasses import dataclass, field

import yaml

from collapse.data.manifest import config_hash as _hash_json
from collapse.errors import ConfigError
from collapse.paradigms import KINDS, PARADIGMS

PRESETS_DIR = pathlib.Path(__file__).resolve().parents[1] / "jobs" / "presets"
EXECUTION_KEYS = ("run.name", "run.run_dir", "resources", "extractors")
RESERVED_NAMES = ("real", "report", "shared")       # directories of the run layout beside the strategies
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SOURCES = ("fashion-mnist", "digits", "folder:PATH", "npy:PATH", "wds:URL",   # collapse.data.importers
           "cifar10:PATH", "parquet:PATH",
           "scheme://URL of a sample set")                                   # e.g. from collapse ingest
DISTANCE_KINDS = ("greedy", "tdf")                  # kinds that select by distances in a feature space


def _f(default, allowed=None):
    """A field with its default and allowed values: an interval such as "[1, inf)", or a tuple of choices."""
    return field(default=default, metadata={"allowed": allowed} if allowed else {})


ANY, POS, NONNEG = "[1, inf)", "(0, inf)", "[0, inf)"


@dataclass(frozen=True)
class RunSection:
    name: str = "run"
    seed: int = _f(0, NONNEG)
    generations: int = _f(4, ANY)   # models M_1..M_G; generation 1 trains on real data only
    run_dir: str = ""               # any fsspec URL; "" = runs/<name>


@dataclass(frozen=True)
class DataSection:
    source: str = "fashion-mnist"   # one of SOURCES
    size: int = _f(16, ANY)         # images are size x size: the model preset's sample size
    mode: str = _f("grey", ("grey", "rgb"))   # the preset's 1 or 3 channels
    n: int = _f(1000, ANY)          # N, the size of every training set (D_1 = N real images)
    holdout: int = _f(1000, NONNEG)  # held-out real images for FD, KID, precision/recall/density/coverage


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"            # a name of collapse.diffusion.UNET_PRESETS
    num_classes: int = _f(0, NONNEG)  # 0: unconditional; K >= 2: class-conditional on the source's labels 0..K-1
    # classifier-free guidance training (Ho & Salimans 2022): each label is replaced by the null class
    # with this probability, so one network learns the conditional and the unconditional model
    p_uncond: float = _f(0.1, "[0, 1)")


@dataclass(frozen=True)
class TrainSection:                 # cluster.train.TrainSpec, less preset (model.preset) and seed (run.seed)
    steps: int = _f(100, ANY)
    batch_size: int = _f(64, ANY)   # global batch
    lr: float = _f(1e-4, POS)
    betas: tuple[float, ...] = (0.95, 0.999)
    weight_decay: float = _f(1e-6, NONNEG)
    eps: float = _f(1e-8, POS)
    warmup_steps: int = _f(500, NONNEG)
    grad_clip: float = _f(1.0, NONNEG)
    zero_stage: int = _f(1, (0, 1, 2))
    precision: str = _f("fp32", ("fp32", "fp16", "bf16"))
    ema_decay: float = _f(0.0, "[0, 1)")
    ema_warmup: bool = False        # d_t = min(ema_decay, (1 + t) / (10 + t)) (collapse.diffusion.ema)
    checkpoint_every: int = _f(0, NONNEG)
    log_every: int = _f(10, ANY)


@dataclass(frozen=True)
class SampleSection:
    method: str = _f("ddim", ("ddpm", "ddim"))  # ddpm: the paper's ancestral sampler
    steps: int = _f(50, "[1, 1000]")
    guidance_scale: float = _f(1.0, NONNEG)    # != 1 only for a class-conditional model (a strategy may set its own)
    # class-conditional runs: the class each sample is asked for (collapse.classes.assign_labels):
    # [] = balanced (sample i gets class i mod K); K weights = drawn from that distribution, per sample
    class_weights: tuple[float, ...] = ()
    shard_size: int = _f(1000, ANY)
    batch_size: int = _f(64, ANY)


@dataclass(frozen=True)
class ParadigmSection:
    name: str = _f("replace", tuple(PARADIGMS))
    fresh_fraction: float = _f(0.0, "[0, 1)")  # paradigm fresh only: the share of fresh real images


@dataclass(frozen=True)
class Strategy:
    """One arm of the sweep. Unset fields take the kind's defaults: pool_factor 1 for vanilla and 2
    otherwise; features pixel for greedy/tdf; alpha 0.95 for tdf. tau0 (tdf) has no default: it is
    in feature units (the paper: 60 in DINOv2 space, 2000 in pixel space at 32x32x3)."""
    name: str
    kind: str = _f("", KINDS)       # "" = the name
    pool_factor: int | None = _f(None, ANY)   # k: sample k*N, keep N
    features: str | None = None     # selection space (greedy, tdf): pixel | classifier | effnet-lite0 | dinov2
    tau0: float | None = _f(None, POS)        # tdf only
    alpha: float | None = _f(None, "(0, 1)")  # tdf only
    # class-conditional runs: this chain's guidance scale (null: sample.guidance_scale); a scale other
    # than the run's samples its own generation-1 pool from the shared model M_1
    guidance_scale: float | None = _f(None, NONNEG)
    per_class: bool = False         # random/greedy/tdf: select within each class, keeping its share of N

    def __post_init__(self):
        kind = self.kind or self.name
        defaults = {"kind": kind, "pool_factor": 1 if kind == "vanilla" else 2,
                    "features": "pixel" if kind in DISTANCE_KINDS else None, "alpha": 0.95 if kind == "tdf" else None}
        for k, v in defaults.items():
            if getattr(self, k) is None or getattr(self, k) == "":
                object.__setattr__(self, k, v)


@dataclass(frozen=True)
class MetricsSection:
    features: tuple[str, ...] = ("pixel",)   # spaces of entropy, GS, memorization, FD, KID, PRDC
    gs_samples: int = _f(1000, ANY)  # generated samples scored per generation: the first of each pool
    prdc_k: int = _f(5, ANY)
    # the sample-quality classifier (collapse.classifier), trained once on this many labelled real
    # training images (never held-out ones; fewer when the source has fewer); 0 = none
    classifier_images: int = _f(5000, NONNEG)
    classifier_epochs: int = _f(8, ANY)


@dataclass(frozen=True)
class ExtractorsSection:
    """Where the standard weights of the pretrained feature spaces are (collapse.features). Not part of
    the config hash (EXECUTION_KEYS): changing them resumes a run; they must name the standard weights."""
    # DINOv2-small: a hub id (the local Hugging Face cache; the hub too unless HF_HUB_OFFLINE) or a
    # directory written by save_pretrained (clusters without network)
    dinov2: str = "facebook/dinov2-small"
    # the FID Inception weights file pt_inception-2015-12-05-6726825d.pth; "" = $COLLAPSE_INCEPTION_WEIGHTS
    inception: str = ""


@dataclass(frozen=True)
class ResourcesSection:             # per worker / per actor; the score and select stages use scorer_*
    train_workers: int = _f(1, ANY)  # Ray Train workers (DeepSpeed data parallel)
    train_cpus: float = _f(1.0, NONNEG)
    train_gpus: float = _f(0.0, NONNEG)
    sampler_min_actors: int = _f(1, ANY)
    sampler_max_actors: int = _f(1, ANY)
    sampler_cpus: float = _f(1.0, NONNEG)
    sampler_gpus: float = _f(0.0, NONNEG)
    featurizer_actors: int = _f(1, ANY)
    featurizer_cpus: float = _f(1.0, NONNEG)
    featurizer_gpus: float = _f(0.0, NONNEG)
    scorer_cpus: float = _f(1.0, NONNEG)
    scorer_gpus: float = _f(0.0, NONNEG)
    # the score stage's searches of D_n and the select stage's greedy / tdf: in the driver (1), or
    # split across this many actors of scorer_cpus each (cluster.score.ShardedKNN, cluster.selection:
    # exact, the same figures and picks); a D_n of more rows than scorer_shard_rows is split in any
    # case, into ceil(N / scorer_shard_rows) actors at least
    scorer_shards: int = _f(1, ANY)
    scorer_shard_rows: int = _f(200_000, ANY)
    # stages of independent chains (strategies) run side by side, each in a stage runner actor,
    # while the CPUs and GPUs they declare fit in the cluster's (collapse.schedule): at most this
    # many at once (0: as many as fit; 1: one after another in the driver process)
    max_parallel_stages: int = _f(0, NONNEG)


@dataclass(frozen=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    paradigm: ParadigmSection = field(default_factory=ParadigmSection)
    strategies: tuple[Strategy, ...] = (Strategy("vanilla"), Strategy("greedy"))
    metrics: MetricsSection = field(default_factory=MetricsSection)
    extractors: ExtractorsSection = field(default_factory=ExtractorsSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)

    def strategy(self, name: str) -> Strategy:
        for s in self.strategies:
            if s.name == name:
                return s
        raise ConfigError(f"strategies: no strategy named {name!r}; configured: {[s.name for s in self.strategies]}")


# -- reading presets and overrides (plain dicts until the end)

def list_presets(presets_dir: pathlib.Path = PRESETS_DIR) -> list[str]:
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


@functools.lru_cache(maxsize=None)
def _fields(cls) -> dict:
    """{field name: resolved type} of a section, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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
        if k not in _fields(Strategy):
            raise _unknown(f"strategies.{name}", k, _fields(Strategy))
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
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(_fields(cls))}, got {data!r}")
    fields = _fields(cls)
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
    if float in _members(hint) and (type(value) is int or isinstance(value, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _members(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def load_config(preset_or_path: str | None = None, overrides: list[str] | tuple = (), *,
                presets_dir: pathlib.Path = PRESETS_DIR) -> RunConfig:
    """A validated RunConfig: defaults < preset or YAML file (and its bases) < overrides, in order."""
    from collapse.config_checks import validate   # here, not at the top: config_checks imports this module
    data = _merge(to_dict(RunConfig()), _read_yaml(preset_or_path, presets_dir) if preset_or_path else {})
    for item in overrides:
        data = apply_override(data, item)
    cfg = _build(RunConfig, data, "")
    if not cfg.run.run_dir and isinstance(cfg.run.name, str):
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, run_dir=f"runs/{cfg.run.name}"))
    cfg = absolute_paths(cfg)
    validate(cfg)
    return cfg


def absolute_paths(cfg: RunConfig, cwd: str | None = None) -> RunConfig:
    """``run.run_dir``, ``data.source`` and the ``extractors`` paths with relative or ``~`` local
    paths made absolute (against ``cwd``, default this process's), so that no worker, whatever its
    working directory, reads another place. Done once, as the entry point loads the config; remote
    URLs and hub ids (``extractors.dinov2`` that is neither a path nor an existing directory) are unchanged."""
    from collapse.data.urls import absolute_source, absolute_url
    run, data, ex = cfg.run, cfg.data, cfg.extractors
    if isinstance(run, RunSection) and isinstance(run.run_dir, str):
        run = dataclasses.replace(run, run_dir=absolute_url(run.run_dir, cwd))
    if isinstance(data, DataSection) and isinstance(data.source, str):
        data = dataclasses.replace(data, source=absolute_source(data.source, cwd))
    if isinstance(ex, ExtractorsSection) and isinstance(ex.dinov2, str) and isinstance(ex.inception, str):
        ex = dataclasses.replace(ex, dinov2=_absolute_model_ref(ex.dinov2, cwd), inception=absolute_url(ex.inception, cwd))
    return dataclasses.replace(cfg, run=run, data=data, extractors=ex)


def _absolute_model_ref(ref: str, cwd: str | None) -> str:
    """A local directory made absolute; a hub id ("org/name", no such directory) unchanged."""
    from collapse.data.urls import absolute_url
    local = ref.startswith(("/", ".", "~")) or os.path.isdir(os.path.join(cwd or os.getcwd(), ref))
    return absolute_url(ref, cwd) if local and "://" not in ref else ref


# -- output, hash, diff

def to_dict(cfg: RunConfig) -> dict:
    """Plain dicts and lists; a number in a float field is a float (1 and 1.0 hash the same)."""
    def plain(v, hint=None):
        if dataclasses.is_dataclass(v):
            return {name: plain(getattr(v, name), h) for name, h in _fields(type(v)).items()}
        if isinstance(v, (list, tuple)):
            return [plain(x, typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None) for x in v]
        return float(v) if float in _members(hint) and type(v) is int else v
    return plain(cfg)


def to_yaml(cfg: RunConfig) -> str:
    head = f"# collapse run config (config_hash {config_hash(cfg)}); load it again with --config <this file>\n"
    return head + yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _flatten(d: dict, prefix: str = "") -> dict:
    """{"a.b": value}; a strategy stays one value, keyed by its name: ``strategies.<name>``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k == "strategies" and not prefix and isinstance(v, list):
            names = [(e.get("name") if isinstance(e, dict) else None) or f"[{i}]" for i, e in enumerate(v)]
            out.update({f"strategies.{name}": e for name, e in zip(names, v)})
        elif isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _content(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if not any(k == e or k.startswith(e + ".") for e in EXECUTION_KEYS)}


def config_hash(cfg: RunConfig | dict) -> str:
    """16 hex digits naming what the run computes (EXECUTION_KEYS left out)."""
    return _hash_json(_content(_flatten(to_dict(cfg) if isinstance(cfg, RunConfig) else cfg)))


_ABSENT = object()


def _changes(old, new) -> dict:
    """{key: (old, new)} of what differs; a strategy present on both sides is compared field by field."""
    old, new = (_content(_flatten(to_dict(c) if isinstance(c, RunConfig) else c)) for c in (old, new))
    out = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a is _ABSENT and b is not _ABSENT and b == _default_of(k):
            continue  # a field added after the old run was written, at its default: the same computation
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changes({k: a}, {k: b}) if a != b else {})
        elif a != b:
            out[k] = (a, b)
    return out


def _default_of(key: str):
    """The default of a flat key (``section.field``, or ``strategies.NAME.field`` for a field whose
    default does not depend on the kind); _ABSENT when there is none."""
    parts = key.split(".")
    if parts[0] == "strategies" and len(parts) == 3:
        f = {f.name: f for f in dataclasses.fields(Strategy)}.get(parts[2])
        return _ABSENT if f is None or parts[2] in ("name", "kind", "pool_factor", "features", "alpha") else f.default
    return _flatten(to_dict(RunConfig())).get(key, _ABSENT) if parts[0] != "strategies" else _ABSENT


def diff(old: RunConfig | dict, new: RunConfig | dict) -> list[str]:
    """``"key: old -> new"`` for every difference in what the runs compute, sorted by key."""
    show = lambda v: "(absent)" if v is _ABSENT else json.dumps(v)   # noqa: E731
    return [f"{k}: {show(a)} -> {show(b)}" for k, (a, b) in _changes(old, new).items()]


def extendable(old: RunConfig | dict, new: RunConfig | dict) -> bool:
    """True when ``new`` only runs more generations than ``old``."""
    changes = _changes(old, new)
    if list(changes) != ["run.generations"]:
        return False
    a, b = changes["run.generations"]
    return isinstance(a, int) and isinstance(b, int) and b > a


def __getattr__(name: str):
    """``from collapse.config import validate`` keeps working; imported on first use (no import cycle)."""
    if name == "validate":
        from collapse.config_checks import validate
        return validate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
