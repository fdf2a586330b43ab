"""Sample sets: round trips on every storage backend, validation, corruption, subsets, features."""
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from collapse.data import storage
from collapse.data import manifest as mf
from collapse.data.features import has_features, iter_features, load_features, save_features
from collapse.data.manifest import read_manifest
from collapse.data.samples import (Sample, iter_tar_samples, open_sample_set, write_sample_set, write_subset)
from collapse.errors import DamagedError, DataError, NotFinishedError, StorageError
from tests.data.helpers import assert_same_samples, make_samples


def _roundtrip(url, storage_options=None):
    samples = make_samples(23, shape=(8, 8)) 
    m = write_sample_set(url, samples, shard_size=10, config_hash="abc", storage_options=storage_options)
    assert m["count"] == 23 and m["shape"] == [8, 8] and m["mode"] == "L" and len(m["shards"]) == 3
    s = open_sample_set(url, storage_options)
    assert s.keys == [x.key for x in samples]
    assert_same_samples(list(s.iter_samples()), samples)
    # the bytes in storage are exactly the bytes the manifest hashed
    for rec, shard_url in zip(s.shards, s.shard_urls):
        assert hashlib.sha256(storage.read_bytes(shard_url, storage_options)).hexdigest() == rec["sha256"]
    keys, images, metas = s.load()
    assert images.shape == (23, 8, 8) and metas[5]["label"] == 5 and metas[5]["source"] == "real"
    rgb = make_samples(5, shape=(4, 6, 3), seed=3, source="gen-002", prefix="g")
    write_sample_set(storage.join(url, "rgb"), rgb, storage_options=storage_options)
    got = list(open_sample_set(storage.join(url, "rgb"), storage_options).iter_samples())
    assert_same_samples(got, rgb)
    assert got[0].meta["model"] == "memory://m/model" and got[0].meta["seed"] == 1000


def test_roundtrip_bare_path(tmp_path):
    _roundtrip(str(tmp_path / "set"))


def test_roundtrip_file_url(tmp_path):
    _roundtrip(f"file://{tmp_path}/set")


def test_roundtrip_memory():
    _roundtrip("memory://roundtrip/set")


def test_roundtrip_moto(moto_bucket):
    endpoint, bucket = moto_bucket
    _roundtrip(f"{bucket}/set", endpoint.storage_options)


@pytest.mark.ceph
def test_roundtrip_ceph(ceph_bucket):
    endpoint, bucket = ceph_bucket
    _roundtrip(f"{bucket}/run/real/train", endpoint.storage_options)


def test_same_samples_give_same_bytes(tmp_path):
    samples = make_samples(7)
    a = write_sample_set(str(tmp_path / "a"), samples)
    b = write_sample_set(str(tmp_path / "b"), samples)
    assert a["shards"][0]["sha256"] == b["shards"][0]["sha256"]


@pytest.mark.parametrize("bad, message", [
    (Sample("a-1", np.zeros((9, 8), np.uint8), {"source": "real"}), "expected (8, 8)"),
    (Sample("a-1", np.zeros((8, 8), np.float32), {"source": "real"}), "uint8"),
    (Sample("a-1", np.zeros((8, 8, 4), np.uint8), {"source": "real"}), "neither grey"),
    (Sample("a-1", np.zeros((8, 8), np.uint8), {}), "missing the field 'source'"),
    (Sample("a-1", np.zeros((8, 8), np.uint8), {"source": "fake"}), "expected 'real' or 'gen-NNN'"),
    (Sample("a-1", np.zeros((8, 8), np.uint8), {"source": "gen-001"}), "needs 'model' and 'seed'"),
    (Sample("a.1", np.zeros((8, 8), np.uint8), {"source": "real"}), "key must match"),
])
def test_bad_samples_are_refused_and_nothing_is_finished(tmp_path, bad, message):
    url = str(tmp_path / "set")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_sample_set(url, make_samples(3) + [bad])
    with pytest.raises(NotFinishedError):
        open_sample_set(url)


def test_empty_source_and_duplicate_keys(tmp_path):
    with pytest.raises(DataError, match="empty"):
        write_sample_set(str(tmp_path / "e"), [])
    with pytest.raises(DataError, match="more than once"):
        write_sample_set(str(tmp_path / "d"), make_samples(3) + make_samples(1), shard_size=2)


def test_existing_set_is_refused_then_overwritten(tmp_path):
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(3))
    with pytest.raises(DataError, match="already exists"):
        write_sample_set(url, make_samples(4))
    write_sample_set(url, make_samples(4, seed=9), overwrite=True)
    assert open_sample_set(url).count == 4


def test_corrupt_shard_is_named(tmp_path):
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(12), shard_size=5)
    shard = tmp_path / "set" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    s = open_sample_set(url)
    with pytest.raises(DataError, match="shard-000001.tar.*damaged: its sha256 differs"):
        list(s.iter_samples())
    (tmp_path / "set" / "shard-000002.tar").unlink()
    with pytest.raises(DataError, match="shard-000002.tar.*missing"):
        list(s.iter_samples(keys=["s-00011"]))


def test_truncated_or_incomplete_tar_is_named():
    from collapse.data.samples import build_shard
    data = build_shard(make_samples(4))
    with pytest.raises(DataError, match="where.tar: not a readable tar shard"):
        list(iter_tar_samples(data[:700], "where.tar"))
    with pytest.raises(DataError, match="not a readable tar shard"):
        list(iter_tar_samples(b"this is not a tar file at all" * 30, "where.tar"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("k-1.png")
        payload = b"\x89PNG nonsense"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="'k-1' is missing its .json"):
        list(iter_tar_samples(buf.getvalue(), "x.tar"))
    with pytest.raises(DataError, match="shape"):
        list(iter_tar_samples(data, "x.tar", shape=(9, 9)))


def test_unknown_scheme_and_unreachable_endpoint():
    with pytest.raises(StorageError, match="unsupported URL scheme 'ftpx'"):
        write_sample_set("ftpx://host/set", make_samples(2))
    opts = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    with pytest.raises(StorageError, match="s3://nobucket/set"):
        write_sample_set("s3://nobucket/set", make_samples(2), storage_options=opts)


@pytest.mark.ceph
def test_wrong_credentials_are_a_clear_error(ceph_bucket):
    endpoint, bucket = ceph_bucket
    opts = dict(endpoint.storage_options, secret="not-the-secret")
    with pytest.raises(StorageError, match="access denied|storage error"):
        write_sample_set(f"{bucket}/set", make_samples(2), storage_options=opts)


def test_batches_keys_and_subsets(tmp_path):
    url = str(tmp_path / "set")
    samples = make_samples(25)
    write_sample_set(url, samples, shard_size=4)
    s = open_sample_set(url)
    batches = list(s.iter_batches(7))
    assert [len(k) for k, _, _ in batches] == [7, 7, 7, 4]
    assert np.array_equal(np.concatenate([b for _, b, _ in batches]), np.stack([x.image for x in samples]))
    keys, images, _ = s.load(keys=["s-00020", "s-00003"])
    assert keys == ["s-00003", "s-00020"] and np.array_equal(images[1], samples[20].image)
    with pytest.raises(DataError, match="not in"):
        s.load(keys=["nope"])
    other = str(tmp_path / "other")
    write_sample_set(other, make_samples(3, prefix="o", seed=5))
    sub = str(tmp_path / "sub")

    def annotate(sample):
        return dict(sample.meta, decisions=[{"strategy": "greedy", "kept": True}])
    write_subset([s, open_sample_set(other)], ["o-00002", "s-00007", "s-00001"], sub, annotate=annotate)
    got = list(open_sample_set(sub).iter_samples())
    assert [g.key for g in got] == ["o-00002", "s-00007", "s-00001"]
    assert np.array_equal(got[1].image, samples[7].image)
    assert got[1].meta["decisions"] == [{"strategy": "greedy", "kept": True}]
    with pytest.raises(DataError, match="in none of"):
        write_subset([s], ["missing-1"], str(tmp_path / "sub2"))


def test_features_live_beside_the_set_and_follow_its_version():
    url = "memory://features/set"
    write_sample_set(url, make_samples(6))
    s = open_sample_set(url)
    values = np.arange(18, dtype=np.float32).reshape(6, 3)
    assert not has_features(s, "pixel")
    save_features(s, "pixel", s.keys[::-1], values[::-1])  # any order in, set order stored
    assert has_features(s, "pixel")
    assert np.array_equal(load_features(s, "pixel"), values)
    assert np.array_equal(load_features(s, "pixel", keys=[s.keys[4]]), values[4:5])
    with pytest.raises(DataError, match="exactly"):
        save_features(s, "pixel", s.keys[:5], values[:5])
    with pytest.raises(DataError, match="NaN"):
        save_features(s, "bad", s.keys, values * np.nan)
    write_sample_set(url, make_samples(6, seed=1), overwrite=True)
    s2 = open_sample_set(url)
    assert not has_features(s2, "pixel")
    with pytest.raises(NotFinishedError, match="earlier version"):
        load_features(s2, "pixel")


def test_manifest_is_written_last_and_holds_no_credentials(moto_bucket):
    endpoint, bucket = moto_bucket
    url = f"{bucket}/creds"
    write_sample_set(url, make_samples(3), storage_options=endpoint.storage_options)
    raw = storage.read_bytes(f"{url}/manifest.json", endpoint.storage_options).decode()
    assert endpoint.secret not in raw and endpoint.key not in raw and "endpoint" not in raw
    assert read_manifest(url, endpoint.storage_options)["count"] == 3


def test_features_are_stored_per_shard_streamed_and_checked(tmp_path):
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(10), shard_size=4)  # shards of 4, 4, 2
    s = open_sample_set(url)
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    save_features(s, "pixel", s.keys, values)
    where = tmp_path / "set" / "features" / "pixel"
    assert sorted(p.name for p in where.glob("*.npy")) == ["shard-000000.npy", "shard-000001.npy", "shard-000002.npy"]
    assert np.array_equal(np.load(where / "shard-000001.npy"), values[4:8])
    assert [(j, ks, rows.tolist()) for j, ks, rows in iter_features(s, "pixel", [2])] == \
        [(2, s.keys[8:], values[8:].tolist())]
    assert np.array_equal(load_features(s, "pixel", keys=[s.keys[9], s.keys[0]]), values[[9, 0]])
    raw = bytearray((where / "shard-000001.npy").read_bytes())
    raw[-1] ^= 1  # a bit flipped at rest: refused, named
    (where / "shard-000001.npy").write_bytes(bytes(raw))
    with pytest.raises(DamagedError, match="shard-000001.npy"):
        load_features(s, "pixel")
    assert np.array_equal(load_features(s, "pixel", keys=[s.keys[0]]), values[:1])  # other shards still read


def test_features_of_the_single_file_layout_of_older_runs_are_read(tmp_path):
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(6), shard_size=4)
    s = open_sample_set(url)
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    save_features(s, "pixel", s.keys, values)
    where = tmp_path / "set" / "features" / "pixel"
    m = json.loads((where / "manifest.json").read_text())
    for p in where.glob("shard-*.npy"):
        p.unlink()
    buf = io.BytesIO()
    np.save(buf, values)
    (where / "features.npy").write_bytes(buf.getvalue())
    del m["shards"]
    mf.write_manifest(str(where), m)
    assert np.array_equal(load_features(s, "pixel"), values)
    assert np.array_equal(load_features(s, "pixel", keys=[s.keys[5]]), values[5:6])


def test_what_another_process_wrote_after_a_listing_is_seen(moto_bucket):
    """A driver that listed the run (`collapse verify` does) and then reads what a job wrote since: s3fs's
    listings cache answered from the old listing (FileNotFoundError); the storage layer keeps none."""
    endpoint, bucket = moto_bucket
    opts = endpoint.storage_options
    storage.write_bytes(f"{bucket}/run/a", b"1", opts)
    fs, path = storage.open_fs(f"{bucket}/run", opts)
    assert fs.find(path) == [f"{path}/a"]
    endpoint.filesystem().pipe(f"{path}/b", b"2")   # another process: its own client
    assert storage.exists(f"{bucket}/run/b", opts) and storage.read_bytes(f"{bucket}/run/b", opts) == b"2"
    assert storage.list_names(f"{bucket}/run", opts) == ["a", "b"]
