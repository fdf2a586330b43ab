"""Materializing a subset of sample sets (a training set D_n) with Ray tasks, shard by shard.

``collapse.data.samples.write_subset`` gathers the whole subset in one process. Here no process
holds more than a source shard or an output shard: a task per source shard that holds wanted keys
reads it once and returns, for each output shard it feeds, the samples that go there (one object
each, ``num_returns``); a task per output shard takes its pieces, puts them in the subset's order,
appends each sample's selection decision to its lineage, and writes the shard. The caller's process
then commits the manifest. The bytes equal ``write_subset``'s (same shards, same order, same
lineage: a test compares them). The pieces live in Ray's object store, which spills to disk.
"""
from __future__ import annotations

from collapse.data import manifest
from collapse.data import storage
from collapse.data.samples import SampleSet, annotated, commit_sample_set, plan_subset, write_shard
from collapse.errors import CollapseError, DataError

# A subset of at most this many output shards is written by write_subset in the stage's own process.
IN_PROCESS_SHARDS = 4


def _take(set_url: str, shard: int, wanted: dict, feeds: list[int], storage_options):
    chunks = {o: [] for o in feeds}
    for sample in SampleSet(set_url, storage_options).read_shard(shard):
        o = wanted.get(sample.key)
        if o is not None:
            chunks[o].append(sample)
    out = tuple(chunks[o] for o in feeds)
    return out if len(feeds) > 1 else out[0]


def _write(out_url: str, index: int, keys: list[str], why: dict, storage_options, *chunks) -> dict:
    found = {s.key: s for chunk in chunks for s in chunk}
    return write_shard(out_url, index, [annotated(found[k], why.get(k)) for k in keys],
                       storage_options=storage_options)


def write_subset_tasks(sources: list[SampleSet], keys: list[str], out_url: str, *, why: dict | None = None,
                       shard_size: int = 1000, overwrite: bool = False, storage_options: dict | None = None,
                       cpus_per_task: float = 1.0) -> dict:
    """The set of ``keys`` (from ``sources``) at ``out_url``, written by tasks; returns its manifest.
    ``why``: key -> the decision to append to that sample's lineage (``decisions``)."""
    import ray
    plan = plan_subset(sources, keys, shard_size)
    if manifest.try_read_manifest(out_url, storage_options) is not None:
        if not overwrite:
            raise DataError(f"sample set {out_url!r} already exists (pass overwrite=True to replace it)")
        storage.remove(manifest.manifest_url(out_url), storage_options)  # un-commit before any shard changes
    why = why or {}
    take = ray.remote(_take)
    pieces: list[list] = [[] for _ in plan.shards]
    for r, (url, shard, wanted) in enumerate(plan.reads):
        feeds = plan.feeds(r)
        refs = take.options(num_cpus=cpus_per_task, num_returns=len(feeds)).remote(url, shard, wanted, feeds, storage_options)
        for o, ref in zip(feeds, refs if len(feeds) > 1 else [refs]):
            pieces[o].append(ref)
    write = ray.remote(_write).options(num_cpus=cpus_per_task)
    try:
        records = ray.get([write.remote(out_url, i, list(chunk), {k: why[k] for k in chunk if k in why},
                                        storage_options, *pieces[i]) for i, chunk in enumerate(plan.shards)])
    except ray.exceptions.RayTaskError as e:  # a damaged source shard, say: the stage's error, not Ray's
        if isinstance(e.cause, CollapseError):
            raise e.cause from None
        raise
    return commit_sample_set(out_url, records, storage_options=storage_options)
