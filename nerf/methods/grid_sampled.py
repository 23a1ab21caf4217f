"""One field marched through an occupancy grid (Instant-NGP / nerfacc sampling) instead of coarse/fine."""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..config import Config
from ..occupancy import box_warning, build_sampler
from .base import Method


class GridSampledMethod(Method):
    """The field (the fine network if there is one, else the coarse one) is rendered on samples marched
    through occupied cells; the grid is updated from the field's density every occupancy.update_every steps
    and saved in checkpoints. Training uses one network (checked by build_method)."""

    def __init__(self, cfg: Config, coarse: nn.Module, fine: Optional[nn.Module], device: torch.device,
                 use_ndc: bool):
        super().__init__(cfg, coarse, fine, device)
        self.use_ndc = use_ndc
        self.sampler = build_sampler(cfg.occupancy, use_ndc, device)

    @property
    def field(self):
        """The runner of the network that renders: fine if present, else coarse."""
        return self.runners[1] if self.runners[1] is not None else self.runners[0]

    def marching_step(self) -> Optional[float]:
        """A marching step the field sets itself (None: occupancy.num_steps decides)."""
        return None

    def start(self, start_step: int, ckpt: Optional[dict], path: Optional[str] = None) -> None:
        if ckpt is not None and ckpt.get("occupancy_grid") is not None:
            try:
                self.sampler.grid.load_state_dict(ckpt["occupancy_grid"])
            except ValueError as err:
                raise CheckpointError(f"{path}: {err}") from None

    def prepare_rendering(self, stored: Optional[dict]) -> Optional[str]:
        """The grid stored by the run, or (for a model trained without one) one filled from the field's
        density at occupancy.fill_samples^3 points per cell. ValueError if the stored grid does not match the
        config."""
        start = time.time()
        self.sampler.fixed_step = self.marching_step()
        if stored is not None:
            self.sampler.grid.load_state_dict(stored)
        else:
            self.sampler.grid.fill(self.field.density, self.sampler.step_size, self.cfg.occupancy.fill_samples)
        how = "stored in the checkpoint" if stored is not None else \
            f"filled from the model's density in {time.time() - start:.1f} s"
        return (f"Occupancy grid {self.cfg.occupancy.resolution}^3 ({how}): "
                f"{100 * self.sampler.grid.occupied_fraction():.1f} % of the cells occupied")

    def scene_warning(self, scene) -> Optional[str]:
        return box_warning(self.sampler, scene)

    def before_step(self, step: int) -> bool:
        occ = self.cfg.occupancy
        self.sampler.skipping = step >= occ.warmup_steps
        if step % occ.update_every == 0 or step < occ.full_updates_until:
            self.sampler.grid.update(self.runners[0].density, self.sampler.step_size,
                                     all_cells=step < max(occ.warmup_steps, occ.full_updates_until))
        return False

    def scalars(self, out: dict, target: torch.Tensor) -> dict:
        return {"occupancy/occupied_fraction": self.sampler.grid.occupied_fraction(),
                "occupancy/samples_per_ray": out["num_samples"].float().mean().item()}

    def checkpoint_state(self) -> dict:
        return {"occupancy_grid": self.sampler.grid.state_dict()}
