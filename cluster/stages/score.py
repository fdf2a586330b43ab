"""The score stage of generation n: H(D_n), generalization score and memorization of the pool P_n
against D_n in every feature space, quality against the real held-out images, and per-class
figures in a class-conditional run (collapse.metrics, collapse.classes, collapse.classifier); the
nearest-neighbour search split across actors when D_n is large (cluster.score)."""
from __future__ import annotations

import json

from cluster.score import ShardedKNN
from cluster.stages.context import StageContext
from collapse import classes
from collapse.classifier import classifier_figures, load_classifier, read_classifier_record, recognizability
from collapse.data import storage
from collapse.data.samples import SampleSet
from collapse.metrics import generation_metrics
from collapse.novelty import nearest_training_distance, real_copy_radius
from collapse.paradigms import real_share
from collapse.plan import SHARED, Stage, guidance_scale
from collapse.schedule import knn_shards


def run(ctx: StageContext, stage: Stage) -> None:
    params, spaces, resources = stage.params, stage.params["features"], stage.resources
    train, pool, holdout = (SampleSet(stage.inputs[k], ctx.storage_options) for k in ("train_set", "pool", "holdout"))
    scored = pool.keys[:params["gs_samples"]]
    feats = {name: {} for name in ("train", "generated", "holdout")}
    for e in spaces:
        feats["train"][e] = ctx.featurize(train.url, e, resources)
        feats["generated"][e] = ctx.featurize(pool.url, e, resources)[:len(scored)]
        feats["holdout"][e] = ctx.featurize(holdout.url, e, resources)
    rho = {e: real_copy_radius(ctx.featurize(stage.inputs["real_train_set"], e, resources)) for e in spaces}
    shards = knn_shards(train.count, resources)
    indexes = {}
    try:
        if shards > 1:  # D_n split across actors; the figures come from the same exact neighbours
            ctx.say(f"score: D_{stage.generation} ({train.count} images) searched by {shards} actors")
            indexes = {e: ShardedKNN(feats["train"][e], shards, cpus_per_shard=resources["cpus"]) for e in spaces}
        figures = generation_metrics(feats["train"], feats["generated"], feats["holdout"], prdc_k=params["prdc_k"],
                                     seed=ctx.cfg.run.seed, copy_radius=rho, indexes=indexes or None)
    finally:
        for index in indexes.values():
            index.close()
    quality = sample_quality(ctx, stage, pool, scored)
    by_class = class_figures(ctx, stage, train, pool, holdout, scored, feats, rho) if ctx.cfg.model.num_classes \
        else None
    real = real_share(train.keys, set(SampleSet(ctx.layout.real("train"), ctx.storage_options).keys))
    times = {s.name: ctx.wall(s) for s in ctx.plan if s.generation == stage.generation
             and s.strategy == stage.strategy and s.name in ("train", "sample", "featurize")}
    metrics = {"strategy": stage.strategy, "generation": stage.generation, "spaces": figures,
               "quality": quality, "classes": by_class, "real_share": real, "train_count": train.count,
               "pool_count": pool.count, "scored_count": len(scored), "holdout_count": holdout.count,
               "stage_seconds": times}
    storage.write_bytes(stage.outputs["metrics"], json.dumps(metrics, indent=1).encode(), ctx.storage_options)


def sample_quality(ctx: StageContext, stage: Stage, pool: SampleSet, scored: list[str]) -> dict | None:
    """The classifier's figures on the scored samples beside its figures on real held-out images
    (collapse.classifier); None when the run trains no classifier or its data has no labels."""
    if "classifier" not in stage.inputs:
        return None
    record = read_classifier_record(stage.inputs["classifier"], ctx.storage_options)
    if not record["labelled"]:
        return None
    clf = load_classifier(stage.inputs["classifier"], ctx.storage_options)
    _, images, _ = pool.load(scored)
    return recognizability(classifier_figures(clf.probabilities(images), clf.num_classes), record["holdout"])


def class_figures(ctx: StageContext, stage: Stage, train, pool, holdout, scored, feats, rho) -> dict:
    """Per-class figures of a generation (collapse.classes): D_n's class balance and per-class entropy,
    GS and memorization of the samples by the class they were asked for, and the classifier's agreement."""
    num_classes = ctx.cfg.model.num_classes
    train_labels = ctx.labels_of([train], train.keys, f"the training set {train.url}")
    asked = ctx.labels_of([pool], scored, f"the pool {pool.url}")
    d1 = {e: nearest_training_distance(feats["generated"][e], feats["train"][e]) for e in feats["train"]}
    out = classes.class_figures(feats["train"], [train_labels[k] for k in train.keys], d1,
                                [asked[k] for k in scored], num_classes, rho)
    strategy = None if stage.strategy == SHARED else ctx.cfg.strategy(stage.strategy)
    out.update(guidance_scale=guidance_scale(ctx.cfg, strategy), agreement=None, agreement_mean=None,
               real_agreement=None)
    if "classifier" in stage.inputs and read_classifier_record(stage.inputs["classifier"],
                                                               ctx.storage_options)["labelled"]:
        clf = load_classifier(stage.inputs["classifier"], ctx.storage_options)
        if clf.num_classes == num_classes:
            _, images, _ = pool.load(scored)
            out["agreement"], out["agreement_mean"] = classes.agreement(
                clf.probabilities(images), [asked[k] for k in scored], num_classes)
            _, held_images, held_meta = holdout.load()
            _, out["real_agreement"] = classes.agreement(
                clf.probabilities(held_images), [m.get("label") for m in held_meta], num_classes)
    return out
