"""Issue 11 at scale, each part a ratio measured in the same run.

Part 1: greedy and tdf over a large pool split across Ray actors (cluster.selection) against
single-process ``collapse.selection.select``: identical picks, and the ratio of the two wall times
(start-up of the actors included, and printed apart). The ratio says what the round trips cost where
the shards share the driver's machine (on a cluster each shard is a node's cores or a GPU).

Part 3: the wall time of a 3-strategy tiny run whose stages run side by side (the default) against
the same run forced one stage after another (resources.max_parallel_stages=1), both on a simulated
3-node loopback cluster (ray.cluster_utils.Cluster: a head without CPUs, two nodes of 2 CPUs), and
whether their selections and metrics agree. Here the nodes share two cores, so what overlapping
gains is mostly the start-up of workers and actors; on a cluster it is the nodes' compute.

Part 2: the memory of a loop that scores and selects over a pool of 2x10^5 images (16x16 grey,
N = 1000, greedy with k = 200, pixel space), against the size of that pool's features (2x10^5 x 256
float32): the driver's peak RSS growth while the stages run (it holds URLs and records only), and the
peak RSS of the stage runners, where the featurize, score and select stages hold their arrays.

Usage: python bench/bench_scale.py [--parts 1,2,3] [--candidates 1000000] [--dim 128] [--n 200] [--shards 2]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--n", type=int, default=200, help="items to keep")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--tau0", type=float, default=14.0, help="tdf's initial radius (features ~ N(0, 1) per dim)")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run, comma-separated")
    args = ap.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}
    if 1 in parts and part1(args):
        return 1
    if 2 in parts and part2():
        return 1
    if 3 in parts and part3():
        return 1
    return 0


def part1(args) -> int:
    import ray

    from cluster.runtime import connect
    from cluster.selection import ShardedState, sharded_select
    from collapse.selection import select

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.candidates, args.dim)).astype(np.float32)
    print(f"part 1: pool {args.candidates} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MiB), keep {args.n}, "
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


ROOT = pathlib.Path(__file__).resolve().parents[1]
THREE = ("strategies=[{name: vanilla, kind: vanilla}, {name: greedy, kind: greedy, pool_factor: 2, features: pixel},"
         " {name: tdf, kind: tdf, pool_factor: 2, features: pixel, tau0: 20.0, alpha: 0.9}]")


def part3() -> int:
    import cluster  # noqa: F401 - Ray's loopback settings, before ray is imported
    from ray.cluster_utils import Cluster

    from collapse.schedule import overlaps
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    for _ in range(2):
        c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    walls, results = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode, extra in (("side by side", []), ("one after another", ["--set", "resources.max_parallel_stages=1"])):
                run = pathlib.Path(tmp) / mode.replace(" ", "-")
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--run-dir", str(run),
                                    "--address", c.address, "--set", THREE, *extra], cwd=ROOT, capture_output=True,
                                   text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                walls[mode] = time.perf_counter() - t
                if r.returncode != 0:
                    print(f"part 3: the {mode} run failed:\n{(r.stdout + r.stderr)[-3000:]}")
                    return 1
                recs = [json.loads(p.read_text()) for p in (run / "stages").rglob("manifest.json")]
                rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                sel = {s: json.loads((run / s / "gen-001" / "selection" / "manifest.json").read_text())["kept"]
                       for s in ("vanilla", "greedy", "tdf")}
                results[mode] = ([{k: v for k, v in row.items() if k != "stage_seconds"} for row in rows], sel)
                print(f"part 3: {mode}: {walls[mode]:.0f} s for {len(recs)} stages, "
                      f"{len(overlaps(recs))} pairs of stages overlapping in time")
    finally:
        c.shutdown()
    a, b = results["side by side"], results["one after another"]
    same_sel = a[1] == b[1]
    same_metrics = _close(a[0], b[0])
    print(f"part 3: ratio side by side / one after another {walls['side by side'] / walls['one after another']:.2f}; "
          f"same selections: {same_sel}; same metrics (to 1e-9 relative): {same_metrics}")
    return 0 if same_sel and same_metrics else 1


def _rss_kib(pid: int | str = "self") -> int:
    """VmRSS (resident set) of a process, KiB; 0 when it is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _runner_pids() -> list[int]:
    out = []
    for cmd in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmd.read_bytes().startswith(b"ray::StageRunner"):
                out.append(int(cmd.parent.name))
        except OSError:
            pass
    return out


def part2(pool: int = 200_000, n: int = 1000) -> int:
    """Score and select over a written pool of ``pool`` images, through the loop's own scheduler."""
    import threading

    import cluster  # noqa: F401 - Ray's loopback settings, before ray is imported
    import ray

    from cluster.loop import Loop
    from cluster.runtime import connect
    from collapse.data.samples import Sample, write_sample_set
    from collapse.plan import SHARED
    from jobs.presets import load_config
    k = pool // n
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("tiny", [f"run.run_dir={tmp}/run", f"data.n={n}", f"metrics.gs_samples={n}",
                                   "metrics.classifier_images=0", "data.holdout=1000", "sample.shard_size=5000",
                                   f"strategies=[{{name: greedy, kind: greedy, pool_factor: {k}, features: pixel}}]"])
        loop = Loop(cfg, progress=lambda line: None)
        L, rng = loop.layout, np.random.default_rng(0)

        def images(prefix, count):
            for i in range(count):
                meta = {"source": "real"} if prefix != "gen1" else {"source": "gen-001", "model": "bench", "seed": i}
                yield Sample(f"{prefix}-{i:07d}", rng.integers(0, 256, (16, 16), dtype=np.uint8), meta)
        t = time.perf_counter()
        for url, prefix, count in ((L.real("train"), "real", n), (L.real("holdout"), "hold", 1000),
                                   (L.train_set(SHARED, 1), "real", n), (L.pool(SHARED, 1), "gen1", pool)):
            rng = np.random.default_rng(0 if prefix == "real" else hash(prefix) % 2**32)
            write_sample_set(url, images(prefix, count), shard_size=5000)
        feature_bytes = pool * 16 * 16 * 4
        print(f"part 2: wrote a pool of {pool} images ({time.perf_counter() - t:.0f} s); its pixel features: "
              f"{feature_bytes / 2**20:.0f} MiB")
        connect(num_cpus=4, log_to_driver=False)
        try:
            todo = [loop.plan[key] for key in ("featurize-real", "shared/gen-001/featurize", "shared/gen-001/score",
                                               "greedy/gen-001/select")]
            base, peaks, firsts, stop = _rss_kib(), {}, {}, threading.Event()

            def watch():
                while not stop.is_set():
                    peaks["driver"] = max(peaks.get("driver", 0), _rss_kib())
                    for pid in _runner_pids():
                        rss = _rss_kib(pid)
                        firsts.setdefault(pid, rss)  # after its imports: the libraries, before any data
                        peaks[pid] = max(peaks.get(pid, 0), rss)
                    time.sleep(0.05)
            w = threading.Thread(target=watch, daemon=True)
            w.start()
            t = time.perf_counter()
            loop.run_side_by_side(todo)
            wall = time.perf_counter() - t
            stop.set()
            w.join()
        finally:
            ray.shutdown()
        kept = len(json.loads(pathlib.Path(L.selection("greedy", 1), "manifest.json").read_text())["kept"])
    grew = (peaks["driver"] - base) * 1024
    top = max((key for key in peaks if key != "driver"), key=lambda key: peaks[key])
    runner, start = peaks[top] * 1024, firsts[top] * 1024
    print(f"part 2: featurize, score, select ({kept} of {pool} kept) in {wall:.0f} s; the driver's RSS grew by "
          f"{grew / 2**20:.0f} MiB (ratio to the features {grew / feature_bytes:.2f}; target < 1); the largest stage "
          f"runner peaked at {runner / 2**20:.0f} MiB, {(runner - start) / 2**20:.0f} MiB above its first reading "
          f"(ratio {(runner - start) / feature_bytes:.2f}: the stages' arrays, where they are computed)")
    return 0 if grew < feature_bytes else 1


def _close(a, b) -> bool:
    """Equal structures, floats within 1e-9 relative (the score runs in another process in each mode)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


if __name__ == "__main__":
    raise SystemExit(main())
