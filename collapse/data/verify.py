"""``collapse verify``: check committed bytes against their manifests, for one set or a whole run.

Every committed directory of a run has a ``manifest.json``; those of sample sets list each shard's
sha256 (and keys), those of file directories (models, checkpoints, the classifier) each file's.
A finding names the part that is damaged and the set it belongs to. Nothing is changed here:
``collapse run`` rebuilds what its stages can rebuild (cluster/stages/__init__.py, ``rebuild``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from collapse.data import directories, manifest, samples, storage
from collapse.errors import DamagedError, NotFinishedError


@dataclass(frozen=True)
class Finding:
    set_url: str
    part_url: str
    why: str

    def line(self) -> str:
        return f"damaged: {self.part_url} (of {self.set_url}): {self.why}"


@dataclass(frozen=True)
class Verified:
    sets: int          # committed directories whose parts were checked
    parts: int         # shards and files checked
    findings: tuple[Finding, ...]


def verify_set(url: str, storage_options: dict | None = None) -> tuple[int, list[Finding]]:
    """Check one committed directory; ``(parts checked, findings)``. Kinds without parts check nothing."""
    m = manifest.read_manifest(url, storage_options)
    kind, found = m.get("kind"), []
    if kind == samples.KIND:
        s = samples.SampleSet(url, storage_options)
        for i in range(len(s.shards)):
            try:
                list(s.read_shard(i))
            except DamagedError as e:
                found.append(Finding(e.set_url, e.part_url, e.why))
        return len(s.shards), found
    if kind == directories.KIND:
        for rec in m["files"]:
            part = storage.join(url, rec["name"])
            try:
                data = storage.read_bytes(part, storage_options)
            except FileNotFoundError:
                found.append(Finding(url, part, "the file listed in its manifest is missing"))
                continue
            if hashlib.sha256(data).hexdigest() != rec["sha256"]:
                found.append(Finding(url, part, "its sha256 differs from the manifest's"))
        return len(m["files"]), found
    if kind == "classifier" and m.get("labelled"):
        from collapse.classifier import load_classifier
        try:
            load_classifier(url, storage_options)
        except DamagedError as e:
            found.append(Finding(e.set_url, e.part_url, e.why))
        return 1, found
    return 0, found


def committed_dirs(url: str, storage_options: dict | None = None) -> list[str]:
    """Every directory at or under ``url`` that holds a manifest, in path order."""
    fs, path = storage.open_fs(url, storage_options)
    names = storage.storage_call(url, "cannot list", fs.find, path)
    base = path.rstrip("/")
    out = []
    for name in sorted(names):
        if name.rsplit("/", 1)[-1] == manifest.MANIFEST_NAME:
            rel = name[len(base):].rsplit("/", 1)[0].strip("/")
            out.append(storage.join(url, rel) if rel else url.rstrip("/"))
    return out


def verify(url: str, storage_options: dict | None = None) -> Verified:
    """Check ``url``: one committed set, or every committed set under it (a run directory)."""
    dirs = committed_dirs(url, storage_options)
    if not dirs:
        raise NotFinishedError(f"{url!r} holds no committed set (no {manifest.MANIFEST_NAME} at or under it)")
    parts, found = 0, []
    for d in dirs:
        n, f = verify_set(d, storage_options)
        parts += n
        found += f
    return Verified(len(dirs), parts, tuple(found))
