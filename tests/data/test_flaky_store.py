"""The storage layer on a flaky store (tests/flaky_store.py: a proxy in front of the local Ceph
gateway that throttles, resets connections before and after forwarding, and delays, at seeded
rates): every write of a sample set, its features and manifests, and the run lease's
acquire/renew/release complete, and what is read back is what was written (issue 27)."""
import time

import numpy as np
import pytest

from collapse.data import manifest
from collapse.data.features import load_features, save_features
from collapse.data.lease import Lease, read_holder
from collapse.data.samples import open_sample_set, write_sample_set
from collapse.data.verify import verify
from tests.data.helpers import make_samples
from tests.flaky_store import FlakyStore, Rates

pytestmark = [pytest.mark.ceph]

# far above a real cloud's (a few in a thousand), so that a few hundred requests meet every fault
RATES = Rates(throttle=0.08, reset_before=0.04, reset_after=0.04, delay=0.03, delay_s=0.5)


def test_sets_manifests_and_the_lease_survive_a_flaky_store(ceph_bucket):
    endpoint, bucket = ceph_bucket
    with FlakyStore(endpoint.endpoint_url, RATES, seed=1) as flaky:
        opts = {"endpoint_url": flaky.endpoint_url, "key": endpoint.key, "secret": endpoint.secret}
        url = f"{bucket}/run/set"
        samples = make_samples(60)
        for attempt in range(2):   # the second write of the same set: every write again, applied twice
            write_sample_set(url, samples, shard_size=8, overwrite=bool(attempt), storage_options=opts)
        s = open_sample_set(url, opts)
        assert s.keys == [x.key for x in samples]
        assert np.array_equal(s.load()[1], np.stack([x.image for x in samples]))
        rows = np.arange(60 * 4, dtype=np.float32).reshape(60, 4)
        save_features(s, "pixel", s.keys, rows)
        assert np.array_equal(load_features(s, "pixel"), rows)
        manifest.write_manifest(f"{bucket}/run/stages/x", {"kind": "stage", "key": "x"}, opts)
        assert manifest.read_manifest(f"{bucket}/run/stages/x", opts)["key"] == "x"
        said = []
        lease = Lease(f"{bucket}/run", opts, ttl_s=60, say=said.append).acquire()
        for _ in range(15):
            lease.renew()     # a conditional write each: a lost answer must not read as a take-over
        lease.confirm()
        lease.release()
        assert lease.lost is None and read_holder(f"{bucket}/run", opts).released
        counts = dict(flaky.counts)
    assert verify(f"{bucket}/run", endpoint.storage_options).findings == ()
    print(f"flaky store: {counts}")
    assert counts["requests"] > 100
    assert all(counts.get(f, 0) > 0 for f in ("throttle", "reset_before", "reset_after", "delay")), counts


def test_a_store_that_throttles_every_request_for_seconds_is_waited_out(ceph_bucket):
    """25 seconds of nothing but 503 SlowDown: the write waits (botocore's standard retries inside
    s3fs's own SlowDown retries, collapse.data.storage) and lands once the store answers again."""
    endpoint, bucket = ceph_bucket
    with FlakyStore(endpoint.endpoint_url, Rates(), seed=2) as flaky:
        opts = {"endpoint_url": flaky.endpoint_url, "key": endpoint.key, "secret": endpoint.secret}
        flaky.throttle_until = time.monotonic() + 25  # s3fs and botocore defaults gave up after ~17 s
        manifest.write_manifest(f"{bucket}/run/stages/y", {"kind": "stage", "key": "y"}, opts)
        assert time.monotonic() >= flaky.throttle_until and flaky.counts["throttle"] >= 3
    assert manifest.read_manifest(f"{bucket}/run/stages/y", endpoint.storage_options)["key"] == "y"
