"""The stages of a run, one module per stage kind, and how one stage is run.

Each module's ``run(ctx, stage)`` reads the stage's inputs, calls the engine (``collapse`` for the
math, the other ``cluster`` modules for the actors and workers) and writes the stage's outputs;
it commits nothing: the stage record is the driver's (cluster.loop). :func:`run_stage` runs one
stage again when it lost a worker of the cluster, and has a damaged input rebuilt by the stage
that wrote it (docs/ARCHITECTURE.md, "Manifests written last").
"""
from __future__ import annotations

import time

from cluster.runtime import lost_to_the_cluster
from cluster.stages import classifier, featurize, ingest, sample, score, select, train, train_set
from cluster.stages.context import StageContext
from collapse.data import manifest, storage
from collapse.errors import DamagedError, find_damage, transient_storage_error
from collapse.plan import Stage

# stage name (collapse.plan.STAGES) -> its runner
STAGES = {"ingest": ingest.run, "classifier": classifier.run, "featurize-real": featurize.run_real,
          "train-set": train_set.run, "train": train.run, "sample": sample.run, "featurize": featurize.run,
          "score": score.run, "select": select.run}

ATTEMPTS = 3   # a stage runs at most this often in one process (lost workers, storage errors, rebuilt inputs)
STORAGE_WAIT_S = (15.0, 60.0)   # before the second and third run of a stage that met a transient storage error
MAX_REBUILD_DEPTH = 4


def run_stage(ctx: StageContext, stage: Stage, depth: int = 0) -> None:
    """Run ``stage``. A stage that lost an actor, worker or node, or met a storage error that may pass
    (collapse.errors.transient_storage_error: throttled past the client's retries, the endpoint
    unreachable for a while), runs again, up to ATTEMPTS runs (what it committed stays); one that
    finds committed bytes differing from their manifest has the stage that wrote them rebuild them
    (deterministically), then runs again; in a stage runner (``ctx.rebuilds`` false) it raises
    the DamagedError to the driver instead, which rebuilds the part once for all the stages that
    read it side by side (cluster.loop)."""
    for attempt in range(ATTEMPTS):
        try:
            return STAGES[stage.name](ctx, stage)
        except Exception as e:
            damage = find_damage(e)
            last = attempt == ATTEMPTS - 1
            if not last and damage is None and lost_to_the_cluster(e):
                ctx.say(f"{stage.key}: lost a worker of the cluster ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}); running the stage again")
                continue
            storage_error = transient_storage_error(e)
            if not last and damage is None and storage_error is not None:
                # what the stage committed stays: running it again redoes only what is missing
                ctx.say(f"{stage.key}: {storage_error}; running the stage again in {STORAGE_WAIT_S[attempt]:.0f} s")
                time.sleep(STORAGE_WAIT_S[attempt])
                continue
            if damage is None or last or depth > MAX_REBUILD_DEPTH or not ctx.rebuilds:
                raise
            rebuild(ctx, *damage, reader=stage, depth=depth)


def rebuild(ctx: StageContext, set_url: str, part_url: str, reader: Stage, depth: int) -> None:
    """Un-commit the damaged set, remove the damaged part, and run the stage that wrote it again."""
    writer = ctx.plan.producer(set_url)
    if writer is None or writer is reader:
        raise DamagedError(part_url, set_url, "no stage of this run writes it, so it cannot be rebuilt: "
                                              "restore it from a copy") from None
    ctx.say(f"damaged: {part_url} (of {set_url}) differs from its manifest; rebuilding it with {writer.key}")
    ctx.guard()
    options = ctx.storage_options
    # un-commit the set first: while it is rebuilt no reader takes it for finished
    storage.remove(manifest.manifest_url(set_url), options)
    storage.remove(part_url, options)
    if part_url.endswith(".tar"):
        storage.remove(part_url[:-len(".tar")] + ".json", options)  # the shard's sidecar: re-make it
    storage.remove(ctx.layout.stage_record(writer.key), options, recursive=True)
    t0, started = time.perf_counter(), time.time()
    run_stage(ctx, writer, depth + 1)
    ctx.commit(writer, time.perf_counter() - t0, started)
    ctx.say(f"rebuilt {set_url} with {writer.key} in {time.perf_counter() - t0:.1f} s")
