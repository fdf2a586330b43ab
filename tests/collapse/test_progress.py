"""The run's ETA and the progress lines of long stages (collapse.progress)."""
from collapse.plan import SHARED, plan
from collapse.progress import DEFAULT_RATES, DEFAULT_STAGE_S, ETA, ImagesProgress, Ticker, images_line, tick, train_line
from jobs.presets import load_config


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_eta_is_a_number_from_the_first_stage_on_and_scales_each_kind_by_its_work():
    p = plan(load_config("tiny"))
    eta, train, sample = ETA(), p[f"{SHARED}/gen-001/train"], p[f"{SHARED}/gen-001/sample"]
    left = [p["greedy/gen-002/train"], p["greedy/gen-002/sample"], p["greedy/gen-002/featurize"]]
    pool, images = left[1].sizes["pool"], left[2].sizes["images"]
    # nothing timed: the stated defaults, per unit of the plan's work
    want = (20 * DEFAULT_RATES["train"] + pool * DEFAULT_RATES["sample"] + images * DEFAULT_RATES["featurize"]) / 60
    assert eta.say(left, 0.0) == f"0.0 min so far, ETA {want:.1f} min (default rates until timed: featurize, sample, " \
                                 "train)"
    eta.done(train, 40.0)                         # 20 steps: 2 s per step
    want = (20 * 2.0 + pool * DEFAULT_RATES["sample"] + images * DEFAULT_RATES["featurize"]) / 60
    assert eta.say(left, 60.0) == f"1.0 min so far, ETA {want:.1f} min (default rates until timed: featurize, sample)"
    eta.done(sample, sample.sizes["pool"] * 0.1)  # 0.1 s per image
    eta.done(p[f"{SHARED}/gen-001/featurize"], 3.0)
    want = (20 * 2.0 + pool * 0.1 + images * 3.0 / p[f"{SHARED}/gen-001/featurize"].sizes["images"]) / 60
    assert eta.say(left, 120.0) == f"2.0 min so far, ETA {want:.1f} min" and eta.say([], 1.0) == "0.0 min so far"
    # a kind without units counts per stage
    assert ETA().left_s([p["ingest"]]) == DEFAULT_STAGE_S


def test_side_by_side_the_eta_is_the_shared_stages_and_the_longest_chain():
    from collapse import progress
    assert progress.SHARED == SHARED   # kept as a copy: collapse.progress imports nothing of ours
    p = plan(load_config("tiny"))
    timed = ETA(side_by_side=True)
    for kind in ("train", "sample", "featurize", "score", "select"):
        timed.rate[kind] = 1.0
    shared = [p[f"{SHARED}/gen-001/train"]]
    greedy = [p["greedy/gen-002/train"], p["greedy/gen-002/sample"]]
    vanilla = [p["vanilla/gen-002/train"]]
    cost = {id(s): timed.units(s) for s in shared + greedy + vanilla}
    chain = {"greedy": sum(cost[id(s)] for s in greedy), "vanilla": sum(cost[id(s)] for s in vanilla)}
    assert chain["greedy"] > chain["vanilla"] > 0
    assert timed.left_s(shared + greedy + vanilla) == cost[id(shared[0])] + chain["greedy"]
    # fewer lanes than chains: the chains' sum spread over the lanes, when that is longer
    one_lane = ETA(side_by_side=True, lanes=1)
    one_lane.rate = timed.rate
    assert one_lane.left_s(shared + greedy + vanilla) == cost[id(shared[0])] + chain["greedy"] + chain["vanilla"]
    # one after another: the sum
    serial = ETA()
    serial.rate = timed.rate
    assert serial.left_s(greedy + vanilla) == chain["greedy"] + chain["vanilla"]
    assert timed.say(vanilla, 0.0) == f"0.0 min so far, ETA {chain['vanilla'] / 60:.1f} min"


def test_a_ticker_is_due_every_interval_and_at_the_end():
    clock = Clock()
    tick = Ticker(30.0, clock)
    seen = []
    for step in range(1, 101):
        clock.t += 1.0                            # a second per step
        if tick.due(final=step == 100):
            seen.append(step)
    assert seen == [30, 60, 90, 100]
    short = Ticker(30.0, clock)
    clock.t += 29.0
    assert not short.due(final=True)              # a loop shorter than the interval prints nothing


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("COLLAPSE_PROGRESS_EVERY_S", "0")
    assert Ticker().due() and Ticker(5.0).every_s == 5.0
    monkeypatch.delenv("COLLAPSE_PROGRESS_EVERY_S")
    assert Ticker().every_s == 30.0


def test_the_lines_say_step_total_loss_rate_and_eta():
    assert train_line("s3://b/run/shared/gen-001/model", 120, 3000, 0.08312, 4.8) == \
        "train s3://b/run/shared/gen-001/model: step 120/3000, loss 0.0831, 4.80 steps/s, ETA 10.0 min"
    assert train_line("m", 10, 20, 0.5, 2.0).endswith("ETA 5 s") and train_line("m", 0, 20, 0.5, 0.0).endswith("ETA ?")
    assert images_line("sample p", 640, 2000, 20.0) == "sample p: 640/2000 images, 20.0 images/s, ETA 1.1 min"


def test_images_progress_counts_shards_and_says_a_line_when_due():
    clock, said = Clock(), []
    p = ImagesProgress("sample pool", 100, said.append, Ticker(30.0, clock))
    for _ in range(4):                            # 25 images every 20 s
        clock.t += 20.0
        p.add(25)
    assert [line.split(",")[0] for line in said] == ["sample pool: 50/100 images", "sample pool: 100/100 images"]
    quiet = []
    short = ImagesProgress("featurize set", 10, quiet.append, Ticker(30.0, clock))
    short.add(10)                                 # done before the interval: no line
    assert quiet == []


def test_with_a_board_images_progress_posts_a_tick_per_shard_and_says_no_line():
    said, posted = [], []
    p = ImagesProgress("sample /r/shared/gen-001/pool", 1000, said.append, ticker=Ticker(0.0), post=posted.append)
    p.add(500)
    p.add(500)
    assert said == [] and [(t["done"], t["total"], t["unit"]) for t in posted] == [(500, 1000, "images"), (1000, 1000, "images")]
    assert posted[-1]["what"] == "sample /r/shared/gen-001/pool" and posted[-1]["rate"] > 0 and posted[-1]["loss"] is None
    assert tick("m", 3, 10, "steps", 2.5, 0.1) == {"what": "m", "done": 3, "total": 10, "unit": "steps", "rate": 2.5,
                                                   "loss": 0.1}
