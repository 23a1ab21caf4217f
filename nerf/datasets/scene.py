"""The in-memory scene every loader returns, and image I/O shared by the loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message names the file or folder and what was expected."""


def missing_folder_error(basedir: str) -> DatasetError:
    """The error for a dataset.basedir that is not a folder; a relative one is resolved against the working
    directory, which the message names (a config's relative path read from another folder)."""
    where = "" if os.path.isabs(basedir) else f", looked for {os.path.abspath(basedir)}"
    return DatasetError(f"{basedir}: dataset folder not found (dataset.basedir{where}); give the scene's folder "
                        "with --set dataset.basedir=PATH")


@dataclass
class Scene:
    """images: [N, H, W, 3] float32 in [0, 1], composited; poses: [N, 4, 4] camera-to-world (OpenGL axes);
    render_poses: [M, 4, 4]. Splits index into images/poses. near/far are scene units, or NDC 0/1."""

    images: torch.Tensor
    poses: torch.Tensor
    height: int
    width: int
    focal: float
    i_train: list
    i_val: list
    i_test: list
    render_poses: torch.Tensor
    near: float
    far: float
    use_ndc: bool
    basedir: str
    # 0: rays through the pixels' corners (the paper's convention), 0.5: through their centres
    # (dataset.pixel_center); see rays.pixel_directions
    pixel_offset: float = 0.0

    def to(self, device: torch.device) -> "Scene":
        self.images = self.images.to(device)
        self.poses = self.poses.to(device)
        self.render_poses = self.render_poses.to(device)
        return self


def read_image(path: str) -> np.ndarray:
    """Read an image file as float32 [H, W, C] in [0, 1] (C = 3 or 4); DatasetError if missing or corrupt."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot read image ({err.__class__.__name__}: {err})") from None
    return array


def to_homogeneous(poses: np.ndarray) -> np.ndarray:
    """[..., 3, 4] -> [..., 4, 4] with bottom row (0, 0, 0, 1)."""
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0], dtype=poses.dtype), poses.shape[:-2] + (1, 4))
    return np.concatenate((poses[..., :3, :4], bottom), axis=-2)
