"""The train-set stage: D_1, the first N images of the real training split."""
from __future__ import annotations

from cluster.stages.context import StageContext
from collapse.data.samples import SampleSet
from collapse.plan import Stage


def run(ctx: StageContext, stage: Stage) -> None:
    real = SampleSet(stage.inputs["real"], ctx.storage_options)
    keys = real.keys[:stage.params["N"]]
    if ctx.cfg.model.num_classes:  # a class-conditional run trains on labels: every image of D_1 has one
        ctx.labels_of([real], keys, f"the real training images of {real.url}")
    ctx.write_subset([real], keys, stage.outputs["train_set"])
