"""How one stage is run (cluster.stages.run_stage), without Ray: a storage error that may pass runs
the stage again after a wait, a bounded number of times; one that will not pass fails at once."""
import pytest

import cluster.stages
from cluster.stages import run_stage
from cluster.stages.context import StageContext
from collapse.errors import StorageError, transient_storage_error
from jobs.presets import load_config


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.stages, "STORAGE_WAIT_S", (0.0, 0.0))
    said = []
    context = StageContext(load_config("tiny", [f"run.run_dir={tmp_path / 'run'}"]), say=said.append)
    context.said = said
    return context


def _failing(times: int, error: StorageError):
    calls = []

    def stage_fn(ctx, stage):
        calls.append(stage.key)
        if len(calls) <= times:
            raise RuntimeError("the stage's own wrapping") from error
    return stage_fn, calls


def test_a_throttled_stage_runs_again_and_names_the_error(ctx, monkeypatch):
    error = StorageError("cannot write 's3://b/run/real/train/manifest.json': storage error (OSError: "
                         "[Errno 16] Please reduce your request rate.)", transient=True)
    stage_fn, calls = _failing(2, error)
    monkeypatch.setitem(cluster.stages.STAGES, "ingest", stage_fn)
    run_stage(ctx, ctx.plan["ingest"])
    assert calls == ["ingest"] * 3
    assert len(ctx.said) == 2 and all("ingest: cannot write 's3://b/run/real/train/manifest.json'" in line
                                      and "running the stage again" in line for line in ctx.said)


def test_a_storage_error_that_does_not_pass_is_raised_after_the_bounded_runs(ctx, monkeypatch):
    stage_fn, calls = _failing(10, StorageError("cannot read 's3://b/x': cannot reach the storage endpoint",
                                                transient=True))
    monkeypatch.setitem(cluster.stages.STAGES, "ingest", stage_fn)
    with pytest.raises(RuntimeError) as e:
        run_stage(ctx, ctx.plan["ingest"])
    assert len(calls) == cluster.stages.ATTEMPTS and "s3://b/x" in str(transient_storage_error(e.value))


def test_refused_credentials_fail_at_once(ctx, monkeypatch):
    stage_fn, calls = _failing(10, StorageError("cannot write 's3://b/x': access denied, check the credentials"))
    monkeypatch.setitem(cluster.stages.STAGES, "ingest", stage_fn)
    with pytest.raises(RuntimeError):
        run_stage(ctx, ctx.plan["ingest"])
    assert calls == ["ingest"] and ctx.said == []
