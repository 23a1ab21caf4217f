"""Typed experiment configuration, loaded from YAML by a strict loader.

- nerf/config/schema.py: the dataclasses (one per YAML section) with defaults and meanings;
- nerf/config/loader.py: strict construction from YAML, `--set` overrides, atomic saving;
- nerf/config/validation.py: value ranges and cross-key consistency, one function per section.

The names below are the package's public interface.
"""

from .loader import (add_set_argument, apply_overrides, config_from_dict, config_to_dict,
                     load_config, models_config_from_dict, overrides_from, parse_override, read_yaml, save_config,
                     voxel_grid_config_from_dict)
from .schema import (DATASET_TYPES, MODEL_TYPES, PRECISIONS, Config, ConfigError, DatasetConfig, ExperimentConfig,
                     ModelConfig, ModelsConfig, NerfConfig, OccupancyConfig, OptimizerConfig, PruningConfig,
                     RenderConfig, RuntimeConfig, SchedulerConfig, TrainConfig, ValidationConfig, VoxelGridConfig)
from .validation import validate

__all__ = ["add_set_argument", "apply_overrides", "config_from_dict", "config_to_dict",
           "load_config", "models_config_from_dict", "overrides_from", "parse_override", "read_yaml", "save_config",
           "voxel_grid_config_from_dict", "DATASET_TYPES", "MODEL_TYPES", "PRECISIONS", "Config", "ConfigError",
           "DatasetConfig", "ExperimentConfig", "ModelConfig", "ModelsConfig", "NerfConfig", "OccupancyConfig",
           "OptimizerConfig", "PruningConfig", "RenderConfig", "RuntimeConfig", "SchedulerConfig", "TrainConfig",
           "ValidationConfig", "VoxelGridConfig", "validate"]
