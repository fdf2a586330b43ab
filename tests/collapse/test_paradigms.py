"""Loop paradigms: invariants of the planned training sets over a grid of paradigms, strategy
kinds, pool factors, generations and seeds, checked on keys by simulating the loop."""
import itertools

import numpy as np
import pytest

from collapse import paradigms as pd

N = 12
GRID = [(p, kind, k) for p in sorted(pd.PARADIGMS) for kind in pd.KINDS for k in (1, 2, 3)
        if not (kind == "vanilla" and k != 1) and not (kind == "vanilla-pool" and k == 1)]


def fraction(paradigm):
    return 0.25 if paradigm == "fresh" else 0.0


def pool_keys(strategy, gen, count):
    return [f"{strategy}-gen-{gen:03d}-{i:06d}" for i in range(count)]


def simulate(paradigm, kind, k, generations, seed=0, N=N):
    """The loop over keys: D_1 .. D_G with each generation's record; pools of fresh keys; a
    selection keeps the first `choose` candidates (any valid choice does for these invariants)."""
    f = fraction(paradigm)
    real = [f"real-{i:06d}" for i in range(pd.real_needed(paradigm, N, generations, f))]
    train, pools, history = pd.initial_training_set(real, N), {}, []
    for n in range(1, generations):
        pools[n] = pool_keys("s", n, pd.pool_size(N, k))
        ts = pd.next_training_set(paradigm, n, N=N, kind=kind, pool_factor=k, real_keys=real, pools=pools,
                                  train_keys=train, fresh_fraction=f, seed=seed + n)
        chosen = range(ts.choose) if ts.how == "select" else None
        history.append((ts, train))
        train = ts.keys(chosen)
    return real, pools, history, train


@pytest.mark.parametrize("paradigm,kind,k", GRID)
def test_counts_keys_and_forced_agree_with_the_recipe(paradigm, kind, k):
    real, pools, history, _ = simulate(paradigm, kind, k, generations=5)
    F = pd.fresh_count(N, 0.25) if paradigm == "fresh" else 0
    for n, (ts, d_n) in enumerate(history, 1):
        r = pd.recipe(paradigm, n, N=N, kind=kind, pool_factor=k, fresh_fraction=fraction(paradigm))
        assert (ts.generation, ts.how, ts.choose, ts.size) == (n + 1, r.how, r.choose, r.size)
        assert (len(ts.forced), len(ts.candidates)) == (r.n_forced, r.n_candidates)
        assert len(d_n) == pd.train_set_size(paradigm, n, N=N, kind=kind, pool_factor=k,
                                             fresh_fraction=fraction(paradigm))
        keys = ts.keys(range(ts.choose) if ts.how == "select" else None)
        assert len(keys) == len(set(keys)) == ts.size and keys[:len(ts.forced)] == ts.forced
        assert set(keys) <= set(real) | set(itertools.chain(*pools.values()))
        expected_free = {"replace": N, "accumulate": N, "accumulate-grow": N, "fresh": N - F}[paradigm]
        if kind == "vanilla-pool":
            assert ts.how == "all" and ts.choose == len(ts.candidates)
        else:
            assert ts.choose == expected_free
            assert ts.how == ("select" if kind in pd.SELECTING else "all" if expected_free == len(ts.candidates)
                              else "uniform")
        if paradigm == "replace":
            assert ts.candidates == tuple(pools[n]) and ts.forced == ()
        if paradigm == "accumulate":
            assert ts.candidates == tuple(real[:N]) + tuple(itertools.chain(*(pools[g] for g in range(1, n + 1))))
        if paradigm == "accumulate-grow":
            assert ts.forced == tuple(d_n) and ts.candidates == tuple(pools[n])
        if paradigm == "fresh":
            assert ts.forced == tuple(real[N + (n - 1) * F:N + n * F]) and ts.candidates == tuple(pools[n])


@pytest.mark.parametrize("kind,k", [("vanilla", 1), ("vanilla-pool", 2), ("greedy", 2)])
def test_grow_grows_and_fresh_real_is_never_reused(kind, k):
    _, _, history, last = simulate("accumulate-grow", kind, k, generations=5)
    sizes = [len(d) for _, d in history] + [len(last)]
    added = k * N if kind == "vanilla-pool" else N
    assert sizes == [N + i * added for i in range(5)]
    assert all(set(a) < set(b) for (_, a), b in zip(history, [d for _, d in history[1:]] + [last]))
    _, _, history, _ = simulate("fresh", kind, k, generations=5)
    fresh = [set(ts.forced) for ts, _ in history]
    assert all(not (a & b) for a, b in itertools.combinations(fresh + [set(history[0][1])], 2))


def test_vanilla_under_accumulate_keeps_real_share_one_over_n_in_expectation():
    generations, seeds = 5, 60
    shares = np.zeros((seeds, generations))
    for seed in range(seeds):
        real, _, history, last = simulate("accumulate", "vanilla", 1, generations, seed=1000 * seed, N=60)
        sets = [d for _, d in history] + [last]
        shares[seed] = [pd.real_share(d, set(real)) for d in sets]
    mean = shares.mean(axis=0)
    np.testing.assert_allclose(mean, [1 / n for n in range(1, generations + 1)], atol=0.03)
    assert shares[:, 1:].std() > 0                                           # a draw, not a fixed slice


def test_the_uniform_draw_is_a_function_of_the_seed_only():
    a = simulate("accumulate", "vanilla", 1, 4, seed=3)[3]
    assert a == simulate("accumulate", "vanilla", 1, 4, seed=3)[3]
    assert a != simulate("accumulate", "vanilla", 1, 4, seed=4)[3]
    draw = pd.uniform_draw(100, 10, seed=7)
    assert np.array_equal(draw, pd.uniform_draw(100, 10, seed=7)) and np.all(np.diff(draw) > 0)


def test_a_longer_pool_contributes_its_prefix():
    real = [f"r{i}" for i in range(N)]
    shared = pool_keys("shared", 1, 3 * N)                                   # sampled for k = 3
    ts = pd.next_training_set("replace", 1, N=N, kind="greedy", pool_factor=2, real_keys=real, pools={1: shared},
                              seed=0)
    assert ts.candidates == tuple(shared[:2 * N])


def test_real_share_accepts_a_set_or_a_predicate():
    keys = ["real-1", "gen-002-5", "real-2", "gen-003-1"]
    assert pd.real_share(keys, {"real-1", "real-2"}) == pd.real_share(keys, lambda k: k.startswith("real")) == 0.5
    with pytest.raises(ValueError, match="empty"):
        pd.real_share([], set())


def test_real_needed_and_fresh_count():
    assert pd.real_needed("replace", 100, 8) == 100
    assert pd.real_needed("fresh", 100, 8, 0.2) == 100 + 7 * 20
    for f in (0.0, 0.001, 1.0):
        with pytest.raises(ValueError, match="fresh_fraction"):
            pd.fresh_count(100, f)


def test_the_document_table_matches_the_registry():
    assert set(pd.PARADIGMS) == {"replace", "accumulate", "accumulate-grow", "fresh"}
    for name in pd.PARADIGMS:
        assert f"| {name} " in pd.__doc__


BAD_CALLS = [
    (dict(paradigm="grow"), "unknown paradigm"),
    (dict(kind="best"), "unknown strategy kind"),
    (dict(kind="vanilla", pool_factor=2), "pool_factor must be 1"),
    (dict(pool_factor=0), "pool_factor must be an int >= 1"),
    (dict(n=0), "n must be an int >= 1"),
    (dict(pools={}), "the pool of generation 1 is needed"),
    (dict(pools={1: ["p0"]}), "has 1 keys; this paradigm needs at least 24"),
    (dict(paradigm="accumulate-grow", train_keys=["r0"]), "needs exactly 12"),
    (dict(pools={1: ["r0"] + pool_keys("s", 1, 2 * N)}, paradigm="accumulate"), "'r0' occurs twice"),
]


@pytest.mark.parametrize("change,message", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_calls_raise_clear_errors(change, message):
    real = [f"r{i}" for i in range(N)]
    args = dict(paradigm="replace", n=1, N=N, kind="greedy", pool_factor=2, real_keys=real,
                pools={1: pool_keys("s", 1, 2 * N)}, train_keys=real, seed=0)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        pd.next_training_set(args.pop("paradigm"), args.pop("n"), **args)


def test_keys_checks_the_chosen_indices():
    ts = pd.TrainingSet("replace", 2, "select", 0, (), tuple("abcd"), 2)
    assert ts.keys([3, 1]) == ("b", "d")
    for bad in (None, [1], [1, 1], [0, 4]):
        with pytest.raises(ValueError):
            ts.keys(bad)
    with pytest.raises(ValueError, match="only for how='select'"):
        pd.TrainingSet("replace", 2, "all", 0, (), tuple("ab"), 2).keys([0, 1])
