"""The local S3 endpoints: Ceph RADOS Gateway (infra/ceph/local-s3.sh) and moto."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

LOCAL_S3 = Path(__file__).resolve().parents[2] / "infra" / "ceph" / "local-s3.sh"
MiB = 1 << 20
# 0 bytes, one byte, a small object, and two that s3fs uploads in 5 MiB parts
SIZES = [0, 1, 1000, 5 * MiB + 1, 12 * MiB + 7]


def _payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _write_objects(fs, bucket: str) -> dict[str, bytes]:
    objects = {}
    for i, size in enumerate(SIZES):
        path = f"{bucket}/sizes/obj-{size}.bin"
        data = _payload(size, seed=i)
        # written in 1 MiB pieces with block_size 5 MiB (S3's smallest part): s3fs sends a
        # part each time 5 MiB are buffered, so anything larger is a multipart upload
        with fs.open(path, "wb", block_size=5 * MiB) as f:
            for start in range(0, size, MiB):
                f.write(data[start:start + MiB])
        objects[path] = data
    return objects


def _check_objects(fs, objects: dict[str, bytes]) -> None:
    for path, data in objects.items():
        got = fs.cat_file(path)
        assert len(got) == len(data), path
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path
        if len(data) > 10:
            assert fs.cat_file(path, start=3, end=10) == data[3:10]


def _our_listeners(state_dir: Path) -> dict[int, list[tuple[str, int]]]:
    """{pid: [(local address, port)]} of the TCP listening sockets of our Ceph daemons."""
    listening = {}  # socket inode -> (address, port)
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            if v6:  # four little-endian 32-bit words
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))
            else:
                addr = ".".join(str(b) for b in raw[::-1])
            listening[inode] = (addr, int(hex_port, 16))
    result = {}
    for pid_file in sorted((state_dir / "run").glob("*.pid")):
        pid = int(pid_file.read_text().strip())
        sockets = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in listening:
                sockets.append(listening[target[8:-1]])
        result[pid] = sockets
    return result


@pytest.mark.ceph
def test_objects_survive_a_gateway_restart(ceph_bucket):
    endpoint, url = ceph_bucket
    fs = endpoint.filesystem()
    bucket = url.removeprefix("s3://")
    objects = _write_objects(fs, bucket)

    etags = {size: fs.info(f"{bucket}/sizes/obj-{size}.bin")["ETag"] for size in SIZES}
    assert etags[12 * MiB + 7].strip('"').endswith("-3"), "expected a 3-part multipart upload"
    assert etags[5 * MiB + 1].strip('"').endswith("-2")
    assert "-" not in etags[1000]
    _check_objects(fs, objects)

    if endpoint.state_dir is None:
        pytest.skip("external endpoint (COLLAPSE_S3_ENDPOINT): not ours to restart")
    endpoint.restart_gateway()

    _check_objects(endpoint.filesystem(), objects)
    fs.invalidate_cache()
    _check_objects(fs, objects)  # the old client reconnects on its own


@pytest.mark.ceph
def test_list_and_delete(ceph_bucket):
    endpoint, url = ceph_bucket
    fs = endpoint.filesystem()
    bucket = url.removeprefix("s3://")
    names = [f"{bucket}/a/{i}.txt" for i in range(3)] + [f"{bucket}/b/c/d.txt"]
    fs.pipe({name: name.encode() for name in names})

    assert sorted(fs.find(bucket)) == sorted(names)
    assert sorted(fs.ls(f"{bucket}/a", detail=False)) == sorted(names[:3])
    assert sorted(fs.ls(bucket, detail=False)) == [f"{bucket}/a", f"{bucket}/b"]
    assert fs.info(names[0])["size"] == len(names[0])

    fs.rm(names[0])
    fs.rm(f"{bucket}/b", recursive=True)
    fs.invalidate_cache()
    assert sorted(fs.find(bucket)) == sorted(names[1:3])
    assert not fs.exists(names[0])
    with pytest.raises(FileNotFoundError):
        fs.cat_file(names[0])

    assert bucket in {p.rstrip("/") for p in fs.ls("", detail=False)}


@pytest.mark.ceph
def test_store_persists_across_a_full_restart(ceph_bucket):
    endpoint, url = ceph_bucket
    if endpoint.state_dir is None:
        pytest.skip("external endpoint (COLLAPSE_S3_ENDPOINT): not ours to restart")
    fs = endpoint.filesystem()
    fs.pipe_file(f"{url}/kept.bin", b"persisted")

    def local_s3(*args):
        proc = subprocess.run(["bash", str(LOCAL_S3), *args, str(endpoint.state_dir)],
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    exports = local_s3("env")
    assert local_s3("start") == exports  # already running: reused as it is
    local_s3("stop")
    status = subprocess.run(["bash", str(LOCAL_S3), "status", str(endpoint.state_dir)],
                            capture_output=True, text=True, check=False)
    assert status.returncode != 0 and "mon.a: stopped" in status.stdout
    assert local_s3("start") == exports  # same port and keys after a restart

    assert endpoint.filesystem().cat_file(f"{url}/kept.bin") == b"persisted"


@pytest.mark.ceph
def test_every_daemon_listens_on_loopback_only(ceph_s3):
    if ceph_s3.state_dir is None:
        pytest.skip("external endpoint (COLLAPSE_S3_ENDPOINT): not started by this session")
    port = int(ceph_s3.endpoint_url.rsplit(":", 1)[1])
    listeners = _our_listeners(ceph_s3.state_dir)

    assert len(listeners) == 3, listeners  # mon, osd, rgw
    assert all(listeners.values()), listeners  # each of them listens on something
    bound = [addr for sockets in listeners.values() for addr in sockets]
    assert ("127.0.0.1", port) in bound
    assert all(addr == "127.0.0.1" for addr, _ in bound), bound

    # the same seen from ss, when it is installed
    ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=False)
    if ss.returncode == 0:
        rgw_lines = [line for line in ss.stdout.splitlines() if f":{port} " in line]
        assert rgw_lines and all(" 127.0.0.1:" in line for line in rgw_lines), rgw_lines


@pytest.mark.ceph
@pytest.mark.parametrize("change", ["secret", "key"])
def test_wrong_credentials_are_refused(ceph_bucket, change):
    endpoint, url = ceph_bucket
    endpoint.filesystem().pipe_file(f"{url}/x", b"x")
    wrong = dataclasses.replace(endpoint, **{change: "not-the-" + change})
    fs = wrong.filesystem()

    with pytest.raises(PermissionError):
        fs.cat_file(f"{url}/x")
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{url}/y", b"y")
    with pytest.raises(PermissionError):
        fs.ls(url)


def test_moto_round_trip(moto_bucket):
    endpoint, url = moto_bucket
    assert endpoint.endpoint_url.startswith("http://127.0.0.1:")
    fs = endpoint.filesystem()
    data = _payload(6 * MiB, seed=7)
    with fs.open(f"{url}/big.bin", "wb", block_size=5 * MiB) as f:
        f.write(data)
    fs.pipe_file(f"{url}/small.txt", b"hello")

    assert fs.cat_file(f"{url}/big.bin") == data
    assert fs.cat_file(f"{url}/small.txt") == b"hello"
    assert sorted(fs.ls(url, detail=False)) == [f"{url[5:]}/big.bin", f"{url[5:]}/small.txt"]
    fs.rm(f"{url}/small.txt")
    fs.invalidate_cache()
    assert fs.ls(url, detail=False) == [f"{url[5:]}/big.bin"]


def test_restart_gateway_is_refused_for_a_store_we_did_not_start(moto_s3):
    with pytest.raises(RuntimeError, match="did not start"):
        moto_s3.restart_gateway()
