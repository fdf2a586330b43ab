"""Connecting to Ray: a cluster when an address is given, else a local Ray bound to 127.0.0.1.

Environment that actors and Train workers need goes through ``runtime_env`` here, in one place
(the driver's environment does not reach them; the same key set twice fails a job with a merge
conflict). Facts behind each knob: docs/PLATFORM.md.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import socket
import subprocess
import sys
import uuid

TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"

# Variables every worker process gets.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # a harmless Ray Train error line otherwise
    # Ray Train's controller polls its workers this often (default 2 s): the end of a training was
    # seen 2-4 s late, and every training stage paid it (docs/PLATFORM.md)
    TRAIN_POLL_ENV: TRAIN_POLL_S,
    "OMP_NUM_THREADS": "1",                     # one torch thread per CPU slot: as fast, half the CPU (docs/PLATFORM.md)
    "TOKENIZERS_PARALLELISM": "false",
}

# Variables a local Ray needs before it starts, so that it binds only to loopback and stays quiet.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # undocumented on Linux: binds every port to 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def connect(address: str | None = None, num_cpus: int | None = None, extra_env: dict | None = None,
            log_to_driver: bool = True):
    """Connect to Ray once per process; returns the ray module.

    ``address=None`` and no ``RAY_ADDRESS``: start a local Ray on 127.0.0.1. Inside ``ray job submit``
    Ray is already reachable and the job's runtime env carries the workers' variables.
    """
    import ray
    if ray.is_initialized():
        return ray
    env = dict(WORKER_ENV, **(extra_env or {}))
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if re.fullmatch(r"[\w.-]+:\d+", address):  # a GCS host:port: tell the workers too (see below)
            env.setdefault("RAY_ADDRESS", address)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=log_to_driver)
    else:
        for k, v in LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)
        # Ray code inside workers that looks its cluster up without an address (Ray Train's
        # PlacementGroupCleaner, through the state API) fails with "Found multiple active Ray
        # instances" when another Ray runs on the machine. So the local GCS gets a port chosen here
        # and every worker gets RAY_ADDRESS naming it.
        port = int(os.environ.get("RAY_GCS_SERVER_PORT") or free_port())
        env.setdefault("RAY_ADDRESS", f"127.0.0.1:{port}")
        with _reaped_local_ray(), _environ(RAY_GCS_SERVER_PORT=str(port)):
            # address="local": a new Ray even where another one is running on this machine (without
            # it ray.init joins the last one `ray start` or a Cluster wrote to /tmp/ray, and refuses num_cpus)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     runtime_env={"env_vars": env}, log_to_driver=log_to_driver,
                     configure_logging=True, logging_level="WARNING")
    quiet_data()
    start_autoscaling_coordinator()
    return ray


def start_autoscaling_coordinator(timeout_s: float = 300.0) -> None:
    """Start Ray's AutoscalingCoordinator (a detached actor that Ray Train's controller and Ray Data
    register their resource requests with) and wait until it answers.

    Ray Train 2.60's controller creates it on its first training if no one has, then waits 5 s for its
    first answer; on a loaded machine the new actor's process takes longer to start, and the controller
    logs "Failed to send resource request ..." with a traceback ("safe to ignore", and the training
    goes on). Started here, once per cluster (``get_if_exists``), it is up before any training asks.
    The coordinator is a private part of Ray Data: where this Ray has no such part, nothing is done.
    """
    import ray
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    coordinator = get_or_create_autoscaling_coordinator()
    ray.get(coordinator.get_reserved_resources.remote("collapse-driver"), timeout=timeout_s)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range (32768+), where the client
    connections made while Ray starts cannot take it before the GCS binds it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000 on 127.0.0.1")


@contextlib.contextmanager
def _environ(**values: str):
    """``os.environ`` holds ``values`` inside the block only."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_REAPER: dict = {}  # the write end of the reaper's pipe, held open for the driver's lifetime


@contextlib.contextmanager
def _reaped_local_ray():
    """Start the reaper (cluster/reaper.py) of the local Ray that the body starts.

    The processes the body starts (GCS, raylet, and through the raylet the agents and workers)
    inherit ``COLLAPSE_LOCAL_RAY=<token>`` from this process's environment, set only while the body
    runs, so that later children of this process are not marked. The token is this driver's (a
    caller may choose it by setting the variable, as a test does to find the processes).
    """
    from cluster.reaper import MARKER
    token = os.environ.get(MARKER) or f"{os.getpid()}-{uuid.uuid4().hex}"
    read_end, write_end = os.pipe()  # not inheritable: only the reaper gets the read end
    subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("reaper.py")), str(read_end), token],
                     pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL)
    os.close(read_end)
    _REAPER["pipe"] = write_end
    with _environ(**{MARKER: token}):
        yield token


def quiet_data() -> None:
    """Ray Data prints its plan and progress at INFO; our stages print their own progress."""
    import logging

    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "Progress bars disabled" is a WARNING


def map_actor_pool(items: list[dict], actor_cls, constructor_kwargs: dict, *, min_actors: int, max_actors: int,
                   cpus_per_actor: float, gpus_per_actor: float = 0.0, on_row=None) -> list[dict]:
    """Run ``actor_cls`` over ``items`` (one item per call) in an autoscaling Ray Data actor pool;
    the rows it returns. ``on_row(row)`` is called for each row as it arrives (progress).

    Actors are not restarted by Ray (``max_restarts=0``): every stage that uses this is resumable
    from storage, so its caller retries the stage and only the missing work is redone.
    """
    import warnings

    import ray.data
    if not 1 <= min_actors <= max_actors:
        raise ValueError(f"need 1 <= min_actors <= max_actors, got {min_actors} and {max_actors}")
    quiet_data()
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # max_restarts has no named parameter in Ray 2.60; its only spelling is deprecated for 2.64.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    out = ds.map_batches(actor_cls, batch_size=1, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
                         compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
                         fn_constructor_kwargs=constructor_kwargs, max_restarts=0)
    rows = []
    for row in out.iter_rows():
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def lost_to_the_cluster(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says an actor, worker, node or object was lost: the
    failure of a machine, not of the stage's input, so rerunning the (resumable) stage may succeed."""
    import ray.exceptions as rx
    lost = (rx.RayActorError, rx.NodeDiedError, rx.ObjectLostError, rx.WorkerCrashedError, rx.OwnerDiedError,
            rx.ActorUnavailableError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, lost):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
