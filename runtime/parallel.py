"""Data parallelism: the collectives the loop's stages call, for one process (`SOLO`) or for the processes
of a torchrun job (`World`; docs/runtime.md, "Several processes").

Every loss is a mean over its batch, and every process takes an equal shard of every batch (runtime/data.py
`Data.batch`), so the global loss is the mean of the shards' losses and every derivative of it the mean of
the processes' local derivatives. The stages reduce exactly where a derivative leaves a process:

    PT step, online FT step      the loss and its gradient                           1 collective
    FT unroll (K steps)          each step's gradient, differentiably (`mean_graph`)  K forward + K backward
                                 then dL_val/dtheta, dL_val/dphi and L_val           1
    IFT                          each Hessian-vector product of the solve (and of
                                 Neumann's power iteration)                          1 each
                                 the mixed term p^T d2L_PT/dtheta dphi               1
    PT unroll (P steps)          each replayed step's gradient, differentiably       P forward + P backward

so every process holds the same theta, p, hypergradient and meta-parameters after every step, and a run on
N processes with global batch B computes what one process computes with batch B (up to the order of
floating-point sums). `mean_graph` is the mean as an autograd function; the mean is linear and its own
adjoint, so its backward is the same collective: reverse mode through an unrolled step all-reduces the
incoming gradient once, and each process's leaf gradient, averaged again, is the global one.

`SOLO` is the identity of every collective; `World` uses torch.distributed (gloo on the CPU, nccl on CUDA),
each collective one all-reduce over the tensors flattened into one buffer per dtype.
"""
from __future__ import annotations

import torch


class Solo:
    """One process: every collective is the identity."""

    rank, size = 0, 1

    def mean(self, tensors) -> list:
        """The mean over the processes of each tensor of `tensors`, detached (one collective)."""
        return list(tensors)

    def mean_graph(self, tensors) -> list:
        """`mean`, differentiable: its backward is the mean of the incoming gradients."""
        return list(tensors)

    def same(self, obj):
        """Rank 0's Python object `obj`, on every process."""
        return obj

    def broadcast_(self, tensors) -> None:
        """Rank 0's values of `tensors`, copied in place on every process."""

    def gathered(self, obj) -> list:
        """Every process's Python object `obj`, in rank order, on every process."""
        return [obj]


SOLO = Solo()


class World(Solo):
    """The processes of a torch.distributed job (its default process group)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def mean(self, tensors) -> list:
        import torch.distributed as dist
        tensors = [t.detach() for t in tensors]
        out = list(tensors)
        for dtype in dict.fromkeys(t.dtype for t in tensors):      # one buffer per dtype, in order
            at = [i for i, t in enumerate(tensors) if t.dtype == dtype]
            flat = torch.cat([tensors[i].reshape(-1) for i in at])
            dist.all_reduce(flat)
            flat /= self.size
            for i, part in zip(at, flat.split([tensors[i].numel() for i in at])):
                out[i] = part.view_as(tensors[i])
        return out

    def mean_graph(self, tensors) -> list:
        return list(_Mean.apply(self, *tensors))

    def same(self, obj):
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gathered(self, obj) -> list:
        import torch.distributed as dist
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_(self, tensors) -> None:
        import torch.distributed as dist
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)


class _Mean(torch.autograd.Function):
    """The mean over processes as an autograd function: linear and self-adjoint, so its backward is itself
    (and differentiable again when autograd records the backward)."""

    @staticmethod
    def forward(ctx, world, *tensors):
        ctx.world = world
        return tuple(world.mean(tensors))

    @staticmethod
    def backward(ctx, *grads):
        return (None, *_Mean.apply(ctx.world, *grads))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s own random streams (augmentation noise, torch's generator): the run's
    seed on rank 0, another stream on every other rank, the same on every run.

        >>> rank_seed(3, 0), rank_seed(3, 1)
        (3, 1000006)
    """
    return seed + 1_000_003 * rank


def join(device: torch.device):
    """The world of this process: `SOLO`, or (under torchrun: WORLD_SIZE > 1 in the environment) a `World`
    over the job's default process group, which this initialises (gloo on the CPU, nccl on CUDA), and the
    device this rank uses (`cuda:LOCAL_RANK` on CUDA)."""
    import os
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return SOLO, device
    import torch.distributed as dist
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            from mptc.errors import RunError
            raise RunError(f"process {local} of this machine has no GPU of its own (this machine has "
                           f"{torch.cuda.device_count()}): use at most that many processes per machine, or device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def leave(world) -> None:
    """Ends the job's process group (nothing for `SOLO`)."""
    if world.size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
