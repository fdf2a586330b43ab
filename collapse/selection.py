"""Choose which n of a pool of candidates to keep (docs/SCIENCE.md, "The selection strategies").

``select(features, n, strategy, seed=0, **params)`` returns a frozen :class:`Selection`: the kept
indices in selection order and, per kept item, why it was kept. Strategies live in a registry
of small functions; a registered name never changes meaning (a new behaviour gets a new name).

- ``random``: a uniform subset, seeded (rng.permutation(pool)[:n]).
- ``greedy``: farthest-point (k-center) greedy. Start from one seeded random candidate; then add
  the candidate whose distance to its nearest kept item is largest (ties: lowest index). A
  running min-distance vector is updated once per step, chunked: O(n * pool * d), on GPU when
  present.
- ``tdf``: threshold decay filter, params ``tau0`` (> 0, in feature units; the paper: 60 in
  DINOv2 space, 2000 in pixel space) and ``alpha`` in (0, 1) (default 0.95). Pass over the
  candidates in one seeded shuffled order; keep x if it is farther than tau (strictly) from every
  kept item; stop at n. **Decay rule: tau <- alpha * tau after every pass**, whether or not the
  pass kept anything (the paper's algorithm box, as docs/SCIENCE.md states it; the rule "decay only
  after a pass that kept nothing" would be registered under a new name). Passes that cannot keep
  anything (tau >= every remaining candidate's distance) are skipped arithmetically: same tau,
  same pass count as running them. When every remaining candidate is a duplicate of a kept item
  (distance 0, which no tau > 0 admits), a final fill pass keeps them in the shuffled order with
  tau recorded as 0, so tdf, like greedy, always returns n items.

Distances: candidates are centred (mean of the pool) and held in float64 for the matrix
products (torch, chunked, CUDA when present). float64, not float32: farthest-point choices late
in a run separate candidates whose distances differ by ~1e-6 relative, below float32's rounding
of |x|^2 + |c|^2 - 2 x.c, and a float32 greedy then depends on chunking and device. The steps are
memory-bound matrix-vector products, so float64 costs about 2x. Squared distances below the
resolution 4 sqrt(d) eps_64 max|x|^2 count as 0, so exact duplicates tie exactly (lowest index
first). The reasons report exact distances (direct differences). Results do not depend on
``chunk`` or ``device`` (up to exact floating-point ties); uint8 pixels are converted to float
first (no wrap-around).
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from collapse.errors import check_int
from collapse.knn import as_rows, centred, pair_distance, resolve_device
from collapse.registry import registrar

_EPS64 = float(np.finfo(np.float64).eps)
_TDF_BLOCK = 4096


@dataclass(frozen=True, eq=False)
class Selection:
    """What a selection kept, and why. Arrays are (n,), read-only, in selection order.

    indices: int64, the kept rows of the pool. distance: float64, exact distance from the item to
    its nearest already-kept item when it was kept (inf for the first; NaN for ``random``, which
    measures none). nearest: int64, that already-kept item's index (-1 when none / not measured).
    pass_index: int64, the tdf pass that kept it (0 for other strategies). tau: float64, the tdf
    threshold then (0 for the fill pass; NaN for other strategies). params: resolved parameters.
    """
    strategy: str
    seed: int
    n_pool: int
    params: dict
    indices: np.ndarray
    distance: np.ndarray
    nearest: np.ndarray
    pass_index: np.ndarray
    tau: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        """The reasons as named columns, one row per kept item, for writers and reports."""
        return {"order": np.arange(len(self)), "index": self.indices, "distance": self.distance,
                "nearest": self.nearest, "pass": self.pass_index, "tau": self.tau}


STRATEGIES: dict[str, Callable] = {}


# register(name): add a strategy ``fn(x, n, rng, *, device, chunk, make_state, **params) -> (indices, nearest,
# pass, tau)``
register = registrar(STRATEGIES, "selection strategy")


def select(features, n: int, strategy: str, seed: int = 0, *, device=None, chunk: int = 16384,
           make_state=None, **params) -> Selection:
    """Keep n of the pool's rows. features: (pool, d) any real dtype; see the module docstring.

    make_state: ``(x, device, chunk) -> state`` holding the pool and its running min-distance vector
    for greedy and tdf (default :class:`LocalState`); cluster.selection passes one whose pool is split
    across actors, and the picks are the same."""
    x = as_rows(features, "features")
    pool = x.shape[0]
    check_int(n, "n", low=1, high=pool)   # high: the pool's rows
    check_int(seed, "seed", low=0)
    check_int(chunk, "chunk", low=1)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {sorted(STRATEGIES)}")
    fn = STRATEGIES[strategy]
    params = _resolve_params(strategy, fn, params)
    rng = np.random.default_rng(int(seed))
    idx, nearest, pass_index, tau = fn(x, int(n), rng, device=resolve_device(device), chunk=chunk,
                                       make_state=make_state or LocalState, **params)
    if nearest is None:
        distance = np.full(n, np.nan)
        nearest = np.full(n, -1, dtype=np.int64)
    else:
        distance = _exact_distance(x, idx, nearest)
    arrays = [np.asarray(a) for a in (idx, distance, nearest, pass_index, tau)]
    for a in arrays:
        a.setflags(write=False)
    return Selection(strategy, int(seed), pool, params, *arrays)


def _resolve_params(strategy: str, fn: Callable, params: dict) -> dict:
    sig = inspect.signature(fn).parameters
    own = {k: p for k, p in sig.items() if p.kind is p.KEYWORD_ONLY and k not in ("device", "chunk", "make_state")}
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise ValueError(f"strategy {strategy!r} takes no parameter {unknown}; it takes {sorted(own) or 'none'}")
    missing = sorted(k for k, p in own.items() if p.default is p.empty and k not in params)
    if missing:
        raise ValueError(f"strategy {strategy!r} needs parameter(s) {missing}")
    return {k: params.get(k, p.default) for k, p in own.items()}


def _exact_distance(x: np.ndarray, idx: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """float64 ||x[idx] - x[nearest]||, inf where nearest == -1 (nothing kept before)."""
    out = np.full(idx.shape[0], np.inf)
    has = nearest >= 0
    where = np.flatnonzero(has)
    for s in range(0, where.size, 4096):
        w = where[s:s + 4096]
        out[w] = pair_distance(x[nearest[w]], x[idx[w]])
    return out


class _Space:
    """The pool as centred float64 rows on the device, with squared norms and the resolution."""

    def __init__(self, x: np.ndarray, device: torch.device, chunk: int):
        self.x = torch.from_numpy(centred(x, x.mean(axis=0, dtype=np.float64), np.float64)).to(device)
        self.sq = (self.x * self.x).sum(1)
        self.res2 = 4.0 * np.sqrt(x.shape[1]) * _EPS64 * float(self.sq.max())
        self.chunk = chunk
        self.n = x.shape[0]

    def d2(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Squared distances (len(rows), len(cols)), float64, resolution-clamped to exact 0."""
        d2 = self.sq[rows, None] + self.sq[None, cols] - 2.0 * (self.x[rows] @ self.x[cols].T)
        return d2.masked_fill_(d2 <= self.res2, 0.0)

    def update_one(self, d2_to_kept: torch.Tensor, owner: torch.Tensor, c: int) -> None:
        """:meth:`update` for one new kept item c (a matrix-vector product per chunk)."""
        update_nearest_kept_one(self.x, self.sq, self.res2, self.chunk, d2_to_kept, owner, self.x[c], self.sq[c], c)

    def update(self, d2_to_kept: torch.Tensor, owner: torch.Tensor, new: torch.Tensor) -> None:
        """d2_to_kept <- min(d2_to_kept, d2 to the new kept items), owner <- the argmin kept index. Chunked."""
        update_nearest_kept(self.x, self.sq, self.res2, self.chunk, d2_to_kept, owner, self.x[new], self.sq[new], new)


def update_nearest_kept_one(x: torch.Tensor, sq: torch.Tensor, res2: float, chunk: int, d2_to_kept: torch.Tensor,
                            owner: torch.Tensor, x_kept: torch.Tensor, sq_kept, kept: int) -> None:
    """Rows ``x`` (squared norms ``sq``) learn their squared distance to one newly kept item (its row
    ``x_kept``, squared norm ``sq_kept``, index ``kept``): ``d2_to_kept`` <- the smaller, ``owner`` <-
    ``kept`` where it is closer. Distances at or below ``res2`` count as 0. In place, ``chunk`` rows at
    a time. The whole pool (LocalState) and each shard of it (cluster.selection.PoolShard) call this
    one function, so that they pick the same items."""
    for s in range(0, x.shape[0], chunk):
        d2 = torch.mv(x[s:s + chunk], x_kept).mul_(-2.0).add_(sq[s:s + chunk]).add_(sq_kept)
        d2.masked_fill_(d2 <= res2, 0.0)
        closer = d2 < d2_to_kept[s:s + chunk]
        d2_to_kept[s:s + chunk] = torch.where(closer, d2, d2_to_kept[s:s + chunk])
        owner[s:s + chunk].masked_fill_(closer, kept)


def update_nearest_kept(x: torch.Tensor, sq: torch.Tensor, res2: float, chunk: int, d2_to_kept: torch.Tensor,
                        owner: torch.Tensor, x_kept: torch.Tensor, sq_kept: torch.Tensor, kept: torch.Tensor) -> None:
    """:func:`update_nearest_kept_one` for several newly kept items at once (rows ``x_kept``, squared
    norms ``sq_kept``, indices ``kept``): the nearest of them per row."""
    for s in range(0, x.shape[0], chunk):
        d2 = sq[s:s + chunk, None] + sq_kept[None, :] - 2.0 * (x[s:s + chunk] @ x_kept.T)
        d2.masked_fill_(d2 <= res2, 0.0)
        best, j = d2.min(dim=1)
        closer = best < d2_to_kept[s:s + chunk]
        d2_to_kept[s:s + chunk] = torch.where(closer, best, d2_to_kept[s:s + chunk])
        owner[s:s + chunk] = torch.where(closer, kept[j], owner[s:s + chunk])


class LocalState:
    """The pool (a :class:`_Space`) and, per candidate, the squared distance to its nearest kept item
    (``d2_to_kept``, -inf once kept) and that item (``owner``), in this process. Greedy and tdf see the
    pool only through these methods, so a sharded state (cluster.selection) gives the same picks."""

    def __init__(self, x: np.ndarray, device: torch.device, chunk: int):
        self.sp, self.device = _Space(x, device, chunk), device
        self.n = self.sp.n
        self.d2_to_kept = torch.full((self.n,), float("inf"), dtype=torch.float64, device=device)
        self.owner = torch.full((self.n,), -1, dtype=torch.int64, device=device)

    def add_one(self, c: int) -> tuple[int, int]:
        """Keep c; return the next farthest candidate (first index of the largest min-distance) and
        the kept item nearest to it."""
        self.sp.update_one(self.d2_to_kept, self.owner, c)
        self.d2_to_kept[c] = -float("inf")  # kept: never chosen again (min with d2 >= 0 keeps it -inf)
        j = int(torch.argmax(self.d2_to_kept))
        return j, int(self.owner[j])

    def add(self, new: np.ndarray) -> None:
        """Keep the rows ``new`` (int64 indices)."""
        t = torch.from_numpy(np.asarray(new, dtype=np.int64)).to(self.device)
        self.sp.update(self.d2_to_kept, self.owner, t)
        self.d2_to_kept[t] = -float("inf")

    def top(self) -> float:
        """The largest min-distance of a candidate not kept (squared)."""
        return float(self.d2_to_kept.max())

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d2_to_kept, owner) of ``rows``, as numpy arrays."""
        t = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        return self.d2_to_kept[t].cpu().numpy(), self.owner[t].cpu().numpy()

    def d2(self, rows: np.ndarray) -> np.ndarray:
        """Squared distances among ``rows`` (len, len), resolution-clamped, as numpy."""
        t = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)
        return self.sp.d2(t, t).cpu().numpy()


@register("random")
def _random(x, n, rng, *, device, chunk, make_state):
    idx = rng.permutation(x.shape[0])[:n].astype(np.int64)
    return idx, None, np.zeros(n, dtype=np.int64), np.full(n, np.nan)


@register("greedy")
def _greedy(x, n, rng, *, device, chunk, make_state):
    st = make_state(x, device, chunk)
    kept = [int(rng.integers(st.n))]
    nearest = [-1]
    for _ in range(n - 1):
        j, near = st.add_one(kept[-1])
        kept.append(j)
        nearest.append(near)
    return (np.asarray(kept, dtype=np.int64), np.asarray(nearest, dtype=np.int64),
            np.zeros(n, dtype=np.int64), np.full(n, np.nan))


@register("tdf")
def _tdf(x, n, rng, *, device, chunk, make_state, tau0: float, alpha: float = 0.95):
    if isinstance(tau0, bool) or not (isinstance(tau0, numbers.Real) and np.isfinite(tau0) and tau0 > 0):
        raise ValueError(f"tdf needs tau0 > 0 (initial radius in feature units), got {tau0!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
        raise ValueError(f"tdf needs alpha in (0, 1) (the decay per pass), got {alpha!r}")
    st = make_state(x, device, chunk)
    block_size = min(chunk, _TDF_BLOCK)  # candidates filtered together: a (block, block) matrix
    order = rng.permutation(st.n)
    is_kept = np.zeros(st.n, dtype=bool)
    kept, nearest, passes, taus = [], [], [], []
    tau, pass_index, alpha = float(tau0), 0, float(alpha)
    while len(kept) < n:
        remaining = order[~is_kept[order]]
        top = st.top()  # kept items are at -inf: the largest over the remaining candidates
        if top == 0.0:  # only duplicates of kept items remain: the fill pass
            fill = remaining[:n - len(kept)]
            kept += fill.tolist()
            nearest += st.gather(fill)[1].tolist()
            passes += [pass_index] * len(fill)
            taus += [0.0] * len(fill)
            break
        while top <= tau * tau:  # a pass that cannot keep anything: only tau decays
            tau, pass_index = tau * alpha, pass_index + 1
        for s in range(0, remaining.shape[0], block_size):
            block = remaining[s:s + block_size]
            mind_b, owner_b = st.gather(block)
            alive = mind_b > tau * tau
            cand = block[alive]
            if cand.size == 0:
                continue
            new, near = _sequential_filter(st.d2(cand), mind_b[alive], owner_b[alive], cand, tau, n - len(kept))
            new_rows = cand[new]
            kept += new_rows.tolist()
            nearest += near
            passes += [pass_index] * len(new)
            taus += [tau] * len(new)
            is_kept[new_rows] = True
            st.add(new_rows)
            if len(kept) == n:
                break
        tau, pass_index = tau * alpha, pass_index + 1
    return (np.asarray(kept, dtype=np.int64), np.asarray(nearest, dtype=np.int64),
            np.asarray(passes, dtype=np.int64), np.asarray(taus, dtype=np.float64))


def _sequential_filter(d2: np.ndarray, mind_c: np.ndarray, owner_c: np.ndarray, cand_np: np.ndarray, tau: float,
                       room: int):
    """Within one block, in order: keep a candidate unless an item kept earlier in this block is
    within tau (items kept before the block were already filtered out through ``d2_to_kept``). d2: the
    candidates' squared distances among themselves; mind_c, owner_c: theirs to the items kept before.
    Returns (positions kept in cand, nearest kept index of each)."""
    alive = np.ones(cand_np.shape[0], dtype=bool)
    new, near = [], []
    for j in range(cand_np.shape[0]):
        if not alive[j]:
            continue
        if new and d2[j, new].min() < mind_c[j]:  # nearest kept item is one kept in this block
            near.append(int(cand_np[new[int(np.argmin(d2[j, new]))]]))
        else:
            near.append(int(owner_c[j]))
        new.append(j)
        if len(new) == room:
            break
        alive[j + 1:] &= d2[j, j + 1:] > tau * tau
    return new, near
