"""Precomputed training rays (`cache_dataset.py`) and the batcher that trains from them.

Layout of a cache folder:
    manifest.json                 settings that produced it (checked against the training config) and a
                                  fingerprint of the dataset's camera and image files (a moved dataset still
                                  matches)
    train/rays_<v>.npy            float32 [N_train, n, 9] = (origin, direction, rgb) per ray, variation v
    train/pixels_<v>.npy          int32 [N_train, n, 2] = (row, column) of each ray
    val/rays.npy                  float32 [N_val, H * W, 9], every pixel of every validation view
The rays are the world-space rays of `RayBatcher` (same code, same conventions); the background is
composited exactly as in uncached training, and NDC (LLFF) is applied at training time by the same
`prepare_rays`, so cached and uncached runs see identical rays and targets. Arrays are memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import numpy as np
import torch

from .batching import RayBatcher, check_epoch_remainder
from .config import Config, ConfigError, DatasetConfig, TrainConfig
from .datasets.scene import Scene
from .distributed import SINGLE, World
from .files import folder_replaced_on_success
from .rays import pixel_offset

SCHEMA = 1

# What identifies a dataset wherever its folder is now: the files that hold its cameras (their bytes) and the
# folders of its images (the names and sizes of their files: a resized copy keeps the cameras of the original)
BLENDER_CAMERA_FILES = ("transforms_train.json", "transforms_val.json", "transforms_test.json")
BLENDER_IMAGE_FOLDERS = ("train", "val", "test")
CAMERA_FILES = {"blender": BLENDER_CAMERA_FILES, "demo": BLENDER_CAMERA_FILES, "llff": ("poses_bounds.npy",)}


# settings dataset_settings records only when they differ from these (so that older caches still match)
UNRECORDED_DEFAULTS = {"downscale": 1, "pixel_center": False}


def dataset_settings(cfg: DatasetConfig, white_background: bool) -> dict:
    """The resolved settings that determine the cached rays and targets; a cache must agree with them.

    Keys that do not apply to the dataset type are left out, and defaults are resolved (Blender near/far
    2/6, LLFF NDC 0/1; LLFF without NDC takes its planes from the bounds, recorded as None), so that a
    cache built from command-line flags matches a config that spells the same defaults out.
    """
    use_ndc = cfg.type == "llff" and not cfg.no_ndc
    if cfg.near is not None:
        near, far = cfg.near, cfg.far
    elif cfg.type == "llff" and not use_ndc:
        near, far = None, None
    else:
        near, far = (0.0, 1.0) if use_ndc else (2.0, 6.0)
    settings = {"type": cfg.type, "basedir": os.path.abspath(cfg.basedir), "use_ndc": use_ndc, "near": near,
                "far": far, "white_background": white_background}
    if cfg.type == "llff":
        settings.update(downsample_factor=cfg.downsample_factor, llffhold=cfg.llffhold, bd_factor=cfg.bd_factor,
                        recenter=cfg.recenter, spherify=cfg.spherify)
    else:
        settings.update(half_res=cfg.half_res, testskip=cfg.testskip, downscale=cfg.downscale)
    settings["pixel_center"] = cfg.pixel_center
    # settings added later are recorded only when not at their default, so that older caches still match
    return {key: value for key, value in settings.items()
            if key not in UNRECORDED_DEFAULTS or value != UNRECORDED_DEFAULTS[key]}


def image_folders(dataset_type: str, basedir: str) -> list[str]:
    """The folders of a dataset's images: Blender's train/val/test, LLFF's images and images_<factor>."""
    if dataset_type == "llff":
        try:
            return sorted(name for name in os.listdir(basedir) if name == "images" or name.startswith("images_"))
        except OSError:
            return []
    return list(BLENDER_IMAGE_FOLDERS)


def dataset_fingerprint(dataset_type: str, basedir: str) -> Optional[str]:
    """sha256 over the dataset's camera files (CAMERA_FILES: each name and its bytes) and the name and size of
    each file in its image folders, so that a cache still matches its dataset after the folder was moved or
    copied; None when no camera file can be read."""
    digest, found = hashlib.sha256(), False
    for name in CAMERA_FILES.get(dataset_type, ()):
        try:
            with open(os.path.join(basedir, name), "rb") as f:
                data = f.read()
        except OSError:
            continue
        digest.update(name.encode() + b"\0" + data)
        found = True
    for folder in image_folders(dataset_type, basedir):
        path = os.path.join(basedir, folder)
        try:
            names = sorted(name for name in os.listdir(path) if not name.startswith("."))
        except OSError:
            continue
        for name in names:
            digest.update(f"{folder}/{name}:{os.path.getsize(os.path.join(path, name))}\n".encode())
    return digest.hexdigest() if found else None


def _disk_usage(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def check_savedir(savedir: str, basedir: str, overwrite: bool) -> None:
    """Refuse a --savedir that would destroy anything but an earlier cache (FileExistsError)."""
    target, data = os.path.abspath(savedir), os.path.abspath(basedir)
    if os.path.commonpath([target, data]) == target:
        raise FileExistsError(f"{savedir}: is (or contains) the dataset folder {basedir}; choose another --savedir")
    if not os.path.exists(target):
        return
    if not overwrite:
        raise FileExistsError(f"{savedir}: already exists (choose another --savedir or pass --overwrite)")
    is_cache = os.path.isfile(os.path.join(target, "manifest.json"))
    if not is_cache and not (os.path.isdir(target) and not os.listdir(target)):
        raise FileExistsError(f"{savedir}: exists and is not a ray cache (no manifest.json); --overwrite only "
                              "replaces an earlier cache or an empty folder")


def _write_train_rays(scene: Scene, folder: str, num_random_rays: Optional[int], rays_per_image: int,
                      variations: int, seed: int, progress=None) -> None:
    """train/rays_VVVV.npy [N_train, rays_per_image, 9] (origin, direction, rgb) and pixels_VVVV.npy
    [N_train, rays_per_image, 2] (row, col) for each variation: random pixels without replacement within an
    image, fresh for every variation (or every pixel when num_random_rays is None)."""
    pixels_per_image = scene.height * scene.width
    generator = torch.Generator().manual_seed(seed)
    ray_maker = RayBatcher(scene, TrainConfig(num_random_rays=1), seed)
    num_train = len(scene.i_train)
    for v in range(variations):
        rays = np.lib.format.open_memmap(os.path.join(folder, "train", f"rays_{v:04d}.npy"), mode="w+",
                                         dtype=np.float32, shape=(num_train, rays_per_image, 9))
        pixels = np.empty((num_train, rays_per_image, 2), dtype=np.int32)
        for k in range(num_train):
            if num_random_rays is None:
                chosen = torch.arange(pixels_per_image)
            else:
                chosen = torch.randperm(pixels_per_image, generator=generator)[:rays_per_image]
            rows, cols = chosen // scene.width, chosen % scene.width
            o, d, rgb = ray_maker.rays_at(torch.tensor(k).expand(rays_per_image), rows, cols)
            rays[k] = torch.cat((o, d, rgb), dim=-1).cpu().numpy()
            pixels[k] = torch.stack((rows, cols), dim=-1).numpy()
            if progress is not None:
                progress.update(1)
        rays.flush()
        del rays
        np.save(os.path.join(folder, "train", f"pixels_{v:04d}.npy"), pixels)


def _write_val_rays(scene: Scene, folder: str, seed: int, progress=None) -> None:
    """val/rays.npy [N_val, H W, 9]: every pixel of every validation view."""
    pixels_per_image = scene.height * scene.width
    val = np.lib.format.open_memmap(os.path.join(folder, "val", "rays.npy"), mode="w+", dtype=np.float32,
                                    shape=(len(scene.i_val), pixels_per_image, 9))
    all_pixels = torch.arange(pixels_per_image)
    val_rays = RayBatcher(scene, TrainConfig(num_random_rays=1), seed, views=scene.i_val)
    for k in range(len(scene.i_val)):
        o, d, rgb = val_rays.rays_at(torch.tensor(k).expand(pixels_per_image),
                                     all_pixels // scene.width, all_pixels % scene.width)
        val[k] = torch.cat((o, d, rgb), dim=-1).cpu().numpy()
        if progress is not None:
            progress.update(1)
    val.flush()
    del val


def build_cache(scene: Scene, settings: dict, savedir: str, num_random_rays: Optional[int], num_variations: int,
                seed: int, overwrite: bool = False, progress=None) -> int:
    """Write a cache of `scene` to `savedir` (None rays = every pixel, one variation); return bytes written.

    Everything is written to a temporary folder that replaces `savedir` only when complete, so an
    interrupted run leaves nothing that training would read.
    """
    check_savedir(savedir, settings["basedir"], overwrite)
    pixels_per_image = scene.height * scene.width
    if num_random_rays is not None and not 1 <= num_random_rays <= pixels_per_image:
        raise ValueError(f"--num-random-rays must be in 1..{pixels_per_image} (pixels per image), "
                         f"got {num_random_rays}")
    rays_per_image = pixels_per_image if num_random_rays is None else num_random_rays
    variations = 1 if num_random_rays is None else num_variations
    with folder_replaced_on_success(savedir, ".cache-partial-", ".cache-old-") as tmp:
        os.makedirs(os.path.join(tmp, "train"))
        os.makedirs(os.path.join(tmp, "val"))
        _write_train_rays(scene, tmp, num_random_rays, rays_per_image, variations, seed, progress)
        _write_val_rays(scene, tmp, seed, progress)
        manifest = {
            "schema": SCHEMA, "dataset": settings,
            "dataset_fingerprint": dataset_fingerprint(settings["type"], settings["basedir"]),
            "height": scene.height, "width": scene.width,
            "focal": scene.focal, "near": scene.near, "far": scene.far, "use_ndc": scene.use_ndc,
            "rays_per_image": rays_per_image, "sample_all": num_random_rays is None, "num_variations": variations,
            "seed": seed, "dtype": "float32", "num_train": len(scene.i_train), "num_val": len(scene.i_val),
            "val_poses": scene.poses[scene.i_val].cpu().tolist(),
        }
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:  # written last
            json.dump(manifest, f, indent=1)
        size = _disk_usage(tmp)
    return size


# What opening a cache reads from its manifest.json, and the type each must have.
MANIFEST_KEYS = {"dataset": dict, "num_variations": int, "num_train": int, "rays_per_image": int, "height": int,
                 "width": int, "focal": (int, float), "near": (int, float), "far": (int, float), "use_ndc": bool,
                 "val_poses": list}


class RayCache:
    """A cache folder opened for training: memory-mapped arrays plus the manifest."""

    def __init__(self, folder: str):
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            raise ConfigError(f"dataset.cachedir: {folder} is not a complete ray cache (no manifest.json); "
                              "build it with cache_dataset.py")
        try:
            with open(path, "r", encoding="utf-8") as f:
                self.manifest = json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: malformed JSON ({err.msg})") from None
        if not isinstance(self.manifest, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(self.manifest).__name__}; rebuild the cache "
                              "with cache_dataset.py")
        if self.manifest.get("schema") != SCHEMA:
            raise ConfigError(f"{path}: cache schema {self.manifest.get('schema')}, expected {SCHEMA}; rebuild it")
        for key, kind in MANIFEST_KEYS.items():
            value = self.manifest.get(key)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ConfigError(f"{path}: key '{key}' is {value!r}, expected "
                                  f"{getattr(kind, '__name__', 'a number')}; rebuild the cache with cache_dataset.py")
        self.folder = folder
        m = self.manifest
        variations = range(m["num_variations"])
        shape = (m["num_train"], m["rays_per_image"])
        self.rays = [self._load(shape + (9,), "train", f"rays_{v:04d}.npy") for v in variations]  # each [N, n, 9]
        self.pixels = [self._load(shape + (2,), "train", f"pixels_{v:04d}.npy") for v in variations]  # each [N, n, 2]

    def _load(self, shape: tuple, *parts: str) -> np.ndarray:
        """A cache array, memory-mapped; ConfigError when it is missing, unreadable or not of `shape`, which a
        truncated or foreign file would otherwise show only steps later."""
        path = os.path.join(self.folder, *parts)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise ConfigError(f"{path}: missing or unreadable cache file ({err.__class__.__name__}); rebuild the "
                              "cache with cache_dataset.py") from None
        if array.shape != shape:
            raise ConfigError(f"{path}: shape {list(array.shape)}, expected {list(shape)} from manifest.json; rebuild "
                              "the cache with cache_dataset.py")
        return array

    def check(self, cfg: Config, source: str = "config") -> None:
        """Refuse a cache whose settings disagree with the training config (one line per difference)."""
        expected = dataset_settings(cfg.dataset, cfg.nerf.train.white_background)
        cached = dict(self.manifest["dataset"])
        fingerprint = self.manifest.get("dataset_fingerprint")
        if (cached.get("basedir") != expected["basedir"] and fingerprint is not None
                and fingerprint == dataset_fingerprint(cfg.dataset.type, expected["basedir"])):
            cached["basedir"] = expected["basedir"]  # the same dataset in another folder: moved or copied
        keys = sorted(set(expected) | set(cached))

        def value(settings: dict, key: str):
            return settings.get(key, UNRECORDED_DEFAULTS.get(key))

        diffs = [f"{'nerf.train.' if key == 'white_background' else 'dataset.'}{key}: cache {value(cached, key)!r}, "
                 f"config {value(expected, key)!r}" for key in keys if value(cached, key) != value(expected, key)]
        if diffs:
            raise ConfigError(f"{source}: dataset.cachedir {self.folder} was built with other settings: "
                              + "; ".join(diffs) + " (rebuild it with cache_dataset.py --config)")
        opts = cfg.nerf.train
        n = self.manifest["rays_per_image"]
        if not opts.use_batching and opts.num_random_rays > n:
            raise ConfigError(f"{source}: nerf.train.num_random_rays ({opts.num_random_rays}) exceeds the "
                              f"{n} cached rays per image in {self.folder}")

    def validation_scene(self) -> Scene:
        """The validation views as a Scene (targets from the cached rays, poses from the manifest)."""
        m = self.manifest
        val = self._load((len(m["val_poses"]), m["height"] * m["width"], 9), "val", "rays.npy")  # [N_val, H W, 9]
        images = torch.from_numpy(np.ascontiguousarray(val[..., 6:9])).reshape(-1, m["height"], m["width"], 3)
        poses = torch.tensor(m["val_poses"], dtype=torch.float32).reshape(-1, 4, 4)
        ids = list(range(len(poses)))
        return Scene(images=images, poses=poses, height=m["height"], width=m["width"], focal=m["focal"],
                     i_train=[], i_val=ids, i_test=ids, render_poses=poses, near=m["near"], far=m["far"],
                     use_ndc=m["use_ndc"], basedir=self.folder,
                     pixel_offset=pixel_offset(bool(m["dataset"].get("pixel_center"))))


class CachedRayBatcher:
    """`batch(step)` from a RayCache, with the same two modes as `RayBatcher`.

    Without use_batching each step draws a variation, a training image and num_random_rays of its cached
    rays (the central crop's rays during precrop); with use_batching all cached rays are shuffled per
    epoch by a (seed, epoch) generator.
    """

    def __init__(self, cache: RayCache, opts: TrainConfig, seed: int, device: torch.device, world: World = SINGLE):
        self.cache, self.opts, self.seed, self.device, self.world = cache, opts, seed, device, world
        m = cache.manifest
        self.height, self.width = m["height"], m["width"]
        self.num_images, self.rays_per_image = m["num_train"], m["rays_per_image"]
        self.per_variation = self.num_images * self.rays_per_image
        self.total = self.per_variation * m["num_variations"]
        self.batches_per_epoch = -(-self.total // opts.num_random_rays)
        self._epoch, self._permutation = -1, None
        if opts.use_batching:
            check_epoch_remainder(self.total, opts.num_random_rays, world.size)
        if opts.precrop_iters > 0 and not opts.use_batching:  # fail now, not at step 0
            fewest = min(int(self._in_crop(torch.from_numpy(np.array(p))).sum(-1).min()) for p in cache.pixels)
            if fewest < opts.num_random_rays:
                raise ConfigError(f"dataset.cachedir: some image has only {fewest} cached rays inside the precrop "
                                  f"region, fewer than nerf.train.num_random_rays ({opts.num_random_rays}); cache "
                                  "more rays per image (or --sample-all), or set nerf.train.precrop_iters to 0")

    def _in_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """[..., 2] (row, col) -> [...] bool: inside the central crop of RayBatcher ([c - d, c + d))."""
        half_h = int(self.height // 2 * self.opts.precrop_frac)
        half_w = int(self.width // 2 * self.opts.precrop_frac)
        rows, cols = pixels[..., 0], pixels[..., 1]
        inside = (rows >= self.height // 2 - half_h) & (rows < self.height // 2 + half_h)
        return inside & (cols >= self.width // 2 - half_w) & (cols < self.width // 2 + half_w)

    def _gather(self, variation: int, image: np.ndarray, ray: np.ndarray):
        rows = torch.from_numpy(np.asarray(self.cache.rays[variation][image, ray]))  # [R, 9]
        rows = rows.to(self.device)
        return rows[:, 0:3], rows[:, 3:6], rows[:, 6:9]

    def check_crop(self, start_step: int) -> None:
        """Nothing left to check: the constructor checked the precrop region against the cached rays."""

    def batch(self, step: int):
        opts = self.opts
        if opts.use_batching:
            epoch, k = divmod(step, self.batches_per_epoch)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._permutation = torch.randperm(self.total, generator=generator).numpy()
                self._epoch = epoch
            flat = np.sort(self._permutation[k * opts.num_random_rays:(k + 1) * opts.num_random_rays])
            flat = flat[self.world.share(len(flat))]  # this rank's share
            variation, rest = np.divmod(flat, self.per_variation)
            image, ray = np.divmod(rest, self.rays_per_image)
            parts = [self._gather(v, image[variation == v], ray[variation == v]) for v in np.unique(variation)]
            return tuple(torch.cat(p, dim=0) for p in zip(*parts))
        variation = int(torch.randint(len(self.cache.rays), (1,)))
        image = int(torch.randint(self.num_images, (1,)))
        candidates = torch.arange(self.rays_per_image)
        if step < opts.precrop_iters:
            pixels = torch.from_numpy(np.array(self.cache.pixels[variation][image]))  # [n, 2], copied from the map
            candidates = candidates[self._in_crop(pixels)]  # at least num_random_rays: checked in __init__
        chosen = candidates[torch.randperm(len(candidates))[:opts.num_random_rays]]
        chosen = np.sort(chosen.numpy())[self.world.share(len(chosen))]  # this rank's share
        return self._gather(variation, np.full(len(chosen), image), chosen)
