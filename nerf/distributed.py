"""Data-parallel training and rendering on torch.distributed, for processes started by `torchrun`.

One process (rank) per device: NCCL on CUDA (`cuda:LOCAL_RANK`), gloo on the CPU. The global batch of
`nerf.train.num_random_rays` rays is drawn exactly as one process draws it, from generators that are
identical on every rank (same seed, same draws), and rank r trains on its r-th contiguous share; the
per-sample noise of rank r comes from a generator seeded by (seed, step, r). After the backward pass every
gradient is averaged over the ranks (`average_gradients`): an explicit all-reduce of the .grad buffers,
not DDP's autograd hooks, because a voxel grid's gather adds its gradient straight into .grad, where no
hook sees it. Everything else a method keeps (occupancy grid, seen cells, growth) is either computed
from the identical weights and identical draws, or reduced over the ranks where it is read.

Without torchrun (no RANK / WORLD_SIZE in the environment) nothing here runs a collective: one process
trains exactly as it always did. So does a torchrun world of size 1.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist

from .config import ConfigError
from .device import DeviceError, select_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BUCKET_BYTES = 25 * 2 ** 20  # gradients are all-reduced in flat buckets of about this size (DDP's default)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    control: Optional[object] = None  # a gloo group for host-side flags (a CPU collective even under NCCL)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes TensorBoard, the config and the checkpoints."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous share of `count` items: [r count / N, (r + 1) count / N), equal shares when N
        divides count (the global batch: checked by check_batch), else sizes that differ by at most one."""
        return slice(self.rank * count // self.size, (self.rank + 1) * count // self.size)

    def render_generator(self, seed: int, step: int, device: torch.device) -> Optional[torch.Generator]:
        """The generator of this rank's per-sample noise at `step`: seeded by (seed, step, rank) when there
        are several ranks (their rays differ, so must their noise); None, the global generator, for one."""
        if self.size == 1:
            return None
        return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 65_537 + self.rank)

    def agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank (a collective: every rank must call it)."""
        if self.size == 1:
            return bool(flag)
        votes = torch.tensor([int(bool(flag))], dtype=torch.int32)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.control)
        return bool(votes.item())

    def union(self, mask: torch.Tensor) -> torch.Tensor:
        """Elementwise OR of a bool tensor over the ranks (a collective)."""
        if self.size == 1:
            return mask
        votes = mask.to(torch.uint8)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return votes.bool()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of a CPU tensor over the ranks (a collective on the control group)."""
        if self.size == 1:
            return values
        values = values.clone()
        dist.all_reduce(values, group=self.control)
        return values

    def gather(self, item: object) -> list:
        """[item of rank 0, item of rank 1, ...] on every rank (any picklable object)."""
        if self.size == 1:
            return [item]
        items = [None] * self.size
        dist.all_gather_object(items, item, group=self.control)
        return items


SINGLE = World()


def launched_by_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return all(name in env for name in TORCHRUN_VARIABLES)


def speaks_for_all(env: Mapping[str, str] = os.environ, variable: str = "RANK") -> bool:
    """Whether this process prints what the others print alike: the one process without torchrun, else the one
    whose `variable` is 0 (RANK: one for the job; LOCAL_RANK: one per machine), or any whose value is not a
    number (world_size_from's error about it is then seen)."""
    return not launched_by_torchrun(env) or not env[variable].strip().isdigit() or int(env[variable]) == 0


@contextlib.contextmanager
def quiet_unless_rank_zero(env: Mapping[str, str] = os.environ) -> Iterator[None]:
    """Under torchrun, ranks other than 0 print nothing (stdout to devnull; their errors still reach stderr),
    so that every line appears once."""
    if speaks_for_all(env):
        yield
        return
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        yield


def world_size_from(env: Mapping[str, str] = os.environ) -> int:
    """The world size torchrun announces (1 without torchrun); ConfigError for a malformed value."""
    if not launched_by_torchrun(env):
        return 1
    try:
        size, rank, local_rank = (int(env[name]) for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError("torchrun environment: WORLD_SIZE, RANK and LOCAL_RANK must be integers, got "
                          f"{[env[name] for name in TORCHRUN_VARIABLES]}") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"torchrun environment: RANK {rank} and LOCAL_RANK {local_rank} do not fit WORLD_SIZE {size}")
    return size


def check_batch(num_random_rays: int, world_size: int, what: str = "nerf.train.num_random_rays") -> None:
    """ConfigError unless the global batch splits into equal shares, one per rank (equal shares make the
    averaged gradient that of the whole batch)."""
    if num_random_rays % world_size:
        raise ConfigError(f"{what} ({num_random_rays}) is the global batch and must divide by the world size "
                          f"({world_size}); use a multiple of {world_size}, e.g. "
                          f"{max(world_size, num_random_rays // world_size * world_size)}")


def process_device(configured: str, env: Mapping[str, str] = os.environ) -> torch.device:
    """The device of this process: experiment.device without torchrun; under torchrun cuda:LOCAL_RANK when
    CUDA is used (auto or cuda), else the CPU. DeviceError where the rank has no device of its own."""
    if not launched_by_torchrun(env):
        return select_device(configured)
    local_rank, size = int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"])
    if configured in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"torchrun: LOCAL_RANK {local_rank} has no GPU of its own (this node has "
                              f"{torch.cuda.device_count()}); start at most that many processes per node")
        return torch.device("cuda", local_rank)
    if configured in ("auto", "cpu"):
        return torch.device("cpu")  # MPS has no collective backend: torchrun runs on the CPU there
    if size > 1:
        raise DeviceError(f"experiment.device: {configured!r} under torchrun; use auto (cuda:LOCAL_RANK on GPUs, "
                          "else the CPU) so that each rank gets a device of its own")
    return select_device(configured)


def start(device: torch.device, env: Mapping[str, str] = os.environ) -> World:
    """Join the torchrun job (env:// rendezvous) with the backend for `device`; SINGLE without torchrun."""
    if not launched_by_torchrun(env):
        return SINGLE
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return World(rank=dist.get_rank(), local_rank=int(env["LOCAL_RANK"]), size=dist.get_world_size(), control=control)


def finish(world: World) -> None:
    """Leave the job (after the last collective)."""
    if world is not SINGLE and dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype and device, grouped into lists of at most ~bucket_bytes."""
    buckets, current, size = [], [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        same_kind = current and (current[0].dtype, current[0].device) == (tensor.dtype, tensor.device)
        if current and (not same_kind or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(tensor)
        size += nbytes
    return buckets + ([current] if current else [])


def average_gradients(parameters: Iterable[torch.nn.Parameter], world: World, bucket_bytes: int = BUCKET_BYTES) -> None:
    """grad <- (1/N) sum over the N ranks of grad, in place, for every parameter that has a gradient on any
    rank (a rank without one contributes zeros; a parameter without a gradient anywhere keeps None, so
    Adam skips it as in one process). With equal shares of a batch-mean loss this is the gradient of the
    whole batch. Small gradients travel in flat buckets, a large grid alone."""
    if world.size == 1:
        return
    params = list(parameters)
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
    dist.all_reduce(present, op=dist.ReduceOp.MAX, group=world.control)
    grads = []
    for param, anywhere in zip(params, present.tolist()):
        if anywhere and param.grad is None:
            param.grad = torch.zeros_like(param)
        if anywhere:
            grads.append(param.grad)
    for param in params:  # masked Adam (optimizer.MaskedAdam) updates the rows that any rank's lookups reached
        rows = getattr(param, "gradient_rows", None)
        if rows is not None:
            reached = rows.to(torch.uint8)
            dist.all_reduce(reached, op=dist.ReduceOp.MAX)
            rows.copy_(reached.bool())
    for bucket in _buckets(grads, bucket_bytes):
        if len(bucket) == 1:
            dist.all_reduce(bucket[0])
            bucket[0].div_(world.size)
            continue
        flat = torch.cat([g.reshape(-1) for g in bucket])  # [sum of numel]
        dist.all_reduce(flat)
        flat.div_(world.size)
        for grad, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            grad.copy_(part.view_as(grad))


@torch.no_grad()
def broadcast_parameters(parameters: Iterable[torch.nn.Parameter], world: World) -> None:
    """Every rank starts from rank 0's weights (they are equal already when every rank seeds alike; this
    makes it so even where an initialiser is not deterministic)."""
    if world.size == 1:
        return
    for param in parameters:
        dist.broadcast(param.data, src=0)


def all_reduced_bytes(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Bytes of gradient one step all-reduces (every trained parameter, at its dtype)."""
    return sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)
