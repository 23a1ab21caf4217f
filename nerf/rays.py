"""Camera rays (OpenGL convention, no half-pixel offset), NDC rays for forward-facing scenes, and the
`Rays` bundle every sampler and renderer takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def pixel_directions(i: torch.Tensor, j: torch.Tensor, height: int, width: int, focal: float,
                     offset: float = 0.0) -> torch.Tensor:
    """Camera-frame directions of pixels (column i, row j): d = ((i + o - W/2)/f, -(j + o - H/2)/f, -1).

    i, j: [...] -> [..., 3]; x right, y up, looking down -z; the principal point is (W/2, H/2). The offset
    o = 0 (the default) is the paper's convention, which its numbers use: the ray of pixel (i, j) passes
    through the pixel's corner. o = 0.5 passes through its centre, where the renderer or the camera
    measured the pixel (`dataset.pixel_center`, as TensoRF, Instant-NGP and nerfacc).
    """
    i = i.to(torch.float32) + offset
    j = j.to(torch.float32) + offset
    return torch.stack(((i - width * 0.5) / focal, -(j - height * 0.5) / focal, -torch.ones_like(i)), dim=-1)


def pixel_offset(pixel_center: bool) -> float:
    """The offset of pixel_directions for `dataset.pixel_center`: 0.5 (the pixels' centres) or 0 (their corners)."""
    return 0.5 if pixel_center else 0.0


def rays_from_directions(dirs_cam: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rays_d = R d_cam (not normalised, so the ray parameter is camera z-depth); rays_o = t.

    dirs_cam: [..., 3], c2w: [3, 4] or [..., 3, 4] (broadcast) -> (rays_o, rays_d): [..., 3] each.
    """
    rotation, origin = c2w[..., :3, :3], c2w[..., :3, 3]
    rays_d = (rotation * dirs_cam[..., None, :]).sum(-1)  # [..., 3]
    rays_o = origin.expand(rays_d.shape)
    return rays_o, rays_d


def get_rays(height: int, width: int, focal: float, c2w: torch.Tensor,
             stride: int = 1, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of an image: (rays_o, rays_d), each [H, W, 3] (c2w: [3, 4] or [4, 4]).

    With stride k only every k-th row and column is kept ([ceil(H/k), ceil(W/k), 3]): the image at 1/k
    resolution with the focal scaled by 1/k, whose pixel (i, j) is the full-size pixel (k i, k j).
    """
    rows = torch.arange(0, height, stride, device=c2w.device)
    cols = torch.arange(0, width, stride, device=c2w.device)
    j, i = torch.meshgrid(rows, cols, indexing="ij")  # [H/k, W/k] each
    dirs = pixel_directions(i, j, height, width, focal, offset).to(c2w.dtype)  # offset: see pixel_directions
    return rays_from_directions(dirs, c2w[:3, :4])


def ndc_rays(height: int, width: int, focal: float, near: float, rays_o: torch.Tensor,
             rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map rays to normalised device coordinates (official ndc_rays; n = near plane, usually 1).

    Origins are first moved to the plane z = -n: t_n = -(n + o_z)/d_z, o <- o + t_n d. Then
    o' = (-2f/W o_x/o_z, -2f/H o_y/o_z, 1 + 2n/o_z),
    d' = (-2f/W (d_x/d_z - o_x/o_z), -2f/H (d_y/d_z - o_y/o_z), -2n/o_z).
    rays_o, rays_d: [R, 3] -> [R, 3] each; NDC t in [0, 1] spans the near plane to infinity.
    """
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    o0 = -1.0 / (width / (2.0 * focal)) * ox / oz
    o1 = -1.0 / (height / (2.0 * focal)) * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = -1.0 / (width / (2.0 * focal)) * (dx / dz - ox / oz)
    d1 = -1.0 / (height / (2.0 * focal)) * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack((o0, o1, o2), -1), torch.stack((d0, d1, d2), -1)


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
