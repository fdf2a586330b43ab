"""Which stages of a plan may start now: the plan as a DAG (``Stage.after``), under a resource budget.

Pure: no storage, no Ray. ``cluster.loop`` asks :func:`startable` each time a stage finishes.

A stage is *ready* when every stage in its ``after`` is finished (committed, in this run or an
earlier one). Ready stages start in plan order (earlier generations first, so chains advance side by
side) while the CPUs and GPUs their resources declare (:func:`demand`) fit in what the running
stages leave of the cluster's, and fewer than ``cap`` stages run (0: no cap). A stage that asks for
more than the whole cluster still starts when nothing else runs (Ray then waits for, or an
autoscaler adds, the nodes it needs): a run never stalls on its own declaration.
"""
from __future__ import annotations

RESOURCES = ("CPU", "GPU")


# Stages whose work runs in the stage's own process (kNN and selection, the classifier, copying
# images): demand counts the stage's cpus for its runner, which asks Ray for its gpus. The others
# only start workers or actors.
IN_RUNNER = ("ingest", "classifier", "train-set", "score", "select")


def runner_resources(stage) -> tuple[float, float]:
    """(CPUs, GPUs) that the process running ``stage`` (cluster.runner) asks Ray for: the stage's
    GPUs for the stages of IN_RUNNER (the kNN and the greedy distances run there), else none. Its
    CPUs are not asked for: :func:`demand` counts them, so no other stage is started on them, and a
    runner that had to be placed (and ended) with a CPU of its own costs seconds per stage, and
    kept the CPUs of training workers busy while Ray Train waited for them (measured)."""
    r = stage.resources
    return (0.0, float(r.get("gpus", 0.0))) if stage.name in IN_RUNNER else (0.0, 0.0)


def demand(stage) -> dict[str, float]:
    """The CPUs and GPUs ``stage`` holds while it runs: its minimum of workers or actors, each with
    ``cpus``/``gpus``; for a stage of IN_RUNNER its runner's, plus as many again per actor when it is
    split into ``shards`` actors; and always at least one CPU (the runner gathers and writes)."""
    r = stage.resources
    shards = r.get("shards", 1) if stage.name in ("score", "select") else 1
    count = (1 + (shards if shards > 1 else 0)) if stage.name in IN_RUNNER else r.get("min", 1)
    return {"CPU": max(1.0, count * float(r.get("cpus", 0.0))), "GPU": count * float(r.get("gpus", 0.0))}


def ready(stages, finished: set[str], running: set[str]) -> list:
    """Stages (in the given order) neither finished nor running whose ``after`` are all finished."""
    return [s for s in stages if s.key not in finished and s.key not in running and set(s.after) <= finished]


def startable(stages, finished: set[str], running: dict[str, dict], capacity: dict[str, float],
              cap: int = 0) -> list:
    """The ready stages to start now, in order. ``running``: key -> demand of each running stage;
    ``capacity``: the cluster's CPU and GPU totals; ``cap``: at most this many running (0: none)."""
    used = {k: sum(d.get(k, 0.0) for d in running.values()) for k in RESOURCES}
    count, out = len(running), []
    for s in ready(stages, finished, set(running)):
        if cap and count >= cap:
            break
        need = demand(s)
        if count and any(need[k] and used[k] + need[k] > capacity.get(k, 0.0) + 1e-9 for k in RESOURCES):
            continue  # a later, smaller stage may still fit (the order only ranks the ready ones)
        out.append(s)
        count += 1
        used = {k: used[k] + need[k] for k in RESOURCES}
    return out


def overlaps(records: list[dict]) -> list[tuple[str, str]]:
    """Pairs of stage keys whose [started_at, ended_at] intervals overlap (stage records)."""
    rs = sorted((r for r in records if r.get("started_at") is not None), key=lambda r: r["started_at"])
    pairs = []
    for i, a in enumerate(rs):
        for b in rs[i + 1:]:
            if b["started_at"] >= a["ended_at"]:
                break
            pairs.append((a["key"], b["key"]))
    return pairs


def knn_shards(rows: int, resources: dict) -> int:
    """How many actors the score stage splits D_n's ``rows`` across for its exact nearest neighbours:
    the stage's ``shards``, or more when ``shard_rows`` caps the rows per actor; never more than rows."""
    per_actor = resources.get("shard_rows") or max(rows, 1)
    return min(rows, max(resources.get("shards", 1), -(-rows // per_actor)))


def selection_shards(candidates: int, kind: str, resources: dict) -> int:
    """How many actors a select stage splits its candidates across (cluster.selection): the stage's
    ``shards``, at most one per candidate; 1 for ``random``, which measures no distance."""
    return 1 if kind == "random" else min(candidates, resources.get("shards", 1))
