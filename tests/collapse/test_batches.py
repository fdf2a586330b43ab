"""A training step's batch as a function of (seed, step, slot): invariants of collapse.diffusion.batches."""
import numpy as np
import pytest
import torch

from collapse import diffusion
from collapse.diffusion.batches import global_batch, rank_slots, step_draws


@pytest.mark.parametrize("count,batch", [(10, 4), (7, 7), (5, 16), (100, 32)])
def test_each_epoch_visits_every_image_once(count, batch):
    steps = 3 * count // batch + 3
    order = np.concatenate([global_batch(11, s, batch, count) for s in range(steps)])
    for e in range(len(order) // count):
        assert sorted(order[e * count:(e + 1) * count]) == list(range(count))
    assert not np.array_equal(order[:count], order[count:2 * count]) or count < 3  # each epoch its own order


def test_the_batch_is_a_function_of_seed_and_step_only():
    assert np.array_equal(global_batch(3, 5, 8, 50), global_batch(3, 5, 8, 50))
    assert not np.array_equal(global_batch(3, 5, 8, 50), global_batch(4, 5, 8, 50))
    assert not np.array_equal(global_batch(3, 5, 8, 50), global_batch(3, 6, 8, 50))


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_ranks_split_the_global_batch_into_its_slots(world):
    slots = [rank_slots(32, r, world) for r in range(world)]
    assert np.array_equal(np.concatenate([np.arange(32)[s] for s in slots]), np.arange(32))
    with pytest.raises(ValueError):
        rank_slots(30, 0, 4)


def test_draws_of_a_step_are_those_of_the_whole_batch_on_any_world():
    sched = diffusion.make_scheduler()
    t, eps, y = step_draws(sched, 9, 2, (1, 8, 8), 16, np.arange(16) % 10, 0.5, 10)
    again = step_draws(sched, 9, 2, (1, 8, 8), 16, np.arange(16) % 10, 0.5, 10)
    assert all(torch.equal(a, b) for a, b in zip((t, eps, y), again))
    assert t.shape == (16,) and eps.shape == (16, 1, 8, 8) and ((y == 10) | (y == torch.arange(16) % 10)).all()
    assert 0 < int((y == 10).sum()) < 16                     # p_uncond = 0.5 drops some labels, not all
    other = step_draws(sched, 9, 3, (1, 8, 8), 16)
    assert not torch.equal(other[1], eps) and other[2] is None
