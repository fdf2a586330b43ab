"""A subset written by tasks shard by shard (cluster.materialize) is byte for byte write_subset's."""
import json

import numpy as np
import pytest

from cluster.materialize import write_subset_tasks
from collapse.data import manifest as mf
from collapse.data.samples import SampleSet, annotated, plan_subset, write_sample_set, write_subset
from collapse.errors import DamagedError, DataError
from tests.data.helpers import make_samples


@pytest.fixture()
def sources(tmp_path):
    a = write_sample_set(str(tmp_path / "real"), make_samples(60, seed=1, prefix="r"), shard_size=7)
    b = write_sample_set(str(tmp_path / "pool"), make_samples(90, seed=2, source="gen-001", prefix="g"), shard_size=11)
    assert a and b
    return [SampleSet(str(tmp_path / "real")), SampleSet(str(tmp_path / "pool"))]


def _subset(sources, n=70, seed=0):
    keys = [k for s in sources for k in s.keys]
    rng = np.random.default_rng(seed)
    return [keys[i] for i in rng.permutation(len(keys))[:n]]  # scattered over every source shard


def test_the_plan_reads_each_source_shard_once_and_cuts_like_write_subset(sources):
    keys = _subset(sources)
    plan = plan_subset(sources, keys, shard_size=8)
    assert [list(c) for c in plan.shards] == [keys[i:i + 8] for i in range(0, 70, 8)]
    reads = [(url, j) for url, j, _ in plan.reads]
    assert len(reads) == len(set(reads))
    placed = {k: o for _, _, wanted in plan.reads for k, o in wanted.items()}
    assert placed == {k: i // 8 for i, k in enumerate(keys)}
    for r, (url, j, wanted) in enumerate(plan.reads):
        src = next(s for s in sources if s.url == url)
        assert set(wanted) <= set(src.shards[j]["keys"])
        assert plan.feeds(r) == sorted(set(wanted.values()))
    with pytest.raises(DataError, match="keys are in none of"):
        plan_subset(sources, keys + ["nope"], 8)
    with pytest.raises(DataError, match="keys repeat"):
        plan_subset(sources, keys + keys[:1], 8)


def test_tasks_write_the_bytes_of_write_subset(ray_local, sources, tmp_path):
    keys = _subset(sources)
    why = {k: {"strategy": "greedy", "generation": 1, "order": i} for i, k in enumerate(keys) if i % 3}
    want = write_subset(sources, keys, str(tmp_path / "one"), shard_size=8,
                        annotate=lambda s: annotated(s, why.get(s.key)).meta)
    got = write_subset_tasks(sources, keys, str(tmp_path / "tasks"), why=why, shard_size=8)
    assert [r["sha256"] for r in got["shards"]] == [r["sha256"] for r in want["shards"]]
    assert {k: v for k, v in got.items() if k != "shards"} == {k: v for k, v in want.items() if k != "shards"}
    for a, b in zip(got["shards"], want["shards"]):
        assert (tmp_path / "tasks" / a["name"]).read_bytes() == (tmp_path / "one" / b["name"]).read_bytes()
    out = SampleSet(str(tmp_path / "tasks"))
    assert out.keys == keys
    first = next(out.iter_samples([keys[1]]))
    assert first.meta["decisions"] == [why[keys[1]]]


def test_an_existing_set_is_refused_or_replaced_and_a_damaged_source_named(ray_local, sources, tmp_path):
    keys = _subset(sources, n=40)
    out = str(tmp_path / "out")
    write_subset_tasks(sources, keys, out, shard_size=8)
    with pytest.raises(DataError, match="already exists"):
        write_subset_tasks(sources, keys, out, shard_size=8)
    again = write_subset_tasks(sources, keys[::-1], out, shard_size=8, overwrite=True)
    assert SampleSet(out).keys == keys[::-1] and again["count"] == 40
    shard = sources[1].shard_urls[0]
    with open(shard, "r+b") as f:  # a bit flipped at rest in a source shard
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 1]))
    wanted = [k for k in sources[1].shards[0]["keys"]][:3] + keys[:5]
    with pytest.raises(DamagedError) as err:
        write_subset_tasks(sources, wanted, str(tmp_path / "out2"), shard_size=8)
    assert err.value.part_url == shard and err.value.set_url == sources[1].url
    assert mf.try_read_manifest(str(tmp_path / "out2")) is None  # nothing half-written is visible as finished
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["count"] == 40
