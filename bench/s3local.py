"""A Ceph S3 endpoint for benchmarks: the one in COLLAPSE_S3_ENDPOINT, or a fresh local one we stop after."""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def ceph_storage_options():
    if os.environ.get("COLLAPSE_S3_ENDPOINT"):
        yield {"endpoint_url": os.environ["COLLAPSE_S3_ENDPOINT"], "key": os.environ["AWS_ACCESS_KEY_ID"],
               "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
        return
    script = str(ROOT / "infra/ceph/local-s3.sh")
    with tempfile.TemporaryDirectory(prefix="bench-ceph-") as d:
        out = subprocess.run(["bash", script, "start", d], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"could not start the local Ceph S3 endpoint:\n{out.stderr[-2000:]}")
        env = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines()
                   if line.startswith("export "))
        try:
            yield {"endpoint_url": env["AWS_ENDPOINT_URL"].strip("'\""), "key": env["AWS_ACCESS_KEY_ID"].strip("'\""),
                   "secret": env["AWS_SECRET_ACCESS_KEY"].strip("'\"")}
        finally:
            subprocess.run(["bash", script, "stop", d], capture_output=True)
