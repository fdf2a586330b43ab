"""The `collapse` command as a user types it: local paths made absolute once, one-line errors, --dry-run checks."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collapse.data.samples import open_sample_set
from collapse.data.urls import absolute_source, absolute_url
from jobs.cli import main
from jobs.presets import load_config

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own exit
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, *names):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])


# -- paths

def test_local_paths_become_absolute_and_remote_urls_stay(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cwd = str(tmp_path / "here")
    assert absolute_url("runs/demo", cwd) == f"{cwd}/runs/demo"
    assert absolute_url("./a/../b", cwd) == f"{cwd}/b"
    assert absolute_url("~/runs/x", cwd) == f"{tmp_path}/runs/x"
    assert absolute_url("file://runs/x", cwd) == f"file://{cwd}/runs/x"
    assert absolute_url("/abs/x", cwd) == "/abs/x"
    for url in ("s3://bucket/runs/x", "memory://x", "gs://b/x"):
        assert absolute_url(url, cwd) == url
    assert absolute_source("folder:imgs", cwd) == f"folder:{cwd}/imgs"
    assert absolute_source("wds:shards/{000..009}.tar", cwd) == f"wds:{cwd}/shards/{{000..009}}.tar"
    for spec in ("fashion-mnist", "digits", "wds:s3://b/x-{0..3}.tar"):
        assert absolute_source(spec, cwd) == spec


def test_a_loaded_config_holds_an_absolute_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("tiny").run.run_dir == f"{tmp_path}/runs/tiny"
    assert load_config("tiny", ["run.run_dir=rel/x"]).run.run_dir == f"{tmp_path}/rel/x"
    assert load_config("tiny", ["run.run_dir=s3://b/x"]).run.run_dir == "s3://b/x"


def test_ingest_takes_a_bare_npz_file_or_folder(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(12) % 3)
    (tmp_path / "pics").mkdir()
    for i in range(6):
        Image.fromarray(images[i]).save(tmp_path / "pics" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_cli(capsys, "ingest", "data.npz", "--out", "from-npz", "--holdout", "2")
    assert code == 0, err
    train = open_sample_set(str(tmp_path / "from-npz" / "train"))
    assert train.count == 10 and train.shape == (8, 8)
    code, _, err = _run_cli(capsys, "ingest", "pics", "--out", "from-folder")
    assert code == 0, err
    assert open_sample_set(str(tmp_path / "from-folder" / "train")).count == 6
    code, _, err = _run_cli(capsys, "ingest", "no-such-thing", "--out", "x")
    _one_line_error(code, err, "no-such-thing")


# -- every failure is one line, exit 2

@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("set")
    from collapse.data.importers import ingest
    ingest("digits", str(out), n=80, holdout=20, progress=lambda *_: None)
    return str(out / "train")


def test_select_tdf_without_tau0_is_one_line(small_set, tmp_path, capsys):
    code, _, err = _run_cli(capsys, "select", small_set, "--n", "50", "--strategy", "tdf", "--out", str(tmp_path / "x"))
    _one_line_error(code, err, "--tau0", "tdf")
    assert not (tmp_path / "x").exists()
    code, _, err = _run_cli(capsys, "select", small_set, "--n", "500", "--strategy", "greedy", "--out", str(tmp_path / "y"))
    _one_line_error(code, err, "--n 500", "80")


def test_report_of_a_directory_without_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run_cli(capsys, "report", str(tmp_path / "empty"))
    _one_line_error(code, err, "holds no run", str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / "report").exists()


@pytest.mark.parametrize("args,names", [
    (["--run-dir", "foo://x"], ["run.run_dir", "foo://x", "s3://"]),
    (["--set", "data.n=100000"], ["data.n", "100000", "60000"]),
    (["--set", "data.holdout=20000"], ["data.holdout", "20000", "10000"]),
    (["--set", "data.source=digits", "--set", "data.n=1700", "--set", "data.holdout=200"], ["data.n", "1797"]),
    (["--set", "train.nope=1"], ["train.nope"]),
])
def test_dry_run_refuses_what_it_can_know(args, names, capsys):
    code, out, err = _run_cli(capsys, "run", "--config", "tiny", "--dry-run", *args)
    _one_line_error(code, err, *names)
    assert out == ""


def test_a_run_dir_of_another_config_is_refused_before_any_ray_starts(tmp_path, capsys, monkeypatch):
    """The driver compares the configs before it starts or joins a Ray: a wrong --set costs seconds."""
    from cluster.loop import Loop
    run = tmp_path / "run"
    Loop(load_config("tiny", [f"run.run_dir={run}"])).pending()   # saves the run's config, as its first driver does
    monkeypatch.setattr("cluster.runtime.connect", lambda *a, **k: pytest.fail("Ray was started"))
    code, out, err = _run_cli(capsys, "run", "--config", "tiny", "--run-dir", str(run), "--set", "train.steps=21")
    _one_line_error(code, err, str(run), "another config", "train.steps: 20 -> 21")


def test_usage_errors_and_unexpected_failures_are_one_line(tmp_path, capsys):
    code, _, err = _run_cli(capsys, "select", "x", "--n", "3")
    _one_line_error(code, err, "--strategy")
    code, _, err = _run_cli(capsys, "score", str(tmp_path / "nothing-here"))
    _one_line_error(code, err, str(tmp_path / "nothing-here"))


def test_an_error_carrying_a_remote_traceback_prints_its_last_line():
    from jobs.cli import _one_line
    remote = RuntimeError("Training failed.\nTraceback (most recent call last):\n  File \"x.py\", line 3, in f\n"
                          "    g()\ncollapse.errors.NotFinishedError: 'runs/demo/x' is not finished\n")
    assert _one_line(remote) == "Training failed. ... collapse.errors.NotFinishedError: 'runs/demo/x' is not finished"
    assert _one_line(ValueError("a:\n  b: 1 -> 2\n  c: 3 -> 4")) == "a: b: 1 -> 2; c: 3 -> 4"


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--dry-run",
                        "--run-dir", "foo://x"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--config", "tiny", "--dry-run",
                        "--run-dir", "rel/run"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert f"run_dir: {tmp_path}/rel/run" in r.stdout


def test_one_of_our_errors_raised_in_a_worker_is_not_called_unexpected(monkeypatch, capsys):
    import jobs.cli

    def fails(args):  # as Ray Train hands over a worker's StorageError
        raise RuntimeError("Training failed due to worker errors:\nTraceback (most recent call last):\n  File "
                           "\"train.py\", line 9\ncollapse.errors.StorageError: the local spool /x is full\n")
    monkeypatch.setattr(jobs.cli, "cmd_verify", fails)
    code, _, err = _run_cli(capsys, "verify", "somewhere")
    _one_line_error(code, err, "collapse.errors.StorageError: the local spool /x is full")
    assert "unexpected" not in err


# tdf only: the command's path is the same for every strategy, and greedy's sharded picks are checked
# against its single-process ones in tests/cluster/test_selection.py (each case here starts a Ray: ~25 s)
@pytest.mark.parametrize("strategy,params", [("tdf", ["--tau0", "400", "--alpha", "0.8"])])
def test_select_with_1_and_3_shards_keeps_the_same_keys_in_the_same_order(small_set, tmp_path, strategy, params):
    """`collapse select --shards 3` (its own local Ray, the pool across 3 actors) as a user runs it."""
    from collapse.data import manifest as mf
    kept = {}
    for shards in (1, 3):
        out = tmp_path / f"{strategy}-{shards}"
        r = subprocess.run([sys.executable, "-m", "jobs.cli", "select", small_set, "--n", "30", "--strategy", strategy,
                            *params, "--out", str(out), "--shards", str(shards)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr[-3000:]
        kept[shards] = [k["key"] for k in mf.read_manifest(str(out / "selection"))["kept"]]
        assert open_sample_set(str(out)).keys == kept[shards]
    assert kept[1] == kept[3] and len(set(kept[3])) == 30


def test_select_with_more_shards_than_images_is_one_line(small_set, tmp_path, capsys):
    code, _, err = _run_cli(capsys, "select", small_set, "--n", "5", "--strategy", "greedy", "--out",
                            str(tmp_path / "z"), "--shards", "81")
    _one_line_error(code, err, "--shards 81", "80")
    code, _, err = _run_cli(capsys, "select", small_set, "--n", "5", "--strategy", "greedy", "--out",
                            str(tmp_path / "z"), "--shards", "0")
    _one_line_error(code, err, "--shards 0")
    assert not (tmp_path / "z").exists()


def test_select_per_class_keeps_each_class_share_of_a_labelled_set(small_set, tmp_path, capsys):
    from collapse.classes import class_counts, class_quotas
    from collapse.data import manifest as mf
    pool = open_sample_set(small_set)
    labels = [pool.labels()[k] for k in pool.keys]
    out = tmp_path / "per-class"
    code, _, err = _run_cli(capsys, "select", small_set, "--n", "30", "--strategy", "greedy", "--per-class",
                            "--out", str(out))
    assert code == 0, err
    quotas = class_quotas(class_counts(labels, 10), 30).tolist()
    kept = [s.meta["label"] for s in open_sample_set(str(out)).iter_samples()]
    assert class_counts(kept, 10).tolist() == quotas and sum(quotas) == 30
    assert mf.read_manifest(str(out / "selection"))["params"]["per_class"] == quotas


def test_select_per_class_of_an_unlabelled_set_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("plain.npy", np.random.default_rng(0).integers(0, 255, size=(12, 8, 8), dtype=np.uint8))
    code, _, err = _run_cli(capsys, "ingest", "plain.npy", "--out", "plain")
    assert code == 0, err
    code, _, err = _run_cli(capsys, "select", "plain/train", "--n", "4", "--strategy", "greedy", "--per-class",
                            "--out", "kept")
    _one_line_error(code, err, "--per-class", "has no class label", "plain/train")
    assert not (tmp_path / "kept").exists()
