"""Greedy and tdf selection over a pool split across actors, with the picks of ``collapse.selection``.

Each :class:`PoolShard` actor holds a contiguous block of the pool, centred with the pool's mean
as the single-process state centres it (float64), and that block's running min-distance vector
and owners. A greedy step is one round trip: every shard adds the kept item to its vector and
answers with its local farthest candidate (value, index, owner, row); the driver takes the largest
value, ties to the lowest index, which is what one argmax over the whole vector gives, since the
blocks are in order. tdf asks the shards for the min-distances of a block of candidates (and their
rows), filters the block in the driver exactly as the single-process code does, and sends the kept
ones back: two round trips per block of up to 4096 candidates.

The squared distances are computed with the same float64 formulas on the same centred rows, so
the picks are identical to ``collapse.selection.select`` (tests: 1 and 3 shards, greedy and tdf).
The driver holds the features it was given (to centre them with the same mean); the distance work,
O(n * pool * d), runs in the actors.
"""
from __future__ import annotations

import numpy as np

from collapse.selection import Selection, select, update_nearest_kept, update_nearest_kept_one


class PoolShard:
    """Ray actor: rows ``[offset, offset + len(rows))`` of the pool and their min-distance state."""

    def __init__(self, rows: np.ndarray, offset: int, mean: np.ndarray, chunk: int, threads: int = 1,
                 gpu: bool = False):
        import torch

        from collapse.knn import centred
        torch.set_num_threads(threads)
        self.torch, dev = torch, torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.x = torch.from_numpy(centred(np.asarray(rows), mean, np.float64)).to(dev)
        self.sq = (self.x * self.x).sum(1)
        self.offset, self.n, self.chunk, self.res2 = int(offset), int(len(rows)), int(chunk), None
        self.d2_to_kept = torch.full((self.n,), float("inf"), dtype=torch.float64, device=dev)
        self.owner = torch.full((self.n,), -1, dtype=torch.int64, device=dev)
        self.dev = dev

    def _np(self, t):
        return t.cpu().numpy()

    def max_sq(self) -> float:
        return float(self.sq.max())

    def set_resolution(self, res2: float) -> None:
        self.res2 = float(res2)

    def row(self, i: int) -> tuple[np.ndarray, float]:
        j = int(i) - self.offset
        return self._np(self.x[j]), float(self.sq[j])

    def add_one(self, c: int, xc: np.ndarray, sqc: float):
        """Update with kept item c (its centred row xc, squared norm sqc); the local farthest candidate:
        (value, global index, owner, row, squared norm)."""
        t = self.torch
        update_nearest_kept_one(self.x, self.sq, self.res2, self.chunk, self.d2_to_kept, self.owner,
                                t.from_numpy(xc).to(self.dev), sqc, c)
        if self.offset <= c < self.offset + self.n:
            self.d2_to_kept[c - self.offset] = -float("inf")
        j = int(t.argmax(self.d2_to_kept))
        return float(self.d2_to_kept[j]), self.offset + j, int(self.owner[j]), self._np(self.x[j]), float(self.sq[j])

    def add(self, new: np.ndarray, xn: np.ndarray, sqn: np.ndarray) -> None:
        """Update with the kept items ``new`` (global indices, centred rows, squared norms)."""
        t = self.torch
        new_t = t.from_numpy(np.asarray(new, dtype=np.int64)).to(self.dev)
        update_nearest_kept(self.x, self.sq, self.res2, self.chunk, self.d2_to_kept, self.owner,
                            t.from_numpy(xn).to(self.dev), t.from_numpy(sqn).to(self.dev), new_t)
        local = new_t[(new_t >= self.offset) & (new_t < self.offset + self.n)] - self.offset
        self.d2_to_kept[local] = -float("inf")

    def top(self) -> float:
        return float(self.d2_to_kept.max())

    def gather(self, rows: np.ndarray):
        """(d2_to_kept, owner, centred rows, squared norms) of the global ``rows`` (all of them mine)."""
        j = self.torch.from_numpy(np.asarray(rows, dtype=np.int64) - self.offset).to(self.dev)
        return self._np(self.d2_to_kept[j]), self._np(self.owner[j]), self._np(self.x[j]), self._np(self.sq[j])

    def pid(self) -> int:
        import os
        return os.getpid()


class ShardedState:
    """collapse.selection's state protocol (``n``, ``add_one``, ``add``, ``top``, ``gather``, ``d2``)
    over ``shards`` PoolShard actors."""

    def __init__(self, x: np.ndarray, shards: int, chunk: int, cpus_per_shard: float = 1.0,
                 gpus_per_shard: float = 0.0):
        import ray
        self.ray = ray
        self.n, d = x.shape
        if not 1 <= shards <= self.n:
            raise ValueError(f"shards must be in [1, pool={self.n}], got {shards}")
        mean = x.mean(axis=0, dtype=np.float64)          # as collapse.selection._Space
        self.bounds = np.linspace(0, self.n, shards + 1).astype(np.int64)
        actor = ray.remote(num_cpus=cpus_per_shard, num_gpus=gpus_per_shard or None, max_restarts=0)(PoolShard)
        self.shards = [actor.remote(x[a:b], int(a), mean, chunk, max(1, int(cpus_per_shard)), gpus_per_shard > 0)
                       for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        max_sq = max(ray.get([s.max_sq.remote() for s in self.shards]))
        self.res2 = 4.0 * np.sqrt(d) * float(np.finfo(np.float64).eps) * max_sq
        ray.get([s.set_resolution.remote(self.res2) for s in self.shards])
        self._next = None   # (index, row, sq) of the candidate the last greedy step chose

    def _shard_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, rows, side="right") - 1

    def add_one(self, c: int):
        if self._next is not None and self._next[0] == c:
            xc, sqc = self._next[1], self._next[2]
        else:
            xc, sqc = self.ray.get(self.shards[int(self._shard_of(np.array([c]))[0])].row.remote(c))
        xc_ref = self.ray.put(xc)
        answers = self.ray.get([s.add_one.remote(c, xc_ref, sqc) for s in self.shards])
        best = max(range(len(answers)), key=lambda k: (answers[k][0], -k))  # ties: the lower block
        value, j, owner, xj, sqj = answers[best]
        self._next = (j, xj, sqj)
        return j, owner

    def top(self) -> float:
        return max(self.ray.get([s.top.remote() for s in self.shards]))

    def _gather(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        where = self._shard_of(rows)
        parts = {k: self.shards[k].gather.remote(rows[where == k]) for k in np.unique(where)}
        got = {k: self.ray.get(ref) for k, ref in parts.items()}
        d2_to_kept, owner = np.empty(len(rows)), np.empty(len(rows), dtype=np.int64)
        x, sq = None, np.empty(len(rows))
        for k, (m, o, xr, s) in got.items():
            at = where == k
            if x is None:
                x = np.empty((len(rows), xr.shape[1]))
            d2_to_kept[at], owner[at], x[at], sq[at] = m, o, xr, s
        return d2_to_kept, owner, x, sq

    def gather(self, rows: np.ndarray):
        d2_to_kept, owner, x, sq = self._gather(rows)
        self._rows = (np.asarray(rows, dtype=np.int64), x, sq)   # the block's rows, for d2 and add
        return d2_to_kept, owner

    def d2(self, rows: np.ndarray) -> np.ndarray:
        import torch
        x, sq = self._lookup(rows)
        xt, sqt = torch.from_numpy(x), torch.from_numpy(sq)
        d2 = sqt[:, None] + sqt[None, :] - 2.0 * (xt @ xt.clone().T)   # as collapse.selection._Space.d2
        return d2.masked_fill_(d2 <= self.res2, 0.0).numpy()

    def _lookup(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        held, x, sq = getattr(self, "_rows", (np.empty(0, dtype=np.int64), None, None))
        pos = {int(r): i for i, r in enumerate(held)}
        if all(int(r) in pos for r in rows):
            at = np.array([pos[int(r)] for r in rows], dtype=np.int64)
            return x[at], sq[at]
        _, _, x, sq = self._gather(rows)
        return x, sq

    def add(self, new: np.ndarray) -> None:
        x, sq = self._lookup(new)
        refs = self.ray.put(np.ascontiguousarray(x)), self.ray.put(np.ascontiguousarray(sq))
        self.ray.get([s.add.remote(np.asarray(new, dtype=np.int64), *refs) for s in self.shards])

    def close(self) -> None:
        for s in self.shards:
            self.ray.kill(s)


def sharded_select(features, n: int, strategy: str, seed: int = 0, *, shards: int = 2, chunk: int = 16384,
                   cpus_per_shard: float = 1.0, gpus_per_shard: float = 0.0, **params) -> Selection:
    """``collapse.selection.select`` with the pool split across ``shards`` actors (greedy, tdf; a
    strategy that keeps no distance state, such as random, runs in this process). Same Selection.
    With ``gpus_per_shard`` each actor keeps its block on its GPU (float64 there too: the same
    formulas, so the same picks up to the GPU's rounding of the float64 sums, which decides only ties)."""
    states = []

    def make_state(x, device, chunk_):
        states.append(ShardedState(x, shards, chunk_, cpus_per_shard, gpus_per_shard))
        return states[-1]
    try:
        return select(features, n, strategy, seed, device="cpu", chunk=chunk, make_state=make_state, **params)
    finally:
        for st in states:
            st.close()
