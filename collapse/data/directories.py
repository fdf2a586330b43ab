"""Whole directories (a diffusers model, a DeepSpeed checkpoint) at a URL, committed by a manifest.

Each file is uploaded atomically, then ``manifest.json`` lists every file with its size and sha256:
a directory without a manifest is unfinished and is never loaded.
"""
from __future__ import annotations

import hashlib
import os

from collapse.data import manifest as manifests
from collapse.data import storage
from collapse.errors import DamagedError

KIND = "directory"


def upload_files(local_dir: str, url: str, storage_options: dict | None = None, names: list[str] | None = None
                 ) -> list[dict]:
    """Upload files of ``local_dir`` (all, recursively, or ``names``) under ``url``; return their records."""
    if names is None:
        names = sorted(os.path.relpath(os.path.join(d, f), local_dir)
                       for d, _, fs in os.walk(local_dir) for f in fs)
    records = []
    for name in names:
        with open(os.path.join(local_dir, name), "rb") as f:
            data = f.read()
        storage.write_bytes(storage.join(url, name.replace(os.sep, "/")), data, storage_options)
        records.append({"name": name.replace(os.sep, "/"), "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    return records


def commit_directory(url: str, records: list[dict], extra: dict | None = None,
                     storage_options: dict | None = None) -> dict:
    manifest = {"kind": KIND, "files": sorted(records, key=lambda r: r["name"]), "extra": dict(extra or {})}
    manifests.write_manifest(url, manifest, storage_options)
    return manifest


def upload_directory(local_dir: str, url: str, extra: dict | None = None, storage_options: dict | None = None) -> dict:
    """Upload every file of ``local_dir`` to ``url``, then commit the manifest."""
    return commit_directory(url, upload_files(local_dir, url, storage_options), extra, storage_options)


def download_directory(url: str, local_dir: str, storage_options: dict | None = None) -> dict:
    """Download a committed directory into ``local_dir`` (checking every file); returns its manifest."""
    manifest = manifests.read_manifest(url, storage_options, kind=KIND)
    for rec in manifest["files"]:
        part = storage.join(url, rec["name"])
        try:
            data = storage.read_bytes(part, storage_options)
        except FileNotFoundError:
            raise DamagedError(part, url, "the file listed in its manifest is missing") from None
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise DamagedError(part, url, "its sha256 differs from the manifest's (corrupt or overwritten)")
        path = os.path.join(local_dir, *rec["name"].split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return manifest
