"""Data-parallel training over several processes, switched on by the environment ``torchrun`` sets.

``torchrun`` starts one process per GPU (or CPU worker) and sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and the rendezvous address; :func:`replicas_from_environment` joins them (NCCL on
CUDA, gloo on CPU). Without those variables it returns :data:`SINGLE`, on which every operation
below is a no-op, so one code path serves one process and many.

Why explicit gradient averaging instead of ``DistributedDataParallel`` wrappers: a CDD-GAN step has
three optimisers and three backward passes (critics, negative generators, generators + heads), and
the generators run several forwards per step (translation, cycle, identity) with their encoders read
by the contrastive heads outside ``forward``. DDP's hooks assume one forward and one backward per
wrapped module per step. Averaging each optimiser's gradients right before its ``step`` is short,
obviously correct, and the same for every method; the price is no overlap of communication with the
backward pass.

No network here has BatchNorm (InstanceNorm only, whose statistics are per image and never kept), so
there are no running statistics to synchronise: identical parameters and identical averaged
gradients keep every replica identical, including the momentum heads and the EMA restorer, which
are updated from the (identical) parameters they follow.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BUCKET_ELEMENTS = 1 << 23  # 32 MB of fp32 gradients per all-reduce: few calls, bounded extra memory


@dataclass(frozen=True)
class Replicas:
    """This process's place among ``world_size`` identical replicas (``rank`` 0 logs and saves)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_slice(self, per_rank: int) -> slice:
        """The samples of the global batch (``per_rank`` × ``world_size``) that this rank computes."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    # ------------------------------------------------------------------ collectives (no-ops alone)
    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the replicas, in flat buckets (one all-reduce each)."""
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            bucket.append(g)
            size += g.numel()
            if size >= BUCKET_ELEMENTS:
                self._average_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._average_bucket(bucket)

    def _average_bucket(self, grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_values(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over replicas of each number (e.g. the losses of each rank's part of the batch)."""
        if not self.active or not values:
            return values
        flat = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(flat)
        return dict(zip(values, (flat / self.world_size).tolist(), strict=False))

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any: a stop asked on one rank stops all together."""
        if not self.active:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every replica."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def fingerprints(self, module: nn.Module, device: torch.device) -> list[str]:
        """Every rank's hash of ``module``'s exact weights and buffers (equal strings = identical replicas)."""
        digest = hashlib.sha256()
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        mine = digest.hexdigest()
        if not self.active:
            return [mine]
        code = torch.tensor(list(bytes.fromhex(mine)), dtype=torch.uint8, device=device)
        gathered = [torch.empty_like(code) for _ in range(self.world_size)]
        dist.all_gather(gathered, code)
        return [bytes(t.cpu().tolist()).hex() for t in gathered]


SINGLE = Replicas()


def replicas_from_environment(device_request: str = "auto") -> tuple[Replicas, str]:
    """Join the process group ``torchrun`` describes, if any; returns the replicas and the device to use.

    Under ``torchrun`` with CUDA, rank ``r`` on a node uses ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE, device_request
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_request.startswith("mps"):
        raise RuntimeError("several processes cannot share Apple MPS; train with one process")
    use_cuda = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device_request!r} requested but no CUDA GPU is available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                               f"use --nproc_per_node={torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        if use_cuda:  # binding the GPU up front lets NCCL set up its communicator (and barriers) on the right one
            dist.init_process_group(backend="nccl", device_id=torch.device(device))
        else:
            dist.init_process_group(backend="gloo")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise RuntimeError("the process group does not match RANK/WORLD_SIZE of the environment")
    return Replicas(rank, local_rank, world_size), device


def shutdown() -> None:
    """Leave the process group (call once at the end of a ``torchrun`` script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
