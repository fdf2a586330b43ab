"""What every stage reads: the run's config and plan, its layout, its storage options, where its
progress lines go, and the reads and writes that several stages share (featurize a set, write a
subset, look up labels). The driver (cluster.loop) and the stage runner actors (cluster.runner)
each hold one; only the driver's holds the lease.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cluster.featurize import featurize
from cluster.materialize import IN_PROCESS_SHARDS, write_subset_tasks
from collapse.classes import check_labels
from collapse.config import RunConfig
from collapse.config_checks import run_extractor_options
from collapse.data import manifest
from collapse.data import storage
from collapse.data.samples import annotated, write_subset
from collapse.data.urls import RunLayout
from collapse.errors import DataError
from collapse.plan import Plan, Stage, plan


FROM_THE_ENVIRONMENT = "from the environment"


@dataclass
class StageContext:
    cfg: RunConfig
    say: Callable[[str], None] = print
    lease: object = None                   # collapse.data.lease.Lease of the driver (None in a runner)
    # of the run directory's URL (None: none); a runner actor gets the driver's, its environment is not the driver's
    storage_options: dict | None | str = FROM_THE_ENVIRONMENT
    # a damaged input is rebuilt where the stage found it (True), or its DamagedError raised to the driver,
    # which rebuilds it once for every stage beside it that reads it (a runner: cluster.loop.run_side_by_side)
    rebuilds: bool = True
    plan: Plan = field(init=False)
    layout: RunLayout = field(init=False)

    def __post_init__(self):
        self.plan = plan(self.cfg)
        self.layout = RunLayout(self.plan.root)
        if self.storage_options == FROM_THE_ENVIRONMENT:
            self.storage_options = storage.storage_options_for(self.layout.root)

    # -- the stage records (``<run>/stages/<key>/manifest.json``)
    def guard(self) -> None:
        """A driver that lost its lease writes nothing more (collapse.data.lease)."""
        if self.lease is not None:
            self.lease.confirm()

    def commit(self, stage: Stage, wall: float, started: float) -> None:
        """The stage record, written last: its hash, wall seconds, and when it started and ended (UTC)."""
        self.guard()
        manifest.write_manifest(self.layout.stage_record(stage.key), {
            "kind": "stage", "key": stage.key, "config_hash": stage.config_hash, "wall_s": wall,
            "started_at": started, "ended_at": time.time()}, self.storage_options)

    def record(self, stage: Stage) -> dict | None:
        return manifest.try_read_manifest(self.layout.stage_record(stage.key), self.storage_options)

    def done(self, stage: Stage) -> bool:
        rec = self.record(stage)
        return rec is not None and rec.get("config_hash") == stage.config_hash

    def wall(self, stage: Stage) -> float | None:
        rec = self.record(stage)
        return rec["wall_s"] if rec else None

    # -- reads and writes shared by stages
    def featurize(self, set_url: str, extractor: str, resources: dict) -> np.ndarray:
        """The features of a set in one space (cluster.featurize), with the run's extractor weights."""
        options = dict(run_extractor_options(self.cfg).get(extractor, {}))   # where its weights are
        if extractor == "classifier":
            options.update(url=self.layout.classifier, storage_options=self.storage_options)
        return featurize(set_url, extractor, min_actors=1, max_actors=max(1, resources.get("max", 1)),
                         cpus_per_actor=resources["cpus"], gpus_per_actor=resources["gpus"],
                         storage_options=self.storage_options, options=options or None, progress=self.say)

    def write_subset(self, sources, keys: list[str], out_url: str, why: dict | None = None) -> None:
        """D_n at ``out_url`` (its samples' lineage extended by ``why``): in this process when it is a few
        shards, else by tasks that hold a shard each (cluster.materialize); the same bytes either way."""
        size = self.cfg.sample.shard_size
        if math.ceil(len(keys) / size) <= IN_PROCESS_SHARDS:
            write_subset(sources, keys, out_url, annotate=(lambda s: annotated(s, why.get(s.key)).meta) if why else None,
                         overwrite=True, shard_size=size, storage_options=self.storage_options)
        else:
            write_subset_tasks(sources, keys, out_url, why=why, shard_size=size, overwrite=True,
                               storage_options=self.storage_options)

    def labels_of(self, sources, keys, what: str) -> dict[str, int]:
        """``{key: class id}`` of ``keys`` from their lineage in ``sources``; a DataError naming ``what``
        when one has no label or one outside 0..K-1."""
        num_classes, found, wanted = self.cfg.model.num_classes, {}, set(keys)
        for s in sources:
            mine = wanted.intersection(s.keys).difference(found)
            if mine:
                found.update(s.labels(mine))
        try:
            check_labels([found.get(k) for k in keys], num_classes, what)
        except ValueError as e:
            bad = next((k for k in keys if not isinstance(found.get(k), int) or not 0 <= found[k] < num_classes),
                       None)
            raise DataError(f"{e} (sample {bad!r}); model.num_classes={num_classes} makes the run class-conditional: "
                            "every image needs a label 0..K-1 (set model.num_classes=0 for this source)") from None
        return found
