"""Semantic validation of a config: value ranges and cross-key consistency, one function per section.

Every failure is a ConfigError that names the source (file, and whether --set overrides were applied),
the dotted key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..contraction import CONTRACTED_AABB, CONTRACTIONS
from ..files import stays_below
from .schema import (DATASET_TYPES, MODEL_TYPES, PRECISIONS, Config, ConfigError, DatasetConfig, ModelConfig,
                     RenderConfig, VoxelGridConfig)


def _require(ok: bool, source: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{source}: key '{key}' expects {expected}, got {value!r}")


def validate_model(m: ModelConfig, key: str, source: str) -> None:
    _require(m.type in MODEL_TYPES, source, f"{key}.type", "one of " + ", ".join(MODEL_TYPES), m.type)
    if m.type == "VoxelGridModel":  # its settings are the voxel_grid: section; an MLP key would be ignored
        defaults = ModelConfig(type=m.type)
        for f in dataclasses.fields(ModelConfig):
            value = getattr(m, f.name)
            _require(value == getattr(defaults, f.name), source, f"{key}.{f.name}",
                     "to be left unset for VoxelGridModel (its settings are the voxel_grid: section)", value)
        return
    _require(m.num_layers >= 1, source, f"{key}.num_layers", "an integer >= 1", m.num_layers)
    _require(m.hidden_size >= 1, source, f"{key}.hidden_size", "an integer >= 1", m.hidden_size)
    _require(m.hidden_size_dir >= 1, source, f"{key}.hidden_size_dir", "an integer >= 1", m.hidden_size_dir)
    _require(m.skip_connect_every >= 0, source, f"{key}.skip_connect_every", "an integer >= 0",
             m.skip_connect_every)
    _require(m.num_encoding_fn_xyz >= 0, source, f"{key}.num_encoding_fn_xyz", "an integer >= 0",
             m.num_encoding_fn_xyz)
    _require(m.num_encoding_fn_dir >= 0, source, f"{key}.num_encoding_fn_dir", "an integer >= 0",
             m.num_encoding_fn_dir)
    _require(m.include_input_xyz or m.num_encoding_fn_xyz > 0, source, f"{key}.include_input_xyz",
             "true when num_encoding_fn_xyz is 0 (the encoding would be empty)", m.include_input_xyz)
    _require(m.include_input_dir or m.num_encoding_fn_dir > 0 or not m.use_viewdirs, source,
             f"{key}.include_input_dir", "true when num_encoding_fn_dir is 0", m.include_input_dir)
    if m.layer_widths is not None:
        _require(m.type == "FlexibleNeRFModel", source, f"{key}.layer_widths",
                 "to be set only for FlexibleNeRFModel (pruned models)", m.layer_widths)
        _require(len(m.layer_widths) == m.num_layers and all(w >= 1 for w in m.layer_widths), source,
                 f"{key}.layer_widths", f"{m.num_layers} positive widths (one per trunk layer)", m.layer_widths)
    if m.type == "TinyNeRFModel":
        _require(m.hidden_size_dir == 128, source, f"{key}.hidden_size_dir",
                 "to be left unset for TinyNeRFModel (it has no view layer)", m.hidden_size_dir)
    if m.type == "Krrish94NeRFModel":
        reached = [i for i in range(1, m.num_layers - 1) if m.skip_connect_every and i % m.skip_connect_every == 0]
        _require(not reached, source, f"{key}.skip_connect_every",
                 f"0 or >= num_layers - 1 ({m.num_layers - 1}) for Krrish94NeRFModel (that code crashes when a "
                 "skip is reached, krrish94#40)", m.skip_connect_every)
    if m.type == "PaperNeRFModel":
        # The paper model is fixed; silently ignoring other sizes is a defect of earlier ports.
        paper = {"num_layers": 8, "hidden_size": 256, "skip_connect_every": 4, "hidden_size_dir": 128}
        for name, expected in paper.items():
            value = getattr(m, name)
            _require(value == expected, source, f"{key}.{name}",
                     f"{expected} for PaperNeRFModel (use FlexibleNeRFModel for other sizes)", value)


def _validate_render(r: RenderConfig, key: str, source: str) -> None:
    _require(r.chunksize >= 1, source, f"{key}.chunksize", "an integer >= 1", r.chunksize)
    _require(r.netchunk >= 1, source, f"{key}.netchunk", "an integer >= 1", r.netchunk)
    _require(r.num_coarse >= 2, source, f"{key}.num_coarse", "an integer >= 2", r.num_coarse)
    _require(r.num_fine >= 0, source, f"{key}.num_fine", "an integer >= 0", r.num_fine)
    _require(r.radiance_field_noise_std >= 0, source, f"{key}.radiance_field_noise_std", "a value >= 0",
             r.radiance_field_noise_std)


def _validate_voxel_grid(cfg: Config, source: str) -> None:
    """Check the voxel_grid: section (the fast field, nerf/voxel_grid.py) and what it needs elsewhere."""
    v = cfg.voxel_grid
    _require(v.num_voxels >= 8, source, "voxel_grid.num_voxels", "an integer >= 8", v.num_voxels)
    _require(8 <= v.num_voxels_start <= v.num_voxels, source, "voxel_grid.num_voxels_start",
             f"an integer in [8, num_voxels={v.num_voxels}]", v.num_voxels_start)
    _require(all(b > a for a, b in zip(v.grow_steps, v.grow_steps[1:])) and all(s > 0 for s in v.grow_steps),
             source, "voxel_grid.grow_steps", "increasing positive steps", v.grow_steps)
    for name in ("feature_dim", "hidden_size", "tv_every"):
        _require(getattr(v, name) >= 1, source, f"voxel_grid.{name}", "an integer >= 1", getattr(v, name))
    for name in ("num_layers", "num_encoding_fn_dir", "tv_until"):
        _require(getattr(v, name) >= 0, source, f"voxel_grid.{name}", "an integer >= 0", getattr(v, name))
    _require(0 < v.alpha_init < 1, source, "voxel_grid.alpha_init", "a value in (0, 1)", v.alpha_init)
    _require(len(v.aspect) == 3 and all(a > 0 for a in v.aspect), source, "voxel_grid.aspect",
             "three positive edge ratios [x, y, z]", v.aspect)
    _require(0 < v.seen_weight < 1, source, "voxel_grid.seen_weight", "a value in (0, 1)", v.seen_weight)
    _require(v.seen_count >= 1, source, "voxel_grid.seen_count", "an integer >= 1", v.seen_count)
    _require(v.representation in ("dense", "vm"), source, "voxel_grid.representation", "dense or vm",
             v.representation)
    if v.representation == "vm":
        for name in ("density_components", "appearance_components"):
            _require(getattr(v, name) >= 1, source, f"voxel_grid.{name}", "an integer >= 1", getattr(v, name))
    else:
        defaults = VoxelGridConfig()
        for name in ("density_components", "appearance_components"):
            _require(getattr(v, name) == getattr(defaults, name), source, f"voxel_grid.{name}",
                     "to be left unset unless voxel_grid.representation is vm (it would be ignored)",
                     getattr(v, name))
    _require(v.density_unit in ("world", "voxel"), source, "voxel_grid.density_unit", "world or voxel",
             v.density_unit)
    _require(v.step_ratio > 0, source, "voxel_grid.step_ratio", "a value > 0", v.step_ratio)
    _require(v.grid_lr > 0, source, "voxel_grid.grid_lr", "a value > 0", v.grid_lr)
    _require(v.tv_weight >= 0, source, "voxel_grid.tv_weight", "a value >= 0", v.tv_weight)
    _require(v.feature_tv_weight >= 0, source, "voxel_grid.feature_tv_weight", "a value >= 0", v.feature_tv_weight)
    if v.restart_at_shrink:
        _require(v.shrink_box and bool(v.grow_steps) and v.representation == "dense", source,
                 "voxel_grid.restart_at_shrink", "shrink_box, grow_steps and the dense representation with it",
                 v.restart_at_shrink)
    if v.masked_adam:  # their gradients reach vertices that no lookup marked: masked Adam would drop them
        _require(v.tv_weight == 0, source, "voxel_grid.tv_weight", "0 with voxel_grid.masked_adam", v.tv_weight)
        _require(v.feature_tv_weight == 0, source, "voxel_grid.feature_tv_weight", "0 with voxel_grid.masked_adam",
                 v.feature_tv_weight)
        _require(not cfg.runtime.compile, source, "runtime.compile", "false with voxel_grid.masked_adam",
                 cfg.runtime.compile)
    _require(v.distortion_weight >= 0, source, "voxel_grid.distortion_weight", "a value >= 0", v.distortion_weight)
    _require(v.sample_rgb_weight >= 0, source, "voxel_grid.sample_rgb_weight", "a value >= 0", v.sample_rgb_weight)
    _require(v.background_entropy_weight >= 0, source, "voxel_grid.background_entropy_weight", "a value >= 0",
             v.background_entropy_weight)
    if cfg.models.fine is not None:
        _require(cfg.models.fine.type != "VoxelGridModel", source, "models.fine.type",
                 "an MLP type: VoxelGridModel is a single field (models.coarse, with models.fine: null)",
                 cfg.models.fine.type)
    if cfg.models.coarse.type != "VoxelGridModel":
        _require(v == VoxelGridConfig(), source, "voxel_grid",
                 "to be left unset unless models.coarse.type is VoxelGridModel (it would be ignored)",
                 "a changed section")
    if cfg.models.coarse.type == "VoxelGridModel":
        _require(cfg.occupancy.enabled, source, "occupancy.enabled",
                 "true for models.coarse.type VoxelGridModel (it samples through the occupancy grid)",
                 cfg.occupancy.enabled)


def _validate_experiment(cfg: Config, source: str) -> None:
    """Check the experiment: section."""
    e = cfg.experiment
    _require(e.train_iters >= 1, source, "experiment.train_iters", "an integer >= 1", e.train_iters)
    _require(bool(e.id.strip()) and stays_below(e.id), source, "experiment.id",
             "a run name (a folder under experiment.logdir)", e.id)
    for name in ("validate_every", "save_every", "print_every"):
        value = getattr(e, name)
        _require(value >= 0, source, f"experiment.{name}", "an integer >= 0", value)
    device_ok = e.device in ("auto", "cpu", "cuda", "mps") or (
        e.device.startswith("cuda:") and e.device[5:].isdigit())
    _require(device_ok, source, "experiment.device", "auto, cpu, cuda, cuda:N or mps", e.device)


def _validate_dataset(cfg: Config, source: str) -> None:
    """Check the dataset: section and the sampling keys it constrains."""
    d = cfg.dataset
    _require(d.type in DATASET_TYPES, source, "dataset.type", "one of " + ", ".join(DATASET_TYPES), d.type)
    _require(bool(d.basedir), source, "dataset.basedir", "a dataset folder", d.basedir)
    _require(d.testskip >= 0, source, "dataset.testskip", "an integer >= 0", d.testskip)
    _require(d.downscale >= 1, source, "dataset.downscale", "an integer >= 1", d.downscale)
    _require(d.downsample_factor >= 1, source, "dataset.downsample_factor", "an integer >= 1",
             d.downsample_factor)
    _require(d.llffhold >= 0, source, "dataset.llffhold", "an integer >= 0", d.llffhold)
    _require(d.bd_factor > 0, source, "dataset.bd_factor", "a value > 0", d.bd_factor)
    defaults = DatasetConfig()
    if d.type in ("blender", "demo"):
        # NDC assumes a forward-facing capture; the 360-degree Blender scenes never use it.
        _require(d.no_ndc in (None, True), source, "dataset.no_ndc", "true (or unset) for Blender scenes",
                 d.no_ndc)
        foreign = ("downsample_factor", "llffhold", "bd_factor", "recenter", "spherify", "path_zflat")
    else:
        foreign = ("half_res", "downscale", "testskip")
        _require(not (d.spherify and not d.no_ndc), source, "dataset.spherify",
                 "false unless dataset.no_ndc is true (spherified 360-degree captures cannot use NDC)", d.spherify)
        use_ndc = not d.no_ndc
        for split in ("train", "validation"):
            lindisp = getattr(cfg.nerf, split).lindisp
            _require(not (use_ndc and lindisp), source, f"nerf.{split}.lindisp",
                     "false under NDC (near = 0; the official code forces it off)", lindisp)
    for key in foreign:  # keys of the other dataset type would be silently ignored: reject them
        value = getattr(d, key)
        _require(value == getattr(defaults, key), source, f"dataset.{key}",
                 f"to be left unset for dataset.type {d.type} (it does not apply)", value)
    if (d.near is None) != (d.far is None):
        raise ConfigError(f"{source}: keys 'dataset.near' and 'dataset.far' must be set together")
    if d.near is not None:
        _require(d.near >= 0, source, "dataset.near", "a value >= 0", d.near)
        _require(d.far > d.near, source, "dataset.far", f"a value > dataset.near ({d.near})", d.far)


def _validate_models(cfg: Config, source: str) -> None:
    """Check the models: section."""
    validate_model(cfg.models.coarse, "models.coarse", source)
    if cfg.models.fine is not None:
        validate_model(cfg.models.fine, "models.fine", source)
    for name in ("coarse", "fine"):
        m = getattr(cfg.models, name)
        if m is not None:
            _require(m.use_viewdirs == cfg.nerf.use_viewdirs, source, f"models.{name}.use_viewdirs",
                     f"the same value as nerf.use_viewdirs ({cfg.nerf.use_viewdirs})", m.use_viewdirs)


def _validate_nerf(cfg: Config, source: str) -> None:
    """Check the nerf: section (train and validation rendering)."""
    n = cfg.nerf
    _require(n.encode_position_fn == "positional_encoding", source, "nerf.encode_position_fn",
             "positional_encoding", n.encode_position_fn)
    _require(n.encode_direction_fn == "positional_encoding", source, "nerf.encode_direction_fn",
             "positional_encoding", n.encode_direction_fn)
    _validate_render(n.train, "nerf.train", source)
    _validate_render(n.validation, "nerf.validation", source)
    _require(n.train.num_random_rays >= 1, source, "nerf.train.num_random_rays", "an integer >= 1",
             n.train.num_random_rays)
    _require(n.train.precrop_iters >= 0, source, "nerf.train.precrop_iters", "an integer >= 0",
             n.train.precrop_iters)
    _require(0 < n.train.precrop_frac <= 1, source, "nerf.train.precrop_frac", "a value in (0, 1]",
             n.train.precrop_frac)
    _require(n.validation.num_views >= 1, source, "nerf.validation.num_views", "an integer >= 1",
             n.validation.num_views)
    _require(n.validation.downsample >= 1, source, "nerf.validation.downsample", "an integer >= 1",
             n.validation.downsample)
    _require(n.validation.white_background == n.train.white_background, source,
             "nerf.validation.white_background",
             f"the same value as nerf.train.white_background ({n.train.white_background}): the targets are "
             "composited once", n.validation.white_background)
    _require(not (n.train.use_batching and n.train.precrop_iters > 0), source, "nerf.train.precrop_iters",
             "0 when nerf.train.use_batching is on (precrop samples one image at a time)",
             n.train.precrop_iters)
    for split in ("train", "validation"):
        num_fine = getattr(n, split).num_fine
        if num_fine > 0 and cfg.models.fine is None:
            raise ConfigError(f"{source}: key 'nerf.{split}.num_fine' is {num_fine} but models.fine is "
                              "null; set num_fine to 0 or define a fine model")
    if cfg.models.fine is not None and n.train.num_fine == 0:
        raise ConfigError(f"{source}: key 'models.fine' defines a fine model but nerf.train.num_fine is 0; "
                          "set models.fine to null or num_fine > 0")


def _validate_optimizer(cfg: Config, source: str) -> None:
    """Check the optimizer: and scheduler: sections."""
    o, s = cfg.optimizer, cfg.scheduler
    _require(o.type == "Adam", source, "optimizer.type", "Adam", o.type)
    _require(o.lr > 0, source, "optimizer.lr", "a value > 0", o.lr)
    _require(o.eps > 0, source, "optimizer.eps", "a value > 0", o.eps)
    _require(0 <= o.beta1 < 1, source, "optimizer.beta1", "a value in [0, 1)", o.beta1)
    _require(0 <= o.beta2 < 1, source, "optimizer.beta2", "a value in [0, 1)", o.beta2)
    _require(0 < s.lr_decay_factor <= 1, source, "scheduler.lr_decay_factor", "a value in (0, 1] (a decay)",
             s.lr_decay_factor)
    _require(s.decay_start >= 0, source, "scheduler.decay_start", "a number of steps >= 0", s.decay_start)


def _validate_runtime(cfg: Config, source: str) -> None:
    """Check the runtime: section."""
    rt, e = cfg.runtime, cfg.experiment
    _require(rt.precision in PRECISIONS, source, "runtime.precision", "one of " + ", ".join(PRECISIONS),
             rt.precision)
    _require(not (rt.precision == "fp16" and e.device in ("cpu", "mps")), source, "runtime.precision",
             f"fp32 or bf16 on experiment.device {e.device} (fp16 autocast needs CUDA)", rt.precision)
    _require(rt.cpu_network_chunk >= 0, source, "runtime.cpu_network_chunk",
             "a number of points >= 1, or 0 to measure it on this machine", rt.cpu_network_chunk)


def _validate_occupancy(cfg: Config, source: str) -> None:
    """Check the occupancy: section."""
    d = cfg.dataset
    g = cfg.occupancy
    _require(g.resolution >= 2, source, "occupancy.resolution", "an integer >= 2", g.resolution)
    _require(g.num_steps >= 2, source, "occupancy.num_steps", "an integer >= 2", g.num_steps)
    _require(g.density_threshold > 0, source, "occupancy.density_threshold", "a value > 0", g.density_threshold)
    _require(0 <= g.decay <= 1, source, "occupancy.decay", "a value in [0, 1]", g.decay)
    _require(g.update_every >= 1, source, "occupancy.update_every", "an integer >= 1", g.update_every)
    _require(g.warmup_steps >= 0, source, "occupancy.warmup_steps", "an integer >= 0", g.warmup_steps)
    _require(g.full_updates_until >= 0, source, "occupancy.full_updates_until", "an integer >= 0",
             g.full_updates_until)
    _require(0 <= g.early_stop_eps < 1, source, "occupancy.early_stop_eps", "a value in [0, 1)", g.early_stop_eps)
    _require(0 <= g.alpha_threshold < 1, source, "occupancy.alpha_threshold", "a value in [0, 1)",
             g.alpha_threshold)
    _require(g.render_chunk >= 1, source, "occupancy.render_chunk", "an integer >= 1", g.render_chunk)
    _require(g.fill_samples >= 1, source, "occupancy.fill_samples", "an integer >= 1", g.fill_samples)
    uses_ndc = d.type == "llff" and not d.no_ndc
    if g.contraction is not None:
        _validate_contraction(cfg, source, uses_ndc)
    elif g.enabled and g.aabb is None and d.type == "llff" and not uses_ndc:
        raise ConfigError(f"{source}: key 'occupancy.aabb' must be set for an LLFF scene without NDC "
                          "(the default boxes cover Blender objects and NDC space only)")
    if g.aabb is not None:
        _require(len(g.aabb) == 6 and all(g.aabb[k + 3] > g.aabb[k] for k in range(3)), source, "occupancy.aabb",
                 "[xmin, ymin, zmin, xmax, ymax, zmax] with max > min", g.aabb)
    _require(0 <= g.color_weight_threshold < 1, source, "occupancy.color_weight_threshold", "a value in [0, 1)",
             g.color_weight_threshold)


def _validate_contraction(cfg: Config, source: str, uses_ndc: bool) -> None:
    """occupancy.contraction and what it rules out: NDC, another box, an MLP field, the box shrink and the
    distortion loss (normalised to [near, far], which a ray to infinity does not have)."""
    g, v = cfg.occupancy, cfg.voxel_grid
    _require(g.contraction in CONTRACTIONS, source, "occupancy.contraction",
             f"one of {', '.join(CONTRACTIONS)} or null", g.contraction)
    _require(not uses_ndc, source, "occupancy.contraction",
             "null under NDC (NDC already maps a forward-facing scene to a box; set dataset.no_ndc: true for 360)",
             g.contraction)
    _require(cfg.models.coarse.type == "VoxelGridModel", source, "occupancy.contraction",
             "null unless models.coarse.type is VoxelGridModel (the field that looks points up contracted)",
             g.contraction)
    _require(g.aabb is None or list(g.aabb) == list(CONTRACTED_AABB), source, "occupancy.aabb",
             f"to be unset (or {list(CONTRACTED_AABB)}) with occupancy.contraction: the grid covers the whole "
             "contracted space", g.aabb)
    _require(not v.shrink_box, source, "voxel_grid.shrink_box",
             "false with occupancy.contraction (the contracted space holds the whole scene)", v.shrink_box)
    _require(v.distortion_weight == 0, source, "voxel_grid.distortion_weight",
             "0 with occupancy.contraction (the loss normalises the ray to [near, far])", v.distortion_weight)


def _validate_pruning(cfg: Config, source: str) -> None:
    """Check the pruning: section."""
    p = cfg.pruning
    _require(0 < p.amount < 1, source, "pruning.amount", "a fraction in (0, 1)", p.amount)
    _require(0 < p.increment <= p.amount, source, "pruning.increment", f"a fraction in (0, amount={p.amount}]",
             p.increment)
    _require(p.every >= 1, source, "pruning.every", "an integer >= 1", p.every)
    _require(0 < p.lr_scale <= 1, source, "pruning.lr_scale", "a value in (0, 1]", p.lr_scale)
    _require(p.norm in (1, 2), source, "pruning.norm", "1 or 2", p.norm)


SECTION_CHECKS = (_validate_experiment, _validate_dataset, _validate_models, _validate_nerf, _validate_optimizer,
                  _validate_runtime, _validate_occupancy, _validate_voxel_grid, _validate_pruning)


def validate(cfg: Config, source: str = "<config>") -> None:
    """Check value ranges and cross-key consistency, section by section; raise ConfigError naming the key."""
    for check in SECTION_CHECKS:
        check(cfg, source)
