"""Ingest by a Ray task per shard (cluster.ingest) writes the shards of the in-process ingest."""
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from cluster.ingest import ingest_tasks
from collapse.data import manifest as mf
from collapse.data.importers import ingest
from collapse.errors import DataError

QUIET = dict(progress=lambda *_: None)


def _same(a, b, split):
    ma, mb = mf.read_manifest(str(a / split)), mf.read_manifest(str(b / split))
    assert ma == mb
    for r in ma["shards"]:
        assert (a / split / r["name"]).read_bytes() == (b / split / r["name"]).read_bytes()
    return ma


def test_tasks_write_the_shards_of_the_in_process_ingest(ray_local, tmp_path):
    opts = dict(size=12, mode="grey", n=300, holdout=70, seed=3, shard_size=64, **QUIET)
    ingest("fashion-mnist", str(tmp_path / "one"), **opts)
    said = []
    ingest_tasks("fashion-mnist", str(tmp_path / "tasks"), **{**opts, "progress": said.append})
    assert _same(tmp_path / "one", tmp_path / "tasks", "train")["count"] == 300
    assert _same(tmp_path / "one", tmp_path / "tasks", "holdout")["count"] == 70
    assert any("5 shards by 5 tasks" in s for s in said), said
    # a second call finds the import done; a killed import's finished shards are kept
    ingest_tasks("fashion-mnist", str(tmp_path / "tasks"), **{**opts, "progress": said.append})
    assert "nothing to do" in said[-1]
    (tmp_path / "tasks" / "train" / "manifest.json").unlink()
    (tmp_path / "tasks" / "train" / "shard-000002.tar").unlink()
    (tmp_path / "tasks" / "train" / "shard-000002.json").unlink()
    ingest_tasks("fashion-mnist", str(tmp_path / "tasks"), **{**opts, "progress": said.append})
    assert any("by 1 tasks (4 already written)" in s for s in said), said
    _same(tmp_path / "one", tmp_path / "tasks", "train")


def _tar(path, images, labels=True):
    with tarfile.open(path, "w") as tar:
        for key, img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            for name, data in ((f"{key}.png", buf.getvalue()), *(((f"{key}.cls", b"3"),) if labels else ())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_webdataset_source_by_tasks_and_a_wrong_image_size_named(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    for s in range(3):
        _tar(tmp_path / f"part-{s}.tar", [(f"s{s}i{i}", rng.integers(0, 256, (6, 6), dtype=np.uint8))
                                          for i in range(9)])
    opts = dict(n=15, holdout=5, seed=1, shard_size=4, **QUIET)
    spec = f"wds:{tmp_path}/part-{{0..2}}.tar"
    ingest(spec, str(tmp_path / "one"), **opts)
    ingest_tasks(spec, str(tmp_path / "tasks"), **opts)
    assert _same(tmp_path / "one", tmp_path / "tasks", "train")["count"] == 15
    _same(tmp_path / "one", tmp_path / "tasks", "holdout")
    # one image of another size, and no size to resize to: refused, named, nothing committed
    _tar(tmp_path / "odd-1.tar", [(f"odd{i}", rng.integers(0, 256, (8, 8) if i == 3 else (6, 6), dtype=np.uint8))
                                  for i in range(6)])
    _tar(tmp_path / "odd-0.tar", [(f"even{i}", rng.integers(0, 256, (6, 6), dtype=np.uint8)) for i in range(6)])
    with pytest.raises(DataError, match=r"odd-1.tar#odd3: image shape \(8, 8\), expected \(6, 6\)"):
        ingest_tasks(f"wds:{tmp_path}/odd-{{0..1}}.tar", str(tmp_path / "odd"), n=12, shard_size=4, **QUIET)
    assert mf.try_read_manifest(str(tmp_path / "odd" / "train")) is None
