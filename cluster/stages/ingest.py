"""The ingest stage: the real source as the sample sets ``<run>/real/train`` and ``<run>/real/holdout``."""
from __future__ import annotations

import math

from cluster.ingest import ingest_tasks
from cluster.materialize import IN_PROCESS_SHARDS
from cluster.stages.context import StageContext
from collapse.data import storage
from collapse.data.importers import ingest
from collapse.plan import Stage


def run(ctx: StageContext, stage: Stage) -> None:
    """In this process for a few shards, else a Ray task per shard (cluster.ingest): the same shards."""
    params, size = stage.params, ctx.cfg.sample.shard_size
    write = ingest if math.ceil((params["n"] + params["holdout"]) / size) <= IN_PROCESS_SHARDS else ingest_tasks
    write(params["source"], storage.join(ctx.layout.root, "real"), size=params["size"], mode=params["mode"],
          n=params["n"], holdout=params["holdout"], seed=params["seed"], shard_size=size,
          storage_options=ctx.storage_options, progress=ctx.say)
