"""Importers and `collapse ingest`: shipped real data, user folders and arrays, bad input."""
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from collapse.data.importers import ingest, read_idx
from collapse.data.samples import open_sample_set
from collapse.errors import DataError

QUIET = dict(progress=lambda *_: None)


def _check_fmnist(out, opts=None):
    train, hold = open_sample_set(f"{out}/train", opts), open_sample_set(f"{out}/holdout", opts)
    assert (train.count, hold.count) == (2000, 1000)
    assert train.shape == (16, 16) and hold.shape == (16, 16)
    keys, images, metas = train.load(keys=train.keys[:50])
    assert all(m["source"] == "real" and m["dataset"] == "fashion-mnist" and 0 <= m["label"] <= 9 for m in metas)
    assert images.std() > 20  # real clothing images, not blank
    assert not set(train.keys) & set(hold.keys)
    assert all(k.startswith("fashion-mnist-test-") for k in hold.keys)


def test_cli_ingest_fashion_mnist_local(tmp_path):
    out = str(tmp_path / "fm")
    cmd = [sys.executable, "-m", "jobs.cli", "ingest", "fashion-mnist", "--out", out,
           "--size", "16", "--n", "2000", "--holdout", "1000"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "wrote 2000 images (16, 16)" in r.stdout
    _check_fmnist(out)
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "nothing to do" in r.stdout
    r = subprocess.run(cmd[:-1] + ["999"], capture_output=True, text=True)
    assert r.returncode == 2 and "different import" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.ceph
def test_cli_ingest_fashion_mnist_ceph(ceph_bucket):
    endpoint, bucket = ceph_bucket
    env = dict(os.environ, AWS_ACCESS_KEY_ID=endpoint.key, AWS_SECRET_ACCESS_KEY=endpoint.secret)
    cmd = [sys.executable, "-m", "jobs.cli", "ingest", "fashion-mnist", "--out", f"{bucket}/fm",
           "--size", "16", "--n", "2000", "--holdout", "1000", "--endpoint-url", endpoint.endpoint_url]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    _check_fmnist(f"{bucket}/fm", endpoint.storage_options)


def test_ingest_is_seeded_and_resizes_from_the_real_files(tmp_path):
    raw = read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    assert raw.shape == (60000, 28, 28)
    ingest("fashion-mnist", str(tmp_path / "a"), n=30, seed=4, **QUIET)
    ingest("fashion-mnist", str(tmp_path / "b"), n=30, seed=4, **QUIET)
    a, b = open_sample_set(str(tmp_path / "a/train")), open_sample_set(str(tmp_path / "b/train"))
    assert a.keys == b.keys
    keys, images, metas = a.load()
    idx = int(metas[0]["origin"].split(":")[1])
    assert np.array_equal(images[0], raw[idx])  # no resize: the exact real pixels


def test_digits_and_rgb(tmp_path):
    ingest("digits", str(tmp_path / "d"), size=16, mode="rgb", holdout=97, **QUIET)
    train, hold = open_sample_set(str(tmp_path / "d/train")), open_sample_set(str(tmp_path / "d/holdout"))
    assert train.count + hold.count == 1797 and train.shape == (16, 16, 3)
    assert not set(train.keys) & set(hold.keys)


def test_folder_and_npz_sources(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    ingest(f"folder:{folder}", str(tmp_path / "f"), **QUIET)
    assert open_sample_set(str(tmp_path / "f/train")).shape == (10, 10, 3)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(folder / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: image shape \(12, 10, 3\), expected \(10, 10, 3\)"):
        ingest(f"folder:{folder}", str(tmp_path / "g"), **QUIET)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        ingest(f"folder:{folder}", str(tmp_path / "g"), size=8, **QUIET)
    with pytest.raises(DataError, match="g/train.*is not finished|not finished"):
        open_sample_set(str(tmp_path / "g/train"))

    np.savez(tmp_path / "a.npz", images=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), labels=np.arange(20))
    ingest(f"npy:{tmp_path / 'a.npz'}", str(tmp_path / "n"), n=5, holdout=3, **QUIET)
    assert open_sample_set(str(tmp_path / "n/train")).count == 5
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 8), np.float32) + 0.5)
    with pytest.raises(DataError, match="bad.npy.*uint8"):
        ingest(f"npy:{tmp_path / 'bad.npy'}", str(tmp_path / "m"), **QUIET)


def test_webdataset_source(tmp_path):
    path = tmp_path / "foreign-000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(np.full((6, 6), i * 40, np.uint8)).save(buf, format="PNG")
            for name, data in ((f"x{i}.png", buf.getvalue()), (f"x{i}.cls", str(i).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ingest(f"wds:{tmp_path}/foreign-{{000..000}}.tar", str(tmp_path / "w"), **QUIET)
    _, images, metas = open_sample_set(str(tmp_path / "w/train")).load()
    assert sorted(m["label"] for m in metas) == [0, 1, 2, 3] and images.shape == (4, 6, 6)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(DataError, match="foreign-000.tar"):
        ingest(f"wds:{path}", str(tmp_path / "w2"), **QUIET)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=70000), "n=70000 is larger than the 60000"),
    (dict(holdout=20000), "holdout=20000 is larger than the 10000"),
    (dict(mode="cmyk"), "mode must be"),
    (dict(size=0), "size must be"),
])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        ingest("fashion-mnist", str(tmp_path / "x"), **kwargs, **QUIET)


def test_unknown_source_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unknown source 'imagenet'"):
        ingest("imagenet", str(tmp_path / "x"), **QUIET)
    with pytest.raises(DataError, match="not exist"):
        ingest(f"folder:{tmp_path}/nope", str(tmp_path / "x"), **QUIET)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        ingest(f"folder:{empty}", str(tmp_path / "x"), **QUIET)


def test_a_webdataset_source_is_read_one_shard_at_a_time(tmp_path, monkeypatch):
    from collapse.data import importers, storage
    for s in range(3):
        with tarfile.open(tmp_path / f"part-{s}.tar", "w") as tar:
            for i in range(5):
                buf = io.BytesIO()
                Image.fromarray(np.full((6, 6), 10 * (5 * s + i), np.uint8)).save(buf, format="PNG")
                for name, data in ((f"s{s}i{i}.png", buf.getvalue()), (f"s{s}i{i}.cls", str(i).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    reads = []
    real_read = storage.read_bytes

    def counted(url, *a, **k):
        reads.append(url)
        return real_read(url, *a, **k)
    monkeypatch.setattr(storage, "read_bytes", counted)
    src = importers.webdataset_urls(f"{tmp_path}/part-{{0..2}}.tar")
    assert src.count == 15 and src.labels == [0, 1, 2, 3, 4] * 3
    for i in range(15):
        assert src.load(i)[0, 0] == 10 * i
    per_shard = {u: reads.count(u) for u in set(reads)}
    assert sorted(per_shard.values()) == [2, 2, 2]  # the index pass, then one read while loading in order
    ingest(f"wds:{tmp_path}/part-{{0..2}}.tar", str(tmp_path / "w"), n=8, holdout=4, **QUIET)
    train = open_sample_set(str(tmp_path / "w/train"))
    assert train.count == 8 and len(set(train.keys) & set(open_sample_set(str(tmp_path / "w/holdout")).keys)) == 0
