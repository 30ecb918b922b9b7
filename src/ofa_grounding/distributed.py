"""torchrun support shared by evaluation and training: which process this is, and gathering results on rank 0.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE 1) everything here is a
no-op for one process, so callers never branch on whether they were started by torchrun. torch is imported only
when there are several (a process that runs no model, like `predict --workers`'s writer, does without it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["DistributedContext", "Mergeable", "distributed_context"]


class Mergeable(Protocol):
    """What `DistributedContext.gather` combines: each rank's part, merged by the type's `merge`."""

    @classmethod
    def merge(cls, parts: Sequence[Any]) -> Any: ...


M = TypeVar("M", bound=Mergeable)
T = TypeVar("T")


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, part: M) -> M | None:
        """Every rank's `part` on rank 0, combined by `type(part).merge(parts)` (parts in rank order); None on
        the other ranks. One process: `part` itself."""
        if self.world_size == 1:
            return part
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(part, parts, dst=0)
        return type(part).merge(parts) if self.is_main else None

    def rank0_says(self, flag: bool) -> bool:
        """Rank 0's flag, on every process (so that all of them stop at the same step, by rank 0's clock)."""
        return bool(self.broadcast(flag))

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` (any picklable object) on every process; the other ranks' `value` is ignored.
        One process: `value`."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of parameters that DDP does not own (e.g. training-only heads) over the ranks."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def distributed_context(device: str | None = None) -> DistributedContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; start a process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or "").startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world, local)
