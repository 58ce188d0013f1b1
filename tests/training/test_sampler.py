"""Deterministic, rank-sharded, resumable data order; keyed per-sample randomness."""

from __future__ import annotations

import torch

from cxrfm.training.randomness import hashed_uniform
from cxrfm.training.sampler import ResumableDistributedSampler


def test_two_ranks_cover_the_single_process_batches():
    single = list(ResumableDistributedSampler(20, seed=3))
    ranks = [list(ResumableDistributedSampler(20, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    per_rank_batch = 2
    for step in range(5):
        union = set()
        for indices in ranks:
            union |= set(indices[step * per_rank_batch : (step + 1) * per_rank_batch])
        assert union == set(single[step * 4 : (step + 1) * 4])


def test_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    sampler = ResumableDistributedSampler(30, num_replicas=2, rank=1, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    again = ResumableDistributedSampler(30, num_replicas=2, rank=1, seed=5)
    again.set_epoch(2, start_index=10)  # 10 samples consumed over both ranks
    assert list(again) == full[5:] and len(again) == len(full) - 5
    sampler.set_epoch(3)
    assert list(sampler) != full
    assert sorted(ResumableDistributedSampler(30, seed=5).global_order().tolist()) == list(range(30))


def test_uneven_tail_is_dropped_so_ranks_stay_in_step():
    lengths = [len(list(ResumableDistributedSampler(11, num_replicas=3, rank=r))) for r in range(3)]
    assert lengths == [3, 3, 3]


def test_hashed_uniform_is_keyed_by_sample_not_position():
    ids = torch.tensor([4, 9, 1, 7])
    values = hashed_uniform(ids, 50, seed=0, epoch=1, stream=1)
    assert values.shape == (4, 50) and values.dtype == torch.float32
    assert 0.0 <= values.min() and values.max() < 1.0
    reordered = hashed_uniform(ids.flip(0), 50, seed=0, epoch=1, stream=1)
    assert torch.equal(reordered, values.flip(0))
    assert not torch.equal(hashed_uniform(ids, 50, seed=0, epoch=2, stream=1), values)
    assert not torch.equal(hashed_uniform(ids, 50, seed=1, epoch=1, stream=1), values)
    assert not torch.equal(hashed_uniform(ids, 50, seed=0, epoch=1, stream=2), values)
    many = hashed_uniform(torch.arange(2000), 100, seed=0, epoch=0, stream=1)
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.std().item() - 12**-0.5) < 0.01
