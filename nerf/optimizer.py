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
    gives each group the schedule's lr * lr_scale) and use the fused Adam kernel, which updates their millions
    of values several times faster than the default one.
    """
    o = cfg.optimizer
    hyper = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if isinstance(coarse, VoxelGridModel):
        groups = [{"params": coarse.grid_parameters(), "lr_scale": cfg.voxel_grid.grid_lr / o.lr},
                  {"params": coarse.network_parameters(), "lr_scale": 1.0}]
        return torch.optim.Adam(groups, fused=device.type in ("cpu", "cuda"), **hyper)
    params = list(coarse.parameters()) + (list(fine.parameters()) if fine is not None else [])
    return torch.optim.Adam(params, **hyper)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each parameter group's lr = lr * its lr_scale (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
