"""What a training step sees, as a function of (seed, step, position in the global batch) alone.

Data parallelism must not change the experiment: a step of B images on 1 worker and the same step
on W workers (each B / W of them) see the same images, timesteps, noise and dropped labels, so the
averaged gradient is the same to float tolerance, and a run resumed with another worker count is
the same experiment. Hence:

    position p = step * B + j                   j = 0 .. B-1, the global batch's slots
    epoch e    = p // N,  index = pi_e[p mod N]  pi_e: a permutation of the N training images, seeded by (seed, e)

(each epoch visits every image once, in an order of its own), and the step's timesteps, noise eps
and label-dropout draws come from one generator keyed by (seed, step) over the whole global batch.
Rank r of W takes the slots [r B/W, (r+1) B/W). Nothing here depends on the rank but that slice.

``BATCH_ORDER`` names this scheme (defined in ``collapse.diffusion.presets``, which a plan imports
without torch); it enters the training stage's hash, so a run trained under an earlier order (each
rank streaming its own shards, noise keyed by rank) is never resumed into it.
"""
from __future__ import annotations

import numpy as np
import torch

from collapse.diffusion.loss import draw_timesteps_and_noise, drop_class_labels
from collapse.diffusion.presets import BATCH_ORDER  # noqa: F401  (re-exported)


def _check(step: int, batch_size: int, count: int) -> None:
    if step < 0 or batch_size < 1 or count < 1:
        raise ValueError(f"need step >= 0, batch_size >= 1 and a non-empty training set; got step={step}, "
                         f"batch_size={batch_size}, {count} training images")


def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """pi_e: the order of the N training images in epoch e."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)])).permutation(count)


def global_batch(seed: int, step: int, batch_size: int, count: int) -> np.ndarray:
    """The indices (B,) int64 into the N = ``count`` training images of step ``step``'s global batch."""
    _check(step, batch_size, count)
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, within = np.divmod(positions, count)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        at = epochs == e
        out[at] = _epoch_order(seed, int(e), count)[within[at]]
    return out


def rank_slots(batch_size: int, rank: int, world_size: int) -> slice:
    """The global batch's slots that rank ``rank`` of ``world_size`` computes."""
    if not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"need 0 <= rank < world_size and batch_size divisible by world_size; got rank={rank}, "
                         f"world_size={world_size}, batch_size={batch_size}")
    micro = batch_size // world_size
    return slice(rank * micro, (rank + 1) * micro)


def step_draws(scheduler, seed: int, step: int, image_shape, batch_size: int, class_labels=None,
               p_uncond: float = 0.0, null_class: int | None = None):
    """(t (B,), eps (B, C, H, W), labels (B,) or None) of the whole global batch of step ``step``.

    ``image_shape`` (C, H, W); ``class_labels`` (B,) the batch's labels, each dropped to
    ``null_class`` with probability ``p_uncond`` from the same generator (after t and eps).
    """
    gen = torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([int(seed), int(step)])
                                                 .generate_state(2, np.uint64)[0]) % 2 ** 63)
    t, eps = draw_timesteps_and_noise(scheduler, (batch_size, *image_shape), gen)
    labels = None
    if class_labels is not None:
        labels = drop_class_labels(torch.as_tensor(class_labels), p_uncond, null_class, gen)
    return t, eps, labels
