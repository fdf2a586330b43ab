"""Training streams over a sample set with WebDataset: explicit node/worker splits, seeded shuffles.

The world shape is an argument (``rank``, ``world_size``); only the Ray shells read it from the
environment. Shard order and the sample shuffle are functions of ``(seed, epoch, rank, worker)``,
never of time or pid. Shards are opened through fsspec, so every storage URL works.
"""
from __future__ import annotations

import io
import itertools
import json
from typing import Iterator

import numpy as np
import webdataset as wds
from webdataset import tariterators

from collapse.data.samples import SampleSet, decode_png
from collapse.errors import DataError


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _worker() -> tuple[int, int]:
    try:
        import torch.utils.data
        info = torch.utils.data.get_worker_info()
    except ImportError:
        info = None
    return (info.id, info.num_workers) if info is not None else (0, 1)


def node_shards(shard_urls: list[str], rank: int, world_size: int, seed: int, epoch: int) -> list[str]:
    """This rank's shards of one epoch: a seeded permutation, then every ``world_size``-th shard."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if len(shard_urls) < world_size:
        raise DataError(f"the set has {len(shard_urls)} shards, fewer than the {world_size} ranks reading it: "
                        "write it with a smaller shard size or use resampled=True")
    order = np.random.default_rng(_seed(seed, epoch)).permutation(len(shard_urls))
    return [shard_urls[i] for i in order[rank::world_size]]


def stream_samples(set_url: str, *, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                   shuffle_buffer: int = 1000, resampled: bool = False,
                   storage_options: dict | None = None) -> wds.DataPipeline:
    """An iterable of ``(image uint8, lineage dict)`` for one rank (and DataLoader worker).

    ``resampled=False``: one epoch, each shard read by exactly one (rank, worker).
    ``resampled=True``: an endless stream of shards drawn with replacement, seeded per (rank, worker);
    use it with a fixed number of steps so every rank takes the same number of batches.
    """
    sample_set = SampleSet(set_url, storage_options)
    urls, shape = sample_set.shard_urls, tuple(sample_set.shape)

    def shards(_=None) -> Iterator[dict]:
        worker, num_workers = _worker()
        if resampled:
            rng = np.random.default_rng(_seed(seed, epoch, rank, worker))
            chosen = (urls[i] for i in iter(lambda: int(rng.integers(len(urls))), None))
        else:
            chosen = itertools.islice(node_shards(urls, rank, world_size, seed, epoch), worker, None, num_workers)
        for url in chosen:
            yield {"url": url}

    index = {u: i for i, u in enumerate(urls)}

    def open_streams(src):
        for item in src:  # a whole shard, checked against its manifest: damaged bytes are never trained on
            yield dict(item, stream=io.BytesIO(sample_set.shard_bytes(index[item["url"]])))

    def decode(src):
        for s in src:
            if "png" not in s or "json" not in s:
                raise DataError(f"{s.get('__url__')}: sample {s.get('__key__')!r} lacks a .png or .json member")
            image = decode_png(s["png"], f"{s.get('__url__')}: sample {s.get('__key__')!r}")
            if image.shape != shape:
                raise DataError(f"{s.get('__url__')}: sample {s.get('__key__')!r} has shape {image.shape}, "
                                f"expected {shape}")
            yield image, json.loads(s["json"])

    def shuffle(src):
        worker, _ = _worker()
        if shuffle_buffer <= 1:
            return src
        return wds.filters._shuffle(src, bufsize=shuffle_buffer, initial=shuffle_buffer,
                                    seed=_seed(seed, epoch, rank, worker, 1))

    return wds.DataPipeline(shards, open_streams, tariterators.tar_file_expander, tariterators.group_by_keys,
                            shuffle, decode)
