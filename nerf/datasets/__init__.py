"""Dataset loaders. `load_scene` dispatches on `dataset.type`."""

from __future__ import annotations

from ..config import DatasetConfig
from ..rays import pixel_offset
from .scene import DatasetError, Scene


def load_scene(cfg: DatasetConfig, white_background: bool) -> Scene:
    """Load the scene a `dataset` config section describes (images composited as configured)."""
    scene = _load(cfg, white_background)
    scene.pixel_offset = pixel_offset(cfg.pixel_center)
    return scene


def _load(cfg: DatasetConfig, white_background: bool) -> Scene:
    if cfg.type == "blender":
        from .blender import load_blender

        return load_blender(cfg.basedir, cfg.half_res, cfg.testskip, white_background, cfg.near, cfg.far,
                            cfg.downscale)
    if cfg.type == "demo":
        from .blender import load_blender
        from .demo import ensure_demo_scene

        ensure_demo_scene(cfg.basedir)
        return load_blender(cfg.basedir, cfg.half_res, cfg.testskip, white_background, cfg.near, cfg.far,
                            cfg.downscale)
    if cfg.type == "llff":
        from .llff import load_llff

        return load_llff(cfg.basedir, cfg.downsample_factor, cfg.llffhold, cfg.bd_factor, cfg.recenter,
                         cfg.spherify, cfg.path_zflat, use_ndc=not cfg.no_ndc, near=cfg.near, far=cfg.far)
    raise DatasetError(f"dataset.type: unknown dataset type {cfg.type!r}")


__all__ = ["DatasetError", "Scene", "load_scene"]
