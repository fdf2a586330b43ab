"""Importers and `collapse ingest`: shipped real data, user folders and arrays, CIFAR-10, Parquet, bad input."""
import io
import json
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
    whole = path.read_bytes()
    # cut inside the first member's data; inside the second member's header (tarfile alone read 1 sample
    # and stopped quietly); at a member's end, with no end-of-archive marker: each refused, nothing committed
    for cut, message in ((700, "not a readable tar shard"), (1200, "cut short after 1 sample"),
                         (2048, "cut short after 1 sample")):
        path.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=f"foreign-000.tar: .*{message}"):
            ingest(f"wds:{path}", str(tmp_path / f"w-{cut}"), **QUIET)
        assert not (tmp_path / f"w-{cut}" / "train" / "manifest.json").exists()
    # a whole tar whose second image is a PNG cut short: it decodes to fewer pixels than its header says
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            buf = io.BytesIO()
            Image.fromarray(np.full((6, 6), i * 40, np.uint8)).save(buf, format="PNG")
            png = buf.getvalue()
            data = png[:len(png) - 30] if i == 1 else png   # its IDAT data ends early
            info = tarfile.TarInfo(f"x{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"foreign-000.tar#x1: not a readable PNG \(image file is truncated"):
        ingest(f"wds:{path}", str(tmp_path / "w-png"), **QUIET)
    assert not (tmp_path / "w-png" / "train" / "manifest.json").exists()


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


# --- CIFAR-10 (python version), class folders, Hugging Face Parquet --------------------------------

CIFAR_ROWS = {f"data_batch_{k}": 3 for k in range(1, 6)} | {"test_batch": 4}


def _cifar_batch(name, rows, seed):
    """A batch in the format of the official archive: bytes keys, (n, 3072) uint8 rows of R, G, B planes."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
    if name == "data_batch_2":  # row 1: red 255, green 0, blue counting along the row-major 32x32 plane
        data[1, :1024], data[1, 1024:2048], data[1, 2048:] = 255, 0, np.arange(1024) % 256
    return {b"batch_label": f"{name} of 5".encode(), b"labels": [int(v) for v in rng.integers(0, 10, rows)],
            b"data": data, b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(rows)]}


def _write_cifar(root, batches=None):
    """``root/cifar-10-batches-py/`` with every batch (``batches`` overrides some) and batches.meta."""
    import pickle
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{k}".encode() for k in range(10)]
    contents = {n: _cifar_batch(n, rows, s) for s, (n, rows) in enumerate(CIFAR_ROWS.items())}
    contents |= (batches or {})
    contents["batches.meta"] = {b"num_cases_per_batch": 3, b"label_names": names, b"num_vis": 3072}
    for name, obj in contents.items():
        if obj is not None:
            with open(folder / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)
    return folder, contents


def _tar_gz(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def _cifar_pixels(batch, row):
    return batch[b"data"][row].reshape(3, 32, 32).transpose(1, 2, 0)


def test_cifar10_archive_and_cli(tmp_path):
    folder, contents = _write_cifar(tmp_path / "x")
    archive = _tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    ingest(f"cifar10:{archive}", str(tmp_path / "c"), holdout=3, **QUIET)
    train, hold = open_sample_set(str(tmp_path / "c/train")), open_sample_set(str(tmp_path / "c/holdout"))
    assert (train.count, hold.count, train.shape) == (15, 3, (32, 32, 3))   # 5 batches of 3 rows, not 10000
    for s in (train, hold):
        keys, images, metas = s.load()
        for key, image, meta in zip(keys, images, metas):
            batch, row = meta["origin"].split(":")
            assert np.array_equal(image, _cifar_pixels(contents[batch], int(row)))
            assert meta["label"] == contents[batch][b"labels"][int(row)]
            assert meta["class_name"] == f"class{meta['label']}" and meta["dataset"] == "cifar10"
    assert all(m["origin"].startswith("test_batch:") for m in hold.load()[2])
    assert all(k.startswith("cifar10-test-") for k in hold.keys) and not set(train.keys) & set(hold.keys)
    keys, images, metas = train.load()
    red = images[[m["origin"] for m in metas].index("data_batch_2:1")]
    assert (red[..., 0] == 255).all() and (red[..., 1] == 0).all()                 # R, G, B planes in order
    assert red[0, 5, 2] == 5 and red[1, 0, 2] == 32 and red[7, 3, 2] == (7 * 32 + 3) % 256  # row-major
    assert dict(zip(keys, [m["origin"] for m in metas]))["cifar10-train-000004"] == "data_batch_2:1"

    out = str(tmp_path / "cli")
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "ingest", f"cifar10:{archive}", "--out", out,
                        "--n", "10", "--holdout", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 10 images (32, 32, 3)" in r.stdout and "wrote 4 images (32, 32, 3)" in r.stdout
    assert sorted(open_sample_set(f"{out}/holdout").labels().values()) == sorted(contents["test_batch"][b"labels"])


def test_cifar10_extracted_folder(tmp_path):
    from collapse.data.importers import open_source
    import pickle
    folder, contents = _write_cifar(tmp_path / "x")
    raw = pickle.dumps(contents["data_batch_1"], protocol=2)   # as numpy 1.x wrote it (the official archive)
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    (folder / "data_batch_1").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ingest(f"cifar10:{tmp_path / 'x'}", str(tmp_path / "a"), holdout=2, **QUIET)   # the folder holding it
    ingest(f"cifar10:{folder}", str(tmp_path / "b"), holdout=2, **QUIET)           # cifar-10-batches-py itself
    a, b = open_sample_set(str(tmp_path / "a/train")).load(), open_sample_set(str(tmp_path / "b/train")).load()
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
    train, test = open_source(f"cifar10:{folder}")
    assert (train.count, test.count) == (15, 4) and train.origin(14) == "data_batch_5:2"
    assert train.labels == [v for k in range(1, 6) for v in contents[f"data_batch_{k}"][b"labels"]]
    assert np.array_equal(test.load(3), _cifar_pixels(contents["test_batch"], 3))
    assert np.array_equal(train.load(2), _cifar_pixels(contents["data_batch_1"], 2))


@pytest.mark.parametrize("batches, message", [
    ({"data_batch_3": None}, r"has no data_batch_3: expected the CIFAR-10 python version"),
    ({"test_batch": None}, r"has no test_batch"),
    ({"data_batch_2": {b"data": np.zeros((3, 3072), np.uint8)}}, r"data_batch_2: a CIFAR-10 batch needs b'data' "
     r"and b'labels'.*missing labels"),
    ({"data_batch_1": {b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]}},
     r"data_batch_1: b'data' must be a uint8 array \(n, 3072\).*\(3, 3000\)"),
    ({"data_batch_4": {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}},
     r"data_batch_4: 3 images in b'data' but 2 labels"),
    ({"test_batch": [1, 2, 3]}, r"test_batch: expected a CIFAR-10 batch \(a dict"),
])
def test_cifar10_bad_batches(tmp_path, batches, message):
    folder, _ = _write_cifar(tmp_path / "x", batches)
    with pytest.raises(DataError, match=message):
        ingest(f"cifar10:{folder}", str(tmp_path / "o"), **QUIET)
    with pytest.raises(DataError, match=message):
        ingest(f"cifar10:{_tar_gz(folder, tmp_path / 'c.tar.gz')}", str(tmp_path / "o"), **QUIET)


def test_cifar10_corrupt_archive_and_hostile_pickle_are_refused(tmp_path):
    folder, _ = _write_cifar(tmp_path / "x")
    archive = _tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz.*not a readable archive.*expected the CIFAR-10 python"):
        ingest(f"cifar10:{tmp_path / 'cut.tar.gz'}", str(tmp_path / "o"), **QUIET)
    with pytest.raises(DataError, match=r"nope.tar.gz' not found: expected the CIFAR-10 python version"):
        ingest(f"cifar10:{tmp_path / 'nope.tar.gz'}", str(tmp_path / "o"), **QUIET)
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    hostile, _ = _write_cifar(tmp_path / "h", {"data_batch_5": {b"data": Hostile(), b"labels": [0]}})
    for spec in (f"cifar10:{hostile}", f"cifar10:{_tar_gz(hostile, tmp_path / 'h.tar.gz')}"):
        with pytest.raises(DataError, match=r"data_batch_5: refused pickle: it asks for posix.system"):
            ingest(spec, str(tmp_path / "o"), **QUIET)
    assert not marker.exists()


def _png(path, value, shape=(5, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def test_class_folders_are_labels(tmp_path):
    root = tmp_path / "tree"
    for name, value in (("cat/c0.png", 10), ("cat/c1.png", 11), ("dog/d0.png", 20), ("dog/puppies/p0.png", 21),
                        ("ant/a0.png", 30)):
        _png(root / name, value)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a class: it holds no image")
    ingest(f"folder:{root}", str(tmp_path / "o"), **QUIET)
    keys, images, metas = open_sample_set(str(tmp_path / "o/train")).load()
    got = {m["origin"]: (m["label"], m["class_name"], int(im[0, 0])) for im, m in zip(images, metas)}
    assert got == {"ant/a0.png": (0, "ant", 30), "cat/c0.png": (1, "cat", 10), "cat/c1.png": (1, "cat", 11),
                   "dog/d0.png": (2, "dog", 20), "dog/puppies/p0.png": (2, "dog", 21)}
    assert keys == [f"folder-train-{i:06d}" for i in range(5)] and metas[0]["origin"] == "ant/a0.png"

    flat = tmp_path / "flat"
    _png(flat / "x.png", 1)
    (flat / "empty-subfolder").mkdir()
    ingest(f"folder:{flat}", str(tmp_path / "f"), **QUIET)
    assert "label" not in open_sample_set(str(tmp_path / "f/train")).load()[2][0]   # today's behaviour
    _png(root / "loose.png", 5)
    with pytest.raises(DataError, match=r"tree' holds both images at its top level \('loose.png'.*ant, cat, dog"):
        ingest(f"folder:{root}", str(tmp_path / "m"), **QUIET)


def _hf_parquet(path, values, labels, image_col="image", label_col="label", row_group_size=2):
    """A Parquet file as Hugging Face datasets exports an Image + ClassLabel dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    cells = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            cells.append({"bytes": v, "path": f"{i}.png"})
            continue
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4, 3), v, np.uint8)).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    columns = {image_col: pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    features = {image_col: {"_type": "Image"}}
    if label_col:
        columns[label_col] = pa.array(labels, pa.int64())
        features[label_col] = {"names": ["zero", "one", "two"], "_type": "ClassLabel"}
    table = pa.table(columns)
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_hugging_face_parquet(tmp_path):
    from collapse.data.importers import open_source
    d = tmp_path / "data"
    d.mkdir()
    _hf_parquet(d / "train-00000-of-00002.parquet", [0, 10, 20, 30, 40], [0, 1, 2, 0, 1])
    _hf_parquet(d / "train-00001-of-00002.parquet", [50, 60], [2, 2])
    for k, spec in enumerate((f"parquet:{d}", f"parquet:{d}/train-*.parquet")):   # row groups of 2 rows
        ingest(spec, str(tmp_path / f"o{k}"), holdout=2, **QUIET)
        train, hold = (open_sample_set(str(tmp_path / f"o{k}" / s)) for s in ("train", "holdout"))
        assert (train.count, hold.count, train.shape) == (5, 2, (4, 4, 3))
        metas = {m["origin"]: (m["label"], m["class_name"], int(im[0, 0, 0]))
                 for s in (train, hold) for im, m in zip(s.load()[1], s.load()[2])}
        first, second = "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"
        assert metas == {f"{first}:0": (0, "zero", 0), f"{first}:1": (1, "one", 10), f"{first}:2": (2, "two", 20),
                         f"{first}:3": (0, "zero", 30), f"{first}:4": (1, "one", 40),
                         f"{second}:0": (2, "two", 50), f"{second}:1": (2, "two", 60)}

    _hf_parquet(tmp_path / "odd.parquet", [1, b"not an image", 3], None, image_col="img", label_col=None)
    src, test = open_source(f"parquet:{tmp_path / 'odd.parquet'}")   # no image decoded yet
    assert (src.count, src.labels, test) == (3, None, None) and src.load(2)[0, 0, 0] == 3
    with pytest.raises(DataError, match=r"odd.parquet row 1: column 'img' holds bytes that are not a readable image"):
        src.load(1)


def test_parquet_bad_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"pixels": pa.array([b"x"]), "label": pa.array([1])}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match=r"cols.parquet: no 'image' \(or 'img'\) column, it has \['pixels', 'label'\]"):
        ingest(f"parquet:{tmp_path / 'cols.parquet'}", str(tmp_path / "o"), **QUIET)
    pq.write_table(pa.table({"image": pa.array([1, 2])}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints.parquet: column 'image' is int64, expected the Image feature"):
        ingest(f"parquet:{tmp_path / 'ints.parquet'}", str(tmp_path / "o"), **QUIET)
    _hf_parquet(tmp_path / "floats.parquet", [1], None, label_col=None)
    pq.write_table(pq.read_table(tmp_path / "floats.parquet").append_column("label", pa.array([0.5])),
                   tmp_path / "floats.parquet")
    with pytest.raises(DataError, match=r"label column 'label' is double, expected integers"):
        ingest(f"parquet:{tmp_path / 'floats.parquet'}", str(tmp_path / "o"), **QUIET)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk.parquet: not a readable Parquet file"):
        ingest(f"parquet:{tmp_path / 'junk.parquet'}", str(tmp_path / "o"), **QUIET)
    with pytest.raises(DataError, match=r"parquet: no file matches"):
        ingest(f"parquet:{tmp_path}/none-*.parquet", str(tmp_path / "o"), **QUIET)
    with pytest.raises(DataError, match=r"parquet '.*missing.parquet' not found"):
        ingest(f"parquet:{tmp_path}/missing.parquet", str(tmp_path / "o"), **QUIET)
