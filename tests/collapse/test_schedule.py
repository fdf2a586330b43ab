"""Which stages start when (collapse.schedule): the plan's DAG under the cluster's CPUs and GPUs."""
from collapse.plan import plan
from collapse.schedule import demand, overlaps, ready, runner_resources, startable
from jobs.presets import load_config

THREE = ("strategies=[{name: vanilla, kind: vanilla}, {name: greedy, kind: greedy, pool_factor: 2, features: pixel},"
         " {name: tdf, kind: tdf, pool_factor: 2, features: pixel, tau0: 20.0, alpha: 0.9}]")


def _plan(*overrides):
    return plan(load_config("tiny", ["run.run_dir=/tmp/x", THREE, *overrides]))


def _finish_until(p, key):
    """Every stage before ``key`` in plan order, as finished."""
    keys = [s.key for s in p]
    return set(keys[:keys.index(key)])


def test_ready_follows_after():
    p = _plan()
    assert [s.key for s in ready(p, set(), set())] == ["ingest"]
    # after ingest: the classifier and D_1 need only it
    assert [s.key for s in ready(p, {"ingest"}, set())] == ["classifier", "shared/gen-001/train-set"]
    # once generation 1 is featurized, its score and every strategy's selection are ready together
    done = _finish_until(p, "shared/gen-001/score")
    assert [s.key for s in ready(p, done, set())] == ["shared/gen-001/score", "vanilla/gen-001/select",
                                                      "greedy/gen-001/select", "tdf/gen-001/select"]
    # then each chain's training, independently of the others
    done |= {"shared/gen-001/score", "vanilla/gen-001/select", "tdf/gen-001/select"}
    assert [s.key for s in ready(p, done, set())] == ["greedy/gen-001/select", "vanilla/gen-002/train",
                                                      "tdf/gen-002/train"]
    assert [s.key for s in ready(p, done, {"vanilla/gen-002/train"})] == ["greedy/gen-001/select", "tdf/gen-002/train"]


def test_every_stage_becomes_ready_exactly_once_in_a_topological_order():
    p = _plan("run.generations=3")
    finished, order = set(), []
    while len(finished) < len(p):
        nxt = ready(p, finished, set())
        assert nxt, f"stuck with {len(p) - len(finished)} stages left"
        order.append(nxt[0].key)
        finished.add(nxt[0].key)
    assert sorted(order) == sorted(s.key for s in p)
    pos = {k: i for i, k in enumerate(order)}
    assert all(pos[a] < pos[s.key] for s in p for a in s.after)


def test_demand_counts_workers_actors_and_shards():
    p = _plan("resources.train_workers=2", "resources.train_cpus=3", "resources.train_gpus=1",
              "resources.sampler_min_actors=2", "resources.sampler_max_actors=4", "resources.sampler_cpus=2",
              "resources.scorer_shards=3", "resources.scorer_cpus=2")
    assert demand(p["vanilla/gen-002/train"]) == {"CPU": 6.0, "GPU": 2.0}
    assert demand(p["vanilla/gen-002/sample"]) == {"CPU": 4.0, "GPU": 0.0}   # its minimum: it may grow later
    assert demand(p["vanilla/gen-002/score"]) == {"CPU": 8.0, "GPU": 0.0}   # its runner and 3 shard actors
    assert demand(p["greedy/gen-001/select"]) == {"CPU": 8.0, "GPU": 0.0}
    assert demand(p["ingest"]) == {"CPU": 1.0, "GPU": 0.0}                   # the runner's own process
    assert demand(_plan("resources.scorer_gpus=1")["vanilla/gen-002/score"]) == {"CPU": 1.0, "GPU": 1.0}
    # the runner holds what the stage computes in it: kNN and selection on the scorer's GPU
    assert runner_resources(p["vanilla/gen-002/score"]) == (0.0, 0.0)     # its CPUs are in its demand
    assert runner_resources(_plan("resources.scorer_gpus=1")["greedy/gen-001/select"]) == (0.0, 1.0)
    assert runner_resources(p["vanilla/gen-002/train"]) == (0.0, 0.0)     # its work is in Ray Train's workers


def test_startable_fills_the_cluster_and_no_more():
    p = _plan("resources.train_cpus=2")
    done = _finish_until(p, "vanilla/gen-002/train") | {"greedy/gen-001/select", "tdf/gen-001/select"}
    trains = ["vanilla/gen-002/train", "greedy/gen-002/train", "tdf/gen-002/train"]
    assert [s.key for s in startable(p, done, {}, {"CPU": 6, "GPU": 0})] == trains
    assert [s.key for s in startable(p, done, {}, {"CPU": 5, "GPU": 0})] == trains[:2]
    assert [s.key for s in startable(p, done, {}, {"CPU": 6, "GPU": 0}, cap=1)] == trains[:1]
    running = {trains[0]: {"CPU": 2.0, "GPU": 0.0}}
    assert [s.key for s in startable(p, done, running, {"CPU": 4, "GPU": 0})] == trains[1:2]
    assert startable(p, done, running, {"CPU": 3, "GPU": 0}) == []


def test_a_stage_larger_than_the_cluster_starts_alone_and_a_smaller_one_may_pass_it():
    p = _plan("resources.train_gpus=1")  # no GPU in the cluster: trainings start one at a time
    done = _finish_until(p, "vanilla/gen-002/train") | {"greedy/gen-001/select", "tdf/gen-001/select"}
    assert [s.key for s in startable(p, done, {}, {"CPU": 8, "GPU": 0})] == ["vanilla/gen-002/train"]
    running = {"vanilla/gen-002/train": {"CPU": 1.0, "GPU": 1.0}}
    assert startable(p, done, running, {"CPU": 8, "GPU": 0}) == []
    # backfill: with the score of generation 1 not yet run, it passes the trainings waiting for a GPU
    done.discard("shared/gen-001/score")
    assert [s.key for s in startable(p, done, running, {"CPU": 8, "GPU": 0})] == ["shared/gen-001/score"]


def test_overlaps_of_stage_records():
    recs = [{"key": "a", "started_at": 0.0, "ended_at": 10.0}, {"key": "b", "started_at": 5.0, "ended_at": 6.0},
            {"key": "c", "started_at": 10.0, "ended_at": 12.0}, {"key": "d", "started_at": 11.0, "ended_at": 13.0},
            {"key": "old"}]  # a record of an older version: no times
    assert overlaps(recs) == [("a", "b"), ("c", "d")]


def test_knn_and_selection_shards():
    from collapse.schedule import knn_shards, selection_shards
    assert knn_shards(1000, {"shards": 1}) == 1
    assert knn_shards(1000, {"shards": 3, "shard_rows": 200_000}) == 3
    assert knn_shards(1000, {"shards": 1, "shard_rows": 300}) == 4       # ceil(1000 / 300) actors at least
    assert knn_shards(2, {"shards": 8}) == 2                              # never more actors than rows
    assert selection_shards(100, "greedy", {"shards": 4}) == 4
    assert selection_shards(3, "tdf", {"shards": 4}) == 3
    assert selection_shards(100, "random", {"shards": 4}) == 1            # random measures no distance
