"""Randomness keyed by identity, never by process (docs/STYLE.md, principle 4).

Every random number of a run is a function of *what* it is for, never of which process, actor,
batch or retry draws it:

* a sample's noise is a function of ``(run seed, generation, sample index)`` only:
  ``sample_seed(run_seed, generation, index)`` seeds that sample's own ``torch.Generator``, which
  draws its initial noise x_T and then every per-step noise z of the sampler, in step order
  (``collapse.diffusion.sample``). The image is then the same with 1 or 100 sampler actors and
  after a retry;
* a stage's randomness (a selection's tie-breaks, a training shuffle, a subset) is a function of
  ``(run seed, generation, purpose)``: ``stage_seed``.

The scheme (committed; a regression test pins its values, so it never silently changes): a seed
is the first 64-bit word of ``numpy.random.SeedSequence(entropy=run_seed, spawn_key=key)``,
shifted right by one bit so that it fits a signed int64 (torch, JSON, Parquet), where

    sample_seed: key = (0, kind, stream_id, generation, index)
    stage_seed:  key = (1, 1, crc32(purpose), generation)

``kind`` is 0 for an integer stream and 1 for a named stream, whose ``stream_id`` is
``zlib.crc32(name.encode("utf-8"))``. crc32 is fixed by its standard; Python's ``hash()`` of a
string is salted per process (PYTHONHASHSEED) and must never be used here. The leading 0/1
separates the two families, so no sample seed equals a stage seed by construction of the key.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from collapse.errors import check_int

SAMPLE_STREAM = "sample"  # the default stream: a candidate image of the pool
_SAMPLE_FAMILY, _STAGE_FAMILY = 0, 1
_INT_STREAM, _NAMED_STREAM = 0, 1
_MAX_SEED = 2**64 - 1


def _stream_key(stream: str | int) -> tuple[int, int]:
    """(kind, id) of a stream: a name through crc32, or a non-negative int as it is."""
    if isinstance(stream, str):
        if not stream:
            raise ValueError("stream must be a non-empty name or a non-negative int, got ''")
        return _NAMED_STREAM, zlib.crc32(stream.encode("utf-8"))
    return _INT_STREAM, check_int(stream, "stream", low=0)


def _derive(run_seed: int, key: tuple[int, ...]) -> int:
    state = np.random.SeedSequence(entropy=run_seed, spawn_key=key).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def sample_seed(run_seed: int, generation: int, index: int, stream: str | int = SAMPLE_STREAM) -> int:
    """The seed of sample ``index`` of ``generation``: an int in [0, 2**63).

    ``stream`` separates independent uses of the same (generation, index), e.g. the pool of
    candidates (``"sample"``) and an extra draw a strategy might need; the same arguments always
    give the same seed, in any process.
    """
    run_seed = check_int(run_seed, "run_seed", low=0)
    generation, index = check_int(generation, "generation", low=0), check_int(index, "index", low=0)
    key = (_SAMPLE_FAMILY, *_stream_key(stream), generation, index)
    return _derive(run_seed, key)


def sample_seeds(run_seed: int, generation: int, indices, stream: str | int = SAMPLE_STREAM) -> list[int]:
    """``[sample_seed(run_seed, generation, i, stream) for i in indices]``."""
    return [sample_seed(run_seed, generation, i, stream) for i in indices]


def stage_seed(run_seed: int, generation: int, purpose: str) -> int:
    """The seed of one stage's randomness in ``generation``: an int in [0, 2**63).

    ``purpose`` names the use (``"selection"``, ``"train-shuffle"``, ``"train-init"``, ...); a new
    use gets a new name, so existing seeds never move.
    """
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty str such as 'selection', got {purpose!r}")
    run_seed = check_int(run_seed, "run_seed", low=0)
    generation = check_int(generation, "generation", low=0)
    key = (_STAGE_FAMILY, _NAMED_STREAM, zlib.crc32(purpose.encode("utf-8")), generation)
    return _derive(run_seed, key)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (an int in [0, 2**64)).

    The same seed gives the same stream on the same device type; CPU and CUDA streams differ,
    which is why the sampler draws its noise from CPU generators.
    """
    seed = check_int(seed, "seed", low=0)
    if seed > _MAX_SEED:
        raise ValueError(f"seed must be < 2**64, got {seed}")
    return torch.Generator(device=device).manual_seed(seed)
