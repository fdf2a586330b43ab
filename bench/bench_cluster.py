"""Engines against bare loops, in one run: the sampler actor pool vs a bare diffusers sampling loop,
and DeepSpeed training through Ray Train vs a plain single-process torch loop.

Usage: python bench/bench_cluster.py [--images 512] [--steps 60] [--preset tiny]
Targets (issue 4): the pool loses under 10% to the bare loop per core; Ray Train + DeepSpeed on one
worker keeps at least 85% of the plain loop's steps/s. Steady-state rates exclude start-up (Ray
actors, the worker group), which is printed separately.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from cluster.runtime import connect
from cluster.sample import SampleSpec, sample_pool
from cluster.train import TrainSpec, train_model
from collapse import diffusion
from collapse.data import directories
from collapse.data.importers import ingest
from collapse.data.samples import open_sample_set
from collapse.seeding import sample_seeds


def bare_sampling(unet, scheduler, n, steps, batch) -> float:
    torch.set_num_threads(1)
    t = time.perf_counter()
    diffusion.sample(unet, scheduler, sample_seeds(0, 1, range(n)), method="ddim", steps=steps, batch_size=batch)
    return n / (time.perf_counter() - t)


def plain_training(preset, images, steps, batch, threads) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet, scheduler = diffusion.build(preset)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    x_all = diffusion.images_to_tensor(images)
    gen = torch.Generator().manual_seed(0)
    t = None
    for step in range(steps + 5):
        if step == 5:
            t = time.perf_counter()  # as the engine's rate, after a warm-up
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        ts, noise = diffusion.draw_timesteps_and_noise(scheduler, x_all[idx].shape, gen)
        loss = diffusion.diffusion_loss(unet, x_all[idx], ts, noise, scheduler)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
    return steps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    connect(num_cpus=os.cpu_count() or 2)
    work = tempfile.mkdtemp(prefix="bench-cluster-")
    torch.manual_seed(0)
    unet, scheduler = diffusion.build(args.preset)
    diffusion.save_model(unet, scheduler, f"{work}/m")
    directories.upload_directory(f"{work}/m", f"{work}/model")

    # -- sampling: the same images by both paths (per-sample seeds), so the work is identical
    bare = bare_sampling(unet, scheduler, args.images, args.sample_steps, args.batch)
    pools = {}
    for actors in (1, 2):
        spec = SampleSpec(count=args.images, run_seed=0, generation=1, steps=args.sample_steps,
                          shard_size=args.images // 4, batch_size=args.batch)
        t = time.perf_counter()
        m = sample_pool(f"{work}/model", f"{work}/pool-{actors}", spec, min_actors=actors, max_actors=actors,
                        progress=lambda *_: None)
        pools[actors] = (args.images / (time.perf_counter() - t), m["made"] / m["busy_seconds"])
    same = [r["sha256"] for r in open_sample_set(f"{work}/pool-1").shards] == \
           [r["sha256"] for r in open_sample_set(f"{work}/pool-2").shards]
    print(f"sampling {args.images} images, {args.preset}, DDIM-{args.sample_steps}, batch {args.batch} "
          f"(pools identical for 1 and 2 actors: {same})")
    print(f"  bare loop, 1 thread           {bare:8.1f} images/s")
    for a, (wall, busy) in pools.items():
        print(f"  actor pool, {a} actor(s)        {busy:8.1f} images/s per actor   vs bare = {busy / bare:.2f}   "
              f"(stage wall incl. start-up: {wall:.1f} images/s, {wall / a / bare:.2f} of bare per core)")

    # -- training: Ray Train + DeepSpeed (1 worker, 1 thread) against a plain torch loop (1 thread)
    ingest("fashion-mnist", f"{work}/data", size=16, n=2048, shard_size=256, progress=lambda *_: None)
    _, images, _ = open_sample_set(f"{work}/data/train").load()
    plain = plain_training(args.preset, images, args.steps, args.batch, threads=1)
    spec = TrainSpec(preset=args.preset, steps=args.steps + 5, batch_size=args.batch, warmup_steps=5,
                     log_every=args.steps + 5)
    t = time.perf_counter()
    m = train_model(f"{work}/data/train", f"{work}/trained", spec, num_workers=1, cpus_per_worker=1,
                    progress=lambda *_: None)
    wall = time.perf_counter() - t
    engine = m["extra"]["steps_per_s"]
    print(f"training {args.preset} at batch {args.batch}, {args.steps} steps")
    print(f"  plain torch loop, 1 thread    {plain:8.2f} steps/s")
    print(f"  Ray Train + DeepSpeed, 1 wkr  {engine:8.2f} steps/s   ratio = {engine / plain:.2f} "
          f"(steady state; stage wall {wall:.0f} s incl. worker-group start-up)")


if __name__ == "__main__":
    main()
