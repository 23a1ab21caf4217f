"""Radiance-field MLPs: the paper's 8x256 model, a flexible variant, a tiny one, and a compatibility
model for krrish94/nerf-pytorch checkpoints. `build_model` also builds the fast voxel-grid field
(nerf/voxel_grid.py).

Every model maps sample positions and unit view directions to raw outputs
`raw: [P, 4] = [rgb_raw (3), sigma_raw (1)]`; the activations (sigmoid, ReLU) belong to the renderer,
as in the official code. Each model owns its positional encodings, so coarse and fine models may use
different encodings.

Module names follow the official/yenchenlin layout (`pts_linears`, `views_linears`, `feature_linear`,
`alpha_linear`, `rgb_linear`, `output_linear`) so that their checkpoints map onto ours by name.
Initialisation is the official Keras one: glorot-uniform weights, zero biases.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, VoxelGridConfig
from .encoding import encoding_width, positional_encoding
from .occupancy import BLENDER_AABB
from .tensor_vm import TensorVMModel
from .voxel_grid import VoxelGridModel, density_shift, grid_shape, voxel_edge, voxels_after_growth


def _linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def linear_of_concat(layer: nn.Linear, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """layer([first, second]) = W_1 first + W_2 second + b, with W = [W_1 | W_2]: [P, A], [P, B] -> [P, out].

    The same function as concatenating first (the concatenation is never built: under bf16 autocast
    it mixed an fp32 encoding with bf16 activations, promoted to fp32 and was cast back, per chunk),
    and autograd computes an input gradient only for the part that needs one (not for an encoding),
    with no odd-width product (319 or 283 columns) in the backward pass. Sums in a different order
    than one product over the concatenation: equal to ~1e-7 relative, not bit for bit.
    """
    width = first.shape[-1]
    return torch.addmm(F.linear(second, layer.weight[:, width:], layer.bias), first, layer.weight[:, :width].t())


class EncodedField(nn.Module):
    """Base of the models: the positional-encoding settings of the position and direction inputs."""

    def __init__(self, num_encoding_fn_xyz: int, num_encoding_fn_dir: int, include_input_xyz: bool,
                 include_input_dir: bool, log_sampling_xyz: bool, log_sampling_dir: bool, use_viewdirs: bool):
        super().__init__()
        self.encoding_xyz = dict(num_freqs=num_encoding_fn_xyz, include_input=include_input_xyz,
                                 log_sampling=log_sampling_xyz)
        self.encoding_dir = dict(num_freqs=num_encoding_fn_dir, include_input=include_input_dir,
                                 log_sampling=log_sampling_dir)
        self.use_viewdirs = use_viewdirs
        self.xyz_width = encoding_width(num_encoding_fn_xyz, include_input_xyz)
        self.dir_width = encoding_width(num_encoding_fn_dir, include_input_dir)


class NeRFModel(EncodedField):
    """The NeRF MLP (paper: Mildenhall et al. 2020, Fig. 7; official run_nerf_helpers.init_nerf_model).

    h_0 = gamma(x); h_{k+1} = ReLU(L_k(h_k)); after the ReLU of each skip layer, h <- [gamma(x), h]
    (applied as linear_of_concat: the next layer's weight split by columns, no concatenation).
    With view directions: sigma_raw = L_alpha(h), feature = L_feat(h) (no activation),
    rgb_raw = L_rgb(ReLU(L_view([feature, gamma(d)]))). Without: [rgb_raw, sigma_raw] = L_out(h).
    """

    def __init__(self, num_layers: int = 8, hidden_size: int = 256, skip_connect_every: int = 4,
                 hidden_size_dir: int = 128, num_encoding_fn_xyz: int = 10, num_encoding_fn_dir: int = 4,
                 include_input_xyz: bool = True, include_input_dir: bool = True,
                 log_sampling_xyz: bool = True, log_sampling_dir: bool = True, use_viewdirs: bool = True,
                 layer_widths: Optional[Sequence[int]] = None):
        super().__init__(num_encoding_fn_xyz, num_encoding_fn_dir, include_input_xyz, include_input_dir,
                         log_sampling_xyz, log_sampling_dir, use_viewdirs)
        # A skip after the last layer would feed nothing, so only interior layers qualify.
        self.skips = tuple(i for i in range(1, num_layers - 1)
                           if skip_connect_every > 0 and i % skip_connect_every == 0)
        widths = list(layer_widths) if layer_widths is not None else [hidden_size] * num_layers  # pruned: smaller
        widths_in = [self.xyz_width] + [widths[i - 1] + (self.xyz_width if i - 1 in self.skips else 0)
                                        for i in range(1, num_layers)]
        self.pts_linears = nn.ModuleList(_linear(w_in, w_out) for w_in, w_out in zip(widths_in, widths))
        if use_viewdirs:
            # registration order = yenchenlin's, so its optimizer state maps onto ours index by index
            self.views_linears = nn.ModuleList([_linear(hidden_size + self.dir_width, hidden_size_dir)])
            self.feature_linear = _linear(widths[-1], hidden_size)
            self.alpha_linear = _linear(widths[-1], 1)
            self.rgb_linear = _linear(hidden_size_dir, 3)
        else:
            self.output_linear = _linear(widths[-1], 4)

    def trunk(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> the last trunk activation h: [P, W]."""
        x = positional_encoding(points, **self.encoding_xyz)  # [P, Ex]
        h = x
        for i, layer in enumerate(self.pts_linears):
            # [gamma(x), h] after a skip layer: points first, as in the official code
            h = linear_of_concat(layer, x, h) if i - 1 in self.skips else layer(h)
            h = torch.relu_(h)  # in place: the fresh layer output is not kept for backward
        return h

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> sigma_raw: [P], without the view branch (the occupancy grid's query)."""
        h = self.trunk(points)
        return (self.alpha_linear(h) if self.use_viewdirs else self.output_linear(h)[:, 3:])[:, 0]

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        """points: [P, 3], viewdirs: [P, 3] unit vectors (or None without viewdirs) -> raw: [P, 4]."""
        h = self.trunk(points)
        if not self.use_viewdirs:
            return self.output_linear(h)
        sigma_raw = self.alpha_linear(h)  # [P, 1]
        feature = self.feature_linear(h)
        d = positional_encoding(viewdirs, **self.encoding_dir)  # [P, Ed]
        h = torch.relu_(linear_of_concat(self.views_linears[0], feature, d))  # [feature, gamma(d)]
        return torch.cat((self.rgb_linear(h), sigma_raw), dim=-1)  # [P, 4]


class TinyNeRFModel(EncodedField):
    """A small MLP for quick experiments: raw = L_out(MLP([gamma(x), gamma(d)])), with optional skips.

    The view direction (when used) enters at the input; there is no separate density or view head.
    """

    def __init__(self, num_layers: int = 2, hidden_size: int = 128, skip_connect_every: int = 0,
                 num_encoding_fn_xyz: int = 6, num_encoding_fn_dir: int = 4, include_input_xyz: bool = True,
                 include_input_dir: bool = True, log_sampling_xyz: bool = True, log_sampling_dir: bool = True,
                 use_viewdirs: bool = True):
        super().__init__(num_encoding_fn_xyz, num_encoding_fn_dir, include_input_xyz, include_input_dir,
                         log_sampling_xyz, log_sampling_dir, use_viewdirs)
        in_width = self.xyz_width + (self.dir_width if use_viewdirs else 0)
        self.skips = tuple(i for i in range(1, num_layers - 1)
                           if skip_connect_every > 0 and i % skip_connect_every == 0)
        widths_in = [in_width] + [hidden_size + (in_width if i - 1 in self.skips else 0)
                                  for i in range(1, num_layers)]
        self.pts_linears = nn.ModuleList(_linear(w, hidden_size) for w in widths_in)
        self.output_linear = _linear(hidden_size, 4)

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        """points: [P, 3], viewdirs: [P, 3] or None -> raw: [P, 4]."""
        x = positional_encoding(points, **self.encoding_xyz)
        if self.use_viewdirs:
            x = torch.cat((x, positional_encoding(viewdirs, **self.encoding_dir)), dim=-1)  # [P, Ex + Ed]
        h = x
        for i, layer in enumerate(self.pts_linears):
            h = torch.relu_(layer(h))  # in place: the fresh layer output is not kept for backward
            if i in self.skips:
                h = torch.cat((x, h), dim=-1)
        return self.output_linear(h)


class Krrish94NeRFModel(EncodedField):
    """Compatibility model: what krrish94/nerf-pytorch's FlexibleNeRFModel computes, quirks included, so
    that its checkpoints render as they did there. Not the paper model:

    h = L_1(gamma(x)) (no ReLU); h = ReLU(L_xyz_k(h)) for k < num_layers - 1 (its skip branch crashes
    when reached, krrish94#40, so working checkpoints have none); sigma_raw = L_alpha(h);
    feature = ReLU(L_feat(h)); rgb_raw = L_rgb(ReLU(L_dir([feature, gamma(d)]))). Without viewdirs:
    raw = L_out(h). Module names match its state dicts (layer1, layers_xyz.N, fc_feat, fc_alpha,
    layers_dir.0, fc_rgb, fc_out).
    """

    def __init__(self, num_layers: int = 4, hidden_size: int = 128, hidden_size_dir: int = 64,
                 num_encoding_fn_xyz: int = 6, num_encoding_fn_dir: int = 4, include_input_xyz: bool = True,
                 include_input_dir: bool = True, log_sampling_xyz: bool = True, log_sampling_dir: bool = True,
                 use_viewdirs: bool = True):
        super().__init__(num_encoding_fn_xyz, num_encoding_fn_dir, include_input_xyz, include_input_dir,
                         log_sampling_xyz, log_sampling_dir, use_viewdirs)
        self.layer1 = nn.Linear(self.xyz_width, hidden_size)
        self.layers_xyz = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers - 1))
        if use_viewdirs:
            self.layers_dir = nn.ModuleList([nn.Linear(hidden_size + self.dir_width, hidden_size_dir)])
            self.fc_alpha = nn.Linear(hidden_size, 1)
            self.fc_rgb = nn.Linear(hidden_size_dir, 3)
            self.fc_feat = nn.Linear(hidden_size, hidden_size)
        else:
            self.fc_out = nn.Linear(hidden_size, 4)

    def trunk(self, points: torch.Tensor) -> torch.Tensor:
        h = self.layer1(positional_encoding(points, **self.encoding_xyz))  # no ReLU here (a quirk)
        for layer in self.layers_xyz:
            h = torch.relu_(layer(h))  # in place: the fresh layer output is not kept for backward
        return h

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] -> sigma_raw: [P], without the view branch."""
        h = self.trunk(points)
        return (self.fc_alpha(h) if self.use_viewdirs else self.fc_out(h)[:, 3:])[:, 0]

    def forward(self, points: torch.Tensor, viewdirs: Optional[torch.Tensor]) -> torch.Tensor:
        """points: [P, 3], viewdirs: [P, 3] or None -> raw: [P, 4]."""
        h = self.trunk(points)
        if not self.use_viewdirs:
            return self.fc_out(h)
        feature = torch.relu(self.fc_feat(h))  # a ReLU on the bottleneck (a quirk)
        sigma_raw = self.fc_alpha(h)
        h = torch.cat((feature, positional_encoding(viewdirs, **self.encoding_dir)), dim=-1)
        h = torch.relu_(self.layers_dir[0](h))
        return torch.cat((self.fc_rgb(h), sigma_raw), dim=-1)


def build_model(m: ModelConfig, voxel_grid: Optional[VoxelGridConfig] = None, aabb=None,
                contraction: Optional[str] = None) -> nn.Module:
    """Instantiate the model a `models.coarse` / `models.fine` config section describes.

    A VoxelGridModel takes its settings from `voxel_grid` (the config's voxel_grid: section; with
    `representation: vm` the grids are TensoRF's factors, a TensorVMModel) and starts
    with num_voxels_start voxels (num_voxels when nothing grows) over `aabb` (default: the Blender box +-1.5)
    and the density shift for marching steps of step_ratio voxels; a checkpoint's state dict replaces all
    three (see resize_like). With a `contraction` (occupancy.contraction) `aabb` is in the contracted space.
    """
    if m.type == "VoxelGridModel":
        v = voxel_grid if voxel_grid is not None else VoxelGridConfig()
        box = torch.as_tensor(aabb if aabb is not None else BLENDER_AABB,
                              dtype=torch.float32).cpu()  # the model is built on the CPU, then moved
        start = voxels_after_growth(v.num_voxels_start, v.num_voxels, len(v.grow_steps), 0)
        scale = 1.0
        if v.density_unit == "voxel":  # DVGO: per edge of a voxel of the final grid over the starting box
            scale = 1.0 / voxel_edge(box, grid_shape(box, v.num_voxels, v.aspect))
        shape = grid_shape(box, start, v.aspect)
        grid_field_args = dict(feature_dim=v.feature_dim, hidden_size=v.hidden_size, num_layers=v.num_layers,
                               num_encoding_fn_dir=v.num_encoding_fn_dir, step_ratio=v.step_ratio,
                               contraction=contraction, density_scale=scale)
        if v.representation == "vm":
            model = TensorVMModel(box, shape, v.density_components, v.appearance_components, **grid_field_args)
        else:
            model = VoxelGridModel(box, shape, **grid_field_args)
        model.shift.fill_(density_shift(v.alpha_init, model.marching_step * scale))
        return model
    common = dict(num_layers=m.num_layers, hidden_size=m.hidden_size, skip_connect_every=m.skip_connect_every,
                  num_encoding_fn_xyz=m.num_encoding_fn_xyz, num_encoding_fn_dir=m.num_encoding_fn_dir,
                  include_input_xyz=m.include_input_xyz, include_input_dir=m.include_input_dir,
                  log_sampling_xyz=m.log_sampling_xyz, log_sampling_dir=m.log_sampling_dir,
                  use_viewdirs=m.use_viewdirs)
    if m.type in ("PaperNeRFModel", "FlexibleNeRFModel"):
        # PaperNeRFModel is the same network with its sizes pinned by config validation.
        return NeRFModel(hidden_size_dir=m.hidden_size_dir, layer_widths=m.layer_widths, **common)
    if m.type == "TinyNeRFModel":
        return TinyNeRFModel(**common)
    if m.type == "Krrish94NeRFModel":
        del common["skip_connect_every"]  # validation guarantees no skip is reached
        return Krrish94NeRFModel(hidden_size_dir=m.hidden_size_dir, **common)
    raise ValueError(f"unknown model type {m.type!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
