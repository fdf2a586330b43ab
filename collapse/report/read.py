"""Read what a run directory holds so far (docs/ARCHITECTURE.md, "Run layout"); nothing else is consulted.

A run that is still going is read as it stands: a generation counts once its ``metrics.json``
exists, a sample set once its manifest exists, a stage once its record exists. Every read goes
through :mod:`collapse.data.storage`, so a run on ``s3://`` reads like a local one.

Metric rows have the shape of ``<run>/metrics.jsonl`` (cluster/loop.py): one per strategy and
generation, generation 1 (owned by ``shared``) repeated per strategy with ``"shared": True``. A
strategy of a class-conditional run that samples at a guidance scale other than the run's owns its
generation-1 pool and figures (``<run>/<strategy>/gen-001/``, no train set or model there: D_1 and
M_1 stay the shared ones); it gets that row (``"shared": False``) instead of the shared one. Rows
are rebuilt from the per-generation ``metrics.json`` files, which exist before the log is written
at the end of a run; the log is the fallback when no per-generation file is found.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import yaml

from collapse import config
from collapse.data import manifest
from collapse.data import storage
from collapse.data.samples import SampleSet
from collapse.data.urls import RunLayout
from collapse.errors import DataError, NotFinishedError
from collapse.plan import SHARED, STAGES

GEN_RE = re.compile(r"^gen-(\d{3})$")
NOT_STRATEGIES = {"real", "report", "stages", SHARED}


@dataclass(frozen=True)
class Generation:
    """What exists of one owner's generation: its sets (None until committed), model and selection manifests."""
    owner: str                       # a strategy name, or SHARED for generation 1
    generation: int
    train: SampleSet | None
    pool: SampleSet | None
    model: dict | None
    selection: dict | None
    has_metrics: bool


@dataclass
class Run:
    """One run directory as read now. ``rows``: metric rows (see the module docstring), by generation."""
    root: str
    label: str
    storage_options: dict | None
    config: dict | None = None
    config_yaml: str = ""
    config_hash: str = ""
    strategies: list[str] = field(default_factory=list)
    planned_generations: int | None = None
    rows: list[dict] = field(default_factory=list)
    stages: dict[str, float | None] = field(default_factory=dict)   # stage key -> wall seconds
    generations: list[Generation] = field(default_factory=list)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)


def normalise_root(url: str) -> str:
    """A bare local path becomes absolute (links to it must not depend on the working directory)."""
    url = url.rstrip("/")
    return url if "://" in url else os.path.abspath(url)


def read_run(root: str, storage_options: dict | None = None, label: str | None = None) -> Run:
    """Everything the report shows of the run at ``root``, read from storage."""
    root = normalise_root(root)
    so = storage_options if storage_options is not None else storage.storage_options_for(root)
    run = Run(root, label or root.rsplit("/", 1)[-1], so)
    if not storage.exists(root, so):
        raise DataError(f"run directory {root!r} does not exist")
    _read_config(run)
    run.strategies = _strategies(run)
    run.generations = [g for owner in [SHARED, *run.strategies] for g in _generations(run, owner)]
    run.rows = _metric_rows(run)
    run.stages = read_stage_times(root, so, run.strategies)
    if run.config is None and not run.generations and not run.rows and not run.stages:
        raise DataError(f"{root!r} holds no run: no config.yaml, no stage records, no generations; expected a "
                        "run directory written by collapse run (its --run-dir)")
    return run


def _read_config(run: Run) -> None:
    """The resolved config (``config.yaml.json``) and its text (``config.yaml``), when written yet."""
    L, so = run.layout, run.storage_options
    try:
        run.config = json.loads(storage.read_bytes(L.config + ".json", so))
    except FileNotFoundError:
        return
    try:
        run.config_yaml = storage.read_bytes(L.config, so).decode()
    except FileNotFoundError:
        run.config_yaml = yaml.safe_dump(run.config, sort_keys=False)
    run.config_hash = config.config_hash(run.config)
    run.planned_generations = (run.config.get("run") or {}).get("generations")


def _strategies(run: Run) -> list[str]:
    """The config's strategies in its order; without a config, the strategy-like directories."""
    if run.config and run.config.get("strategies"):
        return [s["name"] for s in run.config["strategies"]]
    names = storage.list_names(run.root, run.storage_options)
    return [n for n in names if "." not in n and n not in NOT_STRATEGIES]


def _try_set(url: str, so) -> SampleSet | None:
    try:
        return SampleSet(url, so)
    except NotFinishedError:
        return None


def _generations(run: Run, owner: str) -> list[Generation]:
    L, so, out = run.layout, run.storage_options, []
    for name in storage.list_names(storage.join(run.root, owner), so):
        m = GEN_RE.match(name)
        if not m:
            continue
        n = int(m.group(1))
        out.append(Generation(owner, n, _try_set(L.train_set(owner, n), so), _try_set(L.pool(owner, n), so),
                              manifest.try_read_manifest(L.model(owner, n), so),
                              manifest.try_read_manifest(L.selection(owner, n), so),
                              storage.exists(L.metrics(owner, n), so)))
    return out


def _metric_rows(run: Run) -> list[dict]:
    """One row per strategy and scored generation: a shared generation's row for every strategy that
    has no figures of its own for that generation (module docstring)."""
    own = {(g.owner, g.generation) for g in run.generations if g.owner != SHARED and g.has_metrics}
    rows = []
    for g in run.generations:
        if not g.has_metrics:
            continue
        m = json.loads(storage.read_bytes(run.layout.metrics(g.owner, g.generation), run.storage_options))
        names = [s for s in run.strategies if (s, g.generation) not in own] if g.owner == SHARED else [g.owner]
        rows += [{**m, "strategy": s, "shared": g.owner == SHARED} for s in names]
    if not rows:
        try:
            text = storage.read_bytes(run.layout.metrics_log, run.storage_options).decode()
        except FileNotFoundError:
            return []
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return sorted(rows, key=lambda r: (r["generation"], _order(run.strategies, r["strategy"])))


def train_set_of(run: Run, g: Generation) -> SampleSet | None:
    """D_n of generation ``g``: its own, else (a strategy's own generation 1, which holds only its pool
    and figures) the shared one of that generation, on which the pool's model was trained."""
    if g.train is not None or g.owner == SHARED:
        return g.train
    return next((s.train for s in run.generations if s.owner == SHARED and s.generation == g.generation), None)


def _order(names: list[str], name: str) -> int:
    return names.index(name) if name in names else len(names)


def read_stage_times(root: str, storage_options: dict | None = None,
                     strategies: list[str] = ()) -> dict[str, float | None]:
    """``{stage key: wall seconds}`` of every finished stage (its record ``<run>/stages/<key>/manifest.json``),
    in run order (see :func:`stage_sort_key`)."""
    url = storage.join(root, "stages")
    fs, path = storage.open_fs(url, storage_options)
    try:
        found = storage.storage_call(url, "cannot list", fs.find, path)
    except FileNotFoundError:
        return {}
    records = [p for p in found if p.endswith("/" + manifest.MANIFEST_NAME)]
    blobs = storage.storage_call(url, "cannot read", fs.cat, records) if records else {}
    out = {}
    for p in records:
        key = p[len(path.rstrip("/")) + 1:-len(manifest.MANIFEST_NAME) - 1]
        try:
            out[key] = json.loads(blobs[p]).get("wall_s")
        except (ValueError, AttributeError):
            out[key] = None
    return dict(sorted(out.items(), key=lambda kv: stage_sort_key(kv[0], list(strategies))))


def stage_sort_key(key: str, strategies: list[str] = ()) -> tuple:
    """Run-level stages first, then by generation, owner (shared, then the strategies' order) and the
    stage order of collapse.plan."""
    parts = key.split("/")
    if len(parts) != 3:
        return (0, 0, -1, key, STAGES.index(key) if key in STAGES else len(STAGES))
    owner, gen, name = parts
    m = GEN_RE.match(gen)
    rank = -1 if owner == SHARED else _order(list(strategies), owner)
    return (1, int(m.group(1)) if m else 0, rank, owner, STAGES.index(name) if name in STAGES else len(STAGES))
