"""The optimizer: Adam over the models' parameters, with per-group learning-rate scales."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import Config
from .voxel_grid import VoxelGridModel


def build_optimizer(cfg: Config, coarse: nn.Module, fine: Optional[nn.Module], device: torch.device) -> torch.optim.Adam:
    """Adam over the models' parameters (optimizer: section).

    A VoxelGridModel's grids form a group with lr_scale = voxel_grid.grid_lr / optimizer.lr (`set_learning_rate`
    gives each group the schedule's lr * lr_scale), its network another with lr_scale 1; both use the fused
    Adam kernel where there is one (CUDA; CPU from torch 2.4), which updates millions of grid values several
    times faster than the default kernel.
    """
    o = cfg.optimizer
    hyper = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if isinstance(coarse, VoxelGridModel):
        groups = [{"params": coarse.grid_parameters(), "lr_scale": cfg.voxel_grid.grid_lr / o.lr},
                  {"params": coarse.network_parameters(), "lr_scale": 1.0}]
        return torch.optim.Adam(groups, fused=_fused_available(device), **hyper)
    params = list(coarse.parameters()) + (list(fine.parameters()) if fine is not None else [])
    return torch.optim.Adam(params, **hyper)


def _fused_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def keep_configured_groups(optimizer: torch.optim.Optimizer, configured: torch.optim.Optimizer) -> None:
    """After loading a checkpoint's optimizer state: take lr_scale and the kernel choice (fused) from the
    configured optimizer, not the stored ones (a changed voxel_grid.grid_lr or another device applies)."""
    for group, fresh in zip(optimizer.param_groups, configured.param_groups):
        for key in ("lr_scale", "fused"):
            if key in fresh:
                group[key] = fresh[key]


def zero_gradients(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Clear the gradients before a backward pass (model: the coarse field). A VoxelGridModel's gradient buffers are zeroed and kept,
    not freed: its gathers (voxel_grid._GatherRows) add into grid.grad, so a step allocates no new dense
    gradient of millions of values. Other models free theirs (set_to_none, PyTorch's default)."""
    optimizer.zero_grad(set_to_none=not isinstance(model, VoxelGridModel))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each parameter group's lr = lr * its lr_scale (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
