"""Manifests: the small JSON file a stage writes last. Its presence means "finished"."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from collapse.data import storage
from collapse.errors import DataError, NotFinishedError

MANIFEST_NAME = "manifest.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-able config (sha256 of its canonical JSON, 16 hex digits)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def manifest_url(dir_url: str) -> str:
    return storage.join(dir_url, MANIFEST_NAME)


def write_manifest(dir_url: str, manifest: dict, storage_options: dict | None = None) -> None:
    """Commit a stage: write its manifest atomically. Call it after every other write of the stage."""
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    storage.write_bytes(manifest_url(dir_url), data, storage_options)


def read_manifest(dir_url: str, storage_options: dict | None = None, kind: str | None = None) -> dict:
    """Read a committed manifest; raise NotFinishedError when there is none."""
    url = manifest_url(dir_url)
    try:
        raw = storage.read_bytes(url, storage_options)
    except FileNotFoundError:
        raise NotFinishedError(f"{dir_url!r} is not finished: it has no {MANIFEST_NAME}") from None
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise DataError(f"manifest {url!r} is not valid JSON ({e})") from e
    if kind is not None and manifest.get("kind") != kind:
        raise DataError(f"{url!r} is a {manifest.get('kind')!r} manifest, expected {kind!r}")
    return manifest


def try_read_manifest(dir_url: str, storage_options: dict | None = None) -> dict | None:
    try:
        return read_manifest(dir_url, storage_options)
    except NotFinishedError:
        return None
