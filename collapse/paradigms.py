"""The loop paradigms: which keys the next training set D_{n+1} is built from (pure planning).

Generation n trains model M_n from scratch on D_n (|D_1| = N real images), samples its pool P_n
of k*N candidates (k = the strategy's pool factor), and D_{n+1} is built from them
(docs/SCIENCE.md, "The loop paradigms"). With F = round(fresh_fraction * N):

| paradigm        | vanilla: D_{n+1} =                    | a selection chooses among | forced in  |
|-----------------|---------------------------------------|---------------------------|------------|
| replace         | P_n (the N samples of M_n)            | P_n (k*N), keeps N        | -          |
| accumulate      | N uniform from real + P_1 + ... + P_n | real + P_1 + ... + P_n    | -          |
| accumulate-grow | D_n + P_n (grows by N a generation)   | P_n, keeps N              | D_n        |
| fresh           | F fresh real + (N - F) uniform of P_n | P_n, keeps N - F          | F new real |

Who defined each: replace is the fully synthetic loop (Shumailov et al. 2024, Nature;
Alemohammad et al. 2024, "Self-consuming generative models go MAD"), the paper's "replace";
accumulate is the paper's own (Shi et al. 2025, accumulate-subsample: fixed N, real share 1/n at
generation n for vanilla); accumulate-grow is Gerstgrasser et al. 2024 ("Is model collapse
inevitable?"); fresh is the fresh data loop of Alemohammad et al. 2024 (in the paper's appendix).

Strategy kinds: ``vanilla`` (k = 1, no selection), ``vanilla-pool`` (keep every candidate: train
on the whole pool, or everything so far under accumulate), and the selecting kinds ``random``,
``greedy``, ``tdf`` (a selection keeps the free share among the candidates). Under accumulate
the paper's pool is "everything so far", so its presets use k = 1 there.

Conventions (a change gets a new paradigm name, docs/STYLE.md principle 5):
- the real reservoir ``real_keys`` is the imported real train split in its (seeded) order: D_1 is
  its first N keys; ``fresh`` takes generation n's F new keys from the block
  ``real_keys[N + (n-1)F : N + nF]``, so no real image is fresh twice (``real_needed`` says how
  many to import);
- a pool longer than k*N contributes its first k*N keys. Sample i of a pool is seeded by
  (run seed, generation, i) (collapse.seeding), so the prefix of the shared generation-1 pool,
  sampled once for the largest k, is exactly the pool a strategy with a smaller k would have drawn;
- candidates are ordered real, then pools by generation, each in its own order; a uniform draw
  is ``sort(default_rng(seed).permutation(len(candidates))[:choose])``, the seed passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from collapse.errors import check_int
from collapse.registry import registrar

KINDS = ("vanilla", "vanilla-pool", "random", "greedy", "tdf")
SELECTING = ("random", "greedy", "tdf")
HOW = ("all", "uniform", "select")   # keep every candidate | a seeded uniform draw | a selection strategy


@dataclass(frozen=True)
class Segment:
    """Keys [start, stop) of one source: ``real`` (the reservoir), ``pool`` (P_generation) or
    ``train`` (D_n, under accumulate-grow)."""
    source: str
    generation: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Recipe:
    """D_{n+1} in counts: ``forced`` segments kept whatever the strategy, plus ``choose`` keys
    chosen ``how`` among the ``candidates`` segments. ``generation`` is n + 1."""
    paradigm: str
    generation: int
    forced: tuple[Segment, ...]
    candidates: tuple[Segment, ...]
    choose: int
    how: str

    @property
    def n_forced(self) -> int:
        return sum(s.size for s in self.forced)

    @property
    def n_candidates(self) -> int:
        return sum(s.size for s in self.candidates)

    @property
    def size(self) -> int:
        """|D_{n+1}|."""
        return self.n_forced + self.choose


@dataclass(frozen=True)
class TrainingSet:
    """The decision data of D_{n+1} over keys (docs/STYLE.md principle 6): acting on it is the caller's."""
    paradigm: str
    generation: int
    how: str
    seed: int
    forced: tuple[str, ...]
    candidates: tuple[str, ...]
    choose: int

    @property
    def size(self) -> int:
        return len(self.forced) + self.choose

    def keys(self, chosen: Sequence[int] | None = None) -> tuple[str, ...]:
        """D_{n+1}: the forced keys, then the chosen candidates in candidate order.

        ``chosen``: the candidate indices a selection kept (``how == "select"`` only; e.g.
        ``Selection.indices`` over the features of ``candidates``); None for ``all``/``uniform``.
        """
        if self.how == "select":
            idx = _check_chosen(chosen, len(self.candidates), self.choose)
        elif chosen is not None:
            raise ValueError(f"chosen is only for how='select'; this set is built by how={self.how!r}")
        elif self.how == "uniform":
            idx = uniform_draw(len(self.candidates), self.choose, self.seed)
        else:
            idx = range(len(self.candidates))
        return self.forced + tuple(self.candidates[i] for i in idx)


def _check_chosen(chosen, n_candidates: int, choose: int) -> list[int]:
    if chosen is None:
        raise ValueError("how='select' needs the chosen candidate indices")
    idx = sorted(int(i) for i in chosen)
    if len(idx) != choose or len(set(idx)) != choose or (idx and not 0 <= idx[0] <= idx[-1] < n_candidates):
        raise ValueError(f"chosen must be {choose} distinct indices in [0, {n_candidates}), got {len(idx)} "
                         f"({len(set(idx))} distinct)")
    return idx


def uniform_draw(n_candidates: int, choose: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform subset of ``choose`` of ``n_candidates``, a function of ``seed`` only."""
    if not 0 <= choose <= n_candidates:
        raise ValueError(f"cannot draw {choose} of {n_candidates} candidates")
    return np.sort(np.random.default_rng(seed).permutation(n_candidates)[:choose])


# -- the registry: one small function per paradigm, (n, N, k, F, |D_n|) -> (forced, candidates, free share)

PARADIGMS: dict[str, Callable] = {}


register = registrar(PARADIGMS, "paradigm")


@register("replace")
def _replace(n, N, k, F, size_n):
    return (), (Segment("pool", n, 0, k * N),), N


@register("accumulate")
def _accumulate(n, N, k, F, size_n):
    pools = tuple(Segment("pool", g, 0, k * N) for g in range(1, n + 1))
    return (), (Segment("real", 0, 0, N),) + pools, N


@register("accumulate-grow")
def _accumulate_grow(n, N, k, F, size_n):
    return (Segment("train", n, 0, size_n),), (Segment("pool", n, 0, k * N),), N


@register("fresh")
def _fresh(n, N, k, F, size_n):
    block = Segment("real", 0, N + (n - 1) * F, N + n * F)
    return (block,), (Segment("pool", n, 0, k * N),), N - F


def _how(kind: str, n_candidates: int, n_free: int) -> tuple[int, str]:
    """(how many candidates to keep, how): vanilla keeps all or draws uniformly; vanilla-pool keeps all."""
    if kind == "vanilla-pool" or (kind == "vanilla" and n_free == n_candidates):
        return n_candidates, "all"
    if kind == "vanilla":
        return n_free, "uniform"
    return n_free, "select"


# -- counts

def pool_size(N: int, pool_factor: int) -> int:
    """Candidates a strategy samples per generation: k*N (vanilla has k = 1)."""
    return check_int(N, "N", low=1) * check_int(pool_factor, "pool_factor", low=1)


def fresh_count(N: int, fresh_fraction: float) -> int:
    """F = round(fresh_fraction * N), the fresh real images of each generation; 1 <= F <= N - 1."""
    F = int(round(float(fresh_fraction) * check_int(N, "N", low=1)))
    if not 1 <= F <= N - 1:
        raise ValueError(f"fresh_fraction={fresh_fraction} gives F={F} fresh images of N={N}; "
                         f"need 1 <= F <= N - 1")
    return F


def real_needed(paradigm: str, N: int, generations: int, fresh_fraction: float = 0.0) -> int:
    """Real training images to import: N, plus F for each of D_2..D_G under ``fresh``."""
    generations = check_int(generations, "generations", low=1)
    if paradigm == "fresh":
        return N + (generations - 1) * fresh_count(N, fresh_fraction)
    return check_int(N, "N", low=1)


def recipe(paradigm: str, n: int, *, N: int, kind: str, pool_factor: int, fresh_fraction: float = 0.0) -> Recipe:
    """How D_{n+1} is built at the end of generation n >= 1, in counts (see the module table)."""
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; known: {sorted(PARADIGMS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown strategy kind {kind!r}; known: {list(KINDS)}")
    n, k = check_int(n, "n", low=1), check_int(pool_factor, "pool_factor", low=1)
    check_int(N, "N", low=1)
    if kind == "vanilla" and k != 1:
        raise ValueError(f"vanilla samples N and keeps them: pool_factor must be 1, got {k}")
    F = fresh_count(N, fresh_fraction) if paradigm == "fresh" else 0
    size_n = train_set_size(paradigm, n, N=N, kind=kind, pool_factor=k, fresh_fraction=fresh_fraction) \
        if paradigm == "accumulate-grow" else 0
    forced, candidates, n_free = PARADIGMS[paradigm](n, N, k, F, size_n)
    choose, how = _how(kind, sum(s.size for s in candidates), n_free)
    return Recipe(paradigm, n + 1, forced, candidates, choose, how)


def train_set_size(paradigm: str, n: int, *, N: int, kind: str, pool_factor: int, fresh_fraction: float = 0.0) -> int:
    """|D_n| for generation n >= 1 (N except under accumulate-grow and for vanilla-pool)."""
    if check_int(n, "n", low=1) == 1:
        return check_int(N, "N", low=1)
    return recipe(paradigm, n - 1, N=N, kind=kind, pool_factor=pool_factor, fresh_fraction=fresh_fraction).size


# -- keys

def initial_training_set(real_keys: Sequence[str], N: int) -> tuple[str, ...]:
    """D_1: the first N keys of the real reservoir."""
    if len(real_keys) < check_int(N, "N", low=1):
        raise ValueError(f"the real set has {len(real_keys)} keys, fewer than N={N}")
    return tuple(real_keys[:N])


def next_training_set(paradigm: str, n: int, *, N: int, kind: str, pool_factor: int, real_keys: Sequence[str],
                      pools: Mapping[int, Sequence[str]], train_keys: Sequence[str] = (),
                      fresh_fraction: float = 0.0, seed: int) -> TrainingSet:
    """The plan of D_{n+1} at the end of generation n, over keys.

    real_keys: the real reservoir, in order. pools: this strategy's pools by generation (at least
    the generations the paradigm reads: n, or 1..n under accumulate). train_keys: D_n (read under
    accumulate-grow only). seed: the uniform draw's (e.g. ``stage_seed(run_seed, n, "select")``).
    """
    r = recipe(paradigm, n, N=N, kind=kind, pool_factor=pool_factor, fresh_fraction=fresh_fraction)
    sources = {"real": real_keys, "train": train_keys}
    forced = _resolve(r.forced, sources, pools)
    candidates = _resolve(r.candidates, sources, pools)
    everything = forced + candidates
    if len(set(everything)) != len(everything):
        dup = next(key for i, key in enumerate(everything) if key in everything[:i])
        raise ValueError(f"key {dup!r} occurs twice among the sources of generation {n + 1}'s training set")
    return TrainingSet(paradigm, n + 1, r.how, int(seed), forced, candidates, r.choose)


def _resolve(segments, sources, pools) -> tuple[str, ...]:
    out: list[str] = []
    for s in segments:
        if s.source == "pool":
            if s.generation not in pools:
                raise ValueError(f"the pool of generation {s.generation} is needed, got pools of {sorted(pools)}")
            keys, what = pools[s.generation], f"pool of generation {s.generation}"
        else:
            keys, what = sources[s.source], {"real": "real set", "train": "training set D_n"}[s.source]
        if len(keys) < s.stop or (s.source == "train" and len(keys) != s.stop):
            raise ValueError(f"the {what} has {len(keys)} keys; this paradigm needs "
                             f"{'exactly' if s.source == 'train' else 'at least'} {s.stop}")
        out += keys[s.start:s.stop]
    return tuple(out)


def real_share(keys: Sequence[str], real: Collection[str] | Callable[[str], bool]) -> float:
    """The share of ``keys`` that are real. ``real``: the set of real keys, or a predicate
    (e.g. ``lambda k: lineage[k]["source"] == "real"``)."""
    if len(keys) == 0:
        raise ValueError("the real share of an empty set is undefined")
    is_real = real if callable(real) else real.__contains__
    return sum(1 for k in keys if is_real(k)) / len(keys)
