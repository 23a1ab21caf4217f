"""The fast field: dense voxel grids and a small colour network (DVGO, Sun et al. 2022), in pure PyTorch.

Shape legend (as elsewhere): P points, C feature channels, X/Y/Z grid vertices per axis, N = X Y Z,
A lattice axes (3 for a grid, 2 for a plane, 1 for a line), Q = 2^A corners of a lattice cell.

A density grid D [X, Y, Z] and a feature grid K [X, Y, Z, C] hold values at the vertices of a regular
lattice over the box `aabb` (the first and last vertices lie on the box faces). At a point p,

    sigma(p) = softplus(trilinear(D, p) + shift) * density_scale
    rgb(p, d) = sigmoid(MLP([trilinear(K, p), gamma(d)]))

with gamma the positional encoding of the view direction. Points outside the box have sigma = 0. `shift`
makes a fresh grid (D = 0) start with the opacity alpha_init per marching step (DVGO's activation shift);
the presets start from a thin fog (1e-2) that training carves away. `density_scale` is the unit of the
grid's density: 1 (per world unit), or DVGO's 1 / (edge of a final voxel), so that an opaque step needs a
raw density of about 10 instead of about 10 / step (hundreds), which Adam, moving each value by about the
learning rate per step, reaches in tens of steps instead of thousands.

Coarse-to-fine: `resample` moves the grids to a new resolution and/or box by trilinear interpolation of
the old ones; training grows the grid at `voxel_grid.grow_steps` and, at the first growth, shrinks the box
to the occupancy cells where training rays put weight (train_nerf.py), so that the voxels are spent on the
content.

For an unbounded scene (`contraction`, nerf/contraction.py) the grids span the contracted space [-2, 2]^3:
a point is contracted before it is looked up, so the last voxels hold everything out to infinity.

`GridField` is what every grid field shares (the box, the density activation, the marching step, the colour
MLP); `VoxelGridModel` stores D and K densely, `nerf/tensor_vm.py` factorises them (TensoRF).
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .contraction import contract
from .encoding import encoding_width, positional_encoding


@functools.lru_cache(maxsize=32)
def _lattice_constants(shape: tuple[int, ...], device: torch.device,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last vertex per axis = vertices - 1 [A], last cell = vertices - 2 [A], both in the points' dtype,
    row-major strides [A] long, the row offset of each corner [Q] long) on device, made once: no copy or
    arithmetic per call (each a kernel launch on a GPU). Corner q = (c_0, ..., c_A-1) in itertools.product
    order (the first axis slowest) is offset sum_a c_a stride_a from the cell's lower corner."""
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    corners = torch.tensor(list(itertools.product((0, 1), repeat=len(shape))))  # [Q, A]
    offsets = (corners * torch.tensor(strides)).sum(dim=-1)  # [Q]
    vertices = torch.tensor(shape)
    return ((vertices - 1).to(device=device, dtype=dtype), (vertices - 2).to(device=device, dtype=dtype),
            torch.tensor(strides, device=device), offsets.to(device))


def grid_shape(aabb: torch.Tensor, num_voxels: int, aspect=(1.0, 1.0, 1.0)) -> tuple[int, int, int]:
    """Vertices per axis for about num_voxels voxels of edges proportional to aspect (at least 2 per axis):
    edge_a = e aspect_a with e^3 prod(aspect) = box_volume / num_voxels."""
    size = (aabb[3:] - aabb[:3]).double().cpu()
    aspect = torch.as_tensor(aspect, dtype=torch.float64)
    edge = (size.prod() / (num_voxels * aspect.prod())) ** (1.0 / 3.0) * aspect  # [3]
    return tuple(max(2, int(math.floor(s / e)) + 1) for s, e in zip(size.tolist(), edge.tolist()))


def voxel_edge(aabb: torch.Tensor, resolution: tuple[int, int, int]) -> float:
    """Edge of a voxel of a grid of `resolution` vertices over `aabb`: the largest of the three axes' vertex
    spacings."""
    spacing = (aabb[3:] - aabb[:3]) / (torch.tensor(resolution, device=aabb.device) - 1)
    return float(spacing.max())


def gathered_sum(rows: torch.Tensor, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_q w[p, q] rows[flat[p, q]]: rows [N, C], flat and w [P, Q] -> [P, C], as plain operations
    (a gather into [P, Q, C] and a weighted sum) that autograd and the compiler see through."""
    gathered = rows.index_select(0, flat.reshape(-1)).reshape(*flat.shape, rows.shape[-1])  # [P, Q, C]
    return (gathered * w[..., None]).sum(dim=1)  # [P, C]


def corner_sum(rows: torch.Tensor, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """gathered_sum without gradients. On the CPU one kernel (F.embedding_bag, "sum" mode with per-sample
    weights: bags of the Q corners), no [P, Q, C] temporaries; elsewhere, or where rows and w differ in dtype
    (the product then promotes), gathered_sum: CUDA's embedding_bag kernel spreads the C channels over the
    threads of a block, which for the 1 to 12 channels of a grid is unmeasured."""
    if rows.device.type == "cpu" and rows.dtype == w.dtype:
        return F.embedding_bag(flat, rows, per_sample_weights=w, mode="sum")  # [P, C]
    return gathered_sum(rows, flat, w)


def flag_gradient_rows(grid: torch.Tensor, flat: torch.Tensor) -> None:
    """Mark the rows flat (any shape) of grid as reached, in grid.gradient_rows [N] where optimizer.MaskedAdam
    made it: the rows its next step updates."""
    rows = getattr(grid, "gradient_rows", None)
    if rows is not None:
        rows.index_fill_(0, flat.reshape(-1), True)


class _Interpolate(torch.autograd.Function):
    """out[p] = sum_q w[p, q] rows[flat[p, q]] with rows = grid.reshape(N, C), for a grid Parameter
    (corner_sum). The backward adds w[p, q] grad_out[p] into the rows flat[p, q] of grid.grad in place
    (index_add_) instead of returning a fresh dense [N, C] gradient, and flags those rows in
    grid.gradient_rows where masked Adam made one.

    A grid of millions of values then costs no new allocation (and page faults) per step: with
    `zero_grad(set_to_none=False)` its .grad buffer is reused. For `loss.backward()` only: it does not
    support torch.autograd.grad, create_graph, gradient hooks on the grid or a gradient of the weights w
    (multilinear routes those cases elsewhere; training uses none of them).
    """

    @staticmethod
    def forward(ctx, grid: torch.Tensor, rows: torch.Tensor, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """grid: the Parameter (its .grad receives the gradient); rows: grid's values as [N, C], detached."""
        ctx.save_for_backward(flat, w)
        ctx.grid = grid
        return corner_sum(rows, flat, w)  # [P, C]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat, w = ctx.saved_tensors
        grid = ctx.grid
        if grid.grad is None:
            grid.grad = torch.zeros_like(grid)
        channels = grad_out.shape[-1]
        contributions = (grad_out[:, None, :] * w[..., None]).reshape(-1, channels)  # [P Q, C]
        grid.grad.view(-1, channels).index_add_(0, flat.reshape(-1), contributions.to(grid.dtype))
        flag_gradient_rows(grid, flat)
        return None, None, None, None


def multilinear(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multilinear interpolation of lattice values at points (A = 1: linear, 2: bilinear, 3: trilinear).

    values: [*L] or [*L, C] with L the A lattice axes; lo, hi: [A] the box whose faces hold the first and
    last vertices; points: [P, A] -> (out [P] or [P, C], inside [P] bool).
    With u = (p - lo) / (hi - lo) * (res - 1), i = floor(u) and f = u - i (per axis),
    out = sum over corners c in {0, 1}^A of values[i + c] * prod_axis (f if c = 1 else 1 - f).
    Points outside the box are clamped onto it (and flagged in `inside`). Gradients reach the Q corner
    vertices of each point (scatter-added; for a grid Parameter directly into its .grad, see _Interpolate).
    """
    ndim, num_points = points.shape[-1], points.shape[0]
    last, last_cell, strides, corner_offsets = _lattice_constants(tuple(values.shape[:ndim]), points.device,
                                                                  torch.promote_types(points.dtype, lo.dtype))
    u = (points - lo) / (hi - lo) * last  # [P, A] in vertex units
    inside = ((u >= 0) & (u <= last)).all(dim=-1)
    u = torch.minimum(u.clamp(min=0), last)
    base = torch.minimum(u.floor(), last_cell)  # [P, A] lower corner, so that base + 1 exists
    frac = u - base  # [P, A] in [0, 1]
    flat = (base.long() * strides).sum(dim=-1)[:, None] + corner_offsets  # [P, Q] row-major vertex numbers
    # w[p, q] = prod_axis (f if c = 1 else 1 - f), built axis by axis as outer products (corner order as above)
    w = torch.stack((1.0 - frac[:, 0], frac[:, 0]), dim=-1)  # [P, 2]
    for axis in range(1, ndim):
        pair = torch.stack((1.0 - frac[:, axis], frac[:, axis]), dim=-1)  # [P, 2]
        w = (w[:, :, None] * pair[:, None, :]).reshape(num_points, 2 ** (axis + 1))  # [P, 2^(axis+1)]
    channels = values.shape[ndim:]
    rows = values.reshape(math.prod(values.shape[:ndim]), -1)  # [N, C] (C = 1 for a lattice of scalars)
    needs_grad = torch.is_grad_enabled() and (values.requires_grad or w.requires_grad)
    compiling = torch.compiler.is_compiling()
    if needs_grad and isinstance(values, nn.Parameter) and not w.requires_grad and not compiling:
        out = _Interpolate.apply(values, rows.detach(), flat, w)  # [P, C], gradient into values.grad
    elif needs_grad or compiling:
        # compiled graphs get plain ops to fuse; autograd through them for a computed lattice or for points
        # that need a gradient
        out = gathered_sum(rows, flat, w)  # [P, C]
        if needs_grad and values.requires_grad and not compiling:
            flag_gradient_rows(values, flat)
    else:
        out = corner_sum(rows, flat, w)  # [P, C]
    return out.reshape(num_points, *channels), inside


def trilinear(values: torch.Tensor, aabb: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """multilinear over a grid: values [X, Y, Z] or [X, Y, Z, C]; aabb: [6]; points: [P, 3]
    -> (out [P] or [P, C], inside [P] bool)."""
    return multilinear(values, aabb[:3], aabb[3:], points)


def lattice_vertices(resolution: tuple[int, ...], aabb: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """The vertex coordinates [N', A] of a lattice of `resolution` vertices over the box `aabb` [6] along its
    `axes` (A of them), in row-major order (the last axis fastest, as values.reshape(-1))."""
    lines = [torch.linspace(float(aabb[a]), float(aabb[3 + a]), n, device=aabb.device) for a, n in zip(axes, resolution)]
    return torch.stack(torch.meshgrid(*lines, indexing="ij"), dim=-1).reshape(-1, len(axes))  # [N', A]


def density_shift(alpha_init: float, step_size: float) -> float:
    """The shift s with 1 - exp(-softplus(s) * step_size) = alpha_init: the opacity of one step at D = 0."""
    sigma = -math.log1p(-alpha_init) / step_size
    return math.log(math.expm1(sigma))


def total_variation(grid: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """TV = sum over the first ndim axes a of mean(D_a^2), D_a = diff(grid, a): the mean squared difference
    between neighbouring vertices along each axis, summed over those axes.

    For a grid Parameter the gradient goes straight into grid.grad (see _TotalVariation): a dense grid of
    tens of millions of values then costs no autograd temporaries of its size."""
    if isinstance(grid, nn.Parameter) and grid.requires_grad and torch.is_grad_enabled():
        return _TotalVariation.apply(grid, ndim)
    return sum(torch.diff(grid, dim=axis).pow(2).mean() for axis in range(ndim))


class _TotalVariation(torch.autograd.Function):
    """total_variation of a grid Parameter, whose backward adds g dTV/dgrid into grid.grad in place:
    with D_a = diff(grid, a) of n_a values, dTV/dgrid = sum_a 2 / n_a (D_a on the upper vertices of each
    pair - D_a on the lower ones). For `loss.backward()` only, as _Interpolate."""

    @staticmethod
    def forward(ctx, grid: torch.Tensor, ndim: int) -> torch.Tensor:
        ctx.grid, ctx.ndim = grid, ndim
        values = grid.detach()
        return sum(torch.diff(values, dim=axis).pow_(2).mean() for axis in range(ndim))

    @staticmethod
    def backward(ctx, grad_tv: torch.Tensor):
        grid, values = ctx.grid, ctx.grid.detach()
        if grid.grad is None:
            grid.grad = torch.zeros_like(grid)
        scale = float(grad_tv)  # one host sync per step on a GPU
        for axis in range(ctx.ndim):
            steps = torch.diff(values, dim=axis)  # recomputed: keeping one per axis would double the memory
            length = values.shape[axis] - 1
            grid.grad.narrow(axis, 1, length).add_(steps, alpha=2.0 * scale / steps.numel())
            grid.grad.narrow(axis, 0, length).sub_(steps, alpha=2.0 * scale / steps.numel())
        return None, None


class GridField(nn.Module, abc.ABC):
    """What the grid fields share: the box `aabb` (of the contracted space with a `contraction`, "l2" or
    "inf"), sigma = softplus(raw density + shift) * density_scale (0 outside the box), the marching step of
    step_ratio voxels, and rgb from the colour MLP over [looked-up features, gamma(d)].

    A subclass stores the lattice: it defines the abstract methods below."""

    def __init__(self, aabb, feature_dim: int, hidden_size: int, num_layers: int, num_encoding_fn_dir: int,
                 shift: float, step_ratio: float, contraction: Optional[str], density_scale: float):
        super().__init__()
        self.contraction = contraction
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("density_scale", torch.tensor(float(density_scale)))
        self.register_buffer("step_ratio", torch.tensor(float(step_ratio)))
        self.num_encoding_fn_dir = num_encoding_fn_dir
        width = feature_dim + encoding_width(num_encoding_fn_dir)
        layers = []
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(inplace=True)]
            width = hidden_size
        layers.append(nn.Linear(width, 3))
        self.color_net = nn.Sequential(*layers)

    @property
    @abc.abstractmethod
    def resolution(self) -> tuple[int, int, int]:
        """Vertices of the lattice per axis (X, Y, Z)."""

    @abc.abstractmethod
    def grid_parameters(self) -> list[nn.Parameter]:
        """The lattice's parameters, trained at voxel_grid.grid_lr."""

    @abc.abstractmethod
    def grid_rows(self) -> list[int]:
        """Per grid parameter, its lattice rows: the vertices of the lattice axes its lookups interpolate
        (the rows masked Adam updates or skips)."""

    @abc.abstractmethod
    def total_variation(self) -> torch.Tensor:
        """The total-variation regulariser of the density's parameters (a scalar)."""

    @abc.abstractmethod
    def feature_total_variation(self) -> torch.Tensor:
        """The total-variation regulariser of the features' parameters (a scalar)."""

    @abc.abstractmethod
    def resample(self, resolution: tuple[int, int, int], aabb: Optional[torch.Tensor] = None) -> None:
        """Move the lattice to `resolution` vertices over `aabb` (default: the current box), interpolating the
        old values. New parameters: rebuild the optimizer."""

    @abc.abstractmethod
    def resize_like(self, state: dict) -> None:
        """Give the parameters the shapes stored in a state dict (a grown model's checkpoint) before loading it."""

    @property
    def voxel_size(self) -> float:
        """Edge of a voxel (the largest of the three axes' vertex spacings)."""
        return voxel_edge(self.aabb, self.resolution)

    @property
    def marching_step(self) -> float:
        """The step this field is rendered with: step_ratio voxels (it follows the grid as it grows)."""
        return float(self.step_ratio) * self.voxel_size

    def network_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at optimizer.lr (the rest, grid_parameters, at voxel_grid.grid_lr)."""
        return list(self.color_net.parameters())

    def grid_points(self, points: torch.Tensor) -> torch.Tensor:
        """World points [P, 3] -> the grid's coordinates [P, 3] (contracted, for an unbounded scene)."""
        return contract(points, self.contraction) if self.contraction is not None else points

    @abc.abstractmethod
    def raw_density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid coordinates [P, 3] -> (the density before its activation [P], inside the box [P] bool)."""

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Grid coordinates [P, 3] -> the colour MLP's features [P, C]."""

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> sigma: [P] = softplus(D(p) + shift) * density_scale, 0 outside the box (>= 0)."""
        d, inside = self.raw_density(self.grid_points(points))
        return torch.where(inside, F.softplus(d + self.shift) * self.density_scale, torch.zeros_like(d))

    def color(self, points: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        """points, viewdirs: [P, 3] -> rgb_raw: [P, 3] (before the sigmoid)."""
        features = self.features(self.grid_points(points))  # [P, C]
        encoded = positional_encoding(viewdirs, self.num_encoding_fn_dir)  # [P, 27]
        return self.color_net(torch.cat((features, encoded), dim=-1))

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        """points, viewdirs: [P, 3] -> raw: [P, 4] = (rgb_raw, sigma); ReLU(sigma) = sigma."""
        return torch.cat((self.color(points, viewdirs), self.density(points)[:, None]), dim=-1)


class VoxelGridModel(GridField):
    """Dense density and feature voxel grids with a small view-dependent colour MLP (see the module
    docstring)."""

    def __init__(self, aabb, resolution: tuple[int, int, int], feature_dim: int = 12, hidden_size: int = 128,
                 num_layers: int = 2, num_encoding_fn_dir: int = 4, shift: float = 0.0, step_ratio: float = 0.5,
                 contraction: Optional[str] = None, density_scale: float = 1.0):
        super().__init__(aabb, feature_dim, hidden_size, num_layers, num_encoding_fn_dir, shift, step_ratio,
                         contraction, density_scale)
        self.density_grid = nn.Parameter(torch.zeros(resolution))
        self.feature_grid = nn.Parameter(torch.zeros(*resolution, feature_dim))

    @property
    def resolution(self) -> tuple[int, int, int]:
        return tuple(self.density_grid.shape)

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.density_grid, self.feature_grid]

    def grid_rows(self) -> list[int]:
        return [self.density_grid.numel()] * 2  # one row per vertex, of 1 and of feature_dim values

    def raw_density(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return trilinear(self.density_grid, self.aabb, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return trilinear(self.feature_grid, self.aabb, x)[0]

    def total_variation(self) -> torch.Tensor:
        """TV of the density grid (the regulariser of DVGO and Plenoxels)."""
        return total_variation(self.density_grid)

    def feature_total_variation(self) -> torch.Tensor:
        """TV of the feature grid over its three lattice axes (Plenoxels' TV of its colour coefficients)."""
        return total_variation(self.feature_grid)

    @torch.no_grad()
    def resample(self, resolution: tuple[int, int, int], aabb: Optional[torch.Tensor] = None,
                 chunk: int = 1 << 18) -> None:
        """Replace the grids by ones of `resolution` vertices over `aabb` (default: the current box),
        each vertex interpolated trilinearly from the old grids. New parameters: rebuild the optimizer."""
        aabb = (self.aabb if aabb is None else aabb.to(self.aabb)).clone()
        vertices = lattice_vertices(resolution, aabb, (0, 1, 2))  # [N', 3]
        density, features = [], []
        for k in range(0, vertices.shape[0], chunk):
            d, inside = trilinear(self.density_grid, self.aabb, vertices[k:k + chunk])
            f, _ = trilinear(self.feature_grid, self.aabb, vertices[k:k + chunk])
            # outside the old box the old field was empty: keep it empty (sigma = softplus(-100 + shift) ~ 0;
            # unreachable in training, where the box only shrinks)
            density.append(torch.where(inside, d, torch.full_like(d, -100.0)))
            features.append(f)
        self.density_grid = nn.Parameter(torch.cat(density).reshape(resolution))
        self.feature_grid = nn.Parameter(torch.cat(features).reshape(*resolution, -1))
        self.aabb.copy_(aabb)

    @torch.no_grad()
    def restart(self, content: torch.Tensor) -> None:
        """DVGO's fine stage after its coarse one: fresh grids on the same lattice, fog (raw density 0, so
        alpha_init per marching step) at the vertices where content [X, Y, Z] bool is true and empty (-100)
        elsewhere, zero features, a freshly initialised colour MLP. New parameters: rebuild the optimizer."""
        self.density_grid = nn.Parameter(torch.where(content, 0.0, -100.0).to(self.density_grid))
        self.feature_grid = nn.Parameter(torch.zeros_like(self.feature_grid))
        for layer in self.color_net:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def resize_like(self, state: dict) -> None:
        """Give the grids the shapes stored in a state dict (a checkpoint of a grown model) before loading it;
        a state saved before density_scale existed gets its unit, 1."""
        state.setdefault("density_scale", torch.tensor(1.0))
        shape = state.get("density_grid")
        if shape is not None and tuple(shape.shape) != self.resolution and shape.dim() == 3:
            self.density_grid = nn.Parameter(torch.zeros(shape.shape, device=self.aabb.device))
            channels = state["feature_grid"].shape[-1] if "feature_grid" in state else self.feature_grid.shape[-1]
            self.feature_grid = nn.Parameter(torch.zeros(*shape.shape, channels, device=self.aabb.device))


def voxels_after_growth(num_voxels_start: int, num_voxels: int, num_growths: int, k: int) -> int:
    """Voxel count after the k-th of num_growths growths (k = 0: the start): geometric from start to final,
    num_voxels_start * (num_voxels / num_voxels_start)^(k / num_growths); num_voxels when nothing grows."""
    if num_growths == 0:
        return num_voxels
    return round(num_voxels_start * (num_voxels / num_voxels_start) ** (k / num_growths))


def grown_box(box: torch.Tensor, occupied_box: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The box [6] shrunk to occupied_box widened by margin [3] on each side (never larger than box);
    box itself when nothing is occupied."""
    if not bool((occupied_box[3:] > occupied_box[:3]).all()):
        return box
    return torch.cat((torch.maximum(occupied_box[:3] - margin, box[:3]), torch.minimum(occupied_box[3:] + margin, box[3:])))


def grow(model: GridField, grow_steps: list[int], num_voxels_start: int, num_voxels: int, step: int,
         shrink_to: Optional[torch.Tensor] = None, aspect=(1.0, 1.0, 1.0)) -> bool:
    """Coarse-to-fine: at a step of grow_steps, resample the grids to the next voxel count (and, at the first
    growth, onto the box `shrink_to` when given). True when the grids changed (rebuild the optimizer)."""
    if step not in grow_steps:
        return False
    k = grow_steps.index(step) + 1
    box = shrink_to if (k == 1 and shrink_to is not None) else model.aabb
    model.resample(grid_shape(box, voxels_after_growth(num_voxels_start, num_voxels, len(grow_steps), k), aspect), box)
    return True
