"""The embedded demo scene: textured solids rendered exactly by an analytic ray caster, written in the
Blender (nerf_synthetic) format so that the normal Blender loader reads it.

Each pixel is the colour where its camera ray (the same `get_rays` convention as training) first hits a
solid, shaded by a fixed Lambertian light (view-independent), with alpha 1; a miss has alpha 0 and
composites to the white background. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from ..files import folder_replaced_on_success
from ..rays import get_rays
from .blender import pose_spherical
from .scene import DatasetError

CAMERA_ANGLE_X = 0.6911112070083618  # lego's field of view
LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])


def _hit_sphere(o: np.ndarray, d: np.ndarray, center: np.ndarray, radius: float):
    """Nearest positive hit distance [R] (inf on a miss) and the unit normal [R, 3]."""
    oc = o - center
    a = np.sum(d * d, -1)
    b = 2.0 * np.sum(oc * d, -1)
    c = np.sum(oc * oc, -1) - radius ** 2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / (2 * a)
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    normal = (o + np.where(np.isfinite(t), t, 0.0)[:, None] * d - center) / radius  # misses: unused
    return t, normal


def _hit_backdrop(o: np.ndarray, d: np.ndarray, radius: float):
    """The inside of a sphere of `radius` about the origin (cameras inside it): far hit distance [R] and the
    inward unit normal [R, 3]."""
    b = 2.0 * np.sum(o * d, -1)
    a = np.sum(d * d, -1)
    c = np.sum(o * o, -1) - radius ** 2
    t = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)
    return np.where(t > 1e-6, t, np.inf), -(o + t[:, None] * d) / radius


def _hit_box(o: np.ndarray, d: np.ndarray, center: np.ndarray, half: np.ndarray):
    """Slab test for an axis-aligned box: nearest hit distance [R] and unit normal [R, 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (center - half - o) * inv
        t1 = (center + half - o) * inv
    t_near = np.max(np.minimum(t0, t1), -1)
    t_far = np.min(np.maximum(t0, t1), -1)
    hit = (t_near <= t_far) & (t_near > 1e-6)
    t = np.where(hit, t_near, np.inf)
    local = (o + np.where(hit, t, 0.0)[:, None] * d - center) / half
    axis = np.argmax(np.abs(local), -1)
    normal = np.zeros_like(o)
    normal[np.arange(len(o)), axis] = np.sign(local[np.arange(len(o)), axis])
    return t, normal


def _textures(points: np.ndarray, kind: int) -> np.ndarray:
    """Albedo [R, 3] of each solid at its surface points."""
    if kind == 0:  # sphere: red and yellow latitude stripes
        stripe = np.floor((points[:, 2] - 0.35) * 5.0).astype(int) % 2
        return np.where(stripe[:, None] == 0, [0.85, 0.15, 0.1], [0.95, 0.8, 0.15])
    if kind == 1:  # box: blue and white 3-D checkerboard
        cells = np.floor(points * 4.0).astype(int).sum(-1) % 2
        return np.where(cells[:, None] == 0, [0.1, 0.25, 0.8], [0.92, 0.92, 0.95])
    # small sphere: green with dark meridian bands
    angle = np.arctan2(points[:, 1] + 0.7, points[:, 0])
    band = np.floor(angle / (np.pi / 4)).astype(int) % 2
    return np.where(band[:, None] == 0, [0.15, 0.7, 0.25], [0.05, 0.35, 0.1])


def _noise_texture(points: np.ndarray, kind: int) -> np.ndarray:
    """Albedo [R, 3] without repetition: random colours of 3-D cells at two scales (hashed cell indices),
    so that feature matching (structure from motion) finds unambiguous correspondences."""
    colour = np.zeros((len(points), 3))
    for scale, weight in ((6.0, 0.6), (17.0, 0.4)):
        cells = np.floor(points * scale).astype(np.int64) + 1000
        key = (cells[:, 0] * 73856093) ^ (cells[:, 1] * 19349663) ^ (cells[:, 2] * 83492791) ^ (kind * 2654435761)
        rng = (key[:, None] * np.array([1103515245, 12345, 2147483647]) + np.array([12345, 6789, 4242])) % 1000
        colour += weight * (0.1 + 0.85 * rng / 999.0)
    return colour


def render_demo_view(c2w: np.ndarray, size: int, texture: str = "pattern",
                     backdrop_radius: float = 0.0, backdrop_detail: float = 1.0) -> np.ndarray:
    """RGBA float [size, size, 4] of the demo scene seen from camera-to-world c2w [4, 4]. texture: "pattern"
    (stripes and checkers, the training scene) or "noise" (unrepeated colour cells, for structure from
    motion). backdrop_radius > 0 surrounds the scene with the noise-textured, unshaded inside of a sphere
    of that radius: a background that goes on far beyond the objects (an unbounded, 360-degree capture);
    backdrop_detail scales the number of its colour cells per angle (1: cells of about 2.4 and 0.8 degrees)."""
    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    rays_o, rays_d = get_rays(size, size, focal, torch.from_numpy(c2w.astype(np.float64)))
    o, d = rays_o.reshape(-1, 3).numpy(), rays_d.reshape(-1, 3).numpy()
    hits = [
        _hit_sphere(o, d, np.array([0.45, 0.0, 0.35]), 0.55),
        _hit_box(o, d, np.array([-0.5, 0.12, -0.3]), np.array([0.42, 0.42, 0.42])),
        _hit_sphere(o, d, np.array([0.0, -0.7, -0.5]), 0.38),
    ]
    if backdrop_radius > 0:
        hits.append(_hit_backdrop(o, d, backdrop_radius))
    t_all = np.stack([t for t, _ in hits], -1)  # [R, solids]
    nearest = np.argmin(t_all, -1)
    t = t_all[np.arange(len(o)), nearest]
    hit = np.isfinite(t)
    rgba = np.zeros((len(o), 4))
    points = o + np.where(hit, t, 0.0)[:, None] * d
    for kind, (_, normal) in enumerate(hits):
        mask = hit & (nearest == kind)
        shade = 0.35 + 0.65 * np.clip(normal[mask] @ LIGHT, 0.0, None) if kind < 3 else np.ones(int(mask.sum()))
        if kind == 3:  # the backdrop: cells of the same angular size at any radius
            albedo = _noise_texture(points[mask] * (4.0 * backdrop_detail / backdrop_radius), kind)
        else:
            albedo = _textures(points[mask], kind) if texture == "pattern" else _noise_texture(points[mask], kind)
        rgba[mask, :3] = albedo * shade[:, None]
        rgba[mask, 3] = 1.0
    return rgba.reshape(size, size, 4)


def generate_demo_scene(basedir: str, size: int = 64, num_train: int = 60, num_val: int = 8,
                        num_test: int = 8, seed: int = 0, backdrop_radius: float = 0.0,
                        backdrop_detail: float = 1.0) -> None:
    """Write a Blender-format scene to `basedir` (transforms_*.json + RGBA PNGs), atomically: it is
    built in a temporary folder that is renamed into place when complete. The cameras look at the centre
    from radius 4, all around; backdrop_radius > 0 adds the far backdrop of `render_demo_view` (an
    unbounded 360-degree scene: every pixel opaque) with cells scaled by backdrop_detail."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    with folder_replaced_on_success(basedir, ".demo-") as tmp:
        views = {
            "train": [(rng.uniform(-180, 180), rng.uniform(-75, -10)) for _ in range(num_train)],
            "val": [(rng.uniform(-180, 180), rng.uniform(-75, -10)) for _ in range(num_val)],
            # test views follow the render-path elevation, evenly around the scene
            "test": [(theta, -30.0) for theta in np.linspace(-180, 180, num_test + 1)[:-1] + 7.0],
        }
        for split, angles in views.items():
            os.makedirs(os.path.join(tmp, split))
            frames = []
            for k, (theta, phi) in enumerate(angles):
                c2w = pose_spherical(theta, phi, 4.0)
                rgba = render_demo_view(c2w, size, backdrop_radius=backdrop_radius, backdrop_detail=backdrop_detail)
                Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA").save(
                    os.path.join(tmp, split, f"r_{k}.png"))
                frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.0,
                               "transform_matrix": c2w.tolist()})
            with open(os.path.join(tmp, f"transforms_{split}.json"), "w", encoding="utf-8") as f:
                json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, f, indent=1)


def ensure_demo_scene(basedir: str) -> None:
    """Generate the demo scene at `basedir` unless a complete one is already there."""
    if all(os.path.isfile(os.path.join(basedir, f"transforms_{s}.json")) for s in ("train", "val", "test")):
        return
    if os.path.exists(basedir) and os.listdir(basedir):
        raise DatasetError(f"{basedir}: exists but is not a complete demo scene; remove it or point "
                              "dataset.basedir elsewhere")
    print(f"Generating the demo scene in {basedir} ...")
    generate_demo_scene(basedir)
