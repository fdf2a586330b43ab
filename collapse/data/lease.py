"""The run lease: one driver per run directory, on a local disk or on S3.

A lease is one small JSON object, ``<run>/lease.json``: who holds it (a random id, host, pid),
since when, and its last heartbeat. Every change to it is a compare-and-swap, so that of two
drivers that race only one wins:

- on S3 (``s3://``), a conditional PUT: ``If-None-Match: *`` creates it only if it is absent and
  ``If-Match: <etag>`` replaces it only if nobody changed it since we read it. Ceph RGW honours
  both (Pacific 16.2, measured: a stale or bogus ``If-Match`` is refused with 412), as AWS S3
  does since 2024. A store that ignores them is caught at acquisition: the second create-only
  write of our own lease must be refused, else the lease refuses to run rather than guard nothing.
- on a local path, the same compare-and-swap under ``flock`` of a side file ``lease.json.lock``
  (the version is the sha256 of the bytes). It guards the drivers of one machine or of one
  file system whose locks are shared (not NFS without lockd).
- on ``memory://`` (tests), under a process-wide lock.

A lease whose heartbeat is older than its ``ttl_s`` belongs to a driver that is gone: the next
driver takes it over and says so. So does a lease whose holder ran on this host and whose process
has ended (a killed driver resubmitted on the same head node need not wait out the ttl). A driver that finds its lease changed under it (taken over
while it was paused, say) has lost it; :meth:`Lease.check` then raises and the driver stops before
it commits anything more. Releasing writes a ``released`` lease (also a compare-and-swap), so the
release of a lease that was already taken over changes nothing.

Every write is harmless when the client retries it. A store may apply a conditional PUT and lose
its answer; botocore then sends it again, and the retry is refused (412) by our own first write,
whose ETag it moved. So each write carries a token of its own (``Holder.write``, new for every
write): on a refused write the lease is read back, and if it holds this write's token the write
happened (its ETag is taken and the driver goes on). Only another write's bytes are a conflict: a
take-over at a heartbeat, another driver at acquisition. The check that the store honours
``If-None-Match`` (a second create of our own lease must be refused) writes its own token too, so
it is never confused with the first create.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from collapse.data import storage
from collapse.errors import CollapseError, StorageError

LEASE_NAME = "lease.json"
#: Where a lease can be held (gs:// would need its generation preconditions: not built yet).
LEASE_SCHEMES = ("s3", "s3a", "file", "local", "memory")
DEFAULT_TTL_S = 120.0
_MEMORY_LOCK = threading.Lock()


class LeaseHeldError(CollapseError):
    """Another driver holds a fresh lease on this run directory."""


class LeaseLostError(CollapseError):
    """This driver's lease was taken over (or could not be renewed in time): it must stop writing."""


class _Conflict(Exception):
    """A compare-and-swap found another version than the one it expected."""


@dataclass(frozen=True)
class Holder:
    """What a lease says about its holder."""
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    ttl_s: float
    released: bool = False
    write: str = ""  # a token of this write (see the module docstring); "" in leases of older drivers

    @staticmethod
    def parse(data: bytes) -> "Holder":
        """A lease that cannot be read (cut short, edited by hand) counts as stale: nobody can renew it."""
        try:
            d = json.loads(data)
            return Holder(str(d["id"]), str(d["host"]), int(d["pid"]), float(d["started_at"]),
                          float(d["heartbeat_at"]), float(d["ttl_s"]), bool(d.get("released", False)),
                          str(d.get("write", "")))
        except (ValueError, KeyError, TypeError):
            return Holder("unreadable", "?", -1, 0.0, 0.0, 0.0, False)

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    def age(self, now: float) -> float:
        return now - self.heartbeat_at

    def gone(self) -> bool:
        """The holder ran on this host and its process has ended (a killed driver being resubmitted)."""
        if self.host != socket.gethostname() or self.pid <= 0 or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at))
        return (f"driver {self.id[:8]} on host {self.host} (pid {self.pid}), started {started}, "
                f"last heartbeat {self.age(now):.0f} s ago")


# -- compare-and-swap per scheme: read -> (bytes, version) or (None, None); write(expect) -> version
def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Store:
    def __init__(self, url: str, storage_options: dict | None):
        self.url, self.so = url, storage_options
        self.scheme = storage.scheme_of(url)
        if self.scheme not in LEASE_SCHEMES:
            raise StorageError(f"the run lease {url!r} needs one of {', '.join(LEASE_SCHEMES)}; "
                               f"{self.scheme}:// has no compare-and-swap here yet")
        self.fs, self.path = storage.open_fs(url, storage_options)

    def read(self) -> tuple[bytes | None, str | None]:
        if self.scheme in ("s3", "s3a"):
            try:
                info = storage.storage_call(self.url, "cannot read the lease", self.fs.info, self.path, refresh=True)
                data = storage.storage_call(self.url, "cannot read the lease", self.fs.cat_file, self.path)
            except FileNotFoundError:
                return None, None
            # the etag read with the bytes: a change between the two calls makes our next write conflict
            return data, info["ETag"].strip('"')
        with self._locked():
            return self._read_local()

    def write(self, data: bytes, expect: str | None) -> str:
        """Write ``data`` if the lease's current version is ``expect`` (None: if there is none)."""
        if self.scheme in ("s3", "s3a"):
            cond = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
            try:
                out = self.fs.pipe_file(self.path, data, **cond)
            except OSError as e:
                if _precondition_failed(e):
                    raise _Conflict() from e
                raise StorageError(f"cannot write the run lease {self.url!r}: storage error ({e})") from e
            except Exception as e:
                raise StorageError(f"cannot write the run lease {self.url!r}: "
                                   f"cannot reach the storage endpoint ({type(e).__name__}: {e})") from e
            self.fs.invalidate_cache(self.path)
            return str(out["ETag"]).strip('"')
        with self._locked():
            _, current = self._read_local()
            if current != expect:
                raise _Conflict()
            storage.write_bytes(self.url, data, self.so)
            return _version(data)

    def _read_local(self):
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        return data, _version(data)

    def _locked(self):
        if self.scheme == "memory":
            return _MEMORY_LOCK
        return _FileLock(self.path + ".lock")


def _precondition_failed(e: BaseException) -> bool:
    cause = e.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    status = getattr(cause, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") if cause else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


class _FileLock:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import fcntl
        run_dir = os.path.dirname(self.path) or "."
        try:
            os.makedirs(run_dir, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileExistsError, NotADirectoryError):  # the run directory, or a folder above it, is a file
            blocking = run_dir
            while not os.path.exists(blocking) and os.path.dirname(blocking) != blocking:
                blocking = os.path.dirname(blocking)
            raise StorageError(f"the run directory {run_dir!r} cannot hold a run: {blocking!r} is a file, not a "
                               "directory; give another --run-dir") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Lease:
    """One driver's lease on ``run_url``. ``acquire`` it, ``start`` the heartbeat, ``check`` before
    each commit, ``release`` at the end. ``clock`` is injectable for tests."""

    def __init__(self, run_url: str, storage_options: dict | None = None, ttl_s: float = DEFAULT_TTL_S,
                 clock=time.time, say=print):
        if not ttl_s > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl_s}")
        self.url = storage.join(run_url, LEASE_NAME)
        self.run_url, self.ttl_s, self.clock, self.say = run_url, float(ttl_s), clock, say
        self.store = _Store(self.url, storage_options)
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), clock(), clock(), self.ttl_s)
        self.version: str | None = None
        self.renewed_at = 0.0
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the heartbeat and a commit's confirm() must not race each other

    def _swap(self, holder: Holder, expect: str | None) -> str:
        """Write ``holder`` if the lease is at version ``expect`` (None: absent); its new version.
        A refused write whose own bytes are in the store was applied, its answer lost and the retry
        refused by it: that is success. Anything else raises _Conflict."""
        try:
            return self.store.write(holder.to_bytes(), expect)
        except _Conflict:
            data, version = self.store.read()
            if data is not None and version is not None and holder.write and Holder.parse(data) == holder:
                return version
            raise

    # -- acquisition
    def acquire(self, take_over: bool = False) -> "Lease":
        for _ in range(5):  # a conflict means another driver changed the lease meanwhile: look again
            data, version = self.store.read()
            now = self.clock()
            me = self._stamped(now)
            try:
                if data is None:
                    self.version = self._swap(me, None)
                    self._refuses_a_second_create(me)
                else:
                    other = Holder.parse(data)
                    gone = not other.released and other.gone()
                    fresh = not other.released and other.age(now) <= other.ttl_s and not gone
                    if fresh and not take_over:
                        raise LeaseHeldError(
                            f"run directory {self.run_url} is in use: {other.describe(now)}; a lease is "
                            f"stale after {other.ttl_s:.0f} s without one. Wait for that driver to finish or stop "
                            f"it, or pass --take-over if you are sure it is gone (its writes would then race "
                            f"with this one's).")
                    self.version = self._swap(me, version)
                    if not other.released:
                        why = ("forced by --take-over" if fresh else "its process is gone" if gone else
                               f"stale for {other.age(now):.0f} s")
                        self.say(f"lease: took over {self.url} from {other.describe(now)} ({why})")
            except _Conflict:
                continue
            self.me, self.renewed_at = me, now
            return self
        raise LeaseHeldError(f"run directory {self.run_url}: the lease {self.url} changed under five attempts "
                             f"to take it; another driver is starting there")

    def _refuses_a_second_create(self, me: Holder) -> None:
        """A store that ignores If-None-Match would let two drivers both 'create' the lease."""
        if self.store.scheme not in ("s3", "s3a"):
            return
        second = dataclasses.replace(me, write=uuid.uuid4().hex)  # its own token: never taken for the first
        try:
            self.store.write(second.to_bytes(), None)
        except _Conflict:
            return
        raise StorageError(f"the store behind {self.url} ignores conditional writes (If-None-Match: * was not "
                           f"refused on an existing object): it cannot hold a run lease. Use a store that honours "
                           f"them (AWS S3, Ceph RGW) or a local run directory")

    def _stamped(self, now: float) -> Holder:
        return Holder(self.me.id, self.me.host, self.me.pid, self.me.started_at if self.version else now,
                      now, self.ttl_s, write=uuid.uuid4().hex)

    # -- heartbeat
    def renew(self) -> None:
        with self._lock:
            if self.lost:
                return
            now = self.clock()
            me = self._stamped(now)
            try:
                self.version = self._swap(me, self.version)
                self.me, self.renewed_at = me, now
            except _Conflict:
                data, _ = self.store.read()
                other = Holder.parse(data) if data is not None else None
                self.lost = (f"the lease {self.url} was taken over by {other.describe(now)}" if other else
                             f"the lease {self.url} was removed")

    def check(self) -> None:
        """Raise LeaseLostError unless this driver still holds the lease (call before each commit)."""
        error = ""
        if self.lost is None and self.clock() - self.renewed_at > self.ttl_s:
            try:  # the heartbeat fell behind (a paused process, a gateway away): try once before giving up
                self.renew()
            except Exception as e:  # noqa: BLE001 - reported in the message below
                error = f" (last attempt: {type(e).__name__}: {e})"
        if self.lost is None and self.clock() - self.renewed_at > self.ttl_s:
            self.lost = f"the lease {self.url} could not be renewed for {self.clock() - self.renewed_at:.0f} s{error}"
        if self.lost:
            raise LeaseLostError(f"this driver stops: {self.lost}; it may belong to another driver now "
                                 f"(run {self.run_url})")

    def confirm(self) -> None:
        """Renew now and check: before a commit, so that a take-over since the last beat is seen."""
        try:
            self.renew()
        except Exception:  # noqa: BLE001 - a store away for less than the ttl does not stop the run
            pass
        self.check()

    def start(self, interval_s: float | None = None) -> "Lease":
        interval = interval_s if interval_s is not None else self.ttl_s / 4

        def beat():
            while not self._stop.wait(interval):
                try:
                    self.renew()
                except Exception as e:  # noqa: BLE001 - a failed beat is retried; check() decides
                    self.say(f"lease: heartbeat failed ({type(e).__name__}: {e}); retrying")
        self._thread = threading.Thread(target=beat, name="collapse-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lost or self.version is None:
            return
        done = Holder(self.me.id, self.me.host, self.me.pid, self.me.started_at, self.clock(), self.ttl_s, True,
                      uuid.uuid4().hex)
        with self._lock:
            try:
                self.version = self._swap(done, self.version)
            except _Conflict:
                pass  # taken over meanwhile: the new holder's lease stays

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def read_holder(run_url: str, storage_options: dict | None = None) -> Holder | None:
    """The current lease of a run directory (None when it never had one)."""
    store = _Store(storage.join(run_url, LEASE_NAME), storage_options)
    data, _ = store.read()
    return Holder.parse(data) if data is not None else None
