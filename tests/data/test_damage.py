"""Damaged storage: committed bytes that differ from their manifest are never read as valid; `collapse
verify` names them; the loop has the stage that wrote them rebuild them."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapse.data import directories
from collapse.data.samples import open_sample_set, write_sample_set
from collapse.data.stream import stream_samples
from collapse.data.verify import verify
from collapse.errors import DamagedError, find_damage
from tests.data.helpers import make_samples

ROOT = Path(__file__).resolve().parents[2]


def flip(path: Path, at: int = 600) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01  # one bit
    path.write_bytes(bytes(data))


def test_the_training_stream_refuses_a_damaged_shard(tmp_path):
    url = str(tmp_path / "set")
    write_sample_set(url, make_samples(12), shard_size=4)
    assert len(list(stream_samples(url, shuffle_buffer=1))) == 12
    flip(tmp_path / "set" / "shard-000001.tar", 1500)  # inside a sample's JSON: no PNG CRC would catch it
    with pytest.raises(DamagedError, match="shard-000001.tar' of .* is damaged: its sha256"):
        list(stream_samples(url, shuffle_buffer=1))


def test_a_damaged_model_file_is_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(np.arange(1000, dtype=np.int64).tobytes())
    directories.upload_directory(str(src), str(tmp_path / "model"))
    flip(tmp_path / "model" / "weights.bin")
    with pytest.raises(DamagedError, match="weights.bin' of .*model' is damaged"):
        directories.download_directory(str(tmp_path / "model"), str(tmp_path / "out"))


def test_damage_is_found_through_pickling_and_as_text():
    e = DamagedError("s3://b/run/p/shard-000003.tar", "s3://b/run/p", "its sha256 differs from the manifest's")
    again = pickle.loads(pickle.dumps(e))
    assert (again.part_url, again.set_url) == (e.part_url, e.set_url)
    remote = RuntimeError(f"Training failed.\nTraceback (most recent call last):\n  ...\n"
                          f"collapse.errors.DamagedError: {e}")  # as Ray Train hands it over
    assert find_damage(remote) == ("s3://b/run/p", "s3://b/run/p/shard-000003.tar")
    try:
        try:
            raise e
        except DamagedError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert find_damage(outer) == ("s3://b/run/p", "s3://b/run/p/shard-000003.tar")
    assert find_damage(ValueError("shard 'x' is fine")) is None


def _collapse(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_verify_names_every_damaged_part_of_a_run(tmp_path):
    run = tmp_path / "run"
    write_sample_set(str(run / "real" / "train"), make_samples(10), shard_size=4)
    write_sample_set(str(run / "g" / "gen-001" / "pool"), make_samples(9, source="gen-001"), shard_size=3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"x" * 100)
    (src / "b.bin").write_bytes(b"y" * 100)
    directories.upload_directory(str(src), str(run / "g" / "gen-001" / "model"))
    r = _collapse("verify", "run", cwd=tmp_path)
    assert r.returncode == 0 and "3 committed sets, 8 shards and files checked; all match" in r.stdout, r.stdout
    flip(run / "g" / "gen-001" / "pool" / "shard-000002.tar")
    (run / "g" / "gen-001" / "model" / "b.bin").unlink()
    v = verify(str(run))
    assert sorted(f.part_url.rsplit("/", 1)[-1] for f in v.findings) == ["b.bin", "shard-000002.tar"]
    r = _collapse("verify", str(run), cwd=tmp_path)
    assert r.returncode == 1 and "2 damaged" in r.stdout
    assert f"damaged: {run}/g/gen-001/pool/shard-000002.tar (of {run}/g/gen-001/pool): its sha256" in r.stdout
    assert f"damaged: {run}/g/gen-001/model/b.bin (of {run}/g/gen-001/model): the file listed" in r.stdout
    r = _collapse("verify", str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode == 2 and "holds no committed set" in r.stderr and len(r.stderr.splitlines()) == 1


def test_the_loop_rebuilds_a_damaged_real_set_with_ingest_and_goes_on(tmp_path):
    """No Ray: ingest and the training-set copy run in the driver."""
    from cluster.loop import Loop
    from jobs.presets import load_config
    run = tmp_path / "run"
    said = []
    loop = Loop(load_config("tiny", [f"run.run_dir={run}"]), progress=said.append)
    ingest, train_set = (next(s for s in loop.plan if s.key == k) for k in ("ingest", "shared/gen-001/train-set"))
    loop.run_stage(ingest)
    loop.commit(ingest, 0.0, 0.0)
    want = open_sample_set(str(run / "real" / "train")).load()[1]
    flip(run / "real" / "train" / "shard-000000.tar")
    loop.run_stage(train_set)  # reads real/train: finds the damage, re-ingests, copies
    assert any("damaged: " in m and "shard-000000.tar" in m and "rebuilding it with ingest" in m for m in said)
    assert np.array_equal(open_sample_set(str(run / "real" / "train")).load()[1], want)
    assert np.array_equal(open_sample_set(loop.layout.train_set("shared", 1)).load()[1], want[:loop.cfg.data.n])
    assert verify(str(run)).findings == ()


def test_damage_outside_the_run_fails_clearly(tmp_path, monkeypatch):
    import cluster.stages
    from cluster.loop import Loop
    from jobs.presets import load_config
    loop = Loop(load_config("tiny", [f"run.run_dir={tmp_path / 'run'}"]), progress=lambda *_: None)
    ingest = next(s for s in loop.plan if s.key == "ingest")

    def source_damaged(ctx, stage):
        raise DamagedError("s3://their-data/shard-000007.tar", "s3://their-data", "its sha256 differs")
    monkeypatch.setitem(cluster.stages.STAGES, "ingest", source_damaged)
    with pytest.raises(DamagedError, match="their-data/shard-000007.tar.*no stage of this run writes it"):
        loop.run_stage(ingest)


@pytest.mark.ceph
def test_a_restarted_stage_aborts_the_multipart_uploads_left_under_its_outputs(ceph_bucket, monkeypatch):
    from cluster.loop import Loop
    from jobs.presets import load_config
    endpoint, bucket = ceph_bucket
    fs = endpoint.filesystem()
    name = bucket.split("://", 1)[1]
    run = f"{bucket}/run"
    for key in ("run/real/train/shard-000000.tar", "run/real/holdout/shard-000001.tar", "elsewhere/big.bin"):
        up = fs.call_s3("create_multipart_upload", Bucket=name, Key=key)  # a writer killed mid-upload
        fs.call_s3("upload_part", Bucket=name, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1024)
    for k, v in (("AWS_ENDPOINT_URL", endpoint.endpoint_url), ("AWS_ACCESS_KEY_ID", endpoint.key),
                 ("AWS_SECRET_ACCESS_KEY", endpoint.secret)):
        monkeypatch.setenv(k, v)
    said = []
    loop = Loop(load_config("tiny", [f"run.run_dir={run}"]), progress=said.append)
    loop.clear_half_writes(next(s for s in loop.plan if s.key == "ingest"))
    left = sorted(u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=name).get("Uploads", []))
    assert left == ["elsewhere/big.bin"]  # only what lay under the stage's outputs
    assert sorted(said) == [f"cleared 1 unfinished multipart upload(s) under {run}/real/{split}: "
                            f"run/real/{split}/shard-00000{i}.tar" for split, i in (("holdout", 1), ("train", 0))]
