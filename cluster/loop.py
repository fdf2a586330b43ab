"""The loop driver: runs a plan (collapse.plan) stage by stage; a resubmitted run resumes.

For each generation n, for each strategy (generation 1 shared):
    train     M_n on D_n                                   (Ray Train + DeepSpeed)
    sample    P_n from M_n, per-sample seeds               (sampler actor pool)
    featurize P_n in every space the run uses              (featurizer actor pool)
    score     H(D_n), GS and memorization of P_n against D_n, quality against held-out real data
    select    D_{n+1} from the candidates of the paradigm  (collapse.paradigms + collapse.selection)

Stages run as a DAG (``run_side_by_side``, collapse.schedule): a stage starts once every stage in
its ``after`` is committed and the CPUs and GPUs its resources declare fit beside the running
ones, each in a stage runner actor (cluster.runner), so that the chains of different strategies
overlap; ``resources.max_parallel_stages = 1`` runs them one after another in this process.

A stage that finishes commits ``<run>/stages/<key>/manifest.json`` (its config hash, wall time,
started_at and ended_at) last, from the driver; a stage whose record holds the same hash is
skipped. Inside a stage, every output also commits its own manifest, so an interrupted stage
redoes only what is missing.
"""
from __future__ import annotations

import functools
import json
import math
import time

import numpy as np

from cluster.featurize import featurize
from cluster.ingest import ingest_tasks
from cluster.materialize import IN_PROCESS_SHARDS, write_subset_tasks
from cluster.sample import SampleSpec, sample_pool
from cluster.runtime import lost_to_the_cluster
from cluster.score import ShardedKNN
from cluster.selection import sharded_select
from cluster.train import TrainSpec, train_model
from collapse import classes
from collapse import config as cf
from collapse import paradigms as pd
from collapse.classifier import (classifier_figures, load_classifier, read_classifier_record, recognizability,
                                 save_classifier, train_classifier)
from collapse.data import manifest as mf
from collapse.data import storage
from collapse.data.importers import ingest, labelled_training_images
from collapse.data.samples import SampleSet, annotated, write_subset
from collapse.data.urls import RunLayout
from collapse.classes import check_labels, select_per_class
from collapse.config_checks import check_run_extractors, run_extractor_options
from collapse.errors import ConfigError, DamagedError, DataError, find_damage
from collapse.metrics import generation_metrics
from collapse.novelty import nearest_training_distance, real_copy_radius
from collapse.plan import SHARED, plan, shares_generation_one
from collapse.progress import ETA
from collapse.report import render_report
from collapse.selection import select


class Loop:
    """Runs the stages of one run directory. ``so``: storage options of the run's URL (or None)."""

    def __init__(self, cfg: cf.RunConfig, progress=print, lease=None):
        self.cfg, self.plan, self.say = cfg, plan(cfg), progress
        self.lease = lease  # collapse.data.lease.Lease of the driver, checked before every commit (or None)
        self.L = RunLayout(self.plan.root)
        self.so = storage.storage_options_for(self.L.root)

    # -- the run: check the config, then every stage in order
    def run(self, extend: bool = False) -> list[dict]:
        self.guard()
        self.check_config(extend)
        todo = [s for s in self.plan if not self.done(s)]
        if not todo:
            self.say(f"run {self.L.root} is already complete ({len(self.plan)} stages); nothing to do")
        else:
            check_run_extractors(self.cfg)   # every extractor's weights are here, before any stage
        if todo and self.cfg.resources.max_parallel_stages != 1:
            self.run_side_by_side(todo)
        else:
            self.run_in_order(todo)
        self.guard()
        rows = self.write_metrics_log()
        self.say(f"report: {render_report([self.L.root], storage_options=self.so)}")
        return rows

    def run_in_order(self, todo: list) -> None:
        """One stage after another, in this process (resources.max_parallel_stages = 1)."""
        eta, t_run = ETA(), time.perf_counter()
        for i, stage in enumerate(self.plan, 1):
            if stage in todo:
                self.say(f"[{i}/{len(self.plan)}] {stage.key} ...")
                t0, started = time.perf_counter(), time.time()
                self.clear_half_writes(stage)
                self.run_stage(stage)
                wall = time.perf_counter() - t0
                self.commit(stage, wall, started)
                eta.done(stage, wall)
                left = [s for s in todo if self.plan.stages.index(s) >= i]
                self.say(f"[{i}/{len(self.plan)}] {stage.key} done in {wall:.1f} s; "
                         f"{eta.say(left, time.perf_counter() - t_run)}")

    def run_side_by_side(self, todo: list) -> None:
        """The plan as a DAG (collapse.schedule): a stage starts once the stages it reads are
        committed and its declared CPUs and GPUs are free, each in a stage runner actor of its own
        (cluster.runner). This driver clears half-writes and commits every record, under its lease.
        After a failure no stage starts; the running ones finish (and commit); then it raises."""
        import ray

        from cluster.runner import start_runner
        from collapse.schedule import demand, runner_resources, startable
        number = {s.key: i for i, s in enumerate(self.plan, 1)}
        finished = {s.key for s in self.plan if s not in todo}
        cap = self.cfg.resources.max_parallel_stages
        idle, running, failure = {}, {}, None  # idle: (cpus, gpus) -> runners; running: ref -> (stage, runner, attempt)
        eta, t_start = ETA(side_by_side=True), time.perf_counter()

        def launch(stage, attempt: int = 0) -> None:
            self.clear_half_writes(stage)
            shape = runner_resources(stage)
            free = idle.setdefault(shape, [])
            runner = free.pop() if free else start_runner(self.cfg, self.so, *shape)
            running[runner.run.remote(stage.key)] = (stage, runner, attempt)
            others = [s.key for s, _, _ in running.values() if s is not stage]
            self.say(f"[{number[stage.key]}/{len(self.plan)}] {stage.key} ..."
                     + (f" (beside {', '.join(others)})" if others else ""))

        def release(stage, runner) -> None:
            """A runner without resources waits for the next stage; one holding a GPU is ended, so
            that the GPU is free for the workers of the stages that follow."""
            shape = runner_resources(stage)
            if any(shape):
                ray.kill(runner)
            else:
                idle.setdefault(shape, []).append(runner)

        def relay(runner) -> None:
            try:
                lines = ray.get(runner.drain.remote())
            except ray.exceptions.RayActorError:  # a runner that died: its stage's result says so
                return
            for line in lines:
                self.say(line)

        try:
            while True:
                if failure is None:
                    totals = ray.cluster_resources()  # read again each time: a cluster may grow or shrink
                    capacity = {"CPU": float(totals.get("CPU", 0.0)), "GPU": float(totals.get("GPU", 0.0))}
                    demands = {s.key: demand(s) for s, _, _ in running.values()}
                    for stage in startable(todo, finished, demands, capacity, cap):
                        launch(stage)
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for _, runner, _ in list(running.values()):
                    relay(runner)
                for ref in done:
                    stage, runner, attempt = running.pop(ref)
                    relay(runner)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the stage raised: its own error, not Ray's
                        failure = failure or (e.cause if isinstance(e.cause, BaseException) else e)
                        release(stage, runner)
                        continue
                    except Exception as e:  # noqa: BLE001 - the runner itself is gone
                        if lost_to_the_cluster(e) and attempt < 2 and failure is None:
                            self.say(f"{stage.key}: lost a worker of the cluster (its stage runner: "
                                     f"{type(e).__name__}); running the stage again")
                            launch(stage, attempt + 1)
                        else:
                            failure = failure or e
                        continue
                    release(stage, runner)
                    self.commit(stage, result["wall"], result["started"])
                    finished.add(stage.key)
                    eta.done(stage, result["wall"])
                    left = [s for s in todo if s.key not in finished]
                    self.say(f"[{number[stage.key]}/{len(self.plan)}] {stage.key} done in {result['wall']:.1f} s; "
                             f"{eta.say(left, time.perf_counter() - t_start)}")
        finally:
            for runner in [r for rs in idle.values() for r in rs] + [r for _, r, _ in running.values()]:
                ray.kill(runner)
        if failure is not None:
            raise failure

    def clear_half_writes(self, stage) -> None:
        """A stage that (re)starts first aborts the multipart uploads a killed run left under its outputs
        (one driver per run, by the lease: none of them is still being written)."""
        for out in stage.outputs.values():
            keys = storage.abort_multipart_uploads(out, self.so)
            if keys:
                self.say(f"cleared {len(keys)} unfinished multipart upload(s) under {out}: {', '.join(keys[:3])}"
                         + (" ..." if len(keys) > 3 else ""))

    def commit(self, stage, wall: float, started: float) -> None:
        """The stage record: its hash, wall seconds, and when it started and ended (UTC seconds)."""
        self.guard()  # a driver that lost its lease commits nothing more
        mf.write_manifest(self.L.stage_record(stage.key), {"kind": "stage", "key": stage.key,
                          "config_hash": stage.config_hash, "wall_s": wall, "started_at": started,
                          "ended_at": time.time()}, self.so)

    # -- damaged storage: a stage that finds committed bytes differing from their manifest has
    #    the stage that wrote them rebuild them (deterministically), then runs again
    #    a stage that lost an actor, worker or node (a machine failed) runs again: what it committed stays
    def run_stage(self, stage, depth: int = 0) -> None:
        for attempt in range(3):
            try:
                return getattr(self, "stage_" + stage.name.replace("-", "_"))(stage)
            except Exception as e:
                damage = find_damage(e)
                if attempt < 2 and damage is None and lost_to_the_cluster(e):
                    self.say(f"{stage.key}: lost a worker of the cluster ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); running the stage again")
                    continue
                if damage is None or attempt == 2 or depth > 4:
                    raise
                self.rebuild(*damage, reader=stage, depth=depth)

    def producer(self, url: str):
        """The stage of this plan whose output holds ``url`` (the longest output prefix), or None."""
        best, length = None, -1
        for st in self.plan:
            for out in st.outputs.values():
                out = out.rstrip("/")
                if (url == out or url.startswith(out + "/")) and len(out) > length:
                    best, length = st, len(out)
        return best

    def rebuild(self, set_url: str, part_url: str, reader, depth: int) -> None:
        st = self.producer(set_url)
        if st is None or st is reader:
            raise DamagedError(part_url, set_url, "no stage of this run writes it, so it cannot be rebuilt: "
                                                  "restore it from a copy") from None
        self.say(f"damaged: {part_url} (of {set_url}) differs from its manifest; rebuilding it with {st.key}")
        self.guard()
        # un-commit the set first: while it is rebuilt no reader takes it for finished
        storage.remove(mf.manifest_url(set_url), self.so)
        storage.remove(part_url, self.so)
        if part_url.endswith(".tar"):
            storage.remove(part_url[:-len(".tar")] + ".json", self.so)  # the shard's sidecar: re-make it
        storage.remove(self.L.stage_record(st.key), self.so, recursive=True)
        t0, started = time.perf_counter(), time.time()
        self.run_stage(st, depth + 1)
        self.commit(st, time.perf_counter() - t0, started)
        self.say(f"rebuilt {set_url} with {st.key} in {time.perf_counter() - t0:.1f} s")

    def guard(self) -> None:
        if self.lease is not None:
            self.lease.confirm()

    def done(self, stage) -> bool:
        rec = mf.try_read_manifest(self.L.stage_record(stage.key), self.so)
        return rec is not None and rec.get("config_hash") == stage.config_hash

    def check_config(self, extend: bool) -> None:
        """Save the resolved config; refuse a different one against an existing run (say what differs)."""
        new = cf.to_dict(self.cfg)
        try:
            old = json.loads(storage.read_bytes(self.L.config + ".json", self.so))
        except FileNotFoundError:
            old = None
        changes = cf.diff(old, new) if old is not None else []
        if changes:
            if not (extend and cf.extendable(old, new)):
                lines = "\n  ".join(changes)
                hint = " (pass --extend to add generations)" if cf.extendable(old, new) else ""
                raise ConfigError(f"{self.L.root} holds a run with another config{hint}:\n  {lines}")
        storage.write_bytes(self.L.config, cf.to_yaml(self.cfg).encode(), self.so)
        storage.write_bytes(self.L.config + ".json", json.dumps(new, indent=1).encode(), self.so)

    # -- stage runners (thin: each calls one engine function)
    def stage_ingest(self, st) -> None:
        """In this process for a few shards, else a Ray task per shard (cluster.ingest): the same shards."""
        p, size = st.params, self.cfg.sample.shard_size
        run = ingest if math.ceil((p["n"] + p["holdout"]) / size) <= IN_PROCESS_SHARDS else ingest_tasks
        run(p["source"], storage.join(self.L.root, "real"), size=p["size"], mode=p["mode"], n=p["n"],
            holdout=p["holdout"], seed=p["seed"], shard_size=size, storage_options=self.so, progress=self.say)

    def stage_classifier(self, st) -> None:
        p = st.params
        t0 = time.perf_counter()
        data = labelled_training_images(p["source"], p["images"], size=p["size"], mode=p["mode"],
                                        holdout=p["holdout"], seed=p["seed"], storage_options=self.so)
        if data is None:
            save_classifier(st.outputs["classifier"], None, {"images": 0}, self.so)
            self.say(f"classifier: {p['source']} has no labels; sample quality is reported as the on-manifold "
                     "ratio only")
            return
        images, labels = data
        clf = train_classifier(images, labels, epochs=p["epochs"], seed=p["seed"])
        _, hold, _ = SampleSet(self.L.real("holdout"), self.so).load()
        held = classifier_figures(clf.probabilities(hold), clf.num_classes)
        save_classifier(st.outputs["classifier"], clf, {"images": len(images), "epochs": p["epochs"],
                                                        "holdout": held}, self.so)
        self.say(f"classifier: {clf.num_classes} classes, {len(images)} labelled real images, "
                 f"{time.perf_counter() - t0:.0f} s; on {len(hold)} held-out real images: confidence "
                 f"{held['confidence']:.3f}, rejected {held['rejected']:.3f}")

    def stage_featurize_real(self, st) -> None:
        for url in st.inputs.values():
            for e in st.params["extractors"]:
                self.featurize(url, e, st.resources)

    def stage_train_set(self, st) -> None:
        real = SampleSet(st.inputs["real"], self.so)
        keys = real.keys[:st.params["N"]]
        if self.cfg.model.num_classes:  # a class-conditional run trains on labels: every image of D_1 has one
            self.labels_of([real], keys, f"the real training images of {real.url}")
        self.write_subset([real], keys, st.outputs["train_set"])

    def stage_train(self, st) -> None:
        r = st.resources
        train_model(st.inputs["train_set"], st.outputs["model"], TrainSpec(**st.params["spec"]),
                    num_workers=r["min"], use_gpu=r["gpus"] > 0, cpus_per_worker=r["cpus"], max_failures=1,
                    conditional=st.params.get("conditional"),
                    storage_options=self.so, progress=self.say)

    def stage_sample(self, st) -> None:
        r = st.resources
        sample_pool(st.inputs["model"], st.outputs["pool"], SampleSpec(**st.params["spec"]), min_actors=r["min"],
                    max_actors=r["max"], cpus_per_actor=r["cpus"], gpus_per_actor=r["gpus"],
                    storage_options=self.so, progress=self.say)

    def stage_featurize(self, st) -> None:
        for e in st.params["extractors"]:
            self.featurize(st.inputs["pool"], e, st.resources)

    def stage_score(self, st) -> None:
        m, spaces = st.params, st.params["features"]
        train, pool, hold = (SampleSet(st.inputs[k], self.so) for k in ("train_set", "pool", "holdout"))
        scored = pool.keys[:m["gs_samples"]]
        feats = {name: {} for name in ("train", "generated", "holdout")}
        for e in spaces:
            feats["train"][e] = self.featurize(train.url, e, st.resources)
            feats["generated"][e] = self.featurize(pool.url, e, st.resources)[:len(scored)]
            feats["holdout"][e] = self.featurize(hold.url, e, st.resources)
        rho = {e: real_copy_radius(self.featurize(st.inputs["real_train_set"], e, st.resources)) for e in spaces}
        r = st.resources
        shards = min(train.count, max(r.get("shards", 1), math.ceil(train.count / r.get("shard_rows", train.count))))
        indexes = {}
        try:
            if shards > 1:  # D_n split across actors; the figures come from the same exact neighbours
                self.say(f"score: D_{st.generation} ({train.count} images) searched by {shards} actors")
                indexes = {e: ShardedKNN(feats["train"][e], shards, cpus_per_shard=r["cpus"]) for e in spaces}
            figures = generation_metrics(feats["train"], feats["generated"], feats["holdout"], prdc_k=m["prdc_k"],
                                         seed=self.cfg.run.seed, copy_radius=rho, indexes=indexes or None)
        finally:
            for index in indexes.values():
                index.close()
        quality = self.sample_quality(st, pool, scored)
        by_class = self.class_figures(st, train, pool, hold, scored, feats, rho) if self.cfg.model.num_classes else None
        real = pd.real_share(train.keys, set(SampleSet(self.L.real("train"), self.so).keys))
        times = {s.name: self.wall(s) for s in self.plan if s.generation == st.generation
                 and s.strategy == st.strategy and s.name in ("train", "sample", "featurize")}
        metrics = {"strategy": st.strategy, "generation": st.generation, "spaces": figures,
                   "quality": quality, "classes": by_class, "real_share": real, "train_count": train.count,
                   "pool_count": pool.count,
                   "scored_count": len(scored), "holdout_count": hold.count, "stage_seconds": times}
        storage.write_bytes(st.outputs["metrics"], json.dumps(metrics, indent=1).encode(), self.so)

    def stage_select(self, st) -> None:
        p, n = st.params, st.generation
        # the sets this paradigm reads (the plan's inputs: pool-NNN, and real or train_set when read)
        real = SampleSet(st.inputs.get("real", self.L.real("train")), self.so)
        k_n = pd.pool_size(self.cfg.data.n, p["pool_factor"]) if p["pool_factor"] else None
        pools = {int(k[5:]): SampleSet(url, self.so) for k, url in st.inputs.items() if k.startswith("pool-")}
        # D_n is a source even when the paradigm does not read it: a key it holds is copied with its lineage
        train_n = SampleSet(st.inputs.get("train_set", self.L.train_set(SHARED if n == 1 else p["name"], n)), self.so)
        ts = pd.next_training_set(p["paradigm"], n, N=self.cfg.data.n, kind=p["kind"], pool_factor=p["pool_factor"],
                                  real_keys=real.keys, pools={g: s.keys[:k_n] for g, s in pools.items()},
                                  train_keys=train_n.keys, fresh_fraction=p["fresh_fraction"], seed=p["seed"])
        sources = [real, train_n, *pools.values()]
        decision = {"strategy": p["name"], "kind": p["kind"], "how": ts.how, "generation": n, "seed": ts.seed,
                    "forced": list(ts.forced), "candidates": len(ts.candidates), "choose": ts.choose}
        reasons = {}
        if ts.how == "select":
            x = self.candidate_features(ts.candidates, sources, p["features"] or "pixel")
            params = {k: p[k] for k in ("tau0", "alpha") if p.get(k) is not None}
            shards = min(len(x), st.resources.get("shards", 1))
            how = select
            if shards > 1 and p["kind"] != "random":  # the pool across actors: the same picks (cluster.selection)
                how = functools.partial(sharded_select, shards=shards, cpus_per_shard=st.resources["cpus"],
                                        gpus_per_shard=st.resources["gpus"])
            if p.get("per_class"):  # each class keeps its share of the candidates (collapse.classes)
                labels = self.labels_of(sources, ts.candidates, f"the candidates of {st.key}")
                sel = select_per_class(x, [labels[k] for k in ts.candidates], ts.choose, p["kind"], ts.seed,
                                       self.cfg.model.num_classes, select_fn=how, **params)
                decision["per_class"] = {"quotas": sel.params["per_class"]}
            else:
                sel = how(x, ts.choose, p["kind"], seed=ts.seed, **params)
            keys = ts.keys(sel.indices.tolist())
            cols = sel.columns()
            for row in range(len(sel)):
                reasons[ts.candidates[int(cols["index"][row])]] = {
                    "order": row, "distance": _num(cols["distance"][row]), "pass": int(cols["pass"][row]),
                    "tau": _num(cols["tau"][row]),
                    "nearest": ts.candidates[int(cols["nearest"][row])] if cols["nearest"][row] >= 0 else None}
            decision["params"] = sel.params
        else:
            keys = ts.keys()
        kept = set(keys)
        decision["kept"] = [{"key": k, **reasons.get(k, {})} for k in keys]
        decision["dropped"] = [k for k in ts.candidates if k not in kept]
        mf.write_manifest(st.outputs["selection"], {"kind": "selection", **decision}, self.so)

        forced = set(ts.forced)
        why = {k: {"strategy": p["name"], "generation": n, "how": ts.how, "kept": True, "forced": k in forced,
                   **({"per_class": True} if p.get("per_class") and k not in forced else {}),
                   **reasons.get(k, {})} for k in keys}
        self.write_subset(sources, list(keys), st.outputs["train_set"], why)

    # -- helpers
    def write_subset(self, sources, keys: list[str], out_url: str, why: dict | None = None) -> None:
        """D_n at ``out_url`` (its samples' lineage extended by ``why``): in this process when it is a few
        shards, else by tasks that hold a shard each (cluster.materialize); the same bytes either way."""
        size = self.cfg.sample.shard_size
        if math.ceil(len(keys) / size) <= IN_PROCESS_SHARDS:
            write_subset(sources, keys, out_url, annotate=(lambda s: annotated(s, why.get(s.key)).meta) if why else None,
                         overwrite=True, shard_size=size, storage_options=self.so)
        else:
            write_subset_tasks(sources, keys, out_url, why=why, shard_size=size, overwrite=True,
                               storage_options=self.so)

    def labels_of(self, sources, keys, what: str) -> dict[str, int]:
        """``{key: class id}`` of ``keys`` from their lineage in ``sources``; a DataError naming ``what``
        when one has no label or one outside 0..K-1."""
        K, found, wanted = self.cfg.model.num_classes, {}, set(keys)
        for s in sources:
            mine = wanted.intersection(s.keys).difference(found)
            if mine:
                found.update(s.labels(mine))
        try:
            check_labels([found.get(k) for k in keys], K, what)
        except ValueError as e:
            bad = next((k for k in keys if not isinstance(found.get(k), int) or not 0 <= found[k] < K), None)
            raise DataError(f"{e} (sample {bad!r}); model.num_classes={K} makes the run class-conditional: "
                            "every image needs a label 0..K-1 (set model.num_classes=0 for this source)") from None
        return found

    def class_figures(self, st, train, pool, hold, scored, feats, rho) -> dict:
        """Per-class figures of a generation (collapse.classes): D_n's class balance and per-class entropy,
        GS and memorization of the samples by the class they were asked for, and the classifier's agreement."""
        K = self.cfg.model.num_classes
        train_labels = self.labels_of([train], train.keys, f"the training set {train.url}")
        gen_labels = self.labels_of([pool], scored, f"the pool {pool.url}")
        d1 = {e: nearest_training_distance(feats["generated"][e], feats["train"][e]) for e in feats["train"]}
        out = classes.class_figures(feats["train"], [train_labels[k] for k in train.keys], d1,
                                    [gen_labels[k] for k in scored], K, rho)
        out.update(guidance_scale=self.guidance_of(st), agreement=None, agreement_mean=None, real_agreement=None)
        if "classifier" in st.inputs and read_classifier_record(st.inputs["classifier"], self.so)["labelled"]:
            clf = load_classifier(st.inputs["classifier"], self.so)
            if clf.num_classes == K:
                _, images, _ = pool.load(scored)
                out["agreement"], out["agreement_mean"] = classes.agreement(
                    clf.probabilities(images), [gen_labels[k] for k in scored], K)
                _, hold_images, hold_meta = hold.load()
                _, out["real_agreement"] = classes.agreement(
                    clf.probabilities(hold_images), [m.get("label") for m in hold_meta], K)
        return out

    def guidance_of(self, st) -> float:
        from collapse.plan import guidance_scale
        return guidance_scale(self.cfg, None if st.strategy == SHARED else self.cfg.strategy(st.strategy))

    def featurize(self, set_url: str, extractor: str, r: dict) -> np.ndarray:
        options = dict(run_extractor_options(self.cfg).get(extractor, {}))   # where its weights are
        if extractor == "classifier":
            options.update(url=self.L.classifier, storage_options=self.so)
        return featurize(set_url, extractor, min_actors=1, max_actors=max(1, r.get("max", 1)), cpus_per_actor=r["cpus"],
                         gpus_per_actor=r["gpus"], storage_options=self.so, options=options or None,
                         progress=self.say)

    def sample_quality(self, st, pool: SampleSet, scored: list[str]) -> dict | None:
        """The classifier's figures on the scored samples beside its figures on real held-out images
        (collapse.classifier); None when the run trains no classifier or its data has no labels."""
        if "classifier" not in st.inputs:
            return None
        record = read_classifier_record(st.inputs["classifier"], self.so)
        if not record["labelled"]:
            return None
        clf = load_classifier(st.inputs["classifier"], self.so)
        _, images, _ = pool.load(scored)
        return recognizability(classifier_figures(clf.probabilities(images), clf.num_classes), record["holdout"])

    def candidate_features(self, keys, sources, extractor: str) -> np.ndarray:
        from collapse.data.features import load_features
        rows, where = {}, {}
        for s in sources:
            for k in s.keys:
                where.setdefault(k, s)
        for s in {id(where[k]): where[k] for k in keys}.values():
            mine = [k for k in keys if where[k] is s]
            self.featurize(s.url, extractor, {"cpus": 1.0, "gpus": 0.0})
            rows.update(zip(mine, load_features(s, extractor, keys=mine)))
        return np.stack([rows[k] for k in keys])

    def wall(self, stage) -> float | None:
        rec = mf.try_read_manifest(self.L.stage_record(stage.key), self.so)
        return rec["wall_s"] if rec else None

    def write_metrics_log(self) -> list[dict]:
        """``<run>/metrics.jsonl``: one row per strategy and generation (generation 1 repeated per strategy)."""
        rows = []
        for st in self.plan:
            if st.name != "score" or not storage.exists(st.outputs["metrics"], self.so):
                continue
            m = json.loads(storage.read_bytes(st.outputs["metrics"], self.so))
            for name in (shares_generation_one(self.cfg) if st.strategy == SHARED else [st.strategy]):
                rows.append({**m, "strategy": name, "shared": st.strategy == SHARED})
        storage.write_bytes(self.L.metrics_log, "".join(json.dumps(r) + "\n" for r in rows).encode(), self.so)
        return rows


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def summary_table(rows: list[dict], space: str = "pixel") -> str:
    """The last generation's figures per strategy, as a fixed-width table."""
    last = {}
    for r in rows:
        if r["strategy"] not in last or r["generation"] > last[r["strategy"]]["generation"]:
            last[r["strategy"]] = r
    cols = ("entropy", "gs", "memorization", "memorization_real_scale", "fd", "precision", "recall")
    heads = {"memorization": "mem d1/d2", "memorization_real_scale": "mem d1<rho"}
    out = [f"{'strategy':<12} {'gen':>3} " + " ".join(f"{heads.get(c, c):>12}" for c in cols) + f" {'real share':>10}"]
    for name, r in last.items():
        f = r["spaces"].get(space, {})
        out.append(f"{name:<12} {r['generation']:>3} " + " ".join(f"{f.get(c, float('nan')):>12.4g}" for c in cols)
                   + f" {r['real_share']:>10.2f}")
    return "\n".join(out)
