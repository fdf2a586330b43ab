"""The schema of a run's config: frozen sections with defaults and allowed values, and what is
computed from a config alone (plain dicts, YAML, hash, diff).

Three modules, imported one way only (``config`` <- ``config_checks`` <- ``config_load``):

- :mod:`collapse.config` (this one): the sections (:class:`RunConfig` and its parts), their allowed
  values (field metadata), ``to_dict``, ``to_yaml``, ``config_hash``, ``diff``, ``extendable``, and
  the pure helpers over the sections ``section_fields`` and ``hint_members``;
- :mod:`collapse.config_checks`: ``validate`` refuses a bad config, naming the key and the allowed
  values;
- :mod:`collapse.config_load`: reading a preset or YAML file, the ``KEY=VALUE`` overrides,
  ``load_config(ref, overrides, presets_dir=...)`` (the caller says where the presets are: the
  ``collapse`` command's are ``jobs/presets/*.yaml``, through :mod:`jobs.presets`).

``config_hash`` and ``diff`` cover what a run computes, not where or on what it runs: they leave
out ``EXECUTION_KEYS`` (the run's name and directory, ``resources``: the seeding scheme makes
results independent of the number of workers; and ``extractors``: where the standard weights of
the pretrained feature spaces are, which moves with the cluster, like an endpoint URL, while what
``dinov2`` or ``inception`` computes is fixed by its name, collapse.features; and ``trackers``: where
copies of the figures are sent, cluster.trackers).
``extendable(old, new)``: only run.generations grew.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field

import yaml

from collapse.data.manifest import config_hash as _hash_json
from collapse.errors import ConfigError
from collapse.paradigms import KINDS, PARADIGMS

EXECUTION_KEYS = ("run.name", "run.run_dir", "resources", "extractors", "trackers")
RESERVED_NAMES = ("real", "report", "shared")       # directories of the run layout beside the strategies
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SOURCES = ("fashion-mnist", "digits", "folder:PATH", "npy:PATH", "wds:URL",   # collapse.data.importers
           "cifar10:PATH", "parquet:PATH",
           "scheme://URL of a sample set")                                   # e.g. from collapse ingest
DISTANCE_KINDS = ("greedy", "tdf")                  # kinds that select by distances in a feature space


def _f(default, allowed=None):
    """A field with its default and allowed values: an interval such as "[1, inf)", or a tuple of choices."""
    return field(default=default, metadata={"allowed": allowed} if allowed else {})


AT_LEAST_1, POSITIVE, NON_NEGATIVE = "[1, inf)", "(0, inf)", "[0, inf)"


@dataclass(frozen=True)
class RunSection:
    name: str = "run"
    seed: int = _f(0, NON_NEGATIVE)
    generations: int = _f(4, AT_LEAST_1)   # models M_1..M_G; generation 1 trains on real data only
    run_dir: str = ""               # any fsspec URL; "" = runs/<name>
    # 0: every chain runs to generation G. r > 0: a strategy's chain ends before training M_{n+1} when
    # the GS forecast from H(D_{n+1}) (collapse.forecast) is below r x rho in the run's first metrics
    # space; 1 is the memorization regime the report names. Each select stage then waits for every
    # strategy's score of its generation, so that the forecast, and the decision, do not depend on
    # the schedule.
    stop_chain_below_rho: float = _f(0.0, NON_NEGATIVE)


@dataclass(frozen=True)
class DataSection:
    source: str = "fashion-mnist"   # one of SOURCES
    size: int = _f(16, AT_LEAST_1)         # images are size x size: the model preset's sample size
    mode: str = _f("grey", ("grey", "rgb"))   # the preset's 1 or 3 channels
    n: int = _f(1000, AT_LEAST_1)          # N, the size of every training set (D_1 = N real images)
    holdout: int = _f(1000, NON_NEGATIVE)  # held-out real images for FD, KID, precision/recall/density/coverage


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"            # a name of collapse.diffusion.UNET_PRESETS
    num_classes: int = _f(0, NON_NEGATIVE)  # 0: unconditional; K >= 2: class-conditional on the source's labels 0..K-1
    # classifier-free guidance training (Ho & Salimans 2022): each label is replaced by the null class
    # with this probability, so one network learns the conditional and the unconditional model
    p_uncond: float = _f(0.1, "[0, 1)")


@dataclass(frozen=True)
class TrainSection:                 # cluster.train.TrainSpec, less preset (model.preset) and seed (run.seed)
    steps: int = _f(100, AT_LEAST_1)
    batch_size: int = _f(64, AT_LEAST_1)   # global batch
    lr: float = _f(1e-4, POSITIVE)
    betas: tuple[float, ...] = (0.95, 0.999)
    weight_decay: float = _f(1e-6, NON_NEGATIVE)
    eps: float = _f(1e-8, POSITIVE)
    warmup_steps: int = _f(500, NON_NEGATIVE)
    grad_clip: float = _f(1.0, NON_NEGATIVE)
    zero_stage: int = _f(1, (0, 1, 2))
    precision: str = _f("fp32", ("fp32", "fp16", "bf16"))
    ema_decay: float = _f(0.0, "[0, 1)")
    ema_warmup: bool = False        # d_t = min(ema_decay, (1 + t) / (10 + t)) (collapse.diffusion.ema)
    checkpoint_every: int = _f(0, NON_NEGATIVE)
    log_every: int = _f(10, AT_LEAST_1)


@dataclass(frozen=True)
class SampleSection:
    method: str = _f("ddim", ("ddpm", "ddim"))  # ddpm: the paper's ancestral sampler
    steps: int = _f(50, "[1, 1000]")
    guidance_scale: float = _f(1.0, NON_NEGATIVE)    # != 1 only for a class-conditional model (a strategy may set its own)
    # class-conditional runs: the class each sample is asked for (collapse.classes.assign_labels):
    # [] = balanced (sample i gets class i mod K); K weights = drawn from that distribution, per sample
    class_weights: tuple[float, ...] = ()
    shard_size: int = _f(1000, AT_LEAST_1)
    batch_size: int = _f(64, AT_LEAST_1)


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
    pool_factor: int | None = _f(None, AT_LEAST_1)   # k: sample k*N, keep N
    features: str | None = None     # selection space (greedy, tdf): pixel | classifier | effnet-lite0 | dinov2
    tau0: float | None = _f(None, POSITIVE)        # tdf only
    alpha: float | None = _f(None, "(0, 1)")  # tdf only
    # class-conditional runs: this chain's guidance scale (null: sample.guidance_scale); a scale other
    # than the run's samples its own generation-1 pool from the shared model M_1
    guidance_scale: float | None = _f(None, NON_NEGATIVE)
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
    gs_samples: int = _f(1000, AT_LEAST_1)  # generated samples scored per generation: the first of each pool
    prdc_k: int = _f(5, AT_LEAST_1)
    # the sample-quality classifier (collapse.classifier), trained once on this many labelled real
    # training images (never held-out ones; fewer when the source has fewer); 0 = none
    classifier_images: int = _f(5000, NON_NEGATIVE)
    classifier_epochs: int = _f(8, AT_LEAST_1)


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
class TrackersSection:
    """Experiment trackers that get a copy of each generation's figures and each training's final loss
    and steps/s, the generation as the step, one tracker run per strategy (cluster.trackers). All off by
    default; not part of the config hash (EXECUTION_KEYS): turning one on resumes a run. A tracker that
    cannot write warns once and is off for the rest of the run; no result depends on one."""
    tensorboard: bool = False       # TensorBoard event files, <run>/tensorboard/<strategy>/
    # MLflow (an experiment named run.name): "" = off; "local" = a file store <run>/mlruns (a local
    # run.run_dir); else a tracking URI (http://host:5000, sqlite:///path/mlflow.db, file:/path, a path)
    mlflow: str = ""
    wandb: bool = False             # W&B offline runs, <run>/wandb/ (the wandb package; `wandb sync` uploads them)


@dataclass(frozen=True)
class ResourcesSection:             # per worker / per actor; the score and select stages use scorer_*
    train_workers: int = _f(1, AT_LEAST_1)  # Ray Train workers (DeepSpeed data parallel)
    train_cpus: float = _f(1.0, NON_NEGATIVE)
    train_gpus: float = _f(0.0, NON_NEGATIVE)
    sampler_min_actors: int = _f(1, AT_LEAST_1)
    sampler_max_actors: int = _f(1, AT_LEAST_1)
    sampler_cpus: float = _f(1.0, NON_NEGATIVE)
    sampler_gpus: float = _f(0.0, NON_NEGATIVE)
    featurizer_actors: int = _f(1, AT_LEAST_1)
    featurizer_cpus: float = _f(1.0, NON_NEGATIVE)
    featurizer_gpus: float = _f(0.0, NON_NEGATIVE)
    scorer_cpus: float = _f(1.0, NON_NEGATIVE)
    scorer_gpus: float = _f(0.0, NON_NEGATIVE)
    # the score stage's searches of D_n and the select stage's greedy / tdf: in the driver (1), or
    # split across this many actors of scorer_cpus each (cluster.score.ShardedKNN, cluster.selection:
    # exact, the same figures and picks); a D_n of more rows than scorer_shard_rows is split in any
    # case, into ceil(N / scorer_shard_rows) actors at least
    scorer_shards: int = _f(1, AT_LEAST_1)
    scorer_shard_rows: int = _f(200_000, AT_LEAST_1)
    # stages of independent chains (strategies) run side by side, each in a stage runner actor,
    # while the CPUs and GPUs they declare fit in the cluster's (collapse.schedule): at most this
    # many at once (0: as many as fit; 1: one after another in the driver process)
    max_parallel_stages: int = _f(0, NON_NEGATIVE)


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
    trackers: TrackersSection = field(default_factory=TrackersSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)

    def strategy(self, name: str) -> Strategy:
        for s in self.strategies:
            if s.name == name:
                return s
        raise ConfigError(f"strategies: no strategy named {name!r}; configured: {[s.name for s in self.strategies]}")


# -- pure helpers over the sections (collapse.config_checks and collapse.config_load use them too)

@functools.lru_cache(maxsize=None)
def section_fields(cls) -> dict:
    """{field name: resolved type} of a section (or of RunConfig, or Strategy), in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def hint_members(hint) -> tuple:
    """The types a field's type hint allows: ``int | None`` -> (int, NoneType); ``float`` -> (float,)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


# -- output, hash, diff

def to_dict(cfg: RunConfig) -> dict:
    """Plain dicts and lists; a number in a float field is a float (1 and 1.0 hash the same)."""
    def plain(v, hint=None):
        if dataclasses.is_dataclass(v):
            return {name: plain(getattr(v, name), h) for name, h in section_fields(type(v)).items()}
        if isinstance(v, (list, tuple)):
            return [plain(x, typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None) for x in v]
        return float(v) if float in hint_members(hint) and type(v) is int else v
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

