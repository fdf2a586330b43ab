"""Read a sample set from Ceph (S3 over loopback) and from local disk in one run: samples/s and the ratio.

Usage: python bench/bench_data.py [--n 5000] [--size 32] [--repeats 3]
Both reads go through the same code (manifest, sha256 check, tar parse, PNG decode), so the
ratio isolates the storage backend. Prints the best of --repeats for each.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid

import numpy as np

from collapse.data.samples import Sample, open_sample_set, write_sample_set
from collapse.data.stream import stream_samples

try:
    from bench.s3local import ceph_storage_options
except ImportError:  # run as a script from the repository root
    from s3local import ceph_storage_options


def samples(n, size):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Sample(f"b-{i:06d}", rng.integers(0, 256, (size, size, 3), dtype=np.uint8), {"source": "real"})


def best_rate(fn, n, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        got = fn()
        best = min(best, time.perf_counter() - t)
        assert got == n, (got, n)
    return n / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as local_dir, ceph_storage_options() as opts:
        import s3fs
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**opts).mkdir(bucket)
        targets = {"local disk": (f"{local_dir}/set", None), "ceph s3": (f"s3://{bucket}/set", opts)}
        rates = {}
        for name, (url, so) in targets.items():
            write_sample_set(url, samples(args.n, args.size), shard_size=1000, storage_options=so)
            rates[name, "batches"] = best_rate(
                lambda: sum(len(k) for k, _, _ in open_sample_set(url, so).iter_batches(256)), args.n, args.repeats)
            rates[name, "stream"] = best_rate(
                lambda: sum(1 for _ in stream_samples(url, shuffle_buffer=0, storage_options=so)), args.n, args.repeats)
    print(f"read {args.n} samples of {args.size}x{args.size}x3 PNG, best of {args.repeats}")
    for mode in ("batches", "stream"):
        local, ceph = rates["local disk", mode], rates["ceph s3", mode]
        print(f"  {mode:8s} local disk {local:8.0f} samples/s   ceph s3 {ceph:8.0f} samples/s   "
              f"ceph/local = {ceph / local:.2f}")


if __name__ == "__main__":
    main()
