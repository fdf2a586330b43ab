"""The train stage: M_n trained from scratch on D_n (cluster.train: Ray Train + DeepSpeed)."""
from __future__ import annotations

from cluster.stages.context import StageContext
from cluster.train import TrainSpec, train_model
from collapse.plan import Stage


def run(ctx: StageContext, stage: Stage) -> None:
    workers = stage.resources
    train_model(stage.inputs["train_set"], stage.outputs["model"], TrainSpec(**stage.params["spec"]),
                num_workers=workers["min"], use_gpu=workers["gpus"] > 0, cpus_per_worker=workers["cpus"],
                max_failures=1, conditional=stage.params.get("conditional"),
                storage_options=ctx.storage_options, progress=ctx.say)
