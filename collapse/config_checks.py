"""Validation of a RunConfig: ``validate(cfg)`` returns cfg or raises a ConfigError.

``validate`` refuses, naming the key and the allowed values: unknown keys, wrong types, values out
of range, a data size or mode that does not fit the model preset, fp16 without GPUs, and
choices that would silently mean something else: random/greedy/tdf with pool_factor 1 under
replace or accumulate-grow (the whole pool is kept: that is vanilla), fresh_fraction outside
paradigm fresh, features/tau0/alpha on kinds that do not use them, a tdf without tau0, an MLflow
target that is neither a URI nor a path, or a local MLflow store beside a remote run directory.

``check_run_extractors(cfg)`` (the run's first step, and ``collapse run --dry-run`` through
``run_extractor_report``) goes further than the form of the config: it looks for the weights of
every feature extractor the run uses, where the driver runs (collapse.features' probes).

The config types and their allowed values (field metadata) live in :mod:`collapse.config`, which
this module imports (never the other way); :mod:`collapse.config_load` validates every config it
loads with ``validate``.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing

from collapse.config import (
    DISTANCE_KINDS, NAME_RE, RESERVED_NAMES, SOURCES, RunConfig, Strategy, hint_members, section_fields,
)
from collapse import paradigms
from collapse.data.storage import SUPPORTED_SCHEMES, scheme_of
from collapse.errors import ConfigError
from collapse.paradigms import KINDS, SELECTING

_CHANNELS = {"grey": 1, "rgb": 3}


@functools.lru_cache(maxsize=None)
def _registries() -> tuple[dict, tuple]:
    """({UNet preset: (sample_size, channels)}, feature extractor names); imported on first use (torch)."""
    from collapse.diffusion.presets import UNET_PRESETS
    from collapse.features import EXTRACTORS
    return {k: (p.sample_size, p.channels) for k, p in UNET_PRESETS.items()}, tuple(sorted(EXTRACTORS))


def _need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(key: str, value, allowed) -> None:
    _need(value in allowed, key, f"{value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _in_range(key: str, value, interval: str) -> None:
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    ok = (lo < value if interval[0] == "(" else lo <= value) and (value < hi if interval[-1] == ")" else value <= hi)
    _need(ok, key, f"{value!r} is out of range; allowed: {interval}")


def _type_name(hint) -> str:
    names = {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    return " or ".join(names.get(h, getattr(h, "__name__", str(h))) for h in hint_members(hint))


def _is(value, hint) -> bool:
    for h in hint_members(hint):
        if typing.get_origin(h) is tuple:
            ok = isinstance(value, tuple) and all(_is(v, typing.get_args(h)[0]) for v in value)
        elif h in (int, float):
            ok = isinstance(value, (int, float) if h is float else int) and not isinstance(value, bool)
        else:
            ok = value is None if h is type(None) else isinstance(value, h)
        if ok:
            return True
    return False


def _check_section(obj, path: str) -> None:
    """The type, then the allowed values (field metadata) of every field of one section."""
    for f, hint in zip(dataclasses.fields(obj), section_fields(type(obj)).values()):
        key, value, allowed = f"{path}.{f.name}", getattr(obj, f.name), f.metadata.get("allowed")
        _need(_is(value, hint), key, f"expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
        if isinstance(allowed, tuple):
            _one_of(key, value, allowed)
        elif allowed and value is not None:
            _in_range(key, value, allowed)


def validate(cfg: RunConfig) -> RunConfig:
    """Raise a ConfigError naming the first bad key, what it holds and the allowed values; else return cfg."""
    _need(isinstance(cfg, RunConfig), "config", f"expected a RunConfig, got {type(cfg).__name__}")
    for name in section_fields(RunConfig):
        if name != "strategies":
            section = getattr(cfg, name)
            _need(isinstance(section, section_fields(RunConfig)[name]), name, f"expected a mapping, got {section!r}")
            _check_section(section, name)
    presets, extractors = _registries()
    r, d, m, t, p, mt = cfg.run, cfg.data, cfg.model, cfg.train, cfg.paradigm, cfg.metrics
    _need(bool(NAME_RE.match(r.name)), "run.name", f"{r.name!r}: allowed: lower-case letters, digits, '_', '-'")
    _need(isinstance(r.run_dir, str) and scheme_of(r.run_dir) in SUPPORTED_SCHEMES, "run.run_dir",
          f"{r.run_dir!r} has an unsupported URL scheme; allowed: a local path or "
          f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)}")
    _need(_source_ok(d.source), "data.source", f"{d.source!r} is not a source; allowed: {', '.join(SOURCES)}")
    _one_of("model.preset", m.preset, sorted(presets))
    size, channels = presets[m.preset]
    _need(d.size == size, "data.size", f"{d.size} does not fit model.preset {m.preset!r}; allowed: {size}")
    _need(_CHANNELS[d.mode] == channels, "data.mode", f"{d.mode!r} does not fit model.preset {m.preset!r} "
          f"({channels} channel(s)); allowed: {'grey' if channels == 1 else 'rgb'}")
    _need(m.num_classes != 1, "model.num_classes", "1 is not allowed; allowed: 0 (unconditional) or >= 2")
    _check_classes(cfg)
    _need(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", f"{list(t.betas)}: allowed: "
          "two numbers in [0, 1), e.g. [0.95, 0.999]")
    _need(t.precision != "fp16" or cfg.resources.train_gpus > 0, "train.precision",
          "'fp16' needs GPUs (resources.train_gpus > 0: autocast with loss scaling); allowed on CPU: 'bf16', 'fp32'")
    if p.name == "fresh":
        _need(1 <= round(p.fresh_fraction * d.n) <= d.n - 1, "paradigm.fresh_fraction", f"{p.fresh_fraction} "
              f"gives {round(p.fresh_fraction * d.n)} fresh images of data.n={d.n}; allowed: 1 to N - 1 of them")
    else:
        _need(p.fresh_fraction == 0, "paradigm.fresh_fraction", f"{p.fresh_fraction}: only paradigm 'fresh' "
              f"mixes fresh real images; allowed under {p.name!r}: 0")
    _check_strategies(cfg.strategies, p.name, extractors)
    _need(len(mt.features) >= 1 and len(set(mt.features)) == len(mt.features), "metrics.features",
          f"{list(mt.features)}: allowed: a non-empty list of distinct names of {', '.join(extractors)}")
    for f in mt.features:
        _one_of("metrics.features", f, extractors)
    uses = [("metrics.features", f) for f in mt.features] + [
        (f"strategies.{st.name}.features", st.features) for st in cfg.strategies]
    for key, f in uses:
        _need(f != "classifier" or mt.classifier_images > 0, key, "'classifier' is the space of the run's "
              "sample-quality classifier, and metrics.classifier_images = 0 trains none; allowed: "
              "metrics.classifier_images > 0, or another space")
    _need(d.holdout > max(1, mt.prdc_k), "data.holdout", f"{d.holdout} held-out images cannot give FD and "
          f"PRDC with k={mt.prdc_k}; allowed: >= {max(1, mt.prdc_k) + 1}")
    res = cfg.resources
    _need(res.sampler_min_actors <= res.sampler_max_actors, "resources.sampler_max_actors",
          f"{res.sampler_max_actors} < sampler_min_actors={res.sampler_min_actors}; allowed: >= the minimum")
    _need(t.batch_size % res.train_workers == 0, "train.batch_size", f"{t.batch_size} does not divide by "
          f"resources.train_workers={res.train_workers}; allowed: a multiple of it")
    _check_source_size(d.source, paradigms.real_needed(p.name, d.n, r.generations, p.fresh_fraction), d.holdout)
    _check_extractor_paths(cfg.extractors)
    _check_trackers(cfg.trackers, r.run_dir)
    return cfg


TRACKING_URI = re.compile(r"^[a-z][a-z0-9+.-]*:")   # file:/x, sqlite:///x, http://h:5000, databricks://profile


def _check_trackers(tr, run_dir: str) -> None:
    """trackers.mlflow: off, "local" beside a local run directory, or a tracking URI or path. A typo such
    as 'locl' is refused rather than taken for a relative path."""
    uri = tr.mlflow
    _need(uri in ("", "local") or bool(TRACKING_URI.match(uri)) or uri.startswith(("/", "./", "../", "~")),
          "trackers.mlflow", f"{uri!r}: allowed: '' (off), 'local' (<run>/mlruns), a tracking URI "
          "(http://host:5000, sqlite:///path/mlflow.db, file:/path) or a path starting with /, ./ or ~")
    _need(uri != "local" or scheme_of(run_dir or ".") in ("file", "local"), "trackers.mlflow",
          f"'local' is a file store under run.run_dir, and {run_dir!r} is not on a local disk; allowed: "
          "a tracking URI (http://host:5000, sqlite:///path/mlflow.db) or a local path")


def _check_extractor_paths(ex) -> None:
    """Only their form: whether the weights are there is :func:`run_extractor_problems`'s question."""
    _need(bool(ex.dinov2.strip()) and "://" not in ex.dinov2, "extractors.dinov2", f"{ex.dinov2!r}: allowed: a "
          "hub id (e.g. facebook/dinov2-small, from the local Hugging Face cache) or a local directory")
    _need("://" not in ex.inception, "extractors.inception", f"{ex.inception!r}: allowed: a local file path, or '' "
          "($COLLAPSE_INCEPTION_WEIGHTS)")


def run_extractors(cfg: RunConfig) -> list[str]:
    """The feature extractors a run uses, in order: metrics.features, then the strategies'."""
    names = list(cfg.metrics.features) + [st.features for st in cfg.strategies if st.features]
    return list(dict.fromkeys(names))


def run_extractor_options(cfg: RunConfig) -> dict[str, dict]:
    """{extractor: options} saying where the run's standard weights are (config section extractors)."""
    from collapse.features import configured_options
    return configured_options(cfg.extractors.dinov2, cfg.extractors.inception)


def run_extractor_report(cfg: RunConfig) -> list[tuple[str, bool, str]]:
    """(name, ok, what was found or the problem) of every extractor of the run (collapse.features probes)."""
    from collapse.features import extractor_report
    return extractor_report(run_extractors(cfg), run_extractor_options(cfg))


def run_extractor_problems(cfg: RunConfig) -> list[str]:
    """The problems of the run's extractors, each naming the extractor, what is missing and the fix; [] if none."""
    from collapse.features import check_extractors
    return check_extractors(run_extractors(cfg), run_extractor_options(cfg))


def check_run_extractors(cfg: RunConfig) -> None:
    """Raise a ConfigError (one line) when an extractor of the run cannot be built here."""
    problems = run_extractor_problems(cfg)
    _need(not problems, "extractors", "; ".join(problems))


def _check_classes(cfg: RunConfig) -> None:
    """Labels, guidance and per-class selection: only in a class-conditional run, and consistent."""
    m, s, K = cfg.model, cfg.sample, cfg.model.num_classes
    scales = [("sample.guidance_scale", s.guidance_scale)] + [
        (f"strategies.{st.name}.guidance_scale", st.guidance_scale) for st in cfg.strategies
        if st.guidance_scale is not None]
    for key, scale in scales:
        _need(scale == 1.0 or K >= 2, key, f"{scale} needs a class-conditional model (model.num_classes >= 2); "
              "allowed: 1.0")
        _need(scale == 1.0 or m.p_uncond > 0, key, f"{scale} guides with an unconditional model that "
              "model.p_uncond = 0 never trains; allowed: 1.0, or model.p_uncond > 0 (e.g. 0.1)")
    if s.class_weights:
        _need(K >= 2 and len(s.class_weights) == K and all(w >= 0 for w in s.class_weights)
              and sum(s.class_weights) > 0, "sample.class_weights",
              f"{list(s.class_weights)}: allowed: [] (balanced), or model.num_classes = {K} weights >= 0 with a "
              "positive sum" + ("" if K >= 2 else " (needs a class-conditional model)"))
    for st in cfg.strategies:
        if st.per_class:
            _need(K >= 2, f"strategies.{st.name}.per_class", "true needs a class-conditional model "
                  "(model.num_classes >= 2); allowed: false")
            _need(st.kind in SELECTING, f"strategies.{st.name}.per_class", f"true: kind {st.kind} selects "
                  f"nothing; allowed: false, or kind {' / '.join(SELECTING)}")
    named = cfg.data.source.partition(":")[0] if cfg.data.source.startswith("cifar10:") else cfg.data.source
    if named in ("digits", "fashion-mnist", "cifar10"):
        _need(K in (0, 10), "model.num_classes", f"{K}: {named} has 10 classes; allowed: 0 or 10")


def _check_source_size(source: str, real_n: int, holdout: int) -> None:
    """data.n (all real training images the paradigm needs) and data.holdout against a source whose
    size is known without reading it (collapse.data.importers.KNOWN_SIZES)."""
    from collapse.data.importers import KNOWN_SIZES
    source = source if source in KNOWN_SIZES else source.partition(":")[0]   # cifar10:PATH -> cifar10
    if source not in KNOWN_SIZES:
        return
    train, test = KNOWN_SIZES[source]
    if test is not None:   # the held-out images come from the source's own test split
        _need(real_n <= train, "data.n", f"{real_n} real training images are needed but {source!r} has "
              f"{train}; allowed: at most {train}")
        _need(holdout <= test, "data.holdout", f"{holdout} is more than the {test} test images of {source!r}; "
              f"allowed: at most {test}")
    else:                  # the held-out images are split off the same images
        _need(real_n + holdout <= train, "data.n", f"{real_n} training + {holdout} held-out images are more "
              f"than the {train} images of {source!r}; allowed: data.n + data.holdout <= {train}")


def _source_ok(source: str) -> bool:
    kind, sep, arg = source.partition(":")
    url = re.match(r"^[a-z][a-z0-9+.-]*://.", source) is not None
    kinds = ("folder", "npy", "wds", "cifar10", "parquet")
    return source in ("fashion-mnist", "digits") or url or (kind in kinds and bool(sep and arg))


def _check_strategies(strategies: tuple, paradigm: str, extractors: tuple) -> None:
    _need(isinstance(strategies, tuple) and len(strategies) >= 1, "strategies",
          f"expected a non-empty list of strategies (kinds: {', '.join(KINDS)})")
    seen = set()
    for i, st in enumerate(strategies):
        _need(isinstance(st, Strategy), f"strategies[{i}]", f"expected a Strategy, got {st!r}")
        ok_name = isinstance(st.name, str) and bool(NAME_RE.match(st.name)) and st.name not in RESERVED_NAMES
        _need(ok_name, f"strategies[{i}].name", f"{st.name!r}: allowed: lower-case letters, digits, '_' and '-', "
              f"starting with a letter or digit, not {', '.join(RESERVED_NAMES)}")
        key = f"strategies.{st.name}"
        _need(st.name not in seen, f"{key}.name", "two strategies have this name; allowed: distinct names")
        seen.add(st.name)
        _check_section(st, key)
        _check_strategy(st, key, paradigm, extractors)


def _check_strategy(st: Strategy, key: str, paradigm: str, extractors: tuple) -> None:
    if st.kind == "vanilla":
        _need(st.pool_factor == 1, f"{key}.pool_factor", f"{st.pool_factor}: vanilla keeps its N samples; allowed: 1")
    if st.kind == "vanilla-pool":
        _need(st.pool_factor >= 2, f"{key}.pool_factor", f"{st.pool_factor}: vanilla-pool with 1 is vanilla; "
              "allowed: >= 2")
    if st.kind in SELECTING and paradigm in ("replace", "accumulate-grow"):
        _need(st.pool_factor >= 2, f"{key}.pool_factor", f"1 under paradigm {paradigm!r} keeps the whole pool, "
              f"so {st.kind} would equal vanilla; allowed: >= 2")
    if st.kind in DISTANCE_KINDS:
        _one_of(f"{key}.features", st.features, extractors)
    else:
        _need(st.features is None, f"{key}.features", f"{st.features!r}: kind {st.kind} uses no features; "
              "allowed: null")
    for name in ("tau0", "alpha"):
        value = getattr(st, name)
        if st.kind == "tdf":
            _need(value is not None, f"{key}.{name}", f"kind tdf needs {name}; allowed: tau0 > 0 in feature units "
                  "(the paper: 60 in dinov2 space, 2000 in pixel space at 32x32x3), alpha in (0, 1)")
        else:
            _need(value is None, f"{key}.{name}", f"{value!r}: only kind tdf takes {name}; allowed: null")
