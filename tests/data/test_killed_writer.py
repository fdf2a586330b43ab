"""A writer killed (SIGKILL, separate process) in the middle of a set leaves nothing that looks finished."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from collapse.data import storage
from collapse.data.samples import open_sample_set, write_sample_set
from collapse.errors import NotFinishedError
from tests.data.helpers import assert_same_samples, make_samples

WRITER = """
import json, sys, time
from collapse.data.samples import write_sample_set
from tests.data.helpers import make_samples
url, opts = sys.argv[1], json.loads(sys.argv[2]) or None
def slow():
    for s in make_samples(60):
        time.sleep(0.02)
        yield s
write_sample_set(url, slow(), shard_size=10, config_hash="h1", storage_options=opts)
"""


def _kill_midway(url, opts):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, json.dumps(opts)], cwd=os.path.dirname(root))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if "shard-000002.json" in storage.list_names(url, opts):
                break
            assert proc.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the writer wrote no shard in 60 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _check_killed_then_rewrite(url, opts):
    _kill_midway(url, opts)
    names = storage.list_names(url, opts)
    assert "manifest.json" not in names and "shard-000002.tar" in names
    with pytest.raises(NotFinishedError):
        open_sample_set(url, opts)
    # rewriting the same set resumes: the shards the killed writer completed are kept as they are
    before = storage.read_bytes(storage.join(url, "shard-000000.tar"), opts)
    m = write_sample_set(url, make_samples(60), shard_size=10, config_hash="h1", storage_options=opts)
    assert m["count"] == 60
    assert storage.read_bytes(storage.join(url, "shard-000000.tar"), opts) == before
    assert_same_samples(list(open_sample_set(url, opts).iter_samples()), make_samples(60))


def test_killed_writer_local(tmp_path):
    _check_killed_then_rewrite(str(tmp_path / "set"), None)


@pytest.mark.ceph
def test_killed_writer_ceph(ceph_bucket):
    endpoint, bucket = ceph_bucket
    _check_killed_then_rewrite(f"{bucket}/killed", endpoint.storage_options)
