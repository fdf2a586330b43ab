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


def test_the_select_stage_says_the_gs_its_training_set_forecasts(tmp_path):
    """select of generation 2 (cluster.stages.select.say_forecast): H(D_3) of the kept images and the GS
    the line over the committed score stages forecasts from it, before M_3 trains."""
    import json

    import numpy as np

    from cluster.stages.select import say_forecast
    from collapse.data import storage
    from collapse.data.samples import Sample, SampleSet, write_sample_set
    from collapse.entropy import kl_entropy
    from collapse.forecast import forecast, forecast_line

    said = []
    ctx = StageContext(load_config("tiny", [f"run.run_dir={tmp_path / 'run'}", "run.generations=3",
                                            "metrics.features=[pixel]"]), say=said.append)
    figures = {("shared", 1): (1300.0, 420.0), ("vanilla", 2): (1170.0, 300.0), ("greedy", 2): (1250.0, 350.0)}
    for (owner, n), (h, gs) in figures.items():
        score = ctx.plan[f"{owner}/gen-{n:03d}/score"]
        storage.write_bytes(score.outputs["metrics"], json.dumps(
            {"strategy": owner, "generation": n, "spaces": {"pixel": {"entropy": h, "gs": gs, "copy_radius": 250.0}}}
        ).encode())
        if owner != "greedy":          # greedy's generation 2 is not scored yet: its figures do not count
            ctx.commit(score, 1.0, 0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    pool = str(tmp_path / "pool")
    write_sample_set(pool, (Sample(f"gen-002-{i:07d}", im, {"source": "gen-002", "model": "m", "seed": i}) for i, im in enumerate(images)),
                     shard_size=16)
    keys = [f"gen-002-{i:07d}" for i in range(0, 12, 2)]
    say_forecast(ctx, ctx.plan["vanilla/gen-002/select"], keys, [SampleSet(pool)])
    assert said[-1:] == [f"forecast, pixel space: vanilla/gen-003: H(D_3) = "
                    f"{kl_entropy(images[::2].reshape(6, -1).astype(np.float32)):.4g}; "
                    "no forecast yet (2 scored generations, 3 needed)"], said
    ctx.commit(ctx.plan["greedy/gen-002/score"], 1.0, 0.0)
    said.clear()
    say_forecast(ctx, ctx.plan["vanilla/gen-002/select"], keys, [SampleSet(pool)])
    h = kl_entropy(images[::2].reshape(6, -1).astype(np.float32))
    assert said[-1:] == ["forecast, pixel space: " + forecast_line("vanilla/gen-003", 3, forecast(figures.values(), h, 250.0))]

    # run.stop_chain_below_rho = r: the chain stops when the forecast GS is below r x rho, and runs on when not
    from dataclasses import replace

    from cluster.stages.select import stop_decision
    fc = forecast(figures.values(), h, 250.0)
    stage = ctx.plan["vanilla/gen-002/select"]
    for r, stops in ((0.0, False), (0.99 * fc.gs / 250.0, False), (1.01 * fc.gs / 250.0, True)):
        ctx.cfg = replace(ctx.cfg, run=replace(ctx.cfg.run, stop_chain_below_rho=r))
        said.clear()
        decision = stop_decision(ctx, stage, {"pixel": fc})
        assert (decision is not None) == stops, (r, fc)
        if stops:
            assert decision["generation"] == 3 and decision["space"] == "pixel" and decision["factor"] == r
            assert decision["forecast"] == fc.as_dict() and said == [decision["why"]]
            assert decision["why"].startswith("vanilla stops before training M_3: in pixel space H(D_3) = ")
    assert stop_decision(ctx, stage, {}) is None   # no forecast yet (fewer than 3 scored generations): runs on
