"""Session-wide test set-up: S3 endpoints (local Ceph RADOS Gateway and moto).

Fixtures:
  ceph_s3      session: the real S3 gateway. Uses COLLAPSE_S3_ENDPOINT (+ AWS_ACCESS_KEY_ID,
               AWS_SECRET_ACCESS_KEY) when set; otherwise starts infra/ceph/local-s3.sh in a
               temporary directory and stops it at the end of the session.
  ceph_bucket  function: (S3Endpoint, "s3://<fresh bucket>") on ceph_s3, emptied afterwards.
  moto_s3      session: an in-process moto server on 127.0.0.1 (fast, an emulator).
  moto_bucket  function: (S3Endpoint, "s3://<fresh bucket>") on moto_s3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import pytest

from cluster.runtime import free_port as _free_port  # below the ephemeral range, on 127.0.0.1
from tests.s3_endpoint import CEPH_BINARIES, LOCAL_S3, S3Endpoint


# The modules that run whole runs on a Ray, longest first (their times on 2 cores: --durations).
# `make test` runs the suite on two pytest-xdist workers with --dist loadscope: a module's tests, and
# so its module-scoped run, stay on one worker, and each worker takes the next module in this order
# when it is nearly done with its own. Starting the longest first lets the two end together; the other
# modules keep the order in which they were collected.
LONGEST_FIRST = (
    "tests/cluster/test_loop.py",            # ~270 s: a submitted job, killed and resubmitted
    "tests/cluster/test_paper_presets.py",   # ~230 s: four presets end to end
    "tests/cluster/test_schedule.py",        # ~230 s: three strategies side by side, three nodes
    "tests/cluster/test_train.py",           # ~90 s
    "tests/jobs/test_run_local.py",          # ~80 s
    "tests/cluster/test_sample.py",          # ~70 s
    "tests/data/test_flaky_store.py",        # ~35 s, mostly waiting out a throttling store
)


def pytest_collection_modifyitems(config, items):
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _aws_test_environment():
    """No call may wander off to the EC2 metadata service (there is no network here)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


def _parse_exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            out[name.strip()] = value.strip()
    return out


def _local_s3(command: str, state_dir: Path, env: dict[str, str] | None = None, timeout=300):
    return subprocess.run(
        ["bash", str(LOCAL_S3), command, str(state_dir)],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def ceph_s3(tmp_path_factory) -> S3Endpoint:
    external = os.environ.get("COLLAPSE_S3_ENDPOINT")
    if external:
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            pytest.fail("COLLAPSE_S3_ENDPOINT is set, but AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY are not", pytrace=False)
        yield S3Endpoint(external, key, secret)
        return

    missing = [b for b in CEPH_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"the Ceph binaries {missing} are missing: the S3 tests need the local "
                    "Ceph RADOS Gateway. Install it with: bash infra/install-system.sh "
                    "(Debian packages radosgw ceph-mon ceph-osd ceph-common)", pytrace=False)

    state_dir = tmp_path_factory.mktemp("ceph")
    # keys no file would hold by chance, so that a test can grep for them (see test_loop's leak test)
    token = uuid.uuid4().hex
    proc = _local_s3("start", state_dir, env={"COLLAPSE_S3_PORT": str(_free_port()),
                                              "COLLAPSE_S3_ACCESS_KEY": f"AKTEST{token[:14].upper()}",
                                              "COLLAPSE_S3_SECRET_KEY": f"sktest-{token[14:]}"})
    if proc.returncode != 0:
        _local_s3("stop", state_dir, timeout=120)
        pytest.fail(f"infra/ceph/local-s3.sh start {state_dir} failed "
                    f"(exit {proc.returncode}):\n{proc.stderr}", pytrace=False)
    env = _parse_exports(proc.stdout)
    try:
        yield S3Endpoint(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"],
                         env["AWS_SECRET_ACCESS_KEY"], state_dir)
    finally:
        stop = _local_s3("stop", state_dir, timeout=120)
        if stop.returncode != 0:
            warnings.warn(f"local-s3.sh stop {state_dir} failed:\n{stop.stderr}")


def _fresh_bucket(endpoint: S3Endpoint):
    fs = endpoint.filesystem()
    name = f"test-{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    yield endpoint, f"s3://{name}"
    try:  # leave an external store as we found it
        fs.invalidate_cache()
        fs.clear_multipart_uploads(name)
        keys = fs.find(name)
        if keys:
            fs.rm(keys)
        fs.rmdir(name)
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the test's own result
        warnings.warn(f"could not remove test bucket {name}: {e!r}")


@pytest.fixture
def ceph_bucket(ceph_s3):
    yield from _fresh_bucket(ceph_s3)


@pytest.fixture(scope="session")
def moto_s3() -> S3Endpoint:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(f"http://{host}:{port}", "testing", "testing")
    finally:
        server.stop()


@pytest.fixture
def moto_bucket(moto_s3):
    yield from _fresh_bucket(moto_s3)
