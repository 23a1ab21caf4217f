"""Blender (nerf_synthetic) loader with the official conventions: half_res by area resize of the RGBA
before compositing (and a further integer `downscale` the same way), testskip on val/test only, focal from camera_angle_x, the spherical render path."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .scene import DatasetError, Scene, missing_folder_error, read_image

SPLITS = ("train", "val", "test")


def pose_spherical(theta_deg: float, phi_deg: float, radius: float) -> np.ndarray:
    """Camera-to-world [4, 4] of the official spherical path: M R_theta R_phi T(radius), world z-up."""
    trans = np.eye(4)
    trans[2, 3] = radius
    phi, theta = math.radians(phi_deg), math.radians(theta_deg)
    rot_phi = np.array([[1, 0, 0, 0], [0, math.cos(phi), -math.sin(phi), 0],
                        [0, math.sin(phi), math.cos(phi), 0], [0, 0, 0, 1]])
    rot_theta = np.array([[math.cos(theta), 0, -math.sin(theta), 0], [0, 1, 0, 0],
                          [math.sin(theta), 0, math.cos(theta), 0], [0, 0, 0, 1]])
    flip = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return flip @ rot_theta @ rot_phi @ trans


def spherical_render_path(num_views: int = 40, phi_deg: float = -30.0, radius: float = 4.0) -> np.ndarray:
    """[num_views, 4, 4]: theta = linspace(-180, 180, num_views + 1) without the last value."""
    thetas = np.linspace(-180.0, 180.0, num_views + 1)[:-1]
    return np.stack([pose_spherical(t, phi_deg, radius) for t in thetas])


def _read_transforms(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (a Blender scene needs transforms_{{train,val,test}}.json)"
                           ) from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(meta, dict) or "camera_angle_x" not in meta or not isinstance(meta.get("frames"), list):
        raise DatasetError(f"{path}: expected an object with 'camera_angle_x' and a 'frames' list")
    angle = meta["camera_angle_x"]
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not 0 < angle < math.pi:
        raise DatasetError(f"{path}: 'camera_angle_x' must be a field of view in radians in (0, pi), got {angle!r}")
    return meta


def _frame_image_path(basedir: str, frame: dict, json_path: str, index: int) -> str:
    try:
        file_path = frame["file_path"]
    except (KeyError, TypeError):
        raise DatasetError(f"{json_path}: frame {index} (counted from 0) has no 'file_path'") from None
    path = os.path.join(basedir, file_path)
    return path if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg") else path + ".png"


def _frame_pose(frame: dict, json_path: str) -> np.ndarray:
    try:
        pose = np.asarray(frame.get("transform_matrix"), dtype=np.float64)
    except (TypeError, ValueError):
        pose = np.zeros(0)
    if pose.shape != (4, 4):
        got = "a value that is not a matrix of numbers" if pose.size == 0 else f"shape {pose.shape}"
        raise DatasetError(f"{json_path}: frame {frame.get('file_path')!r} needs a 4x4 'transform_matrix' of "
                           f"numbers, got {got}")
    if not np.isfinite(pose).all():
        raise DatasetError(f"{json_path}: frame {frame.get('file_path')!r} has NaN or infinite values in its "
                           "'transform_matrix'")
    return pose


def load_blender(basedir: str, half_res: bool = False, testskip: int = 1, white_background: bool = True,
                 near: Optional[float] = None, far: Optional[float] = None, downscale: int = 1) -> Scene:
    """Load a Blender-format scene. Images are RGBA/255, area-resized by f = 2 (half_res) x downscale, then
    composited (rgb a + (1 - a) on white) or reduced to rgb; H, W and focal are divided by f. near/far
    default to 2/6. One area resize by f is the same as resizes by factors whose product is f (means of equal
    blocks of straight, not premultiplied, RGBA, as the official code's cv2.INTER_AREA)."""
    if not os.path.isdir(basedir):
        raise missing_folder_error(basedir)
    factor = (2 if half_res else 1) * downscale
    images, poses, counts = [], [], []
    size = None
    camera_angle_x = None
    json_paths = {split: os.path.join(basedir, f"transforms_{split}.json") for split in SPLITS}
    metas = {split: _read_transforms(path) for split, path in json_paths.items()}  # all JSON before any image
    for split in SPLITS:
        json_path, meta = json_paths[split], metas[split]
        camera_angle_x = float(meta["camera_angle_x"])  # the last split read wins, as in the official code
        skip = 1 if split == "train" or testskip == 0 else testskip
        frames = meta["frames"][::skip]
        for k, frame in enumerate(frames):
            image_path = _frame_image_path(basedir, frame, json_path, k * skip)
            rgba = read_image(image_path)  # [H, W, C]
            if size is None:
                size = rgba.shape[:2]
            elif rgba.shape[:2] != size:
                raise DatasetError(f"{image_path}: image is {rgba.shape[1]}x{rgba.shape[0]}, expected "
                                   f"{size[1]}x{size[0]} like the first image")
            if downscale > 1 and (size[0] % factor or size[1] % factor):
                raise DatasetError(f"{image_path}: image is {size[1]}x{size[0]}, not divisible by {factor} "
                                   "(dataset.downscale, times 2 with dataset.half_res)")
            if rgba.shape[2] == 3:
                rgba = np.concatenate((rgba, np.ones_like(rgba[..., :1])), axis=-1)
            images.append(_resize_and_composite(rgba, factor, white_background))
            poses.append(_frame_pose(frame, json_path))
        counts.append(len(frames))
    if counts[0] == 0:
        raise DatasetError(f"{os.path.join(basedir, 'transforms_train.json')}: no training frames")
    if counts[1] == 0 and counts[2] == 0:
        raise DatasetError(f"{json_paths['val']} and {json_paths['test']}: no frames; validation and evaluation need "
                           "at least one")

    height, width = size
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    height, width, focal = height // factor, width // factor, focal / factor
    offsets = np.cumsum([0] + counts)
    i_train, i_val, i_test = (list(range(offsets[k], offsets[k + 1])) for k in range(3))
    return Scene(
        images=torch.from_numpy(np.stack(images)),
        poses=torch.from_numpy(np.stack(poses).astype(np.float32)),
        height=height, width=width, focal=focal,
        i_train=i_train, i_val=i_val, i_test=i_test,
        render_poses=torch.from_numpy(spherical_render_path().astype(np.float32)),
        near=2.0 if near is None else near, far=6.0 if far is None else far,
        use_ndc=False, basedir=basedir,
    )


def _resize_and_composite(rgba: np.ndarray, factor: int, white_background: bool) -> np.ndarray:
    """[H, W, 4] -> [H / factor, W / factor, 3]; the area resize acts on the RGBA before compositing (official
    order)."""
    if factor > 1:
        tensor = torch.from_numpy(rgba).permute(2, 0, 1)[None]  # [1, 4, H, W]
        size = (rgba.shape[0] // factor, rgba.shape[1] // factor)
        rgba = F.interpolate(tensor, size=size, mode="area")[0].permute(1, 2, 0).numpy()  # [H/f, W/f, 4]
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    if white_background:
        return rgb * alpha + (1.0 - alpha)
    return np.ascontiguousarray(rgb)
