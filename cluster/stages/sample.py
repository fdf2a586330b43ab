"""The sample stage: the pool P_n drawn from M_n with per-sample seeds (cluster.sample, a sampler
actor pool that grows from the stage's minimum to its maximum number of actors)."""
from __future__ import annotations

from cluster.sample import SampleSpec, sample_pool
from cluster.stages.context import StageContext
from collapse.plan import Stage


def run(ctx: StageContext, stage: Stage) -> None:
    actors = stage.resources
    sample_pool(stage.inputs["model"], stage.outputs["pool"], SampleSpec(**stage.params["spec"]),
                min_actors=actors["min"], max_actors=actors["max"], cpus_per_actor=actors["cpus"],
                gpus_per_actor=actors["gpus"], storage_options=ctx.storage_options, progress=ctx.say)
