"""The run config: presets, overrides, one clear error per kind of bad input, hash, diff."""
import ast
import dataclasses
import json
import os
import pathlib

import pytest
import yaml

from collapse.config import (
    EXECUTION_KEYS, RunConfig, Strategy, TrainSection, config_hash, diff, extendable, to_dict, to_yaml,
)
from collapse.config_checks import validate
from collapse.errors import CollapseError, ConfigError
from jobs.presets import list_presets, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
PRESETS = list_presets()


def spec_fields(path: str, cls: str) -> set:
    """Field names of a dataclass in a cluster/ module, read without importing it (ray, deepspeed)."""
    tree = ast.parse((ROOT / path).read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


def test_the_presets_named_in_the_issue_exist():
    assert {"demo", "tiny", "cifar10-paper", "cifar10-paper-accumulate", "fashion-mnist-28"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    assert validate(cfg) is cfg and cfg.run.name == name and cfg.run.run_dir == os.path.abspath(f"runs/{name}")
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert config_hash(cfg) in saved.read_text().splitlines()[0]
    assert load_config(str(saved)) == cfg


def test_defaults_validate_and_sections_mirror_the_cluster_specs():
    validate(RunConfig())
    assert {f.name for f in dataclasses.fields(TrainSection)} | {"preset", "seed"} == \
        spec_fields("cluster/train.py", "TrainSpec")
    assert {"method", "steps", "guidance_scale", "shard_size", "batch_size"} <= spec_fields("cluster/sample.py",
                                                                                             "SampleSpec")


def test_paper_presets():
    rep, acc = load_config("cifar10-paper"), load_config("cifar10-paper-accumulate")
    assert (rep.data.n, rep.run.generations, rep.model.preset, rep.sample.method, rep.sample.steps) == \
        (32768, 8, "cifar10-paper", "ddpm", 1000)
    assert [s.kind for s in rep.strategies] == ["vanilla", "greedy", "tdf"]
    assert (rep.strategy("tdf").tau0, rep.strategy("tdf").alpha, rep.strategy("tdf").features) == (60.0, 0.95, "dinov2")
    assert acc.paradigm.name == "accumulate" and acc.strategy("tdf").alpha == 0.80
    assert acc.train == rep.train and acc.resources == rep.resources       # base: cifar10-paper


# -- overrides

def test_overrides_of_fields_lists_and_the_yaml_float_quirk():
    cfg = load_config("tiny", ["run.generations=5", "train.betas=[0.9, 0.99]", "train.lr=3e-4", "data.n=100",
                               "run.generations=6"])
    assert cfg.run.generations == 6 and cfg.train.betas == (0.9, 0.99) and cfg.train.lr == 3e-4
    assert isinstance(cfg.train.lr, float) and cfg.data.n == 100


# the demo with tdf as a third strategy, as its preset's comment writes it
TDF = ["strategies=vanilla,greedy,tdf", "strategies.tdf={pool_factor: 2, features: classifier, tau0: 6.0}"]


def three(*overrides):
    return load_config("demo", [*TDF, *overrides])


def test_strategy_overrides():
    demo = three()
    cfg = three("strategies=tdf,vanilla")                  # keeps their settings, in this order
    assert cfg.strategies == (demo.strategy("tdf"), demo.strategy("vanilla"))
    cfg = three(*["strategies=vanilla,g5:greedy,random", "strategies.g5.pool_factor=5",
                               "strategies.random={pool_factor: 3}"])
    assert [(s.name, s.kind, s.pool_factor, s.features) for s in cfg.strategies] == \
        [("vanilla", "vanilla", 1, None), ("g5", "greedy", 5, "pixel"), ("random", "random", 3, None)]
    cfg = three("strategies=[{name: t, kind: tdf, tau0: 5}]")
    assert cfg.strategies == (Strategy("t", "tdf", 2, "pixel", 5.0, 0.95),)
    cfg = three("paradigm=accumulate", "strategies.greedy.pool_factor=1", "strategies.tdf.alpha=0.8")
    assert cfg.paradigm.name == "accumulate" and cfg.strategy("greedy").pool_factor == 1
    assert cfg.strategy("tdf").alpha == 0.8


def test_a_preset_inherits_from_its_base(tmp_path):
    (tmp_path / "child.yaml").write_text("base: tiny\nrun: {name: child}\ntrain: {steps: 7}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert cfg.run.name == "child" and cfg.train.steps == 7 and cfg.train.lr == load_config("tiny").train.lr
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(tmp_path / "loop.yaml"))


def test_the_loader_takes_its_presets_directory_from_the_caller(tmp_path):
    """collapse reads no presets of its own (jobs.presets names jobs/presets/); any directory serves."""
    import collapse.config
    import jobs.presets
    from collapse import config_load
    (tmp_path / "small.yaml").write_text("run: {name: small}\ntrain: {steps: 7}\n")
    (tmp_path / "smaller.yaml").write_text("base: small\nrun: {name: smaller}\n")
    assert config_load.list_presets(tmp_path) == ["small", "smaller"]
    cfg = config_load.load_config("smaller", ["data.n=50"], presets_dir=tmp_path)
    assert (cfg.run.name, cfg.train.steps, cfg.data.n) == ("smaller", 7, 50)
    with pytest.raises(ConfigError, match="unknown preset 'tiny'; known presets: small, smaller"):
        config_load.load_config("tiny", presets_dir=tmp_path)
    assert jobs.presets.PRESETS_DIR == ROOT / "jobs" / "presets" and "tiny" in jobs.presets.list_presets()
    assert jobs.presets.load_config("tiny") == config_load.load_config("tiny", presets_dir=ROOT / "jobs" / "presets")
    assert not hasattr(collapse.config, "PRESETS_DIR") and not hasattr(collapse.config, "validate")


# -- bad input: (overrides, key named in the error, allowed values named in it)

BAD = [
    (["trian.steps=5"], "trian", "allowed: run, data, model, train"),
    (["train.stpes=5"], "train.stpes", "did you mean 'steps'"),
    (["strategies.greedy.poolfactor=3"], "strategies.greedy.poolfactor", "allowed: name, kind, pool_factor"),
    (["strategies.nope.pool_factor=3"], "strategies.nope", "configured: vanilla, greedy"),
    (["run.seed.x=1"], "run.seed", "expected an int, got dict"),
    (["train.steps"], "override 'train.steps'", "expected KEY=VALUE"),
    (["train.steps=ten"], "train.steps", "expected an int, got str"),
    (["train.steps=2.5"], "train.steps", "expected an int"),
    (["train.lr=true"], "train.lr", "expected a number, got bool"),
    (["metrics.features=pixel"], "metrics.features", "expected a list of strings"),
    (["run=5"], "run", "expected a mapping with keys name, seed"),
    (["data.n=0"], "data.n", r"allowed: \[1, inf\)"),
    (["run.generations=0"], "run.generations", r"allowed: \[1, inf\)"),
    (["train.lr=0"], "train.lr", r"allowed: \(0, inf\)"),
    (["train.precision=fp8"], "train.precision", "allowed: fp32, fp16, bf16"),
    (["train.precision=fp16"], "train.precision", "needs GPUs"),
    (["train.zero_stage=3"], "train.zero_stage", "allowed: 0, 1, 2"),
    (["train.betas=[0.9]"], "train.betas", "two numbers in"),
    (["train.batch_size=15", "resources.train_workers=2"], "train.batch_size", "multiple"),
    (["sample.method=euler"], "sample.method", "allowed: ddpm, ddim"),
    (["sample.steps=1001"], "sample.steps", r"allowed: \[1, 1000\]"),
    (["sample.guidance_scale=3"], "sample.guidance_scale", "class-conditional"),
    (["model.preset=huge"], "model.preset", "allowed: cifar10-paper, narrow, small-28, small-32, tiny"),
    (["model.num_classes=1"], "model.num_classes", "allowed: 0"),
    (["model.num_classes=5"], "model.num_classes", "fashion-mnist has 10 classes"),
    (["model.num_classes=10", "model.p_uncond=0", "sample.guidance_scale=3"], "sample.guidance_scale",
     "model.p_uncond = 0 never trains"),
    (["strategies.greedy.guidance_scale=3"], "strategies.greedy.guidance_scale", "class-conditional"),
    (["strategies.greedy.per_class=true"], "strategies.greedy.per_class", "needs a class-conditional"),
    (["model.num_classes=10", "strategies.vanilla.per_class=true"], "strategies.vanilla.per_class",
     "kind vanilla selects nothing"),
    (["model.num_classes=10", "sample.class_weights=[1,2]"], "sample.class_weights", "model.num_classes = 10"),
    (["sample.class_weights=[1,2]"], "sample.class_weights", "needs a class-conditional model"),
    (["model.p_uncond=1"], "model.p_uncond", r"allowed: \[0, 1\)"),
    (["data.size=32"], "data.size", "allowed: 16"),
    (["data.mode=rgb"], "data.mode", "allowed: grey"),
    (["data.mode=cmyk"], "data.mode", "allowed: grey, rgb"),
    (["data.source=mnist"], "data.source", "allowed: fashion-mnist, digits, folder:PATH"),
    (["data.holdout=2"], "data.holdout", "allowed: >= 6"),
    (["paradigm=grow"], "paradigm.name", "allowed: replace, accumulate, accumulate-grow, fresh"),
    (["paradigm=fresh"], "paradigm.fresh_fraction", "allowed: 1 to N - 1"),
    (["paradigm.fresh_fraction=0.5"], "paradigm.fresh_fraction", "allowed under 'replace': 0"),
    (["strategies=vanilla,g:greedy,g:tdf"], "strategies.g.name", "distinct"),
    (["strategies=vanilla,shared:greedy"], r"strategies\[1\].name", "not real, report, shared"),
    (["strategies=Big:greedy"], r"strategies\[0\].name", "lower-case"),
    (["strategies=x"], "strategies.x.kind", "allowed: vanilla, vanilla-pool, random, greedy, tdf"),
    (["strategies=[]"], "strategies", "NAME"),
    (["strategies.vanilla.pool_factor=2"], "strategies.vanilla.pool_factor", "allowed: 1"),
    (["strategies=v:vanilla-pool", "strategies.v.pool_factor=1"], "strategies.v.pool_factor", "allowed: >= 2"),
    (["strategies.greedy.pool_factor=1"], "strategies.greedy.pool_factor", "allowed: >= 2"),
    (["strategies.greedy.pool_factor=0"], "strategies.greedy.pool_factor", r"allowed: \[1, inf\)"),
    (["strategies.greedy.features=clip"], "strategies.greedy.features",
     "allowed: classifier, dinov2, effnet-lite0, inception, pixel"),
    (["strategies.vanilla.features=pixel"], "strategies.vanilla.features", "allowed: null"),
    (["strategies.greedy.tau0=5"], "strategies.greedy.tau0", "only kind tdf"),
    (["strategies=vanilla,t:tdf"], "strategies.t.tau0", "tau0 > 0"),
    (["strategies.tdf.alpha=1.0"], "strategies.tdf.alpha", r"allowed: \(0, 1\)"),
    (["strategies.tdf.tau0=-1"], "strategies.tdf.tau0", r"allowed: \(0, inf\)"),
    (["metrics.features=[]"], "metrics.features", "non-empty list"),
    (["metrics.features=[pixel, sift]"], "metrics.features",
     "allowed: classifier, dinov2, effnet-lite0, inception, pixel"),
    (["metrics.gs_samples=0"], "metrics.gs_samples", r"allowed: \[1, inf\)"),
    (["resources.sampler_min_actors=3"], "resources.sampler_max_actors", "allowed: >= the minimum"),
    (["resources.train_gpus=-1"], "resources.train_gpus", r"allowed: \[0, inf\)"),
    (["run.name=My Run"], "run.name", "lower-case"),
    (["trackers.tensorboard=maybe"], "trackers.tensorboard", "expected true or false, got str"),
    (["trackers.wandb=1"], "trackers.wandb", "expected true or false, got int"),
    (["trackers.mlflow=true"], "trackers.mlflow", "expected a string, got bool"),
    (["trackers.mlflow=locl"], "trackers.mlflow", r"allowed: '' \(off\), 'local' \(<run>/mlruns\), a tracking URI"),
    (["trackers.mlflow=local", "run.run_dir=s3://b/run"], "trackers.mlflow", "not on a local disk; allowed: a"),
    (["trackers.mlfow=local"], "trackers.mlfow", "did you mean 'mlflow'"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_names_the_key_and_the_allowed_values(overrides, key, allowed):
    with pytest.raises(ConfigError, match=f"^(override .*: )?{key}: .*{allowed}") as e:
        three(*overrides)
    assert isinstance(e.value, CollapseError) and isinstance(e.value, ValueError)


def test_unknown_keys_in_a_file_at_every_level(tmp_path):
    for text, key in [("trainn: {}", "trainn"), ("train: {stpes: 1}", "train.stpes"),
                      ("strategies: [{name: g, kind: greedy, k: 2}]", r"strategies\[0\].k"),
                      ("strategies: [{kind: greedy}]", r"strategies\[0\].name"), ("strategies: greedy", "strategies")]:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=f"^{key}: "):
            load_config(str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="unknown preset 'dmeo'; known presets: .*demo"):
        load_config("dmeo")


def test_trackers_are_off_by_default_parse_and_leave_the_hash_alone(tmp_path, monkeypatch):
    """Turning a tracker on resumes a run (EXECUTION_KEYS): its hash and diff are those of the run."""
    from collapse.config import TrackersSection
    monkeypatch.chdir(tmp_path)
    off = load_config("tiny")
    assert off.trackers == TrackersSection(tensorboard=False, mlflow="", wandb=False) and "trackers" in EXECUTION_KEYS
    on = load_config("tiny", ["trackers.tensorboard=true", "trackers.mlflow=./store", "trackers.wandb=true"])
    assert on.trackers == TrackersSection(True, str(tmp_path / "store"), True)   # a path made absolute
    assert config_hash(on) == config_hash(off) and diff(to_dict(off), on) == [] and diff(to_dict(on), off) == []
    for uri in ("local", "http://127.0.0.1:5000", "sqlite:///tmp/mlflow.db", "file:/tmp/mlruns", "/tmp/mlruns"):
        (tmp_path / "c.yaml").write_text(f"base: tiny\ntrackers: {{tensorboard: true, mlflow: '{uri}'}}\n")
        assert load_config(str(tmp_path / "c.yaml")).trackers == TrackersSection(True, uri, False)
    old = to_dict(off)
    del old["trackers"]   # a run written before the section existed
    assert diff(old, on) == []


def test_validate_checks_a_config_built_in_python():
    with pytest.raises(ConfigError, match="^train.steps: expected an int, got str '10'"):
        validate(RunConfig(train=TrainSection(steps="10")))
    with pytest.raises(ConfigError, match="^strategies: expected a non-empty list"):
        validate(RunConfig(strategies=()))


# -- hash, diff, extendable

def _perturb(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list):
        return v + [v[0] if v else 1]
    return 1 if v is None else None


def test_hash_is_stable_and_changes_with_every_field_but_where_and_on_what_it_runs():
    cfg = load_config("demo")
    d = to_dict(cfg)
    assert config_hash(cfg) == config_hash(load_config("demo")) == config_hash(d)
    assert config_hash(dict(reversed(list(d.items())))) == config_hash(d)
    for section, fields in d.items():
        entries = enumerate(fields) if section == "strategies" else [(None, fields)]
        for i, entry in entries:
            for k, v in entry.items():
                new = yaml.safe_load(yaml.safe_dump(d))
                (new[section][i] if i is not None else new[section])[k] = _perturb(v)
                execution = section in EXECUTION_KEYS or f"{section}.{k}" in EXECUTION_KEYS
                assert (config_hash(new) == config_hash(d)) == execution, f"{section}.{k}"


def test_diff_and_extendable():
    g = three().run.generations
    old = to_dict(three())
    assert diff(old, three()) == [] and not extendable(old, old)
    new = three("run.generations=6", "resources.train_workers=2", "run.run_dir=s3://b/x")
    assert diff(old, new) == [f"run.generations: {g} -> 6"] and extendable(old, new)
    assert not extendable(to_dict(new), old)                              # fewer generations
    new = three("run.generations=6", "strategies.tdf.tau0=500", "strategies=vanilla,tdf")
    greedy = json.dumps(old["strategies"][1])
    assert diff(old, new) == [f"run.generations: {g} -> 6", f"strategies.greedy: {greedy} -> (absent)",
                              f"strategies.tdf.tau0: {old['strategies'][2]['tau0']} -> 500.0"]
    assert not extendable(old, new)


def test_a_class_conditional_config_plans_its_own_generation_one_for_another_guidance_scale():
    from collapse.plan import plan, shares_generation_one, stage_strategies
    cfg = load_config("tiny", ["model.num_classes=10", "strategies=vanilla,greedy,g7:vanilla",
                               "strategies.g7.guidance_scale=7", "strategies.greedy.per_class=true"])
    p = plan(cfg)
    assert shares_generation_one(cfg) == ["vanilla", "greedy"]
    assert [stage_strategies(cfg, p[k]) for k in ("shared/gen-001/train", "shared/gen-001/score", "g7/gen-001/score",
                                                   "greedy/gen-002/train")] == \
        [["vanilla", "greedy", "g7"], ["vanilla", "greedy"], ["g7"], ["greedy"]]
    own = p["g7/gen-001/sample"]
    assert own.after == ("shared/gen-001/train",) and own.inputs["model"] == p["shared/gen-001/train"].outputs["model"]
    assert own.params["spec"]["guidance_scale"] == 7.0 and p["shared/gen-001/sample"].params["spec"][
        "guidance_scale"] == 1.0
    assert "g7/gen-001/train" not in [s.key for s in p]
    assert p["g7/gen-001/select"].inputs["pool-001"] == own.outputs["pool"]
    assert p["g7/gen-002/sample"].params["spec"]["guidance_scale"] == 7.0
    assert p["shared/gen-001/train"].params["conditional"] == {"num_classes": 10, "p_uncond": 0.1}
    assert p["greedy/gen-001/select"].params["per_class"] is True


def test_a_run_written_before_a_field_existed_resumes_when_the_field_is_at_its_default():
    old = to_dict(load_config("demo"))
    del old["model"]["p_uncond"], old["sample"]["class_weights"]
    for st in old["strategies"]:
        del st["per_class"], st["guidance_scale"]
    assert diff(old, load_config("demo")) == []
    assert diff(old, load_config("demo", ["strategies.greedy.per_class=true", "model.num_classes=10"])) == [
        "model.num_classes: 0 -> 10", "strategies.greedy.per_class: (absent) -> true"]
