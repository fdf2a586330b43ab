"""Selection at scale (issue 11, part 1): greedy and tdf over a large pool split across Ray actors
(cluster.selection) against single-process ``collapse.selection.select``, in one run: identical picks,
and the ratio of the two wall times (start-up of the actors included, and printed apart).

Usage: python bench/bench_scale.py [--candidates 1000000] [--dim 128] [--n 200] [--shards 2]
The target is identical picks; the ratio says what the round trips cost where the shards share the
driver's machine (on a cluster each shard is a node's cores or a GPU, and the ratio is the speed-up).
Parts 2 and 3 of issue 11 (the driver's peak memory while a loop scores and selects, concurrent
chains against sequential ones) are not measured here yet.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--n", type=int, default=200, help="items to keep")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--tau0", type=float, default=14.0, help="tdf's initial radius (features ~ N(0, 1) per dim)")
    args = ap.parse_args(argv)

    import ray

    from cluster.runtime import connect
    from cluster.selection import ShardedState, sharded_select
    from collapse.selection import select

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.candidates, args.dim)).astype(np.float32)
    print(f"pool: {args.candidates} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MiB), keep {args.n}, "
          f"{args.shards} shards")
    connect(num_cpus=max(args.shards, 2), log_to_driver=False)
    try:
        t = time.perf_counter()
        ShardedState(x, args.shards, 16384).close()
        startup = time.perf_counter() - t
        print(f"start-up of {args.shards} shard actors holding the pool: {startup:.1f} s")
        for strategy, params in (("greedy", {}), ("tdf", {"tau0": args.tau0, "alpha": 0.9})):
            t = time.perf_counter()
            one = select(x, args.n, strategy, seed=1, device="cpu", **params)
            t_one = time.perf_counter() - t
            t = time.perf_counter()
            many = sharded_select(x, args.n, strategy, seed=1, shards=args.shards, **params)
            t_many = time.perf_counter() - t
            same = (one.indices.tolist() == many.indices.tolist() and one.nearest.tolist() == many.nearest.tolist()
                    and np.array_equal(one.distance, many.distance))
            print(f"{strategy:6}: single process {t_one:7.1f} s, {args.shards} shards {t_many:7.1f} s "
                  f"(ratio sharded / single {t_many / t_one:.2f}); identical picks: {same}")
            if not same:
                return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
