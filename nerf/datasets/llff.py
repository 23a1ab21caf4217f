"""LLFF (nerf_llff_data) loader following the official load_llff.py: poses_bounds.npy layout, axis fix,
bd_factor rescale, recentering, spherify, the spiral render path and the llffhold test split."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from .scene import DatasetError, Scene, missing_folder_error, read_image, to_homogeneous

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def view_matrix(z: np.ndarray, up: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[3, 4] frame with z = normalize(z), x = normalize(up x z), y = normalize(z x x), origin position."""
    z = normalize(z)
    x = normalize(np.cross(up, z))
    y = normalize(np.cross(z, x))
    return np.stack((x, y, z, position), axis=1)


def poses_average(poses: np.ndarray) -> np.ndarray:
    """Average pose [3, 4]: centre = mean position, z = normalize(sum of z axes), up = sum of y axes."""
    center = poses[:, :3, 3].mean(0)
    return view_matrix(poses[:, :3, 2].sum(0), poses[:, :3, 1].sum(0), center)


def recenter_poses(poses: np.ndarray) -> np.ndarray:
    """Left-multiply every [N, 3, 4] pose by the inverse of the average pose."""
    average = to_homogeneous(poses_average(poses))
    return (np.linalg.inv(average) @ to_homogeneous(poses))[:, :3, :4]


def spiral_path(average: np.ndarray, up: np.ndarray, radii: np.ndarray, focus: float, z_rate: float,
                rotations: int, num_views: int) -> np.ndarray:
    """Official render_path_spiral -> [num_views, 3, 4]."""
    radii = np.append(radii, 1.0)
    poses = []
    for theta in np.linspace(0.0, 2.0 * np.pi * rotations, num_views + 1)[:-1]:
        center = average @ (np.array([np.cos(theta), -np.sin(theta), -np.sin(theta * z_rate), 1.0]) * radii)
        z = normalize(center - average @ np.array([0.0, 0.0, -focus, 1.0]))
        poses.append(view_matrix(z, up, center))
    return np.stack(poses)


def spherify_poses(poses: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official spherify_poses for inward-facing 360 captures -> (poses, render_poses, bounds)."""
    rays_d, rays_o = poses[:, :3, 2:3], poses[:, :3, 3:4]
    a = np.eye(3) - rays_d * np.transpose(rays_d, (0, 2, 1))
    b = -a @ rays_o
    center = np.squeeze(-np.linalg.inv((np.transpose(a, (0, 2, 1)) @ a).mean(0)) @ b.mean(0))
    up = (poses[:, :3, 3] - center).mean(0)
    z = normalize(up)
    x = normalize(np.cross([0.1, 0.2, 0.3], z))
    y = normalize(np.cross(z, x))
    frame = np.stack((x, y, z, center), axis=1)
    poses_reset = np.linalg.inv(to_homogeneous(frame)[None]) @ to_homogeneous(poses)
    radius = np.sqrt(np.mean(np.sum(np.square(poses_reset[:, :3, 3]), -1)))
    scale = 1.0 / radius
    poses_reset[:, :3, 3] *= scale
    bounds = bounds * scale
    radius *= scale
    height = np.mean(poses_reset[:, :3, 3], 0)[2]
    circle_radius = np.sqrt(radius ** 2 - height ** 2)
    path = []
    for theta in np.linspace(0.0, 2.0 * np.pi, 120):
        origin = np.array([circle_radius * np.cos(theta), circle_radius * np.sin(theta), height])
        vec2 = normalize(origin)
        vec0 = normalize(np.cross(vec2, np.array([0.0, 0.0, -1.0])))
        vec1 = normalize(np.cross(vec2, vec0))
        path.append(np.stack((vec0, vec1, vec2, origin), axis=1))
    return poses_reset[:, :3, :4], np.stack(path), bounds


def _list_images(folder: str) -> list:
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]


def _is_npy(path: str) -> bool:
    """Whether the file starts as a .npy file does (its magic string)."""
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _read_poses_bounds(basedir: str) -> tuple[np.ndarray, str]:
    """poses_bounds.npy of the scene: ([N, 17], its path); DatasetError naming the file when unusable."""
    if not os.path.isdir(basedir):
        raise missing_folder_error(basedir)
    pose_path = os.path.join(basedir, "poses_bounds.npy")
    try:
        poses_bounds = np.load(pose_path)
    except FileNotFoundError:
        raise DatasetError(f"{pose_path}: file not found (an LLFF scene needs poses_bounds.npy)") from None
    except (ValueError, OSError, EOFError) as err:  # text, an empty file, a pickle: not a .npy array
        reason = str(err) if _is_npy(pose_path) else "not a NumPy .npy array"
        raise DatasetError(f"{pose_path}: cannot read ({reason}); expected the (N, 17) array imgs2poses.py or "
                           "LLFF's imgs2poses writes") from None
    if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17:
        raise DatasetError(f"{pose_path}: expected an array of shape (N, 17), got {poses_bounds.shape}")
    if poses_bounds.shape[0] == 0:
        raise DatasetError(f"{pose_path}: holds no views (0 rows)")
    bad = np.nonzero(~np.isfinite(poses_bounds).all(axis=1))[0]
    if len(bad):
        raise DatasetError(f"{pose_path}: row {bad[0]} holds NaN or infinite values; every pose and bound must be "
                           "finite")
    focals = poses_bounds[:, 14]  # hwf[2] of each row
    if (focals <= 0).any():
        row = int(np.argmax(focals <= 0))
        raise DatasetError(f"{pose_path}: row {row} has focal length {focals[row]:g}; it must be > 0")
    near, far = poses_bounds[:, 15], poses_bounds[:, 16]
    wrong = (near <= 0) | (far <= near)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise DatasetError(f"{pose_path}: row {row} has bounds near {near[row]:g}, far {far[row]:g}; "
                           "expected 0 < near < far")
    return poses_bounds, pose_path


def _read_images(basedir: str, factor: int, count: int, pose_path: str) -> list:
    """The `count` RGB images of images_<factor>/ (images/ for factor 1), all of one size: [H, W, 3] each."""
    folder = os.path.join(basedir, "images" if factor == 1 else f"images_{factor}")
    if not os.path.isdir(folder):
        if factor == 1:
            present = sorted(name for name in os.listdir(basedir) if name.startswith("images_"))
            raise DatasetError(f"{folder}: image folder not found for dataset.downsample_factor=1 (the full-size "
                               f"images){'; this scene has ' + ', '.join(present) if present else ''}")
        raise DatasetError(f"{folder}: image folder not found for dataset.downsample_factor={factor} "
                           "(create it by downscaling images/, e.g. with ImageMagick mogrify)")
    image_paths = _list_images(folder)
    if len(image_paths) != count:
        raise DatasetError(f"{pose_path}: has {count} rows but {folder} holds "
                           f"{len(image_paths)} images; they must match one to one")
    images = [read_image(path)[..., :3] for path in image_paths]
    for path, image in zip(image_paths, images):
        if image.shape != images[0].shape:
            raise DatasetError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected "
                               f"{images[0].shape[1]}x{images[0].shape[0]} like the first image")
    return images


def _spiral_render_path(poses: np.ndarray, bounds: np.ndarray, path_zflat: bool) -> np.ndarray:
    """The official render path of a forward-facing scene: a spiral around the average pose, focused at
    the harmonic mix of near and far depths (120 views, 2 rotations; path_zflat: 60 views, 1, flat)."""
    average = poses_average(poses)
    up = normalize(poses[:, :3, 1].sum(0))
    close, infinity = bounds.min() * 0.9, bounds.max() * 5.0
    focus = 1.0 / (0.25 / close + 0.75 / infinity)
    radii = np.percentile(np.abs(poses[:, :3, 3]), 90, 0)
    rotations, num_views = 2, 120
    if path_zflat:
        average = average.copy()
        average[:3, 3] = average[:3, 3] + (-0.1 * close) * average[:3, 2]
        radii[2] = 0.0
        rotations, num_views = 1, 60
    return spiral_path(average, up, radii, focus, 0.5, rotations, num_views)


def _held_out_views(poses: np.ndarray, llffhold: int) -> list:
    """Every llffhold-th view, or (llffhold 0) the view nearest the average pose."""
    if llffhold > 0:
        return list(range(0, poses.shape[0], llffhold))
    distances = np.sum(np.square(poses_average(poses)[:3, 3] - poses[:, :3, 3]), -1)
    return [int(np.argmin(distances))]


def load_llff(basedir: str, factor: int = 8, llffhold: int = 8, bd_factor: Optional[float] = 0.75,
              recenter: bool = True, spherify: bool = False, path_zflat: bool = False, use_ndc: bool = True,
              near: Optional[float] = None, far: Optional[float] = None) -> Scene:
    """Load an LLFF scene from `poses_bounds.npy` and `images_<factor>/` (the image size is read from
    those images, not from the full-size folder)."""
    poses_bounds, pose_path = _read_poses_bounds(basedir)
    images = _read_images(basedir, factor, poses_bounds.shape[0], pose_path)
    height, width = images[0].shape[:2]

    poses = poses_bounds[:, :15].reshape(-1, 3, 5)  # [N, 3, 5] = [down, right, back | t | hwf]
    bounds = poses_bounds[:, 15:].copy()  # [N, 2]
    focal = float(poses[0, 2, 4]) / factor  # hwf is of the full-size images
    poses = np.concatenate((poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]), axis=2)  # [right, up, back | t]
    poses = poses.astype(np.float32).astype(np.float64)  # the official code rounds to float32 here
    bounds = bounds.astype(np.float32).astype(np.float64)

    scale = 1.0 if bd_factor is None else 1.0 / (bounds.min() * bd_factor)
    poses[:, :3, 3] *= scale
    bounds *= scale
    if recenter:
        poses = recenter_poses(poses)
    if spherify:
        poses, render_poses, bounds = spherify_poses(poses, bounds)
    else:
        render_poses = _spiral_render_path(poses, bounds, path_zflat)

    i_test = _held_out_views(poses, llffhold)
    i_train = [i for i in range(poses.shape[0]) if i not in i_test]
    if not i_train:
        raise DatasetError(f"{pose_path}: with dataset.llffhold={llffhold} all {poses.shape[0]} views are held out; "
                           "no training view is left")
    if near is None:
        near, far = (0.0, 1.0) if use_ndc else (float(bounds.min()) * 0.9, float(bounds.max()))
    return Scene(
        images=torch.from_numpy(np.stack(images)),
        poses=torch.from_numpy(to_homogeneous(poses).astype(np.float32)),
        height=height, width=width, focal=focal,
        i_train=i_train, i_val=list(i_test), i_test=list(i_test),
        render_poses=torch.from_numpy(to_homogeneous(render_poses).astype(np.float32)),
        near=near, far=far, use_ndc=use_ndc, basedir=basedir,
    )
