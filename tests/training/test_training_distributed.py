"""Tests for selftrain.training.distributed: how an epoch is shared among ranks, and that
one process is left alone. Two real processes: tests/service/test_service_ddp.py."""

import torch

from selftrain.training.distributed import World, current_world


def test_every_example_is_trained_on_and_every_rank_takes_as_many_steps():
    order = [7, 3, 9, 1, 0, 4, 8]
    shards = [World(rank, 3).shard(order) for rank in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == sorted(order + [7, 3])  # the short last round wraps around
    assert World(0, 2).shard([5, 6, 7, 8]) == [5, 7] and World(1, 2).shard([5, 6, 7, 8]) == [6, 8]
    assert World().shard(order) is order


def test_one_process_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = current_world()
    assert (world.rank, world.size, world.main) == (0, 1, True)
    p = torch.nn.Parameter(torch.ones(3))
    (p * 2).sum().backward()
    assert world.average_gradients([p], torch.tensor(1.5)) == 1.5
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    world.barrier()
