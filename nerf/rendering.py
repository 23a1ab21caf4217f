"""Rendering rays: a sampler places samples, a field evaluates them, compositing turns them into pixels.

Two pipelines, one compositing formula (nerf/compositing.py):
- coarse/fine (the paper): stratified samples -> coarse field -> `volume_render`; inverse-CDF samples of
  the coarse weights -> fine field on coarse + fine samples -> `volume_render`;
- occupancy grid: marched samples through occupied cells, thinned by early termination
  (nerf/occupancy.py) -> one field on the packed samples -> `composite_samples`, or, for a field with a
  separate colour branch, colour only where the weight counts (`render_samples_split`).

Shapes as in the package legend (nerf/__init__.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .compositing import (composite_dense, composite_samples, compositing_weights, packed_sigma_and_deltas,
                          scatter_valid, volume_render)
from .config import RenderConfig
from .occupancy import OccupancySampler, occupancy_samples
from .rays import Rays, get_rays, prepare_rays
from .runtime import evaluate_points, run_network
from .sampling import hierarchical_samples, stratified_samples


MIN_RENDERED_SIDE = 4  # 1 to 3 pixels a side are no image to validate or evaluate on


def stride_too_coarse(width: int, height: int, stride: int) -> Optional[str]:
    """Why rendering every stride-th pixel of width x height views (ceil(W / s) x ceil(H / s) pixels) gives too
    small an image, or None when each side has at least MIN_RENDERED_SIDE pixels."""
    rendered = [-(-side // stride) for side in (width, height)]
    if min(rendered) >= MIN_RENDERED_SIDE:
        return None
    # ceil(m / s) >= 4 <=> m / s > 3 <=> s <= (m - 1) // 3: the largest stride that still gives 4 pixels
    largest = (min(width, height) - 1) // (MIN_RENDERED_SIDE - 1)
    hint = f"at most {largest} here" if largest >= 1 else "the views themselves are smaller"
    return (f"the {width}x{height} views would render at {rendered[0]}x{rendered[1]}; {hint} ({MIN_RENDERED_SIDE} "
            "pixels or more a side)")


def render_rays_hierarchical(coarse: nn.Module, fine: Optional[nn.Module], rays: Rays, opts: RenderConfig,
                             generator: Optional[torch.Generator] = None) -> dict:
    """The paper's renderer: the coarse model on stratified samples and, if num_fine > 0, the fine model on
    the coarse + inverse-CDF samples.

    Returns the fine outputs (rgb [R, 3], depth, disp, acc [R], weights [R, S_c + S_f], z_std [R]) and the
    coarse ones with suffix 0 (rgb0, depth0, disp0, acc0); without a fine pass the coarse outputs are the
    main ones.
    """
    z_coarse = stratified_samples(rays.near, rays.far, opts.num_coarse, opts.perturb, opts.lindisp,
                                  generator)  # [R, S_c]
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * z_coarse[..., None]  # [R, S_c, 3]
    raw = run_network(coarse, points, rays.viewdirs, opts.netchunk)
    coarse_out = volume_render(raw, z_coarse, rays.directions, opts.radiance_field_noise_std,
                               opts.white_background, generator)
    if opts.num_fine <= 0 or fine is None:
        return coarse_out
    z_fine, z_importance = hierarchical_samples(z_coarse, coarse_out["weights"], opts.num_fine,
                                                deterministic=not opts.perturb, generator=generator)
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * z_fine[..., None]  # [R, S_c + S_f, 3]
    raw = run_network(fine, points, rays.viewdirs, opts.netchunk)
    out = volume_render(raw, z_fine, rays.directions, opts.radiance_field_noise_std, opts.white_background,
                        generator)
    out["z_std"] = z_importance.std(dim=-1, unbiased=False)  # population std, as tf.math.reduce_std
    for key in ("rgb", "depth", "disp", "acc"):
        out[key + "0"] = coarse_out[key]
    return out


def field_at_samples(field: nn.Module, rays: Rays, t: torch.Tensor, valid: torch.Tensor,
                     opts: RenderConfig) -> torch.Tensor:
    """Run the field once on the valid samples: raw [P, 4] for the P valid entries of t [R, M] (row-major)."""
    ray_ids = valid.nonzero()[:, 0]  # [P]
    points = rays.origins[ray_ids] + rays.directions[ray_ids] * t[valid][:, None]  # [P, 3]
    return evaluate_points(field, points, rays.viewdirs[ray_ids], opts.netchunk)


def has_color_branch(field: nn.Module) -> bool:
    """Whether the field computes colour separately from density (`color(points, viewdirs)`)."""
    return bool(getattr(field, "has_color", hasattr(field, "color")))


def render_samples_split(field: nn.Module, rays: Rays, t: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor,
                         opts: RenderConfig, color_weight_threshold: float,
                         generator: Optional[torch.Generator] = None) -> dict:
    """Like `render_samples` for a field with a colour branch, which runs only on the samples whose weight
    w_k = alpha_k T_k is at least color_weight_threshold (DVGO's fast_color_thres); the others get colour 0.

    The colour error per channel is at most the sum of the dropped weights. The weights that choose the
    samples carry no gradient; density gradients reach every valid sample through the compositing.
    Returns what `composite_samples` does (sample_rgb 0 where no colour was computed) and num_colored.
    """
    ray_ids = valid.nonzero()[:, 0]  # [P]
    points = rays.origins[ray_ids] + rays.directions[ray_ids] * t[valid][:, None]  # [P, 3]
    sigma, deltas = packed_sigma_and_deltas(field.density(points), rays, t, valid, dt,
                                            opts.radiance_field_noise_std, generator)
    with torch.no_grad():
        colored = (compositing_weights(sigma, deltas)[valid] >= color_weight_threshold).nonzero()[:, 0]  # [P']
    rgb_raw = field.color(points[colored], rays.viewdirs[ray_ids[colored]])  # [P', 3]
    rgb = points.new_zeros(points.shape).index_copy(0, colored, torch.sigmoid(rgb_raw))  # [P, 3]
    out = composite_dense(scatter_valid(rgb, valid), sigma, deltas, t, valid, dt, opts.white_background)
    out["num_colored"] = colored.numel()  # samples that ran the colour branch
    return out


def render_samples(field: nn.Module, rays: Rays, t: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor,
                   opts: RenderConfig, generator: Optional[torch.Generator] = None,
                   color_weight_threshold: float = 0.0) -> dict:
    """`field_at_samples`, then `composite_samples`; `render_samples_split` for a field with a colour branch
    and a positive color_weight_threshold."""
    if color_weight_threshold > 0 and has_color_branch(field):
        return render_samples_split(field, rays, t, valid, dt, opts, color_weight_threshold, generator)
    return composite_samples(field_at_samples(field, rays, t, valid, opts), rays, t, valid, dt, opts, generator)


def render_rays_occupancy(field: nn.Module, rays: Rays, opts: RenderConfig, sampler: OccupancySampler,
                          generator: Optional[torch.Generator] = None) -> dict:
    """Render rays with the grid sampler and one field (a FieldRunner or a model with a `density`)."""
    t, valid, dt = occupancy_samples(field, rays, opts, sampler, generator)
    return render_samples(field, rays, t, valid, dt, opts, generator, sampler.cfg.color_weight_threshold)


def render_rays(coarse: nn.Module, fine: Optional[nn.Module], rays: Rays, opts: RenderConfig,
                generator: Optional[torch.Generator] = None, sampler: Optional[OccupancySampler] = None) -> dict:
    """`render_rays_hierarchical`, or with an occupancy `sampler` `render_rays_occupancy` with one field:
    the fine model if there is one, else the coarse one."""
    if sampler is not None:
        return render_rays_occupancy(fine if fine is not None else coarse, rays, opts, sampler, generator)
    return render_rays_hierarchical(coarse, fine, rays, opts, generator)


@torch.no_grad()
def render_image(coarse: nn.Module, fine: Optional[nn.Module], c2w: torch.Tensor, height: int, width: int,
                 focal: float, near: float, far: float, use_ndc: bool, opts: RenderConfig,
                 generator: Optional[torch.Generator] = None, stride: int = 1,
                 sampler: Optional[OccupancySampler] = None, pixel_offset: float = 0.0) -> dict:
    """Render an image in chunks of `opts.chunksize` rays. c2w: [3, 4] or [4, 4].

    height, width, focal are the training intrinsics (they also define the NDC space); stride k renders
    every k-th pixel, i.e. the image at 1/k resolution, comparable with `target[::k, ::k]`. With an
    occupancy `sampler`, rays are marched occupancy.render_chunk at a time. pixel_offset: 0 (the
    paper's rays through the pixels' corners) or 0.5 (their centres), as in rays.pixel_directions.
    Returns rgb [H', W', 3], depth, disp, acc [H', W'] (fine pass when there is one).
    """
    rays_o, rays_d = get_rays(height, width, focal, c2w, stride, pixel_offset)  # [H', W', 3] each
    out_height, out_width = rays_o.shape[:2]
    rays = prepare_rays(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), near, far,
                        (height, width, focal) if use_ndc else None)  # [H' W'] rays
    keys = ("rgb", "depth", "disp", "acc")
    chunks = {key: [] for key in keys}
    chunk = sampler.cfg.render_chunk if sampler is not None else opts.chunksize
    for start in range(0, len(rays), chunk):
        out = render_rays(coarse, fine, rays[start:start + chunk], opts, generator, sampler)
        for key in keys:
            chunks[key].append(out[key])
    return {key: torch.cat(chunks[key], dim=0).reshape(out_height, out_width, -1).squeeze(-1) for key in keys}
