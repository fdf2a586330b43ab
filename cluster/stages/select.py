"""The select stage of generation n: D_{n+1} from the candidates of the strategy's paradigm
(collapse.paradigms), chosen by its selection (collapse.selection, per class with
collapse.classes; across actors with cluster.selection for a large pool); the manifest and the
lineage it writes are collapse.lineage's."""
from __future__ import annotations

import functools
import json

import numpy as np

from cluster.selection import sharded_select
from cluster.stages.context import StageContext
from collapse import paradigms
from collapse.classes import select_per_class
from collapse.data import manifest, storage
from collapse.entropy import kl_entropy
from collapse.forecast import MIN_POINTS, forecast, forecast_line, stops
from collapse.data.samples import SampleSet
from collapse.lineage import kept_lineage, kept_reasons, selection_record
from collapse.plan import SHARED, Stage
from collapse.schedule import selection_shards
from collapse.selection import select


def run(ctx: StageContext, stage: Stage) -> None:
    params, n, storage_options = stage.params, stage.generation, ctx.storage_options
    # the sets this paradigm reads (the plan's inputs: pool-NNN, and real or train_set when read)
    real = SampleSet(stage.inputs.get("real", ctx.layout.real("train")), storage_options)
    pool_size = paradigms.pool_size(ctx.cfg.data.n, params["pool_factor"]) if params["pool_factor"] else None
    pools = {int(k[5:]): SampleSet(url, storage_options) for k, url in stage.inputs.items() if k.startswith("pool-")}
    # D_n is a source even when the paradigm does not read it: a key it holds is copied with its lineage
    train_n = SampleSet(stage.inputs.get("train_set", ctx.layout.train_set(SHARED if n == 1 else params["name"], n)),
                        storage_options)
    next_set = paradigms.next_training_set(
        params["paradigm"], n, N=ctx.cfg.data.n, kind=params["kind"], pool_factor=params["pool_factor"],
        real_keys=real.keys, pools={g: s.keys[:pool_size] for g, s in pools.items()}, train_keys=train_n.keys,
        fresh_fraction=params["fresh_fraction"], seed=params["seed"])
    sources = [real, train_n, *pools.values()]
    reasons, chosen_by, quotas = {}, None, None
    if next_set.how == "select":
        x = candidate_features(ctx, next_set.candidates, sources, params["features"] or "pixel")
        selection_params = {k: params[k] for k in ("tau0", "alpha") if params.get(k) is not None}
        shards = selection_shards(len(x), params["kind"], stage.resources)
        select_fn = select
        if shards > 1:  # the pool across actors: the same picks (cluster.selection)
            select_fn = functools.partial(sharded_select, shards=shards, cpus_per_shard=stage.resources["cpus"],
                                          gpus_per_shard=stage.resources["gpus"])
        if params.get("per_class"):  # each class keeps its share of the candidates (collapse.classes)
            labels = ctx.labels_of(sources, next_set.candidates, f"the candidates of {stage.key}")
            chosen = select_per_class(x, [labels[k] for k in next_set.candidates], next_set.choose, params["kind"],
                                      next_set.seed, ctx.cfg.model.num_classes, select_fn=select_fn,
                                      **selection_params)
            quotas = chosen.params["per_class"]
        else:
            chosen = select_fn(x, next_set.choose, params["kind"], seed=next_set.seed, **selection_params)
        keys = next_set.keys(chosen.indices.tolist())
        reasons, chosen_by = kept_reasons(next_set.candidates, chosen.columns()), chosen.params
    else:
        keys = next_set.keys()
    record = selection_record(next_set, keys, strategy=params["name"], kind=params["kind"], generation=n,
                              reasons=reasons, params=chosen_by, per_class_quotas=quotas)
    stop = stop_decision(ctx, stage, say_forecast(ctx, stage, list(keys), sources))
    if stop is not None:
        record["stop"] = stop   # the loop trains nothing more of this chain (cluster.loop.Loop.stopped)
    manifest.write_manifest(stage.outputs["selection"], record, storage_options)
    lineage = kept_lineage(next_set, keys, strategy=params["name"], generation=n, reasons=reasons,
                           per_class=bool(params.get("per_class")))
    ctx.write_subset(sources, list(keys), stage.outputs["train_set"], lineage)


def stop_decision(ctx: StageContext, stage: Stage, forecasts: dict) -> dict | None:
    """The chain ends here (config run.stop_chain_below_rho = r > 0) when the GS forecast for M_{n+1} in the
    run's first metrics space is below r x rho: the decision, with its forecast and why; None otherwise."""
    r, space = ctx.cfg.run.stop_chain_below_rho, ctx.cfg.metrics.features[0]
    fc = forecasts.get(space)
    if not stops(fc, r):
        return None
    n = stage.generation + 1
    why = (f"{stage.params['name']} stops before training M_{n}: in {space} space H(D_{n}) = {fc.h:.4g} forecasts "
           f"GS {fc.gs:.3g} [{fc.low:.3g}, {fc.high:.3g}], below {r:g} x rho = {r * fc.rho:.3g} "
           f"(run.stop_chain_below_rho = {r:g})")
    ctx.say(why)
    return {"generation": n, "space": space, "factor": r, "forecast": fc.as_dict(), "why": why}


def say_forecast(ctx: StageContext, stage: Stage, keys: list, sources) -> dict:
    """Before M_{n+1} trains: H(D_{n+1}) in each space of the run's figures and the GS it forecasts
    (collapse.forecast), fitted over the generations scored so far, every strategy's; one line per
    space; returns {space: Forecast} of the spaces that have one. What was scored by now depends on the
    schedule when strategies run side by side, unless run.stop_chain_below_rho makes each select stage
    wait for every score of its generation (collapse.plan); the report's forecast table
    (collapse.forecast.backtest) uses every generation before n + 1."""
    n, so, out = stage.generation + 1, ctx.storage_options, {}
    if len(keys) < 2:   # no entropy of fewer than 2 images
        return out
    rows = [json.loads(storage.read_bytes(s.outputs["metrics"], so)) for s in ctx.plan
            if s.name == "score" and s.generation < n and ctx.done(s)]
    for space in ctx.cfg.metrics.features:
        figures = [r["spaces"][space] for r in rows if space in (r.get("spaces") or {})]
        h = kl_entropy(candidate_features(ctx, keys, sources, space))
        rho = next((f["copy_radius"] for f in figures if f.get("copy_radius") is not None), None)
        fc = forecast([(f.get("entropy"), f.get("gs")) for f in figures], h, rho)
        if fc is not None:
            out[space] = fc
        key = f"{stage.params['name']}/gen-{n:03d}"
        ctx.say(f"forecast, {space} space: " + (forecast_line(key, n, fc) if fc is not None else
                f"{key}: H(D_{n}) = {h:.4g}; no forecast yet ({len(figures)} scored generations, {MIN_POINTS} needed)"))
    return out


def candidate_features(ctx: StageContext, keys, sources, extractor: str) -> np.ndarray:
    """The features of ``keys`` in ``extractor``'s space, each read from the first source that holds it."""
    from collapse.data.features import load_features
    rows, where = {}, {}
    for s in sources:
        for k in s.keys:
            where.setdefault(k, s)
    for s in {id(where[k]): where[k] for k in keys}.values():
        mine = [k for k in keys if where[k] is s]
        ctx.featurize(s.url, extractor, {"cpus": 1.0, "gpus": 0.0})
        rows.update(zip(mine, load_features(s, extractor, keys=mine)))
    return np.stack([rows[k] for k in keys])
