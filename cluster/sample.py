"""The sampling stage: an autoscaling Ray Data actor pool turns sample indices into pool shards.

Shard ``j`` of a pool always holds the samples with indices ``[j*S, (j+1)*S)``; sample ``i``'s seed
is ``sample_seed(run_seed, generation, i)``, so its image does not depend on the number of actors,
the batch size, or retries. The stage lists the shards a previous attempt completed (their
sidecars), samples only the missing ones, and commits the pool's manifest last: rerunning after a
crash produces exactly the set an uninterrupted run would have. A finished pool of another hash is
un-committed and sampled again (a longer run's old last generation), unless it was drawn by another
version of the sampler (``SampleSpec.sampler``, guided DDIM): that is refused, since the selections
and models made from it would stay.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from cluster.runtime import map_actor_pool
from collapse.data import manifest as manifests
from collapse.sampler_spec import hashed_fields, sampler_variant
from collapse.data import storage
from collapse.data.samples import commit_sample_set, completed_shard
from collapse.errors import ConfigError, DataError, check_int
from cluster.progress_board import poster
from collapse.progress import ImagesProgress


@dataclass(frozen=True)
class SampleSpec:
    count: int                     # pool size
    run_seed: int
    generation: int                # the generation whose model samples (lineage source gen-NNN)
    method: str = "ddim"           # ddpm (the paper's ancestral sampler) | ddim
    steps: int = 50
    guidance_scale: float = 1.0    # classifier-free guidance, class-conditional models only
    num_classes: int = 0           # > 0: each sample is asked for a class (collapse.classes.assign_labels)
    class_weights: tuple = ()      # () balanced (i mod K); else the class distribution labels are drawn from
    shard_size: int = 1000
    batch_size: int = 64
    batch_invariant: bool = False  # run the network per sample: images independent of batch_size too (slower)
    sampler: str = ""              # guided DDIM: the step's version (collapse.sampler_spec.GUIDED_DDIM), filled
    #                                in by sample_pool when empty; "" for every other sampler (not hashed, as before)


def resolve_sampler(spec: SampleSpec) -> SampleSpec:
    """``spec`` with the version of the step this collapse draws it with (``sampler_variant``); a spec that
    names another version (a pool planned for a step this code no longer takes) is refused."""
    want = sampler_variant(spec.method, spec.guidance_scale)
    if spec.sampler not in ("", want):
        step = repr(want) if want else "diffusers' own step"
        raise ConfigError(f"the sample spec asks for the sampler {spec.sampler!r}, but this collapse draws "
                          f"method={spec.method!r} at guidance_scale={spec.guidance_scale} with {step}: "
                          "plan the stage again with this collapse")
    return dataclasses.replace(spec, sampler=want)


def _described(sampler: str, spec: SampleSpec) -> str:
    if sampler:
        return f"the sampler {sampler!r}"
    if sampler_variant(spec.method, spec.guidance_scale):
        return ("an unversioned guided DDIM step (drawn before the step's version entered the pool's hash; until "
                "1096f3f it kept the raw guided eps beside the clipped x0)")
    return "diffusers' own step"


def pool_hash(spec: SampleSpec, model_files) -> str:
    """The pool's config hash: the spec (class_weights and sampler only when set, so that the pools of
    unguided runs keep the hashes they had before either existed) and the model's files."""
    return manifests.config_hash({"spec": hashed_fields(dataclasses.asdict(spec)), "model": model_files})


class Sampler:
    """Ray Data callable class: loads the model once, then samples whole shards."""

    def __init__(self, model_url: str, pool_url: str, spec: dict, config_hash: str, storage_options=None,
                 threads: int = 1):
        import errno
        import shutil
        import tempfile

        import torch

        from collapse import diffusion
        from collapse.data import directories, storage
        torch.set_num_threads(threads)
        self.spec, self.pool_url, self.model_url = SampleSpec(**spec), pool_url, model_url
        self.config_hash, self.so = config_hash, storage_options
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        local = tempfile.mkdtemp(prefix="collapse-sampler-", dir=storage.spool_dir())
        try:
            directories.download_directory(model_url, local, storage_options)
            self.unet, self.scheduler = diffusion.load_model(local)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise storage.full_spool(e, f"loading {model_url} into a sampler") from e
            raise
        finally:
            shutil.rmtree(local, ignore_errors=True)  # the weights are in memory now; /tmp keeps nothing
        self.unet.to(self.device).eval()

    def __call__(self, batch: dict) -> dict:
        import time
        records, seconds = [], []
        for j in batch["shard"]:
            t = time.perf_counter()
            records.append(json.dumps(self.sample_shard(int(j))))
            seconds.append(time.perf_counter() - t)
        return {"record": records, "seconds": seconds}

    def sample_shard(self, j: int) -> dict:
        import numpy as np

        from collapse import diffusion
        from collapse.classes import assign_labels
        from collapse.data.samples import Sample, write_shard
        from collapse.seeding import sample_seeds
        s = self.spec
        indices = list(range(j * s.shard_size, min(s.count, (j + 1) * s.shard_size)))
        seeds = sample_seeds(s.run_seed, s.generation, indices)
        labels = assign_labels(s.run_seed, s.generation, indices, s.num_classes, s.class_weights) \
            if s.num_classes else None
        images = diffusion.sample(self.unet, self.scheduler, seeds, method=s.method, steps=s.steps,
                                  class_labels=labels, guidance_scale=s.guidance_scale, device=self.device,
                                  batch_size=s.batch_size, batch_invariant=s.batch_invariant)
        if images.shape[-1] == 1:
            images = images[..., 0]  # grey sets store (H, W) images
        source = f"gen-{s.generation:03d}"
        samples = []
        for n, (i, seed) in enumerate(zip(indices, seeds)):
            meta = {"source": source, "model": self.model_url, "seed": int(seed), "index": i}
            if labels is not None:  # the class it was generated for, and how strongly it was guided
                meta.update(label=labels[n], guidance_scale=s.guidance_scale)
            samples.append(Sample(f"{source}-{i:07d}", np.asarray(images[n]), meta))
        return write_shard(self.pool_url, j, samples, config_hash=self.config_hash, storage_options=self.so)


def _shard_count(spec: SampleSpec, j: int) -> int:
    """How many samples shard ``j`` of the pool holds (the last one may be short)."""
    return min(spec.count, (j + 1) * spec.shard_size) - j * spec.shard_size


def sample_pool(model_url: str, pool_url: str, spec: SampleSpec, *, min_actors: int = 1, max_actors: int = 1,
                cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, retries: int = 1, storage_options: dict | None = None,
                progress=print) -> dict:
    """Sample ``spec.count`` images from the model at ``model_url`` into the set at ``pool_url``."""
    check_int(spec.count, "pool count", low=1)
    spec = resolve_sampler(spec)
    model = manifests.read_manifest(model_url, storage_options)  # the model must be finished
    chash = pool_hash(spec, model.get("files"))
    done = manifests.try_read_manifest(pool_url, storage_options)
    if done is not None and done.get("config_hash") == chash:
        progress(f"sample: {pool_url} already holds {done['count']} samples; skipping")
        return done
    if done is not None:
        drawn = done.get("extra", {}).get("sampler", "")
        if drawn != spec.sampler:  # what was made from those images (selections, models) would stay: refuse
            raise DataError(f"{pool_url!r} holds a pool drawn by {_described(drawn, spec)}, and this collapse draws "
                            f"it with {_described(spec.sampler, spec)}: that pool and every later generation made "
                            "from it belong to another sampler. Keep that run as it is and start this one in "
                            "another run directory, or delete the pool and what was made from it (its strategy's "
                            "later generations) to sample it again")
        # other settings or another model (e.g. the old last generation's pool of a longer run): un-commit it,
        # then resample every shard (a shard's sidecar holds the hash it was drawn under: no old one counts)
        progress(f"sample: {pool_url} holds a pool drawn with other settings or another model; sampling it again")
        storage.remove(manifests.manifest_url(pool_url), storage_options)
    n_shards = math.ceil(spec.count / spec.shard_size)
    records = {j: completed_shard(pool_url, j, chash, storage_options) for j in range(n_shards)}
    missing = [j for j, r in records.items() if r is None]
    progress(f"sample: {spec.count} images in {n_shards} shards ({n_shards - len(missing)} already done) "
             f"with {min_actors}..{max_actors} actor(s)")
    busy, made = 0.0, 0  # seconds the actors spent sampling and writing (start-up excluded), images made
    # a line at least every 30 s while the actors sample (collapse.progress)
    sampled = ImagesProgress(f"sample {pool_url}", sum(_shard_count(spec, j) for j in missing), progress,
                             post=poster())
    for attempt in range(1, retries + 2):
        missing = [j for j, r in records.items() if r is None]
        if not missing:
            break
        try:
            rows = map_actor_pool(
                [{"shard": j} for j in missing], Sampler,
                {"model_url": model_url, "pool_url": pool_url, "spec": dataclasses.asdict(spec), "config_hash": chash,
                 "storage_options": storage_options, "threads": max(1, int(cpus_per_actor))},
                min_actors=min_actors, max_actors=max_actors, cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                on_row=lambda row: sampled.add(len(json.loads(row["record"])["keys"])))
        except Exception as e:  # a lost actor or node: what was written stays, the rest is retried
            if attempt > retries:
                raise
            progress(f"sample: attempt {attempt} failed ({type(e).__name__}); retrying the missing shards")
            records = {j: r or completed_shard(pool_url, j, chash, storage_options) for j, r in records.items()}
            continue
        for row in rows:
            record = json.loads(row["record"])
            records[int(record["name"][6:12])] = record
            busy += float(row["seconds"])
            made += len(record["keys"])
    manifest = commit_sample_set(pool_url, [records[j] for j in range(n_shards)], config_hash=chash,
                                 extra={"model": model_url, "generation": spec.generation, "method": spec.method,
                                        "steps": spec.steps, **({"sampler": spec.sampler} if spec.sampler else {})},
                                 storage_options=storage_options)
    if busy:
        progress(f"sample: {made} images made, {made / busy:.1f} images/s per actor while sampling")
    return {**manifest, "busy_seconds": busy, "made": made}  # reported, not stored
