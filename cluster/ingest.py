"""Ingest with Ray tasks, one per output shard: ``collapse.data.importers.ingest``'s shards, in parallel.

The driver plans the import (``plan_ingest``: options, what is already there, the seeded draw of
source indices) and cuts each split into runs of ``shard_size`` indices, as ``write_sample_set``
does. A task per run opens the source itself (a WebDataset source: only the entries of its run, so
it reads the one or two source shards that hold them), resizes, converts and writes that shard. A
shard a killed import already completed with the same options is kept. The driver checks that all
shards have one image shape and commits the manifest, so no process holds more than a shard; the
bytes are those of the in-process ingest (a test compares them).
"""
from __future__ import annotations

from collapse.data import manifest
from collapse.data import storage
from collapse.data.importers import IngestJob, _key, ingest_samples, open_source, plan_ingest, webdataset_entries
from collapse.data.samples import commit_sample_set, completed_shard, write_shard
from collapse.errors import CollapseError, DataError


def _write_run(spec: str, split: str, url: str, split_name: str, run: list[int], index: int, entries: dict | None,
               labelled: bool, size, mode, chash: str, storage_options) -> dict:
    if entries is not None:
        src = webdataset_entries(entries, labelled, storage_options)
    else:
        train_src, test_src = open_source(spec, storage_options)
        src = test_src if split_name == "test" else train_src
    job = IngestJob(split, url, src, run, split_name, False)
    samples = list(ingest_samples(spec, job, run, size=size, mode=mode))
    return write_shard(url, index, samples, config_hash=chash, storage_options=storage_options)


def ingest_tasks(spec: str, out_url: str, *, size: int | None = None, mode: str | None = None, n: int | None = None,
                 holdout: int = 0, seed: int = 0, shard_size: int = 1000, overwrite: bool = False,
                 storage_options: dict | None = None, cpus_per_task: float = 1.0, progress=print) -> dict:
    """``ingest`` (same arguments, same result) with a Ray task per output shard."""
    import ray
    if shard_size < 1:
        raise DataError(f"shard size {shard_size}: expected at least 1 sample per shard")
    plan = plan_ingest(spec, out_url, size=size, mode=mode, n=n, holdout=holdout, seed=seed, overwrite=overwrite,
                       storage_options=storage_options)
    if not plan.jobs:
        progress(f"ingest: {out_url} already holds this import (config {plan.chash}); nothing to do")
        return plan.done
    write = ray.remote(_write_run).options(num_cpus=cpus_per_task)
    committed = dict(plan.done)
    for job in plan.jobs:
        if job.overwrite and manifest.try_read_manifest(job.url, storage_options) is not None:
            storage.remove(manifest.manifest_url(job.url), storage_options)  # un-commit before any shard changes
        runs = [[int(i) for i in job.idx[a:a + shard_size]] for a in range(0, len(job.idx), shard_size)]
        labelled = job.src.labels is not None
        records, pending = [None] * len(runs), {}
        for k, run in enumerate(runs):
            done = None if job.overwrite else completed_shard(job.url, k, plan.chash, storage_options)
            if done is not None and done["keys"] == [_key(job.src.name, job.split_name, i) for i in run]:
                records[k] = done
                continue
            entries = {i: job.src.locate(i) for i in run} if job.src.locate else None
            pending[k] = write.remote(spec, job.split, job.url, job.split_name, run, k, entries, labelled, size, mode,
                                      plan.chash, storage_options)
        progress(f"ingest {job.split}: {len(job.idx)} images in {len(runs)} shards by {len(pending)} tasks "
                 f"({len(runs) - len(pending)} already written)")
        try:
            for k, rec in zip(pending, ray.get(list(pending.values()))):
                records[k] = rec
        except ray.exceptions.RayTaskError as e:  # a bad image, an unreadable shard: the input's error
            if isinstance(e.cause, CollapseError):
                raise e.cause from None
            raise
        first = tuple(records[0]["shape"])
        odd = next((r for r in records if tuple(r["shape"]) != first), None)
        if odd is not None:
            raise DataError(f"{spec} image {odd['keys'][0]} (shard {odd['name']} of {job.url}): image shape "
                            f"{tuple(odd['shape'])}, expected {first} like the first image (pass --size to resize "
                            "every image)")
        committed[job.split] = commit_sample_set(job.url, records, config_hash=plan.chash,
                                                 extra={"ingest": plan.options}, storage_options=storage_options)
        progress(f"ingest: wrote {committed[job.split]['count']} images {tuple(first)} to {job.url}")
    return {k: committed[k] for k in ("train", "holdout") if k in committed}
