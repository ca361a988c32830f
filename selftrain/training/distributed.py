"""Data-parallel training across processes, for the SFT recipe.

Launched by `accelerate launch` or `torchrun` (they set RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT), every process runs the same recipe on its own share of each epoch's
examples; after every backward pass the LoRA gradients (and the loss, so a NaN on any rank
stops every rank) are averaged across processes in one all-reduce, which is what
DistributedDataParallel does with its buckets. Every process therefore holds the same
weights after every step; rank 0 writes the checkpoints and the adapter. The eval split
is small and every rank measures all of it: with equal weights they get the same eval loss,
so they agree on which step's adapter is best without another exchange.

One process (no WORLD_SIZE, or 1) changes nothing. The recipe trains on the CPU, so the
backend is gloo.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, order: list[int]) -> list[int]:
        """This rank's share of one epoch's order: every rank gets the same count, the order
        wrapped around to fill the last places (as torch's DistributedSampler does)."""
        if self.size == 1:
            return order
        per_rank = math.ceil(len(order) / self.size)
        padded = (order * self.size)[:per_rank * self.size]
        return padded[self.rank::self.size]

    def broadcast_(self, tensors) -> None:
        """Make every rank's `tensors` equal to rank 0's."""
        if self.size > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params, loss) -> float:
        """Average the gradients of `params` and the loss across ranks in one all-reduce;
        the mean loss."""
        if self.size == 1:
            return loss.item()
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().float().reshape(1)])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n
        return float(flat[-1])

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def current_world() -> World:
    """This process's place in a multi-process launch, joining the process group on first
    use (it stays up for the rest of the process, as accelerate's does)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())
