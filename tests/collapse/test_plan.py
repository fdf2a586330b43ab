"""The plan: stages in dependency order, generation 1 shared, URLs from RunLayout, sizes from
the paradigms, resume hashes that follow what each stage computes."""
import ast
import pathlib

import pytest

from collapse import paradigms as pd
from collapse.data.urls import RunLayout
from collapse.plan import SHARED, STAGES, format_plan, plan
from jobs.presets import list_presets, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The demo's shape these tests count with, pinned so that tuning the demo preset leaves them alone
PINNED = ["strategies=vanilla,greedy,tdf", "strategies.tdf={pool_factor: 2, tau0: 6.0}", "data.n=1000", "run.generations=4", "metrics.gs_samples=1000", "metrics.features=[pixel]",
          "strategies.greedy.features=pixel", "strategies.tdf.features=pixel"]


def demo(*overrides):
    return load_config("demo", [*PINNED, *overrides])


def spec_fields(path, cls):
    tree = ast.parse((ROOT / path).read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_plans_in_dependency_order(name):
    cfg = load_config(name)
    p = plan(cfg)
    keys = [s.key for s in p]
    assert len(set(keys)) == len(keys) and all(s.name in STAGES for s in p)
    for i, s in enumerate(p):
        assert set(s.after) <= set(keys[:i]), s.key
    G, S = cfg.run.generations, len(cfg.strategies)
    assert sum(s.name == "train" for s in p) == 1 + S * (G - 1)
    assert sum(s.name == "select" for s in p) == S * (G - 1)
    text = format_plan(p)
    assert all(k in text for k in keys) and "totals:" in text and p.config_hash in text


def test_with_a_stop_rule_each_select_waits_for_every_score_of_its_generation():
    """run.stop_chain_below_rho > 0: select(s, n) reads the forecast over every strategy's generations up
    to n, so it waits for all their scores (the decision must not depend on the schedule); off, it
    waits for none, and the plan is the one of runs written before the rule."""
    off, on = plan(demo()), plan(demo("run.stop_chain_below_rho=1.0"))
    assert [s.key for s in off] != [s.key for s in on] and sorted(s.key for s in off) == sorted(s.key for s in on)
    for s in off:
        if s.name == "select":
            assert not any(a.endswith("/score") for a in s.after), s.after
    for s in on:
        if s.name == "select":
            n = s.generation
            owners = [SHARED] if n == 1 else ["vanilla", "greedy", "tdf"]
            assert {a for a in s.after if a.endswith("/score")} == {f"{o}/gen-{n:03d}/score" for o in owners}
    assert {s.key: s.config_hash for s in off if s.name != "select" and s.generation == 1} == \
        {s.key: s.config_hash for s in on if s.name != "select" and s.generation == 1}


def test_generation_one_is_shared_and_strategies_read_their_prefix_of_its_pool():
    cfg = demo()
    p, L = plan(cfg), RunLayout(cfg.run.run_dir)
    gen1 = [s for s in p if s.generation == 1 and s.name != "select"]
    assert {s.strategy for s in gen1} == {SHARED}
    assert [s.name for s in gen1] == ["train-set", "train", "sample", "featurize", "score"]
    assert p[f"{SHARED}/gen-001/sample"].sizes["pool"] == 2 * cfg.data.n          # the largest pool factor
    assert p[f"{SHARED}/gen-001/featurize"].params["extractors"] == ["pixel"]
    for s in cfg.strategies:
        sel = p[f"{s.name}/gen-001/select"]
        assert sel.inputs == {"pool-001": L.pool(SHARED, 1)}
        assert sel.sizes["candidates"] == s.pool_factor * cfg.data.n and sel.sizes["keep"] == cfg.data.n
        assert sel.outputs == {"selection": L.selection(s.name, 1), "train_set": L.train_set(s.name, 2)}
        assert p[f"{s.name}/gen-002/train"].inputs == {"train_set": L.train_set(s.name, 2)}
        assert p[f"{s.name}/gen-002/train"].after == (sel.key,)
    for s in cfg.strategies:                                                      # the last generation
        assert p[f"{s.name}/gen-004/sample"].sizes["pool"] == cfg.metrics.gs_samples
    assert {p[f"{s.name}/gen-001/select"].params["how"] for s in cfg.strategies} == {"all", "select"}


def test_accumulate_reads_real_and_every_pool_so_far():
    cfg = demo("paradigm=accumulate", "run.run_dir=s3://bucket/run")
    p, L = plan(cfg), RunLayout("s3://bucket/run")
    sel = p["greedy/gen-003/select"]
    assert sel.inputs == {"real": L.real("train"), "pool-001": L.pool(SHARED, 1), "pool-002": L.pool("greedy", 2),
                          "pool-003": L.pool("greedy", 3)}
    assert sel.sizes == {"candidates": cfg.data.n * (1 + 3 * 2), "forced": 0, "keep": cfg.data.n}
    assert p["vanilla/gen-003/select"].params["how"] == "uniform"
    assert all(url.startswith("s3://bucket/run/") for s in p for url in {**s.inputs, **s.outputs}.values()
               if s.name != "ingest")


def test_grow_and_fresh_sizes():
    p = plan(demo("paradigm=accumulate-grow"))
    assert [p[f"greedy/gen-00{n}/train"].sizes["train_set"] for n in (2, 3, 4)] == [2000, 3000, 4000]
    assert p["greedy/gen-003/select"].inputs["train_set"] == p["greedy/gen-003/train"].inputs["train_set"]
    cfg = demo("paradigm=fresh", "paradigm.fresh_fraction=0.1")
    p = plan(cfg)
    assert p["ingest"].sizes["train"] == p["ingest"].params["n"] == 1000 + 3 * 100
    assert p["tdf/gen-002/select"].sizes == {"candidates": 2000, "forced": 100, "keep": 1000}
    assert any("fresh" in n for n in p.notes)


def test_stage_params_fit_the_cluster_specs_and_seeds_are_shared_by_strategies():
    p = plan(load_config("tiny"))
    assert set(p["greedy/gen-002/train"].params["spec"]) == spec_fields("cluster/train.py", "TrainSpec")
    assert set(p["greedy/gen-002/sample"].params["spec"]) <= spec_fields("cluster/sample.py", "SampleSpec")
    seeds = {s.key: s.params["spec"]["seed"] for s in p if s.name == "train"}
    assert seeds["vanilla/gen-002/train"] == seeds["greedy/gen-002/train"] != seeds[f"{SHARED}/gen-001/train"]
    assert p["vanilla/gen-001/select"].params["seed"] == p["greedy/gen-001/select"].params["seed"]


def test_hashes_follow_what_a_stage_computes():
    base = {s.key: s.config_hash for s in plan(load_config("tiny"))}
    moved = plan(load_config("tiny", ["run.run_dir=memory://elsewhere", "resources.sampler_max_actors=8"]))
    assert {s.key: s.config_hash for s in moved} == base
    steps = {s.key: s.config_hash for s in plan(load_config("tiny", ["train.steps=21"]))}
    assert all((steps[k] != h) == (k not in ("ingest", "classifier", "featurize-real", f"{SHARED}/gen-001/train-set"))
               for k, h in base.items())
    longer = {s.key: s.config_hash for s in plan(load_config("tiny", ["run.generations=3"]))}
    changed = {k for k, h in base.items() if longer[k] != h}
    # the old last generation sampled gs_samples = N: greedy's pool grows to 2N, vanilla's stays N
    assert changed == {"greedy/gen-002/sample", "greedy/gen-002/featurize", "greedy/gen-002/score"}


def test_format_plan_prints_notes_and_totals():
    text = format_plan(plan(load_config("tiny")))
    assert "totals: 3 trainings (60 steps), 256 generated images, 2 selections" in text
    assert "note: metrics.gs_samples = 64 < 1000" in text


def test_recipe_sizes_match_the_plan_for_every_paradigm():
    for paradigm in pd.PARADIGMS:
        extra = ["paradigm.fresh_fraction=0.25"] if paradigm == "fresh" else []
        cfg = load_config("tiny", [f"paradigm={paradigm}", "run.generations=3", *extra])
        p = plan(cfg)
        for s in cfg.strategies:
            r = pd.recipe(paradigm, 2, N=cfg.data.n, kind=s.kind, pool_factor=s.pool_factor,
                          fresh_fraction=cfg.paradigm.fresh_fraction)
            assert p[f"{s.name}/gen-002/select"].sizes["keep"] == r.size == p[f"{s.name}/gen-003/train"].sizes[
                "train_set"]
