"""The fast preset's method: the voxel-grid field (nerf/voxel_grid.py) marched through the occupancy grid,
grown coarse to fine, with the box shrunk to the content at the first growth and optional regularisers."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, VoxelGridConfig
from ..losses import background_entropy, ray_distortion_loss, sample_color_loss
from ..rays import Rays
from ..voxel_grid import grow, grown_box, lattice_vertices
from .grid_sampled import GridSampledMethod


# the settings that decide the grid's size at each growth
GROWTH_KEYS = ("num_voxels_start", "num_voxels", "grow_steps", "aspect")


def check_growth_schedule(stored: Optional[dict], configured: VoxelGridConfig, start_step: int,
                          path: Optional[str]) -> None:
    """ValueError when a run resumed at start_step changes the growth schedule (GROWTH_KEYS) of the checkpoint's
    stored voxel_grid section where either schedule has a growth before start_step: a growth that happened
    cannot be redone, and one scheduled in the past would never happen. Changes that act only on growths
    still to come apply."""
    if not isinstance(stored, dict):
        return
    changed = [key for key in GROWTH_KEYS if key in stored and stored[key] != getattr(configured, key)]
    past = sorted({s for s in list(stored.get("grow_steps") or []) + configured.grow_steps if s < start_step})
    if changed and past:
        what = "; ".join(f"voxel_grid.{key}: {getattr(configured, key)!r} (checkpoint: {stored[key]!r})"
                         for key in changed)
        raise ValueError(f"{path}: {what}: a run resumed at step {start_step} cannot change the grid's growths at "
                         f"steps {past}, which are behind it; keep the checkpoint's values or train a new run")


class VoxelGridMethod(GridSampledMethod):
    """GridSampledMethod for a VoxelGridModel: the marching step follows the voxel size; at
    voxel_grid.grow_steps the grids are resampled (new parameters: a fresh optimizer, as DVGO at each scale),
    the first time onto the box of the cells where training rays put weight; the grids have their own
    learning rate; TV, distortion and per-sample colour terms join the loss when weighted."""

    fused_optimizer = True
    keeps_gradient_buffers = True

    def __init__(self, cfg: Config, coarse: nn.Module, fine: Optional[nn.Module], device: torch.device,
                 use_ndc: bool):
        super().__init__(cfg, coarse, fine, device, use_ndc)
        self.sampler.fixed_step = self.marching_step()
        self.seen = None  # cells where training rays put weight >= seen_weight, before the first growth

    def marching_step(self) -> Optional[float]:
        return self.coarse.marching_step

    def parameter_groups(self) -> list[dict]:
        lr_scale = self.cfg.voxel_grid.grid_lr / self.cfg.optimizer.lr
        grids = {"params": self.coarse.grid_parameters(), "lr_scale": lr_scale}
        if self.cfg.voxel_grid.masked_adam:
            grids["masked_rows"] = self.coarse.grid_rows()  # optimizer.MaskedAdam
        return [grids, {"params": self.coarse.network_parameters(), "lr_scale": 1.0}]

    def prepare_to_load(self, ckpt: dict) -> None:
        self.coarse.resize_like(ckpt.get("model_coarse_state_dict") or {})  # grown: the optimizer needs its shapes

    def start(self, start_step: int, ckpt: Optional[dict], path: Optional[str] = None) -> None:
        if ckpt is not None:
            check_growth_schedule((ckpt.get("config") or {}).get("voxel_grid"), self.cfg.voxel_grid, start_step, path)
        super().start(start_step, ckpt, path)
        self.sampler.fixed_step = self.marching_step()  # from the (loaded) grid and box
        v, self.seen = self.cfg.voxel_grid, None
        if v.shrink_box and v.grow_steps and start_step <= v.grow_steps[0]:
            # per occupancy cell, the samples of this rank's rays with weight >= seen_weight so far
            self.seen = torch.zeros(self.sampler.grid.occupied.shape, dtype=torch.int32, device=self.device)
            stored = ckpt.get("voxel_grid_seen") if ckpt is not None else None
            if stored is not None and self.world.is_main:
                # resumed mid-way: what earlier steps saw (every rank's rays; a bool grid of older checkpoints
                # counts each seen cell once), kept by one rank so that the sum over the ranks holds it once
                self.seen = stored.to(self.seen)

    def before_step(self, step: int) -> bool:
        v, grid = self.cfg.voxel_grid, self.sampler.grid
        grown = step in v.grow_steps
        if grown:
            # coarse to fine; the first growth also moves the grids onto the seen cells (plus one cell)
            cell = (grid.aabb[3:] - grid.aabb[:3]) / grid.resolution
            seen = self._seen_by_all_ranks() if self.seen is not None else None
            box = grown_box(self.coarse.aabb, grid.box_of(seen >= v.seen_count), cell) if seen is not None else None
            self.seen = None
            grow(self.coarse, v.grow_steps, v.num_voxels_start, v.num_voxels, step, box, v.aspect)
            if v.restart_at_shrink and step == v.grow_steps[0]:  # DVGO: the first grid was its coarse stage
                vertices = lattice_vertices(self.coarse.resolution, self.coarse.aabb, (0, 1, 2))  # [N, 3]
                self.coarse.restart(grid.near_occupied(vertices).reshape(self.coarse.resolution))
            self.sampler.fixed_step = self.marching_step()
            tqdm.write(f"[step {step}] voxel grid {'x'.join(map(str, self.coarse.resolution))} over "
                       f"{[round(x, 3) for x in self.coarse.aabb.tolist()]}")
        super().before_step(step)
        return grown

    @torch.no_grad()
    def after_render(self, step: int, rays: Rays, out: dict) -> None:
        v = self.cfg.voxel_grid
        if self.seen is not None and step >= v.grow_steps[0] // 2:
            # the cells where training rays put weight: the content the box must keep
            cells = self.sampler.grid.cells_along(rays.origins, rays.directions, out["t"])  # [R, M]
            hits = cells[out["weights"] >= v.seen_weight]  # [P]
            self.seen.index_add_(0, hits, torch.ones_like(hits, dtype=self.seen.dtype))

    def loss(self, out: dict, target: torch.Tensor, rays: Rays, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss, mse = super().loss(out, target, rays, step)
        v = self.cfg.voxel_grid
        if (v.tv_until == 0 or step < v.tv_until) and step % v.tv_every == 0:
            if v.tv_weight > 0:
                loss = loss + v.tv_weight * v.tv_every * self.coarse.total_variation()
            if v.feature_tv_weight > 0:
                loss = loss + v.feature_tv_weight * v.tv_every * self.coarse.feature_total_variation()
        if v.distortion_weight > 0:
            loss = loss + v.distortion_weight * ray_distortion_loss(out["weights"], out["t"], out["dt"], rays).mean()
        if v.sample_rgb_weight > 0:
            loss = loss + v.sample_rgb_weight * sample_color_loss(out["weights"], out["sample_rgb"], target).mean()
        if v.background_entropy_weight > 0:
            loss = loss + v.background_entropy_weight * background_entropy(out["acc"]).mean()
        return loss, mse

    def _seen_by_all_ranks(self) -> torch.Tensor:
        """The seen counts summed over the ranks (a collective on the CPU control group)."""
        return self.world.sum(self.seen.cpu()).to(self.seen.device)

    def checkpoint_state(self) -> dict:
        # what every rank's rays saw: one state for any world size
        seen = self._seen_by_all_ranks() if self.seen is not None else None
        return {**super().checkpoint_state(), "voxel_grid_seen": seen}
