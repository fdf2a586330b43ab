"""Every byte of storage goes through fsspec; this module opens file systems and writes atomically.

Endpoint and credentials come from `storage_options` (``endpoint_url``, ``key``, ``secret``) or the
standard environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). They are never
written into manifests, configs or logs: nothing here serialises them.

Atomicity (measured, see docs/PLATFORM.md): an S3 object is invisible until its upload
completes, so object stores get one ``put``/``pipe`` of finished bytes; ``file://`` and
``memory://`` show partial data while writing, so those get a temporary name and a rename.
"""
from __future__ import annotations

import errno
import os
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from collapse.errors import StorageError

#: Schemes a run directory may live on. Others are refused with a clear error.
SUPPORTED_SCHEMES = ("file", "local", "s3", "s3a", "gs", "gcs", "memory")
_OBJECT_STORES = ("s3", "s3a", "gs", "gcs")

# A throttled or flaky store is waited out; an unreachable endpoint fails within seconds:
# - botocore's "standard" retry mode (exponential backoff with jitter) retries throttling (503
#   SlowDown), 5xx answers, timeouts and dropped connections: 3 attempts per call;
# - around each call, s3fs retries SlowDown and read timeouts up to S3FS_RETRIES times, waiting
#   0.1 * 1.7^i s (~28 s in all for 10; s3fs's class default is 5, ~2 s), so a store that throttles
#   for a while is waited out;
# - a refused connection is retried by botocore only: 3.5 s until the error names the endpoint.
# tests/data/test_flaky_store.py runs the storage layer through a proxy that injects these faults.
S3FS_RETRIES = 10
# No listings cache: other processes (workers, another driver) write the run's objects, and s3fs would
# answer exists() and reads from a listing made before them (a `collapse verify` in a driver, then a
# read of what a job wrote since, said FileNotFoundError).
_S3_DEFAULTS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                  "retries": {"mode": "standard", "max_attempts": 3}},
                "use_listings_cache": False}


def storage_options_for(url: str) -> dict | None:
    """Storage options for ``url`` from the standard environment (S3 endpoint and keys), else None.

    Stages pass these to their actors explicitly: a driver's environment does not reach Ray workers.
    """
    if scheme_of(url) not in ("s3", "s3a"):
        return None
    env = {"endpoint_url": "AWS_ENDPOINT_URL", "key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}
    opts = {k: os.environ[v] for k, v in env.items() if os.environ.get(v)}
    return opts or None


def scheme_of(url: str) -> str:
    """The URL's scheme; a bare path is ``file``."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def local_path(url: str) -> str | None:
    """The path of a URL on this machine's disk (a bare path, ``file://``, ``local://``); None elsewhere."""
    return (url.split("://", 1)[1] if "://" in url else url) if scheme_of(url) in ("file", "local") else None


def open_fs(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for a URL, refusing unknown schemes by name."""
    scheme = scheme_of(url)
    if scheme not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"unsupported URL scheme {scheme!r} in {url!r}: expected one of {', '.join(SUPPORTED_SCHEMES)}")
    options: dict[str, Any] = dict(storage_options or {})
    if scheme in ("s3", "s3a"):
        for k, v in _S3_DEFAULTS.items():
            options.setdefault(k, v)
    try:
        fs, path = url_to_fs(url, **options)
    except ImportError as e:
        raise StorageError(f"cannot open {url!r}: the driver for {scheme!r} is not installed ({e})") from e
    if scheme in ("s3", "s3a"):
        fs.retries = S3FS_RETRIES  # an attribute of s3fs's, not a constructor argument
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL path parts with '/', whatever the scheme."""
    out = url.rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def storage_call(url: str, what: str, fn, *args, **kwargs):
    """Run a storage call and turn transport and permission failures into a StorageError naming the URL."""
    try:
        return fn(*args, **kwargs)
    except FileNotFoundError:
        raise
    except PermissionError as e:
        raise StorageError(f"{what} {url!r}: access denied, check the credentials ({_describe(e)})") from e
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"{what} {url!r}: storage error ({_describe(e)})",
                           transient=e.errno != errno.ENOSPC) from e
    except Exception as e:  # botocore/aiohttp connection errors are not OSErrors
        name = type(e).__name__
        if "Endpoint" in name or "Connect" in name or "Credential" in name or "ClientError" in name:
            raise StorageError(f"{what} {url!r}: cannot reach the storage endpoint ({_describe(e)})",
                               transient="Credential" not in name) from e
        raise


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` so that a reader sees either nothing (or the old object) or all of it."""
    fs, path = open_fs(url, storage_options)
    storage_call(url, "cannot write", _write_atomic, fs, path, data, scheme_of(url))


def _write_atomic(fs, path: str, data: bytes, scheme: str) -> None:
    parent = path.rsplit("/", 1)[0]
    if scheme in _OBJECT_STORES:
        fs.pipe_file(path, data)  # one PUT or a multipart upload completed only at the end
        return
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
    fs.pipe_file(tmp, data)
    if scheme in ("file", "local"):
        os.replace(tmp, path)  # atomic on POSIX, even over an existing file
    else:
        fs.mv(tmp, path)


def upload_file(local_path: str, url: str, storage_options: dict | None = None) -> None:
    """Upload a finished local file atomically (same guarantee as :func:`write_bytes`)."""
    with open(local_path, "rb") as f:
        data = f.read()
    write_bytes(url, data, storage_options)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = open_fs(url, storage_options)
    return storage_call(url, "cannot read", fs.cat_file, path)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = open_fs(url, storage_options)
    return bool(storage_call(url, "cannot check", fs.exists, path))


def remove(url: str, storage_options: dict | None = None, recursive: bool = False) -> None:
    fs, path = open_fs(url, storage_options)
    if storage_call(url, "cannot check", fs.exists, path):
        storage_call(url, "cannot delete", fs.rm, path, recursive=recursive)


def list_names(url: str, storage_options: dict | None = None) -> list[str]:
    """Base names directly under a directory URL (empty when it does not exist)."""
    fs, path = open_fs(url, storage_options)
    try:
        entries = storage_call(url, "cannot list", fs.ls, path, detail=False, refresh=True) \
            if scheme_of(url) in _OBJECT_STORES else storage_call(url, "cannot list", fs.ls, path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


SPOOL_ENV = "COLLAPSE_SPOOL"


def spool_dir() -> str:
    """The local directory where workers stage files before upload (checkpoints, models): $COLLAPSE_SPOOL,
    else the temp dir. Point it at a node's large local disk; it must be set where the workers run."""
    import tempfile
    d = os.environ.get(SPOOL_ENV) or tempfile.gettempdir()
    os.makedirs(d, exist_ok=True)
    return d


def full_spool(e: OSError, what: str) -> StorageError:
    """The error of a full local spool, naming it and what to do."""
    return StorageError(f"{what}: the local spool {spool_dir()} is full (No space left on device); free space "
                        f"there or set {SPOOL_ENV} to a larger local disk on every node")


def abort_multipart_uploads(url: str, storage_options: dict | None = None) -> list[str]:
    """Abort the unfinished multipart uploads under ``url`` (an object store's invisible half-writes of a
    killed writer, which it keeps and bills until aborted); returns their keys. Other schemes: nothing."""
    if scheme_of(url) not in ("s3", "s3a"):
        return []
    fs, path = open_fs(url, storage_options)
    bucket, _, prefix = path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    aborted, kw = [], {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = storage_call(url, "cannot list the uploads of", fs.call_s3, "list_multipart_uploads", **kw)
        for u in page.get("Uploads", []):
            try:
                storage_call(url, "cannot abort an upload under", fs.call_s3, "abort_multipart_upload",
                             Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            except StorageError as e:
                if "NoSuchUpload" not in str(e):
                    raise   # else: aborted already (a retried abort whose first answer was lost)
            aborted.append(u["Key"])
        if not page.get("IsTruncated"):
            return aborted
        kw.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))


def register_webdataset_schemes(storage_options: dict | None = None) -> None:
    """Let plain ``webdataset.WebDataset("s3://...")`` read through fsspec in this process.

    webdataset 1.0.2 has no s3 handler; we add one per process (file systems are not fork-safe).
    """
    import sys
    import webdataset  # noqa: F401  (loads webdataset.gopen)
    gopen_mod = sys.modules["webdataset.gopen"]

    def _open(url, mode="rb", bufsize=8192, **kw):
        fs, path = open_fs(url, storage_options)
        return fs.open(path, mode)

    for scheme in ("s3", "gs", "gcs", "memory"):
        gopen_mod.gopen_schemes[scheme] = _open
