"""Methods: what differs between kinds of model, behind one interface (nerf/methods/base.py).

| method | chosen when | networks | sampler |
|---|---|---|---|
| CoarseFineMethod (the paper) | default | coarse (+ fine) MLP | stratified + hierarchical |
| GridSampledMethod | occupancy.enabled | one MLP | occupancy grid |
| VoxelGridMethod (the fast preset) | models.coarse.type: VoxelGridModel | voxel grids (or TensoRF factors) + colour MLP | occupancy grid |
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import Config
from ..distributed import SINGLE, World
from ..models import build_model
from ..occupancy import default_aabb
from .base import Method
from .coarse_fine import CoarseFineMethod
from .grid_sampled import GridSampledMethod
from .voxel import VoxelGridMethod

# Training with the grid sampler updates one field; a fine model would sit idle.
ONE_NETWORK_ERROR = ("occupancy.enabled: the occupancy-grid sampler trains one network; set models.fine to null "
                     "and nerf.train.num_fine / nerf.validation.num_fine to 0")
VOXEL_NEEDS_GRID_ERROR = ("a VoxelGridModel renders through the occupancy grid; set occupancy.enabled: true "
                          "(as in the config it was trained with)")


def build_networks(cfg: Config, use_ndc: bool) -> tuple[nn.Module, Optional[nn.Module]]:
    """Fresh coarse and fine networks of the config (on the CPU); a voxel grid spans the occupancy box."""
    box = default_aabb(cfg.occupancy, use_ndc) if cfg.occupancy.enabled else None
    coarse = build_model(cfg.models.coarse, cfg.voxel_grid, box, cfg.occupancy.contraction)
    fine = build_model(cfg.models.fine) if cfg.models.fine is not None else None
    return coarse, fine


def build_method(cfg: Config, use_ndc: bool, device: torch.device,
                 networks: Optional[tuple[nn.Module, Optional[nn.Module]]] = None, training: bool = True,
                 world: World = SINGLE) -> Method:
    """The method of the config (see the table above) around `networks` (coarse, fine), or fresh ones,
    for the training processes `world`. `cfg.models` must describe the networks. ValueError for a
    combination that cannot run."""
    method = _method_for(cfg, use_ndc, device, networks, training)
    method.world = world
    return method


def _method_for(cfg: Config, use_ndc: bool, device: torch.device,
                networks: Optional[tuple[nn.Module, Optional[nn.Module]]], training: bool) -> Method:
    coarse, fine = networks if networks is not None else build_networks(cfg, use_ndc)
    coarse, fine = coarse.to(device), fine.to(device) if fine is not None else None
    if cfg.occupancy.enabled and training and fine is not None:
        raise ValueError(ONE_NETWORK_ERROR)  # the grid sampler trains one field; a fine one would sit idle
    if cfg.models.coarse.type == "VoxelGridModel":
        if not cfg.occupancy.enabled:
            raise ValueError(VOXEL_NEEDS_GRID_ERROR)
        return VoxelGridMethod(cfg, coarse, fine, device, use_ndc)
    if cfg.occupancy.enabled:
        return GridSampledMethod(cfg, coarse, fine, device, use_ndc)
    return CoarseFineMethod(cfg, coarse, fine, device)


__all__ = ["Method", "CoarseFineMethod", "GridSampledMethod", "VoxelGridMethod", "ONE_NETWORK_ERROR",
           "build_method", "build_networks"]
