"""Occupancy-grid ray marching (Instant-NGP; nerfacc's OccupancyGrid), in pure PyTorch.

A grid of C = resolution^3 cells over an axis-aligned box holds, per cell, an exponential moving maximum of
the opacity of one marching step, sigma * step_size, measured by the field itself. Rays are marched with
a fixed world-space step; samples in unoccupied cells are skipped, and a ray stops once its transmittance
falls below `early_stop_eps`. The hierarchical coarse/fine sampler stays the default; this is an option.

Unbounded scenes (occupancy.contraction, nerf/contraction.py): the grid covers the contracted space
[-2, 2]^3 instead of a world box, rays are marched from near to infinity with a fixed step in the
contracted space (a growing one in the world), and each sample carries its own world interval.

Shape legend: R rays, M marched samples per ray (padded; `valid` marks the real ones), P points, C cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .compositing import scatter_valid, transmittance
from .config import OccupancyConfig, RenderConfig
from .contraction import (CONTRACTED_AABB, contract, contracted_distance, interpolate, spacing_inverse, uncontract,
                          world_stretch)
from .rays import Rays, get_rays, prepare_rays
from .runtime import evaluate_density

BLENDER_AABB = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
# In NDC space z runs from -1 (near plane) to 1 (infinity); x, y reach +-1 at the image border of the
# reference camera and further for the other views (fern's views and spiral path reach +-1.48).
NDC_AABB = (-1.5, -1.5, -1.0, 1.5, 1.5, 1.0)


def default_aabb(cfg: OccupancyConfig, use_ndc: bool) -> tuple:
    """occupancy.aabb, or the scene type's box: Blender objects fit in [-1.5, 1.5]^3, NDC_AABB in NDC, the
    contracted space in [-2, 2]^3. (config validation requires occupancy.aabb for scenes that are neither.)"""
    if cfg.aabb is not None:
        return tuple(cfg.aabb)
    if cfg.contraction is not None:
        return CONTRACTED_AABB
    return NDC_AABB if use_ndc else BLENDER_AABB


def segment_ends(rays: Rays) -> torch.Tensor:
    """[2, R, 3]: o + t d at t = near and t = far; for NDC rays, whose segment is finite."""
    return torch.stack([rays.origins + rays.directions * t[:, None] for t in (rays.near, rays.far)])


def fraction_of_rays_leaving(aabb, ends: torch.Tensor) -> float:
    """The fraction of rays whose segment (ends [2, R, 3], segment_ends) leaves the box: their samples outside
    it are lost."""
    box = torch.as_tensor(aabb, dtype=ends.dtype, device=ends.device)
    outside = ((ends < box[:3] - 1e-4) | (ends > box[3:] + 1e-4)).any(dim=-1).any(dim=0)  # [R]
    return outside.float().mean().item()


class OccupancyGrid:
    """Occupancy of `resolution`^3 cells over `aabb`; all cells start occupied.

    estimates: [C] EMA maximum of sigma * step_size seen in each cell;
    occupied: [C] bool = estimates >= min(density_threshold, mean(estimates)) after an update, so a cell
    whose estimate reaches density_threshold is always occupied (and a grid of equal estimates, e.g. a fresh
    or all-empty field, is all occupied: nothing is skipped before something is known). Cell index =
    (i * res + j) * res + k for the cell (i, j, k) along (x, y, z).

    With a `contraction` ("l2" or "inf") the cells tile the contracted space over `aabb` (world points are
    contracted before they are located, cell points uncontracted before the field sees them), and a cell's
    estimate is sigma * step_size * world_stretch: the opacity of the longest world step a contracted step
    is there, so that the thin, far background is not taken for empty space.
    """

    def __init__(self, aabb, resolution: int, density_threshold: float = 0.01, decay: float = 0.95,
                 device: Optional[torch.device] = None, contraction: Optional[str] = None):
        self.aabb = torch.as_tensor(aabb, dtype=torch.float32, device=device)  # [6]
        self.contraction = contraction
        self.resolution = resolution
        self.density_threshold = density_threshold
        self.decay = decay
        num_cells = resolution ** 3
        self.estimates = torch.zeros(num_cells, device=device)
        self.occupied = torch.ones(num_cells, dtype=torch.bool, device=device)
        self._box = None  # occupied_box(), cached until the occupancy changes

    @property
    def device(self) -> torch.device:
        return self.estimates.device

    def cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points: [..., 3] -> (cell index [...] long, inside-the-box mask [...])."""
        if self.contraction is not None:
            points = contract(points, self.contraction)
        lo, hi = self.aabb[:3], self.aabb[3:]
        unit = (points - lo) / (hi - lo)  # [..., 3] in [0, 1) inside the box
        inside = ((unit >= 0) & (unit < 1)).all(dim=-1)
        return self._flat_index((unit * self.resolution).long().clamp(0, self.resolution - 1)), inside

    def _flat_index(self, ijk: torch.Tensor) -> torch.Tensor:
        """Cell coordinates [..., 3] (long) -> cell index [...]."""
        return (ijk[..., 0] * self.resolution + ijk[..., 1]) * self.resolution + ijk[..., 2]

    def _cell_ijk(self, cells: torch.Tensor) -> torch.Tensor:
        """Cell index [P] -> cell coordinates [P, 3] (long); the inverse of _flat_index."""
        res = self.resolution
        return torch.stack((cells // (res * res), (cells // res) % res, cells % res), dim=-1)

    def near_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """points: [..., 3] -> bool [...]: inside the box and in an occupied cell or one of its 26 neighbours
        (the occupied cells dilated by one, as DVGO's mask of the coarse stage)."""
        res = self.resolution
        occupied = self.occupied.view(1, 1, res, res, res).float()
        dilated = torch.nn.functional.max_pool3d(occupied, 3, stride=1, padding=1).view(-1) > 0  # [res^3]
        index, inside = self.cell_index(points)
        return inside & dilated[index]

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """points: [..., 3] -> bool [...]: inside the box and in an occupied cell."""
        index, inside = self.cell_index(points)
        return inside & self.occupied[index]

    def cell_points(self, cells: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """cells: [P] indices, offsets: [P, 3] in [0, 1) within the cell -> world points [P, 3]."""
        return self._to_world(self._grid_points(cells, offsets))

    def _grid_points(self, cells: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Points [P, 3] in the grid's own (contracted, if so) coordinates."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return lo + (self._cell_ijk(cells).to(offsets.dtype) + offsets) / self.resolution * (hi - lo)

    def _to_world(self, grid_points: torch.Tensor) -> torch.Tensor:
        """The grid's coordinates [P, 3] -> world points [P, 3] (uncontracted, if so)."""
        return uncontract(grid_points, self.contraction) if self.contraction is not None else grid_points

    def _estimate(self, density_fn: Callable, cells: torch.Tensor, offsets: torch.Tensor, step_size: float,
                  chunk: int) -> torch.Tensor:
        """Opacity sigma * step_size (* world_stretch when contracted) at the given points of the given
        cells: [P]."""
        grid_points = self._grid_points(cells, offsets)  # [P, 3]
        opacity = evaluate_density(density_fn, self._to_world(grid_points), chunk) * step_size
        if self.contraction is not None:
            opacity = opacity * world_stretch(grid_points, self.contraction)
        return opacity

    def _set_occupied(self) -> None:
        threshold = torch.clamp(self.estimates.mean(), max=self.density_threshold)
        self.occupied = self.estimates >= threshold  # all equal (a fresh field): all occupied
        self._box = None

    def box_of(self, mask: torch.Tensor) -> torch.Tensor:
        """The smallest box [6] made of whole cells that holds every cell of mask [C] (none: a zero-size box)."""
        res = self.resolution
        cells = mask.nonzero()[:, 0]
        lo, size = self.aabb[:3], self.aabb[3:] - self.aabb[:3]
        if len(cells) == 0:
            return torch.cat((lo, lo))
        ijk = self._cell_ijk(cells)  # [P, 3]
        return torch.cat((lo + ijk.amin(dim=0) / res * size, lo + (ijk.amax(dim=0) + 1) / res * size))

    def occupied_box(self) -> torch.Tensor:
        """The smallest box [6] made of whole cells that holds every occupied cell (empty: a zero-size box)."""
        if self._box is None:
            self._box = self.box_of(self.occupied)
        return self._box

    def cells_along(self, origins: torch.Tensor, directions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Cell index [R, N] of o + t d for t: [R, N] (points assumed inside the box; clamped to its cells)."""
        if self.contraction is not None:
            return self.cell_index(origins[:, None, :] + directions[:, None, :] * t[..., None])[0]
        res, lo, size = self.resolution, self.aabb[:3], self.aabb[3:] - self.aabb[:3]
        start = (origins - lo) / size * res  # [R, 3] in cell units
        step = directions / size * res
        # _flat_index axis by axis, without [R, N, 3] tensors (4x faster): in float32 while the cell numbers
        # are exact there (below 2^24), else in long
        exact_in_float = res ** 3 <= 2 ** 24
        flat = None
        for axis in range(3):
            ijk = torch.addcmul(start[:, None, axis], t, step[:, None, axis]).floor_().clamp_(0, res - 1)  # [R, N]
            ijk = ijk if exact_in_float else ijk.long()
            flat = ijk if flat is None else flat.mul_(res).add_(ijk)
        return flat.long()

    def update(self, density_fn: Callable, step_size: float, all_cells: bool,
               generator: Optional[torch.Generator] = None, chunk: int = 65536) -> None:
        """One EMA update from the field's densities at one random point per chosen cell.

        Chosen cells: all of them (warm-up), else C/4 uniformly random cells and C/4 of the occupied ones.
        estimate <- max(decay * estimate, sigma(x) * step_size) for each chosen cell; the others keep theirs.
        """
        num_cells = self.estimates.numel()
        device = self.device
        if all_cells:
            cells = torch.arange(num_cells, device=device)
        else:
            uniform = torch.randint(num_cells, (num_cells // 4,), device=device, generator=generator)
            occupied = self.occupied.nonzero()[:, 0]
            if len(occupied) > num_cells // 4:
                pick = torch.randint(len(occupied), (num_cells // 4,), device=device, generator=generator)
                occupied = occupied[pick]
            cells = torch.cat((uniform, occupied))
        offsets = torch.rand((len(cells), 3), device=device, generator=generator)
        if not all_cells:
            # looked up in cell order, neighbouring points share cached grid rows (a grid field's lookups take
            # two thirds of the time); each cell keeps its offset, so the estimates are the same
            order = torch.argsort(cells)
            cells, offsets = cells[order], offsets[order]
        opacity = self._estimate(density_fn, cells, offsets, step_size, chunk)
        decayed = self.estimates.clone()
        decayed[cells] = self.estimates[cells] * self.decay
        self.estimates = decayed.scatter_reduce(0, cells, opacity, reduce="amax")  # duplicates: their max
        self._set_occupied()

    def fill(self, density_fn: Callable, step_size: float, samples_per_axis: int = 2, chunk: int = 65536) -> None:
        """Deterministic estimate from scratch: the max opacity over a samples_per_axis^3 lattice of points
        (the centres of equal sub-cells) in every cell. Builds a grid for a model trained without one."""
        num_cells, k = self.estimates.numel(), samples_per_axis
        centres = (torch.stack(torch.meshgrid(*[torch.arange(k, device=self.device)] * 3, indexing="ij"),
                               dim=-1).reshape(-1, 3) + 0.5) / k  # [k^3, 3]
        estimates = torch.zeros(num_cells, device=self.device)
        cells_per_call = max(1, chunk // len(centres))
        for start in range(0, num_cells, cells_per_call):
            cells = torch.arange(start, min(start + cells_per_call, num_cells), device=self.device)
            cells_rep = cells.repeat_interleave(len(centres))  # [P]
            offsets = centres.repeat(len(cells), 1)  # [P, 3]
            opacity = self._estimate(density_fn, cells_rep, offsets, step_size, chunk)
            estimates[cells] = opacity.reshape(len(cells), len(centres)).amax(dim=-1)
        self.estimates = estimates
        self._set_occupied()

    def state_dict(self) -> dict:
        return {"aabb": self.aabb.cpu(), "resolution": self.resolution, "estimates": self.estimates.cpu(),
                "occupied": self.occupied.cpu(), "density_threshold": self.density_threshold, "decay": self.decay,
                "contraction": self.contraction}

    def load_state_dict(self, state: dict) -> None:
        stored_contraction = state.get("contraction")  # absent in grids saved before contraction existed
        if (int(state["resolution"]) != self.resolution or stored_contraction != self.contraction
                or not torch.allclose(state["aabb"].to(self.aabb), self.aabb)):
            raise ValueError(f"stored occupancy grid ({state['resolution']}^3 over {state['aabb'].tolist()}, "
                             f"contraction {stored_contraction}) does not match the config ({self.resolution}^3 "
                             f"over {self.aabb.tolist()}, contraction {self.contraction})")
        self.estimates = state["estimates"].to(self.device, torch.float32)
        self.occupied = state["occupied"].to(self.device, torch.bool)
        self._box = None

    def occupied_fraction(self) -> float:
        return self.occupied.float().mean().item()


@dataclass
class OccupancySampler:
    """An occupancy grid with its marching settings. `skipping` False (warm-up) marches through every cell."""

    grid: OccupancyGrid
    cfg: OccupancyConfig
    skipping: bool = True
    fixed_step: Optional[float] = None  # set by a field that chooses its own step (VoxelGridModel)

    @property
    def step_size(self) -> float:
        """World-space marching step: fixed_step if set, else the box diagonal / num_steps."""
        if self.fixed_step is not None:
            return self.fixed_step
        size = self.grid.aabb[3:] - self.grid.aabb[:3]
        return float(torch.linalg.norm(size)) / self.cfg.num_steps


def build_sampler(cfg: OccupancyConfig, use_ndc: bool, device: torch.device) -> OccupancySampler:
    grid = OccupancyGrid(default_aabb(cfg, use_ndc), cfg.resolution, cfg.density_threshold, cfg.decay, device,
                         cfg.contraction)
    return OccupancySampler(grid, cfg)


def box_warning(sampler: OccupancySampler, scene, stride: int = 8) -> Optional[str]:
    """A one-line warning when the rays of the scene's views (every stride-th pixel) leave the grid's box
    in NDC space, where they would lose samples, with the smallest box (to 0.05 outward) that holds the box
    and every ray's segment; None when they stay inside (or outside NDC)."""
    if not scene.use_ndc or not len(scene.poses):
        return None
    worst, box = 0.0, sampler.grid.aabb.clone()  # [6]
    for c2w in scene.poses:
        rays_o, rays_d = get_rays(scene.height, scene.width, scene.focal, c2w.to(sampler.grid.device), stride,
                                  scene.pixel_offset)
        rays = prepare_rays(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), scene.near, scene.far,
                            (scene.height, scene.width, scene.focal))
        ends = segment_ends(rays)  # [2, R, 3]
        worst = max(worst, fraction_of_rays_leaving(sampler.grid.aabb, ends))
        ends = ends.reshape(-1, 3)  # [2R, 3]
        box = torch.cat((torch.minimum(box[:3], ends.min(0).values), torch.maximum(box[3:], ends.max(0).values)))
    if worst == 0.0:
        return None
    # outward to 0.05; rounded first, so that a bound on the grid (-1.0) is not pushed out by float error
    covering = ([math.floor(round(v / 0.05, 6)) * 0.05 for v in box[:3].tolist()]
                + [math.ceil(round(v / 0.05, 6)) * 0.05 for v in box[3:].tolist()])
    return (f"warning: occupancy.aabb {[round(v, 3) for v in sampler.grid.aabb.tolist()]}: up to {100 * worst:.1f} % "
            "of a view's NDC rays leave the box and lose their samples there; widen occupancy.aabb, e.g. "
            f"--set 'occupancy.aabb=[{', '.join(f'{v:.2f}' for v in covering)}]' (holds every view's rays)")


def ray_box_interval(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor) -> tuple:
    """Slab test. origins, directions: [R, 3] -> (t_enter, t_exit): [R]; t_exit <= t_enter means a miss."""
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[:3] - origins) / safe  # [R, 3]
    t1 = (aabb[3:] - origins) / safe
    return torch.minimum(t0, t1).amax(dim=-1), torch.maximum(t0, t1).amin(dim=-1)


def compact(t: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each ray's valid samples to the front, in order, and drop all-invalid columns.

    t, valid, dt: [R, N] -> [R, M] with M = the largest number of valid samples of a ray; the padding after
    a ray's valid samples holds t = dt = 0."""
    counts = valid.sum(dim=1)  # [R]
    width = int(counts.max().item()) if valid.numel() else 0
    # a valid sample's place among its ray's valid samples; the invalid ones go to a spare column, dropped
    place = torch.where(valid, valid.cumsum(dim=1) - 1, width)  # [R, N]

    def packed(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(len(values), width + 1).scatter_(1, place, values)[:, :width].contiguous()  # [R, M]

    return packed(t), torch.arange(width, device=valid.device) < counts[:, None], packed(dt)


def _offsets(like: torch.Tensor, perturb: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    """The lattice offset u [R] of each ray: U[0, 1) when perturb, else 1/2."""
    if perturb:
        return torch.rand(like.shape, device=like.device, generator=generator)
    return torch.full_like(like, 0.5)


def march(sampler: OccupancySampler, rays: Rays, perturb: bool,
          generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample positions along rays through occupied cells: `march_box`, or `march_contracted` for a grid
    over the contracted space. Returns t [R, M], valid [R, M] and dt [R, M] (each sample stands for the
    interval t_k +- dt_k / 2, in units of d)."""
    if sampler.grid.contraction is not None:
        return march_contracted(sampler, rays, perturb, generator)
    return march_box(sampler, rays, perturb, generator)


def march_box(sampler: OccupancySampler, rays: Rays, perturb: bool,
              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample positions along rays through the occupied cells of a world-space box.

    t_k = t_enter + (k + u) dt for k = 0, 1, ... with dt = step_size / |d| (t is in units of d) and
    u ~ U[0, 1) per ray when perturb (else 1/2), kept where t_k < t_exit and the cell of o + t_k d is occupied;
    [t_enter, t_exit] = the ray's interval inside the box, clipped to [near, far]. When skipping, the box is
    the one around the occupied cells (the same samples, fewer steps to test).
    Returns t [R, M], valid [R, M] and dt [R, M] (one value per ray at its samples, 0 in the padding); each
    sample stands for t_k +- dt/2.
    """
    grid = sampler.grid
    norms = torch.linalg.norm(rays.directions, dim=-1)  # [R]
    dt = sampler.step_size / norms  # [R]
    # the lattice starts where the ray enters the whole box, so that the samples do not depend on the cells
    t_enter, t_exit = ray_box_interval(rays.origins, rays.directions, grid.aabb)
    t_start = torch.maximum(t_enter, rays.near)
    if sampler.skipping:
        t_enter, t_exit = ray_box_interval(rays.origins, rays.directions, grid.occupied_box())
    t_enter, t_exit = torch.maximum(t_enter, rays.near), torch.minimum(t_exit, rays.far)
    first = torch.floor(((t_enter - t_start) / dt).clamp(min=0))  # [R] first step index inside
    span = ((t_exit - t_start) / dt - first).clamp(min=0)  # [R] steps to cover
    num_steps = int(span.max().ceil().item()) + 1 if span.numel() else 0
    u = _offsets(t_enter, perturb, generator)
    steps = torch.arange(num_steps, device=t_enter.device, dtype=t_enter.dtype)
    t = t_start[:, None] + (first[:, None] + steps + u[:, None]) * dt[:, None]  # [R, N]
    valid = (t >= t_enter[:, None]) & (t < t_exit[:, None])
    if sampler.skipping:
        valid &= grid.occupied[grid.cells_along(rays.origins, rays.directions, t)]
    return compact(t, valid, dt[:, None].expand_as(t))


def march_contracted(sampler: OccupancySampler, rays: Rays, perturb: bool,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample positions along rays, from near to infinity, at a fixed step in the contracted space.

    With s(t) the contracted arc length from the near point (contraction.contracted_distance), the samples
    are s_k = (k + u) step_size for k = 0, 1, ... while s_k < s(infinity), u as in `march_box`; t_k =
    s^-1(s_k) and dt_k = s^-1(s_k + step/2) - s^-1(s_k - step/2), a world interval that grows with the
    distance; the first interval starts at the near point and the last one ends at infinity, so that the
    intervals tile the ray. Samples in unoccupied cells are dropped when skipping. rays.far is not used:
    the contracted ray ends at infinity. Returns t [R, M], valid [R, M] and dt [R, M].
    """
    grid, step = sampler.grid, sampler.step_size
    g_nodes, s_nodes = contracted_distance(rays.origins, rays.directions, rays.near, grid.contraction)  # [R, K]
    total = s_nodes[:, -1]  # [R]
    num_steps = int((total.max() / step).ceil().item()) if total.numel() else 0
    u = _offsets(total, perturb, generator)
    k = torch.arange(num_steps, device=total.device, dtype=total.dtype)
    s = (k + u[:, None]) * step  # [R, N]
    # edges half-way between the samples; the first from the near point, the last to infinity
    lower = torch.where(k == 0, torch.zeros_like(s), s - 0.5 * step)
    upper = torch.where(s + step >= total[:, None], total[:, None].expand_as(s), s + 0.5 * step)
    s = torch.cat((s, lower, upper), dim=1)  # [R, 3N]
    t = spacing_inverse(interpolate(s, s_nodes, g_nodes)) / torch.linalg.norm(rays.directions, dim=-1)[:, None]
    t, dt = t[:, :num_steps], t[:, 2 * num_steps:] - t[:, num_steps:2 * num_steps]  # [R, N] each
    valid = s[:, :num_steps] < total[:, None]
    if sampler.skipping:
        valid &= grid.occupied[grid.cells_along(rays.origins, rays.directions, t)]
    return compact(t, valid, dt)


def early_termination(density_fn: Callable, rays: Rays, t: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor,
                      early_stop_eps: float, alpha_threshold: float, netchunk: int) -> torch.Tensor:
    """The samples worth evaluating (no gradients): valid, with transmittance T_k >= early_stop_eps and
    alpha_k >= alpha_threshold, from a density-only pass (T_k as in compositing.transmittance; dt: [R, M]). Dropping
    the samples after T < eps changes each colour channel by at most eps (their weights sum to at most T),
    for the noise-free density this pass sees: with radiance_field_noise_std > 0 (training on LLFF) the
    bound holds only on average."""
    with torch.no_grad():
        points = (rays.origins[:, None, :] + rays.directions[:, None, :] * t[..., None])[valid]  # [P, 3]
        sigma = scatter_valid(evaluate_density(density_fn, points, netchunk), valid)  # [P] -> [R, M]
        deltas = dt * torch.linalg.norm(rays.directions, dim=-1)[:, None]  # [R, M] world lengths
        alpha = 1.0 - torch.exp(-sigma * deltas)
        return valid & (transmittance(alpha) >= early_stop_eps) & (alpha >= alpha_threshold)


def occupancy_samples(field: nn.Module, rays: Rays, opts: RenderConfig, sampler: OccupancySampler,
                      generator: Optional[torch.Generator] = None) -> tuple:
    """March through occupied cells, then thin by early termination: (t [R, M], valid [R, M], dt [R, M])."""
    t, valid, dt = march(sampler, rays, opts.perturb, generator)
    cfg = sampler.cfg
    if cfg.early_stop_eps > 0 or cfg.alpha_threshold > 0:
        keep = early_termination(field.density, rays, t, valid, dt, cfg.early_stop_eps, cfg.alpha_threshold,
                                 opts.netchunk)
        t, valid, dt = compact(t, keep, dt)
    return t, valid, dt
