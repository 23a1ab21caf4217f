"""The config schema: one typed dataclass per YAML section, with the defaults and what each key means.

The key names follow the widely used krrish94/nerf-pytorch configs (`experiment`, `dataset`,
`models.coarse/fine`, `optimizer`, `scheduler`, `nerf.train/validation`) so that existing files keep
working. Reading (nerf/config/loader.py) and checking (nerf/config/validation.py) live beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


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
    downscale: int = 1  # a further area resize by this factor (after half_res's 2): 800x800 -> 200x200 with both
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
    # Rays through the pixels' centres (i + 0.5, j + 0.5), where the renderer or camera measured them, as
    # TensoRF, Instant-NGP and nerfacc; false: through their corners, the paper's convention (docs/conventions.md)
    pixel_center: bool = False
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
    netchunk: int = 65536  # points per network call at most (memory knob only; on the CPU see runtime.cpu_network_chunk)
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
    decay_start: int = 0  # steps at the full lr before the decay begins (0: the official schedule)


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
    # Points per network call on the CPU (the cache-sized chunk). 0: measured once per machine, model and
    # precision (a second or two), then read from the user's cache folder (nerf/runtime.py: tuned_cpu_chunk).
    cpu_network_chunk: int = 0
    # On the CPU (glibc): keep freed memory in the process for the next step's tensors instead of returning it
    # to the kernel, which zero-fills it page by page when it is asked again (nerf/runtime.py:
    # keep_freed_cpu_memory). The process then holds its peak memory. false: glibc's defaults.
    keep_cpu_memory: bool = True


@dataclass
class OccupancyConfig:
    """Occupancy-grid sampling (Instant-NGP / nerfacc): march only through occupied cells, stop early.

    Replaces the coarse/fine sampler when enabled; the field is the fine model if there is one, else
    the coarse one. Cells hold an EMA of sigma * step_size (the opacity of one marching step).
    """

    enabled: bool = False
    resolution: int = 128  # cells per axis
    aabb: Optional[list[float]] = None  # [xmin, ymin, zmin, xmax, ymax, zmax]; None: Blender +-1.5; NDC x, y +-1.5, z +-1
    # Unbounded scenes: l2 (mip-NeRF 360's ball) | inf (the cube of DVGO v2 / nerfacto) | null (a world box).
    # The unit ball of the scene (spherify puts the cameras at radius 1) keeps its shape, everything beyond is
    # contracted into radius 2; the grid (aabb: [-2, 2]^3) covers it all, rays march from near to infinity
    # (dataset.far is not used) with num_steps / the field's step in the contracted space. VoxelGridModel only.
    contraction: Optional[str] = None
    num_steps: int = 1024  # marching steps along the aabb diagonal: step size = diagonal / num_steps
    density_threshold: float = 0.01  # a cell is occupied if its opacity estimate exceeds this (or the mean)
    decay: float = 0.95  # EMA decay of the cell estimates at each update
    update_every: int = 16  # training steps between grid updates
    warmup_steps: int = 256  # no skipping before this step; until then every update evaluates all cells
    # Before this step every step updates the grid from all cells (skipping still starts at warmup_steps):
    # a fresh field's fog is then carved within a few steps, not a quarter of the cells per update.
    full_updates_until: int = 0
    early_stop_eps: float = 1e-4  # a ray stops when its transmittance falls below this
    alpha_threshold: float = 0.0  # samples with a smaller alpha are dropped (0 keeps all)
    render_chunk: int = 4096  # rays marched at once when rendering images (memory knob only)
    # Samples whose compositing weight is below this get no colour evaluation (their colour counts as 0);
    # only for fields with a separate colour branch (VoxelGridModel). 0 evaluates every sample.
    color_weight_threshold: float = 0.0
    fill_samples: int = 2  # points per axis and cell when a grid is built for a model trained without one


@dataclass
class VoxelGridConfig:
    """The fast field (models.coarse.type: VoxelGridModel): density and features on a lattice over a box,
    stored densely (nerf/voxel_grid.py) or factorised (representation vm, nerf/tensor_vm.py), and a small
    colour MLP, grown coarse to fine. Needs occupancy.enabled."""

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
    # ... and only cells that at least this many samples put there (counted over the steps and the rays): a
    # floater that one ray saw once does not stretch the box to the edge of the scene
    seen_count: int = 1
    # DVGO's two stages: the grid before the first growth is a coarse stage that only finds the box and the
    # content; at the first growth the grids start afresh (fog in the occupied cells and their neighbours,
    # empty elsewhere, zero features, a new colour MLP) instead of being resampled. Dense grids only
    restart_at_shrink: bool = False
    # How the density and features are stored: dense (two voxel grids) | vm (TensoRF's vector-matrix
    # factorisation, nerf/tensor_vm.py: per mode a plane and a line of components; feature_dim is then the
    # basis matrix's output)
    representation: str = "dense"
    density_components: int = 16  # vm: components per mode of the density
    appearance_components: int = 48  # vm: components per mode of the appearance
    feature_dim: int = 12  # channels of the feature grid
    hidden_size: int = 64  # width of the colour MLP
    num_layers: int = 2  # hidden layers of the colour MLP
    num_encoding_fn_dir: int = 4  # frequencies of the view-direction encoding
    alpha_init: float = 1.0e-2  # opacity of one marching step in the fresh grid: a fog that training carves
    # The unit of the density grid: world (sigma per world unit) | voxel (DVGO: per edge of a final voxel, so
    # that an opaque step is a raw density of about 10 rather than hundreds; see nerf/voxel_grid.py)
    density_unit: str = "world"
    step_ratio: float = 0.5  # marching step = this * voxel size (replaces occupancy.num_steps)
    grid_lr: float = 0.2  # learning rate of the grids (the MLP uses optimizer.lr; both follow the scheduler)
    # Adam moves only the grid vertices (rows) that a lookup of this step reached, as DVGO's masked Adam: the
    # others keep their values and moments (lazy moments). On the 2-core CPU as fast as the fused pass over
    # every value, and within a seed in quality. Not with tv_weight or runtime.compile, whose gradients reach
    # vertices without a lookup
    masked_adam: bool = False
    tv_weight: float = 0.0  # weight of the density grid's total variation in the loss
    tv_until: int = 0  # the TV term applies before this step only (0: always)
    # weight of the feature grid's total variation (vm: the appearance planes' and lines'), as Plenoxels' TV
    # of its colour coefficients; applies before tv_until, as the density's
    feature_tv_weight: float = 0.0
    # both TV terms only every tv_every-th step, with their weights times tv_every (the same mean gradient): a
    # dense pass over the grids costs more than a step of the CPU presets (DVGO has tv_every too)
    tv_every: int = 1
    distortion_weight: float = 0.0  # weight of the distortion loss (Mip-NeRF 360 eq. 15; DVGO v2 uses 0.01)
    sample_rgb_weight: float = 0.0  # weight of DVGO's per-sample colour loss (DVGO uses 0.01)
    background_entropy_weight: float = 0.0  # weight of DVGO's entropy of the last transmittance (DVGO: 0.001)


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
