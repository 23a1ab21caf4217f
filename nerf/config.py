"""Typed experiment configuration, loaded from YAML by a strict loader.

The key names follow the widely used krrish94/nerf-pytorch configs (`experiment`, `dataset`,
`models.coarse/fine`, `optimizer`, `scheduler`, `nerf.train/validation`) so that existing files keep
working. Every key is honoured or rejected: an unknown key, a wrong type or an out-of-range value is a
`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


@dataclass
class ExperimentConfig:
    id: str = "nerf"  # run name: outputs go to <logdir>/<id>/
    logdir: str = "logs"
    randomseed: int = 42
    train_iters: int = 200_000  # total optimizer steps, counted from 0 (a resumed run continues)
    validate_every: int = 1000  # 0 disables validation
    save_every: int = 5000  # 0 saves only at the end
    print_every: int = 100  # tqdm postfix and TensorBoard train scalars
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass
class DatasetConfig:
    type: str = "blender"  # blender | llff | demo (the project's generated Blender-format scene)
    basedir: str = ""
    # Blender
    half_res: bool = False
    testskip: int = 1  # val/test use every testskip-th frame; train always uses all
    # Near/far planes; None = the dataset's convention (Blender 2/6, LLFF NDC 0/1, LLFF no-NDC from bounds).
    near: Optional[float] = None
    far: Optional[float] = None
    no_ndc: Optional[bool] = None  # None = NDC for LLFF, never for Blender
    # LLFF
    downsample_factor: int = 8  # images are read from images_<factor>/
    llffhold: int = 8  # every llffhold-th image is a test (and val) view; 0 = the view nearest the mean pose
    bd_factor: float = 0.75
    recenter: bool = True
    spherify: bool = False
    path_zflat: bool = False
    # Precomputed rays from cache_dataset.py; its manifest must match the settings above.
    cachedir: Optional[str] = None


@dataclass
class ModelConfig:
    # PaperNeRFModel | FlexibleNeRFModel | TinyNeRFModel | Krrish94NeRFModel | VoxelGridModel (the fast preset:
    # its settings are the voxel_grid: section; the MLP keys below do not apply to it)
    type: str = "PaperNeRFModel"
    num_layers: int = 8
    hidden_size: int = 256
    skip_connect_every: int = 4  # concat the encoded position after this trunk layer; 0 disables
    hidden_size_dir: int = 128  # width of the single view-dependent layer
    num_encoding_fn_xyz: int = 10
    num_encoding_fn_dir: int = 4
    include_input_xyz: bool = True
    include_input_dir: bool = True
    log_sampling_xyz: bool = True
    log_sampling_dir: bool = True
    use_viewdirs: bool = True
    # Per-layer trunk widths of a pruned model (written by --prune); None = hidden_size everywhere.
    layer_widths: Optional[list[int]] = None


@dataclass
class ModelsConfig:
    coarse: ModelConfig = field(default_factory=ModelConfig)
    fine: Optional[ModelConfig] = field(default_factory=ModelConfig)  # null: no fine network


@dataclass
class RenderConfig:
    chunksize: int = 32768  # rays rendered per chunk (memory knob only)
    netchunk: int = 65536  # points per network call at most (memory knob only; CPU calls take <= 4096)
    perturb: bool = True  # stratified jitter of the coarse samples; also makes sample_pdf random
    num_coarse: int = 64
    num_fine: int = 128  # 0 disables hierarchical sampling
    white_background: bool = False
    radiance_field_noise_std: float = 0.0
    lindisp: bool = False


@dataclass
class TrainConfig(RenderConfig):
    num_random_rays: int = 1024  # rays per optimizer step
    use_batching: bool = False  # rays from all images, shuffled per epoch (LLFF); else one image per step
    precrop_iters: int = 0  # sample only the central crop for this many steps
    precrop_frac: float = 0.5


@dataclass
class ValidationConfig(RenderConfig):
    perturb: bool = False
    num_views: int = 1  # fixed, evenly spaced val views rendered at each validation
    downsample: int = 1  # render validation views at 1/downsample resolution


@dataclass
class NerfConfig:
    use_viewdirs: bool = True
    encode_position_fn: str = "positional_encoding"
    encode_direction_fn: str = "positional_encoding"
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class OptimizerConfig:
    type: str = "Adam"
    lr: float = 5e-4
    eps: float = 1e-7  # the official TF code ran with the Keras default 1e-7, not PyTorch's 1e-8
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass
class SchedulerConfig:
    lr_decay: float = 250  # thousands of steps per lr_decay_factor; <= 0 keeps the lr constant
    lr_decay_factor: float = 0.1


@dataclass
class PruningConfig:
    """Structured pruning used by `train_nerf.py --prune`: whole hidden neurons are removed."""

    amount: float = 0.25  # fraction of each prunable layer's neurons removed in total by one --prune run
    increment: float = 0.05  # fraction (of the starting width) removed at each event
    every: int = 1000  # steps between events: they fire at start + every, start + 2 every, ...
    excluded_layers: list[str] = field(default_factory=list)  # e.g. ["views_linears.0"]; heads are never pruned
    lr_scale: float = 0.1  # learning-rate multiplier while pruning
    norm: int = 1  # 1 or 2: the norm of each neuron's incoming weights that ranks it


@dataclass
class RuntimeConfig:
    """How the networks run. None of these change the model; precision and compile change rounding."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only): autocast of the networks; encoding, rendering fp32
    compile: bool = False  # torch.compile the networks and the compositing; falls back to eager if unavailable


@dataclass
class OccupancyConfig:
    """Occupancy-grid sampling (Instant-NGP / nerfacc): march only through occupied cells, stop early.

    Replaces the coarse/fine sampler when enabled; the field is the fine model if there is one, else
    the coarse one. Cells hold an EMA of sigma * step_size (the opacity of one marching step).
    """

    enabled: bool = False
    resolution: int = 128  # cells per axis
    aabb: Optional[list[float]] = None  # [xmin, ymin, zmin, xmax, ymax, zmax]; None: Blender +-1.5; NDC x, y +-1.5, z +-1
    num_steps: int = 1024  # marching steps along the aabb diagonal: step size = diagonal / num_steps
    density_threshold: float = 0.01  # a cell is occupied if its opacity estimate exceeds this (or the mean)
    decay: float = 0.95  # EMA decay of the cell estimates at each update
    update_every: int = 16  # training steps between grid updates
    warmup_steps: int = 256  # no skipping before this step; until then every update evaluates all cells
    early_stop_eps: float = 1e-4  # a ray stops when its transmittance falls below this
    alpha_threshold: float = 0.0  # samples with a smaller alpha are dropped (0 keeps all)
    render_chunk: int = 4096  # rays marched at once when rendering images (memory knob only)
    # Samples whose compositing weight is below this get no colour evaluation (their colour counts as 0);
    # only for fields with a separate colour branch (VoxelGridModel). 0 evaluates every sample.
    color_weight_threshold: float = 0.0
    fill_samples: int = 2  # points per axis and cell when a grid is built for a model trained without one


@dataclass
class VoxelGridConfig:
    """The fast field (models.coarse.type: VoxelGridModel, nerf/voxel_grid.py): dense density and feature
    voxel grids over a box and a small colour MLP, grown coarse to fine. Needs occupancy.enabled."""

    num_voxels: int = 2_097_152  # voxels of the final grids (128^3), spread over the box (edges: see aspect)
    num_voxels_start: int = 262_144  # voxels before the first growth (64^3)
    aspect: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # voxel edge ratios x:y:z (NDC: finer
    # in x, y, the image plane, than in z, the depth)
    grow_steps: list[int] = field(default_factory=lambda: [200, 500, 1000])  # the voxel count goes
    # geometrically from num_voxels_start to num_voxels over these steps
    # At the first growth, shrink the box to the occupancy cells (plus one) where the training rays of the
    # preceding grow_steps[0] / 2 steps put a compositing weight >= seen_weight (the content, not unseen fog).
    shrink_box: bool = True
    seen_weight: float = 0.05
    feature_dim: int = 12  # channels of the feature grid
    hidden_size: int = 64  # width of the colour MLP
    num_layers: int = 2  # hidden layers of the colour MLP
    num_encoding_fn_dir: int = 4  # frequencies of the view-direction encoding
    alpha_init: float = 1.0e-2  # opacity of one marching step in the fresh grid: a fog that training carves
    step_ratio: float = 0.5  # marching step = this * voxel size (replaces occupancy.num_steps)
    grid_lr: float = 0.2  # learning rate of the grids (the MLP uses optimizer.lr; both follow the scheduler)
    tv_weight: float = 0.0  # weight of the density grid's total variation in the loss
    tv_until: int = 0  # the TV term applies before this step only (0: always)
    distortion_weight: float = 0.0  # weight of the distortion loss (Mip-NeRF 360 eq. 15; DVGO v2 uses 0.01)
    sample_rgb_weight: float = 0.0  # weight of DVGO's per-sample colour loss (DVGO uses 0.01)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    voxel_grid: VoxelGridConfig = field(default_factory=VoxelGridConfig)


PRECISIONS = ("fp32", "bf16", "fp16")
MODEL_TYPES = ("PaperNeRFModel", "FlexibleNeRFModel", "TinyNeRFModel", "Krrish94NeRFModel", "VoxelGridModel")
DATASET_TYPES = ("blender", "llff", "demo")


# --------------------------------------------------------------------------------------------------
# Strict construction from plain data


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: key '{key}' must not be null")
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' expects a list of {item_type.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        return [_coerce(item, item_type, f"{key}[{k}]", source) for k, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported config field type {tp!r}")
    raise ConfigError(
        f"{source}: key '{key}' expects {tp.__name__}, got {type(value).__name__} {value!r}"
    )


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{dotted}' (expected one of: {', '.join(sorted(names))})"
            )
        kwargs[key] = _coerce(value, hints[key], dotted, source)
    return cls(**kwargs)


# Validation renders "with everything else as in training" (official test settings): keys the validation
# section leaves out are taken from the train section rather than from the defaults.
INHERITED_VALIDATION_KEYS = ("num_coarse", "num_fine", "lindisp", "white_background", "chunksize", "netchunk")


def _inherit_validation_settings(data: dict) -> dict:
    nerf = data.get("nerf")
    if not isinstance(nerf, dict) or not isinstance(nerf.get("train"), dict):
        return data
    validation = nerf.get("validation") if nerf.get("validation") is not None else {}
    if not isinstance(validation, dict):
        return data
    inherited = {k: nerf["train"][k] for k in INHERITED_VALIDATION_KEYS if k in nerf["train"] and k not in validation}
    return {**data, "nerf": {**nerf, "validation": {**validation, **inherited}}}


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(Config, _inherit_validation_settings(data), "", source)
    validate(cfg, source)
    return cfg


def models_config_from_dict(data: dict, source: str) -> ModelsConfig:
    """Build and validate just a `models` section (e.g. the one stored inside a checkpoint)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: 'models' must be a mapping")
    models = _build(ModelsConfig, data, "models", source)
    _validate_model(models.coarse, "models.coarse", source)
    if models.fine is not None:
        _validate_model(models.fine, "models.fine", source)
    return models


def voxel_grid_config_from_dict(data: Optional[dict], source: str) -> VoxelGridConfig:
    """The voxel_grid: section alone (e.g. from a checkpoint's stored config); defaults when absent."""
    return _build(VoxelGridConfig, data or {}, "voxel_grid", source)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------------
# Files and command-line overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `section.key=value` override set (nested keys created)."""
    import copy

    data = copy.deepcopy(data) if data else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: malformed YAML{line}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config strictly, apply `--set` overrides, validate."""
    data = apply_overrides(read_yaml(path), overrides or [])
    source = path if not overrides else f"{path} (with --set overrides)"
    return config_from_dict(data, source)


def default_file_mode() -> int:
    """0666 less the process umask: the mode open() would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".tmp")
    os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the usual permissions
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Semantic validation


def _require(ok: bool, source: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{source}: key '{key}' expects {expected}, got {value!r}")


def _validate_model(m: ModelConfig, key: str, source: str) -> None:
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
    v = cfg.voxel_grid
    _require(v.num_voxels >= 8, source, "voxel_grid.num_voxels", "an integer >= 8", v.num_voxels)
    _require(8 <= v.num_voxels_start <= v.num_voxels, source, "voxel_grid.num_voxels_start",
             f"an integer in [8, num_voxels={v.num_voxels}]", v.num_voxels_start)
    _require(all(b > a for a, b in zip(v.grow_steps, v.grow_steps[1:])) and all(s > 0 for s in v.grow_steps),
             source, "voxel_grid.grow_steps", "increasing positive steps", v.grow_steps)
    for name in ("feature_dim", "hidden_size"):
        _require(getattr(v, name) >= 1, source, f"voxel_grid.{name}", "an integer >= 1", getattr(v, name))
    for name in ("num_layers", "num_encoding_fn_dir", "tv_until"):
        _require(getattr(v, name) >= 0, source, f"voxel_grid.{name}", "an integer >= 0", getattr(v, name))
    _require(0 < v.alpha_init < 1, source, "voxel_grid.alpha_init", "a value in (0, 1)", v.alpha_init)
    _require(len(v.aspect) == 3 and all(a > 0 for a in v.aspect), source, "voxel_grid.aspect",
             "three positive edge ratios [x, y, z]", v.aspect)
    _require(0 < v.seen_weight < 1, source, "voxel_grid.seen_weight", "a value in (0, 1)", v.seen_weight)
    _require(v.step_ratio > 0, source, "voxel_grid.step_ratio", "a value > 0", v.step_ratio)
    _require(v.grid_lr > 0, source, "voxel_grid.grid_lr", "a value > 0", v.grid_lr)
    _require(v.tv_weight >= 0, source, "voxel_grid.tv_weight", "a value >= 0", v.tv_weight)
    _require(v.distortion_weight >= 0, source, "voxel_grid.distortion_weight", "a value >= 0", v.distortion_weight)
    _require(v.sample_rgb_weight >= 0, source, "voxel_grid.sample_rgb_weight", "a value >= 0", v.sample_rgb_weight)
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


def validate(cfg: Config, source: str = "<config>") -> None:
    """Check value ranges and cross-key consistency; raise ConfigError naming the key."""
    e, d = cfg.experiment, cfg.dataset
    _require(e.train_iters >= 0, source, "experiment.train_iters", "an integer >= 0", e.train_iters)
    for name in ("validate_every", "save_every", "print_every"):
        value = getattr(e, name)
        _require(value >= 0, source, f"experiment.{name}", "an integer >= 0", value)
    device_ok = e.device in ("auto", "cpu", "cuda", "mps") or (
        e.device.startswith("cuda:") and e.device[5:].isdigit())
    _require(device_ok, source, "experiment.device", "auto, cpu, cuda, cuda:N or mps", e.device)

    _require(d.type in DATASET_TYPES, source, "dataset.type", "one of " + ", ".join(DATASET_TYPES), d.type)
    _require(bool(d.basedir), source, "dataset.basedir", "a dataset folder", d.basedir)
    _require(d.testskip >= 0, source, "dataset.testskip", "an integer >= 0", d.testskip)
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
        foreign = ("half_res", "testskip")
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
        _require(d.far > d.near >= 0, source, "dataset.far", f"a value > dataset.near ({d.near})", d.far)

    _validate_model(cfg.models.coarse, "models.coarse", source)
    if cfg.models.fine is not None:
        _validate_model(cfg.models.fine, "models.fine", source)
    for name in ("coarse", "fine"):
        m = getattr(cfg.models, name)
        if m is not None:
            _require(m.use_viewdirs == cfg.nerf.use_viewdirs, source, f"models.{name}.use_viewdirs",
                     f"the same value as nerf.use_viewdirs ({cfg.nerf.use_viewdirs})", m.use_viewdirs)

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

    o, s = cfg.optimizer, cfg.scheduler
    _require(o.type == "Adam", source, "optimizer.type", "Adam", o.type)
    _require(o.lr > 0, source, "optimizer.lr", "a value > 0", o.lr)
    _require(o.eps > 0, source, "optimizer.eps", "a value > 0", o.eps)
    _require(0 <= o.beta1 < 1, source, "optimizer.beta1", "a value in [0, 1)", o.beta1)
    _require(0 <= o.beta2 < 1, source, "optimizer.beta2", "a value in [0, 1)", o.beta2)
    _require(s.lr_decay_factor > 0, source, "scheduler.lr_decay_factor", "a value > 0", s.lr_decay_factor)

    rt = cfg.runtime
    _require(rt.precision in PRECISIONS, source, "runtime.precision", "one of " + ", ".join(PRECISIONS),
             rt.precision)
    _require(not (rt.precision == "fp16" and e.device in ("cpu", "mps")), source, "runtime.precision",
             f"fp32 or bf16 on experiment.device {e.device} (fp16 autocast needs CUDA)", rt.precision)

    g = cfg.occupancy
    _require(g.resolution >= 2, source, "occupancy.resolution", "an integer >= 2", g.resolution)
    _require(g.num_steps >= 2, source, "occupancy.num_steps", "an integer >= 2", g.num_steps)
    _require(g.density_threshold > 0, source, "occupancy.density_threshold", "a value > 0", g.density_threshold)
    _require(0 <= g.decay <= 1, source, "occupancy.decay", "a value in [0, 1]", g.decay)
    _require(g.update_every >= 1, source, "occupancy.update_every", "an integer >= 1", g.update_every)
    _require(g.warmup_steps >= 0, source, "occupancy.warmup_steps", "an integer >= 0", g.warmup_steps)
    _require(0 <= g.early_stop_eps < 1, source, "occupancy.early_stop_eps", "a value in [0, 1)", g.early_stop_eps)
    _require(0 <= g.alpha_threshold < 1, source, "occupancy.alpha_threshold", "a value in [0, 1)",
             g.alpha_threshold)
    _require(g.render_chunk >= 1, source, "occupancy.render_chunk", "an integer >= 1", g.render_chunk)
    _require(g.fill_samples >= 1, source, "occupancy.fill_samples", "an integer >= 1", g.fill_samples)
    uses_ndc = d.type == "llff" and not d.no_ndc
    if g.enabled and g.aabb is None and d.type == "llff" and not uses_ndc:
        raise ConfigError(f"{source}: key 'occupancy.aabb' must be set for an LLFF scene without NDC "
                          "(the default boxes cover Blender objects and NDC space only)")
    if g.aabb is not None:
        _require(len(g.aabb) == 6 and all(g.aabb[k + 3] > g.aabb[k] for k in range(3)), source, "occupancy.aabb",
                 "[xmin, ymin, zmin, xmax, ymax, zmax] with max > min", g.aabb)

    _require(0 <= g.color_weight_threshold < 1, source, "occupancy.color_weight_threshold", "a value in [0, 1)",
             g.color_weight_threshold)
    _validate_voxel_grid(cfg, source)

    p = cfg.pruning
    _require(0 < p.amount < 1, source, "pruning.amount", "a fraction in (0, 1)", p.amount)
    _require(0 < p.increment <= p.amount, source, "pruning.increment", f"a fraction in (0, amount={p.amount}]",
             p.increment)
    _require(p.every >= 1, source, "pruning.every", "an integer >= 1", p.every)
    _require(0 < p.lr_scale <= 1, source, "pruning.lr_scale", "a value in (0, 1]", p.lr_scale)
    _require(p.norm in (1, 2), source, "pruning.norm", "1 or 2", p.norm)
