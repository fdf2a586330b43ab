"""Ray for the cluster tests: a local Ray head (its own processes) and an in-process Ray.

Fixtures:
  ray_head   session: a Ray head on 127.0.0.1 started by infra/ray/local-head.sh in a temporary
             directory and stopped at the end of the session (the stop is checked: no process of
             it may remain). With COLLAPSE_RAY_DASHBOARD_ADDRESS and RAY_ADDRESS both set, that
             running head is used instead and left alone. Yields a RayHead: ``.address`` (GCS, for
             drivers), ``.dashboard`` (http URL, for ``ray job submit``), ``.env`` (variables for a
             driver process), ``.submit(...)`` (``ray job submit``; waits for the job's end).
  three_nodes module: a cluster of three nodes on 127.0.0.1 (ray.cluster_utils.Cluster): a head with no
             CPUs and two worker nodes of 2 CPUs. Not connected: drivers join it with --address.
  ray_local  session: ``cluster.runtime.connect(num_cpus=4)`` in the test process (Ray started by
             ``ray.init`` as children of pytest, on 127.0.0.1), ``ray.shutdown()`` at the end. Its
             workers, and this process, stage in a spool of their own ($COLLAPSE_SPOOL).
             For tests that call stages directly. It is a cluster of its own, not the head.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.conftest import _parse_exports  # the same "export NAME=value" lines as local-s3.sh prints

from cluster.runtime import LOCAL_RAY_ENV

# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, and every Ray of these tests is
# on 127.0.0.1 (a driver without it swaps 127.0.0.1 for the machine's address and hangs). `cluster`
# sets it only when RAY_ADDRESS is unset; here it is set in every case.
for _k, _v in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_k, _v)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_HEAD = REPO_ROOT / "infra" / "ray" / "local-head.sh"
RAY_CLI = str(Path(sys.executable).with_name("ray"))
MARKER = "COLLAPSE_RAY_HEAD"  # local-head.sh puts MARKER=<state dir> in the environment of its processes


@dataclasses.dataclass(frozen=True)
class RayHead:
    address: str                    # GCS host:port: RAY_ADDRESS of a driver
    dashboard: str                  # http://127.0.0.1:port: `ray job submit --address`
    state_dir: Path | None = None   # None: a head that this session did not start

    @property
    def env(self) -> dict[str, str]:
        """The environment of a driver process that connects to this head."""
        return {**os.environ, **LOCAL_RAY_ENV, "RAY_ADDRESS": self.address}

    def pids(self) -> list[int]:
        """Every live process of the head (daemons, workers, job drivers), by the marker in its
        environment. Empty for a head that this session did not start."""
        if self.state_dir is None:
            return []
        entry = f"{MARKER}={self.state_dir}".encode()
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if entry in environ.read_bytes().split(b"\0"):
                    status = (environ.parent / "status").read_text()
                    if "\nState:\tZ" not in status:
                        pids.append(int(environ.parent.name))
            except OSError:  # gone, or not ours to read
                continue
        return sorted(pids)

    def submit(self, entrypoint: str, working_dir: str | Path, env: dict | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess:
        """``ray job submit`` ENTRYPOINT with WORKING_DIR uploaded, and ``env`` as the job's
        runtime_env env_vars. Waits for the job: exit status 0 when it succeeded, 1 when it
        failed; stdout has the job's output."""
        cmd = [RAY_CLI, "job", "submit", "--address", self.dashboard, "--working-dir", str(working_dir),
               "--log-style=record", "--log-color=false"]
        if env:
            cmd += ["--runtime-env-json", json.dumps({"env_vars": env})]
        cmd += ["--", *shlex.split(entrypoint)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **LOCAL_RAY_ENV})


def _local_head(command: str, state_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_HEAD), command, str(state_dir)], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "COLLAPSE_RAY": RAY_CLI})




@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> RayHead:
    dashboard, address = os.environ.get("COLLAPSE_RAY_DASHBOARD_ADDRESS"), os.environ.get("RAY_ADDRESS")
    if dashboard and address:
        yield RayHead(address, dashboard)
        return
    if dashboard:
        pytest.fail("COLLAPSE_RAY_DASHBOARD_ADDRESS is set, but RAY_ADDRESS is not: to use a running "
                    "head, set both (infra/ray/local-head.sh address prints them)", pytrace=False)

    state_dir = tmp_path_factory.mktemp("ray")
    proc = _local_head("start", state_dir)
    if proc.returncode != 0:
        _local_head("stop", state_dir)
        pytest.fail(f"infra/ray/local-head.sh start {state_dir} failed (exit {proc.returncode}):\n"
                    f"{proc.stderr}", pytrace=False)
    env = _parse_exports(proc.stdout)
    head = RayHead(env["RAY_ADDRESS"], env["RAY_DASHBOARD_ADDRESS"], state_dir)
    try:
        yield head
    finally:
        stop = _local_head("stop", state_dir)
        left = head.pids()
        if stop.returncode != 0 or left:
            pytest.fail(f"local-head.sh stop {state_dir} (exit {stop.returncode}) left processes {left}:\n"
                        f"{stop.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    already = sys.modules.get("ray._private.ray_constants")
    if already is not None and already.ENABLE_RAY_CLUSTER:
        pytest.fail("ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: a local Ray "
                    "would listen on every interface. Import `cluster` before ray.", pytrace=False)
    from cluster.runtime import connect
    from collapse.data.storage import SPOOL_ENV

    # A spool of its own (the workers' staging directories), which its workers inherit: a test that
    # looks for staging left behind sees only this Ray's, not those of another test process's runs.
    with pytest.MonkeyPatch.context() as session:
        session.setenv(SPOOL_ENV, str(tmp_path_factory.mktemp("spool")))
        with pytest.MonkeyPatch.context() as mp:  # in the test process, whatever head RAY_ADDRESS names
            mp.delenv("RAY_ADDRESS", raising=False)
            ray = connect(num_cpus=4)
        try:
            yield ray
        finally:
            try:
                ray.shutdown()
            except Exception as e:  # noqa: BLE001 - teardown must not hide the tests' own results
                warnings.warn(f"ray.shutdown() failed: {e!r}")


@pytest.fixture(scope="module")
def three_nodes():
    """A head with no CPUs (it runs no work) and two worker nodes of 2 CPUs, all on 127.0.0.1
    (Ray's own ray.cluster_utils.Cluster: each node its own raylet, object store and workers)."""
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1"})
    for _ in range(2):
        c.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
