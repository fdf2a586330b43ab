"""The featurize stages: the real sets (featurize-real) and a generation's pool (featurize), in
every feature space the run uses (cluster.featurize, one featurizer actor pool per space)."""
from __future__ import annotations

from cluster.stages.context import StageContext
from collapse.plan import Stage


def run_real(ctx: StageContext, stage: Stage) -> None:
    for url in stage.inputs.values():
        for extractor in stage.params["extractors"]:
            ctx.featurize(url, extractor, stage.resources)


def run(ctx: StageContext, stage: Stage) -> None:
    for extractor in stage.params["extractors"]:
        ctx.featurize(stage.inputs["pool"], extractor, stage.resources)
