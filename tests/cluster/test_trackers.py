"""The experiment trackers (cluster.trackers), without Ray: what TensorBoard, MLflow and W&B hold is read
back with their own readers; a tracker that cannot write says so once and the others go on; the loop
driver's part (each committed score and train stage, generation 1 to every strategy it stands for) is
checked on a real run in tests/jobs/test_run_local.py."""
import glob
import json
import os
import struct

import pytest

from cluster.trackers import open_trackers
from collapse.data import storage
from jobs.presets import load_config

STRATEGIES, GENERATIONS = ("vanilla", "greedy"), (1, 2, 3)
CURVE = [(5, 0.9), (10, 0.5), (15, 0.4)]


def _cfg(run, *overrides):
    return load_config("tiny", [f"run.run_dir={run}", "strategies=vanilla,greedy", *overrides])


def _gs(strategy, n):
    return 100.0 * n + STRATEGIES.index(strategy)


def _figures(strategy, n):
    """A metrics.json of cluster.stages.score, with the kinds of value it holds (not only numbers)."""
    return {"strategy": strategy, "generation": n, "real_share": 1.0 / n,
            "spaces": {"pixel": {"gs": _gs(strategy, n), "entropy": 7.0 - n, "memorization": 0.1 * n},
                       "dinov2": {"gs": 2.0 * n, "kid_std": float("nan")}},
            "quality": {"confidence": 0.5 + 0.1 * n, "recognizable": True, "class_histogram": [1, 2]},
            "classes": None, "stage_seconds": {"train": None}}


def _log_all(trackers):
    for n in GENERATIONS:
        for s in STRATEGIES:
            trackers.log_generation(s, n, _figures(s, n))
            trackers.log_training(s, n, [(step, loss / n) for step, loss in CURVE], 10.0 * n)


def _tensorboard(run, strategy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard" / strategy), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(uri):
    """{strategy: (tags, {metric: [(step, value)]})} of the MLflow experiment 'tiny' at ``uri``."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow >= 3.13 (cluster.trackers)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    [exp] = [e for e in client.search_experiments() if e.name == "tiny"]
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                   for k in run.data.metrics}
        out[run.data.tags["strategy"]] = (run.data.tags, history, run.info)
    return out


def _check_generations(scalars, strategy, with_training=True):
    assert scalars["pixel/gs"] == [(n, _gs(strategy, n)) for n in GENERATIONS]
    assert [s for s, _ in scalars["pixel/entropy"]] == list(GENERATIONS)
    assert scalars["quality/confidence"] == [(n, pytest.approx(0.5 + 0.1 * n)) for n in GENERATIONS]
    assert scalars["real_share"][1] == (2, 0.5) and "dinov2/gs" in scalars
    assert not {"quality/recognizable", "quality/class_histogram", "classes", "generation"} & set(scalars)
    if with_training:
        assert scalars["train/loss"] == [(n, pytest.approx(0.4 / n)) for n in GENERATIONS]
        assert scalars["train/steps_per_s"] == [(n, 10.0 * n) for n in GENERATIONS]
        assert scalars["train/loss_curve/gen-002"] == [(s, pytest.approx(v / 2)) for s, v in CURVE]


def test_tensorboard_and_mlflow_hold_every_figure_at_its_generation(tmp_path):
    run, said = tmp_path / "run", []
    cfg = _cfg(run, "trackers.tensorboard=true", "trackers.mlflow=local")
    trackers = open_trackers(cfg, say=said.append)
    _log_all(trackers)
    trackers.close()
    assert said == [f"trackers: tensorboard {run}/tensorboard; mlflow {run}/mlruns (experiment tiny)"]
    for s in STRATEGIES:
        _check_generations(_tensorboard(run, s), s)
    runs = _mlflow(str(run / "mlruns"))
    assert sorted(runs) == sorted(STRATEGIES)
    for s, (tags, history, info) in runs.items():
        assert (tags["run_name"], tags["config_hash"], tags["run_dir"]) == ("tiny", _config_hash(cfg), str(run))
        assert info.run_name == s and info.status == "FINISHED"
        assert len(history["pixel/gs"]) == 3 and history["dinov2/kid_std"][0][0] == 1   # NaN is a value too
        _check_generations({k: v for k, v in history.items() if k != "dinov2/kid_std"}, s)
    # a resubmitted run continues the MLflow run of each strategy
    trackers = open_trackers(cfg, say=said.append)
    trackers.log_generation("vanilla", 4, _figures("vanilla", 4))
    trackers.close()
    runs = _mlflow(str(run / "mlruns"))
    assert sorted(runs) == sorted(STRATEGIES) and runs["vanilla"][1]["pixel/gs"][-1] == (4, 400.0)


def _config_hash(cfg):
    from collapse.config import config_hash
    return config_hash(cfg)


def test_a_tracker_that_cannot_write_says_so_once_and_the_others_get_everything(tmp_path):
    run, said = tmp_path / "run", []
    run.mkdir()
    (run / "tensorboard").write_text("a file where the event files' directory would be")
    trackers = open_trackers(_cfg(run, "trackers.tensorboard=true", "trackers.mlflow=local"), say=said.append)
    _log_all(trackers)
    trackers.close()
    assert len(said) == 2 and said[0].startswith("trackers: tensorboard is off for the rest of the run: ")
    assert said[1] == f"trackers: mlflow {run}/mlruns (experiment tiny)"
    for s, (_, history, _) in _mlflow(str(run / "mlruns")).items():
        _check_generations({k: v for k, v in history.items() if k != "dinov2/kid_std"}, s)

    # MLflow fails after it opened (its store replaced by a file); TensorBoard gets every figure
    run, said = tmp_path / "run2", []
    trackers = open_trackers(_cfg(run, "trackers.tensorboard=true", "trackers.mlflow=local"), say=said.append)
    storage.remove(str(run / "mlruns"), recursive=True)
    (run / "mlruns").write_text("not a directory")
    _log_all(trackers)
    trackers.close()
    off = [line for line in said if line.startswith("trackers: mlflow is off for the rest of the run: ")]
    assert len(off) == 1 and len(said) == 2 and "\n" not in off[0], said
    for s in STRATEGIES:
        _check_generations(_tensorboard(run, s), s)


@pytest.mark.parametrize("uri,error", [("bogus://nowhere", "bogus"), (None, "pip install mlflow-skinny")])
def test_a_bad_mlflow_uri_or_a_missing_package_warns_once(tmp_path, monkeypatch, uri, error):
    import sys
    run, said = tmp_path / "run", []
    if uri is None:   # the package is not installed
        monkeypatch.setitem(sys.modules, "mlflow", None)
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    trackers = open_trackers(_cfg(run, "trackers.tensorboard=true", f"trackers.mlflow={uri or 'local'}"),
                             say=said.append)
    _log_all(trackers)
    trackers.close()
    assert len(said) == 2 and said[0].startswith("trackers: mlflow is off for the rest of the run: ") \
        and error in said[0], said
    _check_generations(_tensorboard(run, "greedy"), "greedy")


def test_tensorboard_files_reach_a_run_directory_off_the_local_disk(tmp_path):
    import fsspec
    run, said = "memory://trackers-test/run", []
    trackers = open_trackers(_cfg(run, "trackers.tensorboard=true"), say=said.append)
    _log_all(trackers)
    trackers.close()
    fs = fsspec.filesystem("memory")
    for s in STRATEGIES:
        [name] = storage.list_names(f"{run}/tensorboard/{s}")
        (tmp_path / "tensorboard" / s).mkdir(parents=True)
        (tmp_path / "tensorboard" / s / name).write_bytes(storage.read_bytes(f"{run}/tensorboard/{s}/{name}"))
        _check_generations(_tensorboard(tmp_path, s), s)
    fs.rm("/trackers-test", recursive=True)


def _wandb_records(path):
    """The records of a W&B offline run file: a 7-byte header, then LevelDB log records in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2
    data, pos, part, out = open(path, "rb").read(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if n == 0 and kind == 0:   # the zero tail of a block
            pos += left
            continue
        part, pos = part + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):         # a FULL record, or the LAST part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_wandb_offline_runs_hold_every_figure_at_its_generation(tmp_path):
    pytest.importorskip("wandb")
    run, said = tmp_path / "run", []
    trackers = open_trackers(_cfg(run, "trackers.wandb=true"), say=said.append)
    _log_all(trackers)
    trackers.close()
    assert said == [f"trackers: wandb {run}/wandb"]
    found = {}
    for path in glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb")):
        records = _wandb_records(path)
        [meta] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
                if r.WhichOneof("record_type") == "history"]
        scalars = {}
        for row in rows:
            for k, v in row.items():
                if not k.startswith("_") and k != "generation":
                    scalars.setdefault(k, []).append((row["generation"], v))
        found[meta.display_name] = (meta.project, list(meta.tags), scalars)
    assert sorted(found) == sorted(STRATEGIES)
    for s, (project, tags, scalars) in found.items():
        assert project == "tiny" and tags == [s]
        _check_generations(scalars, s, with_training=False)
        assert scalars["train/loss"] == [(n, pytest.approx(0.4 / n)) for n in GENERATIONS]
