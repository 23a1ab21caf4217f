"""A factorised grid field: TensoRF's vector-matrix (VM) decomposition (Chen et al., ECCV 2022), in pure
PyTorch, behind the same GridField interface as the dense voxel grid (`voxel_grid.representation: vm`).

Shape legend (as in nerf/voxel_grid.py): P points, T components per mode, C feature channels, X/Y/Z
vertices per axis of the lattice the factors span.

For each of the three modes m = (a, b; c), the plane axes a, b and the line axis c ((x, y; z), (x, z; y),
(y, z; x)), a plane M_m [N_a, N_b, T] and a line v_m [N_c, T] hold values at the lattice's vertices over
the box. At a point p, with bilinear (M) and linear (v) interpolation,

    density D(p)  = sum_m sum_t M_m,t(p_a, p_b) v_m,t(p_c)                    (T_sigma components per mode)
    features K(p) = B [M_m,t(p_a, p_b) v_m,t(p_c)] over m and t               (B: [C, 3 T_app], no bias)

and then, as for the dense grid, sigma = softplus(D + shift) * density_scale, rgb = MLP([K, gamma(d)]).
A lattice of X Y Z vertices costs (X Y + X Z + Y Z + X + Y + Z) T values per field instead of X Y Z C: a
300^3 lattice fits in the memory of a 160^3 dense one. Each lookup reads 3 x (4 + 2) rows of T values.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .voxel_grid import GridField, lattice_vertices, multilinear, total_variation

# (plane axis a, plane axis b, line axis c) of the three modes
MODES = ((0, 1, 2), (0, 2, 1), (1, 2, 0))


def vm_products(planes, lines, aabb: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plane x line products of every mode m and component t at grid coordinates x [P, 3]:
    ([M_m,t(x_a, x_b) v_m,t(x_c)] over (m, t) [P, 3 T], inside the box [P] bool); planes [N_a, N_b, T] and
    lines [N_c, T] per mode span the box aabb [6]. `inside` is the lookups' own (the first mode's plane and
    line cover the three axes), decided as the dense grid's."""
    products, inside = [], None
    for (a, b, c), plane, line in zip(MODES, planes, lines):
        ab = slice(a, b + 1, b - a)  # the plane's two axes as a view (no index tensor per call)
        m, in_plane = multilinear(plane, aabb[:3][ab], aabb[3:][ab], x[:, ab])  # [P, T]
        v, in_line = multilinear(line, aabb[c:c + 1], aabb[3 + c:4 + c], x[:, c:c + 1])  # [P, T]
        products.append(m * v)
        if inside is None:
            inside = in_plane & in_line
    return torch.cat(products, dim=-1), inside  # [P, 3 T], [P]


class TensorVMModel(GridField):
    """Density and appearance as sums of plane x line products (see the module docstring), with a basis
    matrix to the colour MLP's features. Factors start at init_scale x N(0, 1) (TensoRF: 0.1)."""

    def __init__(self, aabb, resolution: tuple[int, int, int], density_components: int = 16,
                 appearance_components: int = 48, feature_dim: int = 27, hidden_size: int = 64, num_layers: int = 2,
                 num_encoding_fn_dir: int = 4, shift: float = 0.0, step_ratio: float = 0.5,
                 contraction: Optional[str] = None, density_scale: float = 1.0, init_scale: float = 0.1):
        super().__init__(aabb, feature_dim, hidden_size, num_layers, num_encoding_fn_dir, shift, step_ratio,
                         contraction, density_scale)
        self.density_planes, self.density_lines = _factors(resolution, density_components, init_scale)
        self.appearance_planes, self.appearance_lines = _factors(resolution, appearance_components, init_scale)
        self.basis = nn.Linear(3 * appearance_components, feature_dim, bias=False)

    @property
    def resolution(self) -> tuple[int, int, int]:
        xy, xz = self.density_planes[0], self.density_planes[1]
        return xy.shape[0], xy.shape[1], xz.shape[1]

    def grid_parameters(self) -> list[nn.Parameter]:
        return [*self.density_planes, *self.density_lines, *self.appearance_planes, *self.appearance_lines]

    def grid_rows(self) -> list[int]:
        return [p.numel() // p.shape[-1] for p in self.grid_parameters()]  # planes N_a N_b, lines N_c rows of T

    def network_parameters(self) -> list[nn.Parameter]:
        return [*self.basis.parameters(), *super().network_parameters()]

    def raw_density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        products, inside = vm_products(self.density_planes, self.density_lines, self.aabb, x)
        return products.sum(dim=-1), inside

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.basis(vm_products(self.appearance_planes, self.appearance_lines, self.aabb, x)[0])  # [P, C]

    def total_variation(self) -> torch.Tensor:
        """TV of the density factors: of each plane over its two axes and each line over its one."""
        return (sum(total_variation(plane, 2) for plane in self.density_planes)
                + sum(total_variation(line, 1) for line in self.density_lines))

    def feature_total_variation(self) -> torch.Tensor:
        """TV of the appearance factors, as total_variation for the density's."""
        return (sum(total_variation(plane, 2) for plane in self.appearance_planes)
                + sum(total_variation(line, 1) for line in self.appearance_lines))

    @torch.no_grad()
    def resample(self, resolution: tuple[int, int, int], aabb: Optional[torch.Tensor] = None) -> None:
        """Replace the factors by ones of `resolution` vertices over `aabb` (default: the current box), each
        vertex interpolated from the old factors (bilinearly on the planes, linearly on the lines: TensoRF's
        upsampling; its shrink crops whole voxels instead). A new box reaching outside the old one repeats the
        old factors' edge values there, where the dense grid resamples to empty space (training only shrinks
        the box). New parameters: rebuild the optimizer."""
        aabb = (self.aabb if aabb is None else aabb.to(self.aabb)).clone()
        lo, hi = self.aabb[:3], self.aabb[3:]
        for planes, lines in ((self.density_planes, self.density_lines),
                              (self.appearance_planes, self.appearance_lines)):
            for k, (a, b, c) in enumerate(MODES):
                ab = slice(a, b + 1, b - a)
                plane, _ = multilinear(planes[k], lo[ab], hi[ab],
                                       lattice_vertices((resolution[a], resolution[b]), aabb, (a, b)))
                line, _ = multilinear(lines[k], lo[c:c + 1], hi[c:c + 1], lattice_vertices((resolution[c],), aabb, (c,)))
                planes[k] = nn.Parameter(plane.reshape(resolution[a], resolution[b], -1))  # [N_a, N_b, T]
                lines[k] = nn.Parameter(line.reshape(resolution[c], -1))  # [N_c, T]
        self.aabb.copy_(aabb)

    def resize_like(self, state: dict) -> None:
        """Give the factors the shapes stored in a state dict (a checkpoint of a grown model) before loading it."""
        for name in ("density_planes", "density_lines", "appearance_planes", "appearance_lines"):
            factors = getattr(self, name)
            for k in range(len(factors)):
                stored = state.get(f"{name}.{k}")
                if stored is not None and stored.shape[:-1] != factors[k].shape[:-1]:
                    # the lattice axes only: a different component count stays a load error
                    shape = (*stored.shape[:-1], factors[k].shape[-1])
                    factors[k] = nn.Parameter(torch.zeros(shape, device=self.aabb.device))


def _factors(resolution: tuple[int, int, int], components: int,
             init_scale: float) -> tuple[nn.ParameterList, nn.ParameterList]:
    """The planes [N_a, N_b, T] and lines [N_c, T] of the three modes, init_scale x N(0, 1)."""
    planes = [nn.Parameter(init_scale * torch.randn(resolution[a], resolution[b], components)) for a, b, _ in MODES]
    lines = [nn.Parameter(init_scale * torch.randn(resolution[c], components)) for _, _, c in MODES]
    return nn.ParameterList(planes), nn.ParameterList(lines)
