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
redoes only what is missing. As it commits a score or train stage, the driver sends its figures to
the experiment trackers of the config section ``trackers`` (cluster.trackers; none by default).
"""
from __future__ import annotations

import json
import time

from cluster.runtime import lost_to_the_cluster
from cluster.stages import MAX_REBUILD_DEPTH, rebuild, run_stage
from cluster.stages.context import StageContext
from cluster.trackers import open_trackers
from collapse import config
from collapse.config_checks import check_run_extractors
from collapse.data import manifest, storage
from collapse.errors import ConfigError, DamagedError, find_damage
from collapse.plan import SHARED, stage_strategies
from collapse.progress import ETA
from collapse.report import render_report


class Loop:
    """Runs the stages of one run directory; ``lease``: the driver's (collapse.data.lease), confirmed
    before every commit, or None."""

    def __init__(self, cfg: config.RunConfig, progress=print, lease=None):
        self.ctx = StageContext(cfg, say=progress, lease=lease)
        self.cfg, self.plan, self.layout, self.say = cfg, self.ctx.plan, self.ctx.layout, progress
        self.trackers = None   # cluster.trackers.Trackers while run() runs stages
        self.stops = {}        # select stage key -> its committed stop decision or None (Loop.stopped)
        self._pending = None   # (stages left, stages to run) once pending() has checked the run directory

    def set_progress(self, say) -> None:
        """Where the loop and its stages say what they do from now on."""
        self.say = self.ctx.say = say

    def pending(self, extend: bool = False) -> list:
        """Check the config against the run directory's (a ConfigError names what differs), then the
        stages still to run. Needs no Ray: a driver asks before it starts one, so that another config is
        refused, and a finished run found finished, in seconds."""
        if self._pending is None:
            self.ctx.guard()
            self.check_config(extend)
            left = [s for s in self.plan if not self.ctx.done(s)]
            self._pending = left, [s for s in left if not self.stopped(s)]
        return self._pending[1]

    def run(self, extend: bool = False) -> list[dict]:
        """Check the config against the run directory's, then run every stage not yet committed."""
        todo = list(self.pending(extend))
        left, self._pending = self._pending[0], None
        if not todo:
            ended = f"; {len(left)} not run: chains ended by run.stop_chain_below_rho" if left else ""
            self.say(f"run {self.layout.root} is already complete ({len(self.plan)} stages{ended}); nothing to do")
        else:
            check_run_extractors(self.cfg)   # every extractor's weights are here, before any stage
            self.trackers = open_trackers(self.cfg, self.say, self.ctx.storage_options)
        try:
            if todo and self.cfg.resources.max_parallel_stages != 1:
                self.run_side_by_side(todo)
            else:
                self.run_in_order(todo)
        finally:
            if self.trackers is not None:
                self.trackers.close()
                self.trackers = None
        self.ctx.guard()
        rows = self.write_metrics_log()
        self.say(f"report: {render_report([self.layout.root], storage_options=self.ctx.storage_options)}")
        return rows

    def run_stage(self, stage) -> None:
        run_stage(self.ctx, stage)

    def stopped(self, stage) -> str | None:
        """Why ``stage`` is not run: its strategy's chain ended at an earlier committed select stage
        (run.stop_chain_below_rho; cluster/stages/select.py writes the decision in its selection
        manifest); None when it runs. A stage of generation n + 1 and later of a chain stopped at
        generation n is never run, nor committed, so a resubmitted run skips it as well."""
        if stage.strategy == SHARED or self.cfg.run.stop_chain_below_rho <= 0:
            return None
        for sel in self.plan:
            if sel.name == "select" and sel.strategy == stage.strategy and sel.generation < stage.generation:
                if sel.key not in self.stops and self.ctx.done(sel):   # a committed decision does not change
                    self.stops[sel.key] = manifest.read_manifest(sel.outputs["selection"],
                                                                 self.ctx.storage_options).get("stop")
                if self.stops.get(sel.key):
                    return self.stops[sel.key]["why"]
        return None

    def drop_stopped(self, stage, todo: list) -> None:
        """After a select stage commits: the stages its decision stops leave ``todo``, said once."""
        if stage.name != "select":
            return
        gone = [s for s in todo if s.strategy == stage.strategy and s.generation > stage.generation and self.stopped(s)]
        if gone:
            todo[:] = [s for s in todo if s not in gone]
            self.say(f"{stage.strategy}: the chain ends; not run: {', '.join(s.key for s in gone)}")

    def commit(self, stage, wall: float, started: float) -> None:
        """The stage's record, then (a score or train stage) its figures to the trackers."""
        self.ctx.commit(stage, wall, started)
        if self.trackers is not None:
            self.trackers.log_stage(stage, stage_strategies(self.cfg, stage), self.ctx.storage_options)

    def run_in_order(self, todo: list) -> None:
        """One stage after another, in this process (resources.max_parallel_stages = 1)."""
        eta, t_run, todo = ETA(), time.perf_counter(), list(todo)
        for i, stage in enumerate(self.plan, 1):
            if stage in todo:
                self.say(f"[{i}/{len(self.plan)}] {stage.key} ...")
                t0, started = time.perf_counter(), time.time()
                self.clear_half_writes(stage)
                self.run_stage(stage)
                wall = time.perf_counter() - t0
                self.commit(stage, wall, started)
                eta.done(stage, wall)
                self.drop_stopped(stage, todo)
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
        damaged, rebuilt = {}, {}  # part URL -> (set URL, the first stage that found it); part URL -> rebuilds
        eta, t_start = ETA(side_by_side=True, lanes=cap), time.perf_counter()

        def launch(stage, attempt: int = 0) -> None:
            self.clear_half_writes(stage)
            shape = runner_resources(stage)
            free = idle.setdefault(shape, [])
            runner = free.pop() if free else start_runner(self.cfg, self.ctx.storage_options, *shape)
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
                if failure is None and damaged and not running:
                    # a damaged input, found by one or more stages side by side: rebuilt here, once, when no
                    # stage that may read it is running; the stages that found it start again after
                    try:
                        self.rebuild_damaged(damaged, rebuilt)
                    except Exception as e:  # noqa: BLE001 - it cannot be rebuilt: the run's error
                        failure = e
                    damaged.clear()
                if failure is None and not damaged:
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
                        cause = e.cause if isinstance(e.cause, BaseException) else e
                        found = find_damage(cause)
                        if found is not None and failure is None:
                            damaged.setdefault(found[1], (found[0], stage))
                        else:
                            failure = failure or cause
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
                    self.drop_stopped(stage, todo)
                    left = [s for s in todo if s.key not in finished]
                    self.say(f"[{number[stage.key]}/{len(self.plan)}] {stage.key} done in {result['wall']:.1f} s; "
                             f"{eta.say(left, time.perf_counter() - t_start)}")
        finally:
            for runner in [r for rs in idle.values() for r in rs] + [r for _, r, _ in running.values()]:
                ray.kill(runner)
        if failure is not None:
            raise failure

    def rebuild_damaged(self, damaged: dict, rebuilt: dict) -> None:
        """Rebuild each damaged part (cluster.stages.rebuild) in this process, once however many stages
        found it; a part found damaged again after MAX_REBUILD_DEPTH rebuilds is the run's error."""
        for part, (set_url, reader) in damaged.items():
            rebuilt[part] = rebuilt.get(part, 0) + 1
            if rebuilt[part] > MAX_REBUILD_DEPTH:
                raise DamagedError(part, set_url, f"still damaged after {MAX_REBUILD_DEPTH} rebuilds")
            rebuild(self.ctx, set_url, part, reader=reader, depth=0)

    def clear_half_writes(self, stage) -> None:
        """A stage that (re)starts first aborts the multipart uploads a killed run left under its outputs
        (one driver per run, by the lease: none of them is still being written)."""
        for out in stage.outputs.values():
            keys = storage.abort_multipart_uploads(out, self.ctx.storage_options)
            if keys:
                self.say(f"cleared {len(keys)} unfinished multipart upload(s) under {out}: {', '.join(keys[:3])}"
                         + (" ..." if len(keys) > 3 else ""))

    def check_config(self, extend: bool) -> None:
        """Save the resolved config; refuse a different one against an existing run (say what differs)."""
        new, options = config.to_dict(self.cfg), self.ctx.storage_options
        try:
            old = json.loads(storage.read_bytes(self.layout.config + ".json", options))
        except FileNotFoundError:
            old = None
        changes = config.diff(old, new) if old is not None else []
        if changes and not (extend and config.extendable(old, new)):
            hint = " (pass --extend to add generations)" if config.extendable(old, new) else ""
            raise ConfigError(f"{self.layout.root} holds a run with another config{hint}:\n  " + "\n  ".join(changes))
        storage.write_bytes(self.layout.config, config.to_yaml(self.cfg).encode(), options)
        storage.write_bytes(self.layout.config + ".json", json.dumps(new, indent=1).encode(), options)

    def write_metrics_log(self) -> list[dict]:
        """``<run>/metrics.jsonl``: one row per strategy and generation (generation 1 repeated per strategy)."""
        rows, options = [], self.ctx.storage_options
        for stage in self.plan:
            if stage.name != "score" or not storage.exists(stage.outputs["metrics"], options):
                continue
            figures = json.loads(storage.read_bytes(stage.outputs["metrics"], options))
            for name in stage_strategies(self.cfg, stage):
                rows.append({**figures, "strategy": name, "shared": stage.strategy == SHARED})
        storage.write_bytes(self.layout.metrics_log, "".join(json.dumps(r) + "\n" for r in rows).encode(), options)
        return rows
