"""Volume rendering (official raw2outputs) and the coarse-to-fine ray renderer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import RenderConfig
from .rays import get_rays, ndc_rays
from .runtime import network_chunk
from .sampling import hierarchical_samples, stratified_samples


@dataclass
class Rays:
    """Rays ready for rendering. origins, directions, viewdirs: [R, 3]; near, far: [R]."""

    origins: torch.Tensor
    directions: torch.Tensor
    viewdirs: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor

    def __getitem__(self, index) -> "Rays":
        return Rays(self.origins[index], self.directions[index], self.viewdirs[index], self.near[index],
                    self.far[index])

    def __len__(self) -> int:
        return self.origins.shape[0]


def prepare_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
                 ndc: Optional[tuple[int, int, float]] = None) -> Rays:
    """World rays [R, 3] -> Rays. viewdirs = d/|d| in world space, computed before the optional NDC
    map (ndc = (H, W, focal), near plane n = 1, as in the official render())."""
    viewdirs = rays_d / torch.linalg.norm(rays_d, dim=-1, keepdim=True)
    if ndc is not None:
        rays_o, rays_d = ndc_rays(ndc[0], ndc[1], ndc[2], 1.0, rays_o, rays_d)
    near_t = torch.full(rays_o.shape[:1], near, device=rays_o.device, dtype=rays_o.dtype)
    far_t = torch.full(rays_o.shape[:1], far, device=rays_o.device, dtype=rays_o.dtype)
    return Rays(rays_o, rays_d, viewdirs, near_t, far_t)


def compositing_weights(sigma: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """w_k = alpha_k T_k with alpha_k = 1 - exp(-sigma_k delta_k), T_k = prod_{j<k} (1 - alpha_j + 1e-10)
    (the official raw2outputs). sigma, deltas: [R, S] -> weights [R, S]."""
    alpha = 1.0 - torch.exp(-sigma * deltas)  # [R, S]
    transmittance = torch.cumprod(torch.cat((torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10), dim=-1),
                                  dim=-1)[:, :-1]  # [R, S], exclusive
    return alpha * transmittance


def composite(rgb: torch.Tensor, sigma: torch.Tensor, deltas: torch.Tensor, t: torch.Tensor,
              white_background: bool = False) -> dict:
    """Alpha compositing along rays (the body of the official raw2outputs).

    rgb: [R, S, 3] in [0, 1]; sigma: [R, S] >= 0; deltas: [R, S] interval lengths in world units; t: [R, S].
    alpha_k = 1 - exp(-sigma_k delta_k); T_k = prod_{j<k} (1 - alpha_j + 1e-10); w_k = alpha_k T_k.
    rgb = sum w rgb (+ 1 - acc on white); depth = sum w t; acc = sum w;
    disp = 1 / max(1e-10, depth / acc), and 0 where acc = 0.
    Returns rgb [R, 3], depth [R], disp [R], acc [R], weights [R, S].
    """
    weights = compositing_weights(sigma, deltas)  # [R, S]
    rgb_map = (weights[..., None] * rgb).sum(dim=-2)  # [R, 3]
    depth = (weights * t).sum(dim=-1)  # [R]
    acc = weights.sum(dim=-1)
    safe_acc = torch.where(acc > 0, acc, torch.ones_like(acc))
    disp = torch.where(acc > 0, 1.0 / torch.clamp(depth / safe_acc, min=1e-10), torch.zeros_like(acc))
    if white_background:
        rgb_map = rgb_map + (1.0 - acc[..., None])
    return {"rgb": rgb_map, "depth": depth, "disp": disp, "acc": acc, "weights": weights}


def distortion_loss(weights: torch.Tensor, s: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """Distortion loss of Mip-NeRF 360 (eq. 15) per ray, for samples that are intervals of length ds
    centred at s (normalised ray distance, so the weight does not depend on the scene's scale):

        L = sum_{i,j} w_i w_j |s_i - s_j| + 1/3 sum_i w_i^2 ds_i
          = 2 sum_i w_i (s_i W_<i - (w s)_<i) + 1/3 sum_i w_i^2 ds_i,   W_<i = sum_{j<i} w_j,

    which is O(S) when s is nondecreasing along the samples that carry weight (padding has w = 0).
    weights, s: [R, S]; ds: [R, S] or [R, 1]. Returns [R].
    """
    weight_before = torch.cumsum(weights, dim=-1) - weights  # [R, S], exclusive
    weighted_s_before = torch.cumsum(weights * s, dim=-1) - weights * s  # [R, S]
    pairs = 2.0 * (weights * (s * weight_before - weighted_s_before)).sum(dim=-1)  # [R]
    return pairs + (weights.square() * ds).sum(dim=-1) / 3.0


def ray_distortion_loss(weights: torch.Tensor, t: torch.Tensor, dt: torch.Tensor, rays: Rays) -> torch.Tensor:
    """`distortion_loss` of samples at t [R, S] spaced dt [R] along rays, in the ray distance normalised
    to [near, far] -> [0, 1]: s = (t - near) / (far - near), ds = dt / (far - near) (NDC: s = t). Returns [R]."""
    span = (rays.far - rays.near)[:, None]  # [R, 1]
    return distortion_loss(weights, (t - rays.near[:, None]) / span, dt[:, None] / span)


def sample_color_loss(weights: torch.Tensor, sample_rgb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DVGO's per-sample colour loss: each sample's colour pulled towards its pixel's, in proportion to the
    sample's (detached) compositing weight: L = sum_k sg(w_k) ||c_k - C||^2. The split renderer gives the
    samples below its colour threshold c_k = 0: they add a constant (< 3 x threshold each), no gradient.

    weights: [R, S]; sample_rgb: [R, S, 3]; target: [R, 3]. Returns [R].
    """
    return (weights.detach() * (sample_rgb - target[:, None, :]).square().sum(dim=-1)).sum(dim=-1)


# composite() as run by the renderers; set_compiled_compositing() swaps in a torch.compile'd version
_COMPOSITE = {"fn": composite}


def set_compiled_compositing(enabled: bool) -> None:
    """Run the compositing through torch.compile (runtime.compile) or eagerly."""
    from .runtime import try_compile

    _COMPOSITE["fn"] = try_compile(composite, "composite") if enabled else composite


def volume_render(raw: torch.Tensor, z_vals: torch.Tensor, rays_d: torch.Tensor, noise_std: float = 0.0,
                  white_background: bool = False, generator: Optional[torch.Generator] = None) -> dict:
    """Composite raw network outputs along rays (official raw2outputs).

    raw: [R, S, 4] = [rgb_raw, sigma_raw]; z_vals: [R, S]; rays_d: [R, 3] (un-normalised; NDC under NDC).
    delta_k = (z_{k+1} - z_k) |d|, delta_last = 1e10 |d|; sigma = ReLU(sigma_raw + N(0, noise_std^2));
    then `composite` (rgb = sigmoid(rgb_raw)).
    Returns rgb [R, 3], depth [R], disp [R], acc [R], weights [R, S].
    """
    deltas = z_vals[:, 1:] - z_vals[:, :-1]  # [R, S-1]
    deltas = torch.cat((deltas, torch.full_like(deltas[:, :1], 1e10)), dim=-1)  # [R, S]
    deltas = deltas * torch.linalg.norm(rays_d[:, None, :], dim=-1)
    sigma_raw = raw[..., 3]
    if noise_std > 0:
        sigma_raw = sigma_raw + noise_std * torch.randn(sigma_raw.shape, device=raw.device, dtype=raw.dtype,
                                                        generator=generator)
    return _COMPOSITE["fn"](torch.sigmoid(raw[..., :3]), torch.relu(sigma_raw), deltas, z_vals, white_background)


def run_network(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """Evaluate the field at points: [R, S, 3] with per-ray viewdirs [R, 3] -> raw [R, S, 4],
    in chunks of at most `netchunk` points (a memory knob that does not change the result; on the CPU
    smaller chunks are used, see runtime.network_chunk)."""
    num_rays, num_samples = points.shape[:2]
    flat_points = points.reshape(-1, 3)  # [P, 3]
    flat_dirs = viewdirs[:, None, :].expand(points.shape).reshape(-1, 3)  # [P, 3]
    return evaluate_points(model, flat_points, flat_dirs, netchunk).reshape(num_rays, num_samples, -1)  # [R, S, 4]


def evaluate_points(model: nn.Module, points: torch.Tensor, viewdirs: torch.Tensor, netchunk: int) -> torch.Tensor:
    """model(points [P, 3], viewdirs [P, 3]) -> raw [P, 4], in calls of at most network_chunk(netchunk) points."""
    chunk = network_chunk(netchunk, points.device)
    if points.shape[0] <= chunk:
        return model(points, viewdirs)
    return torch.cat([model(points[k:k + chunk], viewdirs[k:k + chunk])
                      for k in range(0, points.shape[0], chunk)], dim=0)


@torch.no_grad()
def evaluate_density(density_fn, points: torch.Tensor, netchunk: int) -> torch.Tensor:
    """sigma = ReLU(density_fn(points)): [P], without gradients, in calls of at most network_chunk(netchunk)."""
    chunk = network_chunk(netchunk, points.device)
    if points.shape[0] <= chunk:
        return torch.relu(density_fn(points))
    return torch.cat([torch.relu(density_fn(points[k:k + chunk])) for k in range(0, points.shape[0], chunk)])


def render_rays(coarse: nn.Module, fine: Optional[nn.Module], rays: Rays, opts: RenderConfig,
                generator: Optional[torch.Generator] = None, sampler=None) -> dict:
    """Render rays with the coarse model and, if num_fine > 0, the fine model on coarse + fine samples.

    Returns the fine outputs (rgb [R, 3], depth, disp, acc [R], weights [R, S_c + S_f], z_std [R]) and the
    coarse ones with suffix 0 (rgb0, depth0, disp0, acc0); without a fine pass the coarse outputs are the
    main ones. With an occupancy `sampler` (nerf.occupancy.OccupancySampler) the rays are marched through
    its grid instead and rendered by one field: the fine model if there is one, else the coarse one.
    """
    if sampler is not None:
        from .occupancy import render_rays_occupancy  # late: occupancy builds on this module

        return render_rays_occupancy(fine if fine is not None else coarse, rays, opts, sampler, generator)
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
    points = rays.origins[:, None, :] + rays.directions[:, None, :] * z_fine[..., None]
    raw = run_network(fine, points, rays.viewdirs, opts.netchunk)
    out = volume_render(raw, z_fine, rays.directions, opts.radiance_field_noise_std, opts.white_background,
                        generator)
    out["z_std"] = z_importance.std(dim=-1, unbiased=False)  # population std, as tf.math.reduce_std
    for key in ("rgb", "depth", "disp", "acc"):
        out[key + "0"] = coarse_out[key]
    return out



@torch.no_grad()
def render_image(coarse: nn.Module, fine: Optional[nn.Module], c2w: torch.Tensor, height: int, width: int,
                 focal: float, near: float, far: float, use_ndc: bool, opts: RenderConfig,
                 generator: Optional[torch.Generator] = None, stride: int = 1, sampler=None) -> dict:
    """Render an image in chunks of `opts.chunksize` rays. c2w: [3, 4] or [4, 4].

    height, width, focal are the training intrinsics (they also define the NDC space); stride k renders
    every k-th pixel, i.e. the image at 1/k resolution, comparable with `target[::k, ::k]`. With an
    occupancy `sampler`, rays are marched occupancy.render_chunk at a time.
    Returns rgb [H', W', 3], depth, disp, acc [H', W'] (fine pass when there is one).
    """
    rays_o, rays_d = get_rays(height, width, focal, c2w, stride)  # [H', W', 3] each
    out_height, out_width = rays_o.shape[:2]
    rays = prepare_rays(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), near, far,
                        (height, width, focal) if use_ndc else None)
    keys = ("rgb", "depth", "disp", "acc")
    chunks = {key: [] for key in keys}
    chunk = sampler.cfg.render_chunk if sampler is not None else opts.chunksize
    for start in range(0, len(rays), chunk):
        out = render_rays(coarse, fine, rays[start:start + chunk], opts, generator, sampler)
        for key in keys:
            chunks[key].append(out[key])
    return {key: torch.cat(chunks[key], dim=0).reshape(out_height, out_width, -1).squeeze(-1) for key in keys}
