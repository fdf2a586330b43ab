"""The plan of a run: every stage in order, with its URLs, sizes, resources and resume hash.

``plan(cfg)`` is pure: it reads no storage and starts nothing; ``format_plan`` prints it for
``--dry-run``. Stages (docs/ARCHITECTURE.md, "One generation, for one strategy"):

    ingest          generation 0: data.source -> <run>/real/train (N, or more under fresh) and real/holdout
    classifier      generation 0: the sample-quality classifier on labelled real training images, and
                    its figures on real/holdout -> <run>/real/classifier (metrics.classifier_images > 0)
    featurize-real  generation 0: every extractor the run uses, on both real splits (once)
    train-set       generation 1: D_1 = the first N real images
    train, sample, featurize, score      each generation n: M_n, its pool P_n, features, metrics
    select          each generation n < G: D_{n+1} from the candidates (collapse.paradigms)

Generation 1 trains on real data only, so all strategies share it. The layout says so with one
more name beside the strategies (RunLayout is composed, not changed): ``shared`` owns D_1, M_1,
P_1 and generation 1's metrics at ``<run>/shared/gen-001/``. P_1 is sampled once, for the
largest pool factor; strategy s reads its first k_s*N samples (sample i is seeded by its index,
so that prefix is the pool s would have drawn alone). Each strategy's first own output is its
generation-1 selection, ``<run>/<s>/gen-001/selection/``, which writes ``<run>/<s>/gen-002/train/``.
In a class-conditional run a strategy whose ``guidance_scale`` differs from ``sample.guidance_scale``
samples, featurizes and scores its own generation 1 from the shared M_1 (``<run>/<s>/gen-001/pool``,
``pool_owner``): a pool drawn at another scale is another pool.
The last generation G samples only ``metrics.gs_samples`` images: nothing is selected from it,
and every generation is scored on the first ``gs_samples`` of its pool (a pool holds at least that
many; with a small N, gs_samples > k*N keeps the scores' sampling error small).

Seeds (collapse.seeding.stage_seed, purpose names fixed here): training ``"train"``, selection and
the uniform draws of vanilla ``"select"``, both per (run seed, generation) and shared by the
strategies (common random numbers: strategies differ by their choices, not their draws).

A stage's ``config_hash`` covers its sizes and parameters and the hashes of the stages it reads
(``after``), not URLs or resources: a moved run directory or a bigger cluster resumes; a longer run
(more generations) keeps every finished stage but the old last generation's pool and what follows.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from collapse import paradigms
from collapse import config
from collapse.config import RunConfig, Strategy
from collapse.config_checks import validate
from collapse.data.manifest import config_hash
from collapse.data.urls import RunLayout, features_url
from collapse.sampler_spec import hashed_fields, sampler_variant
from collapse.seeding import stage_seed

SHARED = "shared"
STAGES = ("ingest", "classifier", "featurize-real", "train-set", "train", "sample", "featurize", "score", "select")


@dataclass(frozen=True)
class Stage:
    """One stage. inputs/outputs: role -> URL. sizes: counts. resources: per actor or worker,
    {"min", "max", "cpus", "gpus"}. params: what the stage runner needs. Treat dicts as read-only."""
    name: str
    strategy: str            # a strategy name, or SHARED
    generation: int          # 0 for the run-level stages
    after: tuple[str, ...]   # keys of the stages whose outputs this one reads
    inputs: dict
    outputs: dict
    sizes: dict
    resources: dict
    params: dict
    config_hash: str

    @property
    def key(self) -> str:
        return self.name if self.generation == 0 else f"{self.strategy}/gen-{self.generation:03d}/{self.name}"


@dataclass(frozen=True)
class Plan:
    """The stages in an order that respects ``after``; iterable like a list."""
    root: str
    config_hash: str
    stages: tuple[Stage, ...]
    notes: tuple[str, ...]

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, i: int | str) -> Stage:
        if isinstance(i, str):
            for s in self.stages:
                if s.key == i:
                    return s
            raise KeyError(f"no stage {i!r} in the plan")
        return self.stages[i]

    def producer(self, url: str) -> Stage | None:
        """The stage whose output holds ``url`` (the longest output prefix), or None."""
        best, length = None, -1
        for stage in self.stages:
            for out in stage.outputs.values():
                out = out.rstrip("/")
                if (url == out or url.startswith(out + "/")) and len(out) > length:
                    best, length = stage, len(out)
        return best


def plan(cfg: RunConfig) -> Plan:
    """Every stage of ``cfg``'s run, generation by generation, strategies side by side."""
    validate(cfg)
    b = _Builder(cfg)
    b.run_level()
    waits = cfg.run.stop_chain_below_rho > 0   # a select reads every score of its generation (below)
    for n in range(1, cfg.run.generations + 1):
        if n == 1:
            b.generation(None, 1)
        for s in cfg.strategies:
            if n > 1 or pool_owner(cfg, s, 1) != SHARED:
                b.generation(s, n)
            if n < cfg.run.generations and not waits:
                b.select(s, n)
        if n < cfg.run.generations and waits:
            scores = sorted({f"{pool_owner(cfg, s, n)}/gen-{n:03d}/score" for s in cfg.strategies})
            for s in cfg.strategies:
                b.select(s, n, scores)
    return Plan(b.layout.root, config.config_hash(cfg), tuple(b.stages), tuple(_notes(cfg)))


def guidance_scale(cfg: RunConfig, s: Strategy | None) -> float:
    """The guidance scale strategy s samples with (the run's, sample.guidance_scale, when it sets none)."""
    own = None if s is None else s.guidance_scale
    return float(cfg.sample.guidance_scale if own is None else own)


def pool_owner(cfg: RunConfig, s: Strategy, n: int) -> str:
    """Who owns strategy s's pool of generation n (and its features and scores): SHARED at generation 1
    for a strategy sampling at the run's guidance scale, else the strategy. M_1 and D_1 are always shared."""
    return SHARED if n == 1 and guidance_scale(cfg, s) == guidance_scale(cfg, None) else s.name


def shares_generation_one(cfg: RunConfig) -> list[str]:
    """The strategies whose generation-1 pool and figures are the shared ones."""
    return [s.name for s in cfg.strategies if pool_owner(cfg, s, 1) == SHARED]


def stage_strategies(cfg: RunConfig, stage: Stage) -> list[str]:
    """The strategies a stage's outputs stand for: its own, or for a shared stage of generation 1 every
    strategy (D_1, M_1) or those sampling at the run's guidance scale (P_1 and its figures)."""
    if stage.strategy != SHARED:
        return [stage.strategy]
    return [s.name for s in cfg.strategies] if stage.name in ("train-set", "train") else shares_generation_one(cfg)


def _conditional(cfg: RunConfig) -> dict:
    """What a class-conditional run adds to the train and sample stages' parameters; nothing for an
    unconditional one, whose stage hashes stay those of runs written before classes existed."""
    m = cfg.model
    return {"conditional": {"num_classes": m.num_classes, "p_uncond": m.p_uncond}} if m.num_classes else {}


def _sample_spec(cfg: RunConfig, s: Strategy | None) -> dict:
    spec = {**dataclasses.asdict(cfg.sample), "guidance_scale": guidance_scale(cfg, s)}
    # guided DDIM only: the stage's hash follows its step's version (unguided hashes as before)
    spec["sampler"] = sampler_variant(spec["method"], spec["guidance_scale"])
    return hashed_fields(spec)


def _strategy_params(s: Strategy) -> dict:
    """A strategy's fields for the select stage; per_class and guidance_scale only when set (see _conditional)."""
    d = dataclasses.asdict(s)
    for name, default in (("per_class", False), ("guidance_scale", None)):
        if d[name] == default:
            del d[name]
    return d


class _Builder:
    def __init__(self, cfg: RunConfig):
        self.cfg, self.G, self.N = cfg, cfg.run.generations, cfg.data.n
        self.layout = RunLayout(cfg.run.run_dir or f"runs/{cfg.run.name}")
        self.stages: list[Stage] = []
        self.hashes: dict[str, str] = {}
        p = cfg.paradigm
        self.real_n = paradigms.real_needed(p.name, self.N, self.G, p.fresh_fraction)

    def add(self, name, strategy, n, after, inputs, outputs, sizes, resources, params) -> str:
        after = tuple(after)
        stage = Stage(name, strategy, n, after, inputs, outputs, sizes, resources, params, "")
        h = config_hash({"stage": stage.key, "sizes": sizes, "params": params, "after": [self.hashes[a] for a in after]})
        self.stages.append(dataclasses.replace(stage, config_hash=h))
        self.hashes[stage.key] = h
        return stage.key

    def owner(self, s: Strategy | None, n: int) -> str:
        return SHARED if n == 1 or s is None else s.name

    def extractors(self, strategies, n: int) -> list[str]:
        """Metrics' spaces, plus the selection spaces of the strategies that select after generation n."""
        own = [s.features for s in strategies if s.features and n < self.G]
        return sorted(set(self.cfg.metrics.features) | set(own))

    def res(self, kind: str) -> dict:
        r = self.cfg.resources
        return {"train": dict(min=r.train_workers, max=r.train_workers, cpus=r.train_cpus, gpus=r.train_gpus),
                "sample": dict(min=r.sampler_min_actors, max=r.sampler_max_actors, cpus=r.sampler_cpus,
                               gpus=r.sampler_gpus),
                "featurize": dict(min=r.featurizer_actors, max=r.featurizer_actors, cpus=r.featurizer_cpus,
                                  gpus=r.featurizer_gpus),
                "score": dict(min=1, max=1, cpus=r.scorer_cpus, gpus=r.scorer_gpus, shards=r.scorer_shards,
                              shard_rows=r.scorer_shard_rows),
                "driver": dict(min=1, max=1, cpus=1.0, gpus=0.0)}[kind]

    def run_level(self) -> None:
        c, L = self.cfg, self.layout
        real = {"train": L.real("train"), "holdout": L.real("holdout")}
        self.add("ingest", SHARED, 0, (), {"source": c.data.source}, real,
                 {"train": self.real_n, "holdout": c.data.holdout}, self.res("driver"),
                 {"source": c.data.source, "size": c.data.size, "mode": c.data.mode, "n": self.real_n,
                  "holdout": c.data.holdout, "seed": c.run.seed})
        self.real_after = ["ingest"]
        if c.metrics.classifier_images:
            self.real_after.append(self.add(
                "classifier", SHARED, 0, ["ingest"], real, {"classifier": L.classifier},
                {"images": c.metrics.classifier_images, "holdout": c.data.holdout}, self.res("driver"),
                {"source": c.data.source, "size": c.data.size, "mode": c.data.mode, "holdout": c.data.holdout,
                 "seed": c.run.seed, "images": c.metrics.classifier_images, "epochs": c.metrics.classifier_epochs}))
        ex = self.extractors(c.strategies, 1)
        self.add("featurize-real", SHARED, 0, self.real_after, real,
                 {f"{split}/{e}": features_url(url, e) for split, url in real.items() for e in ex},
                 {"images": self.real_n + c.data.holdout}, self.res("featurize"), {"extractors": ex})
        self.add("train-set", SHARED, 1, ["ingest"], {"real": real["train"]},
                 {"train_set": L.train_set(SHARED, 1)}, {"train_set": self.N}, self.res("driver"),
                 {"rule": "the first N keys of real/train", "N": self.N})

    def generation(self, s: Strategy | None, n: int) -> None:
        """train, sample, featurize, score of generation n (s None: the shared generation 1). A strategy's
        own generation 1 (a guidance scale other than the run's) samples, featurizes and scores the shared M_1."""
        c, L = self.cfg, self.layout
        o = SHARED if s is None else pool_owner(c, s, n)
        strategies = [x for x in c.strategies if pool_owner(c, x, 1) == SHARED] if s is None else [s]
        size = self.train_size(s, n)
        made_by = f"{SHARED}/gen-001/train-set" if n == 1 else f"{s.name}/gen-{n - 1:03d}/select"
        # scored: the pool's first gs_samples; candidates: its first k*N (gs_samples may exceed k*N)
        count = c.metrics.gs_samples if n == self.G else max(c.metrics.gs_samples, *(
            paradigms.pool_size(self.N, x.pool_factor) for x in strategies), 1)
        from collapse.diffusion.presets import BATCH_ORDER
        if n == 1 and s is not None:
            t = f"{SHARED}/gen-001/train"
        else:
            t = self.add("train", o, n, [made_by], {"train_set": L.train_set(o, n)}, {"model": L.model(o, n)},
                         {"train_set": size, "steps": c.train.steps}, self.res("train"),
                         {"spec": {**dataclasses.asdict(c.train), "preset": c.model.preset,  # cluster.train.TrainSpec
                                   "seed": stage_seed(c.run.seed, n, "train")}, "num_classes": c.model.num_classes,
                          "batch_order": BATCH_ORDER, **_conditional(c)})
        if s is None and not strategies:
            return  # every strategy samples generation 1 at a guidance scale of its own
        model = L.model(SHARED if n == 1 else o, n)
        sm = self.add("sample", o, n, [t], {"model": model}, {"pool": L.pool(o, n)}, {"pool": count},
                      self.res("sample"),
                      {"spec": {"count": count, "run_seed": c.run.seed, "generation": n,   # cluster.sample.SampleSpec
                                "num_classes": c.model.num_classes, **_sample_spec(c, s)}})
        ex = self.extractors(strategies, n)
        f = self.add("featurize", o, n, [sm] + self.real_after[1:], {"pool": L.pool(o, n)},
                     {e: features_url(L.pool(o, n), e) for e in ex}, {"images": count}, self.res("featurize"),
                     {"extractors": ex})
        d1 = f"{SHARED}/gen-001/train-set"  # D_1 (real) sets the copy radius rho of every generation
        after = [f, made_by, *([d1] if made_by != d1 else []), "featurize-real"] + self.real_after[1:]
        self.add("score", o, n, after,
                 {"train_set": L.train_set(SHARED if n == 1 else o, n), "pool": L.pool(o, n),
                  "holdout": L.real("holdout"),
                  "real_train_set": L.train_set(SHARED, 1),
                  **({"classifier": L.classifier} if c.metrics.classifier_images else {})},
                 {"metrics": L.metrics(o, n)},
                 {"train_set": size, "generated": c.metrics.gs_samples, "holdout": c.data.holdout},
                 self.res("score"), {**dataclasses.asdict(c.metrics),
                                     "copy_radius": "1/3 of the median nearest-neighbour distance in D_1"})

    def train_size(self, s: Strategy | None, n: int) -> int:
        if s is None:
            return self.N
        p = self.cfg.paradigm
        return paradigms.train_set_size(p.name, n, N=self.N, kind=s.kind, pool_factor=s.pool_factor,
                                 fresh_fraction=p.fresh_fraction)

    def select(self, s: Strategy, n: int, scores: list[str] = ()) -> None:
        """D_{n+1} of strategy s, from the candidates of generation n (collapse.paradigms.recipe).
        ``scores``: the score stages it also waits for (run.stop_chain_below_rho: its forecast, and so
        whether the chain stops, is fitted over every strategy's generations up to n, whatever the schedule)."""
        c, L, p = self.cfg, self.layout, self.cfg.paradigm
        r = paradigms.recipe(p.name, n, N=self.N, kind=s.kind, pool_factor=s.pool_factor, fresh_fraction=p.fresh_fraction)
        inputs = {}
        for seg in r.forced + r.candidates:
            if seg.source == "real":
                inputs["real"] = L.real("train")
            elif seg.source == "train":
                inputs["train_set"] = L.train_set(self.owner(s, n), n)
            else:
                inputs[f"pool-{seg.generation:03d}"] = L.pool(pool_owner(c, s, seg.generation), seg.generation)
        made_by = f"{SHARED}/gen-001/train-set" if n == 1 else f"{s.name}/gen-{n - 1:03d}/select"
        after = [f"{pool_owner(c, s, n)}/gen-{n:03d}/featurize", made_by, "featurize-real", *scores]
        self.add("select", s.name, n, after, inputs,
                 {"selection": L.selection(s.name, n), "train_set": L.train_set(s.name, n + 1)},
                 {"candidates": r.n_candidates, "forced": r.n_forced, "keep": r.size}, self.res("score"),
                 {**_strategy_params(s), "paradigm": p.name, "fresh_fraction": p.fresh_fraction, "how": r.how,
                  "choose": r.choose, "seed": stage_seed(c.run.seed, n, "select")})


def _notes(cfg: RunConfig) -> list[str]:
    c, notes = cfg, []
    if c.metrics.gs_samples < 1000:
        notes.append(f"metrics.gs_samples = {c.metrics.gs_samples} < 1000 (the paper scores >= 1000 generated "
                     "samples): GS, memorization and FD are noisier")
    if c.paradigm.name == "fresh":
        real = paradigms.real_needed("fresh", c.data.n, c.run.generations, c.paradigm.fresh_fraction)
        notes.append(f"paradigm fresh imports {real} real training images: N = {c.data.n}, plus "
                     f"{paradigms.fresh_count(c.data.n, c.paradigm.fresh_fraction)} new ones for each of D_2..D_G")
    if c.run.generations > 1:
        notes.append(f"generation {c.run.generations} (the last) samples only metrics.gs_samples = "
                     f"{c.metrics.gs_samples} images: no selection follows it")
    return notes


def _short(url: str, root: str) -> str:
    return url[len(root) + 1:] if url.startswith(root + "/") else url


def _fmt_resources(r: dict) -> str:
    n = f"{r['min']}" if r["min"] == r["max"] else f"{r['min']}-{r['max']}"
    gpu = f", {r['gpus']:g} GPU" if r["gpus"] else ""
    return f"{n} x ({r['cpus']:g} CPU{gpu})"


def format_plan(p: Plan) -> str:
    """The plan as text for --dry-run: one line per stage, then the totals and the notes."""
    lines = [f"plan: {len(p)} stages under {p.root} (config_hash {p.config_hash})",
             f"  {'#':>3}  {'stage':<28} {'sizes':<48} {'resources':<20} writes"]
    for i, s in enumerate(p, 1):
        sizes = " ".join(f"{k}={v}" for k, v in s.sizes.items())
        if s.name == "select":
            sizes += f" ({s.params['how']})"
        writes = ", ".join(_short(u, p.root) for u in s.outputs.values())
        if len(writes) > 60:
            writes = f"{_short(next(iter(s.outputs.values())), p.root)}, ... ({len(s.outputs)} outputs)"
        lines.append(f"  {i:>3}  {s.key:<28} {sizes:<48} {_fmt_resources(s.resources):<20} {writes}")
    trains = [s for s in p if s.name == "train"]
    lines.append(f"totals: {len(trains)} trainings ({sum(s.sizes['steps'] for s in trains)} steps), "
                 f"{sum(s.sizes['pool'] for s in p if s.name == 'sample')} generated images, "
                 f"{sum(s.name == 'select' for s in p)} selections")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
