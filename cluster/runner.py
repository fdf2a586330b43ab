"""The stage runner: an actor that runs one stage of a plan at a time, for the loop's scheduler.

Stages that run side by side each run in their own process: Ray Data keeps one global
``DataContext`` per process and Ray Train starts one controller per ``fit()`` call, so stages in
threads of one driver would share what they must not. A runner holds a
:class:`cluster.stages.context.StageContext` of the run's config without the lease, and runs
stages with :func:`cluster.stages.run_stage`: the driver (cluster.loop) holds the lease, clears
half-writes and commits every stage record; the runner only computes and writes the stage's outputs. Its progress lines are
kept until the driver collects them (``drain``), so that they reach the driver's progress callback.

A runner asks Ray for the GPUs of the work its stage does in its own process
(``collapse.schedule.runner_resources``: the kNN and selection of score and select on the
scorer's GPU), and for no CPU (the scheduler counts the CPUs it uses). The driver reuses idle
runners without resources and ends the others when their stage ends (an idle runner must not hold
a GPU that a training's workers wait for). Runners prefer the driver's node, where a local run
directory lives.
"""
from __future__ import annotations

import threading
import time


class StageRunner:
    def __init__(self, cfg, storage_options: dict | None):
        from cluster.stages.context import StageContext
        self.lines: list[str] = []
        self.lock = threading.Lock()
        # the driver's storage options: its environment does not reach this actor
        # a damaged input goes back to the driver, which rebuilds it once (cluster.loop.run_side_by_side)
        self.ctx = StageContext(cfg, say=self.say, storage_options=storage_options, rebuilds=False)

    def say(self, line: str) -> None:
        with self.lock:
            self.lines.append(str(line))

    def drain(self) -> list[str]:
        with self.lock:
            out, self.lines = self.lines, []
        return out

    def run(self, key: str) -> dict:
        """Run the stage ``key`` (its retries and rebuilds included); its start (UTC) and wall seconds."""
        from cluster.stages import run_stage
        stage = self.ctx.plan[key]
        started, t0 = time.time(), time.perf_counter()
        run_stage(self.ctx, stage)
        return {"started": started, "wall": time.perf_counter() - t0}


def start_runner(cfg, storage_options: dict | None, cpus: float = 0.0, gpus: float = 0.0):
    """A new runner actor holding ``cpus`` and ``gpus`` (collapse.schedule.runner_resources), on
    this process's node when it fits there, with the run's storage options."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=cpus, num_gpus=gpus or None, max_concurrency=2, max_restarts=0)(StageRunner)
    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote(
        cfg, storage_options)
