"""Build models from a checkpoint of this project or of another implementation, detected by content.

- this project: `format_version` key; the architecture comes from the config stored inside;
- krrish94/nerf-pytorch (and the pruning fork): `iter` + `model_coarse_state_dict` with `layer1`,
  `layers_xyz.N`, ...; rendered with the `Krrish94NeRFModel` compatibility model, sized from the
  tensors (that code ignored its config's num_layers/hidden_size); pruned `weight_orig`/`weight_mask`
  pairs are folded into plain weights;
- yenchenlin/nerf-pytorch: `global_step` + `network_fn_state_dict` / `network_fine_state_dict`, whose
  names and layouts are those of our `NeRFModel`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .contraction import CONTRACTIONS
from .config import (ConfigError, ModelConfig, ModelsConfig, VoxelGridConfig, models_config_from_dict,
                     voxel_grid_config_from_dict)
from .models import build_model

NATIVE, KRRISH94, YENCHENLIN = "nerf", "krrish94", "yenchenlin"


@dataclass
class LoadedModels:
    coarse: nn.Module
    fine: Optional[nn.Module]
    models: ModelsConfig  # describes the models actually built
    source: str
    step: int
    description: str
    occupancy_grid: Optional[dict] = None  # the grid state a run with occupancy sampling stored
    pixel_center: Optional[bool] = None  # dataset.pixel_center of the run (None: not stored, a foreign checkpoint)


def detect_format(ckpt: dict, path: str) -> str:
    if "format_version" in ckpt:
        return NATIVE
    if "network_fn_state_dict" in ckpt:
        return YENCHENLIN
    if "model_coarse_state_dict" in ckpt and "iter" in ckpt:
        return KRRISH94
    raise CheckpointError(f"{path}: unrecognised checkpoint (top-level keys {sorted(ckpt)[:6]}); expected one of "
                          "this project, krrish94/nerf-pytorch or yenchenlin/nerf-pytorch")


def fold_pruning_masks(state: dict) -> dict:
    """`<name>.weight_orig` x `<name>.weight_mask` -> `<name>.weight` (torch.nn.utils.prune reparametrisation)."""
    out = {}
    for key, value in state.items():
        if key.endswith("_orig"):
            base = key[:-len("_orig")]
            out[base] = value * state[base + "_mask"] if base + "_mask" in state else value
        elif not key.endswith("_mask"):
            out[key] = value
    return out


def _frequencies_from_width(width: int, include_input: bool, path: str, name: str) -> int:
    freqs, rest = divmod(width // 3 - int(include_input), 2)
    if width % 3 or rest or freqs < 0:
        raise CheckpointError(f"{path}: {name} takes {width} inputs, which no positional encoding of 3-D input "
                              f"{'with' if include_input else 'without'} the raw input produces")
    return freqs


def _shape(state: dict, key: str, path: str) -> tuple:
    if key not in state:
        raise CheckpointError(f"{path}: expected tensor '{key}' is missing")
    return tuple(state[key].shape)


def krrish94_model_config(state: dict, reference: ModelConfig, path: str) -> ModelConfig:
    """Size the compatibility model from the tensors; encoding flags come from the run's config."""
    hidden, xyz_width = _shape(state, "layer1.weight", path)
    num_xyz = sum(1 for key in state if key.startswith("layers_xyz.") and key.endswith(".weight"))
    use_viewdirs = "fc_rgb.weight" in state
    kwargs = dict(type="Krrish94NeRFModel", num_layers=num_xyz + 1, hidden_size=hidden, skip_connect_every=0,
                  include_input_xyz=reference.include_input_xyz, include_input_dir=reference.include_input_dir,
                  log_sampling_xyz=reference.log_sampling_xyz, log_sampling_dir=reference.log_sampling_dir,
                  use_viewdirs=use_viewdirs, num_encoding_fn_dir=reference.num_encoding_fn_dir,
                  num_encoding_fn_xyz=_frequencies_from_width(xyz_width, reference.include_input_xyz, path, "layer1"))
    if use_viewdirs:
        dir_out, dir_in = _shape(state, "layers_dir.0.weight", path)
        kwargs["hidden_size_dir"] = dir_out
        kwargs["num_encoding_fn_dir"] = _frequencies_from_width(dir_in - hidden, reference.include_input_dir, path,
                                                                "layers_dir.0 (direction part)")
    return ModelConfig(**kwargs)


def yenchenlin_model_config(state: dict, path: str) -> ModelConfig:
    width, xyz_width = _shape(state, "pts_linears.0.weight", path)
    depth = sum(1 for key in state if key.startswith("pts_linears.") and key.endswith(".weight"))
    skips = [k - 1 for k in range(1, depth) if _shape(state, f"pts_linears.{k}.weight", path)[1] == width + xyz_width]
    skip = skips[0] if skips else 0
    if skips != [i for i in range(1, depth - 1) if skip and i % skip == 0]:
        raise CheckpointError(f"{path}: skip connections after layers {skips} cannot be expressed by "
                              "skip_connect_every")
    use_viewdirs = "alpha_linear.weight" in state
    kwargs = dict(num_layers=depth, hidden_size=width, skip_connect_every=skip, use_viewdirs=use_viewdirs,
                  num_encoding_fn_xyz=_frequencies_from_width(xyz_width, True, path, "pts_linears.0"))
    if use_viewdirs:
        dir_out, dir_in = _shape(state, "views_linears.0.weight", path)
        kwargs["hidden_size_dir"] = dir_out
        kwargs["num_encoding_fn_dir"] = _frequencies_from_width(dir_in - width, True, path, "views_linears.0")
    paper = (depth, width, skip, kwargs.get("hidden_size_dir", 128), kwargs["num_encoding_fn_xyz"]) == (8, 256, 4, 128, 10)
    return ModelConfig(type="PaperNeRFModel" if paper else "FlexibleNeRFModel", **kwargs)


def yenchenlin_state(state: dict) -> dict:
    """Without viewdirs its output layer may have 5 rows (the 5th unused) and an unused views layer."""
    if "output_linear.weight" not in state:
        return dict(state)
    out = {k: v for k, v in state.items() if not k.startswith("views_linears.")}
    out["output_linear.weight"] = state["output_linear.weight"][:4]
    out["output_linear.bias"] = state["output_linear.bias"][:4]
    return out


# The voxel_grid keys that change what a trained grid field renders (the others only steer its training).
RENDERING_GRID_KEYS = ("representation", "num_voxels", "aspect", "feature_dim", "hidden_size", "num_layers",
                       "num_encoding_fn_dir", "density_components", "appearance_components", "density_unit",
                       "step_ratio")


def models_from_checkpoint(ckpt: dict, path: str, configured: ModelsConfig,
                           configured_grid: Optional[VoxelGridConfig] = None) -> LoadedModels:
    """Build and load coarse (and fine) models from any supported checkpoint (on the CPU). With
    `configured_grid` (the config's voxel_grid section), a grid checkpoint whose stored section renders
    otherwise is noted in the description, as a models section that differs is."""
    source, differs = detect_format(ckpt, path), None
    if source == NATIVE:
        stored = (ckpt.get("config") or {}).get("models")
        try:
            models = models_config_from_dict(stored, f"{path} (stored config)") if stored is not None else configured
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        coarse_state, fine_state = ckpt.get("model_coarse_state_dict"), ckpt.get("model_fine_state_dict")
        step, note = int(ckpt.get("step", 0)), "this project's checkpoint"
        if models != configured:  # a one-line note: the config's models section is not what renders
            stored_text, configured_text = describe_models(models), describe_models(configured)
            differs = (f"its model ({stored_text}) differs from the config's ({configured_text}): using the "
                       "checkpoint's" if stored_text != configured_text else
                       "its model settings (e.g. the encoding) differ from the config's: using the checkpoint's")
    elif source == KRRISH94:
        coarse_state = fold_pruning_masks(ckpt["model_coarse_state_dict"])
        fine_state = fold_pruning_masks(ckpt["model_fine_state_dict"]) if ckpt.get("model_fine_state_dict") else None
        models = ModelsConfig(coarse=krrish94_model_config(coarse_state, configured.coarse, path),
                              fine=krrish94_model_config(fine_state, configured.fine or configured.coarse, path)
                              if fine_state is not None else None)
        c = models.coarse
        step = int(ckpt["iter"]) + 1  # it saves after the update of step `iter`
        note = (f"krrish94/nerf-pytorch checkpoint (iter {ckpt['iter']}): its weights are a {c.num_layers}x"
                f"{c.hidden_size} network whatever its config says; rendering it with the Krrish94NeRFModel "
                "compatibility model")
    else:
        coarse_state = yenchenlin_state(ckpt["network_fn_state_dict"])
        fine_state = yenchenlin_state(ckpt["network_fine_state_dict"]) if ckpt.get("network_fine_state_dict") else None
        models = ModelsConfig(coarse=yenchenlin_model_config(coarse_state, path),
                              fine=yenchenlin_model_config(fine_state, path) if fine_state is not None else None)
        step = int(ckpt["global_step"]) + 1  # file N holds global_step N - 1 after N updates
        note = (f"yenchenlin/nerf-pytorch checkpoint (global_step {ckpt['global_step']}), "
                f"{models.coarse.num_layers}x{models.coarse.hidden_size} {models.coarse.type}")
    voxel_grid, contraction = None, None
    if source == NATIVE and models.coarse.type == "VoxelGridModel":
        stored = ckpt.get("config") or {}
        try:
            voxel_grid = voxel_grid_config_from_dict(stored.get("voxel_grid"), f"{path} (stored config)")
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        contraction = (stored.get("occupancy") or {}).get("contraction")
        grid_diffs = [] if configured_grid is None else [
            f"{key} {getattr(voxel_grid, key)!r}, config {getattr(configured_grid, key)!r}"
            for key in RENDERING_GRID_KEYS if getattr(voxel_grid, key) != getattr(configured_grid, key)]
        if grid_diffs:
            grid_note = f"its voxel_grid ({'; '.join(grid_diffs)}) differs from the config's: using the checkpoint's"
            differs = f"{differs}; {grid_note}" if differs else grid_note
        if contraction not in (None, *CONTRACTIONS):
            raise CheckpointError(f"{path}: stored config key 'occupancy.contraction' is {contraction!r}; "
                                  f"expected one of {', '.join(CONTRACTIONS)} or null")
    coarse = build_model(models.coarse, voxel_grid, contraction=contraction)
    load_model_state(coarse, coarse_state, path, "coarse model")
    fine = None
    if models.fine is not None and fine_state is not None:
        fine = build_model(models.fine)
        load_model_state(fine, fine_state, path, "fine model")
    elif fine_state is None:
        models = dataclasses.replace(models, fine=None)
    description = f"{path}: {note}, {step} steps trained" + (f"; {differs}" if differs else "")
    return LoadedModels(coarse, fine, models, source, step, description)


def _sizes(m: ModelConfig) -> str:
    """An MLP's trunk: "4x64", or a pruned one's widths "64-48-64-64"."""
    return "-".join(map(str, m.layer_widths)) if m.layer_widths else f"{m.num_layers}x{m.hidden_size}"


def describe_models(models: ModelsConfig) -> str:
    """A short description of the coarse (and fine) network: "FlexibleNeRFModel 4x64 + fine 4x64"."""
    coarse = models.coarse
    text = coarse.type if coarse.type == "VoxelGridModel" else f"{coarse.type} {_sizes(coarse)}"
    return text + (f" + fine {_sizes(models.fine)}" if models.fine is not None else "")


def _base_architecture(m: Optional[ModelConfig]):
    if m is None:
        return None
    return dataclasses.replace(m, type="FlexibleNeRFModel" if m.type == "PaperNeRFModel" else m.type,
                               layer_widths=None, hidden_size_dir=0)


def stored_models_if_pruned(ckpt: dict, configured: ModelsConfig) -> ModelsConfig:
    """For a checkpoint of ours: its stored models when they are a pruned version of the configured ones
    (so pruned checkpoints resume with no special flag); otherwise the configured models (a real
    architecture mismatch then fails loudly when the weights are loaded)."""
    stored = (ckpt.get("config") or {}).get("models")
    if stored is None:
        return configured
    try:
        stored_models = models_config_from_dict(stored, "stored config")
    except ConfigError:
        return configured
    def pruned_from(stored_model, configured_model) -> bool:
        return (stored_model is not None and stored_model.layer_widths is not None
                and _base_architecture(stored_model) == _base_architecture(configured_model))

    pruned = [pruned_from(getattr(stored_models, k), getattr(configured, k)) for k in ("coarse", "fine")]
    same = all(p or getattr(stored_models, k) == getattr(configured, k) for p, k in zip(pruned, ("coarse", "fine")))
    return stored_models if same and any(pruned) else configured


def load_models(path: str, cfg, device: torch.device) -> LoadedModels:
    """Read any supported checkpoint and return its models on `device`, in eval mode."""
    ckpt = load_checkpoint(path)
    loaded = models_from_checkpoint(ckpt, path, cfg.models, cfg.voxel_grid)
    loaded.occupancy_grid = ckpt.get("occupancy_grid") if isinstance(ckpt, dict) else None
    if loaded.source == NATIVE:
        stored = ((ckpt.get("config") or {}).get("dataset") or {}).get("pixel_center", False)  # older runs: corners
        if not isinstance(stored, bool):
            raise CheckpointError(f"{path}: stored config key 'dataset.pixel_center' is {stored!r}; expected true or false")
        loaded.pixel_center = stored
    loaded.coarse.to(device).eval()
    if loaded.fine is not None:
        loaded.fine.to(device).eval()
    return loaded
