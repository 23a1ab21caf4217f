"""Volume rendering: samples along rays -> rgb, depth, disparity, accumulation and weights.

One compositing formula, the official raw2outputs one, serves every sampler:

    alpha_k = 1 - exp(-sigma_k delta_k),  T_k = prod_{j<k} (1 - alpha_j + 1e-10),  w_k = alpha_k T_k.

`volume_render` composites the dense samples of the coarse/fine sampler (deltas from consecutive
depths, the last one 1e10); `composite_samples` the packed samples of the occupancy sampler (each with
its own interval dt, a fixed step unless the space is contracted; invalid padding with sigma = 0). Shapes as in the package legend (nerf/__init__.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from .config import RenderConfig
from .rays import Rays
from .runtime import try_compile


def transmittance(alpha: torch.Tensor) -> torch.Tensor:
    """T_k = prod_{j<k} (1 - alpha_j + 1e-10), exclusive (T_0 = 1). alpha: [R, S] -> [R, S]."""
    return torch.cumprod(torch.cat((torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10), dim=-1),
                         dim=-1)[:, :-1]  # [R, S + 1] -> [R, S]


def compositing_weights(sigma: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """w_k = alpha_k T_k with alpha_k = 1 - exp(-sigma_k delta_k) (the official raw2outputs).
    sigma, deltas: [R, S] -> weights [R, S]."""
    alpha = 1.0 - torch.exp(-sigma * deltas)  # [R, S]
    return alpha * transmittance(alpha)


def composite(rgb: torch.Tensor, sigma: torch.Tensor, deltas: torch.Tensor, t: torch.Tensor,
              white_background: bool = False) -> dict:
    """Alpha compositing along rays (the body of the official raw2outputs).

    rgb: [R, S, 3] in [0, 1]; sigma: [R, S] >= 0; deltas: [R, S] interval lengths in world units; t: [R, S].
    w = compositing_weights(sigma, deltas);
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


# composite() as run by the renderers; set_compiled_compositing() swaps in a torch.compile'd version
_COMPOSITE = {"fn": composite, "compiled": False}


def set_compiled_compositing(enabled: bool) -> None:
    """Run the compositing through torch.compile (runtime.compile) or eagerly; a repeated call with the same
    setting keeps the compiled function (no recompilation)."""
    if enabled != _COMPOSITE["compiled"]:
        _COMPOSITE.update(fn=try_compile(composite, "composite") if enabled else composite, compiled=enabled)


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


def scatter_valid(values: torch.Tensor, valid: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Scatter packed values [P, ...] into a [R, M, ...] tensor at the valid entries (fill elsewhere)."""
    out = values.new_full(valid.shape + values.shape[1:], fill)
    out[valid] = values
    return out


def packed_sigma_and_deltas(sigma_raw: torch.Tensor, rays: Rays, t: torch.Tensor, valid: torch.Tensor,
                            dt: torch.Tensor, noise_std: float = 0.0,
                            generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed raw densities [P] of the valid samples -> sigma [R, M] = ReLU(sigma_raw (+ noise)), 0 at the
    invalid samples, and deltas [R, M] = each sample's interval in world units (dt |d|; dt: [R, M])."""
    if noise_std > 0:
        sigma_raw = sigma_raw + noise_std * torch.randn(sigma_raw.shape, device=sigma_raw.device,
                                                        dtype=sigma_raw.dtype, generator=generator)
    sigma = scatter_valid(torch.relu(sigma_raw), valid)  # [P] -> [R, M]
    deltas = dt * torch.linalg.norm(rays.directions, dim=-1)[:, None]  # [R, M]
    return sigma, deltas


def composite_dense(rgb: torch.Tensor, sigma: torch.Tensor, deltas: torch.Tensor, t: torch.Tensor,
                    valid: torch.Tensor, dt: torch.Tensor, white_background: bool) -> dict:
    """`composite` of rgb [R, M, 3], sigma and deltas [R, M], plus what the losses and counters read:
    num_samples [R] (evaluated samples per ray), t [R, M] (where the weights are), dt [R, M] (each
    sample's interval in t) and sample_rgb [R, M, 3]."""
    out = _COMPOSITE["fn"](rgb, sigma, deltas, t, white_background)
    out.update(num_samples=valid.sum(dim=1), t=t, dt=dt, sample_rgb=rgb)
    return out


def composite_samples(raw: torch.Tensor, rays: Rays, t: torch.Tensor, valid: torch.Tensor, dt: torch.Tensor,
                      opts: RenderConfig, generator: Optional[torch.Generator] = None) -> dict:
    """Composite packed raw outputs [P, 4] of the valid samples of t [R, M].

    sigma = ReLU(sigma_raw (+ noise)), rgb = sigmoid(rgb_raw), delta = dt |d| per sample (dt: [R, M]),
    invalid samples have sigma = 0; then `composite` as in the paper renderer. Returns rgb [R, 3], depth,
    disp, acc [R], weights [R, M], num_samples [R] (evaluated samples per ray), t [R, M], dt [R, M] and
    sample_rgb [R, M, 3].
    """
    rgb = scatter_valid(torch.sigmoid(raw[:, :3]), valid)  # [P, 3] -> [R, M, 3]
    sigma, deltas = packed_sigma_and_deltas(raw[:, 3], rays, t, valid, dt, opts.radiance_field_noise_std, generator)
    return composite_dense(rgb, sigma, deltas, t, valid, dt, opts.white_background)
